"""Lowering of `optc.TableLookup(x, table)` (made by `rewrites/rules/qlookup.py`, whose docstring defines it):
a kernel `y[i] = table[int32(x[i]) - lowest]` marked elementwise (op_pattern kElemWise), so TVM's FuseOps puts
it into the producer's epilogue (an integer matmul's requantize: the table read right after the rounding) like
any other elementwise op. As Relax's `take`, or undeclared, AnnotateTIROpPattern calls the indirect read opaque
and the lookup ran as a kernel of its own, one more pass over memory.

x is uint8 (index x) or int8 (index x + 128); the table has 256 entries, so every index is in range. A table of
8- or 16-bit integers is held as int32 (1 KiB) and its entry cast back: the same values, read with 32-bit lanes,
which a CPU with AVX-512 gathers 16 at a time (`codegen/gather.py`)."""

from __future__ import annotations

import numpy as np
from tvm import relax, te

from ..converters import const, constant_value, converter, declare_op_pattern, dtype_of, refuse

_LOWEST = {"uint8": 0, "int8": -128}


@converter("optc", "TableLookup")
def table_lookup(bb, inputs, attrs, ctx):
    x, table = inputs
    lowest = _LOWEST.get(dtype_of(x))
    values = constant_value(table) if table is not None else None
    if lowest is None or values is None or values.ndim != 1 or values.size != 256:
        raise refuse("TableLookup takes a uint8 / int8 x and a constant table of 256 entries")
    out_dtype = str(values.dtype)
    held = values.astype(np.int32) if values.dtype.kind in "iu" and values.dtype.itemsize < 4 else values
    xs = te.placeholder(list(x.ty.shape.values), dtype=dtype_of(x), name="x")
    ts = te.placeholder([256], dtype=str(held.dtype), name="table")
    y = te.compute(xs.shape, lambda *i: ts[xs(*i).astype("int32") - lowest].astype(out_dtype), name="table_lookup")
    func = declare_op_pattern(te.create_prim_func([xs, ts, y]).without_attr("global_symbol"), 0)  # kElemWise
    gv = bb.add_func(func, "table_lookup")
    return bb.emit(relax.call_tir(gv, [x, const(held)], relax.TensorType(x.ty.shape, out_dtype)))
