"""ScienceQA answer extraction and scoring by the paper's columns.

:func:`extract_choice` reads the chosen option from free text, trying in order:

1. "The answer is X." / "Answer: (X)" — the last such statement wins (reasoning-first outputs
   may mention options before concluding);
2. the whole reply is a letter: "B", "(B)", "B.";
3. the reply starts with a lettered option: "B. Louisiana", "(B) Louisiana", "B) …";
4. "option B" / "choice (B)";
5. the reply (or what follows "the answer is") is exactly one option's text;
6. the reply mentions exactly one option's text ("The Atlantic Ocean is highlighted.") — when
   two options occur (or one option's text holds another's), nothing is chosen.

A letter beyond the problem's options, or no match, is ``FAILED`` — counted wrong, never guessed
(LLaVA's script picks a random option instead, which makes scores non-deterministic).
"""

from __future__ import annotations

import re
from typing import Sequence

from llavakit.errors import DataError
from llavakit.eval.report import pct
from llavakit.eval.scienceqa_data import COLUMNS, LETTERS, Problem
from llavakit.eval.scoring import normalize_text

FAILED = "FAILED"

_ANSWER_IS = re.compile(
    r"(?i:\banswer\s+is\s*:?|\banswer\s*:)\s*"
    r"(?:\(([A-Z])\)|([A-Z])(?=\s*$|[.,;:!?)\]]|\s+(?i:because|since)\b))"
)
_ONLY_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_LEADING = re.compile(r"^\(([A-Z])\)|^([A-Z])[.:)](?:\s|$)")
_OPTION = re.compile(r"(?i:\boption|\bchoice)\s*\(?([A-Z])\)?(?![A-Za-z0-9])")
_ANSWER_TEXT = re.compile(r"(?i:\banswer\s+is)\s*:?\s*(.+?)\s*(?:\.\s|\.?$)")


def _valid(letter: str, n: int) -> str | None:
    return letter if letter in LETTERS[:n] else None


def _by_text(text: str, choices: Sequence[str]) -> str | None:
    target = normalize_text(text)
    if not target:
        return None
    hits = [i for i, c in enumerate(choices) if normalize_text(c) == target]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def extract_choice(text: str, choices: Sequence[str]) -> str | None:
    """The option letter the reply chose, or ``None`` (FAILED). Deterministic."""
    n = len(choices)
    reply = (text or "").strip()
    if not reply:
        return None
    stated = _ANSWER_IS.findall(reply)
    if stated:
        return _valid("".join(stated[-1]), n)
    m = _ONLY_LETTER.match(reply)
    if m:
        return _valid(m.group(1), n)
    m = _LEADING.match(reply)
    if m:
        return _valid(m.group(1) or m.group(2), n)
    m = _OPTION.findall(reply)
    if m:
        return _valid(m[-1], n)
    said = _ANSWER_TEXT.findall(reply)
    if said:
        return _by_text(said[-1], choices)
    return _by_text(reply, choices) or _mentioned(reply, choices)


def _mentioned(text: str, choices: Sequence[str]) -> str | None:
    padded = f" {normalize_text(text)} "
    hits = [i for i, c in enumerate(choices) if normalize_text(c) and f" {normalize_text(c)} " in padded]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def score(problems: dict[str, Problem], predictions: dict[str, str]) -> dict:
    """Accuracy overall and per column over the predicted pids. ``predictions`` maps a pid to a
    letter or ``FAILED``."""
    counts = {col: [0, 0] for col in COLUMNS}
    correct_all = 0
    failed = []
    for pid, pred in predictions.items():
        prob = problems[pid]
        ok = pred == prob.answer_letter
        correct_all += ok
        if pred == FAILED:
            failed.append(pid)
        for col in prob.columns:
            counts[col][0] += ok
            counts[col][1] += 1
    n = len(predictions)
    return {
        "accuracy": pct(correct_all, n),
        "correct": correct_all,
        "total": n,
        "columns": {col: {"accuracy": pct(c, t), "correct": c, "total": t} for col, (c, t) in counts.items()},
        "failed": {"count": len(failed), "pids": failed},
    }


def predictions_from_answers(answers: list[dict], problems: dict[str, Problem], source: str) -> tuple[dict, dict]:
    """model_vqa answers (``question_id`` = pid, ``text``) → ``({pid: letter|FAILED}, {pid: text})``."""
    preds: dict[str, str] = {}
    texts: dict[str, str] = {}
    for rec in answers:
        pid = str(rec["question_id"])
        if pid not in problems:
            raise DataError(f"{source}: question_id {pid!r} is not a problem of the problems file")
        if pid in preds:
            raise DataError(f"{source}: question_id {pid!r} is answered twice")
        if not isinstance(rec["text"], str):
            raise DataError(f"{source}: question_id {pid!r}: text is not a string")
        texts[pid] = rec["text"]
        preds[pid] = extract_choice(rec["text"], problems[pid].choices) or FAILED
    return preds, texts


def predictions_from_result(data, problems: dict[str, Problem], source: str) -> tuple[dict, dict]:
    """A ``{pid: prediction}`` result (letter, ``FAILED``, option index, or free text; LLaVA's
    ``{"results": {...}}`` wrapper accepted) → ``({pid: letter|FAILED}, {pid: text})``."""
    if isinstance(data, dict) and isinstance(data.get("results"), dict):
        data = data["results"]
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected an object of pid → prediction")
    preds, texts = {}, {}
    for pid, value in data.items():
        pid = str(pid)
        if pid not in problems:
            raise DataError(f"{source}: pid {pid!r} is not a problem of the problems file")
        choices = problems[pid].choices
        if isinstance(value, int) and not isinstance(value, bool):
            letter = LETTERS[value] if 0 <= value < len(choices) else None
        elif isinstance(value, str):
            letter = None if value == FAILED else extract_choice(value, choices)
        else:
            raise DataError(f"{source}: pid {pid!r}: prediction {value!r} is not a letter, index or text")
        preds[pid] = letter or FAILED
        texts[pid] = f"The answer is {letter}." if letter else (value if isinstance(value, str) else "")
    return preds, texts


def complement(primary: dict[str, str], other: dict[str, str]) -> dict[str, str]:
    """The paper's "GPT-4 complement": the other predictor's answer unless it failed (or is absent)."""
    return {pid: other[pid] if other.get(pid, FAILED) != FAILED else pred for pid, pred in primary.items()}
