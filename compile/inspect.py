"""`kiln inspect` and `kiln compile --check`: what an artifact is, and whether it still holds.

`inspect_artifact` reads the manifest and each graph's inputs and outputs through ONNX Runtime's
CPU session metadata, so it works where only the serving dependencies are installed (no torch,
transformers or onnx); it falls back to `onnx` for a graph the CPU provider cannot load (a CUDA
fp16 graph with fused kernels), where `onnx` is installed.

`check_artifact` re-validates an artifact against its source model the way the compile step
validated it: the same exporter builds the PyTorch reference (`compile.exporters.reference_for`),
the artifact's graph runs on the same inputs, and `validate.compare` applies the gate of the
artifact's precision. Generative artifacts are checked by greedy decoding, as
`compile.generative` checks them at compile time. It needs the compile extra (torch,
transformers) and the source: the local directory the manifest names, its Hub id at the recorded
revision (from the Hub cache when offline), or a model given in its place. A check fails when
the figures miss the gate, when the graph does not run on the reference inputs, or when a file
no longer has the hash the manifest recorded.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from compile import generative, gguf, validate
from compile.build import resolve_source
from compile.errors import CompileFailed, ValidationFailed
from compile.exporters import BuildContext, reference_for, tokenizer_info
from compile.options import CompileOptions, Device, Progress
from compile.tasks import export_spec, model_type
from runtime.artifact import MANIFEST, Manifest, content_hash, read_manifest, verify_files
from runtime.errors import ArtifactError

# ONNX element types as numpy names
_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16"}


class SourceMissing(CompileFailed):
    """The model an artifact was compiled from cannot be found (`kiln compile --check`: exit 2)."""

    error_type = "source_missing"


@dataclass(frozen=True)
class Port:
    """A graph input or output: `shape` holds a number per fixed axis and the name of each
    symbolic one (`batch_size`, `sequence_length`), "?" for an unnamed dynamic axis."""

    name: str
    dtype: str
    shape: list[int | str]

    def describe(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Graph:
    """One ONNX graph of an artifact: its role (`model`; `decoder`, `encoder` for generation)."""

    role: str
    file: str
    inputs: list[Port] = field(default_factory=list)
    outputs: list[Port] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    in_manifest: bool


@dataclass(frozen=True)
class Inspection:
    directory: Path
    manifest: Manifest
    graphs: list[Graph]
    files: list[FileEntry]
    missing: list[str]  # named by the manifest, absent from the directory

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def inspect_artifact(directory: str | os.PathLike[str]) -> Inspection:
    """The manifest, the graphs' inputs and outputs, and the files with their sizes.

    Raises `ArtifactError` when `directory` is not a compiled artifact. Hashes are not checked
    here (that reads every byte): `kiln compile --check` does.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"{directory} is not a compiled artifact: no such directory")
    manifest = read_manifest(path)
    roles = manifest.graphs or {"model": manifest.model_file}
    graphs = [_graph(path, role, name) for role, name in roles.items()]
    present = sorted(p for p in path.rglob("*") if p.is_file())
    files = [
        FileEntry(str(p.relative_to(path)), p.stat().st_size, str(p.relative_to(path)) in manifest.files)
        for p in present
    ]
    missing = sorted(set(manifest.files) - {f.name for f in files})
    return Inspection(path, manifest, graphs, files, missing)


def _graph(directory: Path, role: str, name: str) -> Graph:
    path = directory / name
    if not path.is_file():
        return Graph(role, name, error="missing")
    try:
        inputs, outputs = _ports_onnxruntime(path)
    except Exception as ort_error:  # ONNX Runtime raises its own classes, all plain Exceptions
        try:
            inputs, outputs = _ports_onnx(path)
        except ImportError:
            return Graph(role, name, error=f"ONNX Runtime cannot load it: {ort_error}")
        except Exception as exc:  # onnx's protobuf decoding errors have no common base either
            return Graph(role, name, error=f"unreadable: {exc}")
    return Graph(role, name, inputs, outputs)


def _dtype(name: str) -> str:
    name = name.removeprefix("tensor(").removesuffix(")").lower()
    return _DTYPES.get(name, name)


def _ports_onnxruntime(path: Path) -> tuple[list[Port], list[Port]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def port(arg: Any) -> Port:
        shape = [d if isinstance(d, int | str) else "?" for d in (arg.shape or [])]
        return Port(arg.name, _dtype(arg.type), shape)

    return [port(i) for i in session.get_inputs()], [port(o) for o in session.get_outputs()]


def _ports_onnx(path: Path) -> tuple[list[Port], list[Port]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def port(value: Any) -> Port:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
        ]
        return Port(value.name, _dtype(onnx.TensorProto.DataType.Name(tensor.elem_type)), shape)

    inputs = [port(i) for i in graph.input if i.name not in initializers]
    return inputs, [port(o) for o in graph.output]


def inspection_json(inspection: Inspection) -> dict[str, Any]:
    """One JSON object: the manifest as written, plus the graphs, the files and the total size."""
    return {
        "directory": str(inspection.directory),
        "manifest": msgspec.to_builtins(inspection.manifest),
        "graphs": [
            {
                "role": g.role,
                "file": g.file,
                "inputs": [{"name": p.name, "dtype": p.dtype, "shape": p.shape} for p in g.inputs],
                "outputs": [{"name": p.name, "dtype": p.dtype, "shape": p.shape} for p in g.outputs],
                "error": g.error,
            }
            for g in inspection.graphs
        ],
        "files": [{"name": f.name, "bytes": f.size, "in_manifest": f.in_manifest} for f in inspection.files],
        "missing": inspection.missing,
        "total_bytes": inspection.total_bytes,
    }


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def recorded_figures(manifest: Manifest) -> validate.Figures:
    """The validation the compile step recorded, in the form `validate.report` prints."""
    v = manifest.validation
    return validate.Figures(v.gate, v.passed, v.inputs, v.max_abs_diff, v.min_cosine, v.label_agreement)


def render(inspection: Inspection) -> str:
    """The inspection as text, for a person."""
    m = inspection.manifest
    source = m.source
    origin = (
        f"{source.model} (local directory)"
        if source.local
        else f"{source.model} at revision {source.revision or 'main'} (Hugging Face Hub)"
    )
    rows = [
        ("artifact", f"{inspection.directory} (manifest format {m.format})"),
        ("task", m.task),
        ("source", origin),
        ("precision", m.precision),
        ("optimization", m.optimization or "none"),
        ("device", m.device),
        ("opset", str(m.opset)),
        ("backend", m.backend),
        ("validation", validate.report("", recorded_figures(m)).removeprefix(": ")),
        ("compile time", f"{m.compile_seconds:.1f} s"),
        ("versions", ", ".join(f"{name} {version}" for name, version in m.versions.items())),
    ]
    if source.content:
        rows.insert(3, ("content", f"sha256 {source.content} (the source's files)"))
    tried = m.choice.get("tried") if isinstance(m.choice.get("tried"), dict) else {}
    if tried:
        outcomes = ", ".join(
            f"{name} {'passed' if isinstance(info, dict) and info.get('passed') else 'failed'}"
            for name, info in tried.items()
        )
        rows.append(("choice", f"{outcomes}; kept {m.choice.get('rule', 'the one asked for')}"))
    if m.tokenizer is not None:
        rows.append(("tokenizer", f"max length {m.tokenizer.max_length}, padding {m.tokenizer.padding_side}"))
    if m.pooling is not None:
        rows.append(("pooling", f"{'+'.join(m.pooling.modes)}{', normalized' if m.pooling.normalize else ''}"))
    lines = [f"{label:<13} {value}" for label, value in rows]
    for graph in inspection.graphs:
        lines += ["", f"graph {graph.file} ({graph.role})"]
        if graph.error:
            lines.append(f"  {graph.error}")
            continue
        width = max((len(p.name) for p in (*graph.inputs, *graph.outputs)), default=0)
        lines += [f"  input   {p.name:<{width}}  {p.describe()}" for p in graph.inputs]
        lines += [f"  output  {p.name:<{width}}  {p.describe()}" for p in graph.outputs]
    lines += ["", "files"]
    width = max(len(f.name) for f in inspection.files)
    for f in inspection.files:
        note = "" if f.in_manifest or f.name == MANIFEST else "  (not in the manifest)"
        lines.append(f"  {f.name:<{width}}  {human_size(f.size):>10}{note}")
    lines += [f"  {name:<{width}}  {'missing':>10}" for name in inspection.missing]
    lines.append(f"total {human_size(inspection.total_bytes)} in {len(inspection.files)} files")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    """The outcome of `check_artifact`: the figures measured now (None when the graph did not run
    or decode), the report lines, and the files whose hashes differ from the manifest's."""

    directory: Path
    manifest: Manifest
    source: Path
    figures: validate.Figures | None
    lines: list[str]
    changed: list[str]

    @property
    def passed(self) -> bool:
        return self.figures is not None and self.figures.passed and not self.changed


def source_directory(
    manifest: Manifest, model: str | None = None, revision: str | None = None, token: str | None = None
) -> Path:
    """The source model's directory: `model` when given, else the one the manifest records (a
    local directory, or its Hub id at the recorded revision). Raises `SourceMissing`."""
    if model is None:
        if manifest.source.local:
            path = Path(manifest.source.model)
            if not (path / "config.json").is_file() and gguf.gguf_file(path) is None:
                raise SourceMissing(
                    f"the source model {manifest.source.model} (named by the manifest) is not there: "
                    "pass it, as in `kiln compile MODEL --check DIR`"
                )
            return path
        model, revision = manifest.source.model, revision or manifest.source.revision
    try:
        return resolve_source(model, revision, token)[0]
    except CompileFailed as exc:
        raise SourceMissing(exc.message) from None


def check_artifact(
    directory: str | os.PathLike[str],
    *,
    model: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    token: str | None = None,
    progress: Progress | None = None,
) -> Check:
    """Validate the artifact in `directory` against its source model again (see the module's doc).

    Raises `ArtifactError` (not an artifact), `SourceMissing`, and `CompileFailed` when the check
    cannot run here (a CUDA artifact without a CUDA device, a source that will not load).
    """
    from importlib.util import find_spec

    from runtime.session import providers_for

    path = Path(directory)
    manifest = read_manifest(path)
    missing = [name for name in ("torch", "transformers", "onnx") if find_spec(name) is None]
    if missing:
        raise CompileFailed(
            f"checking an artifact runs the PyTorch model: install the compile extra (pip install 'kiln[compile]'); "
            f"{', '.join(missing)} missing"
        )
    model_dir = source = source_directory(manifest, model, revision, token)
    if manifest.device == "cuda" and "CUDAExecutionProvider" not in providers_for("cuda"):
        raise CompileFailed(f"{path} was compiled for cuda: checking it needs onnxruntime-gpu and a CUDA device")
    progress = progress or Progress()
    changed = verify_files(path, manifest)
    options = CompileOptions(task=manifest.task, device=Device(manifest.device), trust_remote_code=trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="kiln-check-") as scratch:
        converted = gguf.gguf_file(model_dir)
        if converted is not None:
            with progress.step(f"converting {converted.name} to a transformers model"):
                model_dir = gguf.convert(model_dir, converted, Path(scratch) / "source")
        from compile import blip  # loads torch, as every check does

        spec = export_spec(manifest.task, model_type(model_dir))
        if spec.generative:
            figures, lines = _check_generative(path, manifest, model_dir, Path(scratch), progress)
        elif blip.compiles(model_dir, manifest.task):
            figures, lines = blip.recheck(path, manifest, model_dir)
        else:
            context = BuildContext(model_dir, manifest.task, spec, options, path, progress)
            figures, lines = _check_graph(path, manifest, context)
    v = manifest.validation
    agreement = "" if v.label_agreement is None else f", top label agreement {v.label_agreement:.1%}"
    lines.append(f"at compile time: max abs diff {v.max_abs_diff:.3g}, min cosine {v.min_cosine:.6f}{agreement}")
    if manifest.source.content:
        same = content_hash(source) == manifest.source.content
        lines.append(
            "the source's files are the ones compiled"
            if same
            else "the source's files differ from the ones compiled (their content hash is not the manifest's)"
        )
    if changed:
        lines.append(f"files that differ from the manifest's hashes: {', '.join(changed)}")
    else:
        lines.append(f"all {len(manifest.files)} files have the manifest's hashes")
    return Check(path, manifest, source, figures, lines, changed)


def _check_graph(
    directory: Path, manifest: Manifest, context: BuildContext
) -> tuple[validate.Figures | None, list[str]]:
    from runtime.session import OnnxModel, SessionOptions

    label = f"{manifest.precision}-{manifest.optimization or 'none'}"
    graph = directory / manifest.model_file
    try:
        model = OnnxModel(graph, SessionOptions(device=manifest.device))
    except Exception as exc:  # ONNX Runtime's errors have no common base but Exception
        return None, [f"{label}: FAILED: ONNX Runtime cannot load {graph.name}: {exc}"]
    reference = reference_for(context)
    try:
        outputs = [reference.view(model.run(feed), mask) for feed, mask in zip(reference.feeds, reference.masks)]
        figures = validate.compare(reference.outputs, outputs, reference.masks, reference.spec, manifest.precision)
    except Exception as exc:  # a graph that does not fit the model's inputs or outputs fails the check
        return None, [f"{label}: FAILED: the graph does not run like the source model: {type(exc).__name__}: {exc}"]
    return figures, [validate.report(label, figures)]


def _check_generative(
    directory: Path, manifest: Manifest, model_dir: Path, scratch: Path, progress: Progress
) -> tuple[validate.Figures | None, list[str]]:
    """`compile.generative.build` on links to the artifact's files: it moves the graphs it
    validated into a directory of its own, which is the scratch one here."""
    export, moved = scratch / "export", scratch / "artifact"
    export.mkdir()
    moved.mkdir()
    for file in directory.iterdir():
        (export / file.name).symlink_to(file.resolve())
    spec = export_spec(manifest.task, model_type(model_dir))
    try:
        _, _, figures, lines, _ = generative.build(model_dir, export, spec, moved, tokenizer_info, progress)
    except ValidationFailed as exc:
        return None, exc.message.splitlines()
    except Exception as exc:  # ONNX Runtime's errors have no common base but Exception
        return None, [f"fp32-none: FAILED: the graphs do not decode like the source model: {type(exc).__name__}: {exc}"]
    return figures, lines
