"""Audio for the speech and sound tasks: client bytes to a float32 mono waveform at the model's rate
(`decode`), and the audio feature extractors of transformers 4.57 ported to numpy (`features`).

Serving never imports torch or transformers: the compile step saves the extractor's
`preprocessor_config.json`, and `features_from_config` rebuilds the same steps from it.
"""

from __future__ import annotations

from runtime.audio.decode import FORMATS, MEDIA_TYPES, decode_base64_audio, load_audio, resample
from runtime.audio.features import (
    ASTFeatures,
    AudioFeatures,
    Wav2Vec2Features,
    WhisperFeatures,
    features_from_config,
)

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "ASTFeatures",
    "AudioFeatures",
    "Wav2Vec2Features",
    "WhisperFeatures",
    "decode_base64_audio",
    "features_from_config",
    "load_audio",
    "resample",
]
