"""What every route shares: the service by dependency injection, the token guard, the metrics
middleware, and the one way a JSON answer is encoded (and bounded)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server import wire
from server.errors import Unauthorized
from server.service import Service


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
