"""Tiny random vision models, saved as ordinary model directories, and how optimum exports them.

Like `tests.support.text` for text: nothing reaches the Hub. Each directory holds a random
`transformers` model with a small config (hidden sizes about 32, two layers or stages, images of
32 to 96 pixels), its image processor's `preprocessor_config.json`, a tokenizer for the
image+text models (BPE merges learnt on the spot, reproducibly, and assembled with `tokenizers`),
and a README whose front matter declares the `pipeline_tag`. The same call writes the same
bytes. `transformers.pipeline(task, model=str(directory))` loads every one of them, which is the
PyTorch reference the parity tests compare against.

`export_report` exports each model with optimum, runs it with ONNX Runtime and records the
graph's inputs and outputs, the largest difference to PyTorch, and whether the exported graph
takes a batch of two and an image of another size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSIFICATION_LABELS = ["cat", "dog", "car"]
DETECTION_LABELS = ["person", "cat", "dog", "car"]
SEMANTIC_LABELS = ["background", "person", "cat", "car"]
PANOPTIC_LABELS = ["person", "car", "sky", "grass"]

VISION_ARCHS: dict[str, tuple[str, ...]] = {
    "image-classification": ("vit", "convnext", "resnet", "efficientnet", "mobilenet_v2"),
    "zero-shot-image-classification": ("clip", "siglip"),
    "object-detection": ("detr", "yolos"),
    "image-segmentation": ("segformer", "detr", "maskformer"),
}
"""Task -> the architectures `build_vision` makes for it. Under image-segmentation, segformer is
semantic (SegformerForSemanticSegmentation), detr panoptic (DetrForSegmentation) and maskformer
panoptic (MaskFormerForInstanceSegmentation). Mask2Former is left out: optimum 2.1 registers no
ONNX config for it."""

# The transformers class of each model; the pipeline and optimum pick the same through the Auto classes.
HEADS: dict[tuple[str, str], str] = {
    **{
        ("image-classification", arch): "AutoModelForImageClassification"
        for arch in VISION_ARCHS["image-classification"]
    },
    ("zero-shot-image-classification", "clip"): "CLIPModel",
    ("zero-shot-image-classification", "siglip"): "SiglipModel",
    ("object-detection", "detr"): "DetrForObjectDetection",
    ("object-detection", "yolos"): "YolosForObjectDetection",
    ("image-segmentation", "segformer"): "SegformerForSemanticSegmentation",
    ("image-segmentation", "detr"): "DetrForSegmentation",
    ("image-segmentation", "maskformer"): "MaskFormerForInstanceSegmentation",
}

# The task optimum exports each (task, arch) for. Segformer has both "semantic-segmentation" and
# "image-segmentation" in optimum; only the former keeps the logits' height and width dynamic.
OPTIMUM_TASKS: dict[tuple[str, str], str] = {
    **{key: key[0] for key in HEADS},
    ("image-segmentation", "segformer"): "semantic-segmentation",
}

VISION_CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "a photo of a car",
    "This is a photo of a cat sleeping on the sofa.",
    "This is a photo of two dogs playing in the park.",
    "This is a photo of a red car parked in the street.",
    "A person walking on the grass under a blue sky.",
]


def _labels(config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    config["id2label"] = dict(enumerate(labels))
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    return config


def _resnet_backbone(stages: int) -> Any:
    """A four-stage ResNet of basic blocks, 8 to 32 channels: DETR's and MaskFormer's backbone."""
    from transformers import ResNetConfig

    return ResNetConfig(  # type: ignore[no-untyped-call]
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32][:stages],
        depths=[1] * stages,
        layer_type="basic",
        out_features=[f"stage{i}" for i in range(1, stages + 1)],
    )


def _detr_config(labels: list[str]) -> Any:
    """DETR with a transformers ResNet (no timm). The panoptic mask head needs hidden size +
    attention heads divisible by 8, hence 8 heads of 4 over a hidden size of 32."""
    from transformers import DetrConfig

    return DetrConfig(  # type: ignore[no-untyped-call]
        **_labels(
            dict(
                use_timm_backbone=False,
                backbone=None,
                backbone_config=_resnet_backbone(4),
                use_pretrained_backbone=False,
                num_queries=10,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=8,
                decoder_attention_heads=8,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                init_std=0.5,
            ),
            labels,
        )
    )


def _config(task: str, arch: str, tokenizer: Any = None) -> Any:
    """The tiny config. Initialisation scales are raised from the 0.02 default (0.2; 0.5 for
    DETR and MaskFormer) so that labels and queries get clearly different scores, and DETR's
    scores pass the pipelines' default threshold of 0.5."""
    import transformers as tf

    small: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if task == "image-classification":
        labelled = _labels({}, CLASSIFICATION_LABELS)
        if arch == "vit":
            return tf.ViTConfig(image_size=32, patch_size=8, initializer_range=0.2, **small, **labelled)  # type: ignore[no-untyped-call]
        if arch == "convnext":
            return tf.ConvNextConfig(  # type: ignore[no-untyped-call]
                num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32, initializer_range=0.2, **labelled
            )
        if arch == "resnet":
            return tf.ResNetConfig(  # type: ignore[no-untyped-call]
                embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", **labelled
            )
        if arch == "efficientnet":
            # Two stages of B0's seven at a quarter of its width: stem 8, blocks 8 -> 8, head 320.
            return tf.EfficientNetConfig(  # type: ignore[no-untyped-call]
                image_size=32, width_coefficient=0.25, depth_coefficient=1.0, kernel_sizes=[3, 3],
                in_channels=[32, 16], out_channels=[16, 24], strides=[1, 2], num_block_repeats=[1, 2],
                expand_ratios=[1, 6], hidden_dim=320, dropout_rate=0.2, initializer_range=0.2, **labelled,
            )  # fmt: skip
        if arch == "mobilenet_v2":
            return tf.MobileNetV2Config(  # type: ignore[no-untyped-call]
                depth_multiplier=0.25, min_depth=8, image_size=32, finegrained_output=False, initializer_range=0.2,
                **labelled,
            )  # fmt: skip
    if task == "zero-shot-image-classification":
        ids = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = dict(image_size=32, patch_size=8, **small)
        if arch == "clip":
            text = dict(max_position_embeddings=77, **small, **ids)
            return tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)  # type: ignore[no-untyped-call]
        if arch == "siglip":
            # The zero-shot pipeline pads SigLIP prompts to 64 tokens, and SigLIP pools the last one.
            text = dict(max_position_embeddings=64, **small, **ids)
            return tf.SiglipConfig(text_config=text, vision_config=vision)  # type: ignore[no-untyped-call]
    if task == "object-detection":
        if arch == "detr":
            return _detr_config(DETECTION_LABELS)
        if arch == "yolos":
            return tf.YolosConfig(  # type: ignore[no-untyped-call]
                image_size=[64, 64], patch_size=16, num_detection_tokens=10, initializer_range=0.2, **small,
                **_labels({}, DETECTION_LABELS),
            )  # fmt: skip
    if task == "image-segmentation":
        if arch == "segformer":
            return tf.SegformerConfig(  # type: ignore[no-untyped-call]
                num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                initializer_range=0.2, **_labels({}, SEMANTIC_LABELS),
            )  # fmt: skip
        if arch == "detr":
            return _detr_config(PANOPTIC_LABELS)
        if arch == "maskformer":
            decoder = tf.DetrConfig(  # type: ignore[no-untyped-call]
                use_timm_backbone=False, backbone=None, backbone_config=_resnet_backbone(4), num_queries=10,
                d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, init_std=0.5,
            )  # fmt: skip
            # The pixel decoder's GroupNorm has 32 groups: feature sizes are multiples of 32.
            maskformer: dict[str, Any] = dict(
                backbone_config=_resnet_backbone(4), decoder_config=decoder, fpn_feature_size=32,
                mask_feature_size=32, init_std=0.5,
            )  # fmt: skip
            return tf.MaskFormerConfig(**maskformer, **_labels({}, PANOPTIC_LABELS))  # type: ignore[no-untyped-call]
    raise KeyError(f"no tiny vision model for {task} / {arch}")


def _processor(task: str, arch: str) -> Any:
    """The image processor each architecture's Hub models ship, shrunk to the tiny image size."""
    import transformers as tf
    from transformers.image_utils import PILImageResampling

    square = {"height": 32, "width": 32}
    variable = {"shortest_edge": 64, "longest_edge": 96}
    if arch == "vit":
        return tf.ViTImageProcessor(size=square)
    if arch in ("convnext", "resnet"):  # microsoft/resnet-* ship ConvNextImageProcessor too
        return tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    if arch == "efficientnet":
        return tf.EfficientNetImageProcessor(size=square, include_top=False)
    if arch == "mobilenet_v2":
        return tf.MobileNetV2ImageProcessor(size={"shortest_edge": 36}, crop_size=square)
    if arch == "clip":
        return tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=square)
    if arch == "siglip":
        return tf.SiglipImageProcessor(size=square, resample=PILImageResampling.BILINEAR)
    if arch == "detr":
        fmt = "coco_panoptic" if task == "image-segmentation" else "coco_detection"
        return tf.DetrImageProcessor(size=variable, format=fmt)
    if arch == "yolos":
        return tf.YolosImageProcessor(size=variable)
    if arch == "segformer":
        return tf.SegformerImageProcessor(size={"height": 64, "width": 64})
    if arch == "maskformer":
        return tf.MaskFormerImageProcessor(size=variable, size_divisor=32)
    raise KeyError(f"no image processor for {arch}")


def _bpe_merges(words: list[list[str]], count: int) -> list[tuple[str, str]]:
    """`count` BPE merges learnt from `words` (each a list of symbols), most frequent pair first,
    ties broken alphabetically. The `tokenizers` trainers break ties in hash order, so two runs
    give different ids (BPE) or scores (Unigram); the tiny models must not change between runs."""
    from collections import Counter
    from itertools import pairwise

    corpus = Counter(tuple(word) for word in words)
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in corpus.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append((a, b))
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in corpus.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if word[i : i + 2] == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        corpus = merged
    return merges


def _clip_tokenizer() -> Any:
    """Byte-level BPE with CLIP's `</w>` word ends, lower-casing and splitting regex: the layout
    `CLIPTokenizerFast` insists on (a `Sequence` pre-tokenizer). Like CLIP's vocabulary, it holds
    every byte with and without `</w>`, then the merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPTokenizerFast

    from tests.support.text import CORPUS

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words = [
        [*word[:-1], word[-1] + "</w>"]
        for text in CORPUS + VISION_CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    ]
    merges = _bpe_merges(words, 200)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges), bos, eos]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=eos, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        sep=(eos, vocab[eos]), cls=(bos, vocab[bos]), add_prefix_space=False, trim_offsets=False
    )
    return CLIPTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=eos, pad_token=eos, model_max_length=77
    )


def _siglip_tokenizer() -> Any:
    """SigLIP's own tokenizer is sentencepiece only; this is the same shape without it: Metaspace
    words (`▁` marks a word start), lower-cased, `</s>` appended, `</s>` also the padding. A BPE
    learnt here stands in for sentencepiece's Unigram, whose `tokenizers` trainer is not
    reproducible (see `_bpe_merges`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tests.support.text import CORPUS

    normalizer = normalizers.Lowercase()
    pre_tokenizer = pre_tokenizers.Metaspace()
    words = [
        list(word)
        for text in CORPUS + VISION_CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    ]
    merges = _bpe_merges(words, 200)
    alphabet = sorted({symbol for word in words for symbol in word})
    tokens = ["<pad>", "</s>", "<unk>", *alphabet, *(a + b for a, b in merges)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
        model_input_names=["input_ids"],
    )


def _liven(model: Any) -> None:
    """Give a freshly initialised model outputs that depend on the image and differ between
    labels and queries: batch norms get non-trivial scales and running statistics (so that the
    export has to fold them), and tensors left at zero (YOLOS's detection tokens and position
    embeddings) get random values, and MaskFormer's "no object" class is made unlikely. Without
    this EfficientNet and MobileNetV2 give every label 1/3, every YOLOS query gives the same box
    and MaskFormer's panoptic pipeline returns no segment."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) or type(module).__name__.endswith("FrozenBatchNorm2d"):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.2)
        if hasattr(model, "class_predictor"):  # MaskFormer: else "no object" wins every query, no segment is left
            model.class_predictor.bias[-1] = -5.0


def build_vision(task: str, arch: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random `arch` model for `task` into `out` (model, image processor, tokenizer
    for CLIP and SigLIP, README with the pipeline tag) and return `out`."""
    import torch
    import transformers

    if arch not in VISION_ARCHS.get(task, ()):
        raise KeyError(f"no tiny vision model for {task} / {arch}; see VISION_ARCHS")
    tokenizer = {"clip": _clip_tokenizer, "siglip": _siglip_tokenizer}.get(arch, lambda: None)()
    config = _config(task, arch, tokenizer)
    torch.manual_seed(seed)
    head = getattr(transformers, HEADS[task, arch])
    model = head.from_config(config) if head.__name__.startswith("Auto") else head(config)
    _liven(model)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _processor(task, arch).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        f"---\npipeline_tag: {task}\nlibrary_name: transformers\n---\n# tiny {arch} {task}\n"
    )
    return out


def build_all_vision(root: Path) -> dict[tuple[str, str], Path]:
    """Every vision task in every architecture, under `root/<arch>-<task>`."""
    return {
        (task, arch): build_vision(task, arch, root / f"{arch}-{task}")
        for task, archs in VISION_ARCHS.items()
        for arch in archs
    }


def sample_image(width: int = 80, height: int = 60, seed: int = 0) -> Any:
    """A deterministic RGB PIL image (gradients, a disc and noise), so that no test needs a file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(width, height) * 0.25) ** 2
    pixels = np.stack([255 * x / width, 255 * y / height, 200 * disc + 30], axis=-1)
    pixels = pixels + rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# How optimum exports them


@dataclass
class ExportRecord:
    """What one export gave: `inputs`/`outputs` are (name, shape with symbolic axes, element type);
    `max_abs_diff` is ONNX Runtime vs PyTorch on one image, per output; `batch2` and
    `other_size` say "ok (diff)" or why not."""

    task: str
    arch: str
    optimum_task: str
    inputs: list[tuple[str, list[int | str], str]] = field(default_factory=list)
    outputs: list[tuple[str, list[int | str], str]] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    batch2: str = ""
    other_size: str = ""
    build_seconds: float = 0.0
    export_seconds: float = 0.0
    error: str | None = None


def _encode(task: str, arch: str, model_dir: Path, images: list[Any]) -> dict[str, Any]:
    """The processor's tensors for `images` (and, for zero-shot models, three prompts)."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    encoded = dict(processor(images=images, return_tensors="pt"))
    if task == "zero-shot-image-classification":
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
        padding: dict[str, Any] = {"padding": "max_length", "max_length": 64} if arch == "siglip" else {"padding": True}
        encoded.update(
            tokenizer([f"This is a photo of {x}." for x in CLASSIFICATION_LABELS], return_tensors="pt", **padding)
        )
    return encoded


def _compare(model: Any, session: Any, feeds: dict[str, Any]) -> dict[str, float]:
    import numpy as np
    import torch

    names = [i.name for i in session.get_inputs()]
    with torch.no_grad():
        reference = model(**{k: v for k, v in feeds.items() if k in names or k == "pixel_values"})
    ort_feeds = {}
    for name in names:
        value = feeds[name].numpy()
        ort_feeds[name] = value.astype(np.int64) if value.dtype.kind in "iu" else value.astype(np.float32)
    got = session.run(None, ort_feeds)
    diffs = {}
    for meta, value in zip(session.get_outputs(), got, strict=True):
        expected = getattr(reference, meta.name).numpy()
        if expected.shape != value.shape:
            raise ValueError(f"{meta.name}: ONNX shape {value.shape} != PyTorch {expected.shape}")
        diffs[meta.name] = float(np.abs(expected - value).max())
    return diffs


def _try(model: Any, session: Any, feeds: dict[str, Any]) -> str:
    try:
        return f"ok ({max(_compare(model, session, feeds).values()):.1e})"
    except Exception as exc:  # the report records why, whatever the library raised
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def export_one(task: str, arch: str, model_dir: Path, onnx_dir: Path) -> ExportRecord:
    """Export `model_dir` with optimum (no optimum validation), then measure it as described on
    `ExportRecord`. Failures are recorded, not raised."""
    import onnxruntime as ort
    import torch
    import transformers
    from optimum.exporters.onnx import main_export

    record = ExportRecord(task, arch, OPTIMUM_TASKS[task, arch])
    started = time.perf_counter()
    try:
        main_export(
            str(model_dir), onnx_dir, task=record.optimum_task, do_validation=False, library_name="transformers"
        )
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    finally:
        record.export_seconds = time.perf_counter() - started
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    record.inputs = [(i.name, list(i.shape), i.type) for i in session.get_inputs()]
    record.outputs = [(o.name, list(o.shape), o.type) for o in session.get_outputs()]
    model = getattr(transformers, HEADS[task, arch]).from_pretrained(model_dir).eval()
    one = _encode(task, arch, model_dir, [sample_image()])
    try:
        record.max_abs_diff = _compare(model, session, one)
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    two = _encode(task, arch, model_dir, [sample_image(), sample_image(seed=1)])
    record.batch2 = _try(model, session, two)
    other = _encode(task, arch, model_dir, [sample_image(width=50, height=90, seed=2)])
    height, width = one["pixel_values"].shape[-2:]
    if other["pixel_values"].shape[-2:] == (height, width):  # a fixed-size processor: feed another size directly
        other["pixel_values"] = torch.nn.functional.interpolate(
            other["pixel_values"], size=(height + 32, width + 16), mode="bilinear"
        )
    record.other_size = f"{tuple(other['pixel_values'].shape[-2:])}: " + _try(model, session, other)
    return record


def export_report(root: Path) -> list[ExportRecord]:
    """Build every tiny vision model under `root/models` and export it under `root/onnx`."""
    records = []
    for task, archs in VISION_ARCHS.items():
        for arch in archs:
            started = time.perf_counter()
            model_dir = build_vision(task, arch, root / "models" / f"{arch}-{task}")
            built = time.perf_counter() - started
            record = export_one(task, arch, model_dir, root / "onnx" / f"{arch}-{task}")
            record.build_seconds = built
            records.append(record)
    return records
