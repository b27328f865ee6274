"""POPE: negative sampling (random / popular / adversarial) on a hand-made COCO fixture and on
generated scenes, property tests of the samplers, and the end-to-end plumbing on tiny-random."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llavakit.cli import main
from llavakit.datagen.facts import load_facts
from llavakit.eval import pope

FIX = Path(__file__).parent / "fixtures" / "pope" / "instances.json"
NAMES = ["circle", "square", "triangle", "star", "diamond", "cross", "heart"]


@pytest.fixture(scope="module")
def facts():
    return load_facts(FIX)


def test_popularity_and_cooccurrence(facts):
    present = pope.object_sets(facts, list(facts.images))
    pop = pope.popularity(present)
    assert pop == Counter({"circle": 5, "square": 4, "triangle": 2, "star": 2, "heart": 2, "diamond": 1, "cross": 1})
    co = pope.cooccurrence(present)
    assert co["circle"]["square"] == 4 and co["circle"]["star"] == 2 and co["heart"]["circle"] == 1
    assert "circle" not in co["circle"]


def test_negatives_by_mode_hand_computed(facts):
    probes, skipped = pope.build_probes(facts, list(facts.images), "images", per_image=3)
    assert skipped == [{"image_id": 6, "reason": "every object present"}]

    def negatives(mode, iid):
        return [p["object"] for p in probes[mode] if p["image_id"] == iid and not p["label"]]

    def positives(mode, iid):
        return sorted(p["object"] for p in probes[mode] if p["image_id"] == iid and p["label"])

    # image 5 holds only a heart: 1 positive, so 1 negative (balanced)
    assert negatives("popular", 5) == ["circle"] and positives("random", 5) == ["heart"]
    present = pope.object_sets(facts, list(facts.images))
    pop, co = pope.popularity(present), pope.cooccurrence(present)
    rng = random.Random(0)
    # popular = most frequent overall: 5, 4, then the star/triangle tie at 2 broken by name
    assert pope.sample_negatives("popular", {"heart"}, NAMES, 3, rng, pop, co) == ["circle", "square", "star"]
    # adversarial = co-occurring with heart: only image 6, all tie at 1 → by name
    assert pope.sample_negatives("adversarial", {"heart"}, NAMES, 3, rng, pop, co) == ["circle", "cross", "diamond"]
    # image 4 (circle, star): k = 2; adversarial sums co-occurrence with circle and with star
    assert negatives("popular", 4) == ["square", "heart"]
    assert negatives("adversarial", 4) == ["square", "triangle"]
    for mode in pope.MODES:
        assert positives(mode, 4) == ["circle", "star"]  # same positives in every mode
        for p in probes[mode]:
            here = {o.shape for o in facts.images[p["image_id"]].objects}
            assert p["label"] == (p["object"] in here)  # negatives are never present
        per_image = Counter((p["image_id"], p["label"]) for p in probes[mode])
        assert all(per_image[(i, True)] == per_image[(i, False)] for i, _ in per_image)  # balanced


def test_color_shape_objects(facts):
    probes, _ = pope.build_probes(facts, [1, 5], "images", per_image=2, objects="color-shape")
    for p in probes["adversarial"]:
        here = {f"{o.color} {o.shape}" for o in facts.images[p["image_id"]].objects}
        assert p["label"] == (p["object"] in here)
    assert {p["object"] for p in probes["random"] if p["label"] and p["image_id"] == 5} == {"red heart"}
    assert pope.question_text("orange star").startswith("Is there an orange star in the image?")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.sampled_from(NAMES), min_size=1, max_size=6), min_size=2, max_size=12),
       st.integers(1, 4), st.integers(0, 10_000))
def test_sampler_properties(sets, k, seed):
    present = dict(enumerate(sets))
    pop, co = pope.popularity(present), pope.cooccurrence(present)
    for iid, here in present.items():
        absent = [n for n in NAMES if n not in here]
        for mode in pope.MODES:
            neg = pope.sample_negatives(mode, here, NAMES, k, random.Random(seed), pop, co)
            assert len(neg) == min(k, len(absent)) and len(set(neg)) == len(neg)
            assert not set(neg) & here
        popular = pope.sample_negatives("popular", here, NAMES, k, random.Random(seed), pop, co)
        if popular:  # nothing absent is more popular than the least popular pick
            assert all(pop[n] <= min(pop[p] for p in popular) for n in absent if n not in popular)
        adv = pope.sample_negatives("adversarial", here, NAMES, k, random.Random(seed), pop, co)
        score = {n: sum(co.get(h, Counter())[n] for h in here) for n in absent}
        if adv:
            assert all(score[n] <= min(score[a] for a in adv) for n in absent if n not in adv)


def test_random_negatives_vary_with_the_seed(facts):
    seen = {tuple(pope.sample_negatives("random", {"heart"}, NAMES, 3, random.Random(s), Counter(), {}))
            for s in range(20)}
    assert len(seen) > 5


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llavakit.datagen.scenes_cli import generate_scenes

    out = tmp_path_factory.mktemp("pope_scenes")
    generate_scenes(out, 6, seed=1000, progress=False)
    return out


def test_end_to_end_on_tiny_random(scenes, tiny_model, tmp_path):
    res = pope.evaluate(tiny_model, scenes, tmp_path / "o", per_image=2, max_images=4, progress=False)
    answers = (tmp_path / "o" / "answers.jsonl").read_text().splitlines()
    assert len(answers) < sum(m["n"] for m in res["modes"].values())  # shared positives answered once
    for m in res["modes"].values():
        assert m["n"] == m["tp"] + m["fp"] + m["tn"] + m["fn"] + m["unparsed"] and m["n"] % 2 == 0 and m["n"] > 0
        assert m["unparsed"] == len(m["unparsed_ids"])
    assert (tmp_path / "o" / "pope.md").read_text().count("| adversarial |") == 1
    # resume: a rerun answers nothing new and scores the same answers the same way
    again = pope.evaluate(tiny_model, scenes, tmp_path / "o", per_image=2, max_images=4, progress=False)
    assert again["modes"] == res["modes"]
    assert len((tmp_path / "o" / "answers.jsonl").read_text().splitlines()) == len(answers)


def test_scoring_with_hand_made_answers(scenes, tmp_path, monkeypatch):
    """Answer every probe from the annotations ("Yes."/"no") → 100 %; always "yes" → yes-ratio 100."""
    import llavakit.eval.pope as pope_mod
    from llavakit.eval.records import write_jsonl

    facts, _ = pope_mod.load_scenes(scenes)

    def oracle(style):
        def fake(model, questions, folder, out_path, **kw):
            rows = []
            for q in questions:
                iid, name = q["question_id"].split(":")
                here = {o.shape for o in facts.images[int(iid)].objects}
                text = {"truth": "Yes." if name in here else "no", "yes": "Yes, there is.", "mute": "blue"}[style]
                rows.append({"question_id": q["question_id"], "text": text})
            return write_jsonl(out_path, rows)
        return fake

    monkeypatch.setattr(pope_mod, "resolve_model", lambda m: m)
    monkeypatch.setattr(pope_mod, "answer_questions", oracle("truth"))
    res = pope_mod.evaluate("oracle", scenes, tmp_path / "a", progress=False)
    assert all(m["accuracy"] == 100.0 and m["f1"] == 100.0 and m["yes_ratio"] == 50.0 for m in res["modes"].values())
    monkeypatch.setattr(pope_mod, "answer_questions", oracle("yes"))
    res = pope_mod.evaluate("oracle", scenes, tmp_path / "b", progress=False)
    assert all(m["yes_ratio"] == 100.0 and m["recall"] == 100.0 and m["accuracy"] == 50.0 for m in res["modes"].values())
    monkeypatch.setattr(pope_mod, "answer_questions", oracle("mute"))
    res = pope_mod.evaluate("oracle", scenes, tmp_path / "c", progress=False)
    assert all(m["unparsed"] == m["n"] and m["accuracy"] == 0.0 for m in res["modes"].values())


def test_cli_errors(tmp_path, capsys):
    code = main(["eval", "pope", "tiny-random", "--scenes", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2 and "has no instances.json" in capsys.readouterr().err
