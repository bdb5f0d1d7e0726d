"""The shared part of the audio tasks: sound in, feature-extractor items, batched graph runs.

Inputs are what the transformers audio pipelines take in a notebook: the bytes of an audio file, a
local path, a numpy array already at the model's sampling rate (1-D, or channels x samples mixed
down by their mean, as the ASR pipeline does), a `{"raw" or "array", "sampling_rate"}` dict
(resampled here, where transformers needs torchaudio), or a list of them.
(The server decodes base64 and binary bodies into bytes itself, and never passes a path.) Files are
decoded by `runtime.audio.load_audio`: mixed down to mono, resampled to the model's rate, and
refused past `limits.max_audio_seconds` from their header, before the samples are decoded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.artifact import Manifest
from runtime.audio import AudioFeatures, features_from_config, load_audio, resample
from runtime.errors import ArtifactError, InvalidInput, Unprocessable
from runtime.session import SessionOptions
from runtime.tasks.base import InputKind, Pipeline, type_name

SILENCE = np.zeros(16000, dtype=np.float32)  # the warm-up input: a second of silence at 16 kHz


class AudioPipeline(Pipeline):
    """A pipeline over an audio feature extractor; items are one waveform's model inputs."""

    input_kind: ClassVar[InputKind] = InputKind.AUDIO
    example: ClassVar[tuple[Any, dict[str, Any]]] = ({"raw": SILENCE, "sampling_rate": 16000}, {})

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        config = directory / "preprocessor_config.json"
        if not config.is_file():
            raise ArtifactError(f"{directory} has no preprocessor_config.json, which task {manifest.task} needs")
        self.features: AudioFeatures = features_from_config(json.loads(config.read_text()))
        self.sampling_rate = self.features.sampling_rate

    def waveforms(self, inputs: Any) -> tuple[list[np.ndarray], bool]:
        """`inputs` as mono float32 waveforms at the model's rate, and whether one was given. The
        request's inputs together may last `limits.max_audio_seconds`: each file is decoded with
        what the ones before it left of that budget."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        if not items:
            raise InvalidInput("`inputs` is an empty list; send an audio file or a list of them")
        waveforms: list[np.ndarray] = []
        budget = self.limits.max_audio_seconds
        for index, item in enumerate(items):
            try:
                waveforms.append(self._waveform(item, index, budget))
            except Unprocessable:
                if index == 0:
                    raise
                limit = self.limits.max_audio_seconds
                raise Unprocessable(f"the request's audio lasts more than the {limit:g} s this server takes") from None
            budget -= len(waveforms[-1]) / self.sampling_rate
        return waveforms, single

    def _waveform(self, item: Any, index: int, budget: float) -> np.ndarray:
        limit = self.limits.max_audio_seconds
        if budget <= 0:
            raise Unprocessable(f"the request's audio lasts more than the {limit:g} s this server takes per request")
        if isinstance(item, (bytes, bytearray, memoryview)):
            return load_audio(bytes(item), sampling_rate=self.sampling_rate, max_seconds=budget)
        if isinstance(item, (str, Path)) and Path(item).is_file():
            return load_audio(Path(item).read_bytes(), sampling_rate=self.sampling_rate, max_seconds=budget)
        rate = self.sampling_rate
        if isinstance(item, dict):
            samples = item.get("raw", item.get("array"))
            declared = item.get("sampling_rate")
            if samples is None or not isinstance(declared, int) or isinstance(declared, bool) or declared <= 0:
                raise InvalidInput(
                    'an audio dict needs "raw" (or "array") samples and their "sampling_rate", a positive integer'
                )
            rate, item = declared, samples
        if not isinstance(item, np.ndarray) or not np.issubdtype(item.dtype, np.number):
            raise InvalidInput(
                f"`inputs` must be audio (file bytes, a numpy array or a raw/sampling_rate dict), "
                f"got {type_name(item)} at {index}"
            )
        if item.ndim == 2:
            item = item.mean(axis=0)  # channels first, mixed down: what transformers' ASR pipeline does
        if item.ndim != 1:
            raise InvalidInput(f"a numpy waveform is 1-D (or channels x samples); got shape {item.shape} at {index}")
        if len(item) > budget * rate:
            raise Unprocessable(f"the audio lasts {len(item) / rate:.1f} s; this server takes at most {limit:g} s")
        if not np.isfinite(item).all():
            raise InvalidInput(f"the waveform at {index} holds samples that are not finite numbers (NaN or infinity)")
        waveform = item.astype(np.float32)
        return waveform if rate == self.sampling_rate else resample(waveform, rate, self.sampling_rate)

    @property
    def min_samples(self) -> int:
        """The shortest input the model's convolutions take (wav2vec2, HuBERT: 400 samples); 1 for
        models whose features have a fixed size (Whisper, AST)."""
        kernels, strides = self.config.get("conv_kernel"), self.config.get("conv_stride")
        if not kernels or not strides or "input_values" not in self.model.input_names:
            return 1
        needed = 1
        for kernel, stride in zip(reversed(kernels), reversed(strides)):
            needed = (needed - 1) * stride + kernel
        return needed

    def item(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        """One waveform's model inputs. Audio shorter than `min_samples` (a click, a few samples)
        is padded after its features with the extractor's padding, so it answers instead of
        failing in the model's first convolution (transformers' pipeline fails there)."""
        item = {name: value[0] for name, value in self.features([waveform]).items()}
        values = item.get("input_values")
        if values is not None and values.ndim == 1 and len(values) < self.min_samples:
            missing = self.min_samples - len(values)
            item = {name: np.pad(value, (0, missing)) if value.ndim == 1 else value for name, value in item.items()}
        return item

    def check_call_length(self, samples: int, advice: str) -> None:
        """Refuse a waveform (or chunk) longer than one model call takes, with `advice`."""
        seconds, limit = samples / self.sampling_rate, self.limits.max_call_audio_seconds
        if seconds > limit:
            raise Unprocessable(
                f"the audio lasts {seconds:.1f} s; one model call takes at most {limit:g} s "
                f"(KILN_MAX_CALL_AUDIO_SECONDS): {advice}"
            )

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Items of one shape together, as many in a model call as `limits.max_call_audio_seconds`
        of audio (a model call's memory grows with its audio: wav2vec2's attention with its square)."""
        longest = max((len(item.get("input_values", ())) for item in items), default=0)
        per_call = self.limits.max_call_audio_seconds * self.sampling_rate
        return self.run_same_shapes(items, max_rows=max(1, int(per_call // longest)) if longest else None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sampling_rate": self.sampling_rate, "features": self.features.describe()}
