"""What every route shares: the service by dependency injection, the token guard, the metrics
middleware, and the one way a JSON answer is encoded (and bounded)."""

from __future__ import annotations

import hmac
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from runtime import Pipeline
from server import wire
from server.docs import ROUTE_ERRORS, documented
from server.errors import Unauthorized
from server.service import Service

T = TypeVar("T")


def answer(service: Service, result: Any) -> Response[bytes]:
    """A 200 JSON answer, refused (422) past the configured response size."""
    return Response(wire.encode_json(result, service.settings.max_response_bytes), media_type="application/json")


async def run_until_disconnect(
    request: Request[Any, Any, Any], service: Service, task: str, work: Callable[[Callable[[], bool]], T]
) -> T:
    """Run long model work (a whole generation) under admission, with `work` given a flag that
    turns true once the client has gone away, so that it stops at its next step and frees its worker.

    The body is read by now, so the next ASGI message is the disconnect (or the end of the
    response): waiting for it beside the work is how a request that streams nothing notices."""
    gone = threading.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result = await service.run(task, 1, lambda: work(gone.is_set))
        finally:
            group.cancel_scope.cancel()
    return result


def served_name(pipeline: Pipeline) -> str:
    """The model's name in answers (OpenAI's `model`): its Hub id, or a local directory's name,
    never its path on this machine."""
    source = pipeline.manifest.source
    return Path(source.model).name if source.local else source.model


def api_route(path: str, summary: str, body: type[msgspec.Struct]) -> post:
    """A POST route of an API people already call (OpenAI, TEI): token, metrics, its body and its
    errors in the OpenAPI schema, 200 on success."""
    return post(
        path, status_code=200, guards=[require_token], middleware=[observe], summary=summary,
        **documented(body, ROUTE_ERRORS),
    )  # fmt: skip


def get_service(state: State) -> Service:
    return state.service  # type: ignore[no-any-return]


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The configured bearer token, compared in constant time (bytes: any header value compares)."""
    token = get_service(connection.app.state).settings.api_token
    given = connection.headers.get("authorization", "").encode("utf-8", "surrogateescape")
    if token and not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise Unauthorized("this server needs `Authorization: Bearer <token>` with its configured token")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_ids(app: ASGIApp) -> ASGIApp:
    """Every request gets an id: the client's `x-request-id` when it is a sane token, else a new
    one; it is echoed in the response's `x-request-id` and named in every error's log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        ident = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = ident  # type: ignore[typeddict-item]

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", ident.encode())]
            await send(message)

        await app(scope, receive, tagged)

    return middleware


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
