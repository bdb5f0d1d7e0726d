"""Tokenization shortcuts are exact, and tokenizer settings never leak from one call to the next.

A long text is cut before encoding (at a whitespace, else where word characters meet others);
the tokens kept must be those of the whole text, whichever side truncation keeps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import runtime

LONG_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3000,
    "x" * 200_000,  # one enormous word: the cut cannot help, the result must still be exact
    "a," * 150_000,  # no whitespace at all: cut where letters meet punctuation
    ("word " * 50 + "\n") * 2000,
    "Ünïcödé café naïve résumé — “quotes” and emoji 🎉 " * 3000,
    "🎉" * 100_000,
    "short text",
]


def reference(artifact: Path, texts: list[str], limit: int, direction: str) -> list:
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(limit, direction=direction)
    return [tokenizer.encode(text) for text in texts]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_cut_long_texts_encode_exactly(arch: str, direction: str, artifacts: dict) -> None:
    artifact = artifacts["feature-extraction", arch]
    tokenizer = runtime.load(artifact).tokenizer
    for limit in (16, 512):
        fast = tokenizer.encode(LONG_TEXTS, max_length=limit, direction=direction)
        full = reference(artifact, LONG_TEXTS, limit, direction)
        assert [e.ids for e in fast] == [e.ids for e in full]
        if direction == "right":  # a kept suffix's offsets count from the cut, its tokens are the same
            assert [e.offsets for e in fast] == [e.offsets for e in full]


def test_pairs_are_cut_exactly(artifacts: dict) -> None:
    artifact = artifacts["text-classification", "bert"]
    tokenizer = runtime.load(artifact).tokenizer
    # 10k characters: past the cut at 8 x 32, and small enough for the uncut reference (tokenizers
    # pairs up every overflowing window of both sides, which grows as their product)
    texts = [text[:10_000] for text in LONG_TEXTS]
    firsts, seconds = texts[:4], texts[2:6]
    fast = tokenizer.encode(firsts, seconds, max_length=32)
    whole = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    whole.no_padding()
    whole.enable_truncation(32)
    assert [e.ids for e in fast] == [e.ids for e in whole.encode_batch(list(zip(firsts, seconds)))]


def test_a_huge_input_without_truncation_is_refused_from_its_prefix(minilm_artifact: object) -> None:
    """ "over 256" is what the prefix path says: the 4 MB text itself was never tokenized."""
    pipe = runtime.load(minilm_artifact)  # type: ignore[arg-type]
    for text in ("word " * 800_000, "a," * 1_500_000):
        start = time.perf_counter()
        with pytest.raises(runtime.Unprocessable, match="input is over 256 tokens long"):
            pipe(text, truncate=False)
        assert time.perf_counter() - start < 0.5


def test_a_huge_input_without_whitespace_is_cut_in_milliseconds(minilm_artifact: object) -> None:
    pipe = runtime.load(minilm_artifact)  # type: ignore[arg-type]
    short = pipe("a," * 20)
    for direction in ("right", "left"):
        start = time.perf_counter()
        vector = pipe("a," * 1_500_000, truncation_direction=direction)
        assert time.perf_counter() - start < 0.5
        np.testing.assert_allclose(vector, pipe("a," * 2000, truncation_direction=direction), atol=1e-6)
    assert not np.allclose(short, vector, atol=1e-3)
