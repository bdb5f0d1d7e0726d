"""Rewrite the attention scaling of an SDPA export into the pattern ONNX Runtime's fusion knows.

torch's scaled-dot-product attention exports `MatMul(Q * s, Kᵀ * s) -> Softmax` (each side
scaled by a constant `s`, `s * s = 1 / sqrt(head_dim)`), with no Div and no mask. ORT's
`FusionAttention` knows `MatMul(Q, Kᵀ) -> Div(sqrt(head_dim)) -> Softmax` and fuses nothing
else: a ViT exported by optimum keeps 12 unfused attention blocks (microsoft/onnxruntime#21208).
Moving the scale after the MatMul is exact in real arithmetic and within float rounding here;
the compiled candidate is validated against PyTorch afterwards like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _constant(graph: Any, name: str, producers: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    for initializer in graph.initializer:
        if initializer.name == name:
            return np.asarray(numpy_helper.to_array(initializer))
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return np.asarray(numpy_helper.to_array(node.attribute[0].t))
    return None


def rewrite_sdpa_scaling(model: Any) -> int:
    """Rewrite, in place, every `Softmax(MatMul(Mul(Q, s), Mul(K, s)))` whose two scales are equal
    scalar constants and whose Muls feed nothing else; the number of blocks rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    rewritten: list[tuple[Any, Any, Any, Any, float]] = []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        matmul = producers.get(softmax.input[0])
        if matmul is None or matmul.op_type != "MatMul" or uses.get(matmul.output[0]) != 1:
            continue
        left, right = producers.get(matmul.input[0]), producers.get(matmul.input[1])
        if left is None or right is None:
            continue
        if not all(m.op_type == "Mul" and uses.get(m.output[0]) == 1 for m in (left, right)):
            continue
        scales = [_constant(graph, m.input[1], producers) for m in (left, right)]
        values = [float(s.item()) for s in scales if s is not None and s.size == 1]
        if len(values) != 2 or not np.isclose(values[0], values[1]):
            continue
        rewritten.append((softmax, matmul, left, right, values[0] * values[1]))
    for softmax, matmul, left, right, scale in rewritten:
        matmul.input[0], matmul.input[1] = left.input[0], right.input[0]
        divisor = f"{matmul.name}/kiln_scale"
        graph.initializer.append(numpy_helper.from_array(np.array(1.0 / scale, dtype=np.float32), divisor))
        scaled = f"{matmul.name}/kiln_scaled"
        div = helper.make_node("Div", [matmul.output[0], divisor], [scaled], name=f"{matmul.name}/kiln_div")
        softmax.input[0] = scaled
        graph.node.remove(left)
        graph.node.remove(right)
        graph.node.insert(list(graph.node).index(matmul) + 1, div)
    return len(rewritten)
