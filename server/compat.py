"""The embedding and reranking APIs people already call, over the same pipelines.

- OpenAI: `POST /v1/embeddings` (`input`, `encoding_format` float or base64, `dimensions`, `usage`).
- text-embeddings-inference: `POST /embed`, `/rerank`, `/similarity`, `/tokenize`, with its shapes,
  so code written for TEI can point here instead.

Each route checks that the served model can answer it (404 `not_served` otherwise) and runs
through the same admission, limits and metrics as `POST /`.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, TypeVar

import msgspec
import numpy as np
from litestar import Request, Response

from runtime import TextPipeline
from runtime.errors import InvalidParameter
from runtime.tasks.ranking import RankingParameters, RankingPipeline
from runtime.tasks.sentence_embeddings import EmbeddingParameters, SentenceEmbedder
from server import wire
from server.errors import BadRequest, NotServed
from server.routing import answer, api_route, served_name
from server.service import Service

S = TypeVar("S", bound=msgspec.Struct)
# /tokenize answers texts of up to this many model windows: enough to see what truncation cuts
TOKENIZE_WINDOWS = 4


class OpenAIEmbeddingRequest(msgspec.Struct):
    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbedRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: str = "right"
    prompt_name: str | None = None
    dimensions: int | None = None


class RerankRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: str = "right"


class SimilarityInputs(msgspec.Struct, forbid_unknown_fields=True):
    source_sentence: str
    sentences: list[str]


class SimilarityRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: SimilarityInputs
    parameters: dict[str, Any] = {}


class TokenizeRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


def embedder(service: Service) -> SentenceEmbedder:
    pipeline = service.ready()
    if not isinstance(pipeline, SentenceEmbedder) or (
        pipeline.manifest.pooling is None and pipeline.task == "feature-extraction"
    ):
        raise NotServed(f"this server serves {pipeline.task}; embeddings need a sentence-embedding model")
    return pipeline


def shorten(vectors: np.ndarray, dimensions: int | None, normalized: bool) -> np.ndarray:
    """Matryoshka-style `dimensions`: keep the first ones, and re-normalize what was normalized."""
    if dimensions is None:
        return vectors
    if not 1 <= dimensions <= vectors.shape[1]:
        raise InvalidParameter(f"`dimensions` must be between 1 and {vectors.shape[1]} for this model")
    short = vectors[:, :dimensions]
    return short / np.linalg.norm(short, axis=1, keepdims=True) if normalized else short


async def decode(request: Request[Any, Any, Any], what: str, kind: type[S]) -> S:
    return wire.decode_json(request.headers.get("content-type"), await request.body(), what, kind)  # type: ignore[no-any-return]


@api_route("/v1/embeddings", "OpenAI embeddings", OpenAIEmbeddingRequest)
async def openai_embeddings(request: Request[Any, Any, Any], service: Service) -> Response[bytes]:
    pipeline = embedder(service)
    req = await decode(request, "/v1/embeddings", OpenAIEmbeddingRequest)
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("`input` must be a string or a non-empty list of strings (token ids are not taken)")
    params = EmbeddingParameters()
    vectors, tokens = await service.run(pipeline.task, len(texts), lambda: pipeline.embed(texts, params))  # type: ignore[arg-type]
    vectors = shorten(vectors, req.dimensions, pipeline.pooling.normalize).astype(np.float32)
    if req.encoding_format == "base64":
        data: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        data = vectors.tolist()
    return answer(
        service,
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": req.model or served_name(pipeline),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


@api_route("/embed", "TEI embed", EmbedRequest)
async def tei_embed(request: Request[Any, Any, Any], service: Service) -> Response[bytes]:
    pipeline = embedder(service)
    req = await decode(request, "/embed", EmbedRequest)
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise BadRequest("`inputs` is an empty list; send a string or a list of strings")
    params = EmbeddingParameters(
        normalize=req.normalize, truncate=req.truncate, truncation_direction=req.truncation_direction,
        prompt_name=req.prompt_name,
    )  # fmt: skip
    vectors, _ = await service.run(pipeline.task, len(texts), lambda: pipeline.embed(texts, params))
    return answer(service, shorten(vectors, req.dimensions, req.normalize))


@api_route("/rerank", "TEI rerank", RerankRequest)
async def tei_rerank(request: Request[Any, Any, Any], service: Service) -> Response[bytes]:
    pipeline = service.ready()
    if not isinstance(pipeline, RankingPipeline):
        raise NotServed(f"this server serves {pipeline.task}; /rerank needs a ranking (cross-encoder) model")
    req = await decode(request, "/rerank", RerankRequest)
    params = RankingParameters(
        raw_scores=req.raw_scores, return_text=req.return_text, truncate=req.truncate,
        truncation_direction=req.truncation_direction,
    )  # fmt: skip
    if not req.texts:
        raise BadRequest("`texts` is an empty list; send the texts to rank")
    inputs = {"query": req.query, "texts": req.texts}
    return answer(service, await service.run(pipeline.task, len(req.texts), lambda: pipeline.predict(inputs, params)))


@api_route("/similarity", "TEI similarity", SimilarityRequest)
async def tei_similarity(request: Request[Any, Any, Any], service: Service) -> Response[bytes]:
    pipeline = embedder(service)
    req = await decode(request, "/similarity", SimilarityRequest)
    inputs = msgspec.to_builtins(req.inputs)
    return answer(service, await service.infer(pipeline, inputs, req.parameters))


@api_route("/tokenize", "TEI tokenize", TokenizeRequest)
async def tei_tokenize(request: Request[Any, Any, Any], service: Service) -> Response[bytes]:
    """Every token of each text, without truncation; a text of more than `TOKENIZE_WINDOWS` times
    the model's window is refused (422), decided from a cut, so the answer's size is bounded."""
    pipeline = service.ready()
    if not isinstance(pipeline, TextPipeline):
        raise NotServed(f"this server serves {pipeline.task}, which takes no text to tokenize")
    req = await decode(request, "/tokenize", TokenizeRequest)
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise BadRequest("`inputs` is an empty list; send a string or a list of strings")
    prompt = ""
    if req.prompt_name is not None:
        if not isinstance(pipeline, SentenceEmbedder):
            raise InvalidParameter("`prompt_name` needs a sentence-embedding model")
        prompt = pipeline.prompt_for(EmbeddingParameters(prompt_name=req.prompt_name))
    most = TOKENIZE_WINDOWS * pipeline.tokenizer.max_length

    def tokenize() -> list[list[dict[str, Any]]]:
        encodings = pipeline.tokenizer.tokens(
            [prompt + t for t in texts], add_special_tokens=req.add_special_tokens, max_tokens=most
        )
        special = set(pipeline.tokenizer.info.special_ids)
        shift = len(prompt)
        return [
            [
                {"id": i, "text": tok, "special": i in special, "start": start - shift if prompt else start,
                 "stop": stop - shift if prompt else stop}
                for i, tok, (start, stop) in zip(e.ids, e.tokens, e.offsets)
            ]
            for e in encodings
        ]  # fmt: skip

    return answer(service, await service.run(pipeline.task, len(texts), tokenize))


ROUTES = [openai_embeddings, tei_embed, tei_rerank, tei_similarity, tei_tokenize]
