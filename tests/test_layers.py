"""The packages form layers: a module imports only from its own layer or the layers below it
(docs/architecture.md). Read from the source (every import, also inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import llavakit

# lowest first; a name is a top-level module or package of llavakit
LAYERS = [
    {"llavakit", "errors", "io", "config", "progress", "llm_client", "memory"},
    {"conversation", "imaging"},
    {"model"},
    {"data", "datagen"},
    {"train", "serve", "interop"},
    {"eval"},
    {"pipelines"},
    {"cli", "__main__"},
]
ROOT = Path(llavakit.__file__).parent


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "llavakit"


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"llavakit.{name} is in no layer of tests/test_layers.py: place it (and in docs/architecture.md)")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("llavakit"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("llavakit"))
    return out


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        here = _part(".".join(rel.parts))
        for target in _imports(path):
            if _layer(_part(target)) > _layer(here):
                wrong.append(f"{rel}.py imports {target} (layer {_layer(_part(target))} > {_layer(here)})")
    assert not wrong, "\n".join(wrong)


def test_the_layering_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from llavakit.train.runner import train\n", encoding="utf-8")
    assert _layer(_part(next(iter(_imports(bad))))) > _layer("model")
