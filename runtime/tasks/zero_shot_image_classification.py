"""zero-shot-image-classification (CLIP): an image and `candidate_labels` -> `[{"score", "label"}]`
best first, as transformers' pipeline: each label goes into `hypothesis_template`, the graph scores
the image against every hypothesis (`logits_per_image`), softmax over the labels (SigLIP: a
sigmoid per label, on prompts padded to the model's length)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from runtime.errors import ArtifactError, InvalidParameter, Unprocessable
from runtime.tasks import register
from runtime.tasks.base import sigmoid, softmax
from runtime.tasks.vision import WHITE_PIXEL_PNG, ImagePipeline


class ZeroShotImageParameters(msgspec.Struct, forbid_unknown_fields=True):
    candidate_labels: list[str] | str | None = None
    hypothesis_template: str = "This is a photo of {}."


@register("zero-shot-image-classification")
class ZeroShotImageClassificationPipeline(ImagePipeline):
    Parameters = ZeroShotImageParameters
    example = (WHITE_PIXEL_PNG, {"candidate_labels": ["a cat", "a dog"]})

    def predict(self, inputs: Any, params: ZeroShotImageParameters) -> Any:
        labels = params.candidate_labels
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        if not labels:
            raise Unprocessable("zero-shot-image-classification needs `candidate_labels`: the labels to choose from")
        if "{}" not in params.hypothesis_template:
            raise InvalidParameter(f"`hypothesis_template` must contain {{}}; got {params.hypothesis_template!r}")
        if self.tokenizer is None:
            raise ArtifactError("this zero-shot-image-classification artifact has no tokenizer")
        images, context = self.preprocess(inputs, params)
        self.check_sequences(len(images) * len(labels), f"{len(images)} image(s) x {len(labels)} labels make")
        encodings = self.tokenizer.encode([params.hypothesis_template.format(label) for label in labels])
        siglip = self.config.get("model_type") == "siglip"
        # SigLIP was trained on prompts padded to its full length, and scores each label on its own
        text = self.tokenizer.batch(encodings, width=self.tokenizer.max_length if siglip else None)
        score = sigmoid if siglip else softmax
        scores = [score(out["logits_per_image"]) for out in self.core_with_text(images, text)]
        _, single = context
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")
            results.append([{"score": float(row[i]), "label": labels[i]} for i in order])
        return results[0] if single else results

    def core_with_text(
        self, items: Sequence[dict[str, np.ndarray]], text: dict[str, np.ndarray]
    ) -> list[dict[str, np.ndarray]]:
        """Each image against the same hypotheses: the text feeds ride along with every batch."""
        results = []
        for item in items:
            feeds = {**text, **{name: value[None] for name, value in item.items()}}
            outputs = self.model.run(feeds)
            results.append({"logits_per_image": outputs["logits_per_image"][0]})
        return results
