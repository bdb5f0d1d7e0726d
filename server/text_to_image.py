"""text-to-image over HTTP: `POST /` with `{"inputs": prompt, "parameters": {...}}`.

The request is checked whole (prompt, steps, size, scheduler) before it is admitted; the
denoising loop runs on a worker and stops at its next step when the client goes away. The answer
is the image: PNG by default, JPEG when `Accept` prefers it, and a JSON string of the PNG in
base64 when `Accept: application/json`, as the contract says. Each step counts in
`kiln_denoising_steps`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from runtime.tasks.base import parse_parameters
from runtime.tasks.text_to_image import TextToImageParameters, TextToImagePipeline
from server import wire
from server.routing import run_until_disconnect
from server.service import Service


async def predict_text_to_image(
    request: Request[Any, Any, Any], service: Service, pipeline: TextToImagePipeline
) -> Response[bytes]:
    content_type, query = request.headers.get("content-type"), request.scope["query_string"]
    inputs, parameters = wire.decode(content_type, await request.body(), pipeline, query)
    prepared = pipeline.prepare(inputs, parse_parameters(TextToImageParameters, parameters))
    media = wire.image_answer_type(request.headers.get("accept"))
    steps = service.metrics.denoising_steps

    def generate(gone: Any) -> Any:
        return pipeline.run(prepared, should_stop=gone, on_step=lambda done, total: steps.inc())

    image = await run_until_disconnect(request, service, pipeline.task, generate)
    return Response(wire.encode_image(image, media, service.settings.max_response_bytes), media_type=media)
