"""TAPEX's table linearization and encoding, on `tokenizers`: what `TapexTokenizer(table=..., query=...)`
gives (transformers 4.57, `models/deprecated/tapex/tokenization_tapex.py`), id for id.

TAPEX models are BART reading "question col : h1 | h2 row 1 : v1 | v2 row 2 : ..." and generating
the answer. `TapexTokenizer` is BART's byte-level BPE (the same `vocab.json` and `merges.txt`; the
compile step saves it as a fast `tokenizer.json`) plus these steps, reproduced here:

- every non-blank cell of at least `max_cell_length` BPE tokens becomes the text of its first
  `max_cell_length` tokens (bytes decoded with replacement, as `convert_tokens_to_string` does);
  header cells are kept whole; blank cells stay as they are;
- `IndexedRowTableLinearize`: "col : " + the header joined by " | ", then "row i : " + each row's
  cells joined by " | " (rows numbered from 1), all joined by spaces and stripped at both ends;
  the question and a space before it;
- `do_lower_case`: the whole text lowercased, then BPE, then `<s> ... </s>`.

`TapexTokenizer.tokenize` lowers text one character at a time (so a Greek capital sigma becomes
"σ" wherever it stands; `str.lower` writes "ς" at a word's end) and keeps special tokens as they
are: the cell trimming and the row budget measure text lowered that way, the final text is
lowered with `str.lower`. Truncation (`Truncation`):

- `NONE` (the pipeline's default for TAPEX): a text longer than the model's window is refused;
- `TOKENS` (`True`, "longest_first", "only_first"): the encoding is cut to the window at its end;
- `ROWS` ("drop_rows_to_fit"): `TapexTokenizer.truncate_table_rows` without its random step. The
  question's and the header's tokens are taken from the window, then rows are kept, in order, while
  each row's own tokens ("row i : ...") still fit; a final cut at the window covers what those
  estimates miss (special tokens, separators). transformers 4.57 refuses this strategy in
  `TapexTokenizer.__call__` (`TruncationStrategy` has no such member), and before that step drops a
  random sample (`random.choices`) of the rows that share no cell with the question's words and are
  no neighbour of one that does: tables whose rows all relate to the question keep the same rows as
  `prepare_table_query(..., truncation_strategy="drop_rows_to_fit")`; kiln never drops at random.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

from tokenizers import decoders

from runtime.errors import InvalidInput
from runtime.text import TextTokenizer

Table = Mapping[str, Sequence[str]]


class Truncation(StrEnum):
    NONE = "do_not_truncate"
    TOKENS = "longest_first"
    ROWS = "drop_rows_to_fit"


def linearize_row(cells: Sequence[str], index: int) -> str:
    """`IndexedRowTableLinearize.process_row`: "row 1 : v1 | v2" for the row numbered `index`."""
    return f"row {index} : " + " | ".join(cells)


def linearize(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """`IndexedRowTableLinearize.process_table`: the header, then every row, stripped at both ends."""
    text = "col : " + " | ".join(header) + " "
    for index, row in enumerate(rows, start=1):
        text += linearize_row(row, index) + " "
    return text.strip()


class TapexEncoder:
    """`TapexTokenizer`'s encoding of one table and one question, over the artifact's BART `tokenizer.json`."""

    def __init__(self, tokenizer: TextTokenizer, *, do_lower_case: bool = True, max_cell_length: int = 15) -> None:
        self.tokenizer = tokenizer
        self.do_lower_case = do_lower_case
        self.max_cell_length = max_cell_length
        specials = sorted({tokenizer.id_to_token(i) for i in tokenizer.info.special_ids} - {""}, key=len, reverse=True)
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self._bytes = decoders.ByteLevel()

    @classmethod
    def from_directory(cls, directory: Path, tokenizer: TextTokenizer) -> TapexEncoder:
        """The settings of a saved `TapexTokenizer` (`tokenizer_config.json`: `do_lower_case`,
        `max_cell_length`), over the artifact's tokenizer."""
        path = directory / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return cls(
            tokenizer,
            do_lower_case=bool(config.get("do_lower_case", True)),
            max_cell_length=int(config.get("max_cell_length", 15)),
        )

    def text(self, table: Table, query: str, truncation: Truncation = Truncation.NONE) -> str:
        """`TapexTokenizer.prepare_table_query` (lowercased when the tokenizer lowercases)."""
        header = list(table)
        columns = [list(table[name]) for name in header]
        if len({len(cells) for cells in columns}) > 1:
            raise InvalidInput("every column of the table must hold the same number of cells")
        if not header or not columns[0]:
            raise InvalidInput("the table is empty: it needs at least one column and one row")
        if not query:
            raise InvalidInput("the query is empty")
        rows = self._trim_cells([list(row) for row in zip(*columns)])
        if truncation is Truncation.ROWS:
            rows = rows[: self._rows_that_fit(header, rows, query)]
        text = query + " " + linearize(header, rows)
        return text.lower() if self.do_lower_case else text

    def encode(self, table: Table, query: str, truncation: Truncation = Truncation.NONE) -> tuple[str, list[int]]:
        """The linearized text and its ids, `<s> ... </s>`: `TapexTokenizer(table, query)["input_ids"]`."""
        text = self.text(table, query, truncation)
        (encoding,) = self.tokenizer.encode(
            [text],
            truncation=truncation is not Truncation.NONE,
            too_long="allow truncation (`truncation`: true or drop_rows_to_fit), or send a smaller table",
        )
        return text, list(encoding.ids)

    def _measured(self, text: str) -> str:
        """Text as `TapexTokenizer.tokenize` sees it: lowered character by character, special tokens kept."""
        if not self.do_lower_case:
            return text
        parts = self._specials.split(text) if self._specials is not None else [text]
        return "".join(part if index % 2 else "".join(c.lower() for c in part) for index, part in enumerate(parts))

    def _trim_cells(self, rows: list[list[str]]) -> list[list[str]]:
        """`truncate_table_cells`: a non-blank cell of `max_cell_length` tokens or more becomes the
        text of its first `max_cell_length` tokens."""
        spots = [(r, c) for r, row in enumerate(rows) for c, cell in enumerate(row) if cell.strip()]
        encodings = self.tokenizer.encode(
            [self._measured(rows[r][c]) for r, c in spots], max_length=self.max_cell_length, add_special_tokens=False
        )
        for (r, c), encoding in zip(spots, encodings):
            if len(encoding.tokens) >= self.max_cell_length:
                rows[r][c] = self._bytes.decode(encoding.tokens)
        return rows

    def _rows_that_fit(self, header: Sequence[str], rows: Sequence[Sequence[str]], query: str) -> int:
        """How many leading rows `truncate_table_rows` keeps (its random step aside)."""
        window = self.tokenizer.max_length
        texts = [query, "col : " + " | ".join(header)]
        texts += [linearize_row(row, index) for index, row in enumerate(rows, start=1)]
        counts = [
            len(encoding.ids)  # a count past the window is cut to window + 1, which never fits either
            for encoding in self.tokenizer.encode(
                [self._measured(text) for text in texts], max_length=window + 1, add_special_tokens=False
            )
        ]
        left = window - counts[0] - counts[1]
        for kept, count in enumerate(counts[2:]):
            if count > left:
                return kept
            left -= count
        return len(rows)
