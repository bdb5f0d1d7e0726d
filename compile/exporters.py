"""How each kind of model is checked after its export: a registry of exporters, keyed by the task's
input kind (`runtime.input_kind`), filled by `@exporter(kind)` like the runtime's task registry.

optimum has exported the fp32 graph by the time an exporter runs. The exporter gives the build the
rest of what differs between kinds of input, as one `Reference`: the validation batches as the
runtime feeds the graph, PyTorch's outputs on them, which positions count and which outputs carry
a label, the int8 calibration feeds (never the validation ones), the one-input feeds whose latency
decides between candidates, and the preprocessor components the artifact carries (named in the
manifest with their settings). `compile.build` keeps the steps every kind shares: plan, build the
candidates, validate, choose, write, swap.

Adding a kind of input (audio, tables, ...) is one function here, decorated, plus its task specs in
`compile.tasks`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compile import sentence, validate
from compile.errors import CompileFailed, UnsupportedModel
from compile.options import CompileOptions, Progress
from compile.tasks import ExportSpec, export_spec, model_type
from runtime import InputKind, input_kind
from runtime.artifact import SentencePooling, TokenizerInfo
from runtime.pooling import normalize, pool
from runtime.tasks.base import sigmoid

POOLABLE = ("feature-extraction", "sentence-embeddings", "sentence-similarity")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
IMAGE_FILES = ("preprocessor_config.json",)

Outputs = dict[str, np.ndarray]


@dataclass
class BuildContext:
    """One compile's inputs, as every exporter sees them."""

    model_dir: Path
    task: str
    spec: ExportSpec
    options: CompileOptions
    export_dir: Path
    progress: Progress

    @property
    def fp32(self) -> Path:
        return self.export_dir / "model.onnx"

    def graph_inputs(self) -> list[str]:
        import onnx

        return [i.name for i in onnx.load(str(self.fp32), load_external_data=False).graph.input]


def _same(outputs: Outputs, mask: np.ndarray) -> Outputs:
    return outputs


@dataclass
class Reference:
    """What the build validates and chooses candidates with, and what the artifact carries.

    `view` turns a graph's outputs into what is compared (sentence pooling, logits moved to a
    position axis); it is applied to PyTorch's outputs already, and the build applies it to each
    candidate's. `masks` say which positions of each batch count.
    """

    spec: ExportSpec
    feeds: list[Outputs]
    outputs: list[Outputs]
    masks: list[np.ndarray]
    calibration: list[Outputs]
    timing: list[Outputs]
    model_type: str
    files: tuple[str, ...]
    tokenizer: TokenizerInfo | None = None
    image_processor: dict[str, Any] | None = None
    feature_extractor: dict[str, Any] | None = None
    pooling: SentencePooling | None = None
    view: Callable[[Outputs, np.ndarray], Outputs] = field(default=_same)


_EXPORTERS: dict[InputKind, Callable[[BuildContext], Reference]] = {}


def exporter(kind: InputKind) -> Callable[[Callable[[BuildContext], Reference]], Callable[[BuildContext], Reference]]:
    def decorate(fn: Callable[[BuildContext], Reference]) -> Callable[[BuildContext], Reference]:
        _EXPORTERS[kind] = fn
        return fn

    return decorate


def reference_for(context: BuildContext) -> Reference:
    kind = input_kind(context.task)
    build = _EXPORTERS.get(kind)
    if build is None:
        raise CompileFailed(f"kiln has no exporter for {kind} models yet (task {context.task})")
    return build(context)


def load_torch_model(context: BuildContext) -> Any:
    import transformers

    cls = getattr(transformers, context.spec.auto_class)
    return cls.from_pretrained(context.model_dir, trust_remote_code=context.options.trust_remote_code).eval()


def run_torch(model: Any, feeds: list[Outputs], names: tuple[str, ...]) -> list[Outputs]:
    import torch

    with torch.inference_mode():
        return [
            {name: model(**{k: torch.from_numpy(v) for k, v in batch.items()})[name].float().numpy() for name in names}
            for batch in feeds
        ]


def tokenizer_info(tokenizer: Any, config: Any, sentence_limit: int | None = None) -> TokenizerInfo:
    """The tokenizer facts the runtime needs; the length limit is the smallest of the tokenizer's,
    the position embeddings' and (for sentence-transformers) `max_seq_length`."""
    limit = int(tokenizer.model_max_length)
    if sentence_limit:
        limit = min(limit, sentence_limit)
    text_config = getattr(config, "text_config", None) or config
    positions = getattr(text_config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limit = min(limit, int(positions) - offset)
    if limit > 100_000:
        limit = 512
    return TokenizerInfo(
        max_length=limit,
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        padding_side=tokenizer.padding_side,
        mask_token=tokenizer.mask_token if getattr(tokenizer, "mask_token_id", None) is not None else None,
        mask_token_id=getattr(tokenizer, "mask_token_id", None),
        cls_token_id=tokenizer.cls_token_id,
        unk_token_id=tokenizer.unk_token_id,
        special_ids=sorted(set(int(i) for i in tokenizer.all_special_ids)),
        clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
    )


def fast_tokenizer(model_dir: Path) -> Any:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, use_fast=True)  # type: ignore[no-untyped-call]
    if not tokenizer.is_fast:
        raise CompileFailed(
            f"{model_dir.name} has no fast tokenizer (tokenizer.json); kiln serves fast tokenizers only"
        )
    return tokenizer


def sentence_embeddings(outputs: Outputs, mask: np.ndarray, pooling: SentencePooling) -> Outputs:
    """Hidden states -> the sentence embeddings the runtime serves (validation compares these)."""
    vectors = pool(outputs["last_hidden_state"].astype(np.float32), mask, pooling.modes)
    return {"sentence_embedding": normalize(vectors) if pooling.normalize else vectors}


def shortest_and_longest(feeds: Outputs) -> list[Outputs]:
    """One-row feeds of the shortest and the longest text: fused attention wins on long inputs and
    can lose on short ones, so one length alone would choose wrong for the other."""
    mask = feeds["attention_mask"]
    rows = []
    for row in (int(mask.sum(axis=1).argmin()), int(mask.sum(axis=1).argmax())):
        cols = np.nonzero(mask[row])[0]
        rows.append({k: v[row : row + 1, cols[0] : cols[-1] + 1] for k, v in feeds.items()})
    return rows


@exporter(InputKind.TEXT)
def text_reference(context: BuildContext) -> Reference:
    """Tokenized batches (several lengths, padded, batch > 1, pairs where the task takes them)."""
    spec, model_dir = context.spec, context.model_dir
    pooling = sentence.read_pooling(model_dir) if context.task in POOLABLE else None
    if pooling is None and spec.pooled:
        pooling = SentencePooling(modes=["mean"], normalize=False)  # what sentence-transformers gives a plain model
    if pooling is not None:
        spec = dataclasses.replace(spec, pooled=True)
    with context.progress.step("running the PyTorch model for reference outputs"):
        tokenizer = fast_tokenizer(model_dir)
        torch_model = load_torch_model(context)
        if spec.task == "ranking" and torch_model.config.num_labels != 1:
            raise UnsupportedModel(
                f"ranking needs a one-score cross-encoder; {model_dir.name} has {torch_model.config.num_labels} labels"
            )
        info = tokenizer_info(tokenizer, torch_model.config, sentence.max_seq_length(model_dir))
        names = context.graph_inputs()
        feeds = [
            {k: v for k, v in b.items() if k in names}
            for b in validate.batches(tokenizer, spec, min(info.max_length, 256))
        ]
        outputs = run_torch(torch_model, feeds, spec.outputs)
    calibration = [
        {k: np.asarray(v, dtype=np.int64) for k, v in tokenizer([text], return_tensors="np").items() if k in names}
        for text in validate.CALIBRATION
    ]
    masks = [batch["attention_mask"] for batch in feeds]
    view = _same
    if pooling is not None:
        chosen = pooling

        def view(outputs: Outputs, mask: np.ndarray) -> Outputs:
            return sentence_embeddings(outputs, mask, chosen)

        outputs = [view(out, mask) for out, mask in zip(outputs, masks)]
    return Reference(
        spec=spec, feeds=feeds, outputs=outputs, masks=masks, calibration=calibration,
        timing=shortest_and_longest(feeds[0]), model_type=torch_model.config.model_type,
        files=(*TOKENIZER_FILES, "config.json"), tokenizer=info, pooling=pooling, view=view,
    )  # fmt: skip


def synthetic_images(count: int, seed: int) -> list[Any]:
    """Photographs are not a compile dependency: varied sizes and aspect ratios of gradients,
    shapes and noise, made on the spot and always the same for a seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    sizes = [(224, 224), (320, 240), (180, 300), (640, 480), (96, 128), (400, 400)]
    images = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy, mode="RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            box = (x0, y0, x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return images


ZERO_SHOT_LABELS = ["a cat", "a dog", "a car", "a red ball", "the sea"]


@exporter(InputKind.IMAGE)
def image_reference(context: BuildContext) -> Reference:
    """Synthetic images of several sizes, one at a time, and two of one size as a batch; the model's
    own image processor (and, for zero-shot models, its tokenizer on a few hypotheses)."""
    import transformers

    from runtime.images import ImageProcessor

    model_dir = context.model_dir
    # the head this model has: image-segmentation is per-pixel (Segformer) or per-query (DETR, MaskFormer)
    spec = export_spec(context.task, model_type(model_dir))
    context = dataclasses.replace(context, spec=spec)
    if not (model_dir / "preprocessor_config.json").is_file():
        raise CompileFailed(f"{model_dir.name} has no preprocessor_config.json: kiln needs the model's image processor")
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    served = ImageProcessor.from_config(config)  # fails here, not at serve time, for a processor kiln lacks
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    names = context.graph_inputs()
    text: Outputs = {}
    info = None
    if "input_ids" in names:
        tokenizer = fast_tokenizer(model_dir)
        hypotheses = [f"This is a photo of {label}." for label in ZERO_SHOT_LABELS]
        text = {
            k: np.asarray(v, dtype=np.int64)
            for k, v in tokenizer(hypotheses, padding=True, return_tensors="np").items()
        }

    def encode(images: list[Any]) -> Outputs:
        pixels = {k: np.asarray(v) for k, v in processor(images=images, return_tensors="np").items()}
        return {k: v for k, v in {**pixels, **text}.items() if k in names}

    with context.progress.step("running the PyTorch model for reference outputs"):
        images = synthetic_images(6, seed=0)
        feeds = [encode([image]) for image in images] + [encode([images[0], images[0].transpose(0)])]
        torch_model = load_torch_model(context)
        if info is None and text:
            info = tokenizer_info(tokenizer, torch_model.config)
        outputs = run_torch(torch_model, feeds, spec.outputs)
    view, masks = _image_view(spec, outputs)
    outputs = [view(out, mask) for out, mask in zip(outputs, masks)]
    return Reference(
        spec=spec, feeds=feeds, outputs=outputs, masks=masks,
        calibration=[encode([image]) for image in synthetic_images(8, seed=1)], timing=[feeds[0]],
        model_type=torch_model.config.model_type,
        files=(*IMAGE_FILES, *(TOKENIZER_FILES if text else ()), "config.json"),
        tokenizer=info, image_processor=served.describe(), view=view,
    )  # fmt: skip


def _image_view(
    spec: ExportSpec, outputs: list[Outputs]
) -> tuple[Callable[[Outputs, np.ndarray], Outputs], list[np.ndarray]]:
    """Per-position comparison where the outputs have positions: detection and segmentation queries,
    and the pixels of semantic segmentation logits (moved from `batch, class, h, w` to
    `batch, h * w, class`). A query's mask logits (`batch, query, h, w`, unlabelled) are compared as
    one vector per query, of the probabilities (sigmoid) that every post-processing reads: MaskFormer's
    logits reach +-40, where float32 noise alone is past the 1e-4 gate."""
    if not spec.token_level:
        return _same, [np.ones(len(next(iter(out.values()))), dtype=np.int64) for out in outputs]

    def positions(out: Outputs, mask: np.ndarray) -> Outputs:
        return {name: _positions(value, per_query=name in spec.unlabelled) for name, value in out.items()}

    viewed = [positions(out, np.empty(0)) for out in outputs]
    masks = [np.ones(next(iter(out.values())).shape[:2], dtype=np.int64) for out in viewed]
    return positions, masks


def _positions(value: np.ndarray, per_query: bool) -> np.ndarray:
    if value.ndim != 4:
        return value
    flat = value.reshape(*value.shape[:2], -1)
    return sigmoid(flat) if per_query else flat.transpose(0, 2, 1)


AUDIO_FILES = ("preprocessor_config.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json")


def synthetic_sounds(count: int, seed: int, rate: int) -> list[np.ndarray]:
    """Recordings are not a compile dependency: tones, sweeps, noise and a stretch of silence of
    several lengths (0.6 to 4 s), made on the spot and always the same for a seed."""
    rng = np.random.default_rng(seed)
    lengths = [1.0, 2.5, 0.6, 4.0, 1.7, 3.1]
    sounds = []
    for i in range(count):
        t = np.arange(int(lengths[i % len(lengths)] * rate)) / rate
        pitch = 110.0 * (1 + i % 5)
        sweep = np.sin(2 * np.pi * (pitch + 400 * t) * t)
        sound = 0.4 * np.sin(2 * np.pi * pitch * t) + 0.2 * sweep + 0.05 * rng.normal(size=t.size)
        sound[: t.size // 8] = 0.0  # silence, as speech starts
        sounds.append(sound.astype(np.float32))
    return sounds


@exporter(InputKind.AUDIO)
def audio_reference(context: BuildContext) -> Reference:
    """Synthetic sounds of several lengths, one at a time, and two of one length as a batch, through
    the model's own feature extractor as transformers' audio pipelines call it."""
    import transformers

    from runtime.audio import features_from_config

    model_dir = context.model_dir
    if not (model_dir / "preprocessor_config.json").is_file():
        raise CompileFailed(
            f"{model_dir.name} has no preprocessor_config.json: kiln needs the model's feature extractor"
        )
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    served = features_from_config(config)  # fails here, not at serve time, for features kiln lacks
    extractor = transformers.AutoFeatureExtractor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    rate = int(extractor.sampling_rate)
    names = context.graph_inputs()

    def encode(sounds: list[np.ndarray]) -> Outputs:
        features = extractor(sounds, sampling_rate=rate, return_tensors="np", return_attention_mask=True)
        return {k: np.asarray(v) for k, v in features.items() if k in names}

    spec = context.spec
    with context.progress.step("running the PyTorch model for reference outputs"):
        sounds = synthetic_sounds(6, seed=0, rate=rate)
        feeds = [encode([sound]) for sound in sounds] + [encode([sounds[0], sounds[0][::-1].copy()])]
        torch_model = load_torch_model(context)
        outputs = run_torch(torch_model, feeds, spec.outputs)
    # CTC decides per logit frame (batch, frame); a classifier once per input (batch)
    masks: list[np.ndarray] = [
        np.ones(out["logits"].shape[: 2 if spec.token_level else 1], dtype=np.int64) for out in outputs
    ]
    return Reference(
        spec=spec, feeds=feeds, outputs=outputs, masks=masks,
        calibration=[encode([sound]) for sound in synthetic_sounds(8, seed=1, rate=rate)], timing=[feeds[0]],
        model_type=torch_model.config.model_type, files=(*AUDIO_FILES, "config.json"),
        feature_extractor=served.describe(),
    )  # fmt: skip


def copy_components(reference: Reference, context: BuildContext, artifact: Path) -> None:
    """The preprocessor files the runtime reads, from the export (optimum saves them) or the model."""
    for name in reference.files:
        for source in (context.export_dir / name, context.model_dir / name):
            if source.is_file():
                shutil.copy(source, artifact / name)
                break


from compile import questions  # noqa: E402, F401  (registers the image+text and table exporters)
