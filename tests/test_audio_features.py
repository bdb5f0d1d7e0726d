"""`runtime.audio` against transformers' own: the same waveforms, the same config, the same model
inputs (max abs difference within 1e-4; measured: 0.0 against transformers' numpy code for all
three extractors, 1.2e-5 against Whisper's torch code), and files decoded back to the speech they
were made from.

Waveforms: ten seconds of real speech (`beckett.wav`, shipped by `useful-moonshine-onnx`), a
one-second clip of it, the speech four times over (past Whisper's 30 s and AST's 1024 frames), a
tone, silence, and clips shorter than a frame. Files: the speech made 44.1 kHz stereo (left and
right differ; their mean is the speech) and written by libsndfile as WAV, FLAC, Ogg Vorbis, Ogg
Opus and MP3.
"""

from __future__ import annotations

import base64
import io
import json
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import soxr
import transformers
import transformers.models.whisper.feature_extraction_whisper as whisper_module
from scipy.signal import butter, resample_poly, sosfiltfilt
from transformers.utils.import_utils import is_speech_available

from runtime.audio import (
    FORMATS,
    MEDIA_TYPES,
    ASTFeatures,
    Wav2Vec2Features,
    WhisperFeatures,
    decode_base64_audio,
    features_from_config,
    load_audio,
    resample,
)
from runtime.errors import ArtifactError, InvalidInput, Unprocessable

RATE = 16_000
TOLERANCE = 1e-4
Array = npt.NDArray[Any]


def beckett_wav() -> Path:
    """Found, not imported: `useful-moonshine-onnx` is installed without its dependencies."""
    spec = find_spec("moonshine_onnx")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps useful-moonshine-onnx"
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "beckett.wav"


@pytest.fixture(scope="module")
def speech() -> npt.NDArray[np.float32]:
    samples, rate = soundfile.read(beckett_wav(), dtype="float32")
    assert rate == RATE and samples.ndim == 1 and 9 * RATE < samples.size < 11 * RATE
    return np.asarray(samples)


@pytest.fixture(scope="module")
def waveforms(speech: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
    t = np.arange(int(2.5 * RATE)) / RATE
    return {
        "speech": speech,
        "speech-1s": speech[RATE : 2 * RATE],
        "speech-40s": np.tile(speech, 4),
        "tone": (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32),
        "silence": np.zeros(2 * RATE, dtype=np.float32),
        "one-frame": speech[RATE : RATE + 400],
    }


def config_of(extractor: Any, tmp_path: Path) -> dict[str, Any]:
    extractor.save_pretrained(tmp_path)
    config: dict[str, Any] = json.loads((tmp_path / "preprocessor_config.json").read_text())
    return config


def difference(ours: dict[str, Array], theirs: Any) -> float:
    """The largest difference of the float arrays; the others (masks) must be equal."""
    assert sorted(ours) == sorted(theirs)
    worst = 0.0
    for name, expected in theirs.items():
        got = ours[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if np.issubdtype(expected.dtype, np.floating):
            worst = max(worst, float(np.abs(got - expected).max()))
        else:
            np.testing.assert_array_equal(got, expected)
    return worst


@pytest.fixture
def numpy_whisper(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' Whisper extractor on its numpy code, as without torch."""
    monkeypatch.setattr(whisper_module, "is_torch_available", lambda: False)


SHORT = ["speech-1s", "one-frame"]
"""For the cases beyond the defaults: two lengths (padding, masks), the cheapest to compare."""

WHISPER: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "default": ({}, None),
    "128-mels": ({"feature_size": 128}, ["speech"]),
    "config-mask": ({"return_attention_mask": True}, SHORT),
    "left-padded-10s": ({"chunk_length": 10, "padding_side": "left"}, ["speech-40s", *SHORT]),
}


@pytest.mark.parametrize("case", WHISPER)
def test_whisper_matches_transformers_numpy_code(
    case: str, waveforms: dict[str, Array], numpy_whisper: None, tmp_path: Path
) -> None:
    settings, names = WHISPER[case]
    theirs = transformers.WhisperFeatureExtractor(**settings)
    ours = features_from_config(config_of(theirs, tmp_path))
    assert isinstance(ours, WhisperFeatures)
    batch = [waveforms[name] for name in names or waveforms]
    expected = theirs(batch, sampling_rate=RATE, return_tensors="np")
    got = ours(batch)
    assert difference(got, expected) <= TOLERANCE
    assert sorted(got) == sorted(ours.describe()["outputs"])
    json.dumps(ours.describe())
    if "attention_mask" in got:  # the config's mask, one value per sample, as transformers leaves it
        assert got["attention_mask"].shape == (len(batch), ours.n_samples)


def test_whisper_frame_mask_as_the_asr_pipeline_asks(waveforms: dict[str, Array], numpy_whisper: None) -> None:
    theirs = transformers.WhisperFeatureExtractor()
    batch = [waveforms[name] for name in SHORT]
    expected = theirs(batch, sampling_rate=RATE, return_tensors="np", return_attention_mask=True)
    got = WhisperFeatures()(batch, return_attention_mask=True)
    assert difference(got, expected) <= TOLERANCE
    assert got["attention_mask"].shape == (2, 3000)
    assert got["attention_mask"].sum(axis=1).tolist() == [-(-w.size // 160) for w in batch]


def test_whisper_matches_transformers_torch_code(waveforms: dict[str, Array]) -> None:
    """With torch installed, transformers computes the spectrogram in float32 torch: 1.2e-5 apart."""
    theirs = transformers.WhisperFeatureExtractor()
    batch = [waveforms["speech"], waveforms["tone"]]
    expected = theirs(batch, sampling_rate=RATE, return_tensors="np")
    assert difference(WhisperFeatures()(batch), expected) <= TOLERANCE


def test_whisper_dither_is_random_like_transformers(numpy_whisper: None) -> None:
    silence = [np.zeros(2 * RATE, dtype=np.float32)]
    assert np.all(WhisperFeatures()(silence)["input_features"] == -1.5)
    ours = WhisperFeatures(dither=1e-5)(silence)["input_features"]
    theirs = transformers.WhisperFeatureExtractor(dither=1e-5)(silence, sampling_rate=RATE, return_tensors="np")
    expected = theirs["input_features"]
    assert ours.std() > 0.05
    assert abs(ours.mean() - expected.mean()) < 0.01 and abs(ours.std() - expected.std()) < 0.01


WAV2VEC2: dict[str, dict[str, Any]] = {
    "default": {},
    "attention-mask": {"return_attention_mask": True},
    "raw-padded-with-minus-one": {"do_normalize": False, "padding_value": -1.0, "return_attention_mask": True},
    "left-padded": {"padding_side": "left", "return_attention_mask": True},
}


@pytest.mark.parametrize("case", WAV2VEC2)
def test_wav2vec2_matches_transformers(case: str, waveforms: dict[str, Array], tmp_path: Path) -> None:
    """Each waveform alone as transformers makes it; a batch as transformers' `padding=True` makes it
    when it returns the mask (right padding), else each row is the waveform alone, then padding."""
    settings = WAV2VEC2[case]
    theirs = transformers.Wav2Vec2FeatureExtractor(**settings)
    ours = features_from_config(config_of(theirs, tmp_path))
    assert isinstance(ours, Wav2Vec2Features)
    batch = list(waveforms.values())
    for waveform in batch:
        expected = theirs([waveform], sampling_rate=RATE, return_tensors="np", padding=True)
        assert difference(ours([waveform]), expected) <= TOLERANCE
    got = ours(batch)
    if settings.get("return_attention_mask") and settings.get("padding_side", "right") == "right":
        expected = theirs(batch, sampling_rate=RATE, return_tensors="np", padding=True)
        assert difference(got, expected) <= TOLERANCE
    longest = max(w.size for w in batch)
    for row, waveform in zip(got["input_values"], batch):
        alone = ours([waveform])["input_values"][0]
        real = slice(0, alone.size) if ours.padding_side == "right" else slice(longest - alone.size, longest)
        np.testing.assert_array_equal(row[real], alone)
        assert np.count_nonzero(row != ours.padding_value) <= alone.size
    if "attention_mask" in got:
        assert got["attention_mask"].sum(axis=1).tolist() == [w.size for w in batch]
    json.dumps(ours.describe())


def test_wav2vec2_mask_as_the_asr_pipeline_asks(waveforms: dict[str, Array]) -> None:
    batch = [waveforms["speech"], waveforms["speech-1s"]]
    theirs = transformers.Wav2Vec2FeatureExtractor()
    expected = theirs(batch, sampling_rate=RATE, return_tensors="np", padding=True, return_attention_mask=True)
    assert difference(Wav2Vec2Features()(batch, return_attention_mask=True), expected) <= TOLERANCE
    masked = Wav2Vec2Features(return_attention_mask=True)
    assert sorted(masked(batch, return_attention_mask=False)) == ["input_values"]


def test_wav2vec2_batch_without_mask_keeps_each_waveform_as_it_is_alone(waveforms: dict[str, Array]) -> None:
    """transformers (`padding=True`, no mask) normalizes the padding with the samples, so a waveform
    changes with the batch it is in; the ASR pipeline's batching and this port do not."""
    batch = [waveforms["speech"], waveforms["speech-1s"]]
    theirs = transformers.Wav2Vec2FeatureExtractor()(batch, sampling_rate=RATE, return_tensors="np", padding=True)
    ours = Wav2Vec2Features()(batch)["input_values"]
    alone = Wav2Vec2Features()([batch[1]])["input_values"][0]
    np.testing.assert_array_equal(ours[1, : alone.size], alone)
    assert np.abs(theirs["input_values"][1, : alone.size] - alone).max() > 0.1


AST: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "default": ({}, None),
    "64-bins-100-frames-raw": ({"num_mel_bins": 64, "max_length": 100, "do_normalize": False}, ["speech-1s"]),
    "own-statistics": ({"mean": -6.5, "std": 3.25}, SHORT),
}


@pytest.mark.parametrize("case", AST)
def test_ast_matches_transformers_numpy_code(case: str, waveforms: dict[str, Array], tmp_path: Path) -> None:
    """torchaudio is not installed, so transformers takes its numpy code (the one ported)."""
    assert not is_speech_available()
    settings, names = AST[case]
    theirs = transformers.ASTFeatureExtractor(**settings)
    ours = features_from_config(config_of(theirs, tmp_path))
    assert isinstance(ours, ASTFeatures)
    batch = [*(waveforms[name] for name in names or waveforms), waveforms["speech"][:300]]
    expected = theirs(batch, sampling_rate=RATE, return_tensors="np")
    assert difference(ours(batch), expected) <= TOLERANCE
    json.dumps(ours.describe())


def test_ast_clip_shorter_than_a_frame_is_all_padding() -> None:
    """transformers' numpy code raises below 240 samples; no frame fits, as with torchaudio's Kaldi."""
    with pytest.raises(ValueError, match="negative dimensions"):
        transformers.ASTFeatureExtractor()([np.zeros(100, dtype=np.float32)], sampling_rate=RATE)
    got = ASTFeatures()([np.ones(100, dtype=np.float32), np.zeros(0, dtype=np.float32)])["input_values"]
    assert got.shape == (2, 1024, 128)
    np.testing.assert_allclose(got, (0 + 4.2677393) / (2 * 4.5689974), rtol=1e-6)


def test_configs_pick_their_extractor_or_say_why_not() -> None:
    assert isinstance(features_from_config({"feature_extractor_type": "WhisperFeatureExtractor"}), WhisperFeatures)
    legacy = features_from_config(
        {"feature_extractor_type": "WhisperFeatureExtractor", "n_samples": 3, "mel_filters": [[0.0]]}
    )
    assert isinstance(legacy, WhisperFeatures) and legacy.n_samples == 480_000
    assert legacy.mel_filters.shape == (201, 80)
    with pytest.raises(ArtifactError, match=r"SeamlessM4TFeatureExtractor.*supported: ASTFeatureExtractor"):
        features_from_config({"feature_extractor_type": "SeamlessM4TFeatureExtractor"})
    with pytest.raises(ArtifactError, match="None is not supported"):
        features_from_config({"sampling_rate": 16000})
    broken: list[dict[str, Any]] = [
        {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": "80"},
        {"feature_extractor_type": "WhisperFeatureExtractor", "padding_side": "middle"},
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "do_normalize": "yes"},
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 2},
        {"feature_extractor_type": "ASTFeatureExtractor", "mean": None},
        {"feature_extractor_type": "ASTFeatureExtractor", "max_length": 0},
    ]
    for config in broken:
        with pytest.raises(ArtifactError, match="config is not usable"):
            features_from_config(config)


def test_extractors_refuse_what_is_not_a_batch_of_mono_waveforms() -> None:
    for extractor in (WhisperFeatures(), Wav2Vec2Features(), ASTFeatures()):
        with pytest.raises(InvalidInput, match="no audio"):
            extractor([])
        with pytest.raises(InvalidInput, match="one channel"):
            extractor([np.zeros((2, 400), dtype=np.float32)])
    with pytest.raises(InvalidInput, match="no samples"):
        Wav2Vec2Features()([np.zeros(0, dtype=np.float32)])


# Decoding


def encode(samples: Array, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def snr(got: Array, reference: Array) -> float:
    """Signal to noise ratio in dB of `got` against `reference` (lengths must agree)."""
    assert got.shape == reference.shape
    error = got.astype(np.float64) - reference
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum(error**2)))


def below_7khz(samples: Array) -> Array:
    return np.asarray(sosfiltfilt(butter(10, 7000, fs=RATE, output="sos"), samples.astype(np.float64)))


@pytest.fixture(scope="module")
def stereo_44k(speech: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The speech at 44.1 kHz in two channels that differ by a 1 kHz tone: their mean is the speech."""
    up = soxr.resample(speech, RATE, 44_100, quality="VHQ")
    tone = (0.05 * np.sin(2 * np.pi * 1000 * np.arange(up.size) / 44_100)).astype(np.float32)
    return np.stack([up + tone, up - tone], axis=1)


FILES = {
    # name: (format, subtype, rate, least SNR in dB against the 16 kHz speech; measured in brackets)
    "wav-float": ("WAV", "FLOAT", 44_100, 38.0),  # [40.2]
    "flac-16bit": ("FLAC", "PCM_16", 44_100, 38.0),  # [40.2]
    "ogg-vorbis": ("OGG", "VORBIS", 44_100, 18.0),  # [20.7]
    "ogg-opus": ("OGG", "OPUS", 48_000, 20.0),  # [23.2]
    "mp3": ("MP3", "MPEG_LAYER_III", 44_100, 28.0),  # [30.9]
}


@pytest.mark.parametrize("name", FILES)
def test_files_decode_back_to_the_speech(
    name: str, speech: npt.NDArray[np.float32], stereo_44k: npt.NDArray[np.float32]
) -> None:
    """Stereo 44.1 kHz (Opus: 48 kHz) files back to mono 16 kHz: as many samples as the speech, and
    close to it. The lossless files are limited to 40 dB by the band above 7.3 kHz, which every
    resampler cuts (scipy's `resample_poly` too: 40.3 dB); the lossy ones by their codec. Taking the
    left channel (the tone is 1.5 times the speech's RMS) or the sum would score below 0 dB."""
    fmt, subtype, rate, least = FILES[name]
    samples = stereo_44k if rate == 44_100 else soxr.resample(stereo_44k, 44_100, rate, quality="VHQ")
    decoded = load_audio(encode(samples, rate, fmt, subtype), sampling_rate=RATE, max_seconds=30)
    assert decoded.dtype == np.float32 and decoded.shape == speech.shape
    assert snr(decoded, speech) >= least


def test_lossless_decoding_is_exact_below_the_resampling_band_edge(
    speech: npt.NDArray[np.float32], stereo_44k: npt.NDArray[np.float32]
) -> None:
    """Below 7 kHz, the FLAC file comes back at 77 dB: 16-bit quantization and soxr's ripple."""
    decoded = load_audio(encode(stereo_44k, 44_100, "FLAC"), sampling_rate=RATE, max_seconds=30)
    assert snr(below_7khz(decoded), below_7khz(speech)) >= 70


def test_channels_are_mixed_by_their_mean(speech: npt.NDArray[np.float32]) -> None:
    tone = (0.2 * np.sin(np.arange(speech.size) / 3)).astype(np.float32)
    stereo = np.stack([speech + tone, speech - tone], axis=1)
    decoded = load_audio(encode(stereo, RATE, "WAV", "FLOAT"), sampling_rate=RATE, max_seconds=30)
    np.testing.assert_allclose(decoded, speech, atol=1e-7)
    twin = load_audio(
        encode(np.stack([speech, speech], axis=1), RATE, "WAV", "FLOAT"), sampling_rate=RATE, max_seconds=30
    )
    np.testing.assert_array_equal(twin, speech)


def test_resampling_agrees_with_scipy_resample_poly(stereo_44k: npt.NDArray[np.float32]) -> None:
    """transformers' pipelines resample with torchaudio (not installed here; and the ASR pipeline of
    4.57 resamples nothing, passing the input rate twice). Against scipy's polyphase filter instead:
    max 0.0023 and RMS 5.5e-5 apart on speech of RMS 0.0235 (52.6 dB; 60 dB below 7 kHz), the
    two filters' transition bands differing above 7.3 kHz."""
    mono = stereo_44k.mean(axis=1, dtype=np.float32)
    ours = resample(mono, 44_100, RATE)
    assert ours.dtype == np.float32 and ours.size == round(mono.size * RATE / 44_100)
    theirs = resample_poly(mono.astype(np.float64), 160, 441)[: ours.size]
    assert snr(ours, theirs) >= 50
    assert snr(below_7khz(ours), below_7khz(theirs)) >= 56
    assert float(np.abs(ours - theirs).max()) <= 0.005
    assert resample(mono, RATE, RATE) is mono


def flac_streaminfo(data: bytes, total_samples: int, *, keep_frames: bool) -> bytes:
    """`data` (a FLAC file) with STREAMINFO's 36-bit total sample count replaced; without its audio
    frames unless `keep_frames`."""
    patched = bytearray(data)
    packed = int.from_bytes(patched[18:26], "big")
    patched[18:26] = ((packed & ~((1 << 36) - 1)) | total_samples).to_bytes(8, "big")
    end = 4
    while True:  # metadata blocks: last flag, type, 24-bit length
        last, length = patched[end] & 0x80, int.from_bytes(patched[end + 1 : end + 4], "big")
        end += 4 + length
        if last:
            return bytes(patched if keep_frames else patched[:end])


def test_long_audio_is_refused_from_its_header(speech: npt.NDArray[np.float32]) -> None:
    """A header claiming ten hours, with no audio after it: decoding would fail (`InvalidInput`);
    refused as too long (`Unprocessable`), it was never decoded. A real ten-minute WAV is refused
    in a fraction of the time decoding it takes."""
    ten_hours = flac_streaminfo(encode(speech, RATE, "FLAC"), 10 * 3600 * RATE, keep_frames=False)
    with pytest.raises(Unprocessable, match=r"lasts 36000\.0 s, more than the 30 s allowed"):
        load_audio(ten_hours, sampling_rate=RATE, max_seconds=30)
    with pytest.raises(InvalidInput):
        load_audio(ten_hours, sampling_rate=RATE, max_seconds=36001)

    ten_minutes = encode(np.tile(speech, 60), RATE, "WAV", "PCM_16")
    start = time.perf_counter()
    with pytest.raises(Unprocessable, match=r"lasts 597\.8 s, more than the 30 s allowed"):
        load_audio(ten_minutes, sampling_rate=RATE, max_seconds=30)
    refused = time.perf_counter() - start
    start = time.perf_counter()
    load_audio(ten_minutes, sampling_rate=8000, max_seconds=600)
    assert refused * 20 < time.perf_counter() - start

    unknown = flac_streaminfo(encode(speech, RATE, "FLAC"), 0, keep_frames=True)
    with pytest.raises(Unprocessable, match="does not declare its length"):
        load_audio(unknown, sampling_rate=RATE, max_seconds=30)


def test_undecodable_bytes_are_invalid_input(speech: npt.NDArray[np.float32]) -> None:
    flac = encode(speech, RATE, "FLAC")
    cases = {
        b"": "empty",
        b"not audio at all": "could not be decoded.*Format not recognised",
        np.random.default_rng(0).bytes(4096): "could not be decoded",
        b"\xff\xfb\x90\x00" * 1000: "could not be decoded.*no complete audio frame",
        flac[: len(flac) // 2]: "could not be decoded.*lost sync",
        encode(speech[:1000], RATE, "AIFF"): "the audio is AIFF, not one of WAV, FLAC, OGG, MP3",
        encode(np.zeros(0, dtype=np.float32), RATE, "WAV"): "holds no samples",
        encode(np.zeros(1, dtype=np.float32), 44_100, "WAV"): "too short.*44100 Hz make none at 16000 Hz",
        encode(np.array([0.1, np.nan, 0.2], dtype=np.float32), RATE, "WAV", "FLOAT"): "not finite",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidInput, match=message) as caught:
            load_audio(data, sampling_rate=RATE, max_seconds=30)
        assert "BytesIO" not in str(caught.value) and "0x" not in str(caught.value)


def test_absurd_sampling_rates_are_refused() -> None:
    wav = bytearray(encode(np.zeros(100, dtype=np.float32), RATE, "WAV", "PCM_16"))
    wav[24:28] = (2_000_000).to_bytes(4, "little")
    with pytest.raises(Unprocessable, match="2000000 Hz; at most 384000 Hz"):
        load_audio(bytes(wav), sampling_rate=RATE, max_seconds=30)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_silence_and_tiny_clips_decode(fmt: str) -> None:
    silence = load_audio(encode(np.zeros(22_050, dtype=np.float32), 22_050, fmt), sampling_rate=RATE, max_seconds=30)
    assert silence.shape == (RATE,) and silence.dtype == np.float32
    assert float(np.abs(silence).max()) <= 1e-4
    tiny = load_audio(encode(np.full(5, 0.25, dtype=np.float32), RATE, fmt), sampling_rate=RATE, max_seconds=30)
    assert tiny.shape == (5,)


def test_formats_and_media_types() -> None:
    assert FORMATS == ("WAV", "FLAC", "OGG", "MP3")
    assert "audio/webm" not in MEDIA_TYPES and {"audio/wav", "audio/flac", "audio/ogg", "audio/mpeg"} <= set(
        MEDIA_TYPES
    )
    assert all(media.startswith("audio/") for media in MEDIA_TYPES)


def test_base64_audio(speech: npt.NDArray[np.float32]) -> None:
    data = encode(speech[:1600], RATE, "FLAC")
    text = base64.b64encode(data).decode()
    assert decode_base64_audio(text) == data
    assert decode_base64_audio(f"data:audio/flac;base64,{text}") == data
    assert decode_base64_audio(f"  DATA:Audio/FLAC;BASE64,{text[:40]}\n{text[40:]}  ") == data
    assert decode_base64_audio(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    for bad, message in {
        "data:image/png;base64,AAAA": "not audio",
        "data:audio/wav,AAAA": "must read",
        "not*base64": "not valid base64",
        "": "empty",
    }.items():
        with pytest.raises(InvalidInput, match=message):
            decode_base64_audio(bad)
