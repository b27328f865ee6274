"""Head-of-line blocking in the serving engine: how long a short request waits behind a long one.

One model, one engine per arm, the same two requests: a long answer (``--long`` tokens; EOS is
banned by a logit bias so it really is that long) and, once the long one has streamed a few
tokens, a short question (``--short`` tokens). Arms:

- ``one batch at a time`` (``max_cohorts=1``): the engine before turn-taking — the short request
  waits in the queue until the long batch ends;
- ``taking turns`` (the default ``max_cohorts=4``, ``slice_ms=100``): the short request forms its
  own batch at once and the two alternate.

Printed per arm: the short request's latency (submit → answer), the long one's total time and
both answers' token counts, measured in one run on this machine (alternating arms, ``--rounds``).

    python benchmarks/head_of_line.py                  # nano, 300 + 2 tokens, 2 rounds
    python benchmarks/head_of_line.py --model tiny-random --long 1000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time


def measure(model, encoder, cohorts: int, long_tokens: int, short_tokens: int) -> dict:
    from llavakit.conversation.templates import Message
    from llavakit.serve.engine import Engine, EngineConfig
    from llavakit.serve.rows import GenParams, Row

    no_eos = tuple((i, -100.0) for i in model.eos_ids())
    engine = Engine(model, EngineConfig(max_cohorts=cohorts))
    streamed, done = [], {"long": threading.Event(), "short": threading.Event()}
    times: dict[str, float] = {}
    tokens: dict[str, int] = {}

    def listener(name):
        def on(kind, value):
            if kind == "text" and name == "long":
                streamed.append(value)
            elif kind in ("done", "error"):
                times[name] = time.perf_counter()
                tokens[name] = getattr(value, "completion_tokens", -1)
                done[name].set()
        return on

    try:
        start = time.perf_counter()
        ids = encoder.encode([Message("user", "Tell me a long story about shapes and colours.")])
        engine.submit(Row(ids, None, GenParams(max_new_tokens=long_tokens, logit_bias=no_eos)), listener("long"))
        while len(streamed) < 3:
            time.sleep(0.005)
        sent = time.perf_counter()
        ids = encoder.encode([Message("user", "Is the sky blue? Answer yes or no.")])
        engine.submit(Row(ids, None, GenParams(max_new_tokens=short_tokens, logit_bias=no_eos)), listener("short"))
        done["short"].wait(600)
        done["long"].wait(600)
    finally:
        engine.close()
    return {"short_latency_s": times["short"] - sent, "long_total_s": times["long"] - start,
            "short_tokens": tokens["short"], "long_tokens": tokens["long"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--long", type=int, default=300)
    p.add_argument("--short", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()

    from llavakit.model import load_model
    from llavakit.serve.prompts import PromptEncoder

    model = load_model(a.model)
    encoder = PromptEncoder(model)
    arms = {"one batch at a time (max_cohorts=1)": 1, "taking turns (max_cohorts=4, slice 100 ms)": 4}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    measure(model, encoder, 4, 8, 2)  # warm-up
    for _ in range(a.rounds):
        for name, cohorts in arms.items():
            results[name].append(measure(model, encoder, cohorts, a.long, a.short))
    print(f"model {a.model}: a {a.short}-token request sent while a {a.long}-token answer streams "
          f"(median of {a.rounds} rounds, arms alternating)\n")
    print("| engine | short request latency (s) | long request total (s) | tokens (short / long) |")
    print("| --- | --- | --- | --- |")
    for name, rows in results.items():
        short = statistics.median(r["short_latency_s"] for r in rows)
        long_ = statistics.median(r["long_total_s"] for r in rows)
        print(f"| {name} | {short:.2f} | {long_:.1f} | {rows[0]['short_tokens']} / {rows[0]['long_tokens']} |")


if __name__ == "__main__":
    main()
