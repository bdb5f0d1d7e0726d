"""Whisper's segment timestamps (`return_timestamps=True`) in numpy, as transformers 4.57 makes them.

Three steps, each the port of one piece of transformers:
- `timestamp_rules` (`TimestampRules` for one prompt) is `WhisperTimeStampLogitsProcessor.__call__`
  for one sequence: which tokens may follow the ones generated so far, so that timestamps come in
  pairs, never go back, open the transcript (at most `max_initial_timestamp_index` steps in), and
  win a step whenever their probability together beats every text token's. `generate` applies it
  after the suppressed tokens, to raw logits in greedy search and to log-probabilities in beam search.
- `retrieve_segments` is `WhisperGenerationMixin._retrieve_segment`: one window's tokens (after the
  prompt, without the end token, which `generate_with_fallback` strips before) cut into segments,
  and how far `seek` moves on; `seek_segments` is `generate`'s loop over 30 s windows of one input
  (greedy or beam search through `decode`), the prompt fixed before the loop, no temperature
  fallback, no previous-text conditioning, no no-speech detection (all off unless configured).
  `segment_tokens` is what `generate` returns (`_pad_to_max_length` at the end: every segment's
  tokens in order, both timestamps of a double ending kept, timestamps still relative to their
  window).
- `decode_asr` is the tokenizer's `_decode_asr` with `return_timestamps=True` (no words, no
  language): each chunk's tokens with its stride in seconds -> `{"text", "chunks": [{"timestamp":
  (start, end), "text"}]}` as the ASR pipeline answers, times rounded to 0.01 s, a segment left open
  at the end as `(start, None)`.

`merge_overlapping` joins overlapping chunks' tokens, for transcripts with and without timestamps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.text import TextTokenizer

TIME_PRECISION = 0.02  # seconds a timestamp step stands for: 30 s / `max_source_positions` 1500
FEATURE_PRECISION = 0.01  # seconds a log-mel frame stands for (hop 160 at 16 kHz)
INPUT_STRIDE = 2  # log-mel frames per encoder position (Whisper's two convolutions' strides)
WINDOW_FRAMES = 3000  # log-mel frames of one 30 s window: what the encoder takes


def _logsumexp(values: np.ndarray) -> np.float32:
    top = values.max()
    if top == -np.inf:
        return np.float32(-np.inf)
    return np.float32(top + np.log(np.sum(np.exp(values - top))))


def timestamp_rules(
    scores: np.ndarray,
    generated: Sequence[int] | np.ndarray,
    no_timestamps: int,
    eos: int,
    max_initial_timestamp_index: int | None,
) -> np.ndarray:
    """The scores of one step after Whisper's timestamp rules, given the tokens generated so far
    after the prompt; the first timestamp token is `no_timestamps + 1`. The cases, in order:
    - `<|notimestamps|>` never.
    - After a timestamp that follows another (or opens the transcript): text only; after a
      timestamp that follows text: a timestamp or `eos` (and the special ids after it), not text.
    - A timestamp never earlier than the last one; equal only as the second of a pair.
    - The first step: timestamps only, the latest `max_initial_timestamp_index` steps in.
    - When the timestamps' probability together exceeds the best text token's (a log-softmax of
      these scores, in float32), timestamps only."""
    begin = no_timestamps + 1
    out = np.array(scores, dtype=np.float32)
    out[no_timestamps] = -np.inf
    seq = [int(t) for t in generated]
    last_was_timestamp = len(seq) >= 1 and seq[-1] >= begin
    penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= begin
    if last_was_timestamp:
        if penultimate_was_timestamp:
            out[begin:] = -np.inf
        else:
            out[:eos] = -np.inf
    stamps = [t for t in seq if t >= begin]
    if stamps:
        last = stamps[-1] if last_was_timestamp and not penultimate_was_timestamp else stamps[-1] + 1
        out[begin:last] = -np.inf
    if not seq:
        out[:begin] = -np.inf
        if max_initial_timestamp_index is not None:
            out[begin + max_initial_timestamp_index + 1 :] = -np.inf
    shifted = out - out.max()
    logprobs = shifted - np.log(np.sum(np.exp(shifted)))
    if _logsumexp(logprobs[begin:]) > logprobs[:begin].max():
        out[:begin] = -np.inf
    return out


@dataclass(frozen=True)
class TimestampRules:
    """`timestamp_rules` for the sequences of one prompt: called with a whole decoder sequence
    (prompt included, as `runtime.generation.process` sees it), it reads what follows the prompt's
    `begin_index` tokens, as the processor's `set_begin_index` does."""

    no_timestamps: int
    eos: int
    begin_index: int
    max_initial_timestamp_index: int | None = None

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    def __call__(self, scores: np.ndarray, sequence: Sequence[int] | np.ndarray) -> np.ndarray:
        return timestamp_rules(
            scores, sequence[self.begin_index :], self.no_timestamps, self.eos, self.max_initial_timestamp_index
        )


@dataclass(frozen=True)
class Segment:
    """One stretch of a window's tokens (its timestamps included) and its times in seconds from
    the start of the input (`_retrieve_segment`'s `tokens`, `start`, `end`)."""

    tokens: tuple[int, ...]
    start: float
    end: float


def retrieve_segments(tokens: Sequence[int], seek: int, frames: int, timestamp_begin: int) -> tuple[list[Segment], int]:
    """One window's segments and the log-mel frames `seek` moves on (`_retrieve_segment`); the window
    starts `seek` frames into the input and holds `frames` of it (at most 3000). The cases:
    - Pairs of timestamps inside: a segment up to each pair's first timestamp. Ending on a single
      timestamp after text, the last segment runs to the end and the window is done (`frames`);
      otherwise what follows the last pair is dropped (the last segment keeps both its timestamps)
      and `seek` moves to the last pair's time, to decode the unfinished speech again.
    - No pair: one segment of everything, ending at the last timestamp if there is one other than
      `<|0.00|>`, else at the window's end (`frames` x 0.01 / 0.02 steps in float32, truncated, as
      torch computes it); the window is done."""
    seq = [int(t) for t in tokens]
    is_timestamp = [t >= timestamp_begin for t in seq]
    offset = seek * TIME_PRECISION / INPUT_STRIDE
    single_ending = is_timestamp[-2:] == [False, True]
    pairs = [i + 1 for i in range(len(seq) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    if not pairs:
        stamps = [t for t in seq if t >= timestamp_begin]
        ending = float(np.float32(frames) * np.float32(FEATURE_PRECISION) / np.float32(TIME_PRECISION))
        last: float = int(ending)
        if stamps and stamps[-1] != timestamp_begin:
            last = float(stamps[-1] - timestamp_begin)
        return [Segment(tuple(seq), offset, offset + last * TIME_PRECISION)], frames
    slices = [*pairs, len(seq)] if single_ending else [*pairs[:-1], pairs[-1] + 1]
    segments, start = [], 0
    for i, stop in enumerate(slices):
        piece = seq[start:stop]
        end = piece[-1 if i < len(slices) - 1 or single_ending else -2]
        segments.append(
            Segment(
                tuple(piece),
                offset + float(piece[0] - timestamp_begin) * TIME_PRECISION,
                offset + float(end - timestamp_begin) * TIME_PRECISION,
            )
        )
        start = stop
    if single_ending:
        return segments, frames
    return segments, (seq[start - 2] - timestamp_begin) * INPUT_STRIDE


def seek_segments(
    features: np.ndarray, decode: Callable[[np.ndarray], Sequence[int]], timestamp_begin: int
) -> list[Segment]:
    """`generate`'s loop over one input's log-mel features `(1, mels, frames)`: from `seek` 0, the
    next 3000 frames (zero-padded past the input's end, as `_get_input_segment` pads) go through
    `decode` (the window's tokens after the prompt, without the end token), and `seek` moves on
    as `retrieve_segments` says until it passes the last frame. A clip of at most 30 s is one
    3000-frame input whose window may still be decoded more than once."""
    total = features.shape[-1]
    segments: list[Segment] = []
    seek = 0
    while seek < total:
        frames = min(total - seek, WINDOW_FRAMES)
        window = features[..., seek : seek + frames]
        if frames < WINDOW_FRAMES:
            window = np.pad(window, [(0, 0)] * (window.ndim - 1) + [(0, WINDOW_FRAMES - frames)])
        found, moved = retrieve_segments(decode(window), seek, frames, timestamp_begin)
        segments += found
        seek += moved
    return segments


def segment_tokens(segments: Sequence[Segment]) -> list[int]:
    """The tokens `generate` returns for one input: its segments' tokens one after the other."""
    return [token for segment in segments for token in segment.tokens]


def decode_asr(
    pieces: Sequence[tuple[Sequence[int], tuple[float, float, float] | None]],
    tokenizer: TextTokenizer,
    special: set[int],
    timestamp_begin: int,
    time_precision: float = TIME_PRECISION,
    segment_size: int = 1500,
) -> dict[str, Any]:
    """The pipeline's answer from each chunk's tokens and its stride `(length, left, right)` in
    seconds (None when the input was not chunked): `_decode_asr` with `return_timestamps=True`.

    Special tokens are skipped. A timestamp opens a chunk of text, the next one closes it (one
    equal to the opening one is ignored). Times count from the input's start: each chunk's left
    stride moves its clock back and its length less its right stride forward; within one chunk's
    tokens, a timestamp lower than the one before starts another 30 s window (`generate`'s seek
    loop), 30 s later after a single ending, at the last pair's time after a double one.
    Timestamps inside a chunk's right stride are skipped with the one after them, and those
    before its left stride once text is pending, so that overlapping chunks' text is merged
    (`merge_overlapping`) into one segment rather than cut at a stride."""
    chunks: list[dict[str, Any]] = []
    bounds: list[float | None] = [None, None]
    time_offset = 0.0
    previous: list[list[int]] = []
    skip = False
    for tokens, stride in pieces:
        ids = [int(t) for t in tokens]
        last_timestamp: int | None = None
        first_timestamp: float = timestamp_begin
        cur_max_timestamp = penultimate_timestamp = prev_segments_len = 0.0
        if stride is not None:
            chunk_len, stride_left, stride_right = stride
            time_offset -= stride_left
            right_stride_start = chunk_len - stride_right
            if stride_left:
                first_timestamp = stride_left / time_precision + timestamp_begin
            if stride_right:
                for token in reversed(ids):
                    if token >= timestamp_begin:
                        if (
                            last_timestamp is not None
                            and (token - timestamp_begin) * time_precision < right_stride_start
                        ):
                            break
                        last_timestamp = token
        current: list[int] = []
        for i, token in enumerate(ids):
            if token in special:
                continue
            if token < timestamp_begin:
                current.append(token)
                continue
            timestamp = float((token - timestamp_begin) * time_precision)
            if timestamp < cur_max_timestamp:
                single_ending = i >= 2 and not (ids[i - 1] >= timestamp_begin and ids[i - 2] >= timestamp_begin)
                if single_ending:
                    prev_segments_len += time_precision * segment_size
                else:
                    cur_max_timestamp = penultimate_timestamp
                    prev_segments_len += penultimate_timestamp
            penultimate_timestamp, cur_max_timestamp = cur_max_timestamp, timestamp
            time = round((token - timestamp_begin) * time_precision + time_offset + prev_segments_len, 2)
            if last_timestamp is not None and token >= last_timestamp:
                skip = True
            elif skip or (previous and token < first_timestamp):
                skip = False
            elif bounds[0] is None:
                bounds[0] = time
            elif time != bounds[0]:
                bounds[1] = time
                previous.append(current)
                chunks.append({"timestamp": tuple(bounds), "text": _text(previous, tokenizer)})
                previous, current, bounds = [], [], [None, None]
        if stride is not None:
            time_offset += chunk_len - stride_right
        if current:
            previous.append(current)
        elif not any(previous):
            previous, bounds = [], [None, None]
    if previous:
        chunks.append({"timestamp": tuple(bounds), "text": _text(previous, tokenizer)})
    return {"text": "".join(chunk["text"] for chunk in chunks), "chunks": chunks}


def _text(pieces: list[list[int]], tokenizer: TextTokenizer) -> str:
    return tokenizer.decode(merge_overlapping(pieces), skip_special_tokens=False)


def merge_overlapping(pieces: list[list[int]]) -> list[int]:
    """Overlapping chunks' tokens as one sequence: transformers' `_find_longest_common_sequence`.
    For each next chunk, the alignment of the left's end with the right's start that matches the
    most tokens (more than one, ties to the longer overlap) is cut in its middle; chunks with no
    tokens never reach here (`_decode_asr` leaves them out)."""
    if not pieces:
        return []
    left, total = pieces[0], []
    for right in pieces[1:]:
        best, cut = 0.0, (len(left), len(left), 0, 0)
        for i in range(1, len(left) + len(right)):
            left_start, left_stop = max(0, len(left) - i), min(len(left), len(left) + len(right) - i)
            right_start, right_stop = max(0, i - len(left)), min(len(right), i)
            matches = int(np.sum(np.array(left[left_start:left_stop]) == np.array(right[right_start:right_stop])))
            score = matches / i + i / 10000.0
            if matches > 1 and score > best:
                best, cut = score, (left_start, left_stop, right_start, right_stop)
        left_start, left_stop, right_start, right_stop = cut
        total.extend(left[: (left_start + left_stop) // 2])
        left = right[(right_start + right_stop) // 2 :]
    return total + left
