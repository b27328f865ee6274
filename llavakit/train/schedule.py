"""Learning-rate schedules: transformers' named schedules, with warm-up that starts at step 1.

transformers' warm-up multiplies the lr by ``step / warmup`` from step 0, so the first optimizer
step always runs at lr 0 and ``max_steps=1`` learns nothing. Here optimizer step ``k`` (0-based)
during warm-up uses the factor of step ``k + 1``: the first step runs at ``lr / warmup`` and the
last warm-up step at the full lr; after warm-up the named schedule is unchanged.
"""

from __future__ import annotations

import torch


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup: int, steps: int):
    from transformers import get_scheduler

    base = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    if warmup <= 0:
        return base
    factor = base.lr_lambdas[0]
    for group in optimizer.param_groups:  # undo the base scheduler's first step (lr 0) before ours
        group["lr"] = group["initial_lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step + 1) if step < warmup else factor(step))
