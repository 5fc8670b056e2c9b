"""Put the constant operand of maximum/minimum first, so that a NaN in the other operand comes through.

TVM's max/min are `a > b ? a : b` / `a < b ? a : b` (and x86's maxps/minps return their second operand when
one is NaN): max(x, 0) turns a NaN x into 0, max(0, x) returns the NaN, and -0.0 as onnxruntime does. The
lowering writes Relu and Clip as maximum/minimum with x first, because TVM's ConvertLayout keeps an NHWC x
in its layout only when it is the first operand; this pass, run after layout conversion, swaps the operands.
"""

from __future__ import annotations


def nan_through_max_min_pass():
    """The module pass (a function, so that importing optc does not import TVM)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.ir.expr import Constant  # noqa: PLC0415
    from tvm.relax import expr_functor  # noqa: PLC0415

    ops = {"relax.maximum": relax.op.maximum, "relax.minimum": relax.op.minimum}

    @expr_functor.mutator
    class _Swap(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            make = ops.get(getattr(call.op, "name", None))
            if make is None or not isinstance(call.args[1], Constant) or isinstance(call.args[0], Constant):
                return call
            return make(call.args[1], call.args[0])

    from .relax_rewrite import function_pass  # noqa: PLC0415

    return function_pass("optc_nan_through_max_min", _Swap)
