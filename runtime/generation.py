"""Autoregressive generation over ONNX graphs with a key/value cache, in numpy.

`Generator` runs the prompt once (prefill) and then one token at a time, feeding back the cache
the graph returned. Decoder-only models use optimum's merged `model.onnx` (past inputs of length
0 on the first step); encoder-decoder models run `encoder_model.onnx` once and the merged
decoder, switching its `use_cache_branch`. The encoder takes the prompt's ids (text-to-text), or
other features with a prompt of the decoder's own (speech: Whisper's log-mel features, and its
start, language and task tokens). Sampling follows transformers' processors and their order:
repetition penalty, suppressed tokens (always, and at the first step), then temperature, top-k, top-p.
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
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()  # suppressed at the first generated position only
    # a model's own logits processor, after the suppressed tokens: (scores, the sequence so far) -> scores
    rules: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


@dataclass
class Step:
    """One generated token, and why generation stopped once it has."""

    token_id: int
    logprob: float
    finish_reason: str | None = None
    logits: np.ndarray | None = field(default=None, repr=False)  # the step's raw scores, for validation


def process(logits: np.ndarray, seen: np.ndarray, sampling: Sampling, first: bool = False) -> np.ndarray:
    """Scores after the repetition penalty, the suppressed tokens (`first`: this is the first
    generated position), the model's own `rules`, and the sampling warpers (transformers' order)."""
    scores = logits.astype(np.float32).copy()
    if sampling.repetition_penalty != 1.0 and seen.size:
        picked = scores[seen]
        scores[seen] = np.where(picked < 0, picked * sampling.repetition_penalty, picked / sampling.repetition_penalty)
    if sampling.suppress_tokens:
        scores[list(sampling.suppress_tokens)] = -np.inf
    if first and sampling.begin_suppress_tokens:
        scores[list(sampling.begin_suppress_tokens)] = -np.inf
    if sampling.rules is not None:
        scores = sampling.rules(scores, seen)
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

    def cache_bytes(self, length: int, encoder_length: int = 0) -> int:
        """Bytes of key/value cache one sequence of `length` tokens holds (cross-attention caches
        hold `encoder_length`), known from the graph's inputs before anything is allocated."""
        total = 0
        for name, shape in self.past_shapes.items():
            heads, dim = (d if isinstance(d, int) else 1 for d in (shape[1], shape[3]))
            tokens = encoder_length if ".encoder." in name else length
            total += heads * dim * tokens * np.dtype(self.past_dtype[name]).itemsize
        return total

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

    def encode(self, encoder_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The encoder's context, which every decoder step reads (and its mask, for text)."""
        assert self.encoder is not None
        context = {"encoder_hidden_states": self.encoder.run(encoder_inputs)["last_hidden_state"]}
        if "input_ids" in encoder_inputs:
            context["encoder_attention_mask"] = encoder_inputs["attention_mask"]
        return context

    def start(
        self,
        prompt: list[int],
        encoder_inputs: dict[str, np.ndarray] | None = None,
        context: dict[str, np.ndarray] | None = None,
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        """The decoder's first tokens, and the encoder's context its every step reads.

        Decoder-only: the prompt, no context. Encoder-decoder with neither `encoder_inputs` nor a
        `context` already encoded: the prompt is the encoder's text and the decoder starts from its
        start token; otherwise (speech features), the prompt is the decoder's own."""
        if self.encoder is None:
            return list(prompt), {}
        if context is not None:
            return list(prompt), context
        if encoder_inputs is None:
            ids = np.array([prompt], dtype=np.int64)
            return [self.decoder_start], self.encode({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return list(prompt), self.encode(encoder_inputs)

    def next_logits(self, tokens: list[int], context: dict[str, np.ndarray]) -> np.ndarray:
        """The scores of the token after `tokens` (one pass, no cache kept): Whisper's language
        detection reads them after its start token."""
        ids = np.array([tokens], dtype=np.int64)
        feeds = {"input_ids": ids, **self._empty_past(), **context, "use_cache_branch": np.array([False])}
        feeds["attention_mask"] = np.ones_like(ids)
        feeds["position_ids"] = np.arange(len(tokens), dtype=np.int64)[None]
        logits: np.ndarray = self.decoder.run(feeds)["logits"][0, -1]
        return logits

    def run(
        self,
        prompt: list[int],
        sampling: Sampling,
        cancelled: Callable[[], bool] = lambda: False,
        encoder_inputs: dict[str, np.ndarray] | None = None,
        context: dict[str, np.ndarray] | None = None,
    ) -> Iterator[Step]:
        """Yield generated tokens until EOS, the token limit, the time limit, or cancellation."""
        rng = np.random.default_rng(None if sampling.seed is None else sampling.seed % (1 << 64))  # any integer
        deadline = time.monotonic() + sampling.time_limit_s if sampling.time_limit_s is not None else None
        tokens, context = self.start(prompt, encoder_inputs, context)
        past = self._empty_past()
        # transformers penalizes what the decoder has seen: the prompt, or a seq2seq decoder's own inputs
        seen = np.array(tokens, dtype=np.int64)
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
            scores = process(logits, seen, sampling, first=produced == 0)
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
                reason: str | None = "stop"
            elif produced + 1 == sampling.max_new_tokens:
                reason = "length"
            elif cancelled():
                reason = "cancelled"
            elif deadline is not None and time.monotonic() > deadline:
                reason = "time_limit"
            else:
                reason = None
            yield Step(token, logprob, reason, logits)
            if reason is not None:
                return


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of the `k` largest values, largest first, ties in index order: what
    `np.argsort(-values, kind="stable")[:k]` gives, without sorting every value (beam search
    scores beams x vocabulary candidates a step: 5 x 51,864 for Whisper)."""
    if k >= values.size:
        return np.argsort(-values, kind="stable")
    kth = values[np.argpartition(-values, k - 1)[:k]].min()
    above, equal = np.flatnonzero(values > kth), np.flatnonzero(values == kth)
    chosen = np.concatenate([above, equal[: k - above.size]])
    return chosen[np.lexsort((chosen, -values[chosen]))]


def beam_search(
    generator: Generator, prompt: list[int], sampling: Sampling, num_beams: int, length_penalty: float = 1.0,
    early_stopping: bool | str = False, cancelled: Callable[[], bool] = lambda: False,
    encoder_inputs: dict[str, np.ndarray] | None = None, context: dict[str, np.ndarray] | None = None,
) -> tuple[list[int], str | None]:  # fmt: skip
    """transformers' beam search (4.57, batch of one), deterministic: the best finished sequence's
    new tokens. Candidates: the top `max(2, 1 + n_eos) * num_beams` continuations; a finished one
    counts only among the top `num_beams`, scored `sum logprob / generated_length ** length_penalty`;
    the search stops when no running beam can beat the worst finished one.

    Like `Generator.run`, it checks the time limit and `cancelled` after every step; stopped there,
    it answers the best running beam so far and the reason ("time_limit", "cancelled"), else None."""
    deadline = time.monotonic() + sampling.time_limit_s if sampling.time_limit_s is not None else None
    n, eos = num_beams, set(sampling.eos_token_ids)
    keep = max(2, 1 + len(eos)) * n
    start, context = generator.start(prompt, encoder_inputs, context)
    context = {name: np.repeat(value, n, 0) for name, value in context.items()}
    prompt_len = len(start)
    max_length = prompt_len + sampling.max_new_tokens
    running = np.array([start] * n, dtype=np.int64)
    running_scores = np.zeros(n, dtype=np.float32)
    running_scores[1:] = -1e9
    finished: list[list[int]] = [[] for _ in range(n)]
    finished_scores = np.full(n, -1e9, dtype=np.float32)
    is_finished = np.zeros(n, dtype=bool)
    past = {name: np.repeat(value, n, 0) for name, value in generator._empty_past().items()}
    step_ids, first, unsatisfied = running, True, True
    while True:
        cur_len = running.shape[1]
        feeds = {"input_ids": step_ids, **past, **context, "use_cache_branch": np.array([not first])}
        feeds["attention_mask"] = np.ones((n, cur_len), dtype=np.int64)
        feeds["position_ids"] = np.tile(np.arange(cur_len - step_ids.shape[1], cur_len, dtype=np.int64), (n, 1))
        outputs = generator.decoder.run(feeds, as_float32=False)
        generator._present_to_past(outputs, past, first)
        first = False
        logits = outputs["logits"][:, -1].astype(np.float32)
        at_start = cur_len == prompt_len
        log_probs = np.stack(
            [process(log_softmax(row), running[b], sampling, first=at_start) for b, row in enumerate(logits)]
        )
        vocab = log_probs.shape[1]
        accumulated = (log_probs + running_scores[:, None]).reshape(-1)
        top = top_indices(accumulated, keep)
        top_scores, top_beams, top_tokens = accumulated[top], top // vocab, top % vocab
        top_seqs = np.concatenate([running[top_beams], top_tokens[:, None]], axis=1)
        hits = np.array([t in eos for t in top_tokens]) | (cur_len + 1 >= max_length)
        masked = top_scores + hits * -1e9
        chosen = np.argsort(-masked, kind="stable")[:n]
        running, running_scores, beam_index = top_seqs[chosen], masked[chosen].astype(np.float32), top_beams[chosen]
        candidate = top_scores / ((cur_len + 1 - prompt_len) ** length_penalty)
        newly = hits & (np.arange(keep) < n)
        candidate = candidate + (np.all(is_finished) & (early_stopping is True)) * -1e9
        candidate = candidate + (not unsatisfied) * -1e9 + (~newly) * -1e9
        merged_scores = np.concatenate([finished_scores, candidate])
        merged_seqs = finished + [list(s) for s in top_seqs]
        merged_done = np.concatenate([is_finished, newly])
        best = np.argsort(-merged_scores, kind="stable")[:n]
        finished = [merged_seqs[i] for i in best]
        finished_scores, is_finished = merged_scores[best].astype(np.float32), merged_done[best]
        for name in past:
            if ".encoder." not in name:  # the cross-attention cache is one input's, the same in every row
                past[name] = past[name][beam_index]
        step_ids = running[:, -1:]
        cur_len += 1
        if early_stopping == "never" and length_penalty > 0.0:
            hypothetical = max_length - prompt_len
        else:
            hypothetical = cur_len - prompt_len
        best_running = running_scores[0] / (hypothetical**length_penalty)
        worst = np.where(is_finished, finished_scores.min(), -1e9)
        unsatisfied = unsatisfied and bool(np.any(best_running > worst))
        open_beam = not (np.all(is_finished) and early_stopping is True)
        if not (unsatisfied and open_beam and not np.all(hits)):
            break
        if cancelled():
            return [int(t) for t in running[0][prompt_len:]], "cancelled"
        if deadline is not None and time.monotonic() > deadline:
            return [int(t) for t in running[0][prompt_len:]], "time_limit"
    return [int(t) for t in finished[0][prompt_len:]], None
