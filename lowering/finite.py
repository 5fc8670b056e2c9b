"""Bounds on the magnitude of float values, read from the IR graph: a QuantizeLinear whose input is provably finite
(dequantized values and what bounded ops make of them: a QDQ model's residual Add, Relu, pools, softmax, layer
norm) is lowered without its NaN select.

That select (`where(isnan(r), 0, r)`, ONNX leaves a NaN's quantization undefined; optc takes it as 0) is a kernel of
its own (lowering/ops/quant.py `_nan_to_zero`), and TVM 0.27's ConvertLayout has no layout rule for it: around every
such QuantizeLinear an NHWC model went back to NCHW and forth. On a QDQ ResNet-like, 23 of its 25 transpose kernels
came from it, a third of the run time.

The bound is exact arithmetic on worst cases (no sampling): a DequantizeLinear of an 8-bit value is at most
255 * max|scale|; a sum at most the sum of the bounds; a product the product; a matmul K times; a softmax 1; a
layer norm over n elements sqrt(n) * max|gamma| + max|beta| (no element is more than sqrt(n - 1) standard
deviations from the mean); x^p for an integer p from 1 to 4; sqrt(x) and 1 / x for x known to be at least some
f >= 0 (resp. > 0: an RMS norm's mean(x^2) + eps, `_nonnegative_floor`). A value whose bound is below float32's
largest finite number / 2^32 holds no NaN and no infinity, and no sum of up to 2^32 such values overflows.

A value that only has to be finite (a QuantizeLinear's input, a softmax's) may go up to float32's largest value
plus half its last place through sums and data movement: an attention mask of float32's minimum plus a
dequantized score rounds to the minimum, and a softmax of finite values holds no NaN (its row maximum is finite
and exp(0) = 1 is in every row's sum).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Node, Value

#: bounds are accepted below float32's largest value / 2^32: a sum or mean of up to 2^32 such elements (a pool, a
#: reduction, a layer norm's mean and variance) cannot overflow either (float16 values: no claim)
_SAFE = float(np.finfo(np.float32).max) / 2.0**32
#: a float32 result whose exact value is below this in magnitude rounds to a finite number (float32's largest value
#: plus half its last place, 2^103): what a value only needs to be to hold no NaN and no infinity, not to be summed
#: (an additive attention mask of float32's minimum plus a dequantized score)
_FINITE = float(np.finfo(np.float32).max) + 2.0**103

#: |q - zero_point| at most, by the quantized type
_QUANTIZED_SPAN = {"INT8": 255, "UINT8": 255, "INT16": 65535, "UINT16": 65535, "INT4": 15, "UINT4": 15,
                   "INT2": 3, "UINT2": 3}
#: ops whose output elements are elements of their data inputs (or the max / min / average of some)
_SAME_BOUND = {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split",
               "Expand", "Tile", "Gather", "GatherElements", "GatherND", "MaxPool", "AveragePool", "GlobalMaxPool",
               "GlobalAveragePool", "ReduceMax", "ReduceMin", "ReduceMean", "Max", "Min", "Relu", "LeakyRelu",
               "Abs", "Neg", "Clip", "Pad", "DepthToSpace", "SpaceToDepth", "Cast"}
#: ops that read a data tensor at input 0 only (the others are indices, shapes, pads)
_DATA_INPUT_0 = {"Reshape", "Slice", "Expand", "Tile", "Gather", "GatherElements", "GatherND", "Squeeze",
                 "Unsqueeze", "Split", "ReduceMax", "ReduceMin", "ReduceMean", "LeakyRelu"}
#: ops whose output lies in [-1, 1] for any input that is not NaN
_UNIT_RANGE = {"Softmax", "Sigmoid", "Tanh", "Erf", "HardSigmoid"}
#: of _SAME_BOUND, the ops that average (their float sums must not overflow: their inputs take the _SAFE limit)
_AVERAGING = {"AveragePool", "GlobalAveragePool", "ReduceMean"}


def magnitude_bound(v: Value, depth: int = 32, limit: float = _SAFE) -> float | None:
    """An upper bound on |x| over the elements x of the float value `v` (so: no NaN, no infinity), or None when none
    is known (a graph input, an op this analysis does not know, a bound at `limit` or above). `depth`: how many
    producers to walk back at most. `limit`: by default float32's largest value / 2^32 (any sum of such values is
    finite); `_FINITE` for a value that only has to be finite (sums, data movement and selections up to it)."""
    const = v.const_value()
    if const is not None:
        bound = _array_bound(const)
        return bound if bound is not None and bound < limit else None
    node = v.producer
    if node is None or depth <= 0 or node.domain not in ("", "ai.onnx") or (v.index != 0 and node.op_type != "Split"):
        return None  # (other outputs: MaxPool's indices, LayerNormalization's statistics)
    if v.dtype is None or v.dtype.name not in ("FLOAT", "DOUBLE", "BFLOAT16"):
        return None
    bound = _node_bound(node, depth - 1, limit)
    return bound if bound is not None and bound < limit else None


def finite_quotient(x: Value, scale: Value) -> bool:
    """Whether x / scale holds no NaN (QuantizeLinear's first step): x provably finite and scale a constant with no
    zero, NaN or infinity (an overflow to infinity is then possible, a NaN is not)."""
    return magnitude_bound(x, limit=_FINITE) is not None and _smallest_magnitude(scale) is not None and \
        _array_bound(scale.const_value()) is not None


def _array_bound(a: np.ndarray) -> float | None:
    if a.dtype.kind not in "fiub":
        return None
    if a.size == 0:
        return 0.0
    m = float(np.max(np.abs(a.astype(np.float64))))
    return m if math.isfinite(m) else None


def _node_bound(node: Node, depth: int, limit: float = _SAFE) -> float | None:  # noqa: C901 (one table of ops)
    """The bound of `node`'s output; `limit` is passed on to the inputs of the ops that neither multiply nor average
    (a sum of two values below `limit` / 2 is below `limit`), the others' inputs take the _SAFE limit."""
    op = node.op_type
    inputs = [v for v in node.inputs if v is not None]
    if not inputs:
        return None
    if op in _UNIT_RANGE:  # a finite input is enough (softmax: x - max(x) <= 0 with one 0: exp sums to >= 1)
        return 1.0 if magnitude_bound(inputs[0], depth, _FINITE) is not None else None
    if op == "DequantizeLinear":
        return _dequantized_bound(node)
    if op in _SAME_BOUND or op == "Where":  # (Clip: its min and max too; Pad: its constant value)
        data = inputs[:1] if op in _DATA_INPUT_0 else [inputs[0], *node.inputs[2:3]] if op == "Pad" else \
            list(node.inputs[1:3]) if op == "Where" else inputs
        data = [x for x in data if x is not None]
        inner = _SAFE if op in _AVERAGING else limit
        bounds = [magnitude_bound(x, depth, inner) for x in data]
        if any(b is None for b in bounds):
            return None
        scale = abs(float(node.attr("alpha", 0.01))) if op == "LeakyRelu" else 1.0
        return max(bounds) * max(scale, 1.0)
    if op in ("Add", "Sub", "Mul", "Div", "MatMul", "Gemm") and len(inputs) >= 2:
        inner = limit if op in ("Add", "Sub") else _SAFE
        a = magnitude_bound(inputs[0], depth, inner)
        if op == "Div":
            smallest = _smallest_magnitude(inputs[1]) or _nonnegative_floor(inputs[1], depth)
            return a / smallest if a is not None and smallest else None
        b = magnitude_bound(inputs[1], depth, inner)
        if a is None or b is None:
            return None
        if op in ("Add", "Sub"):
            return a + b
        if op == "Mul":
            return a * b
        k = _reduction_size(inputs[0], -1 if op == "MatMul" or not node.attr("transA", 0) else -2)
        if k is None:
            return None
        product = k * a * b * abs(float(node.attr("alpha", 1.0)))
        if op == "Gemm" and len(inputs) > 2:
            c = magnitude_bound(inputs[2], depth)
            return None if c is None else product + c * abs(float(node.attr("beta", 1.0)))
        return product
    if op == "Reciprocal":
        smallest = _nonnegative_floor(inputs[0], depth)
        return 1.0 / smallest if smallest else None
    if op == "Sqrt":  # (a negative input would be NaN: only a value known to be >= 0)
        a = magnitude_bound(inputs[0], depth)
        return math.sqrt(a) if a is not None and _nonnegative_floor(inputs[0], depth) is not None else None
    if op == "Pow":
        a, p = magnitude_bound(inputs[0], depth), _integer_exponent(node)
        return a ** p if a is not None and p is not None and a ** p < _SAFE else None
    if op == "LayerNormalization":
        return _layer_norm_bound(node, depth)
    return None


def _integer_exponent(node: Node) -> int | None:
    """The exponent of Pow(x, p) when it is a constant integer from 1 to 4 (x^p then holds no NaN for finite x)."""
    c = node.inputs[1].const_value() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if c is None or c.size != 1 or not np.isfinite(c).all():
        return None
    p = float(c.reshape(()))
    return int(p) if p.is_integer() and 1 <= p <= 4 else None


def _nonnegative_floor(v: Value, depth: int) -> float | None:
    """f >= 0 with every element of the NaN-free float value `v` at least f (an RMS norm's mean(x^2) + eps: at
    least eps), or None when `v` is not known to be NaN-free and >= 0: a constant's minimum, an even power or a
    square (0), a mean or max of such values, a sum of two, the square root of one."""
    const = v.const_value()
    if const is not None:
        c = const.astype(np.float64) if const.dtype.kind in "fiu" else None
        return float(c.min()) if c is not None and c.size and np.isfinite(c).all() and c.min() >= 0 else None
    node = v.producer
    if node is None or depth <= 0 or node.domain not in ("", "ai.onnx") or v.index != 0 or \
            magnitude_bound(v, depth) is None:
        return None
    op, inputs = node.op_type, node.inputs
    if op == "Pow" and (_integer_exponent(node) or 1) % 2 == 0:
        return 0.0
    if op == "Mul" and len(inputs) == 2 and inputs[0] is inputs[1]:
        return 0.0
    if op in ("Relu", "Abs"):
        return 0.0
    if op in ("ReduceMean", "ReduceMax", "ReduceMin", "GlobalAveragePool", "AveragePool", "Reshape", "Expand",
              "Squeeze", "Unsqueeze", "Transpose", "Identity"):
        return _nonnegative_floor(inputs[0], depth - 1)
    if op == "Add" and len(inputs) == 2:
        a, b = _nonnegative_floor(inputs[0], depth - 1), _nonnegative_floor(inputs[1], depth - 1)
        return a + b if a is not None and b is not None else None
    if op == "Sqrt":
        a = _nonnegative_floor(inputs[0], depth - 1)
        return math.sqrt(a) if a is not None else None
    return None


def _dequantized_bound(node: Node) -> float | None:
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    span = _QUANTIZED_SPAN.get(x.dtype.name if x is not None and x.dtype is not None else "")
    s = scale.const_value() if scale is not None else None
    if span is None or s is None:
        return None
    s_bound = _array_bound(s)
    return None if s_bound is None else span * s_bound


def _smallest_magnitude(v: Value) -> float | None:
    c = v.const_value()
    if c is None or c.size == 0 or c.dtype.kind != "f":
        return None
    m = float(np.min(np.abs(c.astype(np.float64))))
    return m if m > 0 and math.isfinite(m) else None


def _reduction_size(v: Value, axis: int) -> int | None:
    shape = v.shape
    if not shape or not isinstance(shape[axis], int):
        return None
    return max(int(shape[axis]), 1)


def _layer_norm_bound(node: Node, depth: int) -> float | None:
    x = node.inputs[0]
    gamma = node.inputs[1] if len(node.inputs) > 1 else None
    beta = node.inputs[2] if len(node.inputs) > 2 else None
    bx = magnitude_bound(x, depth)
    if bx is None or x.shape is None or gamma is None:
        return None
    axis = int(node.attr("axis", -1)) % len(x.shape)
    dims = x.shape[axis:]
    if not all(isinstance(d, int) for d in dims) or math.prod(dims) * bx * bx >= _SAFE:
        return None  # (the sum of squares could overflow)
    g = _array_bound(gamma.const_value()) if gamma.const_value() is not None else None
    b = 0.0 if beta is None else (_array_bound(beta.const_value()) if beta.const_value() is not None else None)
    if g is None or b is None:
        return None
    return math.sqrt(max(math.prod(dims), 1)) * g + b
