"""Bounds of a value computed from constants and integer / bool graph inputs (interval arithmetic), for rules whose
rewrite is exact only when some value cannot reach a threshold (an attention mask that never holds its dtype's
minimum: see transformer_attention.check_no_masked_row).

`value_bounds(m, v)` gives (lo, hi) with every element of v in [lo, hi] (float64 endpoints, +-inf allowed), or None
when no bound is known: a float graph input, an op this module does not model, NaN in a constant, a chain deeper
than `MAX_DEPTH`. Modelled: constants (the rule match's `m.const`), bool inputs [0, 1], integer inputs their dtype's
range, Cast (the input's bounds; a float cast rounds by less than the bound's own magnitude, so the bound stays a
bound once widened by one part in 2^10; to an integer type truncated toward zero; to bool [0, 1], or 1 where 0 is
out of the bounds), data movement (Reshape, Unsqueeze, Squeeze, Expand, Transpose, Slice,
Gather's data, Identity, Tile, Flatten: the input's bounds), Concat and Where (the union), Neg, Add, Sub and Mul
(interval arithmetic, rounded outwards by the same margin). An integer result (or Cast to an integer type) whose
bounds leave its type's range would wrap: no bound.
"""

from __future__ import annotations

import numpy as np

from ...ir.core import Value
from ...ir.types import DataType
from ._util import np_dtype

MAX_DEPTH = 24
_MOVES = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose", "Slice", "Gather", "Identity", "Tile",
                    "Flatten"})
_MARGIN = 2.0 ** -10  # relative widening for a float result's rounding (float16's is 2^-11)

Bounds = tuple[float, float]


def _widen(lo: float, hi: float) -> Bounds:
    return lo - abs(lo) * _MARGIN, hi + abs(hi) * _MARGIN


def _input_bounds(v: Value) -> Bounds | None:
    np_dt = np_dtype(v)
    if np_dt is None:
        return None
    if np.dtype(np_dt) == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(np_dt, np.integer):
        info = np.iinfo(np_dt)
        return float(info.min), float(info.max)
    return None


def _mul(a: Bounds, b: Bounds, *, exact: bool = False) -> Bounds | None:
    products = [x * y for x in a for y in b]
    if any(np.isnan(p) for p in products):  # 0 * inf
        return None
    return (min(products), max(products)) if exact else _widen(min(products), max(products))


def value_bounds(m, v: Value | None, depth: int = 0) -> Bounds | None:
    """(lo, hi) bounding every element of `v`, or None (see the module doc). `m`: a rule match (for `m.const`)."""
    if v is None or depth > MAX_DEPTH:
        return None
    c = m.const(v)
    if c is not None:
        arr = np.asarray(c)
        if arr.dtype.kind not in "biuf" or arr.size == 0 or (arr.dtype.kind == "f" and np.isnan(arr).any()):
            return None
        return float(arr.min()), float(arr.max())
    node = v.producer
    if node is None:
        return _input_bounds(v)
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type

    def of(i: int) -> Bounds | None:
        return value_bounds(m, node.inputs[i], depth + 1) if i < len(node.inputs) else None

    if op in _MOVES:
        return of(0)
    if op == "Cast":
        b = of(0)
        if b is None:
            return None
        lo, hi = _widen(*b)
        try:
            target = np.dtype(DataType(int(node.attr("to"))).numpy())
        except (TypeError, ValueError):
            return None
        if target.kind == "b":  # any nonzero is True (a breaker: Cast(b + 2, BOOL) had kept [2, 3])
            return (1.0, 1.0) if lo > 0 or hi < 0 else (0.0, 1.0)
        if target.kind == "f":  # a value past the target's range becomes an infinity
            info = np.finfo(target)
            lo, hi = (lo if lo >= float(info.min) else -np.inf), (hi if hi <= float(info.max) else np.inf)
        elif target.kind in "iu":
            lo, hi = float(np.trunc(lo)), float(np.trunc(hi))  # (a float truncates toward zero: 0.5 -> 0)
            if not _fits((lo, hi), target):  # (it would wrap or saturate)
                return None
        return lo, hi
    if op in ("Concat", "Where"):
        parts = [of(i) for i in (range(len(node.inputs)) if op == "Concat" else (1, 2))]
        if any(p is None for p in parts):
            return None
        return min(p[0] for p in parts), max(p[1] for p in parts)
    if op in ("Neg", "Add", "Sub", "Mul"):
        np_dt = np_dtype(v)
        integer = np_dt is not None and np.dtype(np_dt).kind in "iu"
        result = _arithmetic(op, of(0), of(1) if op != "Neg" else None, exact=integer)
        if result is None or (integer and not _fits(result, np_dt)):  # it would wrap: no bound
            return None
        if not integer and np_dt is not None and np.dtype(np_dt).kind == "f":  # past the dtype's range: an infinity
            return _overflowed(result, float(np.finfo(np_dt).max))
        return result
    return None


def _overflowed(b: Bounds, largest: float) -> Bounds:
    """Float bounds whose ends past +-largest become infinities, as the computed values do (a breaker:
    (x * 0 + 2^127) * 4 is +inf in float32, and inf * 0 a NaN, not the finite 2^129 and 0)."""
    lo, hi = b
    lo = lo if -largest <= lo <= largest else (np.inf if lo > 0 else -np.inf)
    hi = hi if -largest <= hi <= largest else (np.inf if hi > 0 else -np.inf)
    return lo, hi


#: integer bounds are float64: exact below 2^53, which integer results must stay under to be bounded
_EXACT = 2.0 ** 53


def _fits(b: Bounds, dtype) -> bool:
    """Integer bounds `b` within `dtype`'s range (compared exactly: float(int64 max) is 2^63, one past it) and
    below 2^53 in magnitude (float64 holds them exactly there)."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min) <= b[0] and b[1] <= int(info.max) and -_EXACT < b[0] and b[1] < _EXACT


def _arithmetic(op: str, a: Bounds | None, b: Bounds | None, *, exact: bool) -> Bounds | None:
    """Interval arithmetic of Neg (a only), Add, Sub, Mul, rounded outwards unless `exact` (integers); None for an
    unknown operand or NaN."""
    if a is None or (op != "Neg" and b is None):
        return None
    if op == "Neg":
        return -a[1], -a[0]
    if op == "Mul":
        return _mul(a, b, exact=exact)
    lo, hi = (a[0] + b[0], a[1] + b[1]) if op == "Add" else (a[0] - b[1], a[1] - b[0])
    if np.isnan(lo) or np.isnan(hi):
        return None
    return (lo, hi) if exact else _widen(lo, hi)
