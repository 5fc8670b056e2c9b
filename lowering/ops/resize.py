"""Resize (opset 10 to 19) and Upsample, through TVM's image resize ops with the output size computed here.

TVM's resize maps an output coordinate to the input by the size ratio in / out; ONNX maps by 1 / scale when
`scales` is given (by in / out when `sizes` is). The two agree exactly when out = in * scale, so a size that
floor() would round is refused. On a symbolic dim a scale of 1 (or any whole number) is exact: out = in * scale.
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
from tvm import relax, topi

from ..broadcast import dims_equal
from ..converters import constant_value, converter, dims_of, refuse

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


def _emit(bb, x, sizes: list, roi: list[float], sampling: _Sampling):
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
