"""Element-wise and cumulative ops that TVM's ONNX frontend does not lower, or lowers with float32 constants
whatever the input's dtype (a float16 Elu failed to build): Elu, Celu, Swish, SwiGLU, LpNormalization, CumProd
and BitCast.

Each follows the ONNX operator spec (onnx/defs; its function bodies where the op has one) and the conformance
cases' expected outputs, with IEEE special values carried through: NaN in gives NaN out.
"""

from __future__ import annotations

from tvm import relax, topi

from ..converters import const, constant_value, converter, dtype_of, refuse


@converter("", "Elu")
def elu(bb, inputs, attrs, ctx):
    """Elu(x) = x for x >= 0, alpha * (exp(x) - 1) for x < 0 (ONNX Elu-6; alpha defaults to 1.0): NaN and -0.0
    come through as x. x: float tensor of any dtype and shape."""
    x = inputs[0]
    alpha = float(attrs.get("alpha", 1.0))
    t = dtype_of(x)
    negative = relax.op.multiply(const(alpha, t), relax.op.subtract(relax.op.exp(x), const(1.0, t)))
    return relax.op.where(relax.op.less(x, const(0.0, t)), negative, x)


@converter("", "Celu")
def celu(bb, inputs, attrs, ctx):
    """Celu(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (ONNX Celu-12): x where x > 0, else the
    exponential branch; NaN takes the exponential branch, which gives NaN. x: float tensor, any shape."""
    x = inputs[0]
    alpha = float(attrs.get("alpha", 1.0))
    t = dtype_of(x)
    negative = relax.op.multiply(
        const(alpha, t), relax.op.subtract(relax.op.exp(relax.op.divide(x, const(alpha, t))), const(1.0, t)))
    return relax.op.where(relax.op.greater(x, const(0.0, t)), x, negative)


def _swish(x, alpha: float) -> relax.Expr:
    """x * sigmoid(alpha * x) (ONNX Swish-24)."""
    scaled = x if alpha == 1.0 else relax.op.multiply(const(alpha, dtype_of(x)), x)
    return relax.op.multiply(x, relax.op.sigmoid(scaled))


@converter("", "Swish")
def swish(bb, inputs, attrs, ctx):
    """Swish(x) = x * sigmoid(alpha * x) (ONNX Swish-24; alpha defaults to 1.0). x: float tensor."""
    return _swish(inputs[0], float(attrs.get("alpha", 1.0)))


@converter("", "SwiGLU")
def swiglu(bb, inputs, attrs, ctx):
    """SwiGLU(A, B) = Swish_alpha(A) * B (ONNX SwiGLU-28): A, B float tensors of one shape (no broadcasting)."""
    a, b = inputs[0], inputs[1]
    if a.ty.ndim != b.ty.ndim:
        raise refuse(f"SwiGLU of gate rank {a.ty.ndim} and value rank {b.ty.ndim} (ONNX needs one shape)")
    return relax.op.multiply(_swish(a, float(attrs.get("alpha", 1.0))), b)


@converter("", "LpNormalization")
def lp_normalization(bb, inputs, attrs, ctx):
    """y = x / ||x||_p along `axis` (p in {1, 2}; default axis -1, p 2), with 0 where the norm is 0, as the
    ONNX conformance cases compute it (`np.where(norm == 0, 0, x / norm)`). x: float tensor of rank >= 1."""
    x = inputs[0]
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise refuse(f"LpNormalization with p={p} (ONNX allows 1 and 2)")
    rank = x.ty.ndim
    axis = int(attrs.get("axis", -1))
    if rank < 1 or not -rank <= axis < rank:
        raise refuse(f"LpNormalization with axis {axis} of a rank-{rank} input")
    if p == 1:
        norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
    else:
        norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
    norm = bb.normalize(norm)
    zero = const(0.0, dtype_of(x))
    return relax.op.where(relax.op.equal(norm, zero), relax.op.zeros_like(x), relax.op.divide(x, norm))


@converter("", "CumProd")
def cumprod(bb, inputs, attrs, ctx):
    """Cumulative product along a constant 0-d `axis` input (ONNX CumProd-26), with `exclusive` (start from 1)
    and `reverse` (from the end). x: numeric tensor of rank >= 1; the result has x's shape and dtype."""
    x, axis_expr = inputs[0], inputs[1]
    axis_value = constant_value(axis_expr)
    if axis_value is None:
        raise refuse("CumProd with an axis computed at run time is not supported by the TVM back end")
    rank = x.ty.ndim
    axis = int(axis_value.reshape(-1)[0])
    if not -rank <= axis < rank:
        raise refuse(f"CumProd with axis {axis} of a rank-{rank} input")
    axis %= rank
    reverse = bool(attrs.get("reverse", 0))
    if reverse:
        x = bb.normalize(relax.op.flip(x, axis))
    y = bb.normalize(relax.op.cumprod(x, axis=axis, dtype=dtype_of(x), exclusive=bool(attrs.get("exclusive", 0))))
    return relax.op.flip(y, axis) if reverse else y


_BITS = {"bool": 8, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "float16": 16, "bfloat16": 16,
         "int32": 32, "uint32": 32, "float32": 32, "int64": 64, "uint64": 64, "float64": 64}


@converter("", "BitCast")
def bitcast(bb, inputs, attrs, ctx):
    """The bits of x read as the `to` type of the same width (ONNX BitCast-26); shape unchanged. bool is one
    byte holding 0 or 1 in ONNX, so bool <-> int8/uint8 is a value cast."""
    from tvm.relax.frontend.onnx.onnx_frontend import get_type

    x = inputs[0]
    source, target = dtype_of(x), get_type(int(attrs["to"]))
    if source not in _BITS or target not in _BITS:
        raise refuse(f"BitCast from {source} to {target} is not supported by the TVM back end")
    if _BITS[source] != _BITS[target]:
        raise refuse(f"BitCast from {source} ({_BITS[source]} bits) to {target} ({_BITS[target]} bits): "
                     "ONNX needs one width")
    if source == target:
        return x
    if "bool" in (source, target):
        return relax.op.astype(x, target) if target != "bool" else relax.op.not_equal(x, const(0, source))
    return bb.emit_te(topi.reinterpret, x, target)
