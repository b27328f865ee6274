"""The training stages, each one object: what it trains, what it starts from, what it writes.

- stage 1 (feature alignment): only the projector learns, on (image, caption) pairs, with the
  paper's ``plain`` template; it writes a projector artifact;
- stage 2 (visual instruction tuning): projector + LLM (``tune: full``, or LoRA adapters with
  ``tune: lora``), from a stage-1 projector (or ``projector=fresh``, or a llavakit checkpoint);
  it writes a model directory;
- finetune: as stage 2, continuing from a stage-2 checkpoint with its own projector.

The vision tower is frozen in every stage (so its features can be cached). Every rule that differs
between stages is here; the runner, the validation and the freezing ask the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llavakit.errors import ConfigError

FRESH_PROJECTOR = "fresh"  # stage 2 without stage 1: start from a randomly initialised projector


@dataclass(frozen=True)
class Stage:
    key: int | str  # the value of TrainConfig.stage
    trains_lm: bool  # False: only the projector learns (the frozen LM may then be kept in bf16)
    template: str | None  # the default conversation template; None: the model's own, recorded in the artifact
    artifact: str  # what the run writes in output_dir: "projector" (an artifact) or "model" (a checkpoint dir)
    check: Callable  # (cfg, model_kind, check_path) -> None: the stage's rules, before a model loads


def _snaps(model: str, kind: str) -> bool:
    from llavakit.model.presets import get_preset

    if kind == "preset":
        return get_preset(model).projector.snap
    if kind == "llavakit":
        from llavakit.model.checkpoint import read_config

        return read_config(model).projector.snap
    return False


def _check_stage1(cfg, kind: str, check_path) -> None:
    if _snaps(cfg.model, kind):
        raise ConfigError(f"model {cfg.model}: its projector snaps tokens to words (projector.snap), so stage 1 has "
                          "nothing to train; go from `llavakit align` straight to stage 2 (projector=ALIGN/projector)")
    if cfg.tune == "lora":
        raise ConfigError("stage 1 trains only the projector: tune=lora applies to stage 2 / finetune")
    if cfg.projector is not None:
        check_path(cfg.projector, "projector", "any")


def _check_stage2(cfg, kind: str, check_path) -> None:
    if cfg.projector is None and kind == "preset":
        raise ConfigError(
            "stage 2 starts from a stage-1 projector: set projector=DIR (the stage-1 run's "
            f"output_dir/projector), projector={FRESH_PROJECTOR} (no alignment stage: paper Table 8's "
            "ablation) or use a llavakit checkpoint as model"
        )
    if cfg.projector is not None and cfg.projector != FRESH_PROJECTOR:
        check_path(cfg.projector, "projector", "any")


def _check_finetune(cfg, kind: str, check_path) -> None:
    if kind == "preset":
        raise ConfigError(f"finetune continues from a stage-2 checkpoint: model {cfg.model!r} is a preset")
    if cfg.projector is not None:
        raise ConfigError("finetune uses the checkpoint's own projector: remove projector")


STAGES: dict[int | str, Stage] = {
    1: Stage(1, trains_lm=False, template="plain", artifact="projector", check=_check_stage1),
    2: Stage(2, trains_lm=True, template=None, artifact="model", check=_check_stage2),
    "finetune": Stage("finetune", trains_lm=True, template=None, artifact="model", check=_check_finetune),
}


def get_stage(key) -> Stage:
    if key not in STAGES:
        raise ConfigError(f"stage {key!r} is not one of 1, 2, finetune")
    return STAGES[key]
