"""Corrections to TVM 0.27's operator registry that optc's kernels rely on.

``tirx.nearbyint`` (what ``relax.op.round``, QuantizeLinear's round half to even and every requantize lower to)
is registered without the ``TVectorizable`` attribute that ``tirx.floor``, ``tirx.round`` and the other pure
unary math ops carry, so ``tirx.transform.VectorizeLoop`` scalarizes any vectorized loop whose body rounds to
nearest even; LLVM then rebuilt the loop with gathers and scatters. A QuantizeLinear of a 1x3x224x224 float
image took 127 us instead of 15 (AMD EPYC Zen 4, 1 thread). The vector form is LLVM's ``llvm.nearbyint`` on a
vector (``vrndscaleps`` with the current rounding mode, round half to even), the same operation lane by lane:
bit-identical, NaN, infinities and signed zeros included."""

from __future__ import annotations

#: (op, attribute, value) set once per process when the op lacks the attribute
_CORRECTIONS = (("tirx.nearbyint", "TVectorizable", True),)


def register() -> None:
    """Apply the corrections (idempotent: an attribute the op already has is left alone). Called before every
    build (``build.build``, ``kernel_check``, MetaSchedule's builder processes); importing optc does not import
    TVM (``optc --version`` stays fast)."""
    import tvm  # noqa: PLC0415

    for name, attr, value in _CORRECTIONS:
        if tvm.ir.Op.get(name).get_attr(attr) is None:
            tvm.ir.register_op_attr(name, attr, value)
