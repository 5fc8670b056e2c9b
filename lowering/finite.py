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
deviations from the mean). A value whose bound is below float32's largest finite number / 2^32 holds no NaN and
no infinity, and no sum of up to 2^32 such values overflows.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Node, Value

#: bounds are accepted below float32's largest value / 2^32: a sum or mean of up to 2^32 such elements (a pool, a
#: reduction, a layer norm's mean and variance) cannot overflow either (float16 values: no claim)
_SAFE = float(np.finfo(np.float32).max) / 2.0**32

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


def magnitude_bound(v: Value, depth: int = 32) -> float | None:
    """An upper bound on |x| over the elements x of the float value `v` (so: no NaN, no infinity), or None when none
    is known (a graph input, an op this analysis does not know, a bound at float32's largest value or above).
    `depth`: how many producers to walk back at most."""
    const = v.const_value()
    if const is not None:
        return _array_bound(const)
    node = v.producer
    if node is None or depth <= 0 or node.domain not in ("", "ai.onnx") or (v.index != 0 and node.op_type != "Split"):
        return None  # (other outputs: MaxPool's indices, LayerNormalization's statistics)
    if v.dtype is None or v.dtype.name not in ("FLOAT", "DOUBLE", "BFLOAT16"):
        return None
    bound = _node_bound(node, depth - 1)
    return bound if bound is not None and bound < _SAFE else None


def finite_quotient(x: Value, scale: Value) -> bool:
    """Whether x / scale holds no NaN (QuantizeLinear's first step): x provably finite and scale a constant with no
    zero, NaN or infinity (an overflow to infinity is then possible, a NaN is not)."""
    return magnitude_bound(x) is not None and _smallest_magnitude(scale) is not None and \
        _array_bound(scale.const_value()) is not None


def _array_bound(a: np.ndarray) -> float | None:
    if a.dtype.kind not in "fiub":
        return None
    if a.size == 0:
        return 0.0
    m = float(np.max(np.abs(a.astype(np.float64))))
    return m if math.isfinite(m) else None


def _node_bound(node: Node, depth: int) -> float | None:  # noqa: C901 (one table of ops)
    op = node.op_type
    inputs = [v for v in node.inputs if v is not None]
    if not inputs:
        return None
    if op in _UNIT_RANGE:  # (softmax: x - max(x) stays finite below _SAFE)
        return 1.0 if magnitude_bound(inputs[0], depth) is not None else None
    if op == "DequantizeLinear":
        return _dequantized_bound(node)
    if op in _SAME_BOUND:  # (Clip: its min and max too; Pad: its constant value)
        data = inputs[:1] if op in _DATA_INPUT_0 else [inputs[0], *node.inputs[2:3]] if op == "Pad" else inputs
        data = [x for x in data if x is not None]
        bounds = [magnitude_bound(x, depth) for x in data]
        if any(b is None for b in bounds):
            return None
        scale = abs(float(node.attr("alpha", 0.01))) if op == "LeakyRelu" else 1.0
        return max(bounds) * max(scale, 1.0)
    if op in ("Add", "Sub", "Mul", "Div", "MatMul", "Gemm") and len(inputs) >= 2:
        a, b = magnitude_bound(inputs[0], depth), magnitude_bound(inputs[1], depth)
        if a is None or b is None:
            return None
        if op in ("Add", "Sub"):
            return a + b
        if op == "Mul":
            return a * b
        if op == "Div":
            smallest = _smallest_magnitude(inputs[1])
            return a / smallest if smallest else None
        k = _reduction_size(inputs[0], -1 if op == "MatMul" or not node.attr("transA", 0) else -2)
        if k is None:
            return None
        product = k * a * b * abs(float(node.attr("alpha", 1.0)))
        if op == "Gemm" and len(inputs) > 2:
            c = magnitude_bound(inputs[2], depth)
            return None if c is None else product + c * abs(float(node.attr("beta", 1.0)))
        return product
    if op == "LayerNormalization":
        return _layer_norm_bound(node, depth)
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
