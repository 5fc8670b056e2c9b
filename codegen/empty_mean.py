"""Mean and variance over a static empty set of elements become NaN (0 / 0, numpy's mean of no elements).

TVM's legalization divides the sum by the element count as a constant, and its TE division by a constant 0 fails the
build ("Divide by zero"): InstanceNormalization of a [1, 3, 0, 2] tensor (whose result onnxruntime gives, empty) did
not compile. A Relax rewrite before any legalization (constant folding legalizes too); other shapes are kept.
"""

from __future__ import annotations

from functools import lru_cache

MEAN_OPS = ("relax.mean", "relax.variance")


def empty_means_as_nan():
    """A module pass: each `R.mean` / `R.variance` (float16/32/64) over axes of which one has a static extent of 0
    becomes NaN of its result's shape (a constant; a scalar broadcast where that shape is symbolic)."""
    from .relax_rewrite import function_pass  # noqa: PLC0415

    return function_pass("optc_empty_means_as_nan", _mutator_class())


def _empty_mean_shape(call) -> list | None:
    """The result shape (ints, or TIR expressions where symbolic) of a float mean / variance over a static empty set
    of elements; else None."""
    import tvm  # noqa: PLC0415
    from tvm import relax, tirx  # noqa: PLC0415

    if not isinstance(call.op, tvm.ir.Op) or call.op.name not in MEAN_OPS:
        return None
    x, out = call.args[0].ty, call.ty
    if not (isinstance(x, relax.TensorType) and isinstance(x.shape, relax.ShapeExpr) and isinstance(out, relax.TensorType)
            and isinstance(out.shape, relax.ShapeExpr) and str(out.dtype) in ("float16", "float32", "float64")):
        return None
    dims = x.shape.values
    axes = [int(a) % len(dims) for a in call.attrs.axis] if call.attrs.axis is not None else range(len(dims))
    if not any(isinstance(dims[a], tirx.IntImm) and int(dims[a]) == 0 for a in axes):
        return None
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in out.shape.values]


@lru_cache(maxsize=1)
def _mutator_class():
    """The PyExprMutator subclass (defined on first use: importing optc does not import TVM)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    from .zero_size import filled  # noqa: PLC0415

    @mutator
    class _EmptyMeans(PyExprMutator):
        def visit_call_(self, op):
            call = super().visit_call_(op)
            shape = _empty_mean_shape(call) if isinstance(call, relax.Call) else None
            if shape is None:
                return call
            return filled(shape, str(call.ty.dtype), float("nan"))

    return _EmptyMeans
