"""What a finished run leaves: its artifact (a projector or a model directory, gathered from
FSDP / DeepSpeed shards when sharded), ``training.json`` provenance, the loss plot and ``result.json``."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from llavakit.errors import LlavakitError
from llavakit.io import atomic_write_json
from llavakit.train.config import TrainConfig
from llavakit.train.metrics import plot_loss
from llavakit.train.stages import FRESH_PROJECTOR, get_stage


def say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(f"llavakit train: {text}", file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    stage: int | str
    output_dir: str
    artifact: str  # stage 1: projector dir; else: the llavakit checkpoint dir
    final_loss: float | None
    steps: int
    samples: int
    seconds: float
    global_batch: int
    metrics: str
    loss_plot: str | None
    skipped: int  # examples not trained on (bad records, too long, unreadable images)

    def to_dict(self) -> dict:
        return asdict(self)


def save_artifact(cfg: TrainConfig, accelerator, model, out: Path, rebuild: Callable) -> Path:
    """Write the stage's artifact; ``rebuild()`` gives a fresh unsharded model to gather shards into."""
    from llavakit.model import save_pretrained, save_projector

    artifact = get_stage(cfg.stage).artifact
    target = out / artifact
    final = accelerator.unwrap_model(model)
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full = accelerator.get_state_dict(model)  # gathered on the main process
        if accelerator.is_main_process:
            final = rebuild()
            result = final.load_state_dict(full, strict=False)
            if result.missing_keys or result.unexpected_keys:  # never save fresh weights as the trained ones
                raise LlavakitError(
                    f"the gathered {accelerator.distributed_type.value} state dict does not match the model: "
                    f"{len(result.missing_keys)} missing (first: {result.missing_keys[:3]}), "
                    f"{len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[:3]}); "
                    "nothing was saved"
                )
    if accelerator.is_main_process:
        (save_projector if artifact == "projector" else save_pretrained)(final, target)
        write_provenance(cfg, target)
        if hasattr(final.language_model, "peft_config"):  # tune=lora: the adapter as PEFT writes it, too
            final.language_model.save_pretrained(out / "adapter")
            save_projector(final, out / "adapter" / "projector")
    return target


PROVENANCE = "training.json"


def write_provenance(cfg: TrainConfig, target: Path) -> None:
    """``training.json`` beside an artifact: what it was trained on, and what its start was trained on
    (so evaluations can tell held-out images from training images)."""
    def absolute(p):
        return str(Path(p).resolve()) if p else None

    earlier = []  # what this run started from: its projector artifact and its model, when recorded
    projector_dir = None  # an artifact is a directory or its .safetensors
    if cfg.projector and cfg.projector != FRESH_PROJECTOR:
        projector_dir = Path(cfg.projector) if Path(cfg.projector).is_dir() else Path(cfg.projector).parent
    model_dir = Path(cfg.model) if Path(cfg.model).is_dir() else None  # a preset has no record
    for base_dir in dict.fromkeys(d for d in (projector_dir, model_dir) if d is not None):
        if (base_dir / PROVENANCE).is_file():
            earlier.append(json.loads((base_dir / PROVENANCE).read_text(encoding="utf-8")))
    record = {"stage": cfg.stage, "data": absolute(cfg.data.path), "image_folder": absolute(cfg.data.image_folder),
              "from": earlier}
    atomic_write_json(target / PROVENANCE, record)


def finish(cfg, accelerator, out: Path, artifact: Path, position, started: float, global_batch: int, skipped: int):
    from llavakit.train.metrics import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    plot = plot_loss(out / "metrics.jsonl", out / "loss.png", f"stage {cfg.stage} — {cfg.model}") \
        if accelerator.is_main_process else None
    result = TrainResult(
        stage=cfg.stage,
        output_dir=str(out),
        artifact=str(artifact),
        final_loss=losses[-1] if losses else None,
        steps=position.step,
        samples=position.samples,
        seconds=round(time.time() - started, 2),
        global_batch=global_batch,
        metrics=str(out / "metrics.jsonl"),
        loss_plot=str(plot) if plot else None,
        skipped=skipped,
    )
    if accelerator.is_main_process:
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        say(accelerator, f"done in {result.seconds:.1f} s: {position.step} steps, final loss "
             f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}; wrote {artifact}")
    return result
