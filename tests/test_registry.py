"""Every task is registered in every layer, under one name, with a tiny test model.

The list of tasks is the contract's (../shared/CONTRACT.md), written out here; what each layer
serves is read from its registry, so a task that lands in one layer and not another fails here.
"""

from __future__ import annotations

from pathlib import Path

from compile.tasks import compilable, export_spec
from runtime import InputKind, canonical, input_kind, registered
from runtime.handler import TASK as CUSTOM
from runtime.tasks import SYNONYMS
from server.wire import FILE_MEDIA
from tests.cases import CASES
from tests.support.models import ARCHS

CONTRACT = [
    "text-classification", "zero-shot-classification", "token-classification", "question-answering",
    "fill-mask", "summarization", "translation", "text2text-generation", "text-generation",
    "conversational", "feature-extraction", "sentence-embeddings", "sentence-similarity", "ranking",
    "image-classification", "zero-shot-image-classification", "object-detection", "image-segmentation",
    "visual-question-answering", "automatic-speech-recognition", "audio-classification",
    "table-question-answering", "text-to-image", "custom",
]  # fmt: skip
# each has its own open issue; a task leaves this set when it lands
PENDING: set[str] = set()
OWN_TESTS = {"text-to-image": "test_text_to_image.py"}
"""Text tasks whose parity lives in a module of their own rather than in `tests.cases.CASES`."""


def test_every_contract_task_is_served_or_pending() -> None:
    """Custom handlers are no pipeline: the server serves a directory's handler.py (runtime.handler)."""
    served = {canonical(task) for task in CONTRACT if task not in PENDING and task != CUSTOM}
    assert served == set(registered())
    assert not PENDING & set(registered()), "a pending task landed: take it out of PENDING"


def test_every_served_task_is_in_every_layer() -> None:
    assert registered() == compilable()
    for task in registered():
        assert export_spec(task).task == task
        kind = input_kind(task)
        decoded = kind in (InputKind.TEXT, InputKind.TABLE, InputKind.IMAGE_TEXT) or kind in FILE_MEDIA
        assert decoded, f"the server cannot decode {kind} requests for {task}"
        assert ARCHS.get(task), f"{task} has no tiny test model"
        own = OWN_TESTS.get(task)
        assert kind is not InputKind.TEXT or CASES.get(task) or (own and (Path(__file__).parent / own).is_file()), (
            f"{task} has no test cases"
        )


def test_synonyms_resolve_in_one_table() -> None:
    expected = {
        "sentiment-analysis": "text-classification",
        "NER": "token-classification",
        "question_answering": "question-answering",
        "conversational": "text-generation",
        "sentence-ranking": "ranking",
        "semantic-segmentation": "image-segmentation",
        "asr": "automatic-speech-recognition",
    }
    for alias, target in expected.items():
        assert canonical(alias) == target
    assert export_spec("sentiment-analysis").task == "text-classification"
    assert set(SYNONYMS.values()) <= set(registered()), "a synonym points at a task no layer serves"
