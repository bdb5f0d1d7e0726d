"""Bounded concurrency for blocking inference: a fixed number of workers and a bounded queue.

A request that finds `workers + queue` requests already admitted is refused at once (429) rather
than queued without bound; an admitted one runs on a worker thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from server.errors import Overloaded
from server.metrics import Metrics

T = TypeVar("T")


class Admission:
    def __init__(self, workers: int, queue: int, metrics: Metrics) -> None:
        self.workers = max(1, workers)
        self.capacity = self.workers + max(0, queue)
        self.limiter = anyio.CapacityLimiter(self.workers)
        self.admitted = 0
        self.metrics = metrics

    def resize(self, workers: int) -> None:
        """More (or fewer) workers, the queue beyond them unchanged: for a batcher, which runs the
        model itself and lets each worker only pre- and post-process."""
        queue = self.capacity - self.workers
        self.workers = max(1, workers)
        self.capacity = self.workers + queue
        self.limiter.total_tokens = self.workers

    def check(self) -> None:
        """Refuse at once when full: before a stream starts, so the refusal is a real 429."""
        if self.admitted >= self.capacity:
            self.metrics.rejected.inc()
            raise Overloaded(f"the server is at capacity ({self.capacity} requests in flight or queued); retry shortly")

    async def run(self, fn: Callable[[], T]) -> T:
        self.check()
        self.admitted += 1
        self.metrics.queue_depth.inc()
        started = False

        def call() -> T:
            nonlocal started
            started = True
            self.metrics.queue_depth.dec()
            self.metrics.in_flight.inc()
            try:
                return fn()
            finally:
                self.metrics.in_flight.dec()

        try:
            return await anyio.to_thread.run_sync(call, limiter=self.limiter)
        finally:
            self.admitted -= 1
            if not started:  # cancelled while waiting for a worker
                self.metrics.queue_depth.dec()
