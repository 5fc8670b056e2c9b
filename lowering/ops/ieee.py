"""IEEE 754 special values through the ops where LLVM's max/min lose them.

TVM lowers max/min to instructions that return the non-NaN operand (or the second one), so a NaN could vanish
in Relu, Max, Min and the max-pools, and ArgMax/ArgMin returned arbitrary indices for slices with a NaN. These
converters say what happens instead, each as onnxruntime computes it where onnxruntime is consistent:

- Sign(NaN) = NaN.
- Relu(x) = max(0, x), the 0 first (codegen/nan_order.py): NaN stays NaN, Relu(-0.0) = -0.0 (onnxruntime; the reference evaluator gives +0.0).
- Max / Min (float): NaN when any operand is NaN at that position (onnxruntime and the reference agree).
- MaxPool / GlobalMaxPool (float): a window holding a NaN gives NaN, as ReduceMax does, and a window of -inf
  gives -inf. onnxruntime's MLAS kernels return NaN or skip it depending on where in the window it is (and
  give -3.4e38 for a padded window of -inf), and the reference evaluator skips NaN (it marks padding with
  NaN), so neither is a semantics to copy. MaxPool keeps relax's max_pool op, whose legalization is IEEE
  (codegen/max_pool.py); GlobalMaxPool is that kernel with one window over a static map, and ReduceMax's IEEE
  max over the spatial axes (reduce.py) for a symbolic one. The `Indices` output of MaxPool is refused.
- ArgMax / ArgMin (float): a slice holding a NaN gives the index of its first NaN (last with
  `select_last_index=1`), as numpy and the reference evaluator do; onnxruntime's answer depends on where the NaN is.
- TopK (float): ranked by `total_order_key`, numpy's sort order (the reference evaluator's): NaN above +inf, so
  NaNs come first when `largest=1` and last otherwise, -0.0 equal to +0.0 (ties to the lower index). TVM's sort
  compares the floats, which left a slice holding a NaN unsorted; onnxruntime places a NaN by where it is in the slice.
- Not: a kernel of its own, which no fusion joins to the comparison it negates. In one kernel TVM's simplifier
  rewrote `!(a > b)` to `a <= b` (src/arith/rewrite_simplify.cc, for every type), which is false where a or b is
  NaN: `Not(Greater(x, m))` gave False there, and every `Where` on it the other branch.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from ..converters import const, converter, declare_op_pattern, dims_of, dtype_of, lookup_frontend, node_label, refuse
from . import windows
from .reduce import nan_propagating


def _is_float(expr) -> bool:
    return dtype_of(expr).startswith(("float", "bfloat"))


@converter("", "Not")
def logical_not(bb, inputs, attrs, ctx):
    """Not(x) of a bool tensor as an opaque kernel (module docstring: a negated float comparison in the same
    kernel lost its NaN cases)."""
    x = inputs[0]
    dims = dims_of(x)
    if dims is None:
        return relax.op.logical_not(x)
    shape = [d if isinstance(d, (int, tirx.IntImm, tirx.Var)) else tirx.Var(f"n{i}", "int64")
             for i, d in enumerate(dims)]
    t = te.placeholder(shape, dtype="bool", name="x")
    y = te.compute(t.shape, lambda *i: tirx.Not(t(*i)), name="not")
    func = declare_op_pattern(te.create_prim_func([t, y]).without_attr("global_symbol"), 8)  # kOpaque
    return bb.emit(relax.call_tir(bb.add_func(func, "logical_not"), [x], x.ty))


@converter("", "Relu")
def relu(bb, inputs, attrs, ctx):
    x = inputs[0]
    if not _is_float(x):
        return relax.op.maximum(x, const(0, dtype_of(x)))
    # max(x, 0) with a rank-matched constant (ConvertLayout passes it through an NHWC conv's epilogue; a `where`
    # would get a transpose pair); codegen's nan_order pass then puts the 0 first, so NaN and -0.0 come out as x
    return relax.op.maximum(x, const(np.zeros([1] * x.ty.ndim, dtype_of(x))))


@converter("", "Sign")
def sign(bb, inputs, attrs, ctx):
    # relax's sign maps NaN to 0; ONNX (onnxruntime, the reference evaluator) keeps NaN
    x = inputs[0]
    y = relax.op.sign(x)
    return relax.op.where(relax.op.isnan(x), x, y) if _is_float(x) else y


def _variadic(op_type: str, pick):
    @converter("", op_type)
    def variadic(bb, inputs, attrs, ctx):
        operands = [x for x in inputs if x is not None]
        dtypes = {dtype_of(x) for x in operands}
        if len(dtypes) > 1:
            raise refuse(f"{op_type} of mixed element types {sorted(dtypes)} is not valid ONNX")
        acc = operands[0]
        for x in operands[1:]:
            picked = pick(acc, x)
            if _is_float(x):  # a NaN on either side gives NaN (a + b is NaN then)
                either_nan = relax.op.logical_or(relax.op.isnan(acc), relax.op.isnan(x))
                picked = relax.op.where(either_nan, relax.op.add(acc, x), picked)
            acc = bb.normalize(picked)
        return acc

    return variadic


_variadic("Max", relax.op.maximum)
_variadic("Min", relax.op.minimum)


@converter("", "MaxPool")
def max_pool(bb, inputs, attrs, ctx):
    # a float MaxPool's kernel is IEEE (codegen/max_pool.py: relax keeps the op for ConvertLayout)
    if attrs["tvm_custom"]["num_outputs"] > 1:
        raise refuse("MaxPool's Indices output is not supported by the TVM back end")
    return windows.pool("MaxPool")(bb, inputs, attrs, ctx)


@converter("", "GlobalMaxPool")
def global_max_pool(bb, inputs, attrs, ctx):
    x, dims = inputs[0], dims_of(inputs[0])
    spatial = dims[2:] if dims is not None else None
    pools = {1: relax.op.nn.max_pool1d, 2: relax.op.nn.max_pool2d, 3: relax.op.nn.max_pool3d}
    if spatial and any(isinstance(d, int) and d == 0 for d in spatial):  # (its kernels read no element as garbage)
        raise refuse("GlobalMaxPool over an empty map has no maximum (onnxruntime fails too)")
    if _is_float(x) and spatial and len(spatial) in pools and all(isinstance(d, int) for d in spatial):
        # one window over the whole map: the IEEE max-pool kernel, which ConvertLayout keeps in NHWC
        return pools[len(spatial)](x, pool_size=spatial)
    # else ReduceMax over the spatial axes, keepdims: NaN and -inf as ReduceMax gives them
    return nan_propagating(relax.op.max, bb, x, list(range(2, x.ty.ndim)), True) if _is_float(x) else \
        lookup_frontend("GlobalMaxPool", ctx.opset)(bb, inputs, attrs, ctx)


def _arg(op_type: str):
    @converter("", op_type)
    def arg(bb, inputs, attrs, ctx):
        x = _nonempty_axis(bb, inputs[0], attrs.get("axis", 0), op_type, ctx)
        inputs = [x, *inputs[1:]]
        result = bb.normalize(lookup_frontend(op_type, ctx.opset)(bb, inputs, attrs, ctx))
        result = _all_extreme(bb, x, result, op_type, attrs, ctx)
        if not _is_float(x):
            return result
        # the position of the first (or last) NaN: ArgMax of the NaN mask, with the same attributes
        mask = bb.normalize(relax.op.astype(relax.op.isnan(x), "int32"))
        first_nan = bb.normalize(lookup_frontend("ArgMax", ctx.opset)(bb, [mask], attrs, ctx))
        axis = attrs.get("axis", 0)
        keepdims = bool(attrs.get("keepdims", 1))
        has_nan = relax.op.greater(relax.op.max(mask, [axis % x.ty.ndim], keepdims), const(0, "int32"))
        return relax.op.where(has_nan, first_nan, result)

    return arg


def _all_extreme(bb, x, result, op_type: str, attrs: dict, ctx):
    """`result` (ArgMax / ArgMin of x by TVM's kernel) fixed where a slice holds only the type's extreme value
    (ArgMax: -inf or the integer minimum, 0 for unsigned types; ArgMin: +inf or the maximum): TVM's reducer starts
    from (that extreme, index -1) and takes only a strictly greater (smaller) element, so it kept -1 there, which
    select_last_index made the axis' length, out of range. Such a slice's answer is its first (last) index, what
    ArgMax of zeros (any type's reducer takes 0 over the int32 minimum) with the same attributes gives: taken where
    the result is below 0 (above that index). (Not by comparing x with the extreme: TVM 0.27 compiles an int32
    x == -2147483648 to false.)"""
    if dtype_of(x) == "bool":
        return result
    first_or_last = bb.normalize(lookup_frontend("ArgMax", ctx.opset)(
        bb, [bb.normalize(relax.op.zeros_like(x, "int32"))], attrs, ctx))
    out_of_range = relax.op.greater(result, first_or_last) if attrs.get("select_last_index", 0) else \
        relax.op.less(result, const(0, "int64"))
    return bb.normalize(relax.op.where(out_of_range, first_or_last, result))


def _nonempty_axis(bb, x, axis: int, op_type: str, ctx):
    """x, checked to have a nonempty `axis` where the result has elements: an index of an empty slice does not
    exist (onnxruntime and the reference fail; TVM's kernel gave -1). Refused now when the dims are constants, else
    the library's call fails (`run_checks`); x as it is where the axis is provably nonempty or the result empty."""
    from ..run_checks import fail_if_zero
    from ..shape_values import provably_positive
    from .shape import product

    dims = dims_of(x)
    if dims is None or not -len(dims) <= axis < len(dims):
        return x
    axis %= len(dims)
    length, rest = dims[axis], product(dims[:axis] + dims[axis + 1:])
    if provably_positive(length) or isinstance(rest, int) and rest == 0:
        return x
    what = f"{node_label(ctx.node, op_type)}: axis {axis} is empty, and an empty slice has no index"
    if isinstance(length, int) and isinstance(rest, int):
        raise refuse(what)
    message = f"{what} (onnxruntime fails too)"
    if ctx.defer_check(length, rest, message):  # on the function's result (see `_Lowering.defer_check`)
        return x
    return fail_if_zero(bb, x, length, rest, "optc_empty_axis_check", message)


argmax = _arg("ArgMax")
_arg("ArgMin")


@converter("", "Hardmax")
def hardmax(bb, inputs, attrs, ctx):
    """Hardmax (opset 13+): one_hot of optc's ArgMax (the first maximum, NaN first, a row of -inf at 0), not of
    TVM's argmax, which gave a row of -inf the index -1 and so no 1 at all."""
    x = inputs[0]
    dims = dims_of(x)
    axis = attrs.get("axis", -1)
    if ctx.opset < 13 or dims is None or not -len(dims) <= axis < len(dims) or not isinstance(dims[axis], int):
        return lookup_frontend("Hardmax", ctx.opset)(bb, inputs, attrs, ctx)
    axis %= len(dims)
    index = bb.normalize(argmax(bb, [x], {"axis": axis, "keepdims": 0}, ctx))
    dtype = dtype_of(x)
    return relax.op.one_hot(index, relax.prim_value(tirx.const(1, dtype)), relax.prim_value(tirx.const(0, dtype)),
                            dims[axis], axis)


#: float dtype -> (the signed integer type of its width, the bits of +infinity)
_ORDER_BITS = {"float16": ("int16", 0x7C00), "bfloat16": ("int16", 0x7F80), "float32": ("int32", 0x7F800000),
               "float64": ("int64", 0x7FF0000000000000)}


def total_order_key(bb, x):
    """Integer keys of the float tensor `x` (same shape; int32, or int64 for float64: the types TVM's sort takes)
    in numpy's sort order: -inf < negatives < -0.0 == +0.0 < positives < +inf < NaN, every NaN equal (any sign or
    payload). From the IEEE 754 bits (`mag` = the bits without the sign): `mag` for a positive, `-mag` for a
    negative, inf + 1 for a NaN (mag > the bits of +inf)."""
    itype, inf_bits = _ORDER_BITS[dtype_of(x)]
    bits = int(itype[3:])
    key_type = "int64" if bits == 64 else "int32"

    def keys(t):
        def element(*i):
            b = tirx.reinterpret(itype, t(*i))
            mag = b & tirx.const((1 << (bits - 1)) - 1, itype)
            ordered = tirx.Select(b < tirx.const(0, itype), -mag, mag)
            key = tirx.Select(mag > tirx.const(inf_bits, itype), tirx.const(inf_bits + 1, itype), ordered)
            return key.astype(key_type)

        return te.compute(t.shape, element, name="total_order_key")

    return bb.emit_te(keys, x, primfunc_name_hint="total_order_key")
