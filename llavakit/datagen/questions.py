"""Grounded question/answer pairs about one image, each computed from :mod:`facts`.

A generator returns a :class:`QA` with a natural full-sentence answer (for conversations) and an
exact short answer (for ``vqa``: lowercase word or phrase, counts as digits, ``yes``/``no``), plus
``fact`` — the fact it states, so tests can check every answer against the annotations.
Generators return None when the image offers no clear-cut fact of their kind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from llavakit.datagen.facts import ImageFacts, plural
from llavakit.datagen.language import RELATION_PHRASES, article, cap, inventory, num

LONG_REGION = {
    "top left": "in the top left corner of the image", "top right": "in the top right corner of the image",
    "bottom left": "in the bottom left corner of the image", "bottom right": "in the bottom right corner of the image",
    "top": "at the top of the image", "bottom": "at the bottom of the image",
    "left": "on the left side of the image", "right": "on the right side of the image",
    "center": "in the center of the image",
}


@dataclass(frozen=True)
class QA:
    kind: str  # count | color | shape | position | exists | relation | size
    question: str
    answer: str  # full sentence
    short: str  # exact single word / phrase
    fact: tuple  # what is stated, e.g. ("count", shape, color, n) — checked by the tests


@dataclass(frozen=True)
class Vocab:
    shapes: list[str]
    colors: list[str]


def _count(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    options = ["shape", "total"] + (["color", "pair"] if f.color_counts else [])
    target = rng.choice(options)
    shape = color = None
    absent = rng.random() < 0.15  # sometimes ask about something that is not there (answer 0)
    if target == "shape":
        missing = [s for s in v.shapes if s not in f.shape_counts]
        shape = rng.choice(missing) if absent and missing else rng.choice(f.objects).shape
    elif target == "color":
        missing = [c for c in v.colors if c not in f.color_counts]
        color = rng.choice(missing) if absent and missing else rng.choice(list(f.color_counts))
    elif target == "pair":
        missing = f.absent_pairs(v.colors, v.shapes)
        if absent and missing:
            color, shape = rng.choice(missing)
        else:
            o = rng.choice([o for o in f.objects if o.color])
            color, shape = o.color, o.shape
    n = f.count(shape=shape, color=color)
    noun = " ".join(w for w in (color, shape) if w) if shape else (f"{color} object" if color else "shape")
    pl = plural(noun)
    if target == "total":
        q = rng.choice(["How many objects are in the image?", "How many shapes are there in total?",
                        "How many shapes does the picture show?", "What is the total number of shapes?"])
    else:
        q = rng.choice([f"How many {pl} are there?", f"How many {pl} are in the image?", f"How many {pl} can you see?",
                        f"Count the {pl} in the picture.", f"What is the number of {pl} in the image?",
                        f"How many {pl} does the image contain?"])
    if n == 0:
        a = rng.choice([f"There are no {pl} in the image.", f"I don't see any {pl}; there are zero."])
    elif n == 1:
        a = rng.choice([f"There is one {noun}.", f"There is just a single {noun}.", f"I can see exactly one {noun}."])
    else:
        a = rng.choice([f"There are {num(n, rng)} {pl}.", f"I can count {num(n, rng)} {pl}.",
                        f"The image contains {num(n, rng)} {pl}."])
    return QA("count", q, a, str(n), ("count", shape, color, n))


def _color(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    refs = [(o, r) for o, r in f.referable(exclude="color") if o.color]
    if not refs:
        return None
    o, ref = rng.choice(refs)
    q = rng.choice([f"What color is the {ref}?", f"What is the color of the {ref}?",
                    f"Which color does the {ref} have?", f"Can you tell me the color of the {ref}?"])
    a = rng.choice([f"The {ref} is {o.color}.", f"It is {o.color}.", f"The {ref} is colored {o.color}."])
    return QA("color", q, a, o.color, ("color", o.id, o.color))


def _shape(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    refs = f.referable(exclude="shape")
    if not refs:
        return None
    o, ref = rng.choice(refs)
    q = rng.choice([f"What shape is the {ref}?", f"What kind of shape is the {ref}?",
                    f"Which shape does the {ref} have?"])
    a = rng.choice([f"The {ref} is {article(o.shape)}.", f"It is {article(o.shape)}.",
                    f"The {ref} has the shape of {article(o.shape)}."])
    return QA("shape", q, a, o.shape, ("shape", o.id, o.shape))


def _position(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    refs = [(o, r) for o, r in f.referable() if o.hpos or o.vpos]
    if not refs:
        return None
    o, ref = rng.choice(refs)
    forms = []
    if o.region:
        forms.append("region")
    if o.hpos in ("left", "right"):
        forms.append("h")
    if o.vpos in ("top", "bottom"):
        forms.append("v")
    if not forms:
        return None
    form = rng.choice(forms)
    if form == "region":
        q = rng.choice([f"Where is the {ref}?", f"Where is the {ref} located in the image?",
                        f"In which part of the image is the {ref}?", f"Where in the picture is the {ref}?"])
        return QA("position", q, f"The {ref} is {LONG_REGION[o.region]}.", o.region, ("region", o.id, o.region))
    if form == "h":
        pair = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
        q = f"Is the {ref} on the {pair[0]} or the {pair[1]} side of the image?"
        return QA("position", q, f"The {ref} is on the {o.hpos} side of the image.", o.hpos, ("hpos", o.id, o.hpos))
    pair = ["top", "bottom"] if rng.random() < 0.5 else ["bottom", "top"]
    q = f"Is the {ref} in the {pair[0]} or the {pair[1]} part of the image?"
    return QA("position", q, f"The {ref} is in the {o.vpos} part of the image.", o.vpos, ("vpos", o.id, o.vpos))


def _exists(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    present = rng.random() < 0.5
    has_colors = bool(f.color_counts)
    kind = rng.choice(["pair", "shape", "color"] if has_colors else ["shape"])
    if present:
        o = rng.choice(f.objects)
        shape = o.shape if kind in ("pair", "shape") else None
        color = o.color if kind in ("pair", "color") else None
    else:
        if kind == "pair":
            cands = [(c, s) for c, s in f.absent_pairs(v.colors, v.shapes)]
        elif kind == "shape":
            cands = [(None, s) for s in v.shapes if s not in f.shape_counts]
        else:
            cands = [(c, None) for c in v.colors if c not in f.color_counts]
        if not cands:
            return None
        color, shape = rng.choice(cands)
    n = f.count(shape=shape, color=color)
    noun = f"{color} {shape}" if color and shape else shape or f"{color} object"
    q = rng.choice([f"Is there {article(noun)} in the image?", f"Do you see {article(noun)}?",
                    f"Does the image contain {article(noun)}?", f"Is there any {noun} in the picture?",
                    f"Can you find {article(noun)} in the image?"])
    if n == 0:
        a = rng.choice([f"No, there is no {noun} in the image.", f"No, I don't see any {plural(noun)}."])
    elif n == 1:
        a = rng.choice([f"Yes, there is {article(noun)} in the image.", f"Yes, I can see one {noun}."])
    else:
        a = f"Yes, there are {num(n, rng)} {plural(noun)} in the image."
    return QA("exists", q, a, "yes" if n else "no", ("exists", shape, color, n > 0))


def _relation(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    refs = dict((o.id, r) for o, r in f.referable())
    rels = [r for r in f.relations if r.subject.id in refs and r.object.id in refs]
    if not rels:
        return None
    r = rng.choice(rels)
    a_ref, b_ref = refs[r.subject.id], refs[r.object.id]
    phrase = RELATION_PHRASES[r.relation]
    statement = f"The {a_ref} is {phrase} the {b_ref}."
    fact = ("relation", r.subject.id, r.relation, r.object.id)
    horizontal = r.relation in ("left of", "right of")
    if rng.random() < 0.5:
        if horizontal:
            q = f"Is the {a_ref} to the left or to the right of the {b_ref}?"
            short = "left" if r.relation == "left of" else "right"
        else:
            q = f"Is the {a_ref} above or below the {b_ref}?"
            short = r.relation
        return QA("relation", q, statement, short, fact)
    truthful = rng.random() < 0.5
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    asked = r.relation if truthful else inverse[r.relation]
    q = f"Is the {a_ref} {RELATION_PHRASES[asked]} the {b_ref}?"
    a = f"Yes, the {a_ref} is {phrase} the {b_ref}." if truthful else f"No, the {a_ref} is {phrase} the {b_ref}."
    return QA("relation", q, a, "yes" if truthful else "no", fact + (asked,))


def _size(f: ImageFacts, rng: random.Random, v: Vocab) -> QA | None:
    if rng.random() < 0.5:
        refs = [(o, r) for o, r in f.referable(exclude="size") if o.size]
        if refs:
            o, ref = rng.choice(refs)
            q = rng.choice([f"What size is the {ref}?", f"Is the {ref} small, medium or large?",
                            f"How big is the {ref}: small, medium or large?"])
            a = rng.choice([f"The {ref} is {o.size}.", f"It is {article(o.size + ' ' + o.shape)}."])
            return QA("size", q, a, o.size, ("size", o.id, o.size))
    refs = f.referable()
    pairs = [(a, ra, b, rb) for a, ra in refs for b, rb in refs if a.id < b.id and f.compare_size(a, b)]
    if not pairs:
        return None
    a, ra, b, rb = rng.choice(pairs)
    if rng.random() < 0.5:
        a, ra, b, rb = b, rb, a, ra
    word = rng.choice(["larger", "smaller"])
    winner = (a, ra) if f.compare_size(a, b) == word else (b, rb)
    loser = (b, rb) if winner[0] is a else (a, ra)
    q = f"Which is {word}, the {ra} or the {rb}?"
    ans = f"The {winner[1]} is {word} than the {loser[1]}."
    return QA("size", q, ans, winner[1], ("compare", winner[0].id, word, loser[0].id))


GENERATORS: dict[str, Callable[[ImageFacts, random.Random, Vocab], QA | None]] = {
    "count": _count, "color": _color, "shape": _shape, "position": _position,
    "exists": _exists, "relation": _relation, "size": _size,
}


def overview(f: ImageFacts, rng: random.Random) -> tuple[str, str]:
    """An opening question about the whole image and its answer."""
    q = rng.choice(["What do you see in this image?", "What objects are in the picture?",
                    "Can you list the shapes in this image?", "What is shown in the image?"])
    bg = f" on a {f.background} background" if f.background else ""
    return q, cap(f"I see {inventory(f, rng)}{bg}.") if f.objects else "I don't see any objects."


def sample_qas(f: ImageFacts, rng: random.Random, vocab: Vocab, k: int,
               kinds: list[str] | None = None) -> list[QA]:
    """Up to ``k`` QAs about ``f`` with distinct questions, spread over ``kinds``."""
    kinds = list(kinds or GENERATORS)
    out: list[QA] = []
    seen: set = set()  # questions and facts already used
    tries = 0
    while len(out) < k and tries < k * 6:
        if tries % len(kinds) == 0:
            rng.shuffle(kinds)
        qa = GENERATORS[kinds[tries % len(kinds)]](f, rng, vocab)
        tries += 1
        if qa is not None and qa.question not in seen and qa.fact not in seen:
            seen.update((qa.question, qa.fact))
            out.append(qa)
    return out

