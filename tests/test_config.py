"""Typed configs: validation with dotted paths, overrides, YAML errors."""

from __future__ import annotations

import pytest

from llavakit.config import from_dict, load_yaml, merge, parse_override, to_dict
from llavakit.errors import ConfigError
from llavakit.model.config import LlavaConfig
from llavakit.model.presets import PRESETS, get_preset


def test_round_trip_of_every_preset():
    for name in PRESETS:
        cfg = get_preset(name)
        assert from_dict(LlavaConfig, to_dict(cfg)) == cfg


def test_unknown_key_and_wrong_type_name_the_path():
    with pytest.raises(ConfigError, match=r"unknown config key vision\.layer"):
        from_dict(LlavaConfig, {"vision": {"layer": -2}})
    with pytest.raises(ConfigError, match=r"vision\.feature_layer: expected an integer, got 'x'"):
        from_dict(LlavaConfig, {"vision": {"feature_layer": "x"}})
    with pytest.raises(ConfigError, match=r"vision\.feature_select: 'cls' is not one of"):
        from_dict(LlavaConfig, {"vision": {"feature_select": "cls"}})


def test_overrides_parse_numbers_and_nest():
    assert parse_override("train.lr=2e-5") == {"train": {"lr": 2e-5}}
    assert parse_override("a.b.c=true") == {"a": {"b": {"c": True}}}
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("lr")


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="known presets: tiny-random, nano"):
        get_preset("nano2")
