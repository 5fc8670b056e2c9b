"""``tirx.noalias`` on the Relax VM's shape functions, so that a library with symbolic shapes keeps its kernels'
register tiles.

`relax.transform.VMShapeLower` writes a ``shape_func`` PrimFunc (the symbolic shapes' arithmetic on the VM's
shape heap) without the ``tirx.noalias`` attribute that every legalized kernel has. With TVM 0.27's LLVM
codegen, one such function in a module costs every kernel of the library its ``noalias`` parameters: no kernel
gets its ``<name>_compute_`` function, the compute is inlined into the packed wrapper without aliasing facts, and
LLVM stores a matmul's accumulator registers back to memory after every multiply-add. Measured (AMD EPYC Zen 5,
one thread): the digits CNN's 32 x 512 x 64 matmul kernel, the same TIR in both libraries, 9.3 us in a library
with static shapes and 28 us in one with a symbolic batch (its static batch-32 entry's copy too); 9.4 us with
this pass.

A PrimFunc whose only pointer parameter is one buffer (the shape heap) has nothing its buffer could alias, so
the attribute states a fact; functions with more buffers are left as they are.
"""

from __future__ import annotations


def single_buffer_noalias():
    """A module pass: ``tirx.noalias`` = True on each PrimFunc that lacks it and has at most one parameter."""
    import tvm  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_single_buffer_noalias")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and len(func.params) <= 1 \
                    and not (func.attrs and "tirx.noalias" in func.attrs):
                mod[gv] = func.with_attr("tirx.noalias", True)
        return mod

    return _pass
