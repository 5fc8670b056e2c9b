"""Weight-only 4-bit models for the TVM back end: the rules that give every int4 / uint4 weight a form TVM can build.

TVM cannot hold tensors of sub-byte elements, so a weight-only int4 model (what `optc quantize --weight-only int4`
and onnxruntime's `MatMulNBitsQuantizer` write) cannot be lowered as it is. Only the TVM compile path runs these
rules (`to_weight_int4_ops`, from `codegen.compile.build_executable`, at every -O level: without them such a model
does not lower at all). In order:

    MatMul(a, DequantizeLinear(w4[K, N], scale, zp?))          (blocks along K, per column or per tensor)
    Gemm(a, DequantizeLinear(b4), c?)   transA 0, alpha = beta = 1, transB 0 or 1 (blocks along K)
    com.microsoft MatMulNBits(a, B, scales, zero_points?, -, bias?)   bits 4, uint8 zero points, no g_idx
        -> optc.MatMulNBits(a, packed, scales, zero_points?, bias?)     (a: float32)

    Gather(DequantizeLinear(t4[V, D], scale[V, D/bs], zp?, axis 1, block_size), ids)          (axis 0)
    com.microsoft GatherBlockQuantized(t4, ids, scales, zp?)   gather_axis 0, quantize_axis last, int4 / uint4 data
        -> (Cast(Gather(t8, ids)) - Gather(zp, ids)) * Gather(scale, ids), reshaped: only the gathered rows

    DequantizeLinear(x4 constant, scale, zp?) (anything else)  -> DequantizeLinear(x8, scale, zp8)

`optc.MatMulNBits` (lowered by `lowering/ops/nbits.py` to one fused kernel that unpacks the 4-bit codes in its
inner loop; the ONNX op's layout is onnxruntime's, this one is the kernel's):

* a: float32 [..., K]; output float32 [..., N].
* packed: uint8 [ceil(K / 2), N], the code of row k of column n in byte k // 2, low nibble for even k.
* scales: float32 [n_blocks, N], n_blocks = ceil(K / block_size); zero_points: uint8 [n_blocks, N] in [0, 15],
  absent for a zero point of 8 (MatMulNBits' implicit one; signed int4 codes are stored plus 8).
* bias: float32 [N], optional. Attributes: K, block_size.
* Y = a @ W (+ bias), W[k, n] = float32(code[k, n] - zero_point[k // block_size, n]) * scale[k // block_size, n]:
  DequantizeLinear's value exactly (the difference of two 4-bit integers is exact in float32; one rounding in
  the product), so the fused op computes what MatMul(a, DequantizeLinear(...)) does up to the order of the
  float32 sum (the `rounding` note).

Exactness: the Gather rule gathers the rows first and dequantizes the gathered rows (the same elements, each
`(q - zp) * scale` as before: bit-exact, and no [V, D] float table per call). The widening rule stores each 4-bit
code in a byte of the same signedness: the same values, so DequantizeLinear computes the same result (exact).
Not rewritten: float16 / bfloat16 scales and activations (MatMulNBits and Gather forms; the widening rule still
makes them lowerable), run-time weights, blocks along N, MatMulNBits with float zero points, g_idx (act-order)
or bits other than 4, GatherBlockQuantized on other axes or with uint8 packed data.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ...ir.core import Model
from ...ir.schema import OPTC_DOMAIN
from ...ir.types import DataType, TensorType
from ..context import PassContext
from ..pattern import Optional, require
from ..rule import Rule

DOMAIN = OPTC_DOMAIN
MS_DOMAIN = "com.microsoft"
#: the 4-bit element types and the byte-sized type each widens to (the same signedness)
_SUB_BYTE = {np.dtype(ml_dtypes.int4): np.int8, np.dtype(ml_dtypes.uint4): np.uint8,
             np.dtype(ml_dtypes.int2): np.int8, np.dtype(ml_dtypes.uint2): np.uint8}
_FOUR_BIT = (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4))


def _unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """uint8 [..., B] -> codes uint8 [..., count] (element 2i in the low nibble of byte i, 2i + 1 in the high)."""
    lo, hi = packed & 0xF, packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Codes uint8 [K, N] in [0, 15] -> optc.MatMulNBits' `packed` uint8 [ceil(K / 2), N] (row 2i in the low
    nibble, row 2i + 1 in the high one; an odd K's last high nibble is 0)."""
    k = codes.shape[0]
    even = np.zeros((k + k % 2, codes.shape[1]), np.uint8)
    even[:k] = codes
    return (even[0::2] | (even[1::2] << 4)).astype(np.uint8)


class _Weight:
    """A [K, N] 4-bit weight in optc.MatMulNBits' terms: codes uint8 [K, N] in [0, 15], scales float32 [nb, N],
    zero points uint8 [nb, N] (None: 8), block size."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, block_size: int):
        self.codes, self.scales, self.zero_points, self.block_size = codes, scales, zero_points, block_size

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return pack_codes(self.codes), np.ascontiguousarray(self.scales, np.float32), self.zero_points


def _dq_producer(w):
    """The DequantizeLinear node that makes `w` (which may have other consumers: it then stays for them)."""
    p = w.producer if w is not None else None
    require(p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx"),
            "the weight is not made by a DequantizeLinear")
    return p


def _dq_weight(m, dq, k_axis: int) -> _Weight:
    """The 4-bit constant weight behind DequantizeLinear node `dq`, as [K, N] with K on `k_axis` of the stored
    [2-D] tensor (0, or 1 for a transB Gemm's [N, K]). Blocked along K, per column (N) or per tensor."""
    get = lambda i: dq.inputs[i] if len(dq.inputs) > i else None  # noqa: E731
    q = m.const(get(0))
    require(q is not None and q.dtype in _FOUR_BIT and q.ndim == 2, "the weight is not a 2-D int4 / uint4 constant")
    scale = m.const(get(1))
    require(scale is not None and scale.dtype == np.float32, "the scale is not a float32 constant")
    zp = m.const(get(2)) if get(2) is not None else None
    require(get(2) is None or (zp is not None and zp.dtype == q.dtype), "the zero point is not a constant of the "
                                                                         "weight's type")
    axis = int(dq.attr("axis", 1)) % 2
    block = int(dq.attr("block_size", 0))
    n_axis = 1 - k_axis
    k, n = q.shape[k_axis], q.shape[n_axis]
    if scale.size == 1:  # per tensor
        require(zp is None or zp.size == 1, "per-tensor scale with a zero point of another shape")
        bs, scale_kn, zp_kn = k, np.full((1, n), scale.reshape(()), np.float32), \
            None if zp is None else np.full((1, n), zp.reshape(()), q.dtype)
    elif block == 0:  # per axis: must be per column (N)
        require(axis == n_axis and scale.shape == (n,), "the weight is quantized per row, not per output column")
        bs, scale_kn, zp_kn = k, scale.reshape(1, n), None if zp is None else zp.reshape(1, n)
    else:
        require(axis == k_axis, "the blocks run along the output columns, not the reduction")
        nb = -(-k // block)
        want = (nb, n) if k_axis == 0 else (n, nb)
        require(scale.shape == want and (zp is None or zp.shape == want), "the blocked scale's shape does not fit")
        bs = block
        scale_kn = scale if k_axis == 0 else scale.T
        zp_kn = None if zp is None else (zp if k_axis == 0 else zp.T)
    q_kn = q if k_axis == 0 else q.T
    # signed codes are stored + 8 with a zero point + 8 (0 when absent): the difference is unchanged
    shift = 8 if q.dtype == np.dtype(ml_dtypes.int4) else 0
    codes = (q_kn.astype(np.int16) + shift).astype(np.uint8)
    if zp_kn is None:
        zps = None if shift else np.zeros(scale_kn.shape, np.uint8)
    else:
        zps = (zp_kn.astype(np.int16) + shift).astype(np.uint8)
    return _Weight(np.ascontiguousarray(codes), np.ascontiguousarray(scale_kn), zps, bs)


def _matmul_nbits(op, a, w: _Weight, bias: np.ndarray | None = None):
    """The optc.MatMulNBits node, its output typed (float32 [..., N]: a following Add is type-checked against it)."""
    packed, scales, zps = w.inputs()
    y = op.MatMulNBits(a, packed, scales, zps, bias, _domain=DOMAIN, K=int(w.codes.shape[0]),
                       block_size=int(w.block_size))
    if a.shape is not None:
        y.type = TensorType(DataType.FLOAT, (*a.shape[:-1], int(w.codes.shape[1])))
    return y


def _float32_activation(a) -> None:
    require(a.dtype is not None and a.dtype.numpy() == np.float32, "the activation is not float32")


class DqMatMulToMatMulNBits(Rule):
    """MatMul(a float32, DequantizeLinear(w int4 / uint4 [K, N] constant, float32 scale)) -> optc.MatMulNBits.

    The dequantized weight is exactly DequantizeLinear's; only the order of the float32 sum may differ."""

    rounding = "the float32 sum over K may be taken in another order than the MatMul kernel's"

    def pattern(self, op, a, w):
        return op.MatMul(a, w)

    def check(self, m, a, w):
        _float32_activation(a)
        m.w = _dq_weight(m, _dq_producer(w), 0)
        require(a.shape is None or len(a.shape) >= 1, "a is a scalar")
        return True

    def rewrite(self, op, m, a, w):
        return _matmul_nbits(op, a, m.w)


class DqGemmToMatMulNBits(Rule):
    """Gemm(a, DequantizeLinear(b int4 / uint4 constant), c?) with transA = 0 and alpha = beta = 1 ->
    optc.MatMulNBits (+ c as its bias when c is one float32 value per column or per tensor, else an Add)."""

    rounding = DqMatMulToMatMulNBits.rounding

    def pattern(self, op, a, w, c):
        return op.Gemm(a, w, Optional(c), _name="gemm")

    def check(self, m, a, w, c):
        gemm = m["gemm"]
        _float32_activation(a)
        require(int(gemm.attr("transA", 0)) == 0, "Gemm transposes A")
        require(float(gemm.attr("alpha", 1.0)) == 1.0 and float(gemm.attr("beta", 1.0)) == 1.0,
                "Gemm's alpha or beta is not 1")
        m.w = _dq_weight(m, _dq_producer(w), 1 if int(gemm.attr("transB", 0)) else 0)
        n = m.w.codes.shape[1]
        cv = m.const(c) if c is not None else None
        m.bias = None
        if cv is not None and cv.dtype == np.float32 and cv.size in (1, n) and (cv.ndim < 2 or cv.shape[0] == 1):
            m.bias = np.ascontiguousarray(np.broadcast_to(cv.reshape(-1), (n,)), np.float32)
        return True

    def rewrite(self, op, m, a, w, c):
        y = _matmul_nbits(op, a, m.w, m.bias)
        return op.Add(y, c) if c is not None and m.bias is None else y


class MatMulNBitsToOptc(Rule):
    """com.microsoft MatMulNBits (bits 4; onnxruntime's contrib op, ContribOperators.md) with float32 A and
    scales, uint8 (packed) or no zero points, no g_idx and a constant or no bias -> optc.MatMulNBits (its
    weight repacked to the kernel's layout: the same codes, so the same dequantized weight)."""

    rounding = DqMatMulToMatMulNBits.rounding

    def pattern(self, op):
        return op.MatMulNBits(_allow_other_inputs=True, _domain=MS_DOMAIN, _name="mm")

    def check(self, m):
        mm = m["mm"]
        get = lambda i: mm.inputs[i] if len(mm.inputs) > i else None  # noqa: E731
        _float32_activation(mm.inputs[0])
        require(int(mm.attr("bits", 4)) == 4, f"MatMulNBits of {mm.attr('bits', 4)} bits (4 only)")
        k, n, bs = int(mm.attr("K", 0)), int(mm.attr("N", 0)), int(mm.attr("block_size", 0))
        require(k > 0 and n > 0 and bs >= 2, "MatMulNBits lacks K, N or block_size")
        nb = -(-k // bs)
        b = m.const(get(1))
        require(b is not None and b.dtype == np.uint8 and b.size == n * nb * (bs // 2), "B is not a packed uint8 "
                                                                                          "constant of N x blocks")
        scales = m.const(get(2))
        require(scales is not None and scales.dtype == np.float32 and scales.size == n * nb,
                "the scales are not float32 constants of N x blocks")
        require(get(4) is None, "MatMulNBits with g_idx (act-order)")
        zps = None
        if get(3) is not None:
            zp = m.const(get(3))
            require(zp is not None and zp.dtype == np.uint8 and zp.size == n * ((nb + 1) // 2),
                    "the zero points are not packed uint8 constants")
            zps = np.ascontiguousarray(_unpack_nibbles(zp.reshape(n, -1), nb).T)
        bias = None
        if get(5) is not None:
            bias = m.const(get(5))
            require(bias is not None and bias.dtype == np.float32 and bias.size == n, "the bias is not a float32 "
                                                                                      "constant of N values")
        codes = _unpack_nibbles(b.reshape(n, nb * (bs // 2)), k).T  # [K, N]
        m.w = _Weight(np.ascontiguousarray(codes), np.ascontiguousarray(scales.reshape(n, nb).T), zps, bs)
        m.bias = None if bias is None else bias.reshape(n)
        return True

    def rewrite(self, op, m):
        return _matmul_nbits(op, m["mm"].inputs[0], m.w, m.bias)


def _widened(arr: np.ndarray) -> np.ndarray:
    return arr.astype(_SUB_BYTE[arr.dtype])


def _gathered_rows(op, table: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, ids, block: int, rank: int):
    """The dequantized rows `ids` of a [V, D] table blocked along D, in ops of every opset from 13 on:
    ``Mul(Sub(Cast(Gather(codes[V, nb, bs])), Gather(zp[V, nb, 1])), Gather(scale[V, nb, 1]))`` reshaped to
    [*ids, nb * bs] (and sliced to D when the last block is partial). The codes (stored in bytes) and zero points
    are small integers, exact in float32, so the difference is exact and the product rounds once: DequantizeLinear's
    value. `rank`: the rank of ids."""
    v, d = table.shape
    nb = -(-d // block)
    codes = np.zeros((v, nb * block), np.float32)
    codes[:, :d] = table.astype(np.float32)
    rows = op.Cast(op.Gather(codes.reshape(v, nb, block).astype(_SUB_BYTE[table.dtype]), ids, axis=0),
                   to=1)  # FLOAT
    zpf = np.zeros((v, nb, 1), np.float32) if zp is None else zp.astype(np.float32).reshape(v, nb, 1)
    diff = op.Sub(rows, op.Gather(zpf, ids, axis=0)) if zp is not None else rows
    w = op.Mul(diff, op.Gather(scale.reshape(v, nb, 1), ids, axis=0))
    out = op.Reshape(w, np.array([0] * rank + [nb * block], np.int64))
    if nb * block != d:
        out = op.Slice(out, np.array([0], np.int64), np.array([d], np.int64), np.array([-1], np.int64))
    return out


def _blocked_table(m, q, s, zp, axis: int, block: int):
    """Checks of a [V, D] 4-bit table blocked along D; returns (table, scale, zp) arrays."""
    table = m.const(q)
    require(table is not None and table.dtype in _FOUR_BIT and table.ndim == 2, "the table is not a 2-D int4 / "
                                                                                "uint4 constant")
    require(axis % 2 == 1 and block > 0, "the table is not quantized in blocks along its rows (axis 1)")
    scale = m.const(s)
    zpa = m.const(zp) if zp is not None else None
    want = (table.shape[0], -(-table.shape[1] // block))
    require(scale is not None and scale.shape == want, "the scale is not a constant of [V, D / block_size]")
    require(zp is None or (zpa is not None and zpa.shape == want and zpa.dtype == table.dtype),
            "the zero point is not a constant of the scale's shape and the table's type")
    return table, scale, zpa


class GatherDqToDqGather(Rule):
    """Gather(DequantizeLinear(t int4 / uint4 [V, D] constant, blocked along D), ids, axis 0) ->
    the gathered rows dequantized (`_gathered_rows`): the rows are gathered first. Exact: each output element is
    the same (q - zp) * scale."""

    def pattern(self, op, t, ids):
        return op.Gather(t, ids, _name="g")

    def check(self, m, t, ids):
        require(int(m["g"].attr("axis", 0)) in (0, -2), "the Gather is not on axis 0")
        dq = _dq_producer(t)
        get = lambda i: dq.inputs[i] if len(dq.inputs) > i else None  # noqa: E731
        m.table = _blocked_table(m, get(0), get(1), get(2), int(dq.attr("axis", 1)), int(dq.attr("block_size", 0)))
        m.block = int(dq.attr("block_size", 0))
        require(ids.rank is not None, "the indices' rank is unknown")
        return True

    def rewrite(self, op, m, t, ids):
        return _gathered_rows(op, *m.table, ids, m.block, ids.rank)


class GatherBlockQuantizedToDqGather(Rule):
    """com.microsoft GatherBlockQuantized(t int4 / uint4 [V, D] constant, ids, scales, zero_points?) with
    gather_axis 0 and quantize_axis 1 -> the gathered rows dequantized, as GatherDqToDqGather (exact: the same
    (q - zp) * scale per element, zero point 0 when absent, as onnxruntime's kernel for int4 / uint4 data)."""

    def pattern(self, op):
        return op.GatherBlockQuantized(_allow_other_inputs=True, _domain=MS_DOMAIN, _name="g")

    def check(self, m):
        g = m["g"]
        require(int(g.attr("bits", 4)) == 4, "GatherBlockQuantized of other than 4 bits")
        require(int(g.attr("gather_axis", 0)) in (0, -2), "GatherBlockQuantized not on axis 0")
        require(len(g.inputs) >= 3, "GatherBlockQuantized lacks its scales")
        zp = g.inputs[3] if len(g.inputs) > 3 else None
        m.block = int(g.attr("block_size", 128))
        m.table = _blocked_table(m, g.inputs[0], g.inputs[2], zp, int(g.attr("quantize_axis", 1)), m.block)
        require(m.table[1].dtype == np.float32, "the scales are not float32")
        require(g.inputs[1].rank is not None, "the indices' rank is unknown")
        return True

    def rewrite(self, op, m):
        return _gathered_rows(op, *m.table, m["g"].inputs[1], m.block, m["g"].inputs[1].rank)


class WidenSubByteDequantize(Rule):
    """DequantizeLinear(x int4 / uint4 / int2 / uint2 constant, scale, zero_point?) -> the same DequantizeLinear
    of x (and its zero point) stored as int8 / uint8. Exact: the same integer values, the same formula."""

    def pattern(self, op, x, s, z):
        return op.DequantizeLinear(x, s, Optional(z), _name="dq")

    def check(self, m, x, s, z):
        xa = m.const(x)
        require(xa is not None and xa.dtype in _SUB_BYTE, "the input is not a sub-byte integer constant")
        za = m.const(z) if z is not None else None
        require(z is None or (za is not None and za.dtype == xa.dtype), "the zero point is not a constant of x's type")
        m.wide = (_widened(xa), None if za is None else _widened(za))
        return True

    def rewrite(self, op, m, x, s, z):
        xw, zw = m.wide
        return op.DequantizeLinear(xw, s, zw, **dict(m["dq"].attributes))


#: in the order they are tried: the fused matmuls and the gathers first, the widening last
FUSED = [DqMatMulToMatMulNBits, DqGemmToMatMulNBits, MatMulNBitsToOptc, GatherDqToDqGather,
         GatherBlockQuantizedToDqGather]
RULES = [*FUSED, WidenSubByteDequantize]


def to_weight_int4_ops(model: Model) -> int:
    """Apply the rules to `model` in place (the TVM compile path only: optc.MatMulNBits is not standard ONNX):
    the fused forms first, then the widening of what is left. Returns the number of optc.MatMulNBits nodes."""
    from ..driver import apply_rules
    from ..pass_manager import create_pass

    model.opset_imports.setdefault(DOMAIN, 1)
    apply_rules(model, FUSED, PassContext(opsets=dict(model.opset_imports)), "weight-int4")
    apply_rules(model, [WidenSubByteDequantize], PassContext(opsets=dict(model.opset_imports)), "weight-int4-widen")
    create_pass("dce").run(model, PassContext())  # the 4-bit initializers the rules replaced: TVM cannot hold them
    count = sum(1 for g in model.graphs() for n in g if n.domain == DOMAIN and n.op_type == "MatMulNBits")
    if not any(n.domain == DOMAIN for g in model.graphs() for n in g):
        del model.opset_imports[DOMAIN]
    return count
