"""ranking: a cross-encoder scores (query, text) pairs, as sentence-transformers' CrossEncoder.

Inputs: one pair `[query, text]` -> a score; pairs `[[q, t], ...]` -> a list of scores;
`{"query", "texts"}` -> `[{"index", "score"}]` best first (the text-embeddings-inference rerank
shape, with `return_text`). Scores go through the model's activation (sigmoid for a one-label
cross-encoder) unless `raw_scores`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidInput, InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, sigmoid, texts_of, type_name


class RankingParameters(msgspec.Struct, forbid_unknown_fields=True):
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation: bool | None = None
    truncation_direction: str = "right"


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(x, str) for x in value)


@register("ranking")
class RankingPipeline(TextPipeline):
    Parameters = RankingParameters
    example = (["What is the capital of France?", "Paris is the capital of France."], {})

    @property
    def activation(self) -> str:
        configured = str((self.config.get("sentence_transformers") or {}).get("activation_fn") or "")
        return "none" if configured.endswith("Identity") else "sigmoid"

    def scores(self, pairs: list[list[str]], params: RankingParameters) -> np.ndarray:
        direction = params.truncation_direction.lower()
        if direction not in ("left", "right"):
            raise InvalidParameter(f"`truncation_direction` must be left or right; got {params.truncation_direction!r}")
        truncation = next((t for t in (params.truncate, params.truncation) if t is not None), True)
        queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        encodings = self.tokenizer.encode(queries, texts, truncation=truncation, direction=direction)
        logits = np.array([output["logits"][0] for output in self.core(encodings)], dtype=np.float32)
        return logits if params.raw_scores or self.activation == "none" else sigmoid(logits)

    def predict(self, inputs: Any, params: RankingParameters) -> Any:
        if isinstance(inputs, dict):
            query, texts = inputs.get("query"), inputs.get("texts")
            if not isinstance(query, str) or set(inputs) - {"query", "texts"}:
                raise InvalidInput('ranking takes {"query": string, "texts": [strings]}')
            items, _ = texts_of(texts, "a list of strings (`inputs.texts`)")
            scores = self.scores([[query, t] for t in items], params)
            ranked = []
            for index in np.argsort(-scores, kind="stable"):
                entry: dict[str, Any] = {"index": int(index), "score": float(scores[index])}
                if params.return_text:
                    entry["text"] = items[index]
                ranked.append(entry)
            return ranked
        if _is_pair(inputs):
            return float(self.scores([inputs], params)[0])
        if isinstance(inputs, list) and inputs and all(_is_pair(x) for x in inputs):
            return [float(s) for s in self.scores(inputs, params)]
        raise InvalidInput(
            f'ranking takes a pair [query, text], a list of pairs, or {{"query", "texts"}}; got {type_name(inputs)}'
        )
