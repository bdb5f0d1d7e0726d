"""Dynamic batching across requests: concurrent calls of a pipeline's `core` become one model call.

Each request still runs its own `preprocess` and `postprocess` on its own thread; only `core`, the
one ONNX Runtime call, goes through the `Batcher`. A caller hands its items over and waits; one
thread takes what callers have queued (up to a number of items and a cost budget: tokens for text,
pixels for images) and runs them as one call, in which the pipeline's core sorts them by length,
so inputs of similar length share padding. Then every caller gets exactly its own outputs.

- A lone request pays no wait and no hand-off: with nothing queued or running and nobody about to
  come, it runs its items on its own thread. The gathering thread waits for more only when callers are
  already inside the pipeline (admitted, preprocessing) and have not handed their items over yet,
  and then at most `max_wait_s`.
- A batch that fails is retried one caller at a time, so the input that broke it fails alone and
  the others succeed; an exception always reaches its caller, nobody waits forever.
- A caller whose client went away still gets its outputs (and drops them); the batch is unharmed.

No web framework here: the server's `Service` installs a batcher on the pipeline it serves, and a
notebook user can do the same around their own threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("kiln.batching")

Outputs = dict[str, np.ndarray]


NUMBERS_PER_TOKEN = 64  # an image's arrays weigh their numbers / 64: a 224 x 224 RGB image ~ 2352 tokens


def cost(item: Any) -> int:
    """What an item weighs against the budget: its tokens (an `Encoding`), or its numbers / 64 (arrays)."""
    ids = getattr(item, "ids", None)
    if ids is not None:
        return len(ids)
    if isinstance(item, dict):
        return max(1, sum(int(np.size(value)) for value in item.values()) // NUMBERS_PER_TOKEN)
    return 1


@dataclass
class _Job:
    items: Sequence[Any]
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[Outputs] | None = None
    error: BaseException | None = None
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """One model call, for metrics: how many callers and items it served, and their wait."""

    callers: int
    items: int
    waits: list[float]


class Batcher:
    def __init__(
        self,
        run: Callable[[Sequence[Any]], list[Outputs]],
        *,
        max_items: int = 64,
        max_cost: int = 16384,
        max_wait_s: float = 0.002,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.run = run
        self.max_items, self.max_cost, self.max_wait_s = max_items, max_cost, max_wait_s
        self.on_batch = on_batch
        self._queue: list[_Job] = []
        self._expected = 0  # callers inside the pipeline that have not handed their items over yet
        self._busy = False  # a model call is running (on the batcher's thread, or inline)
        self._local = threading.local()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="kiln-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def caller(self) -> Iterator[None]:
        """Wrap one request's whole pipeline call (on its thread): until it hands its items over,
        the batcher may wait a moment for it when gathering a batch."""
        with self._cond:
            self._expected += 1
            self._local.expected = True
        try:
            yield
        finally:
            with self._cond:
                self._arrived()
                self._wake_if_gathering()

    def _wake_if_gathering(self) -> None:
        """Wake the batcher's thread if it may be waiting on what just changed (a caller arrived,
        a model call ended): only when something is queued. With an empty queue it sleeps until a
        job comes, and waking it for nothing costs a lone request the GIL and a core (~0.1 ms)."""
        if self._queue:
            self._cond.notify_all()

    def _arrived(self) -> None:
        if getattr(self._local, "expected", False):
            self._expected -= 1
            self._local.expected = False

    def __call__(self, items: Sequence[Any]) -> list[Outputs]:
        """The outputs of `items`, computed in whatever batch they land in (called from any thread)."""
        if not items:
            return []
        job = _Job(items)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._arrived()
            # alone (nothing queued, nothing running, nobody about to come): run here, no hand-off
            inline = not self._queue and not self._busy and not self._expected
            if inline:
                self._busy = True
            else:
                self._queue.append(job)
                self._cond.notify_all()
        if inline:
            try:
                outputs = self._checked(items)
            finally:
                with self._cond:
                    self._busy = False
                    self._wake_if_gathering()
            if self.on_batch is not None:
                self.on_batch(BatchStats(1, len(items), [0.0]))
            return outputs
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        return job.outputs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _take(self) -> list[_Job] | None:
        """The next batch: what is queued, within the limits; waiting a little for callers already
        inside the pipeline, never when the queue holds the only request."""
        with self._cond:
            while (not self._queue or self._busy) and not self._closed:
                self._cond.wait()
            if self._closed and not self._queue:
                return None
            deadline = time.perf_counter() + self.max_wait_s
            while True:
                jobs: list[_Job] = []
                items = weight = 0
                for job in self._queue:
                    extra = sum(cost(item) for item in job.items)
                    if jobs and (items + len(job.items) > self.max_items or weight + extra > self.max_cost):
                        break
                    jobs.append(job)
                    items, weight = items + len(job.items), weight + extra
                full = len(jobs) < len(self._queue) or items >= self.max_items
                remaining = deadline - time.perf_counter()
                if full or not self._expected or remaining <= 0:
                    del self._queue[: len(jobs)]
                    self._busy = True
                    return jobs
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                self._serve(jobs)
            finally:
                with self._cond:  # no one to notify: this thread is the only one waiting on `_cond`
                    self._busy = False

    def _serve(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            if len(jobs) == 1:
                self._run_alone(jobs[0])
            else:
                outputs = self._checked([item for job in jobs for item in job.items])
                start = 0
                for job in jobs:
                    job.outputs = outputs[start : start + len(job.items)]
                    start += len(job.items)
        except Exception as exc:
            log.info("a batch of %d requests failed (%s); retrying each alone", len(jobs), exc)
            for job in jobs:
                self._run_alone(job)
        finally:
            for job in jobs:
                if job.outputs is None and job.error is None:
                    job.error = RuntimeError("the batch ended without an answer for this request")
                job.done.set()
        if self.on_batch is not None:
            waits = [started - job.queued_at for job in jobs]
            self.on_batch(BatchStats(len(jobs), sum(len(job.items) for job in jobs), waits))

    def _run_alone(self, job: _Job) -> None:
        try:
            job.outputs = self._checked(job.items)
        except Exception as exc:
            job.error = exc

    def _checked(self, items: Sequence[Any]) -> list[Outputs]:
        outputs = self.run(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"the model call answered {len(outputs)} outputs for {len(items)} inputs")
        return outputs
