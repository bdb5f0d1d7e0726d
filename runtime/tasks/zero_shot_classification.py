"""zero-shot-classification: an NLI model scores "premise -> hypothesis(label)" for each label."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidParameter, Unprocessable
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, softmax, texts_of


class ZeroShotParameters(msgspec.Struct, forbid_unknown_fields=True):
    candidate_labels: list[str] | str | None = None
    hypothesis_template: str = "This example is {}."
    multi_label: bool = False
    truncation: bool = True


def parse_labels(labels: list[str] | str | None) -> list[str]:
    """A list, or one comma-separated string, as the transformers pipeline takes it."""
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",")]
    labels = [label for label in labels or [] if label.strip()]
    if not labels:
        raise Unprocessable("zero-shot-classification needs `parameters.candidate_labels`: at least one label")
    return labels


@register("zero-shot-classification")
class ZeroShotClassificationPipeline(TextPipeline):
    """`{"sequence", "labels", "scores"}` per input, labels best first (the transformers shape)."""

    Parameters = ZeroShotParameters
    example = ("I would like a refund.", {"candidate_labels": ["refund", "legal", "faq"]})

    @property
    def entailment_id(self) -> int:
        for label, index in (self.config.get("label2id") or {}).items():
            if str(label).lower().startswith("entail"):
                return int(index)
        return -1

    def predict(self, inputs: Any, params: ZeroShotParameters) -> Any:
        texts, single = texts_of(inputs)
        labels = parse_labels(params.candidate_labels)
        template = params.hypothesis_template
        if template.format(labels[0]) == template:
            raise InvalidParameter(f"`hypothesis_template` must contain {{}} for the label; got {template!r}")
        self.check_sequences(len(texts) * len(labels), f"{len(texts)} text(s) x {len(labels)} labels make")
        hypotheses = [template.format(label) for label in labels]
        premises = [text for text in texts for _ in labels]
        encodings = self.tokenizer.encode(
            premises, hypotheses * len(texts), truncation=params.truncation, strategy="only_first"
        )
        logits = np.stack([output["logits"] for output in self.core(encodings)])
        logits = logits.reshape(len(texts), len(labels), -1)
        entail = self.entailment_id
        if params.multi_label or len(labels) == 1:
            contradiction = -1 if entail == 0 else 0
            scores = softmax(logits[..., [contradiction, entail]])[..., 1]
        else:
            scores = softmax(logits[..., entail])
        results = []
        for text, row in zip(texts, scores):
            order = np.argsort(-row, kind="stable")
            results.append(
                {"sequence": text, "labels": [labels[i] for i in order], "scores": [float(row[i]) for i in order]}
            )
        return results[0] if single else results
