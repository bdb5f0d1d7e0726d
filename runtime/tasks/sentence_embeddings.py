"""Sentence embeddings: hidden states pooled per sentence, as sentence-transformers computes them.

`SentenceEmbedder` holds what the embedding tasks share (prompts, truncation, pooling,
normalization, similarity); the tasks differ only in the shape they answer:
- sentence-embeddings: one vector for one string, a list of vectors for a list;
- sentence-similarity: `{"source_sentence", "sentences"}` -> one score per sentence.
Both, and feature-extraction on a sentence-transformers model, take either input shape, so one
embedding server answers `InferenceClient.feature_extraction` and `.sentence_similarity` alike.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.artifact import SentencePooling
from runtime.errors import InvalidInput, InvalidParameter
from runtime.pooling import normalize, pool
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, texts_of

PLAIN_MODEL_POOLING = SentencePooling(modes=["mean"], normalize=False)


class EmbeddingParameters(msgspec.Struct, forbid_unknown_fields=True):
    normalize: bool | None = None
    truncate: bool | None = None
    truncation: bool | None = None
    truncation_direction: str = "right"
    prompt_name: str | None = None
    prompt: str | None = None


def similarity_inputs(inputs: dict[str, Any]) -> tuple[str, list[str]]:
    source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
    if not isinstance(source, str) or set(inputs) - {"source_sentence", "sentences"}:
        raise InvalidInput('sentence similarity takes {"source_sentence": string, "sentences": [strings]}')
    texts, _ = texts_of(sentences, "a list of strings (`inputs.sentences`)")
    return source, texts


class SentenceEmbedder(TextPipeline):
    """What the embedding tasks share; `embed` is the one path to vectors."""

    Parameters = EmbeddingParameters

    @property
    def pooling(self) -> SentencePooling:
        return self.manifest.pooling or PLAIN_MODEL_POOLING

    def prompt_for(self, params: EmbeddingParameters) -> str:
        if params.prompt is not None:
            return params.prompt
        name = params.prompt_name or self.pooling.default_prompt_name
        if name is None:
            return ""
        if name not in self.pooling.prompts:
            known = ", ".join(self.pooling.prompts) or "none"
            raise InvalidParameter(f"unknown `prompt_name` {name!r}; this model's prompts: {known}")
        return self.pooling.prompts[name]

    def embed(self, texts: list[str], params: EmbeddingParameters) -> tuple[np.ndarray, int]:
        """(vectors, tokens used): one vector per text, normalized as the model or caller says."""
        direction = params.truncation_direction.lower()
        if direction not in ("left", "right"):
            raise InvalidParameter(f"`truncation_direction` must be left or right; got {params.truncation_direction!r}")
        truncation = next((t for t in (params.truncate, params.truncation) if t is not None), True)
        prompt = self.prompt_for(params)
        encodings = self.tokenizer.encode([prompt + t for t in texts], truncation=truncation, direction=direction)
        skip = 0
        if prompt and not self.pooling.include_prompt:
            skip = len(self.tokenizer.encode([prompt])[0].ids) - 1
        vectors = []
        for encoding, output in zip(encodings, self.core(encodings)):
            mask = np.ones((1, len(encoding.ids)), dtype=np.int64)
            mask[0, :skip] = 0
            vectors.append(pool(output["last_hidden_state"][None], mask, self.pooling.modes)[0])
        matrix = np.stack(vectors)
        if self.pooling.normalize if params.normalize is None else params.normalize:
            matrix = normalize(matrix)
        return matrix, sum(len(e.ids) for e in encodings)

    def similarity(self, inputs: dict[str, Any], params: EmbeddingParameters) -> list[float]:
        """Scores of each sentence against the source, with the model's similarity function."""
        source, sentences = similarity_inputs(inputs)
        vectors, _ = self.embed([source, *sentences], params)
        query, others = vectors[0], vectors[1:]
        kind = self.pooling.similarity
        if kind == "cosine":
            scores = normalize(others) @ normalize(query)
        elif kind == "dot":
            scores = others @ query
        elif kind == "euclidean":
            scores = -np.linalg.norm(others - query, axis=1)
        else:
            scores = -np.abs(others - query).sum(axis=1)
        return [float(s) for s in scores]

    def predict(self, inputs: Any, params: EmbeddingParameters) -> Any:
        if isinstance(inputs, dict):
            return self.similarity(inputs, params)
        texts, single = texts_of(inputs)
        vectors, _ = self.embed(texts, params)
        return vectors[0].tolist() if single else vectors.tolist()


@register("sentence-embeddings")
class SentenceEmbeddingsPipeline(SentenceEmbedder):
    """One vector for one string, a list of vectors for a list (or similarities for a pair set)."""


@register("sentence-similarity")
class SentenceSimilarityPipeline(SentenceEmbedder):
    """`{"source_sentence", "sentences"}` -> a score per sentence, best model similarity."""

    example = ({"source_sentence": "What a wonderful day", "sentences": ["A fine day", "A sad night"]}, {})
