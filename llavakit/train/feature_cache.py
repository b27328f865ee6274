"""Frozen-feature cache: the vision tower's features, computed once per image, memory-mapped.

The tower is frozen in every stage, so its output for an image never changes. The cache stores it
on disk and training reads it instead of running the tower::

    ROOT/<tower fingerprint>-<dtype>/
        meta.json                    tower fingerprint, tokens x dim, dtype
        shards/<rank>-<id>.npy       (n, N, D) arrays, opened with numpy mmap
        index/<rank>-<id>.json       image key -> row of that shard (written last: commits the shard)
        bad/<rank>-<id>.json         images that could not be read, with the reason

The fingerprint covers the tower's weights, feature layer and preprocessing (size, mode, mean,
std), so changing either gives a fresh directory. An image's key is its absolute path + size +
modification time, so an edited image is recomputed. Building is resumable (committed shards are
kept) and DDP-safe: each rank builds its share into its own shards, all ranks wait, then every rank
fills whatever it still cannot see (a non-shared disk) itself.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from llavakit.errors import DataError, LlavakitError
from llavakit.io import atomic_path, atomic_write_json
from llavakit.progress import bar as progress_bar

FORMAT = 1


def default_root() -> Path:
    from llavakit.model.lm import cache_root

    return cache_root() / "features"


def image_key(path: str | Path) -> str:
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        return hashlib.sha1(f"{path}|missing".encode()).hexdigest()
    return hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def _write_json(path: Path, data) -> None:
    atomic_write_json(path, data, indent=None)


@dataclass
class BuildReport:
    computed: int = 0
    reused: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # image path -> reason

    def describe(self) -> str:
        text = f"feature cache: {self.reused} images reused, {self.computed} computed"
        return text + (f", {len(self.bad)} unreadable" if self.bad else "")


class FeatureCache:
    """Tower features by image path, from memory-mapped shards under ``root/<fingerprint>``."""

    def __init__(self, root: str | Path | None, tower):
        self.tower = tower
        self.fingerprint = tower.fingerprint()
        self.dtype = tower.dtype
        self.dir = Path(root or default_root()) / f"{self.fingerprint}-{str(self.dtype).removeprefix('torch.')}"
        self.shape = (tower.num_tokens, tower.hidden_size)
        self._index: dict[str, tuple[str, int]] = {}
        self._bad: dict[str, str] = {}
        self._shards: dict[str, np.ndarray] = {}
        self._prepare_dir()
        self.refresh()

    def __getstate__(self) -> dict:  # DataLoader workers get the index, not the tower or open maps
        state = self.__dict__.copy()
        state["tower"], state["_shards"] = None, {}
        return state

    # --- layout -------------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "num_tokens": self.shape[0],
            "hidden_size": self.shape[1],
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        for sub in ("shards", "index", "bad"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        if meta_path.is_file():
            try:
                found = json.loads(meta_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise LlavakitError(f"feature cache {meta_path} is corrupt ({exc}); delete {self.dir}") from None
            if found != meta:
                raise LlavakitError(
                    f"feature cache {self.dir} was built for {found}, not {meta}; delete that directory"
                )
        else:
            _write_json(meta_path, meta)

    def refresh(self) -> None:
        """Re-read the committed index files (other ranks may have added shards)."""
        for path in sorted((self.dir / "index").glob("*.json")):
            shard = path.stem
            for key, row in json.loads(path.read_text(encoding="utf-8")).items():
                self._index[key] = (shard, int(row))
        for path in sorted((self.dir / "bad").glob("*.json")):
            self._bad.update(json.loads(path.read_text(encoding="utf-8")))

    def __contains__(self, path) -> bool:
        return image_key(path) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def bad_reason(self, path) -> str | None:
        return self._bad.get(image_key(path))

    # --- reading ------------------------------------------------------------------------------

    def _shard(self, name: str) -> np.ndarray:
        arr = self._shards.get(name)
        if arr is None:
            arr = np.load(self.dir / "shards" / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            self._shards[name] = arr
        return arr

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    def get(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """Features ``(len(paths), N, D)`` in the tower's dtype; every path must be cached."""
        rows = []
        for path in paths:
            key = image_key(path)
            if key not in self._index:
                reason = self._bad.get(key)
                raise DataError(f"image {path}: {reason}" if reason else f"image {path} is not in the feature cache")
            shard, row = self._index[key]
            rows.append(self._shard(shard)[row])
        if not rows:
            return torch.zeros(0, *self.shape, dtype=self.dtype)
        return self._to_tensor(np.stack(rows))

    def image_fn(self, paths: Sequence[str | Path]) -> dict:
        """The collator hook: cached features instead of pixels."""
        return {"image_features": self.get(paths)}

    # --- building -----------------------------------------------------------------------------

    def _storage(self, feats: torch.Tensor) -> np.ndarray:
        feats = feats.detach().to("cpu", self.dtype).contiguous()
        return (feats.view(torch.int16) if self.dtype == torch.bfloat16 else feats).numpy()

    def _np_dtype(self):
        return np.int16 if self.dtype == torch.bfloat16 else torch.empty(0, dtype=self.dtype).numpy().dtype

    def _write_shard(self, keys: list[str], feats: list[np.ndarray], rank: int) -> None:
        name = f"r{rank}-{uuid.uuid4().hex[:12]}"
        final = self.dir / "shards" / f"{name}.npy"
        with atomic_path(final) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=self._np_dtype(), shape=(len(keys), *self.shape))
            for i, f in enumerate(feats):
                arr[i] = f
            arr.flush()
            del arr
        _write_json(self.dir / "index" / f"{name}.json", {k: i for i, k in enumerate(keys)})
        for i, key in enumerate(keys):
            self._index[key] = (name, i)

    def missing(self, paths: Sequence[str | Path], retry_bad: bool = False) -> list[str]:
        """Paths without cached features (images that failed before only with ``retry_bad``)."""
        seen, out = set(), []
        for path in paths:
            key = image_key(path)
            if key not in self._index and (retry_bad or key not in self._bad) and key not in seen:
                seen.add(key)
                out.append(str(path))
        return out

    def compute(
        self,
        paths: Sequence[str],
        load: Callable,
        batch_size: int = 16,
        shard_size: int = 1024,
        rank: int = 0,
        device: torch.device | str | None = None,
        show_progress: bool = True,
    ) -> tuple[int, dict[str, str]]:
        """Run the tower over ``paths`` (PIL via ``load``) into new shards; return (count, bad)."""
        bad: dict[str, str] = {}
        done = 0
        bar = progress_bar(total=len(paths), desc="caching image features", unit="img", show=show_progress)
        for start in range(0, len(paths), shard_size):
            chunk = paths[start:start + shard_size]
            keys: list[str] = []
            feats: list[np.ndarray] = []
            for b in range(0, len(chunk), batch_size):
                images, batch_keys = [], []
                for path in chunk[b:b + batch_size]:
                    try:
                        images.append(load(path))
                        batch_keys.append(image_key(path))
                    except DataError as exc:
                        bad[image_key(path)] = str(exc)
                if images:
                    pixels = self.tower.preprocess(images)
                    if device is not None:
                        pixels = pixels.to(device)
                    out = self._storage(self.tower(pixels))
                    keys += batch_keys
                    feats += list(out)
                bar.update(len(chunk[b:b + batch_size]))
            if keys:
                self._write_shard(keys, feats, rank)
                done += len(keys)
        bar.close()
        if bad:
            _write_json(self.dir / "bad" / f"r{rank}-{uuid.uuid4().hex[:12]}.json", bad)
            self._bad.update(bad)
        return done, bad

    def build(
        self,
        paths: Sequence[str | Path],
        load: Callable,
        batch_size: int = 16,
        shard_size: int = 1024,
        accelerator=None,
        device=None,
        progress: bool = True,
    ) -> BuildReport:
        """Make every image of ``paths`` available; DDP-safe when given the ``accelerator``."""
        rank = accelerator.process_index if accelerator else 0
        world = accelerator.num_processes if accelerator else 1
        unique = list(dict.fromkeys(str(p) for p in paths))
        todo = self.missing(unique, retry_bad=True)  # a read error of an earlier run may have been transient
        report = BuildReport(reused=len(unique) - len(todo))
        main = rank == 0
        if world > 1:  # every rank has its to-do list before any rank writes: the lists agree
            accelerator.wait_for_everyone()
        computed, _ = self.compute(todo[rank::world], load, batch_size, shard_size, rank, device, main and progress)
        report.computed += computed
        if world > 1:
            accelerator.wait_for_everyone()
            self.refresh()
            rest = self.missing(unique)  # shards another rank wrote on a disk this rank cannot see
            if rest:
                computed, _ = self.compute(rest, load, batch_size, shard_size, rank, device, main and progress)
                report.computed += computed
        report.bad = {p: self._bad[image_key(p)] for p in unique
                      if image_key(p) in self._bad and image_key(p) not in self._index}
        return report
