"""The append-only JSONL cache that makes generation resumable and kill -9 safe.

One JSON object per line, each with a ``key`` (``image/type/variant/prompt-hash``). Every line is
written in one ``write`` and flushed at once, so a killed process leaves at most one torn last line;
``fsync`` runs at most every ``fsync_every`` seconds and on close (power-loss safety up to that).
On open for appending, a torn tail is cut off (so the next record starts on its own line); reading
follows :func:`llavakit.io.read_jsonl_log` (a torn last line is left out and counted). Each process appends to its own file
(``all.jsonl`` or ``shard-I-of-N.jsonl``) in the cache directory; readers merge all files there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.errors import DataError
from llavakit.io import cut_torn_tail, read_jsonl_log


@dataclass
class CacheContents:
    records: dict[str, dict] = field(default_factory=dict)  # key -> record (an ``ok`` one wins)
    torn: int = 0  # undecodable lines skipped
    duplicates: int = 0  # keys seen more than once
    files: int = 0


def read_cache(directory: str | Path, keep_raw: bool = False) -> CacheContents:
    """All records of all ``*.jsonl`` files in ``directory``; the teacher's raw text is dropped
    unless ``keep_raw`` (it stays on disk; the merge needs only the parsed turns)."""
    out = CacheContents()
    directory = Path(directory)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl")):
        out.files += 1
        records, torn = read_jsonl_log(path, "generation cache")
        out.torn += torn
        for n, rec in records:
            if not isinstance(rec.get("key"), str):
                raise DataError(f"generation cache {path} line {n}: no key; delete the cache to start over")
            if not keep_raw:
                rec.pop("raw", None)
            old = out.records.get(rec["key"])
            if old is not None:
                out.duplicates += 1
                if old.get("status") == "ok":
                    continue
            out.records[rec["key"]] = rec
    return out


class CacheWriter:
    """Appends records to one cache file, one flushed line each."""

    def __init__(self, path: str | Path, fsync_every: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = cut_torn_tail(self.path)
        try:
            self._fh = open(self.path, "ab")
        except OSError as exc:
            raise DataError(f"cache file {self.path}: cannot open for appending ({exc})") from None
        self.fsync_every = fsync_every
        self._last_sync = time.monotonic()
        self.written = 0

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        self.written += 1
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
