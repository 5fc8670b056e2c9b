"""Operator fusions: BatchNormalization / Add / Mul / Pad into Conv (and friends), MatMul + Add into Gemm.

Weights are recomputed in float64 and stored back in the original element type under fresh names; the
original (possibly shared) initializers are never changed.

IEEE semantics. Two kinds of fusion run by default:

* exact ones: `FusePadConv` (the Conv's implicit padding is the same +0.0 the Pad writes; checked bit for bit
  on onnxruntime, NaN and +-inf inputs included);
* accepted reassociations (`Rule.rounding`): folding BatchNormalization / a per-channel Mul or Add into the
  weights and bias, and MatMul + Add into Gemm. They compute the same real-number function but round at other
  places: a folded weight is the float64 product rounded once to its type (at most 0.5 ulp from the exact
  w * s), and the runtime sums the products of the fused op in its own order. The difference is a few units of
  rounding of the sum of the magnitudes of the products (sum |w * s * x|), not of the result (which can
  cancel), so no bound in ulp of the output exists. This is what serious optimizers do at their default
  level (onnxruntime's ConvBNFusion / ConvAddFusion / ConvMulFusion / MatMulAddFusion at ORT_ENABLE_BASIC,
  onnxsim / onnxoptimizer's fuse_bn_into_conv); `optc optimize --disable fuse` keeps the graph as it is.
  A fold whose new weights would overflow to +-inf or turn into NaN (tiny variances, huge factors) where the
  originals were finite is refused.

`FusePadAveragePool` and `FusePadMaxPool` are exact in real arithmetic but not in IEEE arithmetic as
onnxruntime computes them (signed zeros; NaN and -inf windows), so they apply only under fast-math.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..pattern import Optional, Or, require
from ..rule import Rule
from ._util import full_shape, is_float, minus_one_target, operand, static_shape, transpose_perm

_FLOAT_KINDS = "f"


def _arr(m, v):
    a = m.const(v)
    return None if a is None else np.asarray(a)


def _is_float_array(a) -> bool:
    return a is not None and a.dtype.kind in _FLOAT_KINDS


def _finite_fold(new: np.ndarray, *originals) -> bool:
    """False when folding made a non-finite value out of finite operands (an overflow, inf * 0, ...)."""
    new = np.asarray(new)
    if new.dtype.kind != "f" or np.isfinite(new).all():
        return True
    return not all(np.isfinite(np.asarray(o, np.float64)).all() for o in originals if o is not None)


def _require_finite_fold(new: np.ndarray, *originals) -> None:
    require(_finite_fold(new, *originals), "folding overflows: the fused weights or bias are not finite")


def _bn_scale_shift(m, scale, bias, mean, var):
    """Per-channel (s, t) with BN(y) = y * s + t, in float64."""
    eps = float(m.root.attr("epsilon", 1e-5))
    sc, bi, mu, va = (_arr(m, v).astype(np.float64) for v in (scale, bias, mean, var))
    with np.errstate(all="ignore"):
        s = sc / np.sqrt(va + eps)
        return s, bi - mu * s


def _bn_bias(m, b, s, t, dtype) -> np.ndarray:
    """The bias of a conv followed by BatchNormalization (y * s + t): b * s + t (b = 0 when absent)."""
    b0 = _arr(m, b).astype(np.float64) if b is not None else np.zeros_like(s)
    return (b0 * s + t).astype(dtype)


def _require_inference_bn(bn) -> None:
    """The BatchNormalization normalizes with its constant statistics (inference, no running-stat outputs)."""
    require(bn.attr("training_mode", 0) == 0, "BatchNormalization is in training mode")
    require(bn.attr("is_test", 1) != 0 and bn.attr("spatial", 1) == 1, "BatchNormalization (old opset) trains")
    require(len([o for o in bn.outputs if o is not None]) == 1, "BatchNormalization has running-stat outputs")


def _require_bn_params(m, channels: int, *params) -> None:
    """Every BatchNormalization parameter (and bias, when given) is a float constant of `channels` values."""
    arrays = [_arr(m, v) for v in params if v is not None]
    require(all(_is_float_array(a) for a in arrays), "weights are not float constants")
    require(all(a.size == channels for a in arrays), "BatchNormalization's parameters do not match the channels")


def _check_bn(m, w, b, scale, bias, mean, var, channels_axis: int):
    """Common BatchNormalization checks; returns the number of output channels."""
    _require_inference_bn(m.root)
    wa = _arr(m, w)
    require(_is_float_array(wa) and wa.ndim >= 2, "the weight is not a float constant of rank >= 2")
    c = wa.shape[channels_axis]
    _require_bn_params(m, c, scale, bias, mean, var, b)
    return c


_BN_ROUNDING = ("not bit-exact: weights and bias rescaled by scale / sqrt(var + eps), each rounded once "
                "(onnxruntime's ConvBNFusion does the same at its basic level)")


class FuseConvBatchNorm(Rule):
    """BatchNormalization(Conv(x, w, b)) -> Conv(x, w * s, (b - mean) * s + beta).

    Not bit-exact (an accepted reassociation, see the module docstring): s = scale / sqrt(var + eps) is
    computed in float64 and each w * s and the bias rounded once to the weight type; refused when that overflows.
    """

    rounding: ClassVar[str] = _BN_ROUNDING

    def pattern(self, op, x, w, b, scale, bias, mean, var):
        conv = op.Conv(x, w.const(), Optional(b.const()), _name="conv")
        return op.BatchNormalization(conv, scale.const(), bias.const(), mean.const(), var.const())

    def check(self, m, x, w, b, scale, bias, mean, var):
        _check_bn(m, w, b, scale, bias, mean, var, 0)
        new_w, new_b = m.folded = self._fold(m, w, b, scale, bias, mean, var)
        _require_finite_fold(new_w, _arr(m, w), *[_arr(m, v) for v in (scale, bias, mean, var)])
        _require_finite_fold(new_b, *[_arr(m, v) for v in (b, scale, bias, mean, var) if v is not None])
        return True

    @staticmethod
    def _fold(m, w, b, scale, bias, mean, var):
        s, t = _bn_scale_shift(m, scale, bias, mean, var)
        wa = _arr(m, w)
        with np.errstate(all="ignore"):
            new_w = (wa.astype(np.float64) * s.reshape((-1,) + (1,) * (wa.ndim - 1))).astype(wa.dtype)
            return new_w, _bn_bias(m, b, s, t, wa.dtype)

    def rewrite(self, op, m, x, w, b, scale, bias, mean, var):
        new_w, new_b = m.folded  # computed by check
        return op.Conv(x, op.const(new_w, hint=f"{w.name}_bn"), op.const(new_b, hint=f"{w.name}_bn_bias"),
                       **_attrs(m["conv"]))


class FuseConvTransposeBatchNorm(Rule):
    """BatchNormalization(ConvTranspose(x, w, b)) -> ConvTranspose with scaled weights and shifted bias.

    Not bit-exact, like FuseConvBatchNorm (an accepted reassociation); refused when the fold overflows.
    """

    rounding: ClassVar[str] = _BN_ROUNDING

    def pattern(self, op, x, w, b, scale, bias, mean, var):
        conv = op.ConvTranspose(x, w.const(), Optional(b.const()), _name="conv")
        return op.BatchNormalization(conv, scale.const(), bias.const(), mean.const(), var.const())

    def check(self, m, x, w, b, scale, bias, mean, var):
        _require_inference_bn(m.root)
        wa = _arr(m, w)
        require(_is_float_array(wa) and wa.ndim >= 2, "the weight is not a float constant of rank >= 2")
        _require_bn_params(m, wa.shape[1] * int(m["conv"].attr("group", 1)), scale, bias, mean, var, b)
        new_w, new_b = m.folded = self._fold(m, w, b, scale, bias, mean, var)
        _require_finite_fold(new_w, wa, *[_arr(m, v) for v in (scale, bias, mean, var)])
        _require_finite_fold(new_b, *[_arr(m, v) for v in (b, scale, bias, mean, var) if v is not None])
        return True

    @staticmethod
    def _fold(m, w, b, scale, bias, mean, var):
        s, t = _bn_scale_shift(m, scale, bias, mean, var)
        wa = _arr(m, w)
        group = int(m["conv"].attr("group", 1))
        cin, mg = wa.shape[0], wa.shape[1]
        with np.errstate(all="ignore"):
            w64 = wa.astype(np.float64).reshape((group, cin // group, mg) + wa.shape[2:])
            w64 = w64 * s.reshape((group, 1, mg) + (1,) * (wa.ndim - 2))
            return w64.reshape(wa.shape).astype(wa.dtype), _bn_bias(m, b, s, t, wa.dtype)

    def rewrite(self, op, m, x, w, b, scale, bias, mean, var):
        new_w, new_b = m.folded  # computed by check
        return op.ConvTranspose(x, op.const(new_w, hint=f"{w.name}_bn"), op.const(new_b, hint=f"{w.name}_bn_bias"),
                                **_attrs(m["conv"]))


class FuseGemmBatchNorm(Rule):
    """BatchNormalization(Gemm(a, B, C)) -> Gemm(a, B * s, (beta * C - mean) * s + bias) for 2-D Gemm output.

    Not bit-exact, like FuseConvBatchNorm (an accepted reassociation); refused when the fold overflows.
    """

    rounding: ClassVar[str] = _BN_ROUNDING

    def pattern(self, op, a, w, c, scale, bias, mean, var):
        gemm = op.Gemm(a, w.const(), Optional(c.const()), _name="gemm")
        return op.BatchNormalization(gemm, scale.const(), bias.const(), mean.const(), var.const())

    def check(self, m, a, w, c, scale, bias, mean, var):
        _require_inference_bn(m.root)
        wa = _arr(m, w)
        require(_is_float_array(wa) and wa.ndim == 2, "B is not a 2-D float constant")
        n_out = wa.shape[0] if m["gemm"].attr("transB", 0) else wa.shape[1]
        _require_bn_params(m, n_out, scale, bias, mean, var)
        if c is not None:
            ca = _arr(m, c)
            require(_is_float_array(ca) and ca.ndim <= 2, "C is not a float constant")
            require(ca.ndim == 0 or ca.shape[-1] in (1, n_out), "C does not broadcast over the columns")
        new_w, new_c = m.folded = self._fold(m, w, c, scale, bias, mean, var)
        _require_finite_fold(new_w, wa, *[_arr(m, v) for v in (scale, bias, mean, var)])
        _require_finite_fold(new_c, *[_arr(m, v) for v in (c, scale, bias, mean, var) if v is not None])
        return True

    @staticmethod
    def _fold(m, w, c, scale, bias, mean, var):
        s, t = _bn_scale_shift(m, scale, bias, mean, var)
        gemm = m["gemm"]
        wa = _arr(m, w)
        with np.errstate(all="ignore"):
            w64 = wa.astype(np.float64)
            w64 = w64 * (s.reshape(-1, 1) if gemm.attr("transB", 0) else s.reshape(1, -1))
            beta = float(gemm.attr("beta", 1.0))
            if c is not None:
                ca = _arr(m, c).astype(np.float64) * beta
                cvec = ca if ca.ndim == 2 and ca.shape[0] != 1 else np.broadcast_to(ca.reshape(-1), s.shape)
            else:
                cvec = np.zeros_like(s)
            new_c = ((cvec - np.asarray(_arr(m, mean), np.float64)) * s + np.asarray(_arr(m, bias), np.float64))
            return w64.astype(wa.dtype), new_c.astype(wa.dtype)

    def rewrite(self, op, m, a, w, c, scale, bias, mean, var):
        new_w, new_c = m.folded  # computed by check
        attrs = _attrs(m["gemm"])
        attrs["beta"] = 1.0
        return op.Gemm(a, op.const(new_w, hint=f"{w.name}_bn"), op.const(new_c, hint=f"{w.name}_bn_bias"), **attrs)


def _attrs(node) -> dict:
    """The node's attributes (Attr objects keep their exact types, e.g. empty lists)."""
    return dict(node.attributes)


def _channel_vector(m, c, out_rank: int, channels: int) -> np.ndarray | None:
    """The constant `c` as a per-channel vector when broadcasting it over a conv output (N, C, ...) only
    varies along C (and does not grow the output); else None."""
    arr = _arr(m, c)
    if arr is None or arr.ndim > out_rank:
        return None
    if arr.size == 1:
        return np.full(channels, arr.reshape(-1)[0], dtype=np.float64)
    shape = (1,) * (out_rank - arr.ndim) + arr.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] != channels:
        return None
    return arr.reshape(-1).astype(np.float64)


class _ConvThenChannelConstant(Rule):
    """Conv(x, w, b) <binary> c with c a constant that only varies along the output channels."""

    binary: ClassVar[str] = ""
    operand: ClassVar[str] = ""

    def pattern(self, op, x, w, b, c):
        return getattr(op, self.binary)(op.Conv(x, w.const(), Optional(b.const()), _name="conv"), c.const())

    def check(self, m, x, w, b, c):
        wa = _arr(m, w)
        require(_is_float_array(wa), "the weight is not a float constant")
        out = m.outputs[0]
        require(out.rank is not None, "the output rank is unknown")
        require(c.dtype == w.dtype, "element types differ")
        vec = _channel_vector(m, c, out.rank, wa.shape[0])
        require(vec is not None, f"the {self.operand} is not per-channel")
        m.folded = self._fold(m, wa, b, vec)
        for new in m.folded:
            if new is not None:
                _require_finite_fold(new, wa, vec, _arr(m, b) if b is not None else None)
        return True

    def _fold(self, m, wa, b, vec) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(new weight or None when unchanged, new bias or None when absent)."""
        raise NotImplementedError


class FuseConvAdd(_ConvThenChannelConstant):
    """Conv(x, w, b) + c with c constant per output channel -> Conv(x, w, b + c).

    Not bit-exact (an accepted reassociation, see the module docstring): (conv + b) + c rounds twice, the fused
    conv + fl(b + c) once.
    """

    binary: ClassVar[str] = "Add"
    operand: ClassVar[str] = "addend"
    rounding: ClassVar[str] = ("not bit-exact: the addend joins the bias, rounded once (onnxruntime's ConvAddFusion "
                               "does the same)")

    def _fold(self, m, wa, b, vec):
        b0 = _arr(m, b).astype(np.float64) if b is not None else np.zeros(wa.shape[0])
        with np.errstate(all="ignore"):
            return None, (b0 + vec).astype(wa.dtype)

    def rewrite(self, op, m, x, w, b, c):
        _, bias = m.folded
        return op.Conv(x, w, op.const(bias, hint=f"{w.name}_bias"), **_attrs(m["conv"]))


class FuseConvMul(_ConvThenChannelConstant):
    """Conv(x, w, b) * c with c constant per output channel -> Conv(x, w * c, b * c).

    Not bit-exact (an accepted reassociation, see the module docstring): the products are summed after, not
    before, the scaling; refused when w * c or b * c overflows or c is not finite.
    """

    binary: ClassVar[str] = "Mul"
    operand: ClassVar[str] = "factor"
    rounding: ClassVar[str] = ("not bit-exact: weights and bias scaled by the factor, each rounded once "
                               "(onnxruntime's ConvMulFusion does the same)")

    def _fold(self, m, wa, b, vec):
        with np.errstate(all="ignore"):
            new_w = (wa.astype(np.float64) * vec.reshape((-1,) + (1,) * (wa.ndim - 1))).astype(wa.dtype)
            bias = (_arr(m, b).astype(np.float64) * vec).astype(wa.dtype) if b is not None else None
        return new_w, bias

    def check(self, m, x, w, b, c):
        super().check(m, x, w, b, c)
        return require(np.isfinite(_arr(m, c).astype(np.float64)).all(), "the factor is not finite")

    def rewrite(self, op, m, x, w, b, c):
        new_w, bias = m.folded
        bias = op.const(bias, hint=f"{w.name}_bias") if bias is not None else None
        return op.Conv(x, op.const(new_w, hint=f"{w.name}_scaled"), bias, **_attrs(m["conv"]))


def _pad_amounts(m, pad_node, rank: int) -> list[int] | None:
    """The Pad's pads as [begin..., end...] over all `rank` axes, or None when not constant / not plain."""
    known, pads = operand(pad_node, 1, "pads", m.opsets, m)
    if not known or pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(pad_node.inputs) > 3 and pad_node.inputs[3] is not None:
        axes = m.const(pad_node.inputs[3])
        if axes is None:
            return None
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)]
        full = [0] * (2 * rank)
        k = len(axes)
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + k]
        pads = full
    if len(pads) != 2 * rank:
        return None
    return pads


def _pad_value(m, pad_node) -> float | None:
    """The Pad's constant value (+0.0 when absent; -0.0 kept as -0.0), or None when not a known scalar."""
    known, v = operand(pad_node, 2, "value", m.opsets, m)
    if not known:
        return None
    if v is None:
        return 0.0
    v = np.asarray(v).reshape(-1)
    return float(v[0]) if v.size == 1 else (0.0 if v.size == 0 else None)


def _is_plus_zero(v: float | None) -> bool:
    return v is not None and v == 0.0 and not np.signbit(v)


def _fused_pads(m, x, op_node, kernel_rank: int) -> list[int] | str:
    pad_node = m["pad"]
    rank = x.rank
    if rank is None or rank != kernel_rank + 2:
        return "the input rank is unknown"
    mode = pad_node.attr("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return "the Pad is not constant padding"
    pads = _pad_amounts(m, pad_node, rank)
    if pads is None:
        return "the pads are not constant"
    if any(p < 0 for p in pads):
        return "negative pads crop"
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return "the Pad pads the batch or channel axis"
    auto_pad = op_node.attr("auto_pad", "NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", ""):
        return "the consumer uses auto_pad"
    own = op_node.attr("pads") or [0] * (2 * kernel_rank)
    begin = [own[i] + pads[2 + i] for i in range(kernel_rank)]
    end = [own[kernel_rank + i] + pads[rank + 2 + i] for i in range(kernel_rank)]
    return begin + end


def _kernel_rank(m, node) -> int | None:
    ks = node.attr("kernel_shape")
    if ks is not None:
        return len(ks)
    if node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].rank:
        return node.inputs[1].rank - 2
    return None


class FusePadConv(Rule):
    """Conv(Pad(x, zeros on spatial axes)) -> Conv(x) with the pads added to its own.

    Exact: the Conv's implicit padding is the same +0.0 that the Pad writes, so the same products are summed
    (bit for bit on onnxruntime, NaN and +-inf inputs and weights included). A -0.0 pad value is refused: a
    window of -0.0 products sums to -0.0 with it and to +0.0 with the implicit +0.0.
    """

    def pattern(self, op, x, w, b):
        pad = op.Pad(x, _allow_other_inputs=True, _name="pad")
        return op.Conv(pad, w, Optional(b))

    def check(self, m, x, w, b):
        kr = _kernel_rank(m, m.root)
        require(kr is not None, "the kernel rank is unknown")
        v = _pad_value(m, m["pad"])
        require(_is_plus_zero(v), "the pad value is not a constant +0.0")
        fused = _fused_pads(m, x, m.root, kr)
        return require(not isinstance(fused, str), fused if isinstance(fused, str) else "")

    def rewrite(self, op, m, x, w, b):
        attrs = _attrs(m.root)
        attrs["pads"] = _fused_pads(m, x, m.root, _kernel_rank(m, m.root))
        attrs.pop("auto_pad", None)
        return op.Conv(x, w, b, **attrs)


class FusePadAveragePool(Rule):
    """AveragePool(Pad(x, zeros)) -> AveragePool(x, pads + count_include_pad=1) (fast-math only).

    Exact in real arithmetic (the same sum divided by the same window size), not under IEEE 754: with the Pad,
    a window of -0.0s and padding sums -0.0 + +0.0 = +0.0; with implicit padding onnxruntime sums only the
    -0.0s and averages to -0.0. So it applies only under fast-math.
    """

    fast_math: ClassVar[str] = "always (a window of -0.0s and padding averages to +0.0 with the Pad, -0.0 without)"

    def pattern(self, op, x):
        return op.AveragePool(op.Pad(x, _allow_other_inputs=True, _name="pad"))

    def check(self, m, x):
        pool = m.root
        kr = _kernel_rank(m, pool)
        require(kr is not None, "the kernel rank is unknown")
        require(m.fast_math, "implicit padding changes the sign of zero averages (applies only under fast-math)")
        require(_pad_value(m, m["pad"]) == 0.0, "the pad value is not a constant 0")
        own = pool.attr("pads") or [0] * (2 * kr)
        require(pool.attr("count_include_pad", 0) == 1 or not any(own),
                "the pool's own padding is excluded from the average")
        require(pool.attr("ceil_mode", 0) == 0, "ceil_mode windows may reach past the padding")
        fused = _fused_pads(m, x, pool, kr)
        return require(not isinstance(fused, str), fused if isinstance(fused, str) else "")

    def rewrite(self, op, m, x):
        attrs = _attrs(m.root)
        attrs["pads"] = _fused_pads(m, x, m.root, _kernel_rank(m, m.root))
        attrs["count_include_pad"] = 1
        attrs.pop("auto_pad", None)
        return op.AveragePool(x, **attrs)


class FusePadMaxPool(Rule):
    """MaxPool(Pad(x, -inf)) -> MaxPool(x, pads) (fast-math only).

    Exact in real arithmetic and by the ONNX spec for finite inputs (a -inf pad never wins a max), not as
    onnxruntime computes it: its implicit padding starts from -FLT_MAX (a window of -inf and padding gives
    -3.4e38, not -inf) and a NaN in a window survives or not depending on where the -inf pads are (measured with
    onnxruntime 1.31). So it applies only under fast-math.
    """

    fast_math: ClassVar[str] = "always (onnxruntime's implicit padding differs for NaN and all -inf windows)"

    def pattern(self, op, x):
        return op.MaxPool(op.Pad(x, _allow_other_inputs=True, _name="pad"))

    def check(self, m, x):
        pool = m.root
        kr = _kernel_rank(m, pool)
        require(kr is not None, "the kernel rank is unknown")
        require(m.fast_math, "implicit padding differs for NaN and -inf windows (applies only under fast-math)")
        v = _pad_value(m, m["pad"])
        require(v is not None and v == -np.inf, "the pad value is not -inf")
        fused = _fused_pads(m, x, pool, kr)
        return require(not isinstance(fused, str), fused if isinstance(fused, str) else "")

    def rewrite(self, op, m, x):
        attrs = _attrs(m.root)
        attrs["pads"] = _fused_pads(m, x, m.root, _kernel_rank(m, m.root))
        attrs.pop("auto_pad", None)
        return op.MaxPool(x, **attrs)


_GEMM_ROUNDING = ("not bit-exact: the runtime's Gemm kernel sums the products in its own order (onnxruntime's "
                  "MatMulAddFusion does the same)")


class MatMulAddToGemm(Rule):
    """Add(MatMul(a, b), c) with rank-2 a and b, float, c broadcastable to the product -> Gemm(a, b, c).

    Not bit-exact (an accepted reassociation): the same products and the same addend, but a runtime's Gemm
    kernel may sum them in another order than its MatMul kernel (onnxruntime 1.31: up to 1.1e-5 absolute on a
    1000-term dot product of standard normal values).
    """

    rounding: ClassVar[str] = _GEMM_ROUNDING

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b), c)

    def check(self, m, a, b, c):
        require(a.rank == 2 and b.rank == 2, "Gemm needs rank-2 A and B")
        require(is_float(a) and a.dtype == b.dtype == c.dtype, "Gemm needs float operands of one type")
        require(c.rank is not None and c.rank <= 2, "C must have rank <= 2")
        prod = (a.shape[0], b.shape[1])
        for cd, pd in zip(c.shape, prod[2 - c.rank:], strict=True):
            require(cd == 1 or (cd is not None and cd == pd), "C may broadcast the product to a larger shape")
        return True

    def rewrite(self, op, m, a, b, c):
        return op.Gemm(a, b, c)


_RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class MatMulAddReshapeToGemm(Rule):
    """Reshape(Add(MatMul(a, b), c)) with a of rank >= 3, a 2-D b and c constant along the rows ->
    Reshape(Gemm(Reshape(a, [-1, K]), b, c)) (float).

    With b 2-D, MatMul multiplies every row of a's leading axes alike, so it is one 2-D product; the outer
    Reshape takes the 2-D result straight to its target. The node count stays the same, and the flattening of a
    is shared (cse) by every projection of the same input (attention's q, k and v); a reshape that produces a
    (used only here) is folded into it. Not bit-exact, like MatMulAddToGemm (the reshapes are exact).
    """

    rounding: ClassVar[str] = _GEMM_ROUNDING

    min_opset = 7  # Gemm broadcasts C

    def pattern(self, op, a, b, c, s):
        return op.Reshape(op.Add(op.MatMul(a, b), c), s)

    def check(self, m, a, b, c, s):
        require(a.rank is not None and a.rank >= 3 and b.rank == 2, "needs A of rank >= 3 and a 2-D B")
        require(is_float(a) and a.dtype == b.dtype == c.dtype, "Gemm needs float operands of one type")
        k, n = b.shape
        require(isinstance(k, int) and k > 0 and a.shape[-1] == k, "K is not a known positive int")
        require(c.rank is not None and c.rank <= 2, "C must have rank <= 2")
        if c.rank == 2:
            require(c.shape[0] == 1, "C may vary along the rows")
        if c.rank >= 1:
            require(c.shape[-1] == 1 or (isinstance(n, int) and c.shape[-1] == n), "C may broadcast the columns")
        return require(_reshape_target(m, s) is not None, "the target shape is neither static nor constant "
                                                          "without 0s")

    def rewrite(self, op, m, a, b, c, s):
        src = a
        p = a.producer
        if (p is not None and p.op_type in _RESHAPE_LIKE and p.domain == "" and p.graph is m.graph
                and a.num_uses == 1 and not m.graph.is_output(a)):
            src = p.inputs[0]  # reshapes keep the element order: flatten the reshape's input instead
        k = b.shape[0]
        sa = static_shape(a)
        rows = int(np.prod(sa[:-1])) if sa is not None else 0
        rows = rows or -1  # (a 0 in a Reshape target would copy a dim)
        flat = op.Reshape(src, op.const(np.array([rows, k], np.int64), hint="shape"))
        target, allowzero = _reshape_target(m, s)
        return op.Reshape(op.Gemm(flat, b, c), target, allowzero=allowzero)


def _reshape_target(m, s):
    """(target, allowzero) for a Reshape of the root's input replaced by another of the same size: the static
    output shape, or the constant target when it copies no dim (0); None otherwise."""
    shape = static_shape(m.outputs[0])
    if shape is not None and 0 not in shape:  # a 0 in the target would copy a dim
        return np.array(shape, np.int64), None
    arr = m.const(s)
    if arr is None:
        return None
    allowzero = m.root.attr("allowzero", 0)
    if allowzero != 1 and (np.asarray(arr) == 0).any():
        return None
    return s, m.root.attr("allowzero")


class GemmOfPermutedRows(Rule):
    """Transpose(Reshape(Gemm(Reshape(Transpose(a, p), [M, K]), b, c), s), q) with q undoing p on a's leading
    axes and both keeping the last axis last -> Reshape(Gemm(Reshape(a, [M, K]), b, c), a's leading dims + [N])
    (Gemm without transA, or MatMul with a 2-D b; c constant along the rows).

    The Transposes only reorder the rows that the Gemm multiplies one by one, so the Gemm can take the rows in a's
    order and the Transposes go: torch's sequence-first attention output at a batch above 1 ([B, S, E] ->
    [S, B, E] -> [S*B, E] -> out-projection -> [S, B, E] -> [B, S, E]), two copies of the activations a layer.
    a's shape: static, or with one symbolic dim (a dynamic-axes export's batch), its other dims nonzero ints (the
    Reshapes' targets are then constants with a -1: [-1, K] and a's leading dims + [N]).
    Not bit-exact, like MatMulAddToGemm: a runtime's kernel may sum a row's products otherwise at another row.
    """

    rounding: ClassVar[str] = _GEMM_ROUNDING

    min_opset = 7  # Gemm broadcasts C (opset 6's `broadcast` attribute is not carried over: a breaker)

    def pattern(self, op, a, b, c, s1, s2):
        rows = op.Reshape(op.Transpose(a, _name="t1"), s1)
        proj = Or(op.Gemm(rows, b, Optional(c), _name="proj"), op.MatMul(rows, b, _name="proj"))
        return op.Transpose(op.Reshape(proj, s2), _name="t2")

    def check(self, m, a, b, c, s1, s2):
        sa, sb = full_shape(a), static_shape(b)
        require(sa is not None and len(sa) >= 2 and minus_one_target(sa) is not None and isinstance(sa[-1], int)
                and sb is not None and len(sb) == 2,
                "a's shape is not known (rank >= 2; one symbolic dim at most, not the last; no zero dims) or b is "
                "not 2-D")
        r = len(sa)
        p, q = transpose_perm(m["t1"], r), transpose_perm(m["t2"], r)
        require(len(p) == len(q) == r and p[-1] == q[-1] == r - 1, "a Transpose moves the last axis")
        require(all(p[q[j]] == j for j in range(r)), "the second Transpose does not undo the first")
        proj = m["proj"]
        if proj.op_type == "Gemm":
            require(not proj.attr("transA", 0), "Gemm transposes A")
            n = sb[0] if proj.attr("transB", 0) else sb[1]
            if c is not None:
                sc = static_shape(c)
                require(sc is not None and len(sc) <= 2 and (len(sc) < 2 or sc[0] == 1),
                        "C may vary along the rows")
        else:
            n = sb[1]
        # [M, K] with K a's last dim: M is a's rows by the element count (K > 0)
        flat = proj.inputs[0].shape
        require(flat is not None and len(flat) == 2 and flat[1] == sa[-1], "the first Reshape is not to [rows, K]")
        lead = [sa[p[i]] for i in range(r - 1)]
        require(_is_shape(m["t2"].inputs[0].shape, (*lead, n)), "the second Reshape is not to the rows' dims")
        m.info = (*sa[:-1], n)
        return require(minus_one_target(m.info) is not None, "the Gemm has no columns")

    def rewrite(self, op, m, a, b, c, s1, s2):
        sa, proj = full_shape(a), m["proj"]
        rows = int(np.prod(sa[:-1])) if all(isinstance(d, int) for d in sa) else -1
        flat = op.Reshape(a, op.const(np.array([rows, sa[-1]], np.int64), hint="shape"))
        if proj.op_type == "Gemm":
            attrs = {k: proj.attr(k) for k in ("alpha", "beta", "transB") if k in proj.attributes}
            y = op.Gemm(flat, b, c, **attrs) if c is not None else op.Gemm(flat, b, **attrs)
        else:
            y = op.MatMul(flat, b)
        return op.Reshape(y, op.const(np.array(minus_one_target(m.info), np.int64), hint="shape"))


def _is_shape(got: tuple | None, want: tuple) -> bool:
    """A Reshape's output typed `got` is `want` (the element counts equal): the same dims, or all but one that
    is unknown where `want`'s others are ints > 0 (the count then says it: the [S, ?, E] that a computed batch
    element leaves where it could copy a dim)."""
    if got is None or len(got) != len(want):
        return False
    unknown = [i for i, d in enumerate(got) if d is None]
    return all(g is None or g == w for g, w in zip(got, want, strict=True)) and (
        not unknown or len(unknown) == 1 and all(isinstance(w, int) and w > 0
                                                 for i, w in enumerate(want) if i != unknown[0]))


CONV_BN: list[type[Rule]] = [FuseConvBatchNorm, FuseConvTransposeBatchNorm, FuseGemmBatchNorm]
CONV_ADD_MUL: list[type[Rule]] = [FuseConvAdd, FuseConvMul]
PAD: list[type[Rule]] = [FusePadConv, FusePadAveragePool, FusePadMaxPool]
MATMUL_ADD: list[type[Rule]] = [MatMulAddToGemm, MatMulAddReshapeToGemm, GemmOfPermutedRows]

__all__ = ["CONV_ADD_MUL", "CONV_BN", "MATMUL_ADD", "PAD", "Or"]
