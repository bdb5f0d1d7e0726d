"""visual-question-answering (ViLT): an image and a question -> `[{"score", "answer"}]`, best first,
as transformers' `VisualQuestionAnsweringPipeline` answers for a classifier over answers: the
question tokenized, the image through the model's processor (ViLT: shortest edge 384, sides a
multiple of 32, `pixel_mask`), one graph call, a sigmoid per answer, the `top_k` best (5; at most
the number of answers).

BLIP models, whose decoder generates the answer, are served by `runtime.tasks.blip_vqa` (chosen by
`variant`). Inputs as the pipeline takes them: `{"image", "question"}` or a list of those; an image (or a list)
with `question=` (a string or a list: every question for every image); the image as bytes, a
`PIL.Image` or a local path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np
from PIL import Image
from tokenizers import Encoding

from runtime.artifact import Manifest
from runtime.errors import ArtifactError, InvalidInput, InvalidParameter
from runtime.tasks import register
from runtime.tasks.base import InputKind, Pipeline, sigmoid
from runtime.tasks.vision import WHITE_PIXEL_PNG, ImagePipeline


class VisualQuestionAnsweringParameters(msgspec.Struct, forbid_unknown_fields=True):
    top_k: int = 5
    question: str | list[str] | None = None
    padding: bool | str = False  # one question per model row: padding changes nothing
    truncation: bool = False
    timeout: float | None = None  # the pipeline's, for image URLs: kiln fetches none


@register("visual-question-answering")
class VisualQuestionAnsweringPipeline(ImagePipeline):
    input_kind: ClassVar[InputKind] = InputKind.IMAGE_TEXT
    Parameters = VisualQuestionAnsweringParameters
    example = ({"image": WHITE_PIXEL_PNG, "question": "What is in the picture?"}, {})

    @classmethod
    def variant(cls, manifest: Manifest) -> type[Pipeline]:
        """ViLT (one graph, a classifier over answers) or BLIP (a vision graph, a question encoder
        and a decoder that generates the answer: `runtime.tasks.blip_vqa`)."""
        from runtime.tasks.blip_vqa import BlipVisualQuestionAnswering

        return BlipVisualQuestionAnswering if "vision" in manifest.graphs else cls

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise ArtifactError(f"{self.directory} has no tokenizer, which visual-question-answering needs")

    def pairs(self, inputs: Any, question: str | list[str] | None) -> tuple[list[tuple[Any, str]], bool]:
        """(image, question) pairs in the pipeline's order, and whether one answer list is wanted."""
        if isinstance(inputs, dict):
            return [self._pair(inputs, 0)], True
        if isinstance(inputs, list) and inputs and all(isinstance(item, dict) for item in inputs):
            return [self._pair(item, index) for index, item in enumerate(inputs)], False
        if question is None:
            raise InvalidInput(
                'visual-question-answering takes {"image": ..., "question": ...}, or an image with `question`'
            )
        images = inputs if isinstance(inputs, list) else [inputs]
        questions = question if isinstance(question, list) else [question]
        if not images or not questions or not all(isinstance(q, str) and q for q in questions):
            raise InvalidInput("send at least one image and one non-empty question")
        single = not isinstance(inputs, list) and isinstance(question, str)
        return [(image, q) for q in questions for image in images], single

    @staticmethod
    def _pair(item: dict[str, Any], index: int) -> tuple[Any, str]:
        image, question = item.get("image"), item.get("question")
        if image is None or not isinstance(question, str) or not question:
            got = ", ".join(sorted(item)) or "nothing"
            raise InvalidInput(f'input {index} needs "image" and a non-empty "question" string; got {got}')
        return image, question

    def preprocess(
        self, inputs: Any, params: VisualQuestionAnsweringParameters
    ) -> tuple[list[dict[str, np.ndarray]], Any]:
        if params.top_k < 1:
            raise InvalidParameter(f"`top_k` must be at least 1; got {params.top_k}")
        assert self.tokenizer is not None
        encoded, single = self.encoded_pairs(inputs, params)
        names = self.model.input_names
        items = []
        for image, encoding in encoded:
            arrays = {**self.tokenizer.batch([encoding]), **self.processor([image])}
            items.append({name: value[0] for name, value in arrays.items() if name in names})
        return items, single

    def encoded_pairs(
        self, inputs: Any, params: VisualQuestionAnsweringParameters
    ) -> tuple[Iterator[tuple[Image.Image, Encoding]], bool]:
        """Each (image, question) pair as its RGB image and its question's encoding, and whether one
        answer list is wanted. The pairs are counted and the questions encoded at once; each image
        is decoded only as the caller reaches it, so a request never holds all of them decoded."""
        pairs, single = self.pairs(inputs, params.question)
        self.check_sequences(len(pairs))
        assert self.tokenizer is not None
        encodings = self.tokenizer.encode(
            [question for _, question in pairs], truncation=params.truncation, too_long="ask a shorter question"
        )
        decoded = (
            (self._image(image, index), encoding) for index, ((image, _), encoding) in enumerate(zip(pairs, encodings))
        )
        return decoded, single

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return self.run_same_shapes(items)

    def postprocess(
        self, outputs: list[dict[str, np.ndarray]], context: Any, params: VisualQuestionAnsweringParameters
    ) -> Any:
        labels = self.labels
        top_k = min(params.top_k, len(labels))
        answers = []
        for output in outputs:
            scores = sigmoid(output["logits"].astype(np.float32))
            order = np.argsort(-scores, kind="stable")[:top_k]
            answers.append([{"score": float(scores[i]), "answer": labels[i]} for i in order])
        return answers[0] if context else answers
