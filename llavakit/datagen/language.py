"""Small English helpers shared by captions and the template teacher: lists, articles, numbers,
region and relation phrases, and grouped inventories of an image's objects."""

from __future__ import annotations

import random
from collections import Counter

from llavakit.datagen.facts import ImageFacts, Obj, number_word, plural

REGION_PHRASES = {
    "top left": "in the top left corner", "top right": "in the top right corner",
    "bottom left": "in the bottom left corner", "bottom right": "in the bottom right corner",
    "top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
    "center": "in the center",
}
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def join(items: list[str], conj: str = "and") -> str:
    items = list(items)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conj} {items[-1]}"


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def num(n: int, rng: random.Random, digits_p: float = 0.4) -> str:
    """A count as a word or (with probability ``digits_p``) as digits."""
    return str(n) if rng.random() < digits_p else number_word(n)


def counted(n: int, noun: str, rng: random.Random | None = None, digits_p: float = 0.4) -> str:
    """"a circle" / "three circles" / "3 circles"."""
    if n == 1:
        return article(noun)
    return f"{num(n, rng, digits_p) if rng else number_word(n)} {plural(noun, n)}"


def groups(f: ImageFacts, size: bool = False) -> list[tuple[str, int]]:
    """(description, count) per distinct description, in order of first appearance."""
    c = Counter(o.describe(size=size) for o in f.objects)
    seen: dict[str, int] = {}
    for o in f.objects:
        seen.setdefault(o.describe(size=size), c[o.describe(size=size)])
    return list(seen.items())


def inventory(f: ImageFacts, rng: random.Random | None = None, size: bool = False) -> str:
    """"two red circles, a blue square and a green star"."""
    return join([counted(n, d, rng) for d, n in groups(f, size)])


def shape_inventory(f: ImageFacts, rng: random.Random | None = None) -> str:
    """"three circles and a square" (shape counts, in order of first appearance)."""
    order = list(dict.fromkeys(o.shape for o in f.objects))
    return join([counted(f.shape_counts[s], s, rng) for s in order])


def color_list(f: ImageFacts) -> list[str]:
    return list(dict.fromkeys(o.color for o in f.objects if o.color))


def located(o: Obj, rng: random.Random | None = None, size: bool | None = None) -> str | None:
    """"a large red circle in the top left corner", or None if the object's region is unclear."""
    if o.region is None:
        return None
    with_size = size if size is not None else bool(rng and rng.random() < 0.5)
    return f"{article(o.describe(size=with_size))} {REGION_PHRASES[o.region]}"

