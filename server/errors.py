"""One table from error kind to HTTP status, and one body shape: `{"error", "error_type"}`.

No web framework here: the service, the admission path and the connection layer raise these, and
`server.handlers` turns them into Litestar responses.
"""

from __future__ import annotations

from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, KilnError, Stopped, Unprocessable


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
    Stopped: 503,  # a long generation stopped for a client that went away: nobody reads this answer
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
