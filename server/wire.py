"""The wire format: request bodies in, response shapes out, as the clients in use expect them.

Requests, decoded by the task's input kind (`Pipeline.input_kind`):
- JSON `{"inputs": ..., "parameters": {...}}` (any `application/json` media type, with parameters
  such as charset), or the older form with task fields beside a null `inputs`; for image and
  audio tasks `inputs` is the file as base64 (plain or a `data:` URL), or a list of them;
- for image and audio tasks, the file itself as the body: `image/*`, the `audio/*` types soundfile
  decodes (others are a 415), `application/octet-stream`, or no Content-Type at all (what
  `InferenceClient` sends for bytes), with parameters from the query string (`?top_k=3`), typed by
  the task's struct.
Responses: what the runtime pipeline returns, except where a client parses another shape (see
`adapt`).
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any
from urllib.parse import parse_qs

import msgspec
import numpy as np
from PIL import Image

from runtime import InputKind, Pipeline
from runtime.audio import MEDIA_TYPES as AUDIO_MEDIA_TYPES
from runtime.encoded import decode_base64_file
from runtime.errors import InvalidInput
from runtime.images import load_image
from runtime.tasks.base import parse_parameters, type_name
from server.errors import BadRequest, ResponseTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json", "text/json")
TOP_LEVEL = {"inputs", "parameters", "options"}


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def require_json(content_type: str | None, what: str) -> None:
    kind = media_type(content_type)
    if kind and kind not in JSON_TYPES and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"{what} takes JSON (Content-Type: application/json); got {kind!r}")


def charset(content_type: str | None) -> str | None:
    """The `charset` parameter of a Content-Type, lower-cased, if any."""
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def decode_json(content_type: str | None, body: bytes, what: str, kind: Any = Any) -> Any:
    """A JSON body, as `kind` (a wire struct) or as plain values; whatever is wrong with it is a 400
    that says what, never a 500: bad JSON, invalid UTF-8, nesting too deep, the wrong shape. A body
    in another declared charset (`charset=latin-1`) is read in that charset; an unknown one is a 415."""
    require_json(content_type, what)
    declared = charset(content_type)
    if declared not in (None, "utf-8", "utf8", "us-ascii", "ascii"):
        try:
            body = body.decode(declared).encode()
        except LookupError:
            raise UnsupportedMediaType(f"unknown charset {declared!r}; send UTF-8 JSON") from None
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the request body is not valid {declared}: {exc.reason} at byte {exc.start}") from None
    if not body.strip():
        raise BadRequest('the request body is empty; send JSON like {"inputs": ...}')
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}".replace("`$.", "`")) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise BadRequest("the request body's JSON is nested too deeply") from None


def _object(content_type: str | None, body: bytes, task: str) -> dict[str, Any]:
    payload = decode_json(content_type, body, task)
    if not isinstance(payload, dict):
        raise BadRequest('the request body must be a JSON object like {"inputs": ..., "parameters": {...}}')
    return payload


def _split(payload: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    parameters = payload.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise BadRequest("`parameters` must be a JSON object")
    extra = set(payload) - TOP_LEVEL
    inputs = payload.get("inputs")
    if inputs is None and extra:
        inputs = {key: payload[key] for key in extra}
    elif extra:
        raise BadRequest(f"unknown field(s) beside `inputs`: {', '.join(sorted(extra))}")
    if inputs is None:
        raise BadRequest('the request has no `inputs`; send JSON like {"inputs": ..., "parameters": {...}}')
    return inputs, parameters


FILE_MEDIA = {InputKind.IMAGE: "image/", InputKind.AUDIO: "audio/"}


def decode(
    content_type: str | None, body: bytes, pipeline: Pipeline, query: bytes | str = b""
) -> tuple[Any, dict[str, Any]]:
    """`(inputs, parameters)` of a request, or a typed error that says what is wrong with it."""
    kind, task = pipeline.input_kind, pipeline.task
    if kind is InputKind.IMAGE_TEXT:
        return _image_question(content_type, body, pipeline, query)
    prefix = FILE_MEDIA.get(kind)
    if prefix is None:
        return _split(_object(content_type, body, task))
    media = media_type(content_type)
    if kind is InputKind.AUDIO and media.startswith(prefix) and media not in AUDIO_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"{media!r} is not a format this server decodes; send {', '.join(AUDIO_MEDIA_TYPES)} (WAV, FLAC, Ogg, MP3)"
        )
    if media.startswith(prefix) or media == "application/octet-stream" or (not media and not _json_like(body)):
        if not body:
            raise BadRequest(f"the request body is empty; send the {kind} file")
        return body, query_parameters(query, pipeline.Parameters)
    if media and media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"{task} takes the {kind} file ({prefix}*, application/octet-stream) or JSON with base64 `inputs`; "
            f"got {media!r}"
        )
    inputs, parameters = _split(_object(content_type, body, task))
    return _file_inputs(inputs, kind), parameters


def decode_custom(content_type: str | None, body: bytes, query: bytes | str, max_pixels: int) -> dict[str, Any]:
    """A custom handler's `data`, as the Inference Endpoints container builds it: the JSON object
    whole (it must hold `inputs` or `instances`), an image body as `{"inputs": PIL.Image}` (RGB;
    here also turned by its EXIF orientation and refused past `max_pixels`),
    an audio or `application/octet-stream` body as `{"inputs": bytes}`; query parameters become
    `parameters` when the body has none (digits -> int, true/false -> bool)."""
    media = media_type(content_type)
    data: dict[str, Any]
    if media.startswith("image/"):
        data = {"inputs": load_image(body, max_pixels=max_pixels)}
    elif media.startswith("audio/") or media == "application/octet-stream":
        data = {"inputs": body}
    else:
        payload = decode_json(content_type, body, "this handler")
        if not isinstance(payload, dict) or not ({"inputs", "instances"} & set(payload)):
            raise BadRequest("the request body must be a JSON object with `inputs` (or `instances`)")
        data = payload
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    if text and "parameters" not in data:
        data["parameters"] = {name: _container_typed(values[-1]) for name, values in parse_qs(text).items()}
    return data


def _container_typed(value: str) -> Any:
    return int(value) if value.isnumeric() else {"true": True, "false": False}.get(value, value)


def _image_question(
    content_type: str | None, body: bytes, pipeline: Pipeline, query: bytes | str
) -> tuple[Any, dict[str, Any]]:
    """An image with a question (visual-question-answering), in the forms clients send:
    - the image as the body (`image/*`, `application/octet-stream`), `?question=...` in the query;
    - JSON `{"inputs": {"image": <base64>, "question": ...}}`, or a list of those;
    - huggingface_hub 0.36: `{"inputs": <base64>, "image": <base64>, "question": ...}`, the question
      beside `inputs`; older clients: `{"inputs": null, "image": ..., "question": ...}`."""
    media = media_type(content_type)
    if media.startswith("image/") or media == "application/octet-stream":
        if not body:
            raise BadRequest("the request body is empty; send the image")
        parameters = query_parameters(query, pipeline.Parameters)
        question = parameters.pop("question", None)
        if not isinstance(question, str) or not question:
            raise BadRequest("with the image as the body, send the question in the query string: ?question=...")
        return {"image": body, "question": question}, parameters
    payload = _object(content_type, body, pipeline.task)
    if payload.get("inputs") is not None and "question" in payload:
        question = payload.pop("question")
        payload.pop("image", None)  # the same image as `inputs`
        if isinstance(payload["inputs"], str):
            payload["inputs"] = {"image": payload["inputs"], "question": question}
    inputs, parameters = _split(payload)
    return _question_images(inputs), parameters


def _question_images(inputs: Any) -> Any:
    """The base64 images of `{"image", "question"}` inputs (or a bare base64 image) as bytes."""
    if isinstance(inputs, str):
        return decode_base64_file(inputs, "image")
    if isinstance(inputs, list):
        return [_question_images(item) for item in inputs]
    if isinstance(inputs, dict) and isinstance(inputs.get("image"), str):
        return {**inputs, "image": decode_base64_file(inputs["image"], "image")}
    raise InvalidInput('`inputs` must be {"image": <base64>, "question": ...}, a list of them, or a base64 image')


def _json_like(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


def _file_inputs(inputs: Any, kind: InputKind) -> Any:
    """JSON `inputs` of a file task: a base64 string (or a list of them) -> the file's bytes."""
    if isinstance(inputs, str):
        return decode_base64_file(inputs, str(kind))
    if isinstance(inputs, list) and inputs and all(isinstance(item, str) for item in inputs):
        return [decode_base64_file(item, str(kind)) for item in inputs]
    raise InvalidInput(f"`inputs` must be the {kind} as base64, or a list of them; got {type_name(inputs)}")


def query_parameters(query: bytes | str, kind: type[msgspec.Struct]) -> dict[str, Any]:
    """Parameters from a query string, typed by the task's struct (`top_k=3` -> 3); a repeated
    name is a list (`candidate_labels=cat&candidate_labels=dog`)."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    raw: dict[str, Any] = {
        name: values[0] if len(values) == 1 else values
        for name, values in parse_qs(text, keep_blank_values=True).items()
    }
    typed = parse_parameters(kind, raw, strict=False)
    return {name: getattr(typed, name) for name in raw}


def decode_generation(content_type: str | None, body: bytes, task: str) -> tuple[Any, dict[str, Any], bool]:
    """`(inputs, parameters, stream)`: generation requests may also carry TGI's top-level `stream`."""
    payload = _object(content_type, body, task)
    stream = payload.pop("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false")
    return (*_split(payload), stream)


def batch_size(inputs: Any) -> int:
    """How many model inputs a request holds: list items, or the texts/sentences of a dict."""
    if isinstance(inputs, dict):
        for key in ("texts", "sentences"):
            if isinstance(inputs.get(key), list):
                return len(inputs[key])
        return 1
    if isinstance(inputs, list) and not (len(inputs) == 2 and all(isinstance(x, str) for x in inputs)):
        return len(inputs)
    return 1


def _builtin(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Image.Image):  # segmentation masks: base64 PNG, as the clients decode them
        png = io.BytesIO()
        value.save(png, format="PNG")
        return base64.b64encode(png.getvalue()).decode()
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


def encode_json(result: Any, limit: int) -> bytes:
    """A result as JSON bytes; an answer over `limit` bytes is refused rather than sent."""
    data = msgspec.json.encode(result, enc_hook=_builtin)
    if len(data) > limit:
        raise ResponseTooLarge(
            f"the answer would be {len(data) / 1e6:.1f} MB; this server sends at most {limit / 1e6:.1f} MB: "
            "send fewer or shorter inputs"
        )
    return data


IMAGE_ANSWERS = ("image/png", "image/jpeg", "application/json")


def image_answer_type(accept: str | None) -> str:
    """What an image answer is sent as: the first of PNG, JPEG and JSON (a base64 PNG string) that
    `Accept` ranks highest (q-values honoured, ties in the header's order); PNG when it names none
    of them (no header, `*/*`, `image/*`)."""
    best, best_q = "image/png", 0.0
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = "image/jpeg" if media.lower() == "image/jpg" else media.lower()
        if media in IMAGE_ANSWERS and q > best_q:
            best, best_q = media, q
    return best


def encode_image(image: Image.Image, media: str, limit: int) -> bytes:
    """An image as `media` (one of `IMAGE_ANSWERS`), refused past `limit` bytes as JSON answers are."""
    out = io.BytesIO()
    image.save(out, format="JPEG" if media == "image/jpeg" else "PNG")
    if media == "application/json":
        return encode_json(base64.b64encode(out.getvalue()).decode(), limit)
    if out.tell() > limit:
        raise ResponseTooLarge(
            f"the image would be {out.tell() / 1e6:.1f} MB; this server sends at most {limit / 1e6:.1f} MB"
        )
    return out.getvalue()


_HF_HUB = re.compile(r"\bhf_hub/(\d+)\.(\d+)")


def hf_hub_version(user_agent: str | None) -> tuple[int, int] | None:
    match = _HF_HUB.search(user_agent or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def adapt(task: str, result: Any, user_agent: str | None) -> Any:
    """Reshape a result for the client that asked, where clients in use parse different shapes.

    - text-classification: `huggingface_hub` keeps only the first element of the list it receives
      (it expects Hugging Face's hosted `[[...]]`), so its clients get one more level.
    - zero-shot-classification: `huggingface_hub` 1.0 and later parses `[{"label", "score"}]`;
      older versions and raw HTTP get the container's `{"sequence", "labels", "scores"}`.
    """
    client = hf_hub_version(user_agent)
    if client is None:
        return result
    if task == "text-classification" and result and isinstance(result[0], dict):
        return [result]
    if task == "zero-shot-classification" and client >= (1, 0) and isinstance(result, dict):
        return [{"label": label, "score": score} for label, score in zip(result["labels"], result["scores"])]
    return result
