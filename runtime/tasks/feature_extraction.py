"""feature-extraction: the model's hidden states, one vector per token."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import Pipeline, texts_of


class FeatureExtractionParameters(msgspec.Struct, forbid_unknown_fields=True):
    truncate: bool | None = None
    truncation: bool | None = None
    truncation_direction: str = "right"
    normalize: bool = False
    prompt_name: str | None = None


@register("feature-extraction")
class FeatureExtractionPipeline(Pipeline):
    """Per-token vectors, `[1, tokens, hidden]` per input as the transformers pipeline returns them.

    Also takes the text-embeddings-inference parameters `InferenceClient.feature_extraction`
    sends (`truncate`, `truncation_direction`, `normalize`; `normalize` L2-normalizes each vector).
    """

    Parameters = FeatureExtractionParameters

    def predict(self, inputs: Any, params: FeatureExtractionParameters) -> Any:
        texts, single = texts_of(inputs)
        direction = params.truncation_direction.lower()
        if direction not in ("left", "right"):
            raise InvalidParameter(f"`truncation_direction` must be left or right; got {params.truncation_direction!r}")
        if params.prompt_name is not None:
            raise InvalidParameter("`prompt_name` needs a sentence-transformers model with prompts; this one has none")
        truncation = next((t for t in (params.truncate, params.truncation) if t is not None), True)
        encodings = self.tokenizer.encode(texts, truncation=truncation, direction=direction)
        results = []
        for output in self.forward(encodings):
            hidden = output[self.model.output_names[0]]
            if params.normalize:
                hidden = hidden / np.maximum(np.linalg.norm(hidden, axis=-1, keepdims=True), 1e-12)
            results.append([hidden.tolist()])
        return results[0] if single else results
