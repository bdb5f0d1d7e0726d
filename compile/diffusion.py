"""Compiling a Stable Diffusion 1.x/2.x or SDXL pipeline for text-to-image, and checking it against diffusers.

The input is a diffusers `StableDiffusionPipeline` or `StableDiffusionXLPipeline` directory
(`save_pretrained` layout: `model_index.json`, `text_encoder/`, `tokenizer/`, `unet/`, `vae/`,
`scheduler/`; SDXL adds `text_encoder_2/` and `tokenizer_2/`). optimum's
diffusion exporter (`get_diffusion_models_for_export`, what `main_export(task="text-to-image")`
runs) gives the graphs; the VAE encoder is left out, text-to-image never encodes an image. The
UNet is traced at an odd latent height (`odd_height`), so its upsampling follows the skip
connections' sizes and width and height need only be multiples of 8, as in diffusers. Its
attention is then fused into ONNX Runtime's `MultiHeadAttention` (`compile.unet_fusion`: flash
attention on CPU, no score matrix held whole) unless `--optimize none`. The
artifact is the layout `runtime.tasks.text_to_image` reads: the graphs, `tokenizer/tokenizer.json`
(and `tokenizer_2/`; converted from the slow CLIP tokenizer's vocab and merges by transformers
when the pipeline has no `tokenizer.json`), `scheduler/scheduler_config.json` (the config diffusers' pipeline ends up
with, after its own fixes such as `steps_offset`), `config.json` (`DiffusionInfo`) and the manifest.

The gates, fp32 only:
- each graph against its PyTorch module on the same inputs (prompts: the hidden states the loop
  takes and, for SDXL, the pooled embedding; latents of the default size
  and of a non-square one, one `size_multiple` off, which for SD 1.x/2.x is not a multiple of
  the UNet's down factor; an integer and a fractional timestep): max abs difference over the
  largest reference value where that is above 1, at most `GRAPH_MAX_ABS`;
- each fast tokenizer gives the slow one's ids, padded to its text encoder's length;
- the whole loop: the runtime's numpy pipeline against diffusers' `StableDiffusionPipeline` with
  the same prompts, initial latents and scheduler (SDXL: `StableDiffusionXLPipeline`, no
  watermark), PSNR of the uint8 images at least
  `IMAGE_MIN_PSNR` dB.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from compile.errors import CompileFailed, UnsupportedModel, ValidationFailed
from compile.exporters import tokenizer_info
from compile.options import CompileOptions, Optimization, Precision, captured
from compile.tasks import DIFFUSION_PIPELINES, diffusion_pipeline
from compile.unet_fusion import fuse_attention
from runtime.artifact import MANIFEST, Manifest, Source, TokenizerInfo, Validation, sha256, write_manifest
from runtime.diffusion.schedulers import scheduler_from_config
from runtime.session import SessionOptions
from runtime.tasks.text_to_image import GRAPHS, SCHEDULER, DiffusionInfo, StableDiffusion, TextEncoderInfo
from runtime.versions import installed

GRAPH_MAX_ABS = 1e-3  # scaled by the largest reference value when that is above 1
IMAGE_MIN_PSNR = 35.0
DEFAULT_STEPS = 25  # diffusers' default is 50; PNDM, DDIM and DPM-Solver++ images settle well before
VALIDATION_STEPS = 4
PROMPTS = ["a photograph of an astronaut riding a horse", "an oil painting of a lighthouse at dusk, stormy sea"]
NEGATIVE = "blurry, low quality"
TIMESTEPS = (999.0, 500.5, 1.0)
FUSIONS = (None, Optimization.O2, Optimization.NONE)  # None: the default, O2
CHOICE_RULE = "fp32, the UNet's attention fused unless --optimize none: the one candidate for text-to-image"

Log = Callable[[str], None]


def build(
    model_dir: Path,
    artifact: Path,
    *,
    source: Source,
    options: CompileOptions,
    key: str,
    started: float,
    log: Log,
) -> tuple[Manifest, list[str]]:
    """Export, validate and write a complete artifact (manifest last) into `artifact` (new or empty);
    the figures' lines come back for the report. Raises `UnsupportedModel` for pipelines other than
    SD 1.x/2.x and SDXL, and `ValidationFailed` past a gate."""
    if options.precision not in (Precision.AUTO, Precision.FP32) or options.optimize not in FUSIONS:
        raise CompileFailed(
            "text-to-image compiles to fp32, the UNet's attention fused (O2, the default) or not (--optimize none)"
        )
    fused = options.optimize != Optimization.NONE
    kind = diffusion_pipeline(model_dir)
    if kind not in DIFFUSION_PIPELINES:
        raise UnsupportedModel(
            f"{model_dir.name} is not a diffusers pipeline of a kind kiln compiles: {', '.join(DIFFUSION_PIPELINES)}"
        )
    pipe = load_pipeline(model_dir, kind)
    try:
        scheduler_from_config(pipe.scheduler.config)
    except ValueError as exc:
        raise UnsupportedModel(f"kiln's numpy schedulers cannot run {model_dir.name}'s scheduler: {exc}") from None
    artifact.mkdir(parents=True, exist_ok=True)
    tokenizers, infos = write_tokenizers(model_dir, pipe, artifact)
    description = describe(pipe, infos)
    export(pipe, description, artifact, options.opset, log)
    if fused:
        fuse_unet(artifact, log)
    (artifact / SCHEDULER).parent.mkdir(parents=True, exist_ok=True)
    (artifact / SCHEDULER).write_text(pipe.scheduler.to_json_string())
    (artifact / "config.json").write_bytes(msgspec.json.format(msgspec.json.encode(description), indent=2))
    session = SessionOptions(device=str(options.device))
    engine = StableDiffusion.load(artifact, infos[0], session)
    lines, graphs = validate_graphs(pipe, engine, tokenizers, log)
    images = validate_pipeline(pipe, engine, log)
    lines.append(f"whole pipeline, {VALIDATION_STEPS} steps of {pipe.scheduler.__class__.__name__}: " + ", ".join(
        f"{name} PSNR {value:.1f} dB" for name, value in images.items()
    ))  # fmt: skip
    worst_graph = max(diff for diff, _ in graphs.values())
    worst_psnr = min(images.values())
    gate = f"each graph max abs diff <= {GRAPH_MAX_ABS:g} (scaled); images PSNR >= {IMAGE_MIN_PSNR:g} dB vs diffusers"
    if worst_graph > GRAPH_MAX_ABS or worst_psnr < IMAGE_MIN_PSNR:
        raise ValidationFailed("the compiled pipeline does not match diffusers:\n  " + "\n  ".join(lines))
    optimization = Optimization.O2 if fused else Optimization.NONE
    manifest = write(artifact, source, options, key, started, infos[0], description, optimization, gate, graphs, images)
    return manifest, lines


def load_pipeline(model_dir: Path, kind: str) -> Any:
    """diffusers' pipeline of class `kind` in fp32 on CPU, without the safety checker (never
    exported) or SDXL's invisible watermark (not part of the model)."""
    try:
        import diffusers
    except ImportError:
        raise CompileFailed("text-to-image needs diffusers: pip install 'kiln[compile]'") from None
    xl = kind == "StableDiffusionXLPipeline"
    extras = {"add_watermarker": False} if xl else {"safety_checker": None, "requires_safety_checker": False}
    with captured():
        pipe = getattr(diffusers, kind).from_pretrained(model_dir, **extras)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.config
    added = unet.get("addition_embed_type")
    if unet.get("time_cond_proj_dim") is not None or added != ("text_time" if xl else None):
        raise UnsupportedModel(
            f"{model_dir.name}'s UNet takes conditioning kiln's text-to-image loop does not feed "
            f"(time_cond_proj_dim {unet.get('time_cond_proj_dim')}, addition_embed_type {added!r})"
        )
    if xl and (pipe.text_encoder is None or pipe.config.get("requires_aesthetics_score")):
        raise UnsupportedModel(f"{model_dir.name} is an SDXL refiner (one text encoder, aesthetic score): not compiled")
    return pipe


def export(pipe: Any, description: DiffusionInfo, artifact: Path, opset: int | None, log: Log) -> None:
    """One ONNX graph per component the description names, with optimum's diffusion export configs."""
    from optimum.exporters.onnx.convert import export_models
    from optimum.exporters.utils import get_diffusion_models_for_export

    models = get_diffusion_models_for_export(pipe, exporter="onnx")
    unet_config = models["unet"][1]
    unet_config.generate_dummy_inputs = odd_height(unet_config.generate_dummy_inputs)
    for name, path in description.graphs().items():
        start = time.perf_counter()
        with captured() as output:
            try:
                export_models({name: models[name]}, artifact, opset=opset, output_names=[path])
            except Exception as exc:
                raise CompileFailed(f"optimum cannot export the {name}: {exc}\n{output.read()}") from None
        log(f"{name}: exported to {path} ({time.perf_counter() - start:.1f} s)")


def fuse_unet(artifact: Path, log: Log) -> None:
    """The exported UNet with its attention fused in place (`compile.unet_fusion`)."""
    start = time.perf_counter()
    with captured() as output:
        try:
            ops = fuse_attention(artifact / GRAPHS["unet"])
        except Exception as exc:
            raise CompileFailed(f"fusing the UNet's attention failed: {exc}\n{output.read()}") from None
    counts = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
    log(f"unet: attention fused ({counts or 'nothing to fuse'}) ({time.perf_counter() - start:.1f} s)")


def odd_height(generate: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """optimum's UNet example inputs with the latent height made odd (one row dropped).

    diffusers' `UNet2DConditionModel.forward` upsamples by exact factors of two when the latent
    size is a multiple of `2 ** num_upsamplers`, and otherwise to the size of the skip connection
    each up block joins (`forward_upsample_size`). An odd height is a multiple of no power of two,
    so the tracer records the second path: each `Resize` takes its sizes from the skip tensor's
    shape, and the graph runs at every latent size, as PyTorch does (a downsampling convolution
    rounds odd sizes up; the upsampling goes back to the skip's size, not to twice its input).
    """

    def generate_odd(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = generate(*args, **kwargs)
        if inputs["sample"].shape[2] % 2 == 0:
            inputs["sample"] = inputs["sample"][:, :, 1:]
        return inputs

    return generate_odd


def text_encoder_names(pipe: Any) -> list[str]:
    """The pipeline's text encoders, in the order diffusers joins their hidden states."""
    return [name for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]


def tokenizer_folder(encoder: str) -> str:
    """The pipeline's (and the artifact's) folder of a text encoder's tokenizer: `text_encoder_2` -> `tokenizer_2`."""
    return encoder.replace("text_encoder", "tokenizer")


def reference_output(out: Any, name: str) -> np.ndarray:
    """The PyTorch output the graph's output `name` stands for: `hidden_states.N` is the encoder's
    `hidden_states[N]` (N = 0 the embeddings), any other name the attribute of that name."""
    kind, _, index = name.partition(".")
    value = out.hidden_states[int(index)] if kind == "hidden_states" else getattr(out, name)
    return value.numpy()  # type: ignore[no-any-return]


def write_tokenizers(model_dir: Path, pipe: Any, artifact: Path) -> tuple[list[Any], list[TokenizerInfo]]:
    """`tokenizer/tokenizer.json` (and `tokenizer_2/`): the pipeline's own, or transformers'
    conversion of the slow CLIP tokenizer; and the facts the runtime pads each with."""
    import transformers

    fasts, infos = [], []
    for encoder in text_encoder_names(pipe):
        folder = tokenizer_folder(encoder)
        with captured():
            fast = transformers.AutoTokenizer.from_pretrained(model_dir / folder, use_fast=True)  # type: ignore[no-untyped-call]
        if not fast.is_fast:
            raise CompileFailed(f"{model_dir.name}'s {folder} has no fast version that transformers can convert to")
        target = artifact / folder / "tokenizer.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        fast.backend_tokenizer.save(str(target))
        fasts.append(fast)
        infos.append(tokenizer_info(fast, getattr(pipe, encoder).config))
    return fasts, infos


def describe(pipe: Any, tokenizers: list[TokenizerInfo]) -> DiffusionInfo:
    """The facts the loop needs, as diffusers derives them in the pipeline's `__init__` and
    `__call__`; `tokenizers`: each text encoder's padding facts (the first one's go in the manifest)."""
    vae, unet = pipe.vae.config, pipe.unet.config
    vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
    height, width = (unet.sample_size,) * 2 if isinstance(unet.sample_size, int) else unet.sample_size
    xl = unet.get("addition_embed_type") == "text_time"
    encoders = []
    for index, name in enumerate(text_encoder_names(pipe)):
        layers = getattr(pipe, name).config.num_hidden_layers
        encoders.append(
            TextEncoderInfo(
                graph=f"{name}/model.onnx", tokenizer=f"{tokenizer_folder(name)}/tokenizer.json",
                tokenizer_info=tokenizers[index] if index else None,
                hidden_states=f"hidden_states.{layers - 1}" if xl else "last_hidden_state",  # diffusers' [-2]
                pooled="text_embeds" if xl and name == "text_encoder_2" else None,
            )
        )  # fmt: skip
    return DiffusionInfo(
        pipeline=type(pipe).__name__,
        latent_channels=int(unet.in_channels),
        vae_scaling_factor=float(vae.scaling_factor),
        vae_scale_factor=vae_scale_factor,
        size_multiple=math.lcm(8, vae_scale_factor),
        default_height=int(height) * vae_scale_factor,
        default_width=int(width) * vae_scale_factor,
        default_steps=DEFAULT_STEPS,
        default_guidance_scale=float(inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default),
        text_encoders=encoders,
        time_ids=xl,
        force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
        vae_latents_mean=vae.get("latents_mean"),
        vae_latents_std=vae.get("latents_std"),
    )


def _compare(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Max abs difference (over the largest reference value, where that is above 1) and cosine."""
    scale = max(1.0, float(np.abs(reference).max()))
    a, b = reference.ravel().astype(np.float64), got.ravel().astype(np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.abs(a - b).max()) / scale, float(a @ b) / denom if denom else 1.0


def validate_graphs(
    pipe: Any, engine: StableDiffusion, tokenizers: list[Any], log: Log
) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """Each graph against its PyTorch module on the same inputs: (scaled max abs diff, min cosine)."""
    import torch

    info = engine.info
    rng = np.random.default_rng(0)
    texts = [*PROMPTS, NEGATIVE, "", " ".join(PROMPTS * 8)]  # the last one is truncated
    figures: dict[str, tuple[float, float]] = {}
    joined, pooled = [], None
    for name, encoder, fast_tokenizer in zip(text_encoder_names(pipe), engine.text_encoders, tokenizers):
        slow_tokenizer, module = getattr(pipe, tokenizer_folder(name)), getattr(pipe, name)
        length = encoder.tokenizer.max_length
        slow = slow_tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
        ids = np.asarray(slow["input_ids"], dtype=np.int64)
        fast = np.asarray(fast_tokenizer(texts, padding="max_length", max_length=length, truncation=True)["input_ids"])
        served = encoder.tokenizer.batch(encoder.tokenizer.encode(texts), width=length)["input_ids"]
        if not (np.array_equal(ids, fast) and np.array_equal(ids, served)):
            raise ValidationFailed(
                f"the {name}'s converted tokenizer does not give the pipeline tokenizer's ids on the checked prompts"
            )
        with torch.inference_mode():
            out = module(torch.from_numpy(ids), output_hidden_states=True)
        hidden = reference_output(out, encoder.info.hidden_states)  # what the artifact says the loop takes
        got = encoder.graph.run({"input_ids": ids})
        figures[name] = _compare(hidden, got[encoder.info.hidden_states])
        joined.append(hidden)
        if encoder.info.pooled is not None:
            reference = reference_output(out, encoder.info.pooled)
            figures[f"{name} (pooled)"] = _compare(reference, got[encoder.info.pooled])
            pooled = reference if pooled is None else pooled
    hidden = np.concatenate(joined, axis=-1)
    height, width = info.default_height // info.vae_scale_factor, info.default_width // info.vae_scale_factor
    step = info.size_multiple // info.vae_scale_factor
    sizes = [(height, width), (max(step, height - step), width + step)]
    unet: list[tuple[float, float]] = []
    for size, timestep in zip([*sizes, sizes[0]], TIMESTEPS):
        latents = rng.standard_normal((2, info.latent_channels, *size), dtype=np.float32)
        conditioning = {"encoder_hidden_states": hidden[:2]}
        if info.time_ids:
            assert pooled is not None  # describe() names the second encoder's text_embeds
            height_px, width_px = (side * info.vae_scale_factor for side in size)
            sizes_ids = np.asarray([[height_px, width_px, 0, 0, height_px, width_px]] * 2, dtype=np.float32)
            conditioning |= {"text_embeds": pooled[:2], "time_ids": sizes_ids}
        tensors = {key: torch.from_numpy(value) for key, value in conditioning.items()}
        added = {key: tensors.pop(key) for key in ("text_embeds", "time_ids") if key in tensors}
        with torch.inference_mode():
            want = pipe.unet(
                torch.from_numpy(latents), torch.tensor(timestep), **tensors, added_cond_kwargs=added or None
            ).sample.numpy()
        feeds = {"sample": latents, "timestep": np.asarray(timestep, dtype=np.float32), **conditioning}
        unet.append(_compare(want, engine.unet.run(feeds)["out_sample"]))
    vae: list[tuple[float, float]] = []
    for size in sizes:
        latents = rng.standard_normal((1, info.latent_channels, *size), dtype=np.float32)
        latents /= np.float32(info.vae_scaling_factor)
        with torch.inference_mode():
            want = pipe.vae.decode(torch.from_numpy(latents)).sample.numpy()
        vae.append(_compare(want, engine.vae_decoder.run({"latent_sample": latents})["sample"]))
    figures["unet"] = max(d for d, _ in unet), min(c for _, c in unet)
    figures["vae_decoder"] = max(d for d, _ in vae), min(c for _, c in vae)
    cases = {
        **{name: f"{len(texts)} prompts" for name in figures if name.startswith("text_encoder")},
        "unet": f"latents {sizes[0]} and {sizes[1]}, timesteps {TIMESTEPS}",
        "vae_decoder": f"latents {sizes[0]} and {sizes[1]}",
    }
    lines = []
    for name, (diff, cosine) in figures.items():
        verdict = "passed" if diff <= GRAPH_MAX_ABS else "FAILED"
        lines.append(f"{name}: {verdict}, max abs diff {diff:.3g}, min cosine {cosine:.6f} vs PyTorch ({cases[name]})")
        log(lines[-1])
    return lines, figures


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (infinite when they are equal)."""
    error = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return math.inf if error == 0 else float(10 * np.log10(255.0**2 / error))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """diffusers' `numpy_to_pil` without the PIL image."""
    return (image * 255).round().astype(np.uint8)  # type: ignore[no-any-return]


def diffusers_image(pipe: Any, prompt: str, latents: np.ndarray, **kwargs: Any) -> np.ndarray:
    """diffusers' image, `(height, width, 3)` float in [0, 1], from these initial latents."""
    import torch

    height, width = (side * pipe.vae_scale_factor for side in latents.shape[2:])
    with torch.inference_mode():
        out = pipe(prompt, latents=torch.from_numpy(latents), height=height, width=width, output_type="np", **kwargs)
    return out.images[0]  # type: ignore[no-any-return]


def validate_pipeline(pipe: Any, engine: StableDiffusion, log: Log) -> dict[str, float]:
    """The runtime's loop against diffusers' on the same prompts and initial latents: PSNR per case
    (the default size with guidance, a wider one with a negative prompt)."""
    info = engine.info
    rng = np.random.default_rng(1)
    default = info.default_height, info.default_width
    cases = [
        ("default size, guidance 7.5", PROMPTS[0], None, default),
        ("wider, negative prompt", PROMPTS[1], NEGATIVE, (default[0], default[1] + info.size_multiple)),
    ]
    figures = {}
    for name, prompt, negative, (height, width) in cases:
        latents = rng.standard_normal(engine.latent_shape(height, width), dtype=np.float32)
        want = diffusers_image(
            pipe, prompt, latents, negative_prompt=negative, num_inference_steps=VALIDATION_STEPS, guidance_scale=7.5
        )
        got = engine.generate(
            prompt, negative_prompt=negative, guidance_scale=7.5, steps=VALIDATION_STEPS, latents=latents,
            scheduler=engine.scheduler(), rng=np.random.default_rng(0),
        )  # fmt: skip
        figures[name] = psnr(to_uint8(want), to_uint8(got))
        log(f"pipeline ({name}, {width}x{height}): PSNR {figures[name]:.1f} dB vs diffusers")
    return figures


def write(
    artifact: Path,
    source: Source,
    options: CompileOptions,
    key: str,
    started: float,
    info: TokenizerInfo,
    description: DiffusionInfo,
    optimization: Optimization,
    gate: str,
    graphs: dict[str, tuple[float, float]],
    psnr: dict[str, float],
) -> Manifest:
    """Hash every file below `artifact` (graphs sit in folders) and write the manifest, last."""
    import onnx

    unet = onnx.load(str(artifact / GRAPHS["unet"]), load_external_data=False)
    files = sorted(p for p in artifact.rglob("*") if p.is_file() and p.name != MANIFEST)
    measured = {
        "passed": True,
        "graphs": {name: {"max_abs_diff": diff, "min_cosine": cosine} for name, (diff, cosine) in graphs.items()},
        "psnr_db": {name: round(v, 2) if math.isfinite(v) else None for name, v in psnr.items()},  # None: identical
    }
    manifest = Manifest(
        task="text-to-image",
        source=source,
        device=str(options.device),
        precision=str(Precision.FP32),
        optimization=str(optimization),
        opset=max(o.version for o in unet.opset_import if o.domain in ("", "ai.onnx")),
        model_file=GRAPHS["unet"],
        input_names=[i.name for i in unet.graph.input],
        output_names=[o.name for o in unet.graph.output],
        tokenizer=info,
        validation=Validation(
            gate=gate, passed=True, inputs=len(graphs) + len(psnr), max_abs_diff=max(d for d, _ in graphs.values()),
            min_cosine=min(c for _, c in graphs.values()),
        ),
        files={p.relative_to(artifact).as_posix(): sha256(p) for p in files},
        versions=installed("onnxruntime", "onnxruntime-gpu", "onnx", "optimum", "optimum-onnx", "diffusers",
                           "transformers", "torch", "tokenizers"),
        choice={"rule": CHOICE_RULE, "order": [f"fp32-{optimization}"], "tried": {f"fp32-{optimization}": measured}},
        graphs=description.graphs(),
        compile_seconds=round(time.perf_counter() - started, 2),
        config_hash=key,
    )  # fmt: skip
    write_manifest(artifact, manifest)
    return manifest
