"""Files that are never half-written: one contract for every artifact llavakit writes.

:func:`atomic_write` writes to a hidden temp file beside the target (same filesystem), flushes and
fsyncs it, then renames it over the target — so a reader (or a resumed run after a kill) sees the
old file or the new one, never a torn one. The temp name carries the process id, so concurrent
writers of different processes never share a temp file; a leftover temp file from a killed writer
is harmless (hidden, replaced on the next write).

(This is what the standard library does not offer in one call; ``os.replace`` is the atomic part.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


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


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """JSON (UTF-8, not ASCII-escaped, newline-terminated), atomically."""
    separators = None if indent else (",", ":")
    return atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False, separators=separators) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """One JSON object per line, atomically."""
    return atomic_write(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
