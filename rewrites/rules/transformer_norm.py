"""Layer-norm fusions for transformer exports: the decomposed LayerNormalization (and RMSNormalization) of older
exporters and hand-written graphs, and a residual Add in front of a layer norm (SkipLayerNormalization).

Decomposed LayerNormalization (last axis, as PyTorch exports `nn.LayerNorm` below opset 17)::

    mean = ReduceMean(x, axes=[-1], keepdims=1)      d = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2) | Mul(d, d), axes=[-1], keepdims=1)
    y    = Add(Mul(Div(d, Sqrt(Add(var, eps))), gamma), beta)         (or d * Reciprocal(Sqrt(..)) or d * (1 / Sqrt(..)))
                                                                      (no Mul when gamma is ones)

Checked: both means reduce the same last axis of the same tensor with keepdims=1 (with keepdims=0 the Sub
broadcasts along another axis and the graph is no layer norm), eps is a scalar float constant >= 0, gamma and
beta are float tensors of the normalized size C (shape [C], or [1, ..., C]).

Decomposed RMSNormalization (Llama): y = Mul(Mul(x, Reciprocal(Sqrt(Add(ReduceMean(x^2), eps)))), gamma) or
Div(x, Sqrt(...)) -- same checks.

Rounding: not bit-exact. The fused kernels compute the variance in one pass (E[x^2] - E[x]^2 in onnxruntime's
CPU LayerNormalization) and in their own order; on inputs whose mean is large against their spread this loses
digits the two-pass form keeps. This is what onnxruntime's own LayerNormFusion does at ORT_ENABLE_EXTENDED.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..pattern import Or, require
from ..rule import Rule
from ._util import full_shape, is_float, np_dtype, operand

MS = "com.microsoft"

ROUNDING = ("not bit-exact: the fused layer norm computes mean and variance in one pass, in its own order "
            "(onnxruntime's LayerNormFusion does the same)")


def _near(value: float, rtol: float = 1e-5):
    """A constant predicate: one float element within `rtol` of `value`."""
    def pred(a: np.ndarray) -> bool:
        return a.dtype.kind == "f" and a.size == 1 and abs(float(a.reshape(-1)[0]) - value) <= rtol * abs(value)
    return pred


def _square(op, d):
    return Or(op.Pow(d, op.Constant(pred=_near(2.0, 0.0))), op.Mul(d, d))


def _inv_sqrt_times(op, d, var, eps):
    """d / sqrt(var + eps), as Div, or as Mul by Reciprocal or by 1 / sqrt (torch.rsqrt in a TorchScript export)."""
    std = op.Sqrt(op.Add(var, eps.const(scalar=True)))
    return Or(op.Div(d, std), op.Mul(d, op.Reciprocal(std)), op.Mul(d, op.Div(op.Constant(value=1.0), std)))


def layer_norm_core(op, x, eps):
    """The pattern of (x - mean(x)) / sqrt(var(x) + eps); the two ReduceMean nodes are captured."""
    mean = op.ReduceMean(x, _allow_other_inputs=True, _name="mean")
    d = op.Sub(x, mean)
    var = op.ReduceMean(_square(op, d), _allow_other_inputs=True, _name="var")
    return _inv_sqrt_times(op, d, var, eps)


def rms_norm_core(op, x, eps):
    """The pattern of x / sqrt(mean(x^2) + eps); the ReduceMean node is captured as `var`."""
    var = op.ReduceMean(_square(op, x), _allow_other_inputs=True, _name="var")
    return _inv_sqrt_times(op, x, var, eps)


def _last_axis_mean(m, node, rank: int) -> bool:
    """`node` (a ReduceMean) averages over the last axis only, keeping it (keepdims=1)."""
    if int(node.attr("keepdims", 1)) != 1:
        return False
    known, axes = operand(node, 1, "axes", m.opsets, m)
    if not known or axes is None:
        return False  # no axes: every axis (or, with noop_with_empty_axes, none)
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def check_norm(m, x, eps, *params) -> int:
    """Common checks of a decomposed layer / RMS norm of `x`; returns the normalized size C."""
    require(is_float(x), "x is not a float tensor")
    shape = full_shape(x)
    require(shape is not None and len(shape) >= 1 and isinstance(shape[-1], int), "x's last dim is not known")
    rank, c = len(shape), int(shape[-1])
    for name in ("mean", "var"):
        node = m.get(name)
        if node is not None:
            require(_last_axis_mean(m, node, rank), f"{name} is not a keepdims=1 ReduceMean over the last axis")
    e = m.const(eps)
    require(e is not None and e.dtype.kind == "f" and e.size == 1 and float(e.reshape(-1)[0]) >= 0.0,
            "eps is not a float scalar constant >= 0")
    for p in params:
        if p is None:
            continue
        ps = full_shape(p)
        require(is_float(p) and p.dtype == x.dtype, "a scale or bias is not of x's float type")
        require(ps is not None and len(ps) >= 1 and ps[-1] == c and all(d == 1 for d in ps[:-1])
                and len(ps) <= rank, "a scale or bias does not vary along the last axis only")
    return c


def _centered(x) -> bool:
    """x = Sub(y, ReduceMean(y, ...)): the centred input inside a decomposed layer norm."""
    p = x.producer
    if p is None or p.op_type != "Sub" or p.domain or len(p.inputs) != 2 or p.inputs[1] is None:
        return False
    mean = p.inputs[1].producer
    return mean is not None and mean.op_type == "ReduceMean" and mean.inputs[0] is p.inputs[0]


def eps_of(m, eps) -> float:
    return float(np.asarray(m.const(eps)).reshape(-1)[0])


def _affine(op, n, gamma, beta) -> tuple:
    """The alternatives n * gamma + beta and n + beta (a gamma of ones, which eliminate-noops drops)."""
    return op.Add(op.Mul(n, gamma), beta), op.Add(n, beta)


def scale_and_bias(op, x, gamma, beta):
    """gamma and beta as [C] tensors for the fused ops (gamma None: ones of x's type)."""
    c = int(full_shape(x)[-1])
    g = vector(op, gamma, c) if gamma is not None else op.const(np.ones(c, np_dtype(x)), hint="ln_scale")
    return g, vector(op, beta, c)


def vector(op, p, c: int):
    """`p` as the [C] tensor the fused ops want (a Reshape when it has leading 1s)."""
    if len(full_shape(p)) == 1:
        return p
    return op.Reshape(p, np.array([c], np.int64))


class FuseLayerNorm(Rule):
    """Decomposed LayerNormalization over the last axis -> LayerNormalization(x, gamma, beta) (opset 17+)."""

    min_opset: ClassVar[int | None] = 17
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x, eps, gamma, beta):
        return Or(*_affine(op, layer_norm_core(op, x, eps), gamma, beta))

    def check(self, m, x, eps, gamma, beta):
        check_norm(m, x, eps, gamma, beta)
        return True

    def rewrite(self, op, m, x, eps, gamma, beta):
        g, b = scale_and_bias(op, x, gamma, beta)
        return op.LayerNormalization(x, g, b, axis=-1, epsilon=eps_of(m, eps))


def _layer_norm(op, x, eps, gamma, beta):
    """Either form of a layer norm of x over the last axis (decomposed, or LayerNormalization)."""
    return Or(*_affine(op, layer_norm_core(op, x, eps), gamma, beta),
              op.LayerNormalization(x, gamma, beta, _name="ln"))


def _epsilon(m, eps) -> float:
    ln = m.get("ln")
    return float(ln.attr("epsilon", 1e-5)) if ln is not None else eps_of(m, eps)


class FuseSkipLayerNorm(Rule):
    """LayerNorm(Add(a, b)) over the last axis -> com.microsoft SkipLayerNormalization(a, b, gamma, beta).

    For a post-LN residual block (BERT): a, b of the same 3-D float32 or float16 shape; the sum must not be used
    elsewhere. A pre-LN block, whose sum feeds the next residual, is left alone: SkipLayerNormalization with its
    sum output measured 10% slower than Add + LayerNormalization on onnxruntime 1.31's CPU kernels (GPT-2-like
    and ViT-like exports, AMD EPYC Zen 4), which is why onnxruntime's own transformers optimizer, fusing them,
    makes those models slower; a Llama's Add + RMSNorm as SkipSimplifiedLayerNormalization measured no faster.
    From opset 17 FuseResidualLayerNorm takes the block first (the onnxruntime rule set)."""

    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, a, b, eps, gamma, beta):
        return _layer_norm(op, op.Add(a, b, _name="skip"), eps, gamma, beta)

    def check(self, m, a, b, eps, gamma, beta):
        s = m["skip"].outputs[0]
        # onnxruntime's SkipLayerNormalization takes float and float16 only (a double one does not load)
        require(np_dtype(s) in (np.float32, np.float16), "the sum is not float32 or float16")
        sa, sb = full_shape(a), full_shape(b)
        require(sa is not None and sa == sb and len(sa) == 3, "the residual Add's operands are not of one 3-D shape")
        ln = m.get("ln")
        if ln is None:
            check_norm(m, s, eps, gamma, beta)
        else:
            require(int(ln.attr("axis", -1)) in (-1, 2), "LayerNormalization is not over the last axis")
            require(len([o for o in ln.outputs if o is not None]) == 1, "LayerNormalization has stat outputs")
            require(int(ln.attr("stash_type", 1)) == 1, "LayerNormalization does not compute in float32")
            require(beta is not None, "LayerNormalization has no bias")
            c = sa[-1]
            require(all(full_shape(p) == (c,) for p in (gamma, beta)), "gamma/beta are not of the last dim")
        return True

    def rewrite(self, op, m, a, b, eps, gamma, beta):
        g, bias = scale_and_bias(op, a, gamma, beta)
        return op.SkipLayerNormalization(a, b, g, bias, _domain=MS, epsilon=_epsilon(m, eps))


class FuseResidualLayerNorm(FuseSkipLayerNorm):
    """LayerNorm(Add(a, b)) over the last axis -> LayerNormalization(Sum(a, b), gamma, beta) (opset 17+): the
    onnxruntime form of a post-LN residual block (BERT) on its CPU kernels, in place of SkipLayerNormalization;
    the pattern and checks are FuseSkipLayerNorm's.

    onnxruntime's CPU SkipLayerNormalization took 130 us on a BERT-like [1, 128, 256] residual where Sum +
    LayerNormalization take about 20 (onnxruntime 1.31, AMD EPYC Zen 5), and onnxruntime fuses an Add in front of
    a LayerNormalization into it on its own (a TorchScript BERT export: 13 of them, 22% of its run time). Sum of
    two inputs is the same sum as Add (same broadcasting, same rounding), and onnxruntime's fusion does not match
    it: the export's onnxruntime form ran 0.82x as long as the export. Where SkipLayerNormalization is fast
    (onnxruntime's CUDA kernels), `--disable-rule FuseResidualLayerNorm` leaves the block to FuseSkipLayerNorm."""

    min_opset: ClassVar[int | None] = 17

    def rewrite(self, op, m, a, b, eps, gamma, beta):
        g, bias = scale_and_bias(op, a, gamma, beta)
        return op.LayerNormalization(op.Sum(a, b), g, bias, axis=-1, epsilon=_epsilon(m, eps))


class FuseRMSNorm(Rule):
    """Decomposed RMS norm x / sqrt(mean(x^2) + eps) * gamma over the last axis -> RMSNormalization (opset 23+)."""

    min_opset: ClassVar[int | None] = 23
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x, eps, gamma):
        return op.Mul(rms_norm_core(op, x, eps), gamma)

    def check(self, m, x, eps, gamma):
        check_norm(m, x, eps, gamma)
        require(not _centered(x), "x is x' - mean(x'): a layer norm (FuseLayerNorm's), not an RMS norm")
        return True

    def rewrite(self, op, m, x, eps, gamma):
        c = int(full_shape(x)[-1])
        return op.RMSNormalization(x, vector(op, gamma, c), axis=-1, epsilon=eps_of(m, eps))

