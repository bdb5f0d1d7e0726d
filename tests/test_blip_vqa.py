"""visual-question-answering with BLIP (`BlipForQuestionAnswering`): compiled by `compile.blip`,
served by `runtime.tasks.blip_vqa`, against transformers on a tiny random model built here.

- the runtime's `BlipImageProcessor` against transformers' on photographs, within 1e-4;
- the compile gates (each graph within 1e-4 of PyTorch, greedy tokens equal to `model.generate`),
  and that they fail on a model whose decoder differs from its graph by 1e-2 in one bias;
- answers equal to the transformers `visual-question-answering` pipeline on photographs and
  questions (greedy, and beam search when the generation config asks for it), in every input form;
- the answer length: the pipeline's default from the generation config, `max_new_tokens`, `Limits`;
- `kiln compile --task visual-question-answering`, `runtime.load` and the server.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from compile import blip
from compile.options import CompileOptions, Precision, Progress
from runtime.artifact import Source, read_manifest
from runtime.errors import ArtifactError
from runtime.images import ImageProcessor
from runtime.session import SessionOptions
from runtime.tasks.base import Limits
from runtime.tasks.blip_vqa import BlipDecoding, BlipVisualQuestionAnswering
from tests.conftest import Server
from tests.support.photographs import photographs
from tests.support.questions import WORDS

# BERT's WordPiece with BLIP's two added tokens: [DEC] starts the answer, [ENC] is unused by transformers
BLIP_WORDS = [*WORDS, "[DEC]", "[ENC]"]
QUESTIONS = ["what is in the picture ?", "how many circles are there ?", "is the sky blue ?"]
PROCESSOR_CONFIGS = [
    {},
    {"size": 224, "resample": 2, "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5]},
    {"size": {"height": 200, "width": 320}, "do_normalize": False},
]


def build_tiny_blip(out: Path) -> Path:
    """Two layers a side, weights drawn at 0.2 (the default 0.02 answers every question alike), a
    text window of 512 positions (the pipeline's 256 new tokens fit), and a generation config whose
    `max_length` 10 is the pipeline's length: at most 9 answer tokens."""
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n")
    torch.manual_seed(0)
    text = transformers.BlipTextConfig(
        vocab_size=len(BLIP_WORDS), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512, initializer_range=0.2,
        bos_token_id=BLIP_WORDS.index("[DEC]"), sep_token_id=BLIP_WORDS.index("[SEP]"),
        eos_token_id=BLIP_WORDS.index("[SEP]"), pad_token_id=0,
    )  # fmt: skip
    vision = transformers.BlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
        patch_size=16, initializer_range=0.2,
    )  # fmt: skip
    config = transformers.BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    model = transformers.BlipForQuestionAnswering(config).eval()
    model.generation_config.max_length = 10
    model.save_pretrained(out)
    # as BLIP's tokenizers: [DEC] its bos token, and no token_type_ids (the pipeline passes every
    # tokenizer output to `generate`, which refuses them)
    transformers.BertTokenizerFast(
        str(out / "vocab.txt"), model_max_length=512, bos_token="[DEC]", additional_special_tokens=["[ENC]"],
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(out)  # fmt: skip
    transformers.BlipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "model")


@pytest.fixture(scope="module")
def artifact(tiny_blip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blip-artifact") / "artifact"
    source = Source(model=str(tiny_blip), local=True)
    options = CompileOptions(precision=Precision.FP32)
    blip.build(tiny_blip, out, source=source, options=options, key="test", started=0.0, progress=Progress(quiet=True))
    return out


def load(directory: Path) -> BlipVisualQuestionAnswering:
    return BlipVisualQuestionAnswering(directory, read_manifest(directory), SessionOptions())


@pytest.fixture(scope="module")
def compiled(artifact: Path) -> BlipVisualQuestionAnswering:
    return load(artifact)


def reference(model: Any, **generation: Any) -> Any:
    """transformers' pipeline over `model` (a directory or a loaded model), with `generation` set
    as a caller sets it: when the pipeline is made."""
    import transformers

    transformers.logging.set_verbosity_error()
    if isinstance(model, Path):
        return transformers.pipeline("visual-question-answering", model=str(model), device="cpu", **generation)
    components = {
        "tokenizer": transformers.AutoTokenizer.from_pretrained(model.name_or_path),
        "image_processor": transformers.AutoImageProcessor.from_pretrained(model.name_or_path),
    }
    return transformers.pipeline("visual-question-answering", model=model, device="cpu", **components, **generation)


@pytest.fixture(scope="module")
def theirs(tiny_blip: Path) -> Any:
    return reference(tiny_blip)


@pytest.mark.parametrize("settings", PROCESSOR_CONFIGS, ids=["default", "int-size", "no-normalize"])
def test_image_processor_equals_transformers(settings: dict[str, Any]) -> None:
    import transformers

    theirs = transformers.BlipImageProcessor.from_dict(settings)
    ours = ImageProcessor.from_config({"image_processor_type": "BlipImageProcessor", **settings})
    for image in photographs().values():
        want = theirs(images=image, return_tensors="np")["pixel_values"]
        got = ours([image])["pixel_values"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_compile_gates_hold_and_are_recorded(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    assert manifest.graphs == blip.GRAPHS and manifest.model_file == blip.GRAPHS["decoder"]
    assert manifest.validation.passed and manifest.validation.max_abs_diff <= blip.GRAPH_MAX_ABS
    assert manifest.validation.label_agreement == 1.0  # the same greedy tokens on every decoded input
    assert manifest.image_processor is not None and manifest.image_processor["type"] == "BlipImageProcessor"


def test_compile_gates_fail_on_a_different_model(tiny_blip: Path, artifact: Path) -> None:
    import torch

    model, tokenizer, processor = blip.load_torch(tiny_blip)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias += 1e-2
    lines, figures = blip.measure(model, tokenizer, processor, artifact, blip.GRAPHS, "cpu")
    assert not figures.passed, lines
    diffs = {
        line.split(":")[0]: float(line.split("max abs diff ")[1].split()[0]) for line in lines[1:] if "(scaled)" in line
    }
    assert diffs["decoder (first step)"] > blip.GRAPH_MAX_ABS and diffs["decoder (with past)"] > blip.GRAPH_MAX_ABS
    assert diffs["vision"] <= blip.GRAPH_MAX_ABS and diffs["question encoder"] <= blip.GRAPH_MAX_ABS


def test_answers_equal_the_pipeline(compiled: BlipVisualQuestionAnswering, theirs: Any) -> None:
    answers = []
    for image in photographs().values():
        for question in QUESTIONS:
            want = theirs(image=image, question=question)
            got = compiled({"image": image, "question": question})
            assert got == want, question
            answers.append(got[0]["answer"])
    assert len({answer for answer in answers if answer}) >= 6, answers  # the image and the question move the answer


def test_every_input_form_the_pipeline_takes(compiled: BlipVisualQuestionAnswering, theirs: Any) -> None:
    images = list(photographs().values())[:2]
    grid = compiled(images, question=QUESTIONS[:2])
    assert grid == theirs(image=images, question=QUESTIONS[:2]) and len(grid) == 4
    pairs = [{"image": image, "question": question} for image, question in zip(images, QUESTIONS)]
    assert compiled(pairs) == theirs(pairs)
    png = io.BytesIO()
    images[0].save(png, format="PNG")
    assert compiled(png.getvalue(), question=QUESTIONS[0]) == theirs(image=images[0], question=QUESTIONS[0])
    with pytest.raises(runtime.InvalidInput, match="question"):
        compiled({"image": images[0]})
    with pytest.raises(runtime.InvalidParameter, match="num_beams"):
        compiled(pairs[0], num_beams=2)


def test_beam_search_from_the_generation_config(
    tiny_blip: Path, artifact: Path, tmp_path: Path, compiled: BlipVisualQuestionAnswering
) -> None:
    import transformers

    beams = tmp_path / "beams"
    shutil.copytree(artifact, beams)
    settings = {"num_beams": 3, "length_penalty": 0.5}
    config = json.loads((beams / "generation_config.json").read_text())
    (beams / "generation_config.json").write_text(json.dumps(config | settings))
    ours = load(beams)
    model = transformers.BlipForQuestionAnswering.from_pretrained(tiny_blip).eval()
    model.generation_config.update(**settings)
    theirs = reference(model)
    moved = 0
    for image in list(photographs().values())[:2]:
        for question in QUESTIONS:
            got = ours({"image": image, "question": question})
            assert got == theirs(image=image, question=question), question
            moved += got != compiled({"image": image, "question": question})
    assert moved >= 2  # beam search answers otherwise than greedy decoding


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_length": 20}, {"max_length": 7}, {"max_new_tokens": 5}, {"max_new_tokens": 5, "max_length": 7}],
    ids=["none", "max_length-20", "max_length-7", "max_new_tokens", "both"],
)
def test_default_answer_length_is_the_pipelines(tiny_blip: Path, settings: dict[str, Any]) -> None:
    import transformers

    model = transformers.BlipForQuestionAnswering.from_pretrained(tiny_blip).eval()
    model.generation_config = transformers.GenerationConfig(**settings)
    pipeline = reference(model).generation_config
    want = pipeline.max_new_tokens if pipeline.max_new_tokens is not None else pipeline.max_length - 1
    assert BlipDecoding.from_config(model.generation_config.to_diff_dict()).max_new_tokens == want


def test_unsupported_generation_settings_are_refused() -> None:
    with pytest.raises(ArtifactError, match="no_repeat_ngram_size"):
        BlipDecoding.from_config({"no_repeat_ngram_size": 2})


def test_max_new_tokens_within_limits(compiled: BlipVisualQuestionAnswering, tiny_blip: Path, artifact: Path) -> None:
    capped = reference(tiny_blip, max_new_tokens=3)
    image = photographs()["astronaut"]
    limited = load(artifact)
    limited.limits = dataclasses.replace(Limits(), max_new_tokens=3)
    shortened = 0
    for question in QUESTIONS:
        want = capped(image=image, question=question)
        assert compiled({"image": image, "question": question}, max_new_tokens=3) == want
        assert limited({"image": image, "question": question}) == want  # the default, bounded by the limit
        shortened += want != compiled({"image": image, "question": question})
    assert shortened >= 1
    one = {"image": image, "question": QUESTIONS[0]}
    with pytest.raises(runtime.Unprocessable, match="max_new_tokens"):
        limited(one, max_new_tokens=4)
    with pytest.raises(runtime.InvalidParameter, match="max_new_tokens"):
        compiled(one, max_new_tokens=0)
    limited.limits = dataclasses.replace(Limits(), max_kv_cache_bytes=1024)
    with pytest.raises(runtime.Unprocessable, match="key/value cache"):
        limited(one)


def test_kiln_compile_load_and_serve(
    tiny_blip: Path,
    tmp_path: Path,
    compiled: BlipVisualQuestionAnswering,
    start_server: Callable[..., Server],
) -> None:
    from huggingface_hub import InferenceClient

    from compile import compile_model

    options = CompileOptions(task="visual-question-answering", precision=Precision.FP32)
    directory = compile_model(tiny_blip, tmp_path / "compiled", options, Progress(quiet=True)).directory
    loaded = runtime.load(directory)
    assert isinstance(loaded, BlipVisualQuestionAnswering)
    image = photographs()["chelsea"]
    want = compiled({"image": image, "question": QUESTIONS[0]})
    assert loaded({"image": image, "question": QUESTIONS[0]}) == want
    png = io.BytesIO()
    image.save(png, format="PNG")
    server = start_server(str(directory))
    got = InferenceClient(model=server.url).visual_question_answering(image=png.getvalue(), question=QUESTIONS[0])
    assert [element.answer for element in got] == [want[0]["answer"]]
