"""The artifact directory and its `manifest.json`: what `kiln compile` writes and `runtime.load` reads.

The manifest is the only thing the runtime trusts about an artifact: the task, the files and their
hashes, its preprocessor components with their settings (the tokenizer facts `tokenizer.json` does
not carry, the image processor's settings), so serving never imports `transformers`, and the
validation figures the compile step measured. It is written last, atomically, so a directory with
a manifest is a complete artifact.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec

from runtime.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
ACTIVATION_SCALES = "per-row"
"""How compile's int8 scales activations at run time (`compile.quantize.quantize_rows`)."""
READABLE_FORMATS = (1, 2)  # 2: preprocessors are components, so `tokenizer` may be absent


class Source(msgspec.Struct, frozen=True):
    """Where the model came from: a Hub id or a local path, and the revision asked for."""

    model: str
    revision: str | None = None
    local: bool = False
    content: str = ""  # `content_hash` of the model's files: what was compiled, wherever it lay


class TokenizerInfo(msgspec.Struct, frozen=True):
    """Facts about the tokenizer that `tokenizer.json` alone does not carry."""

    max_length: int
    pad_token_id: int
    padding_side: str = "right"
    mask_token: str | None = None
    mask_token_id: int | None = None
    cls_token_id: int | None = None
    unk_token_id: int | None = None
    special_ids: list[int] = []
    clean_up_tokenization_spaces: bool = False
    subword_prefix: str | None = None


class Validation(msgspec.Struct, frozen=True):
    """What the compile step measured against the PyTorch model, and the gate it held."""

    gate: str
    passed: bool
    inputs: int
    max_abs_diff: float
    min_cosine: float
    label_agreement: float | None = None


class SentencePooling(msgspec.Struct, frozen=True):
    """A sentence-transformers model's pooling, normalization and prompts (applied in numpy)."""

    modes: list[str]
    normalize: bool
    include_prompt: bool = True
    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None
    similarity: str = "cosine"


class Manifest(msgspec.Struct, frozen=True):
    """Everything the runtime needs to know about an artifact, and how it was made."""

    task: str
    source: Source
    device: str
    precision: str
    optimization: str | None
    opset: int
    model_file: str
    input_names: list[str]
    output_names: list[str]
    tokenizer: TokenizerInfo | None
    validation: Validation
    files: dict[str, str]
    versions: dict[str, str]
    pooling: SentencePooling | None = None
    image_processor: dict[str, Any] | None = None
    feature_extractor: dict[str, Any] | None = None  # audio features, as `runtime.audio` rebuilt them
    choice: dict[str, Any] = {}  # how compile chose among its candidates, and what each measured
    graphs: dict[str, str] = {}
    activation_scales: str | None = None  # int8: "per-row" (ACTIVATION_SCALES); None on int8 means per tensor
    backend: str = "onnxruntime"
    compile_seconds: float = 0.0
    config_hash: str = ""
    format: int = FORMAT_VERSION

    @property
    def batch_invariant(self) -> bool:
        """Whether an input's answer is the same alone as in any batch: not so for int8 with a
        scale per activation tensor (artifacts compiled before the scales were per row), whose
        other rows and padding would move it."""
        return self.precision != "int8" or self.activation_scales == ACTIVATION_SCALES


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_CONTENT_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def content_hash(directory: Path) -> str:
    """sha256 over the names and bytes of every file below `directory` (`.git` aside): the same
    model has the same hash wherever it is installed. Remembered per process while no file's size
    or modification time changes, so asking twice reads the files once."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and ".git" not in p.relative_to(directory).parts)
    stats = tuple((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(directory.resolve()), stats)
    if key not in _CONTENT_HASHES:
        digest = hashlib.sha256()
        for (name, _, _), path in zip(stats, files):
            digest.update(f"{name}\0{sha256(path)}\0".encode())
        _CONTENT_HASHES[key] = digest.hexdigest()
    return _CONTENT_HASHES[key]


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: readers see the old one or the new one, never half."""
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a compiled artifact: it has no {MANIFEST} (run `kiln compile`)")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as exc:
        raise ArtifactError(f"{path} is unreadable: {exc}") from None
    if manifest.format not in READABLE_FORMATS:
        raise ArtifactError(f"{path} has format {manifest.format}; this kiln reads formats {READABLE_FORMATS}")
    return manifest


def is_artifact(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def verify_files(directory: Path, manifest: Manifest) -> list[str]:
    """Names of the manifest's files that are missing or whose hash differs."""
    bad = []
    for name, digest in manifest.files.items():
        path = directory / name
        if not path.is_file() or sha256(path) != digest:
            bad.append(name)
    return bad
