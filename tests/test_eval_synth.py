"""`eval synth`: questions with exact answers from the annotations, scoring on hand-made answers,
blind mode (the image information is really gone), resume, and the CLI on tiny-random."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llavakit.cli import main
from llavakit.datagen.prompts import VQA_SUFFIX
from llavakit.eval import synth
from llavakit.eval.answering import answer_questions
from llavakit.eval.scenes_input import load_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llavakit.datagen.scenes_cli import generate_scenes

    out = tmp_path_factory.mktemp("synth_scenes")
    generate_scenes(out, 10, seed=1000, progress=False)
    return out


def test_questions_cover_every_category_with_exact_answers(scenes):
    facts, folder = load_scenes(scenes)
    qs = synth.make_questions(facts, folder.name, per_category=3, seed=0)
    by_cat = {}
    for q in qs:
        by_cat.setdefault(q["category"], []).append(q)
    assert sorted(by_cat) == sorted(synth.CATEGORIES)
    assert all(len(v) == 3 for v in by_cat.values())
    assert len({q["question_id"] for q in qs}) == len(qs)
    for q in qs:
        assert q["text"].endswith("\n" + VQA_SUFFIX) and (scenes / q["image"]).is_file()
        f = facts.images[int(q["question_id"].split("-")[1])]
        if q["category"] == "count":
            assert q["answer_kind"] == "number" and q["answer"].isdigit()
        if q["category"] == "exists":
            assert q["answer_kind"] == "yesno" and q["answer"] in ("yes", "no")
        if q["category"] == "color":
            assert q["answer"] in {o.color for o in f.objects}
        if q["category"] == "shape":
            assert q["answer"] in {o.shape for o in f.objects}
    assert synth.make_questions(facts, folder.name, 3, seed=0) == qs  # deterministic
    assert synth.make_questions(facts, folder.name, 3, seed=1) != qs


def test_scoring_hand_made_answers():
    qs = [
        {"question_id": "count-1", "category": "count", "text": "", "answer": "3", "answer_kind": "number"},
        {"question_id": "count-2", "category": "count", "text": "", "answer": "0", "answer_kind": "number"},
        {"question_id": "exists-1", "category": "exists", "text": "", "answer": "no", "answer_kind": "yesno"},
        {"question_id": "color-1", "category": "color", "text": "", "answer": "red", "answer_kind": "text"},
        {"question_id": "position-1", "category": "position", "text": "", "answer": "top left", "answer_kind": "text"},
    ]
    answers = {"count-1": "Three.", "count-2": "none", "exists-1": "No, there is not.", "color-1": "Red",
               "position-1": "top"}
    scores, rows = synth.score_answers(qs, answers)
    assert scores["correct"] == 4 and scores["total"] == 5  # "top" is not "top left"
    assert scores["categories"]["count"] == {"accuracy": 100.0, "correct": 2, "total": 2}
    assert [r["correct"] for r in rows] == [True, True, True, True, False]
    wrong = {"count-1": "4", "count-2": "1", "exists-1": "yes", "color-1": "blue", "position-1": "bottom"}
    assert synth.score_answers(qs, wrong)[0]["correct"] == 0


def _uniform(img) -> bool:
    arr = np.asarray(img)
    return bool((arr == arr.reshape(-1, 3)[0]).all())


def test_blind_really_removes_the_image(scenes, fresh_tiny_model, tmp_path):
    """Same question on different images: with images the answers differ; blind they cannot."""
    model = fresh_tiny_model
    seen = []
    real = model.preprocess

    def spy(images):
        seen.extend(images)
        return real(images)

    model.preprocess = spy
    facts, folder = load_scenes(scenes)
    qs = [{"question_id": i, "image": f"images/{f.file_name}", "text": "What color is the circle?\n" + VQA_SUFFIX}
          for i, f in enumerate(list(facts.images.values())[:6])]
    with_img = answer_questions(model, qs, scenes, tmp_path / "img.jsonl", max_new_tokens=6, progress=False)
    assert not any(_uniform(im) for im in seen)
    seen.clear()
    blind = answer_questions(model, qs, scenes, tmp_path / "blind.jsonl", blind=True, max_new_tokens=6, progress=False)
    assert len(seen) == len(qs) and all(_uniform(im) for im in seen)
    texts_img = [json.loads(l)["text"] for l in with_img.read_text().splitlines()]
    texts_blind = [json.loads(l)["text"] for l in blind.read_text().splitlines()]
    assert len(set(texts_img)) > 1  # the image changes the answer (the test can detect image use)
    assert len(set(texts_blind)) == 1  # without it, identical questions get identical answers


def test_evaluate_blind_gap_resume_and_cli(scenes, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    res = synth.evaluate(tiny_model, scenes, out, blind=True, per_category=2, max_new_tokens=4, progress=False)
    img, bl = res["conditions"]["image"], res["conditions"]["blind"]
    assert img["total"] == bl["total"] == 14 and set(img["categories"]) == set(synth.CATEGORIES)
    assert res["gap"]["overall"] == pytest.approx(img["accuracy"] - bl["accuracy"])
    assert res["accuracy"] == img["accuracy"]
    md = (out / "synth.md").read_text()
    assert "| overall | 14 |" in md and "gap (points)" in md
    details = [json.loads(l) for l in (out / "synth_details_blind.jsonl").read_text().splitlines()]
    assert len(details) == 14 and {"answer", "prediction", "correct"} <= set(details[0])
    n_answers = len((out / "answers_image.jsonl").read_text().splitlines())
    # the CLI on the same OUT resumes: nothing new is generated, same numbers
    code = main(["eval", "synth", "tiny-random", "--scenes", str(scenes), "--out", str(out), "--per-category", "2",
                 "--max-new-tokens", "4", "--blind", "--quiet"])
    assert code == 0 and "| overall | 14 |" in capsys.readouterr().out
    assert len((out / "answers_image.jsonl").read_text().splitlines()) == n_answers
    # other questions into the same OUT are refused, not mixed with stale answers
    code = main(["eval", "synth", "tiny-random", "--scenes", str(scenes), "--out", str(out), "--per-category", "3",
                 "--quiet"])
    assert code == 2 and "holds answers to other questions" in capsys.readouterr().err
    code = main(["eval", "synth", "tiny-random", "--scenes", str(scenes), "--out", str(out), "--per-category", "2",
                 "--max-new-tokens", "9", "--quiet"])
    assert code == 2 and "holds answers made with other settings" in capsys.readouterr().err


def test_renders_heldout_scenes_when_asked(tmp_path, capsys):
    code = main(["eval", "synth", "tiny-random", "--scenes", str(tmp_path / "s"), "--out", str(tmp_path / "o")])
    assert code == 2 and "--n" in capsys.readouterr().err
    from llavakit.eval.scenes_input import ensure_scenes, heldout_warnings, read_scene_seed

    ensure_scenes(tmp_path / "s", n=2, seed=4321, progress=False)
    assert read_scene_seed(tmp_path / "s") == 4321 and (tmp_path / "s" / "instances.json").is_file()
    assert heldout_warnings(tmp_path / "s") == []
    ensure_scenes(tmp_path / "train", n=1, seed=0, progress=False)  # the training default seed
    assert "seed 0" in heldout_warnings(tmp_path / "train")[0]


def test_heldout_check_reads_what_the_checkpoint_was_trained_on(tmp_path):
    import json

    from llavakit.eval.scenes_input import ensure_scenes, heldout_warnings

    for name, seed in (("train", 7), ("same_seed", 7), ("held", 8)):
        ensure_scenes(tmp_path / name, n=1, seed=seed, progress=False)
    stage1, model = tmp_path / "stage1", tmp_path / "model"
    stage1.mkdir(), model.mkdir()
    (stage1 / "training.json").write_text(json.dumps({"stage": 1, "image_folder": str(tmp_path / "train" / "images")}))
    (model / "training.json").write_text(json.dumps({"stage": 2, "image_folder": str(tmp_path / "other"),
                                                     "from": [json.loads((stage1 / "training.json").read_text())]}))
    assert heldout_warnings(tmp_path / "held", str(model)) == []
    assert "trained on the images" in heldout_warnings(tmp_path / "train", str(model))[0]  # via stage 1's record
    assert "has seed 7, like the training scenes" in heldout_warnings(tmp_path / "same_seed", str(model))[0]


def test_paraphrased_condition_asks_reworded_questions_about_the_same_facts(scenes, tiny_model, tmp_path):
    from llavakit.eval.paraphrase import matches_template

    out = tmp_path / "p"
    res = synth.evaluate(tiny_model, scenes, out, paraphrase=True, per_category=2, max_new_tokens=4, progress=False)
    img, para = res["conditions"]["image"], res["conditions"]["paraphrased"]
    assert para["total"] == img["total"] == 14
    assert res["paraphrase_gap"]["overall"] == pytest.approx(img["accuracy"] - para["accuracy"])
    asked = [json.loads(l) for l in (out / "answers_paraphrased.questions.jsonl").read_text().splitlines()]
    plain = [json.loads(l) for l in (out / "answers_image.questions.jsonl").read_text().splitlines()]
    assert [q["answer"] for q in asked] == [q["answer"] for q in plain]  # same facts
    for q, p in zip(asked, plain):
        first = q["text"].split("\n")[0]
        assert first != p["text"].split("\n")[0] and not matches_template(first)
    assert "paraphrased accuracy (%)" in (out / "synth.md").read_text()
