"""Importing LLaVA checkpoints of other codebases: transformers Llava dirs, original LLaVA
checkpoints and mm_projector.bin files — built here with transformers' own classes (tiny, random),
compared logit for logit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llavakit.errors import LlavakitError
from llavakit.model import build_model, get_preset, load_model
from llavakit.model.lm import build_byte_tokenizer
from llavakit.model.spec import resolve

CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8)
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tokenizer():
    tok = build_byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "</s>", "<image>"]})
    return tok


def llama(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)


def make_hf_llava(path, act="gelu", strategy="default", pad=True):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = tokenizer()
    config = LlavaConfig(vision_config=CLIPVisionConfig(**CLIP).to_dict(), text_config=llama(len(tok)).to_dict(),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act=act,
                         vision_feature_layer=-2, vision_feature_select_strategy=strategy,
                         image_seq_length=16 if strategy == "default" else 17)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(config).eval()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_pad": pad, "do_center_crop": True, "image_mean": MEAN, "image_std": STD}))
    return hf, tok


def _ids(tok, n_image: int) -> torch.Tensor:
    text = tok("USER: ", add_special_tokens=False)["input_ids"]
    rest = tok("\nWhat is it? ASSISTANT:", add_special_tokens=False)["input_ids"]
    return torch.tensor([text + [tok.convert_tokens_to_ids("<image>")] * n_image + rest])


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_transformers_llava_dir_imports_with_the_same_logits(tmp_path, strategy):
    hf, tok = make_hf_llava(tmp_path, strategy=strategy)
    assert resolve(str(tmp_path)).kind == "hf-llava"
    model = load_model(str(tmp_path))
    assert model.config.projector.kind == "mlp2x_gelu" and model.config.vision.image_mode == "pad"
    assert model.config.vision.feature_select == ("patch" if strategy == "default" else "cls_patch")
    ids = _ids(tok, model.num_image_tokens)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels).logits
        ours = model(ids, torch.ones_like(ids), pixel_values=pixels, return_logits=True).logits
    assert torch.allclose(ours, theirs[..., :ours.shape[-1]], atol=1e-5)


def test_llavakit_export_round_trips_through_import(tmp_path):
    from llavakit.interop.hf_llava import export_hf_llava

    cfg = get_preset("tiny-random")
    cfg.projector.kind = "linear"
    original = build_model(cfg).eval()
    export_hf_llava(original, tmp_path / "hf")
    imported = load_model(str(tmp_path / "hf"))
    assert imported.config.projector.kind == "linear"
    assert torch.equal(imported.projector.weight, original.projector.weight)
    ids = _ids(original.tokenizer, original.num_image_tokens)
    pixels = torch.randn(1, 3, original.vision_tower.image_size, original.vision_tower.image_size)
    with torch.no_grad():
        a = original(ids, torch.ones_like(ids), pixel_values=pixels, return_logits=True).logits
        b = imported(ids, torch.ones_like(ids), pixel_values=pixels, return_logits=True).logits
    assert torch.allclose(a, b[..., :a.shape[-1]], atol=1e-5)


def make_original(path, tower_dir, **mm):
    """An original-LLaVA-style checkpoint: Llama weights + model.mm_projector.* in one .bin, mm_* config."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**CLIP)).save_pretrained(tower_dir)
    (tower_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    tok = tokenizer()
    tok.chat_template = None  # as Vicuna's: the template falls back to vicuna_v1 (LLaVA-1.5's conversation)
    lm = LlamaForCausalLM(llama(len(tok)))
    state = dict(lm.state_dict())
    projector = {"model.mm_projector.0.weight": torch.randn(64, 32) * 0.1, "model.mm_projector.0.bias": torch.randn(64),
                 "model.mm_projector.2.weight": torch.randn(64, 64) * 0.1, "model.mm_projector.2.bias": torch.randn(64)}
    path.mkdir()
    torch.save({**state, **projector}, path / "pytorch_model.bin")
    config = {**llama(len(tok)).to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
              "mm_vision_tower": str(tower_dir), "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat", **mm}
    (path / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(path)
    return lm.eval(), projector, tok


def test_original_llava_checkpoint_imports_with_the_same_logits(tmp_path):
    from transformers import CLIPVisionModel

    lm, projector, tok = make_original(tmp_path / "llava", tmp_path / "clip")
    assert resolve(str(tmp_path / "llava")).kind == "llava-original"
    model = load_model(str(tmp_path / "llava"))
    assert (model.config.projector.kind, model.config.vision.image_mode, model.config.template) == (
        "mlp2x_gelu", "pad", "vicuna_v1")
    ids = _ids(tok, model.num_image_tokens)
    pixels = torch.randn(1, 3, 32, 32)
    clip = CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():  # the original recipe, by hand: layer -2 patch tokens -> MLP -> in place of <image>
        feats = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        hidden = F.gelu(feats @ projector["model.mm_projector.0.weight"].T + projector["model.mm_projector.0.bias"])
        image = hidden @ projector["model.mm_projector.2.weight"].T + projector["model.mm_projector.2.bias"]
        embeds = lm.get_input_embeddings()(ids).clone()
        embeds[ids == tok.convert_tokens_to_ids("<image>")] = image.reshape(-1, 64)
        want = lm(inputs_embeds=embeds).logits
        ours = model(ids, torch.ones_like(ids), pixel_values=pixels, return_logits=True).logits
    assert torch.allclose(ours, want[..., :ours.shape[-1]], atol=1e-5)


@pytest.mark.parametrize("field, value, needle", [
    ("mm_use_im_start_end", True, "mm_use_im_start_end=true"),
    ("image_aspect_ratio", "anyres", "AnyRes"),
    ("mm_patch_merge_type", "spatial_unpad", "mm_patch_merge_type 'spatial_unpad'"),
])
def test_original_options_llavakit_cannot_reproduce_are_refused_by_name(tmp_path, field, value, needle):
    make_original(tmp_path / "llava", tmp_path / "clip", **{field: value})
    with pytest.raises(LlavakitError, match=needle):
        load_model(str(tmp_path / "llava"))


def test_llava_next_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    proc = subprocess.run([sys.executable, "-m", "llavakit", "info", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "LLaVA-NeXT" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_mm_projector_bin_loads_onto_a_base_model(tmp_path):
    model = build_model(get_preset("tiny-random"))
    state = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in model.projector.state_dict().items()}
    torch.save(state, tmp_path / "mm_projector.bin")
    loaded = load_model("tiny-random", projector=str(tmp_path / "mm_projector.bin"))
    for key, value in loaded.projector.state_dict().items():
        assert torch.equal(value, state[f"model.mm_projector.{key}"].to(value.dtype))
    wrong = {k: v[:3] for k, v in state.items()}
    torch.save(wrong, tmp_path / "small.bin")
    with pytest.raises(LlavakitError, match="does not fit"):
        load_model("tiny-random", projector=str(tmp_path / "small.bin"))


class Payload:  # a pickled object that is not a tensor: weights_only refuses it
    pass


def test_a_pickle_that_is_not_plain_tensors_is_refused_in_one_line(tmp_path):
    torch.save({"model.mm_projector.weight": Payload()}, tmp_path / "mm_projector.bin")
    with pytest.raises(LlavakitError, match="refused — not a plain tensor file") as info:
        load_model("tiny-random", projector=str(tmp_path / "mm_projector.bin"))
    assert "\n" not in str(info.value)


def test_a_corrupt_projector_file_names_itself(tmp_path, tiny_model):
    from llavakit.model import save_projector

    save_projector(tiny_model, tmp_path / "proj")
    weights = next((tmp_path / "proj").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(LlavakitError, match=str(weights.name)):
        load_model("tiny-random", projector=str(tmp_path / "proj"))


def test_verbs_take_a_transformers_llava_dir(tmp_path):
    make_hf_llava(tmp_path / "hf")
    proc = subprocess.run([sys.executable, "-m", "llavakit", "info", str(tmp_path / "hf")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "image tokens per image : 16" in proc.stdout
    from llavakit.serve.models import accepts_images, load_servable

    assert accepts_images(load_servable(str(tmp_path / "hf")))  # no --text-only needed


def test_an_original_stage1_output_points_at_projector(tmp_path):
    make_original(tmp_path / "llava", tmp_path / "clip")
    (tmp_path / "llava" / "pytorch_model.bin").unlink()
    with pytest.raises(LlavakitError, match="without language-model weights .* projector="):
        load_model(str(tmp_path / "llava"))
