"""CumSum as one scan kernel of optc's own, on the input viewed as [before, axis, after].

TVM lowers relax's cumsum to TOPI's scan (`topi.cumsum`), whose output buffer is declared with a default layout
that names the shape's variables. Fusion's AttachAttrLayoutFreeBuffers renews a kernel's variable definitions
(`s_tir.RenewDefs`) but not those inside a buffer layout, so with a symbolic dim the built kernel used variables it
was not given ("In PrimFunc cumsum1 variables (B, S) are used, but are not passed in as API arguments"): CumSum
over [B, S], the position ids of RoBERTa / GPT-2 exports, could not be compiled. Here the kernel's buffers have
no layout (as TOPI's sort declares them), and it indexes the 3-D view directly.

Semantics (ONNX CumSum-14): the running sum along `axis` in the input's type; `exclusive` leaves the element
itself out (the first sum is 0), `reverse` sums from the end.
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..converters import constant_value, converter, dims_of, refuse
from .shape import product


def _scan_ir(data, out, exclusive: bool, reverse: bool):
    """The running sums of data [before, length, after] along axis 1 into out: one serial loop per (before,
    after) pair, the pairs in parallel."""
    before, length, after = data.shape
    with IRBuilder() as ib:
        x, y = T.buffer_proxy(data), T.buffer_proxy(out)
        with T.parallel(0, before * after * tirx.min(length, 1)) as pair:  # no pair when the axis is empty
            i, j = pair // after, pair % after

            def at(k):
                return length - 1 - k if reverse else k

            y[i, at(0), j] = tirx.const(0, data.dtype) if exclusive else x[i, at(0), j]
            with T.serial(1, length) as k:
                y[i, at(k), j] = y[i, at(k - 1), j] + x[i, at(k - 1) if exclusive else at(k), j]
        return ib.get()


def _scan(data: te.Tensor, exclusive: bool, reverse: bool) -> te.Tensor:
    """An extern TE tensor: CumSum of data [before, length, after] along axis 1."""
    buffers = [tirx.decl_buffer(data.shape, data.dtype, name, layout=None) for name in ("data_buf", "out_buf")]
    return te.extern([data.shape], [data], lambda ins, outs: _scan_ir(ins[0], outs[0], exclusive, reverse),
                     dtype=data.dtype, in_buffers=buffers[:1], out_buffers=buffers[1:], name="cumsum", tag="cumsum")


def _axis(x, axis_input) -> int:
    value = None if axis_input is None else constant_value(axis_input)
    if value is None or value.size != 1:
        raise refuse("CumSum with an axis computed at run time is not supported by the TVM back end")
    rank = x.ty.ndim
    axis = int(value.reshape(-1)[0])
    if not -rank <= axis < rank:
        raise refuse(f"CumSum along axis {axis} of a rank-{rank} input is not valid ONNX")
    return axis % rank


@converter("", "CumSum")
def cum_sum(bb, inputs, attrs, ctx):
    """CumSum-11/14 along a constant axis, of any static or symbolic shape."""
    x = inputs[0]
    dims = dims_of(x)
    if dims is None:
        raise refuse("CumSum of an input of unknown shape is not supported by the TVM back end")
    axis = _axis(x, inputs[1])
    view = [product(dims[:axis]), dims[axis], product(dims[axis + 1:])]
    y = bb.normalize(relax.op.reshape(x, view))
    y = bb.emit_te(_scan, y, bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0)))
    return relax.op.reshape(y, x.ty.shape)
