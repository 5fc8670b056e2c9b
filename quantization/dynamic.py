"""Dynamic quantization as rewrite rules: int8 weights stored, activations quantized at run time.

MatMul(a, W) with a constant [K, N] weight becomes, in onnxruntime's `quantize_dynamic` form (which its
graph optimizer fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat, `core/optimizer/
matmul_integer_to_float.cc`):

    a_q, a_scale, a_zp = DynamicQuantizeLinear(a)                     # uint8, per tensor, at run time
    y = Cast(MatMulInteger(a_q, W_q, a_zp, W_zp), to=float) * (a_scale * W_scale)   [+ bias]

Gather on a constant table (an embedding) becomes a Gather of an int8 table followed by DequantizeLinear.

W_q: symmetric int8, per column (W_scale of shape [N], per_channel) or per tensor. Gemm (onnxruntime's
quantizer skips it) becomes the same chain: B transposed at compile time when transB = 1, alpha folded into
W_scale, beta * C added as the bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from onnx import TensorProto

from ..ir.core import Node, Value
from ..ir.types import DataType
from ..rewrites.pattern import require
from ..rewrites.rule import Rule
from .numerics import quantize_weight
from .qdq_rules import keep_name, producer_dq
from .selection import matches, node_label

__all__ = ["DynamicContext", "dynamic_rules"]

#: weights smaller than this on either side stay float (the run-time quantization costs more than it saves)
MIN_DIM = 16


@dataclass
class DynamicContext:
    """Options and report of the dynamic rules: per-channel weights, 7-bit weights, exclusions (node names, op types, output
    names), `quantized` (node name -> op type) and `skipped` (node name -> (op type, reason))."""

    per_channel: bool = True
    #: 7-bit weights (onnxruntime's VPMADDUBSW path saturates full 8-bit u8 x s8 pair sums; see scheme.py)
    reduce_range: bool = False
    #: also Conv (ConvInteger): off by default, as onnxruntime's integer Conv is rarely faster than float
    conv: bool = False
    exclude: set[str] = field(default_factory=set)
    quantized: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)

    def excluded(self, node: Node) -> bool:
        return matches(node, self.exclude)


def _float32(v: Value | None) -> bool:
    return v is not None and v.dtype is not None and DataType(v.dtype) == DataType.FLOAT


class _DynamicRule(Rule):
    def __init__(self, ctx: DynamicContext):
        self.ctx = ctx

    def _skip(self, node: Node, reason: str) -> None:
        self.ctx.skipped[node_label(node)] = (node.op_type, reason)
        require(False, reason)

    def _check_common(self, node: Node, a: Value, w: np.ndarray | None) -> None:
        if self.ctx.excluded(node):
            self._skip(node, "excluded by the user")
        if w is None:
            self._skip(node, "the weight (input 1) is not a constant")
        if producer_dq(a) is not None:
            self._skip(node, "the input is already dequantized (a quantized model)")
        if not _float32(a) or w.dtype != np.float32:
            self._skip(node, "not float32")
        if w.ndim != 2:
            self._skip(node, f"the weight has rank {w.ndim}, not 2")
        if min(w.shape) < MIN_DIM:
            self._skip(node, f"the weight {list(w.shape)} is smaller than {MIN_DIM} on a side")
        if not np.isfinite(w).all():
            self._skip(node, "the weight holds NaN or infinities")

    def _matmul(self, op, a: Value, w: np.ndarray, alpha: float, hint: str) -> Value:
        axis = 1 if self.ctx.per_channel else None
        q, qp = quantize_weight(w, "int8", axis, symmetric=True, reduce_range=self.ctx.reduce_range)
        a_q, a_scale, a_zp = op.DynamicQuantizeLinear(a, _outputs=3)
        # Symmetric weights: one scalar zero point 0 even with per-column scales (the scales live in the Mul
        # after the integer product); a per-column zero-point vector sends MLAS to its slower per-column path.
        y_int = op.MatMulInteger(a_q, op.const(q, hint=f"{hint}_weight_quantized"), a_zp,
                                 op.const(np.zeros((), np.int8), hint=f"{hint}_weight_zero_point"))
        w_scale = (np.asarray(qp.scale, np.float32) * np.float32(alpha)).astype(np.float32)
        scale = op.Mul(a_scale, op.const(w_scale, hint=f"{hint}_weight_scale"))
        return op.Mul(op.Cast(y_int, to=TensorProto.FLOAT), scale)


class DynamicQuantizeMatMul(_DynamicRule):
    """MatMul(a, W) with a constant float32 [K, N] weight -> DynamicQuantizeLinear + MatMulInteger (int8 W)."""

    def pattern(self, op, a, w):
        return op.MatMul(a, w)

    def check(self, m, a, w):
        self._check_common(m.root, a, m.const(w))
        return True

    def rewrite(self, op, m, a, w):
        y = self._matmul(op, a, np.asarray(m.const(w)), 1.0, m.root.name or "matmul")
        keep_name(y, m.root)
        self.ctx.quantized[node_label(m.root)] = "MatMul"
        self.ctx.skipped.pop(node_label(m.root), None)
        return y


class DynamicQuantizeGemm(_DynamicRule):
    """Gemm(A, B, C) with a constant float32 B -> the dynamic MatMul chain (+ beta * C)."""

    benefit: ClassVar[int] = 1

    def pattern(self, op, a, w):
        return op.Gemm(a, w, _allow_other_inputs=True)

    def check(self, m, a, w):
        node = m.root
        if int(node.attr("transA", 0)):
            self._skip(node, "Gemm with transA = 1")
        b = m.const(w)
        self._check_common(node, a, b)
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            ca = m.const(c)
            if ca is None or ca.dtype != np.float32:
                self._skip(node, "C is not a float32 constant")
        return True

    def rewrite(self, op, m, a, w):
        node = m.root
        b = np.asarray(m.const(w))
        if int(node.attr("transB", 0)):
            b = np.ascontiguousarray(b.T)
        hint = node.name or "gemm"
        y = self._matmul(op, a, b, float(node.attr("alpha", 1.0)), hint)
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            beta = np.float32(node.attr("beta", 1.0))
            bias = np.asarray(m.const(c), np.float32)
            if beta != 1:
                bias = (bias * beta).astype(np.float32)
            y = op.Add(y, op.const(bias, hint=f"{hint}_bias"))
        keep_name(y, node)
        self.ctx.quantized[node_label(node)] = "Gemm"
        self.ctx.skipped.pop(node_label(node), None)
        return y


class DynamicQuantizeGather(_DynamicRule):
    """Gather(table, ids) on a constant float32 [V, D] table (an embedding) -> DequantizeLinear(Gather(table_q,
    ids)): an int8 table (symmetric, per tensor), dequantized after the lookup (exact: a per-tensor
    DequantizeLinear commutes with Gather), as onnxruntime's quantize_dynamic does for Gather."""

    def pattern(self, op, table, ids):
        return op.Gather(table, ids)

    def check(self, m, table, ids):
        node = m.root
        w = m.const(table)
        require(w is not None, "the table is not a constant")
        if self.ctx.excluded(node):
            self._skip(node, "excluded by the user")
        require(int(node.attr("axis", 0)) == 0, "Gather along an axis other than 0")
        if w.dtype != np.float32 or w.ndim != 2:
            self._skip(node, "not a float32 [V, D] table")
        if min(w.shape) < MIN_DIM:
            self._skip(node, f"the table {list(w.shape)} is smaller than {MIN_DIM} on a side")
        if not np.isfinite(w).all():
            self._skip(node, "the table holds NaN or infinities")
        return True

    def rewrite(self, op, m, table, ids):
        node = m.root
        q, qp = quantize_weight(np.asarray(m.const(table)), "int8", None, symmetric=True)
        hint = node.name or "gather"
        rows = op.Gather(op.const(q, hint=f"{hint}_table_quantized"), ids, axis=0)
        y = op.DequantizeLinear(rows, op.const(np.asarray(qp.scale, np.float32).reshape(()), hint=f"{hint}_scale"),
                                op.const(np.zeros((), np.int8), hint=f"{hint}_zero_point"))
        keep_name(rows, node)
        self.ctx.quantized[node_label(node)] = "Gather"
        self.ctx.skipped.pop(node_label(node), None)
        return y


class DynamicQuantizeConv(_DynamicRule):
    """Conv(x, W, B) with constant float32 weights (opt-in: `conv`) -> DynamicQuantizeLinear + ConvInteger
    (int8 W, symmetric per output channel, scalar zero point 0), Cast, times a_scale * W_scale[C] (shaped
    [1, C, 1, ...]), plus B: onnxruntime's quantize_dynamic form for Conv."""

    def pattern(self, op, x, w):
        return op.Conv(x, w, _allow_other_inputs=True)

    def check(self, m, x, w):
        node = m.root
        wa = m.const(w)
        if self.ctx.excluded(node):
            self._skip(node, "excluded by the user")
        if wa is None:
            self._skip(node, "the weight (input 1) is not a constant")
        if producer_dq(x) is not None:
            self._skip(node, "the input is already dequantized (a quantized model)")
        if not _float32(x) or wa.dtype != np.float32 or wa.ndim < 3:
            self._skip(node, "not a float32 convolution")
        if not np.isfinite(wa).all():
            self._skip(node, "the weight holds NaN or infinities")
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if b is not None and m.const(b) is None:
            self._skip(node, "the bias is not a constant")
        return True

    def rewrite(self, op, m, x, w):
        node = m.root
        wa = np.asarray(m.const(w))
        axis = 0 if self.ctx.per_channel else None
        q, qp = quantize_weight(wa, "int8", axis, symmetric=True, reduce_range=self.ctx.reduce_range)
        hint = node.name or "conv"
        x_q, x_scale, x_zp = op.DynamicQuantizeLinear(x, _outputs=3)
        y_int = op.ConvInteger(x_q, op.const(q, hint=f"{hint}_weight_quantized"), x_zp,
                               op.const(np.zeros((), np.int8), hint=f"{hint}_weight_zero_point"),
                               **dict(node.attributes))
        channel_shape = (1, -1) + (1,) * (wa.ndim - 2)
        w_scale = np.asarray(qp.scale, np.float32).reshape(channel_shape if axis is not None else ())
        y = op.Mul(op.Cast(y_int, to=TensorProto.FLOAT), op.Mul(x_scale, op.const(w_scale, hint=f"{hint}_weight_scale")))
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if b is not None:
            y = op.Add(y, op.const(np.asarray(m.const(b), np.float32).reshape(channel_shape), hint=f"{hint}_bias"))
        keep_name(y, node)
        self.ctx.quantized[node_label(node)] = "Conv"
        self.ctx.skipped.pop(node_label(node), None)
        return y


def dynamic_rules(ctx: DynamicContext) -> list[Rule]:
    """The rule list of dynamic quantization (MatMul and Gemm with constant weights, embedding Gathers; Conv when
    `ctx.conv`)."""
    rules: list[Rule] = [DynamicQuantizeMatMul(ctx), DynamicQuantizeGemm(ctx), DynamicQuantizeGather(ctx)]
    if ctx.conv:
        rules.append(DynamicQuantizeConv(ctx))
    return rules
