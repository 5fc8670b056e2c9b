"""The lowering op table: one converter per op key `(domain, op_type)`.

Standard ONNX ops reuse the converters of TVM's own ONNX frontend (`_get_convert_map()`, selected by opset).
Ops that optc's rewrites create, or that the frontend lowers wrongly or not at all, register their own
converter with `@converter(domain, op_type)` in a module of `lowering/ops/` (every module there is imported
on first use, so that importing optc does not import TVM). A converter is called as
`fn(bb, inputs, attrs, ctx)`: `inputs` are Relax expressions (None for omitted optional inputs), `attrs` is
the frontend's attribute dict (ints, floats, bytes, tuples, TensorProtos; `attrs["tvm_custom"]` holds the
node's `name` and `num_outputs`), `ctx` the lowering state (`ctx.opset`, `ctx.node`, and the frontend's
`[nodes, params]` pair in `ctx.frontend_params`).

A converter that cannot lower a node raises `UnsupportedError` (through `refuse`) with the reason; the
lowering prefixes the op and node name, so the user sees one line such as
`cannot lower Loop node 'loop_0': Loop is not supported by the TVM back end (a data-dependent trip count)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import UnsupportedError

Converter = Callable[..., Any]

_OPTC_CONVERTERS: dict[tuple[str, str], Converter] = {}


def converter(domain: str, op_type: str) -> Callable[[Converter], Converter]:
    """Register optc's own converter for an op key (takes precedence over TVM's frontend)."""

    def register(fn: Converter) -> Converter:
        _OPTC_CONVERTERS[(domain, op_type)] = fn
        return fn

    return register


#: the PrimFunc attribute with which a converter declares its kernel's fusion pattern (TVM's op_pattern numbers:
#: 0 elementwise, 8 opaque): Relax's AnnotateTIROpPattern recomputes `op_pattern` for every PrimFunc from its body,
#: and `codegen.build`'s fusion passes put the declared one back before FuseOps
DECLARED_OP_PATTERN = "optc.op_pattern"


def declare_op_pattern(func, pattern: int):
    """`func` (a PrimFunc) with its fusion pattern declared (see DECLARED_OP_PATTERN)."""
    return func.with_attr(DECLARED_OP_PATTERN, pattern)


def refuse(reason: str) -> UnsupportedError:
    """The error a converter raises to refuse a node: `raise refuse("with a run-time axis")`."""
    return UnsupportedError(reason)


def node_label(node, op_type: str | None = None) -> str:
    """How a library's run-time error names a node: `Gather node 'name'` (its first output's name when the node
    has none); `op_type`: the op to say, default the node's."""
    name = node.name or next((o.name for o in node.outputs if o is not None), "")
    return f"{op_type or node.op_type} node '{name}'"


def refuse_when(op_type: str, why: str, condition: Callable[[list, dict], Any]) -> None:
    """Lower `op_type` with the frontend, except where `condition(inputs, attrs)` holds: the frontend would
    silently compute something else there, so the node is refused with `why`."""

    @converter("", op_type)
    def guarded(bb, inputs, attrs, ctx):
        if condition(inputs, attrs):
            raise refuse(f"{op_type} {why} is not supported by the TVM back end")
        return lookup_frontend(op_type, ctx.opset)(bb, inputs, attrs, ctx)


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
    fn = _OPTC_CONVERTERS.get(("" if domain == "ai.onnx" else domain, op_type))
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


def dtype_of(expr) -> str:
    """The element type of a Relax tensor expression as a string (`float32`, ...)."""
    return str(expr.ty.dtype.dtype)


def dims_of(expr) -> list | None:
    """The dims of a Relax tensor expression: ints where static, TIR expressions where symbolic; None when its
    shape is unknown (computed from input values)."""
    from tvm import relax

    shape = getattr(expr.ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    return [int(d.value) if hasattr(d, "value") else d for d in shape.values]


def static_dim(x, axis: int, op: str) -> int:
    """x's dim `axis` as an int; refuses (UnsupportedError) when it is symbolic or unknown."""
    dims = dims_of(x)
    if dims is None or not isinstance(dims[axis], int):
        raise refuse(f"{op} along a dimension of unknown size is not supported by the TVM back end")
    return dims[axis]


def const(value, dtype: str | None = None):
    """A Relax constant that keeps the numpy array's dtype and rank exactly (`relax.const` alone narrows
    int64 to int32 and float64 to float32); `dtype` casts first (Python scalars: give it)."""
    from tvm import relax

    arr = np.asarray(value) if dtype is None else np.asarray(value).astype(dtype)
    return relax.const(np.array(arr, order="C", copy=None), str(arr.dtype))


def constant_value(expr) -> np.ndarray | None:
    """The value of a Relax constant as a numpy array, or None when `expr` is not a constant tensor."""
    from tvm.ir.expr import Constant

    value = getattr(expr, "value", None) if isinstance(expr, Constant) else None
    return value.numpy() if hasattr(value, "numpy") else None


@lru_cache(maxsize=1)
def _register_builtin() -> None:
    """Import every module of `lowering/ops/` (each registers its converters)."""
    import importlib
    import pkgutil

    from . import ops

    for info in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{info.name}")
