"""feature-extraction: per-token hidden states, or per-sentence vectors for sentence-transformers.

A plain model answers what the transformers pipeline does, `[1, tokens, hidden]` per input. A
sentence-transformers model answers pooled vectors as text-embeddings-inference does, one per
input (`[[...]]` for one string), and takes `{"source_sentence", "sentences"}` for similarity.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidParameter, Unprocessable
from runtime.pooling import normalize
from runtime.tasks import register
from runtime.tasks.base import texts_of
from runtime.tasks.sentence_embeddings import EmbeddingParameters, SentenceEmbedder


@register("feature-extraction")
class FeatureExtractionPipeline(SentenceEmbedder):
    """Takes the text-embeddings-inference parameters `InferenceClient.feature_extraction` sends
    (`truncate`, `truncation_direction`, `normalize`, `prompt_name`)."""

    def predict(self, inputs: Any, params: EmbeddingParameters) -> Any:
        if self.manifest.pooling is not None:
            if isinstance(inputs, dict):
                return self.similarity(inputs, params)
            texts, _ = texts_of(inputs)
            return self.embed(texts, params)[0].tolist()
        texts, single = texts_of(inputs)
        if params.prompt_name is not None or params.prompt is not None:
            raise InvalidParameter("prompts need a sentence-transformers model; this one is a plain model")
        direction = params.truncation_direction.lower()
        if direction not in ("left", "right"):
            raise InvalidParameter(f"`truncation_direction` must be left or right; got {params.truncation_direction!r}")
        truncation = next((t for t in (params.truncate, params.truncation) if t is not None), True)
        encodings = self.tokenizer.encode(texts, truncation=truncation, direction=direction)
        values = sum(len(e.ids) for e in encodings) * int(self.config.get("hidden_size") or self.config.get("dim") or 0)
        if values > self.limits.max_response_values:
            raise Unprocessable(
                f"the answer would hold {values} numbers (a vector per token); this server answers at most "
                f"{self.limits.max_response_values}: send fewer or shorter texts"
            )
        results = []
        for output in self.core(encodings):
            hidden = output["last_hidden_state"]
            results.append([(normalize(hidden) if params.normalize else hidden).tolist()])
        return results[0] if single else results
