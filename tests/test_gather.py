"""codegen/gather.py: vector reads of a lookup table become AVX-512 gathers (16 lanes of 32 bits), on targets
with AVX-512F only, and the reads of a byte result vpermi2b lookups on targets with AVX512-VBMI. The assembly
checks build for a named x86 CPU (any x86 host can); the value checks run this CPU's form (vpermi2b, gathers or the
scalar reads; tests/test_qlookup.py compares every table input against the reference evaluator on whatever CPU runs
it)."""

from __future__ import annotations

import platform

import numpy as np
import optc
import pytest
from optc.codegen.compile import compile_to_file
from optc.codegen.targets import host_cpu_flags

from .test_qlookup import Chain, _all_values, gelu_erf, sigmoid_int8

X86 = platform.machine() in ("x86_64", "AMD64")
GATHERS = ("vpgatherdd", "vgatherdps")


def _asm(model, tmp_path, mcpu: str) -> str:
    out = tmp_path / f"{mcpu}.s"
    compile_to_file(model, out, emit="asm", mcpu=mcpu)
    return out.read_text()


@pytest.mark.skipif(not X86, reason="x86 assembly")
@pytest.mark.parametrize(("build", "x_dtype"), [(gelu_erf, np.uint8), (sigmoid_int8, np.int8)])
def test_table_lookups_are_gathers_on_avx512_only(build, x_dtype, tmp_path):
    """A quantized GELU / sigmoid (one 256-entry table, uint8 or int8 entries held as int32): gathers for an
    AVX-512 CPU, none for an AVX2 one (its 8-lane gathers are not used: the scalar reads stay)."""
    c = Chain(x_dtype)
    model = c.model(build(c))
    assert any(g in _asm(model, tmp_path, "skylake-avx512") for g in GATHERS)
    assert not any(g in _asm(model, tmp_path, "haswell") for g in GATHERS)


@pytest.mark.skipif(not X86, reason="x86 assembly")
@pytest.mark.parametrize(("build", "x_dtype"), [(gelu_erf, np.uint8), (sigmoid_int8, np.int8)])
def test_byte_tables_are_vpermi2b_with_vbmi(build, x_dtype, tmp_path):
    """The same 8-bit results on a CPU with AVX512-VBMI (Ice Lake, Zen 4): two vpermi2b per 16 lanes (the table's
    256 bytes in four registers), no gather; without VBMI (Skylake-X) the gathers above."""
    c = Chain(x_dtype)
    model = c.model(build(c))
    asm = _asm(model, tmp_path, "icelake-server")
    assert ("vpermi2b" in asm or "vpermt2b" in asm) and not any(g in asm for g in GATHERS)
    assert "vpermi2b" not in _asm(model, tmp_path, "skylake-avx512")


def test_the_pass_rewrites_only_vector_reads_of_small_tables():
    """The TIR pass itself: a 16-lane read of a 256-entry table at per-lane indices becomes the gather call; a
    64-lane one four; a 16-lane contiguous read (a ramp), a read of a large buffer and an 8-lane read do not."""
    from optc.codegen.gather import _gather_reads
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def reads(x: T.Buffer((64,), "int32"), table: T.Buffer((256,), "float32"), big: T.Buffer((65536,), "float32"),
              y: T.Buffer((64,), "float32"), z: T.Buffer((64,), "float32"), w: T.Buffer((64,), "float32"),
              v: T.Buffer((64,), "float32"), u: T.Buffer((64,), "float32")):
        y[T.ramp(0, 1, 16)] = table[x[T.ramp(0, 1, 16)]]
        z[T.ramp(0, 1, 16)] = table[T.ramp(0, 1, 16)]
        w[T.ramp(0, 1, 16)] = big[x[T.ramp(0, 1, 16)]]
        v[T.ramp(0, 1, 8)] = table[x[T.ramp(0, 1, 8)]]
        u[T.ramp(0, 1, 64)] = table[x[T.ramp(0, 1, 64)]]

    text = _gather_reads(reads).script()
    assert text.count("llvm.x86.avx512.gather.dps.512") == 1 + 4, text  # 64 lanes: four gathers
    assert "y[0:16] = T.call_llvm_pure_intrin" in text, text


def test_the_pass_reads_byte_tables_with_vpermi2b():
    """With VBMI: `uint8/int8(table[i])` of a 256-entry int32 table at an 8-bit index (int32(x) for uint8 x,
    int32(x) + 128 for int8 x) becomes vpermi2b lookups, 64 lanes four of them; a 16-bit result, a 257-entry
    buffer and an index of 32-bit values keep the gather; without VBMI every read is a gather."""
    from optc.codegen.gather import _gather_reads
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def reads(xu: T.Buffer((64,), "uint8"), xi: T.Buffer((64,), "int8"), x32: T.Buffer((64,), "int32"),
              table: T.Buffer((256,), "int32"), big: T.Buffer((257,), "int32"), yu: T.Buffer((64,), "uint8"),
              yi: T.Buffer((64,), "int8"), y16: T.Buffer((64,), "int16"), yb: T.Buffer((64,), "uint8"),
              y32: T.Buffer((64,), "uint8"), y64: T.Buffer((64,), "uint8")):
        yu[T.ramp(0, 1, 16)] = T.Cast("uint8x16", table[T.Cast("int32x16", xu[T.ramp(0, 1, 16)])])
        yi[T.ramp(0, 1, 16)] = T.Cast("int8x16", table[T.Cast("int32x16", xi[T.ramp(0, 1, 16)])
                                                         + T.Broadcast(128, 16)])
        y16[T.ramp(0, 1, 16)] = T.Cast("int16x16", table[T.Cast("int32x16", xu[T.ramp(0, 1, 16)])])
        yb[T.ramp(0, 1, 16)] = T.Cast("uint8x16", big[T.Cast("int32x16", xu[T.ramp(0, 1, 16)])])
        y32[T.ramp(0, 1, 16)] = T.Cast("uint8x16", table[x32[T.ramp(0, 1, 16)]])
        y64[T.ramp(0, 1, 64)] = T.Cast("uint8x64", table[T.Cast("int32x64", xu[T.ramp(0, 1, 64)])])

    text = _gather_reads(reads, vbmi=True).script()
    assert text.count("llvm.x86.avx512.vpermi2var.qi.512") == 2 * (1 + 1 + 4), text
    assert text.count("llvm.x86.avx512.gather.dpi.512") == 3, text  # y16, yb, y32
    plain = _gather_reads(reads).script()
    assert "vpermi2var" not in plain and plain.count("llvm.x86.avx512.gather.dpi.512") == 5 + 4, plain


@pytest.mark.skipif("avx512f" not in host_cpu_flags(), reason="runs AVX-512 gathers: this CPU has no AVX-512F")
@pytest.mark.parametrize("x_dtype", [np.uint8, np.int8])
def test_gathered_table_values_are_the_tables(x_dtype):
    """Every input value of the table, through this CPU's form (vpermi2b with AVX512-VBMI, else the gathers): the
    same as the unoptimized model."""
    from onnx.reference import ReferenceEvaluator

    c = Chain(x_dtype, shape=(3, 256))
    model = c.model(gelu_erf(c) if x_dtype == np.uint8 else sigmoid_int8(c))
    x = _all_values(x_dtype, c.shape)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(optc.compile(model).run({"x": x})["y"], want)
