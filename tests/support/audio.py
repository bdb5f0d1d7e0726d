"""Tiny random audio models, saved as ordinary model directories.

Like `tests.support.vision` for images: nothing reaches the Hub. Each directory holds a random
`transformers` model with a small config (hidden sizes 32 to 64, two layers), its feature
extractor's `preprocessor_config.json` with the settings of the real checkpoints (16 kHz; Whisper's
80 mel bins over 30 s windows), the tokenizer of the speech recognisers (Whisper's byte-level BPE
learnt on the spot with Whisper's special and timestamp tokens; wav2vec2's characters), Whisper's
`generation_config.json`, and a README whose front matter declares the `pipeline_tag`. The same
call writes the same bytes. `transformers.pipeline(task, model=str(directory))` loads every one of
them and runs on 16 kHz numpy audio (torchaudio, which the pipelines resample with, is not needed).

The architectures, per task (`AUDIO_ARCHS`):
- automatic-speech-recognition: `whisper` (multilingual: detects the language, transcribes or
  translates), `whisper-en` (English only, like `openai/whisper-tiny.en`), `wav2vec2` and `hubert`
  (CTC over characters, `|` between words, like `facebook/wav2vec2-base-960h`).
- audio-classification: `wav2vec2` (`Wav2Vec2ForSequenceClassification`) and `ast`
  (`ASTForAudioClassification` over 32 Kaldi filter banks of 1.28 s).

transformers' speech recognition pipeline decodes Whisper with 5 beams unless told otherwise
(`generate_kwargs={"num_beams": 1}` for greedy), and runs wav2vec2 and HuBERT without an attention
mask: padded in a batch, a clip gets other logits than alone (the exported graphs take no mask
either).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

SAMPLING_RATE = 16_000
KEYWORD_LABELS = ["yes", "no", "up", "down"]
"""The classifiers' labels (the first four of Speech Commands, as in SUPERB's keyword spotting)."""

AUDIO_ARCHS: dict[str, tuple[str, ...]] = {
    "automatic-speech-recognition": ("whisper", "whisper-en", "wav2vec2", "hubert"),
    "audio-classification": ("wav2vec2", "ast"),
}
"""Task -> the architectures `build_audio` makes for it."""

HEADS: dict[tuple[str, str], str] = {
    ("automatic-speech-recognition", "whisper"): "WhisperForConditionalGeneration",
    ("automatic-speech-recognition", "whisper-en"): "WhisperForConditionalGeneration",
    ("automatic-speech-recognition", "wav2vec2"): "Wav2Vec2ForCTC",
    ("automatic-speech-recognition", "hubert"): "HubertForCTC",
    ("audio-classification", "wav2vec2"): "Wav2Vec2ForSequenceClassification",
    ("audio-classification", "ast"): "ASTForAudioClassification",
}
"""The transformers class of each model; the pipelines pick the same through the Auto classes."""

OPTIMUM_TASKS: dict[tuple[str, str], str] = {
    **{key: key[0] for key in HEADS},
    ("automatic-speech-recognition", "whisper"): "automatic-speech-recognition-with-past",
    ("automatic-speech-recognition", "whisper-en"): "automatic-speech-recognition-with-past",
}
"""The task optimum exports each (task, arch) for: Whisper with its key/value cache (an encoder,
a decoder for the first step and a decoder that takes the cache)."""

SPEECH_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "turn the volume up and the lights down",
    "yes no up down left right on off stop go",
    "please call stella ask her to bring these things with her from the store",
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
]

WHISPER_LANGUAGES = ("en", "zh", "de", "es", "ru", "ko", "fr", "ja")
"""The first eight of Whisper's 99 languages, in Whisper's order (its language tokens' order)."""


def _labels(labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


# ---------------------------------------------------------------------------------------------
# Whisper


def _whisper_specials() -> list[str]:
    """Whisper's special tokens in Whisper's order, `<|notimestamps|>` last: the tokenizers find
    the first timestamp token as the last special token's id + 1. The English-only checkpoints
    keep the language and task tokens too (and never emit them)."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def _whisper_tokenizer(merges_count: int = 200) -> Any:
    """Whisper's layout on a vocabulary learnt here: GPT-2's byte-level BPE (the 256 byte symbols,
    then `merges_count` merges learnt reproducibly on `SPEECH_CORPUS` by
    `tests.support.vision._bpe_merges`), `<|endoftext|>` as the last entry of `vocab.json`, then the
    special tokens as added special tokens and the 1501 timestamps `<|0.00|>` .. `<|30.00|>` as
    added ordinary tokens, as in `openai/whisper-tiny`. Written as `vocab.json` and `merges.txt`
    first so that both `WhisperTokenizer` and `WhisperTokenizerFast` load the saved directory."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import WhisperTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    from tests.support.vision import _bpe_merges

    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = SPEECH_CORPUS + [" " + text for text in SPEECH_CORPUS]
    words = [list(word) for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)]
    merges = _bpe_merges(words, merges_count)
    tokens = [*bytes_to_unicode().values(), *(a + b for a, b in merges), "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    specials = _whisper_specials()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = WhisperTokenizerFast(  # type: ignore[no-untyped-call]
            vocab_file=str(vocab_file),
            merges_file=str(merges_file),
            pad_token="<|endoftext|>",
            additional_special_tokens=specials,
            model_max_length=1024,
        )
    tokenizer.add_tokens(
        [AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False) for i in range(1501)]
    )
    return tokenizer


def _whisper_generation_config(tokenizer: Any, multilingual: bool, max_length: int) -> Any:
    """The generation config of `openai/whisper-tiny` (multilingual) or `whisper-tiny.en`, on this
    vocabulary: the prompt `<|startoftranscript|>` [language, task] `<|notimestamps|>` through
    `forced_decoder_ids` (language `None`: detected), the task and language tables of the
    multilingual one, the tokens it may never emit (`suppress_tokens`: Whisper's punctuation and
    prompt tokens, and here also the bytes outside printable ASCII, which the random model would
    otherwise emit as broken UTF-8; a runtime that ignores the list gives another text), the
    space and `<|endoftext|>` it may not start with (`begin_suppress_tokens`). `max_length` is
    lower than the real 448 so that a transcript that never ends costs few steps."""
    from transformers import GenerationConfig
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    no_timestamps = ids("<|notimestamps|>")
    unprintable = [ids(symbol) for byte, symbol in bytes_to_unicode().items() if not 0x20 <= byte <= 0x7E]
    punctuation = [ids(c) for c in '"#()*+/:;<=>@[\\]^_`{|}~']  # printable ASCII: its own byte symbol
    prompts = [
        ids(t) for t in ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>")
    ]
    settings: dict[str, Any] = dict(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        begin_suppress_tokens=[ids("Ġ"), eot],
        suppress_tokens=sorted({*unprintable, *punctuation, *prompts}),
        no_timestamps_token_id=no_timestamps,
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        alignment_heads=[[1, 0], [1, 2]],
    )
    if multilingual:
        settings["forced_decoder_ids"] = [[1, None], [2, ids("<|transcribe|>")]]
        settings["lang_to_id"] = {f"<|{code}|>": ids(f"<|{code}|>") for code in WHISPER_LANGUAGES}
        settings["task_to_id"] = {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")}
    else:
        settings["forced_decoder_ids"] = [[1, no_timestamps]]
    return GenerationConfig(**settings)


WHISPER_EOT_BIAS = 10.0
"""The logit `<|endoftext|>` gets on top of its dot product (see `_tame_whisper`): with seed 0,
greedy transcripts of `sample_audio` clips end after 1 to 30 tokens, and a few run to
`max_length`."""


def _tame_whisper(model: Any, tokenizer: Any) -> None:
    """Make the random Whisper decode like a trained one in the ways a runtime can get wrong: it
    ends (`<|endoftext|>`) after a number of tokens that depends on the audio, and it does not emit
    timestamps unless asked to. Raw, it repeats one token up to `max_length`, and the timestamp
    tokens it emits make `generate` seek through the window again and again (Whisper's long-form
    loop), which no runtime should have to copy.

    - The decoder's last layer norm keeps its last dimension at 1 (weight 0, bias 1), which turns
      that column of the tied output embedding into a per-token bias; `<|endoftext|>`'s is
      `WHISPER_EOT_BIAS`.
    - The timestamp rows of the embedding are scaled by 0.01: their logits stay near 0 while
      the text tokens' spread over about +-10, so greedy decoding never picks one unprompted,
      and with `return_timestamps=True` the timestamp rule still forces them."""
    import torch

    timestamp_begin = tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    embed = model.model.decoder.embed_tokens.weight
    norm = model.model.decoder.layer_norm
    with torch.no_grad():
        norm.weight[-1] = 0.0
        norm.bias[-1] = 1.0
        embed[tokenizer.eos_token_id, -1] = WHISPER_EOT_BIAS
        embed[timestamp_begin:] *= 0.01


def _whisper(out: Path, multilingual: bool, seed: int) -> None:
    """Whisper-tiny's shape at a tenth of its width (d_model 64, 4 heads, 2 + 2 layers) with the
    real audio front end: 80 mel bins, 30 s windows of 3000 frames (the encoder takes exactly
    that many, as `max_source_positions` 1500 after its stride-2 convolution). Both variants get
    the same weights (same seed and vocabulary); only the generation config differs."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    tokenizer = _whisper_tokenizer()
    eot, sot = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    config = WhisperConfig(  # type: ignore[no-untyped-call]
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        init_std=0.5,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    _tame_whisper(model, tokenizer)
    model.generation_config = _whisper_generation_config(tokenizer, multilingual, max_length=64)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=80, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=30, n_fft=400
    ).save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# CTC and classifiers


def _ctc_tokenizer() -> Any:
    """`Wav2Vec2CTCTokenizer` as in `facebook/wav2vec2-base-960h`: `<pad>` (also CTC's blank)
    `<s>` `</s>` `<unk>`, `|` between words, then upper-case letters and the apostrophe."""
    from transformers import Wav2Vec2CTCTokenizer

    letters = sorted({c.upper() for text in SPEECH_CORPUS for c in text if c.isalpha()} | {"'"})
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *letters])}
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab))
        return Wav2Vec2CTCTokenizer(  # type: ignore[no-untyped-call]
            str(vocab_file), word_delimiter_token="|", do_lower_case=False
        )


def _wav2vec2_feature_extractor() -> Any:
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )


def _wav2vec2_config(arch: str, **head: Any) -> Any:
    """wav2vec2-base's layout, small: three convolutions of 32 channels whose strides (5, 8, 8)
    multiply to the real 320 samples a frame (50 frames a second), group norm on the first
    (no attention mask, as in the base models), two transformer layers of 32."""
    import transformers as tf

    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        initializer_range=0.2,
        **head,
    )
    if arch == "wav2vec2":
        return tf.Wav2Vec2Config(**settings)  # type: ignore[no-untyped-call]
    if arch == "hubert":
        return tf.HubertConfig(**settings)  # type: ignore[no-untyped-call]
    raise KeyError(arch)


def _ast(out: Path, seed: int) -> None:
    """AST over 32 mel bins and 128 frames (1.28 s), patches of 16 every 10 in both directions:
    two frequency rows of 12 patches. The feature extractor's `num_mel_bins`/`max_length` must
    equal the model's."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(  # type: ignore[no-untyped-call]
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        num_mel_bins=32,
        max_length=128,
        initializer_range=0.2,
        **_labels(KEYWORD_LABELS),
    )
    torch.manual_seed(seed)
    model = ASTForAudioClassification(config).eval()
    model.save_pretrained(out)
    ASTFeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=SAMPLING_RATE, num_mel_bins=32, max_length=128, do_normalize=True
    ).save_pretrained(out)


def build_audio(task: str, arch: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random `arch` model for `task` into `out` (model, feature extractor, tokenizer
    for speech recognition, generation config for Whisper, README with the pipeline tag) and
    return `out`."""
    import torch
    import transformers

    if arch not in AUDIO_ARCHS.get(task, ()):
        raise KeyError(f"no tiny audio model for {task} / {arch}; see AUDIO_ARCHS")
    out.mkdir(parents=True, exist_ok=True)
    if arch in ("whisper", "whisper-en"):
        _whisper(out, multilingual=arch == "whisper", seed=seed)
    elif arch == "ast":
        _ast(out, seed)
    else:
        head = getattr(transformers, HEADS[task, arch])
        if task == "automatic-speech-recognition":
            tokenizer = _ctc_tokenizer()
            config = _wav2vec2_config(arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        else:
            tokenizer = None
            config = _wav2vec2_config(arch, classifier_proj_size=16, **_labels(KEYWORD_LABELS))
        torch.manual_seed(seed)
        head(config).eval().save_pretrained(out)
        extractor = _wav2vec2_feature_extractor()
        if tokenizer is None:
            extractor.save_pretrained(out)
        else:
            transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    (out / "README.md").write_text(
        f"---\npipeline_tag: {task}\nlibrary_name: transformers\n---\n# tiny {arch} {task}\n"
    )
    return out


def build_all_audio(root: Path) -> dict[tuple[str, str], Path]:
    """Every audio task in every architecture, under `root/<arch>-<task>`."""
    return {
        (task, arch): build_audio(task, arch, root / f"{arch}-{task}")
        for task, archs in AUDIO_ARCHS.items()
        for arch in archs
    }


def sample_audio(seconds: float = 1.0, seed: int = 0, sampling_rate: int = SAMPLING_RATE) -> Any:
    """A deterministic float32 mono waveform in [-1, 1] (a gliding tone with harmonics, bursts of
    noise as "consonants", a fade in and out), so that no test needs a file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = 120 + 40 * seed + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + seed)
    noise = rng.normal(0, 0.3, t.shape) * (np.sin(2 * np.pi * 1.5 * t + 1) > 0.8)
    fade = np.minimum(1, np.minimum(t, t[-1] - t) / 0.05) if t.size else t
    wave = 0.3 * (voiced * syllables + noise) * fade
    return np.clip(wave, -1, 1).astype(np.float32)
