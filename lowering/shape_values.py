"""Symbolic evaluation of shape computations during lowering.

Exporters compute reshape targets at run time: `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`. With a
symbolic batch dim these cannot be folded to constants, and TVM's ONNX converters reject them (Reshape wants a
Relax shape, not a tensor). This module evaluates such small int64 computations on lists of TIR dims instead,
so `Reshape`, `Expand` and `ConstantOfShape` receive exact `ShapeExpr`s; any other consumer gets the values
materialized as a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.core import Node, Value
from .converters import const, node_label

MAX_ELEMENTS = 64


@dataclass
class ShapeValue:
    """A small int64 tensor (rank 0 or 1) whose elements are ints or TIR expressions."""

    dims: list
    scalar: bool = False

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


def _simplify(e: Any) -> Any:
    from tvm import sym, tirx

    if isinstance(e, int):
        return e
    if isinstance(e, tirx.IntImm):
        return int(e.value)
    simplified = sym.Analyzer().simplify(e)
    return int(simplified.value) if isinstance(simplified, tirx.IntImm) else simplified


def _provably_non_negative(e: Any) -> bool:
    """True if `e` >= 0 for every value of its TIR variables (all of them are tensor dims, so >= 0)."""
    from tvm import ir, sym, tirx

    if isinstance(e, int):
        return e >= 0
    analyzer = sym.Analyzer()
    for var in tirx.analysis.undefined_vars(e):
        analyzer.bind(var, ir.Range(0, 2**62))
    return bool(analyzer.can_prove(e >= 0))


def _provably_equal(a: Any, b: Any) -> bool:
    """True if the dims `a` and `b` (ints or TIR expressions) are equal for every value of their variables."""
    diff = a - b if isinstance(a, int) and isinstance(b, int) else _simplify(a - b)
    return isinstance(diff, int) and diff == 0


def _may_copy(d: Any, dim: Any) -> bool:
    """True if a Reshape's shape element `d` (allowzero=0) may be 0 when the library runs and then copy an input
    `dim` that differs from 0: False where `d` is a constant or provably >= 1, equals `dim`, or is a variable whose
    0 makes `dim` 0 too (`[B * S, 40] -> [B, S, 40]`: B = 0 empties the input's first dim)."""
    from tvm import sym, tirx

    if isinstance(d, int) or _provably_equal(d, dim) or provably_positive(d):
        return False
    if isinstance(d, tirx.Var) and not isinstance(dim, int):
        at_zero = sym.Analyzer()
        at_zero.bind(d, tirx.const(0, "int64"))  # shape dims are int64
        if isinstance(zero := at_zero.simplify(dim), tirx.IntImm) and int(zero.value) == 0:
            return False
    return not (isinstance(dim, int) and dim == 0)


def _inferred(dims: list, in_dims: list) -> list:
    """`dims` with its -1 (at most one) made the input's size over the product of the others (1 where that is 0:
    no run-time division by zero; the size check then refuses what cannot fit)."""
    if -1 not in dims:
        return dims
    from tvm import tirx

    total, known = 1, 1
    for d in in_dims:
        total = total * d
    for d in dims:
        if not (isinstance(d, int) and d == -1):
            known = known * d
    if isinstance(total, int) and isinstance(known, int):
        missing = total // known if known else 0
    else:
        missing = _simplify(tirx.floordiv(total, known))
        if not (provably_positive(known) or _provably_equal(missing * known, total)):
            missing = _simplify(tirx.floordiv(total, tirx.max(known, 1)))
    return [missing if isinstance(d, int) and d == -1 else d for d in dims]


def provably_positive(e: Any) -> bool:
    """True if `e` >= 1 for every value of its TIR variables (tensor dims, so each >= 0)."""
    return _provably_non_negative(e - 1)


def tirx_ceildiv(a: Any, b: int) -> Any:
    from tvm import tirx

    return a if b == 1 else tirx.floordiv(a + (b - 1), b)


class ShapeEvaluator:
    """Tracks `ShapeValue`s for IR values and lowers the ops that read or make them."""

    def __init__(self, lowering):
        self.lowering = lowering
        self.values: dict[Value, ShapeValue] = {}

    # -- reading ----------------------------------------------------------------------------------
    def of(self, v: Value | None) -> ShapeValue | None:
        """The symbolic value of `v`, if it is (or is a small constant usable as) a shape value."""
        if v is None:
            return None
        sv = self.values.get(v)
        if sv is not None:
            return sv
        data = v.const_value() if v.const is not None or v.producer is not None else None
        if data is None or data.dtype.kind not in "iu" or data.ndim > 1 or data.size > MAX_ELEMENTS:
            return None
        return ShapeValue([int(x) for x in data.reshape(-1)], scalar=data.ndim == 0)

    def tracked(self, v: Value | None) -> ShapeValue | None:
        """The symbolic value of `v` only if an earlier shape op produced it (not a plain constant)."""
        return None if v is None else self.values.get(v)

    def materialize(self, v: Value):
        """A Relax tensor expression for a shape value (for consumers that need a tensor)."""
        from tvm import relax

        sv = self.values[v]
        if sv.is_static:  # int64 as in ONNX (relax.const alone would narrow it to int32)
            arr = np.array(sv.dims, dtype=np.int64)
            return const(arr.reshape(()) if sv.scalar else arr)
        bb = self.lowering.bb
        t = bb.emit(relax.op.shape_to_tensor(relax.ShapeExpr(sv.dims)))
        return bb.emit(relax.op.reshape(t, ())) if sv.scalar else t

    # -- evaluation -------------------------------------------------------------------------------
    def try_lower(self, n: Node) -> bool:
        """Lower `n` symbolically (record its shape value, or emit a shape-consuming op). False: not handled."""
        if n.domain not in ("", "ai.onnx") or len(n.outputs) != 1 or n.outputs[0] is None:
            return False
        handler = getattr(self, f"_op_{n.op_type}", None)
        if handler is None:
            return False
        result = handler(n)
        if result is None:
            return False
        if isinstance(result, ShapeValue):
            if len(result.dims) > MAX_ELEMENTS:
                return False
            result.dims = [_simplify(d) for d in result.dims]
            self.values[n.outputs[0]] = result
        else:  # an op emitted on shape values: typed now, as every converter's result is
            self.lowering.exprs[n.outputs[0]] = self.lowering.bb.normalize(result)
        return True

    def _input_shape(self, v: Value) -> list | None:
        from tvm import relax

        expr = self.lowering.exprs.get(v)
        if expr is None or not isinstance(expr.ty, relax.TensorType) or not isinstance(expr.ty.shape, relax.ShapeExpr):
            return None
        return list(expr.ty.shape.values)

    def _op_Shape(self, n: Node):
        dims = self._input_shape(n.inputs[0])
        if dims is None:
            return None
        rank = len(dims)
        start, end = n.attr("start", 0), n.attr("end", rank)
        start, end = (max(0, min(rank, s + rank if s < 0 else s)) for s in (start, end))
        return ShapeValue(dims[start:end])

    def _op_Size(self, n: Node):
        dims = self._input_shape(n.inputs[0])
        if dims is None:
            return None
        total = 1
        for d in dims:
            total = total * d
        return ShapeValue([total], scalar=True)

    def _op_Identity(self, n: Node):
        return self.tracked(n.inputs[0])

    def _op_Cast(self, n: Node):
        sv = self.tracked(n.inputs[0])
        return sv if sv is not None and n.attr("to") in (6, 7) else None

    def _op_Gather(self, n: Node):
        data, idx = self.tracked(n.inputs[0]), self.of(n.inputs[1])
        if data is None or idx is None or data.scalar or not idx.is_static or n.attr("axis", 0) != 0:
            return None
        size = len(data.dims)
        picked = []
        for i in idx.dims:
            if not -size <= i < size:
                return None
            picked.append(data.dims[i])
        return ShapeValue(picked, scalar=idx.scalar)

    def _op_Unsqueeze(self, n: Node):
        sv = self.tracked(n.inputs[0])
        axes = self.of(n.inputs[1]) if len(n.inputs) > 1 else ShapeValue(list(n.attr("axes", [])))
        if sv is None or not sv.scalar or axes is None or axes.dims not in ([0], [-1]):
            return None
        return ShapeValue(list(sv.dims))

    def _op_Squeeze(self, n: Node):
        sv = self.tracked(n.inputs[0])
        if sv is None or sv.scalar or len(sv.dims) != 1:
            return None
        return ShapeValue(list(sv.dims), scalar=True)

    def _op_Concat(self, n: Node):
        parts = [self.of(v) for v in n.inputs]
        if any(p is None or p.scalar for p in parts) or not any(v in self.values for v in n.inputs):
            return None
        return ShapeValue([d for p in parts for d in p.dims])

    def _op_Slice(self, n: Node):
        data = self.tracked(n.inputs[0])
        if data is None:
            return self._slice_tensor(n)
        if data.scalar:
            return None
        args = [self.of(v) if i < len(n.inputs) else None for i, v in enumerate(n.inputs[1:5], 1)]
        while len(args) < 4:
            args.append(None)
        starts, ends, axes, steps = args
        if starts is None or ends is None or not starts.is_static or not ends.is_static:
            return None
        if (axes is not None and axes.dims not in ([0], [-1])) or (steps is not None and not steps.is_static):
            return None
        step = steps.dims[0] if steps is not None else 1
        return ShapeValue(data.dims[slice(starts.dims[0], ends.dims[0], step)])

    def _slice_tensor(self, n: Node):
        # x[:, :seq] with a symbolic `seq` (exporters slice position-id buffers so): the frontend's Slice with
        # run-time bounds has an unknown shape, which loses every shape downstream. Bounds that are provably
        # >= 0 (made of tensor dims) and positive static steps only. ONNX clamps the bounds to the dim; a
        # symbolic bound not provably within it is checked at run time instead (a bound past the dim fails
        # there: TVM's clamped strided_slice does not build with symbolic bounds).
        from tvm import relax, tirx

        if self.lowering.opset < 10:  # bounds were attributes
            return None
        args = [self.of(v) if v is not None else None for v in n.inputs[1:5]]
        args += [None] * (4 - len(args))
        starts, ends, axes, steps = args
        if starts is None or ends is None or starts.scalar or ends.scalar or len(starts.dims) != len(ends.dims):
            return None
        if not any(v in self.values for v in n.inputs[1:3]) or starts.is_static and ends.is_static:
            return None
        in_dims = self._input_shape(n.inputs[0])
        if in_dims is None:
            return None
        rank, count = len(in_dims), len(starts.dims)
        axes_ = list(range(count)) if axes is None else axes.dims
        steps_ = [1] * count if steps is None else steps.dims
        if not (axes is None or axes.is_static) or not (steps is None or steps.is_static) or len(axes_) != count \
                or len(steps_) != count or any(st <= 0 for st in steps_) or any(not -rank <= a < rank for a in axes_):
            return None
        axes_ = [a % rank for a in axes_]
        if len(set(axes_)) != count:
            return None
        begins, finals, checks, out = [], [], [], [_simplify(d) for d in in_dims]
        for start, end, axis, step in zip(starts.dims, ends.dims, axes_, steps_, strict=True):
            dim = _simplify(in_dims[axis])
            start, end = (_simplify(v) for v in (start, end))
            bounds = []
            for v in (start, end):
                if isinstance(v, int):
                    if isinstance(dim, int):
                        v = min(max(v + dim if v < 0 else v, 0), dim)
                    elif v < 0 or v >= 2**31:  # INT64_MAX ("to the end") and negatives on a symbolic dim
                        return None
                elif not _provably_non_negative(v):
                    return None
                bounds.append(v)
            start, end = bounds
            if not _provably_non_negative(end - start):
                return None
            if not _provably_non_negative(dim - end):
                checks.append(tirx.floordiv(end, dim + 1))  # 0 exactly when end <= dim
            begins.append(start)
            finals.append(end)
            out[axis] = _simplify((end - start + step - 1) // step if isinstance(end - start, int)
                                  else tirx_ceildiv(end - start, step))
        bb = self.lowering.bb
        y = bb.emit(relax.op.strided_slice(self.lowering.exprs[n.inputs[0]], axes_, begins, finals, steps_,
                                           assume_inbound=True))
        if not checks:
            return y
        # The run-time check: a tensor of `sum(floordiv(end, dim + 1))` elements matched against 0 elements,
        # concatenated to the result so that it is not dead code.
        dtype = str(y.ty.dtype.dtype)
        empty = bb.emit(relax.op.zeros(relax.ShapeExpr([_simplify(sum(checks[1:], checks[0]))]), dtype))
        empty = bb.match_cast(empty, relax.TensorType([0], dtype))
        flat = relax.op.concat([relax.op.reshape(y, [-1]), empty], axis=0)
        return bb.emit(relax.op.reshape(flat, relax.ShapeExpr(out)))

    def _binary(self, n: Node, fn):
        a, b = self.of(n.inputs[0]), self.of(n.inputs[1])
        if a is None or b is None or not (n.inputs[0] in self.values or n.inputs[1] in self.values):
            return None
        if len(a.dims) != len(b.dims) and 1 not in (len(a.dims), len(b.dims)):
            return None
        size = max(len(a.dims), len(b.dims))
        ad = a.dims * size if len(a.dims) == 1 else a.dims
        bd = b.dims * size if len(b.dims) == 1 else b.dims
        return ShapeValue([fn(x, y) for x, y in zip(ad, bd, strict=False)], scalar=a.scalar and b.scalar)

    def _op_Add(self, n: Node):
        return self._binary(n, lambda x, y: x + y)

    def _op_Sub(self, n: Node):
        return self._binary(n, lambda x, y: x - y)

    def _op_Mul(self, n: Node):
        return self._binary(n, lambda x, y: x * y)

    def _op_Div(self, n: Node):
        from tvm import tirx

        return self._binary(n, lambda x, y: x // y if isinstance(x, int) and isinstance(y, int)
                            else tirx.floordiv(x, y))

    def _op_Range(self, n: Node):
        # arange(0, seq): a tensor whose length is a symbolic dim (the frontend's Range has an unknown length,
        # which loses every shape downstream). Only where the length is provably non-negative, as TVM's
        # arange takes it to be (ONNX: max(ceil((limit - start) / delta), 0)).
        from tvm import relax

        args = [self.of(v) for v in n.inputs[:3]]
        if len(args) != 3 or any(a is None or not a.scalar for a in args) or not any(
                v in self.values for v in n.inputs[:3]):
            return None
        start, limit, delta = (_simplify(a.dims[0]) for a in args)
        dtype = self.lowering._dtype(n.inputs[0])
        if dtype not in ("int32", "int64") or not isinstance(delta, int) or delta <= 0:
            return None
        if isinstance(start, int) and isinstance(limit, int):
            return const(np.arange(start, limit, delta, dtype=dtype))
        if not _provably_non_negative(limit - start):
            return None
        return self.lowering.bb.emit(relax.op.arange(start, limit, delta, dtype))

    # -- consumers that take a Relax shape ---------------------------------------------------------
    def _op_Reshape(self, n: Node):
        from tvm import relax

        target = self.of(n.inputs[1])
        sv = self.tracked(n.inputs[0])
        if sv is not None:  # a shape value reshaped: scalar <-> [1], or [k] -> [-1] / [k] / [0] (copy)
            if target is None or not target.is_static or target.scalar or len(target.dims) > 1:
                return None
            size = len(sv.dims)
            if target.dims == [] and size == 1:
                return ShapeValue(list(sv.dims), scalar=True)
            if len(target.dims) == 1 and target.dims[0] in (-1, size) or (
                    target.dims == [0] and not n.attr("allowzero", 0) and not sv.scalar):
                return ShapeValue(list(sv.dims))
            return None
        if target is None or n.inputs[1] not in self.values or target.scalar:
            return None
        data = self.lowering.exprs[n.inputs[0]]
        in_dims = self._input_shape(n.inputs[0])
        copies = not n.attr("allowzero", 0)
        if in_dims is None:  # an input of unknown shape: the dims as written (Relax infers a -1), no 0 to copy
            if copies and any(isinstance(_simplify(d), int) and _simplify(d) == 0 for d in target.dims):
                return None
            return self.lowering.bb.emit(relax.op.reshape(data, relax.ShapeExpr([_simplify(d) for d in target.dims])))
        dims, risky = [], []
        for i, d in enumerate(_simplify(d) for d in target.dims):
            if copies and isinstance(d, int) and d == 0:
                if i >= len(in_dims):
                    return None
                d = in_dims[i]
            elif isinstance(d, int) and d < -1:
                return None
            elif copies and i < len(in_dims) and _may_copy(d, in_dims[i]):
                risky.append((i, d, in_dims[i]))
            dims.append(d)
        if dims.count(-1) > 1:
            return None
        from .ops.shape import checked_reshape, zero_copies_checked

        bb = self.lowering.bb
        if risky:  # lowered for the dims as written; the call fails where a 0 would copy another dim instead
            data = zero_copies_checked(bb, self.lowering, data, risky, node_label(n))
        return bb.emit(checked_reshape(bb, data, in_dims, _inferred(dims, in_dims)))

    def _op_Expand(self, n: Node):
        from .broadcast import broadcast_to

        target = self.of(n.inputs[1])
        in_dims = self._input_shape(n.inputs[0])
        if target is None or in_dims is None or target.scalar:
            return None
        # a constant target too where the input has symbolic dims (the frontend reads static dims only) or the
        # target has a 0 (the frontend refuses it; 1 broadcasts to 0 as to any size)
        if n.inputs[1] not in self.values and all(isinstance(_simplify(d), int) for d in in_dims) and not any(
                isinstance(t, int) and t == 0 for t in target.dims):
            return None
        if any(isinstance(t, int) and t < 0 for t in target.dims):
            return None
        rank = max(len(target.dims), len(in_dims))
        shape = [1] * (rank - len(target.dims)) + list(target.dims)
        src = [1] * (rank - len(in_dims)) + list(in_dims)
        out = [s if (isinstance(t, int) and t == 1) else t for t, s in zip(shape, src, strict=False)]
        data = self.lowering.exprs[n.inputs[0]]
        return broadcast_to(self.lowering.bb, data, [_simplify(d) for d in out])

    def _op_ConstantOfShape(self, n: Node):
        from tvm import relax

        target = self.of(n.inputs[0])
        if target is None or n.inputs[0] not in self.values:
            return None
        value = n.attr("value")
        arr = value.numpy().reshape(-1) if value is not None else np.zeros(1, np.float32)
        fill = relax.const(arr[0], str(arr.dtype))
        return self.lowering.bb.emit(relax.op.full(relax.ShapeExpr(target.dims), fill, str(arr.dtype)))
