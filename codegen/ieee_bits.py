"""IEEE class tests (``isnan``, ``isinf``, ``isfinite``) as integer tests on the bits, so TVM vectorizes them.

TVM 0.27's loop vectorizer has no rule for the ``tirx.isnan`` / ``tirx.isinf`` / ``tirx.isfinite`` calls: a
vectorized loop containing one is scalarized, and LLVM's own loop vectorizer then rebuilds it from the scalar
index arithmetic with gathers and scatters (``vgatherqps`` / ``vscatterqps``). A QuantizeLinear's NaN select on
a [197, 768] tensor took 89 us that way, against 20 us for a multiply of the same tensor. ``x != x`` would be
the usual NaN test, but TVM's simplifier folds it to false.

On the bits (IEEE 754-2019, 3.4: all exponent bits set; a zero trailing significand for infinity), with
``mag = bits(x) & ~sign_bit`` and ``inf = bits(+infinity)``: ``isnan(x) = mag > inf``, ``isinf(x) = mag == inf``,
``isfinite(x) = mag < inf`` — exact for every float16, bfloat16, float32 and float64 value, any NaN payload and
either sign. The comparisons are on unsigned integers of the float's width, which the vectorizer handles.
"""

from __future__ import annotations

#: float dtype -> the bits of +infinity
_INF_BITS = {"float16": 0x7C00, "bfloat16": 0x7F80, "float32": 0x7F800000, "float64": 0x7FF0000000000000}


def _rewrite(func):
    import tvm  # noqa: PLC0415
    import tvm_ffi  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415

    ops = {tvm.ir.Op.get(f"tirx.{name}"): name for name in ("isnan", "isinf", "isfinite")}

    def on_call(call, mutator):
        name = next((n for op, n in ops.items() if call.op.same_as(op)), None)
        if name is None or len(call.args) != 1:
            return mutator.default_mutate(call)
        x = mutator.mutate(call.args[0])
        dtype = str(x.ty.dtype)
        if dtype not in _INF_BITS:  # vectors, other types: left as they are
            return mutator.default_mutate(call)
        bits = tvm.DataType(dtype).bits
        unsigned = f"uint{bits}"
        mag = tirx.reinterpret(unsigned, x) & tirx.const((1 << (bits - 1)) - 1, unsigned)
        inf = tirx.const(_INF_BITS[dtype], unsigned)
        return {"isnan": mag > inf, "isinf": mag == inf, "isfinite": mag < inf}[name]

    return tvm_ffi.structural_mutate(func, ((tvm.ir.Call, on_call),))


def class_tests_on_bits():
    """A module pass rewriting every scalar ``isnan`` / ``isinf`` / ``isfinite`` call of the module's PrimFuncs into
    the bit tests above (run after scheduling, before TVM lowers and vectorizes the kernels)."""
    import tvm  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_class_tests_on_bits")
    def _pass(mod, _ctx):
        updates = {gv: _rewrite(f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
        for gv, f in updates.items():
            mod[gv] = f
        return mod

    return _pass
