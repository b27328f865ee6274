"""Answer normalisation and the metrics the evaluations share.

Matching is exact after normalisation, by answer kind:

- ``text``: lower-cased, punctuation and articles removed, hyphens as spaces, whitespace
  collapsed, then equal ("The top-left." = "top left");
- ``number``: the numbers in the answer (digits or words: "three", "twelve", "none") — correct when
  exactly one distinct number is given and it equals the target ("3", "Three.", "three circles");
- ``yesno``: the first yes/no word decides ("Yes, there is." → yes; "No." → no); an answer with
  no yes/no word (or with both and no leading one) is unparsed and counts as wrong.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {
    "zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
}
YES_WORDS = {"yes", "yeah", "yep", "true", "correct"}
NO_WORDS = {"no", "nope", "false", "not", "none", "isn't", "aren't", "cannot"}
KINDS = ("text", "number", "yesno")

_PUNCT = re.compile(r"[^\w\s'-]")


def words(text: str) -> list[str]:
    """Lower-case words with punctuation stripped (apostrophes and hyphens kept inside words)."""
    text = _PUNCT.sub(" ", text.lower().replace("’", "'"))
    return [w.strip("'-") for w in text.split() if w.strip("'-")]


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, hyphens as spaces, no articles, single spaces; 'grey' = 'gray'."""
    out = [w for w in words(text.replace("-", " ")) if w not in ARTICLES]
    return " ".join("gray" if w == "grey" else w for w in out)


def parse_numbers(text: str) -> list[int]:
    """All numbers in ``text`` as ints: digits and number words ("twenty one" → 21)."""
    found: list[int] = []
    tokens = [t for w in words(text) for t in w.split("-")]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.isdigit():
            found.append(int(tok))
        elif tok in NUMBER_WORDS:
            value = NUMBER_WORDS[tok]
            if value >= 20 and value % 10 == 0 and i + 1 < len(tokens) and 0 < NUMBER_WORDS.get(tokens[i + 1], 0) < 10:
                value += NUMBER_WORDS[tokens[i + 1]]
                i += 1
            found.append(value)
        i += 1
    return found


def parse_number(text: str) -> int | None:
    """The answer's number, when it gives exactly one distinct number (else ``None``)."""
    nums = parse_numbers(text)
    distinct = set(nums)
    return nums[0] if len(distinct) == 1 else None


def parse_yes_no(text: str) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` when the answer says neither (or both, unled)."""
    toks = words(text)
    if not toks:
        return None
    if toks[0] in YES_WORDS:
        return True
    if toks[0] in NO_WORDS:
        return False
    has_yes = any(t in YES_WORDS for t in toks)
    has_no = any(t in NO_WORDS or t.endswith("n't") for t in toks)
    if has_yes != has_no:
        return has_yes
    return None


def is_correct(prediction: str, target: str, kind: str = "text") -> bool:
    """Normalised exact match of one answer against its target, by answer ``kind``."""
    if kind == "number":
        want = parse_number(target)
        return want is not None and parse_number(prediction) == want
    if kind == "yesno":
        want = parse_yes_no(target)
        return want is not None and parse_yes_no(prediction) == want
    if kind == "text":
        return bool(normalize_text(target)) and normalize_text(prediction) == normalize_text(target)
    raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(KINDS)}")


def binary_metrics(predictions: Sequence[bool | None], labels: Sequence[bool]) -> dict:
    """POPE's numbers, in percent: accuracy, precision, recall, F1 (positive = "yes") and the
    yes-ratio. An unparsed prediction (``None``) is wrong and is not a "yes"; the counts satisfy
    ``n = tp + fp + tn + fn + unparsed``."""
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    tp = sum(1 for p, y in zip(predictions, labels) if p is True and y)
    fp = sum(1 for p, y in zip(predictions, labels) if p is True and not y)
    tn = sum(1 for p, y in zip(predictions, labels) if p is False and not y)
    fn = sum(1 for p, y in zip(predictions, labels) if p is False and y)
    n = len(labels)
    positives = sum(1 for y in labels if y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0  # an unparsed answer to a positive is a miss
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "accuracy": 100.0 * (tp + tn) / n if n else None,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n if n else None,
        "unparsed": sum(1 for p in predictions if p is None),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; ``None`` for none)."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)
