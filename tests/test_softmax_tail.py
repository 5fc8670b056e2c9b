"""The exponentials of a softmax over rows that are no whole vectors (ViT's 197 tokens) all run in vectors
(`codegen/softmax.py`): the row's tail is exponentiated as the row's last whole vector, not element by element.
The tests read the scheduled kernel (every fast_exp block under a vectorized loop) and compare values with
onnxruntime and with TVM's own softmax (libm's exp, no fast math); they never time anything."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto
from onnx import helper as h
from tvm import s_tir

from .conftest import run_ort


def _softmax(shape: list[int]) -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _scheduled_softmax(model: onnx.ModelProto):
    from optc.codegen.build import fuse, prepare, schedule_passes
    from optc.codegen.targets import resolve_target
    from optc.ir import from_onnx
    from optc.lowering import lower

    target = resolve_target("cpu")
    mod = fuse(prepare(lower(from_onnx(model)), None, target), target)
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    [func] = [f for gv, f in mod.functions_items() if "softmax" in gv.name_hint and hasattr(f, "body")]
    return func


def _exp_blocks(func) -> tuple[set[str], set[str]]:
    """(names of the fast_exp blocks, names of those under a vectorized loop)."""
    every: set[str] = set()
    vectorized: set[str] = set()

    def block(node) -> None:
        if node.name_hint.startswith("T_fast_exp"):
            every.add(node.name_hint)

    def loop(node) -> None:
        if node.kind == tvm.tirx.ForKind.VECTORIZED:
            inner: set[str] = set()
            tvm_ffi.structural_walk(node.body, (s_tir.SBlock, lambda b: inner.add(b.name_hint)), order="post")
            vectorized.update(n for n in inner if n.startswith("T_fast_exp"))

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, block), order="post")
    tvm_ffi.structural_walk(func.body, (tvm.tirx.For, loop), order="post")
    return every, vectorized


@pytest.mark.parametrize("shape", [[1, 3, 197, 197], [2, 37], [4, 17], [5, 31]])
def test_ragged_row_exponentials_are_vectors(shape):
    every, vectorized = _exp_blocks(_scheduled_softmax(_softmax(shape)))
    assert len(every) >= 2 and every == vectorized, (every, vectorized)


@pytest.mark.parametrize("shape", [[1, 3, 197, 197], [2, 37], [4, 17], [5, 31], [0, 33]])
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
