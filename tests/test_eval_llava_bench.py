"""LLaVA-Bench protocol: prompts, score parsing, and the judge loop against a local
OpenAI-compatible server (tests/openai_stub.py), incl. unparseable reviews, repeats and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.errors import DataError
from llavakit.eval import llava_bench
from llavakit.eval.judge import make_client
from llavakit.eval.llava_bench_prompts import format_context, judge_prompt, parse_scores
from llavakit.eval.records import read_jsonl
from tests.openai_stub import OpenAIStub

FIX = Path(__file__).parent / "fixtures" / "llava_bench"
Q, CTX, ANS, REF = (FIX / n for n in ("questions.jsonl", "context.jsonl", "answers.jsonl", "references.jsonl"))


@pytest.mark.parametrize(
    "review,expected",
    [("8 6\nAssistant 1 is better.", (8.0, 6.0)), ("**9 3**", (9.0, 3.0)), ("7, 5", (7.0, 5.0)),
     ("8/10 4/10", (8.0, 4.0)), ("Scores: 8 and 6", (8.0, 6.0)), ("\n\n 10 1 ", (10.0, 1.0)),
     ("Assistant 1: 8\nAssistant 2: 6.5", (8.0, 6.5)),
     ("Assistant 1 receives a score of 9 while Assistant 2 gets 2", (9.0, 2.0)),
     ("Both Assistant 1 and Assistant 2 are accurate.\nAssistant 1: 8, Assistant 2: 7", (8.0, 7.0)),
     ("Assistant 1's score is 7/10 and Assistant 2's score is 5/10", (7.0, 5.0)),
     ("Assistant 1 counted 3 apples, Assistant 2 counted 4.", None),
     ("8/10", None), ("8/10\nThe answer is good.", None),
     ("Both are fine.", None), ("", None), ("0 5", None), ("8 11", None), ("7 4 3", None), ("8", None)],
)
def test_parse_scores(review, expected):
    assert parse_scores(review) == expected


def test_context_and_prompt_use_the_category_rubric():
    rec = json.loads(CTX.read_text().splitlines()[0])
    ctx = format_context(rec)
    assert ctx.splitlines()[0] == rec["captions"][0]
    assert "large red circle: [0.05, 0.3, 0.4, 0.65]" in ctx
    conv = judge_prompt(ctx, "Q?", "ref", "ans", "conv")
    detail = judge_prompt(ctx, "Q?", "ref", "ans", "detail")
    assert "[Assistant 1]\nref\n" in conv and "[Assistant 2]\nans\n" in conv
    assert "conversational question" in conv and "detailed description" in detail and conv != detail
    with pytest.raises(DataError, match="category 'chat'"):
        judge_prompt(ctx, "Q?", "r", "a", "chat")


REMINDER = "I could not read the two scores"


def judge_reply(calls: dict):
    """Scores by question; q3 is unparseable until reminded; q4 is never parseable."""
    def reply(messages):
        prompt = messages[1]["content"]
        reminded = REMINDER in messages[-1]["content"]
        q = next(q for q in ("What color is the square?", "Describe the image in detail.", "rolled to the right",
                             "How many stars", "Describe the following image.", "easiest to stack") if q in prompt)
        calls[q] = calls.get(q, 0) + 1
        if q == "What color is the square?":
            return "9 9\nBoth correct." if calls[q] == 1 else "9 7\nSecond is weaker."
        return {
            "Describe the image in detail.": "8 4\nThe second misses positions.",
            "rolled to the right": "8 2\nThe second hallucinates a triangle.",
            "How many stars": "9 3" if reminded else "The first answer is excellent, the second wrong.",
            "Describe the following image.": "I would rate them highly.",
            "easiest to stack": "Assistant 1: 6\nAssistant 2: 3",
        }[q]
    return reply


def test_judge_loop_scores_retries_excludes_and_resumes(tmp_path):
    calls: dict = {}
    with OpenAIStub(reply=judge_reply(calls)) as stub:
        judge = make_client("stub-judge", stub.base_url)
        res = llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, references=REF, repeats=1, retries=2, progress=False)
        n_requests = len(stub.chat_requests())
        s = res["summary"]
        assert s["conv"]["relative"] == pytest.approx(100 * 6 / 9)
        assert s["detail"]["relative"] == pytest.approx(50.0)
        assert s["complex"]["relative"] == pytest.approx(100 * 2.5 / 7)
        assert s["all"]["relative"] == pytest.approx(100 * 4.2 / 8)
        assert s["all"]["reviewed"] == 5 and s["detail"]["excluded_unparseable"] == 1
        assert res["per_repeat"][0]["detail"]["excluded_unparseable"] == [4]
        # q3: 1 unparseable + 1 after the reminder; q4: 1 + 2 retries; the others once
        assert n_requests == 4 + 2 + 3
        reviews = {r["question_id"]: r for r in read_jsonl(tmp_path / "reviews.jsonl")}
        assert reviews[3]["attempts"] == 2 and reviews[3]["parsed"] == [9.0, 3.0]
        assert reviews[4]["parsed"] is None and reviews[4]["error"] == "unparseable"
        assert all(r["parsed"] is None or min(r["parsed"]) >= 1 for r in reviews.values())  # never -1
        md = (tmp_path / "llava_bench.md").read_text()
        assert "| all | 52.5 |" in md and "Excluded reviews (repeat, question_id): (0, 4)" in md
        # resume: nothing is asked again, the same numbers come out
        again = llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, references=REF, repeats=1, progress=False)
        assert len(stub.chat_requests()) == n_requests
        assert again["summary"]["all"]["relative"] == pytest.approx(s["all"]["relative"])


def test_changed_answers_are_judged_anew(tmp_path):
    with OpenAIStub(reply=lambda m: "8 4") as stub:
        judge = make_client("j", stub.base_url)
        llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, references=REF, progress=False)
        assert len(stub.chat_requests()) == 6
        changed = tmp_path / "answers2.jsonl"
        lines = ANS.read_text().splitlines()
        rec = json.loads(lines[3])
        rec["text"] = "There are three stars."
        rec["question_id"] = "3"  # ids match as strings
        changed.write_text("\n".join(lines[:3] + [json.dumps(rec)] + lines[4:]) + "\n")
        stub.reply = lambda m: "9 9"
        res = llava_bench.evaluate(Q, CTX, tmp_path, changed, judge, references=REF, progress=False)
        assert len(stub.chat_requests()) == 7  # only the changed answer was asked again
    assert res["summary"]["conv"]["model_mean"] == pytest.approx((4 + 9) / 2)


def test_repeats_give_mean_and_std(tmp_path):
    with OpenAIStub(reply=judge_reply({})) as stub:
        res = llava_bench.evaluate(Q, CTX, tmp_path, ANS, make_client("j", stub.base_url), references=REF,
                                   repeats=2, retries=1, progress=False)
    s = res["summary"]["all"]
    rel = sorted(r["all"]["relative"] for r in res["per_repeat"])
    assert rel == pytest.approx([100 * 3.8 / 8, 100 * 4.2 / 8])
    assert s["relative"] == pytest.approx(50.0) and s["relative_std"] == pytest.approx(3.5355, abs=1e-3)
    assert s["excluded_unparseable"] == 2


def test_teacher_writes_references_from_the_context(tmp_path):
    seen = []

    def teacher(messages):
        seen.append(messages[-1]["content"])
        return "Teacher reference answer."

    def judge(messages):
        assert "[Assistant 1]\nTeacher reference answer.\n" in messages[1]["content"]
        return "8 4"

    with OpenAIStub(reply=teacher) as t_stub, OpenAIStub(reply=judge) as j_stub:
        res = llava_bench.evaluate(Q, CTX, tmp_path, ANS, make_client("j", j_stub.base_url),
                                   teacher_client=make_client("t", t_stub.base_url), progress=False)
        assert len(t_stub.chat_requests()) == 6
        llava_bench.evaluate(Q, CTX, tmp_path, ANS, make_client("j", j_stub.base_url),
                             teacher_client=make_client("t", t_stub.base_url), progress=False)
        assert len(t_stub.chat_requests()) == 6  # cached
    asked = next(p for p in seen if "What color is the square?" in p)
    assert "small blue square: [0.7, 0.42, 0.83, 0.55]" in asked and asked.startswith("[Image description]\nA red circle")
    assert res["summary"]["all"]["relative"] == pytest.approx(50.0)
    assert len(read_jsonl(tmp_path / "references.jsonl")) == 6


def test_failed_requests_are_counted_not_cached(tmp_path):
    with OpenAIStub(reply=lambda m: "7 7", fail_first=100, fail_status=400) as stub:
        res = llava_bench.evaluate(Q, CTX, tmp_path, ANS, make_client("j", stub.base_url), references=REF,
                                   progress=False)
    assert res["summary"]["all"]["failed_requests"] == 6 and res["summary"]["all"]["relative"] is None
    cache = tmp_path / "reviews.jsonl"
    assert not cache.exists() or not cache.read_text().strip()


def test_cli_and_input_errors(tmp_path, capsys):
    with OpenAIStub(reply=lambda m: "8 6") as stub:
        code = main(["eval", "llava-bench", "--questions", str(Q), "--context", str(CTX), "--answers", str(ANS),
                     "--references", str(REF), "--judge-model", "j", "--judge-base-url", stub.base_url,
                     "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| all | 75.0 | 0.0 |" in out and (tmp_path / "o" / "llava_bench.json").is_file()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(ANS.read_text().splitlines()[:4]) + "\n")
    code = main(["eval", "llava-bench", "--questions", str(Q), "--context", str(CTX), "--answers", str(partial),
                 "--references", str(REF), "--judge-model", "j", "--judge-base-url", "http://127.0.0.1:9/v1",
                 "--out", str(tmp_path / "p")])
    assert code == 2 and "2 question(s) unanswered" in capsys.readouterr().err
    code = main(["eval", "llava-bench", "--questions", str(Q), "--context", str(CTX), "--answers", str(ANS),
                 "--judge-model", "j", "--judge-base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "q")])
    assert code == 2 and "--references FILE or --teacher-model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llavakit.datagen.scenes_cli import generate_scenes

    out = tmp_path_factory.mktemp("bench_scenes")
    generate_scenes(out, 3, seed=1000, progress=False)
    return out


def test_inputs_from_scenes_follow_the_schemas(scenes, tmp_path):
    from llavakit.datagen.facts import load_facts
    from llavakit.eval.llava_bench_scenes import build_from_scenes

    q_path, c_path, r_path, folder = build_from_scenes(scenes, tmp_path, max_images=2)
    qs, ctx, refs = read_jsonl(q_path), read_jsonl(c_path), read_jsonl(r_path)
    assert [q["category"] for q in qs] == ["conv", "detail", "complex"] * 2
    assert all((folder / q["image"]).is_file() for q in qs)
    assert [r["question_id"] for r in refs] == [q["question_id"] for q in qs]
    facts = load_facts(scenes / "instances.json")
    first = facts.images[int(ctx[0]["id"])]
    assert len(ctx[0]["captions"]) == 5 and len(ctx[0]["instances"]) == len(first.objects)
    for inst, obj in zip(ctx[0]["instances"], first.objects):
        assert inst["category"].endswith(f"{obj.color} {obj.shape}")
        x1, y1, x2, y2 = inst["bbox"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert x1 == pytest.approx(obj.bbox[0] / first.width, abs=1e-3)
    # the loaders accept what was built (every question's image has a context)
    assert len(llava_bench.load_contexts(c_path, llava_bench.load_questions(q_path))) == 2


def test_cli_from_scenes_with_model_answers(scenes, tmp_path, capsys):
    prompts = []

    def judge(messages):
        prompts.append(messages[1]["content"])
        return "9 2"

    with OpenAIStub(reply=judge) as stub:
        code = main(["eval", "llava-bench", "--scenes", str(scenes), "--max-images", "1", "--model", "tiny-random",
                     "--max-new-tokens", "8", "--judge-model", "j", "--judge-base-url", stub.base_url,
                     "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "o" / "llava_bench.json").read_text())
    assert res["summary"]["all"]["relative"] == pytest.approx(100 * 2 / 9) and res["summary"]["all"]["reviewed"] == 3
    assert "template.jsonl" in res["references"] and res["model_name"] == "tiny-random"
    assert len(read_jsonl(tmp_path / "o" / "answers.jsonl")) == 3
    ctx = read_jsonl(tmp_path / "o" / "context.jsonl")[0]
    assert len(prompts) == 3
    assert all(p.startswith("[Context]\n" + ctx["captions"][0]) and f"{ctx['instances'][0]['category']}: [" in p
               for p in prompts)


def test_an_empty_reference_stops_the_run_and_is_asked_again_on_the_rerun(tmp_path):
    replies = iter(["", "", "", ""])  # q1's reference is empty on every try of the first run

    def teacher(messages):
        if "What color is the square?" in messages[1]["content"]:
            return next(replies, "It is red.")
        return "Teacher reference answer."

    with OpenAIStub(reply=teacher) as t_stub, OpenAIStub(reply=lambda m: "8 4") as j_stub:
        judge, t = make_client("j", j_stub.base_url), make_client("t", t_stub.base_url)
        with pytest.raises(DataError, match="no reference answer for 1 question"):
            llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, teacher_client=t, retries=2, progress=False)
        asked = len(t_stub.chat_requests())
        with pytest.raises(DataError, match="no reference answer for 1 question"):  # the rerun asks again, never judges None
            llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, teacher_client=t, retries=0, progress=False)
        assert len(t_stub.chat_requests()) == asked + 1 and not j_stub.chat_requests()
        res = llava_bench.evaluate(Q, CTX, tmp_path, ANS, judge, teacher_client=t, retries=0, progress=False)
    assert res["summary"]["all"]["reviewed"] == 6
    refs = {r["question_id"]: r["parsed"] for r in read_jsonl(tmp_path / "references.jsonl")}
    assert refs[0] == "It is red." and None not in refs.values()
