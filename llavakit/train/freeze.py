"""Freezing and unfreezing parameters — the one place ``requires_grad`` is set for training.

The stage (:mod:`llavakit.train.stages`) says whether the LLM trains. When it does not (stage 1),
the LLM's weights have ``requires_grad=False``, so backward computes gradients of activations (to
reach the projector) but no LLM weight grads. When it does: the whole LLM (``tune: full``) or LoRA
adapters on it (``tune: lora``, via peft). The projector always trains; the vision tower never
(its features can therefore be cached).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llavakit.errors import ConfigError
from llavakit.train.config import LoraSettings, TrainConfig
from llavakit.train.stages import get_stage


@dataclass
class Trainable:
    """Counts of trainable parameters per part, for the run summary."""

    projector: int
    language_model: int
    vision_tower: int
    total_params: int

    def describe(self) -> str:
        total = self.projector + self.language_model + self.vision_tower
        return (
            f"trainable {total / 1e6:.2f} M of {self.total_params / 1e6:.2f} M parameters "
            f"(projector {self.projector / 1e6:.2f} M, language model {self.language_model / 1e6:.2f} M, "
            f"vision tower {self.vision_tower})"
        )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def summary(model) -> Trainable:
    return Trainable(
        projector=_count(model.projector),
        language_model=_count(model.language_model),
        vision_tower=_count(model.vision_tower),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def add_lora(model, settings: LoraSettings) -> None:
    """Wrap the LLM in peft LoRA adapters (base weights frozen by peft)."""
    from peft import LoraConfig, get_peft_model

    if isinstance(settings.target_modules, str) and settings.target_modules != "all-linear":
        targets: list[str] | str = [settings.target_modules]
    else:
        targets = settings.target_modules
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model.language_model = get_peft_model(model.language_model, config)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules {settings.target_modules!r}: {exc}") from None


def freeze_for_stage(model, cfg: TrainConfig) -> Trainable:
    """Set ``requires_grad`` for ``cfg.stage`` (and add LoRA adapters); return the counts."""
    model.requires_grad_(False)
    if get_stage(cfg.stage).trains_lm:
        if cfg.tune == "lora":
            add_lora(model, cfg.lora)  # adapters trainable, base LLM frozen
        else:
            model.language_model.requires_grad_(True)
    model.projector.requires_grad_(True)
    model.vision_tower.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.language_model.activation_checkpointing_enable({"use_reentrant": False})
    return summary(model)


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: the projector at ``optim.projector_lr`` (default ``optim.lr``), the rest at ``lr``."""
    proj = [p for p in model.projector.parameters() if p.requires_grad]
    proj_ids = {id(p) for p in proj}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in proj_ids]
    groups = [{"params": proj, "lr": cfg.optim.projector_lr or cfg.optim.lr, "name": "projector"}]
    if rest:
        groups.append({"params": rest, "lr": cfg.optim.lr, "name": "language_model"})
    return groups


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
