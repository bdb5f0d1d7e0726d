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
        """`inputs` as mono float32 waveforms at the model's rate, and whether one was given."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        if not items:
            raise InvalidInput("`inputs` is an empty list; send an audio file or a list of them")
        return [self._waveform(item, index) for index, item in enumerate(items)], single

    def _waveform(self, item: Any, index: int) -> np.ndarray:
        limit = self.limits.max_audio_seconds
        if isinstance(item, (bytes, bytearray, memoryview)):
            return load_audio(bytes(item), sampling_rate=self.sampling_rate, max_seconds=limit)
        if isinstance(item, (str, Path)) and Path(item).is_file():
            return load_audio(Path(item).read_bytes(), sampling_rate=self.sampling_rate, max_seconds=limit)
        rate = self.sampling_rate
        if isinstance(item, dict):
            samples = item.get("raw", item.get("array"))
            if samples is None or "sampling_rate" not in item:
                raise InvalidInput('an audio dict needs "raw" (or "array") samples and their "sampling_rate"')
            rate = int(item["sampling_rate"])
            item = samples
        if not isinstance(item, np.ndarray):
            raise InvalidInput(
                f"`inputs` must be audio (file bytes, a numpy array or a raw/sampling_rate dict), "
                f"got {type_name(item)} at {index}"
            )
        if item.ndim == 2:
            item = item.mean(axis=0)  # channels first, mixed down: what transformers' ASR pipeline does
        if item.ndim != 1:
            raise InvalidInput(f"a numpy waveform is 1-D (or channels x samples); got shape {item.shape} at {index}")
        if len(item) > limit * rate:
            raise Unprocessable(f"the audio lasts {len(item) / rate:.1f} s; this server takes at most {limit:g} s")
        waveform = item.astype(np.float32)
        return waveform if rate == self.sampling_rate else resample(waveform, rate, self.sampling_rate)

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return self.run_same_shapes(items)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sampling_rate": self.sampling_rate, "features": self.features.describe()}
