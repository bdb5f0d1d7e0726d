"""token-classification (NER): a label per token, or per word/entity with an aggregation strategy.

The aggregation follows transformers' `TokenClassificationPipeline` step for step, so the same
model gives the same entities, words and character spans.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from tokenizers import Encoding

from runtime.errors import InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, softmax, texts_of

STRATEGIES = ("none", "simple", "first", "average", "max")


class TokenClassificationParameters(msgspec.Struct, forbid_unknown_fields=True):
    aggregation_strategy: str = "none"
    ignore_labels: list[str] | None = None
    stride: int | None = None


def _tag(name: str) -> tuple[str, str]:
    if name.startswith(("B-", "I-")):
        return name[0], name[2:]
    return "I", name


@register("token-classification")
class TokenClassificationPipeline(TextPipeline):
    """A list of entities per input: `entity` per token, or `entity_group` once aggregated."""

    Parameters = TokenClassificationParameters
    example = ("My name is Sarah and I live in London.", {})

    def predict(self, inputs: Any, params: TokenClassificationParameters) -> Any:
        texts, single = texts_of(inputs)
        strategy = params.aggregation_strategy.lower()
        if strategy not in STRATEGIES:
            raise InvalidParameter(f"`aggregation_strategy` must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if params.stride is not None:
            if strategy == "none":
                raise InvalidParameter("`stride` needs an `aggregation_strategy` other than none")
            if not 0 <= params.stride < self.tokenizer.max_length - 2:
                raise InvalidParameter(f"`stride` must be between 0 and {self.tokenizer.max_length - 3}")
        ignore = ["O"] if params.ignore_labels is None else params.ignore_labels
        windows: list[list[Encoding]] = []
        for encoding in self.tokenizer.encode(texts, stride=params.stride or 0):
            windows.append([encoding, *encoding.overflowing] if params.stride is not None else [encoding])
        flat = [window for group in windows for window in group]
        outputs = iter(self.core(flat))
        results = []
        for text, group in zip(texts, windows):
            entities = []
            for encoding in group:
                scores = softmax(next(outputs)["logits"])
                grouped = self.aggregate(self.pre_entities(text, encoding, scores, strategy), strategy)
                entities += [e for e in grouped if e.get("entity", e.get("entity_group")) not in ignore]
            if len(group) > 1:
                entities = self.merge_overlapping(entities)
            results.append([self.public(e) for e in entities])
        return results[0] if single else results

    @staticmethod
    def public(entity: dict[str, Any]) -> dict[str, Any]:
        return {key: float(value) if key == "score" else value for key, value in entity.items()}

    def pre_entities(self, text: str, encoding: Encoding, scores: np.ndarray, strategy: str) -> list[dict[str, Any]]:
        word_aware = self.tokenizer.word_aware
        unk = self.tokenizer.info.unk_token_id
        entities = []
        for index, (token_id, special, (start, end)) in enumerate(
            zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets)
        ):
            if special:
                continue
            word = self.tokenizer.id_to_token(token_id)
            word_ref = text[start:end]
            if word_aware:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = start > 0 and " " not in text[start - 1 : start + 1]
            if token_id == unk:
                word, is_subword = word_ref, False
            entities.append(
                {
                    "word": word,
                    "scores": scores[index],
                    "start": start,
                    "end": end,
                    "index": index,
                    "is_subword": is_subword,
                }
            )
        return entities

    def aggregate(self, pre: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        labels = self.labels
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append(
                    {
                        "entity": labels[best],
                        "score": p["scores"][best],
                        "index": p["index"],
                        "word": p["word"],
                        "start": p["start"],
                        "end": p["end"],
                    }
                )
        else:
            entities = self.aggregate_words(pre, strategy)
        return entities if strategy == "none" else self.group_entities(entities)

    def aggregate_words(self, pre: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        words: list[list[dict[str, Any]]] = []
        for p in pre:
            if words and p["is_subword"]:
                words[-1].append(p)
            else:
                words.append([p])
        return [self.aggregate_word(word, strategy) for word in words]

    def aggregate_word(self, tokens: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        labels = self.labels
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": labels[best],
            "score": scores[best],
            "word": self.tokenizer.tokens_to_string([t["word"] for t in tokens]),
            "start": tokens[0]["start"],
            "end": tokens[-1]["end"],
        }

    def group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        groups: list[list[dict[str, Any]]] = []
        for entity in entities:
            bi, tag = _tag(entity["entity"])
            if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [
            {
                "entity_group": group[0]["entity"].split("-", 1)[-1],
                "score": np.mean(np.nanmean([e["score"] for e in group])),
                "word": self.tokenizer.tokens_to_string([e["word"] for e in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
            for group in groups
        ]

    @staticmethod
    def merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Windows overlap by `stride`: keep the longer (then more confident) of overlapping entities."""
        if not entities:
            return entities
        entities = sorted(entities, key=lambda e: e["start"])
        merged = []
        previous = entities[0]
        for entity in entities:
            if previous["start"] <= entity["start"] < previous["end"]:
                length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
                if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                    previous = entity
            else:
                merged.append(previous)
                previous = entity
        merged.append(previous)
        return merged
