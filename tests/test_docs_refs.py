"""Every test a document cites (``tests/FILE.py::name``) exists, so a table of proofs cannot go stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"tests/(test_\w+\.py)::(\w+)")


def _functions(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


def test_every_cited_test_exists():
    docs = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    cited = {(doc.name, file, name) for doc in docs for file, name in CITED.findall(doc.read_text())}
    assert len(cited) > 100  # docs/reliability.md alone cites well over a hundred
    known: dict[str, set[str]] = {}
    stale = []
    for doc, file, name in sorted(cited):
        path = ROOT / "tests" / file
        if file not in known:
            known[file] = _functions(path) if path.is_file() else set()
        if name not in known[file]:
            stale.append(f"{doc}: tests/{file}::{name}")
    assert not stale, "cited tests that do not exist:\n" + "\n".join(stale)
