"""`llavakit chat MODEL [--image PATH]`: multi-turn chat in the terminal, answers streamed.

Commands: ``/image PATH`` (new image → new conversation), ``/reset``, ``/save FILE`` (the
conversation as a LLaVA data record), ``/help``, ``/quit``. Reads a pipe as well as a terminal::

    printf 'What is in the image?\\nWhat colour is it?\\n/save chat.json\\n' | llavakit chat nano --image cat.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable, TextIO

from llavakit.conversation.templates import ASSISTANT, USER, Message
from llavakit.errors import LlavakitError
from llavakit.imaging import DEFAULT_MAX_PIXELS, load_image
from llavakit.io import atomic_write_json
from llavakit.serve.batch import generate_rows
from llavakit.serve.prompts import DEFAULT, PromptEncoder
from llavakit.serve.rows import GenParams, Row

HELP = """commands:
  /image PATH   chat about another image (starts a new conversation)
  /reset        forget the conversation (keep the image)
  /save FILE    write the conversation as LLaVA JSON ([{"id", "image", "conversations"}])
  /help         this text
  /quit         leave (also Ctrl+D)"""


class ChatSession:
    """The conversation so far and the image it is about."""

    def __init__(self, model, params: GenParams, system: str | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.model = model
        self.params = params
        self.system = DEFAULT if system is None else system
        self.prompts = PromptEncoder(model)
        self.turns: list[Message] = []
        self.image = None
        self.image_path: str | None = None
        self.max_image_pixels = max_image_pixels

    def set_image(self, path: str) -> None:
        from llavakit.serve.models import accepts_images

        if not accepts_images(self.model):
            raise LlavakitError("this model is a text-only LLM: it cannot take images")
        try:
            pad = getattr(getattr(self.model, "config", None), "vision", None)
            self.image = load_image(path, self.max_image_pixels, canvas=getattr(pad, "image_mode", None) == "pad")
        except LlavakitError as exc:  # say which image the next question is about
            still = f"the conversation stays about {self.image_path}" if self.image_path else "there is no image"
            raise LlavakitError(f"{exc}; {still}") from None
        self.image_path = path
        self.turns = []

    def reset(self) -> None:
        self.turns = []

    def ask(self, text: str, on_text=None) -> str:
        """Answer ``text`` in the context of the conversation; streams pieces to ``on_text``."""
        token = self.prompts.image_token
        if token in text:
            raise LlavakitError(f"type your question without {token}; the image is added for you")
        first = not self.turns
        content = f"{token}\n{text}" if first and self.image is not None else text
        turns = [*self.turns, Message(USER, content)]
        system = self.system if isinstance(self.system, str) else ""  # DEFAULT: the model's own, short
        self.prompts.check_text_size(sum(len(t.content) for t in turns) + len(system),
                                     "the conversation with this question")
        pixels = self.model.preprocess([self.image]) if self.image is not None else None
        ids = self.prompts.encode(turns, self.system)
        self.prompts.check_context(ids, self.params.max_new_tokens, "the conversation with this question")
        row = Row(ids, pixels, self.params, on_text=on_text)
        result = generate_rows(self.model, [row])[0]
        self.turns = [*turns, Message(ASSISTANT, result.text)]
        return result.text

    def record(self) -> dict:
        """The conversation in LLaVA's data format."""
        rec: dict = {"id": f"chat-{int(time.time())}"}
        if self.image_path:
            rec["image"] = self.image_path
        rec["conversations"] = [
            {"from": "human" if t.role == USER else "gpt", "value": t.content} for t in self.turns
        ]
        return rec

    def save(self, path: str) -> Path:
        if not self.turns:
            raise LlavakitError("nothing to save yet: ask something first")
        target = Path(path)
        if target.is_dir():
            raise LlavakitError(f"/save {path}: that is a directory; give a file name (e.g. {target / 'chat.json'})")
        try:
            atomic_write_json(target, [self.record()])
        except OSError as exc:  # a parent that is a file, no permission, a full disk: the chat goes on
            raise LlavakitError(f"/save {path}: cannot write it ({exc.strerror or exc}); the conversation is kept") from None
        return target


def _command(session: ChatSession, line: str, out: TextIO) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        print(HELP, file=out)
    elif name == "/reset":
        session.reset()
        print("(conversation reset)", file=out)
    elif name == "/image":
        if not arg:
            raise LlavakitError("usage: /image PATH")
        session.set_image(arg)
        print(f"(image {arg}; new conversation)", file=out)
    elif name == "/save":
        if not arg:
            raise LlavakitError("usage: /save FILE")
        print(f"(saved to {session.save(arg)})", file=out)
    else:
        raise LlavakitError(f"unknown command {name}; /help lists the commands")
    return True


def run_session(session: ChatSession, lines: Iterable[str], out: TextIO, err: TextIO, echo: bool = False) -> int:
    """Drive a session from ``lines`` (a terminal or a pipe); returns the number of failed lines."""
    failures = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if echo:  # from a pipe: show what was asked, so the transcript reads like a chat
            print(f">>> {line}", file=out, flush=True)
        try:
            if line.startswith("/"):
                if not _command(session, line, out):
                    break
                continue
            print("assistant: ", end="", file=out, flush=True)
            session.ask(line, on_text=lambda piece: (out.write(piece), out.flush()))
            print(file=out, flush=True)
        except LlavakitError as exc:
            failures += 1
            print(f"error: {exc}", file=err, flush=True)
        except KeyboardInterrupt:
            print("\n(interrupted; that question was dropped)", file=out, flush=True)
    return failures


def _terminal_lines(prompt: str):
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a preset (nano, tiny-random, ...) or a llavakit checkpoint dir")
    parser.add_argument("--image", help="the image to talk about")
    parser.add_argument("--system", help="system prompt (default: the model's)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, help="sampling seed (default: random)")
    parser.add_argument("--text-only", action="store_true", help="load only the language model (or a plain LM dir / .gguf)")
    parser.add_argument("--template", help="conversation template for --text-only models")
    parser.add_argument("--device", help="e.g. cuda, cpu")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse a larger image before decoding it (default 4096x4096)")


def run(args) -> int:
    from llavakit.serve.models import load_servable

    params = GenParams(args.max_new_tokens, args.temperature, args.top_p, (), args.seed)
    model = load_servable(args.model, text_only=args.text_only, template=args.template, device=args.device)
    session = ChatSession(model, params, args.system, args.max_image_pixels)
    if args.image:
        session.set_image(args.image)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"llavakit chat: {args.model}" + (f" about {args.image}" if args.image else "") + " — /help for commands")
        lines = _terminal_lines("user: ")
    else:
        lines = sys.stdin
    failures = run_session(session, lines, sys.stdout, sys.stderr, echo=not interactive)
    return 1 if failures and not interactive else 0
