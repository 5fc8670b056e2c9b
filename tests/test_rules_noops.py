"""eliminate-noops: the cases the text form cannot express (chosen inputs such as NaN, +-inf and signed zeros,
whole -O3 runs); the other positive and negative tests per rule are in tests/filecheck/noops/*.ir."""

from __future__ import annotations

import numpy as np
import pytest
from optc.rewrites.rules import RULE_SETS
from optc.rewrites.rules import noops as N
from optc.rewrites.rules._testing import check_rewrite

H17 = '<ir_version: 8, opset_import: ["" : 17]>\n'
H18 = '<ir_version: 8, opset_import: ["" : 18]>\n'


def test_registry():
    assert RULE_SETS["eliminate-noops"] == N.RULES


# NaN (two payloads), +-inf, +-0.0, subnormals, the largest finite values, ordinary values
SPECIALS = np.array([[np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0],
                     [1e-45, -1e-45, 3.4028235e38, -3.4028235e38, 1.5, -2.5]], np.float32)


@pytest.mark.parametrize("rule,op,const", [
    (N.MulOne, "Mul", "1.0"), (N.AddZero, "Add", "-0.0"), (N.SubZero, "Sub", "0.0"), (N.DivOne, "Div", "1.0"),
    (N.PowOne, "Pow", "1.0"),
])
def test_neutral_positive(rule, op, const):
    # exact under IEEE 754: bit for bit the same on NaN, +-inf, +-0.0 and subnormals
    check_rewrite(rule, H17 + f"""
    g (float[2,6] x) => (float[2,6] y) {{
      c = Constant<value = float[1,6] {{{const}, {const}, {const}, {const}, {const}, {const}}}>()
      t = {op}(x, c)
      y = Identity(t)
    }}""", expect=rule.name, gone=[op], exact=True, feeds={"x": SPECIALS})


@pytest.mark.parametrize("rule,op,const", [(N.AddZero, "Add", "0.0"), (N.SubZero, "Sub", "-0.0")])
def test_neutral_negative_signed_zero(rule, op, const):
    # -0.0 + (+0.0) = +0.0 and -0.0 - (-0.0) = +0.0: removing the op would keep -0.0
    check_rewrite(rule, H17 + f"""
    g (float[2,6] x) => (float[2,6] y) {{
      c = Constant<value = float {{{const}}}>()
      t = {op}(x, c)
      y = Identity(t)
    }}""", expect=None, exact=True, feeds={"x": SPECIALS})


def test_add_zero_negative_mixed_signs():
    # one +0.0 among the -0.0s is enough to change x = -0.0 in that column
    check_rewrite(N.AddZero, H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      c = Constant<value = float[3] {-0.0, 0.0, -0.0}>()
      t = Add(c, x)
      y = Identity(t)
    }""", expect=None, exact=True, feeds={"x": np.full((2, 3), -0.0, np.float32)})


@pytest.mark.parametrize("rule,op,const", [(N.AddZero, "Add", "0.0"), (N.SubZero, "Sub", "-0.0")])
def test_neutral_signed_zero_positive_fast_math(rule, op, const):
    # under fast-math x + 0.0 and x - (-0.0) go too (equal up to the sign of zero: allclose, not bit-exact)
    check_rewrite(rule, H17 + f"""
    g (float[2,3] x) => (float[2,3] y) {{
      c = Constant<value = float {{{const}}}>()
      t = {op}(x, c)
      y = Relu(t)
    }}""", expect=rule.name, gone=[op], fast_math=True)


@pytest.mark.parametrize("rule,op", [(N.AddZero, "Add"), (N.SubZero, "Sub")])
def test_neutral_integer_zero_positive(rule, op):
    # integer zeros have no sign: exact without fast-math (wrap-around values included)
    x = np.array([[-2**63, 2**63 - 1, -1], [0, 1, 2**53 + 1]], np.int64)
    check_rewrite(rule, H17 + f"""
    g (int64[2,3] x) => (int64[2,3] y) {{
      c = Constant<value = int64 {{0}}>()
      t = {op}(x, c)
      y = Identity(t)
    }}""", expect=rule.name, gone=[op], exact=True, feeds={"x": x})


def test_add_zero_case_after_O3(tmp_path):
    # /work/shared/cases/lowering/add_zero_negzero: y = 1 / (x + 0), y2 = 1 / (x - 0) for x = [-0, 0, 2]
    import onnx
    from optc import optimize, to_onnx
    from optc.rewrites.rules._testing import assert_same_bits, run_ort

    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    add_zero_negzero (float[3] x) => (float[3] y, float[3] y2) <float[3] z = {0, 0, 0}, float one = {1}> {
      a = Add(x, z)
      y = Div(one, a)
      b = Sub(x, z)
      y2 = Div(one, b)
    }""")
    x = np.array([-0.0, 0.0, 2.0], np.float32)
    out = to_onnx(optimize(proto, level=3))
    y, y2 = run_ort(out, {"x": x})
    assert_same_bits(y, np.array([np.inf, np.inf, 0.5], np.float32), "y")
    assert_same_bits(y2, np.array([-np.inf, np.inf, 0.5], np.float32), "y2")
    assert [n.op_type for n in out.graph.node].count("Add") == 1  # x + 0 kept; x - 0 removed (exact)
    assert "Sub" not in [n.op_type for n in out.graph.node]
    fast = to_onnx(optimize(proto, level=3, fast_math=True))
    assert "Add" not in [n.op_type for n in fast.graph.node]


def test_pow_one_negative_integer():
    # onnxruntime computes integer Pow through double: int64 x above 2^53 does not come back unchanged
    check_rewrite(N.PowOne, H17 + """
    g (int64[3] x) => (int64[3] y) { c = Constant<value = int64 {1}>()  t = Pow(x, c)  y = Identity(t) }""",
                  expect=None)


def test_neutral_commuted_positive():
    check_rewrite(N.MulOne, H17 + """
    g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {1.0}>()  t = Mul(c, x)  y = Relu(t) }""",
                  expect="MulOne", gone=["Mul"])


def test_neutral_negative_value():
    check_rewrite(N.MulOne, H17 + """
    g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {2.0}>()  t = Mul(x, c)  y = Relu(t) }""",
                  expect=None)
