"""table-question-answering by generation (TAPEX: BART reading a linearized table), answered as
transformers' `TableQuestionAnsweringPipeline` answers for a sequence-to-sequence model: each
question with its table through `TapexTokenizer` (`runtime.tables.tapex`), `generate`, and
`{"answer": <the decoded text>}`.

The artifact is a text2text generative one (encoder and merged decoder graphs) whose task is
table-question-answering; `TableQuestionAnsweringPipeline.variant` serves it with this class.
Inputs and answer shapes are those of the TAPAS pipeline: `{"table": {column: [cells]}, "query"
(or "question"): a string or a list}`, or a list of those; one question answers a dict, several a
list. The pipeline's parameters: `truncation` (default off, as the pipeline's for TAPEX; see
`runtime.tables.tapex.Truncation`), `padding` and `sequential`, which change no answer here (each
question is generated alone; the pipeline ignores `sequential` for TAPEX); and the generation
parameters of the text2text task. Without `max_new_tokens` in the request, the length is the
pipeline's: the model's `max_length` when that is not transformers' default of 20, else 256 new
tokens (the pipeline's default, which wins over a `max_new_tokens` in the model's generation config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from runtime.artifact import Manifest
from runtime.errors import InvalidInput, InvalidParameter
from runtime.session import SessionOptions
from runtime.tables.tapex import Table, TapexEncoder, Truncation
from runtime.tasks.base import InputKind, parse_parameters
from runtime.tasks.table_question_answering import TableQuestionAnsweringPipeline, table_requests
from runtime.tasks.text_generation import GenerationParameters, Text2TextGenerationPipeline

PIPELINE_NEW_TOKENS = 256  # `TableQuestionAnsweringPipeline._default_generation_config`
GENERATE_DEFAULT_LENGTH = 20  # `GenerationConfig.max_length`'s default, which the pipeline overrides
TABLE_PARAMETERS = ("sequential", "padding", "truncation")
TRUNCATIONS: dict[bool | str, Truncation] = {
    False: Truncation.NONE,
    "do_not_truncate": Truncation.NONE,
    True: Truncation.TOKENS,
    "longest_first": Truncation.TOKENS,
    "only_first": Truncation.TOKENS,
    "drop_rows_to_fit": Truncation.ROWS,
}


class TapexParameters(GenerationParameters, forbid_unknown_fields=True):
    sequential: bool = False
    padding: bool | str = True
    truncation: bool | str = False


@dataclass(frozen=True)
class Question:
    """One question about one table: what `prompt_ids` encodes."""

    table: Table
    query: str
    truncation: Truncation


class TapexPipeline(Text2TextGenerationPipeline):
    task: ClassVar[str] = "table-question-answering"
    input_kind: ClassVar[InputKind] = InputKind.TABLE
    Parameters = TapexParameters
    output_key = "answer"

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        self.tables = TapexEncoder.from_directory(directory, self.tokenizer)
        length = self.defaults.get("max_length")
        if isinstance(length, int) and length != GENERATE_DEFAULT_LENGTH:
            self.defaults["max_new_tokens"] = length - 1  # the decoder's start token counts in `max_length`
        else:
            self.defaults["max_new_tokens"] = PIPELINE_NEW_TOKENS

    @property
    def example(self) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        inputs, _ = TableQuestionAnsweringPipeline.example
        return inputs, {"max_new_tokens": 2}

    def __call__(self, inputs: Any, **parameters: Any) -> Any:
        table_parameters = {name: parameters.pop(name) for name in TABLE_PARAMETERS if name in parameters}
        truncation = self.truncation(parse_parameters(TapexParameters, table_parameters).truncation)
        requests = table_requests(inputs)
        self.check_sequences(sum(len(queries) for _, queries in requests))
        prepared = [
            [self.prepare(Question(table, query, truncation), parameters) for query in queries]
            for table, queries in requests
        ]
        results: list[Any] = []
        for questions in prepared:
            answers = [{self.output_key: self.finish(question)[1].text} for question in questions]
            results.append(answers[0] if len(answers) == 1 else answers)
        return results[0] if len(results) == 1 else results

    @staticmethod
    def truncation(value: bool | str) -> Truncation:
        found = TRUNCATIONS.get(value)
        if found is None:
            choices = ", ".join(repr(choice) for choice in TRUNCATIONS)
            raise InvalidParameter(f"`truncation` must be one of {choices}; got {value!r}")
        return found

    def prompt_ids(self, inputs: Any, params: GenerationParameters) -> tuple[str, list[int]]:
        if not isinstance(inputs, Question):
            raise InvalidInput('table-question-answering takes {"table": {column: [cells]}, "query": ...}')
        if params.truncate is not None:
            raise InvalidParameter("a table is cut by `truncation` (true, or drop_rows_to_fit), not `truncate`")
        return self.tables.encode(inputs.table, inputs.query, inputs.truncation)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model_kind": "tapex",
            "max_positions": self.tokenizer.max_length,
            "max_cell_length": self.tables.max_cell_length,
        }
