"""The shared part of the image tasks: images in, `ImageProcessor` items, batched graph runs.

Inputs are what the transformers image pipelines take in a notebook: a `PIL.Image`, the bytes of an
encoded image, a local path, or a list of them. (The server decodes base64 and binary bodies into
bytes itself, and never passes a path.) `preprocess` keeps each image's original size, which the
postprocessing of detection and segmentation needs to answer in the image's own pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from runtime.artifact import Manifest
from runtime.errors import ArtifactError, InvalidInput
from runtime.images import ImageProcessor, load_image
from runtime.session import SessionOptions
from runtime.tasks.base import InputKind, Pipeline, type_name
from runtime.text import TextTokenizer

# a 1 x 1 white PNG: the warm-up image
WHITE_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7d6a4550000000049454e44ae426082"
)


class ImagePipeline(Pipeline):
    """A pipeline over an image processor; items are one image's model inputs (CHW float32).

    `core` batches items of the same shape (images of one size after preprocessing, `run_same_shapes`),
    so no image is ever padded by another's size and every answer equals the batch-1 answer.
    """

    input_kind: ClassVar[InputKind] = InputKind.IMAGE
    example: ClassVar[tuple[Any, dict[str, Any]]] = (WHITE_PIXEL_PNG, {})

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        config = directory / "preprocessor_config.json"
        if not config.is_file():
            raise ArtifactError(f"{directory} has no preprocessor_config.json, which task {manifest.task} needs")
        self.processor = ImageProcessor.from_config(json.loads(config.read_text()))
        self.tokenizer = (
            TextTokenizer(directory / "tokenizer.json", manifest.tokenizer) if manifest.tokenizer is not None else None
        )

    def images(self, inputs: Any) -> tuple[list[Image.Image], bool]:
        """`inputs` as RGB images, and whether a single image was given."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        if not items:
            raise InvalidInput("`inputs` is an empty list; send an image or a list of images")
        return [self._image(item, index) for index, item in enumerate(items)], single

    def _image(self, item: Any, index: int) -> Image.Image:
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        if isinstance(item, (bytes, bytearray, memoryview)):
            return load_image(bytes(item), max_pixels=self.limits.max_image_pixels)
        if isinstance(item, (str, Path)) and Path(item).is_file():
            return load_image(Path(item).read_bytes(), max_pixels=self.limits.max_image_pixels)
        raise InvalidInput(f"`inputs` must be an image (bytes, PIL image or a file), got {type_name(item)} at {index}")

    def preprocess(self, inputs: Any, params: Any) -> tuple[list[dict[str, np.ndarray]], Any]:
        images, single = self.images(inputs)
        items = [self.processor([image]) for image in images]
        sizes = [(image.height, image.width) for image in images]
        return [{k: v[0] for k, v in item.items()} for item in items], (sizes, single)

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return self.run_same_shapes(items)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_processor": self.processor.describe()}
