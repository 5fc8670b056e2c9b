"""Zero-size tensors: kernels that would compute one are not built, and zero-size constants are allocated when the
library runs instead of being stored in it.

An op or a kernel whose result has a static zero-size shape computes nothing; its result becomes a zero-size constant
(`zero_size_results_as_constants`: before legalization, where TVM's kernels for Resize or InstanceNormalization
divided by the zero extent, and before TVM's RewriteDataflowReshape, whose reshape-pattern test fails on such a
kernel: "Index 1 out of bounds 1" for an Unsqueeze of a float[0] whose input another op also reads). In-place calls
are kept: optc's run-time checks (`lowering.run_checks`) are such calls.

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


def zero_size_results_as_constants(symbolic: bool = False):
    """A module pass: each call of a pure Relax op or of a kernel (`call_tir`, not in place) whose result is one
    tensor of a static shape with a 0 in it becomes a zero-size constant of that shape and dtype (which
    `zero_size_constants_as_allocations` allocates). Run before legalization too: TVM's own kernels for some ops
    (Resize, InstanceNormalization) divide by a zero extent when built. `symbolic` (before legalization only): also a
    result whose other dims are symbolic (a batch N beside the 0), as a scalar zero broadcast to its shape."""
    from .relax_rewrite import function_pass  # noqa: PLC0415

    return function_pass("optc_zero_size_results_as_constants", lambda mod: _results_mutator_class()(mod, symbolic))


def _zero_size_result(call) -> tuple[list, str] | None:
    """(shape, dtype) of a call of a pure Relax op or a `call_tir` whose one tensor result has a static 0 among its
    dims (the others ints, or TIR expressions where symbolic); else None."""
    import numpy as np  # noqa: PLC0415
    import tvm  # noqa: PLC0415
    from tvm import relax, tirx  # noqa: PLC0415

    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name = call.op.name
    if name != "relax.call_tir" and (name.startswith(("relax.call_", "relax.builtin.", "relax.memory.", "relax.vm."))
                                     or not call.op.get_attr("FPurity")):
        return None  # in-place calls (optc's run-time checks), packed functions, allocations, impure ops
    ty = call.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = [int(d) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]
    if not any(isinstance(d, int) and d == 0 for d in dims):
        return None
    try:
        np.dtype(str(ty.dtype))
    except TypeError:  # a dtype numpy cannot hold (bfloat16): the kernel stays
        return None
    return dims, str(ty.dtype)


@lru_cache(maxsize=1)
def _results_mutator_class():
    """The PyExprMutator subclass (defined on first use: importing optc does not import TVM)."""
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    @mutator
    class _ZeroSizeResults(PyExprMutator):
        def __init__(self, mod, symbolic: bool):
            super().__init__(mod)
            self.symbolic = symbolic

        def visit_call_(self, op):
            found = _zero_size_result(op)
            if found is None:
                return super().visit_call_(op)
            shape, dtype = found
            if not self.symbolic and not all(isinstance(d, int) for d in shape):
                return super().visit_call_(op)
            return filled(shape, dtype, 0)

    return _ZeroSizeResults


def filled(shape: list, dtype: str, value: float):
    """A Relax tensor of `shape` (ints, or TIR expressions where symbolic) and `dtype` holding `value` everywhere: a
    constant where the shape is static, else a scalar constant broadcast to it."""
    import numpy as np  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    if all(isinstance(d, int) for d in shape):
        return relax.const(np.full(shape, value, dtype), dtype)
    return relax.op.broadcast_to(relax.const(np.array(value, dtype), dtype), relax.ShapeExpr(shape))


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
