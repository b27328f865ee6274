"""The serving engine: a bounded queue and one worker thread that batches requests.

Micro-batching: when idle, the worker blocks for the first queued request, then keeps collecting
while requests keep coming — until none arrived for ``batch_window_ms`` and none is being prepared
(the API announces requests whose images are still being decoded with :meth:`Engine.preparing`),
``max_wait_ms`` passed since the first, or ``max_batch_size`` are in hand. Those rows become one
:class:`~llavakit.serve.batch.Cohort` (one batched ``generate``), so every model call happens on
this one thread. Rows keep their own sampling, stops and streams; a row finishing early is reported
at once; a cancelled row (client gone) stops at the next step.

No head-of-line blocking (continuous batching): a running cohort pauses at the next token when a
request is waiting; the request's prompt is run on its own (its prefill and first token) and then
*joins* the running batch — the two KV caches are left-padded to one length and stacked
(:meth:`~llavakit.serve.batch.Cohort.absorb`), and finished rows leave the batch at that moment.
When the batch is full (``max_batch_size``) or its cache cannot be merged, the arrivals form a new
cohort (up to ``max_cohorts``) and the cohorts take turns of ``slice_ms``. ``join_gap_ms`` spaces
joins: arrivals within the gap after a join wait and are prefilled and merged together, one
pause and one cache merge for all of them instead of one each. A 2-token request sent
while a 1,000-token answer is written is answered within a few steps, not after the long one ends.

``submit`` raises :class:`QueueFull` when ``max_queue`` requests are already waiting (the API turns
it into 429 + Retry-After). :meth:`Engine.stats` counts batches by size — tests assert batching by
counting, not by timing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from llavakit.errors import LlavakitError
from llavakit.memory import heap_trimmer
from llavakit.serve.batch import Cohort
from llavakit.serve.rows import Row, RowResult

log = logging.getLogger("llavakit.serve")


@dataclass
class EngineConfig:
    max_batch_size: int = 16
    batch_window_ms: float = 20.0  # collect while requests arrive less than this apart ...
    max_queue: int = 64  # requests waiting (not yet running); more → QueueFull
    max_wait_ms: float = 250.0  # ... but start at most this long after the first one arrived
    max_cohorts: int = 4  # batches generating at once, taking turns
    slice_ms: float = 100.0  # a cohort's turn while another one is active or waiting
    join_running: bool = True  # arrivals join a running batch with room (continuous batching)
    join_gap_ms: float = 0.0  # at least this long between two joins: arrivals meanwhile are prefilled together
    trim_heap_s: float = 0.0  # hand freed heap back to the OS (malloc_trim) at most this often; 0: never

    def __post_init__(self):
        if min(self.max_batch_size, self.max_queue, self.max_cohorts) < 1 or \
                min(self.batch_window_ms, self.max_wait_ms, self.slice_ms, self.join_gap_ms, self.trim_heap_s) < 0:
            raise LlavakitError("engine: max_batch_size, max_queue and max_cohorts must be >= 1, the times >= 0")


class QueueFull(LlavakitError):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (request queue full); retry in {retry_after} s")
        self.retry_after = retry_after


class EngineClosed(LlavakitError):
    pass


# An event for a request's listener: ("text", str) | ("done", RowResult) | ("error", Exception)
Listener = Callable[[str, object], None]


class Handle:
    """A submitted request: :meth:`cancel` stops its generation (queued or running)."""

    def __init__(self, row: Row):
        self.row = row

    def cancel(self) -> None:
        self.row.cancel.set()

    @property
    def cancelled(self) -> bool:
        return self.row.cancel.is_set()


class Engine:
    def __init__(self, model, config: EngineConfig | None = None):
        self.model = model
        self.config = config or EngineConfig()
        self._queue: queue.Queue[tuple[Row, Listener]] = queue.Queue(maxsize=self.config.max_queue)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._batch_sizes: Counter[int] = Counter()
        self._counts: Counter[str] = Counter()
        self._running = 0
        self._preparing = 0
        self._recent_batch_seconds = 1.0
        self._joined_at = float("-inf")  # when arrivals last joined a running cohort (worker thread only)
        self._trim, self._trimmed_at = heap_trimmer("cpu"), time.monotonic()  # (worker thread only)
        self._thread = threading.Thread(target=self._work, name="llavakit-engine", daemon=True)
        self._thread.start()

    # --- submitting ---------------------------------------------------------------------------

    def submit(self, row: Row, listener: Listener) -> Handle:
        """Queue ``row``; ``listener(kind, value)`` is called on the worker thread (keep it quick)."""
        if self._closed.is_set():
            raise EngineClosed("the engine is shut down")

        def on_text(text: str) -> None:
            _notify(listener, "text", text)

        def on_finish(result: RowResult) -> None:
            with self._lock:
                self._counts[f"finish_{result.finish_reason}"] += 1
                self._counts["completion_tokens"] += result.completion_tokens
            _notify(listener, "done", result)

        row.on_text, row.on_finish = on_text, on_finish
        try:
            self._queue.put_nowait((row, listener))
        except queue.Full:
            with self._lock:
                self._counts["rejected_queue_full"] += 1
            raise QueueFull(max(1, round(self._recent_batch_seconds))) from None
        with self._lock:
            self._counts["submitted"] += 1
        return Handle(row)

    @contextmanager
    def preparing(self):
        """Announce a request that will be submitted soon (while its images decode), so a batch
        being collected waits for it (at most ``max_wait_ms``). At most ``max_queue`` requests may be
        in preparation at once (they hold decoded images): more raise :class:`QueueFull`."""
        with self._lock:
            if self._preparing >= self.config.max_queue:
                self._counts["rejected_queue_full"] += 1
                raise QueueFull(max(1, round(self._recent_batch_seconds)))
            self._preparing += 1
        try:
            yield
        finally:
            with self._lock:
                self._preparing -= 1

    def run(self, row: Row, timeout: float | None = None) -> RowResult:
        """Submit and wait (for synchronous callers); raises the generation error, if any."""
        done = threading.Event()
        box: dict[str, object] = {}

        def listener(kind: str, value) -> None:
            if kind in ("done", "error"):
                box[kind] = value
                done.set()

        handle = self.submit(row, listener)
        if not done.wait(timeout):
            handle.cancel()
            raise LlavakitError(f"generation did not finish within {timeout} s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["done"]  # type: ignore[return-value]

    # --- the worker ---------------------------------------------------------------------------

    def _collect(self, wait: bool, limit: int) -> list[tuple[Row, Listener]]:
        """The next batch (at most ``limit``): blocking for its first request when ``wait`` (nothing
        is running), else only what is queued right now (a running cohort must not stall for arrivals)."""
        try:
            first = self._queue.get(timeout=0.2) if wait else self._queue.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        if not wait:
            while len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            return batch
        gap = self.config.batch_window_ms / 1000.0
        latest = time.monotonic() + max(gap, self.config.max_wait_ms / 1000.0)
        while len(batch) < limit:
            left = latest - time.monotonic()
            wait = min(max(gap, 0.005) if self._preparing else gap, left)  # never a busy loop
            try:
                batch.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            except queue.Empty:
                if self._preparing and time.monotonic() < latest:
                    continue  # more requests are on their way
                break
        return batch

    def _admit(self, batch: list[tuple[Row, Listener]], active: list) -> None:
        """Arrivals join a paused cohort with room (after their own prefill), else start a cohort."""
        cohort = Cohort(self.model, [row for row, _ in batch])
        with self._lock:
            self._batch_sizes[len(batch)] += 1
        size = self.config.max_batch_size
        host = next(((c, b) for c, b in active if c.mergeable() and len(c.unfinished()) + len(batch) <= size),
                    None) if self.config.join_running else None
        if host is not None:
            try:
                paused = not cohort.advance(lambda: True)  # the prompts and their first token
            except Exception as exc:  # reported to these requests only; the running batch goes on
                self._failed(batch, exc)
                return
            if not paused:
                return  # answered already (one token, a stop, or cancelled)
            if cohort.mergeable():
                host[0].absorb(cohort)
                host[1][:] = [(r, li) for r, li in host[1] if not r.finished.is_set()] + batch  # bounded, as states
                self._joined_at = time.monotonic()
                with self._lock:
                    self._counts["joined_running"] += len(batch)
                    self._counts["joins"] += 1
                return
        active.append((cohort, batch))

    def _join_later(self, active: list) -> bool:
        """Arrivals wait for the end of the join gap: a running cohort has room for them."""
        size = self.config.max_batch_size
        return (self.config.join_running and time.monotonic() < self._joined_at + self.config.join_gap_ms / 1000
                and any(c.mergeable() and len(c.unfinished()) < size for c, _ in active))

    def _failed(self, batch: list[tuple[Row, Listener]], exc: Exception) -> None:
        log.exception("generation failed for a batch of %d", len(batch))
        with self._lock:
            self._counts["batch_errors"] += 1
        for row, listener in batch:
            if not row.cancel.is_set() and not row.finished.is_set():
                _notify(listener, "error", exc)

    def _work(self) -> None:
        active: list[tuple[Cohort, list[tuple[Row, Listener]]]] = []  # taking turns, the next one first
        size, most = self.config.max_batch_size, self.config.max_cohorts
        while active or not self._closed.is_set():
            room = size if len(active) < most else max(
                (size - len(c.unfinished()) for c, _ in active if c.mergeable()), default=0) \
                if self.config.join_running else 0
            if not self._closed.is_set() and room > 0 and not self._join_later(active):
                batch = self._collect(wait=not active, limit=room)
                if batch:
                    self._admit(batch, active)
            if not active:
                continue
            cohort, batch = active.pop(0)
            with self._lock:
                self._running = sum(len(c.unfinished()) for c, _ in active) + len(cohort.unfinished())
            start = time.monotonic()
            turn = self.config.slice_ms / 1000.0

            def others_wait() -> bool:
                if self._queue.qsize():  # let the waiting request in at this step ...
                    if self.config.join_running and len(cohort.unfinished()) < size:
                        if not self._join_later(active + [(cohort, batch)]):  # ... to join, once per gap
                            return True
                    elif len(active) + 1 < most:  # ... as a cohort of its own
                        return True
                return bool(active) and time.monotonic() - start >= turn

            try:
                if not cohort.advance(others_wait):
                    active.append((cohort, batch))  # its turn is over: to the back of the line
            except Exception as exc:  # reported to every unfinished request; the engine keeps serving
                self._failed(batch, exc)
            finally:
                elapsed = time.monotonic() - start
                with self._lock:
                    self._running = sum(len(c.unfinished()) for c, _ in active)
                    self._recent_batch_seconds = 0.7 * self._recent_batch_seconds + 0.3 * elapsed
                self._maybe_trim()

    def _maybe_trim(self) -> None:
        every = self.config.trim_heap_s
        if every and time.monotonic() - self._trimmed_at >= every:
            self._trim()
            self._trimmed_at = time.monotonic()
            with self._lock:
                self._counts["heap_trims"] += 1

    # --- state --------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            sizes = dict(sorted(self._batch_sizes.items()))
            return {
                "queued": self._queue.qsize(),
                "running": self._running,
                "preparing": self._preparing,
                "max_queue": self.config.max_queue,
                "max_batch_size": self.config.max_batch_size,
                "batches": sum(sizes.values()),
                "batch_sizes": {str(k): v for k, v in sizes.items()},
                "largest_batch": max(sizes, default=0),
                **dict(self._counts),
            }

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; queued ones are cancelled; running cohorts finish (within ``timeout``)."""
        self._closed.set()
        while True:
            try:
                row, listener = self._queue.get_nowait()
            except queue.Empty:
                break
            row.cancel.set()
            _notify(listener, "error", EngineClosed("the server is shutting down"))
        self._thread.join(timeout)


def _notify(listener: Listener, kind: str, value) -> None:
    try:
        listener(kind, value)
    except RuntimeError as exc:  # e.g. the client's event loop is gone; nothing left to tell
        log.debug("listener for a %s event failed: %s", kind, exc)
