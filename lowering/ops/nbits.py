"""Lowering of `optc.MatMulNBits` (made by `rewrites/rules/weight_int4.py`, whose docstring defines its inputs) to
one kernel that unpacks the 4-bit weight codes inside its reduction:

    Y[..., n] = sum_k a[..., k] * (float32(code(k, n) - zp[k // bs, n]) * scale[k // bs, n])  (+ bias[n])
    code(k, n) = (packed[k // 2, n] >> 4 * (k % 2)) & 15

The weight stays 4-bit in the library (half a byte per weight, plus a float32 scale and a uint8 zero point per
block and column: 5.3x smaller than float32 at block size 32). The kernel is one reduction block, which the
default CPU schedule (`codegen/schedules.py`, TiledReduction) register-tiles like any matmul: a tile's column
vector of codes is one contiguous load of the packed weight (which it also packs into panels at compile time),
decoded with a shift, a mask, a subtraction and a conversion, then multiplied as the float32 weight would be.
When K is whole blocks the reduction is split into (block, element of the block), so the block's scales and zero
points are loop-invariant in the inner loop.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from ..converters import constant_value, converter, dims_of, dtype_of, refuse

#: the decode stage's block annotation (`codegen/nbits_kernels.py` finds the stage by it)
DECODE_ATTR = "optc.nbits_decode"


def _nbits_matmul(a, packed, scales, zero_points, *, k: int, block: int):
    """The TE compute (see the module docstring): a decode stage W[ceil(K / 2), 2, N] (float32, row k at [k // 2,
    k % 2], annotated DECODE_ATTR) and the matmul reading it; the schedule inlines the decode or computes it per
    column panel. `zero_points` None: 8 for every block."""
    lead = list(a.shape[:-1])
    n = packed.shape[1]
    fifteen, four = tirx.const(15, "int32"), tirx.const(4, "int32")

    def decode(half, nibble, j):
        # the nibble is chosen with a select on its own index, not a shift by the row's parity: all in int32 lanes
        # (a shift by the int64 loop variable made every lane int64), and constant once that 2-step loop is
        # unrolled; an even block size never splits a byte, so the block is the byte row's
        byte = packed[half, j].astype("int32")
        code = tirx.Select(nibble == 1, tirx.shift_right(byte, four), tirx.bitwise_and(byte, fifteen))
        blk = half // (block // 2) if block % 2 == 0 else (half * 2 + nibble) // block
        zp = tirx.const(8, "int32") if zero_points is None else zero_points[blk, j].astype("int32")
        return (code - zp).astype("float32") * scales[blk, j]

    w = te.compute(((k + 1) // 2, 2, n), decode, name="nbits_decode", attrs={DECODE_ATTR: 1})
    if k % block == 0 and block % 2 == 0:
        # (block, byte of the block, nibble): once the decode is inlined, the block's scales and zero points are
        # invariant in the two inner loops
        rb = te.reduce_axis((0, k // block), name="kb")
        rh = te.reduce_axis((0, block // 2), name="kh")
        rp = te.reduce_axis((0, 2), name="kp")

        def body(*idx):
            *rows, j = idx
            half = rb * (block // 2) + rh
            return te.sum(a[(*rows, half * 2 + rp)] * w[half, rp, j], axis=[rb, rh, rp])
    else:
        rk = te.reduce_axis((0, k), name="k")

        def body(*idx):
            *rows, j = idx
            return te.sum(a[(*rows, rk)] * w[rk // 2, rk % 2, j], axis=rk)

    return te.compute([*lead, n], body, name="matmul_nbits")


@converter("optc", "MatMulNBits")
def _matmul_nbits(bb, inputs, attrs, ctx):
    get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
    a = inputs[0]
    if dtype_of(a) != "float32":
        raise refuse(f"MatMulNBits of {dtype_of(a)} activations (float32 only)")
    dims = dims_of(a)
    k, block = int(attrs["K"]), int(attrs["block_size"])
    if dims is None or not dims or dims[-1] != k:
        raise refuse(f"MatMulNBits needs an activation whose last dimension is K = {k}")
    packed, scales = constant_value(get(1)), constant_value(get(2))
    zp = get(3)
    if packed is None or scales is None or (zp is not None and constant_value(zp) is None):
        raise refuse("MatMulNBits with a run-time weight, scale or zero point")
    args = [a, get(1), get(2)] + ([zp] if zp is not None else [])

    def compute(a_, packed_, scales_, *rest):
        return _nbits_matmul(a_, packed_, scales_, rest[0] if rest else None, k=k, block=block)

    y = bb.emit_te(compute, *args, primfunc_name_hint="matmul_nbits")
    bias = get(4)
    if bias is not None:
        y = bb.emit(relax.op.add(y, bias))
    return y

