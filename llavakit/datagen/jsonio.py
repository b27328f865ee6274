"""JSON files in and out: loading with errors that name the file, atomic durable writes."""

from __future__ import annotations

import json
from pathlib import Path

from llavakit.errors import DataError
from llavakit.io import atomic_write_json


def load_json(path: str | Path, what: str) -> dict:
    """Parse a JSON object from ``path``; ``what`` names the file in errors ("captions", ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} file {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{what} file {path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file {path}: top level must be an object")
    return data


def write_json(path: str | Path, data, indent: int | None = None) -> None:
    """Write JSON atomically: a temp file, fsync, then rename over the target."""
    atomic_write_json(path, data, indent=indent)
