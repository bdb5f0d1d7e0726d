"""Dynamic batching over HTTP: the same artifact served with `KILN_BATCHING` on and off, loaded by
the suite's clients at several concurrencies, with short and long sentences.

Each setting is its own `kiln serve` process (it is read at start); both run side by side (an
idle server costs nothing) and each row is measured on one, then the other. With one client, where
the goal is a fraction of a millisecond, the row's seconds are cut into four slices taken in turn
(`server.alternate`), so that a busy machine's drift falls on both alike; with more, one run each
(a slice's end waits for the requests in flight, which would weigh on throughput). The server's
own `/metrics` say how many inputs a model call took on average during the batched row (the
difference of `kiln_model_batch_items` between before and after it).

int8 artifacts batch like fp32 ones: their activations are scaled per row (`compile.quantize`), so a
batch never moves an answer. (An int8 artifact compiled before that runs one input at a time inside
the model call; the bench compiles its own.)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import server

# the sentences' lengths in tokens, specials included
SENTENCES = {"short": 16, "long": 128}
WARMUP_REQUESTS = 20
SLICES_AT_ONE_CLIENT = 4


@dataclass
class Artifact:
    label: str  # "fp32", "default"
    precision: str  # from its manifest
    directory: Path


@dataclass
class BatchRow:
    artifact: str
    precision: str
    batching: bool
    sentence: str
    tokens: int
    concurrency: int
    requests: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    items_per_call: float  # mean inputs per model call during the run; nan with batching off
    statuses: dict[str, int] = field(default_factory=dict)


def compare(
    artifact: Artifact,
    cache: Path,
    texts: dict[str, str],
    levels: list[int],
    seconds: float,
    log: Callable[[str], None],
) -> list[BatchRow]:
    """Every sentence length at every level, batching on and off: one server per setting."""
    rows = []
    settings = (True, False)
    started: list[server.Process] = []
    try:
        for batching in settings:
            started.append(server.kiln(artifact.directory, cache, env={"KILN_BATCHING": "1" if batching else "0"}))
        for sentence, text in texts.items():
            body = {"inputs": text}
            for process in started:
                server.http_latency(process, body, WARMUP_REQUESTS)
            for concurrency in levels:
                before = [server.metrics(process) for process in started]
                slices = SLICES_AT_ONE_CLIENT if concurrency == 1 else 1
                levels_run = server.alternate(started, body, concurrency, seconds, slices)
                after = [server.metrics(process) for process in started]
                for batching, level, old, new in zip(settings, levels_run, before, after):
                    items = server.mean_per_call(old, new, "kiln_model_batch_items") if batching else math.nan
                    row = BatchRow(
                        artifact.label,
                        artifact.precision,
                        batching,
                        sentence,
                        SENTENCES[sentence],
                        concurrency,
                        level.requests,
                        level.throughput_rps,
                        level.p50_ms,
                        level.p95_ms,
                        items,
                        level.statuses,
                    )
                    rows.append(row)
                    log(f"server: batching {describe(row)}")
    finally:
        for process in started:
            process.stop()
    return rows


CEILING_BATCHES = (1, 16, 64)


def model_ceiling(
    directory: Path, texts: dict[str, str], rounds: int = 3, block: int = 10
) -> dict[str, dict[str, float]]:
    """Inputs per second of the model call alone, in this process, with `batch` copies of each
    sentence per call: what batching can gain before any HTTP work shares the cores. Each size runs
    in blocks of `block` calls, sizes in turn for `rounds` rounds (a call right after a bigger one
    pays for the caches that one left); the median call. Keyed by sentence and batch size (a
    string, as in the results' JSON)."""
    import runtime

    pipe = runtime.load(directory)
    ceiling: dict[str, dict[str, float]] = {}
    for sentence, text in texts.items():
        batches = {size: [text] * size for size in CEILING_BATCHES}
        seconds: dict[int, list[float]] = {size: [] for size in batches}
        for _ in range(rounds):
            for size, batch in batches.items():
                pipe(batch)
                for _ in range(block):
                    start = time.perf_counter()
                    pipe(batch)
                    seconds[size].append(time.perf_counter() - start)
        ceiling[sentence] = {str(size): size / statistics.median(times) for size, times in seconds.items()}
    return ceiling


def artifact_name(artifact: str, precision: str) -> str:
    """An artifact's label, with its precision when the label does not say it: fp32, default (int8)."""
    return artifact if artifact == precision else f"{artifact} ({precision})"


def describe(row: BatchRow) -> str:
    setting = "on " if row.batching else "off"
    items = "" if math.isnan(row.items_per_call) else f", {row.items_per_call:.1f} items/call"
    return (
        f"{setting} {artifact_name(row.artifact, row.precision)} {row.sentence} x{row.concurrency}: "
        f"{row.throughput_rps:.0f} req/s, p50 {row.p50_ms:.2f} ms, p95 {row.p95_ms:.2f} ms{items}, {row.statuses}"
    )


def pair(
    rows: list[dict[str, Any]], artifact: str, sentence: str, concurrency: int
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The batching-on and batching-off rows of one cell of the table, when both ran."""
    cell = [r for r in rows if (r["artifact"], r["sentence"], r["concurrency"]) == (artifact, sentence, concurrency)]
    on = next((r for r in cell if r["batching"]), None)
    off = next((r for r in cell if not r["batching"]), None)
    return (on, off) if on is not None and off is not None else None
