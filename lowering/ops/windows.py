"""Sliding windows with padding that depends on the input size: Conv, MaxPool, AveragePool and LpPool with
auto_pad SAME_UPPER / SAME_LOWER, and the pools with ceil_mode=1 on symbolic spatial dims.

TVM's frontend computes SAME pads with numpy, which fails on a symbolic dim (Conv: "Cannot use and / or / not
operator to Expr"), and gave MaxPool SAME_LOWER floor(in / stride) windows where ONNX says ceil. Relax's pool
shape in ceil mode holds an if_then_else (the last window is dropped when it would start in the end padding),
which relax's FuseOps cannot type ("Cannot find the FInferType attribute registered to op: prim.if_then_else")
when the analyzer cannot decide it for every size. Here, per spatial axis (in, kernel k, stride s, dilation d,
pads b / a, the window's extent e = (k - 1) * d + 1):

- SAME: out = ceil(in / s), total pad max((out - 1) * s + e - in, 0), the smaller half before it (SAME_UPPER) or
  after it (SAME_LOWER), as onnxruntime; ceil_mode does not apply. Pads that are ints become the op's pads; a
  symbolic one is an explicit pad of the input (zeros; the lowest value for MaxPool) and the op pads nothing,
  AveragePool without count_include_pad dividing by the pool of a padded ones-mask (the window's input count).
  With dilations this is the spec's formula, which onnx's shape inference follows (onnxruntime pads a pool for
  the undilated kernel, and refuses a dilated SAME Conv).
- ceil_mode on a symbolic dim (and for LpPool, whose frontend form, AveragePool times the kernel size, was wrong
  where TOPI's ceil-mode divisor is the clipped window): the pool in floor mode with s - 1 more end padding
  gives the ceil-mode count of windows; the result keeps min(that, ceil((in + b) / s)) of them, i.e. the last is
  dropped when it starts in the end padding (onnxruntime's rule; the same count when a < e, which onnxruntime
  requires). The extra padding is outside the input for every count (for AveragePool with count_include_pad,
  the pads are made explicit zeros first, so that they count and the extra padding does not), and LpPool's sum
  over the window ignores it.
- AveragePool without count_include_pad where a window can hold padding only (a pad at least the window's
  extent, or a dilation that skips over the input): the mean of no elements is NaN (0 / 0, as onnx's reference
  evaluator computes it; onnxruntime refuses such pads); TOPI divides by max(count, 1), so those windows are found
  by the same pool of a ones mask and set to NaN (symbolic SAME pads divide by the pooled mask, which gives it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, te, tirx, topi

from ..converters import Converter, converter, dims_of, dtype_of, lookup_frontend, refuse

_SAME = ("SAME_UPPER", "SAME_LOWER")


@dataclass
class _Window:
    """The kernel, strides and dilations of a sliding window (one entry per spatial axis)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]

    @classmethod
    def of(cls, attrs: dict, kernel: list[int]) -> _Window:
        n = len(kernel)
        return cls(list(kernel), list(attrs.get("strides", [1] * n)), list(attrs.get("dilations", [1] * n)))

    def extents(self) -> list[int]:
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]


def _simplified(e):
    """An int, or a TIR expression simplified (an int when it is a constant)."""
    from tvm import sym

    if isinstance(e, int):
        return e
    e = sym.Analyzer().simplify(e)
    return int(e.value) if isinstance(e, tirx.IntImm) else e


def _non_negative(e):
    return max(e, 0) if isinstance(e, int) else tirx.max(e, 0)


def _static(values: list) -> bool:
    return all(isinstance(v, int) for v in values)


def _auto_pad(attrs: dict) -> str:
    value = attrs.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else value


def _same_pads(spatial: list, window: _Window, lower: bool) -> tuple[list, list]:
    """SAME_UPPER / SAME_LOWER pads (before, after) per spatial axis: ints, or TIR expressions of symbolic dims."""
    before, after = [], []
    for dim, extent, stride in zip(spatial, window.extents(), window.strides, strict=True):
        total = _simplified(_non_negative(((dim + stride - 1) // stride - 1) * stride + extent - dim))
        small = _simplified(total // 2)
        before.append(_simplified(total - small) if lower else small)
        after.append(_simplified(total - before[-1]))
    return before, after


def _pads(attrs: dict, spatial: list, window: _Window, op: str) -> tuple[list, list]:
    """The pads (before, after) auto_pad or the `pads` attribute give."""
    auto_pad, n = _auto_pad(attrs), len(spatial)
    if auto_pad in _SAME:
        return _same_pads(spatial, window, auto_pad == "SAME_LOWER")
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad != "NOTSET":
        raise refuse(f"{op} with auto_pad '{auto_pad}' is not valid ONNX")
    pads = list(attrs.get("pads", [0] * 2 * n))
    return pads[:n], pads[n:]


def _pad(bb, x, before: list, value: float, window: _Window):
    """x padded with `value` on its spatial axes: `before` (symbolic widths) at the start, and at the end what makes
    each size in + e - 1. Sliding the window over that gives ceil(in / stride) windows, the last one ending inside
    the SAME padding, so the pad beyond it is never read; and the sizes hold no modulo of the input's dims (TIR's
    loop analysis failed on kernels whose extents held the exact SAME sizes: "The padding factor ... is not
    divisible")."""
    after = [_simplified(e - 1 - b) for e, b in zip(window.extents(), before, strict=True)]
    return bb.emit_te(topi.nn.pad, x, [0, 0, *before], [0, 0, *after], value)


def _lowest(dtype: str) -> float:
    """The pad value no element is below: -inf for floats, the smallest integer otherwise."""
    return -np.inf if dtype.startswith(("float", "bfloat")) else int(np.iinfo(dtype).min)


def _crop(bb, y, spatial: list):
    """y's leading spatial windows, `spatial` of them per axis (no copy when that is all of them)."""
    from tvm import sym

    dims = dims_of(y)
    analyzer = sym.Analyzer()
    if all(analyzer.can_prove_equal(keep, dim) for keep, dim in zip(spatial, dims[2:], strict=True)):
        return y
    shape = [*dims[:2], *spatial]
    return bb.emit_te(lambda t: te.compute(shape, lambda *i: t(*i), name="crop"), y)


class _Pool:
    """One pool node: its frontend converter, window, pads and attributes."""

    def __init__(self, op_type: str, bb, inputs, attrs: dict, ctx):
        self.op_type, self.bb, self.ctx = op_type, bb, ctx
        self.x = inputs[0]
        dims = dims_of(self.x)
        if dims is None:
            raise refuse(f"{op_type} of an input of unknown shape is not supported by the TVM back end")
        self.spatial = dims[2:]
        self.window = _Window.of(attrs, list(attrs["kernel_shape"]))
        self.before, self.after = _pads(attrs, self.spatial, self.window, op_type)
        self.ceil = bool(attrs.get("ceil_mode", 0)) and _auto_pad(attrs) not in _SAME
        self.attrs = {k: v for k, v in attrs.items() if k not in ("auto_pad", "pads", "ceil_mode")}

    def frontend(self, x, before: list, after: list, **changes):
        """TVM's converter with explicit pads and no ceil mode."""
        attrs = {**self.attrs, "pads": tuple(before + after), "ceil_mode": 0, **changes}
        return self.bb.normalize(lookup_frontend(self.op_type, self.ctx.opset)(self.bb, [x], attrs, self.ctx))

    def lower(self):
        """The pool: symbolic pads made explicit, ceil mode as floor mode and a crop, else TVM's converter."""
        if not (_static(self.before) and _static(self.after)):
            return self.padded()
        return self.empty_windows_nan(self.pooled(self.x))

    def pooled(self, x):
        """The pool of `x` (this node's input, or a tensor of its spatial shape) with static pads."""
        if self.ceil and (not _static(self.spatial) or self.op_type == "LpPool"):
            return self.ceil_mode(x)
        return self.frontend(x, self.before, self.after, ceil_mode=int(self.ceil))

    def may_have_empty_windows(self) -> bool:
        """Whether a window of an AveragePool without count_include_pad can hold padding only (static pads). An
        undilated window that starts before the end padding and ends after the start padding reads an input
        element: it can hold none only where a pad is at least the window's extent (which onnxruntime refuses:
        "Pad should be smaller than kernel") or where dilation skips over the input."""
        if self.op_type != "AveragePool" or self.attrs.get("count_include_pad", 0):
            return False
        return any(d > 1 or b >= e or a >= e for d, b, a, e in
                   zip(self.window.dilations, self.before, self.after, self.window.extents(), strict=True))

    def empty_windows_nan(self, y):
        """`y` with NaN where an AveragePool window without count_include_pad holds no input element: the mean of
        no elements, 0 / 0 (the ONNX reference evaluator's result; TOPI's pool divides by max(count, 1) and wrote
        0). The windows are found by the same pool of a ones mask, [1, 1, *spatial]: 0 exactly where a window is
        empty, else 1."""
        if not self.may_have_empty_windows() or not dtype_of(self.x).startswith(("float", "bfloat")):
            return y
        dtype = dtype_of(self.x)
        ones = self.bb.normalize(relax.op.ones(relax.ShapeExpr([1, 1, *self.spatial]), dtype))
        empty = relax.op.equal(self.pooled(ones), relax.const(0, dtype))
        return self.bb.normalize(relax.op.where(empty, relax.const(float("nan"), dtype), y))

    def padded(self):
        """Symbolic (SAME) pads: an explicit pad of the input, the pool without padding."""
        zeros = [0] * len(self.spatial)
        if self.op_type == "MaxPool":
            x = _pad(self.bb, self.x, self.before, _lowest(dtype_of(self.x)), self.window)
            return self.frontend(x, zeros, zeros)
        x = _pad(self.bb, self.x, self.before, 0.0, self.window)
        if self.op_type != "AveragePool" or self.attrs.get("count_include_pad", 0):
            return self.frontend(x, zeros, zeros)
        ones = self.bb.normalize(relax.op.ones(relax.ShapeExpr([1, 1, *self.spatial]), dtype_of(self.x)))
        counted = _pad(self.bb, ones, self.before, 0.0, self.window)
        return relax.op.divide(self.frontend(x, zeros, zeros, count_include_pad=1),
                               self.frontend(counted, zeros, zeros, count_include_pad=1))

    def ceil_mode(self, x):
        """ceil_mode: floor mode with stride - 1 more end padding, then the windows that start before the end
        padding."""
        before, after, changes = self.before, self.after, {}
        if self.op_type == "AveragePool" and self.attrs.get("count_include_pad", 0):
            pairs = [w for b, a in zip(before, after, strict=True) for w in (b, a)]
            x = self.bb.normalize(relax.op.nn.pad(x, [0, 0, 0, 0, *pairs]))
            before, after, changes = [0] * len(before), [0] * len(after), {"count_include_pad": 0}
        extra = [a + s - 1 for a, s in zip(after, self.window.strides, strict=True)]
        y = self.frontend(x, before, extra, **changes)
        keep = [_simplified(tirx.min(raw, (dim + b + s - 1) // s)) for raw, dim, b, s in
                zip(dims_of(y)[2:], self.spatial, self.before, self.window.strides, strict=True)]
        return _crop(self.bb, y, keep)


def pool(op_type: str) -> Converter:
    """The converter of MaxPool, AveragePool or LpPool (ieee.py wraps MaxPool's for NaN)."""

    def convert(bb, inputs, attrs, ctx):
        return _Pool(op_type, bb, inputs, attrs, ctx).lower()

    return convert


converter("", "AveragePool")(pool("AveragePool"))
converter("", "LpPool")(pool("LpPool"))


def _kernel(attrs: dict, weight) -> list[int]:
    if "kernel_shape" in attrs:
        return list(attrs["kernel_shape"])
    dims = dims_of(weight)
    if dims is None or not _static(dims[2:]):
        raise refuse("Conv with auto_pad and a weight of symbolic shape is not supported by the TVM back end")
    return dims[2:]


@converter("", "Conv")
def conv(bb, inputs, attrs, ctx):
    """Conv; auto_pad SAME_UPPER / SAME_LOWER as explicit pads (see the module's docstring)."""
    frontend = lookup_frontend("Conv", ctx.opset)
    auto_pad = _auto_pad(attrs)
    if auto_pad not in _SAME:
        return frontend(bb, inputs, attrs, ctx)
    x = inputs[0]
    dims = dims_of(x)
    if dims is None:
        raise refuse("Conv with auto_pad of an input of unknown shape is not supported by the TVM back end")
    window = _Window.of(attrs, _kernel(attrs, inputs[1]))
    before, after = _same_pads(dims[2:], window, auto_pad == "SAME_LOWER")
    attrs = {k: v for k, v in attrs.items() if k != "auto_pad"}
    if _static(before) and _static(after):
        return frontend(bb, inputs, {**attrs, "pads": tuple(before + after)}, ctx)
    padded = type(inputs)([_pad(bb, x, before, 0.0, window), *list(inputs)[1:]])  # onnx_input: None past the end
    return frontend(bb, padded, {**attrs, "pads": (0,) * (2 * len(before))}, ctx)
