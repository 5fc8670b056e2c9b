"""RowReduction reduces a row whose length is a multiple of the vector width into one vector of partial results
(rfactor), then those into one: a scalar sum over a row is one chain of dependent adds (a ViT-like's layer norms
ran at 3x onnxruntime's time). Rows of other lengths keep the scalar loop (a softmax's are written in lane
partials instead: codegen/softmax.py, tests/test_schedule_ragged.py). Values are checked against
onnxruntime (sums in another order: within float32 rounding) and the IEEE cases of a row with NaN / inf."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.softmax import SOFTMAX_LANES
from optc.codegen.targets import resolve_target

from .conftest import scheduled_script


def _model(op: str, width: int) -> onnx.ModelProto:
    rng = np.random.default_rng(width)
    if op == "LayerNormalization":
        node = h.make_node(op, ["x", "g", "b"], ["y"], axis=-1)
        inits = [nh.from_array(rng.standard_normal(width).astype(np.float32), "g"),
                 nh.from_array(rng.standard_normal(width).astype(np.float32), "b")]
    else:
        node, inits = h.make_node(op, ["x"], ["y"], axis=-1), []
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 37, width])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 37, width])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("op", ["LayerNormalization", "Softmax"])
@pytest.mark.parametrize("width", [128, 192, 197])
def test_rows_reduce_in_vector_partials_when_they_divide(op, width):
    text = scheduled_script(_model(op, width), schedules.RowReduction())
    lanes = schedules._vector_lanes(resolve_target("cpu"), 32)
    if width % lanes == 0:
        assert "_rf" in text and f"T.vectorized(T.int64({lanes}))" in text
    else:
        # a row of 197: the scalar loop, as before; a softmax's own 16 lane partials (codegen/softmax.py) are
        # rfactored into vectors where 16 is at least two of them (AVX2: 2 x 8 lanes)
        assert "_rf" not in text or (op == "Softmax" and SOFTMAX_LANES >= 2 * lanes and SOFTMAX_LANES % lanes == 0)


@pytest.mark.parametrize("op", ["LayerNormalization", "Softmax"])
@pytest.mark.parametrize("width", [128, 197])
def test_row_reductions_match_onnxruntime(op, width):
    model = _model(op, width)
    x = (np.random.default_rng(1).standard_normal((3, 37, width)) * 4).astype(np.float32)
    x[0, 0, 5], x[0, 1, 7], x[1, 2, 9] = np.nan, np.inf, -np.inf  # a row with NaN, with +inf, with -inf
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    [want] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    got = optc.compile(model.SerializeToString(), "cpu").run({"x": x})["y"]
    finite = np.isfinite(x).all(axis=-1)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-5, atol=2e-5)
    assert np.isnan(got[0, 0]).all()  # a NaN in a row makes the whole row NaN (sum, max), as onnxruntime
    assert np.array_equal(np.isnan(got[~finite]), np.isnan(want[~finite]))



def _quantized_attention_probabilities(tmp_path, width: int) -> onnx.ModelProto:
    """Softmax(x) @ v quantized by optc (QDQ): the softmax kernel then writes the uint8 probabilities the
    integer matmul reads (an attention's P V; a row of 197 padded to 200 for its dot products)."""
    nodes = [h.make_node("Softmax", ["x"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16, width]),
                                  h.make_tensor_value_info("v", TensorProto.FLOAT, [2, 4, width, 32])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16, 32])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9), tmp_path / "f.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 4, 16, width)).astype(np.float32) * 5,
             v=rng.standard_normal((8, 4, width, 32)).astype(np.float32))
    return optc.to_onnx(optc.quantize(str(tmp_path / "f.onnx"), calibration=str(tmp_path / "c.npz"),
                                      method="minmax"))


@pytest.mark.parametrize("width", [128, 197])
def test_a_quantized_softmax_computes_in_float32_vectors(tmp_path, width):
    """Vectors as wide as the float32 the row is computed in, not as the uint8 it is stored in (64-lane float
    vectors made BERT-like's int8 softmax 2.5x the float32 one, AMD EPYC Zen 5); a padded row's padding is a fill
    of its own (`_split_padding`), so the interior has no per-lane condition. The attention's output against
    onnxruntime's on the same QDQ model: optc's exp is the fast-math one, so a probability may round to the
    neighbouring uint8 value, and onnxruntime sums the dequantized products in float32."""
    from optc.codegen.compile import integer_kernels
    from optc.codegen.kernel_check import fused_kernels
    from optc.ir import from_onnx

    model = _quantized_attention_probabilities(tmp_path, width)
    ir = from_onnx(model)
    integer_kernels(ir, 2)
    [func] = [f for gv, f in fused_kernels(ir, "cpu").functions_items() if "softmax" in gv.name_hint]
    assert str(func.params[-1].ty.dtype) == "uint8"  # the kernel stores the quantized probabilities
    text = schedules.RowReduction().apply(func, resolve_target("cpu"), False).mod["main"].script()
    lanes = schedules._vector_lanes(resolve_target("cpu"), 32)
    assert f"T.vectorized(T.int64({lanes}))" in text and f"T.vectorized(T.int64({4 * lanes}))" not in text
    padded = int(func.params[-1].ty.shape[-1]) > width
    assert padded == (width % 4 != 0) and ("_pad_const" in text) == padded
    assert "T.if_then_else" not in text.split('_pad_const")', 1)[-1]  # the interior has no condition
    rng = np.random.default_rng(2)
    feeds = {"x": (rng.standard_normal((2, 4, 16, width)) * 5).astype(np.float32),
             "v": rng.standard_normal((2, 4, width, 32)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = list(optc.compile(model.SerializeToString(), "cpu").run(feeds).values())
    diff = np.abs(got[0] - want[0])
    assert diff.max() <= 4 / 255 * np.abs(feeds["v"]).max() and np.abs(want[0]).max() > 0.5, diff.max()
