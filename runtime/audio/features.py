"""The audio feature extractors of transformers 4.57, ported to numpy and rebuilt from the model's
`preprocessor_config.json` (`features_from_config`).

- `WhisperFeatures`: `WhisperFeatureExtractor`, the log-mel spectrogram of a 30 s window;
- `Wav2Vec2Features`: `Wav2Vec2FeatureExtractor` (also HuBERT, WavLM, data2vec-audio, SEW, UniSpeech),
  the waveform normalized to zero mean and unit variance;
- `ASTFeatures`: `ASTFeatureExtractor`, a Kaldi-style log-mel filter bank of 1024 frames.

Each call takes a batch of float32 mono waveforms at the extractor's `sampling_rate` and returns
exactly the arrays that transformers' extractor returns with `return_tensors="np"`: the same names,
shapes and dtypes, values within 1e-4. The spectrograms follow transformers' numpy code step for
step (frames in float64, each FFT stored as complex64, magnitudes squared in float64, log in float64
cast to float32), each waveform framed with strides instead of a Python loop: the same values
(equal to the bit on the waveforms of the tests), two to four times faster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from runtime.errors import ArtifactError, InvalidInput

Arrays = dict[str, npt.NDArray[Any]]


class AudioFeatures:
    """What every extractor shares: its transformers class name (`kind`), the `sampling_rate` its
    waveforms must have, the names of the arrays it returns, and its settings for the manifest."""

    kind: ClassVar[str]
    outputs: tuple[str, ...]

    def __init__(self, *, sampling_rate: int, padding_value: float, padding_side: str) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        self.sampling_rate = sampling_rate
        self.padding_value = padding_value
        self.padding_side = padding_side

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The extractor that `preprocessor_config.json` describes, its settings read as transformers'
        `__init__` reads them (a missing key is the default; derived values saved beside them, such as
        Whisper's `n_samples` and `mel_filters`, are recomputed). Unusable settings: `ArtifactError`."""
        try:
            return cls.from_settings(_Reader(config))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"the {cls.kind} config is not usable: {exc}") from exc

    @classmethod
    def from_settings(cls, read: _Reader) -> Self:
        raise NotImplementedError

    def __call__(self, waveforms: Sequence[npt.NDArray[Any]]) -> Arrays:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"sampling_rate": self.sampling_rate, "padding_value": self.padding_value}

    def describe(self) -> dict[str, Any]:
        """The settings, for the artifact manifest."""
        return {"type": self.kind, **self.settings(), "outputs": list(self.outputs)}

    def pad(
        self, waveforms: Sequence[npt.NDArray[np.float32]], length: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
        """`SequenceFeatureExtractor.pad`: each waveform cut to `length` samples (keeping the first)
        or filled with `padding_value` on `padding_side`, and the mask of the real samples."""
        values = np.full((len(waveforms), length), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(waveforms), length), dtype=np.int32)
        for row, waveform in enumerate(waveforms):
            kept = waveform[:length]
            span = slice(0, kept.size) if self.padding_side == "right" else slice(length - kept.size, length)
            values[row, span] = kept
            mask[row, span] = 1
        return values, mask


class WhisperFeatures(AudioFeatures):
    """`WhisperFeatureExtractor`: each waveform cut (its start kept) or padded to `chunk_length`
    seconds (a chunk of long audio shorter than that is padded too), then the log-mel spectrogram of its numpy path
    (`_np_extract_fbank_features`): centred frames of `n_fft` samples every `hop_length` (reflected at
    the ends), a periodic Hann window, power spectrum, Slaney mel filters from 0 to 8 kHz, log10 of at
    least 1e-10, the last frame dropped, floored at 8 below the waveform's maximum, then `(x + 4) / 4`.

    With torch installed, transformers computes the same in float32 torch instead, 1.2e-5 away on
    speech; this port equals the numpy code. `dither` adds Gaussian noise of that standard deviation
    to each frame, at random as transformers does, so dithered features are not reproducible.

    `attention_mask`, as transformers returns it: with `return_attention_mask=True` in the call (what
    the ASR pipeline passes), one value per frame; else, when the config sets `return_attention_mask`,
    one per *sample* (`n_samples` wide), since transformers then rescales nothing.
    """

    kind = "WhisperFeatureExtractor"

    def __init__(
        self,
        *,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        chunk_length: int = 30,
        n_fft: int = 400,
        padding_value: float = 0.0,
        dither: float = 0.0,
        return_attention_mask: bool = False,
        padding_side: str = "right",
    ) -> None:
        super().__init__(sampling_rate=sampling_rate, padding_value=padding_value, padding_side=padding_side)
        self.feature_size = feature_size
        self.hop_length = hop_length
        self.chunk_length = chunk_length
        self.n_fft = n_fft
        self.dither = dither
        self.return_attention_mask = return_attention_mask
        self.n_samples = chunk_length * sampling_rate
        self.nb_max_frames = self.n_samples // hop_length
        self.window = np.hanning(n_fft + 1)[:-1]
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=feature_size,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.outputs = ("input_features", "attention_mask") if return_attention_mask else ("input_features",)

    @classmethod
    def from_settings(cls, read: _Reader) -> Self:
        return cls(
            feature_size=read.integer("feature_size", 80),
            sampling_rate=read.integer("sampling_rate", 16000),
            hop_length=read.integer("hop_length", 160),
            chunk_length=read.integer("chunk_length", 30),
            n_fft=read.integer("n_fft", 400),
            padding_value=read.number("padding_value", 0.0),
            dither=read.number("dither", 0.0),
            return_attention_mask=read.flag("return_attention_mask", False),
            padding_side=read.text("padding_side", "right"),
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "chunk_length": self.chunk_length,
            "n_fft": self.n_fft,
            "dither": self.dither,
            "return_attention_mask": self.return_attention_mask,
            "padding_side": self.padding_side,
        }

    def __call__(self, waveforms: Sequence[npt.NDArray[Any]], *, return_attention_mask: bool | None = None) -> Arrays:
        padded, mask = self.pad(_mono_batch(waveforms), self.n_samples)
        arrays: Arrays = {"input_features": np.stack([self.log_mel(row) for row in padded])}
        if return_attention_mask:
            frames = mask[:, :: self.hop_length]
            arrays["attention_mask"] = frames[:, :-1] if self.n_samples % self.hop_length else frames
        elif self.return_attention_mask:
            arrays["attention_mask"] = mask
        return arrays

    def log_mel(self, padded: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One padded waveform (samples,) -> (feature_size, samples // hop_length)."""
        half = self.n_fft // 2
        signal = np.pad(padded, (half, half), mode="reflect").astype(np.float64)
        frames = sliding_window_view(signal, self.n_fft)[:: self.hop_length]
        if self.dither != 0.0:
            frames = frames + self.dither * np.random.default_rng().standard_normal(frames.shape)
        power = _power_spectrum(frames * self.window, self.n_fft)
        log_spec: npt.NDArray[np.float32] = np.log10(np.maximum(1e-10, power @ self.mel_filters)).astype(np.float32)
        log_spec = log_spec.T[:, :-1]
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


class Wav2Vec2Features(AudioFeatures):
    """`Wav2Vec2FeatureExtractor`: each waveform, when `do_normalize`, made zero-mean unit-variance
    over its own samples (`(x - mean) / sqrt(var + 1e-7)`, in float32), then the batch padded to its
    longest waveform with `padding_value`, with an int32 `attention_mask` when the config sets
    `return_attention_mask`.

    That is transformers' call with `padding=True` whenever the waveforms are as long as each other
    or the mask is returned, and what the ASR pipeline's batching makes (each waveform extracted
    alone, then padded). Called with `padding=True` on waveforms of different lengths and no mask,
    transformers normalizes the padding too, so a waveform's values would depend on its neighbours
    in the batch; here they never do. (Without padding, transformers returns a batch of different
    lengths as arrays of objects.)
    With `padding_side="left"`, transformers normalizes over the first samples of the padded row,
    padding included; here it is the waveform's own samples again.
    """

    kind = "Wav2Vec2FeatureExtractor"

    def __init__(
        self,
        *,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        do_normalize: bool = True,
        padding_side: str = "right",
    ) -> None:
        super().__init__(sampling_rate=sampling_rate, padding_value=padding_value, padding_side=padding_side)
        self.return_attention_mask = return_attention_mask
        self.do_normalize = do_normalize
        self.outputs = ("input_values", "attention_mask") if return_attention_mask else ("input_values",)

    @classmethod
    def from_settings(cls, read: _Reader) -> Self:
        """`feature_size` must be 1: one channel of samples per step."""
        if (size := read.integer("feature_size", 1)) != 1:
            raise ValueError(f"feature_size must be 1 for waveform inputs, not {size}")
        return cls(
            sampling_rate=read.integer("sampling_rate", 16000),
            padding_value=read.number("padding_value", 0.0),
            return_attention_mask=read.flag("return_attention_mask", False),
            do_normalize=read.flag("do_normalize", True),
            padding_side=read.text("padding_side", "right"),
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "do_normalize": self.do_normalize,
            "return_attention_mask": self.return_attention_mask,
            "padding_side": self.padding_side,
        }

    def __call__(self, waveforms: Sequence[npt.NDArray[Any]], *, return_attention_mask: bool | None = None) -> Arrays:
        """`return_attention_mask` as transformers' call takes it: None is the config's setting (the
        ASR pipeline passes True)."""
        batch = _mono_batch(waveforms)
        if any(not waveform.size for waveform in batch):
            raise InvalidInput("a waveform holds no samples")
        if self.do_normalize:
            batch = [(x - x.mean()) / np.sqrt(x.var() + 1e-7) for x in batch]
        values, mask = self.pad(batch, max(waveform.size for waveform in batch))
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            return {"input_values": values, "attention_mask": mask}
        return {"input_values": values}


class ASTFeatures(AudioFeatures):
    """`ASTFeatureExtractor` on its numpy path (what transformers takes without torchaudio): frames of
    400 samples every 160 (none centred, none past the end), each with its mean removed, pre-emphasis
    0.97, a symmetric Hann window, a 512-point power spectrum, `num_mel_bins` filters triangular on
    Kaldi's mel scale from 20 Hz to Nyquist, natural log of at least 1.1920929e-07; then cut or
    zero-padded to `max_length` frames and, when `do_normalize`, `(x - mean) / (2 * std)`.

    With 128 bins and a 512-point FFT, the fourth filter holds no FFT bin (transformers warns) and
    stays at the floor, as in transformers. A waveform shorter than 400 samples has no frame: all
    padding (transformers' numpy path raises below 240 samples; torchaudio's Kaldi `fbank`, which
    transformers uses when torchaudio is installed, also returns no frame).
    """

    kind = "ASTFeatureExtractor"
    outputs = ("input_values",)
    FRAME, HOP, FFT, PREEMPHASIS, MEL_FLOOR = 400, 160, 512, 0.97, 1.192092955078125e-07

    def __init__(
        self,
        *,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        mean: float = -4.2677393,
        std: float = 4.5689974,
    ) -> None:
        super().__init__(sampling_rate=sampling_rate, padding_value=padding_value, padding_side="right")
        self.num_mel_bins = num_mel_bins
        self.max_length = max_length
        self.do_normalize = do_normalize
        self.mean = mean
        self.std = std
        self.window = np.hanning(self.FRAME)
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=self.FFT // 2 + 1,
            num_mel_filters=num_mel_bins,
            min_frequency=20,
            max_frequency=sampling_rate // 2,
            sampling_rate=sampling_rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )

    @classmethod
    def from_settings(cls, read: _Reader) -> Self:
        return cls(
            sampling_rate=read.integer("sampling_rate", 16000),
            num_mel_bins=read.integer("num_mel_bins", 128),
            max_length=read.integer("max_length", 1024),
            padding_value=read.number("padding_value", 0.0),
            do_normalize=read.flag("do_normalize", True),
            mean=read.number("mean", -4.2677393),
            std=read.number("std", 4.5689974),
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "num_mel_bins": self.num_mel_bins,
            "max_length": self.max_length,
            "do_normalize": self.do_normalize,
            "mean": self.mean,
            "std": self.std,
        }

    def __call__(self, waveforms: Sequence[npt.NDArray[Any]]) -> Arrays:
        batch = _mono_batch(waveforms)
        values = np.zeros((len(batch), self.max_length, self.num_mel_bins), dtype=np.float32)
        for row, waveform in enumerate(batch):
            fbank = self.fbank(waveform)[: self.max_length]
            values[row, : len(fbank)] = fbank
        if self.do_normalize:
            values = (values - self.mean) / (self.std * 2)
        return {"input_values": values}

    def fbank(self, waveform: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(samples,) -> (frames, num_mel_bins), before padding and normalization."""
        if waveform.size < self.FRAME:
            return np.zeros((0, self.num_mel_bins), dtype=np.float32)
        frames = sliding_window_view(waveform.astype(np.float64), self.FRAME)[:: self.HOP]
        frames = frames - frames.mean(axis=1, keepdims=True)
        emphasized = frames.copy()
        emphasized[:, 1:] -= self.PREEMPHASIS * frames[:, :-1]
        emphasized[:, 0] *= 1 - self.PREEMPHASIS
        power = _power_spectrum(emphasized * self.window, self.FFT)
        return np.log(np.maximum(self.MEL_FLOOR, power @ self.mel_filters)).astype(np.float32)


def _power_spectrum(frames: npt.NDArray[np.float64], fft_length: int) -> npt.NDArray[np.float64]:
    """|rfft|**2 of windowed frames (zero-filled to `fft_length`), stored as complex64 in between as
    transformers' `spectrogram` stores it."""
    spectrum = np.fft.rfft(frames, n=fft_length, axis=-1).astype(np.complex64)
    return np.abs(spectrum, dtype=np.float64) ** 2


def _mono_batch(waveforms: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[np.float32]]:
    """The waveforms as float32 (as every extractor casts them), each one channel."""
    if not len(waveforms):
        raise InvalidInput("no audio to process")
    batch = [np.asarray(waveform, dtype=np.float32) for waveform in waveforms]
    for waveform in batch:
        if waveform.ndim != 1:
            raise InvalidInput(f"a waveform must be one channel of samples, not an array of shape {waveform.shape}")
    return batch


def hertz_to_mel(freq: npt.ArrayLike, mel_scale: str) -> npt.NDArray[np.float64]:
    """`audio_utils.hertz_to_mel` for the `slaney` and `kaldi` scales (and `htk`)."""
    freq = np.asarray(freq, dtype=np.float64)
    if mel_scale == "htk":
        return np.asarray(2595.0 * np.log10(1.0 + freq / 700.0))
    if mel_scale == "kaldi":
        return np.asarray(1127.0 * np.log(1.0 + freq / 700.0))
    mels = np.atleast_1d(3.0 * freq / 200.0)
    high = np.atleast_1d(freq >= 1000.0)
    mels[high] = 15.0 + np.log(np.atleast_1d(freq)[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels.reshape(freq.shape)


def mel_to_hertz(mels: npt.ArrayLike, mel_scale: str) -> npt.NDArray[np.float64]:
    """`audio_utils.mel_to_hertz` for the `slaney` and `kaldi` scales (and `htk`)."""
    mels = np.asarray(mels, dtype=np.float64)
    if mel_scale == "htk":
        return np.asarray(700.0 * (np.power(10, mels / 2595.0) - 1.0))
    if mel_scale == "kaldi":
        return np.asarray(700.0 * (np.exp(mels / 1127.0) - 1.0))
    freq = np.atleast_1d(200.0 * mels / 3.0)
    high = np.atleast_1d(mels >= 15.0)
    freq[high] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (np.atleast_1d(mels)[high] - 15.0))
    return freq.reshape(mels.shape)


def mel_filter_bank(
    *,
    num_frequency_bins: int,
    num_mel_filters: int,
    min_frequency: float,
    max_frequency: float,
    sampling_rate: int,
    norm: str | None,
    mel_scale: str,
    triangularize_in_mel_space: bool = False,
) -> npt.NDArray[np.float64]:
    """`audio_utils.mel_filter_bank`: (num_frequency_bins, num_mel_filters) triangular filters, centred
    at mel-spaced frequencies, triangular in Hz (or in mels, as torchaudio's Kaldi code makes them),
    area-normalized with `norm="slaney"`."""
    if num_frequency_bins < 2 or min_frequency > max_frequency:
        raise ValueError(f"no mel filter bank from {num_frequency_bins} bins and {min_frequency}..{max_frequency} Hz")
    mel_min, mel_max = (
        hertz_to_mel(min_frequency, mel_scale),
        hertz_to_mel(max_frequency, mel_scale),
    )
    mel_freqs = np.linspace(mel_min, mel_max, num_mel_filters + 2)
    filter_freqs = mel_to_hertz(mel_freqs, mel_scale)
    if triangularize_in_mel_space:
        bin_width = sampling_rate / ((num_frequency_bins - 1) * 2)
        fft_freqs = hertz_to_mel(bin_width * np.arange(num_frequency_bins), mel_scale)
        filter_freqs = mel_freqs
    else:
        fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters: npt.NDArray[np.float64] = np.maximum(np.zeros(1), np.minimum(down, up))
    if norm == "slaney":
        filters *= (2.0 / (filter_freqs[2 : num_mel_filters + 2] - filter_freqs[:num_mel_filters]))[None, :]
    return filters


class _Reader:
    """Settings read as transformers' `__init__` reads them: a missing key is the default."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def integer(self, key: str, default: int) -> int:
        value = self.config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, not {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.config.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{key} must be a number, not {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A `do_*` or `return_*` setting: null reads as false, as the extractors' `if` reads it."""
        value = self.config.get(key, default)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, not {value!r}")
        return bool(value)

    def text(self, key: str, default: str) -> str:
        value = self.config.get(key, default)
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, not {value!r}")
        return value


EXTRACTORS: dict[str, type[AudioFeatures]] = {cls.kind: cls for cls in (WhisperFeatures, Wav2Vec2Features, ASTFeatures)}
"""`feature_extractor_type` -> the class that ports it."""


def features_from_config(config: Mapping[str, Any]) -> AudioFeatures:
    """The extractor that `preprocessor_config.json` names in `feature_extractor_type`; another
    type, or none: `ArtifactError`."""
    kind = config.get("feature_extractor_type")
    extractor = EXTRACTORS.get(kind) if isinstance(kind, str) else None
    if extractor is None:
        known = ", ".join(sorted(EXTRACTORS))
        raise ArtifactError(f"audio feature extractor {kind!r} is not supported; supported: {known}")
    return extractor.from_config(config)
