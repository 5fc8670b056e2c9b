"""Intel AMX (Advanced Matrix Extensions) for optc's int8 and bf16 kernels: the tile tensor intrinsics (a matmul
block, and a stride-1 convolution block with its kh x kw window inside) and the process permission the tile
registers need.

An AMX core has eight tile registers of up to 16 rows x 64 bytes and a tile configuration (palette 1: for each
tile its rows and bytes per row) loaded with ``ldtilecfg``. ``tdpbusd`` / ``tdpbssd`` multiply a uint8 / int8
tile A (rows x 4K bytes) by an int8 tile B in the "VNNI" layout (K rows of 4 bytes x N int32 columns: B[k // 4, n,
k % 4]) and add the exact int32 sums into tile C (rows x N int32): ``C[m, n] += sum_k A[m, k] * B[k // 4, n, k %
4]`` (Intel SDM, "Intel AMX Instruction Set Reference", TDPBUSD/TDPBSSD: products summed in int32 without
intermediate saturation); ``tdpbf16ps`` does the same for bfloat16 pairs into float32 (denormals flushed).
TVM 0.27 has no AMX intrinsic; the kernel calls LLVM's tile intrinsics
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
#: the same for a bfloat16 kernel (``tdpbf16ps``)
BF16_FEATURES = ("amx-tile", "amx-bf16")
#: operand dtype -> (weight dtype, accumulator dtype, elements per 4-byte group G, largest k step in elements)
OPERANDS = {"uint8": ("int8", "int32", 4, 64), "int8": ("int8", "int32", 4, 64),
            "bfloat16": ("bfloat16", "float32", 2, 32)}
#: tile registers: C tiles 0..3, A tiles 4..5, B tiles 6..7
_C0, _A0, _B0 = 0, 4, 6
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
_NAME = re.compile(r"optc_amx_(uint8|int8|bfloat16)_r(\d+)_m(\d)_n(\d)_k(\d+)x(\d+)(?:_w(\d+)x(\d+))?")


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


def intrin_name(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int,
                window: tuple[int, int] | None = None) -> str:
    name = f"optc_amx_{a_dtype}_r{rows}_m{m_tiles}_n{n_tiles}_k{k_step}x{k_steps}"
    return name if window is None else f"{name}_w{window[0]}x{window[1]}"


def _tile_macros(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int):
    """The TVMScript macros both intrinsics share: configure the tiles (palette 1; config bytes 16 + 2t: tile t's
    bytes per row as uint16, 48 + t: its rows) and load the C tiles from ``C`` (row stride ``sc`` elements); one
    ``tdp*`` per C tile from the loaded A and B tiles; store the C tiles back."""
    group = OPERANDS[a_dtype][2]
    a_bytes = 4 // group
    dot = {"uint8": "llvm.x86.tdpbusd", "int8": "llvm.x86.tdpbssd", "bfloat16": "llvm.x86.tdpbf16ps"}[a_dtype]

    @T.macro
    def configure_and_load_c(C, sc):
        cfg = T.alloc_buffer((64,), "uint8", scope="local")
        for i in T.serial(64):
            cfg[i] = T.uint8(0)
        cfg[0] = T.uint8(1)
        for t in T.serial(m_tiles * n_tiles):
            cfg[16 + 2 * (_C0 + t)] = T.uint8(64)
            cfg[48 + _C0 + t] = T.uint8(rows)
        for t in T.serial(m_tiles):
            cfg[16 + 2 * (_A0 + t)] = T.uint8(k_step * a_bytes)
            cfg[48 + _A0 + t] = T.uint8(rows)
        for t in T.serial(n_tiles):
            cfg[16 + 2 * (_B0 + t)] = T.uint8(64)
            cfg[48 + _B0 + t] = T.uint8(k_step // group)
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r")))
        for mi in T.unroll(m_tiles):
            for nj in T.unroll(n_tiles):
                T.evaluate(T.call_llvm_intrin(
                    "void", "llvm.x86.tileloadd64", T.uint8(_C0 + mi * n_tiles + nj),
                    T.address_of(C[mi * rows, nj * 16]), T.int64(sc * 4)))

    @T.macro
    def multiply_tiles():
        for mi in T.unroll(m_tiles):
            for nj in T.unroll(n_tiles):
                T.evaluate(T.call_llvm_intrin("void", dot, T.uint8(_C0 + mi * n_tiles + nj),
                                              T.uint8(_A0 + mi), T.uint8(_B0 + nj)))

    @T.macro
    def store_c(C, sc):
        for mi in T.unroll(m_tiles):
            for nj in T.unroll(n_tiles):
                T.evaluate(T.call_llvm_intrin(
                    "void", "llvm.x86.tilestored64", T.uint8(_C0 + mi * n_tiles + nj),
                    T.address_of(C[mi * rows, nj * 16]), T.int64(sc * 4)))

    return configure_and_load_c, multiply_tiles, store_c


def _make_intrin(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int):
    """(desc, impl) of ``C[i, j] += sum_k acc(A[i, k]) * acc(B[k // G, j, k % G])`` for i < rows * m_tiles,
    j < 16 * n_tiles, k < k_step * k_steps (G, acc: ``OPERANDS``; int8: int32 sums, bfloat16: float32):
    m_tiles x n_tiles C tiles of rows x 16 accumulators, A and C with any row stride, B the packed weight panel
    (contiguous, 16 * n_tiles x 4 bytes per row)."""
    um, panel, kc = rows * m_tiles, 16 * n_tiles, k_step * k_steps
    w_dtype, acc, group, _ = OPERANDS[a_dtype]
    b_stride = panel * 4  # bytes (= elements of the packed panel's 4-byte groups x 4) per row
    a_bytes = 4 // group  # bytes per A element
    configure_and_load_c, multiply_tiles, store_c = _tile_macros(a_dtype, rows, m_tiles, n_tiles, k_step)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (um, kc), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kc // group, panel, group), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (um, panel), acc, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:um, 0:kc], B[0:kc // group, 0:panel, 0:group])
            T.writes(C[0:um, 0:panel])
            for i, j, k in T.grid(um, panel, kc):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast(acc, A[vi, vk]) * T.Cast(acc, B[vk // group, vj, vk % group])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (um, kc), a_dtype, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (kc // group, panel, group), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (um, panel), acc, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:um, 0:kc], B[0:kc // group, 0:panel, 0:group])
            T.writes(C[0:um, 0:panel])
            configure_and_load_c(C, sc)
            for ks in T.serial(k_steps):
                for mi in T.unroll(m_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_A0 + mi),
                        T.address_of(A[mi * rows, ks * k_step]), T.int64(sa * a_bytes)))
                for nj in T.unroll(n_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_B0 + nj),
                        T.address_of(B[ks * (k_step // group), nj * 16, 0]), T.int64(b_stride)))
                multiply_tiles()
            store_c(C, sc)

    return desc, impl


def _make_window_intrin(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int,
                        kh: int, kw: int):
    """(desc, impl) of a stride-1 convolution block: ``C[i, j] += sum_{r, s, k} acc(A[r, i + s, k]) *
    acc(B[r, s, k // G, j, k % G])`` for r < kh, s < kw (the window), k < k_step * k_steps (all the input
    channels): the C tiles stay loaded through the whole window (one load and one store per block instead of one
    per window position). A is the padded input from the block's first row (any strides), B the packed weights
    of the panel for every window position (contiguous)."""
    um, panel, kc = rows * m_tiles, 16 * n_tiles, k_step * k_steps
    w_dtype, acc, group, _ = OPERANDS[a_dtype]
    b_stride = panel * 4
    a_bytes = 4 // group
    aw = um + kw - 1
    configure_and_load_c, multiply_tiles, store_c = _tile_macros(a_dtype, rows, m_tiles, n_tiles, k_step)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (kh, aw, kc), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kh, kw, kc // group, panel, group), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (um, panel), acc, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:kh, 0:aw, 0:kc], B[0:kh, 0:kw, 0:kc // group, 0:panel, 0:group])
            T.writes(C[0:um, 0:panel])
            for i, j, r, q, k in T.grid(um, panel, kh, kw, kc):
                with T.sblock("update"):
                    vi, vj, vr, vq, vk = T.axis.remap("SSRRR", [i, j, r, q, k])
                    C[vi, vj] = C[vi, vj] + T.Cast(acc, A[vr, vi + vq, vk]) * T.Cast(
                        acc, B[vr, vq, vk // group, vj, vk % group])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa0 = T.int32()
        sa1 = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (kh, aw, kc), a_dtype, offset_factor=1, strides=[sa0, sa1, 1])
        B = T.match_buffer(b, (kh, kw, kc // group, panel, group), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (um, panel), acc, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:um, 0:panel], A[0:kh, 0:aw, 0:kc], B[0:kh, 0:kw, 0:kc // group, 0:panel, 0:group])
            T.writes(C[0:um, 0:panel])
            configure_and_load_c(C, sc)
            for r, q, ks in T.grid(kh, kw, k_steps):
                for mi in T.unroll(m_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_A0 + mi),
                        T.address_of(A[r, mi * rows + q, ks * k_step]), T.int64(sa1 * a_bytes)))
                for nj in T.unroll(n_tiles):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.uint8(_B0 + nj),
                        T.address_of(B[r, q, ks * (k_step // group), nj * 16, 0]), T.int64(b_stride)))
                multiply_tiles()
            store_c(C, sc)

    return desc, impl


@functools.cache
def register_intrin(a_dtype: str, rows: int, m_tiles: int, n_tiles: int, k_step: int, k_steps: int,
                    kh: int = 0, kw: int = 0) -> str:
    """Register (once per process) the AMX tensor intrinsic of these tile parameters (with a kh x kw window: the
    stride-1 convolution block of ``_make_window_intrin``); returns its name."""
    group, max_step = OPERANDS[a_dtype][2:] if a_dtype in OPERANDS else (0, 0)
    if not group or not (1 <= rows <= 16 and m_tiles in (1, 2) and n_tiles in (1, 2)
                         and group <= k_step <= max_step and k_step % group == 0 and k_steps >= 1):
        raise ValueError(f"no AMX tile intrinsic for {a_dtype}, {rows} rows, {m_tiles}x{n_tiles} tiles, "
                         f"k {k_step}x{k_steps}")
    window = (kh, kw) if kh else None
    name = intrin_name(a_dtype, rows, m_tiles, n_tiles, k_step, k_steps, window)
    make = (functools.partial(_make_window_intrin, kh=kh, kw=kw) if window else _make_intrin)
    s_tir.TensorIntrin.register(name, *make(a_dtype, rows, m_tiles, n_tiles, k_step, k_steps), override=True)
    return name


def register_named(text: str) -> list[str]:
    """Register every AMX intrinsic whose name occurs in ``text`` (a tuning database's records name the ones its
    schedules tensorize with; MetaSchedule refuses to load a record naming an unregistered intrinsic)."""
    found = {tuple(g or "0" for g in m.groups()) for m in _NAME.finditer(text)}
    return [register_intrin(a, *(int(v) for v in rest)) for a, *rest in sorted(found)]
