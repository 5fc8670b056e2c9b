"""Resize (opset 10 to 19) and Upsample, through TVM's image resize ops with the output size computed here.

Nearest mode is a gather computed here, by the spec's coordinate formulas in float32 as onnxruntime computes them
(x_original = (x_resized + 0.5) / scale - 0.5 for half_pixel, with scale = output / input or the given `scales`):
TVM's resize computes (x_resized + 0.5) * (input / output) - 0.5, which misses a tie (1.5000001 for row 3 of
4 -> 7 rows) and so the source row. Linear and cubic modes go through TVM's resize, which maps an
output coordinate to the input by the size ratio in / out; ONNX maps by 1 / scale when `scales` is given (by
in / out when `sizes` is). The two agree when out = in * scale, so a size that floor() would round is refused.
With align_corners, an axis resized to length 1 reads the input's first element (x_original = 0; TVM would
divide by output - 1 = 0), a symbolic one too. On a symbolic dim a scale of 1 (or any whole number) is exact: out = in * scale.
Only the spatial dims are resized (TVM cannot resize the batch or channel axis); a scale or size that would
change those is refused. Resize-10 and Upsample have neither roi nor a coordinate mode: they map asymmetrically
(x / scale) and, in nearest mode, floor the coordinate when upsampling and ceil it when downsampling, as
onnxruntime does (a mix of the two along different axes is refused).

Semantics: the ONNX operator specs; onnxruntime's upsamplebase.h for Resize-10 and Upsample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax, te, tirx, topi

from ..broadcast import dims_equal
from ..converters import const, constant_value, converter, dims_of, refuse

_MODES = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}
_COORDINATE_MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel", "tf_crop_and_resize")


@dataclass
class _Sampling:
    """How output coordinates are mapped and sampled (the keyword arguments of TVM's resize ops)."""

    method: str
    coordinate_transformation_mode: str
    rounding_method: str
    cubic_alpha: float = -0.75
    cubic_exclude: int = 0
    extrapolation_value: float = 0.0


def _text(attrs: dict, name: str, default: str) -> str:
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _mode(attrs: dict, op: str) -> str:
    mode = _text(attrs, "mode", "nearest")
    if mode == "bilinear":  # Upsample-7's name for it
        mode = "linear"
    if mode not in _MODES:
        raise refuse(f"{op} in mode '{mode}' is not supported by the TVM back end")
    return _MODES[mode]


def _asymmetric_sampling(attrs: dict, scales: np.ndarray, op: str) -> _Sampling:
    """Resize-10 / Upsample: x / scale; nearest floors when upsampling, ceils when downsampling."""
    method = _mode(attrs, op)
    spatial = scales[2:]
    rounding = "floor" if (spatial >= 1).all() else "ceil" if (spatial <= 1).all() else None
    if rounding is None and method == "nearest_neighbor":
        raise refuse(f"{op} in nearest mode that upsamples one axis and downsamples another (scales "
                     f"{scales.tolist()}) is not supported by the TVM back end")
    return _Sampling(method, "asymmetric", rounding or "floor")


def _sampling(attrs: dict) -> _Sampling:
    """Resize-11 and later: the node's attributes."""
    coordinate_mode = _text(attrs, "coordinate_transformation_mode", "half_pixel")
    if coordinate_mode not in _COORDINATE_MODES:
        raise refuse(f"Resize with coordinate_transformation_mode '{coordinate_mode}' is not supported by the TVM "
                     "back end")
    return _Sampling(_mode(attrs, "Resize"), coordinate_mode, _text(attrs, "nearest_mode", "round_prefer_floor"),
                     attrs.get("cubic_coeff_a", -0.75), attrs.get("exclude_outside", 0),
                     attrs.get("extrapolation_value", 0.0))


def _refuse_unsupported_attributes(attrs: dict) -> None:
    """TVM's resize has no antialias (wrong values when downsampling), axes or keep_aspect_ratio_policy."""
    why = ("with antialias=1" if attrs.get("antialias", 0)
           else "with the axes attribute" if "axes" in attrs
           else "with a keep_aspect_ratio_policy" if _text(attrs, "keep_aspect_ratio_policy", "stretch") != "stretch"
           else None)
    if why:
        raise refuse(f"Resize {why} is not supported by the TVM back end")


def _input(inputs, i: int):
    """Optional input i, None when omitted or empty (the spec allows an empty roi or scales)."""
    x = inputs[i] if len(inputs) > i else None
    if x is None:
        return None
    value = constant_value(x)
    return None if value is not None and value.size == 0 else x


def _constant(x, what: str, op: str) -> np.ndarray | None:
    if x is None:
        return None
    value = constant_value(x)
    if value is None:
        raise refuse(f"{op} with {what} computed at run time is not supported by the TVM back end")
    return value.reshape(-1)


def _sizes(x, ctx) -> list | None:
    """The `sizes` input as dims (ints, or TIR expressions where lowering evaluated a shape computation)."""
    if x is None:
        return None
    value = constant_value(x)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    shape_value = ctx.shapes.values.get(ctx.node.inputs[3])
    if shape_value is None:
        raise refuse("Resize with sizes computed at run time is not supported by the TVM back end")
    return list(shape_value.dims)


def _scaled(dim, scale: float, op: str):
    """floor(dim * scale), refused where it is rounded (or could be, on a symbolic dim)."""
    if scale == 1.0:
        return dim
    if isinstance(dim, int):
        size = math.floor(dim * scale)
        if size != dim * scale:
            raise refuse(f"{op} with scales whose output size is rounded ({dim} * {scale}; TVM maps coordinates by "
                         "the size ratio, ONNX by 1/scale) is not supported by the TVM back end")
        return size
    if scale.is_integer():
        return dim * int(scale)
    raise refuse(f"{op} with the fractional scale {scale} on the symbolic dim {dim} (its output size may be "
                 "rounded) is not supported by the TVM back end (fix the input shapes: --input-shape)")


def _output_dims(x, scales: np.ndarray | None, sizes: list | None, op: str) -> list:
    """The output's spatial dims; refuses a size or scale that changes the batch or channel axis."""
    dims = dims_of(x)
    if dims is None or len(dims) not in (3, 4, 5):
        rank = "unknown" if dims is None else f"rank-{len(dims)}"
        raise refuse(f"{op} of a {rank} input (only 1-D, 2-D and 3-D images) is not supported by the TVM back end")
    given = scales if sizes is None else sizes
    if given is None or len(given) != len(dims):
        raise refuse(f"{op} needs {len(dims)} scales or sizes, one per axis of its input")
    out = sizes if scales is None else [_scaled(d, float(s), op) for d, s in zip(dims, scales.tolist(), strict=True)]
    for axis in (0, 1):
        if not dims_equal(out[axis], dims[axis]):
            hint = "" if isinstance(dims[axis], int) else " (fix the input shapes: --input-shape)"
            raise refuse(f"{op} of axis {axis} ({dims[axis]} -> {out[axis]}; only the spatial axes) is not "
                         f"supported by the TVM back end{hint}")
    return out[2:]


def _spatial_roi(roi: np.ndarray | None, rank: int) -> list[float]:
    """The roi's starts and ends of the spatial axes (all zeros without one)."""
    if roi is None:
        return [0.0] * (2 * (rank - 2))
    values = roi.tolist()
    if len(values) == 2 * rank:
        return values[2:rank] + values[rank + 2:]
    return values


def _f32(value) -> tirx.PrimExpr:
    """A dim (int or TIR expression) or a float as a float32 TIR value."""
    return tirx.const(value, "float32") if isinstance(value, int | float) else value.astype("float32")


def _original_coordinate(x_resized: tirx.PrimExpr, length_resized, length_original, roi_start: float,
                         roi_end: float, mode: str) -> tirx.PrimExpr:
    """x_original of output index `x_resized` along one axis, by the ONNX Resize spec's formulas in float32, in
    onnxruntime's order of operations (upsamplebase.h, GetOriginalCoordinateFromResizedCoordinate), with
    scale = length_resized / length_original (a given `scales` value equals it exactly: _scaled refuses others):

        half_pixel:          (x_resized + 0.5) / scale - 0.5
        pytorch_half_pixel:  length_resized > 1 ? (x_resized + 0.5) / scale - 0.5 : 0
        align_corners:       length_resized == 1 ? 0 : x_resized * (length_original - 1) / (length_resized - 1)
        asymmetric:          x_resized * (length_original / length_resized)
        tf_crop_and_resize:  length_resized > 1 ? start * (length_original - 1)
                                 + x_resized * (end - start) * (length_original - 1) / (length_resized - 1)
                             : 0.5 * (start + end) * (length_original - 1)
                             (end - start and start + end in float32, the rest in float64, then float32)

    asymmetric multiplies by the inverse ratio: onnxruntime's x_resized / scale lands on the exact tie there
    (7 -> 4: 2 / (4 / 7) = 3.5, where a float32 division gives 3.4999998), and so does this product.
    """
    x = x_resized.astype("float32")
    more_than_one = length_resized > 1
    if mode == "asymmetric":
        return x * te.div(_f32(length_original), _f32(length_resized))
    if mode in ("half_pixel", "pytorch_half_pixel"):
        scale = te.div(_f32(length_resized), _f32(length_original))
        half = tirx.const(0.5, "float32")
        coordinate = te.div(x + half, scale) - half
        return coordinate if mode == "half_pixel" else te.if_then_else(more_than_one, coordinate, _f32(0.0))
    original_last = _f32(length_original - 1)
    # max(.., 1): the branch not taken must still build (a constant division by zero fails the build)
    resized_last = _f32(te.max(length_resized - 1, 1) if not isinstance(length_resized, int)
                        else max(length_resized - 1, 1))
    if mode == "align_corners":
        return te.if_then_else(more_than_one, te.div(x * original_last, resized_last), _f32(0.0))
    start, end = np.float32(roi_start), np.float32(roi_end)
    last = (length_original - 1).astype("float64")
    spread = (tirx.const(float(start), "float64") * last
              + te.div(x_resized.astype("float64") * tirx.const(float(end - start), "float64") * last,
                       resized_last.astype("float64")))
    center = tirx.const(0.5 * float(start + end), "float64") * last
    return te.if_then_else(more_than_one, spread, center).astype("float32")


def _nearest_index(coordinate: tirx.PrimExpr, nearest_mode: str) -> tirx.PrimExpr:
    """The input index nearest to x_original by the spec's nearest_mode (round_prefer_floor: a tie x.5 rounds
    down; round_prefer_ceil: up), as int64 before clamping."""
    if nearest_mode == "ceil":
        return te.ceil(coordinate).astype("int64")
    below = te.floor(coordinate)
    if nearest_mode == "floor":
        return below.astype("int64")
    fraction = coordinate - below  # exact in float32
    half = tirx.const(0.5, "float32")
    up = fraction > half if nearest_mode == "round_prefer_floor" else fraction >= half
    return below.astype("int64") + up.astype("int64")


def _source_table(length_original, length_resized, roi_start: float, roi_end: float,
                  sampling: _Sampling) -> te.Tensor:
    """The input index each output index of one axis reads: x_original (_original_coordinate) rounded by
    nearest_mode and clamped to the input; with tf_crop_and_resize, -1 where x_original is outside
    [0, length_original - 1] (extrapolation_value there, as onnxruntime does)."""
    mode = sampling.coordinate_transformation_mode

    def source(i: tirx.PrimExpr) -> tirx.PrimExpr:
        coordinate = _original_coordinate(i, length_resized, length_original, roi_start, roi_end, mode)
        index = te.min(te.max(_nearest_index(coordinate, sampling.rounding_method), 0), length_original - 1)
        if mode != "tf_crop_and_resize":
            return index
        outside = tirx.Or(coordinate < _f32(0.0), coordinate > _f32(length_original - 1))
        return te.if_then_else(outside, tirx.const(-1, "int64"), index)

    return te.compute((length_resized,), source, name="source_index")


def _nearest(bb, x, sizes: list, roi: list[float], sampling: _Sampling):
    """Nearest-mode resize as a gather: out[n, c, i, ..] = x[n, c, source(i), ..] (_source_table per axis)."""
    spatial = len(sizes)
    extrapolate = sampling.coordinate_transformation_mode == "tf_crop_and_resize"

    def compute(data: te.Tensor) -> te.Tensor:
        sources = [_source_table(length_original, length_resized, roi[axis], roi[spatial + axis], sampling)
                   for axis, (length_original, length_resized) in enumerate(zip(data.shape[2:], sizes, strict=True))]

        def element(n: tirx.PrimExpr, c: tirx.PrimExpr, *out: tirx.PrimExpr) -> tirx.PrimExpr:
            indices = [table[i] for table, i in zip(sources, out, strict=True)]
            if not extrapolate:
                return data(n, c, *indices)
            outside = tirx.any(*[i < 0 for i in indices])
            return te.if_then_else(outside, tirx.const(sampling.extrapolation_value, data.dtype),
                                   data(n, c, *[te.max(i, 0) for i in indices]))

        return te.compute((data.shape[0], data.shape[1], *sizes), element, name="resize_nearest")

    return bb.emit_te(compute, x, primfunc_name_hint="resize_nearest")


def _interpolate(bb, x, sizes: list, roi: list[float], sampling: _Sampling):
    """Linear or cubic resize through TVM's resize1d / 2d / 3d."""
    rank = len(sizes) + 2
    options = dict(method=sampling.method, coordinate_transformation_mode=sampling.coordinate_transformation_mode,
                   rounding_method=sampling.rounding_method, cubic_alpha=sampling.cubic_alpha,
                   cubic_exclude=sampling.cubic_exclude, extrapolation_value=sampling.extrapolation_value)
    if rank == 3:
        return bb.emit_te(topi.image.resize1d, x, roi, sizes, "NCW", sampling.method,
                          sampling.coordinate_transformation_mode, sampling.rounding_method, sampling.cubic_alpha,
                          sampling.cubic_exclude, sampling.extrapolation_value)
    if rank == 4:
        return relax.op.image.resize2d(x, relax.ShapeExpr(sizes), roi=roi, layout="NCHW", **options)
    d0, h0, w0, d1, h1, w1 = roi  # TOPI's resize3d takes (start_w, start_h, start_d, end_w, end_h, end_d)
    return relax.op.image.resize3d(x, relax.ShapeExpr(sizes), roi=[w0, h0, d0, w1, h1, d1], layout="NCDHW",
                                   **options)


def _at_least_two(size):
    """max(size, 2) for a symbolic size (as a select: with `tirx.max` the 3-D resize failed to build)."""
    two = tirx.const(2, size.ty.dtype)
    return tirx.Select(size < two, two, size)


#: spatial rank -> TOPI's resize and its layout
_TOPI_RESIZE = {1: (topi.image.resize1d, "NCW"), 2: (topi.image.resize2d, "NCHW"), 3: (topi.image.resize3d, "NCDHW")}


def _interpolate_align_corners(bb, x, sizes: list, sampling: _Sampling):
    """align_corners maps every output index of an axis resized to length 1 to x_original = 0 (the spec's
    x_resized * (length_original - 1) / (length_resized - 1) is taken as 0 there, as onnxruntime does), where
    linear and cubic interpolation read the input's first element exactly: those axes are taken at index 0,
    the others resized, and the length-1 axes put back. An axis of symbolic output length n is resized with the
    coordinates of length max(n, 2) and its first n positions kept: they agree for n >= 2, and for n = 1 the one
    position is x_original = 0 (TVM's formula gave NaN for the whole output at run time)."""
    ones = [axis for axis, size in enumerate(sizes) if isinstance(size, int) and size == 1]
    for axis in reversed(ones):
        x = bb.normalize(relax.op.take(x, const(0, "int64"), axis=2 + axis, mode="clip"))
    rest = [size for axis, size in enumerate(sizes) if axis not in ones]
    roi = _spatial_roi(None, len(rest) + 2)
    if any(not isinstance(size, int) for size in rest):
        coordinate_sizes = [size if isinstance(size, int) else _at_least_two(size) for size in rest]
        resize, layout = _TOPI_RESIZE[len(rest)]
        if len(rest) == 3:  # TOPI's resize3d takes (start_w, start_h, start_d, end_w, end_h, end_d)
            roi = [roi[2], roi[1], roi[0], roi[5], roi[4], roi[3]]

        def compute(data: te.Tensor) -> te.Tensor:
            resized = resize(data, roi, coordinate_sizes, layout, sampling.method,
                             sampling.coordinate_transformation_mode, sampling.rounding_method, sampling.cubic_alpha,
                             sampling.cubic_exclude, sampling.extrapolation_value)
            # the first `rest` positions of each axis (TOPI's resize3d ignores an `output_shape`)
            return te.compute((*data.shape[:2], *rest), resized, name="resize_align_corners")

        x = bb.emit_te(compute, x, primfunc_name_hint="resize_align_corners")
    elif rest:
        x = bb.normalize(_interpolate(bb, x, rest, roi, sampling))
    return relax.op.expand_dims(x, [2 + axis for axis in ones]) if ones else x


#: power-of-two size ratios TVM's nearest resize computes exactly (2^-4 .. 2^4)
_EXACT_RATIO_POWERS = range(5)


def _power_of_two_ratio(length_original, length_resized) -> bool:
    """Whether length_resized / length_original is 2^k (|k| < 5) for every value of the dims (ints or TIR): then
    in / out and out / in are exact in float32, and x * (in / out) equals x / (out / in) (TVM's coordinate and the
    spec's) bit for bit."""
    from tvm import sym

    analyzer = sym.Analyzer()
    for k in _EXACT_RATIO_POWERS:
        for a, b in ((length_original, length_resized), (length_resized, length_original)):
            if isinstance(a, int) and isinstance(b, int):
                if a * 2**k == b:
                    return True
            elif analyzer.can_prove_equal(a * 2**k, b):
                return True
    return False


def _emit(bb, x, sizes: list, roi: list[float], sampling: _Sampling):
    """Resize of x to the spatial `sizes`. Nearest mode is TVM's resize (a Relax op: layout conversion keeps it in
    a CNN's NHWC layout) where its coordinates are the spec's exactly: half_pixel, pytorch_half_pixel or asymmetric
    at power-of-two size ratios (upsampling by 2); else the gather computed here (`_nearest`)."""
    if sampling.method == "nearest_neighbor":
        exact = sampling.coordinate_transformation_mode in ("half_pixel", "pytorch_half_pixel", "asymmetric") \
            and all(_power_of_two_ratio(d, n) for d, n in zip(dims_of(x)[2:], sizes, strict=True))
        return _interpolate(bb, x, sizes, roi, sampling) if exact else _nearest(bb, x, sizes, roi, sampling)
    if sampling.coordinate_transformation_mode == "align_corners":
        return _interpolate_align_corners(bb, x, sizes, sampling)
    return _interpolate(bb, x, sizes, roi, sampling)


def _resize_by_scales(bb, x, scales: np.ndarray, attrs: dict, op: str):
    """Resize-10 / Upsample of x by constant `scales`."""
    sampling = _asymmetric_sampling(attrs, scales, op)
    sizes = _output_dims(x, scales, None, op)
    return _emit(bb, x, sizes, _spatial_roi(None, len(sizes) + 2), sampling)


@converter("", "Resize")
def resize(bb, inputs, attrs, ctx):
    """Resize of a 3-D to 5-D input along its spatial axes, by constant scales or by sizes (constant, or shape
    values lowering evaluated)."""
    x = inputs[0]
    if ctx.opset < 11:
        return _resize_by_scales(bb, x, _constant(inputs[1], "scales", "Resize"), attrs, "Resize")
    _refuse_unsupported_attributes(attrs)
    roi = _constant(_input(inputs, 1), "a roi", "Resize")
    scales = _constant(_input(inputs, 2), "scales", "Resize")
    sizes = _sizes(_input(inputs, 3), ctx)
    if (scales is None) == (sizes is None):
        raise refuse("Resize needs exactly one of scales and sizes")
    dims = _output_dims(x, scales, sizes, "Resize")
    return _emit(bb, x, dims, _spatial_roi(roi, len(dims) + 2), _sampling(attrs))


@converter("", "Upsample")
def upsample(bb, inputs, attrs, ctx):
    """Upsample (deprecated in opset 10): nearest with whole scales repeats each element `scales[axis]` times
    along every axis (any rank, as onnx's reference computes it); otherwise Resize-10's sampling. Scales below 1
    are refused (the spec forbids them)."""
    scales = (np.asarray(attrs["scales"], np.float32) if "scales" in attrs
              else _constant(inputs[1] if len(inputs) > 1 else None, "scales", "Upsample"))
    if scales is None:
        raise refuse("Upsample without scales is not valid ONNX")
    if (scales < 1).any():
        raise refuse(f"Upsample with scales {scales.tolist()} below 1 is not valid ONNX")
    y = inputs[0]
    if _mode(attrs, "Upsample") != "nearest_neighbor" or not np.array_equal(scales, np.floor(scales)):
        return _resize_by_scales(bb, y, scales, attrs, "Upsample")
    for axis, scale in enumerate(scales.astype(np.int64).tolist()):
        if scale != 1:
            y = bb.normalize(relax.op.repeat(y, scale, axis=axis))
    return y
