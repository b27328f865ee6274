"""Soak: `llavakit serve` under many careless clients for a fixed time (loopback only, bounded).

The server runs in its own process with its default limits (``--body-timeout`` shortened so the
stalled uploads end inside the run). For ``--seconds``:

- ``--clients`` threads loop over a seeded mix of requests: an image question, a text question,
  a streamed answer read to the end, and a streamed answer dropped after its first chunk (a client
  that disconnects);
- ``--stalled`` raw connections each announce a body and send one byte of it, then stall (and,
  once the server has ended one, open the next, until the time is up).

Reported: the status codes seen (the target: only 200 and 429 for the clients, 408 or a closed
connection for the stalled uploads), p50 / p95 latency of the answered requests, the server's
resident memory at start, peak and end (sampled from /proc) with a sample every ``--sample-every``
seconds and the growth between the run's first and last quarter (peak of each: a leak shows as a
last quarter above the first), and the engine's slots at the end (``running``, ``queued``,
``preparing`` all 0: nothing leaked).

    python benchmarks/serve_soak.py                         # nano, 64 clients, 32 stalled, 60 s
    python benchmarks/serve_soak.py --model tiny-random --seconds 20
    python benchmarks/serve_soak.py --seconds 1800 --sample-every 60   # half an hour: does memory grow?
    python benchmarks/serve_soak.py --seconds 600 --server-args=--trim-heap-s=10   # with heap trimming
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from serve_load import data_url, synthetic_image  # this script's folder
from served import launch  # this script's folder


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(a) -> tuple[subprocess.Popen, str]:
    return launch(a.model, ["--body-timeout", str(a.body_timeout), *a.server_args.split()], log_level="critical")


def body(kind: str, i: int, model: str, max_tokens: int) -> dict:
    if kind == "text":
        content = f"Name a colour, please ({i})."
    else:
        content = [{"type": "image_url", "image_url": {"url": data_url(synthetic_image(i))}},
                   {"type": "text", "text": "What shape is in the picture?"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": kind.startswith("stream")}


def client_loop(url: str, a, seed: int, stop: float, out: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=300) as http:
        while time.monotonic() < stop:
            kind = rng.choice(["image", "text", "stream", "stream-drop"])
            payload = body(kind, rng.randrange(10_000), a.model, a.max_tokens)
            start = time.perf_counter()
            try:
                if payload["stream"]:
                    with http.stream("POST", url + "/v1/chat/completions", json=payload) as resp:
                        status = resp.status_code
                        for _ in resp.iter_lines():
                            if kind == "stream-drop":
                                break  # the client goes away mid-answer
                else:
                    status = http.post(url + "/v1/chat/completions", json=payload).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                out["status"][f"{kind} {status}"] += 1
                if status == 200 and kind != "stream-drop":
                    out["latency"].append(time.perf_counter() - start)
            if status == 429:
                time.sleep(rng.uniform(0.05, 0.3))


def stalled_upload(port: int, out: dict, lock: threading.Lock, limit: float) -> None:
    """Announce a 100 kB body, send one byte, then wait for the server to give up on it."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        try:
            reply = sock.recv(200).decode("latin-1")
            outcome = reply.split(" ")[1] if reply.startswith("HTTP/1.1") else "closed"
        except socket.timeout:
            outcome = "still open"
    with lock:
        out["stalled"][outcome] += 1


def stalled_loop(port: int, out: dict, lock: threading.Lock, stop: float, limit: float) -> None:
    while time.monotonic() < stop:
        stalled_upload(port, out, lock, limit)


def quarter_growth(samples: list[list[int]], seconds: float) -> int | None:
    """Peak RSS of the run's last quarter minus that of its first (None when a quarter has no sample)."""
    first = [mib for t, mib in samples if t <= seconds / 4]
    last = [mib for t, mib in samples if seconds * 3 / 4 <= t <= seconds]
    return max(last) - max(first) if first and last else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--stalled", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--body-timeout", type=float, default=10.0)
    p.add_argument("--server-args", default="", help="more `llavakit serve` options, e.g. --server-args=--no-join-running")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between recorded RSS samples")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()

    proc, url = start_server(a)
    port = int(url.rsplit(":", 1)[1])
    out = {"status": Counter(), "stalled": Counter(), "latency": []}
    lock = threading.Lock()
    try:
        httpx.post(url + "/v1/chat/completions", json=body("image", 0, a.model, 2), timeout=300)  # warm-up
        rss = {"start": rss_mib(proc.pid)}
        peak = rss["start"]
        stop = time.monotonic() + a.seconds
        threads = [threading.Thread(target=client_loop, args=(url, a, i, stop, out, lock)) for i in range(a.clients)]
        threads += [threading.Thread(target=stalled_loop, args=(port, out, lock, stop, a.body_timeout + 30))
                    for _ in range(a.stalled)]
        began = time.monotonic()
        samples, next_sample = [], began
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            now_rss = rss_mib(proc.pid)
            peak = max(peak, now_rss)
            if time.monotonic() >= next_sample:
                samples.append([round(time.monotonic() - began), round(now_rss)])
                next_sample += a.sample_every
            time.sleep(0.5)
        time.sleep(1.0)
        engine = httpx.get(url + "/health", timeout=30).json()["engine"]
        rss.update(peak=peak, end=rss_mib(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    lat = sorted(out["latency"])
    result = {
        "model": a.model, "server_args": a.server_args, "clients": a.clients, "stalled": a.stalled, "seconds": a.seconds,
        "status": dict(sorted(out["status"].items())), "stalled_outcome": dict(out["stalled"]),
        "answered": len(lat), "p50_s": statistics.median(lat) if lat else None,
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "rss_mib": {k: round(v) for k, v in rss.items()},
        "rss_growth_mib": quarter_growth(samples, a.seconds), "rss_samples": samples,
        "slots_at_end": {k: engine[k] for k in ("running", "queued", "preparing")},
        "batches": engine.get("batches"), "largest_batch": engine.get("largest_batch"),
        "heap_trims": engine.get("heap_trims", 0),
    }
    codes = {key.split(" ", 1)[1] for key in result["status"]}
    result["only_200_and_429"] = codes <= {"200", "429"}
    held = set(result["stalled_outcome"]) <= {"408", "closed"}
    freed = not any(result["slots_at_end"].values())
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
    print("rss samples [s, MiB]:", json.dumps(samples))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if not (result["only_200_and_429"] and held and freed):
        raise SystemExit("soak FAILED: " + "; ".join(why for why, bad in (
            (f"client statuses {sorted(codes)}", not result["only_200_and_429"]),
            (f"stalled uploads ended {result['stalled_outcome']}", not held),
            (f"engine slots at the end {result['slots_at_end']}", not freed)) if bad))
    print("soak passed: only 200 and 429 for the clients, every stalled upload ended by the server, slots free")


if __name__ == "__main__":
    main()
