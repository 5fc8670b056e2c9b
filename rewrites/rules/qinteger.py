"""QDQ patterns to integer ops: the rules that turn quantized float islands into `optc.QConv` / `optc.QMatMul`.

Only the TVM compile path runs them (`to_integer_ops`, called by `codegen.compile.build_executable`): the ops
are optc's own (domain `optc`), so `optc optimize`, whose output must stay standard ONNX, never does.

Patterns (x: uint8/int8 activations, w: int8/uint8 constant weights):

    QuantizeLinear(Conv(DQ(x), DQ(w), DQ(b_int32)?) [-> Relu | Clip], y_scale, y_zp)  -> optc.QConv
    QuantizeLinear(MatMul(DQ(x), DQ(w)) [-> Relu | Clip], ...)                         -> optc.QMatMul
    QuantizeLinear(MatMul(DQ(x), DQ(y)) [-> Relu | Clip], ...), y an activation        -> optc.QMatMul, run-time w
    QuantizeLinear(Gemm(DQ(x), DQ(w), DQ(b_int32)?) [-> Relu | Clip], ...)             -> optc.QMatMul
    Conv / MatMul / Gemm(DQ(x), DQ(w), DQ(b_int32)?) with a float output (no Q)      -> optc.QConv / QMatMul, float out
    QLinearConv / QLinearMatMul with constant weights                                  -> optc.QConv / optc.QMatMul
    com.microsoft QGemm (constant B, transA 0, alpha 1; QOperator format)              -> optc.QMatMul
    MatMulInteger(a, constant b, a_zp) (dynamic quantization: a_zp at run time)        -> optc.QMatMul, int32 out

The ops (lowered in `lowering/ops/qinteger.py`; inputs in this order, `?` optional):

    optc.QConv(x, x_scale, x_zero_point, w, w_scale, y_scale?, y_zero_point?, B?)
        attributes: Conv's (strides, pads, dilations, group, auto_pad, kernel_shape), qmin, qmax
    optc.QMatMul(a, a_scale, a_zero_point, b, b_scale, y_scale?, y_zero_point?, bias?, b_zero_point?)
        attributes: qmin, qmax

* x / a: uint8 or int8, any shape the float op takes; x_scale float32 and x_zero_point (x's type) per tensor.
* w: int8 constant with the zero point already subtracted (`w - w_zero_point` must fit int8, else no rewrite):
  Conv's layout [M, C/group, k...]; for QMatMul [K, N] (a Gemm's transB weight is transposed here).
  w_scale float32, per tensor or per output channel ([M] / [N]).
* QMatMul's w may instead be a run-time uint8 / int8 tensor (an activation x activation MatMul: attention's
  Q K^T and P V) of rank >= 2 with a static or named symbolic K and N, quantized per tensor: b_zero_point (input 8)
  is then its zero point, w_scale a scalar, and there is no bias. The lowering corrects for both zero points with the
  row sums of a and the column sums of w at run time (`lowering/ops/qinteger.py`; `MAX_RUNTIME_TERMS` bounds a static
  K). A symbolic K (P V over a dynamic-axes export's key length) needs one of the two zero points to be 0 as the
  u8 x s8 kernel reads the operands (a softmax's uint8 output has zero point 0): the K x za x zw term vanishes, and
  the library checks K <= MAX_TERMS when it runs (a longer one fails the call with one line).
* B / bias: int32 [M] / [N] in units of x_scale * w_scale (zero point 0), added to the int32 accumulator: the
  DequantizeLinear of the bias must have exactly that scale (float32 product, relative tolerance 2**-20, which
  moves the result by far less than one rounding) else no rewrite. A float bias is not fused.
* QMatMul without a_scale (nor w_scale, y_*, bias): the int32 accumulator, MatMulInteger's output; then
  a_zero_point may be a run-time scalar.
* y_scale float32 and y_zero_point (uint8 / int8) per tensor: the output is `saturate(rint(acc * M) + y_zp)`,
  M = x_scale * w_scale / y_scale (float32, onnxruntime's requantize). Without them the output is float32:
  `float32(acc) * (x_scale * w_scale)` (onnxruntime's QGemm / MatMulIntegerToFloat).
* qmin / qmax (ints, optional): the fused Relu / Clip, applied after requantizing as a clamp to
  [qmin, qmax] = [Q(lo), Q(hi)] (Relu: lo = 0, no hi).

Exactness of the fused activation: Q(v) = saturate(rint(v / y_scale) + y_zp) is monotone non-decreasing in v,
so Q(max(v, lo)) = max(Q(v), Q(lo)) and Q(min(v, hi)) = min(Q(v), Q(hi)); Relu then QuantizeLinear is
max(Q(v), Q(0)) with Q(0) = saturate(y_zp) since rint(0) = 0. Clip(lo, hi) = min(max(v, lo), hi) gives
min(max(Q(v), Q(lo)), Q(hi)) in the same order (also for lo > hi, where both are Q(hi)). The clamp commutes
with the integer requantize in the same way, since it is monotone too.

Exactness of the rewrite as a whole: the float graph sums rounded float32 products of dequantized values; the
integer op sums the exact integer products and rounds once (acc * M). The results agree but where the float
sum lies within its rounding error of a rounding boundary of Q: at most 1 quantized unit apart, the same
contract as onnxruntime's own QDQ -> QLinearConv fusion (tests/test_qinteger.py measures the histogram).

Not rewritten (each a negative test): non-constant scales or zero points; a run-time weight quantized per
column, of a symbolic K with both zero points nonzero as the kernel reads them, of an unknown K or N, or of a
static reduction over MAX_RUNTIME_TERMS (symbolic batch dims are aligned in the
lowering, as MatMul's are); non-constant weights of a Conv or Gemm; non-float32 scales (float16 scales keep the
float path, whose rounding the integer op does not reproduce); blocked or mismatched per-axis quantization; Gemm with transA
or alpha / beta != 1; an int32 bias whose scale is not x_scale * w_scale, a float bias; reductions over
MAX_TERMS. A float op other than Relu / Clip between the op
and its QuantizeLinear, or an intermediate used elsewhere or a graph output, keeps the QuantizeLinear: the op
becomes the float-output form instead. An op feeding a QuantizeLinear that the quantized-output rule refuses
(a per-channel output scale) stays float.
"""

from __future__ import annotations

import numpy as np

from ...ir.core import Model, Node, Value
from ...ir.schema import OPTC_DOMAIN
from ...ir.types import DataType
from ..context import PassContext
from ..pattern import ANY, Optional, Or, require
from ..rule import Rule
from ._util import np_dtype

DOMAIN = OPTC_DOMAIN
_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))
_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
#: the longest reduction (terms per output) an integer op takes: 255 * 128 per term, a raw sum and a zero point
#: correction of the same size both within int32 (longer ones keep the float path)
MAX_TERMS = (2**31 - 1) // (255 * 128 * 2)
#: the longest reduction of a run-time w (an activation x activation MatMul): the raw u8 x s8 sum and the three
#: zero point terms (`lowering/ops/qinteger.py` `_run_time_w`) each stay below 255 * 128 * K, so every partial sum
#: of the four fits int32 (no wrap-around)
MAX_RUNTIME_TERMS = (2**31 - 1) // (255 * 128 * 4)
#: the float ops these rules turn into integer ops (what the compile summary counts)
COUNTED = ("Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")


class _QParams:
    """A constant per-tensor or per-axis (scale, zero point) pair of a DequantizeLinear / QuantizeLinear."""

    def __init__(self, scale: np.ndarray, zero_point: np.ndarray):
        self.scale, self.zero_point = scale, zero_point


def _const(m, v: Value | None) -> np.ndarray | None:
    return None if v is None else m.const(v)


def _dq_producer(v: Value | None) -> Node | None:
    p = v.producer if v is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx") else None


def _scale(m, v: Value | None, what: str) -> np.ndarray:
    s = _const(m, v)
    require(s is not None, f"{what} is not a constant")
    require(s.dtype == np.float32, f"{what} is {s.dtype}, not float32")
    require(np.isfinite(s).all() and (s > 0).all(), f"{what} is not finite and positive")
    return s


def _zero_point(m, v: Value | None, qtype: np.dtype, what: str) -> np.ndarray:
    if v is None:
        return np.zeros(1, qtype)
    z = _const(m, v)
    require(z is not None, f"{what} is not a constant")
    require(z.dtype == qtype, f"{what} is {z.dtype}, the quantized values {qtype}")
    return z


def _no_extra_attrs(node: Node, *allowed: str) -> None:
    extra = sorted(set(node.attributes) - set(allowed))
    require(not extra, f"{node.op_type} has attributes {extra}")


def _activation_dq(m, v: Value, what: str) -> tuple[Value, _QParams]:
    """The quantized input behind DequantizeLinear `v` (per tensor, uint8/int8, float32 scale)."""
    dq = _dq_producer(v)
    require(dq is not None, f"{what} is not a DequantizeLinear output")
    _no_extra_attrs(dq, "axis")
    x = dq.inputs[0]
    qtype = np_dtype(x)
    require(qtype in _INT8, f"{what} is dequantized from {qtype}, not uint8/int8")
    s = _scale(m, dq.inputs[1], f"{what}'s scale")
    z = _zero_point(m, dq.inputs[2] if len(dq.inputs) > 2 else None, qtype, f"{what}'s zero point")
    require(s.size == 1 and z.size == 1, f"{what} is not quantized per tensor")
    return x, _QParams(s.reshape(()), z.reshape(()))


def _weight_dq(m, v: Value, channel_axis: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(w - w_zero_point as int8, w_scale as a scalar or a vector along `channel_axis`) of a constant weight."""
    dq = _dq_producer(v)
    require(dq is not None, f"{what} is not a DequantizeLinear output")
    _no_extra_attrs(dq, "axis")
    w = _const(m, dq.inputs[0])
    require(w is not None, f"{what}'s quantized values are not a constant")
    require(w.dtype in _INT8, f"{what} is dequantized from {w.dtype}, not uint8/int8")
    s = _scale(m, dq.inputs[1], f"{what}'s scale")
    z = _zero_point(m, dq.inputs[2] if len(dq.inputs) > 2 else None, w.dtype, f"{what}'s zero point")
    return _weight(w, s, z, int(dq.attr("axis", 1)), channel_axis, what)


def _weight(w: np.ndarray, s: np.ndarray, z: np.ndarray, axis: int, channel_axis: int, what: str):
    require(s.shape == z.shape or z.size == 1, f"{what}'s scale and zero point differ in shape")
    if s.size == 1 and z.size == 1:
        shifted = w.astype(np.int32) - np.int32(z.reshape(()))
        scale = s.reshape(())
    else:
        require(s.ndim == 1 and w.ndim > 0, f"{what}'s scale of shape {s.shape} is neither per tensor nor per axis")
        require(axis % w.ndim == channel_axis % w.ndim, f"{what} is quantized along axis {axis}, not the output "
                                                        "channels")
        require(s.shape[0] == w.shape[channel_axis], f"{what}'s scale has {s.shape[0]} values for "
                                                     f"{w.shape[channel_axis]} channels")
        shape = [1] * w.ndim
        shape[channel_axis] = -1
        shifted = w.astype(np.int32) - np.broadcast_to(z.reshape(-1), s.shape).reshape(shape).astype(np.int32)
        scale = s
    require(shifted.min(initial=0) >= -128 and shifted.max(initial=0) <= 127,
            f"{what} minus its zero point does not fit int8")
    return shifted.astype(np.int8), scale


def _bias_dq(m, v: Value | None, x_scale: np.ndarray, w_scale: np.ndarray, channels: int) -> np.ndarray | None:
    """The int32 bias behind DequantizeLinear `v` (scale x_scale * w_scale, zero point 0), as a vector."""
    if v is None:
        return None
    dq = _dq_producer(v)
    require(dq is not None, "the bias is not dequantized from int32 (a float bias is not fused)")
    _no_extra_attrs(dq, "axis")
    b = _const(m, dq.inputs[0])
    require(b is not None and b.dtype == np.int32, "the bias is not an int32 constant")
    s = _scale(m, dq.inputs[1], "the bias's scale")
    z = _zero_point(m, dq.inputs[2] if len(dq.inputs) > 2 else None, np.dtype(np.int32), "the bias's zero point")
    require(not z.any(), "the bias's zero point is not 0")
    require(b.size in (1, channels) and b.ndim <= 1, f"the bias has shape {b.shape}, not [{channels}]")
    require(s.size in (1, channels), "the bias's scale is neither per tensor nor per channel")
    want = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    got = np.broadcast_to(s.reshape(-1), (channels,)) if s.size == 1 else s.reshape(-1)
    require(np.allclose(got, np.broadcast_to(want.reshape(-1), (channels,)), rtol=2.0**-20, atol=0),
            "the bias's scale is not input scale x weight scale")
    return np.broadcast_to(b.reshape(-1), (channels,)).astype(np.int32)


def _require_int32_accumulator(w: np.ndarray, axis: int, x: _QParams, bias: np.ndarray | None) -> None:
    """The kernel accumulates sum(xq * w) + bias - x_zero_point * sum(w) per output channel in int32 (the last two
    terms as one int32 constant, `lowering/ops/qinteger._correction`; w: int8 with its zero point subtracted,
    reduced along `axis` after moving the channel to the front). Where that constant, or the sum with the largest
    products the activation's type allows, leaves int32, the op stays float: an int32 bias near its limit (the
    QDQ graph computes it in float; int32 wraps around)."""
    zp = np.asarray(x.zero_point)
    wc = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.int64)
    c = -np.int64(int(zp.reshape(-1)[0])) * wc.sum(axis=1)
    if bias is not None:
        c = c + bias.astype(np.int64)
    largest_x = 255 if zp.dtype == np.uint8 else 128
    require(np.abs(c).max(initial=0) < 2**31 and (np.abs(c) + largest_x * np.abs(wc).sum(axis=1)).max(initial=0)
            < 2**31, "the bias and zero point correction can overflow the int32 accumulator")


def _quantized_clamp(m, act: Node | None, y: _QParams, qtype: np.dtype) -> dict:
    """qmin / qmax of a Relu / Clip between the op and its QuantizeLinear: Q(lo), Q(hi) (module docstring)."""
    if act is None:
        return {}

    def q(v) -> int:  # QuantizeLinear of a float32 bound, in float32 as the spec divides
        lo, hi = _RANGE[qtype]
        r = np.rint(np.float32(v) / np.float32(y.scale))
        return int(np.clip(r + int(y.zero_point), lo, hi))

    if act.op_type == "Relu":
        return {"qmin": q(0.0)}
    bounds = []
    for i, name in ((1, "min"), (2, "max")):
        v = act.inputs[i] if len(act.inputs) > i else None
        if v is not None:
            c = _const(m, v)
            require(c is not None and c.size == 1, f"Clip's {name} is not a constant scalar")
            bounds.append(float(c.reshape(())))
        elif name in act.attributes:
            bounds.append(float(act.attr(name)))
        else:
            bounds.append(None)
    require(all(b is None or not np.isnan(b) for b in bounds), "a Clip bound is NaN")
    out = {}
    if bounds[0] is not None:
        out["qmin"] = q(bounds[0])
    if bounds[1] is not None:
        out["qmax"] = q(bounds[1])
    return out


def _output_q(m, q: Node) -> tuple[_QParams, np.dtype]:
    _no_extra_attrs(q, "axis", "saturate")
    s = _scale(m, q.inputs[1], "the output scale")
    zv = q.inputs[2] if len(q.inputs) > 2 else None
    qtype = np_dtype(zv) if zv is not None else np.dtype(np.uint8)
    require(qtype in _INT8, f"the output is quantized to {qtype}, not uint8/int8")
    z = _zero_point(m, zv, qtype, "the output zero point")
    require(s.size == 1 and z.size == 1, "the output is not quantized per tensor")
    return _QParams(s.reshape(()), z.reshape(())), qtype


def _float32_out(v: Value) -> None:
    require(np_dtype(v) == np.float32, "the float op does not compute in float32")


def _activated(op, inner):
    """`inner`, or Relu / Clip of it (captured as `act`; Clip's bounds are checked to be constants)."""
    return Or(inner, op.Relu(inner, _name="act"), op.Clip(inner, Optional(ANY), Optional(ANY), _name="act"))


def _check_conv(conv: Node, x: Value, w: np.ndarray) -> None:
    """What the lowering of optc.QConv needs: 1-D to 3-D, a reduction that cannot overflow int32, explicit
    pads or a static input shape for auto_pad SAME."""
    require(w.ndim in (3, 4, 5), f"a {w.ndim - 2}-D convolution (1-D to 3-D are)")
    require(int(np.prod(w.shape[1:])) <= MAX_TERMS, "the reduction is too long for an int32 accumulator")
    auto_pad = conv.attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        shape = x.shape
        require(shape is not None and all(isinstance(d, int) for d in shape[2:]),
                "auto_pad SAME with a run-time spatial size")


def _conv_attrs(conv: Node) -> dict:
    return {k: a.value for k, a in conv.attributes.items()
            if k in ("strides", "pads", "dilations", "group", "auto_pad", "kernel_shape")}


class _QdqRule(Rule):
    """The common tail: the output QuantizeLinear and the fused activation."""

    @staticmethod
    def _tail(m) -> tuple[_QParams, dict]:
        y, qtype = _output_q(m, m["q"])
        return y, _quantized_clamp(m, m.get("act"), y, qtype)


class QdqConvToQConv(_QdqRule):
    """QuantizeLinear(Conv(DQ(x), DQ(w), DQ(b)) [-> Relu | Clip]) -> optc.QConv (int32 accumulation)."""

    rounding = ("the float Conv's sum of rounded products becomes an exact integer sum rounded once: at most 1 "
                "quantized unit apart (onnxruntime's QDQ -> QLinearConv fusion does the same)")

    def pattern(self, op, xd, wd, bd, ys, yzp):
        conv = op.Conv(xd, wd, Optional(bd), _name="conv")
        return op.QuantizeLinear(_activated(op, conv), ys, Optional(yzp), _name="q")

    def check(self, m, xd, wd, bd, ys, yzp):
        m.qconv = _conv_operands(m, xd, wd, bd)
        y, clamp = self._tail(m)
        m.qconv += (y, clamp)
        return True

    def rewrite(self, op, m, xd, wd, bd, ys, yzp):
        x, xq, w, ws, b, y, clamp = m.qconv
        return op.QConv(x, xq.scale, xq.zero_point, w, ws, y.scale, y.zero_point, b, _domain=DOMAIN,
                        **_conv_attrs(m["conv"]), **clamp)


def _conv_operands(m, xd, wd, bd):
    conv = m["conv"]
    _float32_out(conv.outputs[0])
    x, xq = _activation_dq(m, xd, "the input")
    w, ws = _weight_dq(m, wd, 0, "the weight")
    require(w.ndim == len(x.shape) if x.shape is not None else w.ndim >= 3, "input and weight ranks differ")
    b = _bias_dq(m, bd, xq.scale, ws, w.shape[0])
    _check_conv(conv, x, w)
    _require_int32_accumulator(w, 0, xq, b)
    return x, xq, w, ws, b


class QdqConvFloatOut(Rule):
    """Conv(DQ(x), DQ(w), DQ(b)?) with a float output (no QuantizeLinear) -> optc.QConv with a float32 output."""

    rounding = ("the float sum of rounded products becomes an exact integer sum scaled once in float32 "
                "(float32(acc) * x_scale * w_scale)")

    def pattern(self, op, xd, wd, bd):
        return op.Conv(xd, wd, Optional(bd), _name="conv")

    def check(self, m, xd, wd, bd):
        require(not _feeds_quantize(m["conv"]), "its output is quantized (QdqConvToQConv's pattern)")
        m.qconv = _conv_operands(m, xd, wd, bd)
        return True

    def rewrite(self, op, m, xd, wd, bd):
        x, xq, w, ws, b = m.qconv
        return op.QConv(x, xq.scale, xq.zero_point, w, ws, None, None, b, _domain=DOMAIN, **_conv_attrs(m["conv"]))


def _gemm_weight(m, gemm: Node, wd: Value):
    require(gemm.attr("transA", 0) == 0, "Gemm transposes A")
    require(float(gemm.attr("alpha", 1.0)) == 1.0 and float(gemm.attr("beta", 1.0)) == 1.0, "Gemm alpha/beta != 1")
    trans = bool(gemm.attr("transB", 0))
    w, ws = _weight_dq(m, wd, 0 if trans else 1, "the weight")
    require(w.ndim == 2, "Gemm's weight is not 2-D")
    return (np.ascontiguousarray(w.T) if trans else w), ws


class QdqMatMulToQMatMul(_QdqRule):
    """QuantizeLinear(MatMul / Gemm(DQ(a), DQ(w), DQ(b)?) [-> Relu | Clip]) -> optc.QMatMul."""

    rounding = QdqConvToQConv.rounding

    def pattern(self, op, ad, wd, bd, ys, yzp):
        mm = Or(op.MatMul(ad, wd, _name="mm"), op.Gemm(ad, wd, Optional(bd), _name="mm"))
        return op.QuantizeLinear(_activated(op, mm), ys, Optional(yzp), _name="q")

    def check(self, m, ad, wd, bd, ys, yzp):
        m.qmm = _matmul_operands(m, ad, wd, bd)
        y, clamp = self._tail(m)
        m.qmm += (y, clamp)
        return True

    def rewrite(self, op, m, ad, wd, bd, ys, yzp):
        a, aq, w, ws, b, wz, y, clamp = m.qmm
        return op.QMatMul(a, aq.scale, aq.zero_point, w, ws, y.scale, y.zero_point, b, wz, _domain=DOMAIN,
                          **clamp)


def _matmul_operands(m, ad, wd, bd):
    """(a, a's parameters, w, w_scale, bias, w_zero_point): w an int8 constant (zero point subtracted; then
    w_zero_point is None), or for a MatMul of two activations the second one's quantized Value with its own
    per-tensor zero point (a run-time w)."""
    mm = m["mm"]
    _float32_out(mm.outputs[0])
    a, aq = _activation_dq(m, ad, "the input")
    if mm.op_type == "Gemm":
        w, ws = _gemm_weight(m, mm, wd)
        require(a.rank == 2, "Gemm's A is not 2-D")
    elif _dq_producer(wd) is not None and _const(m, _dq_producer(wd).inputs[0]) is None:
        return (a, aq, *_run_time_weight(m, a, aq, wd))
    else:
        w, ws = _weight_dq(m, wd, 1, "the weight")
        require(w.ndim == 2, "the weight is not 2-D")
        require(a.rank is not None and a.rank >= 2, "the input's rank is unknown or < 2")
    require(w.shape[0] <= MAX_TERMS, "the reduction is too long for an int32 accumulator")
    b = _bias_dq(m, bd, aq.scale, ws, w.shape[1])
    _require_int32_accumulator(w, 1, aq, b)
    return a, aq, w, ws, b, None


def _run_time_weight(m, a: Value, aq: _QParams, wd: Value):
    """The second operand of an activation x activation MatMul (attention's Q K^T and P V): per tensor, 8-bit,
    a static K short enough for the zero point terms (the kernel pads it to its instruction's group) or a named
    symbolic one with a zero point 0 as the kernel reads its operand (P V over a dynamic-axes export's key length:
    padded at run time, its length checked when the library runs), and a static or named symbolic N (attention's
    key length: padded to whole vectors at run time)."""
    w, wq = _activation_dq(m, wd, "the second input")
    require(a.rank is not None and a.rank >= 2 and w.rank is not None and w.rank >= 2, "a rank is unknown or < 2")
    k, n = w.shape[-2], w.shape[-1]
    require(isinstance(k, (int, str)), "the second input's K is unknown")
    require(isinstance(n, int) or isinstance(n, str), "the second input's N is unknown")
    require(a.shape[-1] == k, "the inputs' reduction lengths differ")
    if isinstance(k, int):
        require(k <= MAX_RUNTIME_TERMS, "the reduction is too long for an int32 accumulator with run-time zero points")
    else:  # attention's P V over a symbolic key length: P (a softmax) as uint8 has zero point 0
        require(kernel_zero_point(aq.zero_point, "uint8") == 0 or kernel_zero_point(wq.zero_point, "int8") == 0,
                "the second input's K is symbolic and neither zero point is 0 as the kernel reads the operands "
                "(uint8 x int8)")
    return w, wq.scale, None, wq.zero_point


def kernel_zero_point(zero_point: np.ndarray, kernel_dtype: str) -> int:
    """A per-tensor zero point of an 8-bit operand as the u8 x s8 kernel reads that operand (`kernel_dtype`):
    shifted by 128 where the operand's own type is the other one (lowering/ops/qinteger.py `_run_time_w`)."""
    shift = {("int8", "uint8"): 128, ("uint8", "int8"): -128}.get((str(zero_point.dtype), kernel_dtype), 0)
    return int(zero_point.reshape(-1)[0]) + shift


def _feeds_quantize(node: Node) -> bool:
    """Whether `node`'s output goes (through a Relu / Clip) to a QuantizeLinear only: the integer op with a
    quantized output is the one to make there (the driver may visit the matmul before its QuantizeLinear)."""
    out = node.outputs[0]
    users = [u.node for u in out._uses]
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        out = users[0].outputs[0]
        users = [u.node for u in out._uses]
    graph_outputs = node.graph.outputs if node.graph is not None else []
    escapes = any(v in graph_outputs for v in (node.outputs[0], out))
    return not escapes and len(users) == 1 and users[0].op_type == "QuantizeLinear"


class QdqMatMulFloatOut(Rule):
    """MatMul / Gemm(DQ(a), DQ(w), DQ(b)?) with a float output -> optc.QMatMul with a float32 output."""

    rounding = ("the float sum of rounded products becomes an exact integer sum scaled once in float32 "
                "(onnxruntime's QGemm / MatMulIntegerToFloat)")

    def pattern(self, op, ad, wd, bd):
        return Or(op.MatMul(ad, wd, _name="mm"), op.Gemm(ad, wd, Optional(bd), _name="mm"))

    def check(self, m, ad, wd, bd):
        require(not _feeds_quantize(m["mm"]), "its output is quantized (QdqMatMulToQMatMul's pattern)")
        m.qmm = _matmul_operands(m, ad, wd, bd)
        return True

    def rewrite(self, op, m, ad, wd, bd):
        a, aq, w, ws, b, wz = m.qmm
        return op.QMatMul(a, aq.scale, aq.zero_point, w, ws, None, None, b, wz, _domain=DOMAIN)


def _qlinear_params(m, node: Node, scale: int, zero_point: int, what: str) -> _QParams:
    """Per-tensor constant parameters of a QLinear* op (inputs `scale`, `zero_point`)."""
    zv = node.inputs[zero_point] if len(node.inputs) > zero_point else None
    qtype = np_dtype(zv) if zv is not None else np.dtype(np.uint8)
    require(qtype in _INT8, f"{what} is {qtype}, not uint8/int8")
    s = _scale(m, node.inputs[scale], f"{what}'s scale")
    z = _zero_point(m, zv, qtype, f"{what}'s zero point")
    require(s.size == 1 and z.size == 1, f"{what} is not quantized per tensor")
    return _QParams(s.reshape(()), z.reshape(()))


def _qlinear_weight(m, node: Node, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    w = _const(m, node.inputs[3])
    require(w is not None and w.dtype in _INT8, "the weight is not a uint8/int8 constant")
    s = _scale(m, node.inputs[4], "the weight's scale")
    z = _zero_point(m, node.inputs[5], w.dtype, "the weight's zero point")
    return _weight(w, s.reshape(-1) if s.size > 1 else s, z.reshape(-1) if z.size > 1 else z, channel_axis,
                   channel_axis, "the weight")


class QLinearConvToQConv(Rule):
    """QLinearConv with constant weights -> optc.QConv (the same integer computation, weights pre-shifted).

    Exact: both sum the integer products in int32 and requantize once; the lowering of QLinearConv
    (`lowering/ops/quant.py`) rounds acc * M in float64, optc.QConv in float32 as onnxruntime does."""

    def pattern(self, op):
        return op.QLinearConv(_allow_other_inputs=True, _name="qc")

    def check(self, m):
        qc = m["qc"]
        require(len(qc.inputs) >= 8 and all(v is not None for v in qc.inputs[:8]), "QLinearConv lacks an input")
        x = _qlinear_params(m, qc, 1, 2, "the input")
        require(np_dtype(qc.inputs[0]) == x.zero_point.dtype, "the input and its zero point differ in type")
        w, ws = _qlinear_weight(m, qc, 0)
        _check_conv(qc, qc.inputs[0], w)
        y = _qlinear_params(m, qc, 6, 7, "the output")
        bias = None
        if len(qc.inputs) > 8 and qc.inputs[8] is not None:
            bias = _const(m, qc.inputs[8])
            require(bias is not None and bias.dtype == np.int32, "the bias is not an int32 constant")
        m.qconv = (x, w, ws, y, bias)
        return True

    def rewrite(self, op, m):
        x, w, ws, y, bias = m.qconv
        qc = m["qc"]
        return op.QConv(qc.inputs[0], x.scale, x.zero_point, w, ws, y.scale, y.zero_point, bias, _domain=DOMAIN,
                        **_conv_attrs(qc))


class QLinearMatMulToQMatMul(Rule):
    """QLinearMatMul with a constant 2-D b (per tensor or per column) -> optc.QMatMul; exact as QLinearConvToQConv."""

    def pattern(self, op):
        return op.QLinearMatMul(_allow_other_inputs=True, _name="qm")

    def check(self, m):
        qm = m["qm"]
        require(len(qm.inputs) >= 8 and all(v is not None for v in qm.inputs[:8]), "QLinearMatMul lacks an input")
        require(qm.inputs[0].rank is not None and qm.inputs[0].rank >= 2, "a's rank is unknown or < 2")
        a = _qlinear_params(m, qm, 1, 2, "a")
        require(np_dtype(qm.inputs[0]) == a.zero_point.dtype, "a and its zero point differ in type")
        w, ws = _qlinear_weight(m, qm, 1)
        require(w.ndim == 2 and w.shape[0] <= MAX_TERMS, "b is not 2-D or its reduction is too long for int32")
        y = _qlinear_params(m, qm, 6, 7, "the output")
        m.qmm = (a, w, ws, y)
        return True

    def rewrite(self, op, m):
        a, w, ws, y = m.qmm
        return op.QMatMul(m["qm"].inputs[0], a.scale, a.zero_point, w, ws, y.scale, y.zero_point, _domain=DOMAIN)


class QGemmToQMatMul(Rule):
    """onnxruntime's com.microsoft QGemm (what `quantize_static` makes of a Gemm in QOperator format) with a
    constant 2-D B, transA = 0 and alpha = 1 -> optc.QMatMul; exact as QLinearConvToQConv.

    QGemm (onnxruntime contrib_ops/cpu/quantization/quant_gemm.cc): inputs A, a_scale, a_zero_point, B, b_scale,
    b_zero_point, C? (int32, added to the int32 accumulator), y_scale?, y_zero_point?; Y = requantize(acc, alpha *
    a_scale * b_scale / y_scale, y_zero_point), or float32 acc * alpha * a_scale * b_scale without y_scale and
    y_zero_point. Only a C of shape (), [1], [N] or [1, N] (one value per column) is taken."""

    def pattern(self, op):
        return op.QGemm(_allow_other_inputs=True, _domain="com.microsoft", _name="qg")

    def check(self, m):
        qg = m["qg"]
        get = lambda i: qg.inputs[i] if len(qg.inputs) > i else None  # noqa: E731
        require(all(get(i) is not None for i in range(6)), "QGemm lacks an input")
        require(qg.attr("transA", 0) == 0 and float(qg.attr("alpha", 1.0)) == 1.0, "QGemm transposes A or alpha != 1")
        require(qg.inputs[0].rank == 2, "A is not 2-D")
        a = _qlinear_params(m, qg, 1, 2, "a")
        require(np_dtype(qg.inputs[0]) == a.zero_point.dtype, "a and its zero point differ in type")
        trans = bool(qg.attr("transB", 0))
        b = _const(m, qg.inputs[3])
        require(b is not None and b.dtype in _INT8 and b.ndim == 2, "B is not a 2-D uint8/int8 constant")
        s = _scale(m, qg.inputs[4], "b's scale")
        z = _zero_point(m, qg.inputs[5], b.dtype, "b's zero point")
        w, ws = _weight(b, s.reshape(-1) if s.size > 1 else s, z.reshape(-1) if z.size > 1 else z, 0 if trans else 1,
                        0 if trans else 1, "B")
        w = np.ascontiguousarray(w.T) if trans else w
        require(w.shape[0] <= MAX_TERMS, "the reduction is too long for an int32 accumulator")
        bias = None
        if get(6) is not None:
            c = _const(m, get(6))
            require(c is not None and c.dtype == np.int32, "C is not an int32 constant")
            require(c.size in (1, w.shape[1]) and (c.ndim <= 1 or c.shape[0] == 1 and c.ndim == 2),
                    f"C of shape {c.shape} is not one value per column")
            bias = np.broadcast_to(c.reshape(-1), (w.shape[1],)).astype(np.int32)
        y = None
        if get(7) is not None or get(8) is not None:
            require(get(7) is not None and get(8) is not None, "QGemm has y_scale or y_zero_point but not both")
            y = _qlinear_params(m, qg, 7, 8, "the output")
        m.qgemm = (a, w, ws, y, bias)
        return True

    def rewrite(self, op, m):
        a, w, ws, y, bias = m.qgemm
        ys, yz = (None, None) if y is None else (y.scale, y.zero_point)
        return op.QMatMul(m["qg"].inputs[0], a.scale, a.zero_point, w, ws, ys, yz, bias, _domain=DOMAIN)


class MatMulIntegerToQMatMul(Rule):
    """MatMulInteger(a, constant 2-D b, a_zp?, constant b_zp?) -> optc.QMatMul(a, -, a_zp, b - b_zp) with an
    int32 output: raw uint8/int8 operands, a's zero point (per tensor; a run-time scalar too, as
    DynamicQuantizeLinear makes it) corrected after the matmul. Exact: the same int32 sum."""

    def pattern(self, op):
        return op.MatMulInteger(_allow_other_inputs=True, _name="mi")

    def check(self, m):
        mi = m["mi"]
        a = mi.inputs[0]
        require(np_dtype(a) in _INT8 and a.rank is not None and a.rank >= 2, "a is not uint8/int8 of rank >= 2")
        b = _const(m, mi.inputs[1])
        require(b is not None and b.dtype in _INT8 and b.ndim == 2, "b is not a 2-D uint8/int8 constant")
        require(b.shape[0] <= MAX_TERMS, "the reduction is too long for an int32 accumulator")
        a_zp = mi.inputs[2] if len(mi.inputs) > 2 else None
        if a_zp is not None:
            require(a_zp.shape is not None and all(d == 1 for d in a_zp.shape), "a_zero_point is not per tensor")
            require(np_dtype(a_zp) == np_dtype(a), "a_zero_point's type is not a's")
        bz = _zero_point(m, mi.inputs[3] if len(mi.inputs) > 3 else None, b.dtype, "b_zero_point")
        require(bz.size in (1, b.shape[1]) and bz.ndim <= 1, "b_zero_point is neither per tensor nor per column")
        shifted = b.astype(np.int32) - bz.reshape(-1).astype(np.int32)[None, :]
        require(shifted.min(initial=0) >= -128 and shifted.max(initial=0) <= 127, "b minus its zero point does not "
                                                                                  "fit int8")
        m.qmi = (a, a_zp, shifted.astype(np.int8))
        return True

    def rewrite(self, op, m):
        a, a_zp, w = m.qmi
        return op.QMatMul(a, None, a_zp, w, _domain=DOMAIN)


RULES = [QdqConvToQConv, QdqConvFloatOut, QdqMatMulToQMatMul, QdqMatMulFloatOut, QLinearConvToQConv, QLinearMatMulToQMatMul,
         QGemmToQMatMul, MatMulIntegerToQMatMul]


def to_integer_ops(model: Model) -> dict:
    """Apply the rules to `model` in place (the TVM compile path only: the result is not standard ONNX) and
    return `kernel_summary(model, reasons)`: the reasons are those of the rules that tried a float op and
    rejected it."""
    from ..driver import apply_rules
    from .qlookup import RULES as TABLE_RULES  # (qlookup imports this module)
    from .qtranspose import SinkTransposeToQMatMul

    model.opset_imports.setdefault(DOMAIN, 1)
    reasons: dict[str, str] = {}

    def sink(line: str) -> None:  # "<rule> at <op> '<name>' (pass p): no match: <reason>"
        if ": no match: " in line:
            head, why = line.split(": no match: ", 1)
            key = head.split(" at ", 1)[1].split(" (pass ", 1)[0]
            # the node is the key: without the match it names ("... (best partial match: [...])") and the phase,
            # the summary can count equal reasons together
            why = why.split(" (best partial match: ", 1)[0].removeprefix("check: ")
            if key not in reasons or reasons[key].startswith("expected ") and not why.startswith("expected "):
                reasons[key] = why  # the rule that got as far as its check says more than another op's pattern

    rules = RULES + TABLE_RULES + [SinkTransposeToQMatMul]
    ctx = PassContext(opsets=dict(model.opset_imports), trace_rules=frozenset(r.name for r in rules),
                      trace_sink=sink)
    apply_rules(model, rules, ctx, "qinteger")
    if not any(n.domain == DOMAIN for g in model.graphs() for n in g):
        del model.opset_imports[DOMAIN]
    return kernel_summary(model, reasons)


def kernel_summary(model: Model, reasons: dict[str, str] | None = None) -> dict:
    """How the convolutions and matmuls of `model` will run: `{"integer": n, "bfloat16": n, "float": n,
    "float_reasons": {"<op> '<name>'": why}}` (integer: optc.QConv / optc.QMatMul and the ONNX integer ops;
    bfloat16: float ops on bfloat16 inputs; float: the rest, each with why it stayed float: not quantized, or
    the reason the rules gave for a quantized one, or for QuantizeLinear after it)."""
    out = {"integer": 0, "bfloat16": 0, "float": 0, "float_reasons": {}}
    for g in model.graphs():
        for n in g:
            if n.domain == DOMAIN and n.op_type in ("QConv", "QMatMul") or (
                    n.domain in ("", "ai.onnx") and n.op_type in COUNTED[3:]):
                out["integer"] += 1
            elif n.domain in ("", "ai.onnx") and n.op_type in COUNTED[:3]:
                if n.inputs and n.inputs[0] is not None and n.inputs[0].dtype == DataType.BFLOAT16:
                    out["bfloat16"] += 1
                    continue
                out["float"] += 1
                out["float_reasons"][_label(n)] = _why_float(n, reasons or {})
    return out


def _label(n: Node) -> str:
    """How the driver's trace names a node."""
    return f"{n.op_type} '{n.name or n.outputs[0].name}'"


def _why_float(n: Node, reasons: dict[str, str]) -> str:
    """Why float op `n` was not turned into an integer op (for the compile summary): the reason the rules gave
    at the QuantizeLinear after it, else at the op itself (the float-output MatMul / Gemm rule)."""
    if not any(_dq_producer(v) is not None for v in n.inputs[:2]):
        return "not quantized (its inputs are not DequantizeLinear outputs)"
    users = [u.node for u in n.outputs[0]._uses]
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        users = [u.node for u in users[0].outputs[0]._uses]
    qs = [u for u in users if u.op_type == "QuantizeLinear"]
    if qs:
        return reasons.get(_label(qs[0]), "the QDQ pattern around it does not match")
    if _label(n) in reasons:
        return reasons[_label(n)]
    if users:
        return f"{users[0].op_type} follows it, not QuantizeLinear (only Relu / Clip are fused)"
    return "its output is not quantized (no QuantizeLinear after it)"
