"""Precision, device and kernels of a training run: the accelerator (bf16 autocast where the
hardware computes it), the LM attention kernel while training, the frozen LM in bf16, DeepSpeed's
view of the batch."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from llavakit.errors import ConfigError
from llavakit.train.config import TrainConfig, validate
from llavakit.train.stages import get_stage


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


def frozen_linears_to_bf16(lm) -> None:
    """Stage 1 under bf16 autocast: the frozen LM's linear weights in bf16 once, instead of an autocast
    copy per op and step. Embeddings (tied to the LM head) and norms stay fp32, so the residual
    stream stays fp32 as it is under autocast."""
    tied = lm.get_input_embeddings().weight
    for module in lm.modules():
        if (isinstance(module, torch.nn.Linear) and module.weight is not tied and not module.weight.requires_grad
                and module.weight.dtype == torch.float32):
            module.to(torch.bfloat16)


def configure_deepspeed(accelerator, plan, cfg: TrainConfig) -> None:
    """DeepSpeed owns accumulation and clipping: give it this run's values (no dataloader is prepared)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = plan.per_device
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["train_batch_size"] = plan.global_batch
    ds["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0


