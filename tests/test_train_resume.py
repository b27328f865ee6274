"""Exact resume after SIGKILL, and 2-process DDP (gloo) equal to one process — in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import write_instructions

from llavakit.model import load_model, save_projector
from llavakit.train.checkpoints import checkpoint_dirs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _config(root: Path, out: str, **extra) -> Path:
    data, images = write_instructions(root, 12, text_only=2) if not (root / "instruct.json").exists() else (
        root / "instruct.json", root / "images")
    if not (root / "stage1").exists():
        save_projector(load_model("tiny-random"), root / "stage1")
    cfg = {
        "stage": 2, "model": "tiny-random", "projector": str(root / "stage1"),
        "data": {"path": str(data), "image_folder": str(images), "image_placement": "random"},
        "feature_cache": {"dir": str(root / "features")},
        "output_dir": str(root / out), "tensorboard": False, "seed": 7,
        "optim": {"lr": 3e-3, "projector_lr": 1e-2},
    }
    cfg.update(extra)
    path = root / f"{out}.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    return path


def _train(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llavakit", "train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _final_trainable(out_dir: Path) -> dict:
    return load_file(checkpoint_dirs(out_dir)[-1] / "trainable.safetensors")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_equals_an_uninterrupted_run(tmp_path):
    # LoRA with dropout: the resumed run must restore adapters, AdamW, schedule, data order and RNG
    common = dict(tune="lora", lora={"r": 4, "alpha": 8, "dropout": 0.1}, per_device_batch_size=2,
                  gradient_accumulation_steps=2, epochs=6, checkpoint={"every": 4, "keep_last": 2})
    ref_cfg = _config(tmp_path, "ref", **common)
    _finish(_train(["--config", str(ref_cfg)]))
    cut_cfg = _config(tmp_path, "cut", **common)
    proc = _train(["--config", str(cut_cfg)])
    target = tmp_path / "cut" / "checkpoints" / "step-0000008"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "cut" / "result.json").exists()
    out = _finish(_train(["--config", str(cut_cfg), "--resume"]))
    assert "resuming from" in out
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert len(_losses(ref)) == 24
    assert _losses(cut) == _losses(ref)
    a, b = _final_trainable(ref), _final_trainable(cut)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert len(checkpoint_dirs(cut)) == 2  # keep_last


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    common = dict(epochs=2, checkpoint={"every": 0, "keep_last": 1})
    single = _config(tmp_path, "single", per_device_batch_size=4, **common)
    double = _config(tmp_path, "ddp", per_device_batch_size=2, feature_cache={"dir": str(tmp_path / "f2")}, **common)
    _finish(_train(["--config", str(single)]))
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "llavakit", "train", "--config", str(double)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _finish(ddp)
    assert "global batch 4 = 2 per device x 1 accumulation x 2 processes" in out
    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=1e-5)
    a, b = _final_trainable(tmp_path / "single"), _final_trainable(tmp_path / "ddp")
    for key in a:
        # gradients are all-reduced in another summation order; Adam divides by sqrt(v), so a weight
        # whose gradient is near zero can move by a few 1e-6 differently (seen: 3.7e-6 of steps ~1e-2)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5)
    shards = {p.name.split("-")[0] for p in (tmp_path / "f2").glob("*/shards/*.npy")}
    assert shards == {"r0", "r1"}  # each rank cached its share of the images


def test_a_setting_added_after_a_run_was_recorded_counts_as_its_default():
    from llavakit.train.resume import _diff

    defaults = {"data": {"path": None, "max_image_pixels": 64}}
    saved = {"data": {"path": "d.json"}}  # written before data.max_image_pixels existed
    assert _diff(saved, {"data": {"path": "d.json", "max_image_pixels": 64}}, defaults) == []
    assert _diff(saved, {"data": {"path": "d.json", "max_image_pixels": 32}}, defaults) == ["data.max_image_pixels"]
    assert _diff(saved, {"data": {"path": "e.json", "max_image_pixels": 64}}, defaults) == ["data.path"]
