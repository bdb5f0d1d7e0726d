"""The compiled pipeline against the transformers PyTorch pipeline, task by task, on the same inputs.

Same labels, spans, words and tokens; scores within 1e-4 (fp32). int8 artifacts are held to their
own gate: compile refuses them when the top label moves, and the ones it accepts keep every label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import runtime
from compile import CompileOptions, Precision, Progress, ValidationFailed, compile_model
from tests.cases import CASES, MASK
from tests.compare import assert_same, min_cosine, top_labels
from tests.tiny_models import ARCHITECTURES

_REFERENCE: dict[Path, Any] = {}


def reference(task: str, model: Path) -> Any:
    from transformers import pipeline

    if model not in _REFERENCE:
        _REFERENCE[model] = pipeline(task, model=str(model), device="cpu")
    return _REFERENCE[model]


def run_case(pipe: Any, task: str, inputs: Any, params: dict[str, Any], mask: str | None) -> Any:
    if task == "fill-mask" and mask is not None:
        inputs = inputs.replace(MASK, mask)
    return pipe(inputs, **params)


def torch_result(task: str, model: Path, inputs: Any, params: dict[str, Any]) -> Any:
    pipe = reference(task, model)
    result = run_case(pipe, task, inputs, params, pipe.tokenizer.mask_token)
    if task == "text-classification" and isinstance(result, dict):
        result = [result]  # transformers answers a lone text pair with a bare dict; kiln always with a list
    return result


CASE_IDS = [(task, i) for task, cases in CASES.items() for i in range(len(cases))]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("task", "case"), CASE_IDS, ids=[f"{t}-{i}" for t, i in CASE_IDS])
def test_fp32_matches_pytorch(task: str, case: int, arch: str, tiny_models: dict, artifacts: dict) -> None:
    inputs, params = CASES[task][case]
    compiled = runtime.load(artifacts[task, arch])
    assert compiled.manifest.precision == "fp32"
    ours = run_case(compiled, task, inputs, params, compiled.tokenizer.info.mask_token)
    assert_same(ours, torch_result(task, tiny_models[task, arch], inputs, params))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("task", list(CASES))
def test_int8_holds_its_gate(task: str, arch: str, tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    try:
        result = compile_model(
            tiny_models[task, arch], out, CompileOptions(precision=Precision.INT8), Progress(quiet=True)
        )
    except ValidationFailed as exc:
        assert "FAILED gate (same top label and cosine >= 0.99)" in exc.message
        assert not out.exists(), "a failed compile must leave no artifact behind"
        return
    validation = result.manifest.validation
    assert result.manifest.precision == "int8" and validation.passed
    assert validation.min_cosine >= 0.99 and validation.label_agreement in (None, 1.0)
    compiled = runtime.load(out)
    for inputs, params in CASES[task][:2]:
        ours = run_case(compiled, task, inputs, params, compiled.tokenizer.info.mask_token)
        theirs = torch_result(task, tiny_models[task, arch], inputs, params)
        if task == "feature-extraction":
            for a, b in zip(
                ours if isinstance(inputs, list) else [ours], theirs if isinstance(inputs, list) else [theirs]
            ):
                assert min_cosine(a, b) >= 0.99
        else:
            assert top_labels(task, ours) == top_labels(task, theirs)


def test_batch_equals_one_by_one(artifacts: dict) -> None:
    """A client batch gives each input the result it gets alone (padding never leaks)."""
    pipe = runtime.load(artifacts["token-classification", "bert"])
    texts = ["Sarah lives in London.", "My name is Sarah and I live in London, where I work at a bakery.", "Hi"]
    batched = pipe(texts, aggregation_strategy="simple")
    for text, result in zip(texts, batched):
        assert_same(result, pipe(text, aggregation_strategy="simple"), atol=1e-5)
