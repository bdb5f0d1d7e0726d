"""object-detection (DETR, YOLOS): an image -> `[{"score", "label", "box": {xmin, ymin, xmax, ymax}}]`.

As transformers' `post_process_object_detection`: softmax over the classes, the last one ("no
object") dropped, each query's best class kept above `threshold`; boxes from (center, size)
relative to the image to corners in the original image's pixels, truncated to integers.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import softmax
from runtime.tasks.vision import ImagePipeline


class ObjectDetectionParameters(msgspec.Struct, forbid_unknown_fields=True):
    threshold: float = 0.5


@register("object-detection")
class ObjectDetectionPipeline(ImagePipeline):
    Parameters = ObjectDetectionParameters

    def postprocess(self, outputs: list[dict[str, np.ndarray]], context: Any, params: Any) -> Any:
        if not 0 <= params.threshold <= 1:
            raise InvalidParameter(f"`threshold` must be between 0 and 1; got {params.threshold}")
        sizes, single = context
        labels = self.labels
        results = []
        for output, (height, width) in zip(outputs, sizes):
            probs = softmax(output["logits"].astype(np.float32))[:, :-1]
            scores, classes = probs.max(axis=-1), probs.argmax(axis=-1)
            cx, cy, w, h = output["pred_boxes"].astype(np.float32).T
            corners = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
            boxes = corners * np.array([width, height, width, height], dtype=np.float32)
            found = []
            for score, label, box in zip(scores, classes, boxes):
                if score > params.threshold:
                    xmin, ymin, xmax, ymax = (int(v) for v in box)
                    found.append({"score": float(score), "label": labels[label], "box": {
                        "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}})  # fmt: skip
            results.append(found)
        return results[0] if single else results
