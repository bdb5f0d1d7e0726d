"""Tokenization shortcuts are exact: a long text cut before encoding gives the same tokens."""

from __future__ import annotations

import pytest

import runtime

LONG_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3000,
    "x" * 200_000,  # one enormous word: the cut cannot help, the result must still be exact
    ("word " * 50 + "\n") * 2000,
    "Ünïcödé café naïve résumé — “quotes” and emoji 🎉 " * 3000,
    "short text",
]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_cut_long_texts_encode_exactly(arch: str, artifacts: dict) -> None:
    pipe = runtime.load(artifacts["feature-extraction", arch])
    tokenizer = pipe.tokenizer
    for limit in (16, 512):
        fast = tokenizer.encode(LONG_TEXTS, max_length=limit)
        with tokenizer._lock:
            tokenizer.tokenizer.enable_truncation(limit)
            full = [tokenizer.tokenizer.encode(text) for text in LONG_TEXTS]
        assert [e.ids for e in fast] == [e.ids for e in full]
        assert [e.offsets for e in fast] == [e.offsets for e in full]


def test_a_huge_input_without_truncation_is_refused_from_its_prefix(minilm_artifact: object) -> None:
    """ "over 256" is what the prefix path says: the 4 MB text itself was never tokenized."""
    pipe = runtime.load(minilm_artifact)  # type: ignore[arg-type]
    with pytest.raises(runtime.Unprocessable, match="input is over 256 tokens long"):
        pipe("word " * 800_000, truncate=False)
