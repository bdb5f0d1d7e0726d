"""In-process latency: the PyTorch pipeline against compiled candidates, same model, same payloads.

Every contestant runs in this one process, in alternating blocks after warm-up (A B C, then
C B A, ...), so a noisy machine moves all of them alike. ONNX Runtime's threads spin for a while
after a run and slow whatever runs next, so the first calls of each block are dropped.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import runtime
from compile import CompileOptions, Optimization, Precision, Progress, ValidationFailed, compile_model

SENTENCE = "The quick brown fox jumps over the lazy dog while the weather in London stays rainy and cold. "
QUERY = "Where does the fox jump?"
DISCARD = 2


@dataclass
class Contestant:
    name: str
    call: Callable[[Any], Any]
    note: str = ""


@dataclass
class Shape:
    name: str
    tokens: int
    batch: int


SHAPES = [Shape("b1-16", 16, 1), Shape("b1-128", 128, 1), Shape("b1-512", 512, 1), Shape("b8-128", 128, 8)]


@dataclass
class Payload:
    """What every contestant is called with for one row: `item` holds `batch` inputs."""

    shape: str
    batch: int
    item: Any


@dataclass
class Row:
    model: str
    task: str
    shape: str
    contestant: str
    p50_ms: float
    p95_ms: float
    speedup: float = 1.0
    quality: dict[str, float] = field(default_factory=dict)
    note: str = ""


def text_of(tokens: int, pipe: runtime.TextPipeline) -> str:
    """A text that the model's tokenizer cuts into about `tokens` tokens (specials included)."""
    text = SENTENCE * (tokens // 8 + 2)
    encoding = pipe.tokenizer.encode([text], max_length=1 << 20)[0]
    return text[: encoding.offsets[min(tokens, len(encoding.ids)) - 2][1]]


def payload(task: str, shape: Shape, pipe: runtime.TextPipeline) -> Any:
    one = text_of(shape.tokens, pipe)
    if task == "fill-mask":
        words = one.split(" ")
        words[len(words) // 2] = pipe.tokenizer.info.mask_token or ""
        one = " ".join(words)
    if task == "question-answering":
        item: Any = {"question": QUERY, "context": one}
    elif task == "ranking":
        item = [QUERY, one]
    else:
        item = one
    return item if shape.batch == 1 else [item] * shape.batch


def baseline(task: str, model: Path, device: str) -> Contestant:
    """What the stock container runs: the transformers pipeline, or sentence-transformers; in fp16
    on CUDA, where the compiled candidate is fp16 too."""
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    if task in ("sentence-embeddings", "sentence-similarity"):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model), device=device, model_kwargs={"torch_dtype": dtype})
        return Contestant("pytorch", lambda x: st.encode(x))
    if task == "ranking":
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(str(model), device=device, model_kwargs={"torch_dtype": dtype})
        return Contestant("pytorch", lambda x: ce.predict(x if isinstance(x[0], list) else [x]))
    from transformers import pipeline

    pipe = pipeline(task, model=str(model), device=device, dtype=dtype)  # type: ignore[call-overload]
    if task == "question-answering":
        return Contestant("pytorch", lambda x: pipe([x] if isinstance(x, dict) else x))
    if task == "table-question-answering":  # the pipeline turns the input's table into a DataFrame in place
        return Contestant("pytorch", lambda x: pipe(copy.deepcopy(x)))
    return Contestant("pytorch", lambda x: pipe(x))


FP32_PLANS: list[tuple[str, Optimization | None]] = [("fp32", Optimization.NONE), ("fp32-O2", Optimization.O2)]
"""The text rows' fp32 candidates: plain, and graph-optimized (fused attention)."""


def candidates(
    task: str,
    model: Path,
    work: Path,
    device: str,
    fp32: Sequence[tuple[str, Optimization | None]] = FP32_PLANS,
) -> list[Contestant]:
    """The `fp32` candidates (an optimization of None lets kiln choose, as `kiln compile` does), and
    int8 on CPU or fp16 on CUDA; a candidate that does not hold its gate is kept with a note."""
    plans: list[tuple[str, Precision, Optimization | None]] = [(name, Precision.FP32, opt) for name, opt in fp32]
    plans.append(("fp16", Precision.FP16, Optimization.O4) if device == "cuda" else ("int8", Precision.INT8, None))
    out = []
    for name, precision, optimization in plans:
        options = CompileOptions(task=task, precision=precision, optimize=optimization, device=_device(device))
        try:
            compile_model(model, work / f"{model.name}-{task}-{name}", options, Progress(quiet=True))
        except ValidationFailed as exc:
            out.append(Contestant(name, lambda x: None, note=refusal(name, exc)))
            continue
        pipe = runtime.load(work / f"{model.name}-{task}-{name}", device=device)
        out.append(Contestant(name, pipe))
    return out


def refusal(name: str, exc: ValidationFailed) -> str:
    """`<name> refused: <reason>`, the reason being the first line under the error's headline (the
    first candidate's figures against its gate), or the headline when there is nothing under it."""
    lines = [line.strip() for line in exc.message.splitlines() if line.strip()]
    return f"{name} refused: {lines[1] if len(lines) > 1 else lines[0]}"


def _device(device: str) -> Any:
    from compile import Device

    return Device(device)


def timed(call: Callable[[Any], Any], item: Any) -> float:
    start = time.perf_counter()
    call(item)
    return (time.perf_counter() - start) * 1000


def measure(contestants: list[Contestant], item: Any, rounds: int, block: int) -> dict[str, list[float]]:
    for contestant in contestants:
        for _ in range(3):
            contestant.call(item)
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for r in range(rounds):
        for contestant in contestants if r % 2 == 0 else contestants[::-1]:
            samples = [timed(contestant.call, item) for _ in range(block + DISCARD)]
            times[contestant.name] += samples[DISCARD:]
    return times


def _flat(result: Any) -> np.ndarray:
    if isinstance(result, list | tuple) and result and isinstance(result[0], list | tuple | np.ndarray):
        return np.concatenate([_flat(x) for x in result])
    return np.asarray(result, dtype=np.float64).reshape(-1)


CLASSIFICATION = ("text-classification", "image-classification")


def _ranked(answer: Any) -> list[dict[str, Any]]:
    """One input's `[{"label", "score"}, ...]` (a single dict when the pipeline returned only the top one)."""
    return answer if isinstance(answer, list) else [answer]


def _top(task: str, answer: Any) -> Any:
    if task in CLASSIFICATION:
        return _ranked(answer)[0]["label"]
    if task == "question-answering":
        return answer["start"], answer["end"]
    if task == "fill-mask":
        return answer[0]["token"]
    if task == "visual-question-answering":
        return answer[0]["answer"]
    if task == "table-question-answering":
        answers = answer if isinstance(answer, list) else [answer]
        return [(a["answer"], [tuple(c) for c in a["coordinates"]]) for a in answers]
    return [(e.get("entity"), e["start"], e["end"]) for e in answer]  # token-classification


def _score_diff(ours: Any, theirs: Any) -> float:
    """The largest |score difference| over the labels that both answers rank."""
    mine = {a["label"]: a["score"] for a in _ranked(ours)}
    return max((abs(mine[t["label"]] - t["score"]) for t in _ranked(theirs) if t["label"] in mine), default=math.nan)


def quality(task: str, ours: Any, theirs: Any, batch: int) -> dict[str, float]:
    """How close a candidate's answer is to the PyTorch answer, in the task's own terms: cosine for
    vectors and scores; top-label agreement for labels, spans and tokens, and for classifiers the
    largest |score difference| as well."""
    if task in ("sentence-embeddings", "sentence-similarity", "feature-extraction", "ranking"):
        a, b = _flat(ours), _flat(theirs)
        return {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))}
    mine, reference = (ours, theirs) if batch > 1 else ([ours], [theirs])
    same = [_top(task, a) == _top(task, b) for a, b in zip(mine, reference)]
    figures = {"label_agreement": float(np.mean(same))}
    if task in CLASSIFICATION:
        figures["max_score_diff"] = max(_score_diff(a, b) for a, b in zip(mine, reference))
    return figures


def compare(
    label: str,
    task: str,
    model: Path,
    work: Path,
    *,
    device: str,
    rounds: int,
    block: int,
    shapes: list[Shape],
    log: Callable[[str], None],
) -> list[Row]:
    """A text model's rows: its compiled candidates and the PyTorch baseline on texts of `shapes`."""
    contenders = candidates(task, model, work, device)
    reference = baseline(task, model, device)
    probe = next((c.call for c in contenders if not c.note), None)
    assert isinstance(probe, runtime.TextPipeline)
    payloads = [Payload(shape.name, shape.batch, payload(task, shape, probe)) for shape in shapes]
    return rows_of(label, task, reference, contenders, payloads, rounds=rounds, block=block, log=log)


def rows_of(
    label: str,
    task: str,
    reference: Contestant,
    contenders: list[Contestant],
    payloads: list[Payload],
    *,
    rounds: int,
    block: int,
    log: Callable[[str], None],
) -> list[Row]:
    """One row per payload and contestant: p50, p95, speed-up over `reference` and quality against
    its answer; a refused contender gets a row with its note and no figures."""
    live = [c for c in contenders if not c.note]
    rows = []
    for load in payloads:
        times = measure([reference, *live], load.item, rounds, block)
        base_p50 = statistics.median(times[reference.name])
        theirs = reference.call(load.item)
        row = functools.partial(Row, label, task, load.shape)
        rows.append(row(reference.name, base_p50, _p95(times[reference.name])))
        for contestant in contenders:
            if contestant.note:
                rows.append(row(contestant.name, math.nan, math.nan, math.nan, note=contestant.note))
                continue
            p50 = statistics.median(times[contestant.name])
            quality_of = quality(task, contestant.call(load.item), theirs, load.batch)
            rows.append(row(contestant.name, p50, _p95(times[contestant.name]), base_p50 / p50, quality_of))
        log(
            " | ".join(f"{r.contestant} {r.p50_ms:.2f} ms" for r in rows[-len(contenders) - 1 :])
            + f"  ({label} {task} {load.shape})"
        )
    return rows


def _p95(samples: list[float]) -> float:
    return float(np.percentile(samples, 95))
