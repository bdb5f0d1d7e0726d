"""Dynamic int8 for CPU, with SmoothQuant so that transformer activations survive it.

Dynamic quantization scales each activation tensor as a whole, and transformer activations carry
a few channels far larger than the rest; those channels set the scale and every other channel
loses its precision. SmoothQuant (Xiao et al., 2023) moves that range into the weights: for a
MatMul `X @ W`, with `s_j = max|X_j|^a / max|W_j|^(1-a)`, `X @ W == (X / s) @ (s * W)`. kiln
inserts the `1/s` as an explicit Mul before each group of MatMuls sharing an input (so residual
paths are untouched), folds `s` into their weights, then quantizes per channel.

Measured on all-MiniLM-L6-v2 (pooled sentence embeddings, worst cosine to fp32 over the 53 test
sentences, `tests/sentences.py`): plain per-channel dynamic int8 0.967; SmoothQuant (a = 0.5)
with the feed-forward output projections left in fp32 0.9865 with reduced range, 0.9916 without
(the worst is always the shortest input, "Thanks!"), at about 1.4x the fp32 speed (`kiln bench`).
Reduced range (7-bit weights) exists for CPUs without VNNI, where u8 x s8 products can saturate;
kiln leaves it off and lets validation, run on the machine that compiles, catch a CPU where that
costs accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


def smooth(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]], alpha: float = ALPHA) -> None:
    """Write `source` with SmoothQuant scales applied to every MatMul with a constant 2-D weight."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    groups: dict[str, list[object]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    amax = _calibrate(model, list(groups), feeds)
    for name, nodes in groups.items():
        matrices = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]  # type: ignore[attr-defined]
        wmax = np.max([np.abs(w).max(axis=1) for w in matrices], axis=0)
        scale = np.clip(amax[name] ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1e-4, 1e4).astype(np.float32)
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/smooth_inverse")
        graph.initializer.append(inverse)
        graph.node.append(helper.make_node("Mul", [name, inverse.name], [f"{name}/smoothed"], name=f"{name}/smooth"))
        for node, matrix in zip(nodes, matrices):
            node.input[0] = f"{name}/smoothed"  # type: ignore[attr-defined]
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(matrix * scale[:, None], node.input[1]))  # type: ignore[attr-defined]
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    ordered = _topological(list(graph.node), available)
    del graph.node[:]
    graph.node.extend(ordered)  # type: ignore[arg-type]
    onnx.save(model, str(target))


def quantize_int8(source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """SmoothQuant, then dynamic per-channel int8 on the MatMuls with constant weights, except the
    feed-forward output projections (their GELU inputs are the hardest to quantize). Quantizes the
    plain fp32 export: quantizing a fused graph fails."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    smoothed = target.with_suffix(".smoothed.onnx")
    smooth(source, smoothed, calibration)
    graph = onnx.load(str(smoothed), load_external_data=False).graph
    ffn_out = [
        n.name for n in graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name and "attention" not in n.name
    ]
    quantize_dynamic(
        smoothed, target, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=ffn_out, extra_options={"MatMulConstBOnly": True},
    )  # fmt: skip
    smoothed.unlink()


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
