"""Whisper's segment timestamps (`runtime.audio.whisper_timestamps`) against transformers 4.57.

Each piece is compared with the transformers code it ports, on the same inputs, for identical
outputs: the timestamp rules with `WhisperTimeStampLogitsProcessor` on random scores and token
histories; the segments a window's tokens make with `_retrieve_segment`, and their concatenation
with `_pad_to_max_length`; the pipeline's answer with the tokenizer's `_decode_asr`, chunked and
not. End to end, on the tiny random Whisper compiled by kiln: the greedy tokens of the seek loop with
the rules against `model.generate(return_timestamps=True)`, and the answer against the pipeline's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.audio.whisper_timestamps import (
    Segment,
    TimestampRules,
    decode_asr,
    retrieve_segments,
    seek_segments,
    segment_tokens,
    timestamp_rules,
)
from runtime.text import TextTokenizer
from tests.conftest import Lazy
from tests.support.audio import sample_audio

RATE = 16_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, TextTokenizer]:
    """The tiny Whisper tokenizer the audio tests build: transformers' fast one and kiln's."""
    from compile.exporters import tokenizer_info
    from tests.support.audio import _whisper_tokenizer

    theirs = _whisper_tokenizer()
    directory = tmp_path_factory.mktemp("whisper-tokenizer")
    theirs.save_pretrained(directory)
    return theirs, TextTokenizer(directory / "tokenizer.json", tokenizer_info(theirs, None))


# ---------------------------------------------------------------------------------------------
# The rules


def histories(rng: np.random.Generator, eos: int, begin: int, vocab: int) -> Iterator[list[int]]:
    """Token histories after the prompt: empty, and random ones of every ending (text, a single
    timestamp, a pair), their timestamps rising or not, some with eos or special ids inside."""
    yield []
    for _ in range(400):
        history: list[int] = []
        for _ in range(int(rng.integers(1, 9))):
            kind = rng.random()
            if kind < 0.45:
                history.append(int(rng.integers(0, eos)))
            elif kind < 0.9:
                history.append(int(rng.integers(begin, vocab)))
            else:
                history.append(int(rng.integers(eos, begin)))
        yield history


def test_rules_equal_the_timestamp_processor() -> None:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

    eos, no_timestamps, vocab = 300, 310, 460
    begin = no_timestamps + 1
    rng = np.random.default_rng(0)
    branches = {"timestamps win": 0, "text wins": 0}
    for max_initial in (None, 0, 3, 50):
        settings = {"eos_token_id": eos, "no_timestamps_token_id": no_timestamps}
        if max_initial is not None:
            settings["max_initial_timestamp_index"] = max_initial
        config = GenerationConfig(**settings)
        for prompt in (1, 3, 4):
            processor = WhisperTimeStampLogitsProcessor(config, begin_index=prompt)
            for history in histories(rng, eos, begin, vocab):
                sequence = [50] * prompt + history
                scores = rng.normal(0, 4, vocab).astype(np.float32)
                scores[begin:] += rng.choice([-8.0, 0.0, 3.0])  # timestamps that lose, tie, win together
                if rng.random() < 0.5:  # beam search's scores: log-probabilities
                    scores = scores - np.log(np.exp(scores.astype(np.float64)).sum()).astype(np.float32)
                want = processor(torch.tensor([sequence]), torch.from_numpy(scores[None].copy()))[0].numpy()
                got = TimestampRules(no_timestamps, eos, prompt, max_initial)(scores, np.array(sequence))
                assert np.array_equal(got, want), (max_initial, prompt, history)
                assert np.array_equal(got, timestamp_rules(scores, history, no_timestamps, eos, max_initial))
                branches["timestamps win" if np.all(got[:begin] == -np.inf) else "text wins"] += 1
    assert min(branches.values()) > 300, branches


# ---------------------------------------------------------------------------------------------
# Segments and what `generate` returns

B = 600  # the first timestamp token of these synthetic windows


def retrieve_with_transformers(tokens: list[int], seek: int, frames: int) -> tuple[list[Segment], int]:
    import torch
    from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

    segments, offset = WhisperGenerationMixin._retrieve_segment(
        seek_sequence=torch.tensor(tokens, dtype=torch.long),
        seek_outputs=[None],
        time_offset=torch.tensor([seek], dtype=torch.float64) * 0.02 / 2,
        timestamp_begin=B,
        seek_num_frames=torch.tensor([frames], dtype=torch.long),
        time_precision=0.02,
        time_precision_features=0.01,
        input_stride=2,
        prev_idx=0,
        idx=0,
        return_token_timestamps=False,
        decoder_input_ids=torch.zeros((1, 3), dtype=torch.long),
    )
    return [Segment(tuple(int(t) for t in s["tokens"]), float(s["start"]), float(s["end"])) for s in segments], int(
        offset
    )


WINDOWS = {
    "single ending": [B, 5, 6, B + 40, B + 40, 7, B + 90],
    "double ending": [B + 3, 5, 6, B + 40, B + 40, 7, B + 90, B + 90],
    "unfinished after pairs": [B, 5, B + 20, B + 20, 6, 7, B + 60, B + 60, 8, 9],
    "one pair only": [B + 10, 5, B + 30, B + 30],
    "no pair, a last timestamp": [B + 2, 5, 6, B + 77],
    "no pair, only <|0.00|>": [B, 5, 6, 7],
    "no timestamps": [5, 6, 7],
    "a lone timestamp": [B + 12],
    "nothing": [],
    "text first": [5, B + 4, B + 4, 6, B + 9],
    "three in a row": [B, 5, B + 8, B + 8, B + 8, 6, B + 11],
}


@pytest.mark.parametrize("name", list(WINDOWS))
def test_segments_equal_retrieve_segment(name: str) -> None:
    tokens = WINDOWS[name]
    for seek, frames in ((0, 3000), (1234, 3000), (57_000, 1766), (3000, 113)):
        assert retrieve_segments(tokens, seek, frames, B) == retrieve_with_transformers(tokens, seek, frames)


def test_window_end_of_a_segment_without_pairs_for_every_frame_count() -> None:
    """The end without timestamps is `frames * 0.01 / 0.02` in float32, truncated: one step
    short of `frames / 2` for some even counts; each count checked against torch."""
    got = [retrieve_segments([5], 0, frames, B)[0][0].end for frames in range(1, 3001)]
    want = [retrieve_with_transformers([5], 0, frames)[0][0].end for frames in range(1, 3001)]
    assert got == want


def test_seek_loop_and_concatenation_equal_transformers() -> None:
    """The loop over windows with scripted windows' tokens: the windows it cuts (zero-padded past
    the end), the segments, and the sequence `_pad_to_max_length` makes of them."""
    import torch
    from transformers.models.whisper.generation_whisper import _pad_to_max_length

    features = np.random.default_rng(1).normal(size=(1, 4, 7000)).astype(np.float32)
    script = iter(
        [
            [B, 5, 6, B + 40, B + 40, 7, B + 90, B + 90, 8],  # seek to 1.80 s: frame 180
            [B + 2, 9, B + 1400],  # a single ending: the whole window, to frame 3180
            [B, 10, B + 30, B + 30, 11],  # to frame 3240
            [12, 13],  # no timestamps: the rest, 3000 frames then 760
            [B + 5, 14, B + 60],
        ]
    )
    starts = []

    def decode(window: np.ndarray) -> list[int]:
        assert window.shape == (1, 4, 3000)
        starts.append(window)
        return next(script)

    segments = seek_segments(features, decode, B)
    seeks = [0, 180, 3180, 3240, 6240]
    for window, seek in zip(starts, seeks, strict=True):
        frames = min(3000, 7000 - seek)
        assert np.array_equal(window[..., :frames], features[..., seek : seek + frames])
        assert not window[..., frames:].any()
    assert [(s.start, s.end) for s in segments][-1] == (62.4, 62.4 + 60 * 0.02)
    want = _pad_to_max_length(
        [[{"tokens": torch.tensor(s.tokens, dtype=torch.long)} for s in segments]], pad_token_id=0, device="cpu"
    )
    assert segment_tokens(segments) == want[0].tolist()


# ---------------------------------------------------------------------------------------------
# The pipeline's answer


def random_window(rng: np.random.Generator, begin: int, text: Sequence[int], specials: Sequence[int]) -> list[int]:
    """Tokens one window's decoding may give under the rules (pairs, single endings, rising
    times, a segment left open) or, one time in four, any mix of text, special and timestamp ids."""
    if rng.random() < 0.25:
        pool = [*text, *specials, *range(begin, begin + 1501)]
        return [int(t) for t in rng.choice(pool, int(rng.integers(0, 12)))]
    tokens: list[int] = []
    time = int(rng.integers(0, 50))
    for _ in range(int(rng.integers(0, 5))):
        tokens.append(begin + time)
        tokens += [int(t) for t in rng.choice(text, int(rng.integers(0, 5)))]
        if rng.random() < 0.1:
            tokens.append(int(rng.choice(specials)))
        time += int(rng.integers(0, 200))
        if time > 1500 or rng.random() < 0.15:
            break
        tokens += [begin + time] * (1 if rng.random() < 0.2 else 2)
    return tokens


def decode_asr_with_transformers(
    tokenizer: Any, pieces: list[tuple[list[int], tuple[float, float, float] | None]]
) -> dict[str, Any]:
    import torch

    outputs = [
        {"tokens": torch.tensor([tokens], dtype=torch.long), **({} if stride is None else {"stride": stride})}
        for tokens, stride in pieces
    ]
    text, optional = tokenizer._decode_asr(outputs, return_timestamps=True, return_language=None, time_precision=0.02)
    return {"text": text, **optional}


def test_answers_equal_decode_asr(tokenizers: tuple[Any, TextTokenizer]) -> None:
    """Random windows, one input alone or chunked with the pipeline's strides (in seconds),
    several windows joined within a chunk as `generate`'s seek loop joins them."""
    import transformers

    transformers.logging.set_verbosity_error()  # "Whisper did not predict an ending timestamp"
    theirs, ours = tokenizers
    begin = theirs.convert_tokens_to_ids("<|notimestamps|>") + 1
    special = set(theirs.all_special_ids)
    text = [i for i in range(begin) if i not in special]
    rng = np.random.default_rng(2)
    strides = [
        [(30.0, 0.0, 5.0), (30.0, 5.0, 5.0), (12.5, 5.0, 0.0)],
        [(10.0, 0.0, 1.5), (10.0, 1.5, 1.5), (10.0, 1.5, 1.5), (4.0, 1.5, 0.0)],
        [(30.0, 0.0, 0.0), (30.0, 0.0, 0.0)],
        [(8.0, 0.0, 2.0), (3.5, 2.0, 0.0)],
    ]
    counted = {"open": 0, "closed": 0, "several": 0}
    for case in range(300):
        if case % 3 == 0:
            plan: list[tuple[float, float, float] | None] = [None]
        else:
            plan = list(strides[int(rng.integers(len(strides)))])
        pieces = []
        for stride in plan:
            windows = [random_window(rng, begin, text, sorted(special)) for _ in range(int(rng.integers(1, 4)))]
            pieces.append(([t for w in windows for t in w], stride))
        want = decode_asr_with_transformers(theirs, pieces)
        assert decode_asr(pieces, ours, special, begin) == want, pieces
        ends = [chunk["timestamp"][1] for chunk in want["chunks"]]
        counted["open"] += None in ends
        counted["closed"] += any(end is not None for end in ends)
        counted["several"] += len(ends) > 2
    assert min(counted.values()) > 20, counted


# ---------------------------------------------------------------------------------------------
# End to end on the tiny random Whisper


TIMESTAMP_BIAS = 7.0
"""The logit every timestamp token gets in the biased copy of the tiny Whisper (`biased_whisper`):
the tiny model itself keeps its timestamps near 0 and never picks one after the forced first.
With 7, a clip decodes into pairs, single endings and unfinished windows over one to three
30 s windows, in about a second with PyTorch."""


@pytest.fixture(scope="module")
def biased_whisper(
    tiny_models: Lazy[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny multilingual Whisper with `TIMESTAMP_BIAS` on its timestamp tokens (the last
    column of the tied embedding, which `_tame_whisper` turns into a per-token bias), as a
    transformers directory and compiled by kiln."""
    import shutil

    import torch
    from transformers import WhisperForConditionalGeneration

    from compile import CompileOptions, Precision, Progress, compile_model

    source = tiny_models["automatic-speech-recognition", "whisper"]
    root = tmp_path_factory.mktemp("biased-whisper")
    model_dir = root / "model"
    shutil.copytree(source, model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    begin = model.generation_config.no_timestamps_token_id + 1
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[begin:, -1] = TIMESTAMP_BIAS
    model.save_pretrained(model_dir)
    options = CompileOptions(precision=Precision.FP32)
    return model_dir, compile_model(model_dir, root / "artifact", options, Progress(quiet=True)).directory


def kiln_segments(pipe: Any, features: np.ndarray, language: str | None) -> tuple[list[Segment], int]:
    """One input's segments as the pipeline makes them, greedy, and the number of windows decoded:
    its window decoder (the prompt fixed on the first window) through the seek loop."""
    from runtime.audio.whisper import Decoding

    max_new = pipe.generation.max_length
    decoding = Decoding(language=language, task=None, num_beams=1, max_new_tokens=max_new, timestamps=True)
    decode = pipe._window_decoder(decoding, None)
    windows: list[np.ndarray] = []

    def counted(window: np.ndarray) -> list[int]:
        windows.append(window)
        return decode(window)

    return seek_segments(features, counted, pipe.generation.timestamp_begin), len(windows)


def test_tokens_equal_generate_with_timestamps(biased_whisper: tuple[Path, Path]) -> None:
    """Greedy, the language detected or given: the same tokens as `generate`, segment by
    segment, over clips whose windows end every way (checked, so that the case is exercised)."""
    import torch
    import transformers

    import runtime

    transformers.logging.set_verbosity_error()
    model_dir, artifact = biased_whisper
    pipe = runtime.load(artifact)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    begin = pipe.generation.timestamp_begin
    seen = {"several windows": 0, "double ending": 0, "single ending": 0}
    for seconds, seed, language in ((1.0, 1, None), (3.3, 3, None), (12.0, 5, "fr"), (20.0, 6, None), (2.0, 4, "de")):
        features = pipe.features([sample_audio(seconds, seed=seed)])["input_features"]
        want = model.generate(
            torch.from_numpy(features), return_timestamps=True, language=language, num_beams=1, return_segments=True
        )
        segments, windows = kiln_segments(pipe, features, language)
        assert segment_tokens(segments) == want["sequences"][0].tolist()
        assert segments == [
            Segment(tuple(s["tokens"].tolist()), float(s["start"]), float(s["end"])) for s in want["segments"][0]
        ]
        seen["several windows"] += windows > 1
        seen["double ending"] += any(s.tokens[-2:] >= (begin, begin) and len(s.tokens) > 2 for s in segments)
        seen["single ending"] += any(len(s.tokens) > 1 and s.tokens[-2] < begin <= s.tokens[-1] for s in segments)
    assert min(seen.values()) >= 2, seen


@pytest.mark.parametrize(
    ("seconds", "chunk_length_s", "beams"),
    [(1.0, None, 1), (3.3, None, 1), (40.0, 10.0, 1), (50.0, 30.0, 1), (3.3, None, 5)],
)
def test_answers_equal_the_pipeline_with_timestamps(
    seconds: float, chunk_length_s: float | None, beams: int, biased_whisper: tuple[Path, Path]
) -> None:
    import transformers

    import runtime

    transformers.logging.set_verbosity_error()
    model_dir, artifact = biased_whisper
    pipe = runtime.load(artifact)
    theirs = transformers.pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
    audio = sample_audio(seconds, seed=int(seconds))
    parameters: dict[str, Any] = {"return_timestamps": True, "generate_kwargs": {"num_beams": beams}}
    if chunk_length_s:
        parameters["chunk_length_s"] = chunk_length_s
    want = theirs(audio.copy(), **parameters)
    assert pipe(audio, **parameters) == want
    assert len(want["chunks"]) > 1
