"""Head-of-line blocking in the serving engine: short requests mixed with long ones.

One model, one engine per arm, the same load: ``--long`` requests of ``--long-tokens`` tokens
(EOS banned by a logit bias, so they really are that long) start first; once they stream, a short
request (``--short-tokens``) arrives every ``--gap`` seconds, ``--shorts`` in all. Arms:

- ``one batch at a time`` (``max_cohorts=1``, ``join_running=False``): the engine before
  2026-12-06 — a short request that arrives while a batch runs waits until that batch ends;
- ``taking turns`` (``join_running=False``, ``max_cohorts=4``, ``slice_ms=100``): arrivals form
  their own batch at once and the batches alternate, pausing at token boundaries (KV caches kept);
- ``joining the running batch`` (the default): arrivals are prefilled and then join the running
  batch at the next step (continuous batching); finished rows leave it;
- ``joining at most every --join-gap-ms``: the same, but arrivals within the gap after a join wait
  and join together (``llavakit serve --join-gap-ms``): what the gap costs a short request's latency
  when the server is not saturated. Only arrivals closer than the gap can wait: with the default
  ``--gap`` 0.5 s none do, so measure it with ``--gap`` below ``--join-gap-ms`` (the third example).

Printed per arm (median over ``--rounds``, arms alternating, one run on this machine): the short
requests' latency p50 / p95 (submit → answer), the long requests' time, and the tokens generated.

    python benchmarks/head_of_line.py                        # nano: 1 x 300 tokens, 6 shorts of 2 tokens
    python benchmarks/head_of_line.py --model tiny-random --long-tokens 1000
    python benchmarks/head_of_line.py --shorts 20 --gap 0.1       # arrivals closer than the join gap
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(model, encoder, engine_config: dict, a) -> dict:
    from llavakit.conversation.templates import Message
    from llavakit.serve.engine import Engine, EngineConfig
    from llavakit.serve.rows import GenParams, Row

    no_eos = tuple((i, -100.0) for i in model.eos_ids())
    engine = Engine(model, EngineConfig(**engine_config))
    lock = threading.Lock()
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    tokens: dict[str, int] = {}
    events: dict[str, threading.Event] = {}
    streamed = threading.Event()

    def submit(name: str, text: str, n: int) -> None:
        events[name] = threading.Event()

        def on(kind, value):
            if kind == "text":
                streamed.set()
            elif kind in ("done", "error"):
                with lock:
                    answered[name] = time.perf_counter()
                    tokens[name] = getattr(value, "completion_tokens", -1)
                events[name].set()

        ids = encoder.encode([Message("user", text)])
        sent[name] = time.perf_counter()
        engine.submit(Row(ids, None, GenParams(max_new_tokens=n, logit_bias=no_eos)), on)

    try:
        for i in range(a.long):
            submit(f"long{i}", f"Tell me a long story about shapes and colours, part {i}.", a.long_tokens)
        streamed.wait(600)
        for i in range(a.shorts):
            submit(f"short{i}", f"Is the square number {i} red? Answer yes or no.", a.short_tokens)
            time.sleep(a.gap)
        for event in events.values():
            event.wait(900)
    finally:
        engine.close()
    short = [answered[n] - sent[n] for n in sent if n.startswith("short")]
    long_ = [answered[n] - sent[n] for n in sent if n.startswith("long")]
    return {"p50": percentile(short, 0.5), "p95": percentile(short, 0.95), "long": max(long_),
            "short_tokens": sum(v for k, v in tokens.items() if k.startswith("short")),
            "long_tokens": sum(v for k, v in tokens.items() if k.startswith("long"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--long", type=int, default=1, help="long requests, started first")
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--shorts", type=int, default=6, help="short requests, one every --gap s once the long ones stream")
    p.add_argument("--short-tokens", type=int, default=2)
    p.add_argument("--gap", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--join-gap-ms", type=float, default=250.0, help="the gap of the last arm")
    a = p.parse_args()

    from llavakit.model import load_model
    from llavakit.serve.prompts import PromptEncoder

    model = load_model(a.model)
    encoder = PromptEncoder(model)
    arms = {"one batch at a time (max_cohorts=1, no joining)": dict(max_cohorts=1, join_running=False),
            "taking turns (max_cohorts=4, slice 100 ms, no joining)": dict(join_running=False),
            "joining the running batch (default)": dict(),
            f"joining at most every {a.join_gap_ms:g} ms": dict(join_gap_ms=a.join_gap_ms)}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    warm = argparse.Namespace(**{**vars(a), "long_tokens": 8, "shorts": 1, "gap": 0.0})
    measure(model, encoder, {}, warm)
    for _ in range(a.rounds):
        for name, engine_config in arms.items():
            results[name].append(measure(model, encoder, engine_config, a))
    print(f"model {a.model}: {a.long} x {a.long_tokens}-token answers streaming, then {a.shorts} requests of "
          f"{a.short_tokens} tokens, one every {a.gap} s (median of {a.rounds} rounds, arms alternating)\n")
    print("| engine | short requests p50 (s) | p95 (s) | long requests done after (s) | tokens (short / long) |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("p50", "p95", "long")}
        print(f"| {name} | {med['p50']:.2f} | {med['p95']:.2f} | {med['long']:.1f} | "
              f"{rows[0]['short_tokens']} / {rows[0]['long_tokens']} |")


if __name__ == "__main__":
    main()
