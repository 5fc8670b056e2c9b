"""eliminate-noops: a positive and a negative test per rule (ONNX text syntax, compared on onnxruntime)."""

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


def test_identity_positive():
    check_rewrite(N.IdentityNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Identity(x)  y = Relu(t) }""", expect="IdentityNoop", gone=["Identity"])


def test_identity_graph_output_keeps_name():
    model, _ = check_rewrite(N.IdentityNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Relu(x)  y = Identity(t) }""", expect="IdentityNoop", gone=["Identity"])
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer.op_type == "Relu"


def test_identity_negative_input_to_output():
    # y = Identity(x) with x a graph input and y a graph output: removing it would rename an input
    check_rewrite(N.IdentityNoop, H17 + "g (float[2,3] x) => (float[2,3] y) { y = Identity(x) }", expect=None)


def test_dropout_positive():
    check_rewrite(N.DropoutNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Dropout(x)  y = Relu(t) }""", expect="DropoutNoop", gone=["Dropout"])


def test_dropout_with_false_training_mode():
    check_rewrite(N.DropoutNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      r = Constant<value = float {0.5}>()
      tm = Constant<value = bool {0}>()
      t = Dropout(x, r, tm)
      y = Relu(t)
    }""", expect="DropoutNoop", gone=["Dropout"])


def test_dropout_negative_training():
    check_rewrite(N.DropoutNoop, H17 + """
    g (float[2,3] x, bool tm) => (float[2,3] y) { r = Constant<value = float {0.0}>()  t = Dropout(x, r, tm)  y = Relu(t) }""",
                  expect=None, feeds=None)


def test_dropout_negative_mask_used():
    check_rewrite(N.DropoutNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y, bool[2,3] mask) { t, mask = Dropout(x)  y = Relu(t) }""", expect=None)


def test_cast_positive():
    check_rewrite(N.CastNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Cast<to = 1>(x)  y = Relu(t) }""", expect="CastNoop", gone=["Cast"])


def test_castlike_positive():
    check_rewrite(N.CastNoop, H17 + """
    g (float[2,3] x, float[1] z) => (float[2,3] y) { t = CastLike(x, z)  y = Relu(t) }""", expect="CastNoop",
                  gone=["CastLike"])


def test_cast_negative():
    check_rewrite(N.CastNoop, H17 + """
    g (float[2,3] x) => (double[2,3] y) { t = Cast<to = 11>(x)  y = Relu(t) }""", expect=None)


def test_reshape_identity_positive():
    check_rewrite(N.ShapeOpNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { s = Constant<value = int64[2] {2, 3}>()  t = Reshape(x, s)  y = Relu(t) }""",
                  expect="ShapeOpNoop", gone=["Reshape"])


def test_squeeze_nothing_positive():
    check_rewrite(N.ShapeOpNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Flatten<axis = 1>(x)  y = Relu(t) }""", expect="ShapeOpNoop",
                  gone=["Flatten"])


def test_reshape_identity_negative():
    check_rewrite(N.ShapeOpNoop, H17 + """
    g (float[2,3] x) => (float[3,2] y) { s = Constant<value = int64[2] {3, 2}>()  t = Reshape(x, s)  y = Relu(t) }""",
                  expect=None)


def test_shape_round_trip_positive():
    check_rewrite(N.ShapeRoundTrip, H17 + """
    g (float[2,3,4] x) => (float[2,3,4] y) {
      s1 = Constant<value = int64[2] {6, 4}>()
      s2 = Constant<value = int64[3] {2, 3, 4}>()
      a = Reshape(x, s1)
      b = Reshape(a, s2)
      y = Relu(b)
    }""", expect="ShapeRoundTrip", gone=["Reshape"])


def test_unsqueeze_squeeze_round_trip_positive():
    check_rewrite(N.ShapeRoundTrip, H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      ax = Constant<value = int64[1] {0}>()
      a = Unsqueeze(x, ax)
      b = Squeeze(a, ax)
      y = Relu(b)
    }""", expect="ShapeRoundTrip", gone=["Unsqueeze", "Squeeze"])


def test_shape_round_trip_negative():
    check_rewrite(N.ShapeRoundTrip, H17 + """
    g (float[2,3,4] x) => (float[4,3,2] y) {
      s1 = Constant<value = int64[2] {6, 4}>()
      s2 = Constant<value = int64[3] {4, 3, 2}>()
      a = Reshape(x, s1)
      b = Reshape(a, s2)
      y = Relu(b)
    }""", expect=None)


def test_shape_round_trip_negative_intermediate_used():
    check_rewrite(N.ShapeRoundTrip, H17 + """
    g (float[2,3,4] x) => (float[2,3,4] y, float[6,4] a) {
      s1 = Constant<value = int64[2] {6, 4}>()
      s2 = Constant<value = int64[3] {2, 3, 4}>()
      a = Reshape(x, s1)
      b = Reshape(a, s2)
      y = Relu(b)
    }""", expect=None)


def test_transpose_identity_positive():
    check_rewrite(N.TransposeIdentity, H17 + """
    g (float[2,3,4] x) => (float[2,3,4] y) { t = Transpose<perm = [0, 1, 2]>(x)  y = Relu(t) }""",
                  expect="TransposeIdentity", gone=["Transpose"])


def test_transpose_identity_negative():
    check_rewrite(N.TransposeIdentity, H17 + """
    g (float[2,3,4] x) => (float[2,4,3] y) { t = Transpose<perm = [0, 2, 1]>(x)  y = Relu(t) }""", expect=None)


def test_transpose_inverse_positive():
    check_rewrite(N.TransposeInverse, H17 + """
    g (float[2,3,4] x) => (float[2,3,4] y) {
      a = Transpose<perm = [1, 2, 0]>(x)
      b = Transpose<perm = [2, 0, 1]>(a)
      y = Relu(b)
    }""", expect="TransposeInverse", gone=["Transpose"])


def test_transpose_inverse_negative():
    check_rewrite(N.TransposeInverse, H17 + """
    g (float[2,3,4] x) => (float[4,2,3] y) {
      a = Transpose<perm = [1, 2, 0]>(x)
      b = Transpose<perm = [1, 2, 0]>(a)
      y = Relu(b)
    }""", expect=None)


def test_slice_full_positive():
    check_rewrite(N.SliceFull, H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      st = Constant<value = int64[2] {0, 0}>()
      en = Constant<value = int64[2] {9223372036854775807, 3}>()
      t = Slice(x, st, en)
      y = Relu(t)
    }""", expect="SliceFull", gone=["Slice"])


def test_slice_full_negative():
    check_rewrite(N.SliceFull, H17 + """
    g (float[2,3] x) => (float[2,2] y) {
      st = Constant<value = int64[1] {1}>()
      en = Constant<value = int64[1] {3}>()
      ax = Constant<value = int64[1] {1}>()
      t = Slice(x, st, en, ax)
      y = Relu(t)
    }""", expect=None)


def test_pad_zero_positive():
    check_rewrite(N.PadZero, H17 + """
    g (float[2,3] x) => (float[2,3] y) { p = Constant<value = int64[4] {0, 0, 0, 0}>()  t = Pad(x, p)  y = Relu(t) }""",
                  expect="PadZero", gone=["Pad"])


def test_pad_zero_negative():
    check_rewrite(N.PadZero, H17 + """
    g (float[2,3] x) => (float[2,5] y) { p = Constant<value = int64[4] {0, 1, 0, 1}>()  t = Pad(x, p)  y = Relu(t) }""",
                  expect=None)


def test_expand_noop_positive():
    check_rewrite(N.ExpandNoop, H17 + """
    g (float[2,3] x) => (float[2,3] y) { s = Constant<value = int64[2] {1, 3}>()  t = Expand(x, s)  y = Relu(t) }""",
                  expect="ExpandNoop", gone=["Expand"])


def test_expand_noop_negative():
    check_rewrite(N.ExpandNoop, H17 + """
    g (float[2,3] x) => (float[4,2,3] y) { s = Constant<value = int64[3] {4, 1, 3}>()  t = Expand(x, s)  y = Relu(t) }""",
                  expect=None)


def test_concat_single_positive():
    check_rewrite(N.ConcatSingle, H17 + """
    g (float[2,3] x) => (float[2,3] y) { t = Concat<axis = 0>(x)  y = Relu(t) }""", expect="ConcatSingle",
                  gone=["Concat"])


def test_concat_single_negative():
    check_rewrite(N.ConcatSingle, H17 + """
    g (float[2,3] x) => (float[4,3] y) { t = Concat<axis = 0>(x, x)  y = Relu(t) }""", expect=None)


def test_split_single_positive():
    check_rewrite(N.SplitSingle, H18 + """
    g (float[2,3] x) => (float[2,3] y) { t = Split<axis = 1, num_outputs = 1>(x)  y = Relu(t) }""",
                  expect="SplitSingle", gone=["Split"])


def test_split_single_negative():
    check_rewrite(N.SplitSingle, H18 + """
    g (float[2,4] x) => (float[2,2] y, float[2,2] z) { y, z = Split<axis = 1, num_outputs = 2>(x) }""", expect=None)


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


@pytest.mark.parametrize("rule,op", [(N.MulOne, "Mul"), (N.AddZero, "Add"), (N.SubZero, "Sub"), (N.DivOne, "Div")])
def test_neutral_negative_broadcast(rule, op):
    neutral = "1.0" if op in ("Mul", "Div") else "0.0"
    check_rewrite(rule, H17 + f"""
    g (float[1,3] x) => (float[2,3] y) {{
      c = Constant<value = float[2,1] {{{neutral}, {neutral}}}>()
      t = {op}(x, c)
      y = Relu(t)
    }}""", expect=None)


def test_neutral_negative_value():
    check_rewrite(N.MulOne, H17 + """
    g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {2.0}>()  t = Mul(x, c)  y = Relu(t) }""",
                  expect=None)


def test_sub_zero_negative_reversed():
    # 0 - x is not x (Sub is not commutative)
    check_rewrite(N.SubZero, H17 + """
    g (float[2,3] x) => (float[2,3] y) { c = Constant<value = float {0.0}>()  t = Sub(c, x)  y = Relu(t) }""",
                  expect=None)


def test_where_constant_positive():
    check_rewrite(N.WhereConstant, H17 + """
    g (float[2,3] a, float[2,3] b) => (float[2,3] y) {
      c = Constant<value = bool[1,3] {0, 0, 0}>()
      t = Where(c, a, b)
      y = Relu(t)
    }""", expect="WhereConstant", gone=["Where"])


def test_where_constant_negative_mixed():
    check_rewrite(N.WhereConstant, H17 + """
    g (float[2,3] a, float[2,3] b) => (float[2,3] y) {
      c = Constant<value = bool[1,3] {0, 1, 0}>()
      t = Where(c, a, b)
      y = Relu(t)
    }""", expect=None)


def test_where_constant_negative_broadcast():
    check_rewrite(N.WhereConstant, H17 + """
    g (float[1,3] a, float[2,3] b) => (float[2,3] y) {
      c = Constant<value = bool {1}>()
      t = Where(c, a, b)
      y = Relu(t)
    }""", expect=None)


IF_MODEL = H17 + """
g (float[2,3] x) => (float[2,3] y) {
  c = Constant<value = bool {%s}>()
  t = If(c) <
    then_branch = then_g () => (float[2,3] r) { r = Relu(x) },
    else_branch = else_g () => (float[2,3] r2) { k = Constant<value = float {2.0}>()  r2 = Mul(x, k) }
  >
  y = Neg(t)
}"""


@pytest.mark.parametrize("cond", ["1", "0"])
def test_if_constant_positive(cond):
    model, _ = check_rewrite(N.IfConstant, IF_MODEL % cond, expect="IfConstant", gone=["If"])
    assert ("Relu" if cond == "1" else "Mul") in {n.op_type for n in model.graph}


def test_if_constant_output_is_graph_output():
    check_rewrite(N.IfConstant, H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      c = Constant<value = bool {1}>()
      y = If(c) <
        then_branch = then_g () => (float[2,3] r) { r = Relu(x) },
        else_branch = else_g () => (float[2,3] r2) { r2 = Neg(x) }
      >
    }""", expect="IfConstant", gone=["If"])


def test_if_constant_negative():
    check_rewrite(N.IfConstant, H17 + """
    g (float[2,3] x, bool c) => (float[2,3] y) {
      t = If(c) <
        then_branch = then_g () => (float[2,3] r) { r = Relu(x) },
        else_branch = else_g () => (float[2,3] r2) { r2 = Neg(x) }
      >
      y = Neg(t)
    }""", expect=None)


def test_whole_set_on_a_chain():
    _, res = check_rewrite(RULE_SETS["eliminate-noops"], H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Identity(x)
      one = Constant<value = float {1.0}>()
      b = Mul(a, one)
      c = Transpose<perm = [1, 0]>(b)
      d = Transpose<perm = [1, 0]>(c)
      e = Cast<to = 1>(d)
      y = Relu(e)
    }""", expect="IdentityNoop", gone=["Identity", "Mul", "Transpose", "Cast"])
    assert res.converged
