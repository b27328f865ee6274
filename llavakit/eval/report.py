"""Evaluation outputs: a JSON file with every number and a markdown file with the tables.

Both are written atomically next to each other (``<out_dir>/<stem>.json`` and ``.md``) so a report
is either complete or absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from llavakit.io import atomic_write, atomic_write_json


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_json(path, data)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, text if text.endswith("\n") else text + "\n")


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, ``None`` as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) if rows else False
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def write_report(out_dir: str | Path, stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` + ``<out_dir>/<stem>.md``."""
    out_dir = Path(out_dir)
    return write_json(out_dir / f"{stem}.json", data), write_text(out_dir / f"{stem}.md", markdown)


def pct(correct: int, total: int) -> float | None:
    """Accuracy in percent, ``None`` when there is nothing to score."""
    return 100.0 * correct / total if total else None
