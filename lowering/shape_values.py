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
        if sv.is_static:
            arr = np.array(sv.dims, dtype=np.int64)
            return relax.const(arr.reshape(()) if sv.scalar else arr)
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
        else:
            self.lowering.exprs[n.outputs[0]] = result
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
        if data is None or data.scalar:
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

    # -- consumers that take a Relax shape ---------------------------------------------------------
    def _op_Reshape(self, n: Node):
        from tvm import relax

        target = self.of(n.inputs[1])
        if target is None or n.inputs[1] not in self.values or target.scalar:
            return None
        data = self.lowering.exprs[n.inputs[0]]
        in_dims = self._input_shape(n.inputs[0])
        dims = []
        for i, d in enumerate(target.dims):
            if isinstance(d, int) and d == 0 and not n.attr("allowzero", 0):
                if in_dims is None or i >= len(in_dims):
                    return None
                d = in_dims[i]
            dims.append(d)
        return self.lowering.bb.emit(relax.op.reshape(data, relax.ShapeExpr([_simplify(d) for d in dims])))

    def _op_Expand(self, n: Node):
        from tvm import relax

        target = self.of(n.inputs[1])
        in_dims = self._input_shape(n.inputs[0])
        if target is None or n.inputs[1] not in self.values or in_dims is None:
            return None
        rank = max(len(target.dims), len(in_dims))
        shape = [1] * (rank - len(target.dims)) + list(target.dims)
        src = [1] * (rank - len(in_dims)) + list(in_dims)
        out = [s if (isinstance(t, int) and t == 1) else t for t, s in zip(shape, src, strict=False)]
        data = self.lowering.exprs[n.inputs[0]]
        return self.lowering.bb.emit(relax.op.broadcast_to(data, relax.ShapeExpr([_simplify(d) for d in out])))

    def _op_ConstantOfShape(self, n: Node):
        from tvm import relax

        target = self.of(n.inputs[0])
        if target is None or n.inputs[0] not in self.values:
            return None
        value = n.attr("value")
        arr = value.numpy().reshape(-1) if value is not None else np.zeros(1, np.float32)
        fill = relax.const(arr[0], str(arr.dtype))
        return self.lowering.bb.emit(relax.op.full(relax.ShapeExpr(target.dims), fill, str(arr.dtype)))
