"""Held-out synthetic scenes for the offline evaluations (synth, POPE).

A scenes directory is what ``llavakit scenes`` writes: ``instances.json`` (COCO + our attributes),
``captions.json``, ``scenes.json`` (seed + config) and ``images/``. :func:`ensure_scenes` uses an
existing directory, or renders ``n`` scenes with ``seed`` into it when it does not exist yet — the
seed must differ from the training scenes' seed (image ids, file names and random streams of two
seeds are disjoint; see :mod:`llavakit.datagen.scenes`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llavakit.datagen.facts import FactSet, load_facts
from llavakit.errors import DataError
from llavakit.io import read_json

DEFAULT_HELDOUT_SEED = 1000  # `llavakit scenes` defaults to seed 0 for training scenes


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every scenes evaluation takes: MODEL, --scenes (+ --n, --scene-seed) and --out."""
    parser.add_argument("model", help="a preset (nano, tiny-random, ...) or a checkpoint directory")
    parser.add_argument("--scenes", required=True, help="held-out scenes dir (from `llavakit scenes`)")
    parser.add_argument("--n", type=int, help="render this many held-out scenes into --scenes if it is empty")
    parser.add_argument("--scene-seed", type=int, default=DEFAULT_HELDOUT_SEED,
                        help=f"seed for --n (default {DEFAULT_HELDOUT_SEED}; must differ from the training seed)")
    parser.add_argument("--out", required=True, help="output directory (answers are resumable)")


def ensure_scenes(scenes_dir: str | Path, n: int | None = None, seed: int = DEFAULT_HELDOUT_SEED,
                  progress: bool = True) -> Path:
    """``scenes_dir`` with an ``instances.json``; rendered first when absent and ``n`` is given."""
    scenes_dir = Path(scenes_dir)
    if (scenes_dir / "instances.json").is_file():
        return scenes_dir
    if not n:
        raise DataError(f"scenes directory {scenes_dir} has no instances.json; render held-out scenes with "
                        f"`llavakit scenes --seed {seed} --out {scenes_dir}` or pass --n to render them here")
    from llavakit.datagen.scenes_cli import generate_scenes

    generate_scenes(scenes_dir, n, seed=seed, progress=progress)
    return scenes_dir


def read_scene_seed(scenes_dir: str | Path) -> int | None:
    """The seed the scenes were rendered with (from ``scenes.json``), if recorded."""
    path = Path(scenes_dir) / "scenes.json"
    if not path.is_file():
        return None
    data = read_json(path, "scenes manifest")
    return data.get("seed") if isinstance(data, dict) else None


def training_image_folders(model) -> list[Path]:
    """Image folders a llavakit checkpoint (and what it started from) was trained on, from the
    ``training.json`` records `llavakit train` writes; empty when unknown (a preset, an old checkpoint)."""
    model = getattr(model, "checkpoint_dir", None) or model  # a loaded model: the directory it came from
    if not isinstance(model, (str, Path)) or not (Path(model) / "training.json").is_file():
        return []
    folders, todo = [], [read_json(Path(model) / "training.json", "training record")]
    while todo:
        rec = todo.pop()
        if not isinstance(rec, dict):
            continue
        if rec.get("image_folder"):
            folders.append(Path(rec["image_folder"]))
        todo += [r for r in rec.get("from") or [] if isinstance(r, dict)]
    return folders


def heldout_warnings(scenes_dir: str | Path, model=None, image_folder: str | Path | None = None) -> list[str]:
    """Warnings when the scenes may not be held out: the model was trained on this image folder or on
    scenes of the same seed, or (training data unknown) they use seed 0, the training default."""
    scenes_dir = Path(scenes_dir)
    seed = read_scene_seed(scenes_dir)
    trained_on = training_image_folders(model)
    if not trained_on:
        if seed == 0:
            return [f"{scenes_dir} was rendered with seed 0, the default seed of training scenes; held-out "
                    "scenes need another seed (e.g. `llavakit scenes --seed 1000`), or these numbers measure "
                    "training images"]
        return []
    here = Path(image_folder or scenes_dir / "images").resolve()
    warnings = []
    for folder in dict.fromkeys(trained_on):
        if folder.resolve() == here:
            warnings.append(f"the model was trained on the images in {here}: these numbers measure training images")
        elif seed is not None and read_scene_seed(folder.parent) == seed:
            warnings.append(f"{scenes_dir} has seed {seed}, like the training scenes in {folder.parent}: "
                            "the same seed renders the same scenes; render held-out scenes with another seed")
    return warnings


def load_scenes(scenes_dir: str | Path) -> tuple[FactSet, Path]:
    """The scenes' facts and the folder their image ``file_name``\\ s are relative to."""
    scenes_dir = Path(scenes_dir)
    instances = scenes_dir / "instances.json"
    facts = load_facts(instances)
    info = read_json(instances, "instances file").get("info") or {}
    folder = scenes_dir / str(info.get("image_folder") or "images")
    if not folder.is_dir():
        raise DataError(f"scenes directory {scenes_dir}: image folder {folder} does not exist")
    if not facts.images:
        raise DataError(f"{instances} holds no images")
    return facts, folder


def limit_images(facts: FactSet, max_images: int | None) -> list[int]:
    """Image ids in file order, the first ``max_images`` of them (all when None)."""
    ids = list(facts.images)
    if max_images is not None:
        if max_images < 1:
            raise DataError(f"--max-images {max_images}: must be >= 1")
        ids = ids[:max_images]
    return ids
