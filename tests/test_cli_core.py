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
    for name in VERBS:
        assert name.split()[0] in out


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
    from llavakit.model.presets import PRESETS

    assert "nano" in PRESETS and "tiny-random" in PRESETS
    assert lines == [f"llavakit info: error: 'no-such-model' is neither a preset ({', '.join(PRESETS)}) "
                     "nor a checkpoint directory"]


def test_group_verb_alone_prints_its_help_and_exits_0(capsys):
    assert main(["eval"]) == 0
    assert "synth" in capsys.readouterr().out


def _verb_parser(path: list[str]):
    """The argparse parser of one verb (``["eval", "synth"]``), built as the CLI builds it."""
    from llavakit.cli import build_parser

    parser = build_parser(path)
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


def test_every_verb_takes_quiet():
    for name in VERBS:
        parser = _verb_parser(name.split())
        assert "--quiet" in parser._option_string_actions, name


def test_help_shows_defaults():
    text = _verb_parser(["chat"]).format_help()
    assert "--temperature" in text and "(default: 0.2)" in text
    assert "(default: False)" not in text and "(default: None)" not in text


def test_train_list_keys_needs_no_data(capsys):
    assert main(["train", "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lr = next(line for line in lines if line.startswith("optim.lr "))
    assert "float" in lr and "2e-05" in lr
    assert any(line.startswith("data.path ") for line in lines)


def test_override_example_is_a_real_key():
    import pytest

    from llavakit.config import parse_override
    from llavakit.errors import ConfigError
    from llavakit.train.recipes import build_config

    with pytest.raises(ConfigError) as info:
        parse_override("oops")
    example = str(info.value).rsplit("e.g. ", 1)[1]
    cfg = build_config(None, None, ["data.path=x.json", example], "1")  # the example itself is accepted
    assert cfg.optim.lr == 2e-5
