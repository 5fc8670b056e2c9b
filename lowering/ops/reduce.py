"""Reduce* ops per the ONNX spec (TVM's frontend gets several of these wrong or refuses them).

Every Reduce op is `post(reduce(pre(x), axes))` (ReduceL2 = sqrt(sum(x*x)), ReduceLogSum = log(sum(x)), ...):

- `axes` come from the attribute (before opset 18; ReduceSum before 13) or from a constant second input; an
  axes input computed at run time is refused.
- Empty or absent axes reduce every axis, unless `noop_with_empty_axes=1`: then nothing is reduced but `pre`
  and `post` still apply (ReduceSumSquare gives x*x, ReduceL2 gives |x|, ReduceLogSum gives log(x)), as
  onnxruntime computes it.
- Reducing over zero elements gives the reduction's identity (ONNX since opset 18): 0 for sums, 1 for
  ReduceProd, -inf / +inf for ReduceMax / ReduceMin (the dtype's lowest / highest value for integers), -inf
  for ReduceLogSum(Exp), NaN for ReduceMean.
- ReduceMax / ReduceMin propagate NaN (any NaN in a reduced slice gives NaN), as numpy and onnx's reference
  evaluator compute them. onnxruntime's result depends on where in the slice the NaN is (it keeps a leading
  NaN and skips later ones), which is no semantics to follow; the test says so.
- ReduceLogSumExp subtracts the largest finite element first, so large inputs do not overflow.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, dtype_of, refuse


def _axes(inputs, attrs, ctx, op_type: str) -> list[int]:
    """The reduced axes normalized to [0, rank), [] when none are given."""
    rank = len(inputs[0].ty.shape)
    if len(inputs) > 1 and inputs[1] is not None:
        value = constant_value(inputs[1])
        if value is None:
            raise refuse(f"{op_type} with axes computed at run time is not supported by the TVM back end")
        axes = [int(a) for a in value.reshape(-1)]
    elif "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    else:
        return []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise refuse(f"{op_type} axis {a} is out of range for a rank-{rank} input")
    return sorted({a % rank if rank else 0 for a in axes})


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def nan_propagating(reduce_fn, bb, x, axes, keepdims):
    """max/min with IEEE results: NaN where the reduced slice holds a NaN (LLVM's max/min drop it), and -inf
    (+inf for min) where every element is -inf or the slice is empty (a symbolic length 0 when it runs: the
    spec's identity; TVM starts a max from the lowest finite value, not -inf)."""
    y = bb.normalize(reduce_fn(x, axes, keepdims))
    dtype = dtype_of(x)
    if not _is_float(dtype):
        return y
    xf = x if dtype in ("float16", "float32", "float64") else bb.normalize(relax.op.astype(x, "float32"))  # bf16
    extreme = const(-np.inf if reduce_fn is relax.op.max else np.inf, dtype_of(xf))
    # per element 2: NaN, 1: anything else, 0: the extreme infinity; the slice's max code says which result
    # (an empty slice's is the int8 max's start, -128: below 1, the extreme too)
    code = relax.op.where(relax.op.isnan(xf), const(2, "int8"),
                          relax.op.where(relax.op.equal(xf, extreme), const(0, "int8"), const(1, "int8")))
    worst = bb.normalize(relax.op.max(code, axes, keepdims))
    y = relax.op.where(relax.op.less(worst, const(1, "int8")), const(-np.inf if reduce_fn is relax.op.max
                                                                       else np.inf, dtype), y)
    return relax.op.where(relax.op.equal(worst, const(2, "int8")), const(np.nan, dtype), y)


def _log_sum_exp(bb, x, axes, keepdims):
    dtype = dtype_of(x)
    neg_inf = const(-np.inf, dtype)
    finite = relax.op.where(relax.op.isfinite(x), x, neg_inf)
    m = bb.normalize(relax.op.max(finite, axes, True))
    m = bb.normalize(relax.op.where(relax.op.isfinite(m), m, const(0, dtype)))
    s = relax.op.sum(relax.op.exp(relax.op.subtract(x, m)), axes, True)
    y = relax.op.add(relax.op.log(s), m)
    return y if keepdims else relax.op.squeeze(y, axes)


# op -> (pre, reduce, post); pre/post take and return Relax expressions
def _square(x):
    return relax.op.multiply(x, x)


_REDUCE = {
    "ReduceSum": (None, relax.op.sum, None),
    "ReduceMean": (None, relax.op.mean, None),
    "ReduceProd": (None, relax.op.prod, None),
    "ReduceMax": (None, "max", None),
    "ReduceMin": (None, "min", None),
    "ReduceL1": (relax.op.abs, relax.op.sum, None),
    "ReduceL2": (_square, relax.op.sum, relax.op.sqrt),
    "ReduceSumSquare": (_square, relax.op.sum, None),
    "ReduceLogSum": (None, relax.op.sum, relax.op.log),
    "ReduceLogSumExp": (None, "logsumexp", None),
}


def _empty_value(op_type: str, dtype: str):
    if op_type in ("ReduceMax", "ReduceMin"):
        sign = -1 if op_type == "ReduceMax" else 1
        if dtype == "bool":
            return sign > 0
        if _is_float(dtype):
            return sign * np.inf
        info = np.iinfo(np.dtype(dtype))
        return info.min if sign < 0 else info.max
    return {"ReduceProd": 1, "ReduceMean": np.nan, "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf}.get(op_type, 0)


def _static_shape(x) -> list[int] | None:
    dims = []
    for d in x.ty.shape.values:
        if not hasattr(d, "value"):
            return None
        dims.append(int(d.value))
    return dims


def _make(op_type: str):
    pre, reduce_fn, post = _REDUCE[op_type]

    @converter("", op_type)
    def reduce(bb, inputs, attrs, ctx):
        x = inputs[0]
        if not isinstance(x.ty, relax.TensorType) or x.ty.ndim < 0:
            raise refuse(f"{op_type} of an input of unknown rank is not supported by the TVM back end")
        keepdims = bool(attrs.get("keepdims", 1))
        axes = _axes(inputs, attrs, ctx, op_type)
        rank = x.ty.ndim
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):  # absent or empty axes: nothing is reduced
                y = pre(x) if pre else x
                return post(y) if post else y
            axes = list(range(rank))
        dtype = dtype_of(x)
        shape = _static_shape(x)
        if shape is not None and any(shape[a] == 0 for a in axes):
            out = [1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes]
            value = _empty_value(op_type, dtype)
            if not _is_float(dtype) and isinstance(value, float) and np.isnan(value):
                raise refuse(f"{op_type} of zero {dtype} elements has no value (NaN is not an integer)")
            return const(np.full(out, value, dtype=dtype))
        if rank == 0:
            axes = []
        if dtype == "bool" and reduce_fn in ("max", "min"):  # any / all, through int8
            y = (relax.op.max if reduce_fn == "max" else relax.op.min)(relax.op.astype(x, "int8"), axes, keepdims)
            return relax.op.astype(y, "bool")
        y = pre(x) if pre else x
        if reduce_fn == "max":
            y = nan_propagating(relax.op.max, bb, y, axes, keepdims)
        elif reduce_fn == "min":
            y = nan_propagating(relax.op.min, bb, y, axes, keepdims)
        elif reduce_fn == "logsumexp":
            y = _log_sum_exp(bb, y, axes, keepdims)
        elif post is not None and not _is_float(dtype):  # ReduceL2 / ReduceLogSum of integers: in float64
            y = relax.op.astype(post(relax.op.astype(reduce_fn(y, axes, keepdims), "float64")), dtype)
            return y
        elif reduce_fn is relax.op.mean and not _is_float(dtype):  # relax's integer mean returns int64
            if shape is None:
                raise refuse(f"{op_type} of {dtype} over dims of unknown size is not supported by the TVM back end")
            count = int(np.prod([shape[a] for a in axes]))
            y = relax.op.divide(relax.op.sum(y, axes, keepdims), const(count, dtype))  # truncating, as onnxruntime
        else:
            y = reduce_fn(y, axes, keepdims)
        y = post(y) if post else y
        return y if dtype_of(bb.normalize(y)) == dtype else relax.op.astype(y, dtype)  # (relax's integer mean is int64)

    return reduce


for _op in _REDUCE:
    _make(_op)
