"""codegen/tvm_ops.py: round half to even (`tirx.nearbyint`) vectorizes, and stays exact.

TVM 0.27 registers `tirx.nearbyint` without `TVectorizable`, so its loop vectorizer scalarized every loop that
rounds (QuantizeLinear, requantize, Round) and LLVM rebuilt them with gathers and scatters. optc registers the
attribute; these tests read the vectorized TIR (never a timing) and compare values bit for bit with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import tvm_ops
from tvm import s_tir, tirx
from tvm.script import tirx as T

from .conftest import run_ort

tvm_ops.register()  # what every optc build does first

def _vectorized(func) -> str:
    """`func` (one vectorized loop) after TVM's lowering up to and including VectorizeLoop, as TVMScript."""
    passes = [s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
              s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(), tirx.transform.VectorizeLoop(True)]
    return tvm.ir.transform.Sequential(passes)(tvm.IRModule({"main": func}))["main"].script()


@T.prim_func(s_tir=True)
def _quantize(x: T.Buffer((256,), "float32"), s: T.Buffer((1,), "float32"), y: T.Buffer((256,), "float32")):
    for i0 in T.parallel(16):
        for i1 in T.vectorized(16):
            with T.sblock("q"):
                v = T.axis.spatial(256, i0 * 16 + i1)
                y[v] = T.nearbyint(x[v] / s[0])


@T.prim_func(s_tir=True)
def _masked(x: T.Buffer((256,), "float32"), m: T.Buffer((256,), "bool"), y: T.Buffer((256,), "float32")):
    for i0 in T.parallel(16):
        for i1 in T.vectorized(16):
            with T.sblock("q"):
                v = T.axis.spatial(256, i0 * 16 + i1)
                y[v] = T.Select(m[v], T.nearbyint(x[v] * T.float32(10)), T.float32(-1e4))


def test_nearbyint_is_registered_vectorizable():
    assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable")
    tvm_ops.register()  # idempotent: a second call neither raises nor changes it
    assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable")


@pytest.mark.parametrize("func", [_quantize, _masked], ids=["quantize", "select_and_round"])
def test_rounding_loop_stays_a_vector_loop(func):
    text = _vectorized(func)
    assert "T.Ramp(" in text and "T.nearbyint(" in text
    assert "_s in range(" not in text  # the vectorizer's scalarized fallback loop (`i1_s`) is absent


def test_unregistered_nearbyint_is_scalarized_by_tvm():
    """The fault itself: with the attribute reset, TVM scalarizes the loop
    (if TVM ever registers it, this test says the correction can go)."""
    op = tvm.ir.Op.get("tirx.nearbyint")
    op.reset_attr("TVectorizable")
    try:
        assert "_s in range(" in _vectorized(_quantize)
    finally:
        tvm_ops.register()
    assert op.get_attr("TVectorizable")


def _round_model(shape, dtype=TP.FLOAT) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Mul", ["x", "s"], ["t"]), h.make_node("Round", ["t"], ["y"])], "r",
                     [h.make_tensor_value_info("x", dtype, shape)], [h.make_tensor_value_info("y", dtype, shape)],
                     [nh.from_array(np.array(1.0, np.float32 if dtype == TP.FLOAT else np.float64), "s")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("dtype", [TP.FLOAT, TP.DOUBLE])
def test_vector_round_is_bit_exact(dtype):
    np_type = np.float32 if dtype == TP.FLOAT else np.float64
    edge = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -0.0, 0.0, np.nan, np.inf, -np.inf, 2.0 ** 23 + 1,
                     -(2.0 ** 23) - 1, 0.49999997, 1e30, -1e-30, 3.5, 4.5], np_type)
    rng = np.random.default_rng(0)
    x = np.concatenate([edge, (rng.standard_normal(64 * 64 - edge.size) * 100).astype(np_type)])
    x[100:200] = np.round(x[100:200]) + 0.5  # many exact halves
    x = x.reshape(64, 64)
    model = _round_model([64, 64], dtype)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))
