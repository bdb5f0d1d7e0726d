"""`ImageProcessor`: one transformers image processor rebuilt from its `preprocessor_config.json`.

A builder per family of processors reads the config as that family's `__init__` and `preprocess`
read it (defaults, legacy int sizes, null settings) into the ported steps of `runtime.images.steps`.
`*Fast` configs are served with the slow processor's steps: the fast processors resize with
torchvision, whose antialiasing differs from Pillow's by about one grey level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from runtime.errors import ArtifactError, InvalidInput, Unprocessable
from runtime.images.steps import RESAMPLE_NAMES, Pad, Resize, center_crop, value_table

IMAGENET_DEFAULT = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
IMAGENET_STANDARD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
_SIZE_KEYS = (
    {"height", "width"},
    {"shortest_edge"},
    {"shortest_edge", "longest_edge"},
    {"longest_edge"},
    {"max_height", "max_width"},
)


class ImageProcessor:
    """One transformers image processor's steps: RGB, resize, center crop, rescale, normalize, pad.

    `transform` prepares one image (CHW float32, before padding); `collate` makes a batch of them
    into the model inputs; calling the processor does both, and returns exactly the arrays that
    transformers' processor returns with `return_tensors="np"`.
    """

    def __init__(
        self,
        kind: str,
        *,
        resize: Resize | None,
        crop: tuple[int, int] | None = None,
        rescale: float | None = 1 / 255,
        rescale_offset: bool = False,
        mean_std: tuple[Sequence[float], Sequence[float]] | None = IMAGENET_STANDARD,
        include_top: bool = False,
        pad: Pad | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.resize = resize
        self.crop = crop
        self.rescale = rescale
        self.rescale_offset = rescale_offset
        self.mean_std = (list(mean_std[0]), list(mean_std[1])) if mean_std is not None else None
        self.include_top = include_top
        self.pad = pad
        self.details = dict(details or {})
        normalizations = [self.mean_std] if self.mean_std is not None else []
        if include_top and self.mean_std is not None:
            normalizations.append(([0.0, 0.0, 0.0], self.mean_std[1]))
        self._table = value_table(rescale, rescale_offset, normalizations)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageProcessor:
        """The processor that `preprocessor_config.json` describes (as `AutoImageProcessor` reads it:
        `image_processor_type`, else the older `feature_extractor_type`). Unknown or unusable
        settings: `ArtifactError`."""
        kind = config.get("image_processor_type")
        if kind is None and isinstance(config.get("feature_extractor_type"), str):
            kind = config["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
        if not isinstance(kind, str):
            raise ArtifactError("the image processor config names no `image_processor_type`")
        build = _BUILDERS.get(kind.removesuffix("Fast"))
        if build is None:
            known = ", ".join(sorted(_BUILDERS))
            raise ArtifactError(f"image processor {kind!r} is not supported; supported: {known} (and their Fast forms)")
        try:
            return build(kind, config)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"the {kind} config is not usable: {exc}") from exc

    @property
    def pads_batch(self) -> bool:
        """What postprocessing needs beyond the original sizes (which callers keep): when True, each
        image of a batch fills only the top-left `resized_size(...)` of `pixel_values`, and
        per-pixel outputs (masks) must be cropped to it before they are scaled to the original."""
        return self.pad is not None

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of that size has in `pixel_values`, padding aside."""
        if self.crop is not None:
            return self.crop
        return self.resize.output_size(height, width) if self.resize is not None else (height, width)

    def describe(self) -> dict[str, Any]:
        """The settings, for the artifact manifest."""
        return {
            "type": self.kind,
            "steps_of": self.kind.removesuffix("Fast"),
            "resize": None
            if self.resize is None
            else {**asdict(self.resize), "resample": RESAMPLE_NAMES[self.resize.resample]},
            "center_crop": self.crop,
            "rescale_factor": self.rescale,
            "rescale_offset": self.rescale_offset,
            "mean": None if self.mean_std is None else self.mean_std[0],
            "std": None if self.mean_std is None else self.mean_std[1],
            "include_top": self.include_top,
            "pad": None if self.pad is None else asdict(self.pad),
            "outputs": ["pixel_values", "pixel_mask"] if self.pad and self.pad.pixel_mask else ["pixel_values"],
            **self.details,
        }

    def transform(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """One image as a CHW float32 array, before padding."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize is not None:
            height, width = self.resize.output_size(image.height, image.width)
            if height < 1 or width < 1:
                raise Unprocessable(f"an image of {image.width}x{image.height} pixels is too narrow to resize")
            if (width, height) != image.size:
                image = image.resize((width, height), resample=Image.Resampling(self.resize.resample))
        array: npt.NDArray[np.uint8] = np.asarray(image)
        if self.crop is not None:
            array = center_crop(array, *self.crop)
        out = np.empty((3, *array.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self._table[channel], array[:, :, channel], out=out[channel], mode="clip")
        return out

    def collate(self, arrays: Sequence[npt.NDArray[np.float32]]) -> dict[str, npt.NDArray[Any]]:
        """Arrays from `transform` as a batch: stacked, or padded bottom/right with a pixel mask."""
        if not arrays:
            raise InvalidInput("no images to process")
        if self.pad is None:
            if len({a.shape for a in arrays}) > 1:
                raise Unprocessable(f"images of different sizes after {self.kind} cannot share a batch")
            return {"pixel_values": np.stack(arrays)}
        height, width = self.pad.size or (max(a.shape[1] for a in arrays), max(a.shape[2] for a in arrays))
        values = np.zeros((len(arrays), 3, height, width), dtype=np.float32)
        mask = np.zeros((len(arrays), height, width), dtype=np.int64)
        for i, array in enumerate(arrays):
            if array.shape[1] > height or array.shape[2] > width:
                raise Unprocessable(
                    f"an image resized to {array.shape[1:]} does not fit the pad size {(height, width)}"
                )
            values[i, :, : array.shape[1], : array.shape[2]] = array
            mask[i, : array.shape[1], : array.shape[2]] = 1
        return {"pixel_values": values, "pixel_mask": mask} if self.pad.pixel_mask else {"pixel_values": values}

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, npt.NDArray[Any]]:
        return self.collate([self.transform(image) for image in images])


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    """A `do_*` setting: missing is the class default, null is False (as the slow processors read it)."""
    value = config.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return bool(value)


def _resample(config: Mapping[str, Any], default: int) -> int:
    value = config.get("resample", default)
    if value is None and _flag(config, "do_resize", True):
        raise ValueError("resample must be set when do_resize is true")
    value = default if value is None else value
    if value not in RESAMPLE_NAMES or isinstance(value, bool):
        raise ValueError(f"resample {value!r} is not a Pillow filter")
    return int(value)


def _size(value: Any, *, square: bool, max_size: int | None = None, name: str = "size") -> dict[str, int]:
    """`image_processing_utils.get_size_dict`: an int, a pair or a dict, checked."""
    if isinstance(value, int) and not isinstance(value, bool):
        if square:
            return {"height": value, "width": value}
        return {"shortest_edge": value} if max_size is None else {"shortest_edge": value, "longest_edge": max_size}
    if isinstance(value, list | tuple) and len(value) == 2:
        return {"height": value[0], "width": value[1]}
    if value is None and max_size is not None and not square:
        return {"longest_edge": max_size}
    if not isinstance(value, dict) or set(value) not in _SIZE_KEYS:
        raise ValueError(f"{name} {value!r} is not one of the forms {[sorted(k) for k in _SIZE_KEYS]}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
        raise ValueError(f"{name} {value!r} must hold positive integers")
    return dict(value)


def _hw(size: Mapping[str, int], name: str = "size") -> tuple[int, int]:
    if "height" not in size or "width" not in size:
        raise ValueError(f"{name} {dict(size)} must have `height` and `width`")
    return size["height"], size["width"]


def _normalization(
    config: Mapping[str, Any], default: tuple[list[float], list[float]]
) -> tuple[Sequence[float], Sequence[float]] | None:
    if not _flag(config, "do_normalize", True):
        return None
    pair = []
    for key, fallback in zip(("image_mean", "image_std"), default):
        value = config.get(key)
        value = fallback if value is None else value
        value = [value] * 3 if isinstance(value, int | float) else value
        if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int | float) for v in value):
            raise ValueError(f"{key} must be a number or three numbers, not {value!r}")
        pair.append([float(v) for v in value])
    return pair[0], pair[1]


def _rescale(config: Mapping[str, Any]) -> float | None:
    if not _flag(config, "do_rescale", True):
        return None
    value = config.get("rescale_factor", 1 / 255)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"rescale_factor must be a number, not {value!r}")
    return float(value)


def _crop(config: Mapping[str, Any], default: int, *, do_crop: bool) -> tuple[int, int] | None:
    if not _flag(config, "do_center_crop", do_crop):
        return None
    value = config.get("crop_size")
    return _hw(_size({"height": default, "width": default} if value is None else value, square=True), "crop_size")


Builder = Callable[[str, Mapping[str, Any]], ImageProcessor]
_BUILDERS: dict[str, Builder] = {}


def _builds(*kinds: str) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        _BUILDERS.update(dict.fromkeys(kinds, build))
        return build

    return register


_FIXED = {
    # kind: (default size, default resample, crop (None: never crops), normalization)
    "ViTImageProcessor": (224, 2, None, IMAGENET_STANDARD),
    "SiglipImageProcessor": (224, 3, None, IMAGENET_STANDARD),
    "SegformerImageProcessor": (512, 2, None, IMAGENET_DEFAULT),
    "DeiTImageProcessor": (256, 3, 224, IMAGENET_STANDARD),
    "BeitImageProcessor": (256, 3, 224, IMAGENET_STANDARD),
    "EfficientNetImageProcessor": (346, 0, 289, IMAGENET_STANDARD),
    "BlipImageProcessor": (384, 3, None, OPENAI_CLIP),
}


@_builds(*_FIXED)
def _fixed(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """Resize to `{height, width}`, maybe center crop (DeiT, BEiT, EfficientNet); EfficientNet's
    `rescale_offset` subtracts 1 after rescaling, and `include_top` divides by the std once more."""
    edge, resample, crop_edge, normalization = _FIXED[kind.removesuffix("Fast")]
    efficientnet = kind.startswith("EfficientNet")
    size = config.get("size")
    size = {"height": edge, "width": edge} if size is None else size
    if not kind.startswith("Siglip"):
        size = _size(size, square=True)
    resize = Resize("fixed", _hw(size), _resample(config, resample)) if _flag(config, "do_resize", True) else None
    return ImageProcessor(
        kind,
        resize=resize,
        crop=None if crop_edge is None else _crop(config, crop_edge, do_crop=not efficientnet),
        rescale=_rescale(config),
        rescale_offset=efficientnet and _flag(config, "rescale_offset", False),
        mean_std=_normalization(config, normalization),
        include_top=efficientnet and _flag(config, "include_top", True),
    )


_EDGE = {
    "MobileNetV1ImageProcessor": (256, 2, IMAGENET_STANDARD),
    "MobileNetV2ImageProcessor": (256, 2, IMAGENET_STANDARD),
    "CLIPImageProcessor": (224, 3, OPENAI_CLIP),
    "BitImageProcessor": (224, 3, OPENAI_CLIP),
}


@_builds(*_EDGE)
def _edge(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """Short side to `shortest_edge` (or resize to `{height, width}`), then center crop."""
    edge, resample, normalization = _EDGE[kind.removesuffix("Fast")]
    size = config.get("size")
    size = _size({"shortest_edge": edge} if size is None else size, square=False)
    if kind.startswith("CLIP") and config.get("use_square_size") and "shortest_edge" in size:
        size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    if "shortest_edge" in size:
        resize = Resize("shortest_edge", (size["shortest_edge"], size["shortest_edge"]), _resample(config, resample))
    else:
        resize = Resize("fixed", _hw(size), _resample(config, resample))
    return ImageProcessor(
        kind,
        resize=resize if _flag(config, "do_resize", True) else None,
        crop=_crop(config, 224, do_crop=True),
        rescale=_rescale(config),
        mean_std=_normalization(config, normalization),
    )


@_builds("ConvNextImageProcessor")
def _convnext(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """Below 384, the short side to `shortest_edge / crop_pct` and a center crop of `shortest_edge`
    (ConvNeXt, ResNet, RegNet); from 384, a square of `shortest_edge`, no crop."""
    size = config.get("size")
    edge = _size({"shortest_edge": 384} if size is None else size, square=False).get("shortest_edge")
    if edge is None:
        raise ValueError(f"size {size!r} must have `shortest_edge`")
    crop_pct = config.get("crop_pct")
    crop_pct = 224 / 256 if crop_pct is None else float(crop_pct)
    resample = _resample(config, 2)
    do_resize = _flag(config, "do_resize", True)
    resize, crop = Resize("fixed", (edge, edge), resample), None
    if edge < 384:
        resize, crop = Resize("shortest_edge", (int(edge / crop_pct),) * 2, resample), (edge, edge)
    return ImageProcessor(
        kind,
        resize=resize if do_resize else None,
        crop=crop if do_resize else None,
        rescale=_rescale(config),
        mean_std=_normalization(config, IMAGENET_STANDARD),
        details={"crop_pct": crop_pct},
    )


@_builds("DetrImageProcessor", "YolosImageProcessor")
def _detr(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """Short side to `shortest_edge` within `longest_edge` (YOLOS: then down to a multiple of 16),
    or `{max_height, max_width}`, or `{height, width}`; the batch padded to its largest image, with a
    `pixel_mask` for DETR (YOLOS returns none). Older configs' `max_size` and
    `pad_and_return_pixel_mask` are read as the processors' `__init__` reads them."""
    size = config.get("size")
    max_size = config.get("max_size", None if size is None else 1333)
    size = _size(
        {"shortest_edge": 800, "longest_edge": 1333} if size is None else size, square=False, max_size=max_size
    )
    resample = _resample(config, 2)
    if set(size) == {"shortest_edge", "longest_edge"}:
        rule = "yolos" if kind.startswith("Yolos") else "detr"
        resize = Resize(rule, (size["shortest_edge"], size["longest_edge"]), resample)
    elif set(size) == {"max_height", "max_width"}:
        resize = Resize("max_height_width", (size["max_height"], size["max_width"]), resample)
    else:
        resize = Resize("fixed", _hw(size), resample)
    do_pad = _flag(config, "pad_and_return_pixel_mask", _flag(config, "do_pad", True))
    pad_size = config.get("pad_size")
    pad = Pad(kind.startswith("Detr"), None if pad_size is None else _hw(pad_size, "pad_size")) if do_pad else None
    return ImageProcessor(
        kind,
        resize=resize if _flag(config, "do_resize", True) else None,
        rescale=_rescale(config),
        mean_std=_normalization(config, IMAGENET_DEFAULT),
        pad=pad,
    )


@_builds("MaskFormerImageProcessor", "Mask2FormerImageProcessor")
def _maskformer(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """torchvision's short-side rule capped at `longest_edge` (or `{height, width}`), both sides then
    up to a multiple of `size_divisor`; the batch padded with a `pixel_mask`."""
    size = config.get("size")
    max_size = config.get("max_size", 1333)
    size = _size(
        {"shortest_edge": 800, "longest_edge": max_size} if size is None else size, square=False, max_size=max_size
    )
    divisor = config.get("size_divisor", 32)
    divisor = 0 if divisor is None else int(divisor)
    resample = _resample(config, 2)
    if set(size) == {"shortest_edge", "longest_edge"}:
        if size["longest_edge"] <= size["shortest_edge"]:
            raise ValueError(f"size {size}: longest_edge must be larger than shortest_edge")
        edge = size["shortest_edge"]
        resize = Resize("shortest_edge", (edge, edge), resample, max_size=size["longest_edge"], divisor=divisor)
    else:
        resize = Resize("fixed", _hw(size), resample, divisor=divisor)
    pad_size = config.get("pad_size")
    return ImageProcessor(
        kind,
        resize=resize if _flag(config, "do_resize", True) else None,
        rescale=_rescale(config),
        mean_std=_normalization(config, IMAGENET_DEFAULT),
        pad=Pad(True, None if pad_size is None else _hw(pad_size, "pad_size")),
    )


@_builds("ViltImageProcessor")
def _vilt(kind: str, config: Mapping[str, Any]) -> ImageProcessor:
    """Read as `ViltImageProcessor.__init__` and `from_dict` read the config: `size` an int or
    `{"shortest_edge"}` (default 384), the long side capped at 1333/800 of it, `size_divisor`
    (default 32), bicubic by default, a batch padded with a `pixel_mask`, and the older
    `pad_and_return_pixel_mask` in place of `do_pad`."""
    size = config.get("size")
    edge = _size({"shortest_edge": 384} if size is None else size, square=False).get("shortest_edge")
    if edge is None:
        raise ArtifactError(f"ViltImageProcessor: size {size!r} must have `shortest_edge`")
    divisor = config.get("size_divisor", 32)
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ArtifactError(f"ViltImageProcessor: size_divisor must be a positive integer, not {divisor!r}")
    resize = Resize("vilt", (edge, int(1333 / 800 * edge)), _resample(config, 3), divisor=divisor)
    do_pad = _flag(config, "pad_and_return_pixel_mask", _flag(config, "do_pad", True))
    return ImageProcessor(
        kind,
        resize=resize if _flag(config, "do_resize", True) else None,
        rescale=_rescale(config),
        mean_std=_normalization(config, IMAGENET_STANDARD),
        pad=Pad(pixel_mask=True) if do_pad else None,
    )
