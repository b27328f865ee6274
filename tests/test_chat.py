"""`llavakit chat`: multi-turn, streamed, commands, driven from a pipe."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from reference_generation import answer

from llavakit.cli import main
from llavakit.conversation.processor import to_messages
from llavakit.conversation.templates import Message
from llavakit.errors import LlavakitError
from llavakit.serve.chat import ChatSession, run_session
from llavakit.serve.rows import GenParams


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(path)
    return path


def session(model, **params):
    return ChatSession(model, GenParams(**{"max_new_tokens": 6, "temperature": 0.0, **params}))


def test_multi_turn_answers_are_the_models_answers(tiny_model, image_path):
    chat = session(tiny_model)
    chat.set_image(str(image_path))
    pieces: list[str] = []
    first = chat.ask("What is this?", on_text=pieces.append)
    assert "".join(pieces) == first
    second = chat.ask("And the colour?")
    img = Image.open(image_path).convert("RGB")
    turns = [Message("user", "<image>\nWhat is this?"), Message("assistant", first), Message("user", "And the colour?")]
    assert second == answer(tiny_model, turns, [img], max_new_tokens=6)
    assert [t.role for t in chat.turns] == ["user", "assistant", "user", "assistant"]


def test_commands_from_a_pipe(tiny_model, image_path, tmp_path):
    other = tmp_path / "blue.png"
    Image.new("RGB", (30, 30), (0, 0, 255)).save(other)
    saved = tmp_path / "out" / "chat.json"
    lines = ["What is this?", "/help", "More?", f"/save {saved}", "/bogus", "/image /no/such.png",
             f"/image {other}", "Now?", "/reset", "/quit", "never asked"]
    chat = session(tiny_model)
    chat.set_image(str(image_path))
    out, err = io.StringIO(), io.StringIO()
    failures = run_session(chat, lines, out, err, echo=True)
    assert failures == 2  # /bogus and the missing image, both reported, the session went on
    assert "unknown command /bogus" in err.getvalue() and "/no/such.png" in err.getvalue()
    assert "/image PATH" in out.getvalue() and "never asked" not in out.getvalue()
    assert out.getvalue().count("assistant: ") == 3
    records = json.loads(saved.read_text())
    assert records[0]["image"] == str(image_path)
    messages = to_messages(records[0]["conversations"])  # a valid LLaVA record
    assert [m.role for m in messages] == ["user", "assistant"] * 2
    assert messages[0].content == "<image>\nWhat is this?" and messages[2].content == "More?"
    assert chat.image_path == str(other) and chat.turns == []  # /image started over, /reset cleared


def test_text_only_chat_and_save_needs_turns(tiny_model, tmp_path):
    chat = session(tiny_model)
    with pytest.raises(LlavakitError, match="nothing to save"):
        chat.save(str(tmp_path / "x.json"))
    assert chat.ask("hello") == answer(tiny_model, [Message("user", "hello")], max_new_tokens=6)
    with pytest.raises(LlavakitError, match="without <image>"):
        chat.ask("look at <image>")


def test_chat_cli_reads_stdin(image_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe the image.\n/reset\nHi\n"))
    code = main(["chat", "tiny-random", "--image", str(image_path), "--max-new-tokens", "4", "--temperature", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert ">>> Describe the image." in out and out.count("assistant: ") == 2 and "(conversation reset)" in out


def test_chat_cli_reports_a_missing_image(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", "tiny-random", "--image", "/no/such/image.png"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_save_to_a_directory_or_under_a_file_keeps_the_session(tiny_model, image_path, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    chat = session(tiny_model)
    chat.set_image(str(image_path))
    out, err = io.StringIO(), io.StringIO()
    lines = ["What is this?", f"/save {tmp_path}", f"/save {blocker / 'chat.json'}", "Still there?"]
    assert run_session(chat, lines, out, err) == 2
    assert "that is a directory" in err.getvalue() and "cannot write it" in err.getvalue()
    assert "Traceback" not in err.getvalue() and len(chat.turns) == 4  # the conversation went on
    # no temp file of io.atomic_write (".NAME.tmpPID") beside either target
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.tmp*"))


def test_a_failed_image_switch_says_which_image_the_chat_is_about(tiny_model, image_path):
    chat = session(tiny_model)
    chat.set_image(str(image_path))
    err = io.StringIO()
    assert run_session(chat, ["/image /no/such.png"], io.StringIO(), err) == 1
    assert f"the conversation stays about {image_path}" in err.getvalue()


def test_a_prompt_over_the_context_is_refused(tiny_model):
    chat = session(tiny_model, max_new_tokens=10)
    err = io.StringIO()
    assert run_session(chat, ["word " * 3000], io.StringIO(), err) == 1
    assert "over the model's context of 2048 tokens" in err.getvalue() and chat.turns == []


def test_chat_refuses_an_image_over_the_pixel_cap(tmp_path, monkeypatch, capsys):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(big)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", "tiny-random", "--image", str(big), "--max-image-pixels", "10000"]) == 2
    err = capsys.readouterr().err
    assert "is 200x100 = 20000 pixels, over the limit of 10000" in err and "Traceback" not in err
