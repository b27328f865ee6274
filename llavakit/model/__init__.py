"""Vision towers, projectors, the LLaVA composition and checkpoint I/O."""

from llavakit.model.checkpoint import (
    build_model,
    from_pretrained,
    load_model,
    load_projector,
    save_pretrained,
    save_projector,
)
from llavakit.model.config import LlavaConfig, LMConfig, ProjectorConfig, VisionConfig
from llavakit.model.llava import ImageTokenMismatch, LlavaModel, LlavaOutput
from llavakit.model.presets import PRESETS, get_preset

__all__ = [
    "ImageTokenMismatch",
    "LMConfig",
    "LlavaConfig",
    "LlavaModel",
    "LlavaOutput",
    "PRESETS",
    "ProjectorConfig",
    "VisionConfig",
    "build_model",
    "from_pretrained",
    "get_preset",
    "load_model",
    "load_projector",
    "save_pretrained",
    "save_projector",
]
