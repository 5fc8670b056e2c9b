"""Layout kernels whose innermost loop is strided on one side (transposes): `Injective` keeps the innermost
loops unfused (codegen/schedules.py `_schedule_strided`) instead of one fused loop that divides and takes a
modulo per axis for every element (a QDQ ResNet-like's input quantize + pad + NHWC transpose: 1187 -> 118 us)."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules

from .conftest import run_ort, scheduled_script


def _transpose(shape: list[int], perm: list[int], dtype=TP.FLOAT) -> onnx.ModelProto:
    out = [shape[p] for p in perm]
    g = h.make_graph([h.make_node("Transpose", ["x"], ["y"], perm=perm)], "t",
                     [h.make_tensor_value_info("x", dtype, shape)], [h.make_tensor_value_info("y", dtype, out)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def test_nchw_to_nhwc_keeps_rows_as_loops():
    text = scheduled_script(_transpose([1, 3, 224, 224], [0, 2, 3, 1]), schedules.Injective())
    assert "T.parallel(T.int64(224))" in text and "T.unroll(T.int64(3))" in text
    assert "//" not in text and "%" not in text  # indices linear in the loops: no division per element


def test_contiguous_transpose_still_vectorizes():
    """[1, 128, 4, 64] -> [1, 4, 128, 64]: the last axis is the last on both sides: the vector path, unchanged."""
    text = scheduled_script(_transpose([1, 128, 4, 64], [0, 2, 1, 3]), schedules.Injective())
    assert "T.vectorized" in text


@pytest.mark.parametrize("shape,perm,dtype", [
    ([1, 3, 37, 41], [0, 2, 3, 1], TP.FLOAT),
    ([2, 5, 7, 3], [3, 1, 0, 2], TP.FLOAT),
    ([4, 128, 64], [0, 2, 1], TP.FLOAT),
    ([3, 200, 17], [2, 1, 0], TP.UINT8),
    ([2, 3, 4, 5, 6], [0, 4, 1, 3, 2], TP.INT64),
    ([1, 1, 9, 1], [3, 2, 0, 1], TP.DOUBLE),
])
def test_transposes_match_onnxruntime(shape, perm, dtype):
    model = _transpose(shape, perm, dtype)
    np_type = {TP.FLOAT: np.float32, TP.UINT8: np.uint8, TP.INT64: np.int64, TP.DOUBLE: np.float64}[dtype]
    x = (np.random.default_rng(0).standard_normal(shape) * 50).astype(np_type)
    if dtype == TP.FLOAT:
        x.flat[:4] = [-0.0, np.nan, np.inf, -np.inf]
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_quantized_stem_input_quantize_pad_transpose_matches_onnxruntime():
    """The kernel that motivated it: QuantizeLinear of a float image (nonzero zero point), padded, to NHWC for
    the convolution (optc's integer path), against onnxruntime's QDQ model within one quantized unit."""
    rng = np.random.default_rng(1)
    w = rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8)
    inits = [nh.from_array(np.array(0.02, np.float32), "xs"), nh.from_array(np.array(120, np.uint8), "xz"),
             nh.from_array(w, "w"), nh.from_array(np.array(0.01, np.float32), "ws"),
             nh.from_array(np.array(0, np.int8), "wz"), nh.from_array(np.array(0.05, np.float32), "ys"),
             nh.from_array(np.array(3, np.uint8), "yz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             h.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             h.make_node("QuantizeLinear", ["c", "ys", "yz"], ["y"])]
    g = h.make_graph(nodes, "stem", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 30, 30])],
                     [h.make_tensor_value_info("y", TP.UINT8, None)], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)
    x = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"].astype(np.int64)
    want = run_ort(model, {"x": x})[0].astype(np.int64)
    assert np.abs(got - want).max() <= 1
