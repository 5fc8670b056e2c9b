"""optc's default CPU schedules (dlight-style rules) for kernels that no tuning record covers.

TVM's llvm pipeline applies no schedule: every kernel is a naive, single-threaded loop nest. These
rules give each fused PrimFunc a reasonable schedule in milliseconds, without measuring anything:

* ``TiledReduction`` — one reduction block (conv2d in NHWC/HWIO, matmul, pooling, mean) plus
  injective epilogues. Register-tiles the two innermost spatial axes (``u_m`` rows x ``u_n`` SIMD
  vectors along the contiguous output axis), keeps all reduction loops outside the tile so the
  accumulators live in registers, parallelizes the fused outer spatial loops and computes the
  epilogue (bias, activation, residual add) per tile while it is hot in cache.
* dlight's ``cpu.GEMV``; ``RowReduction`` (softmax, layer norm: reductions and elementwise blocks
  computed row by row).
* ``Injective`` — elementwise/layout kernels: parallel outer loop, vectorized contiguous inner loop.
* ``ParallelFallback`` — anything else: parallelize the outermost spatial loop of each block.

See SCHEDULES.md for the measurements behind these choices.
"""

from __future__ import annotations

import math

from tvm import ir, s_tir, tirx
from tvm.error import InternalError
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

#: below this many output elements a kernel runs single-threaded (thread-pool wake-up costs ~us)
PARALLEL_MIN_WORK = 1 << 14
#: ... unless the kernel does at least this many multiply-adds (~1 ms single-threaded)
PARALLEL_MIN_MACS = 1 << 22
#: a parallel loop over fewer iterations than this takes the next loop in too (work in even shares)
PARALLEL_MIN_ROWS = 16
#: a strided (transpose) kernel keeps its innermost loops unfused over at least this many elements
STRIDED_ROW = 64
#: grouped convs with an even number of channels per group up to twice this, and no divisor of 4 or more:
#: pairs of lanes across the whole group (shufflenet's 34 channels: 17 accumulators of 2 lanes, not scalars)
GROUP_PAIR_MAX = 32
#: at most this many float accumulators per register tile (AVX-512 has 32 x 16 registers)
MAX_ACC_VECTORS = 16
#: register tiles hold at most MAX_TILE_ROWS rows of accumulators; fewer than MIN_TILE_ROWS rows per tile do not pay
MAX_TILE_ROWS, MIN_TILE_ROWS = 8, 3
#: TVM keeps a buffer allocated inside a kernel's loops on the stack only when it is smaller than this
#: (``runtime::kMaxStackAlloca``, tested by ``tir.LowerTVMBuiltin``); a larger one is taken from the workspace pool
#: by a ``TVMBackendAllocWorkspace`` call, and given back by another, in every iteration of the loop around it
STACK_ALLOCA_BYTES = 1024
#: a float register tile may still take MAX_ACC_VECTORS (a workspace buffer, ~100 ns of calls per tile) when each
#: output sums at least this many products: 16 accumulators then beat 8 by 3-10% (float32 matmuls with K = 768 to
#: 2048, AMD EPYC Zen 4); below it the calls cost more than the smaller tile (a 1x1 conv with K = 64: 1.5x)
WORKSPACE_TILE_MIN_REDUCTION = 512
#: vector registers a float register tile leaves to its operands: up to 3 weight vectors (or row broadcasts) live
#: across the tile and the broadcast / load in flight (at most 12 accumulators with AVX2's 16 registers). With 8-lane
#: vectors and AVX-512's 16 accumulators LLVM still spilled: float32 matmuls 1.64-2.02x onnxruntime's time, 0.90-1.03x
#: with this limit (AMD EPYC Zen 3, 1 thread)
REGISTERS_BESIDE_ACCUMULATORS = 4
#: repack a constant weight into tile-contiguous panels when it is at least this large (bytes)
PREPACK_MIN_BYTES = 1 << 16


def _is_cpu(target: Target) -> bool:
    return target.kind.name == "llvm"


def _is_x86(target: Target) -> bool:
    """An LLVM target for x86-64 (its triple, or this host's when the target names none, as the `cpu` preset)."""
    import platform  # noqa: PLC0415

    triple = str(target.attrs.get("mtriple", "") or "")
    return _is_cpu(target) and (triple.startswith("x86_64") if triple else
                                platform.machine().lower() in ("x86_64", "amd64"))


def vector_bits(target: Target) -> int:
    """The widest SIMD register of ``target`` in bits. On x86 from its features (512 with AVX-512F, 256 with AVX,
    else 128): TVM 0.27's ``llvm_get_vector_width`` says 512 for every x86 CPU, and on an AVX2 CPU a 16-lane float32
    "vector" is two ymm registers, so every register tile held twice the accumulators it was sized for and LLVM
    spilled them (float32 matmuls 2.4-2.7x onnxruntime's time on AMD Zen 3)."""
    from tvm.target.codegen import llvm_get_vector_width  # noqa: PLC0415

    if _is_x86(target):
        from .targets import llvm_features  # noqa: PLC0415

        feats = set(llvm_features(target))
        return 512 if "avx512f" in feats else 256 if "avx" in feats else 128
    try:
        return int(llvm_get_vector_width(target))
    except Exception:  # pragma: no cover
        return 128


def _vector_lanes(target: Target, dtype_bits: int) -> int:
    width = vector_bits(target)
    if width <= 0:
        width = 128
    return max(2, width // max(8, dtype_bits))


def _divisible(extent, step: int) -> bool:
    """Whether a loop extent (a TIR expression) is provably a multiple of `step`."""
    from tvm import sym  # noqa: PLC0415

    return bool(sym.Analyzer().can_prove_equal(tirx.floormod(extent, step), 0))


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _walk(root, callbacks) -> None:
    """`tvm_ffi.structural_walk` in post order (imported when called)."""
    import tvm_ffi  # noqa: PLC0415

    tvm_ffi.structural_walk(root, callbacks, order="post")


def _vars_in(expr) -> set:
    found = set()
    _walk(expr, (tirx.Var, found.add))
    return found


def _largest_divisor(n: int, limit: int, candidates=None) -> int:
    cands = candidates or range(min(n, limit), 0, -1)
    for d in cands:
        if d <= limit and n % d == 0:
            return d
    return 1


def rows_divide_into_tiles(m: int) -> bool:
    """Whether some tile height from MIN_TILE_ROWS to MAX_TILE_ROWS divides m rows (else the last tile is
    predicated, or the rows are padded where a tensor intrinsic takes no predicate)."""
    return any(m % d == 0 for d in range(MIN_TILE_ROWS, MAX_TILE_ROWS + 1))


def vector_registers(target: Target) -> int:
    """Vector registers of ``target``'s register file: 16 on x86 without AVX-512 (ymm0-15), else 32 (zmm0-31,
    Arm NEON / SVE's v0-31)."""
    if _is_x86(target):
        from .targets import llvm_features  # noqa: PLC0415

        return 32 if "avx512f" in llvm_features(target) else 16
    return 32


def max_accumulators(vector_bytes: int, reduction: int = 0, registers: int = 32) -> int:
    """Accumulator vectors per register tile for vectors of ``vector_bytes`` bytes: at most MAX_ACC_VECTORS, and
    fewer than STACK_ALLOCA_BYTES in all (a stack slot LLVM keeps in registers) unless each output sums at least
    WORKSPACE_TILE_MIN_REDUCTION products (``reduction``). 16 vectors of 16 float32 / int32 lanes (AVX-512) are
    exactly 1024 bytes: each tile then called the workspace allocator twice, which made an int8 1x1 conv
    64 -> 256 at 56 x 56 (K = 64: 256 vpdpbusd per tile) ~1.3x slower, and a float32 one ~1.5x (AMD EPYC
    Zen 4, 1 thread)."""
    limit = min(MAX_ACC_VECTORS, registers - REGISTERS_BESIDE_ACCUMULATORS)
    if reduction >= WORKSPACE_TILE_MIN_REDUCTION:
        return limit
    return min(limit, (STACK_ALLOCA_BYTES - 1) // vector_bytes)


def tile_rows(m: int, limit: int) -> int:
    """The tile height for m rows of at most `limit`: the largest divisor of m up to `limit`, or `limit` itself
    (a predicated last tile) when that divisor is below MIN_TILE_ROWS and m is larger (awkward extents: primes)."""
    d = _largest_divisor(m, limit)
    return limit if d < MIN_TILE_ROWS and m > limit else d


#: a tile width (vectors per tile row) tried besides the default two (one for an odd count of vectors). Five (a
#: Llama head's 2000 columns: 2 x 5 instead of 8 x 1) was 4% faster alone and 20% slower inside the model, for a
#: reason not found (its 80-column weight panels, 80 KB, do not fit in L1 as 16-column ones do), so it is not tried
WIDE_TILE_VECTORS = 3


def _height_limit(max_acc: int, u_n: int) -> int:
    """The most rows a tile `u_n` vectors wide may have with `max_acc` accumulators (1 to MAX_TILE_ROWS)."""
    return max(1, min(MAX_TILE_ROWS, max_acc // u_n))


def _widest_tile(m: int, n_vecs: int, u_n: int, max_acc: int) -> tuple[int, int | None]:
    """(vectors per tile row, tile height or None: the default's) for a register tile over `m` rows and `n_vecs`
    vectors of columns, at most `max_acc` accumulators: the default width `u_n`, or WIDE_TILE_VECTORS where that
    divides `n_vecs` and holds more accumulators in whole tiles of at least two rows. Two vectors wide gave ViT's
    197 x 192 x 768 matmul 5 x 2 = 10 accumulators and a BERT's 128 x 256 x 768 4 x 2 = 8; three give 15 and 12,
    fewer loads per multiply-add (the kernels 4% and 13% faster, AMD EPYC Zen 5, 1 thread). Any dtype (the tile
    counts vectors); static rows only (symbolic ones keep the default width)."""
    default = u_n * tile_rows(m, _height_limit(max_acc, u_n))
    u = WIDE_TILE_VECTORS
    rows = _largest_divisor(m, _height_limit(max_acc, u))
    if n_vecs % u == 0 and rows >= 2 and u * rows > default:
        return u, rows
    return u_n, None


def _plane_tile(h: int, w: int, n_vecs: int, u_n: int, u_w: int, max_acc: int) -> tuple[int, int, int] | None:
    """A register tile over two row axes, (vectors per tile row, rows of the outer axis, rows of the inner axis),
    for an output of `h` x `w` rows (a conv's height and width) and `n_vecs` vectors of columns, at most `max_acc`
    accumulators and MAX_TILE_ROWS rows, where every axis is whole: returned when it holds more accumulators than
    the one-axis tile chosen (`u_n` vectors by `u_w` rows; predicated when `u_w` does not divide `w`), or when that
    one is predicated and this one holds at least half of `max_acc`. Else None.

    AVX2's 12 accumulators in tiles two vectors wide leave 6 rows: a 14 or 7 wide conv output ran with its last
    tile of 6 predicated (14 = 6 + 6 + 2), and every tile carried the predicate through its reduction loop: a 1x1
    conv 256 -> 1024 at 14 x 14 reached 63 GFLOP/s (onnxruntime 96), 2048 -> 512 at 7 x 7 39 (onnxruntime 93).
    Tiles of 2 x 2 rows x 2 vectors and 1 x 7 rows x 1 vector are whole: 90 and 80 (AMD EPYC Zen 3, 1 thread)."""
    predicated = w % u_w != 0
    best, best_acc = None, u_n * u_w if not predicated else 0
    widths = {u_n, 1, *(v for v in (2, WIDE_TILE_VECTORS) if n_vecs % v == 0)}
    for vecs in sorted(widths, reverse=True):
        limit = min(MAX_TILE_ROWS, max_acc // vecs)
        for inner in (d for d in range(limit, 0, -1) if w % d == 0):
            outer = _largest_divisor(h, limit // inner)
            if vecs * outer * inner > best_acc:
                best, best_acc = (vecs, outer, inner), vecs * outer * inner
    if best is None or (predicated and best_acc < max_acc // 2):
        return None
    return best


def _default_width(n_vecs: int, vec: int, *, matrix_vector: bool, registers: int = 32) -> int:
    """Vectors per tile row before `_widest_tile` widens it, for `n_vecs` vectors of `vec` lanes: 2 for an even
    count, else 1; 4 for narrow vectors (at most 32 lanes in 4) where 4 divide the count and more than 2 are
    left, with 32 vector `registers` (NEON, AVX-512; with AVX2's 16 a tile 4 vectors wide has at most 2 rows); 8
    for a `matrix_vector` product (one row) whose count 8 divides (512 contiguous weight bytes)."""
    u_n = 2 if n_vecs % 2 == 0 and n_vecs >= 2 else 1
    if n_vecs > u_n and n_vecs % 4 == 0 and vec * 4 <= 32 and registers >= 32:
        u_n = 4
    if matrix_vector and n_vecs % 8 == 0:
        u_n = 8
    return u_n


def _tile_accumulators(m: int, n_vecs: int, vec: int, max_acc: int, registers: int = 32) -> int:
    """Accumulator vectors in TiledReduction's register tile over `m` static rows and `n_vecs` vectors of `vec`
    lanes with at most `max_acc` of them (the default width, widened by `_widest_tile`, and its height)."""
    u_n, rows = _default_width(n_vecs, vec, matrix_vector=m == 1, registers=registers), None
    if u_n in (1, 2):
        u_n, rows = _widest_tile(m, n_vecs, u_n, max_acc)
    return u_n * (rows or tile_rows(m, _height_limit(max_acc, u_n)))


#: a packed weight's columns are zero-padded to a multiple of one of these many vectors where that holds more
#: accumulators per useful column (``_column_step``)
COLUMN_STEPS = (2, WIDE_TILE_VECTORS)
#: ... and only where the padding is at most this share of the columns: [128, 256] @ [256, N] ran 10% faster at
#: N = 688 -> 720 (4.7% padding), 9% at 512 -> 528 (3.1%), and no faster at 256 -> 288 (12.5%), each 8 -> 12
#: accumulators (AMD EPYC Zen 5, 1 thread)
MAX_COLUMN_PADDING = 1 / 16


def _column_step(m: int, n: int, lanes: int, max_acc: int, padded_max_acc: int, registers: int = 32) -> int:
    """The vectors of `lanes` lanes whose multiple `n` columns are zero-padded to (0: not padded) for a register
    tile over `m` static rows. Columns that are not whole vectors are padded to whole ones at least (unpadded,
    the tile runs in half vectors or a predicated tail); a step of COLUMN_STEPS that pads at most
    MAX_COLUMN_PADDING of the columns is taken where its tile holds the most accumulators times the share of
    useful columns, more than the tile without it (`max_acc` accumulators unpadded, `padded_max_acc` padded:
    TiledReduction's limit for a padded kernel). 43 vectors (688 columns, a prime) tile 8 x 1 = 8; padded to 45,
    4 x 3 = 12 on 95.6% useful columns; 125 vectors (2000 columns) padded to 126: 4 x 3 instead of 8 x 1."""
    whole = n % lanes == 0
    best, best_score = 0, float(_tile_accumulators(m, n // lanes, lanes, max_acc, registers)) if whole else 0.0
    for step in (1, *COLUMN_STEPS):
        vecs = -(-n // (lanes * step)) * step
        score = _tile_accumulators(m, vecs, lanes, padded_max_acc, registers) * n / (vecs * lanes)
        if vecs * lanes > n and (step == 1 or vecs * lanes <= n * (1 + MAX_COLUMN_PADDING)) and score > best_score:
            best, best_score = step, score
    return best


def register_tile(h_ext: int | None, m_ext: int | None, n_ext: int | None, *, n_s: int, lanes: int,
                  dtype_bits: int, reduction: int, registers: int, padded: bool = False, grouped: bool = False,
                  symbolic_columns: bool = False, fixed_u_n: int | None = None, window: bool = False,
                  plane: bool | None = None) -> tuple[int, int | None, int, int, int]:
    """TiledReduction's register tile, (vec, n_vecs, u_n, u_h, u_m): `u_m` rows of the output's second-to-last
    axis (`m_ext` rows; None: symbolic) by `u_n` vectors of `vec` lanes of its last axis (`n_ext` columns, `n_vecs`
    vectors; None with `symbolic_columns`), times `u_h` rows of the axis before (`h_ext`: a conv's height; None:
    none or symbolic). `n_s`: the output's rank (spatial loops), `lanes`: vector lanes for `dtype_bits`,
    `reduction`: products summed per output (static part), `registers`: vector registers
    (``vector_registers``), `padded`: the kernel reads a zero-padded copy (``_pad_ragged_tile``), `grouped`: the
    channel axis is a group's, `fixed_u_n`: a tile width fixed by a rule variant, `window`: the taps of a sliding
    window are unrolled inside the tile (``_window_loop``; then at most WINDOW_MAX_ACC accumulators with 16
    registers), `plane`: whether a tile over two row axes (``_plane_tile``) may be taken (None: where the kernel is
    not `padded`; a kernel whose only padding is a constant weight's columns, made at compile time, reads its
    activations in place and takes it: ShuffleNet's grouped 1x1 conv 272 -> 272 at 14 x 14, its 68 channels per
    group padded to 72, tiled 3 vectors x 2 x 2 rows instead of 1 x 7: 314 -> 263 us, onnxruntime 271, AMD EPYC
    znver1, 1 thread). A pure function of the shapes, so that a pass choosing between two formulations of a
    kernel (``pointwise_conv``) compares the tiles this rule will build."""
    if symbolic_columns:
        vec, n_vecs, u_n = lanes, None, SYMBOLIC_COLUMN_VECTORS
    else:
        vec = n_ext if n_ext <= lanes else _largest_divisor(n_ext, lanes, [lanes, lanes // 2, lanes // 4])
        if vec < 2 and n_ext > lanes and not grouped:
            vec = lanes  # no divisor: let the tail be predicated
        n_vecs = math.ceil(n_ext / vec)
        u_n = _default_width(n_vecs, vec, matrix_vector=m_ext == 1 and not grouped, registers=registers)
        if grouped and vec < 4 and n_ext % 2 == 0 and n_ext // 2 <= GROUP_PAIR_MAX:
            vec, u_n = 2, n_ext // 2
        if fixed_u_n is not None and not grouped and n_vecs % fixed_u_n == 0:
            u_n = fixed_u_n
    # a padded kernel reads a workspace copy, which LLVM cannot tell apart from a workspace register tile: it
    # stored the tile back after every product (digits' [N, 512] @ [512, 64] at N = 32: 2x slower)
    max_acc = max_accumulators(vec * dtype_bits // 8, 0 if padded else reduction, registers)
    if window and registers <= 16:
        max_acc = min(max_acc, WINDOW_MAX_ACC)
    rows = None
    if fixed_u_n is None and u_n in (1, 2) and m_ext is not None and n_s >= 2 and not grouped \
            and not symbolic_columns:
        u_n, rows = _widest_tile(m_ext, n_vecs, u_n, max_acc)
    max_m = _height_limit(max_acc, u_n)
    if m_ext is None:  # symbolic rows padded to PAD_ROWS (_pad_ragged_tile): a tile height dividing them
        max_m = _largest_divisor(PAD_ROWS, max_m)
    u_m = (max_m if m_ext is None else rows or tile_rows(m_ext, max_m)) if n_s >= 2 else 1
    u_h = 1
    if plane is None:
        plane = not padded
    if fixed_u_n is None and n_s >= 3 and m_ext is not None and h_ext is not None and not grouped \
            and plane and not symbolic_columns:
        plane = _plane_tile(h_ext, m_ext, n_vecs, u_n, u_m, max_acc)
        if plane is not None:
            u_n, u_h, u_m = plane
    return vec, n_vecs, u_n, u_h, u_m


def _fuse_parallel(sch: s_tir.Schedule, loops: list, work: int | None):
    """Fuse ``loops`` and mark the result parallel when the kernel is big enough to pay for threads."""
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    return fused


def _symbolic_outermost(sch: s_tir.Schedule, loops: list) -> list:
    """`loops` with the symbolic ones first, the others in their order. Fused under them, the static loops' indices
    divide by constants only; a symbolic loop fused inside a static one is indexed `fused % ((N + 7) // 8)`, which
    the buffer compaction cannot bound, and every tile then allocated a whole N-row intermediate on the heap."""
    return sorted(loops, key=lambda lp: _extent(sch, lp) is not None)


def _fuse_tiles_parallel(sch: s_tir.Schedule, outer: list, work: int | None, reduction: int):
    """Fuse a register-tiled kernel's outer (tile) loops into one, parallel when it is big enough: `work` outputs
    (None: symbolic, parallel), or few outputs with long sums (matrix x vector: 4096 outputs of 9216 products)."""
    return _fuse_parallel(sch, outer, max(work, PARALLEL_MIN_WORK)
                          if work is not None and work * reduction >= PARALLEL_MIN_MACS else work)


def _vectorize_innermost(sch: s_tir.Schedule, block, lanes: int, *, keep_outer: int = 0,
                         tail: bool = False) -> None:
    """Split the innermost loop of ``block`` by ``lanes`` (when it divides) and vectorize it. ``tail``: an extent
    with no such divisor (a row of 197) is partitioned into whole vectors and a scalar tail (``loop_partition``;
    for blocks without a predicate: the partitions' bounds are the block's own)."""
    loops = sch.get_loops(block)[keep_outer:]
    if not loops:
        return
    inner = loops[-1]
    ext = _extent(sch, inner)
    if ext is None or ext < 2:
        return
    if ext <= lanes:
        sch.vectorize(inner)
        return
    vec = _largest_divisor(ext, lanes, [lanes, lanes // 2, lanes // 4])
    if vec < 2 and tail and ext >= 2 * lanes:
        _vectors_and_tail(sch, inner, ext, lanes)
        return
    if vec < 2:
        return
    _, v = sch.split(inner, factors=[None, vec])
    sch.vectorize(v)


def _vectors_and_tail(sch: s_tir.Schedule, loop, ext: int, width: int) -> None:
    """Partition ``loop`` (static extent ``ext``) into whole vectors of ``width`` lanes, vectorized, and a scalar
    tail (``loop_partition``): a split by a non-divisor would predicate every lane, and TVM scalarizes that."""
    body, _tail = sch.loop_partition(loop, factors=[ext - ext % width, None])
    _, vector = sch.split(body, factors=[None, width])
    sch.vectorize(vector)


def _group_size(stmt, var) -> int | None:
    """K when an operand of ``stmt`` is indexed by ``var // K`` (grouped convolution in NHWC: the group of
    output channel ``var``), else None. A vector along ``var`` must then stay inside one group."""
    sizes = []

    def visit(node):
        if isinstance(node.b, tirx.IntImm) and var in _vars_in(node.a):
            sizes.append(int(node.b))

    import tvm_ffi  # noqa: PLC0415

    for region in stmt.reads:
        for rng in region.region:
            tvm_ffi.structural_walk(rng.min, (tirx.FloorDiv, visit), order="post")
    return min(sizes) if sizes else None


#: keep zero padding as its own block when each output sums at least this many products (a 3x3 conv over 64
#: channels: 576); a depthwise 3x3 conv (9) is cheaper with the bounds checks than with the copy
PAD_COPY_MIN_REDUCTION = 64


def _reduction_size(sch: s_tir.Schedule, infos) -> int:
    """Product of the reduction loop extents of the (first) reduction block; 0 when there is none."""
    for info in infos:
        if not info.is_injective():
            kinds = info.dom_kind()
            extents = [_extent(sch, lp) for lp, k in zip(sch.get_loops(info.block_rv), kinds, strict=False)
                       if k == "R"]
            return math.prod(e for e in extents if e is not None)
    return 0


def _is_padding(sch: s_tir.Schedule, info) -> bool:
    """An injective block that stores `if_then_else(in bounds, x[...], 0)`: zero padding."""
    if not info.is_injective():
        return False
    body = sch.get(info.block_rv).body
    value = getattr(body, "value", None)
    return "if_then_else" in str(getattr(getattr(value, "op", None), "name", ""))


def _pads_an_activation(sch: s_tir.Schedule, infos) -> bool:
    """Whether a zero-padding block of the kernel copies an activation (a copy made per call), not only a constant
    weight (a copy marked ``meta_schedule.layout_rewrite_preproc``: made at compile time)."""
    return any(_is_padding(sch, i) and "meta_schedule.layout_rewrite_preproc" not in sch.get(i.block_rv).annotations
               for i in infos)


def _rows_share_column_reads(stmt, outer_row_var, vec_var) -> bool:
    """Whether the operands a reduction reads along its vector axis (`vec_var`: a weight's columns) are the same
    for every index of the output's outer row axis (`outer_row_var`: a conv's image rows, not a batched matmul's
    batch), so that a tile over two row axes (``_plane_tile``) loads each column vector once for all its rows.
    Asked only of a kernel whose weight's columns were zero-padded (one that is not padded takes the plane tile
    where it holds more accumulators): Inception-v1's Winograd product [16, 9, 160] @ [16, 160, 320 -> 336]
    tiled 4 batches x 1 row x 3 vectors (12 weight vectors loaded per step for 12 accumulators) took 843 us
    against 752 for 3 rows x 3 vectors; but unpadded, the same products at 49 rows (SqueezeNet, ResNet-50,
    Inception-v1) ran 7-12% slower as 7 rows x 1 or 2 vectors than in their batch planes (AMD EPYC znver1, 1
    thread): the plane is kept there."""
    return not any(outer_row_var in _vars_in_region(r) for r in stmt.reads
                   if vec_var in _buffer_last_index_vars(r))


def _data_dependent(sch: s_tir.Schedule, infos) -> bool:
    """Whether some block indexes a buffer that the function computes (or writes any buffer) with values loaded
    from memory (gathers, NMS-style selections): compute_at / reverse_compute_at would move such blocks on a
    region estimate they do not satisfy. A data-dependent read of a buffer nothing in the function writes (a
    lookup table parameter: `lowering/ops/lookup.py`) moves no block and is not counted."""
    import tvm_ffi  # noqa: PLC0415
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415  (a tirx.BufferLoad)

    stmts = [sch.get(info.block_rv) for info in infos]
    computed = [w.source for stmt in stmts for w in stmt.writes]
    found = []
    for stmt in stmts:
        regions = [*(r for r in stmt.reads if any(r.source.same_as(b) for b in computed)), *stmt.writes]
        for region in regions:
            for rng in region.region:
                tvm_ffi.structural_walk(rng.min, (TensorLoad, found.append), order="post")
                tvm_ffi.structural_walk(rng.extent, (TensorLoad, found.append), order="post")
    return bool(found)


def _buffer_last_index_vars(region) -> set:
    """Variables in the (single-point) index of the last dimension of a buffer access region."""
    if len(region.region) == 0:
        return set()
    return _vars_in(region.region[-1].min)


def _bytes(buffer) -> int:
    """Size of a buffer with a static shape (0 when some dim is symbolic)."""
    dims = list(buffer.shape)
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return 0
    return math.prod(int(d) for d in dims) * buffer.dtype.bits // 8


def _layout_free_reads(func, stmt) -> list[int]:
    """Indices (into ``stmt.reads``) of the buffers that are constant weights of the model: the function
    parameters that ``relax.transform.AttachAttrLayoutFreeBuffers`` listed as ``layout_free_buffers``."""
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    if not free:
        return []
    params = [func.params[int(i)] for i in free]
    return [i for i, region in enumerate(stmt.reads) if any(region.source.same_as(p) for p in params)]


def _prepack_weight(sch: s_tir.Schedule, block, weight, panel: int, index_map=None, *, at_run_time: bool = False,
                    in_place: bool = False):
    """Store a constant weight ``W[..., n]`` as ``W[n // panel, ..., n % panel]`` so that one register tile's
    weights over the whole reduction are one contiguous stream. ``index_map`` (a function of the weight's
    indices, as ``IndexMap.from_func`` takes) replaces that layout (the int8 kernels also group the reduction
    axis: ``int8_kernels.py``).

    The copy is a block annotated ``meta_schedule.layout_rewrite_preproc``: the build splits it into a
    function of its own (``SplitLayoutRewritePreproc``) and evaluates that on the constant at compile time
    (``FoldConstant``), so the library holds only the packed weight. ``at_run_time``: B is computed at run time
    (an activation x activation matmul), the copy stays in the kernel, before the tiles. ``in_place``: ``weight``
    is already such a copy (a zero-padded one: ``_folded_weight_reads``), whose own layout becomes the panels.
    Returns the copy block (None: in place).
    """
    from tvm.tirx import IndexMap  # noqa: PLC0415

    reads = sch.get(block).reads
    read_index = next(i for i, region in enumerate(reads) if region.source.same_as(weight))
    ndim = len(reads[read_index].region)
    copy = None if in_place else sch.cache_read(block, read_index, "global")
    if copy is not None and not at_run_time:
        sch.annotate(copy, "meta_schedule.layout_rewrite_preproc", 1)
    sch.transform_layout(block, ("read", read_index), IndexMap.from_func(
        index_map or (lambda *idx: (idx[-1] // panel, *idx[:-1], idx[-1] % panel)), ndim=ndim))
    return copy


def _folded_weight_reads(sch: s_tir.Schedule, stmt) -> list[int]:
    """Indices (into ``stmt.reads``) of the buffers that a block marked ``meta_schedule.layout_rewrite_preproc``
    writes: a constant weight's zero-padded copy (``_pad_ragged_tile``), computed at compile time."""
    folded = [w.source for blk in _block_stmts(sch) if "meta_schedule.layout_rewrite_preproc" in blk.annotations
              for w in blk.writes]
    return [i for i, region in enumerate(stmt.reads) if any(region.source.same_as(b) for b in folded)]


def _packing_splits_off(sch: s_tir.Schedule) -> bool:
    """True when the packed weight's copy is a subtree of its own under the root block, as
    SplitLayoutRewritePreproc needs (otherwise the whole build fails on that kernel)."""
    body = sch.mod["main"].body
    root = body.block.body if isinstance(body, s_tir.SBlockRealize) else body
    return isinstance(root, tirx.SeqStmt) and len(root.seq) > 1


def _read_by_opaque_blocks(sch: s_tir.Schedule) -> list:
    """Buffers loaded inside opaque blocks (blocks that declare no reads and no writes: the hand-written loops of
    NonMaxSuppression and the like). compute_inline does not see those loads, so it removed a producer they
    read and the build failed with `Buffer T_gather is used before its definition`."""
    import tvm_ffi  # noqa: PLC0415
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415  (a tirx.BufferLoad)

    opaque: list = []
    buffers: list = []
    func = next(iter(sch.mod.functions.values()))
    tvm_ffi.structural_walk(func.body, lambda node: opaque.append(node) if isinstance(node, s_tir.SBlock)
                            and node.name_hint != "root" and not node.reads and not node.writes else None,
                            order="post")
    for block in opaque:
        tvm_ffi.structural_walk(block.body, (TensorLoad, lambda load: buffers.append(load.source)), order="post")
    return buffers


#: the most expression nodes one inlining may copy into a block that reads the inlined value more than once
#: (nodes x reads). Inlining substitutes the producer's expression at every read, so a chain of such blocks grows
#: as a product: two Mish activations in a row (x * tanh(softplus(x)), each fast_exp / fast_tanh reading its
#: argument 5-20 times) made one expression that took TVM over 5 minutes and 18 GB to inline. A producer over the
#: limit stays a block of its own (an intermediate buffer, computed by its own vectorized loop). In the 9 light
#: CNNs' and the benchmark's transformers' kernels (float and QDQ) the products reach 4,806, but for the QDQ
#: GPT-2's tanh Gelu (25,555: fast_tanh reads its 1,345-node argument 19 times), which now keeps that argument
#: (the int8 GPT-2-like export ran 4.41 ms against 4.40 with a limit above it: AMD EPYC Zen 4, 1 thread)
MAX_INLINED_NODES = 8192


def _expr_nodes(expr) -> int:
    count = [0]
    _walk(expr, lambda _node: count.__setitem__(0, count[0] + 1))
    return count[0]


def _reads_of(stmt, buffer) -> int:
    """How many loads of `buffer` the block `stmt`'s body has."""
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415  (a tirx.BufferLoad)

    loads = [0]
    _walk(stmt.body, (TensorLoad, lambda load: loads.__setitem__(0, loads[0] + load.source.same_as(buffer))))
    return loads[0]


def _inlined_nodes(producer, consumers) -> int:
    """Expression nodes that inlining block `producer` (a statement) into the blocks `consumers` copies: its
    expression's nodes times the reads of its result in all of them, when there is more than one read; 0 for a
    single read (that moves the expression, it does not copy it)."""
    if not isinstance(producer.body, tirx.BufferStore) or len(producer.writes) != 1:
        return 0
    reads = sum(_reads_of(c, producer.writes[0].source) for c in consumers)
    return reads * _expr_nodes(producer.body.value) if reads > 1 else 0


def try_inline(sch: s_tir.Schedule, blocks: list, keep: frozenset[str] = frozenset()) -> list:
    """dlight's `try_inline` (inline every block that can be, producers first; returns the rest), except that
    a block read inside an opaque block is never inlined (`_read_by_opaque_blocks`), and a consumer is never
    inlined into a block with an init statement. normalize_prim_func calls a sum of one
    term (K = 1) spatial, and TVM's reverse_compute_inline then put the consumer into both the init and the
    update: `x @ w + bias` computed `x @ w + 2 * bias`. The blocks named in ``keep`` are not inlined into their
    consumers (their consumers may still be inlined into them). No inlining copies more than
    ``MAX_INLINED_NODES`` expression nodes into a block that reads the value several times."""

    def trial(inline, allowed) -> int | None:
        for i, block in enumerate(blocks):
            if not allowed(block):
                continue
            try:
                inline(block.block_rv)
            except Exception:  # noqa: BLE001 - this block cannot be inlined: try the next one
                continue
            return i
        return None

    def producers_have_no_init(block) -> bool:
        producers = [sch.get(p) for p in sch.get_producers(block.block_rv)]
        consumer = [sch.get(block.block_rv)]
        return all(p.init is None and _inlined_nodes(p, consumer) <= MAX_INLINED_NODES for p in producers)

    hidden = _read_by_opaque_blocks(sch)

    def not_read_opaquely(block) -> bool:
        stmt = sch.get(block.block_rv)
        if stmt.name_hint in keep or any(w.source.same_as(b) for w in stmt.writes for b in hidden):
            return False
        consumers = [sch.get(c) for c in sch.get_consumers(block.block_rv)]
        return _inlined_nodes(stmt, consumers) <= MAX_INLINED_NODES

    while True:
        i = trial(sch.compute_inline, not_read_opaquely)
        if i is None:
            i = trial(sch.reverse_compute_inline, producers_have_no_init)
        if i is None:
            return blocks
        blocks.pop(i)


def split_packed_weights():
    """TVM's SplitLayoutRewritePreproc (the packed weights' copies become kernels of their own, folded at compile
    time), run only when some kernel packs a weight: the pass also inspects every other kernel and rejects
    shapes it does not expect (a scatter's single opaque block), failing builds that have nothing to split."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    split = relax.transform.SplitLayoutRewritePreproc()

    def packs(func) -> bool:  # (TVM 0.27 has no Python visitor for s_tir statements: read the printed form)
        return "meta_schedule.layout_rewrite_preproc" in func.script()

    @tvm.transform.module_pass(opt_level=0, name="optc_split_packed_weights")
    def _pass(mod, ctx):
        if any(isinstance(f, tirx.PrimFunc) and packs(f) for _, f in mod.functions_items()):
            return split(mod)
        return mod

    return _pass


class _Rule(ScheduleRule):
    """A rule whose recipe (``schedule``) may meet a kernel it cannot handle: a schedule primitive's error then
    means "does not apply" (the next rule gets the kernel), never a failed build."""

    def apply(self, func, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not _is_cpu(target):
            return None
        try:
            sch = self.schedule(func, target)
            if sch is not None:
                _init_before_symbolic_reductions(sch)
            return sch
        # InternalError: e.g. fusing a zero-extent loop divides by 0 (ZeroDivisionError: a recipe's own tile
        # arithmetic on a zero extent); ValueError: reverse_compute_at of an epilogue that reads the output at an
        # offset ("TensorRegion pattern match failed")
        except (s_tir.ScheduleError, InternalError, ValueError, ZeroDivisionError):
            return None

    def schedule(self, func, target: Target):
        raise NotImplementedError


def _init_before_symbolic_reductions(sch: s_tir.Schedule) -> None:
    """Decompose every reduction block that still holds its init (``T.init()``, run on the first reduction
    iteration) and has a reduction loop of symbolic or zero extent: the init goes before its outermost reduction
    loop. A sum over a length that is 0 when the model runs (a matmul over zero keys) otherwise never ran its init
    and left the output uninitialized (dlight's GEMV rule kept the init inside: [2, 1, 3, 0] @ [2, 1, 0, 1] gave 8e6,
    not 0; a Conv of 0 input channels with a bias gave NaN, not the bias)."""
    import tvm_ffi  # noqa: PLC0415

    realizes: list = []
    tvm_ffi.structural_walk(sch.mod["main"].body, (s_tir.SBlockRealize, realizes.append), order="post")
    for realize in realizes:
        stmt = realize.block
        if stmt.init is None:
            continue
        reduce_vars = set()
        for iv, value in zip(stmt.iter_vars, realize.iter_values, strict=True):
            if iv.iter_type != 0:
                reduce_vars |= _vars_in(value)
        if not reduce_vars:
            continue
        block = sch.get_sblock(stmt.name_hint)
        loops = [lp for lp in sch.get_loops(block) if sch.get(lp).loop_var in reduce_vars]
        if loops and any(_extent(sch, lp) in (None, 0) for lp in loops):
            sch.decompose_reduction(block, loops[0])


class Guarded(_Rule):
    """One of dlight's rules under `_Rule`'s error handling: dlight's CPU GEMV asserted (`normalize: assert
    s_loops`) on the matrix-vector product of an Expand of a scalar, and the whole build failed."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def schedule(self, func, target: Target):
        try:
            return self.rule.apply(func, target, False)
        except AssertionError:
            return None


#: pad a matmul whose rows or vector axis do not divide into register tiles (ViT's 197 tokens) to the next
#: multiple of this many rows (a whole tile of u_m <= 8 rows) and of the vector width
PAD_ROWS = 8
#: vectors per tile row of a matmul whose columns (its vector axis) are symbolic: the columns are zero-padded to a
#: multiple of this many vectors (``_pad_ragged_tile``), so that the tile splits them with no predicate
SYMBOLIC_COLUMN_VECTORS = 2


def _pad_ragged_tile(sch: s_tir.Schedule, target: Target, *, pad_weights: bool = True) -> tuple[bool, bool, bool]:
    """Pad the iteration space of an einsum-shaped reduction (matmul, batched matmul: ``S...S R...R`` whose
    reads are indexed by the loop variables) whose output rows have no divisor in 3..8 or whose contiguous
    axis has no even divisor up to the vector width, with ``pad_einsum``: zero-padded copies of the
    activations, the products over the padding discarded by a crop. Without it the register tile runs with
    a predicate on every lane (a 197 x 197 x 64 batched matmul: 21 ms predicated, 0.5 ms padded, AMD EPYC).
    Rows that index a constant weight are never padded; columns that do are padded to whole vectors in weights
    too small to be packed into panels (below PREPACK_MIN_BYTES), and in packed ones to the count of vectors
    `_column_step` chooses (a wider tile: 43 vectors to 45); that zero-padded copy is computed at compile time
    (a packed one is packed in place by TiledReduction: the library holds only the padded, packed weight).
    Exact: the padded products are zeros that no output reads. ``pad_weights=False``: no weight is padded (for
    MetaSchedule: ``TiledReduction``'s). Returns (whether it padded, whether it padded the
    columns: the vector axis, whether it padded a weight's columns)."""
    infos = normalize_prim_func(sch)
    if infos is None:
        return False, False, False
    mains = [i for i in infos if not i.is_injective()]
    if len(mains) != 1:
        return False, False, False
    kinds = mains[0].dom_kind()
    n_s = len(kinds) - len(kinds.lstrip("S"))
    if n_s < 2 or n_s == len(kinds) or kinds[n_s:].strip("R"):
        return False, False, False
    block = mains[0].block_rv
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False, False, False
    extents = [_extent(sch, lp) for lp in sch.get_loops(block)]  # None: symbolic
    lanes = _vector_lanes(target, stmt.writes[0].source.dtype.bits)
    s_vars = [iv.var for iv in stmt.iter_vars][:n_s]
    weights = [stmt.reads[i] for i in _layout_free_reads(sch.mod["main"], stmt)]

    def indexes_weight(var) -> bool:
        return any(var in _vars_in_region(r) for r in weights)

    m, n = extents[n_s - 2], extents[n_s - 1]
    padding = [1] * len(extents)
    # symbolic rows (a dynamic batch or sequence length) are padded too: a predicated tile's intermediate
    # cannot be compacted to the tile, and every tile then allocated all N rows (a dense layer 14x slower)
    ragged = m is None or (m > PAD_ROWS and _largest_divisor(m, PAD_ROWS) < 3)
    if ragged and not indexes_weight(s_vars[-2]):
        padding[n_s - 2] = PAD_ROWS
    if n is None:  # symbolic columns (a dynamic sequence's scores Q K^T): whole tiles of vectors, if no weight's
        padding[n_s - 1] = lanes * SYMBOLIC_COLUMN_VECTORS
        if indexes_weight(s_vars[-1]) or not _pads_as_einsum(sch, stmt, padding):
            return False, False, False
        sch.pad_einsum(block, padding)
        return True, True, False
    if n > lanes and _largest_divisor(n, lanes, [lanes, lanes // 2, lanes // 4]) < 2 \
            and not indexes_weight(s_vars[-1]):
        padding[n_s - 1] = lanes
    # a weight's columns that are not whole vectors (24, 40 output channels: pruned or MobileNet-style layers)
    # ran in half-width vectors: zero-padded to whole ones at compile time (a constant's pad copy is split off
    # and folded as packing is), the products over the padding discarded by the crop. A weight large enough to
    # be packed into panels is padded where that gives a tile with more accumulators (`_column_step`: 43
    # vectors to 45), its padded copy packed in place (TiledReduction), so the library holds one weight
    activations = [r for r in stmt.reads if not any(r.source.same_as(w.source) for w in weights)]
    column_weights = [r for r in weights if s_vars[-1] in _vars_in_region(r)]
    step = 0  # vectors whose multiple the weight's columns are padded to (0: not padded)
    # (not where the columns index an activation too: a depthwise conv's padded copy would be made per call)
    if pad_weights and n > lanes and column_weights and not any(s_vars[-1] in _vars_in_region(r) for r in activations):
        if all(_bytes(r.source) < PREPACK_MIN_BYTES for r in column_weights):
            step = 1 if n % lanes else 0
        else:
            step = _packed_column_step(stmt, s_vars[-1], column_weights, m, n, lanes,
                                       math.prod(e for e in extents[n_s:] if e is not None),
                                       rows_padded=padding[n_s - 2] > 1, registers=vector_registers(target))
    weight_columns = step > 0
    if weight_columns:
        padding[n_s - 1] = lanes * step
    if not _pads_as_einsum(sch, stmt, padding):
        if not weight_columns:
            return False, False, False  # not an einsum (strided windows, gathers): the predicated tile stays
        weight_columns, padding[n_s - 1] = False, 1
        if not _pads_as_einsum(sch, stmt, padding):
            return False, False, False
    if padding == [1] * len(extents):
        return False, False, False
    before = {b.name_hint for b in _block_stmts(sch)}
    sch.pad_einsum(block, padding)
    if padding[n_s - 1] == 1:  # only rows padded: their activations read in place, at clamped rows
        _read_padded_rows_clamped(sch, {b.name_hint for b in _block_stmts(sch)} - before)
    if weight_columns:
        weight_buffers = {r.source.name for r in weights}
        for blk in _block_stmts(sch):
            if blk.name_hint not in before and {r.source.name for r in blk.reads} & weight_buffers:
                # a constant weight's zero-padded copy: computed at compile time, as packing is
                sch.annotate(sch.get_sblock(blk.name_hint), "meta_schedule.layout_rewrite_preproc", 1)
    return True, padding[n_s - 1] > 1, weight_columns


def _read_padded_rows_clamped(sch: s_tir.Schedule, names: set[str]) -> None:
    """Turn ``pad_einsum``'s zero-padded copies of activations, padded along the output rows only, into reads at
    clamped rows: ``x_pad[.., i, ..] = x[.., min(i, rows - 1), ..]`` instead of ``i < rows ? x[.., i, ..] : 0``.
    Exact: a padded row of the activation feeds only the padded rows of the output (a row axis is spatial, not
    summed over), which the crop discards, so any finite or non-finite value there is as good as zero. No longer
    a padding block, the copy is inlined into the matmul, which then reads the activation in place (LLVM hoists
    the clamped row's address out of the reduction loop): no workspace copy of [rows, K] per call, bit-equal
    results (AMD EPYC, AVX2, medians: [1, S, 256] @ [256, 688] at S = 128 1.42 -> 1.40 ms, 0.85 -> 0.83 ms at 2
    threads; [1, 4, S, S] @ [1, 4, S, 64] at S = 197 787 -> 734 us; [1, 3, 197, 197] @ [1, 3, 197, 64] 721 -> 672
    us). With zero rows (rows == 0) no padded row runs either: the tile loop is empty."""
    import tvm_ffi  # noqa: PLC0415

    for blk_rv in sch.get_child_blocks(sch.get_sblock("root")):
        blk = sch.get(blk_rv)
        if blk.name_hint not in names or len(blk.reads) != 1 or len(blk.writes) != 1:
            continue
        store, read = blk.body, blk.reads[0]
        value = getattr(store, "value", None)
        if "if_then_else" not in str(getattr(getattr(value, "op", None), "name", "")):
            continue  # the crop of the padded output (a plain copy)
        load = value.args[1]
        if not isinstance(load, ir.expr.TensorLoad) or not load.source.same_as(read.source):
            continue
        src_shape, dst_shape = read.source.ty.shape, store.buffer.ty.shape
        if not len(load.indices) == len(read.region) == len(src_shape) == len(dst_shape):
            continue
        clamped, region = [], []
        for idx, rng, src_ext, dst_ext in zip(load.indices, read.region, src_shape, dst_shape, strict=True):
            if tvm_ffi.structural_equal(src_ext, dst_ext):
                clamped.append(idx)
                region.append(rng)
            else:
                row = tirx.Min(idx, src_ext - 1)
                clamped.append(row)
                region.append(ir.Range.from_min_extent(row, 1))
        body = tirx.BufferStore(store.buffer, tirx.BufferLoad(load.source, clamped), store.indices)
        new = s_tir.stmt.SBlock(blk.iter_vars, [type(read)(read.source, region, read.ty)], blk.writes, blk.name_hint,
                                body, blk.init, blk.alloc_buffers, blk.match_buffers, blk.annotations)
        sch.state.replace(sch.get_sref(blk_rv), new, {blk: new})


def _packed_column_step(stmt, col, column_weights: list, m: int | None, n: int, lanes: int, reduction: int, *,
                        rows_padded: bool, registers: int = 32) -> int:
    """`_column_step` for an einsum block `stmt` whose `n` output columns (variable `col`) index only constant
    weights large enough to be packed into panels (`column_weights`, regions of `stmt.reads`), each output a sum
    of `reduction` products: 0 (not padded) unless each weight's last index is `col` (a panel per tile) and the
    `m` rows are static (padded to whole tiles of PAD_ROWS where `rows_padded`), at least two (a matrix x
    vector's tile is one row)."""
    if m is None or m < 2 or any(_buffer_last_index_vars(r) != {col} or not _bytes(r.source)
                                 for r in column_weights):
        return 0
    rows = -(-m // PAD_ROWS) * PAD_ROWS if rows_padded else m
    vector_bytes = lanes * stmt.writes[0].source.dtype.bits // 8
    return _column_step(rows, n, lanes, max_accumulators(vector_bytes, 0 if rows_padded else reduction, registers),
                        max_accumulators(vector_bytes, 0, registers), registers)


#: a sliding-window reduction loop (a depthwise conv's kernel width) of at most this many taps is unrolled inside
#: the register tile (``_window_loop``)
WINDOW_UNROLL_MAX = 7


def _window_loop(sch: s_tir.Schedule, stmt, r_loops: list, row_var):
    """The innermost reduction loop when it slides along the tile rows: an operand is read at ``row + tap`` (any
    strides) in one index, as a depthwise or pooling kernel's width is, its extent is at most WINDOW_UNROLL_MAX and
    an outer reduction loop is left (the tile's init goes there). Else None.

    Unrolled inside the tile, the taps of neighbouring outputs read the same input vector, which LLVM then loads
    and widens once (a 3x3 depthwise conv over 7 rows: 9 loads per tap row instead of 21). A uint8 depthwise conv
    also becomes pairs of products on ``vpdpwssd``: MobileNetV2-like int8 (depthwise 3x3 at 112x112 to 7x7)
    2.07 -> 1.93 ms, float32 3.79 -> 3.75 ms (AMD EPYC Zen 5, 1 thread)."""
    if len(r_loops) < 2 or (_extent(sch, r_loops[-1]) or WINDOW_UNROLL_MAX + 1) > WINDOW_UNROLL_MAX:
        return None
    tap = stmt.iter_vars[len(stmt.iter_vars) - 1].var
    slides = any({row_var, tap} <= _vars_in(rng.min)
                 for region in stmt.reads if not region.source.same_as(stmt.writes[0].source)
                 for rng in region.region)
    return r_loops[-1] if slides else None


#: a pooling window's register tile: one output pixel, up to this many vectors of its channels
POOL_TILE_VECTORS = 8
#: accumulators of a tile whose window taps are unrolled inside it (a depthwise conv) with 16 vector registers:
#: each weight vector is reused across the tile's rows and each input vector across the taps, and with 12
#: accumulators LLVM spilled both to the stack (151 vector moves in a 108-FMA loop). With 8, MobileNetV2's
#: depthwise 3x3 convs over 96 channels at 112 x 112 stride 2: 1663 -> 1146 us, 144 at 56 x 56: 982 -> 568, 192
#: at 28 x 28: 220 -> 152 (onnxruntime 831, 537, 232; 6 or 4 accumulators no better; AMD EPYC znver1, 1 thread)
WINDOW_MAX_ACC = 8


def _pooling_window(sch: s_tir.Schedule, stmt, r_loops: list, row_var) -> bool:
    """Whether reduction block `stmt` is a pooling window: it reads one buffer besides its own output, along a
    window that slides with the tile rows (``_window_loop``). Such a kernel reuses no operand across a tile's rows
    the way a convolution reuses its weights, and its tile is one pixel by up to POOL_TILE_VECTORS vectors of
    channels, the taps outside the tile (each tap's channels read contiguously; the accumulators below the stack
    limit): SqueezeNet's 3x3 stride-2 NHWC max-pools over 64, 128 and 256 channels 125 -> 94, 62 -> 55 and 37 -> 27
    us against tiles of 5 pixels by 2 vectors (AMD EPYC Zen 4, 1 thread)."""
    operands = {r.source.name for r in stmt.reads if not r.source.same_as(stmt.writes[0].source)}
    return len(operands) == 1 and _window_loop(sch, stmt, r_loops, row_var) is not None


def _pads_as_einsum(sch: s_tir.Schedule, stmt, padding: list[int]) -> bool:
    """Whether `pad_einsum` takes this padding (on a copy of the schedule): no padding at all, or an einsum
    (not strided windows or gathers, where the predicated tile stays)."""
    if padding == [1] * len(padding):
        return True
    trial = sch.copy()
    try:
        trial.pad_einsum(trial.get_sblock(stmt.name_hint), padding)
    except (s_tir.ScheduleError, InternalError, ValueError):
        return False
    return True


def _read_through_arithmetic(sch: s_tir.Schedule, buffer) -> bool:
    """Whether a block reads ``buffer`` at an index that is neither a loop variable nor a constant."""
    return any(r.source.same_as(buffer) and not all(isinstance(rng.min, tirx.Var | tirx.IntImm) for rng in r.region)
               for blk in _block_stmts(sch) for r in blk.reads)


def _keep_copy_before_arithmetic_reads(sch: s_tir.Schedule, infos: list) -> frozenset[str]:
    """Names of the copy blocks that must stay blocks of their own (``try_inline(keep=...)``), computed per tile
    before the epilogues: where an epilogue reads the reduction's result at an index that is not a loop variable
    (``y5[b, c // K, i, j, c % K]``: ``grouped_conv.py``), the reduction's result is first copied out by a block
    that reads it at its loop variables, pad_einsum's crop or else a ``cache_write``, and the epilogues are inlined
    into that copy. Read directly through that index, reverse_compute_at bounded the epilogue by the padded tile
    (c in [g K, g K + 48) for K = 34: each tile also wrote the next group's outputs, from values not yet computed),
    and without padding the buffer's per-tile region kept an inner loop variable (the build failed)."""
    mains = [i for i in infos if not i.is_injective()]
    if len(mains) != 1:
        return frozenset()
    main = mains[0].block_rv
    result = sch.get(main).writes[0].source
    crops = [b for b in _block_stmts(sch) if any(r.source.same_as(result) for r in b.reads)
             and not any(w.source.same_as(result) for w in b.writes)]
    kept = {crop.name_hint for crop in crops if _read_through_arithmetic(sch, crop.writes[0].source)}
    if not kept and _read_through_arithmetic(sch, result):
        kept.add(sch.get(sch.cache_write(main, 0, "global")).name_hint)
    return frozenset(kept)


def _block_stmts(sch: s_tir.Schedule) -> list:
    """The blocks directly under the root block (pad_einsum's copies are)."""
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


class TiledReduction(_Rule):
    """Register-tiled, vectorized, parallel schedule for one reduction block + injective epilogues.

    With no arguments every choice is a heuristic. The tuner also measures variants (``variants()``) that fix
    one choice: ``u_n`` vectors per tile row, whether the packed-weight ``panel_outer`` loop goes outermost,
    and whether zero padding is a ``pad_copy`` of its own. ``pad_weights=False`` (the tuner's rules) pads no
    constant weight's columns: MetaSchedule's builder and its argument lists drop compile-time blocks with
    ``RemoveWeightLayoutRewriteBlock``, which takes only plain copies (a zero-padded one failed its check, so the
    default schedule of such a kernel was never measured, and a tuned [128, 256] @ [256, 688] ran 3.6x slower
    than the untuned one).
    """

    def __init__(self, *, u_n: int | None = None, panel_outer: bool | None = None, pad_copy: bool | None = None,
                 pad_weights: bool = True):
        self.u_n, self.panel_outer, self.pad_copy, self.pad_weights = u_n, panel_outer, pad_copy, pad_weights

    @classmethod
    def variants(cls) -> list[TiledReduction]:
        """The rule with one heuristic choice fixed each way (for measuring, not for untuned builds; padding no
        weight, as the tuner's ``cpu_rules(tunable=True)``)."""
        choices = [{"u_n": u} for u in (1, 2, 3, 4)] + [{"panel_outer": b} for b in (True, False)] \
            + [{"pad_copy": b} for b in (True, False)]
        return [cls(**choice, pad_weights=False) for choice in choices]

    def schedule(self, func, target: Target):  # noqa: C901 (one linear recipe)
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or _data_dependent(sch, infos):
            return None
        padded, padded_columns, padded_weight = _pad_ragged_tile(sch, target, pad_weights=self.pad_weights)
        if padded:
            infos = normalize_prim_func(sch)
        activation_copy = padded and (not padded_weight or _pads_an_activation(sch, infos))
        # zero padding stays a block of its own: inlined, it puts a bounds check on every load of the
        # innermost reduction loop; materialized, it is one cheap vectorized copy
        pad_copy = self.pad_copy if self.pad_copy is not None else \
            padded or _reduction_size(sch, infos) >= PAD_COPY_MIN_REDUCTION
        pads = [i for i in infos if _is_padding(sch, i)] if pad_copy else []
        kept_crops = _keep_copy_before_arithmetic_reads(sch, infos)
        if kept_crops:
            infos = normalize_prim_func(sch)
            pads = [i for i in infos if _is_padding(sch, i)] if pad_copy else []
        infos = try_inline(sch, [i for i in infos if i not in pads], keep=kept_crops)
        reductions = [i for i, b in enumerate(infos) if not b.is_injective()]
        if len(reductions) != 1 or reductions[0] != 0:
            return None
        main, epilogues = infos[0], infos[1:]
        if any(not e.is_injective() for e in epilogues):
            return None
        # epilogues not inlined into a kept copy (one that broadcasts the result to a larger shape): computed after
        # all the tiles, as an elementwise kernel. At the tile, their region read through the index arithmetic
        # was bounded by the whole group, not the tile's panel: they read columns not yet computed
        after = [e for e in epilogues if kept_crops and sch.get(e.block_rv).name_hint not in kept_crops]
        epilogues = [e for e in epilogues if e not in after]
        kinds = main.dom_kind()
        if "O" in kinds or "S" not in kinds:
            return None
        n_s = len(kinds) - len(kinds.lstrip("S"))
        if kinds[n_s:].strip("R") or len(kinds) == n_s:  # want S...S R...R
            return None
        block = main.block_rv
        stmt = sch.get(block)
        if len(stmt.writes) != 1:
            return None
        iter_vars = [iv.var for iv in stmt.iter_vars]
        s_vars = iter_vars[:n_s]
        out_last = _buffer_last_index_vars(stmt.writes[0])
        vec_var = s_vars[-1]
        # the innermost spatial axis must be the output's contiguous axis and be contiguous in at
        # least one operand (weights/activations); otherwise vectorizing it would gather
        vectorizable = out_last == {vec_var} and any(
            vec_var in _buffer_last_index_vars(r) for r in stmt.reads
        )
        if not vectorizable:
            return None
        loops = sch.get_loops(block)
        s_loops, r_loops = loops[:n_s], loops[n_s:]
        extents = [_extent(sch, lp) for lp in s_loops]
        dtype_bits = stmt.writes[0].source.dtype.bits
        lanes = _vector_lanes(target, dtype_bits)
        # symbolic columns: only padded to whole tiles of SYMBOLIC_COLUMN_VECTORS vectors (_pad_ragged_tile)
        symbolic_columns = extents[-1] is None and padded_columns and _divisible(
            sch.get(s_loops[-1]).extent, lanes * SYMBOLIC_COLUMN_VECTORS)
        if extents[-1] is None and not symbolic_columns:
            return None
        # a symbolic axis other than the vector one (a dynamic batch or sequence length): the tile is chosen
        # from the static axes, symbolic rows tile at the largest height (padded to whole tiles above where the
        # kernel is an einsum, else the last tile predicated), and the kernel runs parallel (its size is unknown
        # until run time)
        symbolic = any(e is None for e in extents)
        work = None if symbolic else math.prod(extents)
        reduction = math.prod(e for e in (_extent(sch, lp) for lp in r_loops) if e is not None)

        # --- grouped convolution: split the channel axis into (group, channel in group) so that the input
        # channel index `c // K * K + rc` is one scalar per group and a vector never straddles two groups
        group_loops = []
        group = None if symbolic_columns else _group_size(stmt, vec_var)
        if group is not None and group < extents[-1]:
            if extents[-1] % group:
                return None
            g_loop, c_loop = sch.split(s_loops[-1], factors=[None, group])
            group_loops, s_loops, extents = [g_loop], [*s_loops[:-1], c_loop], [*extents[:-1], group]

        # --- choose the register tile: u_m rows x (u_n x vec) columns (u_h rows of the axis before)
        n_ext = extents[-1]  # None: symbolic columns, whole tiles of SYMBOLIC_COLUMN_VECTORS vectors
        m_ext = extents[-2] if n_s >= 2 else 1  # None: symbolic rows
        if m_ext is None and not padded and sum(e is None for e in extents) > 1:
            # symbolic rows that are not padded (a window's reads: a pool or a depthwise conv over a symbolic image
            # width) under another symbolic loop: the tile's predicated rows and the fused symbolic loops gave the
            # write-back from the tile's buffer a region TVM bounded by the padded width (2x the output's): it
            # stored past the output's end (a breaker: heap corruption, 1x1 conv -> 3x3/2 max-pool over [1, 40, H,
            # W]). Left to the rules after this one
            return None
        window = _window_loop(sch, stmt, r_loops, s_vars[-2]) if n_s >= 2 else None
        vec, n_vecs, u_n, u_h, u_m = register_tile(
            extents[-3] if n_s >= 3 else None, m_ext, n_ext, n_s=n_s, lanes=lanes, dtype_bits=dtype_bits,
            reduction=reduction, registers=vector_registers(target), padded=padded, grouped=bool(group_loops),
            symbolic_columns=symbolic_columns, fixed_u_n=self.u_n, window=window is not None,
            plane=not padded or (not activation_copy and n_s >= 3
                                 and _rows_share_column_reads(stmt, s_vars[-3], vec_var)))
        pooling = self.u_n is None and n_s >= 2 and m_ext is not None and not group_loops \
            and not symbolic_columns and _pooling_window(sch, stmt, r_loops, s_vars[-2])
        if pooling:
            u_n, u_h, u_m = _largest_divisor(n_vecs, POOL_TILE_VECTORS), 1, 1

        whole_panels = symbolic_columns or n_ext % (u_n * vec) == 0
        # a padded kernel's tile is whole in the padded buffer but not in the output its epilogue writes (13 rows
        # of a tile of 8 padded to 16): its epilogue is predicated, so it is not exact either
        exact_tile = whole_panels and m_ext is not None and m_ext % u_m == 0 and not padded
        n_o, n_u, n_v = sch.split(s_loops[-1], factors=[None, u_n, vec])
        if u_h > 1:
            h_o, h_i = sch.split(s_loops[-3], factors=[None, u_h])
            m_o, m_i = sch.split(s_loops[-2], factors=[None, u_m])
            outer = list(s_loops[:-3]) + [h_o, m_o, n_o]
            inner = [h_i, m_i, n_u, n_v]
        elif n_s >= 2:
            m_o, m_i = sch.split(s_loops[-2], factors=[None, u_m])
            outer = list(s_loops[:-2]) + [m_o, *group_loops, n_o]
            inner = [m_i, n_u, n_v]
        else:
            outer = [*group_loops, n_o]
            inner = [n_u, n_v]
        # --- constant weights read along the vector axis: packed into panels of one tile's width; when they
        # outweigh the activations, the panel loop goes outermost so each panel streams from memory once
        folded = _folded_weight_reads(sch, stmt)
        packed = [idx for idx in [*_layout_free_reads(func, stmt), *folded]
                  if _buffer_last_index_vars(stmt.reads[idx]) == {vec_var}
                  and _bytes(stmt.reads[idx].source) >= PREPACK_MIN_BYTES] \
            if not group_loops and whole_panels else []
        weight_bytes = sum(_bytes(stmt.reads[i].source) for i in packed)
        act_bytes = sum(_bytes(r.source) for i, r in enumerate(stmt.reads) if i not in packed)
        if packed and len(outer) > 1 and (weight_bytes > act_bytes if self.panel_outer is None else self.panel_outer):
            outer = [outer[-1], *outer[:-1]]
        outer = _symbolic_outermost(sch, outer)
        if pooling:  # a pool's taps stay outside its one-pixel tile
            window = None
        if window is not None:  # a sliding window along the tile rows: its taps unrolled inside the tile
            r_loops = r_loops[:-1]
            inner = [*inner[:-1], window, inner[-1]]
        sch.reorder(*outer, *r_loops, *inner)
        # padded columns (ViT's 197 = 12 whole panels of 16 and a padded one): the panel loop stays a serial loop
        # inside the parallel one, so a tile's rows stay in cache across the panels and LLVM, unrolling it, drops
        # the column predicate of the whole panels' crop (in the fused loop every store was predicated per lane):
        # ViT's [3, 197, 64] @ [3, 64, 197] 218 -> 177 us (onnxruntime 158), AMD EPYC Zen 4. Not where a packed
        # weight's panel loop went outermost: the serial loop would be the rows', unrolled with the tile (a copy of
        # the reduction loop per row tile); the crop's column test is then made once per vector (688 = 43 x 16)
        ragged_cols = padded_columns and not symbolic_columns and len(outer) > 1 and not group_loops \
            and outer[-1].same_as(n_o)
        if pooling and len(outer) > 2:
            # a pooling window's pixels in parallel by image rows: fused down to the pixel, each one divided its
            # flat index by the width (SqueezeNet's 111 x 111 -> 55 x 55 max-pool: 113 -> 94 us)
            _fuse_tiles_parallel(sch, outer[:-2], work, reduction)
            tile, tile_depth = outer[-1], 3  # (the parallel rows, the pixel, the channel vectors)
        else:
            tile_depth = 1
            par = _fuse_tiles_parallel(sch, outer[:-1] if ragged_cols else outer, work, reduction)
            # a kept crop writes its real columns after all the panels of a row tile: per panel, the last one's
            # column test sat in every panel's vectorized stores, which TVM scalarized (a grouped 1x1 conv with 68
            # columns in 5 panels: 147 us, 88 us where LLVM folded the test away)
            tile = outer[-1] if ragged_cols and not kept_crops else par
        # --- epilogues per tile (bias, activation, residual): consumers computed inside the tile loop
        if epilogues:
            if symbolic:
                # the tile accumulates in a buffer of its own, which compacts to the tile: with symbolic extents
                # the intermediate the epilogues read is indexed by expressions of the symbols and stayed whole,
                # every product stored to memory ([1, 4, S, S] @ [1, 4, S, 64] at S = 128: 946 -> 438 us)
                wb = sch.cache_write(block, 0, "global")
                sch.reverse_compute_at(wb, tile, preserve_unit_loops=True)
            for epi in epilogues:
                sch.reverse_compute_at(epi.block_rv, tile, preserve_unit_loops=True)
        else:
            wb = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(wb, tile, preserve_unit_loops=True)
            epilogues_rv = [wb]
        # --- accumulate in registers: unroll the tile, vectorize the contiguous axis
        for lp in inner[:-1]:
            sch.unroll(lp)
        sch.vectorize(inner[-1])
        if r_loops:
            init = sch.decompose_reduction(block, r_loops[0])
            init_loops = sch.get_loops(init)
            for lp in init_loops[tile_depth:-1]:
                sch.unroll(lp)
            if len(init_loops) > 1:
                sch.vectorize(init_loops[-1])
        for epi_rv in [e.block_rv for e in epilogues] if epilogues else epilogues_rv:
            epi_loops = sch.get_loops(epi_rv)[tile_depth:]
            if epi_loops:
                # one vector across tile rows only when the tile is whole: LLVM codegen of a predicated
                # vector whose lanes span two rows computed wrong values (a 13-wide conv output, 8 lanes; with
                # -mcpu=znver4, inception_v1's 1x1 conv over 13 rows padded to 16, 16 lanes over two rows of 8)
                if len(epi_loops) > 1 and exact_tile:
                    sch.fuse(*epi_loops)
                if pooling and exact_tile:
                    # the pixel's channels as one vector (up to 8 of the target's): split into a loop of
                    # vectors, the write-back kept the accumulators in memory (SqueezeNet's 111 x 111 -> 55 x 55
                    # max-pool 108 -> 94 us)
                    sch.vectorize(sch.get_loops(epi_rv)[-1])
                    continue
                # a kept crop writes a group's real columns (34): whole vectors and a scalar tail
                _vectorize_innermost(sch, epi_rv, lanes, keep_outer=1, tail=bool(kept_crops))
        for epi in after:
            Injective.schedule_block(sch, epi.block_rv, target)
        for pad in pads:
            schedule_padding(sch, pad.block_rv, target)
        if packed:
            # weight packing is what MetaSchedule's RewriteLayout postprocessor does: a tuner that replays
            # this trace (the seeded default record) drops it and lets its postprocessor pack instead
            sch.enter_postproc()
        for idx in packed:
            _prepack_weight(sch, block, stmt.reads[idx].source, u_n * vec, in_place=idx in folded)
        if (packed or padded_weight) and not _packing_splits_off(sch):
            return None
        return sch


def _contiguous_in_last(stmt) -> bool:
    """Whether block `stmt` writes one buffer whose last index is its last iterator, and every read either
    indexes its last axis by that iterator or does not use it."""
    last_var = stmt.iter_vars[-1].var if stmt.iter_vars else None
    return (last_var is not None and len(stmt.writes) == 1
            and _buffer_last_index_vars(stmt.writes[0]) == {last_var}
            and all(last_var in _buffer_last_index_vars(r) or not (_vars_in_region(r) & {last_var})
                    for r in stmt.reads))


def _elementwise_along_last(stmt) -> bool:
    """`_contiguous_in_last`, with every access a single element or a static range (not a gather over a symbolic
    range: a linear Resize over symbolic H and W reads its input's whole [H, W] plane)."""
    return _contiguous_in_last(stmt) and all(isinstance(d.extent, tirx.IntImm)
                                             for r in [*stmt.writes, *stmt.reads] for d in r.region)


class Injective(_Rule):
    """Elementwise / broadcast / layout kernels: parallel outer loop, vectorized inner loop."""

    def schedule(self, func, target: Target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        if not infos or any(not b.is_injective() for b in infos):
            return None
        for info in infos:
            self.schedule_block(sch, info.block_rv, target)
        return sch

    @staticmethod
    def schedule_block(sch: s_tir.Schedule, block, target: Target) -> None:
        """Fuse the loops, vectorize a contiguous innermost chunk, parallelize the rest when large. Loops up
        to the last symbolic one (a dynamic batch) stay outside: the static loops after it are fused and
        vectorized as a kernel of their own size, and run in parallel over the symbolic ones when one
        iteration of those is large enough to pay for threads."""
        loops = sch.get_loops(block)
        if not loops:
            return
        stmt = sch.get(block)
        extents = [_extent(sch, lp) for lp in loops]
        symbolic = [i for i, e in enumerate(extents) if e is None]
        n_outer = symbolic[-1] + 1 if symbolic else 0
        outer, loops, extents = loops[:n_outer], loops[n_outer:], extents[n_outer:]
        work = math.prod(extents)
        if outer and not loops and len(outer) > 1 and _elementwise_along_last(stmt):
            # the innermost loop is symbolic too (attention scores [B, H, S, S] of a dynamic-axes export): it stays
            # a loop of its own under the others, fused. Fused with them, every element divided the flat index by
            # the symbolic extents (two 64-bit divisions an element: 237 us for 4 x 128 x 128 scores); a loop of
            # its own is a row that LLVM vectorizes. Only where each access follows the last axis or ignores it: a
            # gather by computed coordinates (a linear Resize over symbolic H, W) then failed in TVM's lowering
            # (IntSetAnalyzer on a float binding)
            sch.fuse(*outer[:-1])
            return
        if outer:
            if work >= PARALLEL_MIN_WORK:
                _fuse_parallel(sch, outer, None)
            elif len(outer) > 1:
                sch.fuse(*outer)
            if not loops:
                return
        bits = stmt.writes[0].source.dtype.bits if stmt.writes else 32
        lanes = _vector_lanes(target, bits)
        iter_vars = [iv.var for iv in stmt.iter_vars]
        last_var = iter_vars[-1] if iter_vars else None
        contiguous = _contiguous_in_last(stmt)
        if not contiguous and len(loops) > 1:
            parallel = not outer and work >= PARALLEL_MIN_WORK
            trial = sch.copy()  # (a copy keeps the symbol table; a failed trial leaves the strided schedule)
            try:
                vectors = _vectorize_source_rows(trial, block, target, parallel=parallel)
            except s_tir.ScheduleError:
                vectors = False
            if vectors:
                _vectorize_source_rows(sch, block, target, parallel=parallel)
            else:
                _schedule_strided(sch, loops, extents, parallel=parallel)
            return
        chunk = 1
        if contiguous and extents[-1] >= 4:
            # narrow outputs (bool, int8: 64 lanes) vectorize in as few as 4 lanes (8 = a row of an 8 x 8 image)
            chunk = _largest_divisor(extents[-1], lanes, [c for c in (lanes, lanes // 2, lanes // 4, lanes // 8)
                                                          if c >= 4])
            if chunk < 2:
                chunk = 1
        boundary = _pick_boundary(stmt, last_var) if chunk > 1 and len(loops) > 1 else 0
        if boundary:  # vectors that do not straddle a pick: every lane of one takes the same operand
            aligned = _largest_divisor(math.gcd(extents[-1], boundary), chunk,
                                       [c for c in (chunk, chunk // 2, chunk // 4) if c >= 4])
            chunk, boundary = (aligned, boundary) if aligned >= 4 else (chunk, 0)
        parallel_here = not outer and work >= PARALLEL_MIN_WORK
        if contiguous and chunk == 1 and _vector_rows_and_tail(sch, loops, extents, lanes, parallel_here):
            return
        # an operand broadcast along the rows (a per-row statistic: a layer norm's variance, quantized): the row
        # loop stays its own, so that what is computed from it alone is hoisted out of the row's vectors (fused
        # with the columns, every vector recomputed it: BERT-like int8's normalizing kernel 19 us a call)
        # and a row that picks its operand by its column (a Concat or a Pad along the last axis: RoPE's rotate_half,
        # cat(-x[..., 16:], x[..., :16])): fused with the rows, the column was a modulo of the flat index and TVM
        # computed the picks lane by lane: a Llama-style int8 rotary kernel took 55.8 us, 14.9 us with its rows
        # (AMD EPYC Zen 5, 1 thread)
        rows_of_their_own = chunk > 1 and len(loops) > 1 and extents[-1] % chunk == 0 and (
            (extents[-1] >= 2 * chunk and math.prod(extents[:-1]) >= PARALLEL_MIN_ROWS and any(
                _vars_in_region(r) and last_var not in _vars_in_region(r) for r in stmt.reads))
            or boundary > 0)
        if rows_of_their_own:
            rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            cols, v = sch.split(loops[-1], factors=[None, chunk])
            if parallel_here:
                sch.parallel(rows)
            sch.vectorize(v)
            if boundary:
                _partition_at_picks(sch, cols, extents[-1] // chunk, boundary // chunk)
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if chunk > 1:
            o, v = sch.split(fused, factors=[None, chunk])
            if parallel_here:
                sch.parallel(o)
            sch.vectorize(v)
        elif parallel_here:
            o, _ = sch.split(fused, factors=[None, 64])
            sch.parallel(o)


#: the most pieces a row's vector loop is partitioned into at its picks (`_partition_at_picks`)
MAX_PICK_PIECES = 8


def _partition_at_picks(sch: s_tir.Schedule, cols, n: int, step: int) -> None:
    """The loop over a row's `n` vectors partitioned into runs of `step` vectors, one per operand a pick (a
    Concat, Pad or Where along the row) takes there (`_pick_boundary`): in each run the condition is a constant
    that lowering folds, so every vector loads one operand. Left one loop, the condition depends on the vector's
    lanes and TVM computed the element lane by lane (its loads of the other operand may be out of bounds, so it
    cannot select between two vector loads): the Llama-style float32 rotary kernel (RoPE's rotate_half,
    [128, 8, 32]) took 65 us, 8.2 us partitioned (AMD EPYC Zen 4, 1 thread). A loop of one run, or of more than
    MAX_PICK_PIECES, is left as it is."""
    pieces = n // step if step else 0
    if 1 < pieces <= MAX_PICK_PIECES and n % step == 0:
        sch.loop_partition(cols, factors=[step] * (pieces - 1) + [None])


def _pick_boundary(stmt, var) -> int:
    """0 when the block's value does not pick between operands by a condition on loop variable `var`; else the
    gcd of the integer constants of those conditions (an ``if_then_else`` or a ``Select``: a Concat, Pad or Where
    along that axis), a step that vectors of as many lanes never straddle: RoPE's rotate_half over 32 columns,
    ``cat(-x[..., 16:], x[..., :16])``, picks at column 16."""
    conditions = []

    def on_call(call) -> None:
        if getattr(call.op, "name", "").endswith("if_then_else") and var in _vars_in(call.args[0]):
            conditions.append(call.args[0])

    def on_select(select) -> None:
        if var in _vars_in(select.condition):
            conditions.append(select.condition)

    _walk(stmt.body, (ir.Call, on_call))
    _walk(stmt.body, (tirx.Select, on_select))
    constants: list[int] = []
    for cond in conditions:
        _walk(cond, (tirx.IntImm, lambda imm: constants.append(abs(int(imm.value)))))
    return math.gcd(*constants) if conditions else 0


def _vector_rows_and_tail(sch: s_tir.Schedule, loops: list, extents: list[int], lanes: int, parallel: bool) -> bool:
    """Rows whose length no vector width divides (ViT's 197 tokens): each row's loop partitioned into whole
    vectors and a scalar tail (``loop_partition``), the rows fused (in parallel when the kernel is large). Split
    by a non-divisor instead, the vector loop is predicated lane by lane and TVM scalarizes it: a [3, 197, 197]
    dequantize took 94 us (AMD EPYC Zen 4, 1 thread). False (nothing changed) when the row is too short."""
    width = next((c for c in (lanes, lanes // 2, lanes // 4) if c >= 4 and extents[-1] >= 2 * c), 0)
    if not width:
        return False
    rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else (loops[0] if len(loops) == 2 else None)
    _vectors_and_tail(sch, loops[-1], extents[-1], width)
    if rows is not None and parallel:
        sch.parallel(rows)
    return True


def _vectorize_source_rows(sch: s_tir.Schedule, block, target: Target, *, parallel: bool) -> bool:
    """A layout kernel with arithmetic (a graph input's quantize + NCHW -> NHWC transpose, padded for the first
    convolution): computed in vectors along the source's contiguous axis, each vector's results stored with
    the output's stride. A padded one (``if_then_else(in bounds, f(x), pad)``, whose per-lane condition TVM
    would scalarize) is first split into a fill of the pad value and an interior without a condition
    (``decompose_padding``). Left one element at a time, MobileNetV2-like's [1, 3, 224, 224] -> [1, 226, 226,
    4] uint8 input kernel took 250-320 us, 6% of the int8 model (AMD EPYC Zen 4). False (nothing changed): not
    such a kernel, or a row shorter than two vectors."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or not stmt.reads or _arithmetic_ops(stmt.body) < STRIDED_VECTOR_MIN_OPS:
        return False
    loops = sch.get_loops(block)
    if "if_then_else" in stmt.body.script() and loops:
        if not sch.can_decompose_padding(block, loops[0]):
            return False
        fill = sch.decompose_padding(block, loops[0])
        fill_loops = sch.get_loops(fill)
        size = math.prod(_extent(sch, lp) or 0 for lp in fill_loops)
        fused = sch.fuse(*fill_loops) if len(fill_loops) > 1 else fill_loops[0]
        width = _vector_lanes(target, stmt.writes[0].source.dtype.bits)
        if size >= 2 * width:  # one constant stored in whole vectors over the flat buffer, and a scalar tail
            body = sch.loop_partition(fused, factors=[size - size % width, None])[0] if size % width else fused
            chunks, vector = sch.split(body, factors=[None, width])
            sch.vectorize(vector)
            if parallel:
                sch.parallel(chunks)
        stmt, loops = sch.get(block), sch.get_loops(block)
    extents = [_extent(sch, lp) for lp in loops]
    iter_vars = [iv.var for iv in stmt.iter_vars]
    if len(iter_vars) != len(loops) or any(e is None for e in extents):
        return False
    source = max(stmt.reads, key=lambda r: _bytes(r.source))
    # the source's contiguous axis: the innermost loop variable its last index steps by one (a head split fused
    # into the transpose reads x[.., head * 64 + d]: d)
    src_last, out_last = _buffer_last_index_vars(source), _buffer_last_index_vars(stmt.writes[0])
    axis = next((i for i in reversed(range(len(iter_vars))) if iter_vars[i] in src_last
                 and _steps_by_one(source.region[-1].min, iter_vars[i])), None)
    if axis is None or iter_vars[axis] in out_last:
        return False
    lanes = _vector_lanes(target, max(source.source.dtype.bits, 32))  # (narrow sources compute in 32 bits)
    if extents[axis] < 2 * lanes:
        return False
    rest = [k for k in range(len(loops)) if k != axis]
    sch.reorder(*[loops[k] for k in rest], loops[axis])
    # the loops but the source's row run in parallel; too few of them to share among threads (a K^T's 3 heads:
    # two on one thread), the rows too
    n_outer = len(rest) - 1 if not parallel or math.prod(extents[k] for k in rest[:-1]) >= PARALLEL_MIN_ROWS \
        else len(rest)
    outer = [loops[k] for k in rest[:n_outer]]
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if parallel:
            sch.parallel(fused)
    if extents[axis] % lanes:
        _vectors_and_tail(sch, loops[axis], extents[axis], lanes)
    else:
        _, vector = sch.split(loops[axis], factors=[None, lanes])
        sch.vectorize(vector)
    return True


def _steps_by_one(index, var) -> bool:
    """Whether ``index`` is linear in ``var`` with coefficient 1."""
    from tvm.sym.pattern import detect_linear_equation  # noqa: PLC0415

    coeffs = detect_linear_equation(index, [var])
    return len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm) and int(coeffs[0]) == 1


#: a strided layout kernel is computed in vectors along its source (`_vectorize_source_rows`) when its value
#: has at least this many arithmetic operations (a quantize has ~10; a plain transpose none: its scattered
#: stores would cost more than the scalar copy)
STRIDED_VECTOR_MIN_OPS = 4


def _arithmetic_ops(stmt) -> int:
    """The arithmetic nodes (binary ops, casts, min / max, selects, calls) in a block's body."""
    kinds = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Min, tirx.Max, tirx.Cast, tirx.Select, ir.expr.Call)
    count = [0]
    _walk(stmt, (kinds, lambda _: count.__setitem__(0, count[0] + 1)))
    return count[0]


def _schedule_strided(sch: s_tir.Schedule, loops: list, extents: list[int], *, parallel: bool) -> None:
    """A layout kernel whose innermost loop does not run along both the output's and the inputs' last axes (a
    transpose, NCHW -> NHWC): the innermost loops that make up at least STRIDED_ROW elements stay loops of
    their own (indices linear in them, the innermost unrolled when short), the others are fused (parallel when
    the kernel is large). Fused into one loop, every element computed its indices with a division and a modulo
    per axis: a QDQ ResNet-like's input quantize + pad + NHWC transpose ran 0.9 ms for 0.2 M bytes."""
    n_inner, size = 0, 1
    while n_inner < min(len(loops) - 1, 3) and size < STRIDED_ROW:
        n_inner += 1
        size *= extents[-n_inner]
    outer = loops[:-n_inner]
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if parallel:
        sch.parallel(fused)
    if extents[-1] <= 16:
        sch.unroll(loops[-1])


def schedule_padding(sch: s_tir.Schedule, block, target: Target) -> None:
    """A zero-padding copy (``pad_einsum``'s ``x_pad[i] = if_then_else(in bounds, x[i], 0)``): the loops but the
    innermost fused (parallel when large), the innermost (a row) vectorized in whole vectors, or left a plain
    loop that LLVM vectorizes when the row has no such divisor (197 columns). Fusing the row into the rest, as
    Injective does, indexes the unpadded source with a division and a modulo per element: ViT's [3, 197, 197]
    -> [3, 200, 197] copy took 280 us, longer than the 182 us batched matmul it pads (AMD EPYC Zen 4)."""
    loops = sch.get_loops(block)
    extents = [_extent(sch, lp) for lp in loops]
    if len(loops) < 2:
        Injective.schedule_block(sch, block, target)
        return
    if any(e is None for e in extents):
        # symbolic extents (a dynamic sequence's rows and columns): no loop fused (each fused index would divide by
        # an expression of the symbols per element), the first loop longer than 1 parallel, the row a plain loop
        # that LLVM vectorizes ([1, 4, S, S] @ [1, 4, S, 64] at S = 128, its rows padded: 438 -> 88 us, AMD Zen 4)
        wide = [lp for lp, e in zip(loops[:-1], extents[:-1], strict=True) if e is None or e > 1]
        if wide:
            sch.parallel(wide[0])
        return
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    if math.prod(extents) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    lanes = _vector_lanes(target, sch.get(block).writes[0].source.dtype.bits)
    chunk = _largest_divisor(extents[-1], lanes, [lanes, lanes // 2, lanes // 4])
    if chunk >= 4:
        _, v = sch.split(loops[-1], factors=[None, chunk])
        sch.vectorize(v)


def _vars_in_region(region) -> set:
    out = set()
    for rng in region.region:
        out |= _vars_in(rng.min)
    return out


class ParallelFallback(_Rule):
    """Anything else: inline what can be inlined, parallelize each block's outer spatial loops."""

    def schedule(self, func, target: Target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        for info in infos:
            kinds = info.dom_kind()
            n_s = len(kinds) - len(kinds.lstrip("S"))
            loops = sch.get_loops(info.block_rv)
            if n_s == 0 or not loops:
                continue
            extents = [_extent(sch, lp) for lp in loops[:n_s]]
            work = math.prod(extents) if all(e is not None for e in extents) else None
            if work is not None and work < 64:
                continue
            _fuse_parallel(sch, list(loops[:n_s]), None if work is None else work * 64)
        return sch


class RowReduction(_Rule):
    """Softmax, layer norm and the like: reduction blocks and elementwise blocks over the same rows.

    The rows are the axes that the last block uses to read a reduction's result; they become one
    (parallel) loop of the last block, and every other block is computed per row under it, so the
    row stays in cache. dlight's ``cpu.Reduction`` takes the *leading spatial loops* as the rows
    instead, which recomputes every reduction once per element when the row axis is not the leading
    one (softmax over the last axis of a 1 x N tensor: N times the work; softmax over axis 1).
    """

    def schedule(self, func, target: Target):  # noqa: C901 (one linear recipe)
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective() or _data_dependent(sch, infos):
            return None
        reductions = [i for i in infos if not i.is_injective()]
        if not reductions:
            return None
        infos = _inline_tail(sch, infos)
        for info in reductions:
            kinds = info.dom_kind()
            if kinds.rstrip("R").strip("S") or not kinds.endswith("R"):
                return None
        reduced = {sch.get(i.block_rv).writes[0].source for i in reductions}
        last = sch.get(infos[-1].block_rv)
        row_vars: set = set()
        for region in last.reads:
            if region.source in reduced:
                row_vars |= _vars_in_region(region)
        loops = sch.get_loops(infos[-1].block_rv)
        loop_vars = [iv.var for iv in last.iter_vars]
        if len(loops) != len(loop_vars):
            return None
        fill = _split_padding(sch, infos[-1].block_rv, loops[0])  # (before the blocks move under the rows)
        if fill is not None:
            Injective.schedule_block(sch, fill, target)
            loops = sch.get_loops(infos[-1].block_rv)
        row_loops = [lp for lp, v in zip(loops, loop_vars, strict=True) if v in row_vars]
        rest = [lp for lp, v in zip(loops, loop_vars, strict=True) if v not in row_vars]
        # vectors as wide as the widest value computed: a softmax whose output is quantized to uint8 computes in
        # float32 (64-lane float vectors, from the uint8 output, made BERT-like's int8 softmax 2.5x the float one)
        bits = max(sch.get(i.block_rv).writes[0].source.dtype.bits for i in [*reductions, infos[-1]]
                   if sch.get(i.block_rv).writes)
        lanes = _vector_lanes(target, bits)
        extents = [_extent(sch, lp) for lp in loops]
        work = math.prod(extents) if all(e is not None for e in extents) else None
        # a reduction already written as partial results (codegen/softmax.py: a lane axis per row) is its own
        # partials block; others are rfactored into one where the row divides into vectors
        row_shapes = [[d.value if hasattr(d, "value") else d for d in r.source.shape] for r in last.reads
                      if r.source in reduced]
        lane_blocks = {id(info) for info in reductions
                       if _has_lane_axis(sch, info, row_shapes[0] if row_shapes else None)}
        partials = {id(info): None if id(info) in lane_blocks else _vector_partials(sch, info, lanes)
                    for info in reductions}
        if row_loops:
            sch.reorder(*row_loops, *rest)
            row = _fuse_parallel(sch, row_loops, work)
            for info in reversed(infos[:-1]):
                sch.compute_at(info.block_rv, row, preserve_unit_loops=True)
                if partials.get(id(info)) is not None:  # its vector of partial results, computed before it
                    sch.compute_at(partials[id(info)], row)
        for info in infos:
            if info.is_injective():
                _vectorize_innermost(sch, info.block_rv, lanes, keep_outer=1 if row_loops else 0, tail=True)
            elif partials[id(info)] is not None or id(info) in lane_blocks:
                rf = partials[id(info)] if partials[id(info)] is not None else info.block_rv
                # compute_at orders the partials' loops as it likes: the partials' own loop goes innermost
                rf_loops = [lp for lp in sch.get_loops(rf)[1 if row_loops else 0:] if _extent(sch, lp) != 1]
                lane = next((lp for lp in rf_loops if _extent(sch, lp) % lanes == 0 and _binds_spatial(sch, rf, lp)),
                            None)
                others = [lp for lp in rf_loops if not lp.same_as(lane)]
                if lane is not None and others:  # (else the partials stay a scalar loop: still lanes chains)
                    sch.reorder(*others, lane)
                    sch.vectorize(lane)
                    sch.decompose_reduction(rf, others[-1])
            else:
                inner = sch.get_loops(info.block_rv)[-1]
                ext = _extent(sch, inner)
                if ext is not None and ext > lanes:
                    _, unrolled = sch.split(inner, factors=[None, lanes])
                    sch.annotate(unrolled, "pragma_auto_unroll_max_step", lanes)
                    sch.annotate(unrolled, "pragma_unroll_explicit", 1)
        return sch


def _split_padding(sch: s_tir.Schedule, block, loop):
    """A block that pads its output (``if_then_else(in bounds, f(x), pad)``): split at ``loop`` into a fill of
    the pad value before it and an interior without the condition (``decompose_padding``; before any block is
    computed at the interior's loops: done after, it dropped them); returns the fill block, or None (nothing to
    split). A per-lane condition in a vectorized loop is computed one lane at a time: a ViT-like's
    int8 softmax, its uint8 rows padded from 197 to 200 for the next matmul, took 2x as long (AMD EPYC Zen 5)."""
    stmt = sch.get(block)
    if "bfloat16" in {str(w.source.dtype) for w in stmt.writes}:  # (TVM stores a bf16 fill vector as uint16
        return None                                                   # lanes its legalization rejects)
    if "if_then_else" not in stmt.body.script() or not sch.can_decompose_padding(block, loop):
        return None
    return sch.decompose_padding(block, loop)


def _inline_tail(sch: s_tir.Schedule, infos: list) -> list:
    """Inline the elementwise blocks after the last reduction into the last block (producers first), so that
    the last block reads the reductions' results and RowReduction finds the rows in it. A softmax followed by
    a QuantizeLinear -> DequantizeLinear pair (a QDQ model's fake quantization: ten elementwise blocks) left the
    last block reading only the previous elementwise block: no rows, every block at the root, and the rfactor of
    the row maximum failed, so the kernel fell to the scalar ParallelFallback (3x slower). Blocks that cannot
    be inlined, or whose value is read at more than one element (inlining would compute it twice), stay
    (computed per row like the others). A softmax whose probabilities are rounded to bfloat16
    (`--precision bf16`): the rounding reads each element twice (its bits, its NaN test), was left as the last
    block and the whole kernel unscheduled by rows (BERT-like's [4, 64, 64]: 91 us, float32 17 us)."""
    import tvm_ffi  # noqa: PLC0415
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415  (a tirx.BufferLoad)

    def read_once(block) -> bool:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1 or len(sch.get(block).writes) != 1:
            return False
        out = sch.get(block).writes[0].source
        loads: list = []
        tvm_ffi.structural_walk(sch.get(consumers[0]).body, (TensorLoad, lambda load: loads.append(load)
                                                             if load.source.same_as(out) else None), order="post")
        # the same element read twice (bf16 rounding reads its input for the bits and for the NaN test) is one
        # value: LLVM computes the inlined expression once
        return len(loads) >= 1 and all(tvm_ffi.structural_equal(load.indices, loads[0].indices) for load in loads)

    last_reduction = max(i for i, info in enumerate(infos) if not info.is_injective())
    kept = infos[:last_reduction + 1]
    for info in infos[last_reduction + 1:-1]:
        try:
            if not read_once(info.block_rv):
                raise ValueError("read more than once")
            sch.compute_inline(info.block_rv)
        except (s_tir.ScheduleError, InternalError, ValueError):
            kept.append(info)
    return [*kept, infos[-1]]


def _has_lane_axis(sch: s_tir.Schedule, info, row_shape: list | None) -> bool:
    """Whether a reduction block ``S...S R...R`` computes partial results per row (codegen/softmax.py's
    ``lanes`` partials): its output's shape is the rows' shape (`row_shape`, the reduced buffers the last block
    reads) and one more axis, of a multiple of 4 up to 64."""
    stmt = sch.get(info.block_rv)
    if row_shape is None or len(stmt.writes) != 1:
        return False
    shape = [d.value if hasattr(d, "value") else d for d in stmt.writes[0].source.shape]
    return (len(shape) == len(row_shape) + 1 and shape[:-1] == row_shape and isinstance(shape[-1], int)
            and shape[-1] % 4 == 0 and 4 <= shape[-1] <= 64)


def _binds_spatial(sch: s_tir.Schedule, block, loop) -> bool:
    """Whether `loop`'s variable appears only in the bindings of `block`'s data-parallel iterators."""
    import tvm_ffi  # noqa: PLC0415

    stmt, var = sch.get(block), sch.get(loop).loop_var
    realizes: list = []
    tvm_ffi.structural_walk(sch.mod["main"].body, (s_tir.SBlockRealize, lambda r: realizes.append(r)
                                                   if r.block.same_as(stmt) else None), order="post")
    return len(realizes) == 1 and all(
        iv.iter_type == 0 for iv, value in zip(realizes[0].block.iter_vars, realizes[0].iter_values, strict=True)
        if var in _vars_in(value))


def _vector_partials(sch: s_tir.Schedule, info, lanes: int):
    """rfactor the innermost reduction loop of `info`'s block when its extent is a multiple of `lanes` (and at least
    twice it): a block computing `lanes` partial results (the vector; the caller vectorizes it), which the block
    then reduces. A scalar sum over a row is one chain of dependent adds (LLVM may not reorder them: 4 cycles
    each); the partials are `lanes` chains. The sum is taken in another order (as a matmul's); max and min give
    the same result. Returns the partials' block, or None (nothing changed) where it does not apply (another
    extent, a reducer rfactor does not know, a block it cannot split off)."""
    loops = sch.get_loops(info.block_rv)
    ext = _extent(sch, loops[-1]) if loops else None
    if ext is None or ext < 2 * lanes or ext % lanes:
        return None
    ndim = len(sch.get(info.block_rv).writes[0].region)
    trial = sch.copy()
    try:
        block = trial.get_sblock(trial.get(info.block_rv).name_hint)
        _, ri = trial.split(trial.get_loops(block)[-1], factors=[None, lanes])
        trial.rfactor(ri, factor_axis=ndim)
    except (s_tir.ScheduleError, InternalError, ValueError):
        return None
    _, ri = sch.split(loops[-1], factors=[None, lanes])
    return sch.rfactor(ri, factor_axis=ndim)


def cpu_rules(*, tunable: bool = False):
    """The rules ApplyDefaultSchedule tries, in order, on every unscheduled PrimFunc (llvm targets); ``tunable``:
    the tuner's, whose schedules MetaSchedule can build and measure (``TiledReduction``'s ``pad_weights``)."""
    from tvm.s_tir import dlight as dl  # noqa: PLC0415

    from .int8_kernels import Int8Reduction  # noqa: PLC0415 (it imports this module's helpers)
    from .nbits_kernels import NBitsMatMul  # noqa: PLC0415 (likewise)
    from .winograd import inverse_rule  # noqa: PLC0415 (likewise)

    return [Int8Reduction(), NBitsMatMul(), TiledReduction(pad_weights=not tunable), inverse_rule(), Injective(),
            Guarded(dl.cpu.GEMV()), RowReduction(), ParallelFallback()]
