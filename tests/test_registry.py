"""Every task is registered in every layer, under one name, with a tiny test model."""

from __future__ import annotations

from compile.tasks import compilable, export_spec
from kiln.tiny_models import SPECS
from runtime import canonical, registered
from runtime.tasks import SYNONYMS, pipeline_class
from tests.cases import CASES, TRANSFORMERS_TASKS

# The contract's tasks this backbone serves; later tasks join this list as they land.
SERVED = [
    *TRANSFORMERS_TASKS,
    "sentence-embeddings",
    "sentence-similarity",
    "ranking",
    "text-generation",
    "text2text-generation",
    "summarization",
    "translation",
]


def test_every_served_task_is_in_every_layer() -> None:
    assert sorted(SERVED) == registered() == compilable()
    for task in SERVED:
        assert export_spec(task).task == task
        assert pipeline_class(task) is not None
        assert task in SPECS, f"{task} has no tiny test model"
        assert CASES[task], f"{task} has no test cases"


def test_synonyms_resolve_in_one_table() -> None:
    assert canonical("sentiment-analysis") == "text-classification"
    assert canonical("NER") == "token-classification"
    assert canonical("question_answering") == "question-answering"
    assert canonical("conversational") == "text-generation"
    assert all(canonical(alias) == target for alias, target in SYNONYMS.items())
    assert export_spec("sentiment-analysis").task == "text-classification"
