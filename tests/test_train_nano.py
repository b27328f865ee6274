"""Stage 1 → stage 2 → finetune end to end on the embedded ``nano`` model (real weights, offline)."""

from __future__ import annotations

import pytest
import torch
from test_train_support import changed, snapshot, write_captions, write_instructions

from llavakit.model import load_model
from llavakit.train import build_config
from llavakit.train.runner import TrainSession

pytestmark = pytest.mark.integration


def _session(preset: str, tmp_path, name: str, data, images, **extra) -> TrainSession:
    overrides = [f"data.path={data}", f"data.image_folder={images}", f"output_dir={tmp_path / name}",
                 f"feature_cache.dir={tmp_path / 'features'}", "per_device_batch_size=2", "global_batch_size=2",
                 "max_steps=2", "tensorboard=false", "checkpoint.every=0"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return TrainSession(build_config(recipe=preset, overrides=overrides))


def _parts(model, diff: set[str]) -> set[str]:
    return {n.split(".")[0] for n in diff}


def test_nano_stage1_stage2_finetune(tmp_path):
    caps, images = write_captions(tmp_path / "s1", 4)
    s1 = _session("nano-stage1", tmp_path, "stage1", caps, images)
    before = snapshot(s1.unwrapped)
    r1 = s1.train()
    assert _parts(s1.unwrapped, changed(before, snapshot(s1.unwrapped))) == {"projector"}
    del s1, before

    inst, images2 = write_instructions(tmp_path / "s2", 4, text_only=0)
    s2 = _session("nano-stage2", tmp_path, "stage2", inst, images2, projector=r1.artifact)
    before = snapshot(s2.unwrapped)
    r2 = s2.train()
    assert _parts(s2.unwrapped, changed(before, snapshot(s2.unwrapped))) == {"projector", "language_model"}
    trained = {k: v.clone() for k, v in s2.unwrapped.projector.state_dict().items()}
    del s2, before

    s3 = _session("nano-finetune", tmp_path, "finetune", inst, images2, model=r2.artifact, tune="lora",
                  **{"lora.r": 4, "lora.alpha": 8})
    for k, v in s3.unwrapped.projector.state_dict().items():  # continued from the stage-2 checkpoint
        assert torch.equal(v, trained[k])
    before = snapshot(s3.unwrapped)
    r3 = s3.train()
    diff = changed(before, snapshot(s3.unwrapped))
    assert diff and all("lora_" in n or n.startswith("projector.") for n in diff)
    final = load_model(r3.artifact)
    assert final.config.name == "nano" and final.num_image_tokens == 49
    assert r3.final_loss is not None and r3.final_loss < 20
