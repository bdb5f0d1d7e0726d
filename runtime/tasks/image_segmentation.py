"""image-segmentation, semantic (Segformer and other `...ForSemanticSegmentation` heads): an image
-> `[{"score": None, "label", "mask"}]`, one mask (mode "L", 0 or 255) per class present.

As transformers' `post_process_semantic_segmentation`: the logits are resized to the original
image bilinearly (half-pixel centres, as `torch.nn.functional.interpolate(align_corners=False)`),
and each pixel takes its best class. The resize runs in row blocks, so memory stays at a few
classes x image rows however large the image.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from PIL import Image

from runtime.errors import Unprocessable
from runtime.tasks import register
from runtime.tasks.vision import ImagePipeline

ROWS_PER_BLOCK = 64


class ImageSegmentationParameters(msgspec.Struct, forbid_unknown_fields=True):
    subtask: str | None = None
    threshold: float = 0.9
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.5


def _weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a linear resize along one axis, as PyTorch computes them."""
    scale = np.float32(size_in / size_out)
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(src.astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (src - low).astype(np.float32)


def semantic_map(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per pixel of a `height` x `width` image, the class whose bilinearly resized logit is largest."""
    low, high, frac = _weights(logits.shape[2], width)
    across = logits[:, :, low] * (1 - frac) + logits[:, :, high] * frac  # classes x rows_in x width
    low, high, frac = _weights(logits.shape[1], height)
    result = np.empty((height, width), dtype=np.int64)
    for top in range(0, height, ROWS_PER_BLOCK):
        rows = slice(top, min(top + ROWS_PER_BLOCK, height))
        f = frac[rows][None, :, None]
        block = across[:, low[rows], :] * (1 - f) + across[:, high[rows], :] * f
        result[rows] = block.argmax(axis=0)
    return result


@register("image-segmentation")
class ImageSegmentationPipeline(ImagePipeline):
    Parameters = ImageSegmentationParameters

    def postprocess(self, outputs: list[dict[str, np.ndarray]], context: Any, params: Any) -> Any:
        if params.subtask not in (None, "semantic"):
            raise Unprocessable(f"this model does semantic segmentation only; got subtask {params.subtask!r}")
        sizes, single = context
        labels = self.labels
        results = []
        for output, (height, width) in zip(outputs, sizes):
            segmentation = semantic_map(output["logits"].astype(np.float32), height, width)
            results.append([
                {"score": None, "label": labels[int(label)],
                 "mask": Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")}
                for label in np.unique(segmentation)
            ])  # fmt: skip
        return results[0] if single else results
