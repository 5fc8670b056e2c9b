"""IEEE 754 special values through the ops where LLVM's max/min lose them.

TVM lowers max/min to instructions that return the non-NaN operand (or the second one), so a NaN could vanish
in Relu, Max, Min and the max-pools, and ArgMax/ArgMin returned arbitrary indices for slices with a NaN. These
converters say what happens instead, each as onnxruntime computes it where onnxruntime is consistent:

- Sign(NaN) = NaN.
- Relu(x) = max(0, x), the 0 first (codegen/nan_order.py): NaN stays NaN, Relu(-0.0) = -0.0 (onnxruntime; the reference evaluator gives +0.0).
- Max / Min (float): NaN when any operand is NaN at that position (onnxruntime and the reference agree).
- MaxPool / GlobalMaxPool (float): a window holding a NaN gives NaN, as ReduceMax does. onnxruntime's MLAS
  kernels return NaN or skip it depending on where in the window it is, and the reference evaluator skips NaN
  (it marks padding with NaN), so neither is a semantics to copy. The `Indices` output of MaxPool is refused.
- ArgMax / ArgMin (float): a slice holding a NaN gives the index of its first NaN (last with
  `select_last_index=1`), as numpy and the reference evaluator do; onnxruntime's answer depends on where the NaN is.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, converter, dtype_of, lookup_frontend, refuse
from . import windows


def _is_float(expr) -> bool:
    return dtype_of(expr).startswith(("float", "bfloat"))


@converter("", "Relu")
def relu(bb, inputs, attrs, ctx):
    x = inputs[0]
    if not _is_float(x):
        return relax.op.maximum(x, const(0, dtype_of(x)))
    # max(x, 0) with a rank-matched constant (ConvertLayout passes it through an NHWC conv's epilogue; a `where`
    # would get a transpose pair); codegen's nan_order pass then puts the 0 first, so NaN and -0.0 come out as x
    return relax.op.maximum(x, const(np.zeros([1] * x.ty.ndim, dtype_of(x))))


@converter("", "Sign")
def sign(bb, inputs, attrs, ctx):
    # relax's sign maps NaN to 0; ONNX (onnxruntime, the reference evaluator) keeps NaN
    x = inputs[0]
    y = relax.op.sign(x)
    return relax.op.where(relax.op.isnan(x), x, y) if _is_float(x) else y


def _variadic(op_type: str, pick):
    @converter("", op_type)
    def variadic(bb, inputs, attrs, ctx):
        operands = [x for x in inputs if x is not None]
        dtypes = {dtype_of(x) for x in operands}
        if len(dtypes) > 1:
            raise refuse(f"{op_type} of mixed element types {sorted(dtypes)} is not valid ONNX")
        acc = operands[0]
        for x in operands[1:]:
            picked = pick(acc, x)
            if _is_float(x):  # a NaN on either side gives NaN (a + b is NaN then)
                either_nan = relax.op.logical_or(relax.op.isnan(acc), relax.op.isnan(x))
                picked = relax.op.where(either_nan, relax.op.add(acc, x), picked)
            acc = bb.normalize(picked)
        return acc

    return variadic


_variadic("Max", relax.op.maximum)
_variadic("Min", relax.op.minimum)


def _max_pool(op_type: str):
    @converter("", op_type)
    def max_pool(bb, inputs, attrs, ctx):
        if attrs["tvm_custom"]["num_outputs"] > 1:
            raise refuse(f"{op_type}'s Indices output is not supported by the TVM back end")
        x = inputs[0]
        pool = windows.pool(op_type) if op_type == "MaxPool" else lookup_frontend(op_type, ctx.opset)
        if not _is_float(x):
            return pool(bb, inputs, attrs, ctx)
        # TVM's max keeps its first operand unless the second is greater, so a NaN in a window may be dropped; a
        # max-pool of the NaN flags finds the windows holding one, and sqrt(-flag) is -0.0 (x + -0.0 == x for every
        # x, signed zeros included) or NaN. Only layout-aware elementwise ops, no `where` (TVM 0.27's ConvertLayout
        # has no layout rule for it and kept each NHWC model's max-pools in NCHW, between transposes).
        flags = bb.normalize(relax.op.astype(relax.op.isnan(x), dtype_of(x)))
        any_nan = bb.normalize(pool(bb, [flags, *list(inputs)[1:]], attrs, ctx))
        pooled = bb.normalize(pool(bb, inputs, attrs, ctx))
        return relax.op.add(pooled, relax.op.sqrt(relax.op.negative(any_nan)))

    return max_pool


_max_pool("MaxPool")
_max_pool("GlobalMaxPool")


def _arg(op_type: str):
    @converter("", op_type)
    def arg(bb, inputs, attrs, ctx):
        x = inputs[0]
        result = bb.normalize(lookup_frontend(op_type, ctx.opset)(bb, inputs, attrs, ctx))
        if not _is_float(x):
            return result
        # the position of the first (or last) NaN: ArgMax of the NaN mask, with the same attributes
        mask = bb.normalize(relax.op.astype(relax.op.isnan(x), "int32"))
        first_nan = bb.normalize(lookup_frontend("ArgMax", ctx.opset)(bb, [mask], attrs, ctx))
        axis = attrs.get("axis", 0)
        keepdims = bool(attrs.get("keepdims", 1))
        has_nan = relax.op.greater(relax.op.max(mask, [axis % x.ty.ndim], keepdims), const(0, "int32"))
        return relax.op.where(has_nan, first_nan, result)

    return arg


_arg("ArgMax")
_arg("ArgMin")
