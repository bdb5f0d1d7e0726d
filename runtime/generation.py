"""Autoregressive generation over ONNX graphs with a key/value cache, in numpy.

`Generator` runs the prompt once (prefill) and then one token at a time, feeding back the cache
the graph returned. Decoder-only models use optimum's merged `model.onnx` (past inputs of length
0 on the first step); encoder-decoder models run `encoder_model.onnx` once and the merged
decoder, switching its `use_cache_branch`. Sampling follows transformers' processors and their
order: repetition penalty, then temperature, top-k, top-p.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from runtime.session import OnnxModel


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    time_limit_s: float | None = None


@dataclass
class Step:
    """One generated token, and why generation stopped once it has."""

    token_id: int
    logprob: float
    finish_reason: str | None = None


def process(logits: np.ndarray, seen: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Scores after the repetition penalty and the sampling warpers (transformers' order)."""
    scores = logits.astype(np.float32).copy()
    if sampling.repetition_penalty != 1.0 and seen.size:
        picked = scores[seen]
        scores[seen] = np.where(picked < 0, picked * sampling.repetition_penalty, picked / sampling.repetition_penalty)
    if not sampling.do_sample:
        return scores
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if 0 < sampling.top_k < scores.size:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if sampling.top_p < 1.0:
        order = np.argsort(scores)
        ordered = scores[order]
        probs = np.exp(ordered - ordered.max())
        cumulative = np.cumsum(probs / probs.sum())
        remove = cumulative <= 1 - sampling.top_p
        remove[-1] = False
        scores[order[remove]] = -np.inf
    return scores


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())  # type: ignore[no-any-return]


@dataclass
class Cache:
    names: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)


class Generator:
    """Token-by-token generation for one sequence (batch 1: each request is its own)."""

    def __init__(self, decoder: OnnxModel, encoder: OnnxModel | None, config: dict[str, object]) -> None:
        self.decoder, self.encoder = decoder, encoder
        self.past_inputs = [n for n in decoder.input_names if n.startswith("past_key_values")]
        shapes = {i.name: i.shape for i in decoder.session.get_inputs()}
        self.past_shapes = {n: shapes[n] for n in self.past_inputs}
        self.past_dtype = {
            i.name: np.float16 if "float16" in i.type else np.float32 for i in decoder.session.get_inputs()
        }
        self.decoder_start = int(config.get("decoder_start_token_id") or config.get("pad_token_id") or 0)  # type: ignore[call-overload]

    def _empty_past(self, encoder_length: int = 0) -> dict[str, np.ndarray]:
        past = {}
        for name, shape in self.past_shapes.items():
            heads, dim = shape[1], shape[3]
            length = encoder_length if ".encoder." in name else 0
            past[name] = np.zeros((1, heads, length, dim), dtype=self.past_dtype[name])
        return past

    def _present_to_past(self, outputs: dict[str, np.ndarray], past: dict[str, np.ndarray], first: bool) -> None:
        for name in self.past_inputs:
            present = name.replace("past_key_values", "present")
            if ".encoder." in name and not first:
                continue  # the encoder half of the cache is computed once
            past[name] = outputs[present]

    def run(
        self, prompt: list[int], sampling: Sampling, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[Step]:
        """Yield generated tokens until EOS, the token limit, the time limit, or cancellation."""
        rng = np.random.default_rng(sampling.seed)
        deadline = time.monotonic() + sampling.time_limit_s if sampling.time_limit_s else None
        seen = np.array(prompt, dtype=np.int64)
        feeds: dict[str, np.ndarray]
        if self.encoder is not None:
            ids = np.array([prompt], dtype=np.int64)
            mask = np.ones_like(ids)
            hidden = self.encoder.run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
            past = self._empty_past(0)
            context = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden}
            tokens = [self.decoder_start]
            seen = np.array([], dtype=np.int64)
            step_ids = np.array([tokens], dtype=np.int64)
        else:
            past = self._empty_past()
            context = {}
            tokens = list(prompt)
            step_ids = np.array([tokens], dtype=np.int64)
        first = True
        for produced in range(sampling.max_new_tokens):
            total = len(tokens)
            feeds = {"input_ids": step_ids, **past, **context}
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
            feeds["position_ids"] = np.arange(total - step_ids.shape[1], total, dtype=np.int64)[None]
            feeds["use_cache_branch"] = np.array([not first])
            outputs = self.decoder.run(feeds, as_float32=False)
            self._present_to_past(outputs, past, first)
            first = False
            logits = outputs["logits"][0, -1].astype(np.float32)
            scores = process(logits, seen, sampling)
            if sampling.do_sample:
                probs = np.exp(scores - scores.max())
                token = int(rng.choice(scores.size, p=probs / probs.sum()))
            else:
                token = int(np.argmax(scores))
            logprob = float(log_softmax(logits.astype(np.float64))[token])
            tokens.append(token)
            seen = np.append(seen, token)
            step_ids = np.array([[token]], dtype=np.int64)
            if token in sampling.eos_token_ids:
                yield Step(token, logprob, "stop")
                return
            if produced + 1 == sampling.max_new_tokens:
                yield Step(token, logprob, "length")
                return
            if cancelled():
                yield Step(token, logprob, "cancelled")
                return
            if deadline is not None and time.monotonic() > deadline:
                yield Step(token, logprob, "time_limit")
                return
            yield Step(token, logprob)
