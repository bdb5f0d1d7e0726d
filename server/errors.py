"""One table from error kind to HTTP status, and one body shape: `{"error", "error_type"}`."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, KilnError, Unprocessable

log = logging.getLogger("kiln.server")


class BadRequest(KilnError):
    error_type = "bad_request"


class Unauthorized(KilnError):
    error_type = "unauthorized"


class NotServed(KilnError):
    error_type = "not_served"


class BatchTooLarge(KilnError):
    error_type = "batch_too_large"


class UnsupportedMediaType(KilnError):
    error_type = "unsupported_media_type"


class Overloaded(KilnError):
    error_type = "overloaded"


class ResponseTooLarge(Unprocessable):
    error_type = "response_too_large"


class NotReady(KilnError):
    error_type = "not_ready"


STATUS: dict[type[KilnError], int] = {
    BadRequest: 400,
    InvalidInput: 400,
    InvalidParameter: 400,
    Unauthorized: 401,
    NotServed: 404,
    BatchTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    Overloaded: 429,
    NotReady: 503,
    ArtifactError: 503,
}

HTTP_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    503: "not_ready",
}


# what Litestar raises when the client disconnects before its body is read
CLIENT_GONE = "client disconnected prematurely"


def body(message: str, kind: str) -> dict[str, str]:
    return {"error": message, "error_type": kind}


def status_of(exc: KilnError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def kiln_error(request: Request[Any, Any, Any], exc: KilnError) -> Response[dict[str, str]]:
    status = status_of(exc)
    if status == 500:
        return internal_error(request, exc)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(body(exc.message, exc.error_type), status_code=status, headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    if status == 500 and exc.detail == CLIENT_GONE:
        # no one is left to answer: one line in the log, and 499 (as nginx counts it) in the metrics
        log.info("client went away during %s %s", request.method, request.url.path)
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
    return Response(body(message, HTTP_KINDS.get(status, "http_error")), status_code=status, headers=exc.headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(body("internal server error: the failure is in the server's log", "internal"), status_code=500)


HANDLERS = {KilnError: kiln_error, HTTPException: http_error, Exception: internal_error}
