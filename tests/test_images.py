"""`runtime.images` against transformers' own: the same bytes decoded by both, the same config, the
same model inputs (pixel values within 1e-4 after normalization, pixel masks equal).

Images: a photograph in several sizes and aspect ratios and formats, plus RGBA, grayscale, 16-bit,
palette GIF and EXIF-rotated JPEG files written here. Each processor type runs with its defaults and
with the settings that take its other branches (crop larger than the resized image, shortest edge
vs fixed size, DETR's max_height/max_width, pad_size, no padding, legacy config forms).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import transformers
from PIL import Image, ImageDraw
from transformers.image_utils import load_image as transformers_load_image

from runtime.errors import ArtifactError, InvalidInput, Unprocessable
from runtime.images import FORMATS, ImageProcessor, decode_base64_image, load_image

ROOT = Path(__file__).resolve().parents[1]
HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MAX_PIXELS = 10_000_000
TOLERANCE = 1e-4


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def synthetic_rgba(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256, (x * y) % 256], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGBA")
    ImageDraw.Draw(image).ellipse((4, 4, width - 8, height - 6), fill=(200, 30, 90, 128))
    return image


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """name -> encoded bytes: every format `load_image` accepts, and the awkward modes."""
    hopper = Image.open(HOPPER)
    hopper.load()
    palette = synthetic_rgba(80, 60).convert("RGB").quantize(colors=32)
    second = palette.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    deep = np.linspace(0, 65535, 70 * 50, dtype=np.uint16).reshape(50, 70)
    return {
        "photo-600x512": HOPPER.read_bytes(),
        "landscape-640x480.jpg": encode(hopper.resize((640, 480)), "JPEG", quality=90),
        "wide-900x200.webp": encode(hopper.resize((900, 200)), "WEBP", quality=90),
        "tall-150x700.tiff": encode(hopper.resize((150, 700)), "TIFF"),
        "small-40x30.bmp": encode(hopper.resize((40, 30)), "BMP"),
        "rgba-64x48.png": encode(synthetic_rgba(64, 48), "PNG"),
        "gray-120x90.png": encode(hopper.resize((120, 90)).convert("L"), "PNG"),
        "16bit-70x50.png": encode(Image.fromarray(deep), "PNG"),
        "palette-80x60.gif": encode(palette, "GIF", save_all=True, append_images=[second], transparency=0),
        "exif-rotated-160x120.jpg": encode(hopper.resize((160, 120)), "JPEG", exif=exif.tobytes()),
    }


def theirs_decoded(data: bytes) -> Image.Image:
    return transformers_load_image(Image.open(io.BytesIO(data)))


SMALL = ["photo-600x512", "exif-rotated-160x120.jpg"]
"""For the large default sizes (DETR's 800 x 1333): a portrait and a landscape, padded both ways."""

T = transformers
CASES: dict[str, tuple[Callable[[], Any], list[str] | None]] = {
    "vit": (lambda: T.ViTImageProcessor(), None),
    "vit-32x48-bicubic": (lambda: T.ViTImageProcessor(size={"height": 32, "width": 48}, resample=3), None),
    "convnext-384": (lambda: T.ConvNextImageProcessor(), None),
    "convnext-resnet-224": (lambda: T.ConvNextImageProcessor(size={"shortest_edge": 224}, resample=3), None),
    "efficientnet": (lambda: T.EfficientNetImageProcessor(), None),
    "efficientnet-offset-crop": (
        lambda: T.EfficientNetImageProcessor(
            size={"height": 300, "width": 280},
            do_center_crop=True,
            rescale_factor=1 / 127.5,
            rescale_offset=True,
            include_top=False,
        ),
        None,
    ),
    "mobilenet_v1": (lambda: T.MobileNetV1ImageProcessor(), None),
    "mobilenet_v2": (lambda: T.MobileNetV2ImageProcessor(), None),
    "mobilenet_v2-crop-larger": (
        lambda: T.MobileNetV2ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 41, "width": 36}),
        None,
    ),
    "beit": (lambda: T.BeitImageProcessor(), None),
    "deit": (lambda: T.DeiTImageProcessor(), None),
    "clip": (lambda: T.CLIPImageProcessor(), None),
    "clip-fixed-no-normalize": (
        lambda: T.CLIPImageProcessor(size={"height": 40, "width": 30}, crop_size=24, do_normalize=False),
        None,
    ),
    "bit-dinov2": (lambda: T.BitImageProcessor(size={"shortest_edge": 256}, resample=3), None),
    "siglip": (lambda: T.SiglipImageProcessor(), None),
    "siglip-384": (lambda: T.SiglipImageProcessor(size={"height": 384, "width": 384}), SMALL),
    "detr": (lambda: T.DetrImageProcessor(), SMALL),
    "detr-small": (lambda: T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 100}), None),
    "detr-max-height-width": (lambda: T.DetrImageProcessor(size={"max_height": 90, "max_width": 120}), None),
    "detr-pad-size": (
        lambda: T.DetrImageProcessor(size={"height": 50, "width": 60}, pad_size={"height": 64, "width": 80}),
        None,
    ),
    "detr-no-pad": (lambda: T.DetrImageProcessor(size={"height": 48, "width": 64}, do_pad=False), None),
    "detr-panoptic": (
        lambda: T.DetrImageProcessor(format="coco_panoptic", size={"shortest_edge": 80, "longest_edge": 120}),
        None,
    ),
    "yolos": (lambda: T.YolosImageProcessor(), SMALL),
    "yolos-small": (lambda: T.YolosImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}), None),
    "segformer": (lambda: T.SegformerImageProcessor(), None),
    "maskformer": (lambda: T.MaskFormerImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}), None),
    "mask2former": (lambda: T.Mask2FormerImageProcessor(), SMALL),
}

LEGACY: dict[str, dict[str, Any]] = {
    "vit-feature-extractor-int-size": {"feature_extractor_type": "ViTFeatureExtractor", "size": 64, "resample": 2},
    "vit-fast-served-as-slow": {
        "image_processor_type": "ViTImageProcessorFast",
        "size": {"height": 48, "width": 40},
        "do_center_crop": None,
        "crop_size": None,
        "resample": 2,
        "default_to_square": True,
    },
    "clip-int-sizes": {"image_processor_type": "CLIPImageProcessor", "size": 72, "crop_size": 64},
    "clip-use-square-size": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 56},
        "use_square_size": True,
    },
    "detr-size-and-max-size": {
        "image_processor_type": "DetrImageProcessor",
        "size": 96,
        "max_size": 150,
        "pad_and_return_pixel_mask": True,
    },
    "maskformer-int-size": {
        "image_processor_type": "MaskFormerImageProcessor",
        "size": 96,
        "max_size": 150,
        "size_divisor": 16,
    },
    "convnext-int-size": {"image_processor_type": "ConvNextImageProcessor", "size": 64, "crop_pct": 0.95},
}


def assert_same_inputs(ours: ImageProcessor, theirs: Any, files: dict[str, bytes], names: list[str]) -> float:
    our_images = [load_image(files[name], max_pixels=MAX_PIXELS) for name in names]
    expected = dict(theirs([theirs_decoded(files[name]) for name in names], return_tensors="np"))
    got = ours(our_images)
    assert sorted(got) == sorted(expected)
    assert got["pixel_values"].dtype == np.float32
    assert got["pixel_values"].shape == expected["pixel_values"].shape
    difference = float(np.abs(got["pixel_values"] - expected["pixel_values"].astype(np.float32)).max())
    assert difference <= TOLERANCE
    if "pixel_mask" in expected:
        assert got["pixel_mask"].dtype == np.int64
        np.testing.assert_array_equal(got["pixel_mask"], expected["pixel_mask"])
    for image in our_images:
        assert ours.transform(image).shape[1:] == ours.resized_size(image.height, image.width)
    json.dumps(ours.describe())
    return difference


@pytest.mark.parametrize("case", CASES)
def test_processor_matches_transformers(case: str, files: dict[str, bytes], tmp_path: Path) -> None:
    build, names = CASES[case]
    theirs = build()
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    ours = ImageProcessor.from_config(config)
    assert ours.kind == type(theirs).__name__
    assert_same_inputs(ours, theirs, files, names or list(files))


@pytest.mark.parametrize("case", LEGACY)
def test_legacy_configs_read_as_auto_image_processor_reads_them(
    case: str, files: dict[str, bytes], tmp_path: Path
) -> None:
    config = LEGACY[case]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert_same_inputs(ImageProcessor.from_config(config), theirs, files, list(files))


def test_exactly_the_same_values_not_just_close(files: dict[str, bytes], tmp_path: Path) -> None:
    """Rescale and normalize run as transformers runs them (float64 rescale, float32 normalize)."""
    theirs = transformers.EfficientNetImageProcessor(rescale_offset=True, rescale_factor=1 / 127.5)
    theirs.save_pretrained(tmp_path)
    ours = ImageProcessor.from_config(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    data = files["landscape-640x480.jpg"]
    expected = theirs(theirs_decoded(data), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(ours([load_image(data, max_pixels=MAX_PIXELS)])["pixel_values"], expected)


def test_decoding_matches_transformers_load_image(files: dict[str, bytes]) -> None:
    for name, data in files.items():
        ours = load_image(data, max_pixels=MAX_PIXELS)
        assert ours.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs_decoded(data)), err_msg=name)
    assert load_image(files["exif-rotated-160x120.jpg"], max_pixels=MAX_PIXELS).size == (120, 160)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_transformers_does(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(synthetic_rgba(30, 20).convert("RGB"), "JPEG", exif=exif.tobytes())
    ours = load_image(data, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs_decoded(data)))
    assert ours.size == ((20, 30) if orientation >= 5 else (30, 20))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image", "could not be decoded"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "could not be decoded"),
        (encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:300], "could not be decoded"),
        (encode(Image.new("RGB", (8, 8)), "PPM"), "could not be decoded"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "ppm-not-accepted"],
)
def test_undecodable_bytes_are_invalid_input(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_image(data, max_pixels=MAX_PIXELS)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data: never decodable."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "limit"),
    [(50_000, 50_000, MAX_PIXELS), (10_000, 10_000, MAX_PIXELS), (5_000, 4_000, 1_000_000), (1001, 1000, 1_000_000)],
    ids=["pillow-bomb-error", "pillow-bomb-warning", "over-our-limit", "one-row-over"],
)
def test_oversized_images_are_refused_from_the_header(width: int, height: int, limit: int) -> None:
    data = png_header(width, height)
    assert len(data) < 200
    start = time.perf_counter()
    with pytest.raises(Unprocessable) as caught:
        load_image(data, max_pixels=limit)
    assert time.perf_counter() - start < 0.5
    assert str(width * height) in caught.value.message and str(limit) in caught.value.message


def test_pillow_bomb_warning_ignored_still_meets_our_limit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(Unprocessable, match="100000000 pixels, more than the 10000000 allowed"):
            load_image(png_header(10_000, 10_000), max_pixels=MAX_PIXELS)


def test_every_accepted_format_decodes() -> None:
    image = synthetic_rgba(24, 16).convert("RGB")
    for fmt in FORMATS:
        decoded = load_image(encode(image, fmt), max_pixels=MAX_PIXELS)
        assert decoded.size == (24, 16) and decoded.mode == "RGB", fmt


def test_base64_and_data_urls(files: dict[str, bytes]) -> None:
    data = files["rgba-64x48.png"]
    text = base64.b64encode(data).decode()
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    for form in (
        text,
        wrapped,
        text.rstrip("="),
        base64.urlsafe_b64encode(data).decode(),
        f"data:image/png;base64,{text}",
        f"  DATA:image/png;charset=binary;base64,{wrapped}\n",
    ):
        assert decode_base64_image(form) == data
    assert load_image(decode_base64_image(text), max_pixels=MAX_PIXELS).size == (64, 48)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        ("abcde", "not valid base64"),
        ("", "empty"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png,%89PNG", "data:image/<type>;base64"),
        ("data:image/png;base64", "data:image/<type>;base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("ünïcode", "not valid base64"),
    ],
)
def test_bad_base64_is_invalid_input(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_base64_image(text)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"image_processor_type": "LlavaImageProcessor"}, "'LlavaImageProcessor' is not supported"),
        ({"do_resize": True}, "names no `image_processor_type`"),
        ({"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 224}}, "height"),
        ({"image_processor_type": "DetrImageProcessor", "size": {"shortest_edge": 800}}, "height"),
        ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_processor_type": "ViTImageProcessor", "resample": 9}, "resample"),
        ({"image_processor_type": "ViTImageProcessor", "resample": None}, "resample must be set"),
        ({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 1, "width": 2}}, "shortest_edge"),
    ],
)
def test_unusable_configs_are_artifact_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        ImageProcessor.from_config(config)


def test_too_narrow_to_resize_and_mixed_sizes_without_padding() -> None:
    yolos = ImageProcessor.from_config({"image_processor_type": "YolosImageProcessor"})
    with pytest.raises(Unprocessable, match="too narrow"):
        yolos([Image.new("RGB", (3000, 10))])
    clip = ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False})
    with pytest.raises(Unprocessable, match="different sizes"):
        clip([Image.new("RGB", (300, 200)), Image.new("RGB", (200, 300))])
    with pytest.raises(InvalidInput, match="no images"):
        clip([])


def test_pads_batch_says_when_masks_need_cropping() -> None:
    detr = ImageProcessor.from_config({"image_processor_type": "DetrImageProcessor"})
    vit = ImageProcessor.from_config({"image_processor_type": "ViTImageProcessor"})
    assert detr.pads_batch and not vit.pads_batch
    assert detr.resized_size(480, 640) == (800, 1066) and vit.resized_size(480, 640) == (224, 224)
    assert detr.describe()["outputs"] == ["pixel_values", "pixel_mask"]
    assert vit.describe()["resize"] == {
        "rule": "fixed",
        "size": (224, 224),
        "resample": "bilinear",
        "max_size": None,
        "divisor": 0,
    }


def test_the_module_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, runtime.images; "
        "bad = {'torch', 'transformers', 'httpx', 'requests', 'litestar'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
