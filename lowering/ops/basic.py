"""optc's converters for ops whose frontend lowering is wrong or trips TVM's later passes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from tvm import relax, te, tirx
from tvm.ir.expr import Constant

from ...errors import UnsupportedError
from ..converters import const, constant_value, converter, dims_of, dtype_of, lookup_frontend, refuse_when
from .ieee import total_order_key
from .shape import _INT32_MAX


@converter("", "Sum")
def sum_as_adds(bb, inputs, attrs, ctx):
    # The frontend lowers Sum to stack + reduce: a 5-D copy that TVM's ConvertLayout cannot handle.
    acc = inputs[0]
    for x in list(inputs)[1:]:
        acc = bb.normalize(relax.op.add(acc, x))
    return acc

@converter("", "Mean")
def mean_as_adds(bb, inputs, attrs, ctx):
    # The frontend's stack + mean dies (SIGFPE in ConvertLayout) on 0-d operands: adds, then one divide.
    operands = [x for x in inputs if x is not None]
    acc = operands[0]
    for x in operands[1:]:
        acc = bb.normalize(relax.op.add(acc, x))
    return relax.op.divide(acc, relax.const(len(operands), dtype_of(acc))) if len(operands) > 1 else acc


@converter("", "Dropout")
def dropout_at_inference(bb, inputs, attrs, ctx):
    # Inference: Dropout is the identity; the frontend's tuple-valued Dropout blocks ConvertLayout.
    x = inputs[0]
    training = inputs[2] if len(inputs) > 2 else None
    training_value = None if training is None else constant_value(training)
    if training is not None and (training_value is None or training_value.any()):
        raise UnsupportedError("Dropout in training mode (or with a run-time training_mode) is not supported "
                               "by the TVM back end")
    if attrs["tvm_custom"]["num_outputs"] < 2:
        return x
    return relax.Tuple([x, bb.normalize(relax.op.ones_like(x, "bool"))])

def _run_time(*positions: int):
    """A refuse_when condition: one of these inputs is present and not a compile-time constant."""
    return lambda i, a: any(len(i) > p and i[p] is not None and constant_value(i[p]) is None for p in positions)


# TVM's frontend needs these parameters as constants (after optc's constant folding, most models have them so)
refuse_when("AffineGrid", "with a size computed at run time", _run_time(1))
refuse_when("BatchNormalization", "in training mode", lambda i, a: a.get("training_mode", 0))
refuse_when("ConvTranspose", "with an output_shape attribute", lambda i, a: "output_shape" in a)
refuse_when("RoiAlign", "with mode 'max'", lambda i, a: a.get("mode", b"avg") == b"max")
refuse_when("SpaceToDepth", "with mode 'CRD'", lambda i, a: a.get("mode", b"DCR") == b"CRD")
refuse_when("Expand", "with a shape computed at run time",
            lambda i, a: not isinstance(i[1], Constant | relax.ShapeExpr))

@converter("", "Clip")
def clip_as_maximum_minimum(bb, inputs, attrs, ctx):
    # maximum/minimum, not the frontend's TOPI kernel (call_tir, opaque to ConvertLayout: in an NHWC build
    # every ReLU6 got a transpose pair and stayed out of the convolution's epilogue). x comes first for
    # ConvertLayout; codegen's nan_order pass then puts constant bounds first, so NaN and -0.0 come through.
    x = inputs[0]
    dtype = dtype_of(x)
    if ctx.opset < 11:
        bounds = [relax.const(attrs.get("min", -np.inf), dtype), relax.const(attrs.get("max", np.inf), dtype)]
    else:
        bounds = [inputs[i] if len(inputs) > i else None for i in (1, 2)]
    for bound, pick, unbounded in ((bounds[0], relax.op.maximum, -np.inf), (bounds[1], relax.op.minimum, np.inf)):
        if bound is None:
            continue
        value = constant_value(bound)
        if value is not None:
            if np.isnan(value).any():  # ONNX: a NaN bound is no bound
                continue
            # rank of x, not 0-d: ConvertLayout cannot give a 0-d operand a layout and would transpose x
            rank = getattr(x.ty, "ndim", -1)
            bound = relax.const(value.reshape([1] * rank) if rank >= 0 else value, dtype)
            x = bb.normalize(pick(x, bound))
            continue
        if dtype.startswith(("float", "bfloat")):
            bound = relax.op.where(relax.op.isnan(bound), relax.const(unbounded, dtype), bound)
        x = bb.normalize(pick(bound, x))  # a run-time bound: first, so that a NaN x comes through
    return x


@converter("", "IsInf")
def is_inf(bb, inputs, attrs, ctx):
    x = inputs[0]
    inf = bb.normalize(relax.op.isinf(x))
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if pos and neg:
        return inf
    zero = relax.const(0, dtype_of(x))
    sign = relax.op.greater(x, zero) if pos else relax.op.less(x, zero)
    return relax.op.logical_and(inf, sign) if (pos or neg) else relax.op.zeros_like(inf)

@converter("", "BitShift")
def bit_shift(bb, inputs, attrs, ctx):
    # ONNX: shifting by the bit width or more (or by a negative amount) gives 0; LLVM leaves it undefined.
    x, shift = inputs[0], inputs[1]
    left = attrs.get("direction", b"LEFT") == b"LEFT"
    shifted = bb.normalize((relax.op.left_shift if left else relax.op.right_shift)(x, shift))
    bits = int("".join(ch for ch in dtype_of(x) if ch.isdigit()))
    zero = relax.const(0, dtype_of(shift))
    out_of_range = relax.op.logical_or(relax.op.less(shift, zero),
                                       relax.op.greater_equal(shift, relax.const(bits, dtype_of(shift))))
    fill = relax.op.zeros_like(shifted)
    if not left and not dtype_of(x).startswith("uint"):  # an arithmetic right shift fills with the sign
        negative = relax.op.less(x, relax.const(0, dtype_of(x)))
        fill = relax.op.where(negative, relax.op.negative(relax.op.ones_like(shifted)), fill)
    return relax.op.where(out_of_range, fill, shifted)

def _integer_divisor(bb, y, dtype: str):
    """For an integer Div or Mod by `y`: (y with 1 where the CPU's division traps, the mask of y == 0, the mask of
    y == -1 (None for unsigned types)), or None where `y` is a constant that never traps. x86's idiv raises SIGFPE
    (the process dies) for a divisor of 0, and for -1 when x is the type's minimum; ONNX leaves both undefined,
    onnxruntime fails the call, and onnx's reference evaluator (numpy) gives 0 for x / 0 and x % 0, x's negation
    (wrapped: MIN / -1 = MIN) for x / -1 and 0 for x % -1: optc computes what the reference does."""
    signed = not dtype.startswith("uint")
    traps = (0, -1) if signed else (0,)
    value = constant_value(y)
    if value is not None and not np.isin(value, traps).any():
        return None
    zero = bb.normalize(relax.op.equal(y, relax.const(0, dtype)))
    minus_one = bb.normalize(relax.op.equal(y, relax.const(-1, dtype))) if signed else None
    bad = zero if minus_one is None else relax.op.logical_or(zero, minus_one)
    return bb.normalize(relax.op.where(bad, relax.const(1, dtype), y)), zero, minus_one


@converter("", "Div")
def div(bb, inputs, attrs, ctx):
    x, y = inputs[0], inputs[1]
    dtype = dtype_of(x)
    guard = _integer_divisor(bb, y, dtype) if dtype.startswith(("int", "uint")) else None
    if guard is None:
        return lookup_frontend("Div", ctx.opset)(bb, inputs, attrs, ctx)
    safe, zero, minus_one = guard
    q = bb.normalize(lookup_frontend("Div", ctx.opset)(bb, [x, safe], attrs, ctx))  # x / 1 = x where y traps
    if minus_one is not None:  # -x, MIN where x is MIN (two's complement wraps; no signed overflow computed)
        lowest = relax.const(int(np.iinfo(dtype).min), dtype)
        negated = relax.op.where(relax.op.equal(x, lowest), lowest, relax.op.subtract(relax.const(0, dtype), x))
        q = bb.normalize(relax.op.where(minus_one, negated, q))
    # 0 where y is 0 by a product, not a select: TVM's simplifier, given where(y == 0, 0, x / where(y == 0, 1, y)),
    # took y != 0 into the division's arm and divided by y itself (SIGFPE at run time, unsigned types)
    return relax.op.multiply(q, relax.op.astype(relax.op.logical_not(zero), dtype))


@converter("", "Mod")
def mod(bb, inputs, attrs, ctx):
    """Integer Mod by a divisor that can be 0 or -1: by 1 there (`_integer_divisor`: 0, as the reference gives).
    Float Mod(fmod=0) is numpy.mod: the result has the divisor's sign (a zero remainder too: -6 mod 3 = +0,
    6 mod -3 = -0), and x mod +-inf is x (or +-inf). TVM's floor_mod returns NaN for an infinite divisor; it is
    built from the truncated fmod."""
    x, y = inputs[0], inputs[1]
    dtype = dtype_of(x)
    if dtype.startswith(("int", "uint")):
        guard = _integer_divisor(bb, y, dtype)
        if guard is not None:
            inputs = [x, guard[0]]
        return lookup_frontend("Mod", ctx.opset)(bb, inputs, attrs, ctx)
    if attrs.get("fmod", 0) or dtype not in ("float16", "float32", "float64"):
        return lookup_frontend("Mod", ctx.opset)(bb, inputs, attrs, ctx)
    r = bb.normalize(relax.op.mod(x, y))
    zero = relax.const(0, dtype)
    negative_y = bb.normalize(relax.op.less(y, zero))
    wrong_sign = relax.op.logical_xor(relax.op.less(r, zero), negative_y)
    fix = bb.normalize(relax.op.logical_and(relax.op.not_equal(r, zero), wrong_sign))
    r = bb.normalize(relax.op.where(fix, relax.op.add(r, y), r))
    # a zero remainder takes the divisor's sign (numpy.mod; fmod gave it the dividend's)
    signed_zero = relax.op.where(negative_y, relax.const(-0.0, dtype), zero)
    return relax.op.where(relax.op.equal(r, zero), signed_zero, r)

@converter("", "Pow")
def power(bb, inputs, attrs, ctx):
    # ONNX lets the exponent's type differ from the base's; the result has the base's type. Relax's power
    # wants one float type: integer bases are computed in float64 (exact below 2^53) and cast back.
    x, y = inputs[0], inputs[1]
    dtype = dtype_of(x)
    if dtype.startswith(("float", "bfloat")):
        r = bb.normalize(relax.op.power(x, y if dtype_of(y) == dtype else relax.op.astype(y, dtype)))
        return _odd_power_sign(bb, x, y, r) if dtype_of(y).startswith(("int", "uint")) else r
    wide = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
    return relax.op.astype(wide, dtype)


def _odd_power_sign(bb, x, y, r):
    """r = x ** float(y) for an integer exponent y, with the sign of an odd y on a negative x: an odd y above the
    float's 2^mantissa (2^24 for float32) rounds to an even float, and (-1) ** 16777217 came out 1. Nothing is added
    where y is a constant that its float holds exactly."""
    value = constant_value(y)
    bits = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}.get(dtype_of(x), 0)
    if value is not None and (np.abs(value.astype(np.float64)) <= 2.0**bits).all():
        return r
    odd = relax.op.not_equal(relax.op.mod(y, relax.const(2, dtype_of(y))), relax.const(0, dtype_of(y)))
    negative = relax.op.less(x, relax.const(0, dtype_of(x)))
    return relax.op.where(relax.op.logical_and(odd, negative), relax.op.negative(relax.op.abs(r)), r)


#: element types TVM cannot compute with on the CPU (float6 is "float6_e2m3fn" and the like: the prefix "float6" also
#: matched float64, and every Cast to or from it was refused)
_NO_CPU_TYPES = ("float8", "float4", "float6_")


def _unsupported_type(*dtypes: str) -> str | None:
    return next((d for d in dtypes if d.startswith(_NO_CPU_TYPES)), None)


@converter("", "Cast")
def cast(bb, inputs, attrs, ctx):
    from tvm.relax.frontend.onnx.onnx_frontend import get_type

    if attrs["to"] == TensorProto.STRING:
        raise UnsupportedError("Cast to string: string tensors are not supported by the TVM back end")
    x = inputs[0]
    bad = _unsupported_type(str(get_type(attrs["to"])), dtype_of(x) if isinstance(x.ty, relax.TensorType) else "")
    if bad:
        raise UnsupportedError(f"Cast with the element type {bad} is not supported by the TVM back end")
    return lookup_frontend("Cast", ctx.opset)(bb, inputs, attrs, ctx)


@converter("", "CastLike")
def cast_like(bb, inputs, attrs, ctx):
    bad = _unsupported_type(dtype_of(inputs[0]), dtype_of(inputs[1]))
    if bad:
        raise UnsupportedError(f"CastLike with the element type {bad} is not supported by the TVM back end")
    return lookup_frontend("CastLike", ctx.opset)(bb, inputs, attrs, ctx)


def _uint64_order_key(t):
    """int64 keys in the order of the uint64 tensor `t`: its bits with the top one flipped."""
    return te.compute(t.shape, lambda *i: tirx.reinterpret("int64", t(*i) ^ tirx.const(1 << 63, "uint64")),
                      name="uint64_order_key")


#: the element types TVM's sort kernel ranks as they are (others are ranked by int32 / int64 keys)
_SORTABLE = ("int8", "uint8", "int32", "int64")


@converter("", "TopK")
def top_k(bb, inputs, attrs, ctx):
    """TopK (opset 1 to 24), sorted, ties to the lower index. Floats are ranked by `ieee.total_order_key`: NaN
    above +inf (numpy's sort order, the reference evaluator's result; TVM's float comparisons left a slice with a
    NaN unsorted), -0.0 equal to +0.0; int16 / uint16 / uint32 by their values widened, uint64 by its bits with
    the top one flipped, as int64 (TVM's sort kernel failed on these types at run time)."""
    if _run_time(1)(inputs, attrs):
        raise UnsupportedError("TopK with k computed at run time is not supported by the TVM back end")
    x = inputs[0]
    k = int(attrs.get("k", 1)) if ctx.opset < 10 else int(constant_value(inputs[1]).reshape(-1)[0])
    dims = dims_of(x)
    if dims is None:
        raise UnsupportedError("TopK of a tensor of unknown rank is not supported by the TVM back end")
    axis = attrs.get("axis", -1) % len(dims)
    largest = bool(attrs.get("largest", 1))
    if k == 0:  # TVM's topk reads k < 1 as "all"
        shape = relax.ShapeExpr([0 if i == axis else d for i, d in enumerate(dims)])
        return relax.Tuple([relax.op.zeros(shape, dtype_of(x)), relax.op.zeros(shape, "int64")])
    dtype = dtype_of(x)
    if dtype in _SORTABLE:
        return relax.op.topk(x, k, axis, ret_type="both", largest=largest, dtype="int64")
    if dtype.startswith(("float", "bfloat")):
        key = total_order_key(bb, x)
    elif dtype == "uint64":
        key = bb.emit_te(_uint64_order_key, x, primfunc_name_hint="uint64_order_key")
    else:
        key = bb.normalize(relax.op.astype(x, "int64" if dtype == "uint32" else "int32"))
    indices = bb.normalize(relax.op.topk(key, k, axis, ret_type="indices", largest=largest, dtype="int64"))
    return relax.Tuple([bb.normalize(relax.op.gather_elements(x, indices, axis)), indices])


_NMS_PARAMETERS = {2: "max_output_boxes_per_class", 3: "iou_threshold", 4: "score_threshold"}


@converter("", "NonMaxSuppression")
def non_max_suppression(bb, inputs, attrs, ctx):
    """TVM's NonMaxSuppression with ONNX's comparisons. The frontend replaced run-time parameters by defaults
    (wrong boxes: refused here), and its kernel suppresses a box when IoU >= iou_threshold where ONNX (onnx's
    reference, torchvision) suppresses when IoU > iou_threshold: the threshold becomes the next float32 up,
    for which the two comparisons agree on every float32 IoU."""
    inputs = list(inputs)
    for position, name in _NMS_PARAMETERS.items():
        if _run_time(position)(inputs, attrs):
            raise UnsupportedError(f"NonMaxSuppression with {name} computed at run time is not supported by the "
                                   "TVM back end")
    if len(inputs) > 3 and inputs[3] is not None:
        iou = constant_value(inputs[3]).astype(np.float32)
        inputs[3] = const(np.nextafter(iou, np.float32(np.inf)))
    return lookup_frontend("NonMaxSuppression", ctx.opset)(bb, inputs, attrs, ctx)


@converter("", "MaxUnpool")
def max_unpool(bb, inputs, attrs, ctx):
    """MaxUnpool; with an `output_shape` input (a constant) as onnx's reference computes it: the values scatter
    into zeros of the inferred shape ((in - 1) * stride - pads + kernel) at their flat `indices`, and that
    block is padded with zeros at the end of each axis up to `output_shape`. Without one, the frontend's."""
    if len(inputs) < 3 or inputs[2] is None:
        return lookup_frontend("MaxUnpool", ctx.opset)(bb, inputs, attrs, ctx)
    shape = constant_value(inputs[2])
    if shape is None:
        raise UnsupportedError("MaxUnpool with an output_shape computed at run time is not supported by the TVM "
                               "back end")
    x, indices = inputs[0], inputs[1]
    dims = [getattr(d, "value", None) for d in x.ty.shape.values] if x.ty.shape is not None else [None]
    if any(d is None for d in dims):
        raise UnsupportedError("MaxUnpool with an output_shape of an input with symbolic dims is not supported by "
                               "the TVM back end")
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    inferred = dims[:2] + [(dims[i + 2] - 1) * strides[i] - (pads[i] + pads[len(kernel) + i]) + kernel[i]
                           for i in range(len(kernel))]
    out = [int(d) for d in shape.reshape(-1)]
    if len(out) != len(inferred) or any(o < i for o, i in zip(out, inferred, strict=True)):
        raise UnsupportedError(f"MaxUnpool to output_shape {out}, smaller than the unpooled shape {inferred}")
    zeros = bb.normalize(relax.op.zeros(relax.ShapeExpr(inferred), dtype_of(x)))
    flat = bb.normalize(relax.op.scatter_elements(
        bb.normalize(relax.op.reshape(zeros, [-1])), bb.normalize(relax.op.reshape(indices, [-1])),
        bb.normalize(relax.op.reshape(x, [-1])), axis=0))
    y = bb.normalize(relax.op.reshape(flat, relax.ShapeExpr(inferred)))
    if out == inferred:
        return y
    pad_width = [w for o, i in zip(out, inferred, strict=True) for w in (0, o - i)]  # (before, after) per axis
    return relax.op.nn.pad(y, pad_width)


@converter("", "OptionalHasElement")
def optional_has_element(bb, inputs, attrs, ctx):
    """False for an omitted input (an empty optional); a tensor input is always present."""
    if not inputs or inputs[0] is None:
        return const(np.array(False))
    return lookup_frontend("OptionalHasElement", ctx.opset)(bb, inputs, attrs, ctx)


@converter("", "Split")
def split(bb, inputs, attrs, ctx):
    """Split; sizes given as a constant `split` input (or attribute before opset 13) that hold a 0 become one
    strided slice per output (TVM's split needs strictly increasing split points), others go to the frontend."""
    if _run_time(1)(inputs, attrs):
        raise UnsupportedError("Split with split sizes computed at run time is not supported by the TVM back end")
    sizes = (constant_value(inputs[1]) if len(inputs) > 1 and inputs[1] is not None
             else np.asarray(attrs["split"]) if "split" in attrs else None)
    if sizes is None or not (sizes == 0).any():
        return lookup_frontend("Split", ctx.opset)(bb, inputs, attrs, ctx)
    x = inputs[0]
    axis = int(attrs.get("axis", 0)) % x.ty.ndim
    bounds = np.concatenate([[0], np.cumsum(sizes.reshape(-1))]).tolist()
    return relax.Tuple([bb.normalize(relax.op.strided_slice(x, [axis], [begin], [end], assume_inbound=True))
                        for begin, end in zip(bounds[:-1], bounds[1:], strict=True)])


def _diagonal_offset(bb, rows, cols) -> relax.Expr:
    """int64 [rows, cols]: column index minus row index (which diagonal each element is on)."""
    r = bb.normalize(relax.op.reshape(bb.normalize(relax.op.arange(0, rows, dtype="int64")), [-1, 1]))
    c = bb.normalize(relax.op.reshape(bb.normalize(relax.op.arange(0, cols, dtype="int64")), [1, -1]))
    return bb.normalize(relax.op.subtract(c, r))


@converter("", "EyeLike")
def eye_like(bb, inputs, attrs, ctx):
    """Ones on the k-th diagonal of a 2-D tensor shaped like the input, zeros elsewhere (ONNX EyeLike-9), in the
    `dtype` attribute's type (default: the input's); the frontend rejected a dtype differing from the input's."""
    from tvm.relax.frontend.onnx.onnx_frontend import get_type

    x = inputs[0]
    if x.ty.ndim != 2 or x.ty.shape is None:
        raise UnsupportedError("EyeLike of an input that is not 2-D with a known shape")
    rows, cols = x.ty.shape.values
    dtype = get_type(int(attrs["dtype"])) if "dtype" in attrs else dtype_of(x)
    offset = _diagonal_offset(bb, rows, cols)
    on_diagonal = bb.normalize(relax.op.equal(offset, const(int(attrs.get("k", 0)), "int64")))
    return relax.op.astype(on_diagonal, dtype)


@converter("", "Trilu")
def trilu(bb, inputs, attrs, ctx):
    """Trilu: a constant k goes to the frontend (relax triu/tril); a run-time k (0-d int64) keeps the elements
    whose column - row is >= k (upper) or <= k (lower), as a mask over the last two axes."""
    k = None if len(inputs) < 2 or inputs[1] is None else constant_value(inputs[1])
    if k is not None or len(inputs) < 2 or inputs[1] is None:
        if k is not None:  # TVM's triu / tril take k as an int32 literal: clamped, past the matrix either way
            inputs = [inputs[0], const(np.clip(k, -_INT32_MAX, _INT32_MAX).astype(k.dtype))]
        return lookup_frontend("Trilu", ctx.opset)(bb, inputs, attrs, ctx)
    x = inputs[0]
    if x.ty.shape is None or x.ty.ndim < 2:
        raise UnsupportedError("Trilu of an input of unknown shape or rank below 2")
    rows, cols = x.ty.shape.values[-2:]
    offset = _diagonal_offset(bb, rows, cols)
    k = bb.normalize(relax.op.astype(inputs[1], "int64"))
    keep = relax.op.greater_equal(offset, k) if attrs.get("upper", 1) else relax.op.less_equal(offset, k)
    return relax.op.where(bb.normalize(keep), x, relax.op.zeros_like(x))
