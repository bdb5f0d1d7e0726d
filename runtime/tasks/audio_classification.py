"""audio-classification: sound -> `[{"label", "score"}]`, best first (a list of those for a list)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidParameter
from runtime.tasks import register
from runtime.tasks.audio import AudioPipeline
from runtime.tasks.base import sigmoid, softmax

FUNCTIONS = ("softmax", "sigmoid", "none")


class AudioClassificationParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int | None = None
    function_to_apply: str = "softmax"


@register("audio-classification")
class AudioClassificationPipeline(AudioPipeline):
    """As transformers' pipeline: each waveform through the feature extractor on its own, softmax
    unless `function_to_apply` says otherwise, every label when `top_k` is left out (capped at the
    number of labels)."""

    Parameters = AudioClassificationParameters

    def preprocess(self, inputs: Any, params: AudioClassificationParameters) -> tuple[list[Any], Any]:
        if params.top_k is not None and params.top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {params.top_k}")
        function = params.function_to_apply.lower()
        if function not in FUNCTIONS:
            raise InvalidParameter(f"`function_to_apply` must be one of {', '.join(FUNCTIONS)}; got {function!r}")
        waveforms, single = self.waveforms(inputs)
        for waveform in waveforms:
            self.check_call_length(len(waveform), "send a shorter clip")
        return [self.item(waveform) for waveform in waveforms], single

    def postprocess(
        self, outputs: list[dict[str, np.ndarray]], single: bool, params: AudioClassificationParameters
    ) -> Any:
        labels = self.labels
        top_k = len(labels) if params.top_k is None else min(params.top_k, len(labels))
        function = params.function_to_apply.lower()
        results = []
        for output in outputs:
            logits = output["logits"].astype(np.float32)
            scores = softmax(logits) if function == "softmax" else sigmoid(logits) if function == "sigmoid" else logits
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append([{"label": labels[i], "score": float(scores[i])} for i in order])
        return results[0] if single else results
