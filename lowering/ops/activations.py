"""Piecewise activations, with the branch ONNX picks at x = +-0.0 and NaN.

TVM's frontend lowers LeakyRelu and PRelu to `nn.leakyrelu` / `nn.prelu`, which compute `x > 0 ? x : alpha * x`,
while ONNX says `alpha * x` for x < 0 and `x` for x >= 0. The two agree wherever `alpha * x` keeps the sign of a
zero x, that is for a finite alpha >= +0.0 (the usual case, kept on TVM's op); a negative alpha (or a negative
PRelu slope) turned -0.0 into +0.0 and +0.0 into -0.0, so those take the ONNX form `where(x < 0, alpha * x, x)`.
The frontend's Selu (relu arithmetic) and HardSigmoid (`clip`) turned NaN into a number, its ThresholdedRelu
(`(x > alpha) * x`) gave NaN for -inf and NaN and -0.0 where ONNX says 0, and both Selu and ThresholdedRelu
built only for float32; these follow the ONNX function bodies instead, for any float dtype.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, dtype_of, lookup_frontend


def _keeps_zero_sign(slope: np.ndarray | float) -> bool:
    """True when `slope * +-0.0` is +-0.0 for every slope: all finite and >= +0.0 (no -0.0)."""
    s = np.asarray(slope, dtype=np.float64)
    return bool(np.isfinite(s).all() and not np.signbit(s).any())


def _negative_branch(x, slope) -> relax.Expr:
    """ONNX's `slope * x for x < 0, x for x >= 0` (-0.0 and NaN come through as x). slope: a Relax tensor of
    x's dtype that broadcasts to x."""
    return relax.op.where(relax.op.less(x, const(0, dtype_of(x))), relax.op.multiply(x, slope), x)


@converter("", "LeakyRelu")
def leaky_relu(bb, inputs, attrs, ctx):
    """LeakyRelu(x) = alpha * x for x < 0, x for x >= 0 (alpha defaults to 0.01). x: float tensor."""
    x = inputs[0]
    alpha = float(attrs.get("alpha", 0.01))
    if _keeps_zero_sign(alpha):
        return relax.op.nn.leakyrelu(x, alpha)
    return _negative_branch(x, const(alpha, dtype_of(x)))


@converter("", "PRelu")
def prelu(bb, inputs, attrs, ctx):
    """PRelu(x, slope) = slope * x for x < 0, x for x >= 0; slope broadcasts to x (unidirectionally).
    x, slope: float or integer tensors of one dtype."""
    x, slope = inputs[0], inputs[1]
    value = constant_value(slope)
    if value is not None and _keeps_zero_sign(value) and x.ty.ndim != 0:  # relax.nn.prelu refuses a 0-d x
        return lookup_frontend("PRelu", ctx.opset)(bb, inputs, attrs, ctx)
    return _negative_branch(x, slope)


@converter("", "Selu")
def selu(bb, inputs, attrs, ctx):
    """Selu(x) = gamma * (alpha * exp(x) - alpha) for x <= 0, gamma * x for x > 0 (ONNX Selu-6 function body;
    NaN takes the second branch and stays NaN). x: float tensor of any float dtype."""
    x = inputs[0]
    t = dtype_of(x)
    alpha = const(float(attrs.get("alpha", 1.67326319217681884765625)), t)
    gamma = const(float(attrs.get("gamma", 1.05070102214813232421875)), t)
    negative = relax.op.multiply(gamma, relax.op.subtract(relax.op.multiply(alpha, relax.op.exp(x)), alpha))
    return relax.op.where(relax.op.less_equal(x, const(0, t)), negative, relax.op.multiply(gamma, x))


@converter("", "ThresholdedRelu")
def thresholded_relu(bb, inputs, attrs, ctx):
    """ThresholdedRelu(x) = x for x > alpha, else +0.0 (NaN included; alpha defaults to 1.0). x: float tensor."""
    x = inputs[0]
    alpha = const(float(attrs.get("alpha", 1.0)), dtype_of(x))
    return relax.op.where(relax.op.greater(x, alpha), x, relax.op.zeros_like(x))


@converter("", "HardSigmoid")
def hard_sigmoid(bb, inputs, attrs, ctx):
    """HardSigmoid(x) = max(0, min(1, alpha * x + beta)) (alpha 0.2, beta 0.5 by default), NaN in gives NaN out:
    maximum/minimum with rank-matched constant bounds, which codegen's nan_order pass puts first (as Clip).
    beta is a rank-matched tensor too: TVM's simplifier drops a scalar `+ 0.0`, which must turn -0.0 into +0.0;
    a 0-d x is computed as [1] (a 0-d kernel's constants are immediates, and the `+ 0.0` went again).
    x: float tensor."""
    x = inputs[0]
    t = dtype_of(x)
    scalar = x.ty.ndim == 0
    if scalar:
        x = bb.emit(relax.op.reshape(x, [1]))
    rank = max(x.ty.ndim, 0)
    y = relax.op.add(relax.op.multiply(x, const(float(attrs.get("alpha", 0.2)), t)),
                     const(np.full([1] * rank, float(attrs.get("beta", 0.5))), t))
    y = bb.normalize(relax.op.maximum(y, const(np.zeros([1] * rank), t)))
    y = relax.op.minimum(y, const(np.ones([1] * rank), t))
    return relax.op.reshape(bb.emit(y), []) if scalar else y

