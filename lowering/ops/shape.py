"""Reshape, Slice and OneHot with the ONNX spec's attribute semantics (TVM's frontend converters get
`allowzero`, out-of-range and INT64_MAX slice bounds, negative steps and 0-d depths wrong).

Run-time shape computations on symbolic dims (`Shape -> Gather -> Concat -> Reshape`) are handled before
these converters by `shape_values.ShapeEvaluator`; what reaches them is a constant or a true run-time tensor.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from ..converters import const, constant_value, converter, dims_of, dtype_of, lookup_frontend, refuse

_INT32_MAX = 2**31 - 1


@converter("", "Reshape")
def reshape(bb, inputs, attrs, ctx):
    x, target = inputs[0], inputs[1]
    value = constant_value(target)
    if value is None:
        raise refuse("Reshape to a shape computed from run-time values is not supported by the TVM back end")
    allowzero = attrs.get("allowzero", 0)
    in_dims = dims_of(x)
    out = []
    for i, d in enumerate(int(v) for v in value.reshape(-1)):
        if d == 0 and not allowzero:  # 0 copies the input's dim (allowzero=1: a real 0)
            if i >= len(in_dims):
                raise refuse(f"Reshape copies dim {i} (a 0 in the shape) of a rank-{len(in_dims)} input")
            d = in_dims[i]
        elif d < -1:
            raise refuse(f"Reshape to a shape with the invalid dim {d}")
        out.append(d)
    if out.count(-1) > 1:
        raise refuse("Reshape to a shape with more than one -1")
    total = product(in_dims)
    if -1 in out:
        if any(isinstance(d, int) and d == 0 for d in out):
            raise refuse("Reshape with both -1 and a 0 dim (allowzero=1) is ambiguous")
        known = product(d for d in out if not (isinstance(d, int) and d == -1))
        out[out.index(-1)] = tirx.floordiv(total, known) if not isinstance(total * known, int) else total // known
    return checked_reshape(bb, x, in_dims, out, total)


def checked_reshape(bb, x, dims: list, out: list, total=None):
    """x (dims `dims`) reshaped to `out` (ints or TIR dims, no -1), with a run-time check that the sizes agree
    where they depend on symbolic dims (`_checked_size`); `total`: x's size when the caller has it."""
    return reshape_exactly(_checked_size(bb, x, product(dims) if total is None else total, out), out)


def product(dims):
    """The product of dims (ints, or TIR expressions where symbolic); 1 for none."""
    result = 1
    for d in dims:
        result = result * d
    return result


def _checked_size(bb, x, total, out: list):
    """x (`total` elements), checked at run time to hold as many as `out` when that depends on symbolic dims: the VM's
    reshape does not check, and `[N, 4] -> [1, 4]` at N = 3 returned the first row (onnxruntime refuses it). The
    check is a match_cast of x flattened to `[prod(out)]` (the VM raises on a mismatch); none when the sizes are
    equal for every value of the dims."""
    from tvm.sym.analyzer import Analyzer

    want = product(out)
    if isinstance(total, int) and isinstance(want, int):
        if total != want:
            raise refuse(f"Reshape of {total} elements to a shape of {want}")
        return x
    diff = Analyzer().simplify(total - want)
    if isinstance(diff, tirx.IntImm) and int(diff.value) == 0:
        return x
    flat = bb.normalize(relax.op.reshape(x, [total]))
    return bb.match_cast(flat, relax.TensorType([want], dtype_of(x)))


def zero_copies_checked(bb, lowering, x, copies: list[tuple], label: str):
    """x, with a run-time check of each `(i, d, dim)` of `copies` (shape element `d` of a Reshape, a
    symbolic dim, at index i where the input's dim is `dim`): the call fails (one line naming `label`,
    `run_checks.CHECK_ERROR`) when d is 0 and dim is not. A 0 in a Reshape's shape copies the input's dim there
    (ONNX, allowzero=0), a shape the library, lowered for the dims as written, does not compute: refused, not given
    the wrong shape. Checks on the inputs' dims alone are made on the function's result (`lowering.defer_check`:
    one on x would be dead code where only x's Shape is read); the others on x (in place)."""
    from ..run_checks import fail_if_zero

    for i, d, dim in copies:
        message = zero_copy_message(label, i)
        if not lowering.defer_check(d, dim, message):
            x = fail_if_zero(bb, x, d, dim, "optc_reshape_zero_check", message)
    return x


def zero_copy_message(label: str, i: int) -> str:
    """The one line a library's call fails with where element i of Reshape `label`'s computed shape is 0 and would
    copy another dim (see `zero_copies_checked`)."""
    return (f"{label}: dim {i} of its shape is 0 when it runs, which ONNX reads as 'copy the input's dim' "
            "(allowzero=0), a shape this library was not compiled for")


def reshape_exactly(x, out: list):
    """x reshaped to `out` (ints or TIR dims, no -1), where a 0 is a real 0: relax.op.reshape reads a 0 as
    "copy this dim" whatever it is given, so a zero-size result is built from x by broadcasting instead."""
    if any(isinstance(d, int) and d == 0 for d in out):
        where = next(i for i, d in enumerate(out) if isinstance(d, int) and d == 0)
        flat = relax.op.reshape(x, [-1])
        spread = relax.op.expand_dims(flat, [i for i in range(len(out)) if i != where]) if len(out) > 1 else flat
        return relax.op.broadcast_to(spread, relax.ShapeExpr(out))
    return relax.op.reshape(x, out)


@converter("", "Flatten")
def flatten(bb, inputs, attrs, ctx):
    x = inputs[0]
    dims = dims_of(x)
    axis = attrs.get("axis", 1)
    if not -len(dims) <= axis <= len(dims):
        raise refuse(f"Flatten axis {axis} is out of range for a rank-{len(dims)} input")
    if axis < 0:
        axis += len(dims)
    return reshape_exactly(x, [product(dims[:axis]), product(dims[axis:])])


def _slice_args(inputs):
    """starts, ends, axes, steps as int lists (None when a run-time tensor)."""
    values = []
    for i in range(1, 5):
        v = inputs[i] if len(inputs) > i else None
        if v is None:
            values.append(None if i < 3 else ())
            continue
        c = constant_value(v)
        values.append(None if c is None else [int(a) for a in c.reshape(-1)])
    return values


@converter("", "Slice")
def slice_(bb, inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends = list(attrs.get("starts", ())), list(attrs.get("ends", ()))
        axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends, axes, steps = _slice_args(inputs)
        if starts is None or ends is None or axes is None or steps is None:
            raise refuse("Slice with starts, ends, axes or steps computed at run time is not supported by the TVM "
                         "back end")
        axes = list(axes) or list(range(len(starts)))
        steps = list(steps) or [1] * len(starts)
    dims = dims_of(x)
    rank = len(dims)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise refuse("Slice with starts, ends, axes and steps of different lengths")
    if any(s == 0 for s in steps):
        raise refuse("Slice with a step of 0")
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise refuse(f"Slice with invalid or repeated axes {axes} for a rank-{rank} input")
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= rank
        dim = dims[axis]
        if isinstance(dim, int):
            x = _static_slice(bb, x, axis, dim, start, end, step)
        elif step > 0:
            x = _symbolic_slice(bb, x, axis, dim, start, end, step)
        else:
            raise refuse("Slice with a negative step along a dimension of unknown size is not supported by the "
                         "TVM back end")
    return x


def slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """The indices Slice picks along a dim of size `dim` (ONNX spec: negative bounds count from the end, then
    clamp to [0, dim] for positive steps, starts to [0, dim-1] and ends to [-1, dim-1] for negative ones; unlike
    Python's slicing, which clamps a negative step's start to -1)."""
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return range(start, end, step)


def _symbolic_slice(bb, x, axis: int, dim, start: int, end: int, step: int):
    """x[..., start:end:step, ...] along `axis` of symbolic size `dim` (a TIR expression), step > 0: the bounds as
    the spec clamps them (`slice_indices`), written as expressions of `dim`, the end at least the start, so that an
    empty slice (start >= end at run time) has extent 0. (Given to strided_slice as they were, its symbolic extent
    had no max(0, .): a negative size, and the run failed allocating it, "std::bad_alloc".)"""
    def bound(v: int):
        v = max(-_INT32_MAX, min(_INT32_MAX, v))  # INT64 extremes (sentinels for "to the end")
        return tirx.min(tirx.max(dim + v if v < 0 else tirx.IntImm("int64", v), 0), dim)

    lo = bound(start)
    hi = tirx.max(bound(end), lo)
    return bb.normalize(relax.op.strided_slice(x, [axis], [lo], [hi], [step], assume_inbound=True))


def _static_slice(bb, x, axis: int, dim: int, start: int, end: int, step: int):
    """x[..., start:end:step, ...] along `axis` of static size `dim`."""
    picked = slice_indices(dim, start, end, step)
    if len(picked) == 0:  # (a zero-size constant would not survive TVM's executable serialization)
        return bb.normalize(relax.op.strided_slice(x, [axis], [0], [0], [1], assume_inbound=True))
    if len(picked) == dim and step == 1:
        return x
    lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1])
    y = bb.normalize(relax.op.strided_slice(x, [axis], [lo], [hi + 1], [abs(step)], assume_inbound=True))
    return bb.normalize(relax.op.flip(y, axis)) if step < 0 else y


@converter("", "OneHot")
def one_hot(bb, inputs, attrs, ctx):
    indices, depth, values = inputs[0], inputs[1], inputs[2]
    depth_value = constant_value(depth)
    if depth_value is None or depth_value.size != 1:
        raise refuse("OneHot with a depth computed at run time is not supported by the TVM back end")
    depth_n = int(np.asarray(depth_value).reshape(-1)[0])  # a 0-d or 1-element depth; floats truncate
    if depth_n < 1:
        raise refuse(f"OneHot with depth {depth_n}")
    rank = indices.ty.ndim
    axis = attrs.get("axis", -1)
    if not -rank - 1 <= axis <= rank:
        raise refuse(f"OneHot axis {axis} is out of range for rank-{rank} indices")
    axis %= rank + 1
    idx = indices if dtype_of(indices) == "int64" else relax.op.astype(indices, "int64")
    d = const(depth_n, "int64")
    idx = bb.normalize(relax.op.where(relax.op.less(idx, const(0, "int64")), relax.op.add(idx, d), idx))
    positions = const(np.arange(depth_n, dtype=np.int64).reshape([depth_n] + [1] * (rank - axis)))
    hot = relax.op.equal(relax.op.expand_dims(idx, axis), positions)
    off = relax.op.strided_slice(values, [0], [0], [1])
    on = relax.op.strided_slice(values, [0], [1], [2])
    return relax.op.where(hot, relax.op.reshape(on, ()), relax.op.reshape(off, ()))


@converter("", "Unsqueeze")
def unsqueeze(bb, inputs, attrs, ctx):
    if len(inputs) > 1 and inputs[1] is not None and constant_value(inputs[1]) is None:
        raise refuse("Unsqueeze with axes computed at run time is not supported by the TVM back end")
    if len(inputs) > 1 and inputs[1] is not None and constant_value(inputs[1]).ndim == 0:
        # a 0-d axes tensor (onnx's function bodies write them; onnxruntime accepts it) is one axis
        inputs = [inputs[0], const(constant_value(inputs[1]).reshape(1))]
    return lookup_frontend("Unsqueeze", ctx.opset)(bb, inputs, attrs, ctx)
