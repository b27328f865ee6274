"""Datagen speed, measured in one run and printed as one comparison table.

1. The template teacher alone: samples/s over all four types (target >= 2,000/s), and the whole
   `llavakit datagen --teacher template` pipeline (job keys, JSONL cache, merge) for reference.
2. The openai teacher through the pipeline against a local OpenAI-compatible server answering in
   100 ms (tests/openai_stub.py, run in its own process), concurrency 1 vs 16 (target >= 10x).

    python benchmarks/datagen_speed.py            # full settings
    python benchmarks/datagen_speed.py --quick    # short settings, to check that it works
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llavakit.datagen.captions import scene_captions  # noqa: E402
from llavakit.datagen.facts import facts_from_coco, image_facts  # noqa: E402
from llavakit.datagen.pipeline import DatagenConfig, run_datagen  # noqa: E402
from llavakit.datagen.questions import Vocab  # noqa: E402
from llavakit.datagen.scenes import categories, sample_scene, scene_record  # noqa: E402
from llavakit.datagen.template_teacher import TEMPLATE_TYPES, generate  # noqa: E402
from llavakit.datagen.world import SceneConfig  # noqa: E402
from llavakit.llm_client import LLMConfig  # noqa: E402


def make_world(directory: Path, n: int) -> tuple[Path, Path, dict]:
    cfg = SceneConfig()
    names = {c["id"]: c["name"] for c in categories(cfg)}
    images, anns, caps = [], [], []
    for i in range(n):
        image, a = scene_record(sample_scene(cfg, 0, i))
        images.append(image)
        anns += a
        for k, text in enumerate(scene_captions(image_facts(image, a, names), random.Random(i))):
            caps.append({"id": image["id"] * 10 + k, "image_id": image["id"], "caption": text})
    inst = {"images": images, "annotations": anns, "categories": categories(cfg)}
    (directory / "instances.json").write_text(json.dumps(inst))
    (directory / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    return directory / "captions.json", directory / "instances.json", inst


def bench_template_teacher(inst: dict, repeats: int) -> tuple[int, float]:
    facts = facts_from_coco(inst)
    vocab = Vocab(facts.shapes, facts.colors)
    n = 0
    t0 = time.perf_counter()
    for variant in range(repeats):
        for f in facts.images.values():
            for kind in TEMPLATE_TYPES:
                generate(kind, f, vocab, seed=0, variant=variant)
                n += 1
    return n, time.perf_counter() - t0


def bench_pipeline(cfg: DatagenConfig) -> tuple[int, float]:
    t0 = time.perf_counter()
    stats = run_datagen(cfg)
    seconds = time.perf_counter() - t0
    return stats["generated_now"].get("ok", 0) + stats["generated_now"].get("rejected", 0), seconds


def start_stub(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--latency", str(latency)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short settings")
    parser.add_argument("--latency", type=float, default=0.1, help="server answer time in seconds (default 0.1)")
    args = parser.parse_args()
    n_images = 100 if args.quick else 500
    serial_jobs, parallel_jobs = (12, 96) if args.quick else (60, 480)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cap, inst_path, inst = make_world(tmp, n_images)
        n, s = bench_template_teacher(inst, repeats=1 if args.quick else 3)
        rows.append(("template teacher (generate only)", "4 types", n, s, ">= 2,000/s", n / s >= 2000))
        n, s = bench_pipeline(DatagenConfig(captions=str(cap), instances=str(inst_path), out=str(tmp / "t.json"),
                                            types="conversation,detail,reasoning,vqa", progress=False))
        rows.append(("template pipeline (cache + merge)", "4 types", n, s, "", None))
        proc, base_url = start_stub(args.latency)
        try:
            rates = {}
            for conc, jobs in ((1, serial_jobs), (16, parallel_jobs)):
                llm = LLMConfig(model="stub", base_url=base_url, concurrency=conc, max_retries=0)
                cfg = DatagenConfig(captions=str(cap), instances=str(inst_path), out=str(tmp / f"o{conc}.json"),
                                    teacher="openai", llm=llm, limit=jobs // 3, progress=False)
                n, s = bench_pipeline(cfg)
                rates[conc] = n / s
                speedup = rates[conc] / rates[1]
                rows.append((f"openai teacher, {args.latency * 1000:.0f} ms server", f"concurrency {conc}", n, s,
                             ">= 10x vs conc 1" if conc > 1 else "", speedup >= 10 if conc > 1 else None))
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
    if args.quick:
        print("\n(--quick: few jobs, so fixed per-run costs weigh more; figures are indicative only)")
    print(f"\n{'benchmark':36} {'setting':15} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'speed-up':>9}  target")
    base = None
    for name, setting, n, s, target, ok in rows:
        rate = n / s
        speed = ""
        if name.startswith("openai"):
            base = base or rate
            speed = f"{rate / base:.1f}x"
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:36} {setting:15} {n:8d} {s:8.2f} {rate:10.1f} {speed:>9}  {target} {verdict}")


if __name__ == "__main__":
    main()
