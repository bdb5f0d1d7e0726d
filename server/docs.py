"""What the OpenAPI schema says of each route: its request body and its error responses.

The routes read their bodies themselves (JSON of several forms, and binary bodies for the tasks
that take them), so Litestar cannot see a body to describe. `documented(...)` gives a route
decorator the body's JSON schema (from the route's own `msgspec` wire struct) and one response per
error status it can answer, all with the one error shape, so client generators and API fuzzers can
use the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody


class ErrorBody(msgspec.Struct):
    """Every error answer: what was wrong, in words a caller can act on, and its kind."""

    error: str
    error_type: str


class InferenceRequest(msgspec.Struct):
    """`POST /`: the task's inputs and the pipeline's keyword arguments."""

    inputs: Any
    parameters: dict[str, Any] | None = None


ERRORS: dict[int, str] = {
    400: "malformed JSON, missing or mistyped `inputs`, unknown or mistyped parameter",
    401: "a token is configured and the request has none or a wrong one",
    404: "the served model cannot answer this route",
    408: "the request's headers or body did not arrive in time",
    413: "the body is over the size limit, or the request holds too many inputs",
    415: "a Content-Type this route cannot take",
    422: "well-formed but impossible: too long without truncation, over a configured bound",
    429: "the queue is full: retry after `Retry-After` seconds",
    431: "the request's headers are over the size or count limit",
    503: "the model is loading, broken, or the server is shutting down",
    500: "a fault of the server; the details are in its log",
}
INFERENCE_ERRORS = (400, 401, 408, 413, 415, 422, 429, 431, 503, 500)
ROUTE_ERRORS = (*INFERENCE_ERRORS, 404)  # the routes that only some models serve


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's schema with its `$defs` references replaced by the definitions (no struct here is
    recursive), so it stands alone inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


# what `POST /` takes besides JSON, for the tasks whose input is a file (parameters in the query string)
FILE_BODIES = ("image/*", "audio/*", "application/octet-stream")


def documented(
    body: type[msgspec.Struct] | None = None,
    errors: tuple[int, ...] = INFERENCE_ERRORS,
    *,
    files: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator: the body's schema (JSON, and raw files where the
    route takes them) and the error responses."""
    responses = {
        status: ResponseSpec(ErrorBody, description=ERRORS[status], generate_examples=False) for status in errors
    }
    if body is None:
        return {"responses": responses}
    content: dict[str, OpenAPIMediaType] = {
        "application/json": OpenAPIMediaType(schema=_inline(msgspec.json.schema(body)))  # type: ignore[arg-type]
    }
    if files:
        binary: Any = {"type": "string", "format": "binary"}
        content |= {media: OpenAPIMediaType(schema=binary) for media in FILE_BODIES}

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(content=content, required=True)

    return {"responses": responses, "operation_class": WithBody}
