"""`runtime.tables.tapas` against transformers 4.57's own TAPAS code.

- Encodings against `TapasTokenizer`: `input_ids`, `attention_mask` and all seven `token_type_ids`
  channels identical (exact equality, int64), for nine tokenizer settings over three tables of
  numbers, dates, empty cells, mixed columns, accents, capitals and CJK, every query alone and all
  together; for tables truncated by `drop_rows_to_fit` (rows dropped, cells trimmed, even the
  header alone); for the row and column limits; and for every padding.
- Number and date parsing against `parse_text`: the same spans, the same values.
- The answer step against `convert_logits_to_predictions` on random logits: the same cells, the same
  aggregation index.
- The answers against `TableQuestionAnsweringPipeline` on tiny random `TapasForQuestionAnswering`
  models, with and without an aggregation head, batched and `sequential`: the same answers,
  coordinates, cells and aggregators, from the numpy answer step fed the same model's logits.

transformers' `TapasTokenizer` needs pandas, and fails on pandas 3: the test extra pins `pandas<3`.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TapasConfig, TapasForQuestionAnswering, TapasTokenizer, pipeline
from transformers.models.tapas import tokenization_tapas

from runtime.errors import InvalidInput, InvalidParameter, Unprocessable
from runtime.tables.tapas import (
    NUMERIC_RELATION,
    Aggregation,
    TableEncoding,
    TapasEncoder,
    TapasSettings,
    _numeric_spans,
    answers,
    load_vocab,
    predict_cells,
    sequential_logits,
)

Table = dict[str, list[str]]

TABLES: dict[str, Table] = {
    "numbers": {
        "Name": ["Alice", "Bob", "Çédric", "Ñandú Ltd.", "ZOË"],
        "Score": ["1,234", "-5", "3.5", "12%", "3.5"],
        "Revenue ($)": ["$1,000.50", "+7", ".25", "1e3", "2,000,000"],
        "Rank": ["1st", "2nd", "third", "twelve", "3rd"],
        "Notes": ["n/a", "", "?", "nan", "-"],
    },
    "dates": {
        "Event": ["Launch", "Merger", "IPO", "Crash", "Split"],
        "When": ["March 5, 2019", "5 June 1996", "2010-01-15", "Sept 2001", "1990s"],
        "Day": ["01-15-2010", "15.01.2010", "January 3", "3 Feb", "Monday, March 3"],
        "Year": ["1999", "2005", "2005", "1850", "1650"],
    },
    "mixed": {
        "City": ["東京 Tokyo", "São Paulo", "KÖLN", "naïve café", "x" * 120],
        "Population": ["13,960,000", "12.3 million", "about 1 million", "", "N/A"],
        "Founded": ["1457", "January 25, 1554", "38 BC", "unknown", "1800"],
        "Mixed": ["12", "abc", "2001-02-03", "7", "[SEP] 5 [EMPTY]"],
    },
}
QUERIES = [
    "What is the score of Alice?",
    "Which names scored more than 3.5 and less than 1,234?",
    "Who was born after 5 June 1996 or in 2005?",
    "How many events happened before March 2001, and how many in the 1990s?",
    "  spaced   QUESTION with ÀCCENTS, 東京 and a ß ",
    "is twelve more than the third? what about 1,000.50 or -5",
    "n/a",
]
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cased": {"do_lower_case": False},
    "cased-strip-accents": {"do_lower_case": False, "strip_accents": True},
    "keep-accents": {"strip_accents": False},
    "no-chinese": {"tokenize_chinese_chars": False},
    "strip-column-names": {"strip_column_names": True},
    "question-limits": {"min_question_length": 3, "max_question_length": 12},
    "never-split": {"never_split": ["tokyo", "ZOË", "score"]},
    "no-basic": {"do_basic_tokenize": False},
}
AGGREGATION_LABELS = {0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"}


def _vocabulary() -> list[str]:
    """Special tokens, every ASCII character alone and as a continuation, capitals, a few accented
    letters and CJK characters, whole words and pieces; ß, emoji and most CJK stay unknown."""
    words = [
        "what",
        "is",
        "the",
        "of",
        "who",
        "how",
        "many",
        "which",
        "name",
        "names",
        "score",
        "scored",
        "more",
        "than",
        "less",
        "and",
        "born",
        "after",
        "in",
        "before",
        "event",
        "events",
        "happened",
        "launch",
        "merger",
        "crash",
        "split",
        "when",
        "day",
        "year",
        "city",
        "population",
        "founded",
        "mixed",
        "notes",
        "rank",
        "revenue",
        "alice",
        "bob",
        "tokyo",
        "paulo",
        "about",
        "million",
        "unknown",
        "third",
        "twelve",
        "question",
        "with",
        "accents",
    ]
    letters = string.ascii_letters + string.digits + "éèçñöüïàëã"
    pieces = ["##ing", "##ed", "##er", "##ion", "##000", "##25", "##llion"]
    return [
        "[PAD]",
        "[EMPTY]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *string.punctuation,
        *letters,
        *(f"##{c}" for c in letters),
        "東",
        "京",
        *words,
        *pieces,
    ]


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tapas-vocab") / "vocab.txt"
    path.write_text("\n".join(_vocabulary()) + "\n", encoding="utf-8")
    return path


def _pair(vocab_file: Path, out: Path, **settings: Any) -> tuple[TapasTokenizer, TapasEncoder]:
    """transformers' tokenizer and ours, read back from what `save_pretrained` wrote."""
    reference = TapasTokenizer(str(vocab_file), **settings)
    reference.save_pretrained(str(out))
    return reference, TapasEncoder.from_directory(out)


def _reference(tokenizer: TapasTokenizer, table: Table, queries: str | list[str], **kwargs: Any) -> TableEncoding:
    query = queries if isinstance(queries, str) else list(queries)
    encoded = tokenizer(table=pd.DataFrame(table), queries=query, return_tensors="np", **kwargs)
    return TableEncoding(*(np.asarray(encoded[key]) for key in ("input_ids", "attention_mask", "token_type_ids")))


def assert_same_encoding(ours: TableEncoding, reference: TableEncoding) -> None:
    for name, got in ours.model_inputs().items():
        expected = getattr(reference, name)
        assert got.dtype == np.int64, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("table_name", TABLES)
def test_encodings_match_tapas_tokenizer(setting: str, table_name: str, vocab_file: Path, tmp_path: Path) -> None:
    reference, ours = _pair(vocab_file, tmp_path, **SETTINGS[setting])
    table = TABLES[table_name]
    for queries in [QUERIES, *QUERIES]:
        assert_same_encoding(ours.encode(table, queries), _reference(reference, table, queries, padding=True))
    for text in [*table, *(cell for column in table.values() for cell in column), *QUERIES]:
        assert ours.tokenize(text) == reference.tokenize(text), text


def test_encodings_exercise_ranks_relations_and_unknowns(vocab_file: Path, tmp_path: Path) -> None:
    """The comparisons above are not vacuous: the tables have ranked columns, the queries all three
    relations, and the vocabulary unknown words and empty cells."""
    _, ours = _pair(vocab_file, tmp_path)
    encodings = [ours.encode(table, QUERIES) for table in TABLES.values()]
    types = np.concatenate([e.token_type_ids.reshape(-1, 7) for e in encodings])
    ids = np.concatenate([e.input_ids.reshape(-1) for e in encodings])
    assert types[:, 4].max() >= 5 and types[:, 5].max() >= 5
    assert {1, 2, 4} <= set(np.unique(types[:, NUMERIC_RELATION]).tolist())
    vocab = load_vocab(Path(tmp_path) / "vocab.txt")
    assert vocab["[UNK]"] in ids and vocab["[EMPTY]"] in ids
    assert ours.tokenize("") == [] and ours.tokenize(" ") == ours.tokenize("-") == ["[EMPTY]"]


def _long_table(rows: int, words: int = 1) -> Table:
    return {
        "Name": [" ".join(["alice bob"] * words) + f" {index}" for index in range(rows)],
        "Score": [str(1000 - 7 * index) for index in range(rows)],
        "When": [f"{1 + index % 28} june {1900 + index}" for index in range(rows)],
    }


@pytest.mark.parametrize(
    ("settings", "table"),
    [
        ({"model_max_length": 64}, _long_table(40)),
        ({"model_max_length": 48}, _long_table(12, words=6)),
        ({"model_max_length": 64, "cell_trim_length": 2}, _long_table(40, words=3)),
        ({"model_max_length": 64, "cell_trim_length": 30}, _long_table(40, words=3)),
        ({"model_max_length": 16}, _long_table(5, words=4)),
        ({"model_max_length": 512, "max_row_id": 10}, _long_table(30)),
    ],
    ids=["drop-rows", "trim-cells", "cell-trim-length", "cell-trim-length-long", "header-only", "max-row-id"],
)
def test_truncation_drop_rows_to_fit(settings: dict[str, Any], table: Table, vocab_file: Path, tmp_path: Path) -> None:
    reference, ours = _pair(vocab_file, tmp_path, **settings)
    long_question = "what is the score of alice and bob " * 4
    for queries in [["who?", "what is the score of bob in 1905?", long_question], "how many?", long_question]:
        expected = _reference(reference, table, queries, padding=True, truncation="drop_rows_to_fit")
        assert_same_encoding(ours.encode(table, queries), expected)
        assert_same_encoding(ours.encode(table, queries, truncation="drop_rows_to_fit"), expected)
    whole = [*table, *(cell for column in table.values() for cell in column)]
    assert ours.encode(table, "who?").input_ids.shape[1] < 3 + sum(len(ours.tokenize(text)) for text in whole)


def test_limits_without_truncation(vocab_file: Path, tmp_path: Path) -> None:
    table = _long_table(12)
    reference, ours = _pair(vocab_file, tmp_path / "rows", max_row_id=12)
    with pytest.raises(ValueError, match="Too many rows"):
        _reference(reference, table, "who?", truncation=False)
    with pytest.raises(Unprocessable, match="12 rows"):
        ours.encode(table, "who?", truncation="do_not_truncate")
    reference, ours = _pair(vocab_file, tmp_path / "columns", max_column_id=3)
    with pytest.raises(ValueError, match="Too many columns"):
        _reference(reference, table, "who?", truncation=True)
    with pytest.raises(Unprocessable, match="3 columns"):
        ours.encode(table, "who?")
    reference, ours = _pair(vocab_file, tmp_path / "free", model_max_length=32)
    expected = _reference(reference, table, ["who?", "what is it?"], padding=True, truncation=False)
    assert expected.input_ids.shape[1] > 32
    assert_same_encoding(ours.encode(table, ["who?", "what is it?"], truncation=False), expected)


@pytest.mark.parametrize("padding", [True, False, "longest", "max_length", "do_not_pad"])
def test_padding(padding: bool | str, vocab_file: Path, tmp_path: Path) -> None:
    table = TABLES["numbers"]
    for side in ("right", "left"):
        reference, ours = _pair(vocab_file, tmp_path / side, model_max_length=160, padding_side=side)
        queries: list[str | list[str]] = [QUERIES[0], [QUERIES[1]]]
        if padding not in (False, "do_not_pad"):
            queries.append(QUERIES)
        for query in queries:
            expected = _reference(reference, table, query, padding=padding, truncation=True)
            assert_same_encoding(ours.encode(table, query, padding=padding), expected)
    if padding in (False, "do_not_pad"):
        with pytest.raises(Unprocessable, match="one length"):
            ours.encode(table, QUERIES, padding=padding)


def test_empty_token_outside_the_vocabulary(tmp_path: Path) -> None:
    """`[EMPTY]` missing from vocab.txt gets the next id, in transformers and here, read from
    `added_tokens_decoder` or assigned."""
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(t for t in _vocabulary() if t != "[EMPTY]") + "\n", encoding="utf-8")
    reference, ours = _pair(vocab_file, tmp_path / "saved")
    table = TABLES["numbers"]
    expected = _reference(reference, table, QUERIES, padding=True)
    assert_same_encoding(ours.encode(table, QUERIES), expected)
    assert_same_encoding(TapasEncoder(load_vocab(vocab_file), TapasSettings()).encode(table, QUERIES), expected)


def test_invalid_inputs(vocab_file: Path, tmp_path: Path) -> None:
    _, ours = _pair(vocab_file, tmp_path)
    cases: list[tuple[Any, Any, str]] = [
        ({"a": []}, "q", "table is empty"),
        ({}, "q", "non-empty object"),
        ({"a": ["1", "2"], "b": ["1"]}, "q", "same number"),
        ({"a": [1, 2]}, "q", "must be strings"),
        ({"a": "12"}, "q", "list of cell strings"),
        ({"a": ["1"]}, "", "query is empty"),
        ({"a": ["1"]}, [], "non-empty list"),
        ({"a": ["1"]}, [3], "non-empty list"),
    ]
    for table, query, message in cases:
        with pytest.raises(InvalidInput, match=message):
            ours.encode(table, query)
    with pytest.raises(InvalidParameter, match="padding"):
        ours.encode({"a": ["1"]}, "q", padding="sideways")
    with pytest.raises(InvalidParameter, match="truncation"):
        ours.encode({"a": ["1"]}, "q", truncation="only_first")


def _reference_values(value: Any) -> tuple[float | None, ...]:
    if value.float_value is not None:
        return (value.float_value,)
    date = value.date
    return tuple(None if field is None else float(field) for field in (date.year, date.month, date.day))


def test_number_and_date_parsing_matches_parse_text() -> None:
    texts = [
        *(
            tokenization_tapas.normalize_for_match(c)
            for table in TABLES.values()
            for column in table.values()
            for c in column
        ),
        *(tokenization_tapas.normalize_for_match(q) for q in QUERIES),
        "march 5, 2015",
        "5 march 2015 and 2015-03-05, 03-05-2015, 05.03.2015",
        "sept 2001",
        "sep 2001",
        "tuesday, june 7",
        "1800s to the 1850s",
        "12.5.",
        " +3 and -4.5e2 and .5 and 1,234,567.8",
        "first second tenth eleventh twelfth thirteenth",
        "zero one eleven twelve thirteen",
        "1st 22nd 33rd 44th 5st",
        "inf infinity nan -inf",
        "june",
        "2016 2017 1699 1700",
    ]
    for text in texts:
        expected = [[_reference_values(v) for v in span.values] for span in tokenization_tapas.parse_text(text)]
        assert _numeric_spans(text) == expected, text


@pytest.mark.parametrize("seed", range(6))
def test_predictions_match_convert_logits_to_predictions(seed: int, vocab_file: Path, tmp_path: Path) -> None:
    reference, _ = _pair(vocab_file, tmp_path)
    rng = np.random.default_rng(seed)
    table = list(TABLES.values())[seed % len(TABLES)]
    encoded = reference(table=pd.DataFrame(table), queries=list(QUERIES), padding=True, return_tensors="pt")
    encoding = TableEncoding(*(encoded[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")))
    logits = rng.normal(0.0, 2.0, encoding.input_ids.shape).astype(np.float32)
    logits[rng.random(logits.shape) < 0.05] = -200.0
    aggregation = rng.normal(size=(logits.shape[0], 4)).astype(np.float32)
    data = {key: value for key, value in encoded.items()}
    for threshold in (0.5, 0.3):
        expected_cells, expected_aggregations = reference.convert_logits_to_predictions(
            data, torch.from_numpy(logits.copy()), torch.from_numpy(aggregation), threshold
        )
        cells, aggregations = predict_cells(encoding, logits, aggregation, threshold)
        assert cells == expected_cells
        assert aggregations == expected_aggregations
        assert any(cells)
    (expected_cells,) = reference.convert_logits_to_predictions(data, torch.from_numpy(logits.copy()))
    assert predict_cells(encoding, logits) == (expected_cells, None)


def _tiny_tapas(vocab_size: int, aggregation: bool) -> TapasForQuestionAnswering:
    """A random two-layer TAPAS, its weights drawn wide enough (`initializer_range=1`) that the
    aggregation head's argmax differs between queries: answers with and without a prefix occur."""
    torch.manual_seed(0)
    heads = {
        "num_aggregation_labels": 4,
        "aggregation_labels": AGGREGATION_LABELS,
        "no_aggregation_label_index": 0,
        "use_answer_as_supervision": True,
    }
    config = TapasConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=256,
        initializer_range=1.0,
        **(heads if aggregation else {}),
    )
    return TapasForQuestionAnswering(config).eval()


@pytest.mark.parametrize("sequential", [False, True], ids=["batched", "sequential"])
@pytest.mark.parametrize("aggregation", [False, True], ids=["cells", "aggregation"])
def test_answers_match_the_pipeline(aggregation: bool, sequential: bool, vocab_file: Path, tmp_path: Path) -> None:
    reference, ours = _pair(vocab_file, tmp_path, model_max_length=96)
    model = _tiny_tapas(len(load_vocab(vocab_file)), aggregation)
    oracle = pipeline("table-question-answering", model=model, tokenizer=reference, framework="pt")
    head = Aggregation.from_config(model.config.to_dict())
    assert (head is not None) == aggregation

    def run(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
        with torch.no_grad():
            out = model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                token_type_ids=torch.from_numpy(token_type_ids),
            )
        agg = None if out.logits_aggregation is None else out.logits_aggregation.numpy()
        return out.logits.numpy(), agg

    seen_prefixes = set()
    long_table = _long_table(30)
    for table in [*TABLES.values(), long_table]:
        for queries in [QUERIES, QUERIES[1]]:
            if sequential and table is long_table and not isinstance(queries, str):
                with pytest.raises(KeyError), torch.no_grad():
                    oracle(table=table, query=queries, sequential=True)
                encoding = ours.encode(table, queries)
                assert sequential_logits(encoding, run)[0].shape == encoding.input_ids.shape
                continue
            with torch.no_grad():
                expected = oracle(table=table, query=queries, sequential=sequential)
            encoding = ours.encode(table, queries)
            logits, agg = sequential_logits(encoding, run) if sequential else run(*encoding.model_inputs().values())
            got = answers(table, *predict_cells(encoding, logits, agg), head)
            assert got == (expected if isinstance(expected, list) else [expected])
            seen_prefixes |= {" > " in answer["answer"] for answer in got}
    assert seen_prefixes == ({True, False} if aggregation else {False})


def test_sequential_carries_the_previous_answer(vocab_file: Path, tmp_path: Path) -> None:
    """The second query's `prev_labels` are 1 exactly on the tokens of the cells the first selected."""
    _, ours = _pair(vocab_file, tmp_path)
    encoding = ours.encode(TABLES["numbers"], QUERIES[:2])
    seen: list[np.ndarray] = []

    def run(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, None]:
        seen.append(token_type_ids[0].copy())
        types = token_type_ids[0]
        pick = (types[:, 2] == 2) | ((types[:, 1] == 1) & (types[:, 2] == 4))
        return np.where(pick, 3.0, -3.0)[None].astype(np.float32), None

    sequential_logits(encoding, run)
    first, second = seen
    assert not first[:, 3].any()
    expected = (second[:, 0] == 1) & ((second[:, 2] == 2) | ((second[:, 1] == 1) & (second[:, 2] == 4)))
    np.testing.assert_array_equal(second[:, 3], expected.astype(np.int64))
    assert expected.sum() > 3


def test_answers_shape(vocab_file: Path) -> None:
    table = {"a": ["1", "2"], "b": ["x", "y"]}
    head = Aggregation.from_config({"aggregation_labels": {"0": "NONE", "1": "SUM"}, "num_aggregation_labels": 2})
    assert head == Aggregation({0: "NONE", 1: "SUM"}, None)
    assert Aggregation.from_config({"aggregation_labels": None, "num_aggregation_labels": 4}) is None
    coordinates = [[(0, 0), (1, 0)], [(1, 1)]]
    assert answers(table, coordinates, [1, 0], Aggregation({0: "NONE", 1: "SUM"}, 0)) == [
        {"answer": "SUM > 1, 2", "coordinates": [(0, 0), (1, 0)], "cells": ["1", "2"], "aggregator": "SUM"},
        {"answer": "y", "coordinates": [(1, 1)], "cells": ["y"], "aggregator": "NONE"},
    ]
    assert answers(table, coordinates, None, None)[1] == {"answer": "y", "coordinates": [(1, 1)], "cells": ["y"]}
