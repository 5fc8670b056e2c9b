"""Zero padding to, and cropping back from, a length computed from symbolic dims: the Relax-level helpers of
kernels that need whole tiles or vectors along an axis whose length is known only at run time (a dynamic-axes
export's sequence length). Relax's `nn.pad` and `strided_slice` take static widths, or give a result type with a
`T.if_then_else` that FuseOps cannot type; these kernels' result types are the expressions given. `pad_to` runs a
written-out row kernel (`row_copy_kernel`, which also crops the padded columns of integer matmuls), `crop_to` a TE
kernel that fuses into its readers."""

from __future__ import annotations

from tvm import DataType, relax, te, tirx


def pad_to(bb, t, axis: int, length) -> relax.Expr:
    """t zero-padded at the end of `axis` to `length` elements (an int or a TIR expression of t's symbolic dims,
    at least t's dim there): a kernel of its own. Returns the bound Relax variable.

    The padding of one axis is that of the last axis of t seen as [outer, rest] (outer = the dims before `axis`,
    rest = the elements from it on: a padded block is contiguous), so one written-out kernel serves every axis:
    rows in parallel, each copied in vectors of up to 64 bytes and a scalar tail, then its zeros. A TE kernel with
    a per-element condition ran scalar: attention's P (uint8 [1, 32, 128, 128]) took 0.8 ms a call."""
    dims = list(t.ty.shape.values)
    dtype = str(t.ty.dtype)
    outer, inner = tirx.const(1, "int64"), tirx.const(1, "int64")
    for d in dims[:axis]:
        outer = outer * d
    for d in dims[axis + 1:]:
        inner = inner * d
    width, padded = dims[axis] * inner, tirx.IntImm("int64", length) * inner if isinstance(length, int) else \
        length * inner
    lanes = max(1, 512 // DataType(dtype).bits)
    flat = bb.emit(relax.op.reshape(t, [outer, width]))
    gv = bb.add_func(row_copy_kernel(lanes, dtype), "pad_to")
    out = bb.emit(relax.call_tir(gv, [flat], relax.TensorType([outer, padded], dtype)))
    return bb.emit(relax.op.reshape(out, [*dims[:axis], length, *dims[axis + 1:]]))


def row_copy_kernel(lanes: int, dtype: str):
    """b[r, :n] = a[r, :n] and b[r, n:] = 0 for a [rows, width] and b [rows, out] (the sizes read from the buffers),
    n = min(width, out): a zero padding of each row (out > width) or a crop (out < width). Rows in parallel, each
    copied in vectors of `lanes` and a scalar tail, then its zeros; opaque to fusion (declared pattern 8)."""
    from tvm.script import tirx as T  # noqa: PLC0415

    from .converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    @T.prim_func(private=True, s_tir=True)
    def row_copy(var_a: T.handle, var_b: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, DECLARED_OP_PATTERN: 8})
        rows, width, out = T.int64(), T.int64(), T.int64()
        a = T.match_buffer(var_a, (rows, width), dtype)
        b = T.match_buffer(var_b, (rows, out), dtype)
        for r in T.parallel(rows):
            for v in range(T.min(width, out) // T.int64(lanes)):
                for j in T.vectorized(T.int64(lanes)):
                    with T.sblock("body"):
                        vr = T.axis.spatial(rows, r)
                        vj = T.axis.spatial(out, v * T.int64(lanes) + j)
                        b[vr, vj] = a[vr, vj]
            for j in range(T.min(width, out) % T.int64(lanes)):
                with T.sblock("tail"):
                    vr = T.axis.spatial(rows, r)
                    vj = T.axis.spatial(out, T.min(width, out) // T.int64(lanes) * T.int64(lanes) + j)
                    b[vr, vj] = a[vr, vj]
            for j in range(T.max(out - width, T.int64(0))):
                with T.sblock("zeros"):
                    vr = T.axis.spatial(rows, r)
                    vj = T.axis.spatial(out, width + j)
                    b[vr, vj] = T.cast(0, dtype)

    return row_copy


def crop_to(bb, t, axis: int, length) -> relax.Expr:
    """t's first `length` elements along `axis` (an int or a TIR expression of the module's symbolic dims, at
    most t's dim there): an injective kernel, which FuseOps may fuse into its readers."""

    def crop(x):
        shape = list(x.shape)
        shape[axis] = length
        return te.compute(shape, lambda *i: x(*i), name="crop")

    return bb.emit_te(crop, t, primfunc_name_hint="crop_to")
