"""Speech recognition rows: Whisper tiny.en, the transformers pipeline against the compiled model.

The same pipeline call on both sides (a float32 16 kHz waveform, the pipeline's own defaults:
beam search with 5 beams), on a ~10 s recording and on a ~60 s one transcribed in 30 s chunks
(`chunk_length_s=30`). Whisper decodes token by token for seconds, so each contestant is timed
call by call, alternating, after one warm-up call; the row gives the median seconds, the
real-time factor (seconds of compute per second of audio) and the ratio to PyTorch. Quality is
whether the transcripts are the same, and each one's word error rate against the known text.

int8 is compiled as `kiln compile --precision int8` does it (dynamic, per channel, validated by
greedy decoding); when its gate refuses it, the row says why rather than measuring nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASK = "automatic-speech-recognition"
RATE = 16_000
GAP_S = 0.7
CHUNK_S = 30


@dataclass
class SpeechRow:
    model: str
    clip: str
    audio_s: float
    contestant: str
    p50_s: float
    real_time_factor: float
    speedup: float = 1.0
    quality: dict[str, float] = field(default_factory=dict)
    note: str = ""


def recordings(recording: np.ndarray) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The recording (~10 s), and six of it with short silences between (~60 s, in chunks)."""
    gap = np.zeros(int(GAP_S * RATE), dtype=np.float32)
    long = np.concatenate([part for _ in range(6) for part in (recording, gap)])
    return {"10s": (recording, {}), "60s": (long, {"chunk_length_s": CHUNK_S})}


def compare(
    label: str,
    model: Path,
    recording: np.ndarray,
    reference_text: str,
    work: Path,
    *,
    device: str,
    rounds: int,
    log: Callable[[str], None],
    clips: list[str] | None = None,
) -> list[SpeechRow]:
    """The rows of `clips` (default: all of `recordings`), transcribed by both contestants."""
    import time

    import transformers

    import runtime
    from benchmarks.inprocess import refusal
    from compile import CompileOptions, Device, Precision, Progress, ValidationFailed, compile_model
    from tests.support.whisper_tiny import word_error_rate

    transformers.logging.set_verbosity_error()
    theirs = transformers.pipeline(TASK, model=str(model), device=device)  # type: ignore[call-overload]
    contestants: dict[str, Callable[[np.ndarray, dict[str, Any]], Any]] = {
        "pytorch": lambda audio, kw: theirs(audio.copy(), **kw)
    }
    refused: dict[str, str] = {}
    precisions = [Precision.FP32] + ([Precision.INT8] if device == "cpu" else [])
    for precision in precisions:
        options = CompileOptions(task=TASK, precision=precision, device=Device(device))
        try:
            artifact = compile_model(model, work / f"{model.name}-asr-{precision}", options, Progress(quiet=True))
        except ValidationFailed as exc:
            refused[str(precision)] = refusal(str(precision), exc)
            continue
        contestants[str(precision)] = _caller(runtime.load(artifact.directory, device=device))
    rows = []
    for name, (audio, parameters) in recordings(recording).items():
        if clips is not None and name not in clips:
            continue
        answers = {who: call(audio, parameters)["text"] for who, call in contestants.items()}  # also warms up
        times: dict[str, list[float]] = {who: [] for who in contestants}
        for turn in range(rounds):
            for who in contestants if turn % 2 == 0 else list(contestants)[::-1]:
                start = time.perf_counter()
                contestants[who](audio, parameters)
                times[who].append(time.perf_counter() - start)
        seconds = len(audio) / RATE
        expected = " ".join([reference_text] * (1 if name == "10s" else 6))
        base = statistics.median(times["pytorch"])
        for who in contestants:
            p50 = statistics.median(times[who])
            quality = {
                "same_text": float(answers[who] == answers["pytorch"]),
                "wer": word_error_rate(expected, answers[who]),
            }
            rows.append(SpeechRow(label, name, seconds, who, p50, p50 / seconds, base / p50, quality))
        for who, note in refused.items():
            rows.append(SpeechRow(label, name, seconds, who, float("nan"), float("nan"), float("nan"), note=note))
        log(
            f"speech: pytorch {base:.2f} s | fp32 {statistics.median(times['fp32']):.2f} s "
            f"({base / statistics.median(times['fp32']):.2f}x, same text {answers['fp32'] == answers['pytorch']})"
            f"  ({label} {name}, {seconds:.1f} s of audio)"
        )
    return rows


def _caller(pipe: Any) -> Callable[[np.ndarray, dict[str, Any]], Any]:
    """The compiled pipeline's call, bound to this `pipe` (not to the loop's last one)."""
    return lambda audio, kw: pipe(audio, **kw)
