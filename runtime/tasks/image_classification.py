"""image-classification: an image -> `[{"label", "score"}]`, best first (a list of those for a list)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import sigmoid, softmax
from runtime.tasks.vision import ImagePipeline

FUNCTIONS = ("softmax", "sigmoid", "none")


class ImageClassificationParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int = 5
    function_to_apply: str | None = None


@register("image-classification")
class ImageClassificationPipeline(ImagePipeline):
    """As transformers' pipeline: sigmoid for multi-label or one-label models, softmax otherwise;
    `top_k` (default 5) is capped at the number of labels."""

    Parameters = ImageClassificationParameters

    def function(self, params: ImageClassificationParameters) -> str:
        if params.function_to_apply is not None:
            name = params.function_to_apply.lower()
            if name not in FUNCTIONS:
                raise InvalidParameter(f"`function_to_apply` must be one of {', '.join(FUNCTIONS)}; got {name!r}")
            return name
        if self.config.get("problem_type") == "multi_label_classification" or len(self.labels) == 1:
            return "sigmoid"
        return "softmax"

    def postprocess(self, outputs: list[dict[str, np.ndarray]], context: Any, params: Any) -> Any:
        if params.top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {params.top_k}")
        _, single = context
        function, labels = self.function(params), self.labels
        results = []
        for output in outputs:
            logits = output["logits"].astype(np.float32)
            scores = softmax(logits) if function == "softmax" else sigmoid(logits) if function == "sigmoid" else logits
            order = np.argsort(-scores, kind="stable")[: min(params.top_k, len(labels))]
            results.append([{"label": labels[i], "score": float(scores[i])} for i in order])
        return results[0] if single else results
