"""JSON / JSONL input with errors that name the file and line, and an append-only JSONL cache.

The cache is what makes every long evaluation step resumable: each finished item is appended (and
flushed) as one JSON line keyed by an id; a rerun loads the file and skips the keys already there.
A last line cut off by a crash is dropped (and reported) so the item is simply redone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from llavakit.errors import DataError
from llavakit.io import atomic_write_jsonl, read_jsonl_log


def read_jsonl(path: str | Path, what: str = "file", required: Iterable[str] = ()) -> list[dict]:
    """All records of a JSONL file; blank lines are allowed, anything else must be a JSON object
    holding the ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    required = tuple(required)
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what} {path} line {lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{what} {path} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise DataError(f"{what} {path} line {lineno}: missing key(s) {', '.join(missing)}")
            out.append(rec)
    return out


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records atomically (:mod:`llavakit.io`)."""
    return atomic_write_jsonl(path, records)


def index_by(records: Iterable[dict], key: str, what: str) -> dict:
    """``{record[key]: record}``; a duplicate key is an error naming it."""
    out: dict = {}
    for rec in records:
        k = rec[key]
        if k in out:
            raise DataError(f"{what}: duplicate {key} {k!r}")
        out[k] = rec
    return out


class JsonlCache:
    """Append-only JSONL of finished items, keyed by ``key(record)``; reopening resumes."""

    def __init__(self, path: str | Path, key: Callable[[dict], Any]):
        self.path = Path(path)
        self.key = key
        self.records: dict[Any, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        records, torn = read_jsonl_log(self.path, "cache", repair=True)
        if torn:
            print(f"{self.path}: dropped an unfinished last line; it will be redone", file=sys.stderr)
        for n, rec in records:
            try:
                key = self.key(rec)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"cache {self.path} line {n}: not a record of this cache (another version "
                                "or another evaluation?); delete the file to start over") from None
            self.records[key] = rec

    def __contains__(self, key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key, default=None):
        return self.records.get(key, default)

    def add(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
        self.records[self.key(record)] = record
