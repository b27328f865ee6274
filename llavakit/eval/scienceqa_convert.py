"""`llavakit data scienceqa`: official ScienceQA files → LLaVA JSON (and model_vqa questions).

Each problem of the split becomes one two-turn record: the input of the prompt format as the
human turn (``\\n<image>`` appended when the problem has an image, whose path is
``<split>/<pid>/image.png``), the output as the gpt turn. ``--questions-out`` also writes the
inputs as a model_vqa questions JSONL for ``llavakit infer`` / ``llavakit eval scienceqa``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llavakit.errors import DataError
from llavakit.eval.report import write_json
from llavakit.eval.records import write_jsonl
from llavakit.eval.scienceqa_data import (
    SUPPORTED_FORMATS,
    Problem,
    build_example,
    load_problems,
    load_split,
    parse_format,
)

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def to_llava(problems: dict[str, Problem], pids: list[str], fmt: str, image_token: str = "<image>") -> list[dict]:
    parse_format(fmt)
    records = []
    for pid in pids:
        prob = problems[pid]
        question, answer = build_example(prob, fmt)
        rec: dict = {"id": pid}
        if prob.image:
            rec["image"] = prob.image_path()
            question = f"{question}\n{image_token}"
        rec["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        records.append(rec)
    return records


def to_questions(problems: dict[str, Problem], pids: list[str], fmt: str, instruction: str | None = None) -> list[dict]:
    """model_vqa questions: ``question_id`` = pid, ``text`` = the format's input (+ instruction),
    ``image`` only for problems with an image."""
    parse_format(fmt)
    out = []
    for pid in pids:
        prob = problems[pid]
        text, _ = build_example(prob, fmt)
        if instruction:
            text = f"{text}\n{instruction}"
        rec: dict = {"question_id": pid, "text": text, "category": "scienceqa"}
        if prob.image:
            rec["image"] = prob.image_path()
        out.append(rec)
    return out


def check_images(problems: dict[str, Problem], pids: list[str], image_folder: str | Path) -> None:
    root = Path(image_folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    missing = [pid for pid in pids if problems[pid].image and not (root / problems[pid].image_path()).is_file()]
    if missing:
        raise DataError(
            f"image folder {root}: {len(missing)} problem image(s) are missing, e.g. "
            + ", ".join(str(root / problems[p].image_path()) for p in missing[:3])
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, help="official problems.json")
    parser.add_argument("--pid-splits", required=True, help="official pid_splits.json")
    parser.add_argument("--split", default="train", help="split to convert (train, val, test, minival, ...)")
    parser.add_argument("--format", default="QCM-LEA",
                        help="prompt format INPUT-OUTPUT, e.g. " + ", ".join(SUPPORTED_FORMATS) + " (default QCM-LEA)")
    parser.add_argument("--out", help="LLaVA JSON to write (training data)")
    parser.add_argument("--questions-out", help="model_vqa questions JSONL to write (for infer / eval)")
    parser.add_argument("--instruction", default=None,
                        help=f"a line appended to each question in --questions-out, e.g. {LETTER_INSTRUCTION!r}")
    parser.add_argument("--image-folder", help="ScienceQA image root; when given, every problem image must exist")


def run(args: argparse.Namespace) -> int:
    if not args.out and not args.questions_out:
        raise DataError("nothing to write: give --out and/or --questions-out")
    parse_format(args.format)
    problems = load_problems(args.problems)
    pids = load_split(args.pid_splits, args.split, problems)
    if args.image_folder:
        check_images(problems, pids, args.image_folder)
    with_image = sum(1 for p in pids if problems[p].image)
    if args.out:
        write_json(args.out, to_llava(problems, pids, args.format))
        print(f"wrote {args.out}: {len(pids)} records of split {args.split!r} in format {args.format} "
              f"({with_image} with an image, {len(pids) - with_image} text-only)")
    if args.questions_out:
        write_jsonl(args.questions_out, to_questions(problems, pids, args.format, args.instruction))
        print(f"wrote {args.questions_out}: {len(pids)} questions of split {args.split!r}")
    return 0
