"""Compare two output arrays element by element: the one comparison `optc verify` (and anything else that
checks outputs) uses.

Rules, per element of two arrays with the same shape and dtype:

- integers, booleans and strings compare exactly;
- floats (and complex numbers) are equal when ``|a - b| <= atol + rtol * max(|a|, |b|)`` — symmetric, so the
  verdict does not depend on which array comes first;
- NaN equals NaN and nothing else (a NaN where the other side has a number is a mismatch);
- an infinity equals only the same infinity (``inf`` vs a finite number, or ``inf`` vs ``-inf``, is a
  mismatch whatever the tolerances);
- ``-0.0`` vs ``+0.0`` is counted (``signed_zeros``) but is a mismatch only with ``strict_zeros=True``.

A shape or dtype difference makes the whole output a mismatch (the element figures are still computed when the
shapes agree, to show how far apart the values are).

``compare(a, b)`` returns an :class:`OutputComparison`; ``compare_outputs`` pairs up two sets of named outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


@dataclass
class OutputComparison:
    """How two arrays differ. ``max_abs``/``max_rel`` are over all elements (``inf`` where a NaN or an infinity
    differs; ``None`` when not defined: different shapes, strings); ``worst_index`` is the element that is
    furthest outside the tolerance (the largest error when every element is within it), ``worst_a``/``worst_b``
    its values (Python scalars). Counts: ``mismatched`` elements in all; ``nan_a``/``nan_b`` NaNs in each
    array and ``nan_mismatched`` positions where only one is NaN; ``inf_a``/``inf_b``/``inf_mismatched``
    the same for infinities; ``signed_zeros`` positions where one is -0.0 and the other +0.0."""

    name: str
    equal: bool
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    size: int | None = 0  # None when the shapes differ
    mismatched: int | None = 0
    max_abs: float | None = 0.0
    max_rel: float | None = 0.0
    worst_index: tuple[int, ...] | None = None
    worst_a: object = None
    worst_b: object = None
    worst_text: tuple[str, str] | None = None  # the two values as short strings ('0.1', '-0.0', 'inf')
    nan_a: int = 0
    nan_b: int = 0
    nan_mismatched: int = 0
    inf_a: int = 0
    inf_b: int = 0
    inf_mismatched: int = 0
    signed_zeros: int = 0
    strict_zeros: bool = False
    notes: list[str] = field(default_factory=list)
    name_b: str | None = None  # when the outputs were paired by position and the names differ

    def to_json(self) -> dict:
        """A JSON-safe dict: non-finite floats become the strings "inf", "-inf", "nan"."""
        return {
            "name": self.name, **({"name_b": self.name_b} if self.name_b else {}),
            "equal": self.equal,
            "shape_a": list(self.shape_a), "shape_b": list(self.shape_b),
            "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "size": self.size, "mismatched": self.mismatched,
            "max_abs": json_number(self.max_abs), "max_rel": json_number(self.max_rel),
            "worst_index": list(self.worst_index) if self.worst_index is not None else None,
            "worst_a": json_number(self.worst_a), "worst_b": json_number(self.worst_b),
            "nan_a": self.nan_a, "nan_b": self.nan_b, "nan_mismatched": self.nan_mismatched,
            "inf_a": self.inf_a, "inf_b": self.inf_b, "inf_mismatched": self.inf_mismatched,
            "signed_zeros": self.signed_zeros,
            "notes": list(self.notes),
        }


def json_number(v):
    """``v`` for JSON: non-finite floats as "inf" / "-inf" / "nan" (strict JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, complex):
        return [json_number(v.real), json_number(v.imag)]
    return v


def _scalar(x):
    """A numpy element as a Python scalar (float, int, bool, complex or str)."""
    if isinstance(x, np.generic):
        if isinstance(x, np.floating) or x.dtype.kind == "V":  # (ml_dtypes' bfloat16 & co. are kind 'V')
            try:
                return float(x)
            except (TypeError, ValueError):
                return str(x)
        return x.item()
    return x


def format_value(x) -> str:
    """An element as a short string: the shortest repr that round-trips in its own dtype (float32 0.1 is
    '0.1', not 0.10000000149011612), '-0.0', 'inf', 'nan'."""
    if isinstance(x, np.generic) and x.dtype.kind in "fc":
        return str(x)
    if isinstance(x, np.generic):
        return str(x.item()) if x.dtype.kind != "V" else str(x)
    return str(x)


def _is_number(dtype: np.dtype) -> bool:
    return dtype.kind in "biufc" or _kind(dtype) == "float"


def _kind(dtype: np.dtype) -> str:
    """'exact' (ints, bools, strings, objects), 'float', 'complex'."""
    if dtype.kind in "fc":
        return "float" if dtype.kind == "f" else "complex"
    if dtype.kind == "V":  # bfloat16, float8 (ml_dtypes) and other extension floats
        try:
            np.zeros(1, dtype).astype(np.float64)
            return "float"
        except (TypeError, ValueError):
            return "exact"
    return "exact"


def compare(a, b, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, *, strict_zeros: bool = False,
            name: str = "") -> OutputComparison:
    """Compare ``a`` with ``b`` (the rules are in the module docstring)."""
    a = np.asarray(a)
    b = np.asarray(b)
    r = OutputComparison(name=name, equal=True, shape_a=tuple(a.shape), shape_b=tuple(b.shape),
                         dtype_a=str(a.dtype), dtype_b=str(b.dtype), strict_zeros=strict_zeros)
    if a.shape != b.shape:
        r.equal = False
        r.size = r.mismatched = r.max_abs = r.max_rel = None
        r.notes.append(f"shape {list(a.shape)} vs {list(b.shape)}")
        return r
    same_dtype = a.dtype == b.dtype
    if not same_dtype:
        r.equal = False
        r.notes.append(f"dtype {a.dtype} vs {b.dtype}")
    r.size = int(a.size)
    if a.size == 0:
        r.max_abs = r.max_rel = 0.0
        return r
    ka, kb = _kind(a.dtype), _kind(b.dtype)
    if ka == kb == "exact" or not (_is_number(a.dtype) and _is_number(b.dtype)):
        _compare_exact(a, b, r)
    elif "complex" in (ka, kb):
        _compare_complex(a, b, r, rtol, atol)
    else:
        _compare_float(a, b, r, rtol, atol, strict_zeros)
    if r.mismatched:
        r.equal = False
    if r.worst_index is not None:
        r.worst_a = _scalar(a[r.worst_index])
        r.worst_b = _scalar(b[r.worst_index])
        r.worst_text = (format_value(a[r.worst_index]), format_value(b[r.worst_index]))
    return r


def _numeric_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """|a - b| as float64 for integer and bool arrays (nonzero wherever a != b, even for int64 values beyond
    2**53); None for strings and objects."""
    if a.dtype.kind not in "biu" or b.dtype.kind not in "biu":
        return None
    if a.dtype.kind == b.dtype.kind and a.dtype.kind in "iu":
        wide = np.int64 if a.dtype.kind == "i" else np.uint64
        ua = a.astype(wide).view(np.uint64)
        ub = b.astype(wide).view(np.uint64)
        larger = a.astype(wide) >= b.astype(wide)
        with np.errstate(all="ignore"):  # the uint64 difference wraps around to the exact |a - b|
            return np.where(larger, ua - ub, ub - ua).astype(np.float64)
    with np.errstate(all="ignore"):
        return np.abs(a.astype(np.float64) - b.astype(np.float64))


def _compare_exact(a, b, r: OutputComparison) -> None:
    try:
        mis = np.asarray(a != b, dtype=bool)
    except Exception:  # incomparable object arrays
        mis = np.ones(a.shape, dtype=bool)
    if mis.shape != a.shape:  # (a string array against a number array compares to a scalar)
        mis = np.broadcast_to(mis, a.shape)
    r.mismatched = int(mis.sum())
    diff = _numeric_diff(a, b)
    if diff is None:
        r.max_abs = r.max_rel = None
        score = mis.astype(np.float64)
    else:
        with np.errstate(all="ignore"):
            denom = np.maximum(np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)))
            rel = np.where(diff == 0, 0.0, diff / np.where(denom == 0, 1.0, denom))
        r.max_abs = float(diff.max())
        r.max_rel = float(rel.max())
        score = diff
    r.worst_index = _worst(mis, score, score)


def _worst(mis: np.ndarray, score: np.ndarray, diff: np.ndarray) -> tuple[int, ...]:
    """The first element with the highest (mismatch, score, diff), as an index tuple."""
    cand = mis if mis.any() else np.ones(mis.shape, dtype=bool)
    for key in (score, diff):
        k = np.where(cand, key, -1.0)
        cand = cand & (k == k.max())
    flat = int(np.argmax(cand.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, mis.shape))


def _compare_float(a, b, r: OutputComparison, rtol: float, atol: float, strict_zeros: bool) -> None:
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    with np.errstate(all="ignore"):
        nan_a, nan_b = np.isnan(af), np.isnan(bf)
        inf_a, inf_b = np.isinf(af), np.isinf(bf)
        finite = ~(nan_a | nan_b | inf_a | inf_b)
        same_special = (nan_a & nan_b) | (inf_a & inf_b & (af == bf))
        special_mis = ~finite & ~same_special
        diff = np.where(finite, np.abs(af - bf), np.where(special_mis, np.inf, 0.0))
        diff = np.where(np.isnan(diff), np.inf, diff)  # (finite - finite can overflow to inf, never nan)
        mag = np.where(finite, np.maximum(np.abs(af), np.abs(bf)), 0.0)
        tol = atol + rtol * mag
        mis = special_mis | (finite & ~(diff <= tol))
        rel = np.where(diff == 0, 0.0, np.where(finite & (mag > 0), diff / np.where(mag > 0, mag, 1.0), np.inf))
        score = np.where(diff == 0, 0.0, np.where(tol > 0, diff / np.where(tol > 0, tol, 1.0), np.inf))
        zeros = finite & (af == 0) & (bf == 0) & (np.signbit(af) != np.signbit(bf))
    r.signed_zeros = int(zeros.sum())
    if strict_zeros:
        mis = mis | zeros
        score = np.where(zeros, np.maximum(score, 1.0), score)  # (after every element off by more)
    _record(r, nan_a, nan_b, inf_a, inf_b, special_mis, mis, diff, rel, score)
    if r.nan_mismatched:
        r.notes.append(f"{r.nan_mismatched} NaN{'s' if r.nan_mismatched != 1 else ''} at different positions "
                       f"({r.nan_a} in a, {r.nan_b} in b)")
    if r.inf_mismatched:
        r.notes.append(f"{r.inf_mismatched} infinit{'ies' if r.inf_mismatched != 1 else 'y'} differ "
                       f"({r.inf_a} in a, {r.inf_b} in b)")
    if r.signed_zeros:
        what = "mismatches (--strict-zeros)" if strict_zeros else "not mismatches without --strict-zeros"
        r.notes.append(f"{r.signed_zeros} signed zero{'s' if r.signed_zeros != 1 else ''} differ "
                       f"(-0.0 vs 0.0; {what})")


def _record(r: OutputComparison, nan_a, nan_b, inf_a, inf_b, special_mis, mis, diff, rel, score) -> None:
    """Store the element-wise masks and errors of one comparison as counts, maxima and the worst element."""
    r.nan_a, r.nan_b = int(nan_a.sum()), int(nan_b.sum())
    r.nan_mismatched = int((nan_a ^ nan_b).sum())
    r.inf_a, r.inf_b = int(inf_a.sum()), int(inf_b.sum())
    r.inf_mismatched = int(((inf_a | inf_b) & ~(nan_a | nan_b) & special_mis).sum())
    r.mismatched = int(mis.sum())
    r.max_abs = float(diff.max())
    r.max_rel = float(rel.max())
    r.worst_index = _worst(mis, score, diff)


def _compare_complex(a, b, r: OutputComparison, rtol: float, atol: float) -> None:
    """Complex numbers (rare in ONNX outputs): the float rules on |a - b|; NaN anywhere in an element is NaN."""
    ac = a.astype(np.complex128)
    bc = b.astype(np.complex128)
    with np.errstate(all="ignore"):
        nan_a, nan_b = np.isnan(ac), np.isnan(bc)
        inf_a, inf_b = np.isinf(ac) & ~nan_a, np.isinf(bc) & ~nan_b
        finite = ~(nan_a | nan_b | inf_a | inf_b)
        same_special = (nan_a & nan_b) | (inf_a & inf_b & (ac == bc))
        special_mis = ~finite & ~same_special
        diff = np.where(finite, np.abs(ac - bc), np.where(special_mis, np.inf, 0.0))
        mag = np.where(finite, np.maximum(np.abs(ac), np.abs(bc)), 0.0)
        tol = atol + rtol * mag
        mis = special_mis | (finite & ~(diff <= tol))
        rel = np.where(diff == 0, 0.0, np.where(finite & (mag > 0), diff / np.where(mag > 0, mag, 1.0), np.inf))
        score = np.where(diff == 0, 0.0, np.where(tol > 0, diff / np.where(tol > 0, tol, 1.0), np.inf))
    _record(r, nan_a, nan_b, inf_a, inf_b, special_mis, mis, diff, rel, score)


@dataclass
class Comparison:
    """Every output of two runs compared: ``equal`` when every output is, and the outputs pair up."""

    outputs: list[OutputComparison]
    equal: bool
    notes: list[str] = field(default_factory=list)
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    strict_zeros: bool = False

    def to_json(self) -> dict:
        return {"equal": self.equal, "rtol": self.rtol, "atol": self.atol, "strict_zeros": self.strict_zeros,
                "outputs": [o.to_json() for o in self.outputs], "notes": list(self.notes)}


def compare_outputs(a: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                    b: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                    rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, *,
                    strict_zeros: bool = False) -> Comparison:
    """Compare two sets of outputs: by name when both are mappings with the same names, else by position
    (a sequence gets the names output_0, output_1, ...). Outputs only one side has are mismatches."""
    da = dict(a) if isinstance(a, Mapping) else {f"output_{i}": v for i, v in enumerate(a)}
    db = dict(b) if isinstance(b, Mapping) else {f"output_{i}": v for i, v in enumerate(b)}
    na, nb = list(da), list(db)
    results: list[OutputComparison] = []
    notes: list[str] = []
    if set(na) == set(nb):
        pairs = [(n, n) for n in na]
    elif len(na) == len(nb):
        pairs = list(zip(na, nb, strict=True))
        notes.append("the output names differ; outputs are paired by position")
    else:
        pairs = [(n, n) for n in na if n in db]
        only_a = [n for n in na if n not in db]
        only_b = [n for n in nb if n not in da]
        notes.append(f"{len(na)} outputs vs {len(nb)} outputs"
                     + (f"; only in a: {', '.join(only_a)}" if only_a else "")
                     + (f"; only in b: {', '.join(only_b)}" if only_b else ""))
    for x, y in pairs:
        c = compare(da[x], db[y], rtol, atol, strict_zeros=strict_zeros, name=x)
        if y != x:
            c.name_b = y
        results.append(c)
    paired = len(pairs) == len(na) == len(nb)
    return Comparison(results, paired and all(c.equal for c in results), notes, rtol, atol, strict_zeros)
