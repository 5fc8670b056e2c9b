"""Not of a float comparison keeps its NaN cases (`lowering/ops/ieee.py`): fused into the comparison's kernel, TVM's
simplifier rewrote `!(a > b)` to `a <= b`, false where an operand is NaN, so `Not(Greater(x, m))` gave False and a
`Where` on it took the other branch (found by a breaker: every comparison, static and symbolic shapes). Values
against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h

from .conftest import run_ort

X = np.array([1, np.nan, 1, np.nan, 2, 1, -np.inf, 0.0], np.float32)
M = np.array([np.nan, 1, 2, np.nan, 1, np.inf, -np.inf, -0.0], np.float32)


def _model(nodes, out_type, dims) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, dims),
                                  h.make_tensor_value_info("m", TensorProto.FLOAT, dims)],
                     [h.make_tensor_value_info("y", out_type, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("dims", [[8], ["S"]], ids=["static", "symbolic"])
@pytest.mark.parametrize("cmp", ["Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"])
def test_not_of_a_comparison_with_nan(cmp, dims):
    model = _model([h.make_node(cmp, ["x", "m"], ["c"]), h.make_node("Not", ["c"], ["y"])], TensorProto.BOOL, dims)
    got = optc.compile(model).run({"x": X, "m": M})["y"]
    np.testing.assert_array_equal(got, run_ort(model, {"x": X, "m": M})[0])


def test_where_on_a_negated_comparison():
    model = _model([h.make_node("Greater", ["x", "m"], ["c"]), h.make_node("Not", ["c"], ["n"]),
                    h.make_node("Where", ["n", "m", "x"], ["y"])], TensorProto.FLOAT, [8])
    got = optc.compile(model).run({"x": X, "m": M})["y"]
    want = run_ort(model, {"x": X, "m": M})[0]
    np.testing.assert_array_equal(got, want)  # (NaN in the same places: assert_array_equal treats NaN as equal)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_not_of_a_bool_input():
    """Negative: a plain bool tensor negates as before (and a 0-d one)."""
    for shape in ([5], []):
        g = h.make_graph([h.make_node("Not", ["b"], ["y"])], "g", [h.make_tensor_value_info("b", TensorProto.BOOL, shape)],
                         [h.make_tensor_value_info("y", TensorProto.BOOL, None)])
        model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
        b = np.array([True, False, True, True, False])[:5 if shape else 1].reshape(shape)
        np.testing.assert_array_equal(optc.compile(model).run({"b": b})["y"], ~b)
