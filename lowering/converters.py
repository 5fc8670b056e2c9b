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


def lookup(domain: str, op_type: str, opset: int) -> Converter | None:
    """The converter for an op, or None when the op cannot be lowered."""
    _register_builtin()
    fn = _OPTC_CONVERTERS.get((domain, op_type))
    if fn is not None:
        return fn
    if domain in ("", "ai.onnx"):
        cls = _frontend_map().get(op_type)
        if cls is not None:
            impl = cls.get_converter(opset)

            def call_frontend(bb, inputs, attrs, ctx, _impl=impl):
                return _impl(bb, inputs, attrs, ctx.frontend_params)

            return call_frontend
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

