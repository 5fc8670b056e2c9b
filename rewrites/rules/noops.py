"""eliminate-noops: ops that compute their input unchanged are replaced by that input.

Every rule proves that the replacement has the same element type and shape as the removed output (broadcasting
by a constant must not grow the shape; a reshape must restore the very same shape), and that it holds the same
values bit for bit under IEEE 754 (NaN, +-inf and signed zeros included; see each rule). Data-movement no-ops
(Identity, Reshape, Transpose, Slice, Pad, Expand, Concat, Split, Where/If on a constant condition) copy
elements unchanged, so they are exact for every element type. `x + 0.0` and `x - (-0.0)` are not exact for
x = -0.0 and apply only under fast-math (`AddZero`, `SubZero`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..pattern import ANY, Const, Optional, Or, require
from ..rule import Rule
from ._util import INT64_MAX, broadcast_keeps_shape, is_float, normalize_axes, operand, same_shape, transpose_perm


class IdentityNoop(Rule):
    """Identity(x) -> x."""

    def pattern(self, op, x):
        return op.Identity(x)

    def rewrite(self, op, m, x):
        return x


class DropoutNoop(Rule):
    """Dropout at inference (no training_mode, or a constant false one) -> its input; the mask must be unused.

    Exact: inference Dropout is the identity (no scaling, no randomness).
    """

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True)

    def check(self, m, x):
        node = m.root
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            t = m.const(node.inputs[2])
            require(t is not None and not bool(np.asarray(t).any()), "training_mode is not a constant false")
        if (m.opset() or 21) < 7:
            require(node.attr("is_test", 0) == 1, "Dropout before opset 7 trains unless is_test=1")
        return True

    def rewrite(self, op, m, x):
        return x


class CastNoop(Rule):
    """Cast(x, to=T) where x already has type T -> x (also CastLike to the same type).

    Exact: a cast to the element's own type converts nothing (`saturate` only matters for float8 targets that
    differ from the source).
    """

    def pattern(self, op, x, like):
        return Or(op.Cast(x), op.CastLike(x, like))

    def check(self, m, x, like):
        require(x.dtype is not None, "the input's element type is unknown")
        want = m.root.attr("to") if m.root.op_type == "Cast" else (like.dtype if like is not None else None)
        return require(want is not None and int(want) == int(x.dtype), "the cast changes the element type")

    def rewrite(self, op, m, x, like):
        return x


class ShapeOpNoop(Rule):
    """Reshape / Flatten / Squeeze / Unsqueeze whose output has exactly the input's shape -> the input."""

    def pattern(self, op, x):
        return Or(op.Reshape(x, ANY, _allow_other_inputs=True), op.Flatten(x),
                  op.Squeeze(x, _allow_other_inputs=True), op.Unsqueeze(x, _allow_other_inputs=True))

    def check(self, m, x):
        return require(same_shape(x, m.outputs[0]), "the output shape differs from (or is not known as) the input's")

    def rewrite(self, op, m, x):
        return x


def _shape_ops(op, x):
    return [op.Reshape(x, ANY, _allow_other_inputs=True), op.Flatten(x), op.Squeeze(x, _allow_other_inputs=True),
            op.Unsqueeze(x, _allow_other_inputs=True)]


class ShapeRoundTrip(Rule):
    """Two Reshape / Flatten / Squeeze / Unsqueeze in a row that restore the original shape -> the input."""

    def pattern(self, op, x):
        inner = Or(*_shape_ops(op, x))
        return Or(*_shape_ops(op, inner))

    def check(self, m, x):
        return require(same_shape(x, m.outputs[0]), "the chain does not restore the input's (known) shape")

    def rewrite(self, op, m, x):
        return x


class TransposeIdentity(Rule):
    """Transpose with the identity permutation -> its input."""

    def pattern(self, op, x):
        return op.Transpose(x)

    def check(self, m, x):
        p = transpose_perm(m.root, x.rank)
        return require(p is not None and p == list(range(len(p))), "the permutation is not the identity")

    def rewrite(self, op, m, x):
        return x


class TransposeInverse(Rule):
    """Transpose(Transpose(x, p1), p2) where p2 undoes p1 -> x."""

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _name="inner"))

    def check(self, m, x):
        p1 = transpose_perm(m["inner"], x.rank)
        p2 = transpose_perm(m.root, x.rank)
        require(p1 is not None and p2 is not None and len(p1) == len(p2), "unknown permutations")
        return require([p1[j] for j in p2] == list(range(len(p1))), "the permutations are not inverse")

    def rewrite(self, op, m, x):
        return x


class SliceFull(Rule):
    """Slice that keeps every element (starts 0, ends past the end, steps 1) -> its input."""

    min_opset = 10

    def pattern(self, op, x, starts, ends, axes, steps):
        return op.Slice(x, starts.const(), ends.const(), Optional(axes.const()), Optional(steps.const()))

    def check(self, m, x, starts, ends, axes, steps):
        shape = x.shape
        require(shape is not None, "the input's rank is unknown")
        rank = len(shape)
        st = np.asarray(m.const(starts)).reshape(-1)
        en = np.asarray(m.const(ends)).reshape(-1)
        ax = normalize_axes(m.const(axes), rank) if axes is not None else list(range(len(st)))
        sp = np.asarray(m.const(steps)).reshape(-1) if steps is not None else np.ones(len(st), np.int64)
        require(ax is not None and len(ax) == len(st) == len(en) == len(sp), "malformed slice")
        for a, s, e, k in zip(ax, st.tolist(), en.tolist(), sp.tolist(), strict=False):
            require(k == 1, "a step is not 1")
            d = shape[a]
            if isinstance(d, int):
                s = s + d if s < 0 else s
                e = e + d if e < 0 else e
                require(max(0, min(s, d)) == 0 and min(max(e, 0), d) == d, f"axis {a} is not sliced whole")
            else:
                require(s == 0 and e >= 2**31 - 1, f"axis {a} (of unknown size) is not sliced whole")
        return True

    def rewrite(self, op, m, x, starts, ends, axes, steps):
        return x


class PadZero(Rule):
    """Pad by zero everywhere -> its input."""

    def pattern(self, op, x):
        return op.Pad(x, _allow_other_inputs=True)

    def check(self, m, x):
        known, pads = operand(m.root, 1, "pads", m.opsets, m)
        require(known and pads is not None, "the pads are not constant")
        return require(not np.asarray(pads).any(), "some pads are not zero")

    def rewrite(self, op, m, x):
        return x


class ExpandNoop(Rule):
    """Expand to a shape that the input already has (broadcasting changes nothing) -> its input."""

    min_opset = 8

    def pattern(self, op, x, shape):
        return op.Expand(x, shape.const())

    def check(self, m, x, shape):
        s = tuple(int(d) for d in np.asarray(m.const(shape)).reshape(-1))
        return require(broadcast_keeps_shape(x, s), "the expansion could grow the input")

    def rewrite(self, op, m, x, shape):
        return x


class ConcatSingle(Rule):
    """Concat of a single input -> that input."""

    def pattern(self, op, x):
        return op.Concat(x)

    def rewrite(self, op, m, x):
        return x


class ConcatEmpty(Rule):
    """Concat without its operands of static size 0 along the axis (they add no element) -> the Concat of the
    others, in order (when one is left, ConcatSingle removes it). Not when every operand is empty."""

    def pattern(self, op, x):
        return op.Concat(x, _allow_other_inputs=True)

    def check(self, m, x):
        empty = _empty_along_axis(m.root)
        require(empty, "no operand is empty along the axis")
        return require(len(empty) < len(m.root.inputs), "every operand is empty")

    def rewrite(self, op, m, x):
        empty = _empty_along_axis(m.root)
        return op.Concat(*[v for i, v in enumerate(m.root.inputs) if i not in empty], axis=m.root.attr("axis"))


def _empty_along_axis(concat) -> set[int]:
    """The positions of a Concat's operands whose dim along its axis is a static 0."""
    axis = concat.attr("axis")
    found = set()
    for i, v in enumerate(concat.inputs):
        shape = v.shape if v is not None else None
        if axis is None or shape is None or not -len(shape) <= axis < len(shape):
            continue
        if isinstance(shape[axis], int) and shape[axis] == 0:
            found.add(i)
    return found


class SplitSingle(Rule):
    """Split with a single output -> its input (when the output keeps the input's shape)."""

    def pattern(self, op, x):
        return op.Split(x, _allow_other_inputs=True, _outputs=1)

    def check(self, m, x):
        out = m.outputs[0]
        if x.shape is not None and out.shape is not None:
            return require(same_shape(x, out), "the single output is smaller than the input")
        return require(len(m.root.inputs) < 2 or m.root.inputs[1] is None, "a split size is given; shapes unknown")

    def rewrite(self, op, m, x):
        return x


def _neutral(value):
    def pattern(self, op, x, c):
        return getattr(op, self.op)(x, c.const(value))
    return pattern


class _NeutralElement(Rule):
    """x <op> c -> x for a constant c of neutral elements (every element equal to `value` of the pattern)."""

    op = ""

    def check(self, m, x, c):
        arr = m.const(c)
        require(x.dtype is not None and c.dtype == x.dtype, "element types differ")
        return require(broadcast_keeps_shape(x, tuple(arr.shape)), "broadcasting with the constant changes the shape")

    def rewrite(self, op, m, x, c):
        return x


def _zero_sign_ok(m, x, c, keep_negative: bool) -> bool:
    """For a float x: are all the zeros of c of the sign that makes `x + c` (`keep_negative`) or `x - c` exact?

    Under round-to-nearest, x + (-0.0) = x for every x (-0 + -0 = -0, +0 + -0 = +0, NaN stays NaN), but
    -0.0 + (+0.0) = +0.0, so x + (+0.0) is not x for x = -0.0; x - (+0.0) = x + (-0.0) is exact and
    x - (-0.0) = x + (+0.0) is not. Integer zeros have no sign: always exact (fast-math allows any zero).
    """
    if not is_float(x) or m.fast_math:
        return True
    signs = np.signbit(np.asarray(m.const(c)))
    return bool(signs.all()) if keep_negative else not bool(signs.any())


class MulOne(_NeutralElement):
    """x * 1 -> x (and 1 * x), when broadcasting with the ones keeps x's shape.

    Exact: 1 is the multiplicative identity under IEEE 754 (x * 1 is x rounded, i.e. x, for every x: -0.0,
    +-inf and subnormals unchanged, NaN stays NaN); for integers x * 1 = x with no overflow.
    """

    op = "Mul"
    pattern = _neutral(1)


class AddZero(_NeutralElement):
    """x + (-0.0) -> x (and -0.0 + x); x + (+0.0) -> x for integers, and for floats only under fast-math.

    Exact for -0.0: x + (-0.0) = x for every float x (+0 + -0 = +0, -0 + -0 = -0, NaN and +-inf unchanged)
    and for integer zeros. Not exact for +0.0: -0.0 + (+0.0) = +0.0 (1 / (x + 0) is +inf, not -inf, for
    x = -0.0), so a float constant with a +0.0 is removed only under fast-math. Broadcasting with the zeros
    must keep x's shape.
    """

    op = "Add"
    pattern = _neutral(0)
    fast_math: ClassVar[str] = "x + (+0.0) for float x (wrong for x = -0.0)"

    def check(self, m, x, c):
        super().check(m, x, c)
        return require(_zero_sign_ok(m, x, c, keep_negative=True),
                       "x + (+0.0) is not x for x = -0.0 (applies only under fast-math)")


class SubZero(_NeutralElement):
    """x - (+0.0) -> x; x - (-0.0) -> x for integers, and for floats only under fast-math.

    Exact for +0.0: x - (+0.0) = x + (-0.0) = x for every float x, and for integer zeros. Not exact for
    -0.0: -0.0 - (-0.0) = +0.0, so a float constant with a -0.0 is removed only under fast-math. Broadcasting
    with the zeros must keep x's shape; 0 - x is not matched (Sub is not commutative).
    """

    op = "Sub"
    pattern = _neutral(0)
    fast_math: ClassVar[str] = "x - (-0.0) for float x (wrong for x = -0.0)"

    def check(self, m, x, c):
        super().check(m, x, c)
        return require(_zero_sign_ok(m, x, c, keep_negative=False),
                       "x - (-0.0) is not x for x = -0.0 (applies only under fast-math)")


class DivOne(_NeutralElement):
    """x / 1 -> x, when broadcasting with the ones keeps x's shape.

    Exact: x / 1 is x rounded, i.e. x, for every float x (-0.0, +-inf, subnormals, NaN); integer division by 1
    truncates nothing.
    """

    op = "Div"
    pattern = _neutral(1)


class PowOne(_NeutralElement):
    """x ^ 1 -> x for floating-point x (any numeric exponent type), when broadcasting keeps x's shape.

    Exact: pow(x, 1) = x for every float x (C99/IEEE pow: pow(+-0, 1) = +-0, pow(+-inf, 1) = +-inf,
    pow(NaN, 1) = NaN; checked on onnxruntime for float16/32/64). Not applied to integer x: onnxruntime
    computes integer Pow through double, so an int64 x above 2^53 does not come back unchanged there.
    """

    op = "Pow"
    pattern = _neutral(1)

    def check(self, m, x, c):
        arr = m.const(c)
        require(is_float(x), "x is not a floating-point tensor (integer Pow may round through double)")
        return require(broadcast_keeps_shape(x, tuple(arr.shape)), "broadcasting with the constant changes the shape")


class WhereConstant(Rule):
    """Where(c, a, b) with a constant all-true (all-false) condition -> a (b), when broadcasting keeps its shape.

    Exact: Where selects elements without arithmetic.
    """

    def pattern(self, op, c, a, b):
        return op.Where(c.const(), a, b)

    def check(self, m, c, a, b):
        cond = np.asarray(m.const(c))
        require(cond.size > 0 and (cond.all() or not cond.any()), "the condition is mixed")
        chosen = a if cond.all() else b
        return require(same_shape(chosen, m.outputs[0]), "the chosen branch is broadcast to another (or unknown) shape")

    def rewrite(self, op, m, c, a, b):
        return a if np.asarray(m.const(c)).all() else b


class IfConstant(Rule):
    """If with a constant condition -> the taken branch, inlined."""

    replace_all_outputs = True

    def pattern(self, op, c):
        return op.If(c.const())

    def check(self, m, c):
        cond = np.asarray(m.const(c))
        require(cond.size == 1, "the condition is not a single value")
        body = m.root.attr("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
        require(body is not None and not body.inputs, "the branch is missing")
        return require(len(body.outputs) == len(m.outputs), "the branch's outputs do not match")

    def rewrite(self, op, m, c):
        cond = bool(np.asarray(m.const(c)).reshape(-1)[0])
        return op.inline(m.root.attr("then_branch" if cond else "else_branch"))


RULES: list[type[Rule]] = [
    IdentityNoop, DropoutNoop, CastNoop, ShapeOpNoop, ShapeRoundTrip, TransposeIdentity, TransposeInverse,
    SliceFull, PadZero, ExpandNoop, ConcatSingle, ConcatEmpty, SplitSingle, MulOne, AddZero, SubZero, DivOne, PowOne,
    WhereConstant, IfConstant,
]

__all__ = ["RULES", *[r.__name__ for r in RULES], "Const", "INT64_MAX"]
