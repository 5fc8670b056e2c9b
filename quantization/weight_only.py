"""Weight-only blockwise int4 quantization of MatMul / Gemm weights and Gather embedding tables.

`optc quantize --weight-only int4 [--block-size 32] [--format contrib|standard]` calls `quantize_weight_only`.

Two output forms (`format`):

* ``standard``: ai.onnx opset 21 blocked DequantizeLinear of an INT4/UINT4 initializer,
  ``MatMul(A, DequantizeLinear(Wq[K, N], scale[K/bs, N], zero_point[K/bs, N], axis=0, block_size=bs))``;
  Gemm keeps its attributes and reads ``DequantizeLinear(Bq)`` as B (axis 1 when transB=1);
  an embedding becomes ``Gather(DequantizeLinear(Tq[V, D], ..., axis=1), ids)`` (the DequantizeLinear stays
  before the Gather: onnxruntime's Gather has no int4 kernel, so Gather-then-dequantize would not run).
* ``contrib``: onnxruntime's com.microsoft ``MatMulNBits`` (Gemm too: transA / alpha / beta / C folded) and
  ``GatherBlockQuantized`` (ContribOperators.md), packed exactly as onnxruntime's
  ``matmul_nbits_quantizer.MatMulNBitsQuantizer`` (RTN, QOperator format) packs them.

Quantization (blocks of `block_size` consecutive elements along K, the reduction axis; along D for embeddings;
the last block may be partial), after onnxruntime's MLAS ``BlockwiseQuantizer`` (q4_dq.cpp):

* asymmetric (default), uint4: ``lo = min(min(block), 0)``, ``hi = max(max(block), 0)``,
  ``scale = (hi - lo) / 15``, ``zero_point = saturate(round(-lo / scale))`` (0 when scale is 0);
* symmetric, int4: ``m`` = the block's element of largest magnitude (the minimum on a tie),
  ``scale = m / -8`` (so ``m`` maps to -8 and the whole int4 range is used; the scale may be negative),
  no zero point (MatMulNBits stores ``q + 8`` with its implicit zero point 8).

Codes are ``saturate(round(w / scale) + zero_point)`` as QuantizeLinear specifies (ONNX spec): round half to
even, computed in float32 with the stored scale (rounded to the weight's float type first), so dequantizing,
``(q - zero_point) * scale``, gives back exactly the weight the model then computes with. onnxruntime's
packer rounds ``w * (1 / scale) + zero_point`` half away from zero: codes can differ from it in the last
place at exact ties only. Scales have the weight's float type.

DequantizeLinear of a weight is never folded back to float by `optimize` (fold-constants refuses it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import onnx

from ..errors import OptcError
from ..ir.core import Model, Node, Value
from ..ir.rewriter import Rewriter
from ..ir.tensors import NumpyTensor
from ..ir.types import TensorType
from ..rewrites.context import PassContext
from ..rewrites.driver import apply_rules
from ..rewrites.passes.infer_shapes import infer_model_types
from ..rewrites.pattern import MatchFailed, Optional
from ..rewrites.rule import Match, Rule
from .selection import matches, node_label

__all__ = ["BlockQuant", "quantize_blocks", "quantize_weight_only", "pack_matmul_nbits"]

FORMATS = ("standard", "contrib")
MS_DOMAIN = "com.microsoft"
STANDARD_OPSET = 21
#: smallest K / N (rows / columns of a weight) worth quantizing
MIN_DIM = 16
_FLOAT_KINDS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


# -- the quantization arithmetic --------------------------------------------------------------------------


@dataclass
class BlockQuant:
    """A [K, N] weight quantized in blocks along K (axis 0).

    `q`: codes [K, N], int8 in [-8, 7] (symmetric) or uint8 in [0, 15] (asymmetric); `scales`: [n_blocks, N] in
    the weight's float type; `zero_points`: [n_blocks, N] uint8 in [0, 15], None when symmetric.
    """

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def dequantize(self) -> np.ndarray:
        """(q - zero_point) * scale, [K, N] in the scales' float type (what DequantizeLinear computes)."""
        k = self.q.shape[0]
        rep = lambda a: np.repeat(a, self.block_size, axis=0)[:k]  # noqa: E731
        zp = 0 if self.zero_points is None else rep(self.zero_points).astype(np.int32)
        return ((self.q.astype(np.int32) - zp).astype(np.float32) * rep(self.scales).astype(np.float32)).astype(
            self.scales.dtype)

    def transposed(self) -> BlockQuant:
        """The same quantization with every array transposed (blocks then run along axis 1)."""
        zp = None if self.zero_points is None else self.zero_points.T.copy()
        return BlockQuant(self.q.T.copy(), self.scales.T.copy(), zp, self.block_size)


def quantize_blocks(w: np.ndarray, block_size: int, symmetric: bool) -> BlockQuant:
    """Quantize a float [K, N] weight to 4 bits in blocks of `block_size` along K (see the module docstring
    for the formulas and their sources). Non-finite weights are the caller's to refuse."""
    k, n = w.shape
    nb = -(-k // block_size)
    w32 = w.astype(np.float32)
    blocks = np.pad(w32, ((0, nb * block_size - k), (0, 0))).reshape(nb, block_size, n)
    # zero padding changes neither range: the asymmetric range includes 0, a zero never has the largest magnitude
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if symmetric:
            m = np.where(np.abs(hi) > np.abs(lo), hi, lo)
            scales = (m / np.float32(-8.0)).astype(w.dtype)
            zps = None
        else:
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
            scales = ((hi - lo) / np.float32(15.0)).astype(w.dtype)
            s32 = scales.astype(np.float32)
            zps = np.where(s32 != 0, np.clip(np.rint(-lo / s32), 0, 15), 0).astype(np.uint8)
        s_full = np.repeat(scales.astype(np.float32), block_size, axis=0)[:k]
        codes = np.where(s_full != 0, np.rint(w32 / s_full), 0)
    if symmetric:
        q = np.clip(codes, -8, 7).astype(np.int8)
    else:
        q = np.clip(codes + np.repeat(zps, block_size, axis=0)[:k], 0, 15).astype(np.uint8)
    return BlockQuant(q, scales, zps, block_size)


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pairs along the last axis (even length) to bytes: element 2i in the low nibble, 2i+1 in the high one."""
    c = codes.astype(np.uint8) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def pack_matmul_nbits(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' (B, scales, zero_points) for 4 bits, as onnxruntime's MatMulNBitsQuantizer stores them.

    B: uint8 [N, n_blocks, block_size / 2] (K padded with code 0 to whole blocks); scales [N, n_blocks];
    zero_points: uint8 [N, ceil(n_blocks / 2)] (an odd last block's high nibble is 8, MLAS's default), None
    when symmetric (codes stored as q + 8, MatMulNBits' implicit zero point). Source: ContribOperators.md
    (com.microsoft.MatMulNBits) and MLAS BlockwiseQuantizer::quantizeAndTranspose.
    """
    k, n = bq.q.shape
    bs = bq.block_size
    nb = bq.scales.shape[0]
    codes = bq.q.astype(np.int16) + (8 if bq.symmetric else 0)
    padded = np.zeros((nb * bs, n), np.uint8)
    padded[:k] = codes.astype(np.uint8)
    b = _pack_nibbles(padded.T.reshape(n, nb, bs))
    zp = None
    if bq.zero_points is not None:
        z = np.full((n, nb + nb % 2), 8, np.uint8)
        z[:, :nb] = bq.zero_points.T
        zp = _pack_nibbles(z)
    return b, np.ascontiguousarray(bq.scales.T), zp


def _int4_tensor(codes: np.ndarray) -> NumpyTensor:
    """An INT4 (signed codes) or UINT4 initializer payload; ONNX packs it two to a byte, low nibble first."""
    dtype = ml_dtypes.int4 if codes.dtype.kind == "i" else ml_dtypes.uint4
    return NumpyTensor(codes.astype(dtype))


# -- configuration and the record of what happened --------------------------------------------------------


@dataclass
class _Options:
    bits: int
    block_size: int
    format: str
    symmetric: bool
    exclude: frozenset[str]


@dataclass
class _Log:
    """What the rules decided, per node: a pending quantization or the reason one was skipped."""

    quantized: dict[Node, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[Node, dict[str, Any]] = field(default_factory=dict)
    weights: list[Value] = field(default_factory=list)


class _WeightRule(Rule):
    """Shared checks of the weight-only rules; `options` and `log` are per run."""

    op_name: ClassVar[str] = ""

    def __init__(self, options: _Options, log: _Log):
        self.options = options
        self.log = log

    def _skip(self, node: Node, reason: str) -> None:
        self.log.skipped[node] = {"node": node_label(node), "op": node.op_type, "reason": reason}
        raise MatchFailed(reason)

    def _weight(self, m: Match, w: Value, what: str) -> np.ndarray:
        """The constant float 2-D array of `w`, or skip the node with the reason."""
        node = m.root
        if matches(node, self.options.exclude):
            self._skip(node, "excluded")
        arr = m.const(w)
        if arr is None:
            self._skip(node, f"the {what} is not a constant")
        if arr.dtype not in _FLOAT_KINDS:
            self._skip(node, f"the {what} is not float32/float16/bfloat16 ({arr.dtype})")
        if arr.ndim != 2:
            self._skip(node, f"the {what} is not 2-D (shape {list(arr.shape)})")
        if w.num_uses > 1 or m.graph.is_output(w):
            self._skip(node, f"the {what} '{w.name}' is shared by several consumers")
        if not np.isfinite(arr.astype(np.float32)).all():
            self._skip(node, f"the {what} has non-finite values")
        return arr

    def _size(self, node: Node, k: int, n: int, k_name: str = "K", n_name: str = "N") -> None:
        bs = self.options.block_size
        if k < bs:
            self._skip(node, f"too small: {k_name}={k} is below the block size {bs}")
        if k < MIN_DIM or n < MIN_DIM:
            self._skip(node, f"too small: {k_name}={k}, {n_name}={n} (each must be >= {MIN_DIM})")

    def _record(self, m: Match, w: Value, shape: Sequence[int]) -> None:
        self.log.quantized[m.root] = {"node": node_label(m.root), "op": m.root.op_type, "weight": w.name,
                                      "shape": [int(d) for d in shape]}
        self.log.skipped.pop(m.root, None)
        self.log.weights.append(w)

    def _dq(self, op, bq: BlockQuant, axis: int, hint: str) -> Value:
        """DequantizeLinear(q, scale, zero_point, axis, block_size) of int4 constants (opset 21)."""
        zp = None if bq.zero_points is None else op.const(_int4_tensor(bq.zero_points), hint=f"{hint}_zp")
        return op.DequantizeLinear(op.const(_int4_tensor(bq.q), hint=f"{hint}_q4"),
                                   op.const(bq.scales, hint=f"{hint}_scale"), zp, axis=axis,
                                   block_size=bq.block_size, _hint=f"{hint}_dq")

    def _matmul_nbits(self, op, a: Value, bq: BlockQuant, hint: str, bias: np.ndarray | None = None) -> Value:
        b, scales, zp = pack_matmul_nbits(bq)
        k, n = bq.q.shape
        y = op.MatMulNBits(a, op.const(b, hint=f"{hint}_q4"), op.const(scales, hint=f"{hint}_scales"),
                              None if zp is None else op.const(zp, hint=f"{hint}_zp"), None,
                              None if bias is None else op.const(bias, hint=f"{hint}_bias"),
                              _domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=bq.block_size)
        if a.type is not None and a.shape is not None:  # ONNX cannot infer contrib ops; a following Add needs it
            y.type = TensorType(a.dtype, (*a.shape[:-1], n))
        return y


class QuantizeMatMulWeight(_WeightRule):
    """MatMul(A, W[K, N] constant) -> MatMul(A, DequantizeLinear(int4 W)) or MatMulNBits(A, packed W).

    Not exact by design: W becomes its 4-bit blockwise approximation (the point of weight-only quantization);
    the dequantized weight is then used exactly as the float one was.
    """

    rounding: ClassVar[str] = "weights rounded to 4-bit blockwise codes (weight-only quantization)"

    def pattern(self, op, a, w):
        return op.MatMul(a, w)

    def check(self, m, a, w):
        arr = self._weight(m, w, "weight (input 1, the right operand)")
        k, n = arr.shape
        self._size(m.root, k, n)
        if self.options.format == "contrib" and (a.rank is None or a.rank < 2):
            self._skip(m.root, "MatMulNBits needs A of known rank >= 2")
        m.quant = quantize_blocks(arr, self.options.block_size, self.options.symmetric)
        return True

    def rewrite(self, op, m, a, w):
        bq: BlockQuant = m.quant
        self._record(m, w, bq.q.shape)
        if self.options.format == "contrib":
            return self._matmul_nbits(op, a, bq, w.name)
        return op.MatMul(a, self._dq(op, bq, 0, w.name))


class QuantizeGemmWeight(_WeightRule):
    """Gemm(A, B constant, C) -> Gemm(A, DequantizeLinear(int4 B), C) (standard; attributes kept, blocks along
    K: axis 0 of B, or 1 when transB=1) or MatMulNBits(A or A^T, packed B) with alpha folded into the scales
    and beta * C into the bias (or a following Add when C is not a constant row).

    Not exact by design (4-bit weights); the contrib form also rounds alpha * scale and beta * C once each.
    """

    rounding: ClassVar[str] = ("weights rounded to 4-bit blockwise codes; contrib: alpha folded into the scales, "
                               "beta * C into the bias, each rounded once")

    def pattern(self, op, a, w, c):
        return op.Gemm(a, w, Optional(c))

    def check(self, m, a, w, c):
        arr = self._weight(m, w, "B")
        node = m.root
        trans_b = int(node.attr("transB", 0))
        kn = arr.T if trans_b else arr
        self._size(node, *kn.shape)
        alpha = float(node.attr("alpha", 1.0))
        if not math.isfinite(alpha) or not math.isfinite(float(node.attr("beta", 1.0))):
            self._skip(node, "alpha or beta is not finite")
        m.quant = quantize_blocks(kn, self.options.block_size, self.options.symmetric)
        return True

    def rewrite(self, op, m, a, w, c):
        node = m.root
        bq: BlockQuant = m.quant
        self._record(m, w, bq.q.shape)
        trans_b = int(node.attr("transB", 0))
        if self.options.format == "standard":
            dq = self._dq(op, bq.transposed() if trans_b else bq, 1 if trans_b else 0, w.name)
            return op.Gemm(a, dq, c, **dict(node.attributes))
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        dtype = bq.scales.dtype
        if alpha != 1.0:
            bq = BlockQuant(bq.q, (bq.scales.astype(np.float32) * np.float32(alpha)).astype(dtype), bq.zero_points,
                            bq.block_size)
        x = op.Transpose(a, perm=[1, 0]) if int(node.attr("transA", 0)) else a
        n = bq.q.shape[1]
        bias = None
        c_arr = None if c is None else m.const(c)
        if c_arr is not None and c_arr.size in (1, n) and (c_arr.ndim < 2 or c_arr.shape[0] == 1):
            bias = (np.broadcast_to(c_arr.reshape(-1).astype(np.float32), (n,)) * np.float32(beta)).astype(dtype)
            self.log.weights.append(c)  # folded into the bias: removed with the weights when nothing else reads it
        y = self._matmul_nbits(op, x, bq, w.name, bias)
        if c is not None and bias is None:
            y = op.Add(y, c if beta == 1.0 else op.Mul(c, np.asarray(beta, dtype=dtype)))
        return y


class QuantizeEmbedding(_WeightRule):
    """Gather(T[V, D] constant, ids) on axis 0 -> Gather(DequantizeLinear(int4 T, axis=1), ids) (standard) or
    GatherBlockQuantized(T as int4/uint4, ids, scales, zero_points) (contrib); blocks along D.

    Not exact by design (4-bit table rows).
    """

    rounding: ClassVar[str] = "embedding rows rounded to 4-bit blockwise codes (weight-only quantization)"

    def pattern(self, op, table, ids):
        return op.Gather(table, ids)

    def check(self, m, table, ids):
        if int(m.root.attr("axis", 0)) not in (0, -2):
            self._skip(m.root, "the Gather is not on axis 0")
        arr = self._weight(m, table, "table")
        v, d = arr.shape
        self._size(m.root, d, v, "D", "V")
        m.quant = quantize_blocks(arr.T, self.options.block_size, self.options.symmetric).transposed()
        return True

    def rewrite(self, op, m, table, ids):
        bq: BlockQuant = m.quant
        self._record(m, table, bq.q.shape)
        if self.options.format == "standard":
            return op.Gather(self._dq(op, bq, 1, table.name), ids, axis=0)
        zp = None if bq.zero_points is None else op.const(_int4_tensor(bq.zero_points), hint=f"{table.name}_zp")
        return op.GatherBlockQuantized(op.const(_int4_tensor(bq.q), hint=f"{table.name}_q4"), ids,
                                       op.const(bq.scales, hint=f"{table.name}_scales"), zp, _domain=MS_DOMAIN,
                                       gather_axis=0, quantize_axis=1, block_size=bq.block_size)


# -- opset ------------------------------------------------------------------------------------------------


def _raise_to_opset21(model: Model) -> None:
    """Import ai.onnx opset 21 (blocked DequantizeLinear, int4 types) when the model's is lower and no op it
    uses changed its definition in between; else OptcError suggesting the contrib format."""
    key = "" if "" in model.opset_imports or "ai.onnx" not in model.opset_imports else "ai.onnx"
    have = model.opset_imports.get(key)
    if have is not None and have >= STANDARD_OPSET:
        return
    if have is not None:
        changed = set()
        for g in model.graphs():
            for node in g:
                if node.domain not in ("", "ai.onnx"):
                    continue
                try:
                    old = onnx.defs.get_schema(node.op_type, max_inclusive_version=have, domain="").since_version
                    new = onnx.defs.get_schema(node.op_type, max_inclusive_version=STANDARD_OPSET,
                                               domain="").since_version
                except onnx.defs.SchemaError:
                    continue
                if old != new:
                    changed.add(node.op_type)
        if changed:
            ops = ", ".join(sorted(changed)[:6]) + (", ..." if len(changed) > 6 else "")
            raise OptcError(f"--format standard needs ai.onnx opset {STANDARD_OPSET} (blocked DequantizeLinear of "
                            f"int4) but the model imports opset {have} and {ops} changed definition since; use "
                            f"--format contrib")
    model.opset_imports[key] = STANDARD_OPSET


def _initializer_bytes(model: Model) -> int:
    return sum(v.const.nbytes for g in model.graphs() for v in g.initializers.values() if v.const is not None)


# -- entry point ------------------------------------------------------------------------------------------


def quantize_weight_only(model: Model, *, bits: int = 4, block_size: int = 32, format: str = "standard",  # noqa: A002
                         symmetric: bool = False, exclude: Sequence[str] = (), embeddings: bool = True) -> dict:
    """Quantize the constant weights of MatMul, Gemm (and, with `embeddings`, Gather tables) to 4 bits in place.

    `bits`: 4 (the only width supported); `block_size`: elements per block along K (a power of two >= 16);
    `format`: "standard" (opset-21 DequantizeLinear of INT4/UINT4 initializers; the model's ai.onnx import is
    raised to 21 when that changes no op it uses) or "contrib" (onnxruntime's MatMulNBits and
    GatherBlockQuantized, com.microsoft domain); `symmetric`: int4 without zero points instead of uint4 with a
    zero point per block; `exclude`: node names (or names of their first output) left in float.

    Weights shared by several consumers, non-constant, non-float or too small (K below the block size, or K or
    N below 16) are skipped with a reason. Returns {"format", "bits", "block_size", "quantized": [{"node", "op",
    "weight", "shape": [K, N]}] ([V, D] for tables), "skipped": [{"node", "op", "reason"}], "bytes_before",
    "bytes_after"} (initializer bytes of the whole model, int4 counted packed).

    Raises OptcError for bits other than 4, a bad block size or format, a model whose opset cannot be raised to
    21 for the standard format, and a model with nothing to quantize. Formulas: see the module docstring.
    """
    if bits != 4:
        raise OptcError(f"weight-only quantization supports 4 bits, not {bits}")
    if not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise OptcError(f"block size must be a power of two >= 16, not {block_size}")
    if format not in FORMATS:
        raise OptcError(f"unknown weight-only format '{format}' (use {' or '.join(FORMATS)})")
    options = _Options(bits, block_size, format, bool(symmetric), frozenset(exclude))
    log = _Log()
    rules: list[Rule] = [QuantizeMatMulWeight(options, log), QuantizeGemmWeight(options, log)]
    if embeddings:
        rules.append(QuantizeEmbedding(options, log))
    bytes_before = _initializer_bytes(model)
    keys = {("", r.compiled().root_keys[0][1]) for r in rules}
    candidates = [n for g in model.graphs() for n in g if n.key in keys]  # graph order, for the report
    saved = (dict(model.opset_imports), model.ir_version)
    if format == "standard":
        _raise_to_opset21(model)
    else:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    model.ir_version = max(model.ir_version, 10)  # INT4 / UINT4 tensors need IR version 10
    infer_model_types(model)  # the rules' new nodes are type-checked against their inputs' types
    rw = Rewriter(model)
    apply_rules(model, rules, PassContext(opsets=dict(model.opset_imports)), "quantize-weight-only", rewriter=rw,
                max_rewrites=max(100_000, 4 * sum(len(g) for g in model.graphs())))
    quantized = [entry for node, entry in log.quantized.items() if node.graph is None]
    skipped = [log.skipped.get(node, {"node": node_label(node), "op": node.op_type,
                                      "reason": "the rewrite was rejected (its new nodes failed type inference)"})
               for node in candidates if node.graph is not None and (node in log.skipped or node in log.quantized)]
    if not quantized:
        model.opset_imports.clear()
        model.opset_imports.update(saved[0])
        model.ir_version = saved[1]
        why = "; ".join(f"{s['node']}: {s['reason']}" for s in skipped[:3]) or \
            "no MatMul, Gemm or Gather with a constant float weight"
        raise OptcError(f"weight-only quantization found nothing to quantize: {why}")
    for w in log.weights:
        for g in model.graphs():
            if g.initializers.get(w.name) is w and not w.uses() and not rw.is_graph_output(w) and w not in g.inputs:
                rw.remove_initializer(w, g)
    return {"format": format, "bits": bits, "block_size": block_size, "quantized": quantized, "skipped": skipped,
            "bytes_before": bytes_before, "bytes_after": _initializer_bytes(model)}
