"""The contract's own routes: `POST /` and `/predict`, `/health`, `/info`, `/metrics`."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.datastructures import State

from runtime import InputKind
from runtime.tasks.text_generation import GenerativePipeline
from runtime.tasks.text_to_image import TextToImagePipeline
from runtime.versions import installed
from server import wire
from server.docs import InferenceRequest, documented
from server.generate import predict_generation
from server.routing import answer, observe, require_token
from server.service import Service
from server.text_to_image import predict_text_to_image


@post(
    ["/", "/predict"], status_code=200, guards=[require_token], middleware=[observe], summary="Run the model",
    **documented(InferenceRequest, files=True),
)  # fmt: skip
async def predict(request: Request[Any, Any, Any], service: Service) -> Response[Any]:
    """Inference for the served task: `{"inputs": ..., "parameters": {...}}` in, the task's shape out."""
    handler = service.ready_handler()
    if handler is not None:
        content_type, query = request.headers.get("content-type"), request.scope["query_string"]
        data = wire.decode_custom(content_type, await request.body(), query, service.settings.max_image_pixels)
        return answer(service, await service.run(handler.task, 1, lambda: handler(data)))
    pipeline = service.ready()
    if isinstance(pipeline, TextToImagePipeline):
        return await predict_text_to_image(request, service, pipeline)
    if isinstance(pipeline, GenerativePipeline) and pipeline.input_kind is InputKind.TEXT:  # TAPEX takes tables
        generated = await predict_generation(request, service, pipeline)
        return generated if isinstance(generated, Response) else answer(service, generated)
    content_type, query = request.headers.get("content-type"), request.scope["query_string"]
    inputs, parameters = wire.decode(content_type, await request.body(), pipeline, query)
    result = await service.infer(pipeline, inputs, parameters)
    return answer(service, wire.adapt(pipeline.task, result, request.headers.get("user-agent")))


@get(
    "/health", summary="200 once the model is loaded and warm; 503 before, or when broken", **documented(errors=(503,))
)
async def health(service: Service) -> Response[dict[str, Any]]:
    served = service.ready_handler() or service.ready()
    return Response({"status": "ok", "task": served.task})


@get(
    "/info", guards=[require_token], summary="What is served, how it was compiled, and the limits",
    **documented(errors=(401, 503)),
)  # fmt: skip
async def info(service: Service, state: State) -> dict[str, Any]:
    settings = service.settings
    handler = service.ready_handler()
    replica = state.get("replica")  # set by server.ray_serve: which replica answered, how many run
    where = {"replica": await anyio.to_thread.run_sync(replica)} if replica else {}
    if handler is not None:
        return {
            **handler.describe(),
            "limits": {"max_body_bytes": settings.max_body_bytes, "max_concurrency": service.admission.workers},
            "ready_after_seconds": service.ready_after,
            **where,
        }
    pipeline = service.ready()
    manifest = pipeline.manifest
    described = pipeline.describe()
    return {
        "model": manifest.source.model,
        "revision": manifest.source.revision,
        "artifact": str(service.artifact),
        **described,
        "device": settings.device or manifest.device,
        "validation": manifest.validation,
        "compiled_with": manifest.versions,
        "versions": installed("onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy", "litestar"),
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_concurrency": service.admission.workers,
            "max_queue": service.admission.capacity - service.admission.workers,
            "max_input_tokens": described.get("max_input_tokens"),
            "max_image_pixels": settings.max_image_pixels,
            "max_audio_seconds": settings.max_audio_seconds,
        },
        "batching": service.describe_batching(),
        "ready_after_seconds": service.ready_after,
        **where,
    }


@get(
    "/metrics", guards=[require_token], summary="Prometheus text format", media_type="text/plain; version=0.0.4",
    **documented(errors=(401,)),
)  # fmt: skip
async def metrics(service: Service) -> bytes:
    return service.metrics.render()


ROUTES = [predict, health, info, metrics]
