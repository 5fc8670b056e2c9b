"""Intel AMX (Advanced Matrix Extensions) for optc's int8 kernels: the tile tensor intrinsic and the process
permission the tile registers need.

An AMX core has eight tile registers of up to 16 rows x 64 bytes and a tile configuration (palette 1: for each
tile its rows and bytes per row) loaded with ``ldtilecfg``. ``tdpbusd`` / ``tdpbssd`` multiply a uint8 / int8
tile A (rows x 4K bytes) by an int8 tile B in the "VNNI" layout (K rows of 4 bytes x N int32 columns: B[k // 4, n,
k % 4]) and add the exact int32 sums into tile C (rows x N int32): ``C[m, n] += sum_k A[m, k] * B[k // 4, n, k %
4]`` (Intel SDM, "Intel AMX Instruction Set Reference", TDPBUSD/TDPBSSD: products summed in int32 without
intermediate saturation). TVM 0.27 has no AMX intrinsic; the kernel calls LLVM's tile intrinsics
(``llvm.x86.ldtilecfg``, ``tileloadd64``, ``tdpbusd``, ``tilestored64``: tile numbers are immediates) through
``T.call_llvm_intrin``, with the 64-byte configuration built on the stack (TVM-NOTES "Reduced precision on x86").

Linux gives a process the tile data state only on request: ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``
(Documentation/arch/x86/xstate.rst); without it the first tile instruction raises SIGILL. The permission is
inherited by ``fork`` and lost on ``exec``, so every process that runs an AMX kernel asks first
(``request_permission``: optc.runtime.load, in-process builds' checks, MetaSchedule's runner workers, RPC servers).
"""

from __future__ import annotations

import ctypes
import functools
import re

from tvm import s_tir
from tvm.script import tirx as T

from .targets import host_cpu_flags

#: LLVM features an AMX int8 kernel needs in its target
FEATURES = ("amx-tile", "amx-int8")
#: tile registers: C tiles 0..3, A tiles 4..5, B tiles 6..7
_C0, _A0, _B0 = 0, 4, 6
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
_NAME = re.compile(r"optc_amx_(uint8|int8)_r(\d+)_m(\d)_n(\d)_k(\d+)x(\d+)")


@functools.cache
def request_permission() -> bool:
    """Ask Linux for this process's AMX tile state (once per process); True when granted. False (nothing asked)
    on a CPU without ``amx_tile`` in /proc/cpuinfo or outside x86-64 Linux."""
    import platform  # noqa: PLC0415

    if "amx_tile" not in host_cpu_flags() or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def intrin_name(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int) -> str:
    return f"optc_amx_{a_dtype}_r{rows}_m{m_tiles}_n{n_tiles}_k{k_step}x{k_steps}"


def _make_intrin(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int):
    """(desc, impl) of ``C[i, j] += sum_k int32(A[i, k]) * int32(B[k // 4, j, k % 4])`` for i < rows * m_tiles,
    j < 16 * n_tiles, k < k_step * k_steps: m_tiles x n_tiles C tiles of rows x 16 int32, A and C with any row
    stride, B the packed weight panel (contiguous, 16 * n_tiles x 4 bytes per row)."""
    um, panel, kc = rows * m_tiles, 16 * n_tiles, k_step * k_steps
    dot = "llvm.x86.tdpbusd" if a_dtype == "uint8" else "llvm.x86.tdpbssd"
    b_stride = panel * 4  # bytes per row of the packed panel

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (um, kc), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kc // 4, panel, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (um, panel), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:um, 0:kc], B[0:kc // 4, 0:panel, 0:4])
            T.writes(C[0:um, 0:panel])
            for i, j, k in T.grid(um, panel, kc):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vk // 4, vj, vk % 4])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (um, kc), a_dtype, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (kc // 4, panel, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (um, panel), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:um, 0:kc], B[0:kc // 4, 0:panel, 0:4])
            T.writes(C[0:um, 0:panel])
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in T.serial(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1; bytes 16 + 2t: tile t's bytes per row (uint16), 48 + t: its rows
            for t in T.serial(m_tiles * n_tiles):
                cfg[16 + 2 * (_C0 + t)] = T.uint8(64)
                cfg[48 + _C0 + t] = T.uint8(rows)
            for t in T.serial(m_tiles):
                cfg[16 + 2 * (_A0 + t)] = T.uint8(k_step)
                cfg[48 + _A0 + t] = T.uint8(rows)
            for t in T.serial(n_tiles):
                cfg[16 + 2 * (_B0 + t)] = T.uint8(64)
                cfg[48 + _B0 + t] = T.uint8(k_step // 4)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r")))
            for mi in T.unroll(m_tiles):
                for nj in T.unroll(n_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_C0 + mi * n_tiles + nj),
                        C.access_ptr("r", offset=mi * rows * sc + nj * 16), T.int64(sc * 4)))
            for ks in T.serial(k_steps):
                for mi in T.unroll(m_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_A0 + mi),
                        A.access_ptr("r", offset=mi * rows * sa + ks * k_step), T.int64(sa)))
                for nj in T.unroll(n_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_B0 + nj),
                        B.access_ptr("r", offset=ks * (k_step // 4) * b_stride + nj * 64), T.int64(b_stride)))
                for mi in T.unroll(m_tiles):
                    for nj in T.unroll(n_tiles):
                        T.evaluate(T.call_llvm_intrin("void", dot, T.uint8(_C0 + mi * n_tiles + nj),
                                                      T.uint8(_A0 + mi), T.uint8(_B0 + nj)))
            for mi in T.unroll(m_tiles):
                for nj in T.unroll(n_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tilestored64", T.uint8(_C0 + mi * n_tiles + nj),
                        C.access_ptr("w", offset=mi * rows * sc + nj * 16), T.int64(sc * 4)))

    return desc, impl


@functools.cache
def register_intrin(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int) -> str:
    """Register (once per process) the AMX tensor intrinsic of these tile parameters; returns its name."""
    if a_dtype not in ("uint8", "int8") or not (1 <= rows <= 16 and m_tiles in (1, 2) and n_tiles in (1, 2)
                                                 and 4 <= k_step <= 64 and k_step % 4 == 0 and k_steps >= 1):
        raise ValueError(f"no AMX tile intrinsic for {a_dtype}, {rows} rows, {m_tiles}x{n_tiles} tiles, "
                         f"k {k_step}x{k_steps}")
    name = intrin_name(a_dtype, rows, m_tiles, n_tiles, k_step, k_steps)
    s_tir.TensorIntrin.register(name, *_make_intrin(a_dtype, rows, m_tiles, n_tiles, k_step, k_steps),
                                override=True)
    return name


def register_named(text: str) -> list[str]:
    """Register every AMX intrinsic whose name occurs in ``text`` (a tuning database's records name the ones its
    schedules tensorize with; MetaSchedule refuses to load a record naming an unregistered intrinsic)."""
    found = {m.groups() for m in _NAME.finditer(text)}
    return [register_intrin(a, *(int(v) for v in rest)) for a, *rest in sorted(found)]
