"""codegen/ieee_bits.py: isnan / isinf / isfinite as bit tests — exact on every class of value, and vectorized."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from optc.codegen import build, resolve_target
from optc.codegen.ieee_bits import class_tests_on_bits
from tvm import relax, te, tirx


def _specials(dtype: str) -> np.ndarray:
    """Every class: NaNs (quiet, signalling, payloads, negative), +-inf, +-0, subnormals, the largest finite."""
    bits = {"float16": np.uint16, "float32": np.uint32, "float64": np.uint64}[dtype]
    info = np.finfo(dtype)
    n_bits = np.dtype(dtype).itemsize * 8
    inf = np.array(np.inf, dtype).view(bits)
    sign = bits(1) << bits(n_bits - 1)
    raw = [inf | bits(1), inf | bits(2), inf | (inf >> bits(1)), ~bits(0), inf | bits(1) | sign]  # NaNs
    values = np.array(raw, bits).view(dtype)
    finite = np.array([0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal,
                       info.max, -info.max, 1.0, -2.5], dtype)
    return np.concatenate([values, np.array([np.inf, -np.inf], dtype), finite])


def _module(n: int, dtype: str):
    """main(x) = (isnan(x), isinf(x), isfinite(x)) as int8 (relax ops: topi's tirx calls)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n,), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.astype(op(x), "int8"))
                    for op in (relax.op.isnan, relax.op.isinf, relax.op.isfinite)]
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_classes_exact(dtype):
    x = np.tile(_specials(dtype), 7)  # 119 elements: vector body and scalar tail
    vm = relax.VirtualMachine(build(_module(x.size, dtype), None, "cpu"), tvm.cpu())
    got = [o.numpy().astype(bool) for o in vm["main"](tvm.runtime.tensor(x))]
    for out, want in zip(got, (np.isnan(x), np.isinf(x), np.isfinite(x)), strict=True):
        np.testing.assert_array_equal(out, want)


def test_nan_select_vectorizes_without_gathers():
    """The select of a QuantizeLinear (where(isnan(r), 0, r)): contiguous vector loads and stores; with the tirx
    call left in, TVM scalarized the loop and LLVM rebuilt it with vgatherqps / vscatterqps."""
    def nan_to_zero(a):
        return te.compute(a.shape, lambda *i: tirx.Select(tirx.isnan(a(*i)), tirx.const(0, "float32"), a(*i)),
                          name="nz")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 768), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit_te(nan_to_zero, x))
        bb.emit_func_output(gv)
    for mcpu in ("skylake-avx512", "haswell"):
        executable = build(bb.get(), None, resolve_target({"kind": "llvm", "mcpu": mcpu}))
        asm = next(m for m in executable.mod.imports if m.kind == "llvm").inspect_source("asm")
        assert not re.search(r"vgather|vscatter", asm), mcpu


def test_other_calls_and_vectors_untouched():
    """Negative: exp, and an isnan of a vector (none in scheduled kernels, but not a scalar type the rule knows),
    stay as they were; the pass only swaps the three class tests."""
    a = te.placeholder((8,), "float32", name="a")
    f = te.create_prim_func([a, te.compute(a.shape, lambda i: tirx.exp(a(i)), name="e")])
    mod = tvm.IRModule({"main": f})
    out = class_tests_on_bits()(mod)
    assert tvm_ffi.structural_equal(out["main"], f)
    g = te.create_prim_func([a, te.compute(a.shape, lambda i: tirx.isnan(a(i)).astype("float32"), name="n")])
    text = str(class_tests_on_bits()(tvm.IRModule({"main": g}))["main"])
    assert "isnan" not in text and 'T.reinterpret("uint32"' in text
