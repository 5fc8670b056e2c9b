"""canonicalize: positive and negative tests per rule (ONNX text syntax, compared on onnxruntime). Those that read
better as text IR are in tests/filecheck/canonicalize/*.ir; these need chosen inputs or Python-side checks."""

from __future__ import annotations

import numpy as np
import pytest
from optc.rewrites.rules import RULE_SETS
from optc.rewrites.rules import canonicalize as C
from optc.rewrites.rules._testing import check_rewrite, count_ops

H17 = '<ir_version: 8, opset_import: ["" : 17]>\n'


def test_registry():
    assert RULE_SETS["canonicalize"] == C.RULES


@pytest.mark.parametrize("src,mid,dst,x", [
    ("int8", 1, 7, np.array([-128, 127, 0, -1], np.int8)),
    # out of int8's range: double -> int8 is undefined in ONNX, the direct cast wraps (a refinement), and
    # onnxruntime wraps both ways
    ("int32", 11, 3, np.array([300, -300, 127, 2**31 - 1], np.int32)),
])
def test_cast_chain_int_through_float_positive(src, mid, dst, x):
    check_rewrite(C.CastChain, H17 + f"""
    g ({src}[4] x) => ({ {7: "int64", 3: "int8"}[dst] }[4] y) {{ a = Cast<to = {mid}>(x)  y = Cast<to = {dst}>(a) }}""",
                  expect="CastChain", exact=True, feeds={"x": x})


def test_cast_chain_keeps_saturate():
    # float -> double -> float8e4m3fn with saturate = 0: out-of-range values become NaN, not the largest float8
    model, _ = check_rewrite(C.CastChain, '<ir_version: 9, opset_import: ["" : 19]>\n' + """
    g (float[3] x) => (float8e4m3fn[3] y) { a = Cast<to = 11>(x)  y = Cast<to = 17, saturate = 0>(a) }""",
                             expect="CastChain", exact=True, feeds={"x": np.array([1000.0, -1e6, 1.5], np.float32)})
    (cast,) = [n for n in model.graph if n.op_type == "Cast"]
    assert cast.attr("saturate") == 0


SPECIALS = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0, 0.5],
                     [-0.5, 1e-45, -3.4028235e38, 0.25, -0.75, 2.0]], np.float32)


@pytest.mark.parametrize("lo,hi", [("-0.5", "0.5"), ("1.0", "6.0"), ("-6.0", "-1.0"), ("0.5", "0.5")])
def test_min_max_to_clip_exact_on_special_values(lo, hi):
    # non-zero bounds: NaN stays NaN, infinities clamp, ties are the same bits
    check_rewrite(C.MinMaxToClip, H17 + f"""
    g (float[2,6] x) => (float[2,6] y) {{
      lo = Constant<value = float {{{lo}}}>()
      hi = Constant<value = float {{{hi}}}>()
      a = Max(x, lo)
      b = Min(a, hi)
      y = Identity(b)
    }}""", expect="MinMaxToClip", gone=["Min", "Max"], exact=True, feeds={"x": SPECIALS})


@pytest.mark.parametrize("lo,hi", [("0.0", "6.0"), ("-0.0", "6.0"), ("-6.0", "0.0")])
def test_min_max_to_clip_negative_zero_bound(lo, hi):
    # Relu6 as Min(Max(x, 0), 6): onnxruntime's Max gives +0.0 for x = -0.0, Clip gives -0.0
    check_rewrite(C.MinMaxToClip, H17 + f"""
    g (float[2,6] x) => (float[2,6] y) {{
      lo = Constant<value = float {{{lo}}}>()
      hi = Constant<value = float {{{hi}}}>()
      a = Max(x, lo)
      b = Min(a, hi)
      y = Identity(b)
    }}""", expect=None, exact=True, feeds={"x": SPECIALS})


def test_min_max_to_clip_zero_bound_positive_fast_math():
    check_rewrite(C.MinMaxToClip, H17 + """
    g (float[2,6] x) => (float[2,6] y) {
      lo = Constant<value = float {0.0}>()
      hi = Constant<value = float {6.0}>()
      a = Max(x, lo)
      b = Min(a, hi)
      y = Identity(b)
    }""", expect="MinMaxToClip", gone=["Min", "Max"], fast_math=True)


def test_min_max_to_clip_integer_zero_bound_positive():
    check_rewrite(C.MinMaxToClip, H17 + """
    g (int32[5] x) => (int32[5] y) {
      lo = Constant<value = int32 {0}>()
      hi = Constant<value = int32 {6}>()
      a = Min(x, hi)
      b = Max(a, lo)
      y = Identity(b)
    }""", expect="MinMaxToClip", gone=["Min", "Max"], exact=True,
                  feeds={"x": np.array([-2**31, 2**31 - 1, 0, 3, 7], np.int32)})


def test_double_negation_exact_on_special_values():
    check_rewrite(C.DoubleNegation, H17 + """
    g (float[2,6] x) => (float[2,6] y) { a = Neg(x)  b = Neg(a)  y = Identity(b) }""", expect="DoubleNegation",
                  gone=["Neg"], exact=True, feeds={"x": SPECIALS})


@pytest.mark.parametrize("op", C.IdempotentUnary.OPS)
def test_idempotent_exact_on_special_values(op):
    # f(f(x)) == f(x) bit for bit on NaN, +-inf, +-0.0, subnormals, halves (Round/Ceil to -0.0)
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45],
                  [0.5, -0.5, 1.5, -2.5, -0.49999997, 3.4028235e38, -7.0]], np.float32)
    check_rewrite(C.IdempotentUnary, H17 + f"""
    g (float[2,7] x) => (float[2,7] y) {{ a = {op}(x)  b = {op}(a)  y = Identity(b) }}""",
                  expect="IdempotentUnary", exact=True, feeds={"x": x})


@pytest.mark.parametrize("op", ["Abs", "Sign", "Neg"])
def test_integer_extremes_exact(op):
    # Abs(INT_MIN) and Neg(INT_MIN) wrap to INT_MIN
    rule = C.DoubleNegation if op == "Neg" else C.IdempotentUnary
    x = np.array([-2**31, 2**31 - 1, -1, 0, 5], np.int32)
    check_rewrite(rule, H17 + f"""
    g (int32[5] x) => (int32[5] y) {{ a = {op}(x)  b = {op}(a)  y = Identity(b) }}""", expect=rule.name, exact=True,
                  feeds={"x": x})


def test_unsqueeze_chain_negative_axes_not_constant():
    check_rewrite(C.UnsqueezeChain, H17 + """
    g (float[2,5] x, int64[1] ax) => (float[2,1,1,5] y) {
      a1 = Constant<value = int64[1] {1}>()
      a = Unsqueeze(x, a1)
      b = Unsqueeze(a, ax)
      y = Relu(b)
    }""", expect=None, feeds={"x": np.ones((2, 5), np.float32), "ax": np.array([2], np.int64)})


def test_transpose_between_squeeze_unsqueeze_positive():
    # torch's q/k/v split: Unsqueeze, Transpose, Squeeze
    model, _ = check_rewrite(C.TransposeBetweenReshapes, H17 + """
    g (float[5,1,3,4] x) => (float[3,5,1,4] y) {
      a0 = Constant<value = int64[1] {0}>()
      a3 = Constant<value = int64[1] {3}>()
      a = Unsqueeze(x, a0)
      t = Transpose<perm = [3, 1, 2, 0, 4]>(a)
      b = Squeeze(t, a3)
      y = Relu(b)
    }""", expect="TransposeBetweenReshapes", gone=["Squeeze", "Unsqueeze"])
    assert count_ops(model) == {"Reshape": 1, "Transpose": 1, "Relu": 1}


def _reshape_transpose_reshape(shape, perm, out) -> tuple[str, int]:
    """x [n] -> Reshape(shape) -> Transpose(perm) -> Reshape(out) -> Relu; returns (model text, n)."""
    n = int(np.prod(shape))
    return H17 + f"""
    g (float[{n}] x) => (float[{",".join(map(str, out))}] y) {{
      s1 = Constant<value = int64[{len(shape)}] {{{",".join(map(str, shape))}}}>()
      s2 = Constant<value = int64[{len(out)}] {{{",".join(map(str, out))}}}>()
      a = Reshape(x, s1)
      t = Transpose<perm = {perm}>(a)
      b = Reshape(t, s2)
      y = Relu(b)
    }}""", n


@pytest.mark.parametrize("shape,perm,out", [
    # torch's sequence-first head split at batch 2: [T, B*N, H] -> [B*N, T, H] -> [B, N, T, H]
    ((5, 2 * 3, 4), [1, 0, 2], (2, 3, 5, 4)),
    # splits of two axes, a size-1 axis put in and one dropped
    ((6, 1, 10), [2, 1, 0], (2, 5, 1, 3, 2)),
    ((4, 6, 5), [2, 0, 1], (5, 2, 2, 1, 6)),
])
def test_transpose_between_reshapes_splits_axes_positive(shape, perm, out):
    text, n = _reshape_transpose_reshape(shape, perm, out)
    model, _ = check_rewrite(C.TransposeBetweenReshapes, text, expect="TransposeBetweenReshapes", exact=True,
                             feeds={"x": np.arange(n, dtype=np.float32) - n / 2})
    assert count_ops(model) == {"Reshape": 1, "Transpose": 1, "Relu": 1}


@pytest.mark.parametrize("shape,perm,out", [
    ((2, 3, 4), [1, 0, 2], (3, 8)),        # merges the axes the Transpose made adjacent
    ((2, 3, 4), [1, 0, 2], (3, 4, 2)),     # reorders: not a split
    ((2, 6, 4), [1, 0, 2], (4, 3, 4)),     # a run that does not divide its axis
])
def test_transpose_between_reshapes_merges_negative(shape, perm, out):
    text, n = _reshape_transpose_reshape(shape, perm, out)
    check_rewrite(C.TransposeBetweenReshapes, text, expect=None, feeds={"x": np.arange(n, dtype=np.float32)})



def _symbolic_head_split(out: str) -> str:
    """x [5, b, 12] (b symbolic) -> Reshape([5, b*3, 4], computed from x's shape as a dynamic-axes export writes
    it: its middle dim unnamed by ONNX's inference) -> Transpose([1, 0, 2]) -> Reshape(`out`, a Concat of
    `b1` = [b] and constants) -> Relu."""
    return H17 + f"""
    g (float[5,b,12] x) => (float[?,?,?,?] y) {{
      sh = Shape(x)
      i1 = Constant<value = int64[1] {{1}}>()
      b1 = Gather<axis = 0>(sh, i1)
      three = Constant<value = int64[1] {{3}}>()
      bn = Mul(b1, three)
      c5 = Constant<value = int64[1] {{5}}>()
      c4 = Constant<value = int64[1] {{4}}>()
      c3 = Constant<value = int64[1] {{3}}>()
      s1 = Concat<axis = 0>(c5, bn, c4)
      a = Reshape(x, s1)
      t = Transpose<perm = [1, 0, 2]>(a)
      s2 = Concat<axis = 0>({out})
      r = Reshape(t, s2)
      y = Relu(r)
    }}"""


@pytest.mark.parametrize("batch", [2, 1, 0])
def test_transpose_between_reshapes_symbolic_batch_positive(batch):
    # torch's sequence-first head split at a symbolic batch: [5, b*3, 4] -> [b*3, 5, 4] -> [b, 3, 5, 4]; the
    # unnamed b*3 is split into [b, 3] by the element count, and b is copied from x by a 0 in the new target
    n = 5 * batch * 12
    model, _ = check_rewrite(C.TransposeBetweenReshapes, _symbolic_head_split("b1, c3, c5, c4"),
                             expect="TransposeBetweenReshapes", exact=True,
                             feeds={"x": np.arange(n, dtype=np.float32).reshape(5, batch, 12) - n / 2})
    assert count_ops(model) == {"Reshape": 1, "Transpose": 1, "Relu": 1}
    (reshape,) = [nd for nd in model.graph if nd.op_type == "Reshape"]
    assert reshape.inputs[1].const_value().tolist() == [5, 0, 3, 4]


@pytest.mark.parametrize("out", [
    "c3, b1, c5, c4",   # splits b*3 the other way round ([3, b]): still a split, the rule takes it
])
def test_transpose_between_reshapes_symbolic_other_split_positive(out):
    # the rule is about linear order, not heads: [3, b] is a split of the run as much as [b, 3]; the new inner
    # shape [5, 3, b, 4] has b where x has 12, so it is written with a -1
    model, _ = check_rewrite(C.TransposeBetweenReshapes, _symbolic_head_split(out), expect="TransposeBetweenReshapes",
                             exact=True, feeds={"x": np.arange(120, dtype=np.float32).reshape(5, 2, 12)})
    (reshape,) = [nd for nd in model.graph if nd.op_type == "Reshape"]
    assert reshape.inputs[1].const_value().tolist() == [5, 3, -1, 4]


@pytest.mark.parametrize("out", [
    "b1, c3, c4, c5",   # reorders the static dims: not a split
    "c3, c5, b1, c4",   # b's run would not be in the middle of the output
])
def test_transpose_between_reshapes_symbolic_batch_negative(out):
    check_rewrite(C.TransposeBetweenReshapes, _symbolic_head_split(out), expect=None,
                  feeds={"x": np.arange(120, dtype=np.float32).reshape(5, 2, 12)})


def test_constant_target_needs_a_copy_or_one_minus_one():
    assert C._constant_target([5, "b", 3, 4], (5, "b", 12)) == [5, 0, 3, 4]
    assert C._constant_target([5, 3, "b", 4], (5, "b", 12)) == [5, 3, -1, 4]
    assert C._constant_target(["s", "b", 3, 4], ("t", "u", 12)) is None  # two dims nothing gives
    assert C._constant_target(["b", 3, 0], None) is None  # a 0 would be a copy
