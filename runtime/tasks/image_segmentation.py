"""image-segmentation: an image -> `[{"score", "label", "mask"}]`, each mask a mode "L" image of the
original size, 0 or 255. Ported from transformers 4.57's `ImageSegmentationPipeline` and the
post-processing of its image processors, in numpy.

Two kinds of graph:

- per-pixel class logits (Segformer and the other `...ForSemanticSegmentation` heads): semantic
  segmentation only, as `SegformerImageProcessor.post_process_semantic_segmentation`;
- per-query class logits (the last class is "no object") and mask logits, at a quarter of the
  (padded) input's size: DETR panoptic (`logits`, `pred_masks`) and MaskFormer
  (`class_queries_logits`, `masks_queries_logits`). These do `panoptic` (the default, as the
  pipeline tries panoptic first), `instance` and `semantic`, as `DetrImageProcessor` and
  `MaskFormerImageProcessor` post-process them.

Masks are resized to the original image bilinearly with half-pixel centres, as
`torch.nn.functional.interpolate(align_corners=False)` (MaskFormer's instance masks: nearest), in
row blocks, so memory stays at a few maps x input rows x image width however large the image.
Where the processor pads beyond the image (a configured `pad_size`), the masks are first cut to
the image's part of the input; transformers stretches the padded masks over the image instead.
Images run one per graph call (or with others of one size), so without `pad_size` nothing is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from runtime.artifact import Manifest
from runtime.errors import InvalidParameter, Unprocessable
from runtime.session import SessionOptions
from runtime.tasks import register
from runtime.tasks.base import sigmoid, softmax
from runtime.tasks.vision import ImagePipeline

ROWS_PER_BLOCK = 64
SUBTASKS = ("panoptic", "instance", "semantic")

Segments = list[tuple[np.ndarray, int, float | None]]
"""One image's answer before labels are named: (mask as bool H x W, class id, score or None)."""


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


def _nearest(size_in: int, size_out: int) -> np.ndarray:
    """Source indices of PyTorch's "nearest" resize along one axis (floor of index x in/out in float32)."""
    if size_in == size_out:
        return np.arange(size_out)
    scale = np.float32(size_in) / np.float32(size_out)
    index: np.ndarray = np.minimum(
        np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1
    )
    return index


def resized_blocks(maps: np.ndarray, height: int, width: int) -> Iterator[tuple[slice, np.ndarray]]:
    """`maps` (n x h x w) resized bilinearly to `height` x `width`, as (rows, n x rows x width) blocks."""
    low, high, frac = _weights(maps.shape[2], width)
    across = maps[:, :, low] * (1 - frac) + maps[:, :, high] * frac  # n x h x width
    low, high, frac = _weights(maps.shape[1], height)
    for top in range(0, height, ROWS_PER_BLOCK):
        rows = slice(top, min(top + ROWS_PER_BLOCK, height))
        f = frac[rows][None, :, None]
        yield rows, across[:, low[rows], :] * (1 - f) + across[:, high[rows], :] * f


def semantic_map(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per pixel of a `height` x `width` image, the class whose bilinearly resized logit is largest."""
    result = np.empty((height, width), dtype=np.int32)
    for rows, block in resized_blocks(logits, height, width):
        result[rows] = block.argmax(axis=0)
    return result


def _semantic_segments(segmentation: np.ndarray) -> Segments:
    return [(segmentation == label, int(label), None) for label in np.unique(segmentation)]


def query_semantic(classes: np.ndarray, masks: np.ndarray, height: int, width: int) -> Segments:
    """`post_process_semantic_segmentation` of DETR and MaskFormer: each class's map is the sum over
    queries of the class probability (no "no object") x the mask probability; then as Segformer."""
    maps = np.einsum("qc,qhw->chw", softmax(classes)[:, :-1], sigmoid(masks))
    return _semantic_segments(semantic_map(maps, height, width))


def panoptic(classes: np.ndarray, masks: np.ndarray, height: int, width: int, params: Any) -> Segments:
    """`post_process_panoptic_segmentation` (DETR's and MaskFormer's are the same): queries whose
    best class is an object with probability above `threshold`; their mask probabilities resized,
    weighed by that probability, and each pixel given to the largest; a query keeps a segment where
    it won more than `overlap_mask_area_threshold` of its own area (weighed probability >=
    `mask_threshold`). The pipeline passes no `label_ids_to_fuse`: no segment is fused."""
    probs = softmax(classes)
    scores, labels = probs.max(axis=-1), probs.argmax(axis=-1)
    keep = (labels != classes.shape[-1] - 1) & (scores > params.threshold)
    if not keep.any():
        return []
    scores, labels = scores[keep], labels[keep]
    winner = np.empty((height, width), dtype=np.int32)
    won, areas = np.zeros(len(scores), dtype=np.int64), np.zeros(len(scores), dtype=np.int64)
    for rows, block in resized_blocks(sigmoid(masks[keep]), height, width):
        block *= scores[:, None, None]
        winner[rows] = best = block.argmax(axis=0)
        won += np.bincount(best.ravel(), minlength=len(scores))
        areas += (block >= params.mask_threshold).sum(axis=(1, 2))
    segments: Segments = []
    for k in range(len(scores)):
        ratio = np.float32(won[k]) / np.float32(areas[k]) if areas[k] else np.float32(0)  # as torch: in float32
        if won[k] > 0 and float(ratio) > params.overlap_mask_area_threshold:
            segments.append((winner == k, int(labels[k]), round(float(scores[k]), 6)))
    return segments


def maskformer_instance(classes: np.ndarray, masks: np.ndarray, height: int, width: int, params: Any) -> Segments:
    """MaskFormer's `post_process_instance_segmentation`: the `queries` best (query, class) pairs by
    class probability, in the order torch's `topk(sorted=False)` leaves them; each scored by that
    probability x its mask's mean probability where the logit is positive, kept at >= `threshold`
    with a mask (nearest resize) that is not empty. Later instances overwrite earlier ones."""
    queries, num_classes = classes.shape[0], classes.shape[1] - 1
    flat = softmax(classes)[:, :-1].ravel()
    top = topk_unsorted(flat, queries)
    chosen = masks[top // num_classes]
    binary = chosen > 0
    on = binary.reshape(queries, -1)
    mask_scores = (sigmoid(chosen).reshape(queries, -1) * on).sum(axis=1) / (
        on.sum(axis=1, dtype=np.float32) + np.float32(1e-6)
    )
    scores = flat[top] * mask_scores
    rows, cols = _nearest(masks.shape[1], height), _nearest(masks.shape[2], width)
    segmentation = np.full((height, width), -1, dtype=np.int32)
    found: list[tuple[int, float]] = []
    for j in range(queries):
        if not float(scores[j]) >= params.threshold:
            continue
        mask = binary[j][np.ix_(rows, cols)]
        if mask.any():
            segmentation[mask] = len(found)
            found.append((int(top[j] % num_classes), round(float(scores[j]), 6)))
    return [(segmentation == i, label, score) for i, (label, score) in enumerate(found)]


def topk_unsorted(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of the `k` largest `values` in the order torch's CPU `topk(sorted=False)` returns
    them: libstdc++'s `std::partial_sort` when `k * 64 <= len(values)` (sorted, largest first),
    else `std::nth_element` (whatever order its introselect leaves)."""
    items = list(zip(values.tolist(), range(len(values))))
    select = _LibStdCxx(items)
    if k * 64 <= len(items):
        select.partial_sort(k)
    else:
        select.nth_element(k - 1)
    return np.array([index for _, index in items[:k]], dtype=np.int64)


class _LibStdCxx:
    """libstdc++'s selection algorithms (bits/stl_algo.h, stl_heap.h) on (value, index) pairs,
    ordered by value, largest first, as torch's topk calls them."""

    def __init__(self, items: list[tuple[float, int]]) -> None:
        self.a = items

    def before(self, i: int, j: int) -> bool:
        return self.a[i][0] > self.a[j][0]

    def swap(self, i: int, j: int) -> None:
        self.a[i], self.a[j] = self.a[j], self.a[i]

    def nth_element(self, nth: int) -> None:
        first, last = 0, len(self.a)
        if first == last or nth == last:
            return
        depth = 2 * ((last - first).bit_length() - 1)  # 2 * std::__lg(n)
        while last - first > 3:
            if depth == 0:
                self.heap_select(first, nth + 1, last)
                self.swap(first, nth)
                return
            depth -= 1
            cut = self.partition_pivot(first, last)
            if cut <= nth:
                first = cut
            else:
                last = cut
        self.insertion_sort(first, last)

    def partial_sort(self, middle: int) -> None:
        self.heap_select(0, middle, len(self.a))
        last = middle
        while last > 1:
            last -= 1
            self.pop_heap(0, last, last)

    def partition_pivot(self, first: int, last: int) -> int:
        mid = first + (last - first) // 2
        a, b, c = first + 1, mid, last - 1
        if self.before(a, b):
            median = b if self.before(b, c) else c if self.before(a, c) else a
        else:
            median = a if self.before(a, c) else c if self.before(b, c) else b
        self.swap(first, median)
        pivot, first = first, first + 1
        while True:
            while self.before(first, pivot):
                first += 1
            last -= 1
            while self.before(pivot, last):
                last -= 1
            if not first < last:
                return first
            self.swap(first, last)
            first += 1

    def insertion_sort(self, first: int, last: int) -> None:
        for i in range(first + 1, last):
            value = self.a[i]
            if value[0] > self.a[first][0]:
                self.a[first + 1 : i + 1] = self.a[first:i]
                self.a[first] = value
            else:
                j = i
                while value[0] > self.a[j - 1][0]:
                    self.a[j] = self.a[j - 1]
                    j -= 1
                self.a[j] = value

    def heap_select(self, first: int, middle: int, last: int) -> None:
        length = middle - first
        if length >= 2:
            for parent in range((length - 2) // 2, -1, -1):
                self.adjust_heap(first, parent, length, self.a[first + parent])
        for i in range(middle, last):
            if self.before(i, first):
                self.pop_heap(first, middle, i)

    def pop_heap(self, first: int, last: int, result: int) -> None:
        value = self.a[result]
        self.a[result] = self.a[first]
        self.adjust_heap(first, 0, last - first, value)

    def adjust_heap(self, first: int, hole: int, length: int, value: tuple[float, int]) -> None:
        a, top, child = self.a, hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if a[first + child][0] > a[first + child - 1][0]:
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length & 1 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and a[first + parent][0] > value[0]:
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value


@dataclass(frozen=True)
class QueryHead:
    """A graph of per-query class and mask logits, and how its processor does instance segmentation."""

    classes: str
    masks: str
    instance: Callable[[np.ndarray, np.ndarray, int, int, Any], Segments]


QUERY_HEADS = (
    # DetrImageProcessor: instance is panoptic without fusion, which the pipeline never asks for
    QueryHead("logits", "pred_masks", panoptic),
    QueryHead("class_queries_logits", "masks_queries_logits", maskformer_instance),
)


@register("image-segmentation")
class ImageSegmentationPipeline(ImagePipeline):
    """`head`: the graph's per-query head, or None for per-pixel class logits; `subtasks`: what the
    model does, the default first (the pipeline tries panoptic, then instance, then semantic)."""

    Parameters = ImageSegmentationParameters

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        names = set(self.model.output_names)
        self.head = next((h for h in QUERY_HEADS if {h.classes, h.masks} <= names), None)
        self.subtasks = SUBTASKS if self.head is not None else ("semantic",)

    def preprocess(self, inputs: Any, params: Any) -> tuple[list[dict[str, np.ndarray]], Any]:
        if params.subtask is not None and params.subtask not in self.subtasks:
            raise Unprocessable(
                f"subtask {params.subtask!r} is not one this model does; it does: {', '.join(self.subtasks)}"
            )
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
            if not 0 <= getattr(params, name) <= 1:
                raise InvalidParameter(f"`{name}` must be between 0 and 1; got {getattr(params, name)}")
        items, (sizes, single) = super().preprocess(inputs, params)
        fits = [
            (self.processor.resized_size(*size), item["pixel_values"].shape[-2:]) for item, size in zip(items, sizes)
        ]
        return items, (sizes, single, fits)

    def postprocess(self, outputs: list[dict[str, np.ndarray]], context: Any, params: Any) -> Any:
        sizes, single, fits = context
        head, labels = self.head, self.labels
        subtask = params.subtask or self.subtasks[0]
        results = []
        for output, (height, width), fit in zip(outputs, sizes, fits):
            if head is None:
                segmentation = semantic_map(output["logits"].astype(np.float32), height, width)
                segments = _semantic_segments(segmentation)
            else:
                classes = output[head.classes].astype(np.float32)
                masks = self._image_part(output[head.masks].astype(np.float32), *fit)
                if subtask == "semantic":
                    segments = query_semantic(classes, masks, height, width)
                elif subtask == "instance":
                    segments = head.instance(classes, masks, height, width, params)
                else:
                    segments = panoptic(classes, masks, height, width, params)
            results.append([
                {"score": score, "label": labels[label],
                 "mask": Image.fromarray(mask.astype(np.uint8) * np.uint8(255), mode="L")}
                for mask, label, score in segments
            ])  # fmt: skip
        return results[0] if single else results

    def _image_part(self, masks: np.ndarray, resized: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
        """Masks cut to the part of the input the image fills, when the processor padded beyond it."""
        if not self.processor.pads_batch or tuple(resized) == tuple(padded):
            return masks
        rows = max(1, round(masks.shape[1] * resized[0] / padded[0]))
        cols = max(1, round(masks.shape[2] * resized[1] / padded[1]))
        return masks[:, :rows, :cols]
