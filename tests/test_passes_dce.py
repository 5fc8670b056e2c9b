"""dce: dead nodes, unused initializers and functions; side-effecting ops and interfaces are kept."""

from __future__ import annotations

import numpy as np
from optc.ir import schema

from .test_passes_support import assert_same_outputs, check, op_types, parse, run_passes


def test_removes_dead_chain_and_unused_initializers():
    _, after, report = check("""
    g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}, float[2] unused = {3.0, 4.0}> {
      d1 = Mul(x, w)
      d2 = Relu(d1)
      d3 = Sigmoid(d2)
      y = Relu(x)
    }""", "dce")
    assert op_types(after) == ["Relu"]
    assert [t.name for t in after.graph.initializer] == []
    assert report.passes[0].counts == {"erase-node": 3, "erase-initializer": 2}


def test_keeps_graph_outputs_inputs_and_overridable_initializers():
    before = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] c, float[2] unused_in) => (float[2] y, float[2] k) <float[2] c = {1.0, 2.0}> {
      k = Relu(x)
      y = Add(x, x)
    }""")
    after, report, _ = run_passes(before, "dce")
    assert op_types(after) == ["Relu", "Add"]
    assert [t.name for t in after.graph.initializer] == ["c"]
    assert [i.name for i in after.graph.input] == ["x", "c", "unused_in"]
    assert report.result.changed is False


def test_keeps_side_effecting_ops(monkeypatch):
    monkeypatch.setitem(schema._TRAITS, ("test.effects", "Print"), schema.Trait.SIDE_EFFECTS)
    before = parse("""
    <ir_version: 10, opset_import: ["" : 21, "test.effects" : 1]>
    g (float[2] x) => (float[2] y) {
      p = test.effects.Print(x)
      q = test.effects.Other(x)
      y = Relu(x)
    }""", header="")
    after, _, _ = run_passes(before, "dce")
    assert op_types(after) == ["Print", "Other", "Relu"]  # unknown custom ops are kept by default
    after, _, _ = run_passes(before, "dce{keep-unknown=false}")
    assert op_types(after) == ["Print", "Relu"]


def test_dead_nodes_in_if_branches_and_outer_values_they_kept_alive():
    before = parse("""
    g (bool b, float[2] x) => (float[2] y) {
      outer_dead = Exp(x)
      outer_live = Neg(x)
      y = If(b) <
        then_branch = t () => (float[2] ty) { unused = Sin(outer_dead)  ty = Relu(outer_live) },
        else_branch = e () => (float[2] ey) { ey = Abs(x) }
      >
    }""")
    after, report, _ = run_passes(before, "dce")
    assert op_types(after) == ["Neg", "If"]
    assert [n.op_type for n in after.graph.node[1].attribute[0].g.node] == ["Relu"]
    for b in (True, False):
        assert_same_outputs(before, after, {"b": np.array(b), "x": np.array([3.0, -4.0], np.float32)})


def test_removes_unused_functions_keeps_called_ones_transitively():
    before = parse("""
    <ir_version: 10, opset_import: ["" : 21, "local" : 1]>
    g (float[2] x) => (float[2] y) { y = local.Outer(x) }
    <domain: "local", opset_import: ["" : 21, "local" : 1]>
    Outer (a) => (b) { b = local.Inner(a) }
    <domain: "local", opset_import: ["" : 21]>
    Inner (a) => (b) { b = Relu(a) }
    <domain: "local", opset_import: ["" : 21]>
    Unused (a) => (b) { b = Neg(a) }
    """, header="")
    after, report, _ = run_passes(before, "dce")
    assert sorted(f.name for f in after.functions) == ["Inner", "Outer"]
    assert report.passes[0].counts == {"erase-function": 1}
    assert_same_outputs(before, after)


def test_dead_nodes_inside_functions():
    before = parse("""
    <ir_version: 10, opset_import: ["" : 21, "local" : 1]>
    g (float[2] x) => (float[2] y) { y = local.F(x) }
    <domain: "local", opset_import: ["" : 21]>
    F (a) => (b) { dead = Exp(a)  b = Relu(a) }
    """, header="")
    after, _, _ = run_passes(before, "dce")
    assert [n.op_type for n in after.functions[0].node] == ["Relu"]


def test_nothing_dead_means_no_change():
    _, after, report = check("""
    g (float[2] x) => (float[2] y) { a = Relu(x)  y = Neg(a) }""", "dce")
    assert report.result.changed is False and op_types(after) == ["Relu", "Neg"]
