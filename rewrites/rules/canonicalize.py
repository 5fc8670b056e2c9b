"""canonicalize: merge chains into one op where that is exact; prefer the canonical form of a computation."""

from __future__ import annotations

import numpy as np

from ...ir.types import DataType
from ..pattern import ANY, Or, require
from ..rule import Rule
from ._util import full_shape, static_shape


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


def _perm(node, rank):
    p = node.attr("perm")
    if p is None:
        return None if rank is None else list(range(rank - 1, -1, -1))
    return [int(i) for i in p]


class TransposeChain(Rule):
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1 o p2)."""

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _name="inner"))

    def check(self, m, x):
        p1, p2 = _perm(m["inner"], x.rank), _perm(m.root, x.rank)
        return require(p1 is not None and p2 is not None and len(p1) == len(p2) > 0, "unknown permutations")

    def rewrite(self, op, m, x):
        p1, p2 = _perm(m["inner"], x.rank), _perm(m.root, x.rank)
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
    """Cast(Cast(x, T1), T2) -> Cast(x, T2) when the first cast is exact (x's values survive T1 unchanged)."""

    def pattern(self, op, x):
        return op.Cast(op.Cast(x, _name="inner"))

    def check(self, m, x):
        t1 = m["inner"].attr("to")
        return require(cast_is_exact(x.dtype, t1), "the first cast may lose precision or range")

    def rewrite(self, op, m, x):
        to = int(m.root.attr("to"))
        if x.dtype is not None and int(x.dtype) == to:
            return x
        return op.Cast(x, to=to)


def _scalar(arr) -> bool:
    return arr is not None and np.asarray(arr).size == 1


class MinMaxToClip(Rule):
    """Min(Max(x, lo), hi) and Max(Min(x, hi), lo) with scalar constants lo <= hi -> Clip(x, lo, hi)."""

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
        return require(fa <= fb, "lo > hi")

    def rewrite(self, op, m, x, lo, hi):
        a = np.asarray(m.const(lo)).reshape(())
        b = np.asarray(m.const(hi)).reshape(())
        return op.Clip(x, op.const(a, hint="clip_min"), op.const(b, hint="clip_max"))


class DoubleNegation(Rule):
    """Neg(Neg(x)) -> x and Not(Not(x)) -> x."""

    def pattern(self, op, x):
        return Or(op.Neg(op.Neg(x)), op.Not(op.Not(x)))

    def rewrite(self, op, m, x):
        return x


class IdempotentUnary(Rule):
    """f(f(x)) -> f(x) for idempotent f (Relu, Abs, Floor, Ceil, Round, Sign)."""

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


RULES: list[type[Rule]] = [ReshapeChain, TransposeChain, CastChain, MinMaxToClip, DoubleNegation, IdempotentUnary,
                          ConcatFlatten]

__all__ = ["RULES", "cast_is_exact", "full_shape"]
