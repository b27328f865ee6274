"""`llavakit eval llava-bench`: the LLaVA-Bench judge protocol and its relative score.

Inputs (LLaVA-Bench schemas): questions JSONL (``question_id, image, text, category`` with
category conv/detail/complex), the context JSONL (one record per image: ``image, captions,
instances[{category, bbox}]`` with boxes normalised to 0–1), the model's answers JSONL
(``question_id, text``, from ``llavakit infer``; or ``--model`` answers here), and reference
answers — a file, or written by a text-only teacher from the context (``--teacher-model``).

A judge (any OpenAI-compatible endpoint) rates the reference (Assistant 1) and the model
(Assistant 2) 1–10 with the category's rubric (:mod:`llava_bench_prompts`). Relative score =
mean(model) / mean(reference) × 100 per category and over all questions, on the reviews that
parsed; an unparseable review is retried, then excluded and counted. ``--repeats K`` runs the
judge K times (separate cached reviews) and reports mean ± std of the relative scores.
Everything is cached in ``OUT`` (``references.jsonl``, ``reviews.jsonl``, keyed by a digest of
the exact prompt and model), so a rerun resumes and changed answers are judged anew.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from llavakit.errors import ConfigError, DataError
from llavakit.eval.judge import Ask, add_client_arguments, ask_all, client_from_args
from llavakit.eval.llava_bench_prompts import (
    CATEGORIES,
    JUDGE_SYSTEM,
    REFERENCE_SYSTEM,
    format_context,
    judge_prompt,
    parse_scores,
    reference_prompt,
)
from llavakit.eval.records import JsonlCache, index_by, read_jsonl
from llavakit.eval.report import md_table, write_report
from llavakit.eval.scoring import mean_std

SCORE_REMINDER = ("I could not read the two scores. Reply again: the first line must hold only the two "
                  "integer scores (1-10), Assistant 1 first, separated by a space, e.g. '7 4'.")


def load_questions(path: str | Path) -> list[dict]:
    questions = read_jsonl(path, "questions file", required=("question_id", "image", "text", "category"))
    index_by(questions, "question_id", f"questions file {path}")
    for q in questions:
        if q["category"] not in CATEGORIES:
            raise DataError(f"questions file {path}: question {q['question_id']!r} has category {q['category']!r}; "
                            f"expected one of {', '.join(CATEGORIES)}")
    return questions


def load_contexts(path: str | Path, questions: list[dict]) -> dict[str, str]:
    """``{image: context text}``; every question's image must have a context."""
    records = read_jsonl(path, "context file", required=("image",))
    by_image = index_by(records, "image", f"context file {path}")
    missing = sorted({q["image"] for q in questions if q["image"] not in by_image})
    if missing:
        raise DataError(f"context file {path}: no context for {len(missing)} image(s) of the questions "
                        f"(first: {', '.join(missing[:3])})")
    return {img: format_context(rec, f"context file {path}") for img, rec in by_image.items()}


def load_answers(path: str | Path, questions: list[dict], what: str) -> dict:
    """``{question_id: text}`` covering every question (extra answers are an error too). Ids are
    matched as strings, so ``0`` and ``"0"`` are the same question."""
    records = read_jsonl(path, what, required=("question_id", "text"))
    by_id = index_by([{**r, "question_id": str(r["question_id"])} for r in records], "question_id", f"{what} {path}")
    wanted = {str(q["question_id"]): q["question_id"] for q in questions}
    missing = [qid for qid in wanted if qid not in by_id]
    extra = [qid for qid in by_id if qid not in wanted]
    if missing or extra:
        raise DataError(f"{what} {path}: {len(missing)} question(s) unanswered (first: {missing[:3]}), "
                        f"{len(extra)} answer(s) for unknown question_ids (first: {extra[:3]})")
    return {original: str(by_id[key]["text"]) for key, original in wanted.items()}


def _digest(messages: list[dict]) -> str:
    """Cache entries are tied to the exact prompt: new answers or references are asked anew."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def make_references(client, questions, contexts, out_dir: Path, retries: int, progress: bool) -> dict:
    """Reference answers by the text-only teacher, cached in ``references.jsonl``."""
    cache = JsonlCache(out_dir / "references.jsonl", key=lambda r: (r["question_id"], r["prompt_sha1"]))
    asks = []
    for q in questions:
        messages = [{"role": "system", "content": REFERENCE_SYSTEM},
                    {"role": "user", "content": reference_prompt(contexts[q["image"]], q["text"])}]
        key = (q["question_id"], _digest(messages + [{"model": client.cfg.model}]))
        asks.append(Ask(key, messages, {"question_id": key[0], "prompt_sha1": key[1], "model": client.cfg.model}))
    outcome = ask_all(client, asks, lambda t: t.strip() or None, cache,
                      "Please answer the question.", retries, "references", progress, redo_unparseable=True)
    bad = [a.key for a in asks if (cache.get(a.key) or {}).get("parsed") is None]
    if bad:
        raise DataError(f"the teacher gave no reference answer for {len(bad)} question(s) (first: {bad[:3]}; "
                        f"failures: {outcome.failed[:3]}); rerun to retry")
    return {a.key[0]: cache.get(a.key)["parsed"] for a in asks}


def _scores(text: str) -> list[float] | None:
    scores = parse_scores(text)
    return list(scores) if scores else None


def run_judge(client, questions, contexts, references, answers, out_dir: Path, repeats: int, retries: int,
              progress: bool) -> tuple[dict, list]:
    """``({(question_id, repeat): review record}, failed)`` — reviews cached in ``reviews.jsonl``."""
    cache = JsonlCache(out_dir / "reviews.jsonl", key=lambda r: (r["question_id"], r["repeat"], r["prompt_sha1"]))
    asks = []
    for rep in range(repeats):
        for q in questions:
            prompt = judge_prompt(contexts[q["image"]], q["text"], references[q["question_id"]],
                                  answers[q["question_id"]], q["category"])
            messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]
            sha = _digest(messages + [{"model": client.cfg.model}])
            asks.append(Ask((q["question_id"], rep, sha), messages,
                            {"question_id": q["question_id"], "repeat": rep, "category": q["category"],
                             "prompt_sha1": sha}))
    outcome = ask_all(client, asks, _scores, cache, SCORE_REMINDER, retries, "judge", progress)
    reviews = {a.key[:2]: cache.get(a.key) for a in asks if a.key in cache}
    return reviews, [(k[:2], why) for k, why in outcome.failed]


def summarize(questions: list[dict], reviews: dict, repeats: int, failed: list) -> dict:
    """Relative scores per category and overall, per repeat and as mean ± std over repeats."""
    failed_keys = {k for k, _ in failed}
    groups = {cat: [q for q in questions if q["category"] == cat] for cat in CATEGORIES}
    groups["all"] = list(questions)
    per_repeat = []
    for rep in range(repeats):
        row = {}
        for name, qs in groups.items():
            scored = [reviews[(q["question_id"], rep)]["parsed"] for q in qs
                      if (q["question_id"], rep) in reviews and reviews[(q["question_id"], rep)]["parsed"]]
            excluded = [q["question_id"] for q in qs
                        if (q["question_id"], rep) in reviews and not reviews[(q["question_id"], rep)]["parsed"]]
            missing = [q["question_id"] for q in qs if (q["question_id"], rep) in failed_keys]
            ref_mean, _ = mean_std(s[0] for s in scored)
            model_mean, _ = mean_std(s[1] for s in scored)
            row[name] = {
                "questions": len(qs), "reviewed": len(scored), "excluded_unparseable": excluded,
                "failed_requests": missing, "reference_mean": ref_mean, "model_mean": model_mean,
                "relative": 100.0 * model_mean / ref_mean if scored and ref_mean else None,
            }
        per_repeat.append(row)
    summary = {}
    for name in groups:
        rel = [r[name]["relative"] for r in per_repeat if r[name]["relative"] is not None]
        mean, std = mean_std(rel)
        summary[name] = {
            "relative": mean, "relative_std": std, "repeats_scored": len(rel),
            "model_mean": mean_std(r[name]["model_mean"] for r in per_repeat if r[name]["model_mean"] is not None)[0],
            "reference_mean": mean_std(r[name]["reference_mean"] for r in per_repeat
                                       if r[name]["reference_mean"] is not None)[0],
            "questions": len(groups[name]),
            "reviewed": sum(r[name]["reviewed"] for r in per_repeat),
            "excluded_unparseable": sum(len(r[name]["excluded_unparseable"]) for r in per_repeat),
            "failed_requests": sum(len(r[name]["failed_requests"]) for r in per_repeat),
        }
    return {"repeats": repeats, "summary": summary, "per_repeat": per_repeat}


def markdown(result: dict) -> str:
    s = result["summary"]
    k = result["repeats"]
    rows = [[name, s[name]["relative"], s[name]["relative_std"], s[name]["model_mean"], s[name]["reference_mean"],
             s[name]["reviewed"], s[name]["excluded_unparseable"], s[name]["failed_requests"]]
            for name in (*CATEGORIES, "all")]
    head = ["category", "relative score (%)", f"± std ({k} run{'s' if k > 1 else ''})", "model mean (1–10)",
            "reference mean (1–10)", "reviews used", "excluded (unparseable)", "failed requests"]
    lines = [f"# LLaVA-Bench — {result.get('model_name') or 'model'}", "",
             f"Judge: `{result.get('judge')}`; references: {result.get('references')}.", "",
             md_table(head, rows, digits=1), "",
             "Relative score = mean(model score) / mean(reference score) × 100 over the reviews that "
             "parsed (the paper's Table 4/5 numbers). Unparseable reviews were retried, then excluded; "
             "failed requests are retried on the next run."]
    excluded = [(rep, qid) for rep, row in enumerate(result["per_repeat"]) for qid in row["all"]["excluded_unparseable"]]
    if excluded:
        lines += ["", "Excluded reviews (repeat, question_id): " + ", ".join(f"({r}, {q})" for r, q in excluded)]
    return "\n".join(lines)


def evaluate(questions: str | Path, context: str | Path, out_dir: str | Path, answers: str | Path | None,
             judge_client, references: str | Path | None = None, teacher_client=None, repeats: int = 1,
             retries: int = 2, progress: bool = True, model=None, image_folder: str | Path | None = None,
             batch_size: int = 4, max_new_tokens: int = 256) -> dict:
    """The whole protocol from files; returns the result dict (also written as JSON + markdown).

    Without ``answers``, ``model`` (a loaded model, preset name or checkpoint dir) answers the
    questions first (``OUT/answers.jsonl``, resumable) with images from ``image_folder``.
    """
    if repeats < 1:
        raise ConfigError(f"repeats: {repeats} must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qs = load_questions(questions)
    contexts = load_contexts(context, qs)
    if references is None and teacher_client is None:
        raise ConfigError("reference answers are needed: pass --references FILE or --teacher-model NAME")
    model_name = None
    if answers is None:
        if model is None:
            raise ConfigError("give the model's answers (--answers FILE) or a --model to answer the questions")
        from llavakit.eval.answering import answer_questions, model_label

        model_name = model_label(model)
        asked = [{"question_id": q["question_id"], "image": q["image"], "text": q["text"]} for q in qs]
        answers = answer_questions(model, asked, image_folder, out_dir / "answers.jsonl", batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=progress)
    model_answers = load_answers(answers, qs, "answers file")
    if references is not None:
        refs = load_answers(references, qs, "references file")
        ref_source = f"file {references}"
    else:
        refs = make_references(teacher_client, qs, contexts, out_dir, retries, progress)
        ref_source = f"teacher `{teacher_client.cfg.model}` (text-only, from the context)"
    reviews, failed = run_judge(judge_client, qs, contexts, refs, model_answers, out_dir, repeats, retries, progress)
    result = summarize(qs, reviews, repeats, failed)
    result.update({"model_name": model_name, "judge": judge_client.cfg.model, "references": ref_source,
                   "answers": str(answers), "judge_usage": judge_client.usage.as_dict()})
    write_report(out_dir, "llava_bench", result, markdown(result))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("inputs (LLaVA-Bench files, or held-out synthetic scenes)")
    src.add_argument("--questions", help="questions JSONL (question_id, image, text, category conv/detail/complex)")
    src.add_argument("--context", help="context JSONL: per image, captions + instances (boxes 0–1)")
    src.add_argument("--scenes", help="build questions, context and template-teacher references from these scenes")
    src.add_argument("--max-images", type=int, default=20, help="with --scenes: images to use (3 questions each)")
    src.add_argument("--answers", help="the model's answers JSONL (question_id, text), e.g. from `llavakit infer`")
    src.add_argument("--model", help="answer the questions with this model first (preset or checkpoint dir)")
    src.add_argument("--image-folder", help="folder the questions' image paths are relative to (for --model)")
    src.add_argument("--references", help="reference answers JSONL (question_id, text); else --teacher-model "
                     "writes them (with --scenes: the template teacher's, unless --teacher-model is given)")
    parser.add_argument("--out", required=True, help="output directory (reports + resumable caches)")
    parser.add_argument("--repeats", type=int, default=1, help="judge runs; the report gives mean ± std (default 1)")
    parser.add_argument("--retries", type=int, default=2, help="re-asks for an unparseable review (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--batch-size", type=int, default=4, help="--model inference batch size")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="--model answer length limit")
    parser.add_argument("--seed", type=int, default=0, help="with --scenes: question sampling seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_client_arguments(parser, "judge", 0.2)
    add_client_arguments(parser, "teacher", 0.2)


def run(args: argparse.Namespace) -> int:
    if not args.judge_model:
        raise ConfigError("--judge-model is required (any model on an OpenAI-compatible endpoint)")
    questions, context, references, image_folder = args.questions, args.context, args.references, args.image_folder
    if args.scenes:
        from llavakit.eval.llava_bench_scenes import build_from_scenes

        questions, context, template_refs, folder = build_from_scenes(args.scenes, args.out, args.max_images, args.seed)
        image_folder = image_folder or folder
        if references is None and not args.teacher_model:
            references = template_refs
    if not questions or not context:
        raise ConfigError("give --questions and --context (LLaVA-Bench files) or --scenes DIR")
    if not args.answers and not args.model:
        raise ConfigError("give the model's answers with --answers FILE, or --model to answer here")
    if not references and not args.teacher_model:
        raise ConfigError("reference answers are needed: pass --references FILE or --teacher-model NAME")
    judge = client_from_args(args, "judge", args.concurrency)
    teacher = client_from_args(args, "teacher", args.concurrency) if not references else None
    result = evaluate(questions, context, args.out, args.answers, judge, references, teacher, args.repeats,
                      args.retries, not args.quiet, args.model, image_folder, args.batch_size, args.max_new_tokens)
    print(markdown(result))
    print(f"\nwrote {Path(args.out) / 'llava_bench.json'} and {Path(args.out) / 'llava_bench.md'}")
    return 0
