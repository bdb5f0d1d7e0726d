"""table-question-answering (TAPAS): a table and questions -> `{"answer", "coordinates", "cells"}`
(+ `"aggregator"` for models with an aggregation head), as transformers'
`TableQuestionAnsweringPipeline` answers.

The table is `{column: [cells]}` (cells as strings, as the pipeline's DataFrame holds them), the
questions `query` (or `question`, the contract's name): one string or a list. The encoding is the
runtime's port of `TapasTokenizer` (`runtime.tables.tapas`: table flattening, numbers and dates,
ranks, relations; `drop_rows_to_fit` truncation by default), one model row per question; then
the pipeline's answer step. `sequential=True` runs the questions one after the other, each told
which cells the previous one answered (SQA models). One question answers a dict, several a list;
a list of inputs answers a list, as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from runtime.artifact import Manifest
from runtime.errors import InvalidInput, Unprocessable
from runtime.session import SessionOptions
from runtime.tables.tapas import Aggregation, TableEncoding, TapasEncoder, answers, predict_cells, sequential_logits
from runtime.tasks import register
from runtime.tasks.base import InputKind, Pipeline, type_name

Table = Mapping[str, Sequence[str]]


class TableQuestionAnsweringParameters(msgspec.Struct, forbid_unknown_fields=True):
    sequential: bool = False
    padding: bool | str = True
    truncation: bool | str = True  # drop_rows_to_fit, the pipeline's default for TAPAS


def table_requests(inputs: Any) -> list[tuple[Table, list[str]]]:
    """(table, questions) of each input, in every form the pipeline takes (TAPAS and TAPEX alike):
    `{"table", "query" or "question"}` or a list of those, a question or a list of them."""
    items = [inputs] if isinstance(inputs, dict) else inputs
    if not isinstance(items, list) or not items:
        raise InvalidInput('table-question-answering takes {"table": {column: [cells]}, "query": ...}, or a list')
    requests: list[tuple[Table, list[str]]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"input {index} must be an object with `table` and `query`; got {type_name(item)}")
        table, queries = item.get("table"), item.get("query", item.get("question"))
        if not isinstance(table, dict) or not table:
            raise InvalidInput(f"input {index} needs `table`: an object of columns, each a list of cells")
        questions = [queries] if isinstance(queries, str) else queries
        if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q for q in questions):
            raise InvalidInput(f"input {index} needs `query` (or `question`): a non-empty string, or a list of them")
        requests.append((table_cells(table, index), questions))
    return requests


def table_cells(table: dict[str, Any], index: int) -> dict[str, list[str]]:
    """The table's cells as strings (the pipeline's DataFrame of strings); numbers are written as
    Python writes them, other values are refused."""
    columns: dict[str, list[str]] = {}
    for name, cells in table.items():
        if not isinstance(cells, list):
            raise InvalidInput(f"column {name!r} of input {index} must be a list of cells; got {type_name(cells)}")
        if any(isinstance(cell, (dict, list)) for cell in cells):
            raise InvalidInput(f"column {name!r} of input {index} holds a cell that is not text or a number")
        columns[str(name)] = ["" if cell is None else str(cell) for cell in cells]
    return columns


@register("table-question-answering")
class TableQuestionAnsweringPipeline(Pipeline):
    input_kind: ClassVar[InputKind] = InputKind.TABLE
    Parameters = TableQuestionAnsweringParameters
    example = ({"table": {"City": ["Paris", "Rome"], "People": ["2148000", "2873000"]}, "query": "Which city?"}, {})

    @classmethod
    def variant(cls, manifest: Manifest) -> type[Pipeline]:
        """TAPAS (one graph) or TAPEX (BART's encoder and decoder: `runtime.tasks.tapex`)."""
        from runtime.tasks.tapex import TapexPipeline

        return TapexPipeline if "encoder" in manifest.graphs else cls

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        self.encoder = TapasEncoder.from_directory(directory)
        self.aggregation = Aggregation.from_config(self.config)
        self.max_positions = int(self.config.get("max_position_embeddings") or 1024)

    def predict(self, inputs: Any, params: TableQuestionAnsweringParameters) -> Any:
        requests = table_requests(inputs)
        encodings = [
            self.encoder.encode(table, queries, padding=params.padding, truncation=params.truncation)
            for table, queries in requests
        ]
        self.check_sequences(sum(encoding.input_ids.shape[0] for encoding in encodings))
        longest = max(encoding.input_ids.shape[1] for encoding in encodings)
        if longest > self.max_positions:
            raise Unprocessable(
                f"a table and question take {longest} tokens; this model reads at most {self.max_positions}: "
                "allow truncation or send a smaller table"
            )
        results = []
        for (table, _), encoding in zip(requests, encodings):
            if params.sequential:
                logits, aggregations = sequential_logits(encoding, self._run)
            else:
                logits, aggregations = self._batched(encoding)
            found = answers(table, *predict_cells(encoding, logits, aggregations), self.aggregation)
            results.append(found if len(found) > 1 else found[0])
        return results[0] if len(results) == 1 else results

    def _batched(self, encoding: TableEncoding) -> tuple[np.ndarray, np.ndarray | None]:
        """Every question of one table in one model call (through `core`, which a batcher shares)."""
        inputs = encoding.model_inputs()
        items = [{name: value[row] for name, value in inputs.items()} for row in range(encoding.input_ids.shape[0])]
        outputs = self.core(items)
        logits = np.stack([out["logits"] for out in outputs])
        has_head = self.aggregation is not None and "logits_aggregation" in outputs[0]
        return logits, np.stack([out["logits_aggregation"] for out in outputs]) if has_head else None

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> Any:
        outputs = self.model.run(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        )
        return outputs["logits"], outputs.get("logits_aggregation") if self.aggregation is not None else None

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return self.run_same_shapes(items)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "max_positions": self.max_positions,
            "aggregation": None if self.aggregation is None else dict(self.aggregation.labels),
        }
