"""Fused attention for an exported diffusers UNet, in the form ONNX Runtime's CPU kernels run best.

diffusers' attention exports as MatMul -> Softmax -> MatMul, which materializes every score
matrix: at 512x512 pixels (4096 latent tokens) SD 1.5's self-attention holds 8 heads x 4096 x 4096
floats per image, and one UNet call at guidance's batch of 2 peaked 4.6 GB above the loaded
graph here. ONNX Runtime's `MultiHeadAttention` runs flash attention on CPU (tiles of the scores,
never the whole matrix): the same call peaked 0.46 GB above it, and took 8.6 s instead of 10.4-12.6
(at 256x256, 1.9-2.0 s both ways).

Two steps:
- ONNX Runtime's own UNet fusions (`onnxruntime.transformers.optimizer`, model type "unet": layer
  norms, GELU, attention), with the CUDA-only ones off (GroupNorm, NHWC convolutions, BiasAdd,
  BiasSplitGelu) and without packing Q, K and V into one tensor, which its CPU
  `MultiHeadAttention` refuses ("Packed QKV ... not implemented for CPU");
- self-attention, which that fusion writes as the older `Attention` op (one packed weight, the
  whole score matrix on CPU), split into three MatMuls feeding `MultiHeadAttention(q, k, v, bias)`.

The result is checked by the caller, as every graph is: against the PyTorch module and the whole
loop against diffusers.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compile.graph_edits import replace_nodes

WEIGHTS = "weights.data"  # every weight of the fused graph, beside it
INLINE_BELOW = 1024  # bytes: smaller tensors stay in the graph file, as onnx's own default


def fuse_attention(path: Path) -> Counter[str]:
    """Fuse the UNet graph at `path` in place; the attention ops it now holds, by type.

    The graph is read without its weights: ONNX Runtime's fusions run symbolic shape inference on
    copies of the model, which with SD 1.5's 3.4 GB of weights in memory peaked at 20 GB. The few
    weights a fusion reads (the attention projections) are loaded from their files on demand,
    relative to the working directory, hence the change of directory. Then every weight still used
    is copied, one tensor at a time, into `WEIGHTS`, and the files the export wrote are deleted:
    the projections the fusion replaced leave no dead bytes behind.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    for unused_on_cpu in ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                      "enable_bias_add", "enable_packed_qkv", "enable_packed_kv"):  # fmt: skip
        setattr(options, unused_on_cpu, False)
    folder = path.parent
    model = onnx.load(str(path), load_external_data=False)
    with _num_heads_from_one_element_arrays(), contextlib.chdir(folder):
        fused = optimize_model(model, model_type="unet", opt_level=0, optimization_options=options, use_gpu=False)
        graph = fused.model.graph
        split_self_attention(graph)
    weights, staged = folder / f"{WEIGHTS}.partial", path.with_name(f"{path.name}.partial")
    repack_weights(graph, folder, weights, WEIGHTS)
    onnx.save_model(fused.model, str(staged))
    for exported in [p for p in folder.iterdir() if p.is_file() and p.suffix != ".partial"]:
        exported.unlink()
    weights.rename(folder / WEIGHTS)
    staged.rename(path)
    return Counter(n.op_type for n in graph.node if "Attention" in n.op_type)


def repack_weights(graph: Any, folder: Path, target: Path, location: str) -> None:
    """Every tensor of `graph` past `INLINE_BELOW` bytes written to `target` and pointed at
    as `location` (relative to `folder`, where it will be renamed to): those kept outside the graph
    copied from their files one at a time, those the fusion made in memory moved out."""
    with target.open("wb") as out:
        for tensor in _tensors(graph):
            source = {entry.key: entry.value for entry in tensor.external_data}
            if "location" in source:
                with (folder / source["location"]).open("rb") as file:
                    file.seek(int(source.get("offset", 0)))
                    data = file.read(int(source["length"])) if "length" in source else file.read()
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_BELOW:
                data = tensor.raw_data
                tensor.ClearField("raw_data")
            else:
                continue
            offset = out.tell()
            out.write(data)
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = tensor.EXTERNAL


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: its initializers and its nodes' tensor attributes (a `Constant`
    keeps its value there, and the exporter may have moved it out too), subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def split_self_attention(graph: Any) -> int:
    """Rewrite each `com.microsoft.Attention` (input, packed QKV weight [C, 3C], bias [3C], no mask)
    as three MatMuls and `MultiHeadAttention(q, k, v, bias)`: the same arithmetic, and the op whose
    CPU kernel tiles the scores. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        inputs = list(node.input)
        if len(inputs) > 3 and any(inputs[3:]):
            raise ValueError(f"{node.name} has a mask or past state; a UNet's self-attention has neither")
        hidden, weight = inputs[0], numpy_helper.to_array(initializers[inputs[1]])
        width = weight.shape[1] // 3
        projected = []
        for index, part in enumerate("qkv"):
            name = f"{node.name}_{part}"
            graph.initializer.append(
                numpy_helper.from_array(
                    np.ascontiguousarray(weight[:, index * width : (index + 1) * width]), f"{name}_weight"
                )
            )
            nodes.append(helper.make_node("MatMul", [hidden, f"{name}_weight"], [name], name=f"{name}_MatMul"))
            projected.append(name)
        bias = [inputs[2]] if len(inputs) > 2 and inputs[2] else []
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        nodes.append(
            helper.make_node(
                "MultiHeadAttention", [*projected, *bias], [node.output[0]], name=f"{node.name}_MHA",
                domain="com.microsoft", num_heads=heads,
            )
        )  # fmt: skip
        rewritten += 1
    replace_nodes(graph, nodes)
    return rewritten


@contextlib.contextmanager
def _num_heads_from_one_element_arrays() -> Iterator[None]:
    """ONNX Runtime 1.32's UNet attention fusion reads the head count with `int(array)` on a
    one-element array, which numpy 2.4 refuses (a TypeError); read it with `.item()` while fusing.
    The fusion modules are imported under their bare names (the optimizer puts its folder on
    `sys.path`), so that is the class to patch."""
    fusion = sys.modules.get("fusion_attention_unet")
    if fusion is None:
        yield
        return
    cls = fusion.FusionAttentionUnet
    original = cls.get_num_heads

    def get_num_heads(self: Any, reshape_q: Any, is_torch2: bool = False) -> int:
        if is_torch2:
            concat = self.model.get_parent(reshape_q, 1)
            if concat is not None and concat.op_type == "Concat" and len(concat.input) == 4:
                value = self.model.get_constant_value(concat.input[2])
                if isinstance(value, np.ndarray) and value.size == 1 and value.item() > 0:
                    return int(value.item())
            return 0
        return int(original(self, reshape_q, is_torch2))

    cls.get_num_heads = get_num_heads
    try:
        yield
    finally:
        cls.get_num_heads = original
