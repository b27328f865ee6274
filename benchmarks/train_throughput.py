"""Training throughput: llavakit vs transformers ``LlavaForConditionalGeneration`` + ``Trainer``.

Same model (a randomly initialised CLIP ViT — ViT-L/14 at 224 by default, the paper's shape — an
mlp2x_gelu projector and the embedded SmolLM2-135M), same data, same tokens, same batch. The
baseline uses the original LLaVA repo's training settings (gradient checkpointing on, lazy image
loading and preprocessing per sample, vision tower run every step, full-vocabulary logits, HF
Trainer with AdamW / cosine / 3% warmup, no weight decay); llavakit uses its defaults (frozen-
feature cache, logits only where supervised, length-grouped batches, no checkpointing).

Every measurement runs in its own subprocess (clean peak memory), stacks alternate, and the fp32
matmul peak of this machine is measured in the same run. Reported per stage and stack:

- samples/s over the timed steps (wall time between optimizer steps, after warm-up steps),
- peak memory (max RSS of the worker process; CUDA: max allocated),
- MFU = useful model FLOPs/s / fp32 matmul peak. Useful FLOPs per sample: LM body 6·N·T (stage 2)
  or 4·N·T (stage 1: forward + activation gradients, no LM weight gradients), attention
  12·L·T²·d (stage 1: 8·L·T²·d), LM head only on supervised tokens, the projector; the frozen
  tower's forward is not counted (it is a cacheable feature extractor). Both stacks are charged
  the same useful FLOPs, so MFU ratios equal throughput ratios.
- stage 1 also "incl. cache build": samples/s if the tower pass that fills the cache is charged
  to this one epoch (each image seen once).

    python benchmarks/train_throughput.py                       # defaults (a few minutes per worker on a CPU)
    python benchmarks/train_throughput.py --batch 2 --steps 1 --rounds 1 --tower vit-b-16   # quick proof
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TOWERS = {
    "vit-l-14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "image_size": 224, "patch_size": 14},
    "vit-b-16": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "image_size": 224, "patch_size": 16},
}
WORDS = ("the a red blue green small large dog cat person table street car tree sky window left right near "
         "behind holding standing sitting wooden metal white black bright dark two three several on under "
         "with next to in front of building road grass water light shadow").split()
LR = {1: 1e-3, 2: 2e-5}


# --- preparation ------------------------------------------------------------------------------

def prepare(work: Path, tower: str, n: int, seed: int = 0) -> None:
    """Model checkpoint + stage-1 projector artifact + images + stage-1/2 data (n records each)."""
    from PIL import Image, ImageDraw

    from llavakit.model import build_model, save_pretrained, save_projector
    from llavakit.model.config import (
        LlavaConfig,
        LMConfig,
        ProjectorConfig,
        VisionConfig,
    )

    if not (work / "model" / "llavakit.json").is_file():
        cfg = LlavaConfig(
            name=f"bench-{tower}",
            vision=VisionConfig(kind="hf", hf_config={"model_type": "clip_vision_model", **TOWERS[tower]},
                                feature_layer=-2, image_mode="pad"),
            projector=ProjectorConfig(kind="mlp2x_gelu"),
            lm=LMConfig(kind="embedded", name_or_path="SmolLM2-135M-Instruct", dtype="float32"),
            template="chat_template",
        )
        model = build_model(cfg)
        save_pretrained(model, work / "model")
        save_projector(model, work / "projector")
    rng = random.Random(seed)  # the text; each image has its own generator, so reruns give the same data
    (work / "images").mkdir(parents=True, exist_ok=True)
    captions, instruct = [], []
    for i in range(n):
        name = f"{i:05d}.jpg"
        if not (work / "images" / name).exists():
            r = random.Random(f"{seed}:{i}")
            img = Image.new("RGB", (640, 480), tuple(r.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = r.randrange(600), r.randrange(440)
                draw.rectangle((x, y, x + r.randrange(20, 200), y + r.randrange(20, 200)),
                               fill=tuple(r.randrange(256) for _ in range(3)))
            img.save(work / "images" / name, quality=90)
        say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k)) + "."  # noqa: E731
        captions.append({"id": f"c{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": say(rng.randrange(10, 20))}]})
        instruct.append({"id": f"q{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\n" + say(12)}, {"from": "gpt", "value": say(rng.randrange(60, 110))},
            {"from": "human", "value": say(10)}, {"from": "gpt", "value": say(rng.randrange(30, 60))}]})
    (work / "stage1.json").write_text(json.dumps(captions))
    (work / "stage2.json").write_text(json.dumps(instruct))


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this process (same threads as the workers)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best


def token_stats(work: Path, stage: int) -> dict:
    """Mean tokens / supervised tokens per sample, and model dimensions, for the FLOP count."""
    from llavakit.conversation.processor import IGNORE_INDEX, Processor
    from llavakit.data.dataset import LlavaDataset, load_records
    from llavakit.model import load_model

    model = load_model(str(work / "model"))
    proc = Processor(model.tokenizer, "plain" if stage == 1 else model.processor.template, model.num_image_tokens)
    ds = LlavaDataset(load_records(work / f"stage{stage}.json"), proc, image_folder=work / "images", progress=False)
    sup = [sum(1 for x in ds[i].labels[1:] if x != IGNORE_INDEX) for i in range(len(ds))]
    lm = model.language_model
    emb = lm.get_input_embeddings().weight
    body = sum(p.numel() for p in lm.parameters()) - emb.numel()
    c = lm.config
    return {"tokens": sum(ds.lengths) / len(ds), "supervised": sum(sup) / len(sup), "body_params": body,
            "layers": c.num_hidden_layers, "d": c.hidden_size, "vocab": emb.shape[0],
            "projector_params": sum(p.numel() for p in model.projector.parameters()),
            "image_tokens": model.num_image_tokens}


def useful_flops(s: dict, stage: int) -> float:
    k = 6 if stage == 2 else 4  # stage 1: no LM weight gradients
    body = k * s["body_params"] * s["tokens"]
    attn = (12 if stage == 2 else 8) * s["layers"] * s["tokens"] ** 2 * s["d"]
    head = (6 if stage == 2 else 4) * s["d"] * s["vocab"] * s["supervised"]
    proj = 6 * s["projector_params"] * s["image_tokens"]
    return body + attn + head + proj


# --- workers (one measurement each, in a subprocess) -------------------------------------------

def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_llavakit(a) -> dict:
    from llavakit.train import build_config
    from llavakit.train.metrics import read_metrics
    from llavakit.train.runner import TrainSession

    work, out = Path(a.work), Path(tempfile.mkdtemp(prefix="lk-", dir=a.work))
    cfg = build_config({
        "stage": a.stage, "model": str(work / "model"), "template": "plain" if a.stage == 1 else None,
        "projector": str(work / "projector") if a.stage == 2 else None,
        "data": {"path": str(work / f"stage{a.stage}.json"), "image_folder": str(work / "images")},
        "feature_cache": {"dir": str(work / "features")}, "output_dir": str(out), "tensorboard": False,
        "per_device_batch_size": a.batch, "gradient_accumulation_steps": 1, "max_steps": a.warmup + a.steps,
        "optim": {"lr": LR[a.stage]}, "checkpoint": {"every": 0, "keep_last": 1},
    })
    start = time.perf_counter()
    session = TrainSession(cfg)
    setup = time.perf_counter() - start
    session.train()
    rows = read_metrics(out / "metrics.jsonl")
    t0, t1 = rows[a.warmup - 1]["elapsed"], rows[a.warmup + a.steps - 1]["elapsed"]
    samples = rows[a.warmup + a.steps - 1]["samples"] - rows[a.warmup - 1]["samples"]
    return {"samples_per_s": samples / (t1 - t0), "peak_mb": peak_memory_mb(), "setup_s": setup}


def worker_cache(a) -> dict:
    """Seconds per image to fill the feature cache (the tower forward + image decoding)."""
    from llavakit.imaging import load_image
    from llavakit.model import load_model
    from llavakit.train.feature_cache import FeatureCache

    work = Path(a.work)
    model = load_model(str(work / "model"))
    paths = sorted((work / "images").glob("*.jpg"))[: a.batch * (a.steps + a.warmup)]
    cache = FeatureCache(Path(tempfile.mkdtemp(prefix="fc-", dir=a.work)), model.vision_tower)
    start = time.perf_counter()
    cache.build(paths, load_image, batch_size=16)
    return {"seconds_per_image": (time.perf_counter() - start) / len(paths), "peak_mb": peak_memory_mb()}


# --- orchestration -----------------------------------------------------------------------------

def run_worker(a, kind: str, stage: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--stage", str(stage), "--work", a.work,
           "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--baseline-workers", str(a.baseline_workers)] + (["--threads", str(a.threads)] if a.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} stage {stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", choices=sorted(TOWERS), default="vit-l-14")
    p.add_argument("--batch", type=int, default=4, help="per-device batch (both stacks)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="alternations llavakit / baseline per stage")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--baseline-workers", type=int, default=0,
                   help="DataLoader workers of the baseline (the original uses 4; 0 avoids oversubscribing 2 cores)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every process (default: torch's)")
    p.add_argument("--work", default=None, help="working dir (kept; default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=["llavakit", "baseline", "cache", "same-model"], help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        from throughput_baseline import (  # this script's folder
            worker_baseline,
            worker_same_model,
        )

        fn = {"llavakit": worker_llavakit, "baseline": worker_baseline, "cache": worker_cache,
              "same-model": worker_same_model}[a.worker]
        print(json.dumps(fn(a)))
        return
    a.work = a.work or tempfile.mkdtemp(prefix="llavakit-bench-")
    work = Path(a.work)
    n = a.batch * (a.warmup + a.steps)
    print(f"preparing {work} ({a.tower}, {n} records per stage) ...", flush=True)
    prepare(work, a.tower, n)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    stages = [int(s) for s in a.stages.split(",")]
    same = run_worker(a, "same-model", 2)
    print(f"same model, same batch: loss llavakit {same['llavakit_loss']:.5f}, baseline {same['baseline_loss']:.5f}")
    if abs(same["llavakit_loss"] - same["baseline_loss"]) > 1e-3 * abs(same["baseline_loss"]):
        raise SystemExit("the two stacks do not compute the same loss: the comparison would be meaningless")
    cache = run_worker(a, "cache", 1)
    results: dict = {"tower": a.tower, "batch": a.batch, "steps": a.steps, "peak_flops": peak, "cache": cache,
                     "same_model": same, "threads": torch.get_num_threads(), "stages": {}}
    for stage in stages:
        stats = token_stats(work, stage)
        flops = useful_flops(stats, stage)
        runs: dict[str, list[dict]] = {"llavakit": [], "baseline": []}
        for r in range(a.rounds):
            for kind in ("llavakit", "baseline") if r % 2 == 0 else ("baseline", "llavakit"):
                res = run_worker(a, kind, stage)
                runs[kind].append(res)
                print(f"stage {stage} round {r + 1} {kind:9s} {res['samples_per_s']:.3f} samples/s, "
                      f"peak {res['peak_mb']:.0f} MB", flush=True)
        best = {k: max(v, key=lambda x: x["samples_per_s"]) for k, v in runs.items()}
        summary = {k: {"samples_per_s": b["samples_per_s"], "peak_mb": max(x["peak_mb"] for x in runs[k]),
                       "mfu": flops * b["samples_per_s"] / peak} for k, b in best.items()}
        summary["speedup"] = best["llavakit"]["samples_per_s"] / best["baseline"]["samples_per_s"]
        if stage == 1:  # charge the cache fill (one tower pass per image) to this single epoch
            per = 1 / best["llavakit"]["samples_per_s"] + cache["seconds_per_image"]
            summary["llavakit_incl_cache_build"] = {"samples_per_s": 1 / per,
                                                    "speedup": (1 / per) / best["baseline"]["samples_per_s"]}
        summary["tokens_per_sample"], summary["useful_gflop_per_sample"] = stats["tokens"], flops / 1e9
        results["stages"][stage] = {"summary": summary, "runs": runs}
    print("\nstage  stack      samples/s   peak MB    MFU")
    for stage, r in results["stages"].items():
        s = r["summary"]
        for k in ("llavakit", "baseline"):
            print(f"{stage:5d}  {k:9s} {s[k]['samples_per_s']:10.3f} {s[k]['peak_mb']:9.0f} {s[k]['mfu']:6.1%}")
        line = f"       speedup {s['speedup']:.2f}x"
        if "llavakit_incl_cache_build" in s:
            line += f"; incl. cache build {s['llavakit_incl_cache_build']['speedup']:.2f}x"
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
