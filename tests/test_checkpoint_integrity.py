"""Checkpoints never load half-right: a config / weights mismatch or a corrupt file is one clear error."""

from __future__ import annotations

import json

import pytest

from llavakit.errors import LlavakitError
from llavakit.model import load_model, save_pretrained


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_pretrained(tiny_model, tmp_path / "ckpt")


def test_more_layers_in_config_than_in_weights_is_refused(checkpoint):
    path = checkpoint / "language_model" / "config.json"
    config = json.loads(path.read_text())
    config["num_hidden_layers"] += 1
    path.write_text(json.dumps(config))
    with pytest.raises(LlavakitError, match="config.json and weights disagree .* missing from its weights "
                                            r"\(first: model.layers.2.input_layernorm.weight\)"):
        load_model(str(checkpoint))


def test_a_tensor_of_another_shape_than_config_says_is_refused_by_name(checkpoint):
    path = checkpoint / "language_model" / "config.json"
    config = json.loads(path.read_text())
    config["intermediate_size"] += 8
    path.write_text(json.dumps(config))
    with pytest.raises(LlavakitError, match=r"config.json and weights disagree — 6 tensors have another shape .* "
                                            r"\(first: model.layers.0.mlp.down_proj.weight is \[64, 128\] in the "
                                            r"weights, \[64, 136\] by config.json\)"):
        load_model(str(checkpoint))


@pytest.mark.parametrize("damage", [lambda b: b[:1000], lambda b: b"\xff" * 16 + b[16:]], ids=["truncated", "header"])
def test_a_corrupt_language_model_file_names_itself(checkpoint, damage):
    weights = next((checkpoint / "language_model").glob("*.safetensors"))
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(LlavakitError, match=f"language_model: its weight file {weights.name} is unreadable"):
        load_model(str(checkpoint))


def test_a_truncated_projector_file_names_itself(checkpoint):
    weights = next(p for p in checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(LlavakitError, match=weights.name):
        load_model(str(checkpoint))
