"""optc's converter for LayerNormalization (ONNX opset 17+).

The ONNX function body normalizes X over the axes from `axis` on, then multiplies by Scale and adds B with
numpy broadcasting: Scale and B may be of any shape that broadcasts against X (0-d, `[1, C]` on a normalized
shape `[R, C]`, ...). TVM's frontend hands them to `relax.nn.layer_norm`, which wants them of exactly the
normalized shape (anything else was an internal error), and returns placeholder zeros for the Mean and
InvStdDev outputs. Here a Scale / B that broadcasts to the normalized shape is broadcast to it (a constant one
folds) and the frontend's layer_norm is kept; any other form, and a node whose statistics outputs are used, is
computed from the definition.
"""

from __future__ import annotations

from tvm import relax

from ..converters import converter, dims_of, dtype_of, lookup_frontend, refuse


@converter("", "LayerNormalization")
def layer_normalization(bb, inputs, attrs, ctx):
    """Y (X's float type, X's shape), Mean and InvStdDev (float32, X's shape with the normalized dims 1).

    Refuses (UnsupportedError) an X of unknown rank or an `axis` out of range."""
    x, scale, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    dims = dims_of(x)
    if dims is None or not dims:
        raise refuse("LayerNormalization needs an input of known shape and rank >= 1")
    axis = attrs.get("axis", -1)
    if not -len(dims) <= axis < len(dims):
        raise refuse(f"LayerNormalization with axis={axis} is invalid for an input of rank {len(dims)}")
    axis %= len(dims)
    normalized = dims[axis:]
    gamma = _to_shape(bb, scale, normalized)
    beta = None if bias is None else _to_shape(bb, bias, normalized)
    whole = gamma is not None and (bias is None or beta is not None)
    stash = {1: "float32", 11: "float64"}.get(int(attrs.get("stash_type", 1)))
    if stash is None:
        raise refuse(f"LayerNormalization with stash_type={attrs.get('stash_type')} (1: float32, 11: float64)")
    # relax's layer_norm takes float32 and float16 only (a float64 one failed the build) and computes in float32:
    # other types, and float64 statistics (stash_type 11), follow the definition
    if attrs["tvm_custom"]["num_outputs"] == 1 and whole and all(isinstance(d, int) for d in normalized) \
            and dtype_of(x) in ("float32", "float16") and stash == "float32":
        return lookup_frontend("LayerNormalization", ctx.opset)(bb, [x, gamma, beta], {**attrs, "axis": axis}, ctx)
    return _from_definition(bb, x, scale, bias, list(range(axis, len(dims))), attrs.get("epsilon", 1e-5), stash)


def _to_shape(bb, p, shape: list):
    """`p` broadcast to `shape` (the normalized dims, all static) when numpy broadcasting takes it there without
    growing (leading 1s beyond `shape`'s rank dropped); `p` itself when it is of that shape; None otherwise."""
    dims = dims_of(p)
    if dims is None:
        return None
    extra = len(dims) - len(shape)
    if extra > 0 and any(not isinstance(d, int) or d != 1 for d in dims[:extra]):
        return None
    dims = dims[max(extra, 0):]
    tail = shape[len(shape) - len(dims):]
    if any(not (isinstance(d, int) and d == 1) and not _same(d, t) for d, t in zip(dims, tail, strict=True)):
        return None
    if len(dims_of(p)) == len(shape) and all(_same(d, t) for d, t in zip(dims, shape, strict=True)):
        return p
    if not all(isinstance(d, int) for d in shape):
        return None
    squeezed = bb.normalize(relax.op.reshape(p, dims)) if extra > 0 else p
    return bb.normalize(relax.op.broadcast_to(squeezed, shape))


def _same(a, b) -> bool:
    """Two dims (ints or TIR expressions) provably equal."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    from tvm.sym.analyzer import Analyzer

    return bool(Analyzer().can_prove_equal(a, b))


def _from_definition(bb, x, scale, bias, axes: list[int], epsilon: float, stash: str = "float32"):
    """(Y, Mean, InvStdDev) computed as the ONNX function body does (statistics in the `stash` type: float32 for
    stash_type 1, float64 for 11; Scale and B broadcast by Mul / Add), Y cast back to X's type."""
    eps = relax.const(epsilon, stash)
    xf = x if dtype_of(x) == stash else bb.normalize(relax.op.astype(x, stash))
    mean = bb.normalize(relax.op.mean(xf, axes, keepdims=True))
    centered = bb.normalize(relax.op.subtract(xf, mean))
    var = bb.normalize(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
    inv_std = bb.normalize(relax.op.rsqrt(relax.op.add(var, eps)))
    y = relax.op.multiply(relax.op.multiply(centered, inv_std), relax.op.astype(scale, stash))
    if bias is not None:
        y = relax.op.add(y, relax.op.astype(bias, stash))
    y = bb.normalize(relax.op.astype(y, dtype_of(x)))
    return relax.Tuple([y, mean, inv_std])
