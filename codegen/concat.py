"""A Concat that is a kernel of its own, as one contiguous copy per input (a relax pass after FuseTIR).

TOPI's concatenate computes each output element as a chain of ``if_then_else`` over the inputs' offsets along the
axis. Scheduled as an elementwise kernel, every vector of an NHWC channel concat (SqueezeNet's fire modules,
Inception's branches, DenseNet's growing feature maps) selected between the inputs' loads: SqueezeNet's
[1, 55, 55, 64] + [1, 55, 55, 64] took 116 us, a third of its time per byte on onnxruntime (AMD EPYC Zen 4, 1
thread). Here the output is viewed as [outer, total] rows (outer: the dims before the axis; total: the axis and
the dims after it, flattened) and each input's run of [outer, width_i] is copied to its columns: whole vectors
and a scalar tail per row, the rows in parallel (42 us). A copy of the same elements to the same places: exact.

Only a kernel that is exactly TOPI's concatenate of its parameters is replaced (checked by structural equality
with the one TOPI writes for the same shapes and axis), with static shapes; a concat fused with other ops (an
elementwise consumer, RoPE's rotate_half) is left to the schedule rules. The new kernel is scheduled when made,
so it is not a tuning task.
"""

from __future__ import annotations

import math

#: where there are too few rows to run in parallel (a concat along axis 0), each input's run is copied in chunks of
#: this many elements, the chunks in parallel
CHUNK = 4096


def _static_shape(param) -> list[int] | None:
    """The static shape of a PrimFunc parameter (a buffer), or None (symbolic, or not a buffer)."""
    from tvm import tirx  # noqa: PLC0415

    dims = list(getattr(param, "shape", None) or [None])
    return [int(d) for d in dims] if all(isinstance(d, tirx.IntImm) for d in dims) else None


def concat_axis(func) -> int | None:
    """The axis along which `func` (a PrimFunc) concatenates its parameters into its last one, when it is exactly
    TOPI's concatenate of static shapes of a byte-addressable dtype; else None."""
    import tvm_ffi  # noqa: PLC0415
    from tvm import te, tirx, topi  # noqa: PLC0415

    if not isinstance(func, tirx.PrimFunc) or len(func.params) < 2:
        return None
    shapes = [_static_shape(p) for p in func.params]
    dtypes = {getattr(p, "dtype", None) for p in func.params}
    if any(s is None for s in shapes) or len(dtypes) != 1 or len({len(s) for s in shapes}) != 1:
        return None
    dtype = dtypes.pop()
    if dtype is None or str(dtype) == "bool" or dtype.bits < 8 or dtype.lanes != 1:
        return None
    dtype = str(dtype)
    *ins, out = shapes
    rank = len(out)
    for axis in range(rank):
        if sum(s[axis] for s in ins) != out[axis] or any(
                s[a] != out[a] for s in ins for a in range(rank) if a != axis):
            continue
        xs = [te.placeholder([tirx.IntImm("int64", d) for d in s], dtype, name=f"x{i}") for i, s in enumerate(ins)]
        ref = te.create_prim_func([*xs, topi.concatenate(xs, axis=axis)])
        # whole functions: their parameters are definitions, matched in order (an input's place is its offset)
        if tvm_ffi.structural_equal(_without_attrs(ref), _without_attrs(func)):
            return axis
    return None


def _without_attrs(func):
    for key in list(func.attrs.keys()) if func.attrs is not None else []:
        func = func.without_attr(key)
    return func


def concat_kernel(shapes: list[list[int]], axis: int, dtype: str, lanes: int):
    """The PrimFunc y = concat(x_0, ..., x_k) along `axis` (x_i of `shapes`, static; y last): per row of the
    [outer, total] view, input i's `width_i` elements copied to columns [offset_i, offset_i + width_i) in vectors
    of `lanes` and a scalar tail; rows in parallel when there are enough, else each input's run in parallel
    chunks of `CHUNK`. Marked scheduled."""
    from tvm import tirx  # noqa: PLC0415
    from tvm.script.ir_builder import IRBuilder  # noqa: PLC0415
    from tvm.script.ir_builder import tirx as T  # noqa: PLC0415

    from .schedules import PARALLEL_MIN_ROWS, PARALLEL_MIN_WORK  # noqa: PLC0415

    outer = math.prod(shapes[0][:axis])
    widths = [math.prod(s[axis:]) for s in shapes]
    total = sum(widths)
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    parallel = outer * total >= PARALLEL_MIN_WORK
    by_rows = outer >= PARALLEL_MIN_ROWS or not parallel

    def i64(v):
        return tirx.const(v, "int64")

    def copy(x, y, row, start, count, offset):  # y[row, offset + start + j] = x[row, start + j], j < count
        whole = count - count % lanes if count >= lanes else 0
        if whole:
            with T.serial(i64(0), i64(whole // lanes)) as v:
                with T.vectorized(i64(0), i64(lanes)) as j:
                    with T.sblock("copy"):
                        k = start + v * i64(lanes) + j
                        y[row, i64(offset) + k] = x[row, k]
        if count > whole:
            with T.serial(i64(whole), i64(count)) as j:
                with T.sblock("copy_tail"):
                    y[row, i64(offset) + start + j] = x[row, start + j]

    def view(buffer, width):  # the [outer, width] view of a buffer's data (row-major: a view is a reshape)
        return T.buffer_proxy(T.decl_buffer([i64(outer), i64(width)], dtype, data=buffer.data, layout=None))

    offsets = [sum(widths[:i]) for i in range(len(widths))]
    with IRBuilder() as ib:
        with T.prim_func(is_private=True, s_tir=True):
            ins = [T.arg(f"x{i}", T.buffer([i64(d) for d in s], dtype)) for i, s in enumerate(shapes)]
            out = T.arg("y", T.buffer([i64(d) for d in out_shape], dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.sblock("root"):
                T.reads(*[x[tuple(slice(0, d) for d in s)] for x, s in zip(ins, shapes, strict=True)])
                T.writes(out[tuple(slice(0, d) for d in out_shape)])
                if by_rows:
                    loop = T.parallel if parallel else T.serial
                    with loop(i64(0), i64(outer)) as row:
                        y = view(out, total)
                        for x, width, offset in zip(ins, widths, offsets, strict=True):
                            copy(view(x, width), y, row, i64(0), width, offset)
                else:  # few long rows: each input's run in chunks, in parallel
                    for x, width, offset in zip(ins, widths, offsets, strict=True):
                        chunks = -(-width // CHUNK)
                        last = width - (chunks - 1) * CHUNK
                        with T.parallel(i64(0), i64(outer * chunks)) as task:
                            y, x = view(out, total), view(x, width)
                            row, chunk = task // i64(chunks), task % i64(chunks)
                            with T.If(chunk < i64(chunks - 1)):
                                with T.Then():
                                    copy(x, y, row, chunk * i64(CHUNK), CHUNK, offset)
                                with T.Else():
                                    copy(x, y, row, i64((chunks - 1) * CHUNK), last, offset)
    return ib.get()


def concat_copies_pass():
    """The module pass: every PrimFunc that is exactly a static concat (``concat_axis``) replaced by
    ``concat_kernel`` for the current target's vector width (CPU targets only; others keep TOPI's kernel)."""
    import tvm  # noqa: PLC0415
    from tvm.target import Target  # noqa: PLC0415

    from .schedules import _is_cpu, _vector_lanes  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_concat_copies")
    def _pass(mod, _ctx):
        target = Target.current(allow_none=True)
        if target is None or not _is_cpu(target):
            return mod
        for gv, func in list(mod.functions_items()):
            axis = concat_axis(func)
            if axis is None:
                continue
            dtype = func.params[0].dtype
            kernel = concat_kernel([_static_shape(p) for p in func.params[:-1]], axis, str(dtype),
                                   _vector_lanes(target, dtype.bits))
            mod[gv] = kernel.with_attrs(dict(func.attrs or {}))  # (kernel's own: noalias, scheduled)
        return mod

    return _pass
