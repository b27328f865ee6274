"""Held-out answer loss: per-type losses, the mismatched-image control, and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import write_instructions

from llavakit.errors import DataError
from llavakit.eval import answer_loss


def test_mismatch_never_keeps_the_own_image():
    recs = [{"id": str(i), "image": im} for i, im in enumerate(["a", "a", "b", "c", "c"])]
    out = answer_loss.mismatch_images(recs)
    assert [r["image"] for r in out] == ["b", "b", "c", "a", "a"]
    assert [r["id"] for r in out] == [r["id"] for r in recs] and recs[0]["image"] == "a"  # copies
    with pytest.raises(DataError, match="at least two images"):
        answer_loss.mismatch_images([{"id": "x", "image": "a"}, {"id": "y", "image": "a"}])
    with pytest.raises(DataError, match="record y: answer loss needs exactly one image"):
        answer_loss.mismatch_images([{"id": "x", "image": "a"}, {"id": "y"}])


def _typed(path):
    recs = [r for r in json.loads(path.read_text(encoding="utf-8")) if "image" in r]
    for i, r in enumerate(recs):
        r["type"] = "conversation" if i % 2 else "detail"
    return recs


def test_losses_by_type_and_the_image_gain(tmp_path, fresh_tiny_model):
    path, images = write_instructions(tmp_path, 6, text_only=0)
    recs = _typed(path)
    model = fresh_tiny_model
    result = answer_loss.evaluate(model, recs, images, batch_size=4, progress=False)
    assert set(result) == {"conversation", "detail", "all"}
    for kind, v in result.items():
        assert v["tokens"] > 0 and v["loss"] > 0
        assert v["image_gain"] == pytest.approx(v["mismatched_loss"] - v["loss"])
    assert result["all"]["tokens"] == result["conversation"]["tokens"] + result["detail"]["tokens"]
    assert abs(result["all"]["image_gain"]) > 1e-6  # the random projector passes image information on

    # the same loss as the model's own loss on one record (labels from the training encoder)
    one = answer_loss.evaluate(model, recs[:2], images, batch_size=1, progress=False)
    from llavakit.data.batching import Collator, pixel_image_fn
    from llavakit.data.dataset import LlavaDataset

    ds = LlavaDataset(recs[:1], model.processor, images, progress=False)
    batch = Collator(model.processor.tokenizer.pad_token_id, image_fn=pixel_image_fn(model.preprocess))([ds[0]])
    with torch.no_grad():
        own = model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"],
                    labels=batch["labels"]).loss
    assert one["detail"]["loss"] == pytest.approx(float(own), rel=1e-4)

    # a projector that outputs zeros hides the image: no gain at all
    with torch.no_grad():
        for p in model.projector.parameters():
            p.zero_()
    blind = answer_loss.evaluate(model, recs, images, batch_size=4, progress=False)
    assert blind["all"]["image_gain"] == pytest.approx(0.0, abs=1e-6)
