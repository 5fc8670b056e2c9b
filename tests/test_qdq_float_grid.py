"""A QDQ model's QuantizeLinear -> DequantizeLinear pairs lowered without the integer round trip
(lowering/ops/quant.py `record_float_grid`), and RowReduction on a softmax followed by such a pair
(codegen/schedules.py `_inline_tail`).

The float form must equal the integer form bit for bit (signed zeros, saturation, infinities, NaN taken as the
zero point): checked against onnxruntime, and against the same model built with the integer round trip."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx
from optc.lowering.ops import quant

from .conftest import run_ort

_NP = {TP.UINT8: np.uint8, TP.INT8: np.int8, TP.UINT16: np.uint16, TP.INT16: np.int16}


def _qdq_chain(qtype: int, zero_point: int | None, scale: float = 0.5, shape=(2, 64)) -> onnx.ModelProto:
    """y = 1 / DQ(Q(x)) + DQ(Q(x)): the reciprocal shows the sign of a zero (1 / -0 = -inf)."""
    inits = [nh.from_array(np.array(scale, np.float32), "s"), nh.from_array(np.array(1.0, np.float32), "one")]
    q_inputs = ["x", "s"]
    if zero_point is not None:
        inits.append(nh.from_array(np.array(zero_point, _NP[qtype]), "z"))
        q_inputs.append("z")
    nodes = [h.make_node("QuantizeLinear", q_inputs, ["q"]),
             h.make_node("DequantizeLinear", ["q", *q_inputs[1:]], ["d"]),
             h.make_node("Div", ["one", "d"], ["r"]),
             h.make_node("Add", ["r", "d"], ["y"])]
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                     [h.make_tensor_value_info("y", TP.FLOAT, list(shape)),
                      h.make_tensor_value_info("d", TP.FLOAT, list(shape))], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)  # 21: 16-bit Q / DQ


def _inputs(scale: float, n: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array([-0.0, 0.0, -0.1 * scale, 0.1 * scale, -0.5 * scale, 0.5 * scale, 1.5 * scale,
                        -1.5 * scale, 1e30, -1e30, np.inf, -np.inf, 2.5 * scale, -2.5 * scale], np.float32)
    x = (rng.standard_normal(n) * 200 * scale).astype(np.float32)
    x[:special.size] = special
    return x.reshape(2, n // 2)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("qtype,zero_point", [(TP.UINT8, 0), (TP.UINT8, 131), (TP.UINT8, None), (TP.INT8, 0),
                                              (TP.INT8, -7), (TP.UINT16, 40000), (TP.INT16, -3)])
def test_qdq_pair_equals_onnxruntime_bit_for_bit(qtype, zero_point):
    model = _qdq_chain(qtype, zero_point)
    x = _inputs(0.5)
    got = optc.compile(model).run({"x": x})
    want = run_ort(model, {"x": x})
    for name, w in zip(("y", "d"), want, strict=True):
        assert np.array_equal(_bits(got[name]), _bits(w)), name  # +0.0, never -0.0; inf; saturation


@pytest.mark.parametrize("qtype,zero_point", [(TP.UINT8, None), (TP.INT8, None), (TP.INT8, 0), (TP.UINT8, 3)])
@pytest.mark.parametrize("value", [-0.1, -0.0, 0.7, -300.0])
def test_qdq_pair_of_a_0d_tensor_equals_onnxruntime(qtype, zero_point, value):
    """A 0-d tensor: its kernel's constants are immediates, and TVM's simplifier dropped the `+ 0.0` that turns
    -0.0 into +0.0 (Q -> DQ of -0.1 gave -0.0; onnxruntime and the reference give +0.0)."""
    model = _qdq_chain(qtype, zero_point, shape=())
    x = np.array(value * 0.5, np.float32)
    got = optc.compile(model).run({"x": x})
    want = run_ort(model, {"x": x})
    for name, w in zip(("y", "d"), want, strict=True):
        assert got[name].shape == () and np.array_equal(_bits(got[name]), _bits(w)), (name, got[name], w)


def test_qdq_pair_skips_the_integer_round_trip():
    """The fused kernel of Q -> DQ -> Div -> Add computes in float32: no int32 conversion left."""
    fused = fused_kernels(from_onnx(_qdq_chain(TP.UINT8, 131)), "cpu")
    text = "\n".join(f.script() for gv, f in fused.functions_items() if gv.name_hint != "main")
    assert "nearbyint" in text and 'T.Cast("int32"' not in text and 'T.Cast("uint8"' not in text


def test_quantized_graph_output_keeps_its_integer_form():
    """A QuantizeLinear whose output is also a graph output: the integer tensor is computed, and the
    DequantizeLinear beside it reads it (`record_float_grid`); both equal onnxruntime."""
    model = _qdq_chain(TP.INT8, -7)
    model.graph.output.append(h.make_tensor_value_info("q", TP.INT8, [2, 64]))
    x = _inputs(0.5)
    got = optc.compile(model).run({"x": x})
    want = run_ort(model, {"x": x})
    for name, w in zip(("y", "d", "q"), want, strict=True):
        assert got[name].dtype == w.dtype and np.array_equal(got[name].view(np.uint8), w.view(np.uint8)), name


def test_nan_is_the_zero_point_in_the_float_form_too():
    model = _qdq_chain(TP.UINT8, 131)
    x = np.full((2, 64), np.nan, np.float32)
    d = optc.compile(model).run({"x": x})["d"]
    assert np.array_equal(_bits(d), _bits(np.zeros_like(d)))  # DQ(zero point) = +0.0


def _qdq_matmul_relu(with_relu: bool) -> onnx.ModelProto:
    """DQ(x) @ DQ(w) [-> Relu] -> Q -> DQ -> Add: QMatMul with the float form of its requantized output."""
    rng = np.random.default_rng(3)
    w = rng.integers(-64, 65, (32, 16)).astype(np.int8)  # 7 bits: onnxruntime without VNNI saturates wider ones
    inits = [nh.from_array(np.array(0.02, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz"),
             nh.from_array(w, "w"), nh.from_array(np.array(0.01, np.float32), "ws"),
             nh.from_array(np.array(0, np.int8), "wz"), nh.from_array(np.array(0.05, np.float32), "ys"),
             nh.from_array(np.array(120, np.uint8), "yz"), nh.from_array(np.array(0.3, np.float32), "c")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             h.make_node("MatMul", ["xd", "wd"], ["mm"])]
    last = "mm"
    if with_relu:
        nodes.append(h.make_node("Relu", ["mm"], ["act"]))
        last = "act"
    nodes += [h.make_node("QuantizeLinear", [last, "ys", "yz"], ["yq"]),
              h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd"]),
              h.make_node("Add", ["yd", "c"], ["y"])]
    g = h.make_graph(nodes, "qmm", [h.make_tensor_value_info("x", TP.FLOAT, [4, 32])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [4, 32 // 2])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("with_relu", [False, True])
def test_requantized_integer_matmul_float_form_equals_the_integer_form(with_relu, monkeypatch):
    model = _qdq_matmul_relu(with_relu)
    x = (np.random.default_rng(4).standard_normal((4, 32)) * 2).astype(np.float32)
    x[0, :4] = [-0.0, 0.0, np.inf, -np.inf]
    compiled = optc.compile(model)
    assert compiled.metadata["kernels"]["integer"] >= 1  # the QMatMul path, not float
    got = compiled.run({"x": x})["y"]
    monkeypatch.setattr(quant, "record_float_grid", lambda *a, **k: None)
    import optc.lowering.ops.qinteger as qinteger

    monkeypatch.setattr(qinteger, "record_float_grid", lambda *a, **k: None)
    old = optc.compile(model).run({"x": x})["y"]
    assert np.array_equal(_bits(got), _bits(old))
    want = run_ort(model, {"x": x})[0]  # onnxruntime's QDQ: within one quantized step (0.05) of it
    assert np.abs(got - want).max() <= 0.05 + 1e-6


def _softmax_qdq(width: int) -> onnx.ModelProto:
    inits = [nh.from_array(np.array(1 / 255, np.float32), "s"), nh.from_array(np.array(0, np.uint8), "z")]
    nodes = [h.make_node("Softmax", ["x"], ["p"], axis=-1),
             h.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = h.make_graph(nodes, "smq", [h.make_tensor_value_info("x", TP.FLOAT, [2, 4, 32, width])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [2, 4, 32, width])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("width", [128, 197])
def test_softmax_then_fake_quantization_is_a_row_reduction(width):
    """The fake-quantization blocks after the softmax are inlined into the last block, which then reads the
    row sums: RowReduction schedules the kernel (before: it declined, and the scalar fallback ran it)."""
    fused = fused_kernels(from_onnx(_softmax_qdq(width)), "cpu")
    funcs = [f for gv, f in fused.functions_items() if "softmax" in gv.name_hint]
    assert funcs
    target = resolve_target("cpu")
    for func in funcs:
        sch = schedules.RowReduction().apply(func, target, False)
        assert sch is not None
        assert "T.vectorized" in sch.mod["main"].script()


@pytest.mark.parametrize("width", [128, 197])
def test_softmax_then_fake_quantization_matches_onnxruntime(width):
    model = _softmax_qdq(width)
    x = (np.random.default_rng(5).standard_normal((2, 4, 32, width)) * 3).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    # the softmax itself is fast-math (rel. error ~1e-6): a probability within that of a rounding boundary of
    # the 1/255 grid may land one step over
    steps = np.abs(got - want) * 255
    assert steps.max() <= 1.0 + 1e-3
    assert (steps > 0.5).mean() < 1e-3


def test_inline_tail_handles_a_block_read_twice():
    """A block after the last reduction whose element the next block reads twice (p * p) is one value: it is
    inlined (LLVM computes the expression once) and the kernel still matches onnxruntime."""
    nodes = [h.make_node("Softmax", ["x"], ["p"], axis=-1), h.make_node("Mul", ["p", "p"], ["y"])]
    g = h.make_graph(nodes, "sq", [h.make_tensor_value_info("x", TP.FLOAT, [8, 64])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [8, 64])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    x = np.random.default_rng(6).standard_normal((8, 64)).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=2e-5, atol=1e-7)


def _masked_scores_qdq() -> onnx.ModelProto:
    """Attention scores of a QDQ decoder: MatMul -> Div -> Q -> DQ -> Where(causal mask) -> Q -> DQ."""
    s, n = 32, 16
    mask = np.tril(np.ones((s, s), bool))
    inits = [nh.from_array(np.array(0.1, np.float32), "s1"), nh.from_array(np.array(120, np.uint8), "z1"),
             nh.from_array(np.array(4.0, np.float32), "scale"), nh.from_array(mask, "mask"),
             nh.from_array(np.array(-3.0e38, np.float32), "fill"),
             nh.from_array(np.array(0.2, np.float32), "s2"), nh.from_array(np.array(200, np.uint8), "z2")]
    nodes = [h.make_node("MatMul", ["q", "k"], ["mm"]), h.make_node("Div", ["mm", "scale"], ["sc"]),
             h.make_node("QuantizeLinear", ["sc", "s1", "z1"], ["q1"]),
             h.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             h.make_node("Where", ["mask", "d1", "fill"], ["w"]),
             h.make_node("QuantizeLinear", ["w", "s2", "z2"], ["q2"]),
             h.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    g = h.make_graph(nodes, "scores", [h.make_tensor_value_info("q", TP.FLOAT, [2, s, n]),
                                       h.make_tensor_value_info("k", TP.FLOAT, [2, n, s])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [2, s, s])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def test_masked_scores_match_onnxruntime():
    model = _masked_scores_qdq()
    rng = np.random.default_rng(7)
    feeds = {"q": rng.standard_normal((2, 32, 16)).astype(np.float32),
             "k": rng.standard_normal((2, 16, 32)).astype(np.float32)}
    got = optc.compile(model).run(feeds)["y"]
    want = run_ort(model, feeds)[0]
    # the matmul's float sums may differ from onnxruntime's in the last bit, and move a value across a
    # rounding boundary of the first quantization: one step of 0.1, then of the 0.2 grid
    assert np.abs(got - want).max() <= 0.2 + 1e-6
    assert (got == want).mean() > 0.99


def _qdq_residual_matmuls() -> onnx.ModelProto:
    """yq = Q(DQ(x) @ DQ(w1)); y = DQ(yq) + DQ(Q(DQ(yq) @ DQ(w2))): the quantized `yq` is read by a QMatMul
    (an integer op) and by a DequantizeLinear into a float Add, as a ResNet block's output is."""
    rng = np.random.default_rng(5)
    w1, w2 = (rng.integers(-64, 65, (32, 16)).astype(np.int8), rng.integers(-64, 65, (16, 16)).astype(np.int8))
    inits = [nh.from_array(np.array(0.02, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz"),
             nh.from_array(w1, "w1"), nh.from_array(w2, "w2"), nh.from_array(np.array(0.01, np.float32), "ws"),
             nh.from_array(np.array(0, np.int8), "wz"), nh.from_array(np.array(0.05, np.float32), "ys"),
             nh.from_array(np.array(120, np.uint8), "yz"), nh.from_array(np.array(0.04, np.float32), "zs"),
             nh.from_array(np.array(125, np.uint8), "zz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w1", "ws", "wz"], ["w1d"]),
             h.make_node("MatMul", ["xd", "w1d"], ["mm1"]),
             h.make_node("QuantizeLinear", ["mm1", "ys", "yz"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd2"]),
             h.make_node("DequantizeLinear", ["w2", "ws", "wz"], ["w2d"]),
             h.make_node("MatMul", ["yd2", "w2d"], ["mm2"]),
             h.make_node("QuantizeLinear", ["mm2", "zs", "zz"], ["zq"]),
             h.make_node("DequantizeLinear", ["zq", "zs", "zz"], ["zd"]),
             h.make_node("Add", ["yd", "zd"], ["y"])]
    g = h.make_graph(nodes, "residual", [h.make_tensor_value_info("x", TP.FLOAT, [4, 32])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [4, 16])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def _kernel_output_dtypes(model: onnx.ModelProto) -> list[str]:
    """The dtypes of the tensors the fused kernels of `model`'s integer build store (in call order)."""
    import tvm
    from optc.codegen.build import fuse, prepare
    from optc.codegen.compile import integer_kernels
    from optc.lowering import lower
    from optc.rewrites import optimize

    optimized = optimize(from_onnx(model), level=2)
    assert integer_kernels(optimized, 2)["integer"] >= 1  # the QMatMul path, not float
    target = resolve_target("cpu")
    fused = fuse(prepare(lower(optimized), None, target), target)
    dtypes: list[str] = []

    def visit(expr) -> None:
        if isinstance(expr, tvm.relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            dtypes.append(str(expr.ty.dtype))

    tvm.relax.analysis.post_order_visit(fused["main"].body, visit)
    return dtypes


def test_a_quantized_value_read_by_an_integer_op_is_stored_as_integers():
    """The block output `yq` is stored once, as uint8 (its float32 form, shared by both readers, was stored
    before: 4 bytes per element, clamped and converted again by each reader), and the DequantizeLinear beside
    the QMatMul reads it; the outputs equal the build without any float form bit for bit."""
    model = _qdq_residual_matmuls()
    dtypes = _kernel_output_dtypes(model)
    assert dtypes.count("float32") == 1 and "uint8" in dtypes, dtypes  # the model's output alone is float32
    x = (np.random.default_rng(6).standard_normal((4, 32)) * 2).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert np.abs(got - want).max() <= 0.05 + 0.04 + 1e-6  # one quantized step of each addend


def test_a_quantized_value_read_only_by_dequantize_nodes_stays_float():
    """(negative) Q -> DQ pairs alone keep the float form: no uint8 tensor is stored between kernels."""
    assert "uint8" not in _kernel_output_dtypes(_qdq_matmul_relu(False))[1:]
