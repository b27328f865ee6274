"""Where grounding is bounded: the LM side with ideal image tokens ("oracle"), at the quickstart's budget.

    python benchmarks/grounding_probe.py oracle --run runs/qs --out runs/probe/oracle
    python benchmarks/grounding_probe.py oracle --run runs/qs --out runs/probe/oracle_pos --position 1.0
    python benchmarks/grounding_probe.py oracle --run runs/qs --out runs/probe/oracle_objpos --position-words
    python benchmarks/grounding_probe.py oracle --run runs/qs --out runs/probe/snapped \
        --snap runs/qs/align/projector       # a trained connector's cells, each snapped to its nearest target

``oracle`` replaces the projected image tokens by the targets of ``llavakit align`` computed from
the annotations (per grid cell the mean of the LM's embeddings of its object's words, background
cells ``background``) — what a perfect token-level connector would deliver — and runs the nano
recipe's stage 2 on the quickstart run's own instruction data (same batch 4, steps, LLM lr, bf16
autocast where the CPU has it, image first), then the held-out ``eval synth`` questions with the
same oracle tokens, and blind (every cell ``background``). Accuracy here is what the LM, the data
and the budget can reach with ideal tokens; the gap to a trained connector is the connector's.

The loop is written here (not ``llavakit train``) because the oracle tokens come from annotations,
not from a tower: it mirrors the runner's stage 2 — AdamW, cosine with 3% warm-up, clip 1.0.
Prints one table; record it with the command in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from llavakit.conversation.processor import IGNORE_INDEX, place_image, to_messages
from llavakit.eval import synth
from llavakit.model import load_model
from llavakit.model.objects import HORIZONTAL, VERTICAL, third
from llavakit.train.align import build_align_config, word_table
from llavakit.train.align_boxes import cell_words, read_instances


def cell_region_words(grid: int) -> list[tuple[str, str]]:
    """Per cell (row-major) its vertical and horizontal third as words: ("top", "left"), ..."""
    return [(VERTICAL[third((r + 0.5) / grid)], HORIZONTAL[third((c + 0.5) / grid)])
            for r in range(grid) for c in range(grid)]


def oracle_ids(cfg, scenes: Path, grid: int, mode: str, size: int,
               position_words: bool = False) -> dict[str, list[tuple[str, ...]]]:
    """file name → per-cell word tuples from the split's annotations (+ object cells' region words)."""
    cfg.instances, cfg.image_folder = str(scenes / "instances.json"), str(scenes / "images")
    images, by_image, names = read_instances(cfg)
    regions = cell_region_words(grid)
    out = {}
    for im in images:
        cells = cell_words(im, by_image[int(im["id"])], names, cfg, grid, mode, size)
        if position_words:
            cells = [c if c == (cfg.background,) else (*c, *regions[i]) for i, c in enumerate(cells)]
        out[im["file_name"]] = cells
    return out


def annotated_objects(cfg, scenes: Path) -> dict[str, list[tuple[str, ...]]]:
    """file name → per object (reading order of box centres) its words: size, colour, shape, vertical,
    horizontal third — a text rendering of the scene (``--objects``)."""
    cfg.instances, cfg.image_folder = str(scenes / "instances.json"), str(scenes / "images")
    images, by_image, names = read_instances(cfg)
    out = {}
    for im in images:
        w, h = float(im["width"]), float(im["height"])
        objs = []
        for a in by_image[int(im["id"])]:
            x, y, bw, bh = a["bbox"]
            cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
            objs.append((round(cy * 3), cx, (a["size"], a["color"], names[a["category_id"]],
                                              VERTICAL[third(cy)], HORIZONTAL[third(cx)])))
        out[im["file_name"]] = [words for *_, words in sorted(objs)]
    return out


def cells_to_objects(keys: list[tuple[str, ...]], grid: int, background: tuple[str, ...],
                     size_cells: dict[str, float]) -> list[tuple[str, ...]]:
    """Per-cell snapped keys → objects as ``projector.objects`` groups, places and sizes them, as word tuples."""
    from llavakit.model.objects import centroid, group_cells, nearest_size

    order = sorted(set(keys) | {background})
    out = []
    for key, cells in group_cells([order.index(k) for k in keys], grid, order.index(background)):
        row, col = centroid(cells, grid)
        out.append((nearest_size(len(cells), size_cells), *order[key], VERTICAL[third(row)], HORIZONTAL[third(col)]))
    return out


def size_cell_counts(cfg, scenes: Path, grid: int, mode: str, size: int) -> dict[str, float]:
    """Per size word the median number of grid cells whose centre falls in an object's box (as align measures it)."""
    from llavakit.train.align_boxes import cell_centres
    from llavakit.train.align_objects import size_cell_counts as measure

    cfg.instances, cfg.image_folder = str(scenes / "instances.json"), str(scenes / "images")
    images, by_image, _ = read_instances(cfg)
    return measure(images, by_image, "size",
                   lambda im: cell_centres(int(im["width"]), int(im["height"]), grid, mode, size))


def render_objects(objects: list[tuple[str, ...]], n_tokens: int, tok, background: str) -> list[int]:
    """LM token ids: each object's words then a comma, the rest ``background``; cut at ``n_tokens``."""
    ids: list[int] = []
    for words in objects:
        for w in (*words, ","):
            ids += tok(" " + w if w != "," else ",", add_special_tokens=False)["input_ids"]
    bg = tok(" " + background, add_special_tokens=False)["input_ids"][0]
    return (ids + [bg] * n_tokens)[:n_tokens]


REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


def region_ids(cfg, scenes: Path) -> dict[str, list[tuple[str, ...]]]:
    """file name → per region (``REGIONS`` order, thirds of the image by box centre) the words of the
    smallest object centred there, or ``(background,)``."""
    cfg.instances, cfg.image_folder = str(scenes / "instances.json"), str(scenes / "images")
    images, by_image, names = read_instances(cfg)
    out = {}
    for im in images:
        w, h = float(im["width"]), float(im["height"])
        slots: list[tuple[float, tuple[str, ...]]] = [(float("inf"), (cfg.background,))] * 9
        for a in by_image[int(im["id"])]:
            x, y, bw, bh = a["bbox"]
            col, row = min(2, int(3 * (x + bw / 2) / w)), min(2, int(3 * (y + bh / 2) / h))
            words = tuple(str(names[a["category_id"]] if f == "category" else a[f]) for f in cfg.words)
            if bw * bh < slots[3 * row + col][0]:
                slots[3 * row + col] = (bw * bh, words)
        out[im["file_name"]] = [words for _, words in slots]
    return out


def snapped(projector: str, scenes: Path, keys: list, table: torch.Tensor, cells: dict) -> dict:
    """file name → per cell the key of the target row nearest (cosine) to ``projector``'s output, and
    the share of cells whose snapped key is the annotation's (printed: the connector's accuracy)."""
    import torch.nn.functional as F

    from llavakit.imaging import load_image
    from llavakit.train.feature_cache import FeatureCache

    model = load_model("nano", projector=projector)
    names = sorted(cells)
    paths = [str(scenes / "images" / n) for n in names]
    cache = FeatureCache(None, model.vision_tower)
    cache.build(paths, load_image, progress=False)
    unit = F.normalize(table.float(), dim=-1)
    out, right, total, obj_right, obj_total = {}, 0, 0, 0, 0
    with torch.no_grad():
        for k in range(0, len(paths), 256):
            feats = cache.get(paths[k:k + 256]).float()
            nearest = (F.normalize(model.projector.float()(feats), dim=-1) @ unit.T).argmax(-1)
            for n, row in zip(names[k:k + 256], nearest.tolist()):
                out[n] = [keys[j] for j in row]
                hits = [(a == b, len(b) > 1) for a, b in zip(out[n], cells[n])]
                right += sum(h for h, _ in hits)
                total += len(hits)
                obj_right += sum(h for h, o in hits if o)
                obj_total += sum(o for _, o in hits)
    print(f"snapped {scenes.name}: {100 * right / total:.1f}% of cells, {100 * obj_right / max(obj_total, 1):.1f}% of "
          "object cells name the annotation's words", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arm", choices=["oracle"])
    ap.add_argument("--run", required=True, help="a finished quickstart run dir (scenes + data)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=90)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--per-category", type=int, default=30)
    ap.add_argument("--position-words", action="store_true",
                    help="object cells also name their cell's region words (mean of colour, shape, vertical, horizontal)")
    ap.add_argument("--position", type=float, default=0.0,
                    help="add this times each cell's region-word embedding (top/middle/bottom + left/center/right)")
    ap.add_argument("--regions", choices=["none", "only", "after-cells"], default="none",
                    help="region tokens: per third of the image the LM's embeddings of its name (' top left') "
                         "then one token of its object's words; instead of the 49 cells or after them")
    ap.add_argument("--objects", type=int, default=0, metavar="N",
                    help="image tokens are a rendering of the scene's objects (size colour shape vertical "
                         "horizontal ,) padded to N tokens with background: from the annotations, or with "
                         "--snap from the snapped cells grouped into objects")
    ap.add_argument("--snap", metavar="PROJECTOR",
                    help="instead of the annotations' words: each cell's output of this (aligned) projector "
                         "snapped to its nearest target row (cosine) — a connector's content in the oracle's form")
    ap.add_argument("overrides", nargs="*", help="align settings for the oracle targets (e.g. words=[size,color,category])")
    args = ap.parse_intermixed_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model("nano")
    cfg = build_align_config({}, args.overrides)
    tower, tok = model.vision_tower, model.tokenizer
    grid = int(tower.num_tokens ** 0.5)
    train_cells, held_cells = (oracle_ids(cfg, run / "scenes" / split, grid, tower.config.image_mode, tower.image_size,
                                          args.position_words) for split in ("train", "heldout"))
    keys = sorted({k for cells in (*train_cells.values(), *held_cells.values()) for k in cells} | {(cfg.background,)})
    index = {k: i for i, k in enumerate(keys)}
    emb = model.language_model.get_input_embeddings().weight.detach().clone()  # frozen, as a saved table
    table = word_table(keys, tok, emb)
    where = args.position * word_table(cell_region_words(grid), tok, emb)  # (N, D), zero unless --position
    if args.snap:  # replace the annotations' cell words by the projector's nearest target row
        train_cells, held_cells = (snapped(args.snap, run / "scenes" / split, keys, table, cells)
                                   for split, cells in (("train", train_cells), ("heldout", held_cells)))

    if args.objects:
        if args.snap:
            sizes = size_cell_counts(cfg, run / "scenes" / "train", grid, tower.config.image_mode, tower.image_size)
            print(f"cells per size word: {sizes}", file=sys.stderr)
            train_objs, held_objs = ({n: cells_to_objects(c, grid, (cfg.background,), sizes) for n, c in cells.items()}
                                     for cells in (train_cells, held_cells))
            truth = annotated_objects(cfg, run / "scenes" / "heldout")
            exact = sum(sorted(held_objs[n]) == sorted(truth[n]) for n in truth)
            print(f"held-out scenes rendered exactly: {100 * exact / len(truth):.1f}%", file=sys.stderr)
        else:
            train_objs, held_objs = (annotated_objects(cfg, run / "scenes" / split) for split in ("train", "heldout"))
        train_cells, held_cells = ({n: render_objects(o, args.objects, tok, cfg.background) for n, o in objs.items()}
                                   for objs in (train_objs, held_objs))
        model.processor.num_image_tokens = args.objects
        bg_id = tok(" " + cfg.background, add_special_tokens=False)["input_ids"][0]

    train_regions, held_regions = (region_ids(cfg, run / "scenes" / split) for split in ("train", "heldout"))
    rkeys = sorted({k for r in (*train_regions.values(), *held_regions.values()) for k in r} | {(cfg.background,)})
    rindex = {k: i for i, k in enumerate(rkeys)}
    rtable = word_table(rkeys, tok, emb)
    markers = [emb[tok(" " + name, add_special_tokens=False)["input_ids"]].float() for name in REGIONS]
    regions_of = {"train": train_regions, "heldout": held_regions}

    def tokens(names: list[str], cells: dict, blind: bool = False) -> torch.Tensor:
        if args.objects:
            rows = [[bg_id] * args.objects if blind else cells[n] for n in names]
            return emb[torch.tensor(rows)].float()
        bg = index[(cfg.background,)]
        ids = [[bg] * tower.num_tokens if blind else [index[k] for k in cells[n]] for n in names]
        grid_tokens = table[torch.tensor(ids)] + where  # (B, N, D): fed as already-projected features
        if args.regions == "none":
            return grid_tokens
        regions = regions_of["train" if cells is train_cells else "heldout"]
        rows = []
        for n in names:
            content = [rtable[rindex[(cfg.background,)] if blind else rindex[k]] for k in regions[n]]
            rows.append(torch.cat([torch.cat([m, c[None]]) for m, c in zip(markers, content)]))
        region_tokens = torch.stack(rows)
        return region_tokens if args.regions == "only" else torch.cat([grid_tokens, region_tokens], 1)

    if args.regions != "none":
        n_region = sum(len(m) + 1 for m in markers)
        model.processor.num_image_tokens = n_region + (tower.num_tokens if args.regions == "after-cells" else 0)
        print(f"image tokens per image: {model.processor.num_image_tokens}", file=sys.stderr)

    model.projector = torch.nn.Identity()  # image_features are the oracle tokens themselves
    lm = model.language_model.float().train()
    lm.requires_grad_(True)
    records = json.loads((run / "data" / "instruct.json").read_text(encoding="utf-8"))  # used in file order
    if args.steps * args.batch > len(records):
        raise SystemExit(f"--steps {args.steps} x --batch {args.batch} needs more than the {len(records)} records "
                         f"of {run / 'data' / 'instruct.json'}")
    from transformers import get_scheduler

    from llavakit.train.precision import cpu_has_bf16

    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=max(1, round(0.03 * args.steps)),
                          num_training_steps=args.steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_bf16() else nullcontext()
    start, losses = time.time(), []
    pad = tok.pad_token_id
    for step in range(args.steps):
        batch = records[step * args.batch:(step + 1) * args.batch]
        encs = [model.processor.encode(place_image(to_messages(r["conversations"], r["id"]), "<image>", "first", None))
                for r in batch]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e)) for e in encs])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e)) for e in encs])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encs])
        with autocast:
            loss = model(ids, mask, image_features=tokens([r["image"] for r in batch], train_cells), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 4))
        if step % 10 == 0:
            print(f"step {step} loss {losses[-1]:.4f} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    train_s = time.time() - start
    lm.eval()

    facts, folder = synth.load_scenes(run / "scenes" / "heldout")
    questions = synth.make_questions(facts, folder.name, args.per_category, 0)
    result = {"arm": args.arm, "align": vars(cfg), "position": args.position, "position_words": args.position_words, "regions": args.regions, "objects": args.objects, "snap": args.snap, "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "train_seconds": round(train_s, 1), "final_loss": losses[-1], "conditions": {}}
    for blind in (False, True):
        answers = {}
        for i in range(0, len(questions), 8):
            chunk = questions[i:i + 8]
            prompts = [model.processor.encode_prompt(
                place_image(to_messages([{"from": "human", "value": "<image>\n" + q["text"]}]), "<image>", "first", None))
                for q in chunk]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            feats = tokens([Path(q["image"]).name for q in chunk], held_cells, blind)
            new = model.generate(ids, mask, image_features=feats, max_new_tokens=16)
            for q, row in zip(chunk, new):
                answers[q["question_id"]] = model.decode(row).strip()
        scores, _ = synth.score_answers(questions, answers)
        result["conditions"]["blind" if blind else "image"] = scores
    (out / "probe.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    img, bl = result["conditions"]["image"], result["conditions"]["blind"]
    print("| category | oracle tokens (%) | blind (%) |\n| --- | --- | --- |")
    for cat in synth.CATEGORIES:
        if cat in img["categories"]:
            print(f"| {cat} | {img['categories'][cat]['accuracy']:.1f} | {bl['categories'][cat]['accuracy']:.1f} |")
    print(f"| overall | {img['accuracy']:.1f} | {bl['accuracy']:.1f} |")
    print(f"stage 2 with oracle tokens: {args.steps} steps in {train_s:.0f} s, final loss {losses[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
