"""Tokenization with `tokenizers` alone, and the padding of batches into model inputs.

The serving path never imports `transformers`: the compile step saved `tokenizer.json` and wrote the
few facts it does not hold into the manifest (`TokenizerInfo`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

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


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the truncation rules of the transformers pipelines.

    Truncation and stride are tokenizer state in `tokenizers`, so each call sets them under a
    lock: concurrent requests never see each other's settings.
    """

    def __init__(self, path: Path, info: TokenizerInfo) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
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
    ) -> list[Encoding]:
        """Encode texts (or text pairs); past the limit, truncate or raise `Unprocessable`.

        A single text far longer than the limit is first cut at a whitespace well past it: words
        tokenize independently of what follows them, so the kept tokens are the same, and a
        multi-megabyte body costs milliseconds instead of seconds. A cut text whose tokens do not
        reach the limit (a few enormous "words") is encoded again whole, so the result is exact.
        """
        limit = max_length or self.max_length
        shortcut = pairs is None and stride == 0 and direction == "right"
        cut = [self._prefix(t, limit) if shortcut else t for t in texts]
        batch: list[str | tuple[str, str]] = list(cut) if pairs is None else list(zip(texts, pairs))
        with self._lock:
            if truncation:
                self.tokenizer.enable_truncation(limit, stride=stride, strategy=strategy, direction=direction)
            else:
                self.tokenizer.no_truncation()
            encodings: list[Encoding] = self.tokenizer.encode_batch(batch)
            for i, (text, short) in enumerate(zip(texts, cut)):
                if short is not text and len(encodings[i].ids) < limit + (0 if truncation else 1):
                    encodings[i] = self.tokenizer.encode(text)
        if not truncation:
            for text, short, encoding in zip(texts, cut, encodings):
                if len(encoding.ids) > limit:
                    size = f"over {limit}" if short is not text else str(len(encoding.ids))
                    raise Unprocessable(
                        f"input is {size} tokens long and the model takes at most {limit}; "
                        "shorten it or allow truncation"
                    )
        return encodings

    @staticmethod
    def _prefix(text: str, limit: int) -> str:
        """`text` cut at a whitespace past `64 * limit` characters, or `text` itself if shorter."""
        budget = 64 * limit
        if len(text) <= 2 * budget:
            return text
        space = max(text.rfind(" ", 0, budget), text.rfind("\n", 0, budget))
        return text[:space] if space > 0 else text

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.clean_up(text)

    def tokens_to_string(self, tokens: list[str]) -> str:
        """What `PreTrainedTokenizerFast.convert_tokens_to_string` gives, without transformers."""
        decoder = self.tokenizer.decoder
        text = decoder.decode(tokens) if decoder is not None else " ".join(tokens)
        return self.clean_up(text)

    def clean_up(self, text: str) -> str:
        if self.info.clean_up_tokenization_spaces:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""

    def token_to_id(self, token: str) -> int | None:
        token_id: int | None = self.tokenizer.token_to_id(token)
        return token_id

    def batch(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """Pad encodings to the longest into `input_ids`, `attention_mask`, `token_type_ids`."""
        width = max(len(e.ids) for e in encodings)
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
