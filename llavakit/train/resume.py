"""Resuming a run: which checkpoint, and whether the config and the world still match it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llavakit.config import to_dict
from llavakit.errors import ConfigError, LlavakitError
from llavakit.train import checkpoints
from llavakit.train.config import TrainConfig

# changing these between a run and its resume does not change the result (max_steps / epochs would:
# the learning-rate schedule is laid out over the total number of steps)
RESUME_FREE = {"checkpoint", "log_every", "attention", "tensorboard", "data.num_workers",
               "feature_cache.dir", "feature_cache.batch_size", "feature_cache.shard_size"}


def check_resume(cfg: TrainConfig, out: Path, resume: bool, main_process: bool = True) -> Path | None:
    latest = checkpoints.latest_checkpoint(out)
    if latest is None:
        return None
    if not resume:
        raise ConfigError(
            f"{out} already holds checkpoints (latest {latest.name}): pass --resume to continue that run, "
            "or choose another output_dir"
        )
    good = checkpoints.latest_good_checkpoint(out, say=lambda text: print(f"llavakit train: {text}", file=sys.stderr),
                                              set_aside=main_process)
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
        changed = sorted(k for k in _diff(saved, now, to_dict(TrainConfig()))
                         if not any(k == f or k.startswith(f + ".") for f in RESUME_FREE))
        if changed:
            hint = (" (the learning-rate schedule spans the planned steps: to train longer, start a new output_dir "
                    "from this run's artifact)" if {"max_steps", "epochs"} & set(changed) else "")
            raise ConfigError(f"--resume: the config differs from the run in {out} in {', '.join(changed)}{hint}")
    return latest


def _diff(a: dict, b: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ; a key ``a`` (the saved run) lacks counts as its default (a setting
    added after that run was recorded)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb, default = a.get(key, defaults.get(key)), b.get(key), defaults.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, default if isinstance(default, dict) else {}, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


def check_world(accelerator, position: checkpoints.Position) -> None:
    if position.world_size != accelerator.num_processes:
        raise ConfigError(
            f"--resume: the checkpoint was written by {position.world_size} process(es); resume it with the same "
            f"number (not {accelerator.num_processes}) so the data order and optimizer state line up"
        )


