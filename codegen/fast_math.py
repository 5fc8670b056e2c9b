"""Relax-level rewrites of expensive elementwise math into vectorizable forms (before legalization).

LLVM lowers ``exp``, ``erf`` and ``tanh`` to one scalar libm call per element: in a BERT-like model the
softmax and the Erf of GELU take longer than the matmuls. This pass uses TOPI's polynomial versions,
which vectorize, and keeps IEEE special values:

* ``exp`` and ``softmax`` -> ``topi.fast_exp`` / ``topi.nn.fast_softmax`` (max relative error 2.5e-7
  in the normal range; NaN and +-inf as libm; results below the normal range flush to 0);
* ``tanh`` -> ``topi.fast_tanh`` (max abs error 2.6e-7, NaN kept);
* ``erf`` -> TOPI's fast_erf polynomial (max abs error 2.4e-7) in one elementwise expression, with NaN
  passed through (``topi.fast_erf`` maps NaN to 1);
* ``power(x, 2)`` with a constant exponent -> ``x * x`` (exact: pow(x, 2) is correctly rounded x*x).

Measured on this machine (see SCHEDULES.md): the figures above, from a sweep over [-30, 30] and the
special values, against float64 references.
"""

from __future__ import annotations

import numpy as np

# TOPI's fast_erf coefficients (Eigen): erf(x) ~ x * P(x^2) / Q(x^2) for x clamped to [-4, 4]
_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
              -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
             -1.42647390514189e-02)


def fast_math_pass():
    """The module pass (a function, so that importing optc does not import TVM)."""
    import tvm  # noqa: PLC0415
    from tvm import relax, topi  # noqa: PLC0415
    from tvm.relax import expr_functor  # noqa: PLC0415

    def nan_safe_fast_erf(x):
        """TOPI's fast_erf polynomial (Eigen's rational approximation on [-4, 4]) as elementwise Relax ops,
        which fuse and inline into the producing kernel like erf did, with NaN passed through."""
        op = relax.op

        def f32(value):
            return relax.const(np.float32(value))

        c = op.clip(x, -4.0, 4.0)
        c2 = op.multiply(c, c)
        p, q = f32(_ERF_ALPHA[0]), f32(_ERF_BETA[0])
        for a in _ERF_ALPHA[1:]:
            p = op.add(op.multiply(p, c2), f32(a))
        for b in _ERF_BETA[1:]:
            q = op.add(op.multiply(q, c2), f32(b))
        return op.where(op.isnan(x), x, op.divide(op.multiply(c, p), q))

    def _is_float32(expr) -> bool:
        ty = getattr(expr, "ty", None)
        return isinstance(ty, relax.TensorType) and ty.dtype == "float32"

    def _const_two(expr) -> bool:
        if not isinstance(expr, tvm.ir.expr.Constant):
            return False
        value = getattr(expr, "value", None)
        if not hasattr(value, "numpy"):
            return False
        value = value.numpy()
        return value.size == 1 and float(value.reshape(())) == 2.0 and np.issubdtype(value.dtype, np.floating)

    @expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", None)
            if op is None or not call.args or not _is_float32(call.args[0]):
                return call
            x = call.args[0]
            if op == "relax.nn.softmax":
                return self.builder_.call_te(topi.nn.fast_softmax, x, int(call.attrs.axis))
            if op == "relax.exp":
                return self.builder_.call_te(topi.fast_exp, x)
            if op == "relax.tanh":
                return self.builder_.call_te(topi.fast_tanh, x)
            if op == "relax.erf":
                return nan_safe_fast_erf(x)
            if op == "relax.power" and _const_two(call.args[1]):
                return relax.op.multiply(x, x)
            return call

    @tvm.transform.module_pass(opt_level=0, name="optc_fast_math")
    def _pass(mod, _ctx):
        rewriter = _Rewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass
