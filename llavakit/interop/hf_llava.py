"""Export a llavakit checkpoint to transformers' ``LlavaForConditionalGeneration``.

The exported directory loads with ``LlavaForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained``, and is laid out as vLLM's ``LlavaForConditionalGeneration`` reads it
(see :func:`vllm_readiness`). What maps:

- tower: a transformers CLIP / SigLIP vision model (``vision.kind == "hf"``). EfficientNet towers
  (the ``nano`` preset) have no transformers Llava equivalent — export refuses them by name;
  their language model alone is a plain transformers model in ``<checkpoint>/language_model``.
- feature layer → ``vision_feature_layer``; ``patch`` on a CLS model → strategy ``default``
  (drops CLS); otherwise ``full``.
- projector: ``mlp2x_gelu`` maps 1:1; deeper MLPs have no equivalent and are refused. ``linear``
  (y = Wx + b) must pass through Llava's fixed shape linear_1: d_vision → d_lm, act, linear_2:
  d_lm → d_lm, and vLLM knows no identity activation (its registry: gelu, relu, silu, ... — no
  ``linear``). When 2·d_vision ≤ d_lm (the paper's CLIP-L 1024 → 4096) it is written with ``relu``:
  linear_1 = [I; −I; 0], bias 0, so relu gives [x⁺; x⁻; 0], and linear_2 = [W, −W, 0], bias b, which
  gives W(x⁺ − x⁻) + b = Wx + b — the same products, summed in another order. A wider tower gets the
  identity activation (``linear``: linear_1 = W, linear_2 = I), which transformers loads and vLLM does not.
- the ``<image>`` token gets a row in the LM's embeddings (transformers embeds the placeholder id
  before replacing it); that row is suppressed in generation.

Preprocessing follows the model's image mode: ``pad`` → ``LlavaImageProcessor(do_pad=True)`` with
the tower's mean colour (LLaVA-1.5's), ``square`` → ``CLIPImageProcessor`` (resize + centre crop),
``resize`` → a processor that resizes to the square without cropping. Through ``AutoProcessor`` a
non-square image gives pixels within 2/255 of llavakit's own (PIL resampling of the same geometry).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llavakit.errors import LlavakitError
from llavakit.model.llava import LlavaModel
from llavakit.model.projector import linear_as_relu_mlp
from llavakit.model.vision import HFVisionTower


def _check_exportable(model: LlavaModel) -> None:
    if not isinstance(model.vision_tower, HFVisionTower):
        raise LlavakitError(
            f"export to transformers Llava needs a CLIP/SigLIP tower; this model's tower is "
            f"{model.config.vision.kind!r}. Its language model alone is a transformers model in the "
            "checkpoint's language_model/ folder."
        )
    if model.config.projector.snap:
        raise LlavakitError("projector.snap (tokens snapped to word embeddings) has no transformers Llava equivalent")
    if model.config.projector.kind not in ("linear", "mlp2x_gelu"):
        raise LlavakitError(
            f"projector {model.config.projector.kind!r} has no transformers Llava equivalent (linear or mlp2x_gelu)"
        )


def _projector_state(model: LlavaModel) -> tuple[dict, str]:
    proj = model.projector
    if model.config.projector.kind == "mlp2x_gelu":
        first, second = proj[0], proj[2]
        return {
            "linear_1.weight": first.weight, "linear_1.bias": first.bias,
            "linear_2.weight": second.weight, "linear_2.bias": second.bias,
        }, "gelu"
    w, b = proj.weight.detach(), proj.bias.detach()
    relu_form = linear_as_relu_mlp(w, b)  # loads in vLLM (module docstring)
    if relu_form is not None:
        return relu_form, "relu"
    d_lm = w.shape[0]
    return {
        "linear_1.weight": w, "linear_1.bias": b,
        "linear_2.weight": torch.eye(d_lm, dtype=w.dtype), "linear_2.bias": torch.zeros(d_lm, dtype=w.dtype),
    }, "linear"


# vLLM's activation registry (vllm/model_executor/layers/activation.py, `_ACTIVATION_REGISTRY`): the names its
# LlavaMultiModalProjector accepts as ``projector_hidden_act``. Read from its source; vLLM cannot be installed here.
VLLM_ACTIVATIONS = ("gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "quick_gelu")


def vllm_readiness(config) -> str | None:
    """None if vLLM's Llava loads this exported ``LlavaConfig``, else why not (one line)."""
    if config.projector_hidden_act not in VLLM_ACTIVATIONS:
        return (f"projector_hidden_act {config.projector_hidden_act!r} is not in vLLM's activation registry "
                "(a linear projector whose tower is wider than half the LM cannot be written with relu)")
    return None


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    extra = rows - weight.shape[0]
    return weight if extra <= 0 else torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])


def to_hf_llava(model: LlavaModel):
    """An in-memory ``LlavaForConditionalGeneration`` with this model's weights."""
    from transformers import LlavaConfig as HFLlavaConfig
    from transformers import LlavaForConditionalGeneration

    _check_exportable(model)
    tower: HFVisionTower = model.vision_tower
    lm = model.language_model
    vocab = max(lm.get_input_embeddings().weight.shape[0], model.image_token_id + 1)
    text_config = lm.config.to_dict()
    text_config["vocab_size"] = vocab
    proj_state, act = _projector_state(model)
    strategy = "default" if (tower.has_cls and model.config.vision.feature_select == "patch") else "full"
    config = HFLlavaConfig(
        vision_config=tower.model.config.to_dict(),
        text_config=text_config,
        image_token_index=model.image_token_id,
        image_seq_length=tower.num_tokens,
        projector_hidden_act=act,
        vision_feature_layer=model.config.vision.feature_layer,
        vision_feature_select_strategy=strategy,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    hf = LlavaForConditionalGeneration(config).to(model.dtype).eval()
    decoder_state = dict(lm.get_decoder().state_dict())
    embed_key = "embed_tokens.weight"
    decoder_state[embed_key] = _pad_rows(decoder_state[embed_key], vocab)
    with torch.no_grad():
        hf.model.vision_tower.load_state_dict(tower.model.state_dict())
        hf.model.multi_modal_projector.load_state_dict(proj_state)
        hf.model.language_model.load_state_dict(decoder_state)
        if config.tie_word_embeddings:
            hf.tie_weights()
        else:
            hf.lm_head.weight.copy_(_pad_rows(lm.get_output_embeddings().weight, vocab))
    hf.generation_config.suppress_tokens = [model.image_token_id]
    hf.generation_config.pad_token_id = model.tokenizer.pad_token_id
    hf.generation_config.eos_token_id = model.eos_ids()
    return hf


def export_hf_llava(model: LlavaModel, out_dir: str | Path) -> Path:
    """Write model + processor (image processor, tokenizer with ``<image>``, chat template)."""
    from transformers import LlavaProcessor

    from llavakit.interop.chat_templates import export_chat_template

    out_dir = Path(out_dir)
    hf = to_hf_llava(model)
    tower: HFVisionTower = model.vision_tower
    image_processor = _image_processor(model.config.vision.image_mode, tower)
    patch = int(tower.model.config.patch_size)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=model.tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
        chat_template=export_chat_template(model.processor),
        image_token=model.config.image_token,
        num_additional_image_tokens=1 if tower.has_cls else 0,
    )
    hf.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _image_processor(mode: str, tower: HFVisionTower):
    """transformers' image processor that does what ``mode`` does (see the module docstring)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    size = tower.image_size
    common = dict(image_mean=list(tower.mean), image_std=list(tower.std), do_convert_rgb=True)
    if mode == "pad":
        return LlavaImageProcessorPil(do_pad=True, background_color=tuple(int(c * 255) for c in tower.mean),
                                      size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **common)
    if mode == "square":
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **common)
    return CLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False, **common)
