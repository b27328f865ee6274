"""`llavakit infer` and :func:`run_inference`: batched answers for a LLaVA ``model_vqa`` questions file.

Formats (LLaVA's ``model_vqa``): questions JSONL, one ``{"question_id", "image", "text"}`` per line
(``image`` optional: text-only questions work); answers JSONL, one ``{"question_id", "prompt",
"text", "answer_id", "model_id", "metadata"}`` per line, in question order. ``prompt`` is the question
text; a question with an image is asked as ``<image>\\n<text>`` unless its text already holds
``<image>``. ``metadata`` holds ``finish_reason`` and ``completion_tokens``.

Python API (used by the eval verbs)::

    from llavakit.serve.infer import run_inference
    run_inference(
        model,                    # a loaded LlavaModel (or TextModel for text-only questions)
        questions,                # list[dict]: question_id, text, optional image (relative to image_folder)
        image_folder,             # str | Path | None
        out_path,                 # answers JSONL; appended to, so a rerun resumes
        batch_size=8,             # rows per generate call (left padding)
        max_new_tokens=128,
        temperature=0.0,          # 0 = greedy; > 0 samples with a per-question seed (seed + question_id)
        top_p=1.0,
        model_id=None,            # written to each answer (default: the model's name)
        num_shards=1, shard_index=0,   # contiguous chunks, like LLaVA's --num-chunks/--chunk-idx
        progress=True,            # tqdm bar
        image_override=None,      # a PIL image used instead of every question's image (e.g. blank: --blind)
        system=None,              # replace the model's system prompt
        seed=0,
        stop=(),                  # extra stop strings
    ) -> Path

Resumable: ids already in ``out_path`` are skipped; a torn last line (a killed run) is dropped and
its question answered again. Missing images are reported (ids + paths) before any generation. With
an image folder, a question's image must resolve (symlinks followed) inside it. An image that cannot
be decoded stops the run naming its question, unless ``skip_bad_images``: then the question is left
unanswered, listed in ``<out>.skipped.json`` (id → reason), and tried again by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
import zlib
from pathlib import Path
from typing import Sequence

from llavakit.conversation.templates import USER, Message
from llavakit.errors import DataError, LlavakitError
from llavakit.imaging import DEFAULT_MAX_PIXELS, load_image
from llavakit.io import read_jsonl_log
from llavakit.serve.batch import generate_rows
from llavakit.serve.prompts import DEFAULT, PromptEncoder
from llavakit.serve.rows import GenParams, Row


def read_questions(path: str | Path) -> list[dict]:
    """A questions JSONL (or a JSON list) → records, checked for ``question_id`` and ``text``."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read questions file {path}: {exc}") from None
    if raw.lstrip().startswith("["):
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        numbered = list(enumerate(records, 1))
    else:
        numbered = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON: {exc}") from None
    for n, rec in numbered:
        if not isinstance(rec, dict) or "question_id" not in rec or not isinstance(rec.get("text"), str):
            raise DataError(f"{path} record {n}: needs question_id and a string text")
        if rec.get("image") == "":
            rec["image"] = None  # an empty path: a text-only question, as before
        if rec.get("image") is not None and not (isinstance(rec["image"], str) and rec["image"]):
            raise DataError(f"{path} record {n} (question_id {rec['question_id']!r}): image must be a file path "
                            f"(a non-empty string), got {rec['image']!r}")
    return [rec for _, rec in numbered]


def shard(items: Sequence, num_shards: int, shard_index: int) -> list:
    """The ``shard_index``-th of ``num_shards`` contiguous chunks (concatenating shards keeps order)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise LlavakitError(f"--shard-index must be in [0, {num_shards}), got {shard_index} (num_shards {num_shards})")
    size = -(-len(items) // num_shards)
    return list(items[shard_index * size:(shard_index + 1) * size])


def _key(question_id) -> str:
    return json.dumps(question_id, sort_keys=True)


def answered_ids(out_path: Path) -> set[str]:
    """Ids already answered in ``out_path``; a torn last line is cut off (:func:`llavakit.io.read_jsonl_log`)."""
    done: set[str] = set()
    for n, record in read_jsonl_log(out_path, "answers", repair=True)[0]:
        if "question_id" not in record:
            raise DataError(f"{out_path}:{n}: not an answer record (no question_id); fix or remove the "
                            "file to start over")
        done.add(_key(record["question_id"]))
    return done


def _prompt(q: dict, image_token: str, has_image: bool) -> str:
    text = q["text"]
    if has_image:
        if text.count(image_token) > 1:
            raise DataError(f"question {q['question_id']}: the text holds {text.count(image_token)} {image_token} "
                            "placeholders but a question has one image")
        return text if image_token in text else f"{image_token}\n{text}"
    if image_token in text:
        raise DataError(f"question {q['question_id']}: the text holds {image_token} but the question has no image")
    return text


def _check_images(pending: list[dict], folder: Path | None, vision: bool) -> None:
    with_image = [q for q in pending if q.get("image")]
    if with_image and not vision:
        raise DataError(f"{len(with_image)} question(s) have images (e.g. {with_image[0]['question_id']}) but the "
                        "model is a text-only LLM")
    if folder is not None:
        root = folder.resolve()
        outside = [q for q in with_image if not (root / q["image"]).resolve().is_relative_to(root)]
        if outside:
            raise DataError(f"question {outside[0]['question_id']}: image {outside[0]['image']!r} resolves outside "
                            f"--image-folder {folder} ({len(outside)} question(s) like it)")
    missing = [(q["question_id"], str((folder or Path(".")) / q["image"])) for q in with_image
               if not ((folder or Path(".")) / q["image"]).is_file()]
    if missing:
        shown = "; ".join(f"{qid}: {p}" for qid, p in missing[:5])
        raise DataError(f"{len(missing)} question image(s) not found ({shown}{' ...' if len(missing) > 5 else ''})")


def run_inference(model, questions: Sequence[dict], image_folder, out_path, batch_size: int = 8,
                  max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                  model_id: str | None = None, num_shards: int = 1, shard_index: int = 0, progress: bool = True,
                  image_override=None, system: str | None = None, seed: int = 0, stop: Sequence[str] = (),
                  skip_bad_images: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """Answer ``questions`` in batches into ``out_path`` (see the module docstring)."""
    from llavakit.progress import bar as progress_bar
    from llavakit.serve.models import accepts_images

    if batch_size < 1:
        raise LlavakitError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mine = shard(questions, num_shards, shard_index)
    keys = [_key(q["question_id"]) for q in mine]
    dupes = sorted({k for k in keys if keys.count(k) > 1}) if len(set(keys)) != len(keys) else []
    if dupes:
        raise DataError(f"duplicate question_id(s): {', '.join(dupes[:5])}")
    done = answered_ids(out_path)
    pending = [q for q, k in zip(mine, keys) if k not in done]
    folder = Path(image_folder) if image_folder else None
    if image_override is None:
        _check_images(pending, folder, accepts_images(model))
    model_id = model_id or getattr(getattr(model, "config", None), "name", None) or getattr(model, "name", "llavakit")
    prompts = PromptEncoder(model)
    pad = getattr(getattr(getattr(model, "config", None), "vision", None), "image_mode", None) == "pad"
    bar = progress_bar(total=len(mine), initial=len(mine) - len(pending), desc="infer", unit="q", show=progress)
    skipped: dict[str, str] = {}
    with open(out_path, "a", encoding="utf-8") as out:
        for start in range(0, len(pending), batch_size):
            batch, rows = [], []
            for q in pending[start:start + batch_size]:
                image = None
                if q.get("image"):
                    try:
                        image = image_override if image_override is not None else load_image(
                            (folder or Path(".")) / q["image"], max_image_pixels, canvas=pad)
                    except DataError as exc:
                        if not skip_bad_images:
                            raise DataError(f"question {q['question_id']}: {exc} (--skip-bad-images leaves such "
                                            "questions out and lists them)") from None
                        skipped[str(q["question_id"])] = str(exc)
                        continue
                batch.append(q)
                text = _prompt(q, prompts.image_token, image is not None)
                try:
                    prompts.check_text_size(len(text) + len(system or ""))
                    ids = prompts.encode([Message(USER, text)], DEFAULT if system is None else system)
                    prompts.check_context(ids, max_new_tokens)
                except LlavakitError as exc:
                    raise DataError(f"question {q['question_id']}: {exc}") from None
                pixels = model.preprocess([image]) if image is not None else None
                row_seed = zlib.crc32(f"{seed}:{_key(q['question_id'])}".encode()) if temperature > 0 else None
                rows.append(Row(ids, pixels, GenParams(max_new_tokens, temperature, top_p, tuple(stop), row_seed)))
            for q, res in zip(batch, generate_rows(model, rows)):
                record = {"question_id": q["question_id"], "prompt": q["text"], "text": res.text.strip(),
                          "answer_id": uuid.uuid4().hex, "model_id": model_id,
                          "metadata": {"finish_reason": res.finish_reason, "completion_tokens": res.completion_tokens}}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(min(start + batch_size, len(pending)) - start)
    bar.close()
    report = out_path.with_name(out_path.name + ".skipped.json")
    if skipped:
        report.write_text(json.dumps(skipped, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"llavakit infer: {len(skipped)} question(s) left out (image unreadable), listed in {report}",
              file=sys.stderr)
    elif report.exists():
        report.unlink()  # an earlier run's list: every question is answered now
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a preset (nano, ...) or a llavakit checkpoint dir")
    parser.add_argument("--questions", required=True, help="questions JSONL: question_id, image, text")
    parser.add_argument("--image-folder", help="folder the questions' image paths are relative to")
    parser.add_argument("--out", required=True, help="answers JSONL (appended to: reruns resume)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    parser.add_argument("--system", help="system prompt (default: the model's)")
    parser.add_argument("--model-id", help="model_id written to each answer (default: the model's name)")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out questions whose image cannot be decoded (listed in OUT.skipped.json) "
                             "instead of stopping")
    parser.add_argument("--blind", action="store_true",
                        help="replace every image by a blank one (does the model use the image at all?)")
    parser.add_argument("--text-only", action="store_true", help="load only the language model (or a plain LM dir / .gguf)")
    parser.add_argument("--template", help="conversation template for --text-only models")
    parser.add_argument("--device", help="e.g. cuda, cpu")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse a larger image before decoding it (default 4096x4096)")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (--no-progress: the older spelling)")


def blank_image(model):
    """A mid-grey square at the tower's input size (the ``--blind`` image)."""
    from PIL import Image

    size = getattr(getattr(model, "vision_tower", None), "image_size", 224)
    return Image.new("RGB", (size, size), (128, 128, 128))


def run(args) -> int:
    from llavakit.serve.models import load_servable, model_name

    questions = read_questions(args.questions)
    model = load_servable(args.model, text_only=args.text_only, template=args.template, device=args.device)
    before = len(answered_ids(Path(args.out)))
    out = run_inference(
        model, questions, args.image_folder, args.out, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        model_id=args.model_id or model_name(args.model), num_shards=args.num_shards, shard_index=args.shard_index,
        progress=not args.quiet, image_override=blank_image(model) if args.blind else None,
        system=args.system, seed=args.seed, skip_bad_images=args.skip_bad_images,
        max_image_pixels=args.max_image_pixels,
    )
    total = len(answered_ids(out))
    print(f"llavakit infer: {total - before} new answer(s), {total} in {out}")
    return 0
