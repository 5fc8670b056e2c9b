"""cse: identical nodes and initializers are merged; different ones, random ops and graph outputs are not."""

from __future__ import annotations

import numpy as np

from .test_passes_support import assert_same_outputs, check, op_types, parse, run_passes


def test_merges_identical_nodes_and_their_consumers():
    _, after, report = check("""
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      b = Relu(x)
      c = Sigmoid(a)
      d = Sigmoid(b)
      y = Add(c, d)
    }""", "cse")
    assert op_types(after) == ["Relu", "Sigmoid", "Add"]
    assert report.passes[0].counts == {"merge-node": 2}


def test_commutative_inputs_match_in_either_order_but_not_for_sub():
    _, after, _ = check("""
    g (float[2] x, float[2] z) => (float[2] y) {
      a = Add(x, z)
      b = Add(z, x)
      s = Sub(x, z)
      t = Sub(z, x)
      u = Mul(a, b)
      v = Mul(s, t)
      y = Add(u, v)
    }""", "cse")
    assert op_types(after) == ["Add", "Sub", "Sub", "Mul", "Mul", "Add"]


def test_different_attributes_are_not_merged():
    _, after, _ = check("""
    g (float[2,3] x) => (float[2,3] y) {
      a = Softmax<axis = 0>(x)
      b = Softmax<axis = 1>(x)
      c = Softmax<axis = 1>(x)
      d = Add(a, b)
      y = Add(d, c)
    }""", "cse")
    assert op_types(after) == ["Softmax", "Softmax", "Add", "Add"]


def test_random_ops_are_never_merged():
    after, _, _ = run_passes(parse("""
    g (float[2] x) => (float[2] y) {
      a = RandomNormalLike(x)
      b = RandomNormalLike(x)
      y = Add(a, b)
    }"""), "cse")
    assert op_types(after) == ["RandomNormalLike", "RandomNormalLike", "Add"]


def test_training_mode_dropouts_are_never_merged():
    """Two Dropouts in training mode draw independent masks."""
    after, _, _ = run_passes(parse("""
    g (float[4] x, bool t) => (float[4] y) <float r = {0.5}> {
      a = Dropout(x, r, t)
      b = Dropout(x, r, t)
      y = Add(a, b)
    }"""), "cse")
    assert op_types(after) == ["Dropout", "Dropout", "Add"]


def test_duplicate_whose_output_is_a_graph_output_is_kept():
    _, after, _ = check("""
    g (float[2] x) => (float[2] y, float[2] z) {
      y = Relu(x)
      z = Relu(x)
    }""", "cse")
    assert op_types(after) == ["Relu", "Relu"]


def test_merges_duplicate_initializers_by_content():
    _, after, report = check("""
    g (float[3] x) => (float[3] y) <float[3] a = {1.0, 2.0, 3.0}, float[3] b = {1.0, 2.0, 3.0},
                                    float[3] c = {1.0, 2.0, 4.0}, double[3] d = {1.0, 2.0, 3.0}> {
      p = Add(x, a)
      q = Add(x, b)
      r = Add(x, c)
      dd = Cast<to = 1>(d)
      s = Add(x, dd)
      pq = Mul(p, q)
      rs = Mul(r, s)
      y = Add(pq, rs)
    }""", "cse,dce")
    # a and b merge, then the two Add(x, a) merge; c differs in content, d in type
    assert sorted(t.name for t in after.graph.initializer) == ["a", "c", "d"]
    assert op_types(after).count("Add") == 4
    assert report.passes[0].counts == {"merge-initializer": 1, "merge-node": 1}


def test_identical_constant_nodes_merge():
    _, after, _ = check("""
    g (float[2] x) => (float[2] y) {
      a = Constant<value = float[2] {1.0, 2.0}>()
      b = Constant<value = float[2] {1.0, 2.0}>()
      c = Constant<value = float[2] {1.0, 3.0}>()
      p = Add(x, a)
      q = Mul(p, b)
      y = Sub(q, c)
    }""", "cse")
    assert op_types(after) == ["Constant", "Constant", "Add", "Mul", "Sub"]


def test_cse_inside_if_branch():
    before = parse("""
    g (bool b, float[2] x) => (float[2] y) {
      y = If(b) <
        then_branch = t () => (float[2] ty) { p = Exp(x)  q = Exp(x)  ty = Add(p, q) },
        else_branch = e () => (float[2] ey) { ey = Abs(x) }
      >
    }""")
    after, _, _ = run_passes(before, "cse")
    assert [n.op_type for n in after.graph.node[0].attribute[0].g.node] == ["Exp", "Add"]
    for b in (True, False):
        assert_same_outputs(before, after, {"b": np.array(b), "x": np.array([0.5, -1.0], np.float32)})


def test_nodes_with_subgraphs_are_left_alone():
    before = parse("""
    g (bool b, float[2] x) => (float[2] y) {
      i1 = If(b) < then_branch = t () => (float[2] o) { o = Abs(x) }, else_branch = e () => (float[2] o2) { o2 = Neg(x) } >
      i2 = If(b) < then_branch = t2 () => (float[2] o3) { o3 = Abs(x) }, else_branch = e2 () => (float[2] o4) { o4 = Neg(x) } >
      y = Add(i1, i2)
    }""")
    after, _, _ = run_passes(before, "cse")
    assert op_types(after) == ["If", "If", "Add"]


def test_max_min_keep_their_input_order():
    # onnxruntime's Max/Min return their second input on a -0.0 / +0.0 tie: Max(x, z) and Max(z, x) differ
    from optc.rewrites.rules._testing import assert_same_bits

    from .conftest import run_ort

    before, after, _ = check("""
    g (float[2] x, float[2] z) => (float[2] y, float[2] y2) <float one = {1.0}> {
      a = Max(x, z)
      b = Max(z, x)
      y = Div(one, a)
      y2 = Div(one, b)
    }""", "cse")
    assert op_types(after) == ["Max", "Max", "Div", "Div"]
    feeds = {"x": np.array([-0.0, 0.0], np.float32), "z": np.array([0.0, -0.0], np.float32)}
    for a, e in zip(run_ort(after, feeds), run_ort(before, feeds), strict=True):
        assert_same_bits(a, e)


def test_sum_of_three_keeps_its_order():
    # (a + b) + c and (c + b) + a round differently
    _, after, _ = check("""
    g (float[2] a, float[2] b, float[2] c) => (float[2] y) {
      s = Sum(a, b, c)
      t = Sum(c, b, a)
      y = Sub(s, t)
    }""", "cse")
    assert op_types(after) == ["Sum", "Sum", "Sub"]


def test_float_attributes_compare_signed_zeros():
    # LeakyRelu(x, alpha = 0.0) gives -0.0 for negative x, alpha = -0.0 gives +0.0: not the same node
    _, after, _ = check("""
    g (float[2] x) => (float[2] y) {
      a = LeakyRelu<alpha = 0.0>(x)
      b = LeakyRelu<alpha = -0.0>(x)
      c = LeakyRelu<alpha = 0.0>(x)
      d = Div(a, b)
      y = Add(d, c)
    }""", "cse")
    assert op_types(after) == ["LeakyRelu", "LeakyRelu", "Div", "Add"]
