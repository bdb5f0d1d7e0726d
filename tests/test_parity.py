"""The compiled pipeline against the transformers PyTorch pipeline, task by task, on the same inputs.

Same labels, spans, words and tokens; scores within 1e-4 (fp32). int8 artifacts are held to their
own gate: compile refuses them when the top label moves, and the ones it accepts keep every label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from compile import CompileOptions, Precision, Progress, ValidationFailed, compile_model
from tests.cases import CASES, GENERATIVE, MASK, TRANSFORMERS_TASKS
from tests.compare import assert_same, min_cosine
from tests.support.text import ARCHITECTURES

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


CASE_IDS = [(task, i) for task in TRANSFORMERS_TASKS for i in range(len(CASES[task]))]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("task", "case"), CASE_IDS, ids=[f"{t}-{i}" for t, i in CASE_IDS])
def test_fp32_matches_pytorch(task: str, case: int, arch: str, tiny_models: dict, artifacts: dict) -> None:
    inputs, params = CASES[task][case]
    compiled = runtime.load(artifacts[task, arch])
    assert compiled.manifest.precision == "fp32"
    ours = run_case(compiled, task, inputs, params, compiled.tokenizer.info.mask_token)
    assert_same(ours, torch_result(task, tiny_models[task, arch], inputs, params))


TEXTS = [
    "This sound track was beautiful! It paints the scenery in your mind so well.",
    "Hi, I recently bought a device from your company but it is not working as advertised.",
    "Sarah works at Hugging Face in New York City since 2019.",
    "The weather today is sunny.",
]
PAIRS = [
    ("Where do I live?", "My name is Sarah and I live in London."),
    ("I would like to get reimbursed for the device.", "This example is refund."),
    ("I would like to get reimbursed for the device.", "This example is legal."),
]


def raw_outputs(compiled: runtime.Pipeline, model: Path, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(PyTorch, compiled) output vectors on the same encodings: one per label decision."""
    import torch
    import transformers

    from compile.tasks import export_spec
    from compile.validate import vectors

    spec = export_spec(task)
    torch_model = getattr(transformers, spec.auto_class).from_pretrained(model).eval()
    batches = [compiled.tokenizer.encode(TEXTS)]
    if spec.pairs:
        batches.append(compiled.tokenizer.encode(*zip(*PAIRS)))
    pairs = []
    for encodings in batches:
        feeds = {k: v for k, v in compiled.tokenizer.batch(encodings).items() if k in compiled.model.input_names}
        ours = compiled.model.run(feeds)
        with torch.inference_mode():
            theirs = torch_model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        mask, level = feeds["attention_mask"], spec.token_level
        for name in spec.outputs:
            pairs += zip(vectors(theirs[name].numpy(), mask, level), vectors(ours[name], mask, level))
    return pairs


# Where int8 loses its gate on these tiny random models (measured; the figures are in the refusal).
# The models are the same bytes in every session (tests/support/text.py), so each case has one
# outcome. Only per-token labels fail, on the label half of the gate (every min cosine >= 0.997):
# top label agreement 99.0% (bert) and 98.7% (roberta) for token-classification, 95.5% and 96.2%
# for fill-mask. Every other task keeps all its labels (question-answering: 14 of 14 span vectors).
INT8_REFUSED = {
    ("token-classification", "bert"), ("token-classification", "roberta"), ("fill-mask", "bert"),
    ("fill-mask", "roberta"),
}  # fmt: skip


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("task", [t for t in CASES if t not in GENERATIVE])
def test_int8_holds_its_gate(task: str, arch: str, tiny_models: dict, tmp_path: Path) -> None:
    """int8 is kept only when it holds its gate, and then stays near it beyond the validation inputs;
    where it is refused, the refusal says why and leaves nothing behind.

    The gate (cosine >= 0.99, same top label) is measured on the validation inputs. On inputs
    compile never saw, every output vector of an accepted int8 must keep cosine >= 0.98 (short
    span-logit vectors land just under 0.99). Labels are not compared here: random tiny models
    score nearly every decision as a near-tie (0.35 vs 0.34), which any quantization noise flips;
    the real model's int8 labels and rankings are checked in test_sentence.py.
    """
    out = tmp_path / "int8"
    options = CompileOptions(precision=Precision.INT8)
    if (task, arch) in INT8_REFUSED:
        with pytest.raises(ValidationFailed, match=r"FAILED gate \(same top label and cosine >= 0.99\)"):
            compile_model(tiny_models[task, arch], out, options, Progress(quiet=True))
        assert not out.exists(), "a failed compile must leave no artifact behind"
        return
    result = compile_model(tiny_models[task, arch], out, options, Progress(quiet=True))
    validation = result.manifest.validation
    assert result.manifest.precision == "int8" and validation.passed
    assert validation.min_cosine >= 0.99 and validation.label_agreement in (None, 1.0)
    compared = raw_outputs(runtime.load(out), tiny_models[task, arch], task)
    assert compared and all(min_cosine(ours, theirs) >= 0.98 for theirs, ours in compared)


def test_batch_equals_one_by_one(artifacts: dict) -> None:
    """A client batch gives each input the result it gets alone (padding never leaks)."""
    pipe = runtime.load(artifacts["token-classification", "bert"])
    texts = ["Sarah lives in London.", "My name is Sarah and I live in London, where I work at a bakery.", "Hi"]
    batched = pipe(texts, aggregation_strategy="simple")
    for text, result in zip(texts, batched):
        assert_same(result, pipe(text, aggregation_strategy="simple"), atol=1e-5)
