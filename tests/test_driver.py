"""The worklist driver (rewrites/driver.py): budget and records, dead nodes, folder hook, bodies, caps, cost."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from optc.ir import from_onnx, to_onnx
from optc.ir.core import Model
from optc.ir.schema import Trait
from optc.ir.verify import verify
from optc.rewrites.context import PassContext, RewriteBudget
from optc.rewrites.driver import apply_rules
from optc.rewrites.rule import Rule
from optc.rewrites.rules import RULE_SETS
from optc.rewrites.rules._testing import check_rewrite, count_ops, parse, random_feeds, run_ort
from optc.rewrites.rules.canonicalize import IdempotentUnary
from optc.rewrites.rules.noops import IdentityNoop, MulOne

H = '<ir_version: 8, opset_import: ["" : 17]>\n'


def load(text: str) -> Model:
    return from_onnx(parse(text))


def chain(n: int) -> str:
    body = "  ".join(f"t{i + 1} = Identity(t{i})" for i in range(n))
    return H + f"g (float[2] t0) => (float[2] y) {{ {body}  y = Relu(t{n}) }}"


def test_budget_limits_and_records():
    model = load(chain(5))
    ctx = PassContext(budget=RewriteBudget(limit=2))
    res = apply_rules(model, [IdentityNoop], ctx, "eliminate-noops")
    assert res.counts["IdentityNoop"] == 2 and count_ops(model)["Identity"] == 3
    assert not res.converged and res.changed
    assert [(r.pass_name, r.rule) for r in ctx.records] == [("eliminate-noops", "IdentityNoop")] * 2
    assert [r.index for r in ctx.records] == [1, 2]
    verify(model)
    # a fresh budget finishes the job
    res = apply_rules(model, [IdentityNoop], PassContext(), "eliminate-noops")
    assert res.converged and count_ops(model) == {"Relu": 1}


def test_deterministic_order():
    def run():
        model = load(chain(30))
        ctx = PassContext()
        apply_rules(model, RULE_SETS["eliminate-noops"], ctx, "p")
        return [(r.rule, r.node) for r in ctx.records]

    assert run() == run()


def test_requeue_after_change_converges_in_one_sweep():
    model = load(H + "g (float[2] x) => (float[2] y) { a = Relu(x)  b = Identity(a)  c = Relu(b)  d = Identity(c)  y = Relu(d) }")
    res = apply_rules(model, [IdentityNoop, IdempotentUnary], PassContext(), "p")
    assert count_ops(model) == {"Relu": 1}
    assert res.converged and res.iterations == 2  # the second sweep only proves the fixed point


def test_dead_nodes_are_erased_but_not_side_effects_or_unknown_ops(monkeypatch):
    text = ('<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>\n'
            'g (float[2] x) => (float[2] y) {'
            '  dead = Relu(x)  rnd = RandomNormal<shape = [2]>()  custom = com.example.Foo(x)  sig = Sigmoid(x)'
            '  y = Neg(x) }')
    model = from_onnx(parse(text, infer=False))
    from optc.ir import schema

    monkeypatch.setitem(schema._TRAITS, ("", "Sigmoid"), Trait.SIDE_EFFECTS)
    res = apply_rules(model, [], PassContext(), "p")
    assert count_ops(model) == {"Foo": 1, "Sigmoid": 1, "Neg": 1}
    assert res.counts == {"dead-nodes": 2}


def test_folder_runs_first_and_users_are_requeued():
    # x * Neg(-1): the folder turns Neg(const) into an initializer 1.0, then MulOne fires on the requeued Mul
    model = load(H + """
    g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {-1.0}>()  n = Neg(c)  m = Mul(x, n)  y = Relu(m) }""")
    seen = []

    def folder(node, rw):
        seen.append(node.op_type)
        if node.op_type != "Neg":
            return False
        arr = node.inputs[0].const_value()
        if arr is None:
            return False
        v = rw.add_initializer(-arr, hint="folded")
        rw.replace_all_uses_with(node.outputs[0], v)
        rw.erase(node)
        return True

    res = apply_rules(model, [MulOne], PassContext(), "p", folder=folder)
    assert res.counts.get("MulOne") == 1 and res.counts.get("folded") == 1
    assert count_ops(model) == {"Relu": 1}
    assert "Neg" in seen
    verify(model)


def test_one_argument_folder():
    model = load(chain(2))
    calls = []
    apply_rules(model, [], PassContext(), "p", folder=lambda n: calls.append(n.op_type) or False)
    assert calls and set(calls) <= {"Identity", "Relu"}


def test_recurses_into_if_bodies_and_functions():
    text = H + """
    g (float[2] x, bool c) => (float[2] y) {
      y = If(c) <
        then_branch = then_g () => (float[2] r) { t = Identity(x)  r = Relu(t) },
        else_branch = else_g () => (float[2] r2) { t2 = Identity(x)  r2 = Neg(t2) }
      >
    }"""
    model = load(text)
    res = apply_rules(model, [IdentityNoop], PassContext(), "p")
    assert res.counts["IdentityNoop"] == 2 and "Identity" not in count_ops(model)
    verify(model)
    out = to_onnx(model)
    onnx.checker.check_model(out, full_check=True)
    for cond in (True, False):
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)}
        np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(parse(text), feeds)[0])


def test_recurses_into_function_bodies():
    fn = oh.make_function("local", "F", ["a"], ["b"], [oh.make_node("Identity", ["a"], ["t"]),
                                                       oh.make_node("Relu", ["t"], ["b"])],
                          [oh.make_opsetid("", 17)])
    graph = oh.make_graph([oh.make_node("F", ["x"], ["y"], domain="local")], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("local", 1)], functions=[fn],
                          ir_version=8)
    model = from_onnx(proto)
    res = apply_rules(model, [IdentityNoop], PassContext(), "p")
    assert res.counts == {"IdentityNoop": 1}
    out = to_onnx(model)
    assert [n.op_type for n in out.functions[0].node] == ["Relu"]
    feeds = {"x": np.array([-1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(proto, feeds)[0])


def test_rewrite_cap():
    model = load(chain(10))
    res = apply_rules(model, [IdentityNoop], PassContext(), "p", max_rewrites=3)
    assert res.counts["IdentityNoop"] == 3 and not res.converged and res.changed


class Ping(Rule):
    """Rewrites Neg into Neg forever (a badly written rule): the caps stop it."""

    def pattern(self, op, x):
        return op.Neg(x)

    def rewrite(self, op, m, x):
        return op.Neg(x)


def test_iteration_cap_and_runaway_rules():
    model = load(H + "g (float[2] x) => (float[2] y) { t = Neg(x)  y = Relu(t) }")
    res = apply_rules(model, [Ping], PassContext(), "p", max_rewrites=50)
    assert res.counts["Ping"] == 50 and not res.converged
    verify(model)


def test_benefit_orders_rules():
    class Low(Rule):
        benefit = 1

        def pattern(self, op, x):
            return op.Identity(x)

        def rewrite(self, op, m, x):
            return x

    class High(Low):
        benefit = 5

    model = load(chain(1))
    res = apply_rules(model, [Low, High], PassContext(), "p")
    assert res.counts == {"High": 1}


def test_trace_lists_failures():
    model = load(H + "g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {2.0}>()  y = Mul(x, c) }")
    res = apply_rules(model, [MulOne], PassContext(trace=True), "p")
    assert not res.changed and any("is not 1" in t for t in res.trace)


def _big_model(n: int) -> Model:
    """n nodes: repeated blocks with something for every eliminate-noops / canonicalize rule family to try."""
    nodes = []
    inits = [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    prev = "x"
    i = 0
    while len(nodes) < n:
        a, b, c, d = (f"v{i}_{k}" for k in range(4))
        nodes += [oh.make_node("Identity", [prev], [a]), oh.make_node("Mul", [a, "one"], [b]),
                  oh.make_node("Mul", [b, "two"], [c]), oh.make_node("Relu", [c], [d])]
        prev = d
        i += 1
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [4])], inits)
    proto = onnx.shape_inference.infer_shapes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)],
                                                            ir_version=8))
    return from_onnx(proto)


def test_cost_is_linear(report):
    rules = RULE_SETS["eliminate-noops"] + RULE_SETS["canonicalize"]
    lines = []
    per_node = {}
    for n in (2000, 20000):
        model = _big_model(n)
        nodes = len(model.graph)
        t0 = time.perf_counter()
        res = apply_rules(model, rules, PassContext(), "p")
        dt = time.perf_counter() - t0
        assert res.converged
        assert count_ops(model) == {"Mul": nodes // 4, "Relu": nodes // 4}
        # O(nodes): a bounded number of visits and match attempts per node, independent of the size
        assert res.visits <= 4 * nodes and res.attempts <= 4 * nodes
        per_node[n] = (res.visits / nodes, res.attempts / nodes)
        lines.append(f"{nodes:>6} nodes: {dt * 1e3:8.1f} ms, {dt / nodes * 1e6:6.1f} us/node, "
                     f"{res.visits} visits, {res.attempts} match attempts, {res.rewrites} rewrites")
    assert per_node[2000] == pytest.approx(per_node[20000], rel=0.05)
    report("rewrite driver scaling (eliminate-noops + canonicalize)", lines)


def test_whole_rule_sets_preserve_numerics_on_a_mixed_model():
    text = H + """
    g (float[2,3,4] x) => (float[2,3,4] y) {
      a = Identity(x)
      one = Constant<value = float {1.0}>()
      b = Mul(a, one)
      p = Transpose<perm = [0, 2, 1]>(b)
      q = Transpose<perm = [0, 2, 1]>(p)
      s1 = Constant<value = int64[2] {6, 4}>()
      r = Reshape(q, s1)
      s2 = Constant<value = int64[3] {2, 3, 4}>()
      u = Reshape(r, s2)
      lo = Constant<value = float {-0.5}>()
      hi = Constant<value = float {0.5}>()
      v = Max(u, lo)
      w = Min(v, hi)
      y = Relu(w)
    }"""
    rules = RULE_SETS["eliminate-noops"] + RULE_SETS["canonicalize"]
    model, res = check_rewrite(rules, text, expect="IdentityNoop")
    assert count_ops(model) == {"Clip": 1, "Relu": 1}
    assert random_feeds(parse(text))
