"""Five varied, correct captions per synthetic scene, written from its facts.

Each caption takes a different angle (inventory, shape counts, positions, colours, a relation or
sizes) so the five read differently; every statement is derived from :mod:`facts`, so a caption
never mentions an object that is not there. Phrasings are drawn from ``rng``.
"""

from __future__ import annotations

import random

from llavakit.datagen.facts import ImageFacts, number_word
from llavakit.datagen.language import (RELATION_PHRASES, article, cap, color_list, counted, inventory, join,
                                       located, shape_inventory)

N_CAPTIONS = 5
# several colours: the phrasings draw nothing from rng themselves, so they are plain templates
_COLOR_FORMS = ("{Colors} shapes on {bg}.", "Shapes in {n} colors ({colors}) against {bg}.",
                "A colorful arrangement of {colors} shapes.")


def _bg(f: ImageFacts) -> str:
    return f"{f.background} background" if f.background else "plain background"


def _inventory(f: ImageFacts, rng: random.Random) -> str:
    n = len(f.objects)
    forms = [
        f"{cap(counted(n, 'shape')) if n > 1 else 'One shape'} on {article(_bg(f))}: {inventory(f)}.",
        f"{cap(article(_bg(f)))} with {inventory(f, rng)}.",
        f"{cap(inventory(f, rng))} on {article(_bg(f))}.",
    ]
    return rng.choice(forms)


def _shapes(f: ImageFacts, rng: random.Random) -> str:
    forms = [
        f"An image with {shape_inventory(f, rng)}.",
        f"A picture containing {shape_inventory(f, rng)}.",
        f"{cap(shape_inventory(f, rng))}, drawn in flat colors.",
    ]
    return rng.choice(forms)


def _positions(f: ImageFacts, rng: random.Random) -> str | None:
    placed = [p for p in (located(o, rng) for o in f.objects) if p]
    if not placed:
        return None
    rng.shuffle(placed)
    text = cap(join(placed[:3])) + "."
    return text if len(f.objects) <= 3 or rng.random() < 0.5 else text[:-1] + ", among other shapes."


def _colors(f: ImageFacts, rng: random.Random) -> str | None:
    colors = color_list(f)
    if not colors:
        return None
    n = len(f.objects)
    if len(colors) == 1:
        noun = "shape" if n == 1 else "shapes"
        return f"{cap(number_word(n) if n > 1 else 'a single')} {colors[0]} {noun} on {article(_bg(f))}."
    form = rng.choice(_COLOR_FORMS)
    return form.format(Colors=cap(join(colors)), colors=join(colors), n=len(colors), bg=article(_bg(f)))


def _relation_or_size(f: ImageFacts, rng: random.Random) -> str:
    size = rng.random() < 0.5
    distinct = [r for r in f.relations if r.subject.describe(size) != r.object.describe(size)]
    if distinct:
        r = rng.choice(distinct)
        return cap(f"{article(r.subject.describe(size))} {RELATION_PHRASES[r.relation]} "
                   f"{article(r.object.describe(size))}.")
    if len(f.objects) == 1:
        o = f.objects[0]
        return f"Just one {o.describe(size=o.size is not None)} on {article(_bg(f))}."
    sizes = [s for s in ("large", "medium", "small") if f.count(size=s)]
    if sizes and f.objects[0].size is not None:
        return cap(join([counted(f.count(size=s), f"{s} shape") for s in sizes])) + "."
    return f"A simple image of {counted(len(f.objects), 'colored shape')}."


def scene_captions(f: ImageFacts, rng: random.Random) -> list[str]:
    """Five distinct captions for ``f``."""
    makers = [_inventory, _shapes, _positions, _colors, _relation_or_size]
    out: list[str] = []
    for make in makers:
        text = make(f, rng)
        if text and text not in out:
            out.append(text)
    # fill up with more phrasings of the always-applicable angles
    spare = [_inventory, _shapes, _relation_or_size, _inventory, _shapes]
    tries = 0
    while len(out) < N_CAPTIONS and tries < 40:
        text = spare[tries % len(spare)](f, rng)
        tries += 1
        if text not in out:
            out.append(text)
    fallback = [f"{cap(counted(len(f.objects), 'shape'))} in total.", f"Flat shapes on {article(_bg(f))}.",
                "A synthetic scene of simple shapes.", "Simple colored shapes.", "A drawing of geometric shapes."]
    for text in fallback:
        if len(out) >= N_CAPTIONS:
            break
        if text not in out:
            out.append(text)
    return out[:N_CAPTIONS]
