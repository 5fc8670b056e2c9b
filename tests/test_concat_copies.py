"""A Concat that is a kernel of its own runs as one contiguous copy per input (codegen/concat.py): which kernels
are replaced, and that every result is the concatenation, bit for bit, for every layout path (rows in parallel,
long rows in chunks, tails that are not whole vectors) and dtype."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper
from optc.codegen import concat

from .conftest import run_reference


def _model(shapes, axis: int, dtype=TensorProto.FLOAT, tail: str | None = None) -> onnx.ModelProto:
    """Concat of graph inputs x0, x1, ... of `shapes` along `axis` (then `tail`, an elementwise op, if given)."""
    names = [f"x{i}" for i in range(len(shapes))]
    nodes = [helper.make_node("Concat", names, ["c" if tail else "y"], axis=axis)]
    if tail:
        nodes.append(helper.make_node(tail, ["c"], ["y"]))
    inputs = [helper.make_tensor_value_info(n, dtype, s) for n, s in zip(names, shapes, strict=True)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _feeds(model: onnx.ModelProto, shapes, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    feeds = {}
    for i, shape in enumerate(shapes):
        x = rng.standard_normal([d if isinstance(d, int) else 3 for d in shape]) * 100
        feeds[f"x{i}"] = (x > 0) if np_dtype == np.bool_ else x.astype(np_dtype)
    return feeds


def _copy_kernels(model: onnx.ModelProto) -> int:
    """How many of the fused module's kernels are concat_kernel's copies."""
    from optc.codegen.kernel_check import fused_kernels
    from tvm import tirx

    fused = fused_kernels(optc.from_onnx(model), "cpu")
    return sum('T.sblock("copy' in f.script() for _, f in fused.functions_items() if isinstance(f, tirx.PrimFunc))


CASES = {  # (input shapes, axis, ONNX dtype)
    "NHWC channels, whole vectors": ([[1, 5, 7, 64], [1, 5, 7, 64]], -1, TensorProto.FLOAT),
    "channels with tails (3 + 21 + 40)": ([[2, 9, 3], [2, 9, 21], [2, 9, 40]], 2, TensorProto.FLOAT),
    "middle axis (runs of 4 x 33)": ([[3, 2, 33], [3, 4, 33]], 1, TensorProto.FLOAT),
    "axis 0, long rows in chunks": ([[12000], [9001]], 0, TensorProto.FLOAT),
    "axis 0 of 2-D, few rows in chunks": ([[4, 3000], [3, 3001 - 1]], 0, TensorProto.FLOAT),
    "int64": ([[4, 6, 5], [4, 6, 19]], 2, TensorProto.INT64),
    "float64": ([[40, 17], [40, 3]], 1, TensorProto.DOUBLE),
    "int8": ([[8, 70], [8, 130]], 1, TensorProto.INT8),
    "uint8 along axis 0": ([[1, 64, 64], [2, 64, 64]], 0, TensorProto.UINT8),
    "float16": ([[6, 48], [6, 24]], 1, TensorProto.FLOAT16),
    "a 0-d wide input (zero channels)": ([[4, 5, 0], [4, 5, 7]], 2, TensorProto.FLOAT),
}


@pytest.mark.parametrize("case", list(CASES))
def test_concat_copies_are_exact(case):
    shapes, axis, dtype = CASES[case]
    model = _model(shapes, axis, dtype)
    feeds = _feeds(model, shapes)
    got = optc.compile(model).run(feeds)["y"]
    want = np.concatenate([feeds[f"x{i}"] for i in range(len(shapes))], axis=axis)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])
    if "zero" not in case:
        assert _copy_kernels(model) == 1


def test_special_values_are_copied_bit_for_bit():
    x0 = np.array([[np.nan, -0.0, np.inf], [-np.inf, 1e-45, -np.nan]], np.float32)
    x1 = np.array([[0.0], [-0.0]], np.float32)
    model = _model([[2, 3], [2, 1]], 1)
    got = optc.compile(model).run({"x0": x0, "x1": x1})["y"]
    np.testing.assert_array_equal(got.view(np.uint32), np.concatenate([x0, x1], axis=1).view(np.uint32))


NOT_TAKEN = {  # (input shapes, axis, dtype, elementwise tail)
    "fused with a consumer": ([[2, 8, 16], [2, 8, 16]], 2, TensorProto.FLOAT, "Relu"),
    "bool": ([[3, 20], [3, 12]], 1, TensorProto.BOOL, None),
    "symbolic batch": ([["N", 20], ["N", 12]], 1, TensorProto.FLOAT, None),
}


@pytest.mark.parametrize("case", list(NOT_TAKEN))
def test_other_concats_keep_topis_kernel(case):
    shapes, axis, dtype, tail = NOT_TAKEN[case]
    model = _model(shapes, axis, dtype, tail)
    assert _copy_kernels(model) == 0
    feeds = _feeds(model, shapes)
    got = optc.compile(model, static_batch=()).run(feeds)["y"]
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])


def test_only_exact_concatenations_are_recognized():
    """concat_axis: TOPI's concatenate of the parameters' shapes along the axis that sums; not an elementwise
    kernel of the same signature, nor a concat whose output shape is not the sum."""
    from tvm import te, tirx, topi

    def i64(dims):
        return [tirx.IntImm("int64", d) for d in dims]

    a, b = te.placeholder(i64([2, 3]), "float32", "a"), te.placeholder(i64([2, 5]), "float32", "b")
    assert concat.concat_axis(te.create_prim_func([a, b, topi.concatenate([a, b], axis=1)])) == 1
    c = te.placeholder(i64([4, 3]), "float32", "c")
    assert concat.concat_axis(te.create_prim_func([a, c, topi.concatenate([a, c], axis=0)])) == 0
    # same signature, another computation: the first input's row repeated
    other = te.compute(i64([2, 8]), lambda i, j: tirx.if_then_else(j < 3, a[i, j], b[i, 0]), name="T_concat")
    assert concat.concat_axis(te.create_prim_func([a, b, other])) is None
    assert concat.concat_axis(te.create_prim_func([a, topi.nn.relu(a)])) is None


def test_parameters_in_another_order_are_not_a_concatenation_of_them():
    """(negative) A kernel computing concat(b, a) with parameters (a, b, y): the copy would put a first."""
    from tvm import te, tirx, topi

    def i64(dims):
        return [tirx.IntImm("int64", d) for d in dims]

    a, b = te.placeholder(i64([2, 3]), "float32", "a"), te.placeholder(i64([2, 3]), "float32", "b")
    assert concat.concat_axis(te.create_prim_func([a, b, topi.concatenate([a, b], axis=1)])) == 1
    assert concat.concat_axis(te.create_prim_func([a, b, topi.concatenate([b, a], axis=1)])) is None
