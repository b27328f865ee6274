"""Serving and batched-inference throughput, measured in one run, printed as one comparison table.

1. API server (`llavakit serve` in a subprocess on a free port, the official `openai` client): the same image
   questions sent one at a time (sequential) vs by ``--clients`` concurrent clients — requests/s,
   p50/p95 latency, generated tokens/s, and the batch sizes the engine formed. Target: concurrent
   throughput >= 3x sequential.
2. ``run_inference`` over a questions set at batch size 8 vs batch size 1 (LLaVA's eval scripts
   run batch 1). Target: >= 3x.

Both comparisons run in interleaved rounds (``--rounds``), so a load that changes during the run (a
shared machine) affects both sides alike.

    python benchmarks/serve_load.py                       # nano: 2 rounds of 4 sequential + 16 concurrent, 32 questions
    python benchmarks/serve_load.py --rounds 1 --questions 16 --max-tokens 16    # a quick look
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from served import launch  # this script's folder


def synthetic_image(i: int) -> Image.Image:
    img = Image.new("RGB", (160, 120), ((40 * i) % 256, (90 + 30 * i) % 256, (200 - 20 * i) % 256))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20 + i % 50, 20, 90 + i % 50, 90), fill=(250, 250, 250))
    return img


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


QUESTIONS = ["What is in the image?", "Describe the picture.", "What colour is the background?",
             "What shape do you see?"]


def request_kwargs(i: int, model_id: str, max_tokens: int) -> dict:
    content = [{"type": "image_url", "image_url": {"url": data_url(synthetic_image(i))}},
               {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]
    return dict(model=model_id, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
                temperature=0)


def run_load(client, payloads: list[dict], clients: int) -> dict:
    """Send ``payloads`` with ``clients`` threads: latencies, tokens and wall time."""
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    todo = iter(payloads)

    def worker():
        while True:
            with lock:
                payload = next(todo, None)
            if payload is None:
                return
            start = time.perf_counter()
            resp = client.chat.completions.create(**payload)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                tokens.append(resp.usage.completion_tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "tokens": tokens, "wall_s": time.perf_counter() - start}


def summarise(runs: list[dict]) -> dict:
    """Rounds of one kind of run added up: requests/s, p50/p95 latency, tokens/s."""
    latencies = sorted(x for r in runs for x in r["latencies"])
    wall, tokens = sum(r["wall_s"] for r in runs), sum(sum(r["tokens"]) for r in runs)
    return {"requests": len(latencies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "tokens_per_s": tokens / wall}


def start_server(args) -> tuple[subprocess.Popen, str]:
    """`llavakit serve` in its own process (clients and server do not share a GIL)."""
    return launch(args.model, ["--max-batch-size", str(args.clients), "--batch-window-ms", str(args.batch_window_ms),
                               "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(64, args.requests))])


def bench_serve(args) -> tuple[dict, dict, dict]:
    import openai

    proc, url = start_server(args)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        client.chat.completions.create(**request_kwargs(0, args.model, 4))  # warm-up
        seq, conc, formed = [], [], {}
        for r in range(args.rounds):  # interleaved, so a changing machine load hits both sides alike
            # both phases ask the same distinct questions (greedy: same answers, same token counts)
            distinct = [request_kwargs(r * args.seq_requests + i, args.model, args.max_tokens)
                        for i in range(args.seq_requests)]
            seq.append(run_load(client, distinct, 1))
            before = httpx.get(url + "/health").json()["engine"]["batch_sizes"]
            conc.append(run_load(client, [distinct[i % len(distinct)] for i in range(args.requests)], args.clients))
            after = httpx.get(url + "/health").json()["engine"]["batch_sizes"]
            for k, v in after.items():
                if v - before.get(k, 0):
                    formed[k] = formed.get(k, 0) + v - before.get(k, 0)
    finally:
        proc.terminate()
        proc.wait(30)
    return summarise(seq), summarise(conc), dict(sorted(formed.items(), key=lambda kv: int(kv[0])))


def bench_infer(model, args) -> dict[int, dict]:
    from llavakit.serve.infer import run_inference

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        questions = []
        for i in range(args.questions):
            synthetic_image(i).save(folder / f"{i}.png")
            questions.append({"question_id": i, "image": f"{i}.png", "text": QUESTIONS[i % len(QUESTIONS)]})
        run_inference(model, questions[:2], folder, folder / "warm.jsonl", batch_size=2, max_new_tokens=4,
                      progress=False)
        walls = {1: 0.0, 8: 0.0}
        per_round = -(-len(questions) // args.rounds)
        for r in range(args.rounds):  # interleaved rounds: the same questions at batch 1 and batch 8
            chunk = questions[r * per_round:(r + 1) * per_round]
            for batch_size in (1, 8):
                start = time.perf_counter()
                run_inference(model, chunk, folder, folder / f"answers_b{batch_size}.jsonl", batch_size=batch_size,
                              max_new_tokens=args.max_tokens, progress=False)
                walls[batch_size] += time.perf_counter() - start
        for batch_size, wall in walls.items():
            rows = [json.loads(line) for line in (folder / f"answers_b{batch_size}.jsonl").read_text().splitlines()]
            tokens = sum(row["metadata"]["completion_tokens"] for row in rows)
            results[batch_size] = {"questions": len(rows), "wall_s": wall, "q_per_s": len(rows) / wall,
                                   "tokens_per_s": tokens / wall}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nano", help="a preset or a llavakit checkpoint dir")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (also the server's --max-batch-size)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each comparison")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per round")
    parser.add_argument("--seq-requests", type=int, default=4,
                        help="sequential requests per round; the concurrent phase repeats these questions")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--batch-window-ms", type=float, default=20.0, help="the server's --batch-window-ms")
    parser.add_argument("--max-wait-ms", type=float, default=250.0, help="the server's --max-wait-ms")
    parser.add_argument("--questions", type=int, default=32, help="questions for the infer comparison (all rounds)")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from llavakit.serve.models import load_servable

    print(f"model {args.model}, torch threads {torch.get_num_threads()}, max_tokens {args.max_tokens}, temperature 0")
    rows = []
    if not args.skip_serve:
        seq, conc, formed = bench_serve(args)
        speed = conc["req_per_s"] / seq["req_per_s"]
        token_speed = conc["tokens_per_s"] / seq["tokens_per_s"]
        for name, r in (("serve sequential (1 client)", seq), (f"serve concurrent ({args.clients} clients)", conc)):
            rows.append((name, r["requests"], f"{r['wall_s']:.1f}", f"{r['req_per_s']:.2f}", f"{r['p50_s']:.2f}",
                         f"{r['p95_s']:.2f}", f"{r['tokens_per_s']:.1f}"))
        rows.append(("  concurrent / sequential throughput", "", "", f"{speed:.2f}x", "", "",
                     f"{token_speed:.2f}x (target >= 3x)"))
        rows.append(("  batch sizes formed (size: count)", "", "", json.dumps(formed), "", "", ""))
    if not args.skip_infer:
        inf = bench_infer(load_servable(args.model), args)
        for bs in (1, 8):
            r = inf[bs]
            rows.append((f"infer batch {bs}", r["questions"], f"{r['wall_s']:.1f}", f"{r['q_per_s']:.2f}", "", "",
                         f"{r['tokens_per_s']:.1f}"))
        rows.append(("  batch 8 / batch 1 throughput", "", "", f"{inf[8]['q_per_s'] / inf[1]['q_per_s']:.2f}x", "", "",
                     f"{inf[8]['tokens_per_s'] / inf[1]['tokens_per_s']:.2f}x (target >= 3x)"))
    header = ("run", "requests", "wall s", "req/s", "p50 s", "p95 s", "tokens/s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
