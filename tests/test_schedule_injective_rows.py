"""Elementwise kernels with an operand broadcast along the rows (a per-row statistic: a layer norm's variance, a
per-row scale): `Injective` keeps the row loop its own and vectorizes the columns inside it, so that what is
computed from the row operand alone is hoisted out of the row's vectors (fused with the columns, every vector
recomputed it: BERT-like int8's normalizing kernel, 19 us a call). Likewise a kernel that picks its operand by the
column (a Concat along the last axis: RoPE's rotate_half), in vectors that never straddle the pick. Values against
onnxruntime, IEEE cases included."""

from __future__ import annotations

import re

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from optc.codegen import schedules
from optc.codegen.targets import resolve_target

from .conftest import assert_ieee_close, run_ort, scheduled_script


def _normalize(shape: list[int], row_operand: bool) -> onnx.ModelProto:
    """y = x / Sqrt(r * r + 1) + x, r of shape [.., 1] (a row statistic) or x's own shape."""
    r_shape = [*shape[:-1], 1] if row_operand else shape
    nodes = [h.make_node("Mul", ["r", "r"], ["r2"]), h.make_node("Add", ["r2", "one"], ["v"]),
             h.make_node("Sqrt", ["v"], ["s"]), h.make_node("Div", ["x", "s"], ["n"]),
             h.make_node("Add", ["n", "x"], ["y"])]
    g = h.make_graph(nodes, "norm", [h.make_tensor_value_info("x", TP.FLOAT, shape),
                                     h.make_tensor_value_info("r", TP.FLOAT, r_shape)],
                     [h.make_tensor_value_info("y", TP.FLOAT, shape)],
                     [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize(("shape", "rows"), [([4, 32, 128], 128), ([1, 128, 256], 128), ([64, 64], 64)])
def test_a_row_operand_keeps_the_row_loop(shape, rows):
    """The rows are one loop (parallel when the kernel is large), the columns whole vectors inside it: the column
    index is no division or modulo of a fused loop."""
    text = scheduled_script(_normalize(shape, True), schedules.Injective())
    assert re.search(rf"in T\.(parallel|grid)\(T\.int64\({rows}\)", text) and "T.vectorized" in text, text
    column = [line for line in text.splitlines() if f"T.axis.spatial(T.int64({shape[-1]})" in line][-1]
    assert "//" not in column and "%" not in column, text


@pytest.mark.parametrize(("shape", "row_operand"), [([4, 32, 128], False), ([3, 8, 20], True)])
def test_without_a_row_operand_or_whole_vectors_the_loops_fuse(shape, row_operand):
    """Same-shape operands (nothing to hoist), or rows of 20 (no whole number of vectors): one fused loop as before."""
    text = scheduled_script(_normalize(shape, row_operand), schedules.Injective())
    assert "_fused" in text, text


@pytest.mark.parametrize("shape", [[4, 32, 128], [1, 128, 256]])
def test_row_operand_kernels_match_onnxruntime(shape):
    model = _normalize(shape, True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal([*shape[:-1], 1]).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    r.reshape(-1)[1:3] = [np.inf, np.nan]
    feeds = {"x": x, "r": r}
    assert_ieee_close(optc.compile(model).run(feeds)["y"], run_ort(model, feeds)[0], rtol=1e-6, atol_scale=1e-7)


def _rotate_half(shape: list[int], half: int, qdq: bool) -> onnx.ModelProto:
    """RoPE's y = x * cos + cat(-x[..., half:], x[..., :half]) * sin over the last axis (cos, sin constants of the
    last two dims); `qdq`: uint8 in and out (DequantizeLinear before, QuantizeLinear after), as a QDQ model's
    rotary kernel."""
    last = shape[-1]
    rng = np.random.default_rng(1)
    cos = rng.standard_normal(shape[-2:]).astype(np.float32)
    sin = rng.standard_normal(shape[-2:]).astype(np.float32)
    x_in = "xq" if qdq else "x"
    nodes = [h.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"])] if qdq else []
    nodes += [h.make_node("Slice", ["x", "h", "end", "axis"], ["hi"]),
              h.make_node("Slice", ["x", "zero", "h", "axis"], ["lo"]), h.make_node("Neg", ["hi"], ["nh"]),
              h.make_node("Concat", ["nh", "lo"], ["rot"], axis=-1), h.make_node("Mul", ["x", "cos"], ["a"]),
              h.make_node("Mul", ["rot", "sin"], ["b"]), h.make_node("Add", ["a", "b"], ["yf" if qdq else "y"])]
    if qdq:
        nodes.append(h.make_node("QuantizeLinear", ["yf", "s2", "z"], ["y"]))
    dtype = TP.UINT8 if qdq else TP.FLOAT
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in [
        (cos, "cos"), (sin, "sin"), (np.array([half], np.int64), "h"), (np.array([last], np.int64), "end"),
        (np.array([-1], np.int64), "axis"), (np.array([0], np.int64), "zero"), (np.array(0.05, np.float32), "s"),
        (np.array(0.1, np.float32), "s2"), (np.array(128, np.uint8), "z")]]
    g = h.make_graph(nodes, "rope", [h.make_tensor_value_info(x_in, dtype, shape)],
                     [h.make_tensor_value_info("y", dtype, shape)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize(("shape", "half", "qdq", "lanes"), [([1, 8, 128, 32], 16, False, 16),
                                                             ([1, 8, 128, 32], 16, True, 16),
                                                             ([2, 4, 64, 64], 32, True, 32)])
def test_a_concat_along_the_columns_keeps_the_row_loop(shape, half, qdq, lanes):
    """rotate_half picks its operand by the column: the rows are one loop, the columns whole vectors that never
    straddle the pick (a uint8 output would take 64 or 32 lanes: at most `half`), no modulo in the column index."""
    text = scheduled_script(_rotate_half(shape, half, qdq), schedules.Injective())
    lanes = min(lanes, schedules._vector_lanes(resolve_target("cpu"), 8 if qdq else 32))  # (AVX2: 8 float32)
    assert f"T.vectorized(T.int64({lanes}))" in text, text
    column = [line for line in text.splitlines() if f"T.axis.spatial(T.int64({shape[-1]})" in line][-1]
    assert "%" not in column and "//" not in column, text
    # the row's vectors in two runs, one per operand of the pick: in each the condition is a constant (one loop,
    # it depended on the lanes and TVM computed the kernel lane by lane: float32 65 -> 8.2 us on Zen 4)
    assert len(re.findall(r'_partition"\)', text)) == 2, text


def test_a_pick_that_no_vector_can_keep_whole_leaves_the_loops_fused():
    """A Concat at column 3 (no vector of 4 or more lanes avoids straddling it): the flat schedule as before."""
    text = scheduled_script(_rotate_half([1, 4, 64, 32], 3, False), schedules.Injective())
    assert "_fused" in text, text


@pytest.mark.parametrize(("shape", "half", "qdq"), [([1, 8, 128, 32], 16, False), ([1, 8, 128, 32], 16, True),
                                                     ([2, 4, 64, 64], 32, True), ([1, 4, 64, 32], 3, False)])
def test_rotary_kernels_match_onnxruntime(shape, half, qdq):
    model = _rotate_half(shape, half, qdq)
    rng = np.random.default_rng(0)
    if qdq:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        np.testing.assert_array_equal(optc.compile(model).run({"xq": x})["y"], run_ort(model, {"xq": x})[0])
        return
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    assert_ieee_close(optc.compile(model).run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-6,
                      atol_scale=1e-7)
