"""Model answers for an evaluation, through the shared batched inference (``llavakit infer``).

:func:`answer_questions` writes the questions next to the answers and resumes an interrupted run.
If the answers in that place were made for *different* questions (another seed, another split)
or with another model or settings, it refuses instead of mixing stale answers in (a preset or
checkpoint path is identified by that string, a loaded model by its config name).
``blind=True`` replaces every image by the blank image of ``llavakit infer --blind``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from llavakit.errors import ConfigError
from llavakit.eval.records import read_jsonl, write_jsonl
from llavakit.eval.report import write_json
from llavakit.io import read_json


def resolve_model(model):
    """A loaded model, or a preset name / checkpoint dir to load."""
    if isinstance(model, (str, Path)):
        from llavakit.model import load_model

        return load_model(str(model))
    return model


def model_label(model) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(getattr(model, "config", None), "name", None) or type(model).__name__


def answer_questions(model, questions: Sequence[dict], image_folder, out_path: str | Path, blind: bool = False,
                     batch_size: int = 8, max_new_tokens: int = 32, progress: bool = True,
                     label: str | None = None) -> Path:
    """Answers JSONL for ``questions`` (model_vqa format) at ``out_path``; resumable.

    Next to it, ``<stem>.questions.jsonl`` (the questions) and ``<stem>.meta.json`` (model,
    blind, max_new_tokens): existing answers made for other questions or settings are refused.
    """
    from llavakit.serve.infer import blank_image, run_inference

    out_path = Path(out_path)
    q_path = out_path.with_name(out_path.stem + ".questions.jsonl")
    meta_path = out_path.with_name(out_path.stem + ".meta.json")
    canon = [json.loads(json.dumps(q)) for q in questions]
    meta = {"model": label or model_label(model), "blind": blind, "max_new_tokens": max_new_tokens}
    if out_path.is_file() and out_path.stat().st_size:
        if q_path.is_file() and read_jsonl(q_path) != canon:
            raise ConfigError(f"{out_path} holds answers to other questions ({q_path} differs); "
                              "use another output directory or delete those files")
        if meta_path.is_file() and read_json(meta_path, "answers manifest") != meta:
            raise ConfigError(f"{out_path} holds answers made with other settings ({read_json(meta_path)} ≠ {meta}); "
                              "use another output directory or delete those files")
    write_jsonl(q_path, canon)
    write_json(meta_path, meta)
    model = resolve_model(model)
    return run_inference(model, canon, image_folder, out_path, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         temperature=0.0, progress=progress, image_override=blank_image(model) if blind else None)
