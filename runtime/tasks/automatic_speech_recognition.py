"""automatic-speech-recognition: sound -> `{"text"}` (+ `chunks` with timestamps when asked).

Two kinds of model, told apart by the artifact: CTC models (wav2vec2, HuBERT: one graph, greedy
CTC decoding of its frames) and Whisper (an encoder and a decoder with its key/value cache,
decoded token by token by `runtime.audio.whisper`). Long audio is cut as transformers' pipeline
cuts it (`chunk_length_s`, `stride_length_s`): CTC chunks overlap by the strides, and the frames
of each stride are dropped before the chunks' frames are joined.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import msgspec
import numpy as np

from runtime.artifact import Manifest
from runtime.audio.ctc import CtcVocabulary, Offset
from runtime.audio.whisper import Decoding, WhisperGeneration, generate
from runtime.errors import ArtifactError, InvalidParameter, Unprocessable
from runtime.generation import Generator
from runtime.session import OnnxModel
from runtime.tasks import register
from runtime.tasks.audio import AudioPipeline
from runtime.tasks.base import Pipeline, parse_parameters
from runtime.text import TextTokenizer


class SpeechRecognitionParameters(msgspec.Struct, forbid_unknown_fields=True):
    return_timestamps: bool | str | None = None
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

    def split(self, waveform: np.ndarray, params: SpeechRecognitionParameters) -> list[tuple[int, int, int, int]]:
        """The chunks of one waveform, as `chunks` ranges (one range for the whole when not chunked)."""
        if not params.chunk_length_s:
            return [(0, len(waveform), 0, 0)]
        stride = params.stride_length_s if params.stride_length_s is not None else params.chunk_length_s / 6
        if not isinstance(stride, (int, float)) and len(stride) != 2:
            raise InvalidParameter("`stride_length_s` is one number or two (left, right)")
        left, right = (stride, stride) if isinstance(stride, (int, float)) else tuple(stride)
        align, rate = self.samples_per_frame, self.sampling_rate

        def aligned(seconds: float) -> int:
            return int(round(seconds * rate / align) * align)

        chunk, left_n, right_n = aligned(params.chunk_length_s), aligned(left), aligned(right)
        if chunk < left_n + right_n:
            raise InvalidParameter("`chunk_length_s` must be longer than the two strides (`stride_length_s`)")
        return chunks(len(waveform), chunk, left_n, right_n)


class CtcPipeline(AutomaticSpeechRecognitionPipeline):
    """As transformers' pipeline, for CTC models: the text of the frames' best ids; with
    `return_timestamps` "char" or "word", `chunks` of `{"text", "timestamp": (start, end)}` in seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vocabulary = CtcVocabulary.from_directory(self.directory)
        self.samples_per_frame = int(np.prod(self.config.get("conv_stride") or [320]))

    def preprocess(self, inputs: Any, params: SpeechRecognitionParameters) -> tuple[list[Any], Any]:
        timestamps = params.return_timestamps
        if timestamps not in (None, False, "char", "word"):
            raise InvalidParameter(f'`return_timestamps` must be "char" or "word" for a CTC model; got {timestamps!r}')
        waveforms, single = self.waveforms(inputs)
        items: list[dict[str, np.ndarray]] = []
        strides: list[list[tuple[int, int, int]]] = []
        for waveform in waveforms:
            ranges = self.split(waveform, params)
            self.check_sequences(len(items) + len(ranges), "the audio needs")
            for start, end, _, _ in ranges:
                items.append({k: v[0] for k, v in self.features([waveform[start:end]]).items()})
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
        self.segment_samples = int(getattr(self.features, "n_samples", 30 * self.sampling_rate))

    def decoding(self, params: SpeechRecognitionParameters) -> Decoding:
        merged: dict[str, Any] = {}
        for nested in (params.generation_parameters, params.generate_kwargs):
            merged.update(nested or {})
        options = parse_parameters(WhisperOptions, merged)
        if params.max_new_tokens is not None:
            options.max_new_tokens = params.max_new_tokens
        beams = self.generation.num_beams if options.num_beams is None else options.num_beams
        if not 1 <= beams <= self.limits.max_beams:
            raise InvalidParameter(f"`num_beams` must be between 1 and {self.limits.max_beams}; got {beams}")
        if options.do_sample:
            raise Unprocessable("`do_sample` is not supported for Whisper here: decoding is greedy or beam search")
        if options.max_new_tokens is not None and not 1 <= options.max_new_tokens <= self.limits.max_new_tokens:
            raise InvalidParameter(f"`max_new_tokens` must be between 1 and {self.limits.max_new_tokens}")
        if params.return_timestamps:
            raise Unprocessable("`return_timestamps` is not supported for Whisper models by this server yet")
        return Decoding(
            language=options.language, task=options.task, num_beams=beams,
            max_new_tokens=options.max_new_tokens, time_limit_s=self.limits.time_limit_s,
        )  # fmt: skip

    def predict(self, inputs: Any, params: SpeechRecognitionParameters) -> Any:
        decoding = self.decoding(params)
        waveforms, single = self.waveforms(inputs)
        results = [self.transcribe(waveform, params, decoding) for waveform in waveforms]
        return results[0] if single else results

    def transcribe(self, waveform: np.ndarray, params: SpeechRecognitionParameters, decoding: Decoding) -> Any:
        if len(waveform) > self.segment_samples and not params.chunk_length_s:
            raise Unprocessable(
                f"the audio lasts {len(waveform) / self.sampling_rate:.1f} s, more than Whisper's "
                f"{self.segment_samples / self.sampling_rate:g} s: pass `chunk_length_s` (30) to transcribe in chunks"
            )
        ranges = self.split(waveform, params)
        self.check_sequences(len(ranges), "the audio needs")
        pieces = []
        for start, end, _, _ in ranges:
            features = self.features([waveform[start:end]])["input_features"]
            pieces.append(generate(self.generator, self.generation, features, decoding)[1])
        return {"text": self.generation.transcript(pieces, self.special, self.tokenizer)}


class WhisperOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `generate_kwargs` Whisper takes here."""

    language: str | None = None
    task: str | None = None
    num_beams: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool = False
