"""Read a teacher's output back into turns, or reject it with a reason.

:func:`parse_output` returns a :class:`Parsed` whose ``reason`` is None when the output is usable.
Rejection reasons (checked in this order; one per output):

- ``empty``: nothing but whitespace;
- ``truncated``: the server stopped on the token limit (``finish_reason == "length"``), or the text
  ends mid-sentence;
- ``image_token``: the text contains ``<image>`` (it would be read as an image placeholder);
- ``garbled``: replacement / control characters, mostly non-letters, or a chunk repeated in a loop;
- ``refusal``: an apology or "as an AI" refusal instead of an answer;
- ``mentions_context``: talks about captions, coordinates or bounding boxes the image user never saw;
- ``format``: not the block format of its type (see :mod:`prompts`);
- ``too_short``: a detail description under 15 words or a reasoning answer under 8 words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REASONS = ("empty", "truncated", "image_token", "garbled", "refusal", "mentions_context", "format", "too_short")

_LABEL = re.compile(r"^[ \t]*(?:[#>*_]+[ \t]*)?(question|answer|q|a)[ \t]*(?:\*\*|__)?[ \t]*[:：][ \t]*(?:\*\*|__)?[ \t]*",
                    re.IGNORECASE | re.MULTILINE)
_SEPARATOR = re.compile(r"^[ \t]*(?:={3,}|-{3,}|\*{3,})[ \t]*$", re.MULTILINE)
_REFUSAL_START = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|unfortunately,? i|i cannot|i can'?t|i can not|"
    r"i am unable|i'?m unable|i won'?t|i will not)", re.IGNORECASE)
_REFUSAL_ANY = re.compile(
    r"\bas an ai\b|\blanguage model\b|\b(?:cannot|can'?t|unable to|not able to) (?:see|view|access) (?:the|this|an) "
    r"(?:image|picture|photo)|\bdon'?t have (?:access to|the ability to see) (?:the|this|an|any) (?:image|picture)",
    re.IGNORECASE)
_CONTEXT = re.compile(
    r"bounding box|\bcoordinates?\b|\bthe captions?\b|\bcaptions (?:say|mention|describe)|"
    r"\b(?:the|this) (?:given|provided) (?:description|text|information)|\bbased on the (?:description|text|captions?)|"
    r"\[\s*[01]?\.\d+\s*,\s*[01]?\.\d+", re.IGNORECASE)
_LOOP = re.compile(r"(.{6,40}?)\1{5,}", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_ENDINGS = tuple(".!?\"')]*`”’»…") + (":)",)


@dataclass
class Parsed:
    reason: str | None = None  # None = accepted
    detail: str = ""  # what exactly was wrong (for the stats / logs)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (question, answer) turns
    text: str = ""  # a detail description

    @property
    def ok(self) -> bool:
        return self.reason is None


def _reject(reason: str, detail: str) -> Parsed:
    return Parsed(reason=reason, detail=detail)


def _garbled(text: str) -> str | None:
    if _CONTROL.search(text):
        return "control or replacement characters"
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < 0.6:
        return f"only {letters}/{len(visible)} visible characters are letters"
    m = _LOOP.search(text)
    if m:
        return f"repeats {m.group(1)!r} in a loop"
    return None


def _blocks(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """(question, answer) pairs of the block format, or an error message."""
    text = _SEPARATOR.sub("", text)
    marks = list(_LABEL.finditer(text))
    if not marks:
        return [], "no 'Question:'/'Answer:' blocks"
    preamble = text[:marks[0].start()].strip()
    if len(preamble) > 120:
        return [], "text before the first block"
    parts = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        parts.append(("q" if m.group(1).lower() in ("question", "q") else "a", text[m.end():end].strip()))
    pairs = []
    for i in range(0, len(parts), 2):
        if i + 1 >= len(parts):
            return [], f"block {i // 2 + 1} has a question but no answer"
        (k1, q), (k2, a) = parts[i], parts[i + 1]
        if (k1, k2) != ("q", "a"):
            return [], f"block {i // 2 + 1} is not 'Question:' then 'Answer:'"
        if not q or not a:
            return [], f"block {i // 2 + 1} has an empty {'question' if not q else 'answer'}"
        pairs.append((q, a))
    return pairs, None


def _ends_mid_sentence(text: str) -> bool:
    t = text.rstrip()
    return bool(t) and not t.endswith(_ENDINGS)


def parse_output(kind: str, text: str | None, finish_reason: str | None = None) -> Parsed:
    """Validate and parse one output of type ``kind`` (conversation / detail / reasoning)."""
    text = (text or "").strip()
    if not text:
        return _reject("empty", "no text")
    if finish_reason == "length":
        return _reject("truncated", "stopped at the token limit")
    if "<image>" in text:
        return _reject("image_token", "contains <image>")
    why = _garbled(text)
    if why:
        return _reject("garbled", why)
    if _REFUSAL_START.search(text) or _REFUSAL_ANY.search(text):
        return _reject("refusal", text[:80])
    m = _CONTEXT.search(text)
    if m:
        return _reject("mentions_context", f"mentions {m.group(0)!r}")
    if kind == "detail":
        if _LABEL.search(text):
            return _reject("format", "a detail description must be prose, not Question/Answer blocks")
        if _ends_mid_sentence(text):
            return _reject("truncated", f"ends mid-sentence: ...{text[-30:]!r}")
        if len(text.split()) < 15:
            return _reject("too_short", f"{len(text.split())} words")
        return Parsed(text=text)
    if kind not in ("conversation", "reasoning"):
        raise ValueError(f"no parser for type {kind!r}")
    pairs, err = _blocks(text)
    if err:
        return _reject("format", err)
    if kind == "reasoning" and len(pairs) != 1:
        return _reject("format", f"expected one Question/Answer block, got {len(pairs)}")
    if _ends_mid_sentence(pairs[-1][1]):
        return _reject("truncated", f"ends mid-sentence: ...{pairs[-1][1][-30:]!r}")
    if kind == "reasoning" and len(pairs[0][1].split()) < 8:
        return _reject("too_short", f"reasoning answer has {len(pairs[0][1].split())} words")
    return Parsed(pairs=pairs)
