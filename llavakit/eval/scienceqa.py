"""`llavakit eval scienceqa`: accuracy by the paper's columns, a result file, and the ensembles.

    llavakit eval scienceqa --problems problems.json --answers answers.jsonl --out OUT
    llavakit eval scienceqa --problems problems.json --pid-splits pid_splits.json --split test \\
        --model runs/sqa --image-folder scienceqa/images --out OUT          # answer here first
    ... --other gpt4_result.json --ensemble complement --ensemble judge --judge-model gpt-4o ...

Answers are model_vqa JSONL (``question_id`` = pid, ``text``). The chosen option is read from the
text (:func:`scienceqa_score.extract_choice`); unreadable → ``FAILED``, counted wrong. With
``--pid-splits``, problems of the split that have no answer are reported as missing (count +
ids); scores are over the answered problems, like LLaVA's script. Outputs in OUT:
``scienceqa.json`` / ``.md`` (the table), ``scienceqa_result.json`` (``{pid: letter|FAILED}``)
and, per ensemble, ``scienceqa_<name>_result.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llavakit.errors import ConfigError, DataError
from llavakit.eval.judge import add_client_arguments, client_from_args
from llavakit.eval.records import read_jsonl
from llavakit.eval.report import md_table, write_json, write_report
from llavakit.eval.scienceqa_convert import LETTER_INSTRUCTION, to_questions
from llavakit.eval.scienceqa_data import COLUMN_HELP, COLUMNS, load_problems, load_split, parse_format
from llavakit.eval.scienceqa_ensemble import judge_ensemble
from llavakit.eval.scienceqa_score import complement, predictions_from_answers, predictions_from_result, score
from llavakit.io import read_json

ENSEMBLES = ("complement", "judge")


def _load_other(path: str | Path, problems) -> tuple[dict, dict]:
    path = Path(path)
    if path.suffix == ".jsonl":
        return predictions_from_answers(read_jsonl(path, "other answers file", ("question_id", "text")), problems,
                                        f"other answers file {path}")
    return predictions_from_result(read_json(path, "other result file"), problems, f"other result file {path}")


def evaluate(problems: str | Path, out_dir: str | Path, answers: str | Path | None = None, model=None,
             image_folder: str | Path | None = None, pid_splits: str | Path | None = None, split: str = "test",
             prompt_format: str = "CQM-A", instruction: str | None = LETTER_INSTRUCTION, other: str | Path | None = None,
             ensembles: tuple[str, ...] = (), judge_client=None, retries: int = 2, batch_size: int = 8,
             max_new_tokens: int = 64, progress: bool = True, model_name: str | None = None) -> dict:
    """Score answers (a file, or ``model`` answering the split now) and the requested ensembles."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = load_problems(problems)
    split_pids = load_split(pid_splits, split, probs) if pid_splits else None
    for name in ensembles:
        if name not in ENSEMBLES:
            raise ConfigError(f"ensemble {name!r} is not one of {', '.join(ENSEMBLES)}")
    if ensembles and other is None:
        raise ConfigError("an ensemble needs a second predictor: pass --other FILE")
    if "judge" in ensembles and judge_client is None:
        raise ConfigError("the judge ensemble needs --judge-model (an OpenAI-compatible endpoint)")
    if answers is None:
        if model is None or split_pids is None:
            raise ConfigError("give --answers FILE, or --model with --pid-splits/--split to answer the split here")
        from llavakit.eval.answering import answer_questions

        parse_format(prompt_format)
        questions = to_questions(probs, split_pids, prompt_format, instruction)
        answers = answer_questions(model, questions, image_folder, out_dir / "answers.jsonl",
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    records = read_jsonl(answers, "answers file", ("question_id", "text"))
    preds, texts = predictions_from_answers(records, probs, f"answers file {answers}")
    if not preds:
        raise DataError(f"answers file {answers} holds no answers")
    result: dict = {"model_name": model_name, "answers": str(answers), "methods": {}}
    if split_pids is not None:
        missing = [p for p in split_pids if p not in preds]
        outside = [p for p in preds if p not in set(split_pids)]
        result["split"] = {"name": split, "problems": len(split_pids), "missing": {"count": len(missing), "pids": missing},
                           "answered_outside_split": {"count": len(outside), "pids": outside}}
    result["methods"]["model"] = score(probs, preds)
    write_json(out_dir / "scienceqa_result.json", preds)
    if other is not None:
        other_preds, other_texts = _load_other(other, probs)
        result["methods"]["other"] = score(probs, {p: other_preds.get(p, "FAILED") for p in preds})
        result["other"] = str(other)
        for name in ensembles:
            if name == "complement":
                merged, stats = complement(preds, other_preds), {}
            else:
                merged, stats = judge_ensemble(judge_client, probs, preds, texts, other_preds, other_texts, out_dir,
                                               retries, progress)
                stats["judge"] = judge_client.cfg.model
                stats["judge_usage"] = judge_client.usage.as_dict()
            result["methods"][name] = {**score(probs, merged), **stats}
            write_json(out_dir / f"scienceqa_{name}_result.json", merged)
    write_report(out_dir, "scienceqa", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = []
    for name, m in result["methods"].items():
        cols = [m["columns"][c]["accuracy"] for c in COLUMNS]
        rows.append([name, *cols, m["accuracy"], m["total"], m["failed"]["count"]])
    lines = [f"# ScienceQA — {result.get('model_name') or result['answers']}", "",
             md_table(["method", *COLUMNS, "Avg", "n", "FAILED"], rows), ""]
    counts = result["methods"]["model"]["columns"]
    lines.append("Columns (the ScienceQA paper's; LLaVA Table 7): "
                 + "; ".join(f"{c} = {COLUMN_HELP[c]} (n={counts[c]['total']})" for c in COLUMNS)
                 + ". TXT and IMG overlap (a problem with both counts in both). FAILED = no option could be read "
                   "from the answer; counted wrong (never guessed).")
    split = result.get("split")
    if split and split["missing"]["count"]:
        lines += ["", f"Missing: {split['missing']['count']} problem(s) of split {split['name']!r} have no answer "
                      f"(first: {', '.join(split['missing']['pids'][:10])}); scores are over answered problems."]
    judge = result["methods"].get("judge")
    if judge:
        lines += ["", f"Judge ensemble: {judge['disputed']} disagreement(s) sent to `{judge['judge']}`; it sided with "
                      f"the model {judge['judge_sided_with_model']}x, the other {judge['judge_sided_with_other']}x, "
                      f"neither {judge['judge_chose_neither']}x; unparseable {len(judge['judge_unparseable'])}, "
                      f"failed {len(judge['judge_failed'])} (those keep the model's answer)."]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, help="official problems.json")
    parser.add_argument("--answers", help="model_vqa answers JSONL (question_id = pid, text)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pid-splits", help="official pid_splits.json (reports unanswered problems of --split)")
    parser.add_argument("--split", default="test", help="split to check / answer (default test)")
    parser.add_argument("--model", help="answer the split with this model first (a preset or checkpoint dir)")
    parser.add_argument("--image-folder", help="ScienceQA image root (<split>/<pid>/image.png) for --model")
    parser.add_argument("--format", default="CQM-A", help="prompt format for --model questions (default CQM-A)")
    parser.add_argument("--instruction", default=LETTER_INSTRUCTION,
                        help="line appended to each question for --model ('' for none; default: LLaVA-1.5's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--other", help="second predictor: answers JSONL or {pid: letter|index|text} JSON")
    parser.add_argument("--ensemble", action="append", default=[], choices=ENSEMBLES,
                        help="combine with --other: complement and/or judge (repeatable)")
    parser.add_argument("--retries", type=int, default=2, help="re-asks for an unreadable judge reply (default 2)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_client_arguments(parser, "judge", 0.0)


def run(args: argparse.Namespace) -> int:
    judge = client_from_args(args, "judge", args.concurrency) if "judge" in args.ensemble and args.judge_model else None
    model = args.model if args.answers is None else None  # loaded (once) only if answers are missing
    result = evaluate(args.problems, args.out, args.answers, model, args.image_folder, args.pid_splits, args.split,
                      args.format, args.instruction or None, args.other, tuple(args.ensemble), judge, args.retries,
                      args.batch_size, args.max_new_tokens, not args.quiet, args.model)
    print(markdown(result))
    print(f"\nwrote {Path(args.out) / 'scienceqa.json'}, scienceqa.md and scienceqa_result.json")
    return 0
