"""Load a compiled artifact and call it like a transformers pipeline: `load(DIR)(inputs, **parameters)`.

Nothing here imports torch, transformers or an HTTP library: a compiled artifact serves with
onnxruntime, tokenizers, numpy and Pillow alone.
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.2.0"

from runtime.artifact import Manifest, is_artifact, read_manifest
from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, KilnError, Unprocessable
from runtime.session import SessionOptions
from runtime.tasks import Pipeline, canonical, input_kind, pipeline_class, registered
from runtime.tasks.base import InputKind, TextPipeline


def load(
    directory: str | os.PathLike[str], *, device: str | None = None, threads: int = 0, spinning: bool = True
) -> Pipeline:
    """The pipeline for an artifact's task, on `device` (default: the one it was compiled for)."""
    path = Path(directory)
    manifest = read_manifest(path)
    cls = pipeline_class(manifest.task)
    if cls is None:
        raise ArtifactError(f"{path} is for task {manifest.task!r}, which this runtime does not serve")
    options = SessionOptions(device=device or manifest.device, threads=threads, spinning=spinning)
    return cls.variant(manifest)(path, manifest, options)


__all__ = [
    "ArtifactError",
    "InputKind",
    "InvalidInput",
    "InvalidParameter",
    "KilnError",
    "Manifest",
    "Pipeline",
    "SessionOptions",
    "TextPipeline",
    "Unprocessable",
    "__version__",
    "canonical",
    "input_kind",
    "is_artifact",
    "load",
    "read_manifest",
    "registered",
]
