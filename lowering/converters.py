"""The lowering op table: one converter per op key `(domain, op_type)`.

Standard ONNX ops reuse the converters of TVM's own ONNX frontend (`_get_convert_map()`, selected by opset).
Ops that optc's rewrites create, or that the frontend lacks, register their own converter here with
`@converter(domain, op_type)`. A converter is called as `fn(bb, inputs, attrs, ctx)`: `inputs` are Relax
expressions (None for omitted optional inputs), `attrs` is the frontend's attribute dict (ints, floats, bytes,
tuples, TensorProtos), `ctx` the lowering state (the frontend's `[nodes, params]` pair lives in `ctx.frontend_params`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

Converter = Callable[..., Any]

_OPTC_CONVERTERS: dict[tuple[str, str], Converter] = {}


def converter(domain: str, op_type: str) -> Callable[[Converter], Converter]:
    """Register optc's own converter for an op key (takes precedence over TVM's frontend)."""

    def register(fn: Converter) -> Converter:
        _OPTC_CONVERTERS[(domain, op_type)] = fn
        return fn

    return register


@lru_cache(maxsize=1)
def _frontend_map() -> dict[str, Any]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return _get_convert_map()


def lookup_frontend(op_type: str, opset: int) -> Converter | None:
    """The converter of TVM's ONNX frontend for a default-domain op, or None."""
    cls = _frontend_map().get(op_type)
    if cls is None:
        return None
    impl = cls.get_converter(opset)

    def call_frontend(bb, inputs, attrs, ctx, _impl=impl):
        return _impl(bb, inputs, attrs, ctx.frontend_params)

    return call_frontend


def lookup(domain: str, op_type: str, opset: int) -> Converter | None:
    """The converter for an op, or None when the op cannot be lowered."""
    _register_builtin()
    fn = _OPTC_CONVERTERS.get((domain, op_type))
    if fn is not None:
        return fn
    if domain in ("", "ai.onnx"):
        return lookup_frontend(op_type, opset)
    return None


def is_supported(domain: str, op_type: str, opset: int) -> bool:
    """True if `(domain, op_type)` can be lowered (If is handled by the lowering itself)."""
    if domain in ("", "ai.onnx") and op_type == "If":
        return True
    return lookup(domain, op_type, opset) is not None


@lru_cache(maxsize=1)
def _register_builtin() -> None:
    """optc's converters for ops whose frontend lowering trips TVM's later passes (registered on first use,
    so that importing optc does not import TVM)."""
    from tvm import relax

    @converter("", "Sum")
    def sum_as_adds(bb, inputs, attrs, ctx):
        # The frontend lowers Sum to stack + reduce: a 5-D copy that TVM's ConvertLayout cannot handle.
        acc = inputs[0]
        for x in list(inputs)[1:]:
            acc = bb.normalize(relax.op.add(acc, x))
        return acc

    @converter("", "Dropout")
    def dropout_at_inference(bb, inputs, attrs, ctx):
        # Inference: Dropout is the identity; the frontend's tuple-valued Dropout blocks ConvertLayout.
        x = inputs[0]
        if attrs["tvm_custom"]["num_outputs"] < 2:
            return x
        return relax.Tuple([x, bb.normalize(relax.op.ones_like(x, "bool"))])

    @converter("", "Mod")
    def python_style_float_mod(bb, inputs, attrs, ctx):
        # ONNX Mod(fmod=0) on floats is numpy.mod: the result has the divisor's sign, and x mod ±inf is x
        # (or ±inf). TVM's floor_mod returns NaN for an infinite divisor; build it from the truncated fmod.
        x, y = inputs[0], inputs[1]
        if attrs.get("fmod", 0) or x.ty.dtype not in ("float16", "float32", "float64"):
            return lookup_frontend("Mod", ctx.opset)(bb, inputs, attrs, ctx)
        r = bb.normalize(relax.op.mod(x, y))
        zero = relax.const(0, x.ty.dtype)
        wrong_sign = relax.op.logical_xor(relax.op.less(r, zero), relax.op.less(y, zero))
        fix = bb.normalize(relax.op.logical_and(relax.op.not_equal(r, zero), wrong_sign))
        return relax.op.where(fix, relax.op.add(r, y), r)

    @converter("", "LayerNormalization")
    def layer_norm_with_statistics(bb, inputs, attrs, ctx):
        # The frontend returns placeholder zeros for the Mean and InvStdDev outputs: compute them for real.
        if attrs["tvm_custom"]["num_outputs"] == 1:
            return lookup_frontend("LayerNormalization", ctx.opset)(bb, inputs, attrs, ctx)
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        rank = len(x.ty.shape)
        axis = attrs.get("axis", -1)
        axes = list(range(axis % rank, rank))
        eps = relax.const(attrs.get("epsilon", 1e-5), "float32")
        xf = x if x.ty.dtype == "float32" else bb.normalize(relax.op.astype(x, "float32"))
        mean = bb.normalize(relax.op.mean(xf, axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(xf, mean))
        var = bb.normalize(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
        inv_std = bb.normalize(relax.op.rsqrt(relax.op.add(var, eps)))
        y = relax.op.multiply(relax.op.multiply(centered, inv_std), relax.op.astype(scale, "float32"))
        if bias is not None:
            y = relax.op.add(y, relax.op.astype(bias, "float32"))
        y = bb.normalize(relax.op.astype(y, x.ty.dtype))
        return relax.Tuple([y, mean, inv_std])

