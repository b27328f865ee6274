"""Typed training configs and their validation — all before any model is loaded.

A training run is one :class:`TrainConfig`. It comes from a YAML file or a shipped recipe (see
:mod:`llavakit.train.recipes`), merged with ``key=value`` overrides, then :func:`validate` checks
paths, stage consistency and the batch arithmetic (global batch = per-device x accumulation x world
size) so a mistake is one clear line, not a traceback after a minute of model loading.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llavakit.errors import ConfigError
from llavakit.imaging import DATA_MAX_PIXELS
from llavakit.train.stages import get_stage

StageKey = Literal[1, 2, "finetune"]  # the stages themselves: llavakit/train/stages.py


@dataclass
class DataConfig:
    path: str | None = None  # LLaVA JSON / JSONL
    image_folder: str | None = None  # relative image paths resolve against it
    max_length: int | None = None  # None: the LM's context length
    long_policy: Literal["drop", "truncate"] = "drop"
    image_placement: Literal["first", "random", "keep"] = "first"
    group_by_length: bool = True  # length-grouped batches (text-only and multimodal kept apart)
    num_workers: int = 0
    max_bad_image_fraction: float = 0.01  # more samples than this with a missing/corrupt image stops the run
    max_image_pixels: int = DATA_MAX_PIXELS  # per image, from its header (a pad model: its padded square); 0: none


@dataclass
class FeatureCacheConfig:
    """Frozen-tower features computed once per image into an on-disk memory-mapped store."""

    enabled: bool = True
    dir: str | None = None  # None: $LLAVAKIT_CACHE/features
    batch_size: int = 16  # images per tower forward while building
    shard_size: int = 1024  # images per memory-mapped shard file


@dataclass
class LoraSettings:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class OptimConfig:
    lr: float = 2e-5
    projector_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0  # LLaVA: AdamW without weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0  # None: no clipping


@dataclass
class CheckpointConfig:
    every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2


@dataclass
class TrainConfig:
    stage: StageKey = 1
    model: str = "nano"  # a model preset or a llavakit checkpoint dir (finetune: a stage-2 checkpoint)
    projector: str | None = None  # stage 2: the stage-1 projector artifact (dir or .safetensors); "fresh": random init
    template: str | None = None  # None: stage 1 'plain' (image, then caption), else the model's own template
    tune: Literal["full", "lora"] = "full"  # stage 2 / finetune: what of the LLM trains
    lora: LoraSettings = field(default_factory=LoraSettings)
    output_dir: str = "runs/train"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int | None = None  # None: derived from global_batch_size
    global_batch_size: int | None = None  # None: per-device x accumulation x world size
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    seed: int = 42
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU, fp32 on CPU; bf16 also on CPUs with native bf16
    # LM attention while training. auto: sdpa's math kernel for stage 1 under bf16 autocast on the CPU
    # (torch's CPU flash-attention backward is slow there; docs/benchmarks.md), else the LM's own (sdpa)
    attention: Literal["auto", "sdpa", "sdpa_math", "eager"] = "auto"
    gradient_checkpointing: bool = False
    cpu: bool = False  # force the CPU even when a GPU is present
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU)
    log_every: int = 1
    progress: bool = True  # tqdm bars (data, feature cache, steps) on the main process
    tensorboard: bool = True  # when the tensorboard package is installed


@dataclass
class BatchPlan:
    per_device: int
    accumulation: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world_size

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.per_device} per device x {self.accumulation} "
            f"accumulation x {self.world_size} process{'es' if self.world_size != 1 else ''}"
        )


def batch_plan(cfg: TrainConfig, world_size: int) -> BatchPlan:
    """Resolve per-device x accumulation x world size against the requested global batch."""
    per, acc, glob = cfg.per_device_batch_size, cfg.gradient_accumulation_steps, cfg.global_batch_size
    if per < 1:
        raise ConfigError(f"per_device_batch_size must be >= 1, got {per}")
    if acc is not None and acc < 1:
        raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {acc}")
    if glob is None:
        return BatchPlan(per, acc or 1, world_size)
    if glob < 1:
        raise ConfigError(f"global_batch_size must be >= 1, got {glob}")
    step = per * world_size
    if acc is None:
        if glob % step:
            raise ConfigError(
                f"global_batch_size {glob} is not a multiple of per_device_batch_size {per} x "
                f"{world_size} process(es) = {step}; change per_device_batch_size or global_batch_size"
            )
        return BatchPlan(per, glob // step, world_size)
    if step * acc != glob:
        raise ConfigError(
            f"global_batch_size {glob} != per_device_batch_size {per} x gradient_accumulation_steps {acc} x "
            f"{world_size} process(es) = {step * acc}; set only two of the three"
        )
    return BatchPlan(per, acc, world_size)


def _check_path(value: str | None, key: str, want: str) -> None:
    if value is None:
        return
    path = Path(value)
    if want == "file" and not path.is_file():
        raise ConfigError(f"{key}: file {value} does not exist")
    if want == "dir" and not path.is_dir():
        raise ConfigError(f"{key}: directory {value} does not exist")
    if want == "any" and not path.exists():
        raise ConfigError(f"{key}: {value} does not exist")


def validate(cfg: TrainConfig, world_size: int = 1) -> BatchPlan:
    """Check everything that can be checked without loading a model; return the batch plan."""
    stage = get_stage(cfg.stage)
    if cfg.data.path is None:
        raise ConfigError("data.path is required: set it in the config or pass data.path=FILE")
    _check_path(cfg.data.path, "data.path", "file")
    _check_path(cfg.data.image_folder, "data.image_folder", "dir")
    from llavakit.errors import LlavakitError
    from llavakit.model.spec import resolve

    try:
        kind = resolve(cfg.model).kind
    except LlavakitError as exc:
        raise ConfigError(f"model: {exc}") from None
    if kind == "transformers-lm":
        raise ConfigError(f"model: {cfg.model} is a plain transformers language model, not a LLaVA model: use a "
                          "model preset whose lm.name_or_path is it, or a LLaVA checkpoint")
    stage.check(cfg, kind, _check_path)
    if cfg.template is not None:
        from llavakit.conversation.templates import TEMPLATES

        if cfg.template not in TEMPLATES:
            raise ConfigError(f"template {cfg.template!r} is not one of {', '.join(TEMPLATES)}")
    o = cfg.optim
    numbers = {"optim.lr": o.lr, "optim.projector_lr": o.projector_lr, "optim.eps": o.eps,
               "optim.weight_decay": o.weight_decay, "optim.max_grad_norm": o.max_grad_norm, "epochs": cfg.epochs,
               "optim.warmup_ratio": o.warmup_ratio, "lora.dropout": cfg.lora.dropout,
               **{f"optim.betas[{i}]": b for i, b in enumerate(o.betas)}}
    for key, value in numbers.items():  # NaN passes every comparison below; inf breaks the optimizer later
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    if o.lr <= 0 or (o.projector_lr is not None and o.projector_lr <= 0):
        raise ConfigError("optim.lr and optim.projector_lr must be > 0")
    if o.eps <= 0 or o.weight_decay < 0:
        raise ConfigError(f"optim.eps must be > 0 and optim.weight_decay >= 0, got {o.eps} and {o.weight_decay}")
    if not 0 <= o.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if o.max_grad_norm is not None and o.max_grad_norm <= 0:
        raise ConfigError("optim.max_grad_norm must be > 0 (or null for no clipping)")
    if cfg.epochs <= 0 and cfg.max_steps is None:
        raise ConfigError(f"epochs must be > 0, got {cfg.epochs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {cfg.max_steps}")
    if cfg.checkpoint.every < 0 or cfg.checkpoint.keep_last < 1:
        raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep_last >= 1")
    if cfg.data.max_length is not None and cfg.data.max_length < 2:
        raise ConfigError("data.max_length must be >= 2")
    if not isinstance(cfg.data.max_image_pixels, int) or cfg.data.max_image_pixels < 0:
        raise ConfigError(f"data.max_image_pixels must be an integer >= 0 (0: no limit), got {cfg.data.max_image_pixels}")
    if not 0 <= cfg.data.max_bad_image_fraction <= 1:
        raise ConfigError(f"data.max_bad_image_fraction must be in [0, 1], got {cfg.data.max_bad_image_fraction}")
    if cfg.data.num_workers < 0 or cfg.log_every < 1:
        raise ConfigError("data.num_workers must be >= 0 and log_every >= 1")
    fc = cfg.feature_cache
    if fc.batch_size < 1 or fc.shard_size < 1:
        raise ConfigError("feature_cache.batch_size and feature_cache.shard_size must be >= 1")
    if cfg.lora.r < 1 or not 0 <= cfg.lora.dropout < 1:
        raise ConfigError("lora.r must be >= 1 and lora.dropout in [0, 1)")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} exists and is not a directory")
    return batch_plan(cfg, world_size)
