"""Export to transformers' LlavaForConditionalGeneration gives the same logits and generations."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llavakit.conversation.templates import Message
from llavakit.errors import LlavakitError
from llavakit.interop.hf_llava import export_hf_llava, to_hf_llava
from llavakit.model import build_model, get_preset
from reference_generation import prepare


def _inputs(model):
    batch = prepare(model, [[Message("user", "<image>\nWhat colour is the square?")]], [[Image.new("RGB", (32, 32), (255, 0, 0))]])
    return batch


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear"])
def test_exported_model_matches_llavakit_logits(projector):
    cfg = get_preset("tiny-random")
    cfg.projector.kind = projector
    model = build_model(cfg).eval()
    hf = to_hf_llava(model)
    batch = _inputs(model)
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], return_logits=True).logits
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]).logits
    vocab = ours.shape[-1]
    assert torch.allclose(ours, theirs[..., :vocab], atol=1e-5)


def test_export_dir_loads_with_transformers_and_generates_the_same(tiny_model, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    export_hf_llava(tiny_model, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == tiny_model.image_token_id
    batch = _inputs(tiny_model)
    ours = tiny_model.generate(**batch, max_new_tokens=8)
    with torch.no_grad():
        theirs = hf.generate(**batch, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours[0], theirs[0, batch["input_ids"].shape[1]:][: ours.shape[1]])


def test_export_refuses_deeper_mlp_projector():
    cfg = get_preset("tiny-random")
    cfg.projector.kind = "mlp3x_gelu"
    with pytest.raises(LlavakitError, match="mlp3x_gelu"):
        to_hf_llava(build_model(cfg))


def test_export_refuses_efficientnet_tower_by_name():
    cfg = get_preset("tiny-random")
    cfg.vision = get_preset("nano").vision
    with pytest.raises(LlavakitError, match="tower is 'efficientnet-lite0'"):
        to_hf_llava(build_model(cfg))


@pytest.mark.parametrize("mode", ["pad", "square", "resize"])
def test_exported_processor_gives_llavakits_pixels_for_a_non_square_image(tmp_path, mode):
    import numpy as np
    from transformers import AutoProcessor

    cfg = get_preset("tiny-random")
    cfg.vision.image_mode = mode
    model = build_model(cfg).eval()
    export_hf_llava(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 52, 3), dtype=np.uint8))
    theirs = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    ours = model.preprocess([image])
    assert theirs.shape == ours.shape
    std = torch.tensor(model.vision_tower.std).view(1, 3, 1, 1)
    assert ((theirs - ours).abs() * std).max() <= 2 / 255 + 1e-6  # within 2 of 255 levels, in 0-1 pixel units
