"""Paraphrased synth questions: every template form has a rule, no paraphrase is a template form."""

from __future__ import annotations

import random

import pytest

from llavakit.datagen.questions import GENERATORS, Vocab
from llavakit.errors import LlavakitError
from llavakit.eval.paraphrase import matches_template, paraphrase, parse


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    from llavakit.datagen.facts import load_facts
    from llavakit.datagen.scenes_cli import generate_scenes
    from llavakit.datagen.world import SceneConfig

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, 40, seed=3, cfg=SceneConfig(image_size=96, max_objects=4), progress=False)
    return load_facts(out / "instances.json")


def test_every_generated_question_is_reworded_keeping_its_referents(facts):
    vocab = Vocab(shapes=list(facts.shapes), colors=list(facts.colors))
    seen_kinds, forms = set(), set()
    for image_id, f in facts.images.items():
        for kind, gen in GENERATORS.items():
            for k in range(12):  # many draws: every template form of every kind comes up
                qa = gen(f, random.Random(f"{image_id}/{kind}/{k}"), vocab)
                if qa is None:
                    continue
                assert matches_template(qa.question), qa.question
                refs = {r for ex in (None, "color", "shape", "size") for _, r in f.referable(exclude=ex)}
                for key, value in parse(qa.question).items():  # the rule took the right referent
                    if key in ("ref", "a", "b"):
                        assert value in refs, (qa.question, key, value)
                text = paraphrase(qa.question + "\nAnswer briefly.", f"{image_id}/{k}")
                first, _, rest = text.partition("\n")
                assert rest == "Answer briefly."
                assert first != qa.question and not matches_template(first), (qa.question, first)
                for word in ("left", "right", "above", "below", "larger", "smaller", "top", "bottom"):
                    if f" {word} " in f" {qa.question.rstrip('?.')} " and qa.kind in ("position", "relation", "size"):
                        assert word in first, (qa.question, first)  # the options offered survive
                seen_kinds.add(kind)
                forms.add(qa.question.split(" the ")[0])
    assert seen_kinds == set(GENERATORS)
    assert len(forms) > 15


def test_same_seed_same_wording_and_unknown_forms_are_errors():
    q = "What color is the large circle?"
    assert paraphrase(q, "a") == paraphrase(q, "a")
    assert "large circle" in paraphrase(q, "a")
    with pytest.raises(LlavakitError, match="no paraphrase rule"):
        paraphrase("Describe the mood of the scene.", "a")
