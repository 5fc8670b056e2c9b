"""Small helpers shared by the rule families: shapes, broadcasting, attribute-or-input operands."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...ir.core import Node, Value
from ...ir.types import DataType
from ..pattern import node_attr

INT64_MAX = 2**63 - 1


def full_shape(v: Value | None) -> tuple | None:
    """The shape if its rank and every dim are known (ints or symbolic names), else None."""
    if v is None:
        return None
    s = v.shape
    if s is None or any(d is None for d in s):
        return None
    return tuple(s)


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    """The shape if every dim is a known integer."""
    s = full_shape(v)
    if s is None or not all(isinstance(d, int) for d in s):
        return None
    return tuple(int(d) for d in s)


def minus_one_target(shape) -> list[int] | None:
    """A constant Reshape target giving `shape` (a known rank; ints, symbols, None) from a tensor of as many
    elements: its ints, and its one dim that is not an int as -1, where the other dims are nonzero ints (the
    element count then says that dim: [S*b, E] of a symbolic batch b is [-1, E]); None otherwise (no shape, or
    two dims not ints, or a 0, which a Reshape would take as a copy of a dim)."""
    if shape is None:
        return None
    odd = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(odd) > 1 or any(isinstance(d, int) and d <= 0 for d in shape):
        return None
    return [-1 if i in odd else int(d) for i, d in enumerate(shape)]


def same_shape(a: Value | None, b: Value | None) -> bool:
    """True when both shapes are fully known and equal (equal symbolic names count as equal)."""
    sa, sb = full_shape(a), full_shape(b)
    return sa is not None and sb is not None and sa == sb


def same_dtype(a: Value | None, b: Value | None) -> bool:
    return a is not None and b is not None and a.dtype is not None and a.dtype == b.dtype


def broadcast_keeps_shape(x: Value, c_shape: tuple) -> bool:
    """True if broadcasting `x` with a tensor of shape `c_shape` yields exactly x's shape."""
    xs = full_shape(x)
    if xs is None or len(c_shape) > len(xs):
        return False
    for xd, cd in zip(xs[len(xs) - len(c_shape):], c_shape, strict=False):
        if cd == 1:
            continue
        if not (isinstance(xd, int) and xd == cd):
            return False
    return True


def operand(node: Node, index: int, attr: str, opsets: dict[str, int], m=None) -> tuple[bool, Any]:
    """An operand that moved from an attribute to an input across opsets (Squeeze axes, Pad pads, ...).

    Returns (known, value): from the input `index` when present (known only if it is a constant), else from
    the attribute `attr`, else (True, None).
    """
    if index < len(node.inputs) and node.inputs[index] is not None:
        arr = m.const(node.inputs[index]) if m is not None else node.inputs[index].const_value()
        if arr is None:
            return False, None
        return True, arr
    a = node.attributes.get(attr)
    if a is not None:
        return True, np.asarray(a.value)
    return True, node_attr(node, attr, opsets)


def np_dtype(v: Value) -> np.dtype | None:
    dt = v.dtype
    if dt is None:
        return None
    try:
        return DataType(dt).numpy()
    except ValueError:
        return None


def transpose_perm(node: Node, rank: int | None) -> list[int] | None:
    """A Transpose node's permutation: its `perm`, or the reversal of `rank` axes when it has none (ONNX's
    default); None when it has none and the rank is unknown."""
    p = node.attr("perm")
    if p is None:
        return None if rank is None else list(range(rank - 1, -1, -1))
    return [int(i) for i in p]

def is_float(v: Value | None) -> bool:
    return v is not None and v.dtype is not None and DataType(v.dtype) in (
        DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16, DataType.BFLOAT16)


def normalize_axes(axes, rank: int) -> list[int] | None:
    out = []
    for a in np.asarray(axes).reshape(-1).tolist():
        a = int(a)
        if a < -rank or a >= rank:
            return None
        out.append(a + rank if a < 0 else a)
    return out


def origin_crop(m, v: Value, only_axis: int | None = None) -> np.ndarray | None:
    """The constant table T when `v` is T cropped from its origin at run time (a chain of Slices with starts 0 and
    steps 1, ends computed: `causal[:t, :t]`, `cos[:t]` of a dynamic-shape export), of `v`'s rank, else None.
    `only_axis`: every Slice cuts that axis only. `m`: a rule match (for `m.const`)."""
    rank = len(full_shape(v) or ())
    node = v.producer
    while node is not None and node.op_type == "Slice" and node.domain in ("", "ai.onnx") and len(node.inputs) >= 3:
        ins = list(node.inputs) + [None] * (5 - len(node.inputs))
        starts = m.const(ins[1])
        steps = m.const(ins[4]) if ins[4] is not None else np.ones(1, np.int64)  # (computed: anything)
        if starts is None or np.any(np.asarray(starts) != 0) or steps is None or np.any(np.asarray(steps) != 1):
            return None
        if only_axis is not None:
            axes = m.const(ins[3]) if ins[3] is not None else np.arange(rank)
            if axes is None or normalize_axes(axes, rank) != [only_axis]:
                return None
        v = ins[0]
        node = v.producer
    table = m.const(v)
    return np.asarray(table) if table is not None and rank and np.ndim(table) == rank else None


def shape_elements(m, v: Value | None, depth: int = 8) -> list | None:
    """The elements of `v`, a 1-D (or scalar) int64 value computed from shapes, each an int (a constant element)
    or `(x, axis)` (the dim `axis` of value x, read by a Shape): what a dynamic-shape export's Reshape target
    `Concat(Shape(t)[0:1], [8], Shape(t)[3:5])` or `Concat(Unsqueeze(Gather(Shape(x), 0)), ...)` holds. Reads
    constants, Shape (its start / end), Slice with constant starts and ends (step 1), Gather with constant indices,
    Unsqueeze / Squeeze / Cast to int64 / Identity, and Concat, every value on the way of a known rank of at most 1
    (a [4, 1] column sliced on its last axis keeps its elements: read as a list it was cut, a breaker's target that
    was another shape than it read); None where an element is none of these."""
    if v is None or depth < 0 or v.shape is None or len(v.shape) > 1:
        return None
    c = m.const(v)
    if c is not None:
        arr = np.asarray(c)
        return [int(e) for e in arr.reshape(-1)] if arr.dtype.kind in "iu" and arr.ndim <= 1 else None
    node = v.producer
    if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    op = node.op_type
    if op == "Shape":
        if node.inputs[0].shape is None:
            return None
        rank = len(node.inputs[0].shape)
        start, end = node.attr("start", 0), node.attr("end", rank)
        return [(node.inputs[0], a) for a in range(rank)[slice(start, end)]]
    if op in ("Unsqueeze", "Squeeze", "Identity") or op == "Cast" and node.attr("to") == int(DataType.INT64):
        return shape_elements(m, node.inputs[0], depth - 1)
    if op == "Concat":
        parts = [shape_elements(m, x, depth - 1) for x in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    src = shape_elements(m, node.inputs[0], depth - 1)
    if src is None:
        return None
    if op == "Gather" and node.attr("axis", 0) == 0:
        idx = m.const(node.inputs[1]) if len(node.inputs) > 1 else None
        if idx is None or np.asarray(idx).ndim > 1:
            return None
        picks = [int(i) for i in np.asarray(idx).reshape(-1)]
        return [src[i] for i in picks] if all(-len(src) <= i < len(src) for i in picks) else None
    if op == "Slice":
        args = [m.const(x) if i < len(node.inputs) and x is not None else None
                for i, x in enumerate(node.inputs[1:5], start=1)]
        starts, ends = args[0], args[1] if len(args) > 1 else None
        axes, steps = (args[2] if len(args) > 2 else None), (args[3] if len(args) > 3 else None)
        if starts is None or ends is None or np.asarray(starts).size != 1 or np.asarray(ends).size != 1 \
                or (axes is not None and int(np.asarray(axes).reshape(-1)[0]) not in (0, -1)) \
                or (steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1) \
                or any(len(node.inputs) > i and node.inputs[i] is not None and args[i - 1] is None for i in (3, 4)):
            return None
        lo, hi = (int(np.clip(int(np.asarray(a).reshape(-1)[0]), -INT64_MAX, INT64_MAX)) for a in (starts, ends))
        return src[slice(lo, hi)]
    return None
