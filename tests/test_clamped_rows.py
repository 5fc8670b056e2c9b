"""Matmuls whose rows are padded to whole register tiles read their activations in place, at clamped rows
(codegen/schedules.py: `_read_padded_rows_clamped`): no zero-padded workspace copy of the activation per call.
A padded row feeds only padded output rows, which the crop discards, so the results equal the zero-padded form's
bit for bit, NaN and infinities in the last real row included, for any run-time sequence length."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from optc import from_onnx, runtime  # noqa: E402
from optc.codegen import build, export, resolve_target  # noqa: E402
from optc.lowering import lower, signature  # noqa: E402


def _batched_matmul(m, n: int, k: int, *, weight: bool):
    from tvm import te, tirx

    rows = tirx.Var("s", "int64") if m is None else m
    a = te.placeholder((1, rows, k), name="A")
    b = te.placeholder((k, n) if weight else (1, k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((1, rows, n), lambda x, i, j: te.sum(a[x, i, r] * (b[r, j] if weight else b[x, r, j]), axis=r),
                   name="matmul")
    func = te.create_prim_func([a, b, c])
    return func.with_attr("layout_free_buffers", [1]) if weight else func


def _scheduled(func):
    from optc.codegen.schedules import TiledReduction

    return TiledReduction().schedule(func, resolve_target("cpu")).mod["main"].script()


@pytest.mark.parametrize("m", [None, 197])  # a symbolic sequence, a static ragged one (ViT's 197 tokens)
def test_padded_rows_are_read_in_place(m):
    from optc.codegen.schedules import _pad_ragged_tile
    from tvm import s_tir

    func = _batched_matmul(m, 64, 32, weight=True)
    sch = s_tir.Schedule(func)
    assert _pad_ragged_tile(sch, resolve_target("cpu"))[0]
    pad = sch.mod["main"].script()
    pad = pad[pad.index('T.sblock("A_pad")'):]
    pad = pad[:pad.index("T.sblock(", 10)]
    assert "T.min(" in pad and "if_then_else" not in pad  # the copy reads clamped rows ...
    script = _scheduled(func)
    assert 'T.sblock("A_pad")' not in script  # ... and is inlined: the matmul reads A itself
    assert re.search(r"A\[0, T\.min\(v0, (s - T\.int64\(1\)|196)\), v2\]", script)


def test_padded_columns_keep_the_zero_padded_copies():
    """Negative: where the vector axis is padded too (Q K^T over a ragged length), both copies stay zero
    padding (a clamped column would be a gather per lane)."""
    from optc.codegen.schedules import _pad_ragged_tile
    from tvm import s_tir

    sch = s_tir.Schedule(_batched_matmul(197, 197, 32, weight=False))
    assert _pad_ragged_tile(sch, resolve_target("cpu"))[:2] == (True, True)
    script = sch.mod["main"].script()
    assert script.count("if_then_else") == 2 and "T.min(" not in script


def test_whole_tiles_are_not_padded():
    """Negative: 200 rows tile whole: no copy, no clamp."""
    script = _scheduled(_batched_matmul(200, 64, 32, weight=True))
    assert "A_pad" not in script and "T.min(" not in script


def _dense_model(rows, k: int = 48, n: int = 40):
    """[1, rows, k] @ [k, n] + bias, then Relu (an epilogue on the padded tile): `rows` an int or 'seq'."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.2, "w")
    bias = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["xb"]),
             helper.make_node("Relu", ["xb"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, n])], [w, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _compile(model, path):
    ir = from_onnx(model)
    ins, outs = signature(ir)
    export(build(lower(ir), None, "cpu"), path, {"inputs": ins, "outputs": outs}, target="cpu")
    return runtime.load(path)


def _expected(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_symbolic_rows_match_onnxruntime_at_every_length(tmp_path):
    """One library run at lengths that are and are not whole tiles, with a NaN and an infinity in the last real
    row (its clamped copies fill the padded rows, which no output reads): equal to onnxruntime's, NaN where its
    output has NaN and nowhere else."""
    model = _dense_model("seq")
    module = _compile(model, tmp_path / "dense.so")
    rng = np.random.default_rng(0)
    for rows in (1, 3, 8, 13, 130):
        x = rng.standard_normal((1, rows, 48)).astype(np.float32)
        x[0, -1, 5], x[0, -1, 7] = np.nan, np.inf
        got, want = module.run({"x": x})["y"], _expected(model, x)
        assert got.shape == want.shape == (1, rows, 40)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaN where onnxruntime has NaN (equal_nan)
        assert not np.isnan(got[0, :-1]).any()


def test_static_ragged_rows_match_onnxruntime(tmp_path):
    model = _dense_model(197)
    module = _compile(model, tmp_path / "dense197.so")
    x = np.random.default_rng(1).standard_normal((1, 197, 48)).astype(np.float32)
    x[0, 196, :] = -np.inf
    got, want = module.run({"x": x})["y"], _expected(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.isnan(got[0, :196]).any()
