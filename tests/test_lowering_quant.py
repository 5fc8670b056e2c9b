"""Quantization ops (lowering/ops/quant.py) against onnxruntime, bit for bit on integer outputs; the onnx
reference evaluator where onnxruntime lacks the case (per-row / per-channel zero points, the all-zero
DynamicQuantizeLinear scale) or is not exact: onnxruntime's uint8 x int8 kernels on x86 without VNNI add pairs
of products with saturation to int16 (vpmaddubsw), so full-range uint8 x int8 data is checked against the
reference and onnxruntime gets 7-bit weights. Small shapes: every model compiles in a few seconds."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper

from .conftest import run_ort, run_reference


def _model(op: str, inputs: list, outputs: list, opset: int, **attrs) -> onnx.ModelProto:
    """One `op` node; inputs / outputs are (name, elem_type, shape); "" in inputs leaves an optional one out."""
    node = helper.make_node(op, [i[0] if i else "" for i in inputs], [o[0] for o in outputs], **attrs)
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info(*i) for i in inputs if i],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


_COMPILED: dict[bytes, object] = {}


def _optc(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    key = model.SerializeToString()
    if key not in _COMPILED:
        _COMPILED.clear()  # (one model at a time: tests run the same model with several feeds)
        _COMPILED[key] = optc.compile(model)
    module = _COMPILED[key]
    out = module.run(feeds)
    return [out[name] for name in module.output_names]


def _check(model: onnx.ModelProto, feeds: dict, against: str = "ort") -> list[np.ndarray]:
    got = _optc(model, feeds)
    want = run_ort(model, feeds) if against == "ort" else run_reference(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w)  # bit-exact (float outputs too: the same float32 operations)
    return got


_NP = {TP.UINT8: np.uint8, TP.INT8: np.int8, TP.UINT16: np.uint16, TP.INT16: np.int16}


def _types(*types):
    return pytest.mark.parametrize("qtype", types, ids=[TP.DataType.Name(t).lower() for t in types])


# -- QuantizeLinear ------------------------------------------------------------------------------------------

@_types(TP.UINT8, TP.INT8)
def test_quantize_per_tensor_ties_round_half_to_even_and_saturate(qtype):
    # x / 0.5 hits exact .5 ties (0.5, 1.5, 2.5, -0.5, -1.5, -2.5) and values far outside the range
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75, -1.25],
                  [1e6, -1e6, 63.75, -64.25, 3.4e38, -3.4e38]], np.float32)
    zp = np.array(3 if qtype == TP.UINT8 else -3, _NP[qtype])
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [2, 6]), ("s", TP.FLOAT, []), ("z", qtype, [])],
               [("y", qtype, [2, 6])], 13)
    [y] = _check(m, {"x": x, "s": np.array(0.5, np.float32), "z": zp})
    assert (y[0] - zp.astype(np.int32)).tolist() == [0, 2, 2, 0, -2, -2]  # half to even, not away from zero
    lo, hi = np.iinfo(_NP[qtype]).min, np.iinfo(_NP[qtype]).max
    assert y[1, 0] == hi and y[1, 1] == lo and y[1, 4] == hi and y[1, 5] == lo


@_types(TP.INT16, TP.UINT16)
def test_quantize_per_axis_16_bit(qtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 3, 4)) * 3000).astype(np.float32)
    x[0, 0, :2] = [2.5, 3.5]  # ties with scale 1
    scale = np.array([1.0, 0.07, 0.3], np.float32)
    zp = np.array([0, 1000, 40000] if qtype == TP.UINT16 else [0, -7, 20000], _NP[qtype])
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [2, 3, 4]), ("s", TP.FLOAT, [3]), ("z", qtype, [3])],
               [("y", qtype, [2, 3, 4])], 21, axis=1)
    _check(m, {"x": x, "s": scale, "z": zp})


def test_quantize_blocked_with_a_partial_last_block():
    # axis 1 of length 5 in blocks of 2: 3 scales per row, the last block holds one element
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75], [1000, -1000, 2.0, 3.0, 0.3]], np.float32)
    scale = np.array([[0.5, 0.25, 0.1], [2.0, 0.5, 0.2]], np.float32)
    zp = np.array([[10, 20, 30], [128, 0, 255]], np.uint8)
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [2, 5]), ("s", TP.FLOAT, [2, 3]), ("z", TP.UINT8, [2, 3])],
               [("y", TP.UINT8, [2, 5])], 21, axis=1, block_size=2)
    _check(m, {"x": x, "s": scale, "z": zp})


def test_quantize_blocked_symmetric_output_dtype_int16():
    x = np.array([[6, -8, -10, 5], [1, 8, 4, 5], [0, 20, 10, 4]], np.float32)
    scale = np.array([[1.5, 2.5], [3, 4.9], [5.1, 6.9]], np.float32)
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [3, 4]), ("s", TP.FLOAT, [3, 2])], [("y", TP.INT16, [3, 4])], 21,
               axis=1, block_size=2, output_dtype=TP.INT16)
    _check(m, {"x": x, "s": scale})


def test_quantize_float16_divides_in_float16():
    x = np.array([0.25, 0.75, 1.25, 3.3, -7.0, 1000.0, 0.1], np.float16)
    m = _model("QuantizeLinear", [("x", TP.FLOAT16, [7]), ("s", TP.FLOAT16, []), ("z", TP.INT8, [])],
               [("y", TP.INT8, [7])], 21)
    _check(m, {"x": x, "s": np.array(0.5, np.float16), "z": np.array(1, np.int8)})


def test_bfloat16_division_and_output_are_rounded_to_bfloat16():
    """precision=BFLOAT16: x and the quotient rounded to bfloat16 before rint; DequantizeLinear to bfloat16 rounds
    its float32 product once (TVM alone would keep float32 values through a bfloat16 -> float Cast)."""
    import ml_dtypes
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.0371, np.float32).astype(ml_dtypes.bfloat16), "s"),
             numpy_helper.from_array(np.array(3, np.int16), "z"),
             numpy_helper.from_array(np.array(0.0123457, np.float32), "s2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], precision=TP.BFLOAT16),
             helper.make_node("DequantizeLinear", ["q", "s2"], ["d"], output_dtype=TP.BFLOAT16),
             helper.make_node("Cast", ["d"], ["y"], to=TP.FLOAT)]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TP.FLOAT, [512])],
                              [helper.make_tensor_value_info("q", TP.INT16, [512]),
                               helper.make_tensor_value_info("y", TP.FLOAT, [512])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    x = (np.random.default_rng(8).standard_normal(512) * 300).astype(np.float32)
    q, y = _check(m, {"x": x}, against="reference")
    assert not np.array_equal(q, np.rint(x / np.float32(0.0371)) + 3)  # float32 division would differ here


def test_quantize_without_zero_point_is_uint8():
    x = np.array([-1.0, 0.5, 1.5, 2.5, 300.0], np.float32)
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [5]), ("s", TP.FLOAT, [])], [("y", TP.UINT8, [5])], 13)
    [y] = _check(m, {"x": x, "s": np.array(1.0, np.float32)})
    assert y.tolist() == [0, 0, 2, 2, 255]


# -- DequantizeLinear ----------------------------------------------------------------------------------------

@_types(TP.UINT8, TP.INT8, TP.INT16)
def test_dequantize_per_axis(qtype):
    info = np.iinfo(_NP[qtype])
    x = np.linspace(info.min, info.max, 24).astype(_NP[qtype]).reshape(2, 3, 4)
    scale = np.array([0.1, 0.02, 3.0], np.float32)
    zp = np.array([info.min, 0, info.max], _NP[qtype])
    m = _model("DequantizeLinear", [("x", qtype, [2, 3, 4]), ("s", TP.FLOAT, [3]), ("z", qtype, [3])],
               [("y", TP.FLOAT, [2, 3, 4])], 21, axis=1)
    _check(m, {"x": x, "s": scale, "z": zp})


def test_dequantize_blocked_int8():
    x = np.arange(-10, 10, dtype=np.int8).reshape(4, 5)
    scale = np.array([[0.5, 0.25, 2.0]] * 4, np.float32)
    zp = np.array([[1, -2, 3]] * 4, np.int8)
    m = _model("DequantizeLinear", [("x", TP.INT8, [4, 5]), ("s", TP.FLOAT, [4, 3]), ("z", TP.INT8, [4, 3])],
               [("y", TP.FLOAT, [4, 5])], 21, axis=1, block_size=2)
    _check(m, {"x": x, "s": scale, "z": zp})


def test_dequantize_int32_and_float16_scale():
    x32 = np.array([0, 123456789, -5, 2**31 - 1], np.int32)
    m = _model("DequantizeLinear", [("x", TP.INT32, [4]), ("s", TP.FLOAT, [])], [("y", TP.FLOAT, [4])], 13)
    _check(m, {"x": x32, "s": np.array(0.1, np.float32)})
    x16 = np.array([0, 1000, 32767, -32768, 5], np.int16)
    m = _model("DequantizeLinear", [("x", TP.INT16, [5]), ("s", TP.FLOAT16, []), ("z", TP.INT16, [])],
               [("y", TP.FLOAT16, [5])], 21)
    _check(m, {"x": x16, "s": np.array(0.1, np.float16), "z": np.array(-3, np.int16)})


# -- DynamicQuantizeLinear -----------------------------------------------------------------------------------

_DQL_OUTS = [("y", TP.UINT8, [3, 4]), ("y_scale", TP.FLOAT, []), ("y_zero_point", TP.UINT8, [])]


def test_dynamic_quantize_linear():
    m = _model("DynamicQuantizeLinear", [("x", TP.FLOAT, [3, 4])], _DQL_OUTS, 11)
    module = optc.compile(m)
    rng = np.random.default_rng(0)
    for x in [rng.standard_normal((3, 4)).astype(np.float32) * 4,
              np.abs(rng.standard_normal((3, 4))).astype(np.float32),   # min(x) > 0: min adjusted to 0
              -np.abs(rng.standard_normal((3, 4))).astype(np.float32)]:  # max(x) < 0: max adjusted to 0
        got = [module.run({"x": x})[k] for k in ("y", "y_scale", "y_zero_point")]
        for g, w in zip(got, run_ort(m, {"x": x}), strict=True):
            np.testing.assert_array_equal(g, w)
    # all zeros: max == min. The reference evaluator's scale is 1/255 (onnxruntime returns 1.0; the spec's formula
    # divides by zero); y and the zero point are 0 in all of them.
    zeros = np.zeros((3, 4), np.float32)
    got = [module.run({"x": zeros})[k] for k in ("y", "y_scale", "y_zero_point")]
    want = run_reference(m, {"x": zeros})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert not got[0].any() and got[2] == 0


def test_dynamic_quantize_linear_function_body_on_zeros():
    """The `_expanded` form (the op's ONNX function body): once a SIGFPE inside TVM's ConvertLayout (the frontend
    lowered its Min/Max of 0-d tensors to broadcast_to + stack); on an all-zero input its scale is 0 and the zero
    point 0 / 0."""
    body = onnx.defs.get_schema("DynamicQuantizeLinear").function_body
    graph = helper.make_graph(list(body.node), "dql_expanded", [helper.make_tensor_value_info("x", TP.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info(*o) for o in _DQL_OUTS])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10)
    module = optc.compile(m)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    got = [module.run({"x": x})[k] for k in ("y", "y_scale", "y_zero_point")]
    for g, w in zip(got, run_ort(m, {"x": x}), strict=True):
        np.testing.assert_array_equal(g, w)
    y, scale, _zp = (module.run({"x": np.zeros((3, 4), np.float32)})[k] for k in ("y", "y_scale", "y_zero_point"))
    assert scale == 0 and not y.any()


# -- MatMulInteger / QLinearMatMul ---------------------------------------------------------------------------

def test_matmul_integer_u8_s8_per_column_b_zero_point_batched():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 3, 5), dtype=np.uint8)
    b = rng.integers(-128, 128, (5, 4), dtype=np.int8)
    m = _model("MatMulInteger", [("a", TP.UINT8, [2, 3, 5]), ("b", TP.INT8, [5, 4]), ("az", TP.UINT8, []),
                                 ("bz", TP.INT8, [4])], [("y", TP.INT32, [2, 3, 4])], 10)
    feeds = {"a": a, "b": b, "az": np.array(131, np.uint8), "bz": np.array([1, -128, 127, 0], np.int8)}
    _check(m, feeds, against="reference")
    _check(m, dict(feeds, b=b // 2), against="ort")


def test_matmul_integer_per_row_a_zero_point_and_k_of_one():
    # per-row a_zero_point ([M]): onnxruntime refuses it; the reference evaluator broadcasts it like numpy (per
    # column), so the expected values are computed here
    a = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    b = (np.arange(12, dtype=np.int8).reshape(3, 4) * 10 - 60).astype(np.int8)
    az = np.array([3, 200], np.uint8)
    m = _model("MatMulInteger", [("a", TP.UINT8, [2, 3]), ("b", TP.INT8, [3, 4]), ("az", TP.UINT8, [2])],
               [("y", TP.INT32, [2, 4])], 10)
    [y] = _optc(m, {"a": a, "b": b, "az": az})
    np.testing.assert_array_equal(y, (a.astype(np.int32) - az[:, None]) @ b.astype(np.int32))
    # K = 1 (a reduction of one term)
    m = _model("MatMulInteger", [("a", TP.INT8, [3, 1]), ("b", TP.INT8, [1, 2])], [("y", TP.INT32, [3, 2])], 10)
    _check(m, {"a": np.array([[-128], [5], [127]], np.int8), "b": np.array([[-128, 3]], np.int8)})


@_types(TP.UINT8, TP.INT8)
def test_qlinear_matmul_per_column_weight_scale(qtype):
    rng = np.random.default_rng(4)
    info = np.iinfo(_NP[qtype])
    a = rng.integers(info.min, info.max + 1, (3, 6), dtype=_NP[qtype])
    b = rng.integers(-128, 128, (6, 4), dtype=np.int8)
    feeds = {"a": a, "as": np.array(0.02, np.float32), "az": np.array(5, _NP[qtype]), "b": b,
             "bs": np.array([0.01, 0.003, 0.05, 0.02], np.float32), "bz": np.zeros(4, np.int8),
             "ys": np.array(0.07, np.float32), "yz": np.array(info.min + 100, _NP[qtype])}
    m = _model("QLinearMatMul", [("a", qtype, [3, 6]), ("as", TP.FLOAT, []), ("az", qtype, []), ("b", TP.INT8, [6, 4]),
                                 ("bs", TP.FLOAT, [4]), ("bz", TP.INT8, [4]), ("ys", TP.FLOAT, []), ("yz", qtype, [])],
               [("y", qtype, [3, 4])], 10)
    _check(m, feeds, against="reference")
    _check(m, dict(feeds, b=b // 2), against="ort")


def test_qlinear_matmul_ties_and_saturation():
    # multiplier a_scale * b_scale / y_scale = 0.5: odd accumulators land exactly on .5
    a = np.array([[1, 3, 5, 7, 200, 255]], np.uint8).T  # [6, 1] x [1, 1]: also a reduction of one term
    m = _model("QLinearMatMul", [("a", TP.UINT8, [6, 1]), ("as", TP.FLOAT, []), ("az", TP.UINT8, []),
                                 ("b", TP.UINT8, [1, 1]), ("bs", TP.FLOAT, []), ("bz", TP.UINT8, []),
                                 ("ys", TP.FLOAT, []), ("yz", TP.UINT8, [])], [("y", TP.UINT8, [6, 1])], 10)
    feeds = {"a": a, "as": np.array(0.5, np.float32), "az": np.array(0, np.uint8), "b": np.array([[3]], np.uint8),
             "bs": np.array(1.0, np.float32), "bz": np.array(2, np.uint8), "ys": np.array(1.0, np.float32),
             "yz": np.array(0, np.uint8)}
    [y] = _check(m, feeds)
    assert y.ravel().tolist() == [0, 2, 2, 4, 100, 128]  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4


# -- ConvInteger / QLinearConv -------------------------------------------------------------------------------

_CONV_CASES = {
    "pads_strides": dict(pads=[1, 0, 2, 1], strides=[2, 1]),
    "dilations_group": dict(dilations=[2, 1], group=2),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID"),
}


@pytest.mark.parametrize("case", sorted(_CONV_CASES))
def test_conv_integer_2d(case):
    attrs = _CONV_CASES[case]
    group = attrs.get("group", 1)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (1, 4, 6, 5), dtype=np.uint8)
    w = rng.integers(-128, 128, (4, 4 // group, 3, 2), dtype=np.int8)
    m = _model("ConvInteger", [("x", TP.UINT8, [1, 4, 6, 5]), ("w", TP.INT8, list(w.shape)), ("xz", TP.UINT8, []),
                               ("wz", TP.INT8, [])], [("y", TP.INT32, None)], 10, **attrs)
    feeds = {"x": x, "w": w, "xz": np.array(128, np.uint8), "wz": np.array(-3, np.int8)}
    _check(m, feeds, against="reference")
    _check(m, dict(feeds, w=w // 2), against="ort")


def test_conv_integer_1d_3d_and_per_channel_weight_zero_point():
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (2, 3, 7), dtype=np.int8)
    w = rng.integers(-128, 128, (2, 3, 3), dtype=np.int8)
    m = _model("ConvInteger", [("x", TP.INT8, [2, 3, 7]), ("w", TP.INT8, [2, 3, 3])], [("y", TP.INT32, None)], 10,
               pads=[1, 2], strides=[2])
    _check(m, {"x": x, "w": w})
    x3 = rng.integers(0, 256, (1, 2, 3, 4, 4), dtype=np.uint8)
    w3 = rng.integers(0, 256, (3, 2, 2, 2, 2), dtype=np.uint8)
    m = _model("ConvInteger", [("x", TP.UINT8, [1, 2, 3, 4, 4]), ("w", TP.UINT8, [3, 2, 2, 2, 2]),
                               ("xz", TP.UINT8, []), ("wz", TP.UINT8, [])], [("y", TP.INT32, None)], 10, pads=[0, 1, 0, 1, 0, 1])
    _check(m, {"x": x3, "w": w3, "xz": np.array(7, np.uint8), "wz": np.array(200, np.uint8)})
    # per output channel w_zero_point: onnxruntime says "Non per-tensor quantization is not supported now"
    x2 = rng.integers(0, 256, (1, 2, 4, 4), dtype=np.uint8)
    w2 = rng.integers(0, 256, (3, 2, 2, 2), dtype=np.uint8)
    m = _model("ConvInteger", [("x", TP.UINT8, [1, 2, 4, 4]), ("w", TP.UINT8, [3, 2, 2, 2]), ("xz", TP.UINT8, []),
                               ("wz", TP.UINT8, [3])], [("y", TP.INT32, None)], 10)
    feeds = {"x": x2, "w": w2, "xz": np.array(7, np.uint8), "wz": np.array([0, 128, 255], np.uint8)}
    _check(m, feeds, against="reference")


@_types(TP.UINT8, TP.INT8)
def test_qlinear_conv_per_channel_with_bias(qtype):
    rng = np.random.default_rng(7)
    info = np.iinfo(_NP[qtype])
    x = rng.integers(info.min, info.max + 1, (1, 4, 5, 5), dtype=_NP[qtype])
    w = rng.integers(-128, 128, (6, 2, 3, 3), dtype=np.int8)
    feeds = {"x": x, "xs": np.array(0.05, np.float32), "xz": np.array(info.min + 9, _NP[qtype]), "w": w,
             "ws": np.linspace(0.001, 0.02, 6).astype(np.float32), "wz": np.zeros(6, np.int8),
             "ys": np.array(0.9, np.float32), "yz": np.array(info.min + 120, _NP[qtype]),
             "B": rng.integers(-2000, 2000, 6, dtype=np.int32)}
    m = _model("QLinearConv", [("x", qtype, [1, 4, 5, 5]), ("xs", TP.FLOAT, []), ("xz", qtype, []),
                               ("w", TP.INT8, [6, 2, 3, 3]), ("ws", TP.FLOAT, [6]), ("wz", TP.INT8, [6]),
                               ("ys", TP.FLOAT, []), ("yz", qtype, []), ("B", TP.INT32, [6])],
               [("y", qtype, None)], 10, group=2, pads=[1, 1, 1, 1], strides=[1, 2])
    _check(m, feeds, against="reference")
    _check(m, dict(feeds, w=w // 2), against="ort")


def test_qlinear_conv_ties_saturation_and_a_reduction_of_one():
    # 1x1 kernel over one channel: the accumulator is x * w; multiplier 0.25 * 2 / 1 = 0.5 puts odd x on .5
    x = np.array([[[[1, 3, 5, 7], [9, 11, 0, 255]]]], np.uint8)
    m = _model("QLinearConv", [("x", TP.UINT8, [1, 1, 2, 4]), ("xs", TP.FLOAT, []), ("xz", TP.UINT8, []),
                               ("w", TP.UINT8, [1, 1, 1, 1]), ("ws", TP.FLOAT, []), ("wz", TP.UINT8, []),
                               ("ys", TP.FLOAT, []), ("yz", TP.UINT8, [])], [("y", TP.UINT8, [1, 1, 2, 4])], 10)
    feeds = {"x": x, "xs": np.array(0.25, np.float32), "xz": np.array(0, np.uint8), "w": np.array([[[[3]]]], np.uint8),
             "ws": np.array(2.0, np.float32), "wz": np.array(2, np.uint8), "ys": np.array(1.0, np.float32),
             "yz": np.array(200, np.uint8)}
    [y] = _check(m, feeds)
    assert y.ravel().tolist() == [200, 202, 202, 204, 204, 206, 200, 255]


# -- refusals ------------------------------------------------------------------------------------------------

def test_sub_byte_and_float8_types_are_refused_with_a_reason():
    m = _model("QuantizeLinear", [("x", TP.FLOAT, [4]), ("s", TP.FLOAT, [])], [("y", TP.INT4, [4])], 21,
               output_dtype=TP.INT4)
    with pytest.raises(optc.UnsupportedError, match="QuantizeLinear.*int4.*sub-byte"):
        optc.compile(m)
    m = _model("DequantizeLinear", [("x", TP.FLOAT8E4M3FN, [4]), ("s", TP.FLOAT, [])], [("y", TP.FLOAT, [4])], 21)
    with pytest.raises(optc.UnsupportedError, match="DequantizeLinear of float8_e4m3fn.*float8"):
        optc.compile(m)


def test_quantize_linear_nan_and_infinities_in_a_long_qdq_chain():
    """NaN quantizes to the zero point (optc's choice: ONNX leaves it undefined), +-inf saturate; through 40
    QuantizeLinear -> DequantizeLinear -> Add links, which once took TVM's simplifier more than 20 minutes (each
    NaN select read its input twice, doubling the inlined expression per link; it is now a kernel of its own)."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(17, np.uint8), "z"),
             numpy_helper.from_array(np.array(0.25, np.float32), "c")]
    nodes, prev = [], "x"
    for i in range(40):
        nodes += [helper.make_node("QuantizeLinear", [prev, "s", "z"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"]),
                  helper.make_node("Add", [f"d{i}", "c"], [f"a{i}"])]
        prev = f"a{i}"
    nodes.append(helper.make_node("QuantizeLinear", [prev, "s", "z"], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TP.FLOAT, [6])],
                              [helper.make_tensor_value_info("y", TP.UINT8, [6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model)
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0, -1e30], np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    # first link: NaN -> 17 (zero point), inf -> 255, -inf -> 0; every later link adds 0.25 = 5 steps of 0.05
    q0 = np.array([17, 255, 0, 17, 37, 0], np.int64)
    want = q0.copy()
    for _ in range(40):
        want = np.clip(want + 5, 0, 255)
    assert got.tolist() == want.tolist()
