"""Files that are never half-written: one contract for every artifact llavakit writes.

:func:`atomic_write` writes to a hidden temp file beside the target (same filesystem), flushes and
fsyncs it, then renames it over the target — so a reader (or a resumed run after a kill) sees the
old file or the new one, never a torn one. The temp name carries the process id, so concurrent
writers of different processes never share a temp file; a leftover temp file from a killed writer
is harmless (hidden, replaced on the next write).

:func:`atomic_path` gives the same contract to writers that want a file name (safetensors, PIL,
numpy), and :func:`atomic_directory` to a directory written file by file (a model checkpoint, a
converted LM): the new directory takes the old one's place only when complete. (The distributed
training checkpoint, written by every rank into one agreed name, keeps its own variant in
``train/checkpoints.py``.)

(This is what the standard library does not offer in one call; ``os.replace`` is the atomic part.)

JSONL files llavakit *appends* to (training metrics, answers, judge and teacher caches) are read
under one policy, :func:`read_jsonl_log`: a last line with no newline after it that is not a JSON
object is a write cut by a kill — dropped (and, with ``repair``, cut off the file so the next
append starts on its own line) and redone; any other line that is not a JSON object is damage,
refused naming the file and line. Files users give (data, questions) are read strictly by their
own readers: every bad line is an error there.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from llavakit.errors import DataError


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; parent directories are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A hidden temp name beside ``path`` (same suffix) to write to; renamed over ``path`` when the
    block ends, removed when it raises. Parent directories are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh hidden temp directory beside ``path`` to fill; when the block ends it takes
    ``path``'s place (an existing one is moved aside first and removed after). With
    ``keep_existing`` a ``path`` that exists by then (another process finished first) is kept and
    the temp directory dropped. Removed when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists() and keep_existing:
        shutil.rmtree(tmp, ignore_errors=True)
    elif path.exists():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def read_json(path: str | Path, what: str = "file", object_only: bool = False) -> Any:
    """A whole JSON file; every error names ``what`` and the file (missing, not UTF-8, invalid JSON
    at line/column, and with ``object_only`` a top level that is not an object)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if object_only and not isinstance(data, dict):
        raise DataError(f"{what} {path}: the top level must be a JSON object, not {type(data).__name__}")
    return data


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """JSON (UTF-8, not ASCII-escaped, newline-terminated), atomically."""
    separators = None if indent else (",", ":")
    return atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False, separators=separators) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """One JSON object per line, atomically."""
    return atomic_write(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))


def cut_torn_tail(path: str | Path) -> int:
    """Cut a last line with no newline after it off ``path`` (scanning back from the end); the bytes cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    size = path.stat().st_size
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:
            start = max(0, pos - 4096)
            fh.seek(start)
            newline = fh.read(pos - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


def read_jsonl_log(path: str | Path, what: str = "file", repair: bool = False) -> tuple[list[tuple[int, dict]], bool]:
    """((line number, record) pairs, whether a torn last line was dropped) of a JSONL file llavakit appends to; a missing
    file has none. See the module docstring for the policy; ``repair`` also cuts the torn line off
    the file, or ends a whole last record with its newline."""
    path = Path(path)
    if not path.is_file():
        return [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[tuple[int, dict]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            record = None
        if isinstance(record, dict):
            records.append((number, record))
            continue
        if number == len(lines):  # no newline after it: a write cut by a kill
            if repair:
                cut_torn_tail(path)
            return records, True
        raise DataError(f"{what} {path}:{number}: line {number} is not a JSON object (damaged?); fix or delete the file to "
                        "start over")
    if repair and data and not data.endswith(b"\n"):
        with open(path, "ab") as fh:
            fh.write(b"\n")
    return records, False
