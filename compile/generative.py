"""Compiling generative models: ONNX with the key/value cache, validated by decoding.

optimum exports decoder-only models as one merged `model.onnx` (its past inputs take length 0 on
the first step) and encoder-decoder models as `encoder_model.onnx` plus a merged decoder. The
gate compares, on a few prompts, the first step's logits with PyTorch's (max abs diff, cosine),
and the tokens of greedy decoding with PyTorch `generate`: they must be the same tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compile import validate
from compile.errors import ValidationFailed
from compile.tasks import ExportSpec
from runtime.artifact import TokenizerInfo
from runtime.generation import Generator, Sampling
from runtime.session import OnnxModel, SessionOptions

PROMPTS = ["Hello, my name is", "The weather today is", "Compiling models to ONNX makes inference"]
NEW_TOKENS = 12
LOGITS_MAX_ABS = 1e-3  # relative to the largest logit, when that is above 1


def greedy_reference(model: Any, tokenizer: Any, prompt: str, eos: list[int]) -> tuple[list[int], np.ndarray]:
    import torch

    encoded = tokenizer(prompt, return_tensors="pt")
    ids = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}  # what the graph takes
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
    model_dir: Path, export_dir: Path, spec: ExportSpec, artifact: Path, info_of: Any, progress: Any
) -> tuple[dict[str, str], TokenizerInfo, validate.Figures, list[str]]:
    """Validate the export in `export_dir` and move its graphs into `artifact`."""
    import json

    import transformers

    seq2seq = spec.optimum_task.startswith("text2text")
    graphs = (
        {"decoder": "decoder_model_merged.onnx", "encoder": "encoder_model.onnx"}
        if seq2seq
        else {"decoder": "model.onnx"}
    )
    with progress.step("decoding with PyTorch and with the compiled graphs"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
        torch_model = getattr(transformers, spec.auto_class).from_pretrained(model_dir).eval()
        info = info_of(tokenizer, torch_model.config)
        config = json.loads((export_dir / "config.json").read_text())
        options = SessionOptions()
        decoder = OnnxModel(export_dir / graphs["decoder"], options)
        encoder = OnnxModel(export_dir / graphs["encoder"], options) if seq2seq else None
        generator = Generator(decoder, encoder, config)
        eos = torch_model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list) else ([] if eos is None else [int(eos)])
        lines, same, max_abs, min_cos = [], 0, 0.0, 1.0
        for prompt in PROMPTS:
            want, reference = greedy_reference(torch_model, tokenizer, prompt, eos)
            ids = tokenizer(prompt)["input_ids"]
            steps = list(generator.run(ids, Sampling(max_new_tokens=NEW_TOKENS, eos_token_ids=tuple(eos))))
            got = [s.token_id for s in steps]
            first = steps[0].logits
            assert first is not None
            scale = max(1.0, float(np.abs(reference).max()))
            max_abs = max(max_abs, float(np.abs(first - reference).max()) / scale)
            min_cos = min(min_cos, float(first @ reference / (np.linalg.norm(first) * np.linalg.norm(reference))))
            same += int(got == want)
            if got != want:
                lines.append(f"greedy decoding of {prompt!r} differs: PyTorch {want}, compiled {got}")
    passed = same == len(PROMPTS) and max_abs <= LOGITS_MAX_ABS
    gate = f"same greedy tokens as PyTorch generate, first-step logits max abs diff <= {LOGITS_MAX_ABS:g} (scaled)"
    figures = validate.Figures(gate, passed, len(PROMPTS), max_abs, min_cos, same / len(PROMPTS))
    lines.insert(0, validate.report("fp32-none", figures))
    if not passed:
        raise ValidationFailed("the compiled model does not decode like PyTorch:\n  " + "\n  ".join(lines))
    for name in graphs.values():
        for file in export_dir.glob(name + "*"):  # the graph and its external data, if any
            shutil.move(file, artifact / file.name)
    return graphs, info, figures, lines
