"""In-process latency: the PyTorch pipeline against compiled candidates, same model, same payloads.

Every contestant runs in this one process, in alternating blocks after warm-up (A B C, then
C B A, ...), so a noisy machine moves all of them alike. ONNX Runtime's threads spin for a while
after a run and slow whatever runs next, so the first calls of each block are dropped.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
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
    return Contestant("pytorch", lambda x: pipe(x))


def candidates(task: str, model: Path, work: Path, device: str) -> list[Contestant]:
    """Compiled fp32 (plain and graph-optimized), and int8 on CPU or fp16 on CUDA, when they pass."""
    plans: list[tuple[str, Precision, Optimization | None]] = [
        ("fp32", Precision.FP32, Optimization.NONE),
        ("fp32-O2", Precision.FP32, Optimization.O2),
    ]
    plans.append(("fp16", Precision.FP16, Optimization.O4) if device == "cuda" else ("int8", Precision.INT8, None))
    out = []
    for name, precision, optimization in plans:
        options = CompileOptions(task=task, precision=precision, optimize=optimization, device=_device(device))
        try:
            compile_model(model, work / f"{model.name}-{task}-{name}", options, Progress(quiet=True))
        except ValidationFailed as exc:
            out.append(
                Contestant(name, lambda x: None, note="refused by its gate: " + exc.message.splitlines()[-1].strip())
            )
            continue
        pipe = runtime.load(work / f"{model.name}-{task}-{name}", device=device)
        out.append(Contestant(name, pipe))
    return out


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


def _top(task: str, answer: Any) -> Any:
    if task == "text-classification":
        return (answer[0] if isinstance(answer, list) else answer)["label"]
    if task == "question-answering":
        return answer["start"], answer["end"]
    if task == "fill-mask":
        return answer[0]["token"]
    return [(e.get("entity"), e["start"], e["end"]) for e in answer]  # token-classification


def quality(task: str, ours: Any, theirs: Any, batch: int) -> dict[str, float]:
    """How close a candidate's answer is to the PyTorch answer, in the task's own terms."""
    if task in ("sentence-embeddings", "sentence-similarity", "feature-extraction", "ranking"):
        a, b = _flat(ours), _flat(theirs)
        return {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))}
    mine, reference = (ours, theirs) if batch > 1 else ([ours], [theirs])
    same = [_top(task, a) == _top(task, b) for a, b in zip(mine, reference)]
    return {"label_agreement": float(np.mean(same))}


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
    contenders = candidates(task, model, work, device)
    reference = baseline(task, model, device)
    live = [c for c in contenders if not c.note]
    probe = next((c.call for c in live), None)
    rows = []
    for shape in shapes:
        assert isinstance(probe, runtime.TextPipeline)
        item = payload(task, shape, probe)
        times = measure([reference, *live], item, rounds, block)
        base_p50 = statistics.median(times["pytorch"])
        theirs = reference.call(item)
        row = functools.partial(Row, label, task, shape.name)
        rows.append(row("pytorch", base_p50, _p95(times["pytorch"])))
        for contestant in contenders:
            if contestant.note:
                rows.append(row(contestant.name, math.nan, math.nan, math.nan, note=contestant.note))
                continue
            p50 = statistics.median(times[contestant.name])
            quality_of = quality(task, contestant.call(item), theirs, shape.batch)
            rows.append(row(contestant.name, p50, _p95(times[contestant.name]), base_p50 / p50, quality_of))
        log(
            " | ".join(f"{r.contestant} {r.p50_ms:.2f} ms" for r in rows[-len(contenders) - 1 :])
            + f"  ({label} {task} {shape.name})"
        )
    return rows


def _p95(samples: list[float]) -> float:
    return float(np.percentile(samples, 95))
