"""The stage-1 (feature alignment) set: one (image, caption) pair per image as a single-turn
instruction — the paper's CC-595K recipe. The human turn is ``<image>`` plus a "describe briefly"
instruction drawn from :data:`prompts.BRIEF_INSTRUCTIONS`; the answer is one of the image's
captions. Both choices come from ``random.Random(f"{seed}/{image_id}/brief")``, so the set is
deterministic and stable when images are added or removed.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from llavakit.datagen.coco import read_coco
from llavakit.datagen.jsonio import write_json
from llavakit.datagen.prompts import BRIEF_INSTRUCTIONS
from llavakit.errors import ConfigError


def clean_caption(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:] if text else text


def build_caption_set(captions: str | Path, out: str | Path, seed: int = 0, limit: int | None = None) -> dict:
    """Write the stage-1 LLaVA JSON to ``out``; returns stats (skipped images with reasons)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be >= 1")
    coco = read_coco(captions)
    images = coco.images[:limit] if limit else coco.images
    records = []
    for image in images:
        rng = random.Random(f"{seed}/{image.id}/brief")
        caption = clean_caption(rng.choice(image.captions))
        instruction = rng.choice(BRIEF_INSTRUCTIONS)
        records.append({
            "id": f"{image.id}-caption", "image": image.file_name, "type": "caption",
            "conversations": [{"from": "human", "value": f"<image>\n{instruction}"},
                              {"from": "gpt", "value": caption}],
        })
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, records)
    skipped = {}
    for iid, why in coco.skipped:
        skipped.setdefault(why, []).append(iid)
    return {"out": str(out), "records": len(records), "images_in_file": len(coco.images) + len(coco.skipped),
            "skipped": {why: {"count": len(ids), "ids": ids[:100]} for why, ids in skipped.items()}}
