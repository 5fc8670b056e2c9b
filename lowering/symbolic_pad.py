"""Zero padding to, and cropping back from, a length computed from symbolic dims: the Relax-level helpers of
kernels that need whole tiles or vectors along an axis whose length is known only at run time (a dynamic-axes
export's sequence length). Relax's `nn.pad` and `strided_slice` take static widths, or give a result type with a
`T.if_then_else` that FuseOps cannot type; these are TE kernels whose result types are the expressions given."""

from __future__ import annotations

from tvm import relax, te, tirx


def pad_to(bb, t, axis: int, length) -> relax.Expr:
    """t zero-padded at the end of `axis` to `length` elements (an int or a TIR expression of t's symbolic dims,
    at least t's dim there): a kernel of its own. Returns the bound Relax variable."""

    def pad(x):
        shape = list(x.shape)
        shape[axis] = length
        zero = tirx.const(0, x.dtype)
        return te.compute(shape, lambda *i: tirx.if_then_else(i[axis] < x.shape[axis], x(*i), zero), name="pad")

    return bb.emit_te(pad, t, primfunc_name_hint="pad_to")


def crop_to(bb, t, axis: int, length) -> relax.Expr:
    """t's first `length` elements along `axis` (an int or a TIR expression of the module's symbolic dims, at
    most t's dim there): an injective kernel, which FuseOps may fuse into its readers."""

    def crop(x):
        shape = list(x.shape)
        shape[axis] = length
        return te.compute(shape, lambda *i: x(*i), name="crop")

    return bb.emit_te(crop, t, primfunc_name_hint="crop_to")
