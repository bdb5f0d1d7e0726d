"""The steps of transformers' slow image processors, ported: output-size rules, center crop, and
rescale + normalize as one table per channel.

Every step works where transformers' does: sizes in Python ints and floats in the same order, the
resize in Pillow on the uint8 image, the crop on uint8, then rescale (float64, cast to float32) and
normalize (float32), so the values agree to the bit. A table of the 256 values of each channel
gives exactly what those operations give for every pixel, at a fraction of their cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""`PILImageResampling` values, as configs store them, and their names."""


@dataclass(frozen=True)
class Resize:
    """How an image of (height, width) is resized, by one of transformers' rules.

    - `fixed`: to `size` (height, width);
    - `shortest_edge`: torchvision's rule, the short side to `size[0]`, the long one truncated;
      with `max_size`, the long side is then capped (MaskFormer);
    - `detr`: DETR's rule, the short side to `size[0]` unless the long side would pass `size[1]`;
      `yolos` is the same, then both sides rounded down to a multiple of 16;
    - `max_height_width`: the largest size within `size` that keeps the aspect ratio;
    - `vilt`: ViLT's rule, the short side to `size[0]`, the long side capped at `size[1]`, both
      rounded half up and then down to a multiple of `divisor`.
    Otherwise `divisor` rounds both sides up to a multiple of it afterwards (MaskFormer's `size_divisor`).
    """

    rule: str
    size: tuple[int, int]
    resample: int
    max_size: int | None = None
    divisor: int = 0

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.rule == "vilt":
            return vilt_size(height, width, *self.size, divisor=self.divisor)
        if self.rule == "fixed":
            out = self.size
        elif self.rule == "shortest_edge":
            out = shortest_edge_size(height, width, self.size[0], self.max_size)
        elif self.rule in ("detr", "yolos"):
            out = detr_size(height, width, *self.size, mod=16 if self.rule == "yolos" else None)
        else:
            scale = min(self.size[0] / height, self.size[1] / width)
            out = (int(height * scale), int(width * scale))
        if self.divisor > 0:
            out = (math.ceil(out[0] / self.divisor) * self.divisor, math.ceil(out[1] / self.divisor) * self.divisor)
        return out


@dataclass(frozen=True)
class Pad:
    """Pad a batch bottom/right with zeros to its largest image (or to `size`), and say which
    pixels are real in a `pixel_mask` when the processor returns one (DETR, MaskFormer; not YOLOS)."""

    pixel_mask: bool
    size: tuple[int, int] | None = None


def shortest_edge_size(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """`image_transforms.get_resize_output_image_size(default_to_square=False)`."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def vilt_size(height: int, width: int, shorter: int, longer: int, divisor: int) -> tuple[int, int]:
    """`image_processing_vilt.get_resize_output_image_size`, in its order of operations."""
    scale = shorter / min(height, width)
    new_height: float
    new_width: float
    if height < width:
        new_height, new_width = shorter, scale * width
    else:
        new_height, new_width = scale * height, shorter
    if max(new_height, new_width) > longer:
        scale = longer / max(new_height, new_width)
        new_height, new_width = scale * new_height, scale * new_width
    rounded_height, rounded_width = int(new_height + 0.5), int(new_width + 0.5)
    return rounded_height // divisor * divisor, rounded_width // divisor * divisor


def detr_size(height: int, width: int, size: int, max_size: int, *, mod: int | None) -> tuple[int, int]:
    """`get_size_with_aspect_ratio` of DETR (`mod=None`) and of YOLOS (`mod=16`, its tests in its order)."""
    raw_size = None
    if max(height, width) / min(height, width) * size > max_size:
        raw_size = max_size * min(height, width) / max(height, width)
        size = round(raw_size)
    scale = raw_size if raw_size is not None else size
    same = (height <= width and height == size) or (width <= height and width == size)
    if same and (mod is None or width >= height):
        oh, ow = height, width
    elif width < height:
        oh, ow = int(scale * height / width), size
    else:
        oh, ow = size, int(scale * width / height)
    if mod is not None:
        oh, ow = oh - oh % mod, ow - ow % mod
    return oh, ow


def center_crop(array: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """`image_transforms.center_crop` on an HWC array: zero-padded where the image is too small."""
    rows, cols = array.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    if top >= 0 and left >= 0:
        return array[top : top + height, left : left + width]
    new_rows, new_cols = max(height, rows), max(width, cols)
    top_pad, left_pad = math.ceil((new_rows - rows) / 2), math.ceil((new_cols - cols) / 2)
    padded = np.zeros((new_rows, new_cols, array.shape[2]), dtype=array.dtype)
    padded[top_pad : top_pad + rows, left_pad : left_pad + cols] = array
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_rows, top + height), max(0, left) : min(new_cols, left + width)]


def value_table(
    rescale: float | None, offset: bool, normalizations: Sequence[tuple[Sequence[float], Sequence[float]]]
) -> npt.NDArray[np.float32]:
    """(3, 256): each uint8 value of each channel through `image_transforms.rescale` (then minus 1
    with EfficientNet's `offset`) and each `normalize(mean, std)` in turn, on a channels-last image."""
    values: npt.NDArray[Any] = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    if rescale is not None:
        values = (values.astype(np.float64) * rescale).astype(np.float32)
        if offset:
            values = values - 1
    for mean, std in normalizations:
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float32)
        values = (values - np.array(mean, dtype=values.dtype)) / np.array(std, dtype=values.dtype)
    return np.ascontiguousarray(values.T, dtype=np.float32)
