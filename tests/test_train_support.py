"""Helpers for the training tests (no tests here): tiny captioned / instruction data on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe")


def make_images(folder: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` small PNGs of a coloured shape; returns (file name, description)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        color = rng.choice(list(COLORS))
        shape = SHAPES[i % 2]
        img = Image.new("RGB", (40, 30), (245, 245, 245))
        box = (8, 6, 30, 24) if shape == "square" else (0, 12, 40, 18)
        img.paste(COLORS[color], box)
        name = f"img{i:03d}.png"
        img.save(folder / name)
        out.append((name, f"a {color} {shape}"))
    return out


def write_captions(root: Path, n: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Stage-1 style data: (image, caption) pairs. Returns (data file, image folder)."""
    images = make_images(root / "images", n, seed)
    records = [
        {"id": f"cap{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": desc}]}
        for i, (name, desc) in enumerate(images)
    ]
    path = root / "captions.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path, root / "images"


def write_instructions(root: Path, n: int = 16, seed: int = 0, text_only: int = 2) -> tuple[Path, Path]:
    """Stage-2 style data: questions about the image, a few text-only records."""
    images = make_images(root / "images", n, seed)
    records = []
    for i, (name, desc) in enumerate(images):
        color, shape = desc.split()[1:]
        records.append({"id": f"q{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": color},
            {"from": "human", "value": "And its form?"}, {"from": "gpt", "value": f"It is a {shape}."}]})
    for j in range(text_only):
        records.append({"id": f"t{j}", "conversations": [
            {"from": "human", "value": f"Say {j}."}, {"from": "gpt", "value": str(j)}]})
    path = root / "instruct.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path, root / "images"


def train_config(tmp_path: Path, stage, data: Path, images: Path, **overrides):
    """A TrainConfig for the tiny-random model on ``data`` (dotted keys allowed in ``overrides``)."""
    from llavakit.config import merge, parse_override
    from llavakit.train import build_config

    base = {
        "stage": stage,
        "model": "tiny-random",
        "template": None,  # stage 1 defaults to plain (asserted in test_train_stages)
        "output_dir": str(tmp_path / "out"),
        "data": {"path": str(data), "image_folder": str(images), "max_length": 512},
        "feature_cache": {"dir": str(tmp_path / "features")},
        "per_device_batch_size": 4,
        "optim": {"lr": 1e-3},
        "tensorboard": False,
    }
    for key, value in overrides.items():
        base = merge(base, parse_override(f"{key}={value}") if "." in key else {key: value})
    return build_config(base)


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch_equal(before[n], after[n])}


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.equal(a, b)
