"""`compile.custom_configs` and the ViLT builder of `runtime.images.processor` against transformers.

TAPAS and ViLT: tiny random models built here, exported through kiln's custom ONNX configs at
opsets 14 and 17, run by ONNX Runtime on inputs of other shapes than the export's dummies, and
compared with the unpatched PyTorch model: every output within 1e-4 (fp32). TAPAS with and
without aggregation heads, on tables tokenized by `TapasTokenizer` (a WordPiece vocabulary written
here); ViLT at image sizes other than the one it was exported at, in padded batches, and on real
photographs prepared by the numpy processor. ViLT's processor: the ViLT builder of `runtime.images.processor` against
`transformers.ViltImageProcessor` on photographs of several sizes and aspect ratios, one at a time
and batched: pixel values within 1e-4 after normalization, pixel masks equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import transformers
from PIL import Image

from compile.custom_configs import custom_onnx_config, export_custom
from compile.errors import UnsupportedModel
from runtime.images import ImageProcessor
from runtime.images.steps import vilt_size
from tests.support.photographs import photographs

TOLERANCE = 1e-4
TOLERANCE_RELATIVE = 1e-6
LOG_ZERO = -10000.0
OPSETS = (14, 17)
TAPAS_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]", "what", "which", "how", "many", "is", "the", "of",
    "in", "city", "population", "country", "name", "year", "total", "average", "sum", "largest", "paris", "berlin",
    "rome", "madrid", "lisbon", "france", "germany", "italy", "spain", "portugal", "1", "2", "3", "4", "5", "6",
    "7", "8", "9", "0", ",", ".", "?", "##s", "##0", "##5",
]  # fmt: skip
TABLE = {
    "city": ["paris", "berlin", "rome", "madrid", "lisbon"],
    "country": ["france", "germany", "italy", "spain", "portugal"],
    "population": ["2", "3 5", "4", "5 0", "1"],
    "year": ["1 9 9 0", "2 0 0 5", "1 9 9 9", "2 0 1 0", "2 0 0 0"],
}
QUERIES = [
    "what is the population of paris ?",
    "which city is in spain ?",
    "total population",
    "how many city ?",
]


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def run_torch(model: Any, feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outputs = model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
    return {name: outputs[name].numpy() for name in names}


def dims(path: Path) -> dict[str, list[str | int]]:
    graph = onnx.load(str(path)).graph
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }


def largest_difference(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].shape == expected[name].shape, name
    return max(float(np.abs(got[name] - expected[name]).max()) for name in expected)


@pytest.fixture(scope="module")
def tapas_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    vocab = tmp_path_factory.mktemp("tapas-vocab") / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return transformers.TapasTokenizer(str(vocab), model_max_length=128)


@pytest.fixture(scope="module", params=[0, 4], ids=["cells-only", "aggregation"])
def tapas_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tapas_tokenizer: Any) -> Path:
    """TapasForQuestionAnswering, 2 layers of 32, with `param` aggregation labels. The weights'
    spread (0.3) makes the columns' scores differ by far more than float error, so the selected
    column, an argmax, is the same in both runtimes. The temperature (0.2 with aggregation) scales
    the cell logits to about 15, where float32 error stays near 1e-5."""
    aggregation = request.param
    torch.manual_seed(aggregation)
    config = transformers.TapasConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_aggregation_labels=aggregation,
        temperature=0.2 if aggregation else 1.0,
        initializer_range=0.3,
    )
    out: Path = tmp_path_factory.mktemp(f"tapas-{aggregation}")
    transformers.TapasForQuestionAnswering(config).save_pretrained(out)
    tapas_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tapas_feeds(tapas_tokenizer: Any) -> dict[str, np.ndarray]:
    """Four questions on one table, padded to the longest: real 7-channel token types."""
    import pandas

    encoded = tapas_tokenizer(table=pandas.DataFrame(TABLE), queries=QUERIES, padding="longest", return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in TAPAS_INPUTS}


@pytest.mark.parametrize("opset", OPSETS)
def test_tapas_matches_pytorch(tapas_dir: Path, tapas_feeds: dict[str, np.ndarray], opset: int, tmp_path: Path) -> None:
    model = transformers.TapasForQuestionAnswering.from_pretrained(tapas_dir).eval()
    aggregation = model.config.num_aggregation_labels > 0
    names = ("logits", "logits_aggregation") if aggregation else ("logits",)
    path = export_custom(tapas_dir, tmp_path, "table-question-answering", opset=opset)

    assert onnx.load(str(path)).opset_import[0].version == opset
    shapes = dims(path)
    assert shapes["token_type_ids"] == ["batch_size", "sequence_length", 7]
    assert shapes["logits"] == ["batch_size", "sequence_length"]
    assert ("logits_aggregation" in shapes) == aggregation
    if aggregation:
        assert shapes["logits_aggregation"] == ["batch_size", 4]

    expected = run_torch(model, tapas_feeds, names)
    selected = expected["logits"] > LOG_ZERO / 2
    assert selected.any(axis=1).all() and not selected.all(), "each question selects some cells, not all"
    assert tapas_difference(run_onnx(path, tapas_feeds), expected) <= TOLERANCE
    lengths = tapas_feeds["attention_mask"].sum(axis=1)
    assert len(set(lengths)) > 1
    for row, length in enumerate(lengths):
        one = {name: value[row : row + 1, :length] for name, value in tapas_feeds.items()}
        assert tapas_difference(run_onnx(path, one), run_torch(model, one, names)) <= TOLERANCE


def tapas_difference(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The largest difference, with the cells outside the selected column (their logits pushed
    down by 10000, where one float32 step is 0.001) required to be the same cells and compared
    relative to that offset."""
    outside = expected["logits"] < LOG_ZERO / 2
    np.testing.assert_array_equal(got["logits"] < LOG_ZERO / 2, outside)
    assert float(np.abs(got["logits"] - expected["logits"])[outside].max(initial=0)) <= -LOG_ZERO * TOLERANCE_RELATIVE
    kept = {**expected, "logits": np.where(outside, 0, expected["logits"])}
    return largest_difference({**got, "logits": np.where(outside, 0, got["logits"])}, kept)


def test_tapas_refuses_what_pytorch_cannot_run() -> None:
    config = transformers.TapasConfig(select_one_column=False)
    with pytest.raises(UnsupportedModel, match="select_one_column"):
        custom_onnx_config("tapas", "table-question-answering", config)
    assert custom_onnx_config("tapas", "fill-mask", config) is None
    assert custom_onnx_config("bert", "table-question-answering", transformers.BertConfig()) is None


VILT_SIZE = 64


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ViltForQuestionAnswering, 2 layers of 32, 16-pixel patches of a 64-pixel position grid, 5
    answers. transformers leaves the position embeddings and the CLS token at zero; they are drawn
    here, or the interpolation of positions would go untested."""
    torch.manual_seed(0)
    labels = [f"answer {i}" for i in range(5)]
    config = transformers.ViltConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=VILT_SIZE,
        patch_size=16,
        max_position_embeddings=40,
        num_images=1,
        initializer_range=0.2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = transformers.ViltForQuestionAnswering(config).eval()
    with torch.no_grad():
        model.vilt.embeddings.position_embeddings.normal_(std=0.5)
        model.vilt.embeddings.cls_token.normal_(std=0.5)
    out: Path = tmp_path_factory.mktemp("vilt")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=OPSETS, ids=[f"opset{o}" for o in OPSETS])
def vilt_graph(request: pytest.FixtureRequest, vilt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    opset = request.param
    path = export_custom(vilt_dir, tmp_path_factory.mktemp(f"vilt-{opset}"), "visual-question-answering", opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    return path


def vilt_text(batch: int, seed: int) -> dict[str, np.ndarray]:
    """Questions of 9 tokens, the last one padded after 6."""
    ids = np.random.default_rng(seed).integers(6, len(WORDS), (batch, 9))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[-1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_vilt_graph_has_dynamic_image_size(vilt_graph: Path) -> None:
    shapes = dims(vilt_graph)
    assert shapes["pixel_values"] == ["batch_size", "num_channels", "height", "width"]
    assert shapes["pixel_mask"] == ["batch_size", "height", "width"]
    assert shapes["logits"] == ["batch_size", 5]


@pytest.mark.parametrize(
    ("padded", "images"),
    [((96, 128), [(96, 128), (64, 100)]), ((160, 96), [(160, 96), (130, 80), (48, 96)])],
    ids=["96x128", "160x96"],
)
def test_vilt_matches_pytorch_at_other_sizes(
    vilt_dir: Path, vilt_graph: Path, padded: tuple[int, int], images: list[tuple[int, int]]
) -> None:
    """A padded batch at a size the graph was not exported at ({VILT_SIZE} square): each image's
    positions are interpolated to its own extent of the pixel mask."""
    model = transformers.ViltForQuestionAnswering.from_pretrained(vilt_dir).eval()
    rng = np.random.default_rng(len(images))
    values = np.zeros((len(images), 3, *padded), dtype=np.float32)
    mask = np.zeros((len(images), *padded), dtype=np.int64)
    for i, (height, width) in enumerate(images):
        values[i, :, :height, :width] = rng.standard_normal((3, height, width))
        mask[i, :height, :width] = 1
    feeds = {**vilt_text(len(images), seed=1), "pixel_values": values, "pixel_mask": mask}
    assert largest_difference(run_onnx(vilt_graph, feeds), run_torch(model, feeds, ("logits",))) <= TOLERANCE


def test_vilt_answers_photographs_as_pytorch(vilt_dir: Path, vilt_graph: Path) -> None:
    """Real photographs through the numpy processor (short side 96, multiples of 16), batched."""
    model = transformers.ViltForQuestionAnswering.from_pretrained(vilt_dir).eval()
    processor = ImageProcessor.from_config(
        {"image_processor_type": "ViltImageProcessor", "size": {"shortest_edge": 96}, "size_divisor": 16}
    )
    shots = photographs()
    for names in (["chelsea", "grace_hopper"], ["coffee"], ["astronaut", "coffee", "chelsea"]):
        pixels = processor([shots[name] for name in names])
        feeds = {**vilt_text(len(names), seed=2), **pixels}
        assert largest_difference(run_onnx(vilt_graph, feeds), run_torch(model, feeds, ("logits",))) <= TOLERANCE


def test_vilt_refuses_sampled_patches() -> None:
    with pytest.raises(UnsupportedModel, match="max_image_length"):
        custom_onnx_config("vilt", "visual-question-answering", transformers.ViltConfig(max_image_length=200))


def with_strip_and_thumbnail(shots: dict[str, Image.Image]) -> dict[str, Image.Image]:
    """The photographs, plus a wide strip (the long-side cap) and a thumbnail (enlarged)."""
    coffee = shots["coffee"]
    return {**shots, "strip": coffee.crop((0, 150, 600, 250)), "thumbnail": shots["chelsea"].resize((45, 30))}


VILT_CONFIGS: dict[str, dict[str, Any]] = {
    "checkpoint": {
        "feature_extractor_type": "ViltFeatureExtractor",
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "size": 384,
        "size_divisor": 32,
    },
    "defaults": {"image_processor_type": "ViltImageProcessor"},
    "small-bilinear": {
        "image_processor_type": "ViltImageProcessor",
        "size": {"shortest_edge": 200},
        "size_divisor": 16,
        "resample": 2,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    },
}


@pytest.mark.parametrize("name", list(VILT_CONFIGS))
def test_vilt_processor_matches_transformers(name: str) -> None:
    config = VILT_CONFIGS[name]
    ours = ImageProcessor.from_config(config)
    theirs = transformers.ViltImageProcessor(
        **{k: v for k, v in config.items() if k not in ("feature_extractor_type", "image_processor_type")}
    )
    images = with_strip_and_thumbnail(photographs())
    batches = [[image] for image in images.values()] + [list(images.values())]
    for batch in batches:
        got = ours(batch)
        expected = theirs(batch, return_tensors="np")
        assert got.keys() == {"pixel_values", "pixel_mask"}
        assert got["pixel_values"].shape == expected["pixel_values"].shape
        assert float(np.abs(got["pixel_values"] - expected["pixel_values"]).max()) <= TOLERANCE
        np.testing.assert_array_equal(got["pixel_mask"], expected["pixel_mask"])
        assert got["pixel_mask"].dtype == expected["pixel_mask"].dtype


def test_vilt_processor_without_padding() -> None:
    config = {"image_processor_type": "ViltImageProcessor", "do_pad": False}
    shot = photographs()["grace_hopper"]
    got = ImageProcessor.from_config(config)([shot])
    expected = transformers.ViltImageProcessor(do_pad=False)([shot], return_tensors="np")
    assert got.keys() == expected.keys() == {"pixel_values"}
    assert float(np.abs(got["pixel_values"] - expected["pixel_values"]).max()) <= TOLERANCE


@pytest.mark.parametrize(
    ("height", "width"), [(300, 451), (400, 600), (512, 512), (600, 512), (100, 600), (30, 45), (1, 1000), (999, 2)]
)
def test_vilt_size_rule_is_transformers(height: int, width: int) -> None:
    from transformers.models.vilt.image_processing_vilt import get_resize_output_image_size

    image = np.zeros((height, width, 3), dtype=np.uint8)
    for shorter, divisor in ((384, 32), (200, 16)):
        longer = int(1333 / 800 * shorter)
        expected = get_resize_output_image_size(image, shorter, longer, divisor, input_data_format="channels_last")
        assert vilt_size(height, width, shorter, longer, divisor) == tuple(expected)
