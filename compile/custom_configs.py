"""ONNX export configs for the question-answering models optimum 2.1 cannot export: TAPAS
(table-question-answering) and ViLT (visual-question-answering).

Each config names the graph's inputs and outputs with their dynamic axes and makes valid dummy
inputs, as optimum's own configs in `optimum/exporters/onnx/model_configs.py` do; optimum takes
them through `custom_onnx_configs={"model": config}`. Both models run data-dependent Python that
tracing cannot keep, so each config's patcher swaps that code, while exporting only, for the same
computation written in tensor operations (the tests compare the graph to the unpatched model):

- `TapasForQuestionAnswering`: the per-cell position reset of `TapasEmbeddings` and the
  cell-selection head (`_single_column_cell_selection_loss` as it runs without labels: the mean
  logit of each cell, cells outside the most likely column pushed to -10000) reduce over segments
  with `scatter_reduce` ("amin", "mean": no ONNX form before opset 18) behind `tolist()` shapes,
  which would fix the batch size and sequence length. Rewritten with pairwise comparisons and
  one-hot segment sums, which need nothing past opset 14.
- `ViltForQuestionAnswering`: `ViltEmbeddings.visual_embed` resizes the position embeddings in a
  Python loop over the batch, then keeps the real patches in an order drawn by `torch.multinomial`,
  topped up with padded ones. The rewrite builds each image's bilinear (`align_corners`) position
  grid from two interpolation matrices and keeps every patch with its mask: padded patches are
  masked keys and attention ignores order, so the answer is the same wherever PyTorch keeps every
  real patch (`max_image_length <= 0`, ViLT's default and the published checkpoints' setting).
"""

from __future__ import annotations

import inspect
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optimum.exporters.onnx.base import OnnxConfig
from optimum.exporters.onnx.config import TextAndVisionOnnxConfig, TextEncoderOnnxConfig
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.utils import DTYPE_MAPPER, DummyTextInputGenerator, DummyVisionInputGenerator
from optimum.utils.normalized_config import NormalizedTextAndVisionConfig, NormalizedTextConfig
from torch.nn import functional
from transformers.models.tapas.modeling_tapas import CLOSE_ENOUGH_TO_LOG_ZERO, EPSILON_ZERO_DIVISION

from compile.errors import CompileFailed, UnsupportedModel

TAPAS_TOKEN_TYPES = (
    "segment_ids",
    "column_ids",
    "row_ids",
    "prev_labels",
    "column_ranks",
    "inv_column_ranks",
    "numeric_relations",
)
"""The channels of TAPAS's `token_type_ids`, in `TapasForQuestionAnswering.forward`'s order."""
_COLUMN, _ROW = TAPAS_TOKEN_TYPES.index("column_ids"), TAPAS_TOKEN_TYPES.index("row_ids")


class _TraceableForward(ModelPatcher):  # type: ignore[misc]
    """Exports `config.traceable_forward(model, **graph inputs)` in place of the model's forward.
    The tracer still calls the model with the arguments of its own forward, in its order."""

    def __init__(self, config: Any, model: Any, model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(config, model, model_kwargs=model_kwargs)
        signature = inspect.signature(model.forward)

        def forward(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            given = signature.bind(*args, **kwargs).arguments
            outputs: dict[str, torch.Tensor] = config.traceable_forward(
                model, **{name: given[name] for name in config.inputs}
            )
            return outputs

        self.orig_forward = forward


class TapasTokenTypesGenerator(DummyTextInputGenerator):  # type: ignore[misc]
    """TAPAS's (batch, sequence, 7) `token_type_ids`: the question (segment 0, row and column 0)
    then table cells, each channel within its `type_vocab_sizes` entry."""

    SUPPORTED_INPUT_NAMES = ("token_type_ids",)

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ) -> Any:
        sizes = self.normalized_config.type_vocab_sizes
        shape = [self.batch_size, self.sequence_length]
        channels = [self.random_int_tensor(shape, size, framework=framework, dtype=int_dtype) for size in sizes]
        question = self.sequence_length // 4
        for channel in channels:
            channel[:, :question] = 0
        channels[0][:, question:] = 1
        return torch.stack(channels, -1) if framework == "pt" else np.stack(channels, -1)


def _cell_positions(config: Any, token_type_ids: torch.Tensor) -> torch.Tensor:
    """`TapasEmbeddings`' position ids under `reset_position_index_per_cell`: each token's distance
    from the first token of its cell (same column and row ids), capped by the position table."""
    length = token_type_ids.shape[1]
    position = torch.arange(length, device=token_type_ids.device)
    column, row = token_type_ids[:, :, _COLUMN], token_type_ids[:, :, _ROW]
    same_cell = (column[:, :, None] == column[:, None, :]) & (row[:, :, None] == row[:, None, :])
    first = torch.where(same_cell, position, length).amin(dim=-1)
    return torch.clamp(position - first, max=config.max_position_embeddings - 1)


def tapas_forward(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`TapasForQuestionAnswering.forward` without labels, in traceable operations: `logits` per
    token (cell selection restricted to one column, as `select_one_column` models do) and, with
    aggregation heads, `logits_aggregation`."""
    config = model.config
    positions = _cell_positions(config, token_type_ids) if config.reset_position_index_per_cell else None
    sequence, pooled = model.tapas(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        position_ids=positions,
        return_dict=False,
    )[:2]
    rows, columns = config.max_num_rows, config.max_num_columns
    row_ids = torch.clamp(token_type_ids[:, :, _ROW], max=rows - 1)
    column_ids = torch.clamp(token_type_ids[:, :, _COLUMN], max=columns - 1)
    cell_index = row_ids * columns + column_ids
    cells = functional.one_hot(cell_index, rows * columns).to(sequence.dtype)
    tokens_per_cell = torch.clamp(cells.sum(dim=1), min=1)

    def cell_mean(values: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bs,bsn->bn", values, cells) / tokens_per_cell

    cell_mask = cell_mean(attention_mask.to(sequence.dtype))
    token_logits = (torch.einsum("bsj,j->bs", sequence, model.output_weights) + model.output_bias) / config.temperature
    column_token_logits = torch.einsum("bsj,j->bs", sequence, model.column_output_weights) + model.column_output_bias
    by_column = (-1, rows, columns)
    cell_count = cell_mask.view(by_column).sum(dim=1)
    column_logits = (cell_mean(column_token_logits) * cell_mask).view(by_column).sum(dim=1)
    column_logits = column_logits / (cell_count + EPSILON_ZERO_DIVISION)
    column_range = torch.arange(columns, device=sequence.device)
    padding = ((cell_count < 0.5) & (column_range != 0)).to(sequence.dtype)
    column_logits = column_logits + CLOSE_ENOUGH_TO_LOG_ZERO * padding
    if not config.allow_empty_column_selection:
        column_logits = column_logits + CLOSE_ENOUGH_TO_LOG_ZERO * (column_range == 0).to(sequence.dtype)
    selected = column_logits.argmax(dim=-1, keepdim=True)
    column_of_cell = torch.arange(rows * columns, device=sequence.device) % columns
    in_selected = ((column_of_cell == selected) & (column_of_cell != 0)).to(sequence.dtype)
    cell_logits = cell_mean(token_logits) + CLOSE_ENOUGH_TO_LOG_ZERO * (1.0 - cell_mask * in_selected)
    outputs = {"logits": torch.gather(cell_logits, 1, cell_index)}
    if config.num_aggregation_labels > 0:
        outputs["logits_aggregation"] = model.aggregation_classifier(pooled)
    return outputs


class TapasOnnxConfig(TextEncoderOnnxConfig):  # type: ignore[misc]
    """`TapasForQuestionAnswering`: `input_ids`, `attention_mask` (batch, sequence) and
    `token_type_ids` (batch, sequence, 7) in; `logits` (batch, sequence) out, and
    `logits_aggregation` (batch, num_aggregation_labels) for models with aggregation heads.

    Models without `select_one_column` are refused: their forward without labels fails in
    transformers too, so there is nothing to reproduce."""

    DEFAULT_ONNX_OPSET = 14
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (TapasTokenTypesGenerator, DummyTextInputGenerator)
    _MODEL_PATCHER = _TraceableForward
    traceable_forward = staticmethod(tapas_forward)

    def __init__(self, config: Any, task: str = "table-question-answering", **kwargs: Any) -> None:
        if not config.select_one_column:
            raise UnsupportedModel("TAPAS without select_one_column has no inference path in transformers")
        if len(config.type_vocab_sizes) != len(TAPAS_TOKEN_TYPES):
            raise UnsupportedModel(f"TAPAS needs {len(TAPAS_TOKEN_TYPES)} token types, not {config.type_vocab_sizes}")
        super().__init__(config, task=task, **kwargs)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        axes = {0: "batch_size", 1: "sequence_length"}
        return {"input_ids": axes, "attention_mask": dict(axes), "token_type_ids": dict(axes)}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        outputs = {"logits": {0: "batch_size", 1: "sequence_length"}}
        if self._config.num_aggregation_labels > 0:
            outputs["logits_aggregation"] = {0: "batch_size"}
        return outputs


def _interpolation(sizes: torch.Tensor, length: int, points: int) -> torch.Tensor:
    """(batch, length, points): row i of item b weighs `points` source values into output i of a
    bilinear `align_corners` resize to `sizes[b]`, as `functional.interpolate` computes it; rows
    from `sizes[b]` on are zero (the padding)."""
    out = torch.arange(length, device=sizes.device)[None, :]
    sizes = sizes[:, None]
    scale = torch.where(sizes > 1, (points - 1) / torch.clamp(sizes - 1, min=1), 0.0)
    source = torch.clamp(out * scale, max=points - 1)
    low = source.floor()
    fraction = (source - low)[..., None]
    low_index = low.long()
    high_index = torch.clamp(low_index + 1, max=points - 1)
    weights = functional.one_hot(low_index, points) * (1 - fraction) + functional.one_hot(high_index, points) * fraction
    return weights * (out < sizes)[..., None]


def vilt_visual_embed(
    self: Any, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, max_image_length: int = -1
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """`ViltEmbeddings.visual_embed` for `max_image_length <= 0`, every patch kept in place with
    its mask; the third item (patch indices) is one `ViltEmbeddings.forward` discards."""
    x = self.patch_embeddings(pixel_values)
    batch, channels, height, width = x.shape
    x_mask = functional.interpolate(pixel_mask[:, None, :, :].float(), size=(height, width)).long()
    rows_kept = x_mask[:, 0].sum(dim=1)[:, 0]
    columns_kept = x_mask[:, 0].sum(dim=2)[:, 0]
    grid = self.config.image_size // self.config.patch_size
    spatial = self.position_embeddings[:, 1:, :].transpose(1, 2).view(1, channels, grid, grid)
    rows = _interpolation(rows_kept, height, grid).to(x.dtype)[:, None]
    columns = _interpolation(columns_kept, width, grid).to(x.dtype)[:, None]
    positions = rows @ spatial @ columns.transpose(-1, -2)
    patches = (x + positions).flatten(2).transpose(1, 2)
    cls = self.cls_token.expand(batch, -1, -1) + self.position_embeddings[:, :1, :]
    embeddings = self.dropout(torch.cat([cls, patches], dim=1))
    mask = torch.cat([torch.ones_like(x_mask[:, 0, 0, :1]), x_mask.flatten(1)], dim=1)
    return embeddings, mask, None


class _ViltPatcher(ModelPatcher):  # type: ignore[misc]
    """Swaps `vilt_visual_embed` in for the model's `visual_embed` while exporting."""

    def __enter__(self) -> None:
        super().__enter__()
        embeddings = self._model.vilt.embeddings
        embeddings.visual_embed = types.MethodType(vilt_visual_embed, embeddings)

    def __exit__(self, *exc: object) -> None:
        del self._model.vilt.embeddings.visual_embed
        super().__exit__(*exc)


class ViltVisionInputGenerator(DummyVisionInputGenerator):  # type: ignore[misc]
    """`pixel_values` as optimum makes them; a `pixel_mask` of real pixels (optimum's is all zeros,
    an image with no pixels)."""

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ) -> Any:
        if input_name == "pixel_mask":
            shape = [self.batch_size, self.height, self.width]
            dtype = getattr(DTYPE_MAPPER, framework)(int_dtype)
            return self.constant_tensor(shape, 1, dtype=dtype, framework=framework)
        return super().generate(input_name, framework=framework, int_dtype=int_dtype, float_dtype=float_dtype)


class ViltOnnxConfig(TextAndVisionOnnxConfig):  # type: ignore[misc]
    """`ViltForQuestionAnswering`: `input_ids`, `attention_mask`, `token_type_ids` (batch,
    sequence), `pixel_values` (batch, 3, height, width) and `pixel_mask` (batch, height, width) in,
    with height and width dynamic; `logits` (batch, num_labels) out.

    A model whose `max_image_length` is positive is refused: PyTorch draws that many patches at
    random from a larger image, which no graph reproduces."""

    DEFAULT_ONNX_OPSET = 14
    NORMALIZED_CONFIG_CLASS = NormalizedTextAndVisionConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, ViltVisionInputGenerator)
    _MODEL_PATCHER = _ViltPatcher

    def __init__(self, config: Any, task: str = "visual-question-answering", **kwargs: Any) -> None:
        if config.max_image_length > 0:
            raise UnsupportedModel(
                f"ViLT with max_image_length={config.max_image_length} samples image patches at random"
            )
        super().__init__(config, task=task, **kwargs)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        text = {0: "batch_size", 1: "sequence_length"}
        return {
            "input_ids": text,
            "attention_mask": dict(text),
            "token_type_ids": dict(text),
            "pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"},
            "pixel_mask": {0: "batch_size", 1: "height", 2: "width"},
        }

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"logits": {0: "batch_size"}}


_CUSTOM: dict[tuple[str, str], tuple[type[OnnxConfig], str]] = {
    ("tapas", "table-question-answering"): (TapasOnnxConfig, "AutoModelForTableQuestionAnswering"),
    ("vilt", "visual-question-answering"): (ViltOnnxConfig, "AutoModelForVisualQuestionAnswering"),
}
"""(model type, kiln task) -> the export config and the transformers head it exports."""


def exports_itself(model_type: str | None, task: str) -> bool:
    """Whether kiln exports `model_type` for `task` with its own config (optimum has none)."""
    return (model_type or "", task) in _CUSTOM


def custom_onnx_config(model_type: str, task: str, config: Any) -> OnnxConfig | None:
    """kiln's export config for `model_type` on `task` (`config`: the model's `PretrainedConfig`),
    or None where optimum's own config serves. Raises `UnsupportedModel` for a TAPAS or ViLT
    config whose behaviour the graph cannot reproduce."""
    found = _CUSTOM.get((model_type, task))
    return None if found is None else found[0](config, task=task)


def export_custom(model_dir: Path, output: Path, task: str, *, opset: int | None = None) -> Path:
    """Export the model in `model_dir` for `task` with its custom config into `output` (the graph
    as `model.onnx`, beside the config and preprocessor files optimum copies), and return the graph.

    `onnx_export_from_model`, not `main_export`: `main_export` loads the model through optimum's
    task table, which has no table-question-answering head, so the head is loaded here (for both
    models, one path). optimum's own validation is off, as in `compile.build`: kiln validates
    against PyTorch itself. Post-processing is off: it only deduplicates tied weights, and neither
    head ties any.
    """
    import transformers
    from optimum.exporters.onnx.convert import onnx_export_from_model

    config = transformers.AutoConfig.from_pretrained(model_dir)
    found = _CUSTOM.get((config.model_type, task))
    if found is None:
        raise CompileFailed(f"kiln has no custom ONNX config for {config.model_type} on {task}")
    config_class, head = found
    model = getattr(transformers, head).from_pretrained(model_dir).eval()
    onnx_export_from_model(
        model,
        output,
        opset=opset,
        do_validation=False,
        no_post_process=True,
        custom_onnx_configs={"model": config_class(model.config, task=task)},
        task=task,
    )
    return output / "model.onnx"
