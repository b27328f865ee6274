"""The offline teacher: grounded, deterministic instruction data written from an image's facts.

Four types, all computed from :mod:`facts` (so they are correct by construction and the tests check
them against the annotations):

- ``conversation``: 3–6 question/answer turns over different kinds of fact (counts in words or
  digits, colours, shapes, positions, existence incl. absent objects, relations, sizes);
- ``detail``: a paragraph describing every object with its size, colour and place, occlusions,
  a relation, and the counts;
- ``reasoning``: one question whose answer states the facts, combines them, and concludes;
- ``vqa``: LLaVA-1.5-style short answers — each question ends with :data:`prompts.VQA_SUFFIX`
  and the answer is one lowercase word/phrase (``yes``/``no``, counts as digits).

Output is a list of (question, answer) turns plus the facts each answer states (``facts`` field
of :class:`Generated`). Randomness comes only from ``random.Random(f"{seed}/{image_id}/{type}/{variant}")``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from llavakit.datagen.facts import ImageFacts, plural
from llavakit.datagen.language import REGION_PHRASES, RELATION_PHRASES, article, cap, color_list, join, num
from llavakit.datagen.prompts import DETAIL_INSTRUCTIONS, VQA_SUFFIX
from llavakit.datagen.questions import QA, Vocab, overview, sample_qas
from llavakit.datagen.reasoning import sample_reasoning

TEMPLATE_TYPES = ("conversation", "detail", "reasoning", "vqa")
VERSION = 1  # bump when outputs change, so caches keyed by it regenerate


@dataclass
class Generated:
    pairs: list[tuple[str, str]]
    facts: list[tuple] = field(default_factory=list)  # one per checked answer


def rng_for(seed: int, image_id: int, kind: str, variant: int) -> random.Random:
    return random.Random(f"{seed}/{image_id}/{kind}/{variant}")


def conversation(f: ImageFacts, rng: random.Random, vocab: Vocab) -> Generated:
    k = rng.randint(3, 6)
    pairs: list[tuple[str, str]] = []
    if f.objects and rng.random() < 0.35:
        pairs.append(overview(f, rng))
        k -= 1
    qas = sample_qas(f, rng, vocab, k)
    pairs += [(qa.question, qa.answer) for qa in qas]
    return Generated(pairs, [qa.fact for qa in qas])


def vqa(f: ImageFacts, rng: random.Random, vocab: Vocab, k: int = 5) -> Generated:
    qas: list[QA] = sample_qas(f, rng, vocab, k)
    return Generated([(f"{qa.question}\n{VQA_SUFFIX}", qa.short) for qa in qas], [qa.fact for qa in qas])


_SIDE = {"left": "on the left side", "right": "on the right side", "top": "in the upper part",
         "bottom": "in the lower part"}


def _object_sentence(o, rng: random.Random) -> str:
    thing = o.describe(size=True)
    if o.region is not None:
        where = REGION_PHRASES[o.region]
    else:  # only one axis (or none) is clear-cut: say just that much
        side = _SIDE.get(o.hpos or "") or _SIDE.get(o.vpos or "")
        if side is None:
            return rng.choice([f"There is {article(thing)}.", f"The image has {article(thing)}."])
        where = side
    return rng.choice([f"{cap(where)} there is {article(thing)}.", f"{cap(article(thing))} sits {where}.",
                       f"{cap(article(thing))} can be seen {where}."])


def detail_text(f: ImageFacts, rng: random.Random) -> str:
    n = len(f.objects)
    bg = f"a {f.background} background" if f.background else "a plain background"
    if n == 0:
        return f"The image shows {bg} with no objects on it."
    opening = rng.choice([f"The image shows {num(n, rng) if n > 1 else 'a single'} flat "
                          f"{'shapes' if n > 1 else 'shape'} on {bg}.",
                          f"This picture contains {num(n, rng) if n > 1 else 'one'} "
                          f"{'shapes' if n > 1 else 'shape'} drawn on {bg}."])
    # reading order: top to bottom, then left to right
    ordered = sorted(f.objects, key=lambda o: (round(o.cy / (f.height / 3)), o.cx))
    sentences = [opening] + [_object_sentence(o, rng) for o in ordered]
    by_id = {o.id: o for o in f.objects}
    for o in f.objects:
        covers = [by_id[i] for i in o.occluded_by if i in by_id]
        if o.occluded >= 0.02 and covers:
            sentences.append(f"{cap(article(o.describe()))} is partly covered by "
                             f"{join([article(c.describe()) for c in covers])}.")
    refs = dict((o.id, r) for o, r in f.referable())
    rels = [r for r in f.relations if r.subject.id in refs and r.object.id in refs]
    if rels:
        r = rng.choice(rels)
        sentences.append(f"The {refs[r.subject.id]} is {RELATION_PHRASES[r.relation]} the {refs[r.object.id]}.")
    if n > 1:
        shapes = join([f"{'one' if c == 1 else num(c, rng)} {plural(s, c)}" for s, c in f.shape_counts.items()])
        colors = color_list(f)
        tail = f", in {num(len(colors), rng)} different colors ({join(colors)})" if len(colors) > 1 else (
            f", all of them {colors[0]}" if colors else "")
        verb = "is" if next(iter(f.shape_counts.values())) == 1 else "are"  # agrees with the first item
        sentences.append(f"Altogether there {verb} {shapes}{tail}.")
    return " ".join(sentences)


def generate(kind: str, f: ImageFacts, vocab: Vocab, seed: int, variant: int = 0,
             vqa_questions: int = 5) -> Generated:
    """One sample of ``kind`` for image ``f``; deterministic in (seed, image, kind, variant)."""
    rng = rng_for(seed, f.image_id, kind, variant)
    if kind == "conversation":
        return conversation(f, rng, vocab)
    if kind == "vqa":
        return vqa(f, rng, vocab, vqa_questions)
    if kind == "detail":
        return Generated([(rng.choice(DETAIL_INSTRUCTIONS), detail_text(f, rng))])
    if kind == "reasoning":
        q, a, fact = sample_reasoning(f, rng, vocab)
        return Generated([(q, a)], [fact])
    raise KeyError(f"unknown type {kind!r}; template types: {', '.join(TEMPLATE_TYPES)}")
