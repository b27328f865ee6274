"""LLaVA-Bench inputs from held-out synthetic scenes (offline), in the LLaVA-Bench schemas.

For each of the first ``max_images`` scenes, three questions — one per category:

- ``conv``: a grounded question of a random kind (:func:`llavakit.datagen.questions.sample_qas`);
- ``detail``: a detailed-description instruction;
- ``complex``: a reasoning question (:func:`llavakit.datagen.reasoning.sample_reasoning`).

The context (``context.jsonl``) is the scene's captions and boxes, normalised to 0–1 with 3
decimals, named with their attributes ("large red circle") — what a text-only teacher sees. The
reference answers (``references.template.jsonl``) are written by the offline template teacher from the
same facts (:mod:`llavakit.datagen.template_teacher`): exact by construction, in place of
GPT-4's text-only answers. Everything is deterministic in (``seed``, image id).
"""

from __future__ import annotations

import random
from pathlib import Path

from llavakit.datagen.coco import box_name, read_coco
from llavakit.datagen.prompts import DETAIL_INSTRUCTIONS
from llavakit.datagen.questions import Vocab, sample_qas
from llavakit.datagen.reasoning import sample_reasoning
from llavakit.datagen.template_teacher import detail_text
from llavakit.errors import DataError
from llavakit.eval.records import write_jsonl
from llavakit.eval.scenes_input import limit_images, load_scenes


def context_record(image, categories: dict[int, str], folder_name: str) -> dict:
    instances = []
    for ann in image.annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = [x / image.width, y / image.height, (x + w) / image.width, (y + h) / image.height]
        instances.append({"category": box_name(ann, categories), "bbox": [round(v, 3) for v in box]})
    return {"id": str(image.id), "image": f"{folder_name}/{image.file_name}", "captions": image.captions,
            "instances": instances}


def build_from_scenes(scenes_dir: str | Path, out_dir: str | Path, max_images: int = 20,
                      seed: int = 0) -> tuple[Path, Path, Path, Path]:
    """Write ``questions.jsonl``, ``context.jsonl``, ``references.jsonl`` into ``out_dir``;
    returns their paths and the image folder the questions' ``image`` paths are relative to."""
    scenes_dir, out_dir = Path(scenes_dir), Path(out_dir)
    facts, folder = load_scenes(scenes_dir)
    captions = scenes_dir / "captions.json"
    if not captions.is_file():
        raise DataError(f"scenes directory {scenes_dir} has no captions.json (needed for the context)")
    coco = read_coco(captions, scenes_dir / "instances.json")
    by_id = {img.id: img for img in coco.images}
    vocab = Vocab(shapes=list(facts.shapes), colors=list(facts.colors))
    questions, contexts, references = [], [], []
    for iid in limit_images(facts, max_images):
        if iid not in by_id:
            reason = dict(coco.skipped).get(iid, "not readable")
            raise DataError(f"scenes directory {scenes_dir}: image {iid} has no context ({reason})")
        f = facts.images[iid]
        image = f"{folder.name}/{f.file_name}"
        contexts.append(context_record(by_id[iid], coco.categories, folder.name))
        rng = random.Random(f"llava-bench/{seed}/{iid}")
        qas = sample_qas(f, rng, vocab, 1)
        if not qas:
            raise DataError(f"image {iid}: no grounded question could be asked")
        items = [
            ("conv", qas[0].question, qas[0].answer),
            ("detail", rng.choice(DETAIL_INSTRUCTIONS), detail_text(f, rng)),
            ("complex", *sample_reasoning(f, rng, vocab)[:2]),
        ]
        for category, text, answer in items:
            qid = len(questions)
            questions.append({"question_id": qid, "image": image, "text": text, "category": category})
            references.append({"question_id": qid, "text": answer, "model_id": "template-teacher"})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (write_jsonl(out_dir / "questions.jsonl", questions), write_jsonl(out_dir / "context.jsonl", contexts),
             write_jsonl(out_dir / "references.template.jsonl", references))
    return (*paths, folder.parent)
