"""Keep the literals INT32_MIN and INT64_MIN away from TVM's simplifier: relax's binary ops legalized without them.

relax legalizes a binary op with a 0-d constant operand by inlining the constant's value into the kernel as a
literal. TVM 0.27's arithmetic simplifier (run as the kernel is created) gets expressions with the most negative
literal of a signed 32- or 64-bit type wrong, because it negates the literal (``-INT32_MIN`` does not exist):
``x == INT32_MIN`` and ``x <= INT32_MIN`` fold to false for an int32 ``x`` (ONNX ``Equal(x, -2147483648)`` was
false for every ``x``), and ``x * INT32_MIN`` aborts the build ("Literal value 2147483648 exceeds range of
int32"). Here such a constant enters the kernel as ``reinterpret(int, uint literal)`` instead — the same bits, a
value the simplifier does not fold (LLVM folds it back to the constant). Every other call keeps relax's
legalization.

Signed overflow itself stays as TVM compiles it (``add nsw``: undefined where onnxruntime wraps around), see the
README's "What the compiled code computes".
"""

from __future__ import annotations

#: relax binary op -> the name of its TOPI function (relax's own legalization, ``legalize_ops/binary.py``)
BINARY_OPS = {
    "relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply", "relax.divide": "divide",
    "relax.floor_divide": "floor_divide", "relax.mod": "mod", "relax.floor_mod": "floor_mod",
    "relax.equal": "equal", "relax.not_equal": "not_equal", "relax.less": "less", "relax.less_equal": "less_equal",
    "relax.greater": "greater", "relax.greater_equal": "greater_equal", "relax.maximum": "maximum",
    "relax.minimum": "minimum", "relax.bitwise_and": "bitwise_and", "relax.bitwise_or": "bitwise_or",
    "relax.bitwise_xor": "bitwise_xor", "relax.left_shift": "left_shift", "relax.right_shift": "right_shift",
}

#: signed dtype -> its width in bits (the types whose most negative literal the simplifier mishandles)
_WIDTHS = {"int32": 32, "int64": 64}


def hidden_most_negative(expr):
    """For a relax 0-d int32/int64 constant holding the type's most negative value, that value as a TIR expression
    the simplifier leaves alone (``reinterpret(int32, uint32(2**31))``); None for anything else."""
    import tvm  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415

    if (not isinstance(expr, tvm.ir.GenericConst) or not isinstance(expr.value, tvm.runtime.Tensor)
            or expr.ty.ndim != 0):
        return None
    dtype = str(expr.ty.dtype.dtype)
    bits = _WIDTHS.get(dtype)
    if bits is None or int(expr.value.numpy()[()]) != -(1 << (bits - 1)):
        return None
    return tirx.reinterpret(dtype, tirx.const(1 << (bits - 1), f"uint{bits}"))


def _legalize(default, te_func):
    def legalize(bb, call):
        hidden = [hidden_most_negative(arg) for arg in call.args]
        if all(h is None for h in hidden):
            return default(bb, call)
        args = [arg if h is None else h for arg, h in zip(call.args, hidden, strict=True)]
        return bb.call_te(te_func, *args)

    return legalize


def legalize_map() -> dict:
    """{op name: legalization} for ``relax.transform.LegalizeOps(customize_legalize_map=...)``."""
    import tvm  # noqa: PLC0415
    from tvm import topi  # noqa: PLC0415

    return {name: _legalize(tvm.ir.Op.get(name).get_attr("FLegalize"), getattr(topi, func))
            for name, func in BINARY_OPS.items()}
