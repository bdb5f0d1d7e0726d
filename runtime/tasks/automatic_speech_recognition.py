"""automatic-speech-recognition: sound -> `{"text"}` (+ `chunks` with timestamps when asked).

Two kinds of model, told apart by the artifact: CTC models (wav2vec2, HuBERT: one graph, greedy
CTC decoding of its frames) and Whisper (an encoder and a decoder with its key/value cache,
decoded token by token by `runtime.audio.whisper`). Long audio is cut as transformers' pipeline
cuts it (`chunk_length_s`, `stride_length_s`): CTC chunks overlap by the strides, and the frames
of each stride are dropped before the chunks' frames are joined; Whisper's chunks are decoded one
by one and their tokens joined where they overlap. Whisper's `return_timestamps=True` answers
segment timestamps as the pipeline does (`runtime.audio.whisper_timestamps`); "word" is not served.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np

from runtime.artifact import Manifest
from runtime.audio.ctc import CtcVocabulary, Offset
from runtime.audio.whisper import Decoding, WhisperGeneration, generate
from runtime.audio.whisper_timestamps import decode_asr, seek_segments, segment_tokens
from runtime.errors import ArtifactError, InvalidParameter, Unprocessable
from runtime.generation import Generator
from runtime.session import OnnxModel
from runtime.tasks import register
from runtime.tasks.audio import AudioPipeline
from runtime.tasks.base import Pipeline, parse_parameters
from runtime.text import TextTokenizer


class SpeechRecognitionParameters(msgspec.Struct, forbid_unknown_fields=True):
    return_timestamps: bool | Literal["char", "word"] | None = None
    chunk_length_s: float | None = None
    stride_length_s: float | list[float] | None = None
    generate_kwargs: dict[str, Any] | None = None
    generation_parameters: dict[str, Any] | None = None
    max_new_tokens: int | None = None


def chunks(length: int, chunk: int, left: int, right: int) -> list[tuple[int, int, int, int]]:
    """transformers' `chunk_iter` as index ranges: `(start, end, stride_left, stride_right)` in
    samples, each chunk `chunk` long, stepping by `chunk - left - right`; the first has no left
    stride, the last no right one; a last chunk no longer than its left stride is dropped."""
    step = chunk - left - right
    ranges = []
    for start in range(0, length, step):
        end = min(start + chunk, length)
        is_last = start + chunk >= length
        stride_left, stride_right = (0 if start == 0 else left), (0 if is_last else right)
        if end - start > stride_left:
            ranges.append((start, end, stride_left, stride_right))
        if is_last:
            break
    return ranges


def rescale_stride(samples: int, left: int, right: int, ratio: float) -> tuple[int, int, int]:
    """A chunk's length and strides in samples -> in logit frames (transformers' `rescale_stride`)."""
    frames = round(samples * ratio)
    return frames, round(left / samples * frames), round(right / samples * frames)


@register("automatic-speech-recognition")
class AutomaticSpeechRecognitionPipeline(AudioPipeline):
    """The task's entry in the registry: an artifact with an encoder graph is Whisper, else CTC."""

    Parameters = SpeechRecognitionParameters
    samples_per_frame: int = 1  # audio samples per model output frame: chunks are aligned to it

    @classmethod
    def variant(cls, manifest: Manifest) -> type[Pipeline]:
        return WhisperPipeline if "encoder" in manifest.graphs else CtcPipeline

    def max_chunk_samples(self) -> int:
        """The longest chunk one model call takes."""
        raise NotImplementedError

    def plan(
        self, waveforms: list[np.ndarray], params: SpeechRecognitionParameters
    ) -> list[list[tuple[int, int, int, int]]]:
        """Each waveform's chunks (`chunks` ranges; one range for the whole when not chunked),
        checked before any model call: positive finite lengths, a chunk that steps forward and fits
        one model call, and no more chunks in the request than `limits.max_sequences`."""
        chunk_s, stride = params.chunk_length_s, params.stride_length_s
        if chunk_s is None or chunk_s == 0:
            for waveform in waveforms:
                if len(waveform) > self.max_chunk_samples():
                    limit = self.max_chunk_samples() / self.sampling_rate
                    raise Unprocessable(
                        f"the audio lasts {len(waveform) / self.sampling_rate:.1f} s, more than one model call takes "
                        f"({limit:g} s): pass `chunk_length_s` (at most {limit:g}) to transcribe it in chunks"
                    )
            return [[(0, len(waveform), 0, 0)] for waveform in waveforms]
        if not math.isfinite(chunk_s) or chunk_s < 0:
            raise InvalidParameter(f"`chunk_length_s` must be a positive number of seconds; got {chunk_s}")
        if stride is None:
            stride = chunk_s / 6
        strides = [stride, stride] if isinstance(stride, (int, float)) else list(stride)
        if len(strides) != 2 or not all(math.isfinite(s) and s >= 0 for s in strides):
            raise InvalidParameter("`stride_length_s` is one number of seconds, or two (left, right), each >= 0")
        align, rate = self.samples_per_frame, self.sampling_rate

        def aligned(seconds: float) -> int:
            return int(round(seconds * rate / align) * align)

        chunk, left, right = aligned(chunk_s), aligned(strides[0]), aligned(strides[1])
        if chunk - left - right <= 0:
            raise InvalidParameter("`chunk_length_s` must be longer than its two strides (`stride_length_s`) together")
        if chunk > self.max_chunk_samples():
            limit = self.max_chunk_samples() / rate
            raise InvalidParameter(f"`chunk_length_s` is at most {limit:g} s for this model; got {chunk_s}")
        ranges = [chunks(len(waveform), chunk, left, right) for waveform in waveforms]
        count = sum(len(r) for r in ranges)
        if count > self.limits.max_sequences:
            raise Unprocessable(
                f"the audio makes {count} chunks; this server runs at most {self.limits.max_sequences} per request: "
                "send less audio or a longer `chunk_length_s`"
            )
        return ranges


class CtcPipeline(AutomaticSpeechRecognitionPipeline):
    """As transformers' pipeline, for CTC models: the text of the frames' best ids; with
    `return_timestamps` "char" or "word", `chunks` of `{"text", "timestamp": (start, end)}` in seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vocabulary = CtcVocabulary.from_directory(self.directory)
        self.samples_per_frame = int(np.prod(self.config.get("conv_stride") or [320]))

    def max_chunk_samples(self) -> int:
        return int(self.limits.max_call_audio_seconds * self.sampling_rate)

    def preprocess(self, inputs: Any, params: SpeechRecognitionParameters) -> tuple[list[Any], Any]:
        timestamps = params.return_timestamps
        if timestamps not in (None, False, "char", "word"):
            raise InvalidParameter(f'`return_timestamps` must be "char" or "word" for a CTC model; got {timestamps!r}')
        waveforms, single = self.waveforms(inputs)
        items: list[dict[str, np.ndarray]] = []
        strides: list[list[tuple[int, int, int]]] = []
        for waveform, ranges in zip(waveforms, self.plan(waveforms, params)):
            items += [self.item(waveform[start:end]) for start, end, _, _ in ranges]
            strides.append([(end - start, left, right) for start, end, left, right in ranges])
        return items, (strides, single)

    def postprocess(
        self, outputs: list[dict[str, np.ndarray]], context: Any, params: SpeechRecognitionParameters
    ) -> Any:
        """Each input's chunks' frame ids, strides dropped, joined and decoded."""
        strides, single = context
        frames = iter(output["logits"].argmax(-1) for output in outputs)
        results = []
        for chunk_strides in strides:
            ids = []
            for samples, left, right in chunk_strides:
                chunk = next(frames)
                if params.chunk_length_s:
                    total, left_frames, right_frames = rescale_stride(samples, left, right, 1 / self.samples_per_frame)
                    chunk = chunk[left_frames : total - right_frames]
                ids.append(chunk)
            results.append(self.answer(np.concatenate(ids), params))
        return results[0] if single else results

    def answer(self, ids: np.ndarray, params: SpeechRecognitionParameters) -> dict[str, Any]:
        text, chars = self.vocabulary.decode([int(i) for i in ids])
        result: dict[str, Any] = {"text": text}
        kind = params.return_timestamps
        if kind in ("char", "word"):
            pieces: list[Offset] = chars if kind == "char" else self.vocabulary.words(chars)
            ratio, rate = self.samples_per_frame, self.sampling_rate  # frames -> seconds in transformers' order
            result["chunks"] = [
                {"text": piece.text, "timestamp": (piece.start * ratio / rate, piece.end * ratio / rate)}
                for piece in pieces
            ]
        return result


class WhisperPipeline(AutomaticSpeechRecognitionPipeline):
    """As transformers' pipeline for Whisper: each segment of at most 30 s through the encoder once,
    then decoded token by token (`runtime.audio.whisper.generate`: its prompt, suppressed tokens,
    greedy or beam search); `language`, `task`, `num_beams` and `max_new_tokens` come from
    `generate_kwargs` (or `generation_parameters`). Generation is its own loop: not batched."""

    batchable: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.manifest.tokenizer is None:
            raise ArtifactError(f"{self.directory} has no tokenizer, which Whisper needs")
        self.tokenizer = TextTokenizer(self.directory / "tokenizer.json", self.manifest.tokenizer)
        self.encoder = OnnxModel(self.directory / self.manifest.graphs["encoder"], self.options)
        self.generator = Generator(self.model, self.encoder, self.config)
        path = self.directory / "generation_config.json"
        defaults = json.loads(path.read_text()) if path.is_file() else {}
        self.generation = WhisperGeneration.from_config(defaults, self.config)
        self.special = set(self.tokenizer.info.special_ids)
        self.segment_samples = int(getattr(self.features, "n_samples", 30 * self.sampling_rate))  # 30 s

    def max_chunk_samples(self) -> int:
        return self.segment_samples

    def decoding(self, params: SpeechRecognitionParameters) -> Decoding:
        """The request's decoding, every bound checked before any work: beams, new tokens, and the
        key/value cache that beams x (prompt + new tokens) hold against 30 s of audio."""
        merged: dict[str, Any] = {}
        for nested in (params.generation_parameters, params.generate_kwargs):
            merged.update(nested or {})
        options = parse_parameters(WhisperOptions, merged)
        if params.return_timestamps == "char":
            raise InvalidParameter('`return_timestamps` is True or "word" for Whisper; "char" is for CTC models')
        if params.return_timestamps == "word":
            raise Unprocessable('`return_timestamps="word"` is not served for Whisper here; True gives segment times')
        timestamps = bool(params.return_timestamps) or self.generation.return_timestamps
        if timestamps and self.generation.no_timestamps is None:
            raise Unprocessable("this Whisper model's generation config has no timestamp tokens")
        if options.do_sample:
            raise Unprocessable("`do_sample` is not supported for Whisper here: decoding is greedy or beam search")
        limits, generation = self.limits, self.generation
        beams = generation.num_beams if options.num_beams is None else options.num_beams
        if beams < 1:
            raise InvalidParameter(f"`num_beams` must be at least 1; got {beams}")
        if beams > limits.max_beams:
            raise Unprocessable(
                f"`num_beams` is at most {limits.max_beams} on this server (KILN_MAX_BEAMS); got {beams}"
            )
        room = generation.max_length - 1  # after the start token; `generate` keeps to what the prompt leaves
        asked = params.max_new_tokens if params.max_new_tokens is not None else options.max_new_tokens
        if asked is not None and asked < 1:
            raise InvalidParameter(f"`max_new_tokens` must be at least 1; got {asked}")
        if asked is not None and asked > min(room, limits.max_new_tokens):
            raise Unprocessable(
                f"`max_new_tokens` is at most {min(room, limits.max_new_tokens)} here (the model's "
                f"{generation.max_length} positions, KILN_MAX_NEW_TOKENS); got {asked}"
            )
        new_tokens = min(room, limits.max_new_tokens) if asked is None else asked
        encoder_frames = int(self.config.get("max_source_positions") or 1500)
        cache = beams * self.generator.cache_bytes(min(generation.max_length, 4 + new_tokens), encoder_frames)
        if cache > limits.max_kv_cache_bytes:
            raise Unprocessable(
                f"{beams} beams of {new_tokens} tokens need {cache >> 20} MB of key/value cache; this server allows "
                f"{limits.max_kv_cache_bytes >> 20} MB (KILN_MAX_KV_CACHE_MB): ask for fewer beams or tokens"
            )
        return Decoding(
            language=options.language or generation.language, task=options.task or generation.task,
            num_beams=beams, max_new_tokens=new_tokens, timestamps=timestamps,
        )  # fmt: skip

    def predict(self, inputs: Any, params: SpeechRecognitionParameters) -> Any:
        """Every input's chunks planned before the first model call; then each chunk decoded with
        what is left of the request's time limit (a transcript cut short is refused, not sent).
        With timestamps, a chunk's 30 s window may be decoded again from its last complete segment
        (`seek_segments`), and the chunks' segments become the answer's `chunks`."""
        decoding = self.decoding(params)
        waveforms, single = self.waveforms(inputs)
        plans = self.plan(waveforms, params)
        deadline = None if self.limits.time_limit_s is None else time.monotonic() + self.limits.time_limit_s
        begin = self.generation.timestamp_begin
        rate = self.sampling_rate
        results = []
        for waveform, ranges in zip(waveforms, plans):
            pieces: list[list[int]] = []
            strides: list[tuple[float, float, float] | None] = []
            for start, end, left, right in ranges:
                features = self.features([waveform[start:end]])["input_features"]
                decode = self._window_decoder(decoding, deadline)
                if decoding.timestamps:
                    assert begin is not None
                    pieces.append(segment_tokens(seek_segments(features, decode, begin)))
                else:
                    pieces.append(decode(features))
                chunked = params.chunk_length_s is not None and params.chunk_length_s > 0
                strides.append(((end - start) / rate, left / rate, right / rate) if chunked else None)
            if decoding.timestamps:
                assert begin is not None
                precision = self.segment_samples / rate / int(self.config.get("max_source_positions") or 1500)
                results.append(decode_asr(list(zip(pieces, strides)), self.tokenizer, self.special, begin, precision))
            else:
                results.append({"text": self.generation.transcript(pieces, self.special, self.tokenizer)})
        return results[0] if single else results

    def _window_decoder(self, decoding: Decoding, deadline: float | None) -> Callable[[np.ndarray], list[int]]:
        """Decodes one chunk's 30 s windows: the first makes the prompt (detecting the language if
        it must), the later ones keep it, as one `generate` call of transformers does."""
        prompt: list[int] | None = None

        def decode(window: np.ndarray) -> list[int]:
            nonlocal prompt
            left = None if deadline is None else deadline - time.monotonic()
            stopped = None if left is None or left > 0 else "time_limit"
            tokens: list[int] = []
            if stopped is None:
                step = dataclasses.replace(decoding, time_limit_s=left)
                prompt, tokens, stopped = generate(self.generator, self.generation, window, step, prompt=prompt)
            if stopped == "time_limit":
                raise Unprocessable(
                    f"the transcription took longer than the {self.limits.time_limit_s:g} s a request may take "
                    "(KILN_GENERATION_TIMEOUT): send less audio, or fewer beams"
                )
            return tokens

        return decode

    def core(self, items: Any) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError("Whisper decodes in `predict`, token by token: it has no one-call core")


class WhisperOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `generate_kwargs` Whisper takes here."""

    language: str | None = None
    task: str | None = None
    num_beams: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool = False
