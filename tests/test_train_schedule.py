"""Warm-up starts at step 1: the first optimizer step learns; after warm-up the schedule is transformers'."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from llavakit.train.schedule import make_scheduler


def _lrs(scheduler, optimizer, n):
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("name", ["cosine", "linear", "constant_with_warmup"])
def test_first_step_is_not_lr_zero(name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lrs = _lrs(make_scheduler(name, opt, warmup=4, steps=20), opt, 20)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = _lrs(get_scheduler(name, ref_opt, num_warmup_steps=4, num_training_steps=20), ref_opt, 20)
    assert ref[0] == 0.0  # what this fixes
    assert lrs[4:] == pytest.approx(ref[4:])


def test_one_step_run_learns():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    make_scheduler("cosine", opt, warmup=1, steps=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_no_warmup_is_transformers_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert _lrs(make_scheduler("cosine", opt, 0, 10), opt, 10) == pytest.approx(
        _lrs(get_scheduler("cosine", ref_opt, num_warmup_steps=0, num_training_steps=10), ref_opt, 10))
