"""`llavakit eval synth MODEL`: exact-answer questions on held-out synthetic scenes (+ ``--blind``).

Seven categories — colour, shape, count, position, existence, relation, size — asked with the
datagen question generators (:mod:`llavakit.datagen.questions`), whose short answers come from the
annotations' facts, in the same form the ``vqa`` training data uses: the question, then "Answer
the question using a single word or phrase." Scoring is normalised exact match
(:mod:`llavakit.eval.scoring`): counts as numbers (words or digits), yes/no normalised, other
answers compared as normalised text.

``blind=True`` asks the same questions again with every image replaced by a blank one and reports
the gap: what the model gets right without seeing the image is what language priors alone give.
``paraphrase=True`` asks them once more reworded unlike any training template
(:mod:`llavakit.eval.paraphrase`), with the image: a model that reads the question scores about
the same; one that matched the template's form does not.

Questions: for each category, images are visited in file order and each contributes at most one
question of that category (generators skip images without a clear-cut fact) until
``per_category`` questions exist. Randomness is seeded by (``seed``, image id, category).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from llavakit.datagen.prompts import VQA_SUFFIX
from llavakit.datagen.questions import GENERATORS, Vocab
from llavakit.errors import ConfigError
from llavakit.eval.answering import answer_questions, model_label, resolve_model
from llavakit.eval.paraphrase import paraphrase as reword
from llavakit.eval.records import read_jsonl, write_jsonl
from llavakit.eval.report import md_table, pct, write_report
from llavakit.eval.scenes_input import (
    DEFAULT_HELDOUT_SEED,
    add_scene_arguments,
    ensure_scenes,
    heldout_warnings,
    load_scenes,
    read_scene_seed,
)
from llavakit.eval.scoring import is_correct

CATEGORIES = ("color", "shape", "count", "position", "exists", "relation", "size")
CONDITIONS = ("image", "blind", "paraphrased")


def answer_kind(category: str, short: str) -> str:
    if category == "count":
        return "number"
    if category == "exists" or short in ("yes", "no"):
        return "yesno"
    return "text"


def make_questions(facts, folder_name: str, per_category: int = 50, seed: int = 0,
                   categories=CATEGORIES) -> list[dict]:
    """model_vqa questions with exact answers: ``question_id, image, text, category, answer, answer_kind``."""
    vocab = Vocab(shapes=list(facts.shapes), colors=list(facts.colors))
    questions = []
    for cat in categories:
        if cat not in GENERATORS:
            raise ConfigError(f"synth category {cat!r} is not one of {', '.join(CATEGORIES)}")
        n = 0
        for image_id, f in facts.images.items():
            if n >= per_category:
                break
            qa = GENERATORS[cat](f, random.Random(f"synth/{seed}/{image_id}/{cat}"), vocab)
            if qa is None:
                continue
            questions.append({
                "question_id": f"{cat}-{image_id}", "image": f"{folder_name}/{f.file_name}",
                "text": f"{qa.question}\n{VQA_SUFFIX}", "category": cat, "answer": qa.short,
                "answer_kind": answer_kind(cat, qa.short),
            })
            n += 1
    return questions


def score_answers(questions: list[dict], answers: dict) -> tuple[dict, list[dict]]:
    """Per-category and overall accuracy (percent, with counts) + one detail row per question."""
    per: dict[str, list[int]] = {}
    rows = []
    for q in questions:
        pred = answers[q["question_id"]]
        ok = is_correct(pred, q["answer"], q["answer_kind"])
        c = per.setdefault(q["category"], [0, 0])
        c[0] += ok
        c[1] += 1
        rows.append({"question_id": q["question_id"], "category": q["category"], "question": q["text"],
                     "answer": q["answer"], "prediction": pred, "correct": ok})
    correct = sum(c for c, _ in per.values())
    total = sum(t for _, t in per.values())
    return {
        "accuracy": pct(correct, total), "correct": correct, "total": total,
        "categories": {cat: {"accuracy": pct(c, t), "correct": c, "total": t} for cat, (c, t) in per.items()},
    }, rows


def evaluate(model, scenes_dir: str | Path, out_dir: str | Path, blind: bool = False, per_category: int = 50,
             seed: int = 0, n_scenes: int | None = None, scene_seed: int = DEFAULT_HELDOUT_SEED,
             batch_size: int = 8, max_new_tokens: int = 16, progress: bool = True, paraphrase: bool = False) -> dict:
    """Ask, answer (resumable) and score. With ``blind`` also the blank-image run and the gap.

    Returns ``{"accuracy": image accuracy, "conditions": {"image": {...}, "blind": {...}},
    "gap": {category: image − blind accuracy points}, ...}``; writes ``synth.json`` / ``synth.md``
    and ``synth_details_<condition>.jsonl`` in ``out_dir``.
    """
    if per_category < 1:
        raise ConfigError(f"per_category: {per_category} must be >= 1")
    out_dir = Path(out_dir)
    scenes_dir = ensure_scenes(scenes_dir, n_scenes, scene_seed, progress)
    facts, folder = load_scenes(scenes_dir)
    questions = make_questions(facts, folder.name, per_category, seed)
    if not questions:
        raise ConfigError(f"no question could be asked about the scenes in {scenes_dir}")
    loaded = resolve_model(model)
    result: dict = {"model": model_label(model), "scenes": str(scenes_dir), "scene_seed": read_scene_seed(scenes_dir),
                    "images": len(facts.images), "question_seed": seed, "per_category": per_category,
                    "warnings": heldout_warnings(scenes_dir, model, folder),
                    "conditions": {}}
    conditions = ["image"] + (["blind"] if blind else []) + (["paraphrased"] if paraphrase else [])
    for cond in conditions:
        asked = questions
        if cond == "paraphrased":
            asked = [{**q, "text": reword(q["text"], f"{seed}/{q['question_id']}")} for q in questions]
        path = answer_questions(loaded, asked, folder.parent, out_dir / f"answers_{cond}.jsonl",
                                blind=cond == "blind", batch_size=batch_size, max_new_tokens=max_new_tokens,
                                progress=progress, label=model_label(model))
        answers = {r["question_id"]: str(r["text"]) for r in read_jsonl(path, "answers file")}
        scores, rows = score_answers(asked, answers)
        result["conditions"][cond] = scores
        write_jsonl(out_dir / f"synth_details_{cond}.jsonl", rows)
    result["accuracy"] = result["conditions"]["image"]["accuracy"]
    for key, cond in (("gap", "blind"), ("paraphrase_gap", "paraphrased")):
        if cond in result["conditions"]:  # image accuracy minus this condition's, per category + overall
            img, other = result["conditions"]["image"], result["conditions"][cond]
            result[key] = {cat: img["categories"][cat]["accuracy"] - other["categories"][cat]["accuracy"]
                           for cat in img["categories"]}
            result[key]["overall"] = img["accuracy"] - other["accuracy"]
    write_report(out_dir, "synth", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    conds = result["conditions"]
    cats = [c for c in CATEGORIES if c in conds["image"]["categories"]]
    head = ["category", "questions", "accuracy (%)"]
    if "blind" in conds:
        head += ["blind accuracy (%)", "gap (points)"]
    if "paraphrased" in conds:
        head += ["paraphrased accuracy (%)"]
    rows = []
    for cat in [*cats, "overall"]:
        img = conds["image"] if cat == "overall" else conds["image"]["categories"][cat]
        row = [cat, img["total"], img["accuracy"]]
        if "blind" in conds:
            bl = conds["blind"] if cat == "overall" else conds["blind"]["categories"][cat]
            row += [bl["accuracy"], result["gap"][cat]]
        if "paraphrased" in conds:
            para = conds["paraphrased"] if cat == "overall" else conds["paraphrased"]["categories"][cat]
            row += [para["accuracy"]]
        rows.append(row)
    return "\n".join([
        f"# Synthetic benchmark — {result['model']}", "",
        f"{result['images']} held-out scenes from {result['scenes']} (scene seed {result['scene_seed']}); "
        f"question seed {result['question_seed']}.", "",
        md_table(head, rows, digits=1), "",
        *[f"**Warning:** {w}\n" for w in result.get("warnings", [])],
        "Accuracy = normalised exact match against the answer computed from the annotations. "
        + ("Blind = the same questions with a blank image; the gap is what seeing the image adds."
           if "blind" in conds else "Run with --blind to measure what the image adds over language alone.")
        + (" Paraphrased = the same questions reworded unlike any training template, with the image."
           if "paraphrased" in conds else ""),
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scene_arguments(parser)
    parser.add_argument("--per-category", type=int, default=50, help="questions per category (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="question sampling seed")
    parser.add_argument("--blind", action="store_true", help="also answer with a blank image and report the gap")
    parser.add_argument("--paraphrase", action="store_true",
                        help="also ask the questions reworded unlike any training template (with the image)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.scenes, args.out, args.blind, args.per_category, args.seed, args.n,
                      args.scene_seed, args.batch_size, args.max_new_tokens, not args.quiet, args.paraphrase)
    print(markdown(result))
    print(f"\nwrote {Path(args.out) / 'synth.json'} and {Path(args.out) / 'synth.md'}")
    return 0
