"""int8 with a scale per activation row: the rewritten MatMul computes what its docstring says, and a
row's answer never depends on the other rows of its batch (per-tensor dynamic scales do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile.quantize import gemms_as_matmuls, quantize_int8, quantize_rows


def matmul_graph(weight: np.ndarray, opset: int = 18) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "rows", weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "rows", weight.shape[1]])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/dense/MatMul")
    graph = helper.make_graph([node], "matmul", [x], [y], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The graph's one output for input `x`, on ONNX Runtime's CPU provider."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("opset", [14, 17, 18])  # ReduceMax's axes: an attribute before 18, an input since
def test_rows_are_quantized_alone_and_the_products_follow_the_formula(opset: int) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 48)).astype(np.float32)
    model = matmul_graph(weight, opset)
    quantize_rows(model, exclude=set())
    assert [n.op_type for n in model.graph.node if n.domain == "com.microsoft"] == ["MatMulIntegerToFloat"]

    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    x[1, 2] *= 1000  # one loud row: under a per-tensor scale it would flatten every other row
    ours = run(model, x)

    column = np.abs(weight).max(axis=0) / 127
    integers = np.round(weight / column)
    scale = np.abs(x).max(axis=-1, keepdims=True) / 127
    rows = np.round(x / scale)
    want = (rows @ integers) * column * scale
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.abs(ours - x @ weight).max() < 0.02 * np.abs(x @ weight).max()

    for b in range(3):  # each input alone, at its own length: the same bytes as inside the batch
        np.testing.assert_array_equal(run(model, x[b : b + 1]), ours[b : b + 1])
    np.testing.assert_array_equal(run(model, x[:1, :2]), ours[:1, :2])


def test_excluded_matmuls_stay_float() -> None:
    model = matmul_graph(np.eye(8, dtype=np.float32))
    quantize_rows(model, exclude={"/dense/MatMul"})
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert [i.name for i in model.graph.initializer] == ["w"]


def test_a_gemm_head_becomes_matmul_and_add_then_int8(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(10, 32)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/classifier/Gemm", transB=1)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    model = helper.make_model(
        helper.make_graph([gemm], "head", [x], [y], initializers), opset_imports=[helper.make_opsetid("", 18)]
    )
    inputs = rng.normal(size=(4, 32)).astype(np.float32)
    want = inputs @ weight.T + bias

    as_matmul = onnx.ModelProto()
    as_matmul.CopyFrom(model)
    gemms_as_matmuls(as_matmul)
    assert [n.op_type for n in as_matmul.graph.node] == ["MatMul", "Add"]
    np.testing.assert_allclose(run(as_matmul, inputs), want, rtol=1e-5, atol=1e-5)

    onnx.save(model, tmp_path / "head.onnx")
    assert quantize_int8(tmp_path / "head.onnx", tmp_path / "int8.onnx", [{"x": inputs}]) == 1
    quantized = onnx.load(tmp_path / "int8.onnx")
    assert "MatMulIntegerToFloat" in [n.op_type for n in quantized.graph.node]
    assert np.abs(run(quantized, inputs) - want).max() < 0.02 * np.abs(want).max()


def test_a_graph_with_nothing_to_quantize_writes_nothing(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "relu.onnx")
    assert quantize_int8(tmp_path / "relu.onnx", tmp_path / "int8.onnx", []) == 0
    assert not (tmp_path / "int8.onnx").exists()
