"""Elementwise kernels with an operand broadcast along the rows (a per-row statistic: a layer norm's variance, a
per-row scale): `Injective` keeps the row loop its own and vectorizes the columns inside it, so that what is
computed from the row operand alone is hoisted out of the row's vectors (fused with the columns, every vector
recomputed it: BERT-like int8's normalizing kernel, 19 us a call). Values against onnxruntime, IEEE cases included."""

from __future__ import annotations

import re

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from optc.codegen import schedules

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
