"""``run(config)``: one training run, from a validated config to its artifacts.

Order: validate (no model yet) → accelerator → model + stage freezing → data (+ feature cache) →
optimizer / schedule → resume → loop → artifacts (stage 1: the projector; stage 2 / finetune: a
full checkpoint, LoRA merged) + loss curve + ``result.json``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from llavakit.config import to_dict
from llavakit.errors import ConfigError, LlavakitError
from llavakit.train import state as ckpt
from llavakit.train.config import TrainConfig, validate
from llavakit.train.stages import FRESH_PROJECTOR, get_stage
from llavakit.train.freeze import freeze_for_stage, param_groups, trainable_names
from llavakit.train.metrics import MetricsLog, plot_loss
from llavakit.train.presets import build_config
from llavakit.io import atomic_write_json

# changing these between a run and its resume does not change the result (max_steps / epochs would:
# the learning-rate schedule is laid out over the total number of steps)
RESUME_FREE = {"checkpoint", "log_every", "attention", "tensorboard", "data.num_workers",
               "feature_cache.dir", "feature_cache.batch_size", "feature_cache.shard_size"}


@dataclass
class TrainResult:
    stage: int | str
    output_dir: str
    artifact: str  # stage 1: projector dir; else: the llavakit checkpoint dir
    final_loss: float | None
    steps: int
    samples: int
    seconds: float
    global_batch: int
    metrics: str
    loss_plot: str | None
    skipped: int  # examples not trained on (bad records, too long, unreadable images)

    def to_dict(self) -> dict:
        return asdict(self)


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(f"llavakit train: {text}", file=sys.stderr, flush=True)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 / AMX; Arm bf16), so autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def make_accelerator(cfg: TrainConfig):
    """(Accelerator, batch plan, DDP kwargs) of this run: bf16 autocast on a GPU, fp32 on the CPU
    unless bf16 is asked for and the CPU computes it natively.

    The config is validated first (with the world size), before anything heavy happens."""
    from accelerate import Accelerator, PartialState

    cpu = cfg.cpu or not torch.cuda.is_available()
    world = PartialState(cpu=cpu).num_processes
    plan = validate(cfg, world)
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if not cpu and torch.cuda.is_bf16_supported() else "no"
    if cpu and mixed == "fp16":
        raise ConfigError("mixed_precision fp16 needs a GPU; on the CPU use bf16 (CPUs with native bf16) or no")
    if cpu and mixed == "bf16" and not cpu_has_bf16():
        raise ConfigError("mixed_precision bf16: this CPU has no native bf16 (avx512_bf16 / amx_bf16); use no")
    from accelerate.utils import DistributedDataParallelKwargs

    # set before prepare() once the data is known: text-only batches leave the projector unused
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    # a process may train several times (quickstart: stage 1 then 2) with other precision settings;
    # the process group (PartialState) is kept
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, gradient_accumulation_steps=plan.accumulation,
                              kwargs_handlers=[ddp])
    return accelerator, plan, ddp


def _check_resume(cfg: TrainConfig, out: Path, resume: bool) -> Path | None:
    latest = ckpt.latest_checkpoint(out)
    if latest is None:
        return None
    if not resume:
        raise ConfigError(
            f"{out} already holds checkpoints (latest {latest.name}): pass --resume to continue that run, "
            "or choose another output_dir"
        )
    good = ckpt.latest_good_checkpoint(out, say=lambda text: print(f"llavakit train: {text}", file=sys.stderr))
    if good is None:
        raise LlavakitError(f"--resume: no checkpoint in {out / 'checkpoints'} can be read; start a new output_dir")
    latest = good
    saved_path = out / "config.json"
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--resume: {saved_path} is not valid JSON ({exc}); restore it or start a new "
                              "output_dir") from None
        now = to_dict(cfg)
        changed = sorted(k for k in _diff(saved, now) if not any(k == f or k.startswith(f + ".") for f in RESUME_FREE))
        if changed:
            hint = (" (the learning-rate schedule spans the planned steps: to train longer, start a new output_dir "
                    "from this run's artifact)" if {"max_steps", "epochs"} & set(changed) else "")
            raise ConfigError(f"--resume: the config differs from the run in {out} in {', '.join(changed)}{hint}")
    return latest


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


def train_attention(cfg: TrainConfig, device_type: str, mixed: str, lm_attention: str) -> str | None:
    """The LM attention a run trains with (``None``: the LM's own, ``lm_attention``). ``attention=auto``
    picks sdpa's math kernel for stage 1 under bf16 autocast on the CPU when the LM uses sdpa: torch's
    CPU flash-attention backward is the slow part of those steps (batches of short caption sequences);
    eager would round the attention scores to bf16, and on stage 2's long sequences flash is as fast
    (docs/benchmarks.md)."""
    if cfg.attention != "auto":
        return cfg.attention
    frozen_lm_on_cpu = not get_stage(cfg.stage).trains_lm and device_type == "cpu" and mixed == "bf16"
    return "sdpa_math" if frozen_lm_on_cpu and lm_attention == "sdpa" else None


def attention_kernels(attention: str | None):
    """The context a run's forward passes execute in (the sdpa kernel choice of ``sdpa_math``)."""
    if attention == "sdpa_math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def _frozen_linears_to_bf16(lm) -> None:
    """Stage 1 under bf16 autocast: the frozen LM's linear weights in bf16 once, instead of an autocast
    copy per op and step. Embeddings (tied to the LM head) and norms stay fp32, so the residual
    stream stays fp32 as it is under autocast."""
    tied = lm.get_input_embeddings().weight
    for module in lm.modules():
        if (isinstance(module, torch.nn.Linear) and module.weight is not tied and not module.weight.requires_grad
                and module.weight.dtype == torch.float32):
            module.to(torch.bfloat16)


def _load_model(cfg: TrainConfig, mixed: str, device_type: str = "cpu"):
    """(model, processor, freeze summary, the LM attention it trains with — None: its own)."""
    from llavakit.conversation.processor import Processor
    from llavakit.model import load_model

    stage = get_stage(cfg.stage)
    model = load_model(cfg.model, projector=None if cfg.projector == FRESH_PROJECTOR else cfg.projector)
    template = cfg.template or stage.template or model.config.template
    processor = Processor(model.tokenizer, template, model.num_image_tokens, model.config.image_token,
                          model.config.system_prompt)
    if stage.artifact == "model":  # the checkpoint records the template it was tuned with
        model.config.template = template
        model.processor = processor
    summary = freeze_for_stage(model, cfg)
    attention = train_attention(cfg, device_type, mixed, model.language_model.config._attn_implementation)
    if not stage.trains_lm and mixed == "bf16":
        _frozen_linears_to_bf16(model.language_model)
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
            ckpt.clean_partial(out)
        self.latest = latest = _check_resume(cfg, out, resume)
        if resume and latest is None:
            _say(accelerator, f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from the beginning")
        _say(accelerator, f"stage {cfg.stage}: {plan.describe()}")
        self.deterministic_before = torch.are_deterministic_algorithms_enabled()  # restored after train()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.seed)
        from llavakit.data.dataset import load_records

        records = load_records(cfg.data.path)  # a malformed data file fails before the model loads
        model, processor, summary, self.attention = _load_model(cfg, accelerator.mixed_precision,
                                                                accelerator.device.type)
        if self.attention is not None:
            _say(accelerator, f"LM attention while training: {self.attention}")
        _say(accelerator, summary.describe())
        self.data = data = TrainData(cfg, records, processor, model, accelerator, plan)
        per_epoch, self.steps = _steps(cfg, data, plan)
        _say(accelerator, f"{len(data)} examples, {data.micro_batches_per_epoch} micro-batches per process per "
             f"epoch, {per_epoch} optimizer steps per epoch, {self.steps} in all")
        optimizer, scheduler = _optimizer(model, cfg, self.steps)
        self.position = ckpt.Position(world_size=accelerator.num_processes, data_fingerprint=data.sampler.fingerprint())
        names = trainable_names(model)
        if latest is not None:
            ckpt.load_trainable(model, latest)
            saved = ckpt.read_position(latest)
            _check_world(accelerator, saved)
            if saved.data_fingerprint != self.position.data_fingerprint:
                raise ConfigError(f"--resume: the data or batch settings changed since {latest} was written")
            self.position = saved
            _say(accelerator, f"resuming from {latest} (step {saved.step}, epoch {saved.epoch})")
        modalities = {data.dataset.is_multimodal[i] for i in data.indices}
        ddp_kwargs.find_unused_parameters = len(modalities) > 1
        _configure_deepspeed(accelerator, plan, cfg)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if latest is not None:
            ckpt.load_training_state(latest, self.optimizer, scheduler, accelerator)
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
        artifact = _save_artifact(cfg, accelerator, self.model, out)
        result = _finish(cfg, accelerator, out, artifact, self.position, self.started, self.plan.global_batch,
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


def _configure_deepspeed(accelerator, plan, cfg: TrainConfig) -> None:
    """DeepSpeed owns accumulation and clipping: give it this run's values (no dataloader is prepared)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = plan.per_device
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["train_batch_size"] = plan.global_batch
    ds["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0


def _check_world(accelerator, position: ckpt.Position) -> None:
    if position.world_size != accelerator.num_processes:
        raise ConfigError(
            f"--resume: the checkpoint was written by {position.world_size} process(es); resume it with the same "
            f"number (not {accelerator.num_processes}) so the data order and optimizer state line up"
        )


def _save_artifact(cfg: TrainConfig, accelerator, model, out: Path) -> Path:
    from llavakit.model import save_pretrained, save_projector

    artifact = get_stage(cfg.stage).artifact
    target = out / artifact
    final = accelerator.unwrap_model(model)
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full = accelerator.get_state_dict(model)  # gathered on the main process
        if accelerator.is_main_process:
            final, _, _, _ = _load_model(cfg, "no")
            result = final.load_state_dict(full, strict=False)
            if result.missing_keys or result.unexpected_keys:  # never save fresh weights as the trained ones
                raise LlavakitError(
                    f"the gathered {accelerator.distributed_type.value} state dict does not match the model: "
                    f"{len(result.missing_keys)} missing (first: {result.missing_keys[:3]}), "
                    f"{len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[:3]}); "
                    "nothing was saved"
                )
    if accelerator.is_main_process:
        (save_projector if artifact == "projector" else save_pretrained)(final, target)
        write_provenance(cfg, target)
        if hasattr(final.language_model, "peft_config"):  # tune=lora: the adapter as PEFT writes it, too
            final.language_model.save_pretrained(out / "adapter")
            save_projector(final, out / "adapter" / "projector")
    return target


PROVENANCE = "training.json"


def write_provenance(cfg: TrainConfig, target: Path) -> None:
    """``training.json`` beside an artifact: what it was trained on, and what its start was trained on
    (so evaluations can tell held-out images from training images)."""
    def absolute(p):
        return str(Path(p).resolve()) if p else None

    earlier = []  # what this run started from: its projector artifact and its model, when recorded
    projector_dir = None  # an artifact is a directory or its .safetensors
    if cfg.projector and cfg.projector != FRESH_PROJECTOR:
        projector_dir = Path(cfg.projector) if Path(cfg.projector).is_dir() else Path(cfg.projector).parent
    model_dir = Path(cfg.model) if Path(cfg.model).is_dir() else None  # a preset has no record
    for base_dir in dict.fromkeys(d for d in (projector_dir, model_dir) if d is not None):
        if (base_dir / PROVENANCE).is_file():
            earlier.append(json.loads((base_dir / PROVENANCE).read_text(encoding="utf-8")))
    record = {"stage": cfg.stage, "data": absolute(cfg.data.path), "image_folder": absolute(cfg.data.image_folder),
              "from": earlier}
    atomic_write_json(target / PROVENANCE, record)


def _finish(cfg, accelerator, out: Path, artifact: Path, position, started: float, global_batch: int, skipped: int):
    from llavakit.train.metrics import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    plot = plot_loss(out / "metrics.jsonl", out / "loss.png", f"stage {cfg.stage} — {cfg.model}") \
        if accelerator.is_main_process else None
    result = TrainResult(
        stage=cfg.stage,
        output_dir=str(out),
        artifact=str(artifact),
        final_loss=losses[-1] if losses else None,
        steps=position.step,
        samples=position.samples,
        seconds=round(time.time() - started, 2),
        global_batch=global_batch,
        metrics=str(out / "metrics.jsonl"),
        loss_plot=str(plot) if plot else None,
        skipped=skipped,
    )
    if accelerator.is_main_process:
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        _say(accelerator, f"done in {result.seconds:.1f} s: {position.step} steps, final loss "
             f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}; wrote {artifact}")
    return result
