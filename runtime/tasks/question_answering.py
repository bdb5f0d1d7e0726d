"""question-answering: the best span of the context, windowed over long contexts.

Span scoring and the mapping back to characters follow transformers' `QuestionAnsweringPipeline`
(fast-tokenizer path): same windows, same masks, same word alignment, same merging of duplicates.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from tokenizers import Encoding

from runtime.errors import InvalidInput, InvalidParameter, Unprocessable
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, type_name


class QuestionAnsweringParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int = 1
    doc_stride: int | None = None
    max_answer_len: int = 15
    max_seq_len: int | None = None
    max_question_len: int = 64
    handle_impossible_answer: bool = False
    align_to_words: bool = True


def _examples(inputs: Any) -> tuple[list[tuple[str, str]], bool]:
    items, single = ([inputs], True) if isinstance(inputs, dict) else (inputs, False)
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        raise InvalidInput(
            f'`inputs` must be {{"question": ..., "context": ...}} or a list of them; got {type_name(inputs)}'
        )
    examples = []
    for item in items:
        for key in ("question", "context"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise InvalidInput(f"`inputs.{key}` must be a non-empty string")
        examples.append((item["question"], item["context"]))
    return examples, single


def decode_spans(
    start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, desired: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `top_k` best (start, end) pairs with end >= start and length <= `max_answer_len`."""
    outer = np.matmul(start[:, None], end[None, :])
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        best = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        best = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[0:top_k]
        best = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(best, candidates.shape)
    allowed = desired.nonzero()
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    return starts[keep], ends[keep], candidates[starts[keep], ends[keep]]


@register("question-answering")
class QuestionAnsweringPipeline(TextPipeline):
    """`{"answer", "score", "start", "end"}`, or a list of them best first when `top_k` > 1."""

    Parameters = QuestionAnsweringParameters
    example = ({"question": "Where do I live?", "context": "My name is Sarah and I live in London."}, {})

    def predict(self, inputs: Any, params: QuestionAnsweringParameters) -> Any:
        examples, single = _examples(inputs)
        if params.top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {params.top_k}")
        if params.max_answer_len < 1:
            raise InvalidParameter(f"`max_answer_len` must be at least 1; got {params.max_answer_len}")
        max_seq_len = params.max_seq_len or min(self.tokenizer.max_length, 384)
        if max_seq_len > self.tokenizer.max_length:
            raise InvalidParameter(f"`max_seq_len` must be at most {self.tokenizer.max_length} for this model")
        stride = params.doc_stride if params.doc_stride is not None else min(max_seq_len // 2, 128)
        if stride > max_seq_len:
            raise InvalidParameter(f"`doc_stride` ({stride}) is larger than `max_seq_len` ({max_seq_len})")
        question_first = self.tokenizer.info.padding_side == "right"
        firsts = [q if question_first else c for q, c in examples]
        seconds = [c if question_first else q for q, c in examples]
        try:
            encoded = self.tokenizer.encode(
                firsts,
                seconds,
                max_length=max_seq_len,
                stride=stride,
                strategy="only_second" if question_first else "only_first",
            )
        except Exception as exc:  # tokenizers raises a bare Exception when the question leaves no room
            raise Unprocessable(f"the question is too long for `max_seq_len` {max_seq_len}: {exc}") from None
        windows = [[e, *e.overflowing] for e in encoded]
        outputs = iter(self.core([w for group in windows for w in group]))
        results = []
        for (_, context), group in zip(examples, windows):
            spans = [(w, next(outputs)) for w in group]
            results.append(self.answers(context, spans, params, question_first))
        return results[0] if single else results

    def answers(
        self,
        context: str,
        spans: list[tuple[Encoding, dict[str, np.ndarray]]],
        params: QuestionAnsweringParameters,
        question_first: bool,
    ) -> Any:
        min_null_score = 1000000.0
        found: list[dict[str, Any]] = []
        pre_top_k = params.top_k * 2 + 10 if params.align_to_words else params.top_k
        context_index = 1 if question_first else 0
        cls_id = self.tokenizer.info.cls_token_id
        for encoding, output in spans:
            sequence_ids = encoding.sequence_ids
            p_mask = np.array([(s != 1) if question_first else 0 for s in sequence_ids], dtype=np.int64)
            if cls_id is not None:
                p_mask[np.array(encoding.ids) == cls_id] = 0
            desired = np.abs(p_mask - 1) & np.array(encoding.attention_mask, dtype=np.int64)
            unwanted = desired == 0
            start = np.where(unwanted, -10000.0, output["start_logits"])
            end = np.where(unwanted, -10000.0, output["end_logits"])
            start = np.exp(start - start.max())
            start = start / start.sum()
            end = np.exp(end - end.max())
            end = end / end.sum()
            if params.handle_impossible_answer:
                min_null_score = min(min_null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0
            for s, e, score in zip(*decode_spans(start, end, pre_top_k, params.max_answer_len, desired)):
                first, last = self.char_span(encoding, int(s), int(e), context_index, params.align_to_words)
                answer = context[first:last]
                twin = next((a for a in found if a["answer"].lower() == answer.lower()), None)
                if twin is not None:
                    twin["score"] += float(score)
                else:
                    found.append({"score": float(score), "start": first, "end": last, "answer": answer})
        if params.handle_impossible_answer:
            found.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        found = sorted(found, key=lambda a: a["score"], reverse=True)[: params.top_k]
        return found[0] if len(found) == 1 else found

    @staticmethod
    def char_span(encoding: Encoding, s: int, e: int, sequence: int, align_to_words: bool) -> tuple[int, int]:
        if align_to_words:
            first_word, last_word = encoding.token_to_word(s), encoding.token_to_word(e)
            if first_word is not None and last_word is not None:
                first = encoding.word_to_chars(first_word, sequence)
                last = encoding.word_to_chars(last_word, sequence)
                if first is not None and last is not None:
                    return first[0], last[1]
        return encoding.offsets[s][0], encoding.offsets[e][1]
