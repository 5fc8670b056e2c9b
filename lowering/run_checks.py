"""Run-time checks of what the compiled library cannot compute: the call fails with one line (`CHECK_ERROR`, which
`runtime.Module.run` turns into an OptcError) instead of returning a result of the wrong shape or values.

A check is an in-place call (`call_tir_inplace`, no copy) of a kernel that reads and writes nothing and only asserts
on dims passed as scalars; the tensor it is called on carries the data dependence, so no pass removes it. The
kernel runs on the host on every target (it has no thread binding and touches no memory).
"""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx
from tvm.script import tirx as T

from ..runtime import CHECK_ERROR  # how the message starts when such a check fails the library's call


def fail_if_zero(bb, x, length: Any, unless: Any, name: str, message: str):
    """x (a tensor of any rank and dtype) after a check that fails the call with `message` (one line) when `length`
    is 0 and `unless` is not (int64 dims: TIR expressions or ints). Returns the checked x (the same buffer, no
    copy). `name`: the kernel's name hint."""
    args = [x, relax.prim_value(_int64(length)), relax.prim_value(_int64(unless))]
    check = bb.add_func(_check_kernel(f"{CHECK_ERROR}{message}"), name)
    return bb.emit(relax.call_tir_inplace(check, args, [0], x.ty))


def equal_dim_checked(bb, x, axis: int, want: Any, message: str, name: str):
    """x after a check that fails the call with `message` (one line) unless its dim `axis` equals `want` when it
    runs (an int or a TIR expression of the function's symbols), match-cast to a type with `want` there, so that
    the kernels it feeds see one dim (a matmul's K of two names, a conv input's channels against its weight's).
    x itself where the two are the same expression. `name`: the check kernel's name hint."""
    dims = list(x.ty.shape.values)
    have = dims[axis]
    if isinstance(have, tirx.IntImm) and isinstance(want, int) and int(have) == want:
        return x
    same = tirx.Cast("int64", tirx.EQ(have, _int64(want)))
    x = fail_if_zero(bb, x if isinstance(x, relax.Var) else bb.emit(x), same, 1, name, message)
    dims[axis] = want
    return bb.match_cast(x, relax.TensorType(dims, x.ty.dtype))


def _int64(d: Any):
    return tirx.const(d, "int64") if isinstance(d, int) else d


def _check_kernel(message: str):
    """A PrimFunc `(x, length int64, unless int64) -> x` (in place; x a tensor of any rank and dtype, which it does
    not declare as a buffer) that fails the call with `message` when length is 0 and unless is not; opaque and
    scheduled: no rule or fusion moves the assert."""

    @T.prim_func(private=True, s_tir=True)
    def check(var_x: T.handle, length: T.int64, unless: T.int64):
        T.func_attr({"tirx.noalias": True, "op_pattern": 8, "tirx.is_scheduled": True})
        for i in range(1):  # (one compute block: TVM's layout-rewrite split rejects a kernel without one)
            with T.sblock("check"):
                T.axis.spatial(1, i)
                T.reads()
                T.writes()
                assert length != T.int64(0) or unless == T.int64(0), message
                T.evaluate(0)

    return check
