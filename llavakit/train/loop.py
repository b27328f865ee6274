"""The optimisation loop on accelerate: token-weighted accumulation, clipping, logging, checkpoints.

One optimizer step consumes ``accumulation`` micro-batches on every rank. The loss of each
micro-batch is its *sum* over supervised tokens divided by the number of supervised tokens of the
whole global batch (all micro-batches, all ranks — one all-reduce before the backward passes).
So every token weighs the same however the global batch is split: 2 processes x batch 2 give the
gradients of 1 process x batch 4, and of 1 process x batch 2 x accumulation 2.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from llavakit.memory import heap_trimmer
from llavakit.progress import bar as progress_bar

from llavakit.conversation.processor import IGNORE_INDEX
from llavakit.train import checkpoints
from llavakit.train.config import BatchPlan, TrainConfig
from llavakit.train.metrics import MetricsLog

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "image_features")


@dataclass
class StepResult:
    loss: float | None
    tokens: int
    samples: int
    grad_norm: float | None


def total_steps(cfg: TrainConfig, micro_batches_per_epoch: int, accumulation: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps); a short last group still makes a step."""
    per_epoch = max(1, math.ceil(micro_batches_per_epoch / accumulation))
    if cfg.max_steps is not None:
        return per_epoch, cfg.max_steps
    return per_epoch, max(1, math.ceil(cfg.epochs * per_epoch))


def groups(batches: Iterable, size: int) -> Iterator[list]:
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Loop:
    def __init__(self, cfg: TrainConfig, plan: BatchPlan, accelerator, model, optimizer, scheduler,
                 trainable_state: Callable, null_batch: Callable):
        self.cfg, self.plan, self.acc = cfg, plan, accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.trainable_state = trainable_state  # () -> {name: tensor} on the main process
        self.null_batch = null_batch  # () -> a batch with nothing supervised (for an emptied micro-batch)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = accelerator.device
        self.trim_heap = heap_trimmer(torch.device(self.device).type)

    def _to_device(self, batch: dict) -> dict:
        if batch["input_ids"].shape[0] == 0:  # every sample had a bad image: stay in step with the other ranks
            return self.null_batch()
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k in MODEL_KEYS and v is not None}

    def backward(self, group: list[dict]) -> tuple[torch.Tensor, int, int]:
        """Forward + backward of one optimizer step's micro-batches, token-weighted over all ranks.

        Returns (sum of token losses over all ranks, supervised tokens, samples) of the global batch.
        """
        acc, world = self.acc, self.acc.num_processes
        local_samples = sum(int(b["input_ids"].shape[0]) for b in group)
        group = [self._to_device(b) for b in group]
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
        counts = torch.tensor([local_tokens, local_samples], dtype=torch.float64, device=self.device)
        counts = acc.reduce(counts, "sum") if world > 1 else counts
        global_tokens, global_samples = int(counts[0]), int(counts[1])
        # accelerate divides by gradient_accumulation_steps (DeepSpeed does it itself): undo that;
        # DDP/FSDP/ZeRO average over ranks: undo that too, leaving sum / global tokens.
        scale = world * acc.gradient_accumulation_steps / max(global_tokens, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            acc.sync_gradients = last
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                out = self.model(**batch)
                acc.backward(out.loss * (out.num_supervised * scale))
            loss_sum += out.loss.detach().double() * out.num_supervised
        if world > 1:
            loss_sum = acc.reduce(loss_sum, "sum")
        return loss_sum, global_tokens, global_samples

    def step(self, group: list[dict]) -> StepResult:
        """One optimizer step: backward over ``group``, clip, AdamW, schedule."""
        loss_sum, tokens, samples = self.backward(group)
        max_norm = self.cfg.optim.max_grad_norm
        norm = self.acc.clip_grad_norm_(self.params, max_norm if max_norm is not None else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.trim_heap()
        loss = float(loss_sum) / tokens if tokens else None
        return StepResult(loss, tokens, samples, None if norm is None else float(norm))

    def lrs(self) -> dict:
        return {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def run(self, data, position: checkpoints.Position, steps: int, output_dir: Path, log: MetricsLog, desc: str) -> checkpoints.Position:
        """Train until ``steps`` optimizer steps; checkpoint every ``checkpoint.every`` and at the end."""
        acc, cfg = self.acc, self.cfg
        bar = progress_bar(total=steps, initial=position.step, desc=desc, unit="step",
                           show=acc.is_main_process and cfg.progress)
        self.model.train()
        last_saved = position.step
        began = last = time.perf_counter()
        while position.step < steps:
            loader = data.loader(position.epoch, position.batch_in_epoch)
            finished_epoch = True
            for group in groups(loader, self.plan.accumulation):
                lrs = self.lrs()  # the rates this step uses
                result = self.step(group)
                now = time.perf_counter()
                seconds, last = now - last, now  # the whole step: data loading included
                position.step += 1
                position.batch_in_epoch += len(group)
                position.samples += result.samples
                row = {
                    "step": position.step,
                    "epoch": round(position.epoch + position.batch_in_epoch / max(1, data.micro_batches_per_epoch), 4),
                    "loss": result.loss,
                    **lrs,
                    "grad_norm": result.grad_norm,
                    "tokens": result.tokens,
                    "samples": position.samples,
                    "samples_per_s": round(result.samples / seconds, 3),
                    "elapsed": round(now - began, 3),  # wall time of this session's loop
                }
                if position.step % cfg.log_every == 0 or position.step == steps:
                    log.log(row)
                bar.set_postfix(
                    loss=f"{result.loss:.4f}" if result.loss is not None else "-",
                    lr=f"{next(iter(lrs.values())):.2e}",
                    samples_s=f"{row['samples_per_s']:.2f}",
                    refresh=False,
                )
                bar.update(1)
                if cfg.checkpoint.every and position.step % cfg.checkpoint.every == 0 and position.step < steps:
                    self.save(output_dir, position)
                    last_saved, last = position.step, time.perf_counter()  # saving is not step time
                if position.step >= steps:
                    finished_epoch = position.batch_in_epoch >= data.micro_batches_per_epoch
                    break
            if finished_epoch:
                position.epoch += 1
                position.batch_in_epoch = 0
        bar.close()
        if last_saved != position.step or not checkpoints.latest_checkpoint(output_dir):
            self.save(output_dir, position)
        return position

    def save(self, output_dir: Path, position: checkpoints.Position) -> Path:
        state = self.trainable_state()
        return checkpoints.save_checkpoint(
            output_dir, position, state, self.optimizer, self.scheduler, self.acc, self.cfg.checkpoint.keep_last
        )
