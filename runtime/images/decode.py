"""Client bytes to an RGB Pillow image, as transformers' `load_image` makes it, with the size
refused from the header before any pixel is decoded."""

from __future__ import annotations

import io
import re
import struct

from PIL import Image, ImageOps

from runtime.encoded import decode_base64_file
from runtime.errors import InvalidInput, Unprocessable

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""What `load_image` decodes (Pillow's JPEG opener also takes MPO, the multi-picture JPEG of phones)."""

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode `data` as transformers' `load_image` does: EXIF orientation applied, then RGB.

    Cases:
    - empty or undecodable bytes, or a format outside `FORMATS`: `InvalidInput`;
    - more than `max_pixels` pixels: `Unprocessable`, from the header, before any pixel is decoded;
      Pillow's own decompression-bomb error (and its warning, when warnings are errors) too;
    - RGBA, LA and PA lose their alpha channel (no compositing), P takes its palette colours, L and
      1 are repeated in the three channels, I and I;16 are clipped to 0..255: `Image.convert("RGB")`;
    - an animated GIF or WebP, or a multi-page TIFF: the first frame.
    """
    if not data:
        raise InvalidInput("the image is empty: no bytes were sent")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise Unprocessable(
                f"the image is {width}x{height} = {width * height} pixels, more than the {max_pixels} allowed"
            )
        return ImageOps.exif_transpose(image).convert("RGB")
    except _BOMB as exc:
        raise Unprocessable(
            f"the image is too large to decode ({exc}); at most {max_pixels} pixels are allowed"
        ) from exc
    except _DECODE_ERRORS as exc:
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(exc))
        raise InvalidInput(f"the image could not be decoded ({', '.join(FORMATS)} are accepted): {reason}") from exc


def decode_base64_image(text: str) -> bytes:
    """The bytes of a base64 image file, or a `data:image/...;base64,` URL (`decode_base64_file`)."""
    return decode_base64_file(text, "image")
