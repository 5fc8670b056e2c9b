"""Pad: TVM's frontend, but for reflect pads that reach past the mirrored axis.

TOPI's `mirror_pad` (the frontend's reflect mode) mirrors once: a pad wider than dim - 1 read outside the input (a
breaker's [3, 4] input padded by 5 columns took values from memory past it; a width-1 axis padded by 2 likewise).
ONNX's reference evaluator pads as numpy.pad's 'reflect' does, reflecting again and again; onnxruntime refuses
such pads. Here an axis whose pads can be that wide (static: pad > dim - 1; symbolic: any pad, as the size at run
time may be 1) reads element `r(j)` for the source position j = i - before (numpy.pad, "reflect"):
p = 2 (n - 1), m = j mod p (floored), r = m if m < n else p - m; r = 0 when n = 1, and an axis of n = 0 at run time
(nothing to mirror: numpy refuses it) gives 0, reading nothing.
"""

from __future__ import annotations

from tvm import te, tirx

from ..converters import constant_value, converter, dims_of, lookup_frontend, refuse
from .basic import _run_time


def _widths(inputs: list, attrs: dict, opset: int, rank: int) -> tuple[list[int], list[int]]:
    """(before, after) pad widths per axis of a rank-`rank` input: the `pads` attribute (opset < 11) or input,
    spread over the `axes` input (opset 18+) when it is given."""
    pads = list(attrs.get("pads", ())) if opset < 11 else [int(v) for v in constant_value(inputs[1]).reshape(-1)]
    half = len(pads) // 2
    axes = list(range(rank))
    if len(inputs) > 3 and inputs[3] is not None:
        axes = [int(a) % rank for a in constant_value(inputs[3]).reshape(-1)]
    before, after = [0] * rank, [0] * rank
    for i, axis in enumerate(axes[:half]):
        before[axis], after[axis] = pads[i], pads[half + i]
    return before, after


def _reflected(dim, j):
    """numpy.pad's 'reflect' index of source position j along an axis of size dim >= 1 (TIR, int64)."""
    period = tirx.max(2 * (dim - 1), 1)
    m = tirx.floormod(j, period)
    return tirx.Select(m < dim, m, period - m)


@converter("", "Pad")
def pad(bb, inputs, attrs, ctx):
    """Pad with constant pads (TVM's frontend needs them so): reflect pads that can reach past the axis are
    computed here (module doc), everything else by the frontend."""
    if _run_time(1, 2, 3)(inputs, attrs):
        raise refuse("Pad with pads or a constant value computed at run time is not supported by the TVM back end")
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x = inputs[0]
    dims = dims_of(x)
    if mode != "reflect" or dims is None:
        return lookup_frontend("Pad", ctx.opset)(bb, inputs, attrs, ctx)
    before, after = _widths(inputs, attrs, ctx.opset, len(dims))
    wide = [b > 0 or a > 0 for b, a in zip(before, after, strict=True)]
    reaches = [w and (not isinstance(d, int) or max(b, a) > d - 1)
               for w, d, b, a in zip(wide, dims, before, after, strict=True)]
    if not any(reaches) or min(before + after) < 0:
        return lookup_frontend("Pad", ctx.opset)(bb, inputs, attrs, ctx)
    if any(isinstance(d, int) and d == 0 and w for d, w in zip(dims, wide, strict=True)):
        raise refuse("Pad in reflect mode of an empty axis (nothing to mirror) is not supported by the TVM back end")
    shape = [d + b + a for d, b, a in zip(dims, before, after, strict=True)]

    def compute(t):
        def element(*i):
            src = [_reflected(d, k - b) if w else k for k, d, b, w in zip(i, dims, before, wide, strict=True)]
            empty = [d == 0 for d, w in zip(dims, wide, strict=True) if w and not isinstance(d, int)]
            value = t(*src)
            return tirx.if_then_else(tirx.any(*empty), tirx.const(0, t.dtype), value) if empty else value

        return te.compute(shape, element, name="reflect_pad")

    return bb.emit_te(compute, x)

