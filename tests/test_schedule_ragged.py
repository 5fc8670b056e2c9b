"""Rows of a length with no vector divisor (ViT's 197 tokens): the zero-padding copy pad_einsum adds for a batched
matmul copies whole rows (its source indexed without a division and a modulo per element: ViT's [3, 197, 197] ->
[3, 200, 197] copy took longer than the matmul it padded), and elementwise row loops vectorize all whole vectors
with a scalar tail (loop_partition); a softmax over such rows sums in vector partials (codegen/softmax.py).
Values against onnxruntime at odd sizes, with NaN / inf / -inf / -0 rows."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from optc.codegen import schedules
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx


def _matmul(a: list[int], b: list[int]) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("MatMul", ["a", "b"], ["y"])], "g",
                     [h.make_tensor_value_info("a", TensorProto.FLOAT, a),
                      h.make_tensor_value_info("b", TensorProto.FLOAT, b)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _only_kernel(model: onnx.ModelProto):
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if gv.name_hint != "main"]
    return func


def _onnxruntime(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_ragged_batched_matmul_reads_its_rows_in_place():
    """[1, 3, 197, 197] @ [1, 3, 197, 64]: the rows padded to whole tiles read the activation in place at clamped
    rows (`_read_padded_rows_clamped`; the zero-padded copy it replaced cost a workspace and a pass over `a`: 532 ->
    490 us, AMD EPYC AVX2), not through a copy with a predicate or a division per element."""
    sch = schedules.TiledReduction().apply(_only_kernel(_matmul([1, 3, 197, 197], [1, 3, 197, 64])),
                                           resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert 'T.sblock("a_pad")' not in text and "if_then_else" not in text
    assert re.search(r"a\[T\.int64\(0\), v\d, T\.min\(v\d, T\.int64\(196\)\), v\d\]", text), text


@pytest.mark.parametrize(("a", "b"), [
    ([1, 3, 197, 64], [1, 3, 64, 197]), ([1, 3, 197, 197], [1, 3, 197, 64]), ([2, 13, 33], [2, 33, 45]),
    ([5, 37, 19], [19, 29]),
])
def test_ragged_matmuls_match_onnxruntime(a, b):
    model = _matmul(a, b)
    rng = np.random.default_rng(len(a) + a[-1])
    feeds = {"a": rng.standard_normal(a).astype(np.float32), "b": rng.standard_normal(b).astype(np.float32)}
    feeds["a"].flat[::97] = -0.0
    got = optc.compile(from_onnx(model)).run(feeds)["y"]
    np.testing.assert_allclose(got, _onnxruntime(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_an_elementwise_row_of_197_vectorizes_its_whole_vectors():
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 37, 197])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 37, 197])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    sch = schedules.RowReduction().apply(_only_kernel(model), resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    lanes = schedules._vector_lanes(resolve_target("cpu"), 32)
    norm = text[text.rindex("T.vectorized", 0, text.index('T.sblock("T_softmax_norm')) - 40:]
    assert f"T.vectorized(T.int64({lanes}))" in norm, text


def _softmax(shape: list) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("shape", [[3, 5, 197], ["N", 5, 197], [4, 33]])
def test_a_ragged_softmax_row_sums_in_vector_partials(shape):
    """codegen/softmax.py's lane partials: the row max and sum accumulate whole vectors over the row's chunks."""
    sch = schedules.RowReduction().apply(_only_kernel(_softmax(shape)), resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    for block in ("T_softmax_maxpart_update", "T_softmax_sumpart_update"):
        loop = text[:text.index(f'T.sblock("{block}")')].splitlines()[-2]  # the loop right around the block
        assert re.fullmatch(r"\s*for ax\d+ in T\.vectorized\(T\.int64\(16\)\):", loop), text


def test_rows_that_divide_keep_topi_softmax():
    text = _only_kernel(_softmax([3, 5, 208])).script()
    assert "T_softmax_maxpart" not in text and "T_softmax_maxelem" in text


@pytest.mark.parametrize("width", [17, 31, 33, 77, 197])
def test_ragged_softmax_matches_onnxruntime_with_special_rows(width):
    model = _softmax([7, width])
    rng = np.random.default_rng(width)
    x = (rng.standard_normal((7, width)) * rng.choice([0.1, 4.0, 30.0], (7, 1))).astype(np.float32)
    x[0, width - 1] = np.nan  # NaN in the tail
    x[1, 3] = np.inf  # +inf in a whole chunk
    x[2, :] = -np.inf  # a row of -inf: 0 / 0
    x[3, width - 1] = 50.0  # the max in the tail
    x[4, :] = -0.0
    got = optc.compile(from_onnx(model)).run({"x": x})["y"]
    want = _onnxruntime(model, {"x": x})[0]
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got[:5], want[:5])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_padded_columns_keep_the_panel_loop_serial_inside_the_parallel_one():
    """197 columns = 12 whole panels of 16 and a padded one: parallel over (heads, row tiles), the 13 panels a
    loop of their own, so LLVM drops the whole panels' crop predicate (fused, every store was predicated)."""
    avx512 = resolve_target({"kind": "llvm", "mcpu": "znver4"})  # (scheduled only: 16 float32 lanes on any host)
    sch = schedules.TiledReduction().apply(_only_kernel(_matmul([1, 3, 197, 64], [1, 3, 64, 197])), avx512, False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert "T.parallel(T.int64(75))" in text, text  # 3 heads x 25 row tiles of 8 (197 rows padded to 200)
    assert "in range(T.int64(13)):" in text, text
