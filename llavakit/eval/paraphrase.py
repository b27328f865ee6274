"""Questions phrased unlike the training templates: does the model read the question or match a form?

Every question form of :mod:`llavakit.datagen.questions` has a rule here that keeps its referents
(the object named, the options offered, the short-answer words) and rewrites the rest in wording no
training template uses. ``eval synth --paraphrase`` asks these instead of the template questions;
the answers are the same facts, scored the same way. A question no rule matches is an error (a new
template must get a rule), and no paraphrase may itself match a training form (the tests check
both over many scenes).
"""

from __future__ import annotations

import random
import re

from llavakit.errors import LlavakitError

_REF = r"(?P<ref>.+?)"
_A, _B = r"(?P<a>.+?)", r"(?P<b>.+?)"

# (template forms as regexes) → paraphrases using the same named groups
RULES: list[tuple[list[str], list[str]]] = [
    ([r"How many objects are in the image\?", r"How many shapes are there in total\?",
      r"How many shapes does the picture show\?", r"What is the total number of shapes\?"],
     ["Count every shape drawn here.", "Altogether, how many shapes appear in this picture?"]),
    ([r"How many (?P<pl>.+?) are there\?", r"How many (?P<pl>.+?) are in the image\?",
      r"How many (?P<pl>.+?) can you see\?", r"Count the (?P<pl>.+?) in the picture\.",
      r"What is the number of (?P<pl>.+?) in the image\?", r"How many (?P<pl>.+?) does the image contain\?"],
     ["Tell me how many {pl} this picture shows.", "What count of {pl} appears here?"]),
    ([rf"What color is the {_REF}\?", rf"What is the color of the {_REF}\?", rf"Which color does the {_REF} have\?",
      rf"Can you tell me the color of the {_REF}\?"],
     ["Name the colour of the {ref}.", "The {ref} here: in which colour is it drawn?"]),
    ([rf"What shape is the {_REF}\?", rf"What kind of shape is the {_REF}\?", rf"Which shape does the {_REF} have\?"],
     ["Name the form of the {ref}.", "The {ref} here: which geometric figure is it?"]),
    ([rf"Where is the {_REF} located in the image\?", rf"In which part of the image is the {_REF}\?",
      rf"Where in the picture is the {_REF}\?", rf"Where is the {_REF}\?"],  # the longer forms first
     ["Tell me the region of the picture that holds the {ref}.", "Point out where the {ref} sits in this picture."]),
    ([rf"Is the {_REF} on the (?P<x>left|right) or the (?P<y>left|right) side of the image\?"],
     ["Looking at the picture, does the {ref} sit toward the {x} or toward the {y}?"]),
    ([rf"Is the {_REF} in the (?P<x>top|bottom) or the (?P<y>top|bottom) part of the image\?"],
     ["Looking at the picture, does the {ref} sit toward the {x} or toward the {y}?"]),
    ([r"Is there (?P<art>an? .+?) in the image\?", r"Do you see (?P<art>an? .+?)\?",
      r"Does the image contain (?P<art>an? .+?)\?", r"Can you find (?P<art>an? .+?) in the image\?"],
     ["Does this picture include {art}?", "Is {art} visible anywhere here?"]),
    ([r"Is there any (?P<noun>.+?) in the picture\?"], ["Is any {noun} visible anywhere here?"]),
    ([rf"Is the {_A} to the left or to the right of the {_B}\?"],
     ["Relative to the {b}, does the {a} sit to the left or to the right?"]),
    ([rf"Is the {_A} above or below the {_B}\?"], ["Relative to the {b}, does the {a} sit above or below?"]),
    ([rf"Is the {_A} (?P<rel>to the left of|to the right of|above|below) the {_B}\?"],
     ["Would you say that the {a} sits {rel} the {b}?"]),
    ([rf"What size is the {_REF}\?", rf"Is the {_REF} small, medium or large\?",
      rf"How big is the {_REF}: small, medium or large\?"],
     ["Would you call the {ref} small, medium or large?", "Judge the size of the {ref}: small, medium or large?"]),
    ([rf"Which is (?P<w>larger|smaller), the {_A} or the {_B}\?"], ["Of the {a} and the {b}, which one is {w}?"]),
]
_COMPILED = [([re.compile(f"^{p}$") for p in forms], outs) for forms, outs in RULES]


def _match(question: str):
    """(the match, its rule's paraphrases) of the first template form ``question`` has, or (None, None)."""
    for pats, outs in _COMPILED:
        for p in pats:
            m = p.match(question)
            if m:
                return m, outs
    return None, None


def matches_template(question: str) -> bool:
    """Whether ``question`` (without the answer-format line) has one of the training forms."""
    return _match(question)[0] is not None


def parse(question: str) -> dict | None:
    """The referents a template form holds (``ref``, ``a``, ``b``, ``pl``, ...), or None."""
    m, _ = _match(question)
    return m.groupdict() if m else None


def paraphrase(question: str, seed: str) -> str:
    """A rewording of a template question (its first line), chosen by ``seed``; other lines kept."""
    first, sep, rest = question.partition("\n")
    m, outs = _match(first)
    if m is None:
        raise LlavakitError(f"no paraphrase rule matches the question {first!r} (add one to llavakit.eval.paraphrase)")
    return random.Random(seed).choice(outs).format(**m.groupdict()) + sep + rest
