"""Images for the vision tasks: client bytes to a Pillow image (`decode`), and the image processors
of transformers 4.57 ported to numpy + Pillow (`processor`, built on the ported `steps`).

Serving never imports torch or transformers: the compile step saves the processor's
`preprocessor_config.json`, and `ImageProcessor.from_config` rebuilds the same steps from it.
"""

from __future__ import annotations

from runtime.images.decode import FORMATS, decode_base64_image, load_image
from runtime.images.processor import ImageProcessor
from runtime.images.steps import Pad, Resize

__all__ = ["FORMATS", "ImageProcessor", "Pad", "Resize", "decode_base64_image", "load_image"]
