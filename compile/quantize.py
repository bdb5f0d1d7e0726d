"""Dynamic int8 for CPU: a scale per activation row, with SmoothQuant so that transformer
activations survive it.

Transformer activations carry a few channels far larger than the rest; those channels set the
scale and every other channel loses its precision. SmoothQuant (Xiao et al., 2023) moves that
range into the weights: for a MatMul `X @ W`, with `s_j = max|X_j|^a / max|W_j|^(1-a)`,
`X @ W == (X / s) @ (s * W)`. kiln inserts the `1/s` as an explicit Mul before each group of
MatMuls sharing an input (so residual paths are untouched), folds `s` into their weights, then
quantizes the weights per column and the activations per row (`quantize_rows`): an input's answer
then depends on that input alone, so int8 artifacts batch like fp32 ones. ONNX Runtime's
`quantize_dynamic` scales each activation tensor as a whole, which a batch's other rows move.

Measured on all-MiniLM-L6-v2 (mean-pooled sentence embeddings against the fp32 export, the 53 test
sentences, `tests/sentences.py`): worst cosine 0.9985 with the feed-forward output projections left
in fp32, as with per-tensor scales (0.9985); quantizing those too gives 0.9887. The model call at
16 short sentences runs at ~1.5x fp32's rate and equals per-tensor int8's (`kiln bench`).
No reduced range: it exists for CPUs without VNNI, where u8 x s8 products can saturate; validation,
run on the machine that compiles, catches a CPU where that costs accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compile.graph_edits import replace_nodes

ALPHA = 0.5


def _calibrate(model: object, tensors: list[str], feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Largest absolute value per channel of each named tensor over the calibration inputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # type: ignore[arg-type]
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        outputs = dict(
            zip(
                [o.name for o in session.get_outputs()],
                session.run(None, {k: v for k, v in feed.items() if k in inputs}),
            )
        )
        for name in tensors:
            value = np.abs(outputs[name]).reshape(-1, outputs[name].shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], value) if name in amax else value
    return amax


def _topological(nodes: list[object], available: set[str]) -> list[object]:
    ordered, pending = [], nodes
    while pending:
        rest = [n for n in pending if not all(not x or x in available for x in n.input)]  # type: ignore[attr-defined]
        for node in pending:
            if node not in rest:
                ordered.append(node)
                available.update(node.output)  # type: ignore[attr-defined]
        if len(rest) == len(pending):
            raise ValueError("the graph has a cycle")
        pending = rest
    return ordered


def smooth(model: Any, feeds: Sequence[dict[str, np.ndarray]], alpha: float = ALPHA) -> None:
    """Apply SmoothQuant scales, in place, to every MatMul of `model` with a constant 2-D weight."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in graph.node:
        if _constant_weight(node, weights):
            groups.setdefault(node.input[0], []).append(node)
    amax = _calibrate(model, list(groups), feeds)
    for name, nodes in groups.items():
        matrices = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in matrices], axis=0)
        scale = np.clip(amax[name] ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1e-4, 1e4).astype(np.float32)
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/smooth_inverse")
        graph.initializer.append(inverse)
        graph.node.append(helper.make_node("Mul", [name, inverse.name], [f"{name}/smoothed"], name=f"{name}/smooth"))
        for node, matrix in zip(nodes, matrices):
            node.input[0] = f"{name}/smoothed"
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(matrix * scale[:, None], node.input[1]))
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    ordered = _topological(list(graph.node), available)
    del graph.node[:]
    graph.node.extend(ordered)


def _constant_matrix(node: Any, weights: dict[str, Any]) -> bool:
    """Whether the node's second input is a constant 2-D weight."""
    return len(node.input) > 1 and node.input[1] in weights and len(weights[node.input[1]].dims) == 2


def _constant_weight(node: Any, weights: dict[str, Any]) -> bool:
    return bool(node.op_type == "MatMul" and _constant_matrix(node, weights))


def quantize_rows(model: Any, exclude: set[str]) -> None:
    """Rewrite, in place, each MatMul `X @ W` with a constant 2-D weight (but those named in
    `exclude`) as int8 x int8 -> int32 with a scale per row of `X` and per column of `W`:

        s = max|X_row| / 127          q = round(X / s) + 128 (uint8, zero point 128)
        X @ W ~= (q - 128) @ round(W / w) * w * s     (w = max|W_col| / 127, symmetric int8)

    On `X` viewed as rows (`[-1, K]`): ReduceMax and ReduceMin for the scales, `QuantizeLinear`
    along the rows, then `MatMulIntegerToFloat` (ONNX Runtime's fused int8 GEMM, the weight's
    scale per column) and a `Mul` by the rows' scales; one quantized `X` serves every MatMul that
    reads it. A row's result depends on that row alone and the integer products are exact, so an
    input gives the same answer alone or in any batch; `quantize_dynamic` scales the whole
    activation tensor instead, and a batch's other rows would move it. The price, against its
    fused `DynamicQuantizeMatMul` at batch 1: the scales and the bias adds are separate nodes,
    1-13% of a call over four interleaved runs (all-MiniLM-L6-v2 at 16 tokens, ViT-S/16)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    constants: dict[str, np.ndarray] = {
        "rows/inverse_127": np.array(1.0 / 127, np.float32),
        "rows/tiny": np.array(1e-12, np.float32),
        "rows/one": np.array(1.0, np.float32),
        "rows/zero_point": np.array(128, np.uint8),
        "rows/column": np.array([-1, 1], np.int64),
        "rows/first": np.array([0], np.int64),
        "rows/last": np.array([-1], np.int64),
        "rows/axis_1": np.array([1], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes: list[Any] = []
    quantized: dict[str, _Rows] = {}
    packed: set[str] = set()
    for node in graph.node:
        if not _constant_weight(node, weights) or node.name in exclude:
            nodes.append(node)
            continue
        x, w = node.input[0], node.input[1]
        matrix_shape = tuple(weights[w].dims)
        if w not in packed:
            matrix = numpy_helper.to_array(weights[w])
            column_scale = (np.maximum(np.abs(matrix).max(axis=0), 1e-12) / 127).astype(np.float32)
            integers = np.round(matrix / column_scale).astype(np.int8)
            graph.initializer.append(numpy_helper.from_array(integers, f"{w}/int8"))
            graph.initializer.append(numpy_helper.from_array(column_scale, f"{w}/scale"))
            graph.initializer.append(numpy_helper.from_array(np.array(matrix_shape[1:], np.int64), f"{w}/columns"))
            packed.add(w)
        if x not in quantized:
            quantized[x] = _quantize_rows_of(x, matrix_shape[0], nodes, graph, opset)
        rows = quantized[x]
        y = node.output[0]
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [rows.uint8, f"{w}/int8", "rows/one", f"{w}/scale", "rows/zero_point"],
                [f"{y}/unscaled"],
                name=f"{node.name}/int8",
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{y}/unscaled", rows.scales], [f"{y}/rows"], name=f"{node.name}/row_scale"),
            helper.make_node("Concat", [rows.leading_shape, f"{w}/columns"], [f"{y}/shape"], axis=0, name=f"{y}/shape"),
            helper.make_node("Reshape", [f"{y}/rows", f"{y}/shape"], [y], name=f"{node.name}/reshape"),
        ]
    replace_nodes(graph, nodes)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


@dataclass(frozen=True)
class _Rows:
    """An activation quantized per row: its uint8 rows `[M, K]`, their scales `[M, 1]`, and the
    shape of its leading axes (a MatMul's output is those and the weight's columns)."""

    uint8: str
    scales: str
    leading_shape: str


def _quantize_rows_of(x: str, depth: int, nodes: list[Any], graph: Any, opset: int) -> _Rows:
    """Append the nodes that quantize activation `x` (last axis `depth`) per row: ReduceMax and
    ReduceMin rather than ReduceMax(Abs), and a per-row `QuantizeLinear` rather than a Div, read
    and write `x` two times fewer. (Reductions take their axes as an input from opset 18, as an
    attribute before.)"""
    from onnx import helper, numpy_helper

    p = f"{x}/rows"

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{p}/{output}"], name=f"{p}/{output}", **attributes))
        return f"{p}/{output}"

    def reduce(op: str, tensor: str, output: str) -> str:
        if opset >= 18:
            return node(op, [tensor, "rows/axis_1"], output, keepdims=0)
        return node(op, [tensor], output, keepdims=0, axes=[1])

    graph.initializer.append(numpy_helper.from_array(np.array([-1, depth], np.int64), f"{p}/matrix_shape"))
    matrix = node("Reshape", [x, f"{p}/matrix_shape"], "matrix")
    largest = node("Neg", [reduce("ReduceMin", matrix, "min")], "negated_min")
    magnitude = node("Max", [reduce("ReduceMax", matrix, "max"), largest, "rows/tiny"], "magnitude")
    scale = node("Mul", [magnitude, "rows/inverse_127"], "scale")
    zero_points = node("Expand", ["rows/zero_point", node("Shape", [scale], "count")], "zero_points")
    uint8 = node("QuantizeLinear", [matrix, scale, zero_points], "uint8", axis=0)
    scales = node("Reshape", [scale, "rows/column"], "scales")
    leading = node("Slice", [node("Shape", [x], "shape"), "rows/first", "rows/last"], "leading_shape")
    return _Rows(uint8, scales, leading)


def gemms_as_matmuls(model: Any) -> None:
    """Rewrite, in place, each plain Gemm with a constant 2-D weight (`alpha` = `beta` = 1, no
    transposed input) as MatMul and Add, the weight stored `[K, N]`: classifier heads export as
    Gemm, and the rest of this module knows MatMul only."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes: list[Any] = []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scaled = attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA")
        if node.op_type != "Gemm" or scaled or not _constant_matrix(node, weights):
            nodes.append(node)
            continue
        matrix = numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.input[1]}/as_matmul"
        graph.initializer.append(numpy_helper.from_array(matrix.T if attributes.get("transB") else matrix, name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}/product" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}/MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}/bias"))
    replace_nodes(graph, nodes)


def quantize_int8(source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]]) -> int:
    """SmoothQuant, then int8 with a scale per activation row (`quantize_rows`) on the MatMuls (and
    Gemms) with constant weights, except the feed-forward output projections (their GELU inputs
    are the hardest to quantize). Quantizes the plain fp32 export: quantizing a fused graph fails.
    Returns how many were quantized; with none, nothing is written."""
    import onnx

    model = onnx.load(str(source))
    gemms_as_matmuls(model)
    ffn_out = {n.name for n in model.graph.node if "/output/dense/" in n.name and "attention" not in n.name}
    weights = {init.name: init for init in model.graph.initializer}
    quantizable = sum(_constant_weight(n, weights) and n.name not in ffn_out for n in model.graph.node)
    if quantizable:
        smooth(model, calibration)
        quantize_rows(model, exclude=ffn_out)
        onnx.save(model, str(target))
    return quantizable


def quantize_decoding_graph(source: Path, target: Path) -> None:
    """Dynamic per-channel int8 on every MatMul with a constant weight, inside the merged decoder's
    branches too (`EnableSubgraph`). No SmoothQuant here: its calibration would need activations
    from the decoding loop; the decoding gate (the same tokens as PyTorch) decides instead."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source, target, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True},
        use_external_data_format=source.stat().st_size > 1_800_000_000,
    )  # fmt: skip
