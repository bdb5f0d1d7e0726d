"""TAPAS's table encoding and the table-question-answering answer step, in numpy and `tokenizers`.

TAPAS has no fast tokenizer. `TapasTokenizer` (transformers 4.57, `models/tapas/tokenization_tapas.py`)
puts the question after `[CLS]`, then `[SEP]`, then the table row by row (header first), drops rows
and trims cells to fit (`drop_rows_to_fit`), and gives every token seven type ids: segment, column,
row, previous answer, column rank, inverse column rank, and the relation (=, <, >) of its cell to
the numbers and dates of the question. `TapasEncoder` reproduces those encodings id for id: a
`tokenizers` WordPiece does the word pieces; special tokens, empty cells, `never_split` and the
Unicode steps of `BasicTokenizer` that `BertNormalizer` orders differently run in Python first; the
number and date parsing (the original TAPAS `number_utils`, as transformers copies it) is ported
line for line, `datetime.strptime` included.

The answer step reproduces `TapasTokenizer.convert_logits_to_predictions` (`predict_cells`) and
`TableQuestionAnsweringPipeline`: its answer shapes (`answers`) and its `sequential_inference`
(`sequential_logits`), which feeds each query the previous query's answer as `prev_labels`.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer, normalizers
from tokenizers.models import WordPiece
from tokenizers.pre_tokenizers import BertPreTokenizer

from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, Unprocessable

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.floating[Any]]
NumericValue = tuple[float | None, ...]
"""A number `(x,)` or a date `(year, month, day)` with the fields its text did not give as None."""
Coordinates = list[tuple[int, int]]
RunModel = Callable[[Ints, Ints, Ints], tuple[Floats, Floats | None]]
"""Runs the model on one encoded query, `(1, L)` ids and mask and `(1, L, 7)` type ids: returns the
token logits `(1, L)` and, for a model with an aggregation head, its logits `(1, K)`."""

SEGMENT, COLUMN, ROW, PREV_LABELS, COLUMN_RANK, INVERSE_COLUMN_RANK, NUMERIC_RELATION = range(7)

_CJK = re.compile(
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]"
)
_EMPTY_CELLS = ("n/a", "?", "nan")
_WORD_CHARACTER = re.compile(r"[^\W_]")
_MIN_CONSOLIDATION_FRACTION = 0.7
_EQ, _LT, _GT = 1, 2, 4


@dataclass(frozen=True)
class TapasSettings:
    """`TapasTokenizer`'s settings, named as in its `tokenizer_config.json`.

    `update_answer_coordinates` and the answer arguments only make training labels and are not read.
    """

    do_lower_case: bool = True
    do_basic_tokenize: bool = True
    never_split: frozenset[str] = frozenset()
    tokenize_chinese_chars: bool = True
    strip_accents: bool | None = None
    unk_token: str = "[UNK]"
    sep_token: str = "[SEP]"
    pad_token: str = "[PAD]"
    cls_token: str = "[CLS]"
    mask_token: str = "[MASK]"
    empty_token: str = "[EMPTY]"
    additional_special_tokens: tuple[str, ...] = ()
    cell_trim_length: int = -1
    max_column_id: int | None = None
    max_row_id: int | None = None
    strip_column_names: bool = False
    min_question_length: int | None = None
    max_question_length: int | None = None
    model_max_length: int = 512
    padding_side: str = "right"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TapasSettings:
        """The settings a `tokenizer_config.json` names; tokens may be strings or `AddedToken` dicts."""
        values: dict[str, Any] = {}
        for setting in fields(cls):
            value = config.get(setting.name)
            if value is None:
                continue
            if setting.name == "never_split":
                value = frozenset(value)
            elif setting.name == "additional_special_tokens":
                value = tuple(_content(token) for token in value)
            elif setting.name.endswith("_token"):
                value = _content(value)
            values[setting.name] = value
        return cls(**values)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """`all_special_tokens`, in transformers' order, the empty token always among them."""
        extra = (*self.additional_special_tokens, self.empty_token)
        listed = (self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token, *extra)
        return tuple(dict.fromkeys(listed))

    @property
    def column_limit(self) -> int:
        return self.max_column_id if self.max_column_id is not None else self.model_max_length

    @property
    def row_limit(self) -> int:
        return self.max_row_id if self.max_row_id is not None else self.model_max_length


def _content(token: Any) -> str:
    return str(token["content"]) if isinstance(token, Mapping) else str(token)


def load_vocab(path: Path) -> dict[str, int]:
    """`vocab.txt` as transformers reads it: one token a line, the id its line number."""
    with open(path, encoding="utf-8") as reader:
        return {line.rstrip("\n"): index for index, line in enumerate(reader.readlines())}


@dataclass(frozen=True)
class TableEncoding:
    """The model inputs of one table and its queries, one row per query, int64, padded to one length.

    `token_type_ids[..., COLUMN]` and `[..., ROW]` map each table token to its cell (1-based; row 0
    is the header); the answer step reads the cells from them.
    """

    input_ids: Ints
    attention_mask: Ints
    token_type_ids: Ints

    def model_inputs(self) -> dict[str, Ints]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


@dataclass(frozen=True)
class _Table:
    """One table, tokenized and parsed once for all its queries."""

    cell_count: tuple[int, int]  # columns, data rows
    tokens: list[str]  # header then rows, each row column by column
    rows: Ints  # 0 for the header
    columns: Ints  # 0-based
    word_begins: Ints  # the piece index, within its cell, where the token's word begins
    fitting: Ints  # fitting[r, n]: tokens of rows 0..r whose word begins before piece n
    pieces: int  # the most pieces of any cell
    values: list[dict[int, NumericValue]] = field(repr=False)  # per column: data row -> its value
    ranks: Ints = field(repr=False)  # (columns, rows), 0 where a cell has no value
    inverse_ranks: Ints = field(repr=False)


class TapasEncoder:
    """`TapasTokenizer(table, queries, padding=..., truncation=..., return_tensors=...)`, as the
    table-question-answering pipeline calls it, from `vocab.txt` and the tokenizer's settings.

    A table is `{column name: [cell strings]}`, as the pipeline takes it before making it a
    DataFrame; `padding` is True or "longest" (to the longest query), "max_length" (to
    `model_max_length`), or False / "do_not_pad"; `truncation` is True or "drop_rows_to_fit" (the
    pipeline's default for TAPAS), or False / "do_not_truncate".
    """

    def __init__(
        self, vocab: Mapping[str, int], settings: TapasSettings, added_tokens: Mapping[str, int] | None = None
    ) -> None:
        self.settings = settings
        self._ids = {**vocab, **(added_tokens or {})}
        for token in settings.special_tokens:
            self._ids.setdefault(token, len(self._ids))
        self._unk_id = self._ids[settings.unk_token]
        self._pad_id = self._ids[settings.pad_token]
        self._special = re.compile(
            "(" + "|".join(re.escape(token) for token in sorted(settings.special_tokens, key=len, reverse=True)) + ")"
        )
        basic = settings.do_basic_tokenize
        self._never_split = settings.never_split | set(settings.special_tokens) if basic else frozenset()
        self._lower = basic and settings.do_lower_case
        self._clean = normalizers.Sequence(
            [
                normalizers.BertNormalizer(
                    clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False
                ),
                normalizers.NFC(),
            ]
        )
        self._wordpiece = Tokenizer(WordPiece(dict(vocab), unk_token=settings.unk_token, max_input_chars_per_word=100))
        strips = settings.strip_accents is not False if settings.do_lower_case else bool(settings.strip_accents)
        if basic:
            self._wordpiece.pre_tokenizer = BertPreTokenizer()
            if strips:
                self._wordpiece.normalizer = normalizers.BertNormalizer(
                    clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False
                )

    @classmethod
    def from_directory(cls, path: Path) -> TapasEncoder:
        """The encoder of a saved `TapasTokenizer`: `vocab.txt` and `tokenizer_config.json`."""
        vocab_file, config_file = path / "vocab.txt", path / "tokenizer_config.json"
        if not vocab_file.is_file():
            raise ArtifactError(f"{path} has no vocab.txt: TAPAS needs its WordPiece vocabulary")
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        added = {_content(token): int(index) for index, token in config.get("added_tokens_decoder", {}).items()}
        return cls(load_vocab(vocab_file), TapasSettings.from_config(config), added)

    def tokenize(self, text: str) -> list[str]:
        """`TapasTokenizer.tokenize`: word pieces, with `[EMPTY]` for a text without a word."""
        return self._tokenize_all([text])[0]

    def _tokenize_all(self, texts: Sequence[str]) -> list[list[str]]:
        plans: list[list[str | int]] = []
        runs: list[list[str]] = []
        for text in texts:
            plan: list[str | int] = []
            for index, chunk in enumerate(self._special.split(text)):
                if not chunk:
                    continue
                if index % 2:
                    plan.append(chunk)
                    continue
                if self._lower:
                    chunk = "".join(char.lower() for char in chunk)
                if _is_empty_text(chunk):
                    plan.append(self.settings.empty_token)
                    continue
                run: list[str] = []
                for word in self._words(chunk):
                    if word not in self._never_split:
                        run.append(word)
                        continue
                    if run:
                        plan.append(len(runs))
                        runs.append(run)
                        run = []
                    plan.append(word)
                if run:
                    plan.append(len(runs))
                    runs.append(run)
            plans.append(plan)
        pieces = [e.tokens for e in self._wordpiece.encode_batch(runs, is_pretokenized=True)] if runs else []
        return [[t for step in plan for t in ([step] if isinstance(step, str) else pieces[step])] for plan in plans]

    def _words(self, text: str) -> list[str]:
        """`BasicTokenizer`'s whitespace split after its cleaning, CJK spacing and NFC."""
        if not self.settings.do_basic_tokenize:
            return text.split()
        if self.settings.tokenize_chinese_chars:
            text = _CJK.sub(r" \g<0> ", text)
        cleaned: str = self._clean.normalize_str(text)
        return cleaned.split()

    def _question(self, query: str) -> tuple[str, list[str]]:
        """The query and its tokens; both empty past `min_question_length` / `max_question_length`."""
        tokens = self.tokenize(query)
        low, high = self.settings.min_question_length, self.settings.max_question_length
        if (high is not None and len(tokens) > high) or (low is not None and len(tokens) < low):
            return "", []
        return query, tokens

    def encode(
        self,
        table: Mapping[str, Sequence[str]],
        queries: str | Sequence[str],
        *,
        padding: bool | str = True,
        truncation: bool | str = True,
    ) -> TableEncoding:
        names, columns = table_columns(table)
        if isinstance(queries, str):
            if not queries:
                raise InvalidInput("query is empty")
            queries = [queries]
        if not queries or not all(isinstance(query, str) for query in queries):
            raise InvalidInput("`query` must be a non-empty string or a non-empty list of strings")
        pad_to = _padding(padding)
        truncate = _truncation(truncation)
        prepared = self._prepare(names, columns)
        encoded = [self._encode_query(prepared, query, truncate) for query in queries]
        lengths = [len(ids) for ids, _ in encoded]
        target = {"longest": max(lengths), "max_length": self.settings.model_max_length, None: 0}[pad_to]
        padded = {max(size, target) for size in lengths}
        if len(padded) > 1:
            raise Unprocessable(
                f"the queries encode to {lengths} tokens, which padding={padding!r} cannot bring to one length"
            )
        (length,) = padded
        input_ids = np.full((len(encoded), length), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encoded), length), dtype=np.int64)
        token_type_ids = np.zeros((len(encoded), length, 7), dtype=np.int64)
        for index, (ids, types) in enumerate(encoded):
            at = slice(length - len(ids), None) if self.settings.padding_side == "left" else slice(0, len(ids))
            input_ids[index, at] = ids
            attention_mask[index, at] = 1
            token_type_ids[index, at] = types
        return TableEncoding(input_ids, attention_mask, token_type_ids)

    def _prepare(self, names: list[str], columns: list[list[str]]) -> _Table:
        """`_tokenize_table`, its boundaries, and the column values and ranks of `add_numeric_table_values`."""
        num_rows = len(columns[0])
        header = ["" for _ in names] if self.settings.strip_column_names else names
        texts = header + [column[row] for row in range(num_rows) for column in columns]
        cells = self._tokenize_all(texts)
        tokens, rows, cols, begins = [], [], [], []
        for index, cell in enumerate(cells):
            row, column = divmod(index, len(names))
            begin = 0
            for piece, token in enumerate(cell):
                if not token.startswith("##"):
                    begin = piece
                tokens.append(token)
                rows.append(row)
                cols.append(column)
                begins.append(begin)
        pieces = max(map(len, cells))
        counts = np.zeros((num_rows + 1, pieces + 1), dtype=np.int64)
        np.add.at(counts, (np.array(rows, dtype=np.int64), np.array(begins, dtype=np.int64)), 1)
        fitting = np.cumsum(np.pad(np.cumsum(counts, axis=1), ((0, 0), (1, 0))), axis=0)
        values = [_column_values(column) for column in columns]
        ranks, inverse_ranks = _column_ranks(values, num_rows)
        return _Table(
            (len(names), num_rows),
            tokens,
            np.array(rows, dtype=np.int64),
            np.array(cols, dtype=np.int64),
            np.array(begins, dtype=np.int64),
            fitting,
            pieces,
            values,
            ranks,
            inverse_ranks,
        )

    def _encode_query(self, table: _Table, query: str, truncate: bool) -> tuple[list[int], Ints]:
        """`prepare_for_model` for one query: ids and the `(L, 7)` token type ids."""
        query, question = self._question(query)
        num_columns, num_rows = table.cell_count
        if num_rows >= self.settings.row_limit:
            if not truncate:
                raise Unprocessable(
                    f"the table has {num_rows} rows; this model takes fewer than {self.settings.row_limit}"
                )
            num_rows = self.settings.row_limit - 1
        if num_columns >= self.settings.column_limit:
            raise Unprocessable(
                f"the table has {num_columns} columns; this model takes fewer than {self.settings.column_limit}"
            )
        num_tokens = table.pieces
        if truncate:
            num_rows, num_tokens = self._fit(table, len(question), num_rows)
        kept = np.flatnonzero((table.rows <= num_rows) & (table.word_begins < num_tokens))
        ids = [self._id(token) for token in (self.settings.cls_token, *question, self.settings.sep_token)]
        ids += [self._id(table.tokens[index]) for index in kept]
        types = np.zeros((len(ids), 7), dtype=np.int64)
        rows, columns = table.rows[kept], table.columns[kept]
        in_cell = rows >= 1
        cell = (columns, np.maximum(rows - 1, 0))
        relations = _numeric_relations(_question_values(query), table.values, num_rows=table.cell_count[1])
        body = types[len(question) + 2 :]
        body[:, SEGMENT] = 1
        body[:, COLUMN] = columns + 1
        body[:, ROW] = rows
        body[:, COLUMN_RANK] = np.where(in_cell, table.ranks[cell], 0)
        body[:, INVERSE_COLUMN_RANK] = np.where(in_cell, table.inverse_ranks[cell], 0)
        body[:, NUMERIC_RELATION] = np.where(in_cell, relations[cell], 0)
        return ids, types

    def _fit(self, table: _Table, question_length: int, num_rows: int) -> tuple[int, int]:
        """`_get_truncated_table_rows`: drop rows from the end until the cells, trimmed to as many
        word pieces as fit (never inside a word, never under one), fit beside the question."""
        budget = self.settings.model_max_length - (question_length + 2)
        trim = self.settings.cell_trim_length
        most = min(table.pieces, trim) if trim >= 0 else table.pieces
        num_tokens: int | None = None
        while True:
            over = np.flatnonzero(table.fitting[num_rows, 1 : most + 2] > budget)
            num_tokens = int(over[0]) if over.size else most
            if num_tokens < most and (trim >= 0 or num_tokens == 0):
                num_tokens = None
            if num_tokens is not None:
                break
            num_rows -= 1
            if num_rows < 1:
                break
        return num_rows, num_tokens or 1

    def _id(self, token: str) -> int:
        return self._ids.get(token, self._unk_id)


def table_columns(table: Mapping[str, Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """The column names and cells of a `{column name: [cell strings]}` table, checked as the pipeline's
    DataFrame would need them: string names and cells, columns of one length, at least one row."""
    if not isinstance(table, Mapping) or not table:
        raise InvalidInput("`table` must be a non-empty object of column name -> list of cell strings")
    names, columns = [], []
    for name, cells in table.items():
        if isinstance(cells, str) or not isinstance(cells, Sequence):
            raise InvalidInput(f"column {name!r} of `table` must be a list of cell strings")
        if not all(isinstance(cell, str) for cell in cells):
            raise InvalidInput(f"the cells of column {name!r} must be strings")
        names.append(str(name))
        columns.append(list(cells))
    if len({len(column) for column in columns}) > 1:
        raise InvalidInput("the columns of `table` must all have the same number of cells")
    if not columns[0]:
        raise InvalidInput("table is empty")
    return names, columns


def _padding(padding: bool | str) -> str | None:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding == "do_not_pad":
        return None
    if padding == "max_length":
        return "max_length"
    raise InvalidParameter(f"padding must be true, false, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}")


def _truncation(truncation: bool | str) -> bool:
    if truncation is True or truncation == "drop_rows_to_fit":
        return True
    if truncation is False or truncation == "do_not_truncate":
        return False
    raise InvalidParameter(
        f"truncation must be true, false, 'drop_rows_to_fit' or 'do_not_truncate'; got {truncation!r}"
    )


def _is_empty_text(text: str) -> bool:
    """`format_text(text) == EMPTY_TEXT`: a text with no word character, or n/a, ? or nan."""
    return text.lower().strip() in _EMPTY_CELLS or not _WORD_CHARACTER.search(text.lower())


# Numbers and dates: `number_utils` and `number_annotation_utils` of the original TAPAS, as
# transformers copies them (`parse_text`, `_consolidate_numeric_values`, `get_numeric_sort_key_fn`).

_YEAR, _YEAR_MONTH, _YEAR_MONTH_DAY = (True, False, False), (True, True, False), (True, True, True)
_MONTH, _MONTH_DAY = (False, True, False), (False, True, True)
_DATE_PATTERNS = (
    ("%B", _MONTH),
    ("%Y", _YEAR),
    ("%Ys", _YEAR),
    ("%b %Y", _YEAR_MONTH),
    ("%B %Y", _YEAR_MONTH),
    ("%B %d", _MONTH_DAY),
    ("%b %d", _MONTH_DAY),
    ("%d %b", _MONTH_DAY),
    ("%d %B", _MONTH_DAY),
    ("%B %d, %Y", _YEAR_MONTH_DAY),
    ("%d %B %Y", _YEAR_MONTH_DAY),
    ("%m-%d-%Y", _YEAR_MONTH_DAY),
    ("%Y-%m-%d", _YEAR_MONTH_DAY),
    ("%Y-%m", _YEAR_MONTH),
    ("%d %b %Y", _YEAR_MONTH_DAY),
    ("%b %d, %Y", _YEAR_MONTH_DAY),
    ("%d.%m.%Y", _YEAR_MONTH_DAY),
    ("%A, %b %d", _MONTH_DAY),
    ("%A, %B %d", _MONTH_DAY),
)
_FIELD_TO_REGEX = (
    ("%A", r"\w+"),
    ("%B", r"\w+"),
    ("%Y", r"\d{4}"),
    ("%b", r"\w{3}"),
    ("%d", r"\d{1,2}"),
    ("%m", r"\d{1,2}"),
)


def _date_regex(pattern: str) -> re.Pattern[str]:
    regex = pattern.replace(".", re.escape(".")).replace("-", re.escape("-")).replace(" ", r"\s+")
    for name, field_regex in _FIELD_TO_REGEX:
        regex = regex.replace(name, field_regex)
    return re.compile("^" + regex + "$")


_DATES = tuple((pattern, mask, _date_regex(pattern)) for pattern, mask in _DATE_PATTERNS)
_MAX_DATE_NGRAM_SIZE = 5
_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_ORDINAL_WORDS = (
    "zeroth",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
)
_ORDINAL_SUFFIXES = ("st", "nd", "rd", "th")
_NUMBER_PATTERN = re.compile(r"((^|\s)[+-])?((\.\d+)|(\d+(,\d\d\d)*(\.\d*)?))")
_MIN_YEAR, _MAX_YEAR = 1700, 2016


def _parse_date(text: str) -> NumericValue | None:
    text = re.sub(r"Sept\b", "Sep", text)
    for pattern, (year, month, day), regex in _DATES:
        if not regex.match(text):
            continue
        try:
            date = datetime.datetime.strptime(text, pattern).date()
        except ValueError:
            continue
        if _MIN_YEAR <= date.year <= _MAX_YEAR:
            return (
                float(date.year) if year else None,
                float(date.month) if month else None,
                float(date.day) if day else None,
            )
    return None


def _parse_number(text: str) -> float | None:
    for suffix in _ORDINAL_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return None if math.isnan(value) or value == math.inf else value


def _spans(text: str, max_ngram_length: int) -> Iterator[tuple[int, int]]:
    """`get_all_spans`: every run of up to `max_ngram_length` alphanumeric words."""
    starts: list[int] = []
    for index, char in enumerate(text):
        if not char.isalnum():
            continue
        if index == 0 or not text[index - 1].isalnum():
            starts.append(index)
        if index + 1 == len(text) or not text[index + 1].isalnum():
            for start in starts[-max_ngram_length:]:
                yield start, index + 1


def _numeric_spans(text: str) -> list[list[NumericValue]]:
    """`parse_text`: the values of the longest number and date spans, in the order of the text."""
    found: defaultdict[tuple[int, int], list[NumericValue]] = defaultdict(list)
    for match in _NUMBER_PATTERN.finditer(text):
        number = _parse_number(match.group())
        if number is not None:
            found[match.span()].append((number,))
    for begin, end in _spans(text, 1):
        if (begin, end) in found:
            continue
        word = text[begin:end]
        number = _parse_number(word)
        if number is not None:
            found[begin, end].append((number,))
        for words in (_NUMBER_WORDS, _ORDINAL_WORDS):
            if word in words:
                found[begin, end].append((float(words.index(word)),))
    for begin, end in _spans(text, _MAX_DATE_NGRAM_SIZE):
        date = _parse_date(text[begin:end])
        if date is not None:
            found[begin, end].append(date)
    selected: list[tuple[tuple[int, int], list[NumericValue]]] = []
    for span, values in sorted(found.items(), key=lambda item: (item[0][1] - item[0][0], -item[0][0]), reverse=True):
        if not any(other[0] <= span[0] and span[1] <= other[1] for other, _ in selected):
            selected.append((span, values))
    return [values for _, values in sorted(selected, key=lambda item: item[0][0])]


def _normalize_for_match(text: str) -> str:
    return " ".join(text.lower().split())


def _question_values(query: str) -> list[NumericValue]:
    return [value for span in _numeric_spans(_normalize_for_match(query)) for value in span]


def _is_date(value: NumericValue) -> bool:
    return len(value) == 3


def _column_values(cells: Sequence[str]) -> dict[int, NumericValue]:
    """`_consolidate_numeric_values` of a column: the first value of each cell of the column's
    commonest kind (number or date, dates winning a tie), when at least 70% of cells have one."""
    cell_values = [[v for span in _numeric_spans(_normalize_for_match(cell)) for v in span] for cell in cells]
    kinds: Counter[bool] = Counter()
    for values in cell_values:
        kinds.update({_is_date(value) for value in values})
    if not kinds:
        return {}
    most = max(kinds.values())
    if most < len(cell_values) * _MIN_CONSOLIDATION_FRACTION:
        return {}
    date = kinds[True] == most
    return {
        row: next(value for value in values if _is_date(value) == date)
        for row, values in enumerate(cell_values)
        if any(_is_date(value) == date for value in values)
    }


def _sort_key(values: Sequence[NumericValue]) -> Callable[[NumericValue], NumericValue] | None:
    """`get_numeric_sort_key_fn`: numbers compare as numbers, dates on the fields they all have;
    None where the values are of two kinds or share no date field."""
    if len({_is_date(value) for value in values}) != 1:
        return None
    shared = [i for i in range(len(values[0])) if all(value[i] is not None for value in values)]
    if not shared:
        return None
    return lambda value: tuple(value[i] for i in shared)


def _column_ranks(values: list[dict[int, NumericValue]], num_rows: int) -> tuple[Ints, Ints]:
    """`_get_numeric_column_ranks` per cell: 1 for the smallest value of its column, and inversely."""
    ranks = np.zeros((len(values), num_rows), dtype=np.int64)
    inverse = np.zeros_like(ranks)
    for column, cells in enumerate(values):
        key = _sort_key(list(cells.values())) if cells else None
        if key is None:
            continue
        keys = {row: key(value) for row, value in cells.items()}
        order = {value: rank for rank, value in enumerate(sorted(set(keys.values())), start=1)}
        for row, value in keys.items():
            ranks[column, row] = order[value]
            inverse[column, row] = len(order) - order[value] + 1
    return ranks, inverse


def _numeric_relations(question: list[NumericValue], values: list[dict[int, NumericValue]], num_rows: int) -> Ints:
    """`_get_numeric_relations` per cell: the set of relations (question value = / < / > cell value)
    as bits 1, 2 and 4, over the question's values the cell's column can be compared with."""
    relations = np.zeros((len(values), num_rows), dtype=np.int64)
    for value in question:
        for column, cells in enumerate(values):
            key = _sort_key([*cells.values(), value]) if cells else None
            if key is None:
                continue
            mine = key(value)
            for row, cell in cells.items():
                other = key(cell)
                relations[column, row] |= _EQ if mine == other else _LT if mine < other else _GT if mine > other else 0
    return relations


# The answer step: `TapasTokenizer.convert_logits_to_predictions` and `TableQuestionAnsweringPipeline`.


@dataclass(frozen=True)
class Aggregation:
    """The aggregation head's labels from the model's `config.json`; `from_config` is None for a
    model without one, as the pipeline's `aggregate` (labels and a label count both set)."""

    labels: Mapping[int, str]
    no_aggregation_index: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Aggregation | None:
        labels = config.get("aggregation_labels")
        if not labels or not config.get("num_aggregation_labels"):
            return None
        return cls(
            {int(index): str(label) for index, label in labels.items()}, config.get("no_aggregation_label_index")
        )


def cell_probabilities(logits: Floats, attention_mask: Ints, token_type_ids: Ints) -> tuple[Ints, Floats]:
    """For one query: the `(column, row)` of every cell with tokens in the sequence (0-based, data rows
    only), and the mean over its tokens of the sigmoid of their logits."""
    clipped = np.maximum(np.asarray(logits), -88.7)
    probabilities = 1 / (1 + np.exp(-clipped)) * attention_mask
    columns, rows = token_type_ids[:, COLUMN] - 1, token_type_ids[:, ROW] - 1
    tokens = (token_type_ids[:, SEGMENT] == 1) & (columns >= 0) & (rows >= 0)
    cells, owner = np.unique(np.stack([columns[tokens], rows[tokens]], axis=1), axis=0, return_inverse=True)
    owner = owner.reshape(-1)
    means = np.bincount(owner, weights=probabilities[tokens], minlength=len(cells)) / np.bincount(
        owner, minlength=len(cells)
    )
    return cells.reshape(-1, 2), means


def predict_cells(
    encoding: TableEncoding,
    logits: Floats,
    logits_aggregation: Floats | None = None,
    threshold: float = 0.5,
) -> tuple[list[Coordinates], list[int] | None]:
    """`convert_logits_to_predictions`: per query, the `(row, column)` of the cells whose mean
    probability is over `threshold`, sorted, and the aggregation head's argmax when it has one.

    A query whose sequence kept no table token gets no cells (transformers drops it from the list).
    """
    coordinates = []
    for index in range(encoding.input_ids.shape[0]):
        cells, means = cell_probabilities(logits[index], encoding.attention_mask[index], encoding.token_type_ids[index])
        coordinates.append(sorted((int(row), int(column)) for column, row in cells[means > threshold]))
    aggregations = None if logits_aggregation is None else np.argmax(logits_aggregation, axis=-1).tolist()
    return coordinates, aggregations


def answers(
    table: Mapping[str, Sequence[str]],
    coordinates: Sequence[Coordinates],
    aggregations: Sequence[int] | None,
    aggregation: Aggregation | None,
) -> list[dict[str, Any]]:
    """The pipeline's answers: the cells joined by ", ", after "SUM > " style prefixes for a model
    with an aggregation head, whose label is also `aggregator` (no prefix for its no-aggregation
    label). A model without a head has no `aggregator` key, as in transformers."""
    columns = list(table.values())
    results = []
    for index, cells_at in enumerate(coordinates):
        cells = [columns[column][row] for row, column in cells_at]
        result: dict[str, Any] = {"answer": ", ".join(cells), "coordinates": list(cells_at), "cells": cells}
        if aggregation is not None and aggregations is not None:
            label = aggregation.labels[aggregations[index]]
            if aggregations[index] != aggregation.no_aggregation_index:
                result["answer"] = f"{label} > {result['answer']}"
            if label:
                result["aggregator"] = label
        results.append(result)
    return results


def sequential_logits(encoding: TableEncoding, run: RunModel) -> tuple[Floats, Floats | None]:
    """`sequential_inference`: runs the queries one at a time, each with `prev_labels` set on the tokens
    of the cells the previous query selected (mean probability over 0.5), as SQA models need.

    A cell the previous query's sequence did not reach is not selected (transformers raises a KeyError).
    """
    token_type_ids = encoding.token_type_ids.copy()
    all_logits, all_aggregations = [], []
    selected: set[tuple[int, int]] | None = None
    for index in range(encoding.input_ids.shape[0]):
        types = token_type_ids[index]
        if selected is not None:
            columns, rows = types[:, COLUMN] - 1, types[:, ROW] - 1
            tokens = (types[:, SEGMENT] == 1) & (columns >= 0) & (rows >= 0)
            types[:, PREV_LABELS] = 0
            types[tokens, PREV_LABELS] = [(c, r) in selected for c, r in zip(columns[tokens], rows[tokens])]
        logits, aggregation = run(
            encoding.input_ids[index : index + 1], encoding.attention_mask[index : index + 1], types[None]
        )
        all_logits.append(logits)
        if aggregation is not None:
            all_aggregations.append(aggregation)
        cells, means = cell_probabilities(logits[0], encoding.attention_mask[index], types)
        selected = {(int(column), int(row)) for column, row in cells[means > 0.5]}
    return np.concatenate(all_logits), np.concatenate(all_aggregations) if all_aggregations else None
