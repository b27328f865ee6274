"""`llavakit quickstart`: one command from nothing to a trained, evaluated visual assistant.

Steps (each resumable; a rerun skips finished steps and continues an interrupted one):

1. ``scenes``  — synthetic annotated scenes: a training split and a held-out split (disjoint seed),
2. ``data``    — the stage-1 caption set and the instruction set (template teacher, or an LLM),
   ``align``   — token-level projector alignment from the scenes' boxes (``llavakit align``), when
                 the budget asks for it (``nano``, ``tiny``): stage 1 starts from its projector,
3. ``stage1``  — feature alignment: only the projector trains, on captions,
4. ``stage2``  — visual instruction tuning: projector + LLM,
5. ``eval``    — ``eval synth`` (+ blind) and ``eval pope`` on the held-out split,
6. ``report``  — report.md with the tables, loss curves, accuracy bars, an answer grid.

Every step's result is written to ``OUT/steps/<step>.json`` (:class:`~llavakit.pipelines.steps.Steps`);
how much each step does is a named :class:`Budget` (``--budget nano|tiny``: sizes and training overrides).
``--seed S`` draws another training split, data, alignment and training order (the held-out split stays
the same, so two seeds are compared on the same questions); ``S = 0`` is the run the docs report.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llavakit.errors import ConfigError
from llavakit.pipelines.steps import Steps

STEPS = ("scenes", "data", "align", "stage1", "stage2", "eval", "report")
HELDOUT_SEED = 1000  # disjoint from every training seed (0-999): see llavakit.datagen.scenes
TRAIN_SEED_BASE = 42  # TrainConfig's default seed; --seed S trains with 42 + S


@dataclass
class Budget:
    """How much of everything a quickstart does."""

    model: str  # model preset
    train_scenes: int
    heldout_scenes: int
    captions: int  # stage-1 (image, caption) pairs
    types: str  # instruction types for `llavakit datagen` (type or type:variants)
    vqa_questions: int  # short questions per vqa sample
    align: list[str] | None = None  # `llavakit align` overrides; None: no alignment step
    stage1: list[str] | None = field(default_factory=list)  # training overrides; None: no stage 1 (snap models)
    stage2: list[str] = field(default_factory=list)
    per_category: int = 50  # eval synth questions per category
    pope_images: int = 100
    min_objects: int = 1
    max_objects: int = 8
    cpu_bf16: bool = False  # bf16 autocast when the CPU computes bf16 natively (1.5x here, same loss)


BUDGETS: dict[str, Budget] = {
    "nano": Budget(
        # objects said in words: the snapped cells grouped into objects with their size and place (85.9% vs 34.1%
        # blind over 3 seeds, against 63.8% vs 45.2% for the snapped grid of nano-words; docs/training.md)
        model="nano-objects",
        train_scenes=4000,  # all for the align step (1,000 held-out cell accuracy 46.4%, 4,000: 55.1%)
        heldout_scenes=150,
        captions=2000,  # written by the data step (llavakit train --stage 1 can use them); nano-objects has no stage 1
        types="vqa",
        vqa_questions=8,
        # nano-objects' 14x14 grid: held-out 85.9% mean of 3 seeds (7x7 at 3000 steps: 76.7%); docs/training.md
        align=["steps=1000", "contrastive_weight=3.0"],
        stage1=None,  # nano-objects snaps its tokens: nothing for stage 1 to train
        stage2=["per_device_batch_size=2", "gradient_accumulation_steps=2", "max_steps=90", "optim.lr=1e-4",
                "optim.projector_lr=1e-3"],
        per_category=30,
        pope_images=40,
        min_objects=1,
        max_objects=3,
        cpu_bf16=True,
    ),
    "tiny": Budget(
        model="tiny-random",
        train_scenes=48,
        heldout_scenes=16,
        captions=48,
        types="vqa,conversation,detail,reasoning",
        vqa_questions=4,
        align=["steps=20"],
        stage1=["per_device_batch_size=8", "epochs=1", "optim.lr=1e-3"],
        stage2=["per_device_batch_size=8", "epochs=1", "optim.lr=1e-3"],
        per_category=4,
        pope_images=8,
    ),
}


@dataclass
class Teacher:
    kind: str = "template"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


class Quickstart:
    def __init__(self, out: str | Path, budget_name: str = "nano", teacher: Teacher | None = None, progress: bool = True,
                 budget: Budget | None = None, seed: int = 0):
        """The budget ``BUDGETS[budget_name]``, or ``budget`` recorded under that name."""
        if budget is None and budget_name not in BUDGETS:
            raise ConfigError(f"unknown quickstart budget {budget_name!r}; known: {', '.join(BUDGETS)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < HELDOUT_SEED:
            raise ConfigError(f"--seed {seed!r}: must be an integer from 0 to {HELDOUT_SEED - 1} "
                              f"({HELDOUT_SEED} draws the held-out split)")
        self.seed = seed
        self.out = Path(out)
        self.budget_name = budget_name
        self.budget = budget or BUDGETS[budget_name]
        self.teacher = teacher or Teacher()
        self.progress = progress
        self.steps = Steps(self.out, {"budget_name": budget_name, "budget": asdict(self.budget),
                                      "teacher": asdict(self.teacher), "seed": seed})
        self.paths = {
            "train": self.out / "scenes" / "train",
            "heldout": self.out / "scenes" / "heldout",
            "captions": self.out / "data" / "captions.json",
            "instruct": self.out / "data" / "instruct.json",
            "align": self.out / "align",
            "stage1": self.out / "stage1",
            "stage2": self.out / "stage2",
            "eval": self.out / "eval",
        }

    # --- steps ------------------------------------------------------------------------------

    def scenes(self) -> dict:
        from llavakit.datagen.scenes_cli import generate_scenes
        from llavakit.datagen.world import SceneConfig

        cfg = SceneConfig(min_objects=self.budget.min_objects, max_objects=self.budget.max_objects)
        train = generate_scenes(self.paths["train"], self.budget.train_scenes, seed=self.seed, cfg=cfg, progress=self.progress)
        held = generate_scenes(self.paths["heldout"], self.budget.heldout_scenes, seed=HELDOUT_SEED, cfg=cfg,
                               progress=self.progress)
        return {"train": train.get("images", self.budget.train_scenes), "heldout": held.get("images", self.budget.heldout_scenes)}

    def data(self) -> dict:
        from llavakit.datagen.pipeline import DatagenConfig, run_datagen
        from llavakit.datagen.stage1 import build_caption_set
        from llavakit.llm_client import LLMConfig

        train = self.paths["train"]
        caps = build_caption_set(train / "captions.json", self.paths["captions"], seed=self.seed, limit=self.budget.captions)
        llm = None
        if self.teacher.kind == "openai":
            llm = LLMConfig(model=self.teacher.model, base_url=self.teacher.base_url, api_key_env=self.teacher.api_key_env)
        stats = run_datagen(DatagenConfig(
            captions=str(train / "captions.json"), instances=str(train / "instances.json"),
            out=str(self.paths["instruct"]), types=self.budget.types, teacher=self.teacher.kind,
            vqa_questions=self.budget.vqa_questions, progress=self.progress, llm=llm, seed=self.seed,
        ))
        return {"captions": caps, "instruct": stats}

    def _stage1_start(self, pretrained: bool) -> list[str]:
        """Stage 1 on the captions with ``plain``, from the alignment when the budget has one."""
        base = ["stage=1", "template=plain"]
        if self.budget.align is not None:
            base.append(f"projector={self.paths['align'] / 'projector'}")
        return base

    def _stage2_start(self, pretrained: bool) -> list[str]:
        """Stage 2 from stage 1's projector (or the alignment's when there is no stage 1), or fresh."""
        from llavakit.train.stages import FRESH_PROJECTOR

        projector = self.paths["stage1"] / "projector" if pretrained else FRESH_PROJECTOR
        if pretrained and self.budget.stage1 is None:  # no stage 1: stage 2 starts from the alignment
            projector = self.paths["align"] / "projector"
        return ["stage=2", f"projector={projector}"]

    def train(self, stage: int, overrides: list[str], data: Path | None = None, out: Path | None = None,
              pretrained: bool = True, model: str | None = None) -> dict:
        """One training run of this budget's model (or ``model``) on the training scenes (resumes a
        checkpoint); ``pretrained=False`` starts stage 2 from a fresh projector."""
        from llavakit.train import build_config, run

        start, default_data, default_out = {1: (self._stage1_start, "captions", "stage1"),
                                            2: (self._stage2_start, "instruct", "stage2")}[stage]
        data, out = data or self.paths[default_data], out or self.paths[default_out]
        base = start(pretrained)
        cfg = build_config(
            {"model": model or self.budget.model, "output_dir": str(out)},
            overrides=[*base, f"data.path={data}", f"data.image_folder={self.paths['train'] / 'images'}",
                       "checkpoint.every=25", "checkpoint.keep_last=1", f"progress={self.progress}",
                       f"seed={TRAIN_SEED_BASE + self.seed}", *overrides],
        )
        from llavakit.train import checkpoints as train_checkpoints
        from llavakit.train.precision import cpu_has_bf16

        if self.budget.cpu_bf16 and cpu_has_bf16():
            cfg.mixed_precision = "bf16"

        resume = train_checkpoints.latest_checkpoint(out) is not None
        return run(cfg, resume=resume).to_dict()

    def align(self) -> dict:
        """Token-level alignment of the projector on the training scenes' boxes (``llavakit align``)."""
        if self.budget.align is None:
            return {"skipped": "this budget has no alignment step"}
        from llavakit.train.align import build_align_config, run_alignment

        train = self.paths["train"]
        cfg = build_align_config({"model": self.budget.model, "instances": str(train / "instances.json"),
                                  "image_folder": str(train / "images"), "output_dir": str(self.paths["align"]),
                                  "progress": self.progress, "seed": self.seed}, self.budget.align)
        return run_alignment(cfg)

    def stage1(self) -> dict:
        if self.budget.stage1 is None:
            return {"skipped": "this budget's model snaps its tokens to words: stage 1 has nothing to train"}
        return self.train(1, self.budget.stage1)

    def stage2(self) -> dict:
        return self.train(2, self.budget.stage2)

    @property
    def model_dir(self) -> Path:
        return self.paths["stage2"] / "model"

    def eval(self) -> dict:
        return self.evaluate(self.model_dir, self.paths["eval"], blind=True, paraphrase=True)

    def evaluate(self, model_dir: Path, out: Path, blind: bool, paraphrase: bool = False) -> dict:
        """``eval synth`` (+ blind, + paraphrased) and ``eval pope`` of ``model_dir`` on the held-out split."""
        from llavakit.eval import pope, synth
        from llavakit.model import load_model

        model = load_model(str(model_dir))
        syn = synth.evaluate(model, self.paths["heldout"], out / "synth", blind=blind,
                             per_category=self.budget.per_category, progress=self.progress, paraphrase=paraphrase)
        pop = pope.evaluate(model, self.paths["heldout"], out / "pope", max_images=self.budget.pope_images,
                            progress=self.progress)
        return {"synth": syn, "pope": pop}

    def report(self) -> dict:
        from llavakit.pipelines.report import write_report

        steps = {name: self.steps.done(name) or {} for name in STEPS if name != "report"}
        return write_report(self.out, self.budget_name, self.paths, steps, self.model_dir, self.seed)

    # --- driver -----------------------------------------------------------------------------

    def run(self, say: Callable[[str], None] = print) -> dict:
        self.steps.claim()
        timings = {}
        for i, name in enumerate(STEPS, 1):
            result = self.steps.run(name, getattr(self, name), say, f"[{i}/{len(STEPS)}] ", redo=name == "report")
            timings[name] = result.get("_seconds", 0.0)
        return timings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    parser.add_argument("--budget", default="nano", choices=sorted(BUDGETS),
                        help="nano: the embedded default (real weights); tiny: a random tiny model, plumbing only")
    parser.add_argument("--teacher", default="template", choices=("template", "openai"),
                        help="who writes conversation/detail/reasoning data (vqa always comes from the annotations)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint for --teacher openai")
    parser.add_argument("--model", dest="teacher_model", help="teacher model name for --teacher openai")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the teacher's API key")
    parser.add_argument("--seed", type=int, default=0,
                        help="another training split, data and training order (0-999; the held-out split stays)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    teacher = Teacher(args.teacher, args.base_url, args.teacher_model, args.api_key_env)
    if teacher.kind == "openai" and not teacher.model:
        raise ConfigError("--teacher openai needs --model (and --base-url for a server other than OpenAI)")
    qs = Quickstart(args.out, args.budget, teacher, progress=not args.quiet, seed=args.seed)
    start = time.time()
    qs.run(say=lambda text: print(f"llavakit quickstart: {text}", file=sys.stderr, flush=True))
    report = qs.steps.done("report") or {}
    print(report.get("summary", ""))
    print(f"\nreport: {qs.out / 'report.md'}  (total {time.time() - start:.0f} s this run)")
    model = qs.model_dir
    image = report.get("example_image", str(qs.paths["heldout"] / "images"))
    print("\nTalk to the trained model:")
    print(f"  llavakit chat {model} --image {image}")
    print(f"  llavakit serve {model}        # OpenAI-compatible API + web chat at http://127.0.0.1:8000/")
    return 0
