"""One progress policy: bars only when asked, not under --quiet, and only on a terminal."""

from __future__ import annotations

import io
import sys
import types

from llavakit import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_request_quiet_and_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.enabled(True)  # redirected: no \r frames in logs
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress.enabled(True) and not progress.enabled(False)
    with progress.quiet():
        assert not progress.enabled(True)
        with progress.quiet(False):  # an inner scope cannot undo an outer --quiet
            assert not progress.enabled(True)
    assert progress.enabled(True)


def test_bar_draws_on_a_terminal_only(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    list(progress.bar(range(3), desc="work", file=tty))
    assert "work" in tty.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    list(progress.bar(range(3), desc="work", file=plain))
    assert plain.getvalue() == ""


def test_library_bars_patch_only_inside_the_block(monkeypatch):
    calls = []

    def fake_tqdm(iterable, **kwargs):
        calls.append(kwargs)
        return iterable

    module = types.SimpleNamespace(tqdm=fake_tqdm)
    monkeypatch.setattr(sys, "stderr", _Tty())
    with progress.quiet(), progress.library_bars(module):
        module.tqdm([1])
    assert calls[-1] == {"disable": True}
    assert module.tqdm is fake_tqdm
    module.tqdm([1])
    assert calls[-1] == {}


def test_cli_quiet_silences_a_terminal_bar(monkeypatch, capsys):
    from llavakit import cli

    seen = {}

    def fake_run(args):
        seen["enabled"] = progress.enabled(True)
        return 0

    monkeypatch.setattr(sys, "stderr", _Tty())
    parser_args = types.SimpleNamespace(_run=fake_run, quiet=True, verb="x")
    monkeypatch.setattr(cli, "build_parser", lambda argv: types.SimpleNamespace(parse_args=lambda a: parser_args))
    assert cli.main(["x", "--quiet"]) == 0
    assert seen["enabled"] is False
    parser_args.quiet = False
    assert cli.main(["x"]) == 0
    assert seen["enabled"] is True
