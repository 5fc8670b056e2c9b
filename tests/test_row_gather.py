"""`sink-row-gathers` (rewrites/rules/row_gather.py): a Gather of constant rows moved above the ops that compute
each row from the same rows of their inputs. Positive: the outputs are onnxruntime's before and after, and the
ops then work on the gathered rows; negative: where an op mixes rows on the axis (a Softmax or LayerNorm over it,
a MatMul's columns, a causal attention, a Reshape that merges axes) or its output has another use, nothing moves."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.rewrites.rules.row_gather import RULES

from .conftest import run_ort

H = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _check(text, expect="SinkRowGather", **kw):
    from optc.rewrites.rules._testing import check_rewrite

    return check_rewrite(RULES, text, expect=expect, **kw)


def _shapes(model, op_type: str) -> list:
    return [tuple(n.outputs[0].type.shape) for n in model.graph if n.op_type == op_type]


def test_block_tail_computes_the_gathered_row_only():
    """A pre-norm block's feed-forward half and residual, then the class token: every op after the sink works on one
    row (the MatMuls, the Relu), the residual's two paths share one Gather, and the outputs are onnxruntime's."""
    model, res = _check(H + """
    g (float[2,5,8] x, float[8,16] w1, float[16] b1, float[16,8] w2, float[8] s, float[8] b) => (float[2,8] y) {
        n = LayerNormalization<axis = -1>(x, s, b)
        m1 = MatMul(n, w1)
        a1 = Add(m1, b1)
        g1 = Relu(a1)
        m2 = MatMul(g1, w2)
        r = Add(x, m2)
        c = Constant<value = int64 {0}>()
        y = Gather<axis = 1>(r, c)
    }""")
    assert res.counts.get("RowGatherOfScalarIndex") == 1
    assert _shapes(model, "MatMul") == [(2, 1, 16), (2, 1, 8)]
    assert sum(1 for n in model.graph if n.op_type == "Gather") == 1  # x's rows, once for both paths


def test_negative_index_and_broadcast_operands():
    """Index -1 (the last row); a [1, 6] operand that broadcasts along the gathered axis is taken whole, a [6]
    one lacks the axis: both keep their values."""
    model, _ = _check(H + """
    g (float[4,6] x, float[1,6] u, float[6] v) => (float[1,6] y) {
        a = Mul(x, u)
        b = Sub(a, v)
        i = Constant<value = int64[1] {-1}>()
        y = Gather<axis = 0>(b, i)
    }""")
    assert _shapes(model, "Mul") == [(1, 6)]


def test_transpose_and_unit_reshape_carry_the_axis():
    """Through a Transpose the Gather takes the input axis the output's came from; through a Reshape that only
    inserts a 1 the axis it carries, and the target gets the gathered length."""
    model, _ = _check(H + """
    g (float[3,5,4] x) => (float[2,1,4,3] y) {
        t = Transpose<perm = [1, 2, 0]>(x)
        e = Exp(t)
        s = Constant<value = int64[4] {5, 1, 4, 3}>()
        r = Reshape(e, s)
        i = Constant<value = int64[2] {4, 0}>()
        y = Gather<axis = 0>(r, i)
    }""")
    assert _shapes(model, "Exp") == [(2, 4, 3)]


def test_gemm_rows_and_its_row_bias():
    """Gemm's rows: A's and a [M, N] C's rows are gathered, B taken whole."""
    model, _ = _check(H + """
    g (float[6,4] a, float[4,3] b, float[6,3] c) => (float[2,3] y) {
        m = Gemm<alpha = 0.5, beta = 2.0>(a, b, c)
        i = Constant<value = int64[2] {1, 3}>()
        y = Gather<axis = 0>(m, i)
    }""")
    assert _shapes(model, "Gemm") == [(2, 3)]


_MIXING = {
    # a Softmax over the gathered axis mixes its rows
    "softmax": "float[2,4] y) { s = Softmax<axis = 1>(x)  y = Gather<axis = 1>(s, i) }",
    # a LayerNormalization over it too
    "layernorm": "float[2,4] y) { s = LayerNormalization<axis = 1>(x, w34, w34)  y = Gather<axis = 1>(s, i) }",
    # a MatMul's columns are not its rows
    "matmul columns": "float[2,3] y) { s = MatMul(x, q)  y = Gather<axis = 2>(s, i) }",
    # a Reshape that merges the axis with another
    "merging reshape": "float[4] y) { s = Reshape(x, shp)  y = Gather<axis = 0>(s, i) }",
    # the op's output has another use (all its rows): moving the Gather would compute the row twice
    "other use": "float[2,4] y) { s = Exp(x)  t = Gather<axis = 1>(s, i)  n = ReduceMax<axes = [1], keepdims = 0>(s)"
                 "  y = Add(t, n) }",
}


@pytest.mark.parametrize("case", sorted(_MIXING))
def test_ops_that_mix_rows_keep_the_gather(case):
    head, body = _MIXING[case].split(") {", 1)
    _check(H + f"""
    g (float[2,3,4] x, float[3,4] w34, float[4,4] q) => ({head}) {{
        i = Constant<value = int64 {{1}}>()
        shp = Constant<value = int64[2] {{6, 4}}>()
        {body.rstrip(" }")}
    }}""", expect=None)


def _attention_model(causal: int, mask: bool) -> onnx.ModelProto:
    """Attention (opset 23) on [1, 6, 8] q / k / v, 2 heads, then the first query row of its output."""
    nodes = [h.make_node("Attention", ["q", "k", "v", "m" if mask else ""], ["o"], q_num_heads=2, kv_num_heads=2,
                         is_causal=causal),
             h.make_node("Gather", ["o", "i"], ["y"], axis=1)]
    rng = np.random.default_rng(0)
    inits = [nh.from_array(np.array([0, 5], np.int64), "i")]
    if mask:
        inits.append(nh.from_array(rng.standard_normal([6, 6]).astype(np.float32), "m"))
    ins = [h.make_tensor_value_info(n, TensorProto.FLOAT, [1, 6, 8]) for n in "qkv"]
    graph = h.make_graph(nodes, "g", ins, [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize("mask", [False, True])
def test_attention_computes_the_gathered_query_rows(mask):
    """Attention's output rows come from the same rows of q (and of the mask): the Gather moves to q (and the
    mask's query axis); k and v stay whole. Values: the reference evaluator's before and after."""
    from onnx.reference import ReferenceEvaluator
    from optc import from_onnx
    from optc.ir.onnx_export import to_onnx
    from optc.rewrites.rules._testing import apply

    proto = _attention_model(0, mask)
    model = from_onnx(onnx.shape_inference.infer_shapes(proto))
    res = apply(RULES, model)
    assert res.counts.get("SinkRowGather") == 1
    att = next(n for n in model.graph if n.op_type == "Attention")
    assert tuple(att.inputs[0].type.shape) == (1, 2, 8)
    feeds = {n: np.random.default_rng(1).standard_normal([1, 6, 8]).astype(np.float32) for n in "qkv"}
    want = ReferenceEvaluator(proto).run(None, feeds)[0]
    np.testing.assert_allclose(ReferenceEvaluator(to_onnx(model)).run(None, feeds)[0], want, rtol=1e-6, atol=1e-6)


def test_causal_attention_keeps_the_gather():
    """Negative: a causal mask reads each query's position, which the Gather would change."""
    from optc import from_onnx
    from optc.rewrites.rules._testing import apply

    model = from_onnx(onnx.shape_inference.infer_shapes(_attention_model(1, False)))
    assert "SinkRowGather" not in apply(RULES, model).counts


def test_vit_like_classifier_compiles_to_the_same_outputs():
    """End to end through `optc.compile` (-O2 runs the set after the fusions): a two-block pre-norm encoder read at
    its first token gives onnxruntime's outputs."""
    rng = np.random.default_rng(3)
    d, s = 16, 7
    w = {f"w{i}": (rng.standard_normal([d, d]) * 0.3).astype(np.float32) for i in range(4)}
    nodes, x = [], "x"
    for blk in range(2):
        p = f"b{blk}_"
        nodes += [h.make_node("LayerNormalization", [x, "ones", "zeros"], [p + "n"], axis=-1),
                  h.make_node("MatMul", [p + "n", "w0"], [p + "q"]), h.make_node("MatMul", [p + "n", "w1"], [p + "k"]),
                  h.make_node("Transpose", [p + "k"], [p + "kt"], perm=[0, 2, 1]),
                  h.make_node("MatMul", [p + "q", p + "kt"], [p + "sc"]),
                  h.make_node("Softmax", [p + "sc"], [p + "pr"], axis=-1),
                  h.make_node("MatMul", [p + "pr", p + "n"], [p + "at"]),
                  h.make_node("MatMul", [p + "at", "w2"], [p + "o"]), h.make_node("Add", [x, p + "o"], [p + "r"]),
                  h.make_node("MatMul", [p + "r", "w3"], [p + "f"]), h.make_node("Relu", [p + "f"], [p + "g"]),
                  h.make_node("Add", [p + "r", p + "g"], [p + "y"])]
        x = p + "y"
    nodes.append(h.make_node("Gather", [x, "zero"], ["y"], axis=1))
    inits = [nh.from_array(v, k) for k, v in w.items()] + [
        nh.from_array(np.ones(d, np.float32), "ones"), nh.from_array(np.zeros(d, np.float32), "zeros"),
        nh.from_array(np.array(0, np.int64), "zero")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, s, d])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, d])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal([2, s, d]).astype(np.float32)
    np.testing.assert_allclose(optc.compile(model).run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5,
                               atol=1e-5)
    optimized = optc.optimize(model)
    assert [tuple(n.outputs[0].type.shape) for n in optimized.graph if n.op_type == "Relu"][-1] == (2, 1, d)


def test_computed_index_of_the_last_token():
    """GPT-2-like: each sequence's last unmasked token, `x[arange(b), mask.sum(-1) - 1]` at batch 1 (a Flatten,
    then a Gather of a computed index): the block before it computes that row only; the outputs are onnxruntime's
    (a mask of 4 of 6 tokens: the index a run-time value, 3)."""
    model, _ = _check(H + """
    g (float[1,6,8] x, int64[1,6] mask, float[8,8] w, float[8] s, float[8] b) => (float[1,8] y) {
        n = LayerNormalization<axis = -1>(x, s, b)
        m = MatMul(n, w)
        t = Tanh(m)
        r = Add(x, t)
        f = Flatten<axis = 2>(r)
        one = Constant<value = int64 {1}>()
        ax = Constant<value = int64[1] {1}>()
        c = ReduceSum<keepdims = 0>(mask, ax)
        i = Sub(c, one)
        y = Gather<axis = 0>(f, i)
    }""", feeds={**{k: np.random.default_rng(4).standard_normal(d).astype(np.float32)
                    for k, d in (("x", [1, 6, 8]), ("w", [8, 8]), ("s", [8]), ("b", [8]))},
                 "mask": np.array([[1, 1, 1, 1, 0, 0]], np.int64)})
    assert _shapes(model, "MatMul") == [(1, 1, 8)]


def test_a_computed_index_of_unknown_length_stops_at_a_reshape():
    """Negative: a reshape's new target needs the index's length; a computed index of symbolic length keeps the
    Gather below the Flatten (the Tanh above it is not reached)."""
    model, res = _check(H + """
    g (float[1,6,8] x, int64[n] i) => (float[n,8] y) {
        t = Tanh(x)
        f = Flatten<axis = 2>(t)
        y = Gather<axis = 0>(f, i)
    }""", expect=None, feeds={"x": np.random.default_rng(5).standard_normal([1, 6, 8]).astype(np.float32),
                              "i": np.array([5, 0, 2], np.int64)})


def test_an_empty_index_stops_at_a_reshape():
    """Negative: a Reshape target with the gathered length 0 would copy the input's dim there (allowzero 0): the
    rule refuses it (the rewrite's type check would catch this static case too)."""
    _check(H + """
    g (float[6,8] x) => (float[1,0,8] y) {
        t = Tanh(x)
        s = Constant<value = int64[3] {1, 6, 8}>()
        r = Reshape(t, s)
        i = Constant<value = int64[0] {}>()
        y = Gather<axis = 1>(r, i)
    }""", expect=None)


@pytest.mark.parametrize("scale", ["float[4,3]", "float[4,1]", "float[3]"])
def test_layer_norm_scale_that_varies_along_the_axis_is_gathered(scale):
    """A breaker's case: LayerNormalization's Scale and B need only broadcast to X, so a [4, 3] or [4, 1] Scale
    differs from row to row: it is gathered with X (the optimized model gave all four rows, or onnxruntime refused
    it); a [3] Scale is taken whole."""
    model, _ = _check(H + f"""
    g (float[4,3] x, {scale} s, float[3] b) => (float[1,3] y) {{
        n = LayerNormalization<axis = -1>(x, s, b)
        i = Constant<value = int64[1] {{1}}>()
        y = Gather<axis = 0>(n, i)
    }}""")
    assert _shapes(model, "LayerNormalization") == [(1, 3)]


def test_opset6_broadcast_keeps_the_gather():
    """Negative (a breaker's case): opset 6's Add(broadcast=1, axis=0) aligns B with A's axis 0, not on the right:
    not moved (no runtime here runs opset 6's Add, so only the rewrite is checked)."""
    from optc import from_onnx
    from optc.rewrites.rules._testing import apply, parse

    model = from_onnx(parse('<ir_version: 3, opset_import: ["" : 6]>' + """
    g (float[4,3] x, float[4] y) => (float[1,3] z) {
        a = Add<broadcast = 1, axis = 0>(x, y)
        i = Constant<value = int64[1] {1}>()
        z = Gather<axis = 0>(a, i)
    }""", infer=False))
    assert not {k for k in apply(RULES, model).counts if k not in ("dead-nodes", "folded")}
