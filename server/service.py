"""The served model and what serving it needs, with no web framework: loading (and compiling on a
first start), readiness, bounded admission onto worker threads, and metrics.

Litestar's routes drive it today; a batcher and a Ray Serve replica can drive the same object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import runtime
from runtime import Pipeline
from runtime.batching import Batcher, BatchStats
from runtime.handler import CustomHandler, has_handler, load_handler, missing_requirements
from server import model as model_source
from server import wire
from server.admission import Admission
from server.errors import BatchTooLarge, NotReady, NotServed
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("kiln.server")
T = TypeVar("T")


class Service:
    """The served model and what serving it needs: readiness, admission, metrics."""

    def __init__(self, settings: Settings, on_fatal: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(settings.max_concurrency, settings.max_queue, self.metrics)
        self.pipeline: Pipeline | None = None
        self.handler: CustomHandler | None = None  # served instead of a pipeline: a directory's handler.py
        self.artifact: Path | None = None
        self.failure: str | None = None
        self.closing = False
        self.on_fatal = on_fatal
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.batcher: Batcher | None = None
        self.phase = "the model is loading"

    def load(self) -> None:
        """Blocking: compile if needed, load, warm up. Runs on a worker thread at start-up."""
        try:
            self.artifact = model_source.prepare(self.settings, self._compiling)
            if has_handler(self.artifact):
                self.handler = self._load_handler(self.artifact)
                self.ready_after = time.monotonic() - self.started
                return
            pipeline = runtime.load(
                self.artifact,
                device=self.settings.device,
                threads=self.settings.threads,
                spinning=self.settings.spinning,
            )
            pipeline.limits = self.settings.limits()
            pipeline.warmup()
            self.batcher = self._batch(pipeline)
        except Exception as exc:
            # the reason (paths, library messages) goes to the log; callers of /health get the fact
            self.failure = "the model failed to load; the reason is in the server's log"
            log.error("the model failed to load: %s", exc, exc_info=not isinstance(exc, runtime.KilnError))
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.pipeline = pipeline
        self.ready_after = time.monotonic() - self.started
        log.info("ready: %s from %s in %.2f s", pipeline.task, self.artifact, self.ready_after)

    def _load_handler(self, directory: Path) -> CustomHandler:
        """The directory's own code, imported into this process: only where the operator allows it."""
        if not self.settings.allow_handlers:
            raise runtime.ArtifactError(
                f"{directory} has a custom handler (handler.py) and KILN_ALLOW_HANDLERS=0 forbids running it"
            )
        missing = missing_requirements(directory)
        if missing:
            log.warning("handler requirements not installed (kiln does not install them): %s", ", ".join(missing))
        log.warning("loading custom code: %s runs in this server process", directory / "handler.py")
        handler = load_handler(directory)
        log.info(
            "ready: custom handler %s from %s (%s)", type(handler.handler).__qualname__, directory,
            "called concurrently" if handler.thread_safe else "one request at a time",
        )  # fmt: skip
        return handler

    def _batch(self, pipeline: Pipeline) -> Batcher | None:
        """Put a batcher in front of the pipeline's model call, and let as many requests in at once
        as a batch takes (each pre- and post-processes on its own worker). Generation is its own
        loop, token by token: it is not batched and keeps `max_concurrency`."""
        if not self.settings.batching or not pipeline.batchable:
            return None
        metrics = self.metrics

        def observe(stats: BatchStats) -> None:
            metrics.model_batch.observe(stats.items)
            metrics.model_batch_requests.observe(stats.callers)
            metrics.items.inc(stats.items)
            for wait in stats.waits:
                metrics.batch_wait.observe(wait)

        batcher = Batcher(
            pipeline.core,
            max_items=self.settings.max_batch_items,
            max_cost=self.settings.max_batch_tokens,
            max_wait_s=self.settings.batch_wait_ms / 1000,
            on_batch=observe,
        )
        pipeline.core = batcher  # type: ignore[method-assign]
        self.admission.resize(max(self.settings.max_concurrency, self.settings.max_batch_items))
        return batcher

    def describe_batching(self) -> dict[str, Any]:
        if self.batcher is None:
            reason = "off (KILN_BATCHING)" if not self.settings.batching else "generation is its own loop: not batched"
            return {"enabled": False, "why": reason}
        assert self.pipeline is not None
        described: dict[str, Any] = {
            "enabled": True,
            "max_items": self.settings.max_batch_items,
            "max_tokens": self.settings.max_batch_tokens,
            "max_wait_ms": self.settings.batch_wait_ms,
            "max_rows_per_graph_run": self.pipeline.batch_size,
        }
        if not self.pipeline.manifest.batch_invariant:
            described["why_one_row"] = "int8 scaled per activation tensor (compiled by an older kiln): recompile"
        return described

    def _compiling(self, line: str) -> None:
        self.phase = "the model is compiling (first start)"
        log.info(line)

    def ready(self) -> Pipeline:
        """The loaded pipeline; NotReady while loading or closing, NotServed where a handler is served."""
        if self.ready_handler() is not None:
            raise NotServed("this server runs a custom handler (handler.py): send requests to POST /")
        assert self.pipeline is not None
        return self.pipeline

    def ready_handler(self) -> CustomHandler | None:
        """The custom handler when one is served, None when a pipeline is; NotReady before either."""
        if self.closing:
            raise NotReady("the server is shutting down")
        if self.failure is not None:
            raise NotReady(self.failure)
        if self.pipeline is None and self.handler is None:
            raise NotReady(f"{self.phase}; retry shortly")
        return self.handler

    async def run(self, task: str, batch: int, fn: Callable[[], T]) -> T:
        """Run blocking model work through admission, after checking the client's batch size."""
        limit = self.settings.max_client_batch
        if batch > limit:
            raise BatchTooLarge(f"the request holds {batch} inputs; this server takes at most {limit} per request")
        self.metrics.batch_size.labels(task).observe(batch)

        def call() -> T:
            start = time.perf_counter()
            if self.batcher is not None:
                with self.batcher.caller():
                    result = fn()
            else:
                result = fn()
            self.metrics.inference.labels(task).observe(time.perf_counter() - start)
            return result

        return await self.admission.run(call)

    async def infer(self, pipeline: Pipeline, inputs: Any, parameters: dict[str, Any]) -> Any:
        return await self.run(pipeline.task, wire.batch_size(inputs), lambda: pipeline(inputs, **parameters))

    @property
    def task_label(self) -> str:
        served = self.pipeline or self.handler
        return served.task if served else (self.settings.task or "unknown")
