"""Client bytes to a float32 mono waveform at the model's sampling rate, as transformers' audio
pipelines make it with ffmpeg, here with libsndfile (soundfile) and libsoxr (soxr) and no ffmpeg.

The duration is refused from the header, before any sample is decoded.
"""

from __future__ import annotations

import io
import re

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from runtime.encoded import decode_base64_file
from runtime.errors import InvalidInput, Unprocessable

FORMATS = ("WAV", "FLAC", "OGG", "MP3")
"""What `load_audio` decodes: WAV (PCM or float, also WAVE_FORMAT_EXTENSIBLE and RF64), FLAC,
Ogg (Vorbis or Opus) and MP3. libsndfile opens more (AIFF, AU, CAF, ...); they are refused."""

MEDIA_TYPES = (
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/flac",
    "audio/x-flac",
    "audio/ogg",
    "audio/mpeg",
    "audio/mp3",
)
"""The content types of `FORMATS`. Not `audio/webm` nor `audio/mp4` (what browsers record):
libsndfile decodes neither container."""

MAX_SAMPLE_RATE = 384_000
DECODED_RATE = 48_000
"""Samples decoded per second allowed: a file may hold at most `max_seconds * DECODED_RATE` frames,
so a high rate cannot multiply what the length limit lets a request hold in memory."""
"""The highest sampling rate decoded; a header may claim any rate, and the work grows with it."""

RESAMPLE_QUALITY = "HQ"
"""soxr's 20-bit quality: librosa's default resampler (`soxr_hq`, since librosa 0.10), which
`datasets` before 4.0 used to bring audio columns to a model's rate. 'VHQ' (28-bit) takes 2.5
times as long and changes a 10 s clip of speech by at most 2e-4, below what 16-bit audio resolves."""

_LIBSNDFILE_FORMATS = {"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3"}
_BLOCK = 1 << 16
_PREFIX = re.compile(r"^(?:Error(?: opening <[^>]*>)?\s*:\s*)+")
_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count for a stream that does not declare its length


def load_audio(data: bytes, *, sampling_rate: int, max_seconds: float) -> npt.NDArray[np.float32]:
    """Decode `data` to float32 mono samples at `sampling_rate`, as `ffmpeg -ac 1 -ar <rate> -f f32le`
    makes them for transformers' `ffmpeg_read`.

    Cases:
    - empty bytes, a format outside `FORMATS`, or bytes libsndfile cannot decode (a truncated FLAC
      stream too; truncated WAV, Ogg and MP3 decode to the samples they hold): `InvalidInput`;
    - a file that holds no samples, or too few to make one at `sampling_rate`, or non-finite float
      samples: `InvalidInput`;
    - longer than `max_seconds`: `Unprocessable`, from the header, before any sample is decoded (and
      while decoding, at the limit, should a stream hold more samples than its header declares);
      more frames than `max_seconds` at `DECODED_RATE` (a high rate would multiply the memory),
      a sampling rate above `MAX_SAMPLE_RATE`, or a FLAC stream that does not declare its length
      (what an encoder writing to a pipe leaves; libsndfile cannot read one): `Unprocessable`;
    - several channels: their mean. transformers' ASR pipeline takes the mean of a (channels,
      samples) array too (`inputs.mean(axis=0)`); its bytes path, ffmpeg's `-ac 1` with float
      output, sums them times sqrt(1/2), which is sqrt(2) times the mean (3 dB louder; FFmpeg
      normalizes the downmix only for integer output). The mean keeps a mono recording stored as
      two equal channels exactly as it was;
    - another rate: resampled with soxr (`RESAMPLE_QUALITY`; ffmpeg resamples with swresample);
    - silence and clips of a few samples decode like any other audio.
    """
    if not data:
        raise InvalidInput("the audio is empty: no bytes were sent")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            rate = _check_header(file, max_seconds)
            mono = _read_mono(file, limit=int(max_seconds * rate), max_seconds=max_seconds)
    except soundfile.SoundFileError as exc:
        reason = _PREFIX.sub("", str(exc)).rstrip(".")
        if "regular file" in reason:  # libsndfile's words when no MP3 frame decodes
            reason = "no complete audio frame was found"
        raise InvalidInput(f"the audio could not be decoded ({', '.join(FORMATS)} are accepted): {reason}") from exc
    if not mono.size:
        raise InvalidInput("the audio holds no samples")
    if not np.isfinite(mono).all():
        raise InvalidInput("the audio holds samples that are not finite numbers (NaN or infinity)")
    if rate != sampling_rate:
        mono = resample(mono, rate, sampling_rate)
        if not mono.size:
            raise InvalidInput(f"the audio is too short: its samples at {rate} Hz make none at {sampling_rate} Hz")
    return mono


def _check_header(file: soundfile.SoundFile, max_seconds: float) -> int:
    """The file's sampling rate, once its format, rate and duration are known to be acceptable."""
    if file.format not in _LIBSNDFILE_FORMATS:
        raise InvalidInput(f"the audio is {file.format}, not one of {', '.join(FORMATS)}")
    rate = int(file.samplerate)
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise Unprocessable(f"the audio is sampled at {rate} Hz; at most {MAX_SAMPLE_RATE} Hz is decoded")
    if file.frames == _UNKNOWN_LENGTH:
        raise Unprocessable(f"the {file.format} audio does not declare its length; send a complete file")
    if file.frames > max_seconds * rate:
        raise Unprocessable(f"the audio lasts {file.frames / rate:.1f} s, more than the {max_seconds:g} s allowed")
    if file.frames > max_seconds * DECODED_RATE:
        raise Unprocessable(
            f"the audio holds {file.frames} samples ({file.frames / rate:.1f} s at {rate} Hz); at most "
            f"{max_seconds:g} s at {DECODED_RATE} Hz are decoded: send it at a lower rate"
        )
    return rate


def _read_mono(file: soundfile.SoundFile, *, limit: int, max_seconds: float) -> npt.NDArray[np.float32]:
    """At most `limit` frames, each the mean of its channels, read a block at a time so that memory
    grows with the mono signal, not with the channel count a header claims."""
    blocks: list[npt.NDArray[np.float32]] = []
    count = 0
    while True:
        block = file.read(min(_BLOCK, limit + 1 - count), dtype="float32", always_2d=True)
        if not len(block):
            break
        blocks.append(block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32))
        count += len(block)
        if count > limit:
            raise Unprocessable(f"the audio lasts more than the {max_seconds:g} s allowed")
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def resample(waveform: npt.NDArray[np.float32], rate: int, sampling_rate: int) -> npt.NDArray[np.float32]:
    """A mono float32 waveform from `rate` to `sampling_rate` with soxr at `RESAMPLE_QUALITY`, whole
    (not streamed), so that it starts and ends where the input does: `len * sampling_rate / rate`
    samples rounded to the nearest, which can be none for a few input samples.

    transformers' pipelines resample arrays with torchaudio's windowed sinc instead, and only when
    torchaudio is installed; the ASR pipeline of 4.57 passes the input rate twice to it, so resamples
    nothing (fixed by transformers PR #41298)."""
    if rate == sampling_rate:
        return waveform
    return np.asarray(soxr.resample(waveform, rate, sampling_rate, quality=RESAMPLE_QUALITY), dtype=np.float32)


def decode_base64_audio(text: str) -> bytes:
    """The bytes of a base64 audio file, or a `data:audio/...;base64,` URL (`decode_base64_file`)."""
    return decode_base64_file(text, "audio")
