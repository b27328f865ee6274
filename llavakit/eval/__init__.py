"""Evaluation: ``synth`` (exact answers on held-out scenes, + blind), ``pope`` (hallucination),
``llava_bench`` (judge protocol, relative score), ``scienceqa`` (+ ``scienceqa_convert``).

Each eval module has ``evaluate(...) -> dict`` for Python and ``add_arguments`` / ``run`` for its
CLI verb; shared pieces: ``scoring`` (normalised matching, metrics), ``report`` (JSON + markdown),
``records`` (JSONL + resumable cache), ``judge`` (OpenAI-compatible judge loop), ``answering``
(model answers through ``llavakit infer``). See docs/eval.md.
"""
