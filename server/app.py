"""The Litestar app: the contract's routes over a runtime pipeline.

`create_app(settings)` builds it. The lifespan starts loading the model in the background, so
`/health` answers 503 while it loads (and compiles, on a first start) and 200 once it is warm.
Handlers decode, call the pipeline through `Service`, and encode; errors go through one table
(`server.errors`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

import runtime
from runtime import Pipeline
from runtime.tasks.text_generation import GenerativePipeline
from runtime.versions import installed
from server import model as model_source
from server import wire
from server.admission import Admission
from server.docs import InferenceRequest, documented
from server.errors import HANDLERS, BatchTooLarge, NotReady, Unauthorized, body
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
        self.artifact: Path | None = None
        self.failure: str | None = None
        self.closing = False
        self.on_fatal = on_fatal
        self.started = time.monotonic()
        self.ready_after: float | None = None

    def load(self) -> None:
        """Blocking: compile if needed, load, warm up. Runs on a worker thread at start-up."""
        try:
            self.artifact = model_source.prepare(self.settings)
            pipeline = runtime.load(
                self.artifact,
                device=self.settings.device,
                threads=self.settings.threads,
                spinning=self.settings.spinning,
            )
            pipeline.limits = self.settings.limits()
            pipeline.warmup()
        except Exception as exc:
            self.failure = f"the model failed to load: {exc}"
            log.error(self.failure, exc_info=not isinstance(exc, runtime.KilnError))
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.pipeline = pipeline
        self.ready_after = time.monotonic() - self.started
        log.info("ready: %s from %s in %.2f s", pipeline.task, self.artifact, self.ready_after)

    def ready(self) -> Pipeline:
        if self.closing:
            raise NotReady("the server is shutting down")
        if self.failure is not None:
            raise NotReady(self.failure)
        if self.pipeline is None:
            raise NotReady("the model is loading; retry shortly")
        return self.pipeline

    async def run(self, task: str, batch: int, fn: Callable[[], T]) -> T:
        """Run blocking model work through admission, after checking the client's batch size."""
        limit = self.settings.max_client_batch
        if batch > limit:
            raise BatchTooLarge(f"the request holds {batch} inputs; this server takes at most {limit} per request")
        self.metrics.batch_size.labels(task).observe(batch)

        def call() -> T:
            start = time.perf_counter()
            result = fn()
            self.metrics.inference.labels(task).observe(time.perf_counter() - start)
            return result

        return await self.admission.run(call)

    async def infer(self, pipeline: Pipeline, inputs: Any, parameters: dict[str, Any]) -> Any:
        return await self.run(pipeline.task, wire.batch_size(inputs), lambda: pipeline(inputs, **parameters))

    @property
    def task_label(self) -> str:
        return self.pipeline.task if self.pipeline else (self.settings.task or "unknown")


def answer(service: Service, result: Any) -> Response[bytes]:
    """A 200 JSON answer, refused (422) past the configured response size."""
    return Response(wire.encode_json(result, service.settings.max_response_bytes), media_type="application/json")


def get_service(state: State) -> Service:
    return state.service  # type: ignore[no-any-return]


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    token = get_service(connection.app.state).settings.api_token
    if token and connection.headers.get("authorization", "") != f"Bearer {token}":
        raise Unauthorized("this server needs `Authorization: Bearer <token>` with its configured token")


def observe(app: ASGIApp) -> ASGIApp:
    """Count inference requests and their latency by task and final status, errors included."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        service = get_service(scope["app"].state)  # type: ignore[index]
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            labels = (service.task_label, str(status))
            service.metrics.requests.labels(*labels).inc()
            service.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    return middleware


@post(
    ["/", "/predict"], status_code=200, guards=[require_token], middleware=[observe], summary="Run the model",
    **documented(InferenceRequest),
)  # fmt: skip
async def predict(request: Request[Any, Any, Any], service: Service) -> Response[Any]:
    """Inference for the served task: `{"inputs": ..., "parameters": {...}}` in, the task's shape out."""
    pipeline = service.ready()
    if isinstance(pipeline, GenerativePipeline):
        from server.generate import predict_generation

        generated = await predict_generation(request, service, pipeline)
        return generated if isinstance(generated, Response) else answer(service, generated)
    inputs, parameters = wire.decode(request.headers.get("content-type"), await request.body(), pipeline.task)
    result = await service.infer(pipeline, inputs, parameters)
    return answer(service, wire.adapt(pipeline.task, result, request.headers.get("user-agent")))


@get(
    "/health", summary="200 once the model is loaded and warm; 503 before, or when broken", **documented(errors=(503,))
)
async def health(service: Service) -> Response[dict[str, Any]]:
    pipeline = service.ready()
    return Response({"status": "ok", "task": pipeline.task})


@get(
    "/info", guards=[require_token], summary="What is served, how it was compiled, and the limits",
    **documented(errors=(401, 503)),
)  # fmt: skip
async def info(service: Service) -> dict[str, Any]:
    pipeline = service.ready()
    manifest = pipeline.manifest
    settings = service.settings
    return {
        "model": manifest.source.model,
        "revision": manifest.source.revision,
        "artifact": str(service.artifact),
        **pipeline.describe(),
        "device": settings.device or manifest.device,
        "validation": manifest.validation,
        "compiled_with": manifest.versions,
        "versions": installed("onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy", "litestar"),
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_concurrency": service.admission.workers,
            "max_queue": service.admission.capacity - service.admission.workers,
            "max_input_tokens": pipeline.tokenizer.max_length,
        },
        "ready_after_seconds": service.ready_after,
    }


@get(
    "/metrics", guards=[require_token], summary="Prometheus text format", media_type="text/plain; version=0.0.4",
    **documented(errors=(401,)),
)  # fmt: skip
async def metrics(service: Service) -> bytes:
    return service.metrics.render()


def create_app(settings: Settings, *, service: Service | None = None) -> Litestar:
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: anyio.to_thread.run_sync(service.load, abandon_on_cancel=True))
            try:
                yield
            finally:
                service.closing = True
                group.cancel_scope.cancel()

    from server import compat, generate

    return Litestar(
        route_handlers=[predict, health, info, metrics, *compat.ROUTES, *generate.ROUTES],
        dependencies={"service": Provide(get_service, sync_to_thread=False)},
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        state=State({"service": service}),
        request_max_body_size=settings.max_body_bytes,
        type_encoders={np.generic: lambda x: x.item(), np.ndarray: lambda x: x.tolist()},
        openapi_config=OpenAPIConfig(title="kiln", version=runtime.__version__, path="/docs"),
        logging_config=None,  # the CLI configures logging; Litestar's queue handler would drop a fatal start-up message
        debug=False,
    )


def exit_on_fatal() -> None:
    """For `kiln serve`: a server that cannot load its model exits, so a supervisor sees it."""
    logging.shutdown()
    os._exit(3)


__all__ = ["Service", "body", "create_app", "exit_on_fatal"]
