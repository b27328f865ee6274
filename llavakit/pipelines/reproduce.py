"""`llavakit reproduce`: the paper's findings as measured rows on the synthetic world.

Shared steps (the quickstart's, resumable): scenes, data (all instruction types), stage 1. Then one
stage-2 run per row, every row with the same budget (the same number of training samples and
steps), and the same evaluation: ``eval synth`` accuracy, POPE F1 and the held-out answer loss per
instruction type with the right image and with a mismatched one (:mod:`llavakit.eval.answer_loss`).

Rows
- ``full``       two-stage, vqa + conversation + detail + reasoning (also evaluated blind: claim a),
- ``stage2-only`` the same data, stage 2 only — the projector is not pretrained (no ``align``, no stage 1;
  paper Table 8): claim b. A model whose tokens are snapped to words cannot start without the
  alignment's word tables, so this row trains the study's ``unaligned_model`` (``nano``: the
  paper's mlp2x_gelu connector, learning only in stage 2),
- ``conv``, ``conv+detail``: the instruction mix of paper Table 4 (with ``full`` as "+ reasoning"):
  claim c. Every mix keeps the same short-answer (vqa) half, so accuracy is comparable.
- ``clip-layer`` (claim d): a tiny *random* CLIP tower with ``feature_layer`` −1 vs −2 — it only
  checks that the switch selects different features and that both train; no quality claim.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from llavakit.errors import ConfigError
from llavakit.pipelines.quickstart import BUDGETS, Budget, Quickstart

ALL_TYPES = ("conversation", "detail", "reasoning")


@dataclass(frozen=True)
class Row:
    name: str
    claim: str  # what the row is
    claims: str  # which of the paper's claims (a-c) it measures
    types: tuple[str, ...]  # instruction types mixed with the vqa half
    pretrained: bool = True  # stage 2 starts from the budget's pre-stage (align and/or stage 1), else fresh
    blind: bool = False


ROWS = (
    Row("full", "two-stage; vqa + conversation + detail + reasoning", "a, b, c", ALL_TYPES, blind=True),
    Row("stage2-only", "stage 2 only (no alignment pretraining)", "b", ALL_TYPES, pretrained=False),
    Row("conv", "vqa + conversation", "c", ("conversation",)),
    Row("conv+detail", "vqa + conversation + detail", "c", ("conversation", "detail")),
)


@dataclass
class Study:
    """One ablation study: the shared budget and what every row trains on."""

    base: Budget  # scenes, data and stage 1 (shared by every row)
    samples: int  # stage-2 training samples per row: half vqa, half the row's instruction types
    stage2: list[str] = field(default_factory=list)
    heldout_images: int = 40  # held-out images whose conversation/detail/reasoning answers are scored
    unaligned_model: str | None = None  # the model of rows with no pre-stage, when base.model cannot start without one



STUDIES: dict[str, Study] = {
    "nano": Study(
        # the quickstart's recipe (align -> snapped objects -> stage 2) with every instruction type in the data;
        # stage 2 as the quickstart's (90 steps x 4 samples), half of its samples vqa
        base=replace(BUDGETS["nano"], types="vqa,conversation,detail,reasoning"),
        samples=360,
        stage2=BUDGETS["nano"].stage2,
        heldout_images=30,
        unaligned_model="nano",
    ),
    "paper": Study(
        # the paper's recipe as measured in docs/reproduction.md: no align step (claim b compares stage 1
        # against none), 1,000 scenes, stage 1 on 1,000 captions x 1.5 epochs
        base=replace(BUDGETS["nano"], model="nano", types="vqa,conversation,detail,reasoning", per_category=30,
                     pope_images=40,
                     align=None, train_scenes=1000, captions=1000,
                     stage1=["per_device_batch_size=8", "epochs=1.5", "optim.lr=2e-3"]),
        samples=320,
        stage2=["per_device_batch_size=4", "epochs=1", "optim.lr=1e-4", "optim.projector_lr=1e-3"],
        heldout_images=30,
    ),
    "tiny": Study(
        base=replace(BUDGETS["tiny"], types="vqa,conversation,detail,reasoning", align=None),
        samples=32,
        stage2=BUDGETS["tiny"].stage2,
        heldout_images=6,
    ),
}


def mix(records: list[dict], row: Row, samples: int, seed: int = 0) -> list[dict]:
    """``samples`` records: half vqa, the other half split evenly across ``row.types`` (seeded)."""
    by_type: dict[str, list[dict]] = {}
    for rec in records:
        by_type.setdefault(rec.get("type", ""), []).append(rec)
    rng = random.Random(seed)
    want = {"vqa": samples // 2}
    rest = samples - want["vqa"]
    for i, kind in enumerate(row.types):
        want[kind] = rest // len(row.types) + (1 if i < rest % len(row.types) else 0)
    out = []
    for kind, n in want.items():
        pool = by_type.get(kind, [])
        if len(pool) < n:
            raise ConfigError(f"row {row.name}: needs {n} {kind} records, the data has {len(pool)}")
        out.extend(rng.sample(pool, n))
    rng.shuffle(out)
    return out


def layer_switch_check(captions: Path, image_folder: Path, out: Path, steps: int = 8) -> dict:
    """Tiny random CLIP, ``feature_layer`` −2 vs −1: the same tower weights give different features,
    and a short stage 1 trains with each. Checks the switch only (random weights: no quality claim)."""
    import torch

    from llavakit.imaging import load_image
    from llavakit.model import build_model, get_preset, save_pretrained
    from llavakit.train import build_config, run

    records = json.loads(Path(captions).read_text(encoding="utf-8"))
    images = [load_image(Path(image_folder) / r["image"]) for r in records[:4]]
    feats, result = {}, {}
    for layer in (-2, -1):
        cfg = get_preset("tiny-random")
        cfg.vision.feature_layer = layer
        torch.manual_seed(0)  # the same random tower for both layers
        model = build_model(cfg)
        with torch.no_grad():
            feats[layer] = model.vision_tower(model.preprocess(images))
        init = save_pretrained(model, out / f"layer{layer}" / "init")
        train = run(build_config({"model": str(init), "output_dir": str(out / f"layer{layer}" / "stage1")},
                                 overrides=["stage=1", "template=plain", f"data.path={captions}",
                                            f"data.image_folder={image_folder}", f"max_steps={steps}",
                                            "per_device_batch_size=8", "optim.lr=1e-3"]))
        result[f"layer{layer}"] = {"feature_shape": list(feats[layer].shape), "final_loss": train.final_loss,
                                   "steps": train.steps}
    result["feature_max_abs_diff"] = float((feats[-2] - feats[-1]).abs().max())
    result["note"] = "random tiny CLIP: checks the feature_layer switch only, not quality"
    return result


class Reproduce:
    def __init__(self, out: str | Path, study: str = "nano", progress: bool = True, rows: list[str] | None = None):
        if study not in STUDIES:
            raise ConfigError(f"unknown reproduce study {study!r}; known: {', '.join(STUDIES)}")
        known = [r.name for r in ROWS] + ["clip-layer"]
        for name in rows or []:
            if name not in known:
                raise ConfigError(f"unknown row {name!r}; known: {', '.join(known)}")
        self.out = Path(out)
        self.study_name = study
        self.study = STUDIES[study]
        self.rows = rows or known
        self.qs = Quickstart(self.out, f"reproduce-{study}", progress=progress, budget=self.study.base)
        self.progress = progress

    def heldout_data(self) -> dict:
        from llavakit.datagen.pipeline import DatagenConfig, run_datagen

        held = self.qs.paths["heldout"]
        stats = run_datagen(DatagenConfig(
            captions=str(held / "captions.json"), instances=str(held / "instances.json"),
            out=str(self.out / "data" / "heldout_instruct.json"), types=",".join(ALL_TYPES), teacher="template",
            limit=self.study.heldout_images, progress=self.progress,
        ))
        return {"heldout_instruct": stats}

    def row(self, row: Row) -> dict:
        from llavakit.eval import answer_loss
        from llavakit.model import load_model

        records = json.loads(self.qs.paths["instruct"].read_text(encoding="utf-8"))
        data = self.out / "rows" / row.name / "train.json"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text(json.dumps(mix(records, row, self.study.samples)), encoding="utf-8")
        out = self.out / "rows" / row.name / "stage2"
        model = None if row.pretrained else self.study.unaligned_model
        train = self.qs.train(2, self.study.stage2, data=data, out=out, pretrained=row.pretrained, model=model)
        result = self.qs.evaluate(out / "model", self.out / "rows" / row.name / "eval", blind=row.blind)
        held = json.loads((self.out / "data" / "heldout_instruct.json").read_text(encoding="utf-8"))
        trained = load_model(str(out / "model"))
        result["answer_loss"] = answer_loss.evaluate(trained, held, self.qs.paths["heldout"] / "images",
                                                     progress=self.progress)
        result["train"] = {k: train[k] for k in ("steps", "samples", "seconds") if k in train}
        return result

    def clip_layer(self) -> dict:
        return layer_switch_check(self.qs.paths["captions"], self.qs.paths["train"] / "images",
                                  self.out / "rows" / "clip-layer")

    def run(self, say=print) -> dict:
        steps = self.qs.steps
        steps.claim()
        for name in ("scenes", "data", "align", "stage1"):
            steps.run(name, getattr(self.qs, name), say, "[shared] ")
        steps.run("heldout_data", self.heldout_data, say, "[shared] ")
        results = {}
        for row in ROWS:
            if row.name in self.rows:
                results[row.name] = steps.run(f"row-{row.name}", lambda r=row: self.row(r), say, "[row] ")
        if "clip-layer" in self.rows:
            results["clip-layer"] = steps.run("row-clip-layer", self.clip_layer, say, "[row] ")
        from llavakit.pipelines.report import write_reproduction

        write_reproduction(self.out, self.study_name, self.study, ROWS, ALL_TYPES, results)
        return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/ablations", help="output directory (default runs/ablations)")
    parser.add_argument("--study", default="nano", choices=sorted(STUDIES),
                        help="nano: the quickstart's recipe (align, snapped objects); paper: the paper's (stage 1 on "
                             "captions, mlp2x_gelu); tiny: a random tiny model, plumbing only")
    parser.add_argument("--rows", help="comma-separated subset of rows (default all): "
                        + ", ".join([r.name for r in ROWS] + ["clip-layer"]))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    rows = [r for r in args.rows.split(",") if r] if args.rows else None
    rep = Reproduce(args.out, args.study, progress=not args.quiet, rows=rows)
    start = time.time()
    rep.run(say=lambda text: print(f"llavakit reproduce: {text}", file=sys.stderr, flush=True))
    print((rep.out / "reproduction.md").read_text(encoding="utf-8"))
    print(f"table: {rep.out / 'reproduction.md'}  plot: {rep.out / 'reproduction.png'}  "
          f"({time.time() - start:.0f} s this run)")
    return 0
