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
    with pytest.raises(LlavakitError, match="config.json and weights disagree .* missing from its weights"):
        load_model(str(checkpoint))


def test_a_truncated_language_model_file_names_its_directory(checkpoint):
    weights = next((checkpoint / "language_model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LlavakitError, match="language_model: its weight file is unreadable"):
        load_model(str(checkpoint))


def test_a_truncated_projector_file_names_itself(checkpoint):
    weights = next(p for p in checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(LlavakitError, match=weights.name):
        load_model(str(checkpoint))
