"""JSON files in and out: loading with errors that name the file, atomic durable writes."""

from __future__ import annotations

from pathlib import Path

from llavakit.io import atomic_write_json, read_json


def load_json(path: str | Path, what: str) -> dict:
    """Parse a JSON object from ``path``; ``what`` names the file in errors ("captions", ...)."""
    return read_json(path, f"{what} file", object_only=True)


def write_json(path: str | Path, data, indent: int | None = None) -> None:
    """Write JSON atomically: a temp file, fsync, then rename over the target."""
    atomic_write_json(path, data, indent=indent)
