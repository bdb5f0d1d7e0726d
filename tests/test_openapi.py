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
