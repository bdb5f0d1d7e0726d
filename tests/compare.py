"""Structural comparison of pipeline outputs: exact for labels, words, spans, tokens; close for scores."""

from __future__ import annotations

from typing import Any

import numpy as np

SCORE_ATOL = 1e-4


def assert_same(ours: Any, theirs: Any, atol: float = SCORE_ATOL, path: str = "$") -> None:
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{path}: {type(ours).__name__} where a dict was expected"
        assert set(ours) == set(theirs), f"{path}: keys {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            assert_same(ours[key], theirs[key], atol, f"{path}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)), f"{path}: {type(ours).__name__} where a list was expected"
        assert len(ours) == len(theirs), f"{path}: length {len(ours)} != {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, atol, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert abs(float(ours) - float(theirs)) <= atol, f"{path}: {ours} vs {theirs} (atol {atol})"
    elif isinstance(theirs, np.integer):
        assert ours == int(theirs), f"{path}: {ours} != {theirs}"
    else:
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"


def min_cosine(ours: Any, theirs: Any) -> float:
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.min())
