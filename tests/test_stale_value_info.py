"""A model whose `value_info` contradicts its own graph (a stale annotation, left by a tool that edited the graph)
is optimized on the graph's own types: the attention below splits 8 heads of 4 while its value_info says 4 heads of
8; onnxruntime runs the model on the graph's shapes, and optc fused the attention with 4 heads (wrong values, exit
0) before the stale declarations were dropped (a breaker's find, 2026-12-05)."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.rewrites.passes.infer_shapes import _stale_declarations

from .conftest import run_ort

B, S, D = 2, 8, 32


def _attention(declared_dims: list) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {n: (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32) for n in ("wq", "wk", "wv")}
    inits = [nh.from_array(v, k) for k, v in weights.items()] + [
        nh.from_array(np.array([B, S, 8, 4], np.int64), "s4"), nh.from_array(np.array([B, S, D], np.int64), "s3"),
        nh.from_array(np.array(2.0, np.float32), "scale")]
    n = h.make_node
    nodes = [n("MatMul", ["x", "wq"], ["q_in"]), n("MatMul", ["x", "wk"], ["k_in"]), n("MatMul", ["x", "wv"], ["v_in"]),
             n("Reshape", ["q_in", "s4"], ["q4"]), n("Transpose", ["q4"], ["q"], perm=[0, 2, 1, 3]),
             n("Reshape", ["k_in", "s4"], ["k4"]), n("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
             n("Reshape", ["v_in", "s4"], ["v4"]), n("Transpose", ["v4"], ["v"], perm=[0, 2, 1, 3]),
             n("MatMul", ["q", "kt"], ["s0"]), n("Div", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["p"], axis=-1),
             n("MatMul", ["p", "v"], ["o"]), n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             n("Reshape", ["ot", "s3"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, D])], inits,
                     value_info=[h.make_tensor_value_info(v, TensorProto.FLOAT, declared_dims) for v in ("q4", "k4", "v4")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime", None])
def test_stale_head_split_types_give_way_to_the_graphs(runtime):
    model = _attention([B, S, 4, 8])
    optimized = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=3, runtime=runtime))
    if runtime is not None:
        assert "Softmax" not in [node.op_type for node in optimized.graph.node]  # still fused, with 8 heads
    x = np.random.default_rng(1).standard_normal((B, S, D)).astype(np.float32)
    np.testing.assert_allclose(run_ort(optimized, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_only_contradicting_declarations_are_stale():
    """Negative: declarations that agree with the graph, or name dims it leaves open, are kept."""
    assert _stale_declarations(_attention([B, S, 4, 8])) == {"q4", "k4", "v4"}
    assert _stale_declarations(_attention([B, S, 8, 4])) == set()
    assert _stale_declarations(_attention(["batch", "seq", 8, 4])) == set()
    assert _stale_declarations(_attention([B, S, 8])) == {"q4", "k4", "v4"}  # rank
