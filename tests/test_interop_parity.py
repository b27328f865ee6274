"""An export stands alone: from raw images and standard multimodal messages, transformers'
``AutoProcessor`` + ``LlavaForConditionalGeneration`` give llavakit's ids, pixels and greedy text —
for pad and square image modes, CLIP and SigLIP towers, linear and mlp2x_gelu projectors, a ChatML
tokenizer and a SentencePiece-style one (which puts ``<s>`` first itself, with Vicuna's template).

Image sizes are chosen so that neither side resamples (pad: 32x20 → 32x32; square: 48x32 → crop
32x32): pixels then agree to float rounding and greedy text must be identical. Resampled images are
compared in tests/test_interop.py (within 2/255)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.conversation.templates import Message
from llavakit.interop.hf_llava import export_hf_llava
from llavakit.model import build_model, get_preset
from reference_generation import prepare

QUESTION = "What colour is the square?"
SIZES = {"pad": (32, 20), "square": (48, 32)}  # width, height


def _image(mode: str) -> Image.Image:
    w, h = SIZES[mode]
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _model(tower: str, mode: str, projector: str, tokenizer: str):
    cfg = get_preset("tiny-random")
    if tower == "siglip":
        cfg.vision.hf_config = {**cfg.vision.hf_config, "model_type": "siglip_vision_model"}
    cfg.vision.image_mode, cfg.projector.kind = mode, projector
    cfg.template = "chat_template" if tokenizer == "chatml" else "vicuna_v1"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if tokenizer == "sentencepiece":
        model.tokenizer.add_bos_token = True
        model.set_template("vicuna_v1")
    return model


@pytest.mark.parametrize("tokenizer", ["chatml", "sentencepiece"])
@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_raw_image_and_messages_give_llavakits_ids_pixels_and_greedy_text(tmp_path, tower, mode, projector, tokenizer):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = _model(tower, mode, projector, tokenizer)
    export_hf_llava(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    image = _image(mode)

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    theirs = processor(images=[image], text=prompt, return_tensors="pt")
    ours = prepare(model, [[Message("user", f"<image>\n{QUESTION}")]], [[image]])

    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    torch.testing.assert_close(theirs["pixel_values"], ours["pixel_values"], rtol=0, atol=1e-5)
    mine = model.generate(**ours, max_new_tokens=8)
    with torch.no_grad():
        out = hf.generate(**theirs, max_new_tokens=8, do_sample=False)
    new = out[0, theirs["input_ids"].shape[1]:]
    assert new[: mine.shape[1]].tolist() == mine[0].tolist()
    assert processor.decode(new[: mine.shape[1]], skip_special_tokens=True) == model.decode(mine[0])
