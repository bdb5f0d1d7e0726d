"""The OpenAPI schema is a contract too: a change to it must update the snapshot on purpose.

Regenerate with `KILN_UPDATE_SNAPSHOT=1 pytest tests/test_openapi.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from server.app import create_app
from server.settings import Settings

SNAPSHOT = Path(__file__).parent / "openapi.json"


def test_openapi_schema_matches_the_snapshot() -> None:
    schema = create_app(Settings(model="unused")).openapi_schema.to_schema()
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if os.environ.get("KILN_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "the OpenAPI schema changed: review it, then regenerate the snapshot"


def test_every_post_route_declares_its_body_and_its_errors() -> None:
    schema = create_app(Settings(model="unused")).openapi_schema.to_schema()
    error = schema["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "error_type"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            errors = [status for status in responses if status >= "400"]
            assert errors, f"{method} {path} declares no error response"
            for status in errors:
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (path, status)
            if method == "post":
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert body["type"] == "object" and body["properties"], path
