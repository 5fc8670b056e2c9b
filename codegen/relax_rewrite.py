"""The driver of optc's Relax-level rewrites: a relax.PyExprMutator run over every Relax function of a module."""

from __future__ import annotations

from collections.abc import Callable


def rewrite_functions(mod, mutator, *, only: Callable | None = None):
    """The module of `mutator` (a relax.PyExprMutator instance made with `mod`) after it has visited every Relax
    function of `mod` for which `only(function)` holds (all when `only` is None); other functions are kept."""
    from tvm import relax  # noqa: PLC0415

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function) and (only is None or only(func)):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def function_pass(name: str, make_mutator: Callable, *, only: Callable | None = None):
    """A module pass called `name` that runs ``rewrite_functions(mod, make_mutator(mod), only=only)``."""
    import tvm  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        return rewrite_functions(mod, make_mutator(mod), only=only)

    return _pass


def call_rewrite_pass(name: str, op_name: str, rewrite: Callable):
    """A module pass called `name` that replaces every call of the relax op `op_name` (``"relax.nn.conv2d"``) by
    ``rewrite(builder, call)`` (its arguments already rewritten; `builder`: the pass's BlockBuilder, to add kernels
    and emit bindings), keeping the call where that returns None."""
    from tvm import relax  # noqa: PLC0415
    from tvm.relax import expr_functor  # noqa: PLC0415

    @expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != op_name:
                return call
            new = rewrite(self.builder_, call)
            return call if new is None else new

    return function_pass(name, _Rewriter)
