"""The runtime's task registry: task name -> pipeline class, filled by `@register`.

Synonyms live in one table (`SYNONYMS`); `canonical` resolves a name a user or a client sends.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.tasks.base import InputKind, Pipeline

SYNONYMS: dict[str, str] = {
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "sentence-ranking": "ranking",
    "text-ranking": "ranking",
    "embeddings": "feature-extraction",
    "sentence-embedding": "sentence-embeddings",
    "conversational": "text-generation",
    "text2text": "text2text-generation",
    "semantic-segmentation": "image-segmentation",
    "asr": "automatic-speech-recognition",
    "speech-recognition": "automatic-speech-recognition",
}

_REGISTRY: dict[str, type[Pipeline]] = {}


def canonical(task: str) -> str:
    name = task.strip().lower().replace("_", "-")
    return SYNONYMS.get(name, name)


def register(task: str) -> Callable[[type[Pipeline]], type[Pipeline]]:
    def decorate(cls: type[Pipeline]) -> type[Pipeline]:
        cls.task = task
        _REGISTRY[task] = cls
        return cls

    return decorate


def registered() -> list[str]:
    return sorted(_REGISTRY)


def pipeline_class(task: str) -> type[Pipeline] | None:
    return _REGISTRY.get(canonical(task))


def input_kind(task: str) -> InputKind:
    """What `task` takes: the one declaration the server, compile and the tests read."""
    cls = pipeline_class(task)
    if cls is None:
        raise KeyError(f"no pipeline for task {task!r}")
    return cls.input_kind


from runtime.tasks import (  # noqa: E402  (the modules register themselves on import)
    audio_classification,
    automatic_speech_recognition,
    feature_extraction,
    fill_mask,
    image_classification,
    image_segmentation,
    object_detection,
    question_answering,
    ranking,
    sentence_embeddings,
    table_question_answering,
    text_classification,
    text_generation,
    text_to_image,
    token_classification,
    visual_question_answering,
    zero_shot_classification,
    zero_shot_image_classification,
)

__all__ = [
    "SYNONYMS",
    "Pipeline",
    "audio_classification",
    "automatic_speech_recognition",
    "canonical",
    "feature_extraction",
    "fill_mask",
    "image_classification",
    "image_segmentation",
    "input_kind",
    "object_detection",
    "pipeline_class",
    "question_answering",
    "ranking",
    "register",
    "registered",
    "sentence_embeddings",
    "table_question_answering",
    "text_classification",
    "text_generation",
    "text_to_image",
    "token_classification",
    "visual_question_answering",
    "zero_shot_classification",
    "zero_shot_image_classification",
]
