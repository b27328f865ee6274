"""The pipelines' step runner: a directory of named steps, each run once and resumable.

Each finished step's result dict is written atomically to ``OUT/steps/<step>.json`` with its wall
time (``_seconds``) and the process's peak memory so far (``_peak_rss_mib``); a rerun skips a step
that has its file and runs one that has none (an interrupted step resumes from its own checkpoints).
``OUT/quickstart.json`` records the settings the directory was made with, and a run with other
settings is refused instead of mixing two runs' steps.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Callable

from llavakit.errors import ConfigError
from llavakit.io import atomic_write_json

SIGNATURE_FILE = "quickstart.json"


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


class Steps:
    """The steps of one pipeline run under ``out``, made with the settings ``signature``."""

    def __init__(self, out: Path, signature: dict):
        self.out = Path(out)
        self.signature = signature
        self.dir = self.out / "steps"

    def claim(self) -> None:
        """Make ``out`` this run's (recording its settings), or refuse one made with other settings."""
        path = self.out / SIGNATURE_FILE
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if "preset" in old and "budget_name" not in old:  # written before the naming pass (2026-12-06)
                old["budget_name"] = old.pop("preset")
            old.setdefault("seed", 0)  # written before --seed (2026-12-06): seed 0
            if old != self.signature:
                raise ConfigError(f"{self.out} holds a run with other settings (budget "
                                  f"{old.get('budget_name')!r}); use another --out or delete it")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.signature)

    def done(self, step: str) -> dict | None:
        """The recorded result of ``step``, or None when it has not finished."""
        path = self.dir / f"{step}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def run(self, name: str, fn: Callable[[], dict], say: Callable[[str], None], tag: str = "",
            redo: bool = False) -> dict:
        """Run ``fn`` as step ``name`` unless it finished before; record its result, time and memory."""
        previous = None if redo else self.done(name)
        if previous is not None:
            say(f"{tag}{name}: done before ({previous.get('_seconds', 0):.0f} s), skipped")
            return previous
        say(f"{tag}{name} ...")
        start = time.time()
        result = fn()
        result["_seconds"] = round(time.time() - start, 1)
        result["_peak_rss_mib"] = peak_rss_mib()
        atomic_write_json(self.dir / f"{name}.json", result)
        say(f"{tag}{name}: {result['_seconds']:.0f} s")
        return result
