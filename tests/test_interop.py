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


def _linear_model(vision_hidden: int = 32):
    cfg = get_preset("tiny-random")
    cfg.projector.kind = "linear"
    cfg.vision.hf_config = {**cfg.vision.hf_config, "hidden_size": vision_hidden}
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_linear_projector_exports_in_a_form_vllm_accepts_and_computes_the_same():
    from llavakit.interop.hf_llava import VLLM_ACTIVATIONS, vllm_readiness

    model = _linear_model()  # tower 32 wide, LM 64: 2 x 32 <= 64
    hf = to_hf_llava(model)
    assert hf.config.projector_hidden_act == "relu" and "relu" in VLLM_ACTIVATIONS
    assert vllm_readiness(hf.config) is None
    proj = hf.model.multi_modal_projector  # vLLM's LlavaMultiModalProjector has these shapes: d_v -> d_lm -> d_lm
    assert proj.linear_1.weight.shape == (64, 32) and proj.linear_2.weight.shape == (64, 64)
    x = torch.randn(3, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(proj(x), model.projector(x), rtol=1e-5, atol=1e-5)
        ours, theirs = model.projector.to(torch.bfloat16), proj.to(torch.bfloat16)
        torch.testing.assert_close(theirs(x.bfloat16()).float(), ours(x.bfloat16()).float(), rtol=2e-2, atol=2e-2)


def test_a_linear_projector_wider_than_half_the_lm_exports_for_transformers_and_says_why_not_vllm(tmp_path):
    from llavakit.interop.hf_llava import vllm_readiness
    from llavakit.model import load_model

    model = _linear_model(vision_hidden=48)  # 2 x 48 > 64: no room for [x+; x-]
    hf = to_hf_llava(model)
    assert hf.config.projector_hidden_act == "linear"
    assert "not in vLLM's activation registry" in vllm_readiness(hf.config)
    x = torch.randn(2, 16, 48)
    with torch.no_grad():
        torch.testing.assert_close(hf.model.multi_modal_projector(x), model.projector(x), rtol=1e-5, atol=1e-5)
    export_hf_llava(model, tmp_path / "hf")
    assert torch.equal(load_model(str(tmp_path / "hf")).projector.weight, model.projector.weight)


def test_export_cli_tells_whether_vllm_loads_the_export(tmp_path, capsys):
    from llavakit.cli import main

    assert main(["export", "tiny-random", "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert f"vllm serve {tmp_path / 'hf'} --chat-template {tmp_path / 'hf'}/chat_template.jinja" in out
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()


def test_a_relu_projector_that_is_not_a_linear_one_is_refused_on_import(tmp_path):
    from llavakit.model import load_model

    export_hf_llava(_linear_model(), tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "hf" / "model.safetensors")
    key = next(k for k in weights if k.endswith("multi_modal_projector.linear_1.weight"))
    weights[key] = weights[key] + 0.01  # a general relu MLP: no llavakit projector computes it
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlavakitError, match="projector_hidden_act 'relu' has no llavakit projector"):
        load_model(str(tmp_path / "hf"))
