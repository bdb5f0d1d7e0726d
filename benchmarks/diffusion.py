"""Text-to-image rows: seconds per image, kiln's compiled pipeline against diffusers on PyTorch,
and the served pipeline's memory while it generates.

Two pipelines with random weights (seeded, built here; no Hub): the tests' tiny one (fixed
overhead per step), and one of Stable Diffusion 1.5's size: its UNet config (block_out_channels
(320, 640, 1280, 1280), cross_attention_dim 768, 8 heads, 2 layers per block), its VAE config,
a CLIP text encoder of its size (12 layers of 768) with the tests' small tokenizer, and its
PNDM scheduler. The UNet's `sample_size` is 32, so the default size, which `kiln compile`
validates at, is the 256x256 of the rows; the weights and the work per pixel are SD 1.5's.

Both contestants get the same prompt and the same initial latents (the served pipeline draws
them from the seed; diffusers is passed them), with classifier-free guidance (7.5, two UNet
passes per step in one batch), fp32, in this one process. Each image is timed after one warm-up
image each, in blocks taken in turn (A B, then B A, ...), as `benchmarks.inprocess` does; with
seconds per image, ONNX Runtime's spinning threads (milliseconds after a run) cost the other side
nothing that shows, so no image is dropped. Quality is the PSNR of kiln's uint8 image against
diffusers' (the compile gate asks for 35 dB).

Memory (`peak_memory`), in a fresh process: the served pipeline is loaded, its resident memory
taken, the peak reset (`/proc/self/clear_refs`), one image generated, and the peak read
(`VmHWM`). Beside it, the graphs' bytes on disk and the tensor the fused attention never holds
whole (`compile.unet_fusion`), which an unfused UNet makes at every self-attention of its first
level: the scores, batch 2 x heads x (latent pixels)^2.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASK = "text-to-image"
PROMPT = "a photograph of an astronaut riding a horse on the moon"
GUIDANCE = 7.5
GOAL = 1.5
SD15_SAMPLE_SIZE = 32
SD15_HEADS = 8
MIB = 1 << 20


@dataclass
class DiffusionRow:
    model: str
    size: str
    steps: int
    contestant: str
    p50_s: float
    images: int
    speedup: float = 1.0
    quality: dict[str, float | None] = field(default_factory=dict)  # psnr_db None: identical images
    note: str = ""


@dataclass
class MemoryRow:
    model: str
    size: str
    steps: int
    loaded_rss_mb: float
    peak_rss_mb: float
    graphs_mb: float
    attention_scores_mb: float

    @property
    def growth_mb(self) -> float:
        return self.peak_rss_mb - self.loaded_rss_mb


def build_sd15(out: Path) -> Path:
    """SD 1.5's architecture with random weights in `out/model` (`save_pretrained`; reused when
    there, `out` built afresh otherwise)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.support.diffusion import clip_tokenizer

    model = out / "model"
    if (model / "model_index.json").is_file():
        return model
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted build left
    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel(
            sample_size=SD15_SAMPLE_SIZE, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
            attention_head_dim=SD15_HEADS, layers_per_block=2,
        ),
        vae=diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
            sample_size=SD15_SAMPLE_SIZE * 8, scaling_factor=0.18215,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(  # type: ignore[no-untyped-call]
                hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                projection_dim=768, max_position_embeddings=77,
            )
        ),
        tokenizer=clip_tokenizer(out / "slow-tokenizer"),
        scheduler=diffusers.PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
            set_alpha_to_one=False,
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(model)  # type: ignore[attr-defined]
    return model


def compile_pipeline(model: Path, work: Path, device: str) -> Path:
    """`kiln compile --task text-to-image` of `model` (validated against diffusers as it goes)."""
    from compile import CompileOptions, Device, Progress, compile_model

    options = CompileOptions(task=TASK, device=Device(device))
    return compile_model(model, work / f"{model.parent.name}-{TASK}", options, Progress(quiet=True)).directory


def compare(
    label: str,
    model: Path,
    artifact: Path,
    *,
    size: int,
    steps: int,
    device: str,
    rounds: int,
    block: int,
    log: Callable[[str], None],
) -> list[DiffusionRow]:
    """Seconds per `size`x`size` image of `steps` steps: diffusers' `StableDiffusionPipeline` and
    the compiled pipeline, `rounds` x `block` images each after one warm-up image each."""
    import diffusers
    import torch

    import runtime
    from compile.diffusion import psnr

    served = runtime.load(artifact, device=device)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        model, safety_checker=None, requires_safety_checker=False
    ).to(device)
    reference.set_progress_bar_config(disable=True)
    shape = served.engine.latent_shape(size, size)  # type: ignore[attr-defined]

    def ours(seed: int) -> np.ndarray:
        image = served(PROMPT, seed=seed, num_inference_steps=steps, width=size, height=size, guidance_scale=GUIDANCE)
        return np.asarray(image, dtype=np.uint8)

    def theirs(seed: int) -> np.ndarray:
        latents = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)).to(device)
        with torch.inference_mode():
            out = reference(
                PROMPT, latents=latents, num_inference_steps=steps, width=size, height=size, guidance_scale=GUIDANCE,
                output_type="pil",
            )  # fmt: skip
        return np.asarray(out.images[0], dtype=np.uint8)

    contestants = {"pytorch": theirs, "fp32": ours}
    first = {name: call(0) for name, call in contestants.items()}
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for turn in range(rounds):
        for name in contestants if turn % 2 == 0 else list(contestants)[::-1]:
            for index in range(block):
                start = time.perf_counter()
                contestants[name](1 + turn * block + index)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["pytorch"])
    p50 = statistics.median(times["fp32"])
    value = psnr(first["pytorch"], first["fp32"])
    quality = {"psnr_db": round(value, 2) if math.isfinite(value) else None}
    log(
        f"text-to-image: pytorch {base:.2f} s | fp32 {p50:.2f} s ({base / p50:.2f}x, PSNR {_db(quality)})"
        f"  ({label} {size}x{size}, {steps} steps)"
    )
    row = functools.partial(DiffusionRow, label, f"{size}x{size}", steps)
    return [
        row("pytorch", base, rounds * block),
        row("fp32", p50, rounds * block, base / p50, quality),
    ]


def peak_memory(label: str, artifact: Path, *, size: int, steps: int, heads: int, device: str) -> MemoryRow:
    """The served pipeline's resident memory after loading and its peak while generating one
    `size`x`size` image, measured in a fresh process (this one holds other models)."""
    command = [sys.executable, "-m", "benchmarks.diffusion", str(artifact), str(size), str(steps), device]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    loaded, peak = json.loads(done.stdout.splitlines()[-1])
    graphs = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file() and p.suffix != ".json")
    latent_pixels = (size // 8) ** 2
    scores = 2 * heads * latent_pixels**2 * 4
    return MemoryRow(label, f"{size}x{size}", steps, loaded / MIB, peak / MIB, graphs / MIB, scores / MIB)


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _measure(artifact: Path, size: int, steps: int, device: str) -> tuple[int, int]:
    """This process's resident bytes after loading `artifact`, and its peak over one image."""
    import runtime

    pipe = runtime.load(artifact, device=device)
    gc.collect()
    loaded = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    pipe(PROMPT, seed=0, num_inference_steps=steps, width=size, height=size, guidance_scale=GUIDANCE)
    return loaded, _status_bytes("VmHWM")


def run(work: Path, *, quick: bool, device: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The suite's text-to-image results: rows for the tiny pipeline and (full run) the SD 1.5-size
    one at 256x256 and 10 steps, and the SD 1.5-size pipeline's memory over a 512x512 image."""
    from tests.support.diffusion import build_diffusion

    rows: list[DiffusionRow] = []
    say("text-to-image: tiny Stable Diffusion (diffusers' test pipeline), 64x64")
    tiny = build_diffusion(TASK, "stable-diffusion", work / "models" / "tiny-sd")
    tiny_artifact = compile_pipeline(tiny, work, device)
    rounds, block = (2, 3) if quick else (4, 5)
    rows += compare(
        "tiny SD", tiny, tiny_artifact, size=64, steps=10, device=device, rounds=rounds, block=block, log=say
    )
    memory: list[MemoryRow] = []
    if not quick:
        say("text-to-image: SD 1.5-size pipeline (random weights): building and compiling")
        big = build_sd15(work / "models" / "sd15-random")
        gc.collect()
        artifact = compile_pipeline(big, work, device)
        gc.collect()
        rows += compare(
            "SD 1.5 size (random)", big, artifact, size=256, steps=10, device=device, rounds=3, block=1, log=say
        )
        say("text-to-image: SD 1.5-size pipeline, peak memory over one 512x512 image")
        memory.append(peak_memory("SD 1.5 size (random)", artifact, size=512, steps=2, heads=SD15_HEADS, device=device))
    return {
        "rows": [dataclasses.asdict(r) for r in rows],
        "memory": [{**dataclasses.asdict(m), "growth_mb": m.growth_mb} for m in memory],
    }


def _db(quality: dict[str, Any]) -> str:
    return "identical" if quality["psnr_db"] is None else f"{quality['psnr_db']:.1f} dB"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: compiled fp32 against diffusers, seconds per image, the image within the compile
    gate's PSNR."""
    from compile.diffusion import IMAGE_MIN_PSNR

    found = []
    for r in results.get("rows", []):
        if r["contestant"] != "fp32":
            continue
        value = r["quality"]["psnr_db"]
        found.append(
            {
                "goal": f"{r['model']}: text-to-image {r['size']}, {r['steps']} steps, compiled fp32 vs diffusers",
                "target": f">= {GOAL:g}x",
                "measured": f"{r['speedup']:.2f}x ({r['p50_s']:.2f} s/image, PSNR {_db(r['quality'])})",
                "met": r["speedup"] >= GOAL and (value is None or value >= IMAGE_MIN_PSNR),
            }
        )
    return found


def markdown(results: dict[str, Any]) -> list[str]:
    """The report's text-to-image section (empty when the suite has no results for it)."""
    rows, memory = results.get("rows", []), results.get("memory", [])
    if not rows:
        return []
    lines = [
        "",
        "## Text-to-image, one process (seconds per image)",
        "",
        "Baseline `pytorch` is diffusers' `StableDiffusionPipeline` in fp32; kiln is `runtime.load(artifact)`",
        f"with the same prompt and initial latents, guidance {GUIDANCE:g}, PNDM. Weights are random (seeded).",
        "PSNR is kiln's uint8 image against diffusers'.",
        "",
        "| model | size | steps | contestant | images | p50 (s) | speed-up | PSNR |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['size']} | {r['steps']} | {r['contestant']} | {r['images']} | {r['p50_s']:.2f} | "
            f"{r['speedup']:.2f}x | {_db(r['quality']) if r['quality'] else '-'} |"
            for r in rows
        ],
    ]
    if memory:
        lines += [
            "",
            "Served pipeline's resident memory, fresh process: after loading, and the peak over one image.",
            "",
            "| model | size | steps | after load (MB) | peak (MB) | growth (MB) | graphs (MB) | unfused scores (MB) |",
            "|---|---|---|---|---|---|---|---|",
            *[
                f"| {m['model']} | {m['size']} | {m['steps']} | {m['loaded_rss_mb']:.0f} | {m['peak_rss_mb']:.0f} | "
                f"{m['growth_mb']:.0f} | {m['graphs_mb']:.0f} | {m['attention_scores_mb']:.0f} |"
                for m in memory
            ],
        ]
    return lines


if __name__ == "__main__":
    print(json.dumps(_measure(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
