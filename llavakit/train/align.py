"""`llavakit align`: token-level alignment of the projector from box annotations (before stage 1).

Each image token is the projector's output for one cell of the tower's grid. Where boxes exist
(COCO instances, the synthetic world), the words naming what a cell shows are known: the object
whose box covers the cell's centre (the smallest such box: the one in front) gives its attribute
words and category name ("red circle"); a cell no box covers is ``background``. This step
regresses every cell's output onto the mean of the LM's own input embeddings of those words
(MSE + cosine), on cached tower features, with no LM forward: ~2 minutes on a 2-core CPU for the
``nano`` quickstart. The tokens then start where the LM already reads words — at the text
embeddings' scale, one content per cell — instead of the shared high-norm offset that stage 1
alone learns (docs/training.md). Stage 1 and 2 start from the artifact: ``projector=OUT/projector``.

Why written here: no library offers dense word-embedding regression of a connector; the loop is
20 lines of torch and the rest is the mapping from boxes to the tower's grid (per image mode).

Rerunning with the same settings skips a finished run (``align.json`` is written last); an
interrupted run starts again from the beginning (it is short).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from llavakit.config import from_dict, parse_override, merge, to_dict
from llavakit.errors import ConfigError, DataError
from llavakit.imaging import DATA_MAX_PIXELS, image_reader
from llavakit.model.checkpoint import PROJECTOR_WEIGHTS
from llavakit.train.align_boxes import cell_centres, cell_words, read_instances
from llavakit.train.schedule import make_scheduler

DONE = "align.json"


@dataclass
class AlignConfig:
    model: str = "nano"  # a model preset or a llavakit checkpoint dir
    instances: str | None = None  # COCO instances JSON (bbox [x, y, w, h] in pixels, category_id)
    image_folder: str | None = None  # where the images' file_name are
    output_dir: str = "runs/align"
    words: list[str] = field(default_factory=lambda: ["color", "category"])  # annotation fields, in order
    background: str = "background"  # the word for cells no box covers
    size_field: str = "size"  # projector.objects: the annotation field naming an object's size ("" for none)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    cosine_weight: float = 1.0
    contrastive_weight: float = 0.0  # InfoNCE over the target table: each cell's own target vs all others
    temperature: float = 0.05  # of the contrastive term's cosine logits
    heldout_fraction: float = 0.1  # images kept out of training to report cell accuracy
    seed: int = 0
    feature_cache_dir: str | None = None  # default: the training feature cache
    max_image_pixels: int = DATA_MAX_PIXELS  # per image, from its header (a pad model: its padded square); 0: none
    progress: bool = True


def validate(cfg: AlignConfig) -> None:
    """Everything that can be checked without loading a model."""
    for key in ("instances", "image_folder"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"align: {key} is required")
    if not Path(cfg.instances).is_file():
        raise ConfigError(f"align: instances file {cfg.instances} does not exist")
    if not Path(cfg.image_folder).is_dir():
        raise ConfigError(f"align: image_folder {cfg.image_folder} is not a directory")
    if not cfg.words or len(set(cfg.words)) != len(cfg.words):
        raise ConfigError(f"align: words must be a non-empty list of distinct annotation fields, got {cfg.words}")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError(f"align: steps ({cfg.steps}) and batch_size ({cfg.batch_size}) must be >= 1")
    if not isinstance(cfg.max_image_pixels, int) or cfg.max_image_pixels < 0:
        raise ConfigError(f"align: max_image_pixels must be an integer >= 0 (0: no limit), got {cfg.max_image_pixels}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"align: lr must be a finite number > 0, got {cfg.lr}")
    if not (math.isfinite(cfg.cosine_weight) and cfg.cosine_weight >= 0):
        raise ConfigError(f"align: cosine_weight must be a finite number >= 0, got {cfg.cosine_weight}")
    if not (math.isfinite(cfg.contrastive_weight) and cfg.contrastive_weight >= 0):
        raise ConfigError(f"align: contrastive_weight must be a finite number >= 0, got {cfg.contrastive_weight}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ConfigError(f"align: temperature must be a finite number > 0, got {cfg.temperature}")
    if not 0 <= cfg.heldout_fraction < 1:
        raise ConfigError(f"align: heldout_fraction must be in [0, 1), got {cfg.heldout_fraction}")
    if not cfg.background.strip():
        raise ConfigError("align: background must be a word")


# --- targets: the LM's own embeddings of the words --------------------------------------------------

def word_table(keys, tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """``(len(keys), D)``: per key (a tuple of words) the mean over its words of the mean embedding
    of the word's tokens (each word tokenized with a leading space, as inside a sentence)."""
    rows = []
    for key in keys:
        vecs = []
        for word in key:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            vecs.append(embeddings[ids].float().mean(0))
        rows.append(torch.stack(vecs).mean(0))
    return torch.stack(rows)


def align_loss(out: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, cfg: AlignConfig) -> torch.Tensor:
    """MSE + cosine to each cell's target row; with ``contrastive_weight`` also cross-entropy of the
    cell's cosine to every row of the table (its own row the class): the cell must be nearer its own
    words than to any other pair, which regression alone does not ask."""
    target = table[ids]
    loss = F.mse_loss(out, target) + cfg.cosine_weight * (1 - F.cosine_similarity(out, target, dim=-1)).mean()
    if cfg.contrastive_weight:
        logits = F.normalize(out, dim=-1) @ F.normalize(table, dim=-1).T / cfg.temperature
        loss = loss + cfg.contrastive_weight * F.cross_entropy(logits.flatten(0, -2), ids.flatten())
    return loss


@torch.no_grad()
def evaluate_cells(projector, features, rows: torch.Tensor, ids: torch.Tensor, table: torch.Tensor,
                   background: int, chunk: int = 256) -> tuple[dict, float]:
    """Share of cells whose output is nearest (cosine) to its own target row (objects and background
    apart) and the mean token norm, over ``rows`` in chunks (``features(rows)`` reads the cache)."""
    right = {True: 0, False: 0}
    count = {True: 0, False: 0}
    norm_sum, tokens = 0.0, 0
    unit = F.normalize(table, dim=-1)
    for k in range(0, len(rows), chunk):
        part = rows[k:k + chunk]
        out = projector(features(part)).float()
        hit = (F.normalize(out, dim=-1) @ unit.T).argmax(-1) == ids[part]
        obj = ids[part] != background
        for kind, mask in ((True, obj), (False, ~obj)):
            right[kind] += int(hit[mask].sum())
            count[kind] += int(mask.sum())
        norm_sum += float(out.norm(dim=-1).sum())
        tokens += out.shape[0] * out.shape[1]
    pct = {kind: round(100 * right[kind] / count[kind], 1) if count[kind] else None for kind in right}
    return ({"object_cells": pct[True], "background_cells": pct[False], "object_cell_count": count[True]},
            round(norm_sum / max(tokens, 1), 3))


def _settings(config: dict) -> dict:
    """What makes two runs the same: paths resolved; progress and the cache location do not count; a
    setting a run recorded before it existed counts as its default."""
    out = {k: v for k, v in {**to_dict(AlignConfig()), **config}.items() if k not in ("progress", "feature_cache_dir")}
    for key in ("instances", "image_folder", "output_dir"):
        if out.get(key):
            out[key] = str(Path(out[key]).resolve())
    return out


def run_alignment(cfg: AlignConfig) -> dict:
    """Train the projector of ``cfg.model`` by cell-word regression; write ``OUT/projector`` + ``align.json``."""
    validate(cfg)
    out = Path(cfg.output_dir)
    done = out / DONE
    if done.is_file():
        previous = json.loads(done.read_text(encoding="utf-8"))
        if _settings(previous.get("config", {})) != _settings(to_dict(cfg)):
            raise ConfigError(f"{out} holds an alignment run with other settings; use another output_dir or delete it")
        if (out / "projector" / PROJECTOR_WEIGHTS).is_file():
            return previous
        print(f"llavakit align: {out / 'projector'} is missing; running again", file=sys.stderr, flush=True)
    images, by_image, names = read_instances(cfg)

    from llavakit.datagen.jsonio import write_json
    from llavakit.model import load_model, save_projector
    from llavakit.train.feature_cache import FeatureCache

    started = time.time()
    model = load_model(cfg.model)
    tower = model.vision_tower
    grid = math.isqrt(tower.num_tokens)
    if grid * grid != tower.num_tokens:
        raise ConfigError(f"align: the tower's {tower.num_tokens} tokens are not a square grid (feature_select=patch?)")
    paths = [str(Path(cfg.image_folder) / im["file_name"]) for im in images]
    cache = FeatureCache(cfg.feature_cache_dir, tower)
    report = cache.build(paths, image_reader(tower.config.image_mode, cfg.max_image_pixels, "max_image_pixels"),
                         progress=cfg.progress)
    print(f"llavakit align: {report.describe()} ({cache.dir})", file=sys.stderr, flush=True)
    keep = [i for i, p in enumerate(paths) if p not in report.bad]
    if not keep:
        raise DataError(f"align: no image of {cfg.instances} could be read from {cfg.image_folder}")
    cells = [cell_words(images[i], by_image[int(images[i]["id"])], names, cfg, grid, tower.config.image_mode,
                        tower.image_size) for i in keep]
    keys = sorted({k for c in cells for k in c})
    index = {k: j for j, k in enumerate(keys)}
    ids = torch.tensor([[index[k] for k in c] for c in cells])
    table = word_table(keys, model.tokenizer, model.language_model.get_input_embeddings().weight.detach())
    kept = [paths[i] for i in keep]

    def features(rows: torch.Tensor) -> torch.Tensor:  # from the memory-mapped cache, a batch at a time
        return cache.get([kept[int(r)] for r in rows]).float()

    order = list(range(len(keep)))
    random.Random(cfg.seed).shuffle(order)
    n_held = int(len(order) * cfg.heldout_fraction)
    held, train = torch.tensor(order[:n_held], dtype=torch.long), torch.tensor(order[n_held:], dtype=torch.long)
    if len(train) == 0:
        raise ConfigError(f"align: heldout_fraction {cfg.heldout_fraction} leaves no training image of {len(keep)}")

    snap = model.config.projector.snap  # projector.snap: align trains the inner projector, then gives it the table
    projector = (model.projector.inner if snap else model.projector).float().train()
    torch.manual_seed(cfg.seed)
    for module in projector.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = make_scheduler("cosine", optimizer, math.ceil(0.03 * cfg.steps), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    from llavakit.progress import bar as progress_bar

    bar = progress_bar(range(cfg.steps), desc="align", show=cfg.progress)
    losses = []
    for step in bar:
        pick = train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]
        loss = align_loss(projector(features(pick)), ids[pick], table, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(round(loss.item(), 5))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if cfg.progress and bar.disable and (step + 1) % max(1, cfg.steps // 5) == 0:  # a log, not a bar
            print(f"llavakit align: step {step + 1}/{cfg.steps}, loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
    projector.eval()
    background = index[(cfg.background,)] if (cfg.background,) in index else -1
    evaluated = held if len(held) else train
    accuracy, norm = evaluate_cells(projector, features, evaluated, ids, table, background)
    result = {
        "config": to_dict(cfg),
        "images": len(keep), "heldout_images": len(held), "unreadable": dict(report.bad),
        "targets": [" ".join(k) for k in keys],
        "final_loss": losses[-1], "loss_every_50": losses[::50],
        "cell_accuracy": accuracy,
        "cell_accuracy_on": "heldout images" if len(held) else "training images",
        "token_norm": norm,
        "target_norm": round(float(table.norm(dim=-1).mean()), 3),
        "seconds": round(time.time() - started, 1),
        "projector": str(out / "projector"),
    }
    if snap:
        model.projector.table = table.to(device=model.projector.table.device)
        result["snap_table_rows"] = len(keys)
    if model.config.projector.objects:  # the words the grouped objects are said in
        from llavakit.train.align_objects import object_buffers, size_cell_counts

        mode, side = tower.config.image_mode, tower.image_size
        sizes = size_cell_counts([images[i] for i in keep], by_image, cfg.size_field, lambda im: cell_centres(
            int(im["width"]), int(im["height"]), grid, mode, side)) if cfg.size_field else {}
        buffers = object_buffers(keys, cfg.background, sizes, model.tokenizer,
                                 model.language_model.get_input_embeddings().weight.detach())
        for name, value in buffers.items():
            setattr(model.projector, name, value.to(device=model.projector.table.device))
        result["object_size_cells"] = sizes
    save_projector(model, out / "projector")
    write_json(out / "projector" / "training.json", {  # provenance: evaluations tell held-out images apart
        "stage": "align", "data": str(Path(cfg.instances).resolve()),
        "image_folder": str(Path(cfg.image_folder).resolve()),
        "from": [json.loads(p.read_text(encoding="utf-8")) for p in [Path(cfg.model) / "training.json"] if p.is_file()]},
        indent=2)
    write_json(done, result, indent=2)  # last: marks the run finished
    return result


def build_align_config(base: dict, overrides: list[str]) -> AlignConfig:
    data = dict(base)
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(AlignConfig, data, "align")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instances", required=True, help="COCO instances JSON with boxes (e.g. scenes/instances.json)")
    parser.add_argument("--image-folder", required=True, help="folder of the images named in --instances")
    parser.add_argument("--out", required=True, help="output dir: OUT/projector is the artifact for stage 1 / 2")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="AlignConfig fields, e.g. model=nano (default) steps=1500 "
                             "words=[size,color,category]")


def run(args: argparse.Namespace) -> int:
    cfg = build_align_config({"instances": args.instances, "image_folder": args.image_folder,
                              "output_dir": args.out, "progress": not args.quiet}, args.overrides)
    result = run_alignment(cfg)
    acc = result["cell_accuracy"]
    print(f"aligned {result['images']} images in {result['seconds']:.0f} s: final loss {result['final_loss']:.4f}, "
          f"cell accuracy ({result['cell_accuracy_on']}) objects {acc['object_cells']}% / background "
          f"{acc['background_cells']}%, token norm {result['token_norm']} (targets {result['target_norm']})")
    print(f"projector: {result['projector']}  (stage 1 / 2: projector={result['projector']})")
    return 0
