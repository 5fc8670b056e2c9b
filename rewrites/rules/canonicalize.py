"""canonicalize: merge chains into one op where that is exact; prefer the canonical form of a computation.

Exact means bit for bit under IEEE 754 and integer wrap-around, NaN, +-inf and signed zeros included (NaN
payloads aside), as onnxruntime computes the original; each rule's docstring says why. Shape and layout chains
(Reshape, Transpose, Unsqueeze, Concat, Expand) move elements without arithmetic and are exact for every type.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.types import DataType
from ..pattern import ANY, Or, require
from ..rule import Rule
from ._util import full_shape, minus_one_target, normalize_axes, operand, static_shape, transpose_perm


def _shape_producers(op, x):
    return Or(op.Reshape(x, ANY, _allow_other_inputs=True), op.Flatten(x), op.Squeeze(x, _allow_other_inputs=True),
              op.Unsqueeze(x, _allow_other_inputs=True))


class ReshapeChain(Rule):
    """Reshape(Reshape|Flatten|Squeeze|Unsqueeze(x), s) -> one Reshape(x, s') (s' static, or s without 0s).

    s' is the static output shape when known, else s itself when it copies no dim (0) from the intermediate.
    """

    min_opset = 5

    def pattern(self, op, x, s):
        return op.Reshape(_shape_producers(op, x), s)

    def check(self, m, x, s):
        if static_shape(m.outputs[0]) is not None:
            return True
        arr = m.const(s)
        require(arr is not None, "the target shape is neither static nor constant")
        allowzero = m.root.attr("allowzero", 0)
        return require(allowzero == 1 or not (np.asarray(arr) == 0).any(), "the target shape copies dims (0)")

    def rewrite(self, op, m, x, s):
        shape = static_shape(m.outputs[0])
        if shape is not None:
            target = op.const(np.array(shape, np.int64), hint="shape")
            return op.Reshape(x, target)
        return op.Reshape(x, s, allowzero=m.root.attr("allowzero"))


class TransposeChain(Rule):
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1 o p2)."""

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _name="inner"))

    def check(self, m, x):
        p1, p2 = transpose_perm(m["inner"], x.rank), transpose_perm(m.root, x.rank)
        return require(p1 is not None and p2 is not None and len(p1) == len(p2) > 0, "unknown permutations")

    def rewrite(self, op, m, x):
        p1, p2 = transpose_perm(m["inner"], x.rank), transpose_perm(m.root, x.rank)
        return op.Transpose(x, perm=[p1[j] for j in p2])


_F, _D, _H, _BF = DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16, DataType.BFLOAT16
_I8, _I16, _I32, _I64 = DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64
_U8, _U16, _U32, _U64 = DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64

# a -> {b: every value of a is exactly representable in b}
_EXACT: dict[DataType, set[DataType]] = {
    DataType.BOOL: {_F, _D, _H, _BF, _I8, _I16, _I32, _I64, _U8, _U16, _U32, _U64},
    _H: {_F, _D},
    _BF: {_F, _D},
    _F: {_D},
    _I8: {_I16, _I32, _I64, _F, _D, _H},
    _U8: {_I16, _I32, _I64, _U16, _U32, _U64, _F, _D, _H},
    _I16: {_I32, _I64, _F, _D},
    _U16: {_I32, _I64, _U32, _U64, _F, _D},
    _I32: {_I64, _D},
    _U32: {_I64, _U64, _D},
}


def cast_is_exact(src, dst) -> bool:
    """True when casting `src` to `dst` loses nothing (so a later cast sees the same values)."""
    if src is None or dst is None:
        return False
    src, dst = DataType(src), DataType(dst)
    return src == dst or dst in _EXACT.get(src, set())


class CastChain(Rule):
    """Cast(Cast(x, T1), T2) -> Cast(x, T2) when the first cast is exact (x's values survive T1 unchanged).

    Exact: every value of x is representable in T1 (float16 -> float32 -> T2, int8 -> int32 -> T2, ...), so the
    second cast sees x's own values and the outer cast converts them once, as the direct cast does; the outer
    cast's attributes (`saturate`) are kept. An integer through a float to a narrower integer (int32 -> double
    -> int8) is a refinement: ONNX leaves an out-of-range float -> integer cast undefined and defines the
    integer -> integer one (wrap-around), which onnxruntime computes for both.
    """

    def pattern(self, op, x):
        return op.Cast(op.Cast(x, _name="inner"))

    def check(self, m, x):
        t1 = m["inner"].attr("to")
        return require(cast_is_exact(x.dtype, t1), "the first cast may lose precision or range")

    def rewrite(self, op, m, x):
        to = int(m.root.attr("to"))
        if x.dtype is not None and int(x.dtype) == to:
            return x
        attrs = dict(m.root.attributes)
        attrs.pop("to", None)
        return op.Cast(x, to=to, **attrs)


def _scalar(arr) -> bool:
    return arr is not None and np.asarray(arr).size == 1


class MinMaxToClip(Rule):
    """Min(Max(x, lo), hi) and Max(Min(x, hi), lo) with scalar constants lo <= hi -> Clip(x, lo, hi).

    Exact for non-zero bounds: NaN in x stays NaN either way (onnxruntime's Min, Max and Clip propagate NaN, as
    do numpy and the ONNX reference evaluator), +-inf clamp alike, and a tie x == lo (or hi) of non-zero
    floats means the same bits. Refused: NaN bounds, lo > hi. A zero bound applies only under fast-math:
    on a tie of signed zeros onnxruntime's Max/Min with a constant scalar return the bound while Clip returns
    x (Min(Max(-0.0, 0.0), 6) is +0.0, Clip(-0.0, 0, 6) is -0.0). Integers: exact (Clip takes the same types).
    """

    fast_math: ClassVar[str] = "a zero bound (Relu6 as Min(Max(x, 0), 6)): -0.0 and +0.0 ties differ"

    min_opset = 12

    def pattern(self, op, x, lo, hi):
        return Or(op.Min(op.Max(x, lo.const()), hi.const()), op.Max(op.Min(x, hi.const()), lo.const()))

    def check(self, m, x, lo, hi):
        a, b = m.const(lo), m.const(hi)
        require(_scalar(a) and _scalar(b), "the bounds are not scalars")
        require(x.dtype is not None and lo.dtype == x.dtype and hi.dtype == x.dtype, "element types differ")
        require(x.rank is not None and (x.rank >= max(np.ndim(a), np.ndim(b))), "the bounds would broadcast x")
        fa, fb = np.asarray(a).reshape(()), np.asarray(b).reshape(())
        if np.issubdtype(fa.dtype, np.floating):
            require(not (np.isnan(fa) or np.isnan(fb)), "a bound is NaN")
            require(m.fast_math or (fa != 0 and fb != 0),
                    "a zero bound: Min/Max and Clip break -0.0/+0.0 ties differently (applies only under fast-math)")
        return require(fa <= fb, "lo > hi")

    def rewrite(self, op, m, x, lo, hi):
        a = np.asarray(m.const(lo)).reshape(())
        b = np.asarray(m.const(hi)).reshape(())
        return op.Clip(x, op.const(a, hint="clip_min"), op.const(b, hint="clip_max"))


class DoubleNegation(Rule):
    """Neg(Neg(x)) -> x and Not(Not(x)) -> x.

    Exact: float Neg flips the sign bit (NaN, +-inf, +-0.0 included), twice restores it; integer Neg wraps
    (Neg(INT_MIN) = INT_MIN), twice is x again; Not is a boolean involution.
    """

    def pattern(self, op, x):
        return Or(op.Neg(op.Neg(x)), op.Not(op.Not(x)))

    def rewrite(self, op, m, x):
        return x


class IdempotentUnary(Rule):
    """f(f(x)) -> f(x) for idempotent f (Relu, Abs, Floor, Ceil, Round, Sign).

    Exact: each f maps onto its own fixed points, special values included: Relu(x) is >= 0, -0.0 or NaN and
    Relu keeps those; Abs(x) is non-negative or NaN (Abs(INT_MIN) = INT_MIN wraps to itself); Floor, Ceil and
    Round return integral values, +-0.0 (Ceil(-0.5) = -0.0), +-inf or NaN, which they keep; Sign returns -1, 0,
    1 or NaN, which it keeps. Checked bit for bit on onnxruntime over NaN, +-inf, +-0.0, subnormals, halves and
    the integer extremes.
    """

    OPS = ("Relu", "Abs", "Floor", "Ceil", "Round", "Sign")

    def pattern(self, op, x):
        return Or(*[getattr(op, o)(getattr(op, o)(x, _name="inner")) for o in self.OPS])

    def rewrite(self, op, m, x):
        return m["inner"].outputs[0]


class ConcatFlatten(Rule):
    """Concat(..., Concat(a, b), ...) on the same axis, the inner one used once -> one Concat(..., a, b, ...)."""

    def pattern(self, op, x):
        return op.Concat(x, _allow_other_inputs=True)

    def check(self, m, x):
        return require(_flattenable(m), "no input is a single-use Concat on the same axis")

    def rewrite(self, op, m, x):
        inner = _flattenable(m)
        inputs = []
        for v in m.root.inputs:
            inputs.extend(v.producer.inputs if v in inner else [v])
        return op.Concat(*inputs, axis=m.root.attr("axis"))


def _flattenable(m) -> set:
    """The root Concat's inputs that are single-use Concats along the same axis (same graph)."""
    axis = m.root.attr("axis")
    found = set()
    for v in m.root.inputs:
        p = v.producer if v is not None else None
        if (p is not None and p.op_type == "Concat" and p.domain == "" and p.graph is m.graph and axis is not None
                and p.attr("axis") == axis and v.num_uses == 1 and not m.graph.is_output(v)):
            found.add(v)
    return found


class UnsqueezeChain(Rule):
    """Unsqueeze(Unsqueeze(x, a1), a2) -> Unsqueeze(x, a) with the inserted axes of both (x's rank known)."""

    def pattern(self, op, x):
        return op.Unsqueeze(op.Unsqueeze(x, _allow_other_inputs=True, _name="inner"), _allow_other_inputs=True)

    def check(self, m, x):
        return require(_merged_unsqueeze_axes(m, x) is not None, "the axes or the input rank are unknown")

    def rewrite(self, op, m, x):
        axes = _merged_unsqueeze_axes(m, x)
        if (m.opset() or 21) >= 13:
            return op.Unsqueeze(x, op.const(np.array(axes, np.int64), hint="axes"))
        return op.Unsqueeze(x, axes=axes)


def _merged_unsqueeze_axes(m, x) -> list[int] | None:
    """The output positions of every axis the two Unsqueezes insert (sorted), or None when unknown."""
    if x.rank is None:
        return None
    inner, outer = m["inner"], m.root
    k1, a1 = operand(inner, 1, "axes", m.opsets, m)
    k2, a2 = operand(outer, 1, "axes", m.opsets, m)
    if not (k1 and k2) or a1 is None or a2 is None:
        return None
    r1 = x.rank + np.asarray(a1).size
    r2 = r1 + np.asarray(a2).size
    n1, n2 = normalize_axes(a1, r1), normalize_axes(a2, r2)
    if n1 is None or n2 is None or len(set(n1)) != len(n1) or len(set(n2)) != len(n2):
        return None
    # the outer's output positions that are not new hold the inner's output axes, in order
    kept = [i for i in range(r2) if i not in set(n2)]
    return sorted(set(n2) | {kept[j] for j in n1})


def _shape_consumers(op, inner):
    """Reshape / Flatten / Squeeze / Unsqueeze of `inner` (one pattern per op, for a root Or)."""
    return [op.Reshape(inner(), ANY, _allow_other_inputs=True), op.Flatten(inner()),
            op.Squeeze(inner(), _allow_other_inputs=True), op.Unsqueeze(inner(), _allow_other_inputs=True)]


def _non_unit(shape) -> list:
    return [d for d in shape if d != 1]


def _moves_only_unit_axes(perm: list[int], shape: tuple) -> bool:
    """True when Transpose(perm) keeps the relative order of every axis that is not statically 1: it then keeps
    the elements in order, i.e. it is a reshape (a symbolic dim counts as not 1, which is only stricter)."""
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


def _transpose_perm(m):
    t = m["t"]
    shape = t.inputs[0].shape
    if shape is None:
        return None, None
    p = transpose_perm(t, len(shape))
    if p is None or sorted(p) != list(range(len(shape))):
        return None, None
    return p, shape


class UnitTransposeReshape(Rule):
    """A Transpose that only moves size-1 axes, fed by or feeding a Reshape / Flatten / Squeeze / Unsqueeze ->
    one Reshape to the (static) output shape.

    Such a Transpose keeps the elements in order (it is a reshape), so the pair is one reshape.
    """

    benefit = 2  # before TransposeBetweenReshapes, which would keep a Transpose

    def pattern(self, op, x):
        return Or(op.Transpose(_shape_producers(op, x), _name="t"),
                  *_shape_consumers(op, lambda: op.Transpose(x, _name="t")))

    def check(self, m, x):
        perm, shape = _transpose_perm(m)
        require(perm is not None, "the permutation or the input rank is unknown")
        require(_moves_only_unit_axes(perm, shape), "the Transpose moves axes that are not (known to be) 1")
        out = static_shape(m.outputs[0])
        return require(out is not None and 0 not in out, "the output shape is not static (or is empty)")

    def rewrite(self, op, m, x):
        shape = static_shape(m.outputs[0])
        if static_shape(x) == shape:
            return x
        return op.Reshape(x, op.const(np.array(shape, np.int64), hint="shape"))


class TransposeBetweenReshapes(Rule):
    """Reshape(Transpose(Reshape(y), p)) whose outer reshape only splits axes and inserts or removes size-1 axes
    -> Transpose(Reshape(y), q) (each reshape may also be a Flatten / Squeeze / Unsqueeze).

    The outer reshape keeps the order of the non-1 axes, splitting some of them into runs of axes (row-major:
    [B*N, T, H] -> [B, N, T, H], the head split of torch's sequence-first attention), so it moves into the inner
    one: the inner reshape produces x's non-1 axes (in x's order, each split into its run) after the size-1 axes
    the output needs, and q places them. A reshape that merges axes the Transpose made adjacent is not taken.

    Shapes static, or with symbolic dims (a dynamic-axes export's batch): x's axes other than one are static and
    not 0, and that one's run is what is left of the output's dims between the others' runs (the element counts
    are equal, so its length is their product: [T, b*N, H] -> [b*N, T, H] -> [b, N, T, H] with b symbolic and
    the middle dim unnamed). The new inner shape is a constant: a symbolic dim is a 0 where y has the same dim at
    that position (Reshape's allowzero=0 copies it), or the one -1 when every other dim is a static nonzero int.
    """

    def pattern(self, op, y):
        return Or(*_shape_consumers(op, lambda: op.Transpose(_shape_producers(op, y), _name="t")))

    def check(self, m, y):
        require(_between_plan(m, y) is not None, "shapes not known well enough, or the outer reshape moves non-1 "
                                                  "axes")
        perm, shape = _transpose_perm(m)
        return require(not _moves_only_unit_axes(perm, shape), "the Transpose is a reshape (UnitTransposeReshape)")

    def rewrite(self, op, m, y):
        shape, perm = _between_plan(m, y)
        inner = y if full_shape(y) == tuple(shape) else op.Reshape(
            y, op.const(np.array(_constant_target(shape, full_shape(y)), np.int64), hint="shape"))
        return op.Transpose(inner, perm=perm)  # not the identity: the Transpose moves non-1 axes (check)


def _between_plan(m, y) -> tuple[list, list[int]] | None:
    """(shape of the new inner reshape, ints or symbols; new permutation) for TransposeBetweenReshapes, or None
    (also where that shape has no constant form, `_constant_target`)."""
    perm, _ = _transpose_perm(m)
    s = full_shape(m["t"].inputs[0]) if m["t"].inputs[0].shape is not None else None
    u = full_shape(m.outputs[0])
    s = s if s is not None else _one_unnamed(m["t"].inputs[0].shape)
    if perm is None or s is None or u is None or 0 in s or 0 in u:  # a 0 in a Reshape target would copy a dim
        return None
    runs = _split_runs(_non_unit([s[p] for p in perm]), _non_unit(u))
    if runs is None:
        return None
    k = sum(1 for d in u if d == 1)
    src = [p for p in perm if s[p] != 1]                       # x's axis behind each run, in output order
    run_of = dict(zip(src, runs, strict=True))
    inner, pos = [1] * k, {}                                   # x's non-1 axes in order, each as its run
    for a in (i for i, d in enumerate(s) if d != 1):
        pos[a] = len(inner)
        inner += run_of[a]
    placed = iter((pos[a] + j for a, run in zip(src, runs, strict=True) for j in range(len(run))))
    units = iter(range(k))
    q = [next(units) if d == 1 else next(placed) for d in u]
    if full_shape(y) != tuple(inner) and _constant_target(inner, full_shape(y)) is None:
        return None
    return inner, q


_UNNAMED = object()


def _one_unnamed(shape) -> tuple | None:
    """`shape` with its one unknown dim (None) as a placeholder that equals nothing, or None (no shape, or more
    than one unknown dim)."""
    if shape is None or sum(1 for d in shape if d is None) != 1:
        return None
    return tuple(_UNNAMED if d is None else d for d in shape)


def _constant_target(shape: list, y_shape: tuple | None) -> list[int] | None:
    """A constant Reshape target (allowzero=0) that gives `shape` (ints and symbols) from a tensor of `y_shape`:
    each symbol a 0 where y has the same symbol at that position (copied), or else the one -1 where every other
    dim is an int other than 0 (the element count then says it). None where neither holds."""
    if all(isinstance(d, int) for d in shape):
        return [int(d) for d in shape]
    copied = [i for i, d in enumerate(shape) if not isinstance(d, int) and y_shape is not None
              and i < len(y_shape) and y_shape[i] == d]
    rest = [i for i, d in enumerate(shape) if not isinstance(d, int) and i not in copied]
    if not rest:
        return [0 if i in copied else int(d) for i, d in enumerate(shape)]
    return minus_one_target(shape)


def _split_runs(dims: list, out: list) -> list[list] | None:
    """`out` as consecutive runs, one per entry of `dims`, each run's product that entry ([6, 5] and [2, 3, 5]
    -> [[2, 3], [5]]), or None when `out` merges entries (or the products do not match). Dims are not 1 (ints
    > 1, or symbols). Where one entry of `dims` is not an int (a symbol, or unnamed), its run is what the others'
    runs leave in the middle of `out` (its product by the equal element counts, the others' being nonzero ints)."""
    odd = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if not odd:
        return _int_runs(dims, out)
    if len(odd) > 1:
        return None
    i = odd[0]
    left = _int_runs(dims[:i], out, partial=True)
    right = _int_runs(dims[i + 1:][::-1], out[::-1], partial=True)
    if left is None or right is None:
        return None
    used_l, used_r = sum(len(r) for r in left), sum(len(r) for r in right)
    middle = out[used_l:len(out) - used_r]
    if not middle or used_l + used_r + len(middle) != len(out):
        return None
    return left + [middle] + [r[::-1] for r in right[::-1]]


def _int_runs(dims: list, out: list, partial: bool = False) -> list[list] | None:
    """`_split_runs` for int `dims`, consuming `out` from its start (all of it, unless `partial`); the runs'
    entries must be ints."""
    runs, j = [], 0
    for d in dims:
        run, prod = [], 1
        while prod < d and j < len(out) and isinstance(out[j], int):
            run.append(out[j])
            prod *= out[j]
            j += 1
        if prod != d:
            return None
        runs.append(run)
    return runs if partial or j == len(out) else None


class ReshapeOfExpand(Rule):
    """Reshape / Flatten / Squeeze / Unsqueeze of Expand(x, shape) that keeps the expanded shape -> the Expand.

    The expanded shape is computed from x's static shape and the constant target, so this also works where
    shape inference ran before the target was folded to a constant (and left the Expand's shape unknown).
    """

    min_opset = 8

    def pattern(self, op, x, shape):
        return Or(*_shape_consumers(op, lambda: op.Expand(x, shape.const())))

    def check(self, m, x, shape):
        xs = static_shape(x)
        require(xs is not None, "the input shape is not static")
        target = np.asarray(m.const(shape)).reshape(-1)
        require(target.dtype.kind in "iu" and (target >= 0).all(), "the target shape is not non-negative ints")
        try:
            expanded = tuple(int(d) for d in np.broadcast_shapes(xs, tuple(int(d) for d in target)))
        except ValueError:
            return require(False, "the shapes do not broadcast")
        return require(expanded == static_shape(m.outputs[0]), "the reshape changes the expanded shape")

    def rewrite(self, op, m, x, shape):
        return op.Expand(x, shape)  # a new node: its inferred type has the static shape


RULES: list[type[Rule]] = [ReshapeChain, TransposeChain, CastChain, MinMaxToClip, DoubleNegation, IdempotentUnary,
                          ConcatFlatten, UnsqueezeChain, UnitTransposeReshape, TransposeBetweenReshapes,
                          ReshapeOfExpand]

__all__ = ["RULES", "cast_is_exact", "full_shape"]
