"""Softmax over rows that are no whole vectors of 16 (`codegen/softmax.py` `lane_partial_softmax`): rows with
no divisor up to 16 (ViT's 197, 37, 31, 17: the elementwise steps run in vectors and a scalar tail) and rows with
a divisor of 4 or 8 (20, 24, 36, 40: vectors of 4 or 8 lanes over the whole row). An attempt to exponentiate the
tail as the row's last whole vector read the row's two parts through one select; TVM's simplifier dropped the
clamps of its indices under the select's condition, and rows of 20-40 came out wrong (NaN at 36): these shapes
are here for that. Values are compared with onnxruntime and with the build without fast math."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h

from .conftest import run_ort


def _softmax(shape: list[int]) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("shape", [[1, 3, 197, 197], [2, 37], [4, 17], [5, 31], [0, 33], [8, 36], [3, 40],
                                   [4, 20], [4, 24], [1, 3, 197, 36]])
def test_ragged_row_softmax_values(shape):
    model = _softmax(shape)
    x = (np.random.default_rng(2).standard_normal(shape) * 4).astype(np.float32)
    if x.size:
        x.reshape(-1, shape[-1])[0, -1] = 30.0  # the row's maximum in its tail
        x.reshape(-1, shape[-1])[-1, 0] = 30.0  # and in its first chunk
    got = optc.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=2e-6, atol=1e-7)
    exact = optc.compile(model, fast_math=False).run({"x": x})["y"]
    np.testing.assert_allclose(got, exact, rtol=2e-6, atol=1e-7)


def _scores(shape: list) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def test_symbolic_rows_take_the_lane_partial_softmax():
    """A row length S that is also one of the rows' dims ([B, 4, S, S]: attention scores of a dynamic-axes export)
    takes `lane_partial_softmax` (TOPI's fast_softmax summed each row in one scalar chain: an int8 GPT-2-like's
    softmax 134 -> 96 us a call, Zen 4); a row length of its own symbol ([B, S]: S = 0 would leave rows whose
    partials read a clamped index out of the row) keeps TOPI's."""
    from optc.codegen.kernel_check import fused_kernels
    from optc.ir import from_onnx

    def names(model):
        return [gv.name_hint for gv, _ in fused_kernels(from_onnx(model), "cpu").functions_items()]

    assert any("lane_partial_softmax" in n for n in names(_scores(["B", 4, "S", "S"])))
    assert not any("lane_partial_softmax" in n for n in names(_scores(["B", "S"])))


@pytest.mark.parametrize(("b", "s"), [(1, 1), (2, 7), (1, 16), (1, 33), (3, 0), (1, 128)])
def test_symbolic_row_softmax_values(b, s):
    model = _scores(["B", 4, "S", "S"])
    lib = optc.compile(model)
    x = (np.random.default_rng(s).standard_normal((b, 4, s, s)) * 4).astype(np.float32)
    if x.size:
        x.reshape(-1, s)[0, -1] = 30.0  # the row's maximum in its tail
        x.reshape(-1, s)[-1, 0] = -np.inf
        x.reshape(-1, s)[1 % x.shape[0], 0] = np.nan  # a NaN row stays NaN
    got = lib.run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert np.array_equal(np.isnan(got), np.isnan(want))
