"""ScienceQA: conversion formats, answer extraction and scoring on hand-made fixtures in the
official schema (tests/fixtures/scienceqa)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.errors import DataError
from llavakit.eval.scienceqa_data import build_example, load_problems, load_split, parse_format
from llavakit.eval.scienceqa_score import (
    FAILED,
    complement,
    extract_choice,
    predictions_from_answers,
    predictions_from_result,
    score,
)
from llavakit.eval.records import read_jsonl

FIX = Path(__file__).parent / "fixtures" / "scienceqa"
PROBLEMS = FIX / "problems.json"
SPLITS = FIX / "pid_splits.json"


@pytest.fixture(scope="module")
def problems():
    return load_problems(PROBLEMS)


def test_columns_follow_the_paper(problems):
    assert problems["201"].columns == ["NAT", "TXT", "G1-6"]
    assert problems["203"].columns == ["SOC", "IMG", "G7-12"]
    assert problems["204"].columns == ["NAT", "TXT", "IMG", "G7-12"]  # hint and image: both
    assert problems["205"].columns == ["NAT", "NO", "G7-12"]
    assert problems["206"].columns == ["LAN", "NO", "G1-6"]
    assert problems["203"].image_path() == "test/203/image.png"


@pytest.mark.parametrize(
    "fmt,user,assistant",
    [
        ("QCM-A", "Which tense does the sentence use?\nContext: Mia will paint the fence.\n"
                  "Options: (A) past tense (B) present tense (C) future tense", "The answer is C."),
        ("CQM-A", "Context: Mia will paint the fence.\nQuestion: Which tense does the sentence use?\n"
                  "Options: (A) past tense (B) present tense (C) future tense", "The answer is C."),
        ("QCM-LEA", None, "The future tense tells about something that is going to happen. The verb will paint "
                          "tells you about something that is going to happen. The answer is C."),
        ("QCM-EA", None, "The verb will paint tells you about something that is going to happen. The answer is C."),
        ("QCM-ALE", None, "The answer is C. BECAUSE: The future tense tells about something that is going to "
                          "happen. The verb will paint tells you about something that is going to happen."),
    ],
)
def test_formats(problems, fmt, user, assistant):
    u, a = build_example(problems["202"], fmt)
    if user is not None:
        assert u == user
    assert a == assistant


def test_empty_context_is_na(problems):
    u, _ = build_example(problems["205"], "QCM-A")
    assert "\nContext: N/A\n" in u


@pytest.mark.parametrize("fmt", ["QCM", "QM-A", "QCM-L", "QCM-LAE", "QCMM-A", "XYZ-A", "QCM-AA"])
def test_bad_formats_are_rejected(fmt):
    with pytest.raises(DataError, match="prompt format"):
        parse_format(fmt)


def test_convert_cli_writes_llava_json_and_questions(tmp_path, capsys):
    out, qs = tmp_path / "sqa.json", tmp_path / "q.jsonl"
    code = main(["data", "scienceqa", "--problems", str(PROBLEMS), "--pid-splits", str(SPLITS), "--split", "test",
                 "--format", "CQM-A", "--out", str(out), "--questions-out", str(qs),
                 "--instruction", "Answer with the option's letter from the given choices directly."])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["201", "202", "203", "204", "205", "206", "207"]
    by_id = {r["id"]: r for r in records}
    assert by_id["203"]["image"] == "test/203/image.png"
    assert by_id["203"]["conversations"][0]["value"].endswith("\n<image>")
    assert "image" not in by_id["205"] and "<image>" not in by_id["205"]["conversations"][0]["value"]
    assert by_id["206"]["conversations"][1] == {"from": "gpt", "value": "The answer is B."}
    questions = read_jsonl(qs)
    assert questions[2]["question_id"] == "203" and questions[2]["image"] == "test/203/image.png"
    assert questions[0]["text"].endswith("\nAnswer with the option's letter from the given choices directly.")
    assert "with an image" in capsys.readouterr().out


def test_convert_errors_name_the_input(tmp_path, capsys):
    code = main(["data", "scienceqa", "--problems", str(PROBLEMS), "--pid-splits", str(SPLITS), "--split", "dev",
                 "--out", str(tmp_path / "x.json")])
    assert code == 2 and "has no split 'dev'" in capsys.readouterr().err
    bad = tmp_path / "problems.json"
    raw = json.loads(PROBLEMS.read_text())
    raw["205"]["answer"] = 7
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="problem 205: answer 7 is not an index"):
        load_problems(bad)
    raw = json.loads(PROBLEMS.read_text())
    with_image = next(pid for pid, p in raw.items() if p.get("image"))
    del raw[with_image]["split"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=f"problem {with_image}: has image 'image.png' but no split"):
        load_problems(bad)
    code = main(["data", "scienceqa", "--problems", str(PROBLEMS), "--pid-splits", str(SPLITS), "--split", "test",
                 "--out", str(tmp_path / "x.json"), "--image-folder", str(tmp_path)])
    assert code == 2 and "2 problem image(s) are missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is A.", "A"),
        ("Lecture text. The answer is C.", "C"),
        ("The answer is B. BECAUSE: reasons", "B"),
        ("Mentions (A) first. The answer is B.", "B"),
        ("Answer: (C)", "C"),
        ("ANSWER IS: B", "B"),
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("C) future tense", "C"),
        ("(A) past tense", "A"),
        ("I pick option B", "B"),
        ("future tense", "C"),
        ("The answer is future tense.", "C"),
        ("I think the future tense is used here.", "C"),  # mentions exactly one option
        ("Not the past tense but the future tense.", None),  # mentions two options
        ("The answer is D.", None),  # beyond the 3 options
        ("The answer is a past tense verb", None),  # "a" is an article, not option A
        ("I don't know", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    choices = ["past tense", "present tense", "future tense"]
    assert extract_choice(text, choices) == expected
    assert extract_choice(text, choices) == extract_choice(text, choices)  # deterministic


def test_score_by_column_on_fixture_answers(problems):
    preds, texts = predictions_from_answers(read_jsonl(FIX / "answers.jsonl"), problems, "answers")
    assert preds == {"201": "A", "202": "B", "203": "B", "204": FAILED, "205": "B", "206": FAILED, "207": "A"}
    s = score(problems, preds)
    assert (s["correct"], s["total"]) == (4, 7)
    cols = {k: (v["correct"], v["total"]) for k, v in s["columns"].items()}
    assert cols == {"NAT": (2, 3), "SOC": (1, 1), "LAN": (1, 3), "TXT": (1, 3), "IMG": (1, 2), "NO": (2, 3),
                    "G1-6": (2, 3), "G7-12": (2, 4)}
    assert s["failed"] == {"count": 2, "pids": ["204", "206"]}
    assert s["accuracy"] == pytest.approx(400 / 7)


def test_complement_ensemble(problems):
    ours, _ = predictions_from_answers(read_jsonl(FIX / "answers.jsonl"), problems, "answers")
    other, _ = predictions_from_result(json.loads((FIX / "other_result.json").read_text()), problems, "other")
    assert other["206"] == "B" and other["203"] == FAILED  # an index and FAILED are read
    merged = complement(ours, other)
    assert merged == {"201": "B", "202": "C", "203": "B", "204": "A", "205": "B", "206": "B", "207": "B"}
    assert score(problems, merged)["correct"] == 5


def test_answers_must_match_problems(problems):
    with pytest.raises(DataError, match="question_id '999' is not a problem"):
        predictions_from_answers([{"question_id": "999", "text": "A"}], problems, "answers.jsonl")
    with pytest.raises(DataError, match="answered twice"):
        predictions_from_answers([{"question_id": 201, "text": "A"}, {"question_id": "201", "text": "B"}],
                                 problems, "answers.jsonl")


def test_split_pids_must_exist(tmp_path, problems):
    splits = tmp_path / "s.json"
    splits.write_text(json.dumps({"test": ["201", "404"]}))
    with pytest.raises(DataError, match="1 pid\\(s\\) of split 'test' are not in the problems file"):
        load_split(splits, "test", problems)


def sqa_judge(messages):
    prompt = messages[1]["content"]
    reminded = "Please end your reply" in messages[-1]["content"]
    if "guide words" in prompt or "warm bath" in prompt:  # pid 201
        return "Solver 1 is right. The answer is A."
    if "Which tense" in prompt:  # pid 202: unreadable until reminded
        return "The answer is C." if reminded else "Hard to say, both look plausible."
    return "I refuse to choose."  # pid 207: never readable


def test_eval_cli_scores_writes_result_and_ensembles(tmp_path, capsys):
    from tests.openai_stub import OpenAIStub

    out = tmp_path / "out"
    with OpenAIStub(reply=sqa_judge) as stub:
        code = main(["eval", "scienceqa", "--problems", str(PROBLEMS), "--pid-splits", str(SPLITS), "--split", "test",
                     "--answers", str(FIX / "answers.jsonl"), "--other", str(FIX / "other_result.json"),
                     "--ensemble", "complement", "--ensemble", "judge", "--judge-model", "stub",
                     "--judge-base-url", stub.base_url, "--out", str(out), "--quiet"])
        asked = [r["body"]["messages"][1]["content"] for r in stub.chat_requests()]
    assert code == 0
    report = json.loads((out / "scienceqa.json").read_text())
    methods = report["methods"]
    assert methods["model"]["correct"] == 4 and methods["complement"]["correct"] == 5
    assert methods["other"]["correct"] == 3  # B, C, FAILED, A, FAILED, B, B
    judge = methods["judge"]
    assert judge["correct"] == 7 and judge["disputed"] == 3
    assert judge["judge_unparseable"] == ["207"] and judge["judge_sided_with_other"] == 1
    # only the three disagreements where both answered go to the judge (+1 re-ask for 202, +2 for 207)
    assert len(asked) == 3 + 1 + 2
    assert any("Solver 1: Temperature ... The answer is A.\nSolver 2: The answer is B." in a for a in asked)
    assert json.loads((out / "scienceqa_result.json").read_text())["204"] == "FAILED"
    assert json.loads((out / "scienceqa_judge_result.json").read_text())["202"] == "C"
    assert report["split"]["missing"]["count"] == 0
    md = (out / "scienceqa.md").read_text()
    assert "| model | 66.67 | 100.00 | 33.33 | 33.33 | 50.00 | 66.67 | 66.67 | 50.00 | 57.14 | 7 | 2 |" in md
    assert "| judge |" in capsys.readouterr().out
    # rerun: the same judge asks nothing again; another judge model decides afresh
    for judge_model, more in (("stub", 0), ("other-judge", 6)):
        with OpenAIStub(reply=sqa_judge) as stub:
            assert main(["eval", "scienceqa", "--problems", str(PROBLEMS), "--pid-splits", str(SPLITS), "--split",
                         "test", "--answers", str(FIX / "answers.jsonl"), "--other", str(FIX / "other_result.json"),
                         "--ensemble", "judge", "--judge-model", judge_model, "--judge-base-url", stub.base_url,
                         "--out", str(out), "--quiet"]) == 0
            assert len(stub.chat_requests()) == more


def test_eval_reports_missing_split_problems(tmp_path):
    from llavakit.eval import scienceqa

    partial = tmp_path / "answers.jsonl"
    partial.write_text("\n".join((FIX / "answers.jsonl").read_text().splitlines()[:3]) + "\n")
    res = scienceqa.evaluate(PROBLEMS, tmp_path / "o", answers=partial, pid_splits=SPLITS, split="test",
                             progress=False)
    assert res["split"]["missing"] == {"count": 4, "pids": ["204", "205", "206", "207"]}
    assert res["methods"]["model"]["total"] == 3
    assert "Missing: 4 problem(s)" in (tmp_path / "o" / "scienceqa.md").read_text()
    with pytest.raises(Exception, match="needs a second predictor"):
        scienceqa.evaluate(PROBLEMS, tmp_path / "o", answers=partial, ensembles=("complement",))


def test_model_answers_the_split_first(tiny_model, tmp_path):
    from PIL import Image

    from llavakit.eval import scienceqa

    for pid in ("203", "204"):
        (tmp_path / "img" / "test" / pid).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img" / "test" / pid / "image.png")
    res = scienceqa.evaluate(PROBLEMS, tmp_path / "o", model=tiny_model, image_folder=tmp_path / "img",
                             pid_splits=SPLITS, split="test", max_new_tokens=4, progress=False)
    answers = read_jsonl(tmp_path / "o" / "answers.jsonl")
    assert [a["question_id"] for a in answers] == ["201", "202", "203", "204", "205", "206", "207"]
    asked = {q["question_id"]: q for q in read_jsonl(tmp_path / "o" / "answers.questions.jsonl")}
    assert asked["203"]["image"] == "test/203/image.png" and "image" not in asked["205"]
    assert asked["201"]["text"].startswith("Context: Select the better estimate.\nQuestion: What is the temperature")
    assert asked["201"]["text"].endswith("Answer with the option's letter from the given choices directly.")
    m = res["methods"]["model"]
    assert m["total"] == 7 and res["split"]["missing"]["count"] == 0
    result = json.loads((tmp_path / "o" / "scienceqa_result.json").read_text())
    assert set(result) == set(asked) and all(v in ("A", "B", "C", "D", "E", "FAILED") for v in result.values())
    probs = load_problems(PROBLEMS)
    assert m["correct"] == sum(result[p] == probs[p].answer_letter for p in result)
    assert m["failed"]["count"] == sum(v == "FAILED" for v in result.values())
