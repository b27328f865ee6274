"""The CLI skeleton: verbs listed, info prints the composition, errors are one line."""

from __future__ import annotations

import subprocess
import sys

from llavakit.cli import VERBS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "llavakit", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_info_tiny_random(capsys):
    assert main(["info", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "vision tower" in out and "projector" in out and "language model" in out
    assert "image tokens per image : 16 x 32" in out
    assert "LM context length      : 2048" in out


def test_unknown_preset_is_one_line_not_a_traceback():
    proc = _run("info", "no-such-model")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["llavakit info: error: 'no-such-model' is neither a preset (tiny-random, nano, llava-v1-13b, llava-1.5-7b) nor a checkpoint directory"]
