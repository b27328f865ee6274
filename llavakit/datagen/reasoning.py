"""Grounded reasoning questions: each answer states the facts it uses, then the step that combines
them, then the conclusion. Every generator returns ``(question, answer, fact)`` or None when the
image does not support a clear-cut instance; ``fact`` is the conclusion (checked by the tests)."""

from __future__ import annotations

import random
from typing import Callable

from llavakit.datagen.facts import ImageFacts, plural
from llavakit.datagen.language import RELATION_PHRASES, article, cap, counted, join, num
from llavakit.datagen.questions import Vocab

Reasoned = tuple[str, str, tuple]

SIDE_WORDS = {"left": "furthest to the left", "right": "furthest to the right",
              "top": "highest up", "bottom": "lowest down"}


def _remove_color(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    if not f.color_counts or len(f.objects) < 2:
        return None
    color = rng.choice(list(f.color_counts))
    total, k = len(f.objects), f.color_counts[color]
    rest = total - k
    q = rng.choice([f"If all the {color} shapes were removed, how many shapes would be left?",
                    f"How many shapes would remain after taking away every {color} one?"])
    which = join([article(o.describe()) for o in f.select(color=color)])
    a = (f"First I count all the shapes: there are {num(total, rng)} in total. "
         f"Next, the {color} ones: {which}, so {counted(k, 'shape', rng)}. "
         f"Removing them leaves {total} - {k} = {rest}, so {num(rest, rng)} "
         f"{'shape would' if rest == 1 else 'shapes would'} be left.")
    return q, a, ("remaining", color, rest)


def _compare_counts(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    shapes = list(f.shape_counts)
    others = [s for s in v.shapes if s not in shapes]
    if not shapes or len(shapes) + len(others) < 2:
        return None
    a_shape = rng.choice(shapes)
    pool = [s for s in shapes if s != a_shape] + (others[:1] if rng.random() < 0.3 else [])
    if not pool:
        pool = others
    if not pool:
        return None
    b_shape = rng.choice(pool)
    na, nb = f.count(shape=a_shape), f.count(shape=b_shape)
    q = f"Are there more {plural(a_shape)} than {plural(b_shape)} in the image?"
    cmp = "greater than" if na > nb else "less than" if na < nb else "equal to"
    verdict = ("Yes" if na > nb else "No") + (
        f", there are more {plural(a_shape)}." if na > nb else
        f", there are fewer {plural(a_shape)} than {plural(b_shape)}." if na < nb else
        ", there are exactly as many of each.")
    a = (f"Let me count both. There {'is' if na == 1 else 'are'} {counted(na, a_shape, rng)} and "
         f"{counted(nb, b_shape, rng) if nb else 'no ' + plural(b_shape)}. "
         f"Since {na} is {cmp} {nb}, the answer is: {verdict}")
    return q, a, ("more", a_shape, b_shape, na > nb)


def _most_common_color(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    if len(f.color_counts) < 2:
        return None
    ranked = f.color_counts.most_common()
    if ranked[0][1] == ranked[1][1]:
        return None
    q = rng.choice(["Which color is used for the most shapes?", "What is the most common color among the shapes?"])
    tally = join([f"{c}: {n}" for c, n in ranked])
    best, n = ranked[0]
    a = (f"To find out, I count the shapes of each color — {tally}. "
         f"The highest count is {n}, and only {best} reaches it, so the most common color is {best}.")
    return q, a, ("most_common_color", best)


def _extreme(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    if len(f.objects) < 2:
        return None
    side = rng.choice(list(SIDE_WORDS))
    o = f.extreme(side)
    if o is None or o.color is None:
        return None
    edge = "left edge" if side == "left" else "right edge" if side == "right" else f"{side} edge"
    q = rng.choice([f"Which shape is closest to the {edge} of the image, and what color is it?",
                    f"Name the shape that is {SIDE_WORDS[side]} in the image and give its color."])
    a = (f"I compare the positions of all {num(len(f.objects), rng)} shapes. "
         f"The {o.describe(size=True)} is clearly {SIDE_WORDS[side]}; no other shape comes as close to the {edge}. "
         f"So the shape is {article(o.shape)}, and it is {o.color}.")
    return q, a, ("extreme", side, o.id)


def _add_one(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    shape = rng.choice(v.shapes)
    n = f.count(shape=shape)
    q = f"If one more {shape} were added to the picture, how many {plural(shape)} would there be?"
    now = f"There {'is' if n == 1 else 'are'} {counted(n, shape, rng) if n else 'no ' + plural(shape)} now."
    a = f"{now} Adding one gives {n} + 1 = {n + 1}, so there would be {counted(n + 1, shape, rng)}."
    return q, a, ("add_one", shape, n + 1)


def _union(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    cands = [o for o in f.objects if o.color]
    if not cands:
        return None
    o = rng.choice(cands)
    color, shape = o.color, rng.choice(list(f.shape_counts))
    nc, ns, both = f.count(color=color), f.count(shape=shape), f.count(shape=shape, color=color)
    total = nc + ns - both
    q = f"How many shapes are {color} or {article(shape)} (or both)?"
    first = f"There {'is' if nc == 1 else 'are'} {counted(nc, color + ' shape', rng)} and {counted(ns, shape, rng)}."
    if both:
        step = (f"{cap(counted(both, color + ' ' + shape, rng))} {'is' if both == 1 else 'are'} in both groups, "
                f"so I subtract {'it' if both == 1 else 'them'} once: {nc} + {ns} - {both} = {total}.")
    else:
        step = f"No shape is in both groups, so I simply add them: {nc} + {ns} = {total}."
    a = f"{first} {step} The answer is {num(total, rng)}."
    return q, a, ("union", color, shape, total)


def _chain(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    refs = dict((o.id, r) for o, r in f.referable())
    rels = [r for r in f.relations if r.subject.id in refs and r.object.id in refs]
    chains = [(r1, r2) for r1 in rels for r2 in rels
              if r1.object.id == r2.subject.id and r1.relation == r2.relation and r1.subject.id != r2.object.id]
    if not chains:
        return None
    r1, r2 = rng.choice(chains)
    a_, b_, c_ = refs[r1.subject.id], refs[r1.object.id], refs[r2.object.id]
    p = RELATION_PHRASES[r1.relation]
    q = f"Is the {a_} {p} the {c_}? Explain using the {b_}."
    a = (f"The {a_} is {p} the {b_}, and the {b_} is {p} the {c_}. "
         f"Both steps go the same way, so the {a_} must also be {p} the {c_}: yes.")
    return q, a, ("chain", r1.subject.id, r1.relation, r2.object.id)


def _biggest(f: ImageFacts, rng: random.Random, v: Vocab) -> Reasoned | None:
    sized = [o for o in f.objects if o.size]
    if len(sized) < 2:
        return None
    for size in ("large", "medium", "small"):
        top = [o for o in sized if o.size == size]
        if top:
            break
    if len(top) != 1:
        return None
    o = top[0]
    rest = join(sorted({p.size for p in sized if p is not o}, key=["small", "medium", "large"].index))
    q = rng.choice(["Which shape is the biggest in the image?", "What is the largest object in the picture?"])
    a = (f"Comparing sizes, only one shape is {o.size}: the {o.describe()}. The other shapes are {rest}. "
         f"So the biggest object is the {o.describe(size=True)}.")
    return q, a, ("biggest", o.id)


REASONERS: dict[str, Callable[[ImageFacts, random.Random, Vocab], Reasoned | None]] = {
    "remove_color": _remove_color, "compare_counts": _compare_counts, "most_common_color": _most_common_color,
    "extreme": _extreme, "add_one": _add_one, "union": _union, "chain": _chain, "biggest": _biggest,
}


def sample_reasoning(f: ImageFacts, rng: random.Random, vocab: Vocab) -> Reasoned:
    """One reasoning (question, answer, fact); ``add_one`` always applies, so this never fails."""
    names = list(REASONERS)
    rng.shuffle(names)
    for name in names:
        out = REASONERS[name](f, rng, vocab)
        if out is not None:
            return out
    return _add_one(f, rng, vocab)  # type: ignore[return-value]
