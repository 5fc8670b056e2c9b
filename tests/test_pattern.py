"""The pattern language and the automatic safety checks of rules (rewrites/pattern.py, rewrites/rule.py)."""

from __future__ import annotations

import numpy as np
import pytest
from optc.ir import from_onnx
from optc.ir.rewriter import RewriteError, Rewriter
from optc.ir.verify import verify
from optc.rewrites.context import PassContext
from optc.rewrites.pattern import ANY, AttrVar, Const, Optional, Or, require
from optc.rewrites.rule import Rule, explain
from optc.rewrites.rules._testing import apply, check_rewrite, count_ops, parse

H = '<ir_version: 8, opset_import: ["" : 17]>\n'


def load(text: str):
    return from_onnx(parse(text))


def node(model, op_type):
    return next(n for n in model.graph if n.op_type == op_type)


# -- rules used by the tests --------------------------------------------------------------------------------


class MatMulAddToGemm(Rule):
    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b), c)

    def check(self, m, a, b, c):
        return require(a.rank == 2 and b.rank == 2, "Gemm needs rank-2 A and B")

    def rewrite(self, op, m, a, b, c):
        return op.Gemm(a, b, c)


class SquareToPow(Rule):
    """DAG: the same value twice."""

    def pattern(self, op, x):
        return op.Mul(x, x)

    def rewrite(self, op, m, x):
        return op.Pow(x, op.const(np.array(2.0, np.float32)))


class SigmoidMulToSwishLike(Rule):
    """DAG through a node: Mul(s, s) with s = Sigmoid(x), i.e. the inner node is reached twice."""

    def pattern(self, op, x):
        s = op.Sigmoid(x)
        return op.Mul(s, s)

    def rewrite(self, op, m, x):
        s = op.Sigmoid(x)
        return op.Pow(s, op.const(np.array(2.0, np.float32)))


class ScaleByTwo(Rule):
    """A constant with a predicate."""

    def pattern(self, op, x, c):
        return op.Mul(x, Const(pred=lambda a: a.size == 1 and float(a.reshape(-1)[0]) == 2.0, name="c"))

    def rewrite(self, op, m, x, c):
        return op.Add(x, x)


class LeakyAlpha(Rule):
    """Attribute constraints: a predicate and a capture."""

    def pattern(self, op, x, alpha):
        return op.LeakyRelu(x, alpha=alpha)

    def check(self, m, x, alpha):
        return require(alpha == 0.0, f"alpha is {alpha}")

    def rewrite(self, op, m, x, alpha):
        return op.Relu(x)


class SoftmaxLastAxis(Rule):
    """A literal attribute constraint (the schema default counts: Softmax's axis defaults to -1)."""

    def pattern(self, op, x):
        return op.Softmax(x, axis=-1)

    def check(self, m, x):
        return require(x.rank == 2, "rank is not 2")

    def rewrite(self, op, m, x):
        return op.Softmax(x, axis=1)


class ClipNoBounds(Rule):
    """Optional inputs: Clip(x) or Clip(x, lo) with lo absent."""

    def pattern(self, op, x, lo, hi):
        return op.Clip(x, Optional(lo), Optional(hi))

    def check(self, m, x, lo, hi):
        return require(lo is None and hi is None, "bounds given")

    def rewrite(self, op, m, x, lo, hi):
        return op.Identity(x)


class ReluOrSigmoidThenNeg(Rule):
    """Alternatives inside a pattern."""

    def pattern(self, op, x):
        return op.Neg(Or(op.Relu(x), op.Sigmoid(x)))

    def rewrite(self, op, m, x):
        return op.Neg(op.Tanh(x))


class SplitConcat(Rule):
    """A multi-output op inside a DAG pattern: Concat(Split(x)) along the same axis -> x."""

    def pattern(self, op, x):
        a, b = op.Split(x, axis=1, num_outputs=2, _outputs=2)
        return op.Concat(a, b, axis=1)

    def rewrite(self, op, m, x):
        return op.Identity(x)


class SwapSplit(Rule):
    """A multi-output root: both outputs of Split are replaced."""

    def pattern(self, op, x):
        return op.Split(x, axis=1, num_outputs=2, _outputs=2)

    def rewrite(self, op, m, x):
        axes = op.const(np.array([1], np.int64))
        a = op.Slice(x, op.const(np.array([0], np.int64)), op.const(np.array([2], np.int64)), axes)
        b = op.Slice(x, op.const(np.array([2], np.int64)), op.const(np.array([4], np.int64)), axes)
        return a, b


class WrongType(Rule):
    def pattern(self, op, x):
        return op.Relu(x)

    def rewrite(self, op, m, x):
        return op.Cast(x, to=11)


class CustomDomainRule(Rule):
    domain = "com.example"
    min_opset = 2

    def pattern(self, op, x):
        return op.Foo(x, _domain="com.example")

    def rewrite(self, op, m, x):
        return op.Bar(x, _domain="com.example")


class OldOpsetOnly(Rule):
    max_opset = 12

    def pattern(self, op, x):
        return op.Relu(x)

    def rewrite(self, op, m, x):
        return op.Abs(x)


# -- tests ----------------------------------------------------------------------------------------------------


def test_design_example_and_commutativity():
    for add in ("Add(t, c)", "Add(c, t)"):
        check_rewrite(MatMulAddToGemm, H + f"""
        g (float[3,4] a, float[4,5] b, float[5] c) => (float[3,5] y) {{ t = MatMul(a, b)  y = {add} }}""",
                      expect="MatMulAddToGemm", gone=["Add", "MatMul"])


def test_require_reason_in_explain():
    model = load(H + """
    g (float[2,3,4] a, float[4,5] b, float[5] c) => (float[2,3,5] y) { t = MatMul(a, b)  y = Add(t, c) }""")
    text = explain(MatMulAddToGemm, node(model, "Add"), model)
    assert "Gemm needs rank-2 A and B" in text and "MatMul" in text and "a=%a" in text


def test_explain_best_partial_match():
    model = load(H + "g (float[3,4] a, float[5] c) => (float[3,4] y) { t = Relu(a)  y = Add(t, a) }")
    text = explain(MatMulAddToGemm, node(model, "Add"), model)
    assert "did not match" in text and "expected MatMul, found Relu" in text


def test_explain_matches():
    model = load(H + "g (float[3,4] a, float[4,5] b, float[5] c) => (float[3,5] y) { t = MatMul(a, b)  y = Add(t, c) }")
    assert "matches" in explain(MatMulAddToGemm, node(model, "Add"), model)
    verify(model)  # explain leaves nothing behind


def test_dag_same_value_twice():
    check_rewrite(SquareToPow, H + "g (float[2,3] x) => (float[2,3] y) { y = Mul(x, x) }", expect="SquareToPow")
    check_rewrite(SquareToPow, H + "g (float[2,3] x, float[2,3] z) => (float[2,3] y) { y = Mul(x, z) }", expect=None)


def test_dag_shared_node():
    check_rewrite(SigmoidMulToSwishLike, H + """
    g (float[2,3] x) => (float[2,3] y) { s = Sigmoid(x)  y = Mul(s, s) }""", expect="SigmoidMulToSwishLike")
    check_rewrite(SigmoidMulToSwishLike, H + """
    g (float[2,3] x) => (float[2,3] y) { s = Sigmoid(x)  s2 = Sigmoid(x)  y = Mul(s, s2) }""", expect=None)


@pytest.mark.parametrize("const", [
    "c = Constant<value = float {2.0}>()",  # a Constant node
    None,  # an initializer
])
def test_constant_pattern_matches_constant_nodes_and_initializers(const):
    if const:
        text = H + f"g (float[2,3] x) => (float[2,3] y) {{ {const}  y = Mul(x, c) }}"
    else:
        text = H + "g (float[2,3] x) => (float[2,3] y) <float c = {2.0}> { y = Mul(x, c) }"
    check_rewrite(ScaleByTwo, text, expect="ScaleByTwo", gone=["Mul"])


def test_constant_pattern_negative():
    check_rewrite(ScaleByTwo, H + "g (float[2,3] x) => (float[2,3] y) <float c = {3.0}> { y = Mul(x, c) }",
                  expect=None)
    # an initializer that is also a graph input can be overridden at run time: not a constant
    text = H + "g (float[2,3] x, float c) => (float[2,3] y) <float c = {2.0}> { y = Mul(x, c) }"
    model = load(text)
    res = apply([ScaleByTwo], model)
    assert "ScaleByTwo" not in res.counts


def test_attribute_capture_and_default():
    check_rewrite(LeakyAlpha, H + "g (float[2,3] x) => (float[2,3] y) { y = LeakyRelu<alpha = 0.0>(x) }",
                  expect="LeakyAlpha")
    model = load(H + "g (float[2,3] x) => (float[2,3] y) { y = LeakyRelu(x) }")  # default alpha = 0.01
    text = explain(LeakyAlpha, node(model, "LeakyRelu"), model)
    assert "alpha is 0.00999" in text


def test_attribute_literal():
    check_rewrite(SoftmaxLastAxis, H + "g (float[2,3] x) => (float[2,3] y) { y = Softmax(x) }", expect="SoftmaxLastAxis")
    check_rewrite(SoftmaxLastAxis, H + "g (float[2,3] x) => (float[2,3] y) { y = Softmax<axis = -1>(x) }",
                  expect="SoftmaxLastAxis")
    model = load(H + "g (float[2,3] x) => (float[2,3] y) { y = Softmax<axis = 0>(x) }")
    assert "axis=0, the pattern wants -1" in explain(SoftmaxLastAxis, node(model, "Softmax"), model)


def test_attr_var_capture():
    class R(Rule):
        def pattern(self, op, x):
            return op.Softmax(x, axis=AttrVar("ax"))

        def check(self, m, x):
            return m["ax"] == -1

        def rewrite(self, op, m, x):
            return op.Softmax(x, axis=1)

    check_rewrite(R, H + "g (float[2,3] x) => (float[2,3] y) { y = Softmax(x) }", expect="R")


def test_optional_inputs():
    check_rewrite(ClipNoBounds, H + "g (float[2,3] x) => (float[2,3] y) { y = Clip(x) }", expect="ClipNoBounds")
    check_rewrite(ClipNoBounds, H + """
    g (float[2,3] x) => (float[2,3] y) { lo = Constant<value = float {0.0}>()  y = Clip(x, lo) }""", expect=None)


def test_alternatives():
    for inner in ("Relu", "Sigmoid"):
        check_rewrite(ReluOrSigmoidThenNeg, H + f"g (float[2,3] x) => (float[2,3] y) {{ t = {inner}(x)  y = Neg(t) }}",
                      expect="ReluOrSigmoidThenNeg", gone=[inner], rtol=10, atol=10)
    check_rewrite(ReluOrSigmoidThenNeg, H + "g (float[2,3] x) => (float[2,3] y) { t = Tanh(x)  y = Neg(t) }",
                  expect=None)


def test_multi_output_inside_pattern():
    h18 = '<ir_version: 8, opset_import: ["" : 18]>\n'
    check_rewrite(SplitConcat, h18 + """
    g (float[2,4] x) => (float[2,4] y) { a, b = Split<axis = 1, num_outputs = 2>(x)  y = Concat<axis = 1>(a, b) }""",
                  expect="SplitConcat", gone=["Split", "Concat"])
    check_rewrite(SplitConcat, h18 + """
    g (float[2,4] x) => (float[2,4] y) { a, b = Split<axis = 1, num_outputs = 2>(x)  y = Concat<axis = 1>(b, a) }""",
                  expect=None)


def test_multi_output_root():
    h18 = '<ir_version: 8, opset_import: ["" : 18]>\n'
    model, _ = check_rewrite(SwapSplit, h18 + """
    g (float[2,4] x) => (float[2,2] y, float[2,2] z) { a, b = Split<axis = 1, num_outputs = 2>(x)  y = Neg(a)  z = Neg(b) }""",
                             expect="SwapSplit", gone=["Split"])
    assert count_ops(model)["Slice"] == 2


def test_type_change_is_rejected():
    model = load(H + "g (float[2,3] x) => (float[2,3] y) { t = Relu(x)  y = Neg(t) }")
    res = apply([WrongType], model, PassContext(trace=True))
    assert "WrongType" not in res.counts
    assert any("changes its type" in t for t in res.trace)
    verify(model)
    assert count_ops(model) == {"Relu": 1, "Neg": 1}  # the rejected Cast left nothing behind
    x = model.graph.inputs[0]
    assert x.num_uses == 1


def test_interior_value_used_outside_is_rejected():
    model = load(H + """
    g (float[3,4] a, float[4,5] b, float[5] c) => (float[3,5] y, float[3,5] z) { t = MatMul(a, b)  y = Add(t, c)  z = Relu(t) }""")
    res = apply([MatMulAddToGemm], model, PassContext(trace=True))
    assert "MatMulAddToGemm" not in res.counts
    assert any("used outside the match" in t for t in res.trace)


class ReluOfShapeOrAny(Rule):
    """Relu(Reshape(x, Or(Concat(Neg(s), _), s))): the first branch matches more nodes of the test graph (the Concat,
    then fails at the Neg); the second matches the whole pattern and fails the check."""

    def pattern(self, op, x, s):
        return op.Relu(op.Reshape(x, Or(op.Concat(op.Neg(s), ANY, axis=0), s)))

    def check(self, m, x, s):
        return require(False, "the check says no")

    def rewrite(self, op, m, x, s):
        return op.Relu(x)


def test_trace_prefers_a_check_failure_to_a_longer_partial_match():
    """A failure after the whole pattern matched (the check, a value used outside) outranks a failed Or branch that
    matched more nodes: the trace gives the check's reason, not the other branch's "expected Neg"."""
    model = load(H + """
    g (float[2,3] x, int64[1] a) => (float[3,2] y) { c = Abs(a)  s = Concat<axis = 0>(c, a)  r = Reshape(x, s)
                                                     y = Relu(r) }""")
    res = apply([ReluOfShapeOrAny], model, PassContext(trace=True))
    assert "ReluOfShapeOrAny" not in res.counts
    line = next(t for t in res.trace if "ReluOfShapeOrAny" in t)
    assert "check: the check says no" in line and "expected Neg" not in line, line


def test_interior_graph_output_is_rejected():
    model = load(H + """
    g (float[3,4] a, float[4,5] b, float[5] c) => (float[3,5] y, float[3,5] t) { t = MatMul(a, b)  y = Add(t, c) }""")
    res = apply([MatMulAddToGemm], model, PassContext(trace=True))
    assert "MatMulAddToGemm" not in res.counts and any("graph output" in t for t in res.trace)


def test_graph_output_keeps_name_and_type():
    model, _ = check_rewrite(MatMulAddToGemm, H + """
    g (float[3,4] a, float[4,5] b, float[5] c) => (float[3,5] y) { t = MatMul(a, b)  y = Add(t, c) }""",
                             expect="MatMulAddToGemm")
    out = model.graph.outputs[0]
    assert out.name == "y" and str(out.type) == "float32[3,5]" and out.producer.op_type == "Gemm"


def test_new_initializers_get_fresh_names():
    class AddConst(Rule):
        def pattern(self, op, x):
            return op.Neg(x)

        def rewrite(self, op, m, x):
            return op.Sub(op.const(np.zeros((2, 3), np.float32), hint="w"), x)

    model, _ = check_rewrite(AddConst, H + """
    g (float[2,3] x) => (float[2,3] y) <float[2,3] w = {1,2,3,4,5,6}> { t = Add(x, w)  y = Neg(t) }""",
                             expect="AddConst")
    assert set(model.graph.initializers) == {"w", "w_1"}
    assert model.graph.initializers["w"].const.numpy().sum() == 21  # the shared weight is untouched


def test_domain_and_opset_gating():
    text = ('<ir_version: 8, opset_import: ["" : 17, "com.example" : %d]>\n'
            'g (float[2] x) => (float[2] y) { t = com.example.Foo(x)  y = Relu(t) }')
    for version, fires in ((1, False), (2, True)):
        model = from_onnx(parse(text % version, infer=False))
        res = apply([CustomDomainRule], model)
        assert ("CustomDomainRule" in res.counts) == fires
    model = load(H + "g (float[2] x) => (float[2] y) { t = Relu(x)  y = Neg(t) }")
    assert "OldOpsetOnly" not in apply([OldOpsetOnly], model).counts
    model = load('<ir_version: 8, opset_import: ["" : 11]>\n'
                 'g (float[2] x) => (float[2] y) { t = Relu(x)  y = Neg(t) }')
    assert apply([OldOpsetOnly], model).counts.get("OldOpsetOnly") == 1
    assert "opsets" in explain(OldOpsetOnly, node(load(H + "g (float[2] x) => (float[2] y) { y = Relu(x) }"), "Relu"),
                               load(H + "g (float[2] x) => (float[2] y) { y = Relu(x) }"))


def test_bad_patterns_are_reported():
    class NoOp(Rule):
        def pattern(self, op, x):
            return x

        def rewrite(self, op, m, x):
            return x

    with pytest.raises(TypeError):
        NoOp().compiled()


def test_any_and_absent():
    class R(Rule):
        def pattern(self, op, x):
            return op.Reshape(x, ANY)

        def check(self, m, x):
            return False

        def rewrite(self, op, m, x):
            return x

    model = load(H + """
    g (float[2,3] x) => (float[3,2] y) { s = Constant<value = int64[2] {3, 2}>()  y = Reshape(x, s) }""")
    assert "check returned False" in explain(R, node(model, "Reshape"), model)


# -- Rewriter ------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events = []

    def on_insert(self, n):
        self.events.append(("insert", n.op_type))

    def on_erase(self, n):
        self.events.append(("erase", n.op_type))

    def on_modify(self, n):
        self.events.append(("modify", n.op_type))

    def on_replace(self, old, new):
        self.events.append(("replace", old.name, new.name))


def test_rewriter_notifies_and_protects_outputs():
    from optc.ir.core import Node

    model = load(H + "g (float[2,3] x) => (float[2,3] y) { t = Relu(x)  y = Neg(t) }")
    rec = Recorder()
    rw = Rewriter(model, [rec])
    relu, neg = model.graph.nodes
    sig = Node("Sigmoid", [model.graph.inputs[0]])
    rw.insert_before(relu, sig)
    rw.replace_all_uses_with(relu.outputs[0], sig.outputs[0])
    rw.erase(relu)
    assert rec.events == [("insert", "Sigmoid"), ("replace", "t", ""), ("modify", "Neg"), ("erase", "Relu")]
    # replacing a graph output needs the opt-in, then keeps the name
    abs_ = Node("Abs", [sig.outputs[0]])
    rw.insert_after(neg, abs_)
    with pytest.raises(RewriteError):
        rw.replace_all_uses_with(neg.outputs[0], abs_.outputs[0])
    rw.replace_all_uses_with(neg.outputs[0], abs_.outputs[0], replace_graph_outputs=True)
    assert model.graph.outputs[0] is abs_.outputs[0] and abs_.outputs[0].name == "y"
    with pytest.raises(RewriteError):
        rw.replace_all_uses_with(abs_.outputs[0], model.graph.inputs[0], replace_graph_outputs=True)
    rw.erase(neg)
    w = rw.add_initializer(np.ones(3, np.float32), hint="x")
    assert w.name == "x_1" and model.graph.initializers["x_1"] is w
    rw.set_attr(abs_, "foo", 1)
    rw.set_input(abs_, 0, model.graph.inputs[0])
    assert rec.events[-2:] == [("modify", "Abs"), ("modify", "Abs")]
    verify(model)
