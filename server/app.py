"""The Litestar app: the contract's routes over a `Service`.

`create_app(settings)` builds it. The lifespan starts loading the model in the background, so
`/health` answers 503 while it loads (and compiles, on a first start) and 200 once it is warm.
Routes decode, call the pipeline through the `Service`, and encode; errors go through one table
(`server.errors`, answered by `server.handlers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import numpy as np
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

import runtime
from server import compat, generate, inference
from server.handlers import HANDLERS
from server.routing import get_service, request_ids
from server.service import Service
from server.settings import Settings

log = logging.getLogger("kiln.server")


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

    return Litestar(
        route_handlers=[*inference.ROUTES, *compat.ROUTES, *generate.ROUTES],
        dependencies={"service": Provide(get_service, sync_to_thread=False)},
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        state=State({"service": service}),
        request_max_body_size=settings.max_body_bytes,
        type_encoders={np.generic: lambda x: x.item(), np.ndarray: lambda x: x.tolist()},
        openapi_config=OpenAPIConfig(title="kiln", version=runtime.__version__, path="/docs"),
        middleware=[request_ids],
        cors_config=cors(settings),
        logging_config=None,  # the CLI configures logging; Litestar's queue handler would drop a fatal start-up message
        debug=False,
    )


def cors(settings: Settings) -> CORSConfig | None:
    """Off unless origins are configured: a browser page elsewhere may not call this server."""
    if not settings.cors_origins:
        return None
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    return CORSConfig(allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])


def exit_on_fatal() -> None:
    """For `kiln serve`: a server that cannot load its model exits, so a supervisor sees it."""
    logging.shutdown()
    os._exit(3)


__all__ = ["Service", "create_app", "exit_on_fatal"]
