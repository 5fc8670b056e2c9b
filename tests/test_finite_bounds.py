"""lowering/finite.py: bounds on |x| read from the graph, and QuantizeLinear lowered without its NaN select where
its input is provably finite (the select was a kernel ConvertLayout could not move: an NHWC QDQ model went back to
NCHW around every such QuantizeLinear). Bounds are checked against worst cases; compiled QDQ blocks against
onnxruntime, bit for bit."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen.build import fuse, prepare
from optc.codegen.compile import integer_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx
from optc.lowering import lower
from optc.lowering.finite import finite_quotient, magnitude_bound
from optc.rewrites import optimize

from .conftest import run_ort


def _graph(nodes, inputs, inits, opset: int = 19) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def _value(model: onnx.ModelProto, name: str = "y"):
    m = from_onnx(onnx.shape_inference.infer_shapes(model))
    return next(o for n in m.graph for o in n.outputs if o is not None and o.name == name)


_Q = [h.make_tensor_value_info("q", TP.INT8, [4, 8])]
_SCALE = [nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(3, np.int8), "z")]


def test_dequantized_values_are_bounded_by_the_span_times_the_scale():
    model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], _Q, _SCALE)
    assert magnitude_bound(_value(model)) == pytest.approx(255 * 0.1)


@pytest.mark.parametrize(("op", "expected"), [
    ("Add", 2 * 25.5), ("Sub", 2 * 25.5), ("Mul", 25.5 ** 2), ("Max", 25.5), ("Concat", 25.5),
])
def test_binary_ops_combine_bounds(op, expected):
    attrs = {"axis": 0} if op == "Concat" else {}
    model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
                    h.make_node("DequantizeLinear", ["q", "s", "z"], ["b"]),
                    h.make_node(op, ["a", "b"], ["y"], **attrs)], _Q, _SCALE)
    assert magnitude_bound(_value(model)) == pytest.approx(expected)


def test_matmul_softmax_and_layer_norm_bounds():
    w = nh.from_array(np.full((8, 5), -2.0, np.float32), "w")
    gamma, beta = nh.from_array(np.full(5, 3.0, np.float32), "g"), nh.from_array(np.full(5, -0.5, np.float32), "b")
    model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
                    h.make_node("MatMul", ["a", "w"], ["m"]),
                    h.make_node("Softmax", ["m"], ["p"], axis=-1),
                    h.make_node("LayerNormalization", ["m", "g", "b"], ["y"], axis=-1)],
                   _Q, [*_SCALE, w, gamma, beta])
    m = from_onnx(onnx.shape_inference.infer_shapes(model))
    values = {o.name: o for n in m.graph for o in n.outputs if o is not None}
    assert magnitude_bound(values["m"]) == pytest.approx(8 * 25.5 * 2.0)
    assert magnitude_bound(values["p"]) == 1.0
    assert magnitude_bound(values["y"]) == pytest.approx(math.sqrt(5) * 3.0 + 0.5)


@pytest.mark.parametrize("case", ["graph input", "division by a variable", "huge scale", "unknown op",
                                  "statistics output"])
def test_no_bound_where_none_is_proven(case):
    x = h.make_tensor_value_info("x", TP.FLOAT, [4, 8])
    dq = h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"])
    if case == "graph input":
        model, name = _graph([h.make_node("Relu", ["x"], ["y"])], [x], []), "y"
    elif case == "division by a variable":
        model, name = _graph([dq, h.make_node("Div", ["a", "x"], ["y"])], [*_Q, x], _SCALE), "y"
    elif case == "huge scale":
        big = [nh.from_array(np.array(1e37, np.float32), "s"), _SCALE[1]]
        model, name = _graph([dq, h.make_node("Mul", ["a", "a"], ["y"])], _Q, big), "y"
    elif case == "unknown op":
        model, name = _graph([dq, h.make_node("Exp", ["a"], ["y"])], _Q, _SCALE), "y"
    else:
        g = nh.from_array(np.ones(8, np.float32), "g")
        model = _graph([dq, h.make_node("LayerNormalization", ["a", "g"], ["y", "mean", "inv"], axis=-1)], _Q,
                       [*_SCALE, g])
        name = "inv"  # 1 / sqrt(var + eps): not bounded by the data
    assert magnitude_bound(_value(model, name)) is None


def test_a_zero_scale_is_no_finite_quotient():
    zero = [nh.from_array(np.array(0.0, np.float32), "s0")]
    model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], _Q, [*_SCALE, *zero])
    m = from_onnx(onnx.shape_inference.infer_shapes(model))
    y = next(o for n in m.graph for o in n.outputs if o is not None and o.name == "y")
    assert finite_quotient(y, m.graph.initializers["s"])
    assert not finite_quotient(y, m.graph.initializers["s0"])


def _residual_block(image: int = 6) -> onnx.ModelProto:
    """NCHW QDQ residual block as quantizers write it: Conv -> Q/DQ -> Add(residual) -> Q -> DQ -> Conv."""
    rng = np.random.default_rng(0)
    c = 16
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(np.array(128, np.uint8), "z"),
             nh.from_array(np.array(0.01, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
             # 7-bit weights: onnxruntime's u8 x s8 kernel without VNNI saturates int16 pairs of wider ones
             nh.from_array(rng.integers(-64, 65, (c, c, 3, 3)).astype(np.int8), "w1"),
             nh.from_array(rng.integers(-64, 65, (c, c, 3, 3)).astype(np.int8), "w2")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             h.make_node("DequantizeLinear", ["w1", "ws", "wz"], ["w1d"]),
             h.make_node("Conv", ["xd", "w1d"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c1", "s", "z"], ["c1q"]),
             h.make_node("DequantizeLinear", ["c1q", "s", "z"], ["c1d"]),
             h.make_node("Add", ["c1d", "xd"], ["sum"]),
             h.make_node("QuantizeLinear", ["sum", "s", "z"], ["rq"]),
             h.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
             h.make_node("DequantizeLinear", ["w2", "ws", "wz"], ["w2d"]),
             h.make_node("Conv", ["rd", "w2d"], ["y"], pads=[1, 1, 1, 1])]
    g = h.make_graph(nodes, "block", [h.make_tensor_value_info("x", TP.FLOAT, [1, c, image, image])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def _called_kernels(model: onnx.ModelProto) -> list[str]:
    """The kernels the fused module's main calls, in order (as `build` sees them: integer ops, NHWC layout)."""
    m = optimize(from_onnx(model), level=2)
    integer_kernels(m, 2)
    target = resolve_target("cpu")
    return re.findall(r"R\.call_tir\((\w+),", fuse(prepare(lower(m), None, target), target)["main"].script())


def test_a_qdq_residual_block_keeps_one_nan_select_and_its_layout():
    """Only the graph input's QuantizeLinear may meet a NaN: one select, fused with that quantize's division (a
    graph input's select is an ordinary elementwise op, no `nan_to_zero` kernel of its own), and the residual
    Add's QuantizeLinear fuses into the integer conv kernel in NHWC (before: a second select, its own kernel, one
    more transpose)."""
    called = _called_kernels(_residual_block())
    assert sum("isnan" in c or "nan_to_zero" in c for c in called) == 1, called
    assert not any("nan_to_zero" in c for c in called), called
    assert sum("transpose" in c for c in called) <= 4, called


def test_a_qdq_residual_block_equals_onnxruntime_and_the_select_everywhere_build(monkeypatch):
    model = _residual_block()
    x = (np.random.default_rng(1).standard_normal((1, 16, 6, 6)) * 4).astype(np.float32)
    x[0, 0, 0, :2] = [np.inf, -np.inf]  # (saturate; NaN is left out: ONNX leaves it undefined, runtimes differ)
    got = optc.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4)  # (float epilogue rounding)
    import optc.lowering.ops.quant as quant

    monkeypatch.setattr(quant, "finite_quotient", lambda x, scale: False)
    np.testing.assert_array_equal(got, optc.compile(model).run({"x": x})["y"])


_F32_MIN = float(np.finfo(np.float32).min)


def _mask_model(mask_value: float, then: str = "Softmax") -> onnx.ModelProto:
    """Scores a = DQ(q) plus an additive mask holding `mask_value` (attention's causal fill), then `then`."""
    mask = np.zeros((4, 8), np.float32)
    mask[:, 4:] = mask_value
    return _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]), h.make_node("Add", ["a", "m"], ["sum"]),
                   h.make_node(then, ["sum"], ["y"], **({"axis": -1} if then == "Softmax" else {}))],
                  _Q, [*_SCALE, nh.from_array(mask, "m")])


def test_a_softmax_of_scores_masked_with_the_float_minimum_is_bounded():
    """Scores + float32's minimum are finite (the sum rounds to the minimum), so the softmax holds no NaN (its row
    maximum is finite and exp(0) = 1 is in every sum): bound 1, and the masked sum's quantization needs no NaN
    select. A Llama-style QDQ export had 26 NaN selects, 9 after this and the RMS norm bounds."""
    assert magnitude_bound(_value(_mask_model(_F32_MIN))) == 1.0
    assert magnitude_bound(_value(_mask_model(_F32_MIN), "sum")) is None  # (not for sums: only finite)
    m = from_onnx(onnx.shape_inference.infer_shapes(_mask_model(_F32_MIN)))
    total = next(o for n in m.graph for o in n.outputs if o is not None and o.name == "sum")
    assert finite_quotient(total, m.graph.initializers["s"])


@pytest.mark.parametrize("case", ["infinite mask", "averaged", "exponent 0.5", "sqrt of a signed value",
                                  "rms without eps", "dequantized floor 0"])
def test_no_finite_claim_where_a_nan_or_infinity_can_happen(case):
    """-inf in the mask; a mean of values near float32's largest (its float sum overflows); a fractional power and
    the square root of a value that can be negative (NaN); x / sqrt(mean(x^2)) with no epsilon and a division by a
    dequantized uint8 with zero point 0 (0 / 0)."""
    x = h.make_tensor_value_info("x", TP.FLOAT, [4, 8])
    dq = h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"])
    if case == "infinite mask":
        model = _mask_model(-np.inf)
    elif case == "averaged":
        model = _mask_model(_F32_MIN, then="ReduceMean")
        model = _graph([*model.graph.node, h.make_node("Softmax", ["y"], ["y2"])], _Q, list(model.graph.initializer))
        assert magnitude_bound(_value(model, "y2")) is None
        return
    elif case == "exponent 0.5":
        half = nh.from_array(np.array(0.5, np.float32), "p")
        model = _graph([dq, h.make_node("Pow", ["a", "p"], ["y"])], _Q, [*_SCALE, half])
    elif case == "sqrt of a signed value":
        model = _graph([dq, h.make_node("Sqrt", ["a"], ["y"])], _Q, _SCALE)
    elif case == "rms without eps":
        two = nh.from_array(np.array(2.0, np.float32), "two")
        model = _graph([dq, h.make_node("Pow", ["a", "two"], ["sq"]),
                        h.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
                        h.make_node("Sqrt", ["ms"], ["rms"]), h.make_node("Div", ["a", "rms"], ["y"])],
                       _Q, [*_SCALE, two], opset=17)
        assert magnitude_bound(_value(model, "rms")) is not None  # (the denominator itself is bounded)
    else:
        uq = h.make_tensor_value_info("u", TP.UINT8, [4, 1])
        model = _graph([dq, h.make_node("DequantizeLinear", ["u", "s", "uz"], ["d"]),
                        h.make_node("Div", ["a", "d"], ["y"])], [*_Q, uq],
                       [*_SCALE, nh.from_array(np.array(0, np.uint8), "uz")])
    del x
    assert magnitude_bound(_value(model)) is None


def test_an_rms_norm_of_dequantized_values_is_bounded():
    """x / sqrt(mean(x^2) + eps) (TorchScript's RMSNorm: Pow, ReduceMean, Add, Sqrt, Div(1, .), Mul): at most
    |x| / sqrt(eps); the Reciprocal form too."""
    two, eps, one = (nh.from_array(np.array(v, np.float32), n) for v, n in ((2.0, "two"), (1e-6, "eps"), (1.0, "one")))
    for inverse in (h.make_node("Div", ["one", "rms"], ["inv"]), h.make_node("Reciprocal", ["rms"], ["inv"])):
        model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
                        h.make_node("Pow", ["a", "two"], ["sq"]),
                        h.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
                        h.make_node("Add", ["ms", "eps"], ["v"]), h.make_node("Sqrt", ["v"], ["rms"]), inverse,
                        h.make_node("Mul", ["a", "inv"], ["y"])], _Q, [*_SCALE, two, eps, one], opset=17)
        assert magnitude_bound(_value(model)) == pytest.approx(25.5 / math.sqrt(1e-6), rel=1e-6)


def test_a_qdq_attention_softmax_with_a_float_minimum_mask_equals_onnxruntime():
    """Q(Softmax(DQ(scores) + mask)) with float32's minimum in the mask, a fully masked row included: compiled
    without a NaN select for the softmax's quantization, bit for bit onnxruntime's."""
    rows, cols = 4, 16
    mask = np.triu(np.full((rows, cols), _F32_MIN, np.float32), 1)
    mask[3, :] = _F32_MIN  # a fully masked row: every score is the minimum (plus a small dequantized value)
    model = _graph([h.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]), h.make_node("Add", ["a", "m"], ["sum"]),
                    h.make_node("Softmax", ["sum"], ["p"], axis=-1),
                    h.make_node("QuantizeLinear", ["p", "ps", "pz"], ["pq"]),
                    h.make_node("DequantizeLinear", ["pq", "ps", "pz"], ["y"])],
                   [h.make_tensor_value_info("q", TP.INT8, [rows, cols])],
                   [*_SCALE, nh.from_array(mask, "m"), nh.from_array(np.array(1 / 255, np.float32), "ps"),
                    nh.from_array(np.array(0, np.uint8), "pz")])
    assert not any("nan_to_zero" in c for c in _called_kernels(model)), _called_kernels(model)
    q = np.random.default_rng(2).integers(-128, 128, (rows, cols)).astype(np.int8)
    np.testing.assert_array_equal(optc.compile(model).run({"q": q})["y"], run_ort(model, {"q": q})[0])
