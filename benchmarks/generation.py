"""Generation speed: tokens per second and time to first token, the compiled model against
PyTorch `generate`, greedy, a fixed number of new tokens (EOS ignored on both sides so both
produce the same count), alternating runs in one process."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import runtime
from runtime.tasks.text_generation import GenerativePipeline, Token

PROMPT = "Once upon a time, in a small village by the sea,"


@dataclasses.dataclass
class GenerationRow:
    model: str
    contestant: str
    new_tokens: int
    tokens_per_s: float
    ttft_ms: float
    speedup: float = 1.0


def _compiled(pipe: GenerativePipeline, new_tokens: int) -> Callable[[], tuple[float, float]]:
    prepared = pipe.prepare(PROMPT, {"max_new_tokens": new_tokens})
    prepared = dataclasses.replace(prepared, sampling=dataclasses.replace(prepared.sampling, eos_token_ids=()))

    def run() -> tuple[float, float]:
        start = time.perf_counter()
        first, count = 0.0, 0
        for event in pipe.events(prepared):
            if isinstance(event, Token):
                count += 1
                first = first or time.perf_counter() - start
        return count / (time.perf_counter() - start), first * 1000

    return run


def _pytorch(model: Any, tokenizer: Any, new_tokens: int) -> Callable[[], tuple[float, float]]:
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt")
    ids = {k: v for k, v in ids.items() if k in ("input_ids", "attention_mask")}
    greedy = {"do_sample": False, "num_beams": 1, "pad_token_id": tokenizer.eos_token_id}

    def run() -> tuple[float, float]:
        with torch.inference_mode():
            start = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, **greedy)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **greedy)
            return new_tokens / (time.perf_counter() - start), first * 1000

    return run


def compare(label: str, artifact: Path, load_torch: Callable[[], tuple[Any, Any]], *, new_tokens: int, rounds: int,
            log: Callable[[str], None]) -> list[GenerationRow]:  # fmt: skip
    pipe = runtime.load(artifact)
    assert isinstance(pipe, GenerativePipeline)
    model, tokenizer = load_torch()
    contestants = {"pytorch": _pytorch(model, tokenizer, new_tokens), "compiled": _compiled(pipe, new_tokens)}
    for run in contestants.values():
        run()  # warm-up
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contestants}
    for r in range(rounds):
        for name in list(contestants) if r % 2 == 0 else list(contestants)[::-1]:
            samples[name].append(contestants[name]())
    rows = []
    for name, runs in samples.items():
        rows.append(GenerationRow(label, name, new_tokens, statistics.median(t for t, _ in runs),
                                  statistics.median(f for _, f in runs)))  # fmt: skip
    base = rows[0].tokens_per_s
    for row in rows:
        row.speedup = row.tokens_per_s / base
    log(
        " | ".join(f"{r.contestant} {r.tokens_per_s:.1f} tok/s, TTFT {r.ttft_ms:.1f} ms" for r in rows) + f"  ({label})"
    )
    return rows
