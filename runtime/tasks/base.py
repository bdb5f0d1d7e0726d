"""The shared shape of every task pipeline: parse parameters, preprocess, run the graph, postprocess.

A task module subclasses the pipeline of its input kind (`TextPipeline` here, `ImagePipeline` in
runtime.tasks.vision, `AudioPipeline` in runtime.tasks.audio) and fills in only what differs: its
`Parameters` struct, its hooks, and an `example` used to warm the session up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec
import numpy as np
from tokenizers import Encoding

from runtime.artifact import Manifest
from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, Unprocessable
from runtime.session import OnnxModel, SessionOptions
from runtime.text import TextTokenizer

P = TypeVar("P", bound=msgspec.Struct)


class NoParameters(msgspec.Struct, forbid_unknown_fields=True):
    pass


def parse_parameters(kind: type[P], parameters: Mapping[str, Any], *, strict: bool = True) -> P:
    """Check parameters against the task's struct: unknown names and wrong types are `InvalidParameter`.
    Not `strict`: strings are converted (parameters from a query string)."""
    unknown = sorted(set(parameters) - set(kind.__struct_fields__))
    if unknown:
        known = ", ".join(kind.__struct_fields__) or "none"
        raise InvalidParameter(f"unknown parameter(s) {', '.join(unknown)}; this task takes: {known}")
    try:
        return msgspec.convert(parameters, type=kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(f"invalid parameter: {exc}".replace("`$.", "`parameters.")) from None


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)  # type: ignore[no-any-return]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))  # type: ignore[no-any-return]


def texts_of(inputs: Any, what: str = "a string or a list of strings") -> tuple[list[str], bool]:
    """`inputs` as a list of non-empty strings, and whether it was a single string."""
    if isinstance(inputs, str):
        return [inputs], True
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f"`inputs` must be {what}, got {type_name(inputs)}")
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise InvalidInput(f"`inputs` must be {what}, got {type_name(item)} at index {index}")
    return inputs, False


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", dict: "an object"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class Limits:
    """What one request may cost, checked before the work is done: every parameter that sizes work
    or memory has a bound here. The server sets them from its settings; a notebook keeps these.

    - `max_sequences`: model rows one request may need (question-answering and token-classification
      windows, zero-shot text x label pairs, inputs);
    - `max_image_pixels`: width x height of one image, read from its header before decoding;
    - `max_audio_seconds`: the length of a request's audio, read from a file's header before decoding;
    - `max_call_audio_seconds`: the audio one model call of a CTC model or a classifier holds (a
      longer input needs `chunk_length_s`; batches are cut to it);
    - `max_response_values`: numbers in one answer (per-token feature-extraction, `/tokenize`);
    - generation: `max_new_tokens` (and the default when a request names none), seconds of
      generation, beams, stop sequences, and the bytes of key/value cache that beams x length need;
    - text-to-image: denoising steps and the pixels of the generated image (its time: `time_limit_s`).
    """

    max_sequences: int = 256
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    max_call_audio_seconds: float = 60.0
    max_response_values: int = 2_000_000
    max_new_tokens: int = 1024
    default_new_tokens: int = 100
    time_limit_s: float | None = 120.0
    max_beams: int = 8
    max_stop_sequences: int = 16
    max_kv_cache_bytes: int = 2 << 30
    max_inference_steps: int = 100
    max_generated_pixels: int = 1024 * 1024


class InputKind(StrEnum):
    """What a task takes. The server's request decoding, compile's reference inputs and the tests
    all read a task's kind from its pipeline class (`Pipeline.input_kind`), and nowhere else."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    TABLE = "table"
    IMAGE_TEXT = "image+text"
    ANY = "any"


class Pipeline:
    """A compiled model behind the transformers pipeline call: `pipe(inputs, **parameters)`.

    A call is `preprocess` (inputs -> model items, and what postprocessing needs), `core` (items ->
    one output dict per item: the only code that runs ONNX Runtime, and the unit a batcher can call
    with many requests' items at once), then `postprocess`. A task module overrides those hooks;
    the text tasks written before this split override `predict` and call `core` themselves.
    """

    task: ClassVar[str]
    input_kind: ClassVar[InputKind] = InputKind.TEXT
    Parameters: ClassVar[type[msgspec.Struct]] = NoParameters
    example: ClassVar[tuple[Any, dict[str, Any]]] = ("Hello world.", {})
    max_batch_size: ClassVar[int] = 32
    batchable: ClassVar[bool] = True  # False where the model call is a generation loop, not one `core` call
    limits = Limits()

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        self.directory = directory
        self.manifest = manifest
        self.options = options
        self.model = OnnxModel(directory / manifest.model_file, options)
        self.config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.batch_size = self.max_batch_size if manifest.batch_invariant else 1

    @classmethod
    def variant(cls, manifest: Manifest) -> type[Pipeline]:
        """The class that serves this artifact: the task's own, or one of its kinds of model
        (automatic-speech-recognition: CTC or Whisper), chosen from the manifest."""
        return cls

    def __call__(self, inputs: Any, **parameters: Any) -> Any:
        return self.predict(inputs, parse_parameters(self.Parameters, parameters))

    def predict(self, inputs: Any, params: Any) -> Any:
        items, context = self.preprocess(inputs, params)
        self.check_sequences(len(items))
        return self.postprocess(self.core(items), context, params)

    def preprocess(self, inputs: Any, params: Any) -> tuple[list[Any], Any]:
        """Inputs -> (model items, what `postprocess` needs of the request)."""
        raise NotImplementedError

    def core(self, items: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        """Run the graph: one output dict per item, in order."""
        raise NotImplementedError

    def postprocess(self, outputs: list[dict[str, np.ndarray]], context: Any, params: Any) -> Any:
        raise NotImplementedError

    def run_same_shapes(
        self, items: Sequence[Mapping[str, np.ndarray]], max_rows: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The core of tasks whose items are ready arrays (images, audio features): items of the same
        shapes run together, in batches of `batch_size` (and at most `max_rows`), and nothing is
        padded, so every answer is the batch-1 answer."""
        rows_per_call = min(self.batch_size, max_rows or self.batch_size)
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(tuple((k, v.shape) for k, v in sorted(item.items())), []).append(index)
        results: list[dict[str, np.ndarray]] = [{} for _ in items]
        for rows in groups.values():
            for start in range(0, len(rows), rows_per_call):
                batch = rows[start : start + rows_per_call]
                feeds = {name: np.stack([items[i][name] for i in batch]) for name in items[batch[0]]}
                outputs = self.model.run(feeds)
                for j, i in enumerate(batch):
                    results[i] = {name: value[j] for name, value in outputs.items()}
        return results

    def warmup(self) -> None:
        inputs, parameters = self.example
        self(inputs, **parameters)

    @property
    def labels(self) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(len(id2label))]

    def check_sequences(self, count: int, what: str = "the request needs") -> None:
        """Refuse work of more model rows than `limits.max_sequences`, before it is done."""
        if count > self.limits.max_sequences:
            raise Unprocessable(
                f"{what} {count} model sequences; this server runs at most {self.limits.max_sequences} "
                "per request: send less text, fewer labels or a larger stride"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "input_kind": str(self.input_kind),
            "backend": self.manifest.backend,
            "precision": self.manifest.precision,
            "optimization": self.manifest.optimization,
            "provider": self.model.provider,
            "model_batch_size": self.batch_size,
        }


class TextPipeline(Pipeline):
    """A pipeline over a tokenizer: its items are `Encoding`s, padded into batches by `core`."""

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        if manifest.tokenizer is None:
            raise ArtifactError(f"{directory} has no tokenizer, which task {manifest.task} needs")
        self.tokenizer = TextTokenizer(directory / "tokenizer.json", manifest.tokenizer)

    def core(self, items: Sequence[Encoding]) -> list[dict[str, np.ndarray]]:
        """Run the graph on encodings in length-sorted batches; one output dict per encoding.

        Per-token outputs are cut back to each encoding's own length, so callers never see padding.
        """
        self.check_sequences(len(items))
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        results: list[dict[str, np.ndarray]] = [{} for _ in items]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            feeds = self.tokenizer.batch([items[i] for i in rows])
            outputs = self.model.run(feeds)
            width = feeds["input_ids"].shape[1]
            left = self.tokenizer.info.padding_side == "left"
            for j, i in enumerate(rows):
                n = len(items[i].ids)
                cols = slice(width - n, width) if left else slice(0, n)
                results[i] = {
                    name: value[j, cols] if value.ndim >= 2 and value.shape[1] == width else value[j]
                    for name, value in outputs.items()
                }
        return results

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_input_tokens": self.tokenizer.max_length}
