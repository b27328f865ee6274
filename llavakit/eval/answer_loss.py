"""Held-out answer loss: how well a model predicts reference answers, with its image and with another.

For LLaVA-format records (each with one image), the mean next-token loss in nats per supervised
token of the assistant answers, grouped by the records' ``type`` field (e.g. conversation, detail,
reasoning; ``all`` when absent). Computed twice: with each record's own image and with a
mismatched one (the image of the next record whose image differs). The difference,
``image_gain = mismatched − matched``, measures how much the answers rely on seeing the image —
a model that ignores its image has a gain of ~0 whatever its loss.

An automatic, judge-free stand-in for LLaVA-Bench's per-type scores: it needs no teacher, and it
is the quantity training lowers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from llavakit.conversation.processor import IGNORE_INDEX
from llavakit.errors import ConfigError, DataError


def mismatch_images(records: Sequence[dict]) -> list[dict]:
    """Copies of ``records`` where each gets the image of the next record with a different image."""
    images = [r.get("image") for r in records]
    if any(not isinstance(im, str) for im in images):
        bad = next(r.get("id", i) for i, r in enumerate(records) if not isinstance(r.get("image"), str))
        raise DataError(f"record {bad}: answer loss needs exactly one image per record")
    if len(set(images)) < 2:
        raise DataError("answer loss with a mismatched image needs records of at least two images")
    out = []
    n = len(records)
    for i, rec in enumerate(records):
        j = (i + 1) % n
        while images[j] == images[i]:
            j = (j + 1) % n
        out.append({**rec, "image": images[j]})
    return out


@torch.no_grad()
def _losses(model, records: Sequence[dict], image_folder: Path, batch_size: int, progress: bool) -> dict:
    from llavakit.progress import bar as progress_bar

    from llavakit.data.batching import Collator, pixel_image_fn
    from llavakit.data.dataset import LlavaDataset

    ds = LlavaDataset(records, model.processor, image_folder,
                      max_length=getattr(model.language_model.config, "max_position_embeddings", None),
                      long_policy="truncate", image_placement="first", progress=False)
    if ds.report.bad or ds.report.dropped:
        raise DataError(f"answer loss: {ds.report.summary()}")
    collate = Collator(model.processor.tokenizer.pad_token_id, image_fn=pixel_image_fn.for_model(model))
    sums, counts = defaultdict(float), defaultdict(int)
    device = next(model.projector.parameters()).device
    model.eval()
    for start in progress_bar(range(0, len(ds), batch_size), desc="answer loss", unit="batch", show=progress):
        idx = list(range(start, min(start + batch_size, len(ds))))
        batch = collate([ds[i] for i in idx])
        if batch["skipped"]:
            raise DataError(f"answer loss: image failed for {batch['skipped'][0][0]}: {batch['skipped'][0][1]}")
        out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                    pixel_values=batch["pixel_values"].to(device), return_logits=True)
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        for row, i in enumerate(idx):
            kind = str(ds.records[ds.record_index(i)].get("type", "all"))
            n = int((labels[row] != IGNORE_INDEX).sum())
            sums[kind] += float(tok[row].sum())
            counts[kind] += n
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def evaluate(model, records: Sequence[dict], image_folder: str | Path, batch_size: int = 8,
             progress: bool = True) -> dict:
    """``{type: {"loss", "mismatched_loss", "image_gain", "tokens"}}`` plus ``all`` over every type."""
    if not records:
        raise ConfigError("answer loss: no records")
    folder = Path(image_folder)
    matched = _losses(model, records, folder, batch_size, progress)
    shifted = _losses(model, mismatch_images(records), folder, batch_size, progress)
    result = {}
    for kind in sorted(matched):
        loss, n = matched[kind]
        other, _ = shifted[kind]
        result[kind] = {"loss": loss, "mismatched_loss": other, "image_gain": other - loss, "tokens": n}
    total = sum(v["tokens"] for v in result.values())
    if len(result) > 1:
        agg = {k: sum(v[k] * v["tokens"] for v in result.values()) / total for k in ("loss", "mismatched_loss")}
        result["all"] = {**agg, "image_gain": agg["mismatched_loss"] - agg["loss"], "tokens": total}
    return result
