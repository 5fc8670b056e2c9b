"""Gelu fusions for transformer exports.

erf form (BERT, PyTorch's exact gelu):  0.5 * x * (1 + erf(x / sqrt(2)))     (x * 0.7071... for the Div too)
tanh form (GPT-2, gelu_new):           0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
                                                                           (x^3 as Pow(x, 3) or x * (x * x))
The constants are checked to 1e-5 relative (exporters write them rounded to float32, some to 7 digits).

Outputs: the standard `Gelu` (opset 20+, approximate="none" / "tanh"), or onnxruntime's com.microsoft `Gelu` /
`FastGelu`, and then `BiasGelu` / `FastGelu` with its bias when the input is Add(x, bias) with a constant [C]
bias over the last axis.

Rounding: not bit-exact, the fused kernels evaluate the same function with their own erf / tanh and order
(onnxruntime's GeluFusion / FastGeluFusion do the same).
"""

from __future__ import annotations

import math
from typing import ClassVar

from ..pattern import Or, require
from ..rule import Rule
from ._util import full_shape, is_float
from .transformer_norm import MS, _near

ROUNDING = "not bit-exact: the fused Gelu evaluates erf / tanh and the products in its own order"


def _c(op, value: float):
    return op.Constant(pred=_near(value))


def _half_x_times(op, x, t):
    """0.5 * x * t, in the orders exporters write it."""
    return Or(op.Mul(op.Mul(x, t), _c(op, 0.5)),
              op.Mul(op.Mul(x, _c(op, 0.5)), t),
              op.Mul(x, op.Mul(t, _c(op, 0.5))))


def gelu_erf(op, x):
    scaled = Or(op.Div(x, _c(op, math.sqrt(2.0))), op.Mul(x, _c(op, 1.0 / math.sqrt(2.0))))
    return _half_x_times(op, x, op.Add(op.Erf(scaled), _c(op, 1.0)))


def gelu_tanh(op, x):
    cube = Or(op.Pow(x, _c(op, 3.0)), op.Mul(x, op.Mul(x, x)), op.Mul(op.Mul(x, x), x))
    inner = op.Mul(op.Add(x, op.Mul(cube, _c(op, 0.044715))), _c(op, math.sqrt(2.0 / math.pi)))
    return _half_x_times(op, x, op.Add(op.Tanh(inner), _c(op, 1.0)))


def _check_x(m, x) -> bool:
    """x is a float tensor, and no matched constant (0.5, 1, sqrt 2, ...) has more dims than x: a [1, 1, 1, 1]
    constant on a 3-D x broadcasts the result to 4-D, which the fused op (of x's shape) would not."""
    require(is_float(x), "x is not a float tensor")
    xs = full_shape(x)
    rank = len(xs) if xs is not None else 0
    for node in m.nodes:
        for value in node.inputs:
            c = m.const(value) if value is not None else None
            require(c is None or c.ndim <= rank, "a constant has more dims than x (it broadcasts the result)")
    return True


class FuseGeluErf(Rule):
    """0.5 * x * (1 + erf(x / sqrt 2)) -> Gelu(x) (opset 20+)."""

    min_opset: ClassVar[int | None] = 20
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x):
        return gelu_erf(op, x)

    def check(self, m, x):
        return _check_x(m, x)

    def rewrite(self, op, m, x):
        return op.Gelu(x)


class FuseGeluTanh(Rule):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> Gelu(x, approximate="tanh") (opset 20+)."""

    min_opset: ClassVar[int | None] = 20
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x):
        return gelu_tanh(op, x)

    def check(self, m, x):
        return _check_x(m, x)

    def rewrite(self, op, m, x):
        return op.Gelu(x, approximate="tanh")


class FuseGeluErfContrib(Rule):
    """0.5 * x * (1 + erf(x / sqrt 2)) -> com.microsoft Gelu(x)."""

    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x):
        return gelu_erf(op, x)

    def check(self, m, x):
        return _check_x(m, x)

    def rewrite(self, op, m, x):
        return op.Gelu(x, _domain=MS)


class FuseFastGelu(Rule):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> com.microsoft FastGelu(x)."""

    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x):
        return gelu_tanh(op, x)

    def check(self, m, x):
        return _check_x(m, x)

    def rewrite(self, op, m, x):
        return op.FastGelu(x, _domain=MS)


def _check_bias(x, bias) -> bool:
    xs, bs = full_shape(x), full_shape(bias)
    return require(is_float(x) and xs is not None and bs is not None and len(bs) == 1 and len(xs) >= 2
                   and bs[0] == xs[-1] and isinstance(bs[0], int) and bias.dtype == x.dtype,
                   "the bias is not a [C] vector over x's last axis")


class FuseBiasGelu(Rule):
    """com.microsoft Gelu(Add(x, bias)) -> com.microsoft BiasGelu(x, bias), bias a [C] vector of the last axis."""

    benefit: ClassVar[int] = 2

    def pattern(self, op, x, bias):
        return op.Gelu(op.Add(x, bias), _domain=MS)

    def check(self, m, x, bias):
        return _check_bias(x, bias)

    def rewrite(self, op, m, x, bias):
        return op.BiasGelu(x, bias, _domain=MS)


class FuseFastGeluBias(Rule):
    """com.microsoft FastGelu(Add(x, bias)) -> com.microsoft FastGelu(x, bias), bias a [C] vector of the last
    axis."""

    benefit: ClassVar[int] = 2

    def pattern(self, op, x, bias):
        return op.FastGelu(op.Add(x, bias), None, _domain=MS)

    def check(self, m, x, bias):
        return _check_bias(x, bias)

    def rewrite(self, op, m, x, bias):
        return op.FastGelu(x, bias, _domain=MS)
