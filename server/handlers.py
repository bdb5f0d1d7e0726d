"""Litestar's exception handlers: every error becomes `{"error", "error_type"}` with its status.

Client mistakes keep their words; a server fault is logged with its traceback and answered 500
without details; a client that went away is one INFO line.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from runtime.errors import KilnError
from server.errors import CLIENT_GONE, HTTP_KINDS, body, status_of

log = logging.getLogger("kiln.server")


def request_id(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def note(request: Request[Any, Any, Any], status: int, kind: str) -> None:
    """One line per client error, with the request's id."""
    log.info("%s %s -> %d %s [request %s]", request.method, request.url.path, status, kind, request_id(request))


def kiln_error(request: Request[Any, Any, Any], exc: KilnError) -> Response[dict[str, str]]:
    status = status_of(exc)
    if status == 500:
        return internal_error(request, exc)
    log.info(
        "%s %s -> %d %s [request %s]", request.method, request.url.path, status, exc.error_type, request_id(request)
    )
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(body(exc.message, exc.error_type), status_code=status, headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    if status == 500 and exc.detail == CLIENT_GONE:
        # no one is left to answer: one line in the log, and 499 (as nginx counts it) in the metrics
        log.info("client went away during %s %s [request %s]", request.method, request.url.path, request_id(request))
        return Response(body("the client closed the connection", "client_closed_request"), status_code=499)
    if status >= 500:
        return internal_error(request, exc)
    message = exc.detail
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        message = f"request body is larger than this server's limit of {limit} bytes"
    elif status == 404:
        message = f"no route {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    kind = HTTP_KINDS.get(status, "http_error")
    note(request, status, kind)
    return Response(body(message, kind), status_code=status, headers=exc.headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    log.error(
        "internal error on %s %s [request %s]", request.method, request.url.path, request_id(request), exc_info=exc
    )
    return Response(body("internal server error: the failure is in the server's log", "internal"), status_code=500)


HANDLERS = {KilnError: kiln_error, HTTPException: http_error, Exception: internal_error}
