"""Quantization ops, written with Relax ops so that every rounding is the one ONNX specifies.

- QuantizeLinear: `y = saturate(rint(x / y_scale) + y_zero_point)`; the division in the precision the spec
  names (the `precision` attribute, else the type of `y_scale`: with a float32 x and a float16 scale x is
  rounded to float16 first, where the reference evaluator divides in float32), round half to even
  (`relax.op.round` lowers to `nearbyint`), the zero point added in int32, then saturated. Per-tensor, per-axis
  and blocked (`block_size`).
- DequantizeLinear: `y = (float32(x) - float32(x_zero_point)) * float32(x_scale)` rounded once to
  `output_dtype` (else the scale's type), as the reference evaluator and onnxruntime compute it (exact for
  8/16-bit inputs; a float16 product of a float16 x - zero point would round int16 values first).
- bfloat16 values are rounded on the bits (see `_to_grid`): TVM keeps bfloat16 arithmetic in float32.
- DynamicQuantizeLinear: the reference's formula, including its scale of 1/255 when min == max (all-zero
  input) that the function body (`_expanded`) would turn into a division by zero.
- MatMulInteger / ConvInteger: zero points subtracted in int32 first, int32 accumulation.
- com.microsoft QGemm (what optc's integer rule leaves): int32 accumulation, onnxruntime's float32 requantize.
- QLinearMatMul / QLinearConv: the int32 accumulator requantized as the reference evaluator does: the
  multiplier `a_scale * b_scale / y_scale` in the scales' type, `acc * multiplier + y_zero_point` in float64
  (exact for any int32 accumulator and float32 multiplier but for one rounding), round half to even, saturate.

Refused (one line each): 4-bit / 2-bit types (TVM cannot build tensors of sub-byte elements), float8 and float4
types (TVM's own float8 casts are wrong on the CPU: float8 0 reads as 0.0078125, overflow gives garbage),
float8e8m0 or int32 scales, run-time shapes where the blocked layout or auto_pad needs them.

A matmul or convolution with a one-term reduction gets a zero term more (REDUCTION OF ONE, below).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, declare_op_pattern, dtype_of, refuse
from ..finite import finite_quotient

_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
_FLOATS = ("float32", "float16", "bfloat16")
_DQ_INPUTS = ("uint8", "int8", "uint16", "int16", "int32")

# ONNX TensorProto element types -> TVM dtypes (the ones these ops can name in output_dtype / precision)
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 10: "float16",
                11: "float64", 16: "bfloat16"}
_ONNX_NAMES = {17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4",
               22: "int4", 23: "float4e2m1", 24: "float8e8m0", 25: "uint2", 26: "int2", 27: "float6e2m3",
               28: "float6e3m2"}


def _why_not(dtype: str) -> str:
    """Why a quantized type other than the 8/16-bit integers is refused."""
    if dtype.startswith(("float8", "float4", "float6")):
        return "TVM's float8/float4 conversions are wrong on the CPU (float8 0 reads back as 0.0078125)"
    if any(dtype.startswith(p) for p in ("int4", "uint4", "int2", "uint2", "int1", "uint1")):
        return "TVM cannot build tensors of sub-byte elements"
    return "not a quantized type the back end handles"


def _onnx_dtype(code: int, what: str) -> str:
    if code in _ONNX_DTYPES:
        return _ONNX_DTYPES[code]
    name = _ONNX_NAMES.get(code, f"type {code}")
    raise refuse(f"{what} {name} is not supported by the TVM back end ({_why_not(name)})")


def _shape(expr) -> list | None:
    """Static dims of a tensor expression (None for a symbolic dim), or None for an unknown rank."""
    ty = expr.ty
    if getattr(ty, "ndim", -1) < 0 or ty.shape is None:
        return None
    return [int(d.value) if hasattr(d, "value") and isinstance(d.value, int) else None for d in ty.shape.values]


def _rank(expr) -> int:
    rank = getattr(expr.ty, "ndim", -1)
    if rank < 0:
        raise refuse("an input of unknown rank is not supported by the TVM back end")
    return rank


def _scalar(value, dtype: str, rank: int):
    """A constant of shape [1] * rank (not 0-d: ConvertLayout cannot give a 0-d operand a layout)."""
    return const(np.full([1] * rank, value), dtype)


def _cast(bb, x, dtype: str):
    return x if dtype_of(x) == dtype else bb.emit(relax.op.astype(x, dtype))


def _size(shape: list | None) -> int | None:
    return None if shape is None or None in shape else int(np.prod(shape, dtype=np.int64))


def _qparam(bb, p, x, axis: int, block_size: int, what: str):
    """A scale or zero point `p` of a Quantize/DequantizeLinear reshaped (and, blocked, repeated) so that it
    broadcasts against `x`: per-tensor (one element), per-axis (1-D of length x.shape[axis]) or blocked."""
    if p is None:
        return None
    rank = _rank(x)
    pshape, xshape = _shape(p), _shape(x)
    if pshape is None:
        raise refuse(f"a {what} of unknown rank is not supported by the TVM back end")
    value = constant_value(p)
    if _size(pshape) == 1:  # per tensor
        target = [1] * rank
        return const(value.reshape(target)) if value is not None else bb.emit(relax.op.reshape(p, target))
    if not -rank <= axis < rank:
        raise refuse(f"axis {axis} is out of range for a rank-{rank} input")
    axis %= rank
    if not block_size:
        if len(pshape) != 1:
            raise refuse(f"a {what} of shape {pshape} without block_size (neither per-tensor nor per-axis)")
        if None not in (pshape[0], xshape and xshape[axis]) and pshape[0] != xshape[axis]:
            raise refuse(f"a {what} of {pshape[0]} elements for {xshape[axis]} along axis {axis}")
        target = [1] * rank
        target[axis] = -1 if pshape[0] is None else pshape[0]
        return const(value.reshape(target)) if value is not None else bb.emit(relax.op.reshape(p, target))
    # blocked: p has x's shape but ceil(D / block_size) along axis; every element covers block_size of x
    if len(pshape) != rank:
        raise refuse(f"a blocked {what} must have the input's rank {rank}, not {len(pshape)}")
    if xshape is None or xshape[axis] is None or pshape[axis] is None:
        raise refuse(f"blocked quantization with a run-time size along axis {axis} is not supported by the TVM "
                     "back end")
    dim = xshape[axis]
    if not pshape[axis] * block_size >= dim > (pshape[axis] - 1) * block_size:
        raise refuse(f"block_size {block_size} does not fit a {what} of {pshape[axis]} blocks for {dim} elements "
                     f"along axis {axis}")
    if value is not None:
        return const(np.take(np.repeat(value, block_size, axis=axis), np.arange(dim), axis=axis))
    rep = bb.emit(relax.op.repeat(p, block_size, axis=axis))
    if pshape[axis] * block_size != dim:
        rep = bb.emit(relax.op.strided_slice(rep, [axis], [0], [dim]))
    return rep


def _nan_to_zero(bb, r):
    """`where(isnan(r), 0, r)` as a kernel of its own (op_pattern opaque: FuseOps leaves it unfused). Fused, the
    select's two reads of `r` doubled the inlined expression at every QuantizeLinear of a Q -> DQ -> ... chain,
    and TVM's simplifier ran for more than 20 minutes on a QDQ BERT-like (177 QuantizeLinear)."""
    from tvm import te, tirx

    # a dim computed from symbolic ones (max(P, Q) * min(P, Q, 1) of a broadcast) becomes a var of its own: the
    # kernel cannot take P and Q from its buffers' shapes
    dims = [d if isinstance(d, (tirx.IntImm, tirx.Var)) else tirx.Var(f"n{i}", "int64")
            for i, d in enumerate(r.ty.shape.values)]
    t = te.placeholder(dims, dtype=dtype_of(r), name="r")
    y = te.compute(t.shape, lambda *i: tirx.Select(tirx.isnan(t(*i)), tirx.const(0, t.dtype), t(*i)),
                   name="nan_to_zero")
    func = declare_op_pattern(te.create_prim_func([t, y]).without_attr("global_symbol"), 8)  # kOpaque
    gv = bb.add_func(func, "nan_to_zero")
    return bb.emit(relax.call_tir(gv, [r], r.ty))


def _rint_saturate(bb, r, zp, out_dtype: str, *, nan_free: bool = False):
    """`saturate(r + zp)` for an already rounded float tensor `r` (any float type) and an optional zero point
    (already broadcastable), computed exactly: NaN is taken as 0 (ONNX leaves it undefined), r is first clamped
    to +-(qmax - qmin) in float (it cannot change the saturated result, and keeps the int32 cast defined), the
    zero point added in int32. `nan_free`: the caller knows `r` holds no NaN (an int32 accumulator times a finite
    multiplier), so the NaN select is left out (a `where` keeps ConvertLayout from moving the epilogue to NHWC)."""
    return _saturate(bb, _without_nan(bb, r, nan_free), zp, out_dtype)


def _without_nan(bb, r, nan_free: bool, *, fusable: bool = False):
    """`r` as float32 (float64 stays) with NaN taken as 0 unless the caller knows there is none. `fusable`: the
    select is an ordinary elementwise op that fuses with its neighbours, for an `r` computed from a graph input
    alone (a model's float input quantized: the kernel it would be alone costs a pass over the image, and the
    expression it doubles is one division)."""
    fdtype = dtype_of(r) if dtype_of(r) in ("float32", "float64") else "float32"
    r = _cast(bb, r, fdtype)
    if nan_free:
        return r
    if fusable:
        return bb.emit(relax.op.where(relax.op.isnan(r), _scalar(0.0, fdtype, _rank(r)), r))
    return _nan_to_zero(bb, r)


def _saturate(bb, r, zp, out_dtype: str):
    """`saturate(r + zp)` of a NaN-free rounded float `r` (see `_rint_saturate`)."""
    rank = _rank(r)
    lo, hi = _INT_RANGES[out_dtype]
    fdtype = dtype_of(r)
    r = bb.emit(relax.op.minimum(relax.op.maximum(r, _scalar(lo - hi, fdtype, rank)), _scalar(hi - lo, fdtype, rank)))
    q = bb.emit(relax.op.astype(r, "int32"))
    if zp is not None:
        q = bb.emit(relax.op.add(q, _cast(bb, zp, "int32")))
    q = bb.emit(relax.op.minimum(relax.op.maximum(q, _scalar(lo, "int32", rank)), _scalar(hi, "int32", rank)))
    return relax.op.astype(q, out_dtype)


def record_float_grid(bb, ctx, r, zp, lo: int, hi: int):
    """Note, for the DequantizeLinear nodes that read the node being converted (a QuantizeLinear, a requantizing
    QMatMul / QConv), its output as float32 computed without the integer round trip: `clamp(r + zp, lo, hi)` in
    float32 for the NaN-free rounded float32 `r`, equal to `float32(q)` bit for bit (the 8/16-bit ranges are
    exact in float32; r + zp is exact below 2^24 and, rounded above it, still saturates; -0.0 + zp is +0.0 as
    float32(0) is, since the zero point, 0 too, is always added). A QDQ model's float islands run
    Q -> DQ pairs back to back; the fused kernels then skip four integer conversions and clamps per pair
    (`DequantizeLinear` reads it from `ctx.float_grid`). Returns that float32 tensor, whose cast to the quantized
    type is the quantized value itself (the callers compute the quantized value so), or None when there is no node
    or `r` is not float32.

    The DequantizeLinear nodes read it only where every reader of the quantized value is one and it is no graph
    output: when an integer op (a QConv) reads it too, the 8-bit tensor is needed anyway, and a DequantizeLinear of
    the float copy made the float32 `r` the value both branches share, so the producing kernel stored 4 bytes per
    element instead of 1 and every reader clamped and converted again (a QDQ ResNet-like's residual block outputs:
    3.2 MB float32 stores, and 12 kernels of their own to convert them for the next block's first conv)."""
    node = getattr(ctx, "node", None)
    if node is None or not node.outputs or node.outputs[0] is None or dtype_of(r) != "float32":
        return None
    rank = _rank(r)
    scalar = rank == 0
    if scalar:  # as [1]: a 0-d kernel's constants are immediates, and TVM's simplifier drops `x + 0.0` (the
        # zero point's add that turns -0.0 into +0.0); HardSigmoid's beta had the same fault
        r, rank = bb.emit(relax.op.reshape(r, [1])), 1
        zp = None if zp is None else bb.emit(relax.op.reshape(zp, [1]))
    shifted = bb.emit(relax.op.add(r, _cast(bb, zp, "float32") if zp is not None else _scalar(0.0, "float32", rank)))
    grid = bb.emit(relax.op.minimum(
        relax.op.maximum(shifted, _scalar(lo, "float32", rank)), _scalar(hi, "float32", rank)))
    grid = bb.emit(relax.op.reshape(grid, [])) if scalar else grid
    value, model = node.outputs[0], getattr(ctx, "model", None)
    if all(u.op_type == "DequantizeLinear" for u in value.users()) and \
            not (model is not None and model.graph.is_output(value)):
        ctx.float_grid[value] = grid
    return grid


def _to_grid(bb, v, precision: str):
    """A float32 tensor `v` rounded (to nearest even) to the values of `precision`, still as float32.

    bfloat16 is rounded on the bits: TVM computes bfloat16 in float32 and drops a float32 -> bfloat16 -> float32
    cast pair once the kernel is inlined (measured: DequantizeLinear to bfloat16 then Cast to float was unrounded).
    """
    if precision == "float32":
        return v
    if precision == "float16":
        return bb.emit(relax.op.astype(relax.op.astype(v, "float16"), "float32"))
    from tvm import te, tirx

    def round_bits(t):
        def element(*i):
            bits = tirx.reinterpret("uint32", t(*i))
            lsb = (bits >> tirx.const(16, "uint32")) & tirx.const(1, "uint32")
            rounded = (bits + tirx.const(0x7FFF, "uint32") + lsb) & tirx.const(0xFFFF0000, "uint32")
            return tirx.if_then_else(tirx.isnan(t(*i)), t(*i), tirx.reinterpret("float32", rounded))

        return te.compute(t.shape, element, name="round_to_bfloat16")

    return bb.emit_te(round_bits, v, primfunc_name_hint="round_to_bfloat16")


def _in_precision(bb, op, a, b, precision: str):
    """`op(a, b)` for operands and a result in `precision`, as a float32 tensor (float64 for float64) holding
    values of `precision`. float16 / bfloat16: computed in float32 and rounded once; float32 holds their exact
    product, and has enough bits that the rounded quotient is the correctly rounded one."""
    if precision == "float64":
        return bb.emit(op(_cast(bb, a, "float64"), _cast(bb, b, "float64")))
    a, b = (_cast(bb, v, "float32") if dtype_of(v) == precision else _to_grid(bb, _cast(bb, v, "float32"), precision)
            for v in (a, b))
    return _to_grid(bb, bb.emit(op(a, b)), precision)


@converter("com.microsoft", "QuantizeLinear")  # onnxruntime's contrib form: the same formula, 16-bit before opset 21
@converter("", "QuantizeLinear")
def quantize_linear(bb, inputs, attrs, ctx):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    out_dtype = _onnx_dtype(attrs["output_dtype"], "QuantizeLinear to") if attrs.get("output_dtype") else None
    if zp is not None:
        if out_dtype is not None and out_dtype != dtype_of(zp):
            raise refuse(f"output_dtype {out_dtype} differs from the zero point's type {dtype_of(zp)}")
        out_dtype = dtype_of(zp)
    out_dtype = out_dtype or "uint8"
    if out_dtype not in _INT_RANGES:
        raise refuse(f"QuantizeLinear to {out_dtype} is not supported by the TVM back end ({_why_not(out_dtype)})")
    if dtype_of(x) not in (*_FLOATS, "int32"):
        raise refuse(f"QuantizeLinear of a {dtype_of(x)} input is not supported by the TVM back end")
    if dtype_of(scale) not in _FLOATS:
        raise refuse(f"a {dtype_of(scale)} y_scale is not supported by the TVM back end "
                     "(float32, float16 and bfloat16 are)")
    precision = _onnx_dtype(attrs["precision"], "precision") if attrs.get("precision") else dtype_of(scale)
    if precision not in (*_FLOATS, "float64"):
        raise refuse(f"precision {precision} is not supported by the TVM back end")
    if dtype_of(x) == "int32" and precision in ("float16", "bfloat16"):  # int32 -> float32 -> 16 bits: 2 roundings
        raise refuse(f"QuantizeLinear of int32 in {precision} precision is not supported by the TVM back end")
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    scale = _qparam(bb, scale, x, axis, block, "y_scale")
    zp = _qparam(bb, zp, x, axis, block, "y_zero_point")
    # an input proven finite (a QDQ model's dequantized values through residual adds, pools, ...) needs no NaN
    # select: the select is a kernel of its own that ConvertLayout cannot move (lowering/finite.py)
    node = ctx.node
    nan_free = node is not None and len(node.inputs) > 1 and node.inputs[1] is not None and \
        finite_quotient(node.inputs[0], node.inputs[1])
    q = _in_precision(bb, relax.op.divide, x, scale, precision)
    from_input = node is not None and bool(node.inputs) and node.inputs[0] is not None and \
        node.inputs[0].producer is None and node.inputs[0].const is None
    r = _without_nan(bb, bb.emit(relax.op.round(q)), nan_free, fusable=from_input)
    grid = record_float_grid(bb, ctx, r, zp, *_INT_RANGES[out_dtype])
    if grid is not None:  # clamp(r + zp) in float32 is the quantized value: one exact cast, no int32 round trip
        return relax.op.astype(grid, out_dtype)
    return _saturate(bb, r, zp, out_dtype)


@converter("com.microsoft", "DequantizeLinear")
@converter("", "DequantizeLinear")
def dequantize_linear(bb, inputs, attrs, ctx):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    if dtype_of(x) not in _DQ_INPUTS:
        raise refuse(f"DequantizeLinear of {dtype_of(x)} is not supported by the TVM back end "
                     f"({_why_not(dtype_of(x))})")
    if dtype_of(scale) not in _FLOATS:
        raise refuse(f"a {dtype_of(scale)} x_scale is not supported by the TVM back end "
                     "(float32, float16 and bfloat16 are)")
    out_dtype = _onnx_dtype(attrs["output_dtype"], "output_dtype") if attrs.get("output_dtype") else dtype_of(scale)
    if out_dtype not in _FLOATS:
        raise refuse(f"DequantizeLinear to {out_dtype} is not supported by the TVM back end")
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    scale = _qparam(bb, scale, x, axis, block, "x_scale")
    zp = _qparam(bb, zp, x, axis, block, "x_zero_point")
    node = ctx.node if ctx is not None else None
    grid = getattr(ctx, "float_grid", {}).get(node.inputs[0]) if node is not None and node.inputs else None
    dx = grid if grid is not None else _cast(bb, x, "float32")  # float32(x), from its QuantizeLinear when known
    if zp is not None:
        dx = bb.emit(relax.op.subtract(dx, _cast(bb, zp, "float32")))
    y = bb.emit(relax.op.multiply(dx, _cast(bb, scale, "float32")))
    return y if out_dtype == "float32" else relax.op.astype(_to_grid(bb, y, out_dtype), out_dtype)


@converter("", "DynamicQuantizeLinear")
def dynamic_quantize_linear(bb, inputs, attrs, ctx):
    x = inputs[0]
    if dtype_of(x) != "float32":
        raise refuse(f"DynamicQuantizeLinear of {dtype_of(x)} is not supported (ONNX allows float32 only)")
    rank = _rank(x)
    zero, f32 = const(np.float32(0)), "float32"
    maxx = bb.emit(relax.op.maximum(relax.op.max(x), zero))
    minx = bb.emit(relax.op.minimum(relax.op.min(x), zero))
    # scale = (max == min ? 1 : max - min) / 255: an all-zero input gets 1/255, not a division by zero
    span = bb.emit(relax.op.where(relax.op.equal(maxx, minx), const(np.float32(1)), relax.op.subtract(maxx, minx)))
    y_scale = bb.emit(relax.op.divide(span, const(np.float32(255))))
    zp_fp = bb.emit(relax.op.subtract(zero, relax.op.divide(minx, y_scale)))
    zp_fp = bb.emit(relax.op.minimum(relax.op.maximum(zp_fp, zero), const(np.float32(255))))
    zp_fp = bb.emit(relax.op.round(zp_fp))
    scale_b = bb.emit(relax.op.reshape(y_scale, [1] * rank))
    zp_b = bb.emit(relax.op.reshape(zp_fp, [1] * rank))
    y = bb.emit(relax.op.add(relax.op.round(relax.op.divide(x, scale_b)), zp_b))
    y = bb.emit(relax.op.where(relax.op.isnan(y), _scalar(0, f32, rank), y))
    y = bb.emit(relax.op.minimum(relax.op.maximum(y, _scalar(0, f32, rank)), _scalar(255, f32, rank)))
    return relax.Tuple([bb.emit(relax.op.astype(y, "uint8")), y_scale, bb.emit(relax.op.astype(zp_fp, "uint8"))])


# -- integer matmul and convolution ----------------------------------------------------------------------------

def _check_int8(op: str, *exprs) -> None:
    for e in exprs:
        if e is None or dtype_of(e) in ("uint8", "int8"):
            continue
        if dtype_of(e).startswith("float"):
            raise refuse(f"{op} of {dtype_of(e)} is not supported by the TVM back end ({_why_not(dtype_of(e))})")
        raise refuse(f"{op} of {dtype_of(e)} (ONNX defines it for uint8 and int8)")


def _matmul_param(bb, p, operand, row: bool, what: str, rank: int | None = None):
    """A zero point or scale of MatMulInteger / QLinearMatMul that broadcasts against the matmul operand (or,
    per tensor, a tensor of rank `rank`): one element (per tensor); for `a` a 1-D [M] (per row) or [..., M, 1];
    for `b` a 1-D [N] or [..., 1, N] (per column)."""
    if p is None:
        return None
    pshape = _shape(p)
    if pshape is None:
        raise refuse(f"a {what} of unknown rank is not supported by the TVM back end")
    value = constant_value(p)
    if _size(pshape) == 1:
        target = [1] * (rank if rank is not None else _rank(operand))
        return const(value.reshape(target)) if value is not None else bb.emit(relax.op.reshape(p, target))
    rank = _rank(operand)
    if len(pshape) == 1 and row:
        if rank < 2:
            raise refuse(f"a per-row {what} for a 1-D operand")
        target = [1] * (rank - 2) + [pshape[0] if pshape[0] is not None else -1, 1]
    elif len(pshape) == 1 or len(pshape) <= rank:
        return p if value is None else const(value)  # numpy broadcasting: [N] per column, [..., M, 1], [..., 1, N]
    else:
        raise refuse(f"a {what} of shape {pshape} does not broadcast against a rank-{rank} operand")
    return const(value.reshape(target)) if value is not None else bb.emit(relax.op.reshape(p, target))


# REDUCTION OF ONE: a matmul or convolution whose reduction has a single term gets a zero term more. optc's CPU
# schedule (the Injective rule) inlines the epilogue fused after such a kernel into its reduction block, which then
# applies the epilogue twice (a float MatMul [3,1]x[1,2] + Add adds the bias twice) or fails to build when the
# epilogue changes the type. Exact: the extra term is 0 * 0.


def _minus_zero_point(bb, x, zp):
    x32 = _cast(bb, x, "int32")
    return x32 if zp is None else bb.emit(relax.op.subtract(x32, _cast(bb, zp, "int32")))


def _integer_matmul(bb, op: str, a, b, a_zp, b_zp):
    _check_int8(op, a, b, a_zp, b_zp)
    a_zp = _matmul_param(bb, a_zp, a, True, "a_zero_point")
    b_zp = _matmul_param(bb, b_zp, b, False, "b_zero_point")
    a32, b32 = _minus_zero_point(bb, a, a_zp), _minus_zero_point(bb, b, b_zp)
    ashape = _shape(a32)
    if ashape and ashape[-1] == 1:  # K = 1: one zero term more (REDUCTION OF ONE, above)
        a32 = bb.emit(relax.op.nn.pad(a32, [0, 0] * (len(ashape) - 1) + [0, 1]))
        rank_b = _rank(b32)
        b32 = bb.emit(relax.op.nn.pad(b32, [0, 1] if rank_b == 1 else [0, 0] * (rank_b - 2) + [0, 1, 0, 0]))
    return bb.emit(relax.op.matmul(a32, b32, out_dtype="int32"))


@converter("", "MatMulInteger")
def matmul_integer(bb, inputs, attrs, ctx):
    get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
    return _integer_matmul(bb, "MatMulInteger", inputs[0], inputs[1], get(2), get(3))


def _requantize(bb, acc, multiplier, y_zp, out_dtype: str):
    """saturate(rint(acc * multiplier + y_zp)) in float64, as the ONNX reference evaluator computes it."""
    d = bb.emit(relax.op.multiply(_cast(bb, acc, "float64"), _cast(bb, multiplier, "float64")))
    if y_zp is not None:
        d = bb.emit(relax.op.add(d, _cast(bb, y_zp, "float64")))
    return _rint_saturate(bb, bb.emit(relax.op.round(d)), None, out_dtype)


def _per_tensor(p, what: str):
    if p is not None and _size(_shape(p)) != 1:
        raise refuse(f"a {what} of shape {_shape(p)} (only per-tensor {what} is defined)")
    return p


def _flat_scalar(bb, p, rank: int):
    if p is None:
        return None
    value = constant_value(p)
    return const(value.reshape([1] * rank)) if value is not None else bb.emit(relax.op.reshape(p, [1] * rank))


@converter("", "QLinearMatMul")
def qlinear_matmul(bb, inputs, attrs, ctx):
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale = inputs[:7]
    y_zp = inputs[7] if len(inputs) > 7 else None
    _check_int8("QLinearMatMul", a, b, y_zp)
    scale_dtype = dtype_of(a_scale)
    if scale_dtype not in _FLOATS or {dtype_of(b_scale), dtype_of(y_scale)} != {scale_dtype}:
        raise refuse("QLinearMatMul scales must all be float32, float16 or bfloat16 (one type)")
    acc = _integer_matmul(bb, "QLinearMatMul", a, b, a_zp, b_zp)
    rank = _rank(acc)
    a_scale = _matmul_param(bb, a_scale, a, True, "a_scale", rank)
    b_scale = _matmul_param(bb, b_scale, b, False, "b_scale", rank)
    y_scale = _flat_scalar(bb, _per_tensor(y_scale, "y_scale"), rank)
    y_zp = _flat_scalar(bb, _per_tensor(y_zp, "y_zero_point"), rank)
    m = _in_precision(bb, relax.op.multiply, a_scale, b_scale, scale_dtype)
    m = _in_precision(bb, relax.op.divide, m, y_scale, scale_dtype)
    return _requantize(bb, acc, m, y_zp, dtype_of(y_zp) if y_zp is not None else dtype_of(a))


@converter("com.microsoft", "QGemm")
def qgemm(bb, inputs, attrs, ctx):
    """onnxruntime's QGemm (contrib_ops/cpu/quantization/quant_gemm.cc) where optc's integer rule leaves it
    (`rewrites/rules/qinteger.py`: alpha != 1, transA, a [M, N] C, a uint8 B that does not fit int8 after its zero
    point): acc = (A - a_zp) @ (B - b_zp) in int32 (A, B transposed as transA / transB say; b's zero point and scale
    per tensor or per column), plus the int32 C; then `saturate(rint(acc * m) + y_zp)` with the float32
    multiplier m = alpha * a_scale * b_scale / y_scale, or float32 `acc * alpha * a_scale * b_scale` without
    y_scale / y_zero_point."""
    get = lambda i: inputs[i] if len(inputs) > i and inputs[i] is not None else None  # noqa: E731
    a, a_scale, a_zp, b, b_scale, b_zp = (get(i) for i in range(6))
    c, y_scale, y_zp = get(6), get(7), get(8)
    if any(v is None for v in (a, a_scale, b, b_scale)) or (y_scale is None) != (y_zp is None):
        raise refuse("QGemm needs A, a_scale, B, b_scale, and y_scale with y_zero_point or neither")
    if _rank(a) != 2 or _rank(b) != 2:
        raise refuse("QGemm of operands that are not 2-D")
    if dtype_of(a_scale) != "float32" or dtype_of(b_scale) != "float32":
        raise refuse("QGemm scales other than float32 (onnxruntime defines it for float32)")
    if int(attrs.get("transA", 0)):
        a = bb.emit(relax.op.permute_dims(a, [1, 0]))
    if int(attrs.get("transB", 0)):
        b = bb.emit(relax.op.permute_dims(b, [1, 0]))
    acc = _integer_matmul(bb, "QGemm", a, b, a_zp, b_zp)
    if c is not None:
        acc = bb.emit(relax.op.add(acc, _cast(bb, c, "int32")))
    scale = bb.emit(relax.op.multiply(_flat_scalar(bb, _per_tensor(a_scale, "a_scale"), 2),
                                      _matmul_param(bb, b_scale, b, False, "b_scale", 2)))
    scale = bb.emit(relax.op.multiply(scale, const(np.float32(attrs.get("alpha", 1.0)))))
    f = bb.emit(relax.op.astype(acc, "float32"))
    if y_scale is None:
        return relax.op.multiply(f, scale)
    m = bb.emit(relax.op.divide(scale, _flat_scalar(bb, _per_tensor(y_scale, "y_scale"), 2)))
    r = bb.emit(relax.op.round(relax.op.multiply(f, m)))
    return _rint_saturate(bb, r, _flat_scalar(bb, _per_tensor(y_zp, "y_zero_point"), 2), dtype_of(y_zp))


def _conv_pads(attrs, x, w, spatial: int) -> list[int]:
    """Explicit begin..., end... pads (auto_pad resolved against the static input shape)."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    if auto_pad in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * spatial)))
    if auto_pad == "VALID":
        return [0] * (2 * spatial)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise refuse(f"auto_pad {auto_pad!r} is not an ONNX value")
    xshape, wshape = _shape(x), _shape(w)
    kernel = list(attrs.get("kernel_shape", [] if wshape is None else wshape[2:]))
    if xshape is None or None in xshape[2:] or len(kernel) != spatial or None in kernel:
        raise refuse(f"auto_pad {auto_pad} with a run-time spatial size is not supported by the TVM back end")
    begin, end = [], []
    for size, k, s, d in zip(xshape[2:], kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _integer_conv(bb, op: str, attrs, x, w, x_zp, w_zp, bias=None):
    _check_int8(op, x, w, x_zp, w_zp)
    rank = _rank(x)
    spatial = rank - 2
    if spatial not in (1, 2, 3) or _rank(w) != rank:
        raise refuse(f"{op} with a rank-{rank} input (1-D, 2-D and 3-D convolutions are supported)")
    x_zp = _flat_scalar(bb, _per_tensor(x_zp, "x_zero_point"), rank)
    if w_zp is not None and _size(_shape(w_zp)) != 1:
        w_zp = _channel_param(bb, w_zp, w, rank, 0, "w_zero_point")
    else:
        w_zp = _flat_scalar(bb, w_zp, rank)
    x32, w32 = _minus_zero_point(bb, x, x_zp), _minus_zero_point(bb, w, w_zp)
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = _conv_pads(attrs, x, w, spatial)
    wshape = _shape(w32)
    if wshape is not None and _size(wshape[1:]) == 1:  # one input channel, 1x1 kernel (REDUCTION OF ONE, above)
        w32 = bb.emit(relax.op.nn.pad(w32, [0, 0] * (rank - 1) + [0, 1]))
        pads[-1] += dilations[-1]
    conv = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}[spatial]
    layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[spatial]
    acc = bb.emit(conv(x32, w32, strides=strides, padding=pads, dilation=dilations, groups=attrs.get("group", 1),
                       data_layout=layout[0], kernel_layout=layout[1], out_dtype="int32"))
    if bias is not None:
        acc = bb.emit(relax.op.add(acc, _channel_param(bb, _cast(bb, bias, "int32"), w, rank, 1, "B")))
    return acc


def _channel_param(bb, p, w, rank: int, axis: int, what: str):
    """A 1-D per-output-channel parameter [M] reshaped to broadcast along `axis` of a rank-`rank` tensor."""
    pshape, wshape = _shape(p), _shape(w)
    if pshape is None or len(pshape) != 1 or (wshape is not None and None not in (pshape[0], wshape[0])
                                               and pshape[0] != wshape[0]):
        raise refuse(f"a {what} of shape {pshape} (per-tensor or per output channel [M] is defined)")
    target = [1] * rank
    target[axis] = -1
    value = constant_value(p)
    if value is not None:
        target[axis] = value.size
        return const(value.reshape(target))
    return bb.emit(relax.op.reshape(p, target))


@converter("", "ConvInteger")
def conv_integer(bb, inputs, attrs, ctx):
    get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
    return _integer_conv(bb, "ConvInteger", attrs, inputs[0], inputs[1], get(2), get(3))


@converter("", "QLinearConv")
def qlinear_conv(bb, inputs, attrs, ctx):
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale = inputs[:7]
    y_zp = inputs[7] if len(inputs) > 7 else None
    bias = inputs[8] if len(inputs) > 8 else None
    _check_int8("QLinearConv", y_zp)
    for s in (x_scale, w_scale, y_scale):
        if dtype_of(s) != "float32":
            raise refuse(f"a {dtype_of(s)} scale (QLinearConv scales are float32)")
    if bias is not None and dtype_of(bias) != "int32":
        raise refuse(f"a {dtype_of(bias)} bias (QLinearConv's B is int32)")
    acc = _integer_conv(bb, "QLinearConv", attrs, x, w, x_zp, w_zp, bias)
    rank = _rank(acc)
    x_scale = _flat_scalar(bb, _per_tensor(x_scale, "x_scale"), rank)
    y_scale = _flat_scalar(bb, _per_tensor(y_scale, "y_scale"), rank)
    if _size(_shape(w_scale)) == 1:
        w_scale = _flat_scalar(bb, w_scale, rank)
    else:
        w_scale = _channel_param(bb, w_scale, w, rank, 1, "w_scale")
    y_zp = _flat_scalar(bb, _per_tensor(y_zp, "y_zero_point"), rank)
    m = bb.emit(relax.op.divide(relax.op.multiply(x_scale, w_scale), y_scale))
    return _requantize(bb, acc, m, y_zp, dtype_of(y_zp) if y_zp is not None else dtype_of(x))
