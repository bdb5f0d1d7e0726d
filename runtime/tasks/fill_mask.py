"""fill-mask: the most likely tokens for each mask token in the text."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from runtime.errors import InvalidInput, InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, softmax, texts_of


class FillMaskParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int = 5
    targets: list[str] | str | None = None
    truncation: bool = True


@register("fill-mask")
class FillMaskPipeline(TextPipeline):
    """`[{"score", "token", "token_str", "sequence"}]` per mask; a list of those for several masks."""

    Parameters = FillMaskParameters

    @property
    def example(self) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        return f"The capital of France is {self.tokenizer.info.mask_token}.", {}

    def target_ids(self, targets: list[str] | str) -> np.ndarray:
        """Vocabulary ids of the targets; a word outside the vocabulary counts as its first token."""
        ids: list[int] = []
        for target in [targets] if isinstance(targets, str) else targets:
            token_id = self.tokenizer.token_to_id(target)
            if token_id is None:
                pieces = self.tokenizer.encode([target], add_special_tokens=False)[0].ids
                if not pieces:
                    continue
                token_id = pieces[0]
            if token_id not in ids:
                ids.append(token_id)
        if not ids:
            raise InvalidParameter("`targets` holds no token this model knows")
        return np.array(ids)

    def predict(self, inputs: Any, params: FillMaskParameters) -> Any:
        texts, single = texts_of(inputs)
        mask, mask_id = self.tokenizer.info.mask_token, self.tokenizer.info.mask_token_id
        if mask is None or mask_id is None:
            raise InvalidInput("this model has no mask token")
        if params.top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {params.top_k}")
        targets = self.target_ids(params.targets) if params.targets is not None else None
        encodings = self.tokenizer.encode(texts, truncation=params.truncation)
        for text, encoding in zip(texts, encodings):
            if mask_id not in encoding.ids:
                raise InvalidInput(f"no mask token ({mask}) found in the input: {text[:80]!r}")
        results = []
        for encoding, output in zip(encodings, self.core(encodings)):
            ids = np.array(encoding.ids)
            positions = np.nonzero(ids == mask_id)[0]
            probs = softmax(output["logits"][positions])
            if targets is not None:
                probs = probs[:, targets]
            k = min(params.top_k, probs.shape[-1])
            one_mask = len(positions) == 1
            rows = []
            for position, row in zip(positions, probs):
                best = np.argsort(-row, kind="stable")[:k]
                candidates = []
                for index in best:
                    token = int(targets[index]) if targets is not None else int(index)
                    filled = ids.copy()
                    filled[position] = token
                    filled = filled[filled != self.tokenizer.info.pad_token_id]
                    candidates.append(
                        {
                            "score": float(row[index]),
                            "token": token,
                            "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                            "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=one_mask),
                        }
                    )
                rows.append(candidates)
            results.append(rows[0] if one_mask else rows)
        return results[0] if single else results
