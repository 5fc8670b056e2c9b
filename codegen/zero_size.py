"""Zero-size constants are allocated when the library runs instead of being stored in it.

TVM 0.27 writes a tensor with a zero in a dim other than the first (float[2, 0], [3, 0], [2, 0, 3]) into the
executable's constant pool in a form its own loader rejects: the library was written, and loading it failed with
"Invalid DLTensor file format". A zero-size tensor has no values to keep, so every zero-size constant of the Relax
functions becomes an allocation of its shape and dtype (`R.builtin.alloc_tensor`), after the last constant folding
of the pipeline and before allocations are lowered.
"""

from __future__ import annotations

from functools import lru_cache


def zero_size_constants_as_allocations():
    """A module pass: each zero-size Relax tensor constant (of any rank and dtype) of every Relax function becomes an
    `R.builtin.alloc_tensor` of the same shape and dtype on device 0; other constants are left as they are."""
    from .relax_rewrite import function_pass  # noqa: PLC0415

    return function_pass("optc_zero_size_constants_as_allocations", _mutator_class(), only=_has_zero_size_constant)


def _is_zero_size(expr) -> bool:
    """A Relax tensor constant (`tvm.ir.expr.GenericConst`, not a PrimExpr immediate) with no elements."""
    from tvm.ir.expr import GenericConst  # noqa: PLC0415

    shape = getattr(expr.value, "shape", None) if isinstance(expr, GenericConst) else None
    return shape is not None and any(int(d) == 0 for d in shape)


def _has_zero_size_constant(func) -> bool:
    from tvm import relax  # noqa: PLC0415

    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(_is_zero_size(e)))
    return any(found)


@lru_cache(maxsize=1)
def _mutator_class():
    """The PyExprMutator subclass (defined on first use: importing optc does not import TVM)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    @mutator
    class _ZeroSizeConstants(PyExprMutator):
        def visit_generic_const_(self, op):
            if not _is_zero_size(op):
                return op
            shape = relax.ShapeExpr([int(d) for d in op.value.shape])
            return self.builder_.emit(relax.op.builtin.alloc_tensor(shape, str(op.value.dtype), 0))

    return _ZeroSizeConstants
