"""text-classification: one label per text or text pair, softmax or sigmoid as the model was trained."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidInput, InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, sigmoid, softmax, type_name

FUNCTIONS = ("softmax", "sigmoid", "none")


class TextClassificationParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int | msgspec.UnsetType | None = msgspec.UNSET
    function_to_apply: str | None = None
    return_all_scores: bool | None = None
    truncation: bool = True


def _pairs(inputs: Any) -> tuple[list[str], list[str] | None, bool]:
    """Texts, their pairs (or None), and whether a single item was sent."""
    items: Any = [inputs] if isinstance(inputs, (str, dict)) else inputs
    if not isinstance(items, list) or not items:
        raise InvalidInput(
            f"`inputs` must be a string, a {{text, text_pair}} object, or a list of them; got {type_name(inputs)}"
        )
    single = items is not inputs
    if all(isinstance(x, str) for x in items):
        return list(items), None, single
    if not all(isinstance(x, dict) for x in items):
        raise InvalidInput("`inputs` must be all strings or all {text, text_pair} objects")
    texts: list[str] = []
    pairs: list[str] = []
    for item in items:
        text, pair = item.get("text"), item.get("text_pair")
        if not isinstance(text, str) or not isinstance(pair, (str, type(None))) or set(item) - {"text", "text_pair"}:
            raise InvalidInput('a text pair must be {"text": string, "text_pair": string}')
        texts.append(text)
        if pair is not None:
            pairs.append(pair)
    if pairs and len(pairs) != len(texts):
        raise InvalidInput("either every item of `inputs` has a `text_pair` or none has")
    return texts, pairs or None, single


@register("text-classification")
class TextClassificationPipeline(TextPipeline):
    """One result list per input, best label first.

    Unlike transformers, which answers a dict for a lone pair and flattens lists when `top_k` is
    unset, every input gets a list here: one input, one list; several inputs, a list of lists.
    """

    Parameters = TextClassificationParameters
    example = ("This sound track was beautiful!", {})

    def function(self, asked: str | None) -> str:
        if asked is not None:
            name = asked.lower()
            if name not in FUNCTIONS:
                raise InvalidParameter(f"`function_to_apply` must be one of {', '.join(FUNCTIONS)}; got {asked!r}")
            return name
        problem = self.config.get("problem_type")
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.labels) == 1:
            return "sigmoid"
        return "softmax"

    def predict(self, inputs: Any, params: TextClassificationParameters) -> Any:
        texts, pairs, single = _pairs(inputs)
        top_k: int | None = 1
        if params.top_k is not msgspec.UNSET:
            top_k = params.top_k
        elif params.return_all_scores:
            top_k = None
        if top_k is not None and top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {top_k}")
        function = self.function(params.function_to_apply)
        encodings = self.tokenizer.encode(texts, pairs, truncation=params.truncation)
        results = []
        labels = self.labels
        for output in self.core(encodings):
            logits = output["logits"]
            scores = softmax(logits) if function == "softmax" else sigmoid(logits) if function == "sigmoid" else logits
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append([{"label": labels[i], "score": float(scores[i])} for i in order])
        return results[0] if single else results
