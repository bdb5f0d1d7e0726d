"""Generation over HTTP: the contract's `POST /`, text-generation-inference's streaming protocol
(what `InferenceClient.text_generation` speaks), and OpenAI's `/v1/chat/completions` and
`/v1/completions`, streamed as server-sent events when asked.

The generation loop runs on a worker thread under the same admission as every request and hands
tokens to the event loop as they come. A client that disconnects cancels its stream; the loop
sees the flag at the next token and frees its worker, so the next request is not delayed.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

import anyio
import anyio.from_thread
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from runtime import InputKind
from runtime.tasks.text_generation import Finished, GenerativePipeline, Prepared, Token
from server import wire
from server.errors import BadRequest, NotServed
from server.routing import answer, api_route, run_until_disconnect, served_name
from server.service import Service

SSE = "text/event-stream"
TGI_REASONS = {"eos_token": "eos_token", "stop_sequence": "stop_sequence"}  # anything else: "length"
OPENAI_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "cancelled": "stop"}  # anything else: "length"


def generative(service: Service) -> GenerativePipeline:
    pipeline = service.ready()
    if not isinstance(pipeline, GenerativePipeline) or pipeline.input_kind is not InputKind.TEXT:
        raise NotServed(f"this server serves {pipeline.task}; generation needs a text-generation model")
    return pipeline


async def events(service: Service, pipeline: GenerativePipeline, prepared: Prepared) -> AsyncIterator[Token | Finished]:
    """Run one generation on a worker and yield its events; stop it when the consumer goes away."""
    send, receive = anyio.create_memory_object_stream[Token | Finished | BaseException](math.inf)
    cancelled = threading.Event()

    def work() -> None:
        try:
            for event in pipeline.events(prepared, cancelled.is_set):
                anyio.from_thread.run_sync(send.send_nowait, event)
        except Exception as exc:
            anyio.from_thread.run_sync(send.send_nowait, exc)

    async def run() -> None:
        try:
            await service.run(pipeline.task, 1, work)
        except Exception as exc:
            send.send_nowait(exc)
        finally:
            send.close()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        try:
            async for event in receive:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            cancelled.set()


async def finish(
    request: Request[Any, Any, Any], service: Service, pipeline: GenerativePipeline, prepared: Prepared
) -> tuple[list[Token], Finished]:
    """Generate a whole answer on a worker; a client that goes away stops it at the next step."""
    return await run_until_disconnect(request, service, pipeline.task, lambda gone: pipeline.finish(prepared, gone))


def sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def tgi_token(index: int, token: Token, finished: Finished | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "index": index,
        "token": {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special},
        "generated_text": None,
        "details": None,
    }
    if finished is not None:
        body["generated_text"] = finished.text
        body["details"] = {
            "finish_reason": TGI_REASONS.get(finished.reason, "length"),
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
        }
    return body


async def predict_generation(request: Request[Any, Any, Any], service: Service, pipeline: GenerativePipeline) -> Any:
    """`POST /` for a generative model: the transformers shape, TGI's `details`, or a TGI stream."""
    payload = wire.decode_generation(request.headers.get("content-type"), await request.body(), pipeline.task)
    inputs, parameters, stream = payload
    from_hf_client = wire.hf_hub_version(request.headers.get("user-agent")) is not None
    if from_hf_client and pipeline.task == "text-generation" and "return_full_text" not in parameters:
        parameters["return_full_text"] = False  # the client speaks TGI, which answers the completion alone
    prepared = await service.run(pipeline.task, 1, lambda: pipeline.prepare(inputs, parameters))
    if stream:
        service.admission.check()
        return Stream(_tgi_tokens(service, pipeline, prepared), media_type=SSE)
    tokens, finished = await finish(request, service, pipeline, prepared)
    text = finished.text
    if isinstance(inputs, list):
        return [{"generated_text": [*inputs, {"role": "assistant", "content": text}]}]
    if parameters.get("return_full_text", pipeline.task == "text-generation") and pipeline.task == "text-generation":
        text = prepared.prompt + text
    answer: dict[str, Any] = {pipeline.output_key: text}
    if prepared.params.details:
        answer["details"] = {
            "finish_reason": TGI_REASONS.get(finished.reason, "length"),
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "prefill": [],
            "tokens": [{"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special} for t in tokens],
        }
    return [answer]


async def _tgi_tokens(service: Service, pipeline: GenerativePipeline, prepared: Prepared) -> AsyncIterator[bytes]:
    """TGI's stream: one event per token; the last carries the whole text and the details."""
    index, pending = 0, None
    try:
        async for event in events(service, pipeline, prepared):
            if isinstance(event, Token):
                if pending is not None:
                    yield sse(tgi_token(index, pending, None))
                index, pending = index + 1, event
            elif pending is not None:
                yield sse(tgi_token(index, pending, event))
    except Exception as exc:
        yield sse({"error": str(exc), "error_type": getattr(exc, "error_type", "generation_error")})


class OpenAIGeneration(msgspec.Struct, kw_only=True):
    """What OpenAI's chat and completion requests share."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None


class ChatRequest(OpenAIGeneration, kw_only=True):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    stream_options: dict[str, Any] | None = None


class CompletionRequest(OpenAIGeneration, kw_only=True):
    prompt: str
    echo: bool = False


def openai_parameters(req: OpenAIGeneration) -> dict[str, Any]:
    if req.n != 1:
        raise BadRequest("`n` must be 1: this server generates one choice per request")
    if req.frequency_penalty or req.presence_penalty:
        raise BadRequest("`frequency_penalty` and `presence_penalty` are not supported; use `repetition_penalty`")
    parameters: dict[str, Any] = {}
    limit = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if limit is not None:
        parameters["max_new_tokens"] = limit
    for name in ("temperature", "top_p", "seed"):
        if getattr(req, name) is not None:
            parameters[name] = getattr(req, name)
    if req.temperature is not None:
        parameters["do_sample"] = req.temperature > 0
    if req.stop:
        parameters["stop"] = [req.stop] if isinstance(req.stop, str) else req.stop
    return parameters


def _openai_response(
    kind: Literal["chat.completion", "text_completion"], model: str, text: str, finished: Finished
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": OPENAI_REASONS.get(finished.reason, "length")}
    if kind == "chat.completion":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice |= {"text": text, "logprobs": None}
    return {
        "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": finished.prompt_tokens,
            "completion_tokens": finished.generated_tokens,
            "total_tokens": finished.prompt_tokens + finished.generated_tokens,
        },
    }


async def _openai_stream(
    service: Service, pipeline: GenerativePipeline, prepared: Prepared, model: str, chunk: Callable[..., dict[str, Any]]
) -> AsyncIterator[bytes]:
    ident = f"{'chatcmpl' if chunk is _chat_chunk else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    yield sse(chunk(ident, created, model, {"role": "assistant", "content": ""}, None))
    try:
        async for event in events(service, pipeline, prepared):
            if isinstance(event, Token):
                if event.text:
                    yield sse(chunk(ident, created, model, {"content": event.text}, None))
            else:
                yield sse(chunk(ident, created, model, {}, OPENAI_REASONS.get(event.reason, "length")))
    except Exception as exc:
        yield sse({"error": {"message": str(exc), "type": getattr(exc, "error_type", "generation_error")}})
    yield b"data: [DONE]\n\n"


def _chat_chunk(ident: str, created: int, model: str, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
    return {
        "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
    }  # fmt: skip


def _completion_chunk(
    ident: str, created: int, model: str, delta: dict[str, Any], reason: str | None
) -> dict[str, Any]:
    return {
        "id": ident, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": delta.get("content", ""), "finish_reason": reason, "logprobs": None}],
    }  # fmt: skip


R = TypeVar("R", bound=OpenAIGeneration)


async def _openai(
    request: Request[Any, Any, Any], service: Service, route: str, kind: type[R], prompt: Callable[[R], Any],
    chunk: Callable[..., dict[str, Any]],
) -> Stream | tuple[R, str, Finished]:  # fmt: skip
    """Decode, prepare (errors surface here, before any stream), then stream or finish."""
    pipeline = generative(service)
    req: R = wire.decode_json(request.headers.get("content-type"), await request.body(), route, kind)
    parameters = openai_parameters(req)
    prepared = await service.run(pipeline.task, 1, lambda: pipeline.prepare(prompt(req), parameters))
    model = req.model or served_name(pipeline)
    if req.stream:
        service.admission.check()
        return Stream(_openai_stream(service, pipeline, prepared, model, chunk), media_type=SSE)
    _, finished = await finish(request, service, pipeline, prepared)
    return req, model, finished


@api_route("/v1/chat/completions", "OpenAI chat", ChatRequest)
async def chat_completions(request: Request[Any, Any, Any], service: Service) -> Response[Any]:
    if generative(service).task != "text-generation":
        raise NotServed(f"this server serves {generative(service).task}; chat needs a text-generation model")
    outcome = await _openai(request, service, "/v1/chat/completions", ChatRequest, lambda r: r.messages, _chat_chunk)
    if isinstance(outcome, Stream):
        return outcome
    _, model, finished = outcome
    return answer(service, _openai_response("chat.completion", model, finished.text, finished))


@api_route("/v1/completions", "OpenAI completions", CompletionRequest)
async def completions(request: Request[Any, Any, Any], service: Service) -> Response[Any]:
    outcome = await _openai(
        request, service, "/v1/completions", CompletionRequest, lambda r: r.prompt, _completion_chunk
    )
    if isinstance(outcome, Stream):
        return outcome
    req, model, finished = outcome
    text = (req.prompt if req.echo else "") + finished.text
    return answer(service, _openai_response("text_completion", model, text, finished))


ROUTES = [chat_completions, completions]
