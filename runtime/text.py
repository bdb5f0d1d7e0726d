"""Tokenization with `tokenizers` alone, and the padding of batches into model inputs.

The serving path never imports `transformers`: the compile step saved `tokenizer.json` and wrote the
few facts it does not hold into the manifest (`TokenizerInfo`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.artifact import TokenizerInfo
from runtime.errors import Unprocessable

_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for before, after in _CLEANUPS:
        text = text.replace(before, after)
    return text


def _cut(text: str, at: int, *, keep_start: bool, reach: int = 4096) -> str:
    """`text` cut `at` characters from its kept end, or a little nearer, at the best boundary within
    `reach`: a whitespace, else a change between word characters and others, else `at` itself."""
    offset = max(0, at - reach) if keep_start else len(text) - at
    window = text[offset:at] if keep_start else text[offset : offset + reach]
    pick = -1 if keep_start else 0
    found = [m.start() for m in _SPACE.finditer(window)] or [m.start() for m in _CLASS_CHANGE.finditer(window)]
    split = offset + found[pick] if found else (at if keep_start else offset)
    return text[:split] if keep_start else text[split:]


_SPACE = re.compile(r"\s")
_CLASS_CHANGE = re.compile(r"(?:(?<=\w)\W|(?<=\W)\w)", re.UNICODE)


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the truncation rules of the transformers pipelines.

    Truncation is state of the `tokenizers` object, so every call goes through a method of this
    class that sets it under a lock: no request sees another's settings. The raw tokenizer is
    private for that reason.
    """

    def __init__(self, path: Path, info: TokenizerInfo) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.info = info
        self.max_length = info.max_length
        self._lock = threading.Lock()

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        truncation: bool = True,
        max_length: int | None = None,
        strategy: str = "longest_first",
        stride: int = 0,
        direction: str = "right",
        add_special_tokens: bool = True,
        too_long: str = "shorten it or allow truncation",
    ) -> list[Encoding]:
        """Encode texts (or text pairs); past the limit, truncate or raise `Unprocessable`.

        A text far longer than the limit is first cut cheaply (see `_shorten`), so a
        multi-megabyte body costs milliseconds, whatever its characters, and "too long" is decided
        from the cut.
        """
        limit = max_length or self.max_length
        sides = [list(texts)] if pairs is None else [list(texts), list(pairs)]
        with self._lock:
            self._tokenizer.no_truncation()
            cut = [[self._shorten(t, limit, direction, stride) for t in side] for side in sides]
            if truncation:
                self._tokenizer.enable_truncation(limit, stride=stride, strategy=strategy, direction=direction)
            batch: list[Any] = cut[0] if pairs is None else list(zip(*cut))
            encodings: list[Encoding] = self._tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens)
            self._tokenizer.no_truncation()
        if not truncation:
            for index, encoding in enumerate(encodings):
                if len(encoding.ids) > limit:
                    was_cut = any(short[index] is not whole[index] for short, whole in zip(cut, sides))
                    size = f"over {limit}" if was_cut else str(len(encoding.ids))
                    raise Unprocessable(f"input is {size} tokens long and the model takes at most {limit}; {too_long}")
        return encodings

    def _shorten(self, text: str, limit: int, direction: str, stride: int) -> str:
        """`text` cut far past `limit` tokens on the kept side (`direction` right keeps the start),
        or `text` itself when it is short or a cut would not be exact.

        The cut falls at a whitespace, else where letters and digits meet other characters, else
        anywhere: pre-tokenizers split there, so the tokens on the kept side are those of the whole
        text. A cut is kept only if it still holds more than `limit` tokens; a few enormous "words"
        (one [UNK] each) make the cut grow until it does, or the whole text is used. Runs under the
        lock with truncation off. Windows (`stride` > 0) need the whole text: never cut.
        """
        if stride:
            return text
        budget = 8 * limit  # characters: most text is 3 to 6 per token; the loop grows it where not
        while len(text) > 2 * budget:
            short = _cut(text, budget, keep_start=direction != "left")
            if len(self._tokenizer.encode(short, add_special_tokens=False).ids) > limit:
                return short
            budget *= 4
        return text

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool, max_tokens: int) -> list[Encoding]:
        """Whole encodings without truncation (TEI's `/tokenize`); more than `max_tokens` in one text
        is `Unprocessable`, decided from a cut, so the answer's size is bounded."""
        return self.encode(
            texts, truncation=False, max_length=max_tokens, add_special_tokens=add_special_tokens,
            too_long=f"this server tokenizes at most {max_tokens} tokens per text",
        )  # fmt: skip

    @property
    def word_aware(self) -> bool:
        """Whether words continue with a prefix ("##"): token-classification's word grouping."""
        return bool(getattr(self._tokenizer.model, "continuing_subword_prefix", None))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.clean_up(text)

    def tokens_to_string(self, tokens: list[str]) -> str:
        """What `PreTrainedTokenizerFast.convert_tokens_to_string` gives, without transformers."""
        decoder = self._tokenizer.decoder
        text = decoder.decode(tokens) if decoder is not None else " ".join(tokens)
        return self.clean_up(text)

    def clean_up(self, text: str) -> str:
        return clean_up_tokenization(text) if self.info.clean_up_tokenization_spaces else text

    def id_to_token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(token_id) or ""

    def token_to_id(self, token: str) -> int | None:
        token_id: int | None = self._tokenizer.token_to_id(token)
        return token_id

    def batch(self, encodings: Sequence[Encoding], width: int | None = None) -> dict[str, np.ndarray]:
        """Pad encodings to the longest (or to `width`) into `input_ids`, `attention_mask`, `token_type_ids`."""
        width = max(width or 0, *(len(e.ids) for e in encodings))
        shape = (len(encodings), width)
        input_ids = np.full(shape, self.info.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros(shape, dtype=np.int64)
        token_type_ids = np.zeros(shape, dtype=np.int64)
        left = self.info.padding_side == "left"
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            cols = slice(width - n, width) if left else slice(0, n)
            input_ids[row, cols] = encoding.ids
            attention_mask[row, cols] = 1
            token_type_ids[row, cols] = encoding.type_ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
