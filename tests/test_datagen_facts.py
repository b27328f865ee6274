"""Facts on hand-made annotations, and every template-teacher answer checked against the raw
annotations by code that does not use llavakit.datagen.facts."""

from __future__ import annotations

import random
import re

import pytest

from llavakit.datagen.facts import Geometry, facts_from_coco, image_facts
from llavakit.datagen.prompts import DETAIL_INSTRUCTIONS, VQA_SUFFIX
from llavakit.datagen.questions import GENERATORS, Vocab, sample_qas
from llavakit.datagen.reasoning import REASONERS
from llavakit.datagen.scenes import categories, sample_scene, scene_record
from llavakit.datagen.template_teacher import generate
from llavakit.datagen.world import COLORS, SHAPES, SceneConfig
from llavakit.errors import DataError

CATS = {1: "circle", 2: "square", 3: "star"}


def ann(i, cat, x, y, w, h, color=None, size=None, **kw):
    a = {"id": i, "image_id": 1, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
    if color:
        a["color"] = color
    if size:
        a["size"] = size
    a.update(kw)
    return a


IMAGE = {"id": 1, "file_name": "a.png", "width": 300, "height": 300}


def test_positions_use_thirds_with_margins():
    anns = [ann(1, 1, 10, 10, 20, 20, "red"),  # centre (20, 20): top left
            ann(2, 1, 135, 135, 30, 30, "blue"),  # (150, 150): center
            ann(3, 2, 90, 250, 20, 20, "red"),  # x centre 100 = exactly 1/3: ambiguous; bottom
            ann(4, 3, 280, 130, 16, 16, "red")]  # x 288 right; y 138: middle
    f = image_facts(IMAGE, anns, CATS)
    o = {x.id: x for x in f.objects}
    assert (o[1].hpos, o[1].vpos, o[1].region) == ("left", "top", "top left")
    assert o[2].region == "center"
    assert o[3].hpos is None and o[3].vpos == "bottom" and o[3].region is None
    assert o[4].region == "right"
    wide = image_facts(IMAGE, anns, CATS, Geometry(margin=0.2))
    w = {x.id: x for x in wide.objects}
    assert w[1].hpos == "left" and w[2].hpos is None  # 20/300 is still left; 0.5 is no longer clear


def test_counts_refer_relations_extremes_sizes():
    anns = [ann(1, 1, 10, 100, 40, 40, "red", "large"),
            ann(2, 1, 200, 100, 20, 20, "red", "small"),
            ann(3, 2, 100, 10, 30, 30, "blue", "medium"),
            ann(4, 3, 100, 200, 30, 30, "red", "medium")]
    f = image_facts(IMAGE, anns, CATS)
    o = {x.id: x for x in f.objects}
    assert f.count() == 4 and f.count(shape="circle") == 2 and f.count(color="red") == 3
    assert f.count(shape="circle", color="red", size="small") == 1 and not f.exists(shape="square", color="red")
    assert f.pair_counts[("red", "circle")] == 2 and f.shape_counts["star"] == 1
    assert f.refer(o[3]) == "square" and f.refer(o[1]) == "large circle"
    assert f.refer(o[3], exclude="shape") == "blue object"
    assert f.refer(o[1], exclude="size") is None  # two red circles, no other attribute tells them apart
    assert f.relation(o[1], o[2], "x") == "left of" and f.relation(o[2], o[1], "x") == "right of"
    assert f.relation(o[3], o[4], "y") == "above"
    assert f.relation(o[1], o[2], "y") is None  # same rows: no vertical relation
    rels = {(r.subject.id, r.relation, r.object.id) for r in f.relations}
    assert (1, "left of", 2) in rels and (2, "right of", 1) in rels and (4, "below", 3) in rels
    assert f.extreme("left") is o[1] and f.extreme("top") is o[3] and f.extreme("bottom") is o[4]
    assert f.compare_size(o[1], o[2]) == "larger" and f.compare_size(o[3], o[4]) is None
    assert ("blue", "circle") in f.absent_pairs(["red", "blue"], ["circle"])


def test_relation_needs_a_gap_and_extreme_needs_a_lead():
    anns = [ann(1, 1, 10, 10, 50, 50), ann(2, 2, 62, 10, 50, 50), ann(3, 3, 63, 200, 40, 40)]
    f = image_facts(IMAGE, anns, CATS)  # gap 2% of 300 = 6 px; boxes 2 px apart: no relation
    o = {x.id: x for x in f.objects}
    assert f.relation(o[1], o[2], "x") is None
    assert f.extreme("right") is None  # centres 87 and 83: within the gap
    assert f.relation(o[1], o[3], "y") == "above"


def test_coco_size_fallback_and_errors():
    f = image_facts(IMAGE, [ann(1, 1, 0, 0, 20, 20), ann(2, 1, 0, 0, 50, 50), ann(3, 1, 0, 0, 100, 100)], CATS)
    assert [o.size for o in f.objects] == ["small", "medium", "large"]
    with pytest.raises(DataError, match="image 1"):
        image_facts(IMAGE, [{"id": 1, "category_id": 1}], CATS)
    with pytest.raises(DataError, match="unknown category_id 9"):
        facts_from_coco({"images": [IMAGE], "annotations": [ann(1, 9, 0, 0, 1, 1)], "categories": []})


# ---- independent ground truth from the raw annotations ---------------------------------------
def _raw(image, anns):
    names = {i + 1: s for i, s in enumerate(SHAPES)}
    return [dict(a, shape=names[a["category_id"]], cx=a["bbox"][0] + a["bbox"][2] / 2,
                 cy=a["bbox"][1] + a["bbox"][3] / 2) for a in anns], image["width"]


def _third(v, side, names):
    t = v / side
    return names[0] if t < 1 / 3 - 0.04 else names[2] if t > 2 / 3 + 0.04 else \
        names[1] if 1 / 3 + 0.04 < t < 2 / 3 - 0.04 else None


def _check_fact(fact, objs, side):
    by_id = {a["id"]: a for a in objs}
    kind = fact[0]
    if kind == "count":
        _, shape, color, n = fact
        assert n == sum(1 for a in objs if shape in (None, a["shape"]) and color in (None, a["color"]))
    elif kind == "exists":
        _, shape, color, present = fact
        assert present == any(shape in (None, a["shape"]) and color in (None, a["color"]) for a in objs)
    elif kind in ("color", "shape", "size"):
        assert by_id[fact[1]][kind] == fact[2]
    elif kind == "hpos":
        assert _third(by_id[fact[1]]["cx"], side, ("left", "center", "right")) == fact[2]
    elif kind == "vpos":
        assert _third(by_id[fact[1]]["cy"], side, ("top", "middle", "bottom")) == fact[2]
    elif kind == "region":
        o = by_id[fact[1]]
        h = _third(o["cx"], side, ("left", "center", "right"))
        v = _third(o["cy"], side, ("top", "middle", "bottom"))
        assert fact[2] == (h if v == "middle" else v if h == "center" else f"{v} {h}")
    elif kind == "relation":
        a, b = by_id[fact[1]], by_id[fact[3]]
        ax, ay, aw, ah = a["bbox"]
        bx, by, bw, bh = b["bbox"]
        gap = 0.02 * side
        assert {"left of": ax + aw + gap <= bx, "right of": bx + bw + gap <= ax,
                "above": ay + ah + gap <= by, "below": by + bh + gap <= ay}[fact[2]]
    elif kind == "compare":
        order = ["small", "medium", "large"]
        w, word, lo = by_id[fact[1]], fact[2], by_id[fact[3]]
        assert (order.index(w["size"]) > order.index(lo["size"])) == (word == "larger")
        assert w["size"] != lo["size"]
    else:
        raise AssertionError(f"unchecked fact {fact}")


def _check_reference(question, fact, objs):
    """Every 'the <ref>' in a question names exactly one object."""
    for m in re.finditer(r"the ((?:(?:small|medium|large) )?(?:(?:%s) )?(?:%s|object))\b"
                         % ("|".join(COLORS), "|".join(SHAPES)), question):
        words = m.group(1).split()
        matches = [a for a in objs if all(w in (a["size"], a["color"], a["shape"]) or w == "object" for w in words)]
        assert len(matches) == 1, (question, m.group(1), len(matches))


@pytest.fixture(scope="module")
def scenes():
    cfg = SceneConfig()
    recs = [scene_record(sample_scene(cfg, 11, i)) for i in range(150)]
    inst = {"images": [r[0] for r in recs], "annotations": [a for r in recs for a in r[1]],
            "categories": categories(cfg)}
    return recs, facts_from_coco(inst)


def test_every_question_kind_is_correct(scenes):
    recs, fs = scenes
    vocab = Vocab(fs.shapes, fs.colors)
    seen = {k: 0 for k in GENERATORS}
    forms = set()
    for image, anns in recs:
        objs, side = _raw(image, anns)
        f = fs.images[image["id"]]
        for kind, gen in GENERATORS.items():
            rng = random.Random(f"{image['id']}/{kind}")
            for _ in range(4):
                qa = gen(f, rng, vocab)
                if qa is None:
                    continue
                seen[kind] += 1
                forms.add(re.sub(r"\b(%s)\b" % "|".join(list(COLORS) + list(SHAPES)), "X", qa.question)[:25])
                _check_fact(qa.fact, objs, side)
                _check_reference(qa.question, qa.fact, objs)
                if qa.fact[0] == "count":
                    assert qa.short == str(qa.fact[3])
                if qa.fact[0] in ("exists",) or len(qa.fact) == 5:  # yes/no questions
                    assert qa.short in ("yes", "no") and qa.answer.lower().startswith(qa.short)
    assert all(n > 100 for n in seen.values()), seen
    assert len(forms) > 40  # many phrasings


def test_reasoning_conclusions_are_correct(scenes):
    recs, fs = scenes
    vocab = Vocab(fs.shapes, fs.colors)
    seen = {k: 0 for k in REASONERS}
    for image, anns in recs:
        objs, side = _raw(image, anns)
        by_id = {a["id"]: a for a in objs}
        f = fs.images[image["id"]]
        for name, gen in REASONERS.items():
            out = gen(f, random.Random(f"{image['id']}/{name}"), vocab)
            if out is None:
                continue
            seen[name] += 1
            q, a, fact = out
            kind = fact[0]
            if kind == "remaining":
                assert fact[2] == len(objs) - sum(o["color"] == fact[1] for o in objs)
                assert f"= {fact[2]}" in a
            elif kind == "more":
                na = sum(o["shape"] == fact[1] for o in objs)
                nb = sum(o["shape"] == fact[2] for o in objs)
                assert fact[3] == (na > nb) and a.split("answer is: ")[1].startswith("Yes" if na > nb else "No")
            elif kind == "most_common_color":
                counts = {c: sum(o["color"] == c for o in objs) for c in COLORS}
                best = max(counts.values())
                assert [c for c, n in counts.items() if n == best] == [fact[1]]
            elif kind == "extreme":
                key = {"left": "cx", "right": "cx", "top": "cy", "bottom": "cy"}[fact[1]]
                sign = 1 if fact[1] in ("left", "top") else -1
                ranked = sorted(objs, key=lambda o: sign * o[key])
                assert ranked[0]["id"] == fact[2] and by_id[fact[2]]["color"] in a
            elif kind == "add_one":
                assert fact[2] == sum(o["shape"] == fact[1] for o in objs) + 1
            elif kind == "union":
                assert fact[3] == sum(o["color"] == fact[1] or o["shape"] == fact[2] for o in objs)
                assert f"= {fact[3]}" in a
            elif kind == "chain":
                _check_fact(("relation", fact[1], fact[2], fact[3]), objs, side)
            elif kind == "biggest":
                larger = [o for o in objs if o["size"] == by_id[fact[1]]["size"]]
                assert len(larger) == 1 and all(
                    ["small", "medium", "large"].index(o["size"]) <= ["small", "medium", "large"].index(
                        by_id[fact[1]]["size"]) for o in objs)
    assert all(n > 5 for n in seen.values()), seen


def test_types_shapes_and_determinism(scenes):
    recs, fs = scenes
    vocab = Vocab(fs.shapes, fs.colors)
    digits = words = 0
    for image, _ in recs[:60]:
        f = fs.images[image["id"]]
        conv = generate("conversation", f, vocab, seed=0)
        assert 3 <= len(conv.pairs) <= 6
        text = " ".join(a for _, a in conv.pairs)
        digits += bool(re.search(r"\b[2-8] \w+s\b", text))
        words += bool(re.search(r"\b(two|three|four|five|six|seven|eight) \w+s\b", text))
        vqa = generate("vqa", f, vocab, seed=0)
        assert 1 <= len(vqa.pairs) <= 5
        for q, a in vqa.pairs:
            assert q.endswith("\n" + VQA_SUFFIX) and len(a.split()) <= 3 and a == a.lower()
        detail = generate("detail", f, vocab, seed=0)
        assert detail.pairs[0][0] in DETAIL_INSTRUCTIONS and len(detail.pairs[0][1].split()) >= 10
        for o in f.objects:  # the paragraph names every object
            assert o.describe(size=True) in detail.pairs[0][1]
        reasoning = generate("reasoning", f, vocab, seed=0)
        assert len(reasoning.pairs) == 1
        assert len(re.findall(r"[.!?:](?:\s|$)", reasoning.pairs[0][1])) >= 2  # facts first, then the conclusion
        assert generate("conversation", f, vocab, seed=0).pairs == conv.pairs
        assert generate("conversation", f, vocab, seed=0, variant=1).pairs != conv.pairs or len(f.objects) < 2
    assert digits > 3 and words > 3  # counts appear both as digits and as words


def test_sample_qas_distinct_and_bounded(scenes):
    recs, fs = scenes
    f = fs.images[recs[0][0]["id"]]
    qas = sample_qas(f, random.Random(0), Vocab(fs.shapes, fs.colors), 6)
    assert len({q.question for q in qas}) == len(qas) and len({q.fact for q in qas}) == len(qas)
