"""Validation of a compiled graph against the PyTorch model it came from.

Both run on the same tokenized batches (several lengths, padded, batch > 1; text pairs for the
tasks that take them). Every output is cut into vectors (a token's hidden state, a row of logits,
a sequence of span logits) and compared: max absolute difference, cosine, and top-label agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compile.tasks import ExportSpec

TEXTS = [
    "Hello.",
    "My name is Sarah and I live in London, where I work at a small bakery.",
    "The quick brown fox jumps over the lazy dog while the weather today is sunny with a chance of rain. " * 3,
    (
        "Compiling models to ONNX makes inference faster on small machines, and checking the compiled "
        "model against the original keeps it honest. "
    )
    * 8,
]
# Inputs that int8 calibrates its scales on: never the validation inputs, which judge the result.
CALIBRATION = [
    "Hello there, how are you doing today?",
    "The committee will meet on Tuesday to discuss the new budget proposal.",
    "Click the link below to confirm your email address.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "What is the best way to learn a new programming language?",
    "The soup was too salty, but the bread was delicious.",
    "Researchers published a study on sleep and memory in young adults.",
    "Our store is open from nine to five, Monday through Saturday.",
    "ok",
    "Temperatures will drop below freezing overnight, so cover your plants and keep pets indoors. " * 2,
]

# More varied sentences for the sentence-embedding tasks, whose gate is per sentence.
SENTENCES = [
    "A man is playing a guitar on the street.",
    "The new movie is awesome and the actors are great.",
    "How do I reset my password?",
    "Stocks fell sharply on Monday after the announcement.",
    "I love pizza with extra cheese.",
    "The cat sleeps on the warm windowsill.",
    "Quantum computers use qubits to perform calculations.",
    "Please send me the report by Friday.",
    "It is raining heavily in Seattle today.",
    "The football match ended in a draw.",
    "Scientists discovered a new species in the deep ocean.",
    "My phone battery dies too quickly.",
    "Hi",
    "Where is the nearest train station?",
    "The recipe needs two cups of flour and three eggs.",
    "Global temperatures have risen over the last century.",
]
PAIRS = [
    ("What is used for inference?", "This model is used with sagemaker for inference in Nuremberg."),
    ("Who wrote the book?", "The book was written by an unknown author in London a long time ago. " * 4),
    ("Is it raining?", "This example is about the weather."),
]

FP32_MAX_ABS = 1e-4
MIN_COSINE = 0.99


@dataclass(frozen=True)
class Figures:
    """What one candidate measured against PyTorch, and whether it passed its gate."""

    gate: str
    passed: bool
    vectors: int
    max_abs_diff: float
    min_cosine: float
    label_agreement: float | None


def gate_for(precision: str) -> str:
    if precision == "fp32":
        return f"max abs diff <= {FP32_MAX_ABS:g}"
    return f"same top label and cosine >= {MIN_COSINE}"


def batches(tokenizer: Any, spec: ExportSpec, max_length: int) -> list[dict[str, np.ndarray]]:
    """Tokenized validation batches as numpy arrays, the way the runtime will feed the graph."""
    kwargs = dict(padding=True, truncation=True, max_length=max_length, return_tensors="np")
    mask = getattr(tokenizer, "mask_token", None)
    texts = [t.replace("London", mask) if mask and spec.task == "fill-mask" else t for t in TEXTS]
    out = [dict(tokenizer(texts, **kwargs))]
    if spec.pooled:
        out += [dict(tokenizer(SENTENCES[i : i + 8], **kwargs)) for i in range(0, len(SENTENCES), 8)]
    if spec.pairs:
        questions, contexts = zip(*PAIRS)
        out.append(dict(tokenizer(list(questions), list(contexts), **kwargs)))
    return [{k: np.asarray(v, dtype=np.int64) for k, v in batch.items()} for batch in out]


def vectors(output: np.ndarray, attention_mask: np.ndarray, token_level: bool) -> list[np.ndarray]:
    """Cut a batch output into the vectors compared; padding never counts.

    Token-level outputs give a vector per token (hidden states, token logits) or per sequence
    (span logits); others a vector per row, except one score per row (a reranker), which gives
    one vector across the batch, so that its cosine says something.
    """
    if not token_level:
        return [output[:, 0]] if output.shape[-1] == 1 else list(output)
    rows: list[np.ndarray] = []
    for i, valid in enumerate(attention_mask.astype(bool)):
        if output.ndim == 3:
            rows.extend(output[i, valid])
        else:
            rows.append(output[i, valid])
    return rows


def compare(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    masks: list[np.ndarray],
    spec: ExportSpec,
    precision: str,
) -> Figures:
    max_abs, min_cos, agree, total, count = 0.0, 1.0, 0, 0, 0
    level = spec.token_level and not spec.pooled
    for ref, cand, mask in zip(reference, candidate, masks):
        for name in ref:
            per_token = level and ref[name].shape[:2] == mask.shape  # not a per-input head beside them
            pairs = zip(vectors(ref[name], mask, per_token), vectors(cand[name].astype(np.float32), mask, per_token))
            for a, b in pairs:
                count += 1
                max_abs = max(max_abs, float(np.max(np.abs(a - b))))
                denom = float(np.linalg.norm(a) * np.linalg.norm(b))
                min_cos = min(min_cos, float(np.dot(a, b)) / denom if denom else 1.0)
                if spec.labelled and name not in spec.unlabelled:
                    total += 1
                    agree += int(np.argmax(a) == np.argmax(b))
    agreement = agree / total if total else None
    if precision == "fp32":
        passed = max_abs <= FP32_MAX_ABS
    else:
        passed = min_cos >= MIN_COSINE and (agreement is None or agreement == 1.0)
    return Figures(gate_for(precision), passed, count, max_abs, min_cos, agreement)


def report(label: str, figures: Figures) -> str:
    agreement = "" if figures.label_agreement is None else f", top label agreement {figures.label_agreement:.1%}"
    verdict = "passed" if figures.passed else "FAILED"
    return (
        f"{label}: {verdict} gate ({figures.gate}) on {figures.vectors} vectors: "
        f"max abs diff {figures.max_abs_diff:.3g}, min cosine {figures.min_cosine:.6f}{agreement}"
    )
