"""Rows of a length with no vector divisor (ViT's 197 tokens): the zero-padding copy pad_einsum adds for a batched
matmul copies whole rows (its source indexed without a division and a modulo per element: ViT's [3, 197, 197] ->
[3, 200, 197] copy took longer than the matmul it padded), and elementwise row loops vectorize all whole vectors
with a scalar tail (loop_partition). Values against onnxruntime at odd sizes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from optc.codegen import schedules
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx


def _matmul(a: list[int], b: list[int]) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("MatMul", ["a", "b"], ["y"])], "g",
                     [h.make_tensor_value_info("a", TensorProto.FLOAT, a),
                      h.make_tensor_value_info("b", TensorProto.FLOAT, b)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _only_kernel(model: onnx.ModelProto):
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if gv.name_hint != "main"]
    return func


def _onnxruntime(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_the_padding_copy_of_a_ragged_batched_matmul_copies_whole_rows():
    sch = schedules.TiledReduction().apply(_only_kernel(_matmul([1, 3, 197, 197], [1, 3, 197, 64])),
                                           resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    pad = text[text.index('T.sblock("a_pad")'):]  # the activation's zero-padding copy
    pad = pad[:pad.index("T.reads")]
    assert "T.where" not in pad, pad  # no flattened loop with a predicate
    columns = re.search(r"T\.axis\.spatial\(T\.int64\(197\), ([^)]*)\)", pad).group(1)
    assert "%" not in columns and "//" not in columns, pad  # the row index is a loop, not a division


@pytest.mark.parametrize(("a", "b"), [
    ([1, 3, 197, 64], [1, 3, 64, 197]), ([1, 3, 197, 197], [1, 3, 197, 64]), ([2, 13, 33], [2, 33, 45]),
    ([5, 37, 19], [19, 29]),
])
def test_ragged_matmuls_match_onnxruntime(a, b):
    model = _matmul(a, b)
    rng = np.random.default_rng(len(a) + a[-1])
    feeds = {"a": rng.standard_normal(a).astype(np.float32), "b": rng.standard_normal(b).astype(np.float32)}
    feeds["a"].flat[::97] = -0.0
    got = optc.compile(from_onnx(model)).run(feeds)["y"]
    np.testing.assert_allclose(got, _onnxruntime(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_an_elementwise_row_of_197_vectorizes_its_whole_vectors():
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 37, 197])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 37, 197])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    sch = schedules.RowReduction().apply(_only_kernel(model), resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    lanes = schedules._vector_lanes(resolve_target("cpu"), 32)
    norm = text[text.rindex("T.vectorized", 0, text.index('T.sblock("T_softmax_norm')) - 40:]
    assert f"T.vectorized(T.int64({lanes}))" in norm, text
