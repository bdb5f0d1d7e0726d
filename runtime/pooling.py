"""Sentence-transformers pooling in numpy: token vectors -> one vector per sentence.

The modes are those of `sentence_transformers`' Pooling module; `pool` concatenates several when
a model asks for more than one, as Pooling does.
"""

from __future__ import annotations

import numpy as np

MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def pool(hidden: np.ndarray, mask: np.ndarray, modes: list[str]) -> np.ndarray:
    """`hidden` (batch, tokens, dim) and `mask` (batch, tokens) -> (batch, dim * len(modes))."""
    m = mask.astype(hidden.dtype)[..., None]
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.argmax(axis=1)
            out.append(hidden[np.arange(len(hidden)), first])
        elif mode == "max":
            out.append(np.where(m > 0, hidden, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total, count = (hidden * m).sum(axis=1), np.clip(m.sum(axis=1), 1e-9, None)
            out.append(total / count if mode == "mean" else total / np.sqrt(count))
        elif mode == "weightedmean":
            weights = m * np.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
            out.append((hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            last = mask.shape[1] - 1 - np.flip(mask, axis=1).argmax(axis=1)
            out.append(hidden[np.arange(len(hidden)), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; known: {', '.join(MODES)}")
    return np.concatenate(out, axis=-1)


def normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)  # type: ignore[no-any-return]
