"""``run(config)``: one training run, from a validated config to its artifacts.

Order: validate (no model yet) → accelerator → model + stage freezing → data (+ feature cache) →
optimizer / schedule → resume → loop → artifacts (stage 1: the projector; stage 2 / finetune: a
full checkpoint, LoRA merged) + loss curve + ``result.json``.

The pieces it reads top to bottom: :mod:`~llavakit.train.stages` (what a stage trains and writes),
:mod:`~llavakit.train.precision` (accelerator, precision, kernels, DeepSpeed),
:mod:`~llavakit.train.resume` (which checkpoint, and whether it still fits),
:mod:`~llavakit.train.artifacts` (artifact, provenance, ``result.json``), :mod:`~llavakit.train.loop`.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from llavakit.config import to_dict
from llavakit.errors import ConfigError
from llavakit.io import atomic_write_json
from llavakit.train import checkpoints
from llavakit.train.artifacts import TrainResult, finish, save_artifact, say
from llavakit.train.config import TrainConfig
from llavakit.train.freeze import freeze_for_stage, param_groups, trainable_names
from llavakit.train.metrics import MetricsLog
from llavakit.train.precision import (attention_kernels, configure_deepspeed, frozen_linears_to_bf16,
                                      make_accelerator, train_attention)
from llavakit.train.recipes import build_config
from llavakit.train.resume import check_resume, check_world
from llavakit.train.stages import FRESH_PROJECTOR, get_stage


def _load_model(cfg: TrainConfig, mixed: str, device_type: str = "cpu"):
    """(model, processor, freeze summary, the LM attention it trains with — None: its own)."""
    from llavakit.model import load_model

    stage = get_stage(cfg.stage)
    model = load_model(cfg.model, projector=None if cfg.projector == FRESH_PROJECTOR else cfg.projector)
    template = cfg.template or stage.template or model.config.template
    processor = model.make_processor(template)
    if stage.artifact == "model":  # the checkpoint records the template it was tuned with
        model.set_template(template)
    summary = freeze_for_stage(model, cfg)
    attention = train_attention(cfg, device_type, mixed, model.language_model.config._attn_implementation)
    if not stage.trains_lm and mixed == "bf16":
        frozen_linears_to_bf16(model.language_model)
    if attention is not None:  # training only: the saved artifact keeps the LM's own kernel
        try:
            model.language_model.set_attn_implementation("sdpa" if attention == "sdpa_math" else attention)
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"attention={cfg.attention}: the language model cannot use it ({exc})") from None
    for part in (model.projector, model.language_model):
        for p in part.parameters():  # trainable weights in fp32 (master weights under autocast)
            if (p.requires_grad or mixed == "no") and p.dtype != torch.float32:
                p.data = p.data.float()
    return model, processor, summary, attention


def _optimizer(model, cfg: TrainConfig, steps: int):
    from llavakit.train.schedule import make_scheduler

    o = cfg.optim
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in model.parameters() if p.requires_grad) else {}
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay, **fused)
    scheduler = make_scheduler(o.scheduler, optimizer, math.ceil(o.warmup_ratio * steps), steps)
    return optimizer, scheduler


def _trainable_state_fn(accelerator, model, names: list[str]):
    from accelerate.utils import DistributedType

    gathered = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    wanted = set(names)

    def state() -> dict:
        if gathered:  # collective: every rank calls it
            full = accelerator.get_state_dict(model)
            return {k: v for k, v in full.items() if k in wanted} if accelerator.is_main_process else {}
        params = dict(accelerator.unwrap_model(model).named_parameters())
        return {n: params[n] for n in names}

    return state


class TrainSession:
    """A prepared run: model frozen for its stage, data + cache ready, optimizer, resume applied.

    ``TrainSession(cfg).train()`` is :func:`run`; tests use the pieces (``unwrapped``, ``loop``).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        from accelerate.utils import set_seed

        from llavakit.train.data import TrainData, null_batch
        from llavakit.train.loop import Loop

        self.started = time.time()
        self.cfg = cfg
        accelerator, plan, ddp_kwargs = make_accelerator(cfg)
        self.accelerator, self.plan = accelerator, plan
        self.out = out = Path(cfg.output_dir)
        if accelerator.is_main_process:
            checkpoints.clean_partial(out)
        self.latest = latest = check_resume(cfg, out, resume, accelerator.is_main_process)
        if resume and latest is None:
            say(accelerator, f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from the beginning")
        say(accelerator, f"stage {cfg.stage}: {plan.describe()}")
        self.deterministic_before = torch.are_deterministic_algorithms_enabled()  # restored after train()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.seed)
        from llavakit.data.dataset import load_records

        records = load_records(cfg.data.path)  # a malformed data file fails before the model loads
        model, processor, summary, self.attention = _load_model(cfg, accelerator.mixed_precision,
                                                                accelerator.device.type)
        if self.attention is not None:
            say(accelerator, f"LM attention while training: {self.attention}")
        say(accelerator, summary.describe())
        self.data = data = TrainData(cfg, records, processor, model, accelerator, plan)
        per_epoch, self.steps = _steps(cfg, data, plan)
        say(accelerator, f"{len(data)} examples, {data.micro_batches_per_epoch} micro-batches per process per "
             f"epoch, {per_epoch} optimizer steps per epoch, {self.steps} in all")
        optimizer, scheduler = _optimizer(model, cfg, self.steps)
        self.position = checkpoints.Position(world_size=accelerator.num_processes, data_fingerprint=data.sampler.fingerprint())
        names = trainable_names(model)
        if latest is not None:
            checkpoints.load_trainable(model, latest)
            saved = checkpoints.read_position(latest)
            check_world(accelerator, saved)
            if saved.data_fingerprint != self.position.data_fingerprint:
                raise ConfigError(f"--resume: the data or batch settings changed since {latest} was written")
            self.position = saved
            say(accelerator, f"resuming from {latest} (step {saved.step}, epoch {saved.epoch})")
        modalities = {data.dataset.is_multimodal[i] for i in data.indices}
        ddp_kwargs.find_unused_parameters = len(modalities) > 1
        configure_deepspeed(accelerator, plan, cfg)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if latest is not None:
            checkpoints.load_training_state(latest, self.optimizer, scheduler, accelerator)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.loop = Loop(cfg, plan, accelerator, self.model, self.optimizer, scheduler,
                         _trainable_state_fn(accelerator, self.model, names),
                         lambda: null_batch(self.unwrapped, accelerator.device, data.cache is not None))

    def train(self) -> TrainResult:
        cfg, accelerator, out = self.cfg, self.accelerator, self.out
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", to_dict(cfg))
        resumed = self.position.step if self.latest is not None else None
        log = MetricsLog(out, accelerator.is_main_process, cfg.tensorboard, resumed)
        try:
            with attention_kernels(self.attention):
                self.position = self.loop.run(self.data, self.position, self.steps, out, log, f"stage {cfg.stage}")
        finally:
            log.close()
            torch.use_deterministic_algorithms(self.deterministic_before)  # no leak into the next stage / caller
        if accelerator.is_main_process:
            self.data.write_report(out / "skipped.json")
        artifact = save_artifact(cfg, accelerator, self.model, out, lambda: _load_model(cfg, "no")[0])
        result = finish(cfg, accelerator, out, artifact, self.position, self.started, self.plan.global_batch,
                         self.data.skipped)
        accelerator.wait_for_everyone()
        return result


def run(
    config: TrainConfig | dict | str | Path,
    resume: bool = False,
    overrides: Sequence[str] = (),
    stage: int | str | None = None,
) -> TrainResult:
    """Train one stage. ``config`` is a TrainConfig, a dict, or a YAML path (+ ``overrides``)."""
    cfg = config if isinstance(config, TrainConfig) else build_config(config, overrides=overrides, stage=stage)
    session = TrainSession(cfg, resume)
    try:
        return session.train()
    finally:  # a process that runs several stages (quickstart, reproduce) keeps no earlier model alive
        session.accelerator.free_memory()
        del session
        gc.collect()


def _steps(cfg: TrainConfig, data, plan) -> tuple[int, int]:
    from llavakit.train.loop import total_steps

    if data.micro_batches_per_epoch == 0:
        raise ConfigError(f"data.path {cfg.data.path}: no trainable examples left (see the data report above)")
    return total_steps(cfg, data.micro_batches_per_epoch, plan.accumulation)


