"""Training checkpoints: atomic, keep-last-K, and an exact resume.

``OUTPUT/checkpoints/step-0000040/`` holds only what training changes — never pickles::

    trainable.safetensors     the trainable parameters (projector, LLM or LoRA adapters)
    optimizer-r<rank>.pt      AdamW state of each rank (read back with weights_only=True)
    scheduler.pt              LR scheduler state (weights_only)
    rng-r<rank>.pt            python / numpy / torch (/ cuda) RNG states (weights_only)
    state.json                step, epoch, position in the epoch, samples seen, world size

A checkpoint is written into a hidden temp dir and renamed into place when complete, so a run
killed while saving leaves the previous checkpoint intact; stale temp dirs are removed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llavakit.errors import LlavakitError

STEP_DIR = re.compile(r"step-(\d{7})")


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # micro-batches of this rank consumed in the current epoch
    samples: int = 0  # samples seen (all ranks)
    world_size: int = 1
    data_fingerprint: str = ""  # the sampler's: same examples, lengths and batch settings


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = [d for d in checkpoint_dirs(output_dir) if (d / "state.json").is_file()]
    return dirs[-1] if dirs else None


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be resumed from (a torn or corrupt file), or None when it is whole.

    Reads every file once without building tensors: ``state.json`` parses, the safetensors header
    matches the file's size, and each ``.pt`` (a zip archive) passes its CRC check.
    """
    import zipfile

    from safetensors import SafetensorError, safe_open

    try:
        read_position(directory)
    except (OSError, ValueError, TypeError) as exc:
        return f"state.json: {exc}"
    try:
        with safe_open(directory / "trainable.safetensors", "pt") as handle:
            for key in handle.keys():
                handle.get_slice(key)
    except (OSError, SafetensorError) as exc:
        return f"trainable.safetensors: {exc}"
    for path in sorted(directory.glob("*.pt")):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{path.name}: {exc}"
        if bad is not None:
            return f"{path.name}: {bad} fails its CRC check"
    return None


def latest_good_checkpoint(output_dir: str | Path, say=print, set_aside: bool = False) -> Path | None:
    """The newest checkpoint that :func:`checkpoint_problem` passes; each one skipped is said, with why.
    With ``set_aside``, once a good one is found the unreadable newer ones are renamed to hidden
    ``.step-N.unreadable`` dirs (kept to inspect): they no longer count among ``keep_last`` nor
    shadow the checkpoints the resumed run writes."""
    skipped = []
    for directory in reversed([d for d in checkpoint_dirs(output_dir) if (d / "state.json").is_file()]):
        problem = checkpoint_problem(directory)
        if problem is None:
            for bad in skipped if set_aside else []:
                aside = bad.with_name(f".{bad.name}.unreadable")
                shutil.rmtree(aside, ignore_errors=True)
                bad.rename(aside)
                say(f"--resume: set {bad.name} aside as {aside.name}")
            return directory
        say(f"--resume: {directory.name} cannot be read ({problem}); trying the one before it")
        skipped.append(directory)
    return None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LlavakitError(f"checkpoint file {path} is missing") from None


def save_checkpoint(
    output_dir: str | Path,
    position: Position,
    trainable: dict[str, torch.Tensor] | None,
    optimizer,
    scheduler,
    accelerator,
    keep_last: int,
) -> Path:
    """Write ``step-N`` atomically on every rank's share; rank 0 renames and prunes."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{position.step:07d}"
    tmp = root / f".step-{position.step:07d}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    torch.save(optimizer.state_dict(), tmp / f"optimizer-r{rank}.pt")
    torch.save(rng_state(), tmp / f"rng-r{rank}.pt")
    if main:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position), indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    if main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def clean_partial(output_dir: str | Path) -> None:
    root = Path(output_dir) / "checkpoints"
    if root.is_dir():
        for tmp in root.glob(".step-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def read_position(directory: Path) -> Position:
    data = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    return Position(**data)


def load_trainable(model, directory: Path) -> None:
    """Load the trainable parameters saved in ``directory`` into the (unwrapped) model."""
    state = load_file(directory / "trainable.safetensors")
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise LlavakitError(
            f"checkpoint {directory} does not match this run's trainable parameters "
            f"(only in the checkpoint: {extra[:3]}, only in the run: {missing[:3]}); was the stage or tune changed?"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def load_training_state(directory: Path, optimizer, scheduler, accelerator) -> None:
    """Optimizer, scheduler and this rank's RNG — after ``accelerator.prepare``."""
    rank = accelerator.process_index
    opt_path = directory / f"optimizer-r{rank}.pt"
    if not opt_path.is_file():
        opt_path = directory / "optimizer-r0.pt"
    optimizer.load_state_dict(_load(opt_path))
    scheduler.load_state_dict(_load(directory / "scheduler.pt"))
    rng_path = directory / f"rng-r{rank}.pt"
    if rng_path.is_file():
        set_rng_state(_load(rng_path))
