"""Compiling generative models: ONNX with the key/value cache, validated by decoding.

optimum exports decoder-only models as one merged `model.onnx` (its past inputs take length 0 on
the first step) and encoder-decoder models as `encoder_model.onnx` plus a merged decoder. The
gate compares, on a few inputs, the first step's logits with PyTorch's (max abs diff, cosine),
and the tokens of greedy decoding with PyTorch `generate`: they must be the same tokens. The
inputs are text prompts, or for speech (Whisper) synthetic sounds through the model's feature
extractor, decoded with the runtime's own Whisper prompt and suppressed tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compile import validate
from compile.errors import ValidationFailed
from compile.quantize import quantize_decoding_graph
from compile.tasks import ExportSpec
from runtime.artifact import TokenizerInfo
from runtime.generation import Generator, Sampling
from runtime.session import OnnxModel, SessionOptions

SPEECH_CLASS = "AutoModelForSpeechSeq2Seq"
SPEECH_SOUNDS = 3

PROMPTS = ["Hello, my name is", "The weather today is", "Compiling models to ONNX makes inference"]
NEW_TOKENS = 12
LOGITS_MAX_ABS = 1e-3  # relative to the largest logit, when that is above 1
INT8_MIN_COSINE = 0.99


def greedy_reference(model: Any, prompt_ids: list[int], eos: list[int]) -> tuple[list[int], np.ndarray]:
    import torch

    tensor = torch.tensor([prompt_ids])
    ids = {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}  # what the graph takes
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, repetition_penalty=1.0,
            eos_token_id=eos or None, pad_token_id=(eos or [0])[0],
        )  # fmt: skip
        if model.config.is_encoder_decoder:
            start = torch.tensor([[model.config.decoder_start_token_id]])
            logits = model(**ids, decoder_input_ids=start).logits[0, -1]
            tokens = out[0, 1:].tolist()
        else:
            logits = model(**ids).logits[0, -1]
            tokens = out[0, ids["input_ids"].shape[1] :].tolist()
    return tokens, logits.float().numpy()


def build(
    model_dir: Path,
    export_dir: Path,
    spec: ExportSpec,
    artifact: Path,
    info_of: Any,
    progress: Any,
    *,
    int8: bool = False,
) -> tuple[dict[str, str], TokenizerInfo, validate.Figures, list[str], dict[str, Any] | None]:
    """Validate the export in `export_dir` (quantized first, for `int8`) and move its graphs into
    `artifact`; the last value describes a speech model's feature extractor (None for text)."""
    import json

    import transformers

    speech = spec.auto_class == SPEECH_CLASS
    seq2seq = speech or spec.optimum_task.startswith("text2text")
    graphs = (
        {"decoder": "decoder_model_merged.onnx", "encoder": "encoder_model.onnx"}
        if seq2seq
        else {"decoder": "model.onnx"}
    )
    if int8:
        with progress.step("quantizing the graphs to int8 (dynamic, per channel)"):
            for name in graphs.values():
                quantized = export_dir / f"int8-{name}"
                quantize_decoding_graph(export_dir / name, quantized)
                for file in export_dir.glob(name + "*"):
                    file.unlink()
                for file in export_dir.glob(quantized.name + "*"):
                    file.rename(export_dir / file.name.replace(quantized.name, name))
    with progress.step("decoding with PyTorch and with the compiled graphs"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
        torch_model = getattr(transformers, spec.auto_class).from_pretrained(model_dir).eval()
        info = info_of(tokenizer, torch_model.config)
        config = json.loads((export_dir / "config.json").read_text())
        options = SessionOptions()
        decoder = OnnxModel(export_dir / graphs["decoder"], options)
        encoder = OnnxModel(export_dir / graphs["encoder"], options) if seq2seq else None
        generator = Generator(decoder, encoder, config)
        if speech:
            cases, features = _speech_cases(model_dir, torch_model, generator, config)
        elif is_tapex(tokenizer):
            cases, features = _tapex_cases(model_dir, export_dir, torch_model, tokenizer, info, generator), None
        else:
            cases, features = _text_cases(torch_model, tokenizer, generator), None
        lines, same, max_abs, min_cos = [], 0, 0.0, 1.0
        for name, (want, reference), (got, first) in cases:
            scale = max(1.0, float(np.abs(reference).max()))
            max_abs = max(max_abs, float(np.abs(first - reference).max()) / scale)
            min_cos = min(min_cos, float(first @ reference / (np.linalg.norm(first) * np.linalg.norm(reference))))
            same += int(got == want)
            if got != want:
                lines.append(f"greedy decoding of {name} differs: PyTorch {want}, compiled {got}")
    if int8:
        passed = same == len(cases) and min_cos >= INT8_MIN_COSINE
        gate = f"same greedy tokens as PyTorch generate, first-step logits cosine >= {INT8_MIN_COSINE:g}"
    else:
        passed = same == len(cases) and max_abs <= LOGITS_MAX_ABS
        gate = f"same greedy tokens as PyTorch generate, first-step logits max abs diff <= {LOGITS_MAX_ABS:g} (scaled)"
    figures = validate.Figures(gate, passed, len(cases), max_abs, min_cos, same / len(cases))
    lines.insert(0, validate.report("int8-none" if int8 else "fp32-none", figures))
    if not passed:
        raise ValidationFailed("the compiled model does not decode like PyTorch:\n  " + "\n  ".join(lines))
    for name in graphs.values():
        for file in export_dir.glob(name + "*"):  # the graph and its external data, if any
            shutil.move(file, artifact / file.name)
    return graphs, info, figures, lines, features


Case = tuple[str, tuple[list[int], np.ndarray], tuple[list[int], np.ndarray]]


def _text_cases(torch_model: Any, tokenizer: Any, generator: Generator) -> list[Case]:
    """Each prompt's greedy tokens and first-step logits, from PyTorch and from the graphs."""
    return [_decoded(repr(prompt), tokenizer(prompt)["input_ids"], torch_model, generator) for prompt in PROMPTS]


def _decoded(name: str, ids: list[int], torch_model: Any, generator: Generator) -> Case:
    eos = torch_model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, list) else ([] if eos is None else [int(eos)])
    want = greedy_reference(torch_model, ids, eos)
    steps = list(generator.run(ids, Sampling(max_new_tokens=NEW_TOKENS, eos_token_ids=tuple(eos))))
    first = steps[0].logits
    assert first is not None
    return name, want, ([s.token_id for s in steps], first)


def is_tapex(tokenizer: Any) -> bool:
    """A TAPEX model (BART over linearized tables) has transformers' `TapexTokenizer`."""
    return type(tokenizer).__name__ == "TapexTokenizer"


def _tapex_cases(
    model_dir: Path, export_dir: Path, torch_model: Any, tokenizer: Any, info: TokenizerInfo, generator: Generator
) -> list[Case]:
    """TAPEX: the questions of `compile.questions` about its table, encoded by the runtime's TAPEX
    port over the fast BART tokenizer written here as `tokenizer.json` (what the runtime reads), then
    decoded by PyTorch and by the graphs from the same ids. (The port's encodings equal
    `TapexTokenizer`'s: tests/test_tapex.py.)"""
    import transformers

    from compile.questions import TABLE, TABLE_QUESTIONS
    from runtime.tables.tapex import TapexEncoder, Truncation
    from runtime.text import TextTokenizer

    fast = transformers.BartTokenizerFast(
        vocab_file=str(model_dir / "vocab.json"), merges_file=str(model_dir / "merges.txt")
    )  # type: ignore[no-untyped-call]
    fast.backend_tokenizer.save(str(export_dir / "tokenizer.json"))
    encoder = TapexEncoder(
        TextTokenizer(export_dir / "tokenizer.json", info),
        do_lower_case=bool(getattr(tokenizer, "do_lower_case", True)),
        max_cell_length=int(getattr(tokenizer, "max_cell_length", 15)),
    )
    return [
        _decoded(repr(question), encoder.encode(TABLE, question, Truncation.TOKENS)[1], torch_model, generator)
        for question in TABLE_QUESTIONS
    ]


def _speech_cases(
    model_dir: Path, torch_model: Any, generator: Generator, config: dict[str, Any]
) -> tuple[list[Case], dict[str, Any]]:
    """Synthetic sounds through the model's feature extractor: PyTorch `generate` (its defaults)
    against the runtime's Whisper decoding, and the features' description for the manifest."""
    import json

    import torch
    import transformers

    from compile.exporters import synthetic_sounds
    from runtime.audio import features_from_config
    from runtime.audio.whisper import Decoding, WhisperGeneration, generate

    served = features_from_config(json.loads((model_dir / "preprocessor_config.json").read_text()))
    extractor = transformers.AutoFeatureExtractor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    generation = WhisperGeneration.from_config(torch_model.generation_config.to_dict(), config)
    cases = []
    for index, sound in enumerate(synthetic_sounds(SPEECH_SOUNDS, seed=0, rate=served.sampling_rate)):
        features = np.asarray(
            extractor(sound, sampling_rate=served.sampling_rate, return_tensors="np")["input_features"]
        )
        greedy = Decoding(language=None, task=None, num_beams=1, max_new_tokens=NEW_TOKENS)
        prompt, got, _ = generate(generator, generation, features, greedy)
        _, context = generator.start(prompt, {"input_features": features})
        first = generator.next_logits(prompt, context)
        with torch.inference_mode():
            sequence = torch_model.generate(
                torch.from_numpy(features), max_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False
            )[0].tolist()
            logits = torch_model(torch.from_numpy(features), decoder_input_ids=torch.tensor([prompt])).logits[0, -1]
        want = sequence[len(prompt) :] if sequence[: len(prompt)] == prompt else sequence
        cases.append((f"sound {index}", (want, logits.float().numpy()), (got, first)))
    return cases, served.describe()
