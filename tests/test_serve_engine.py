"""The engine: micro-batches concurrent requests on one worker thread; bounded queue; cancel; errors."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from llavakit.conversation.templates import Message
from llavakit.errors import LlavakitError
from llavakit.serve.engine import Engine, EngineConfig, QueueFull
from llavakit.serve.prompts import PromptEncoder
from llavakit.serve.rows import GenParams, Row


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Collector:
    def __init__(self):
        self.texts: list[str] = []
        self.result = None
        self.error = None
        self.done = threading.Event()

    def __call__(self, kind, value):
        if kind == "text":
            self.texts.append(value)
        elif kind == "done":
            self.result = value
            self.done.set()
        else:
            self.error = value
            self.done.set()


@pytest.fixture
def row_for(tiny_model):
    enc = PromptEncoder(tiny_model)

    def make(text="hello", **params):
        return Row(enc.encode([Message("user", text)]), None, GenParams(**params))

    return make


def test_concurrent_submissions_share_one_generate_call(tiny_model, row_for):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=8, batch_window_ms=500))
    try:
        collectors = [Collector() for _ in range(6)]
        for i, c in enumerate(collectors):
            engine.submit(row_for(f"question {i}", max_new_tokens=4 + i), c)
        for c in collectors:
            assert c.done.wait(60)
        stats = engine.stats()
        assert stats["largest_batch"] > 1  # counted, not timed
        assert sum(int(k) * v for k, v in stats["batch_sizes"].items()) == 6
        assert [c.result.completion_tokens for c in collectors] == [4 + i for i in range(6)]
        assert all("".join(c.texts) == c.result.text for c in collectors)
    finally:
        engine.close()


def test_run_matches_direct_generation(tiny_model, row_for):
    from llavakit.serve.batch import generate_rows

    engine = Engine(tiny_model)
    try:
        assert engine.run(row_for("hi", max_new_tokens=6), timeout=60).text == \
            generate_rows(tiny_model, [row_for("hi", max_new_tokens=6)])[0].text
    finally:
        engine.close()


def test_full_queue_is_refused_and_cancel_frees_the_worker(tiny_model, row_for):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=1, batch_window_ms=0, max_queue=1, max_cohorts=1))
    try:
        long_one, waiting = Collector(), Collector()
        handle = engine.submit(row_for(max_new_tokens=1000), long_one)
        wait_for(lambda: engine.stats()["running"] == 1)
        queued = engine.submit(row_for(max_new_tokens=3), waiting)
        with pytest.raises(QueueFull) as info:
            engine.submit(row_for(max_new_tokens=3), Collector())
        assert info.value.retry_after >= 1
        assert engine.stats()["rejected_queue_full"] == 1
        handle.cancel()
        assert long_one.done.wait(60) and long_one.result.finish_reason == "cancelled"
        assert long_one.result.completion_tokens < 1000
        assert waiting.done.wait(60) and waiting.result.finish_reason == "length"
        assert not queued.cancelled
    finally:
        engine.close()


@pytest.mark.parametrize("join", [True, False], ids=["joins the running batch", "takes turns"])
def test_a_short_request_is_not_held_behind_a_long_batch(tiny_model, row_for, join):
    engine = Engine(tiny_model, EngineConfig(batch_window_ms=0, slice_ms=0, join_running=join))
    try:
        long_one, short = Collector(), Collector()
        handle = engine.submit(row_for("tell me everything", max_new_tokens=1000), long_one)
        wait_for(lambda: len(long_one.texts) >= 3)  # the long batch is generating
        engine.submit(row_for("hi", max_new_tokens=2), short)
        assert short.done.wait(60) and short.result.completion_tokens == 2
        assert not long_one.done.is_set()  # answered while the long one still runs, not after it
        stats = engine.stats()
        assert stats["batch_sizes"] == {"1": 2}  # two arrivals ...
        assert stats.get("joined_running", 0) == (1 if join else 0)  # ... merged into one batch, or taking turns
        handle.cancel()
        assert long_one.done.wait(60) and long_one.result.finish_reason == "cancelled"
    finally:
        engine.close()


@pytest.mark.parametrize("join", [True, False], ids=["joining", "taking turns"])
def test_arrivals_mid_generation_get_the_answer_they_get_alone(tiny_model, row_for, join):
    from llavakit.serve.batch import generate_rows

    engine = Engine(tiny_model, EngineConfig(batch_window_ms=0, slice_ms=0, max_batch_size=1 + 3 * join,
                                             join_running=join))
    try:
        specs = [("first question", 60), ("second", 9), ("third one here", 25), ("a fourth", 12)]
        collectors = [Collector() for _ in specs]
        for i, ((text, n), c) in enumerate(zip(specs, collectors)):
            engine.submit(row_for(text, max_new_tokens=n), c)
            if i < len(specs) - 1:  # the next one arrives while this one is generating
                wait_for(lambda: len(c.texts) >= 2 or c.done.is_set())
        for (text, n), c in zip(specs, collectors):
            assert c.done.wait(60)
            assert c.result.text == generate_rows(tiny_model, [row_for(text, max_new_tokens=n)])[0].text
            assert c.result.completion_tokens == n and "".join(c.texts) == c.result.text
        assert (engine.stats().get("joined_running", 0) >= 2) == join
    finally:
        engine.close()


def test_a_failing_batch_is_reported_and_the_engine_keeps_serving(tiny_model, row_for):
    engine = Engine(tiny_model)
    try:
        broken = row_for("no image token here", max_new_tokens=3)
        broken.pixel_values = torch.zeros(1, 3, 32, 32)  # an image but no <image> position
        bad = Collector()
        engine.submit(broken, bad)
        assert bad.done.wait(60)
        assert isinstance(bad.error, LlavakitError) and "image" in str(bad.error)
        assert engine.stats()["batch_errors"] == 1
        assert engine.run(row_for(max_new_tokens=3), timeout=60).completion_tokens == 3
    finally:
        engine.close()


def test_close_refuses_new_work(tiny_model, row_for):
    engine = Engine(tiny_model)
    engine.close()
    with pytest.raises(LlavakitError):
        engine.submit(row_for(), Collector())


def test_a_batch_waits_for_requests_still_being_prepared(tiny_model, row_for):
    # no time window at all: only the announcement keeps the batch open for the second request
    engine = Engine(tiny_model, EngineConfig(max_batch_size=4, batch_window_ms=0, max_wait_ms=30_000))
    try:
        first, second = Collector(), Collector()
        with engine.preparing():  # the second request is on its way (e.g. its image is decoding)
            engine.submit(row_for(max_new_tokens=3), first)
            wait_for(lambda: engine.stats()["queued"] == 0)  # the worker took the first and waits
            engine.submit(row_for(max_new_tokens=3), second)
        assert first.done.wait(60) and second.done.wait(60)
        assert engine.stats()["batch_sizes"] == {"2": 1}
    finally:
        engine.close()


def test_requests_in_preparation_are_bounded_too(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_queue=1))
    try:
        with engine.preparing():
            with pytest.raises(QueueFull):
                with engine.preparing():
                    pass
        with engine.preparing():  # released again
            assert engine.stats()["preparing"] == 1
    finally:
        engine.close()


@pytest.mark.parametrize("gap_ms", [0.0, 60_000.0], ids=["each arrival joins", "arrivals in the gap join together"])
def test_join_gap_merges_arrivals_in_one_join(tiny_model, row_for, gap_ms):
    engine = Engine(tiny_model, EngineConfig(batch_window_ms=0, slice_ms=0, join_gap_ms=gap_ms))
    try:
        long_one, first, second, third = Collector(), Collector(), Collector(), Collector()
        handle = engine.submit(row_for("tell me everything", max_new_tokens=1500), long_one)
        wait_for(lambda: len(long_one.texts) >= 3)
        engine.submit(row_for("hi", max_new_tokens=3), first)  # the first join is never held back
        assert first.done.wait(60) and engine.stats()["joins"] == 1
        engine.submit(row_for("second", max_new_tokens=3), second)
        if gap_ms:  # within the gap: the second waits while the long batch goes on ...
            steps = len(long_one.texts)
            wait_for(lambda: len(long_one.texts) >= steps + 5)
            assert not second.texts and engine.stats()["queued"] == 1
        else:
            assert second.done.wait(60)
        engine.submit(row_for("third", max_new_tokens=3), third)
        if gap_ms:  # ... the third arrives; when the gap is over both join in one merge
            engine.config.join_gap_ms = 0.0
        assert second.done.wait(60) and third.done.wait(60) and not long_one.done.is_set()
        stats = engine.stats()
        assert stats["joined_running"] == 3 and stats["joins"] == (2 if gap_ms else 3)
        assert stats["batch_sizes"] == ({"1": 2, "2": 1} if gap_ms else {"1": 4})
        handle.cancel()
        assert long_one.done.wait(60)
    finally:
        engine.close()


@pytest.mark.parametrize("every", [0.0, 0.001], ids=["never", "every step"])
def test_heap_trims_follow_the_configured_period(tiny_model, row_for, every):
    engine = Engine(tiny_model, EngineConfig(batch_window_ms=0, trim_heap_s=every))
    try:
        done = Collector()
        engine.submit(row_for("hi", max_new_tokens=4), done)
        assert done.done.wait(60)
        if every:  # the worker trims after the step that finished the request
            wait_for(lambda: engine.stats().get("heap_trims", 0) >= 1)
        else:
            wait_for(lambda: engine.stats()["running"] == 0)
            time.sleep(0.2)
            assert "heap_trims" not in engine.stats()
    finally:
        engine.close()
    with pytest.raises(LlavakitError, match="the times >= 0"):
        EngineConfig(trim_heap_s=-1)
