"""Quantization arithmetic: integer ranges, scales and zero points, and quantizing arrays as QuantizeLinear does.

Affine quantization (ONNX QuantizeLinear / DequantizeLinear):

    q = saturate(round_half_to_even(x / scale) + zero_point)        x' = (q - zero_point) * scale

with `scale` a positive float32 and `zero_point` of the integer type. Ranges follow onnxruntime's quantizer
(`onnxruntime/quantization/quant_utils.py`, `compute_scale_zp`): the real range is widened to contain 0 (so 0 is
exactly representable: zero padding and Relu stay exact); a symmetric range is [-m, m] with m = max(|min|, |max|);
int8 weights use the restricted range [-127, 127] so that -q never overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptcError

__all__ = ["QParams", "activation_qparams", "dequantize", "integer_range", "quantize", "quantize_bias",
           "quantize_weight"]

_DTYPES = {"uint8": np.uint8, "int8": np.int8}


def integer_range(dtype: str, *, symmetric: bool = False, reduce_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of `dtype` ("uint8" or "int8"). Symmetric int8 is [-127, 127]; `reduce_range` uses 7 bits
    ([0, 127]; [-64, 63], symmetric [-64, 64] as onnxruntime), which avoids the int16 saturation of AVX2's VPMADDUBSW on u8 x s8 products."""
    if dtype not in _DTYPES:
        raise OptcError(f"unsupported quantized type '{dtype}' (use uint8 or int8)")
    if reduce_range:
        if dtype == "uint8":
            return 0, 127
        return (-64, 64) if symmetric else (-64, 63)  # onnxruntime's: 255 x 64 x 2 = 32640 still fits int16
    if dtype == "uint8":
        return 0, 255
    return (-127, 127) if symmetric else (-128, 127)


@dataclass(frozen=True)
class QParams:
    """Scale(s) (float32) and zero point(s) (of `dtype`) of one quantized tensor; per-axis when `axis` is set."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None


def _scale_zp(rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    rmin = np.minimum(np.asarray(rmin, np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, np.float64), 0.0)
    if symmetric:
        m = np.maximum(-rmin, rmax)
        rmin, rmax = -m, m
    span = rmax - rmin
    scale = np.where(span > 0, span / (qmax - qmin), 1.0).astype(np.float32)
    # A range so narrow that the float32 scale underflows to 0 or a subnormal: use 1 (all values quantize to zp).
    scale = np.where(scale >= np.finfo(np.float32).tiny, scale, np.float32(1.0)).astype(np.float32)
    if symmetric:
        zp = np.full(scale.shape, (qmin + qmax + 1) // 2 if qmin == 0 else 0, np.float64)
    else:
        zp = np.clip(np.round(qmin - rmin / scale.astype(np.float64)), qmin, qmax)
    return scale, zp


def activation_qparams(rmin: float, rmax: float, dtype: str, *, symmetric: bool = False,
                       reduce_range: bool = False) -> QParams:
    """Per-tensor parameters for an activation whose calibrated range is [rmin, rmax] (floats, any order of
    magnitude; the range is widened to contain 0). OptcError when the range is not finite."""
    if not (np.isfinite(rmin) and np.isfinite(rmax)):
        raise OptcError(f"the calibrated range [{rmin}, {rmax}] is not finite")
    qmin, qmax = integer_range(dtype, symmetric=symmetric, reduce_range=reduce_range)
    scale, zp = _scale_zp(np.float64(rmin), np.float64(rmax), qmin, qmax, symmetric)
    return QParams(np.asarray(scale, np.float32), np.asarray(zp).astype(_DTYPES[dtype]), dtype)


def _along(s: np.ndarray, z: np.ndarray, ndim: int, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis scale and zero point shaped to broadcast along `axis` of a rank-`ndim` tensor (as they are)."""
    if axis is None or s.ndim != 1:
        return s, z
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape), z.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, dtype: str, axis: int | None = None,
             *, qmin: int | None = None, qmax: int | None = None) -> np.ndarray:
    """QuantizeLinear in numpy: saturate(rint(x / scale) + zero_point), the division in float32 as onnxruntime
    does; `axis`: the axis of x that per-axis `scale`/`zero_point` run along. `qmin`/`qmax` narrow the
    saturation range (restricted int8 [-127, 127]; reduced 7-bit ranges)."""
    info = np.iinfo(_DTYPES[dtype])
    lo = info.min if qmin is None else qmin
    hi = info.max if qmax is None else qmax
    s, z = _along(np.asarray(scale, np.float32), np.asarray(zero_point).astype(np.float64), np.ndim(x), axis)
    with np.errstate(all="ignore"):
        q = np.rint(np.asarray(x, np.float32) / s).astype(np.float64) + z
    return np.clip(np.nan_to_num(q, nan=0.0), lo, hi).astype(_DTYPES[dtype])


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear in numpy: (q - zero_point) * scale in float32."""
    s, z = _along(np.asarray(scale, np.float32), np.asarray(zero_point).astype(np.int32), np.ndim(q), axis)
    return ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)


def quantize_weight(w: np.ndarray, dtype: str = "int8", axis: int | None = None, *, symmetric: bool = True,
                    reduce_range: bool = False) -> tuple[np.ndarray, QParams]:
    """Quantize a constant weight: per-axis along `axis` (one scale per index of that axis, from the min/max of
    the rest), or per-tensor when `axis` is None. Symmetric int8 uses [-127, 127] with zero point 0.
    Returns (q, QParams). The weight's float dtype may be float16/bfloat16/float64: computed in float32."""
    wf = np.asarray(w, np.float32)
    qmin, qmax = integer_range(dtype, symmetric=symmetric, reduce_range=reduce_range)
    if axis is None:
        rmin, rmax = (wf.min(), wf.max()) if wf.size else (0.0, 0.0)
    else:
        moved = np.moveaxis(wf, axis, 0).reshape(wf.shape[axis], -1)
        rmin = moved.min(axis=1) if moved.shape[1] else np.zeros(moved.shape[0])
        rmax = moved.max(axis=1) if moved.shape[1] else np.zeros(moved.shape[0])
    if not (np.isfinite(rmin).all() and np.isfinite(rmax).all()):
        raise OptcError("a weight holds NaN or infinite values; it cannot be quantized")
    scale, zp = _scale_zp(rmin, rmax, qmin, qmax, symmetric)
    zp = zp.astype(_DTYPES[dtype])
    q = quantize(wf, scale, zp, dtype, axis, qmin=qmin, qmax=qmax)
    return q, QParams(np.asarray(scale, np.float32), np.asarray(zp), dtype, axis)


def quantize_bias(b: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale input_scale * weight_scale (float32 product, per output channel) and zero point 0,
    as the integer kernels accumulate it (onnxruntime QLinearConv / QGemm). Returns (q int32, scale float32).
    Values beyond int32 saturate."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    with np.errstate(all="ignore"):
        q = np.rint(np.asarray(b, np.float64) / scale.astype(np.float64))
    q = np.clip(q, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    return q, scale
