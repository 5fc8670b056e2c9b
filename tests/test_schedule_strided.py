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
from optc.codegen.targets import resolve_target

from .conftest import run_ort, run_qdq_exact, scheduled_script


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
    want = run_qdq_exact(model, {"x": x})[0].astype(np.int64)  # (8-bit weights: see run_qdq_exact)
    assert np.abs(got - want).max() <= 1


def _quantize_to_nhwc(shape: list[int], pad: int, zero_point: int) -> onnx.ModelProto:
    """QuantizeLinear of a float NCHW tensor to uint8, transposed to NHWC and padded spatially with the zero
    point: one fused layout kernel with arithmetic (what a QDQ model's graph input becomes)."""
    n, c, hh, ww = shape
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(np.array(zero_point, np.uint8), "z"),
             nh.from_array(np.array([0, pad, pad, 0, 0, pad, pad, 0], np.int64), "pads"),
             nh.from_array(np.array(zero_point, np.uint8), "pv")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             h.make_node("Transpose", ["q"], ["t"], perm=[0, 2, 3, 1]),
             h.make_node("Pad", ["t", "pads", "pv"], ["y"])]
    g = h.make_graph(nodes, "q", [h.make_tensor_value_info("x", TP.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TP.UINT8, [n, hh + 2 * pad, ww + 2 * pad, c])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("shape,pad", [([1, 3, 64, 64], 1), ([1, 96, 20, 40], 0), ([2, 3, 37, 41], 2),
                                       ([1, 5, 9, 70], 1),
                                       ([1, 2, 62, 62], 1)])  # 64 x 64 x 2: the fill is whole vectors, no tail
def test_quantize_to_nhwc_computes_in_vectors_along_the_source(shape, pad):
    """The quantize runs in vectors along the source's rows (scattered stores); with padding, the pad value is
    a fill of its own first and the interior has no condition (`decompose_padding`)."""
    text = scheduled_script(_quantize_to_nhwc(shape, pad, 120), schedules.Injective())
    assert "T.vectorized" in text and "T.isnan" in text
    assert ("pad_const" in text) == (pad > 0)


@pytest.mark.parametrize("shape,pad,zero_point", [([1, 3, 64, 64], 1, 120), ([1, 96, 20, 40], 0, 0),
                                                  ([2, 3, 37, 41], 2, 255), ([1, 5, 9, 70], 1, 7),
                                                  ([1, 2, 62, 62], 1, 9),
                                                  ([1, 3, 5, 5], 1, 120)])  # rows too short: one at a time
def test_quantize_to_nhwc_matches_onnxruntime(shape, pad, zero_point):
    model = _quantize_to_nhwc(shape, pad, zero_point)
    x = (np.random.default_rng(2).standard_normal(shape) * 8).astype(np.float32)
    x.flat[:7] = [np.nan, np.inf, -np.inf, -0.0, 1e30, -1e30, 0.025]  # (0.025 / 0.05 = 0.5: ties to even)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    nan = np.transpose(np.isnan(x), [0, 2, 3, 1])
    nan = np.pad(nan, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    # NaN: ONNX leaves it undefined; optc takes it as 0.0 (the zero point), onnxruntime casts it to 0
    assert got.dtype == want.dtype and np.array_equal(got[~nan], want[~nan]) and np.all(got[nan] == zero_point)


def _quantize_heads(seq: int, heads: int, dim: int, pad: int, zero_point: int) -> onnx.ModelProto:
    """QuantizeLinear of [seq, heads * dim] split into heads and transposed to [heads, dim, seq] (an attention's
    K^T), the sequence padded to whole vectors with the zero point: the source's contiguous index is
    head * dim + d, linear in d."""
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(np.array(zero_point, np.uint8), "z"),
             nh.from_array(np.array([seq, heads, dim], np.int64), "split"),
             nh.from_array(np.array([0, 0, 0, 0, 0, pad], np.int64), "pads"),
             nh.from_array(np.array(zero_point, np.uint8), "pv")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             h.make_node("Reshape", ["q", "split"], ["r"]),
             h.make_node("Transpose", ["r"], ["t"], perm=[1, 2, 0]),
             h.make_node("Pad", ["t", "pads", "pv"], ["y"])]
    g = h.make_graph(nodes, "kt", [h.make_tensor_value_info("x", TP.FLOAT, [seq, heads * dim])],
                     [h.make_tensor_value_info("y", TP.UINT8, [heads, dim, seq + pad])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("seq,heads,dim,pad", [(197, 3, 64, 11), (50, 4, 32, 14), (64, 2, 48, 0)])
def test_quantized_head_split_transpose_computes_in_vectors_and_matches_onnxruntime(seq, heads, dim, pad):
    """ViT's K^T for its integer attention matmul ([197, 192] -> [3, 64, 208]) ran one element at a time
    (142 us a layer, ten times the float32 transpose; AMD EPYC Zen 5): its source index head * 64 + d was not
    taken for a contiguous axis, and a fill of whole vectors with no tail failed to schedule."""
    model = _quantize_heads(seq, heads, dim, pad, 7)
    text = scheduled_script(model, schedules.Injective())
    interior = text.split('T.sblock("', 2)[-1] if pad else text
    lanes = schedules._vector_lanes(resolve_target("cpu"), 32)  # (float32 computed: 16 lanes, AVX2 8)
    assert f"T.vectorized(T.int64({lanes}))" in text and "T.isnan" in interior
    x = (np.random.default_rng(3).standard_normal((seq, heads * dim)) * 8).astype(np.float32)
    x.flat[:5] = [np.inf, -np.inf, -0.0, 1e30, 0.025]
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.dtype == want.dtype and np.array_equal(got, want)
