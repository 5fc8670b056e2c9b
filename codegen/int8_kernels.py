"""Integer (8-bit x 8-bit -> int32) reduction kernels on x86 CPUs, and bfloat16 ones on AMX: dot-product tensor
intrinsics and the schedule rule ``Int8Reduction`` that uses them.

Interface: a fused PrimFunc with one reduction block ``C[.., n] += int32(A[.., k]) * int32(B[.., k, n])`` (relax
``matmul(a, w, out_dtype="int32")``, ``conv2d(x, w, out_dtype="int32")`` in NHWC/HWIO after optc's layout pass), A
and B uint8/int8, B a constant weight (``layout_free_buffers``; or an int8 B computed at run time, an activation x
activation matmul, which the kernel packs itself before its tiles: ``_prepack_weight(..., at_run_time=True)``,
register tiles only; its N may be symbolic when provably whole vectors and its K when provably whole groups of 4:
attention's key length, padded at run time by ``lowering/ops/qinteger.py``), followed by injective epilogues (zero-point corrections, the float requantize: multiply,
add, round, clip, cast). Every kernel is exact: the int32 result equals the integer sum (no int16 saturation).

Instruction sets, chosen from the *target's* LLVM features (``targets.llvm_features``; the ``cpu`` preset's
features are this host's, corrected from /proc/cpuinfo) before anything is built, because an intrinsic the target
lacks kills the process inside LLVM (TVM-NOTES "Reduced precision on x86"):

* ``amx``: AMX tiles (``amx.py``: ``tdpbusd`` u8 x s8 / ``tdpbssd`` s8 x s8, blocks of up to 2 x 2 tiles of up
  to 16 rows x 16 int32, the accumulators kept in the tiles through up to 16 k steps of 64 bytes), for blocks of
  at least 4 rows, N a multiple of 16, K of 4, activation rows one stride apart (not a strided conv); the rest of
  the kernels take the next instruction set that fits;
* ``avx512vnni``: ``vpdpbusd`` zmm (u8 x s8, 16 lanes x 4 products), uint8 activations x int8 weights;
* ``avxvnni``: ``vpdpbusd`` ymm (AVX-VNNI, 8 lanes x 4), the same operands;
* ``avx512bw``: ``vpmaddwd`` zmm on operands widened to int16 (16 lanes x 2 products);
* ``avx2``: ``vpmaddwd`` ymm on operands widened to int16 (8 lanes x 2 products);
* ``avx512bw_7bit`` / ``avx2_7bit``: ``vpmaddubsw`` + ``vpmaddwd`` by ones (zmm / ymm; 16 / 8 lanes x 4 products),
  uint8 activations x int8 weights, for constant weights within [-64, 64] only (``WEIGHT_LIMIT``: onnxruntime's
  ``reduce_range``, which ``optc quantize`` uses by default on such CPUs), marked by ``mark_7bit_weights``.

``vpmaddwd`` multiplies int16 pairs and adds each pair into one int32 exactly (|products| <= 2 * 128 * 255), so
the widened path is exact for u8 x s8 and s8 x s8 alike. ``vpmaddubsw`` sums pairs of u8 x s8 products in
*saturating* int16 (TVM's ``dot_16x4_avx512``, onnxruntime's AVX2 u8s8 kernel: 255 x 127 x 2 > 32767), so it is used
only where no pair can saturate: weights within [-64, 64] give |pair| <= 255 x 64 x 2 = 32640 (Intel SDM,
PMADDUBSW), exact, at twice ``vpmaddwd``'s products per instruction with no widening. ``vpdpbusd`` sums four u8 x s8 products
into int32 without intermediate saturation (Intel SDM, VPDPBUSD), so it is exact too; int8 x int8 operands use
the widened path on VNNI machines as well; the AMX instructions sum into int32 without saturation too (Intel
SDM, TDPBUSD). Per kernel, the first instruction set in this order whose lanes and group divide N and K is used
(the ``*_7bit`` ones only where ``mark_7bit_weights`` marked the weight).

bfloat16 x bfloat16 -> float32 kernels (``--precision bf16``, ``precision.py``) take the AMX path (``tdpbf16ps``,
pairs of bf16 per 4-byte group) when the target has AMX-BF16 and the kernel fits a block, else the ``avx512bf16``
register tile (``vdpbf16ps``, ``bf16_dot.py``) when the target has AVX512-BF16; only when the activation is a
kernel parameter (TVM's bf16 legalization stores a kernel's own bf16 buffers, e.g. a padded input, as float32).
Everything else widens to float32 (``schedules.TiledReduction``).

Schedule: the output's last spatial axis (the contiguous output channel, N) is split into SIMD vectors, the one
before it (matmul's rows, the conv output's width: M) into tile rows, the last reduction axis (K: the input
channel / matmul's k) into groups of 2 (vpmaddwd) or 4 (vpdpbusd). Register tile u_m rows x u_n vectors, all reduction loops outside the tile, the tile
computed by the tensor intrinsic (one instruction per row and vector), the weight prepacked at compile time into
``W[n // P, ..., k // G, n % P, k % G]`` (P = tile width, G = group) so each instruction reads G x lanes contiguous
bytes, and the epilogue computed per tile. A constant weight whose N is not whole vectors of the widest instruction
set (24, 40, 1000 output channels) is zero-padded to whole ones in that compile-time copy, the padded products
cropped by the epilogue. Kernels it cannot take (K not a multiple of G, N below one vector and not a multiple of
any, weights computed at run time with such an N, depthwise / grouped convolutions) are left to
``schedules.TiledReduction``, which is exact but slower (int32 multiplies).
"""

from __future__ import annotations

import functools
import math

from tvm import s_tir, tirx
from tvm.error import InternalError
from tvm.script import tirx as T
from tvm.target import Target

from .amx import BF16_FEATURES as AMX_BF16_FEATURES
from .amx import FEATURES as AMX_FEATURES
from .amx import OPERANDS as AMX_OPERANDS
from .amx import register_intrin as amx_register_intrin
from .bf16_dot import FEATURES as BF16_DOT_FEATURES
from .bf16_dot import import_into as bf16_dot_import_into
from .bf16_dot import make_impl as bf16_dot_impl
from .schedules import (
    MAX_TILE_ROWS,
    _block_stmts,
    _buffer_last_index_vars,
    _bytes,
    _divisible,
    _extent,
    _fuse_tiles_parallel,
    _is_padding,
    _layout_free_reads,
    _packing_splits_off,
    _prepack_weight,
    _Rule,
    _symbolic_outermost,
    _vars_in,
    _vector_lanes,
    _vectorize_innermost,
    max_accumulators,
    rows_divide_into_tiles,
    schedule_padding,
    try_inline,
)
from .targets import llvm_features

#: instruction sets in order of preference: name -> (LLVM features the target needs, int32 lanes, group size G,
#: activation dtypes it multiplies exactly with int8 weights)
ISAS = {
    "avx512vnni": (("avx512vnni", "avx512bw"), 16, 4, ("uint8",)),
    "avxvnni": (("avxvnni",), 8, 4, ("uint8",)),
    "avx512bw_7bit": (("avx512bw",), 16, 4, ("uint8",)),
    "avx512bw": (("avx512bw",), 16, 2, ("uint8", "int8")),
    "avx2_7bit": (("avx2",), 8, 4, ("uint8",)),
    "avx2": (("avx2",), 8, 2, ("uint8", "int8")),
    # bfloat16 x bfloat16 -> float32 (``bf16_dot.py``: vdpbf16ps, 16 lanes x 2 products)
    "avx512bf16": (BF16_DOT_FEATURES, 16, 2, ("bfloat16",)),
}
#: the most products one lane of these instructions sums: a symbolic K is scheduled only as a whole number of them
MAX_GROUP = max(group for _, _, group, _ in ISAS.values())

#: vector registers of each register file (ymm on AVX2 / AVX-VNNI, zmm with AVX-512)
_REGISTERS = {"avx512vnni": 32, "avxvnni": 16, "avx512bw_7bit": 32, "avx512bw": 32, "avx2_7bit": 16, "avx2": 16,
              "avx512bf16": 32}
#: instruction sets exact only for constant int8 weights within [-WEIGHT_LIMIT, WEIGHT_LIMIT] (vpmaddubsw pairs)
SEVEN_BIT = ("avx512bw_7bit", "avx2_7bit")
WEIGHT_LIMIT = 64
#: PrimFunc attribute: indices of the params whose every call passes a constant int8 weight within the limit
SEVEN_BIT_ATTR = "optc.int8_weights_7bit"
#: instruction sets that multiply and accumulate in one instruction (the others: multiply-add pairs, then add)
_FUSED = ("avx512vnni", "avxvnni", "avx512bf16")


def int8_isas(target: Target) -> list[str]:
    """The instruction sets of ``ISAS`` that ``target``'s code may use, best first ([] for a non-x86 target).

    Decided from the target's LLVM feature list, never from trying a build (a missing feature aborts LLVM)."""
    if target.kind.name != "llvm":
        return []
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith("x86_64"):
        return []
    feats = set(llvm_features(target))
    amx = ["amx"] if all(f in feats for f in AMX_FEATURES) else []
    return amx + [name for name, (needs, *_rest) in ISAS.items() if all(f in feats for f in needs)]


def _intrin_name(isa: str, a_dtype: str) -> str:
    return f"optc_dot_{isa}_{a_dtype}_{'bfloat16' if isa == 'avx512bf16' else 'int8'}"


def _make_intrin(isa: str, a_dtype: str):
    """(desc, impl) of ``C[i] += sum_k acc(A[k]) * acc(B[i, k])`` for i < lanes, k < G, on ``isa`` (int8 weights
    and int32 sums; bfloat16 weights and float32 sums for ``avx512bf16``)."""
    _, lanes, group, _ = ISAS[isa]
    wide = lanes * group
    w_dtype, acc = ("bfloat16", "float32") if isa == "avx512bf16" else ("int8", "int32")

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, group), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), acc, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast(acc, A[vk]) * T.Cast(acc, B[vi, vk])

    if isa == "avx512bf16":
        return desc, bf16_dot_impl()
    if isa in SEVEN_BIT:  # vpmaddubsw (u8 x s8 pairs into int16, exact for weights within the limit), then vpmaddwd
        # by ones (int16 pairs into int32): 4 products per int32 lane, in vpdpbusd's layout
        pairs = "llvm.x86.avx512.pmaddubs.w.512" if lanes == 16 else "llvm.x86.avx2.pmadd.ub.sw"
        widen = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    f"int32x{lanes}", widen,
                    T.call_llvm_pure_intrin(
                        f"int16x{2 * lanes}", pairs,
                        T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32"), lanes),
                                      dtype=f"int8x{wide}"),
                        B.vload([0, 0], f"int8x{wide}")),
                    T.broadcast(T.int16(1), 2 * lanes))

        return desc, impl
    if group == 4:  # vpdpbusd: the activation's 4 bytes broadcast as one int32, the weights as 64 / 32 bytes
        intrinsic = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                # the 4 activation bytes as one int32, broadcast (an expression: see the vpmaddwd impl below)
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    f"int32x{lanes}", intrinsic, C.vload([0], f"int32x{lanes}"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32"), lanes),
                                  dtype=f"int8x{wide}"),
                    B.vload([0, 0], f"int8x{wide}"))
    else:  # vpmaddwd: both operands widened to int16; the activation pair broadcast as one int32
        intrinsic = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                # the byte pair broadcast as one 16-bit word, then widened (vpbroadcastw + vpmov[sz]xbw); an
                # expression, not a name bound to it: TVMScript makes a name a local buffer, which TVM 0.27 took
                # from the workspace pool by a call per tile
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    f"int32x{lanes}", intrinsic,
                    T.Cast(f"int16x{wide}", T.reinterpret(
                        T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x2"), dtype="uint16"), lanes),
                        dtype=f"{a_dtype}x{wide}")),
                    T.Cast(f"int16x{wide}", B.vload([0, 0], f"int8x{wide}")))

    return desc, impl


@functools.cache
def register_intrin(isa: str, a_dtype: str) -> str:
    """Register (once per process) the tensor intrinsic of ``isa`` for ``a_dtype`` x int8 (x bfloat16 for
    ``avx512bf16``); returns its name."""
    name = _intrin_name(isa, a_dtype)
    s_tir.TensorIntrin.register(name, *_make_intrin(isa, a_dtype), override=True)
    return name


def register_intrinsics() -> list[str]:
    """Register every tensor intrinsic of this module (~0.5 s of TVMScript parsing); returns their names. A
    tuning database holding the schedule of an int8 kernel names them in its traces, and MetaSchedule's
    JSONDatabase refuses to load unless they are registered (``tuning.open_database`` calls this first)."""
    return [register_intrin(isa, a_dtype) for isa, (*_rest, a_dtypes) in ISAS.items() for a_dtype in a_dtypes]


def _amx_tiles(m_ext: int, n_ext: int, k_ext: int, group: int = 4,
               max_step: int = 64) -> tuple[int, int, int, int, int] | None:
    """(rows, m tiles, n tiles, k step, k steps) of an AMX block for an M x N x K reduction, or None when AMX
    does not pay or fit: rows the largest divisor of M up to 16 (at least 4: below that vpdpbusd does more per
    cycle), two A tiles when M holds an even number of them, two B tiles of 16 accumulator columns when N allows
    (one when N is an odd multiple of 16), k step the largest multiple of ``group`` (4 int8 / 2 bf16 elements per
    4-byte group) up to ``max_step`` (64 bytes: an A tile row) dividing K, and up to 16 steps per call (C stays in
    its tiles through them)."""
    rows = max(d for d in range(1, 17) if m_ext % d == 0)
    if rows < 4 or n_ext % 16 or k_ext % group:
        return None
    m_tiles = 2 if (m_ext // rows) % 2 == 0 else 1
    n_tiles = 2 if n_ext % 32 == 0 else 1
    k_step = max(s for s in range(group, max_step + 1, group) if k_ext % s == 0)
    k_steps = max(d for d in range(1, 17) if (k_ext // k_step) % d == 0)
    return rows, m_tiles, n_tiles, k_step, k_steps


def _unit_row_step(stmt, a_index: int, m_var) -> bool:
    """Whether the activation's rows follow the M iterator with step 1 in its second-last dimension (an AMX A tile
    is rows of one stride apart: a strided convolution's rows are ``s`` pixels apart and take the VNNI path)."""
    from tvm.sym.pattern import detect_linear_equation  # noqa: PLC0415

    dims = stmt.reads[a_index].region
    if len(dims) < 2 or any(m_var in _vars_in(d.min) for d in dims[:-2]):
        return False
    coeff = detect_linear_equation(dims[-2].min, [m_var])
    return len(coeff) == 2 and isinstance(coeff[0], tirx.IntImm) and int(coeff[0]) == 1


#: columns of a run-time B packed per vector store (x the reduction group: 64 bytes, one AVX-512 register)
PACK_COLUMNS = 16


def _schedule_run_time_packing(sch: s_tir.Schedule, copy, group: int, b_axes: tuple[int, int]) -> None:
    """The copy of a run-time B into its packed layout (``packed[n // panel, ..., k // group, n % panel,
    k % group]``; B's loops in B's axis order, k and n at ``b_axes``).

    B[..., K, N]: the `group` rows of a reduction group and `PACK_COLUMNS` columns go to one contiguous vector
    store of the packed buffer (the loads: `group` row segments of `PACK_COLUMNS` bytes, interleaved by byte), the
    rest in parallel. Copied in B's order instead, every byte was a store of its own at a stride of `group` bytes:
    BERT-like int8's Q K^T and P V kernels were about 3% slower (Zen 5).

    B read through a permutation with k last (attention's K in its own [N, ..., K] layout): a reduction group is
    `group` contiguous bytes of B, copied as one word (a `group`-lane vector) into its place; `PACK_COLUMNS` such
    words of consecutive n fill one contiguous 64-byte run of the packed buffer. Extents that do not divide keep
    B's order, the outer loops in parallel."""
    loops = sch.get_loops(copy)
    extents = [_extent(sch, lp) for lp in loops]
    k_axis, n_axis = b_axes
    k_ext, n_ext = (extents[k_axis], extents[n_axis]) if len(loops) > max(b_axes) else (None, None)
    if k_ext is None and len(loops) > max(b_axes) and _divisible(sch.get(loops[k_axis]).extent, group):
        k_ext = group  # a symbolic K of whole groups (attention's P V over its key length)
    if k_ext is None or n_ext is None or k_ext % group or n_ext % PACK_COLUMNS:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        return
    k_out, k_in = sch.split(loops[k_axis], factors=[None, group])
    n_out, n_in = sch.split(loops[n_axis], factors=[None, PACK_COLUMNS])
    others = [lp for i, lp in enumerate(loops) if i not in b_axes]
    if b_axes == (len(loops) - 2, len(loops) - 1):
        sch.reorder(*others, k_out, n_out, n_in, k_in)
        sch.vectorize(sch.fuse(n_in, k_in))
        outer = [*others, k_out]
    else:
        sch.reorder(*others, n_out, k_out, n_in, k_in)
        sch.vectorize(k_in)
        outer = [*others, n_out, k_out]
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _whole_vectors(extent) -> int:
    """The largest of 64, 32 and 16 that provably divides the symbolic loop extent `extent`, else 0."""
    return next((c for c in (64, 32, 16) if _divisible(extent, c)), 0)


def _k_n_axes(dims, k_var, n_var) -> tuple[int, int] | None:
    """(k axis, n axis) of a B region read with k alone in one axis and n alone in another (no other axis using
    either), else None."""
    k_axes = [i for i, d in enumerate(dims) if _vars_in(d.min) == {k_var}]
    n_axes = [i for i, d in enumerate(dims) if _vars_in(d.min) == {n_var}]
    if len(k_axes) != 1 or len(n_axes) != 1:
        return None
    if any(_vars_in(d.min) & {k_var, n_var} for i, d in enumerate(dims) if i not in (k_axes[0], n_axes[0])):
        return None
    if any(int(d.extent) != 1 for d in dims if isinstance(d.extent, tirx.IntImm)):
        return None
    return k_axes[0], n_axes[0]


def _tile(isa: str, m_ext: int, n_vecs: int) -> tuple[int, int]:
    """(u_m rows, u_n vectors) of the register tile. u_m * u_n accumulators + u_n weight vectors + a broadcast
    activation + the product before it is added stay within the register file (one more spills an accumulator
    through memory in every iteration); u_m and u_n divide the extents (the tensor intrinsic takes no predicated
    tail), and the u_m * u_n accumulators of 4-byte lanes fit a stack slot (``schedules.max_accumulators``). Among
    those, the most products per instruction: u_m * u_n products (2 instructions each: multiply, add; fused on VNNI)
    against u_n weight loads and u_m broadcasts (2 instructions each when widened)."""
    regs = _REGISTERS[isa] - 2
    fused = isa in _FUSED
    accumulators = max_accumulators(ISAS[isa][1] * 4)
    best, best_score = (1, 1), 0.0
    for u_n in range(1, min(n_vecs, 8) + 1):
        if n_vecs % u_n or 2 * u_n > regs or u_n > accumulators:
            continue
        max_m = min(MAX_TILE_ROWS, (regs - u_n) // u_n, accumulators // u_n) if m_ext > 1 else 1
        u_m = max((d for d in range(1, max(max_m, 1) + 1) if m_ext % d == 0), default=1)
        products = u_m * u_n
        score = products / (products * (1 if fused else 2) + u_n + u_m * (1 if fused else 2))
        if score > best_score:
            best, best_score = (u_m, u_n), score
    return best


def _weights_7bit(func, buffer) -> bool:
    """Whether ``buffer`` is a param of ``func`` that ``mark_7bit_weights`` found within the limit at every call."""
    marked = func.attrs.get(SEVEN_BIT_ATTR) if func.attrs is not None else None
    if not marked:
        return False
    return any(func.params[int(i)].same_as(buffer) for i in marked)


def mark_7bit_weights():
    """A Relax pass (after FuseTIR and AttachAttrLayoutFreeBuffers) that gives each PrimFunc the ``SEVEN_BIT_ATTR``
    list of its layout-free params to which every ``call_tir`` of it passes an int8 constant within
    [-WEIGHT_LIMIT, WEIGHT_LIMIT] (the ``*_7bit`` instruction sets are exact only there); PrimFuncs without such a
    param are left as they are."""
    import numpy as np  # noqa: PLC0415
    from tvm import ir, relax, transform  # noqa: PLC0415
    from tvm.ir.expr import GenericConst  # noqa: PLC0415
    from tvm.runtime import Tensor  # noqa: PLC0415

    call_tir = ir.Op.get("relax.call_tir")

    @transform.module_pass(opt_level=0, name="optc_mark_7bit_weights")
    def _pass(mod, _ctx):
        found: dict = {}  # GlobalVar -> indices still within the limit at every call so far
        kernels = {gv: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}

        def within(arg) -> bool:  # (no cache by id(): each access makes a new Python object, whose id is reused)
            data = arg.value if isinstance(arg, GenericConst) else None
            if not isinstance(data, Tensor) or str(data.dtype) != "int8":
                return False
            w = data.numpy()
            return w.size > 0 and int(np.abs(w.astype(np.int16)).max()) <= WEIGHT_LIMIT

        def visit(call):
            if not isinstance(call, relax.Call) or not call.op.same_as(call_tir):
                return
            gv, args = call.args[0], call.args[1]
            func = kernels.get(gv)
            if func is None or func.attrs is None or "layout_free_buffers" not in func.attrs:
                return
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            ok = {int(i) for i in func.attrs["layout_free_buffers"] if int(i) < len(fields) and within(fields[int(i)])}
            found[gv] = ok if gv not in found else found[gv] & ok

        for _gv, f in mod.functions_items():
            if isinstance(f, relax.Function):
                relax.analysis.post_order_visit(f, visit)
        for gv, ok in found.items():
            if ok:
                mod[gv] = mod[gv].with_attr(SEVEN_BIT_ATTR, sorted(ok))
        return mod

    return _pass


class Int8Reduction(_Rule):
    """Exact u8/s8 x s8 -> int32 matmul / NHWC conv kernels with fused epilogues on the best dot-product
    instruction ``target`` has (``int8_isas``); declines (next rule) whatever it cannot tensorize."""

    def __init__(self, *, tile: tuple[int, int] | None = None):
        self.tile = tile

    def schedule(self, func, target: Target):
        # cheap rejections first: this rule is asked about every kernel of every model
        dtypes = {str(getattr(p, "dtype", "")) for p in func.params}
        if "bfloat16" in dtypes and "int8" not in dtypes:  # bf16 operands: AMX tdpbf16ps, else vdpbf16ps
            feats = llvm_features(target)
            if self.tile is None and all(f in feats for f in AMX_BF16_FEATURES):
                sch = self._first(func, target, [(["amx"], {"amx": True})])
                if sch is not None:
                    return sch
            if not all(f in feats for f in BF16_DOT_FEATURES):
                return None
            return self._schedule(func, target, ["avx512bf16"], amx=False)
        if "int8" not in dtypes:
            return None
        isas = int8_isas(target)
        if not isas:
            return None
        register_isas = [i for i in isas if i != "amx"]
        lanes = max((ISAS[i][1] for i in register_isas), default=0)
        attempts = []
        if self.tile is None:
            if "amx" in isas:  # a stride-1 conv with its window inside the tile block; any block; M padded
                attempts += [(isas, {"amx": True, "pad_rows": rows, "window": window})
                             for window, rows in ((True, 0), (False, 0), (False, 16))]
            if lanes:  # a weight's columns that are not whole vectors: padded with zeros
                attempts.append((register_isas, {"amx": False, "pad_cols": lanes}))
            # rows that no register tile height divides (197 tokens): padded to whole tiles
            attempts.append((register_isas, {"amx": False, "pad_rows": MAX_TILE_ROWS}))
            if lanes:  # both: symbolic rows (a batch) of a weight whose columns are not whole vectors (10 classes)
                attempts.append((register_isas, {"amx": False, "pad_rows": MAX_TILE_ROWS, "pad_cols": lanes}))
        return self._first(func, target, attempts) or self._schedule(func, target, register_isas, amx=False)

    def _first(self, func, target: Target, attempts: list):
        """The first of ``attempts`` ((isas, options) for ``_schedule``) that schedules the kernel, or None (a
        schedule error is a declined attempt: the geometry does not fit that form)."""
        for isas, options in attempts:
            try:
                sch = self._schedule(func, target, isas, **options)
            except (s_tir.ScheduleError, InternalError, ValueError):
                sch = None
            if sch is not None:
                return sch
        return None

    def _schedule(self, func, target: Target, isas: list[str], *, amx: bool, pad_rows: int = 0,
                  window: bool = False, padded: int = 0, pad_cols: int = 0, padded_weight=None,
                  seven_bit: bool | None = None):
        from tvm.s_tir.dlight.analysis import normalize_prim_func  # noqa: PLC0415

        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        pads = [i for i in infos if _is_padding(sch, i)]
        infos = try_inline(sch, [i for i in infos if i not in pads])
        if not infos or infos[0].is_injective() or any(not e.is_injective() for e in infos[1:]):
            return None
        main, epilogues = infos[0], infos[1:]
        kinds = main.dom_kind()
        n_s = len(kinds) - len(kinds.lstrip("S"))
        if n_s == 0 or kinds[n_s:].strip("R") or len(kinds) == n_s:
            return None
        block = main.block_rv
        stmt = sch.get(block)
        operands = self._operands(func, stmt, n_s)
        if operands is None:
            return None
        a_index, b_index, constant_b, b_axes = operands
        if seven_bit is None:  # (the padded copies below keep the answer of the kernel as it came)
            seven_bit = constant_b and _weights_7bit(func, stmt.reads[b_index].source)
        if padded_weight is not None:  # the zero-padded copy of a constant weight (pad_cols below)
            constant_b = stmt.reads[b_index].source.same_as(padded_weight)
        if amx and not constant_b:  # the AMX blocks take prepacked weights only
            return None
        a_dtype = str(stmt.reads[a_index].source.dtype)

        loops = sch.get_loops(block)
        s_loops, r_loops = list(loops[:n_s]), list(loops[n_s:])
        extents = [_extent(sch, lp) for lp in loops]
        # K static; a symbolic row axis (a dynamic batch or sequence length) is padded to whole tiles below (the
        # tensor intrinsic takes no predicate), symbolic axes before it stay outer loops; a symbolic N only for a B
        # computed at run time whose columns are whole vectors (attention's keys, padded: qinteger's _run_time_w)
        # or a symbolic K of such a B, a whole number of dot-product groups (attention's P V over its key length)
        n_whole = 0 if extents[n_s - 1] is not None else _whole_vectors(sch.get(s_loops[-1]).extent)
        k_expr = sch.get(r_loops[-1]).extent
        if n_s < 2 and None in extents or any(e is None for e in extents[n_s:-1]) or \
                extents[n_s - 1] is None and (constant_b or not n_whole) or \
                extents[-1] is None and (constant_b or not _divisible(k_expr, MAX_GROUP)):
            return None
        symbolic = None in extents
        n_ext, k_ext = extents[n_s - 1] or n_whole, extents[-1] or MAX_GROUP  # (a symbolic K: whole groups)
        m_ext = extents[n_s - 2] if n_s >= 2 else 1  # None: symbolic rows
        work = None if symbolic else math.prod(extents[:n_s])
        reduction = None if symbolic else math.prod(extents[n_s:])
        if m_ext is None and not padded and not pad_rows:
            # symbolic rows already padded to whole tiles (bf16 matmuls: precision.py pads them in Relax)
            if n_s < 2 or not _divisible(sch.get(s_loops[-2]).extent, MAX_TILE_ROWS):
                return None
            padded = MAX_TILE_ROWS
        if symbolic and amx:
            return None
        if pad_rows:
            # zero-padded rows (pad_einsum: a padded copy of the activation, the padded products cropped away;
            # exact) for an M that no tile height divides (AMX: 4 to 16 rows; register tiles: 3 to 8); then
            # scheduled as any other kernel. Not bf16: the padded copy would be the kernel's own bf16 buffer,
            # stored as float32 (bf16 matmuls get their rows padded in Relax instead: precision.py)
            if m_ext is not None:
                fits = _amx_tiles(m_ext, n_ext, k_ext, *AMX_OPERANDS[a_dtype][2:]) if amx else \
                    rows_divide_into_tiles(m_ext)
                if m_ext < pad_rows or fits or m_ext % pad_rows == 0:
                    return None
            if n_s < 2 or a_dtype == "bfloat16":
                return None
            padding = [1] * len(extents)
            padding[n_s - 2] = pad_rows
            sch.pad_einsum(block, padding)
            return self._schedule(sch.mod["main"], target, isas, amx=amx, padded=pad_rows, pad_cols=pad_cols,
                                  seven_bit=seven_bit)
        if pad_cols:
            # N not a multiple of the widest vector (24, 40, 1000 output channels): a constant weight is zero-padded
            # to whole vectors at compile time (the padding inlined into its packing), the padded products cropped
            # by the epilogue (exact: no output reads them). Without it the kernel ran on half-width vectors (ymm,
            # 8 lanes): MobileNetV2-like int8 1.87 -> 1.80 ms (AMD EPYC Zen 5, 1 thread)
            if not constant_b or amx or n_ext < pad_cols or n_ext % pad_cols == 0 or a_dtype == "bfloat16":
                return None
            padding = [1] * len(extents)
            padding[n_s - 1] = pad_cols
            before = {b.name_hint for b in _block_stmts(sch)}
            sch.pad_einsum(block, padding)
            weight = stmt.reads[b_index].source
            copies = [b for b in _block_stmts(sch) if b.name_hint not in before
                      and any(r.source.same_as(weight) for r in b.reads)]
            if len(copies) != 1:
                return None
            sch.annotate(sch.get_sblock(copies[0].name_hint), "meta_schedule.layout_rewrite_preproc", 1)
            return self._schedule(sch.mod["main"], target, isas, amx=False, padded_weight=copies[0].writes[0].source,
                                  padded=padded, seven_bit=seven_bit)
        if a_dtype == "bfloat16" and not any(stmt.reads[a_index].source.same_as(p) for p in func.params):
            # TVM's bf16 legalization stores a kernel's own bf16 buffers (a padded input) as float32: a tile or a
            # vdpbf16ps would read float32 bytes as bf16 pairs. Only parameters keep their bf16 storage.
            return None
        if amx:
            _, _, group, max_step = AMX_OPERANDS[a_dtype]
            tiles = _amx_tiles(m_ext, n_ext, k_ext, group, max_step)
            if tiles is None or n_s < 2 or not _unit_row_step(stmt, a_index, stmt.iter_vars[n_s - 2].var):
                return None
            rows, m_tiles, n_tiles, k_step, k_steps = tiles
            if window:  # the window (kh, kw) and all of K in one call: C loaded and stored once per block
                if len(r_loops) != 3 or a_dtype == "bfloat16":
                    return None
                k_steps = k_ext // k_step
                tiles = (rows, m_tiles, n_tiles, k_step, k_steps, extents[n_s], extents[n_s + 1])
            u_m, panel, chunk = rows * m_tiles, 16 * n_tiles, k_step * k_steps
            isa = "amx"
        else:
            # the best instruction set that multiplies these operands and whose lanes / group divide N / K (a
            # VNNI machine takes K = 130 with vpmaddwd pairs, N = 72 with ymm vectors)
            isa = next((i for i in isas if a_dtype in ISAS[i][3] and not n_ext % ISAS[i][1]
                        and not k_ext % ISAS[i][2] and (seven_bit or i not in SEVEN_BIT)), None)
            if isa is None:
                return None
            _, lanes, group, _ = ISAS[isa]
            # symbolic rows were padded to a multiple of `padded`: a tile height dividing that divides them; a
            # symbolic N is a multiple of n_whole columns: tiles of up to that many
            u_m, u_n = self.tile or _tile(isa, padded if m_ext is None else m_ext, n_ext // lanes)
            if extents[n_s - 1] is None and n_whole % (u_n * lanes):
                return None
            panel, chunk = u_n * lanes, group

        if amx:
            n_o, n_p = sch.split(s_loops[-1], factors=[None, panel])
        else:
            n_o, n_u, n_v = sch.split(s_loops[-1], factors=[None, u_n, lanes])
        k_o, k_i = sch.split(r_loops[-1], factors=[None, chunk])
        if n_s >= 2:
            m_o, m_i = sch.split(s_loops[-2], factors=[None, u_m])
            outer, inner = [*s_loops[:-2], m_o, n_o], [m_i]
        else:
            outer, inner = [n_o], []
        inner = [*inner, n_p] if amx else [*inner, n_u]
        weight_bytes = _bytes(stmt.reads[b_index].source)
        act_bytes = sum(_bytes(r.source) for i, r in enumerate(stmt.reads) if i != b_index)
        if len(outer) > 1 and weight_bytes > act_bytes:
            outer = [outer[-1], *outer[:-1]]  # each weight panel streams from memory once
        outer = _symbolic_outermost(sch, outer)
        if window:
            sch.reorder(*outer, k_o, *inner, *r_loops[:-1], k_i)
        else:
            sch.reorder(*outer, *r_loops[:-1], k_o, *inner, *([] if amx else [n_v]), k_i)
        par = _fuse_tiles_parallel(sch, outer, work, reduction)
        if epilogues:
            for epi in epilogues:
                sch.reverse_compute_at(epi.block_rv, par, preserve_unit_loops=True)
        init = sch.decompose_reduction(block, r_loops[0] if len(r_loops) > 1 and not window else k_o)
        init_loops = sch.get_loops(init)
        sch.vectorize(init_loops[-1])
        for epi in epilogues:
            epi_loops = sch.get_loops(epi.block_rv)[1:]
            if len(epi_loops) > 1 and not padded:  # (padded: the last tile's epilogue is predicated by rows, and
                sch.fuse(*epi_loops)                # a vector across predicated rows is miscompiled: TiledReduction)
            _vectorize_innermost(sch, epi.block_rv, _vector_lanes(target, 32), keep_outer=1)
        for pad in pads:
            schedule_padding(sch, pad.block_rv, target)
        sch.enter_postproc()
        k_axis, n_axis = b_axes
        packed = lambda *idx: (  # noqa: E731
            idx[n_axis] // panel, *(x for i, x in enumerate(idx) if i not in b_axes), idx[k_axis] // group,
            idx[n_axis] % panel, idx[k_axis] % group)
        if constant_b:
            _prepack_weight(sch, block, stmt.reads[b_index].source, panel, index_map=packed)
            if padded_weight is not None:  # one compile-time copy: the zero padding inlined into the packing
                sch.compute_inline(next(sch.get_sblock(b.name_hint) for b in _block_stmts(sch)
                                        if b.writes and b.writes[0].source.same_as(padded_weight)))
            if not _packing_splits_off(sch):
                return None
        else:  # B computed at run time: packed by the kernel, before its tiles
            copy = _prepack_weight(sch, block, stmt.reads[b_index].source, panel, index_map=packed, at_run_time=True)
            _schedule_run_time_packing(sch, copy, group, b_axes)
        if amx:
            sch.tensorize(inner[0], amx_register_intrin(a_dtype, *tiles))
            return sch
        sch.tensorize(n_v, register_intrin(isa, a_dtype))
        for lp in inner:
            sch.unroll(lp)
        if isa == "avx512bf16":
            bf16_dot_import_into(sch, par)
        return sch

    @staticmethod
    def _operands(func, stmt, n_s: int) -> tuple[int, int, bool, tuple[int, int]] | None:
        """(activation read, weight read, whether the weight is a constant, B's k and n axes) when ``stmt`` is
        ``C[.., n] += A[.., k] * B[.., k, n]`` with 8-bit A, int8 B and int32 C (or bfloat16 A and constant B,
        float32 C), n the last spatial and k the last reduction iterator; else None. An int8 B computed at run
        time (an activation x activation matmul: optc.QMatMul with a run-time w) is packed by the kernel; it may
        be indexed in any order (``B[.., n, .., k]``: attention's K read through its transpose), each of k and n
        alone in one axis."""
        out_dtype = str(stmt.writes[0].source.dtype) if len(stmt.writes) == 1 else ""
        if out_dtype not in ("int32", "float32") or len(stmt.reads) not in (2, 3):
            return None
        w_dtype, a_dtypes = ("int8", ("uint8", "int8")) if out_dtype == "int32" else ("bfloat16", ("bfloat16",))
        iter_vars = [iv.var for iv in stmt.iter_vars]
        n_var, k_var = iter_vars[n_s - 1], iter_vars[-1]
        if _buffer_last_index_vars(stmt.writes[0]) != {n_var}:
            return None
        free = set(_layout_free_reads(func, stmt))
        a_index = b_index = None
        for i, region in enumerate(stmt.reads):
            dtype = str(region.source.dtype)
            if region.source.same_as(stmt.writes[0].source):
                continue
            dims = region.region
            if (dtype == w_dtype and (i in free or out_dtype == "int32") and len(dims) >= 2
                    and _vars_in(dims[-1].min) == {n_var} and _vars_in(dims[-2].min) == {k_var}):
                b_index, b_axes = i, (len(dims) - 2, len(dims) - 1)
            elif dtype == w_dtype and out_dtype == "int32" and i not in free and len(dims) >= 2 and \
                    (axes := _k_n_axes(dims, k_var, n_var)) is not None:
                b_index, b_axes = i, axes  # a run-time B read through a permutation (qinteger's _permuted_matmul)
            elif dtype in a_dtypes and len(dims) >= 1 and _vars_in(dims[-1].min) == {k_var}:
                a_index = i
        if a_index is None or b_index is None:
            return None
        return a_index, b_index, b_index in free, b_axes
