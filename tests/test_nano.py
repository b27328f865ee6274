"""Integration: the embedded default with real weights, offline."""

from __future__ import annotations

import pytest
import torch

from llavakit.conversation.templates import Message
from reference_generation import answer, prepare

pytestmark = pytest.mark.integration


def test_nano_loads_offline_and_knows_paris(nano_model):
    reply = answer(nano_model, [Message("user", "What is the capital of France?")], max_new_tokens=24)
    assert "Paris" in reply


def test_nano_batched_generation_equals_one_by_one(nano_model):
    convs = [
        [Message("user", "What is the capital of France?")],
        [Message("user", "Name a colour of the sky on a clear day, in one word.")],
    ]
    batch = prepare(nano_model, convs)
    new = nano_model.generate(**batch, max_new_tokens=16)
    assert [nano_model.decode(r) for r in new] == [answer(nano_model, c, max_new_tokens=16) for c in convs]


def test_nano_parts(nano_model):
    assert nano_model.num_image_tokens == 49
    assert nano_model.vision_tower.hidden_size == 320  # layer -2: the last MBConv block
    assert nano_model.language_model.config.hidden_size == 576
    assert nano_model.dtype == torch.float32


def test_gguf_conversion_from_scratch(tmp_path, monkeypatch, nano_model):
    """A fresh cache converts the GGUF (incl. computed buffers such as rotary inv_freq) and matches the default."""
    from llavakit.model.lm import _load_from_dir, convert_gguf, embedded_dir

    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path / "cache"))
    folder, gguf = embedded_dir("SmolLM2-135M-Instruct")
    target = convert_gguf(folder, gguf)
    assert target.is_relative_to(tmp_path) and (target / "model.safetensors").is_file()
    assert convert_gguf(folder, gguf) == target  # second call: the cache
    lm, _ = _load_from_dir(str(target), torch.float32)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        fresh = lm(input_ids=ids).logits
        default = nano_model.language_model(input_ids=ids).logits
    assert torch.allclose(fresh, default, atol=1e-5)
