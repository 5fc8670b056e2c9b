"""Signal-processing ops: Range, DFT, STFT, the Blackman / Hamming / Hann windows and MelWeightMatrix.

DFT and STFT are matrix products with constant cos / sin tables (computed in float64 with numpy, then cast to
the input's type), so the lengths they transform must be known when compiling. The windows and
MelWeightMatrix have outputs whose shape is given by input values: they are lowered as constants (computed
with numpy the way onnx's reference evaluator computes them) when those inputs are constants, and refused
otherwise. Semantics: the ONNX operator specs and `onnx/reference/ops/op_*.py`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, dtype_of, refuse

_LOW_PRECISION = ("float16", "bfloat16")
_STASH_TYPES = {1: "float32", 11: "float64"}  # Range's stash_type (TensorProto FLOAT, DOUBLE)


@converter("", "Range")
def range_(bb, inputs, attrs, ctx):
    """Range(start, limit, delta) -> [max(ceil((limit - start) / delta), 0)] of start's type, element i being
    `start + i * delta`, computed in float64 for floats (as onnx's reference, numpy's arange) and in `stash_type`
    for float16/bfloat16 where it is given (ONNX Range-11/-27).

    Constant operands give a constant. Run-time operands give a tensor whose length is a symbolic dim bound
    from the count at run time (a delta of 0, or a non-finite count, gives an empty tensor: the spec leaves it
    undefined). The positions are computed from a value that depends on that binding, since TVM's FuseOps orders
    fused groups by data dependencies alone and otherwise hoisted a group that reads the length above the
    binding that defines it ("range_len has not been computed" when building the expanded window functions)."""
    start, limit, delta = inputs[0], inputs[1], inputs[2]
    dtype = dtype_of(start)
    is_float = dtype.startswith(("float", "bfloat"))
    compute = (_STASH_TYPES.get(attrs.get("stash_type"), "float64") if dtype in _LOW_PRECISION else "float64") \
        if is_float else dtype
    values = [constant_value(x) for x in (start, limit, delta)]
    if all(v is not None for v in values):
        s, lim, d = (v.reshape(()) for v in values)
        if d == 0:
            raise refuse("Range with a delta of 0")
        out = np.arange(s.astype(compute).item(), lim.item(), d.item(), dtype=compute)
        return const(out, dtype)
    return _run_time_range(bb, start, limit, delta, dtype, compute)


def _run_time_range(bb, start, limit, delta, dtype: str, compute: str):
    """Range of run-time scalars (see `range_`)."""
    from tvm import te, tirx

    count_dtype = "float64" if compute.startswith("float") else "int64"
    s, lim, d = (bb.normalize(relax.op.reshape(relax.op.astype(x, count_dtype), ())) for x in (start, limit, delta))
    zero = relax.const(0, count_dtype)
    is_zero = bb.normalize(relax.op.equal(d, zero))
    safe_d = bb.normalize(relax.op.where(is_zero, relax.const(1, count_dtype), d))
    if count_dtype == "float64":
        count = bb.normalize(relax.op.ceil(relax.op.divide(relax.op.subtract(lim, s), safe_d)))
        invalid = relax.op.logical_or(is_zero, relax.op.logical_not(relax.op.isfinite(count)))
    else:  # ceil((limit - start) / delta) in integers
        count = relax.op.negative(relax.op.floor_divide(relax.op.subtract(s, lim), safe_d))
        invalid = is_zero
    count = relax.op.where(relax.op.logical_or(invalid, relax.op.less(count, zero)), zero, count)
    count = bb.match_cast(bb.normalize(relax.op.reshape(relax.op.astype(count, "int64"), (1,))),
                          relax.TensorType([1], "int64"))
    n = tirx.Var("range_len", "int64")
    shape = bb.match_cast(bb.emit(relax.call_pure_packed("vm.builtin.tensor_to_shape", count,
                                                         ty_args=relax.ShapeType(ndim=1))), relax.ShapeType([n]))
    # the count again, as a value that depends on `shape` (a tuple of both, item 0): the kernel that makes the
    # positions reads it, so it comes after the binding of n
    both = bb.emit(relax.call_pure_packed("vm.builtin.make_tuple", count, shape,
                                          ty_args=relax.TupleType([count.ty, shape.ty])))
    count = bb.emit(relax.call_pure_packed("vm.builtin.tuple_getitem", both, relax.prim_value(0),
                                           ty_args=count.ty))
    positions = bb.emit_te(lambda c: te.compute((n,), lambda i: tirx.min(i, c[0] - 1), name="range_positions"),
                           count, primfunc_name_hint="range_positions")
    positions = relax.op.astype(positions, compute)
    step, first = (x if dtype_of(x) == compute else relax.op.astype(x, compute) for x in (delta, start))
    out = relax.op.add(relax.op.multiply(positions, relax.op.reshape(step, ())), relax.op.reshape(first, ()))
    return out if compute == dtype else relax.op.astype(out, dtype)
