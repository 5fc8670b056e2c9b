"""One CPU kernel for scaled dot-product attention: scores, bias, softmax and the second matmul fused.

Decomposed, attention is a Q K^T matmul writing [batch, heads, sq, skv] scores to memory, a softmax reading and
writing them again, and a P V matmul reading them a third time, with the head split and merge transposes of Q, V
and the output as copies of their own (ViT-like: 4 layout kernels, 2 matmuls and a softmax per layer). Here one
kernel computes, for each (batch, query head) and each block of ``rows`` query rows:

1. the block's scores S = Q_block K^T into a scratch buffer of rows x skv (L1-sized: 6 x 197 float32 for ViT), a
   register tile of ``rows`` x ``s_vectors`` vectors at a time (broadcast one Q element per row, load the vectors
   of K^T, multiply-add), K^T read from a [batch, kv heads, d, skv padded] copy made by the caller;
2. the bias added (an additive mask, broadcast over any of its leading dims), the padding columns set to -inf;
3. the safe softmax of ONNX's Attention reference (onnx/reference/ops/op_attention.py, `_softmax`): the row max
   (0 when it is -inf), e = exp(s - max), their sum (1 when it is 0), p = e / sum; a row whose bias is -inf for
   every key gives zeros (the spec's fully masked row); NaN propagates through its row;
4. Y_block = P V, a register tile of ``rows`` x ``o_vectors`` vectors, written to the output's rows.

Q, V and Y are read and written in BSNH layout ([batch, seq, heads, size]), the layout the projections write:
the head split and merge are index arithmetic, not copies. The scores never leave the scratch buffer. The
same float32 operations as the decomposed form, summed in another order (the matmuls' reductions and the
softmax's row sums as ``lanes`` partial sums): results equal to within float32 rounding, not bitwise.

``exp``: "fast" uses TOPI's fast_exp polynomial (``fast_exp_expr``: the same expression, exactly, as the
elementwise fast math pass uses), "libm" LLVM's expf.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

#: query rows per block of the kernel's work (its register tiles' height): the largest within the accumulator
#: budget, at least MIN_ROWS
MIN_ROWS = 4
#: blocks of query rows per parallel task: each task allocates its scratch buffer once
BLOCKS_PER_TASK = 4
#: the largest finite float32
FLT_MAX = 3.4028234663852886e38
#: bias rows per parallel task of ``row_limits_kernel`` (its vector buffers are allocated once a task)
LIMIT_ROWS_PER_TASK = 16
#: score tile width (vectors) for fewer than MIN_ROWS query rows: wider tiles pad the keys further
MAX_SHORT_VECTORS = 4


@dataclass(frozen=True)
class AttentionShape:
    """The shape of one attention: Q [batch, sq, q_heads, d], K [batch, skv, kv_heads, d],
    V [batch, skv, kv_heads, dv], Y [batch, sq, q_heads, dv]; ``bias``: the additive bias's 4 dims, each 1 or
    (batch, q_heads, sq, skv)'s, or None. q_heads is a multiple of kv_heads (grouped-query attention: query head
    h reads K/V head h // (q_heads / kv_heads)). batch, sq and skv may be symbolic (int64 TIR expressions of the
    caller's Relax function, known at run time: a dynamic-axes export's batch and sequence); the head counts and
    sizes are ints."""

    batch: int | object
    q_heads: int
    kv_heads: int
    sq: int | object
    skv: int | object
    d: int
    dv: int
    bias: tuple | None = None

    @property
    def limits_keys(self) -> bool:
        """Whether the kernel computes each block of query rows only up to the last key its bias leaves open
        (``row_limits_kernel``): a bias with a key axis of its own."""
        return self.bias is not None and not (isinstance(self.bias[3], int) and self.bias[3] == 1)


@dataclass(frozen=True)
class AttentionTiles:
    """The kernel's register tiles: ``lanes`` float32 per vector, ``rows`` query rows per block,
    ``s_vectors`` / ``o_vectors``: vectors per tile row of the scores / the output."""

    lanes: int
    rows: int
    s_vectors: int
    o_vectors: int

    @property
    def key_step(self) -> int:
        """Keys per score tile: skv is padded to a multiple of it."""
        return self.lanes * self.s_vectors


def choose_tiles(shape: AttentionShape, lanes: int, max_acc: int) -> AttentionTiles | None:
    """The tiles for `shape` with vectors of `lanes` float32 and at most `max_acc` accumulator vectors per tile
    (``schedules.max_accumulators``); None when dv is not a multiple of a vector of at least 4 lanes."""
    while lanes > 4 and shape.dv % lanes:
        lanes //= 2
    if shape.dv % lanes:
        return None
    if isinstance(shape.sq, int) and shape.sq < MIN_ROWS:  # a few query rows (decoding with a cache: one)
        rows = shape.sq
        keys = -(-shape.skv // lanes) if isinstance(shape.skv, int) else MAX_SHORT_VECTORS
        s_vectors = max(1, min(max_acc // rows, MAX_SHORT_VECTORS, keys))
    else:
        best = None
        for s_vectors in range(max_acc // MIN_ROWS, 0, -1):
            rows = max_acc // s_vectors
            if rows < MIN_ROWS:
                continue
            # the fewest loads per multiply-add (rows broadcasts + s_vectors loads for rows x s_vectors of them)
            cost = (rows + s_vectors) / (rows * s_vectors)
            if best is None or cost < best[0]:
                best = (cost, rows, s_vectors)
        if best is None:
            return None
        _, rows, s_vectors = best
        rows = min(rows, shape.sq) if isinstance(shape.sq, int) else rows
    o_vecs = shape.dv // lanes
    o_vectors = max(v for v in range(1, o_vecs + 1) if o_vecs % v == 0 and rows * v <= max_acc)
    return AttentionTiles(lanes, rows, s_vectors, o_vectors)


def padded_keys(shape: AttentionShape, tiles: AttentionTiles):
    """skv rounded up to whole score tiles: the last axis of the K^T copy the kernel reads (an int, or an
    expression of a symbolic skv)."""
    step = tiles.key_step
    return -(-shape.skv // step) * step


def fast_exp_expr(x):
    """TOPI's ``fast_exp`` (Cephes' polynomial, as in topi/elemwise.h) of the float32 PrimExpr `x`: the same
    expression, so the same value, as ``topi.fast_exp`` gives elementwise."""
    from tvm import tirx  # noqa: PLC0415

    def f32(v: float):
        return tirx.const(v, "float32")

    clamped = tirx.max(tirx.min(x, f32(88.3762626647950)), f32(-88.3762626647949))
    n = tirx.floor(clamped * f32(1.44269504088896341) + f32(0.5))
    f = clamped - n * f32(0.6931471805599453)
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * f + f32(c)
    y = p * f * f + f + f32(1.0)
    two_n = tirx.reinterpret("float32", tirx.Cast("int32", n + f32(127.0)) << tirx.const(23, "int32"))
    return tirx.max(two_n * y, x)


def attention_kernel(shape: AttentionShape, tiles: AttentionTiles, *, exp: str = "fast", key_limits: bool = True):
    """The fused kernel (a scheduled PrimFunc) for `shape` with `tiles`; parameters q, kt, v[, bias[, rowlim,
    kfin]], y: q [batch, sq, q_heads, d] (float32, already multiplied by its share of the scale), kt [batch,
    kv_heads, skvp / key_step, d, key_step] (K^T in panels of ``tiles.key_step`` keys, each contiguous; scaled
    likewise; skvp = ``padded_keys``; the padding keys' scores are never read into a result), v [batch, skv,
    kv_heads, dv], bias (``shape.bias``), where `key_limits` and ``shape.limits_keys`` rowlim (int64, the bias's
    first three dims: ``row_limits_kernel``) and kfin [batch, kv_heads] (int64: the last key whose V row holds a
    NaN or an infinity, -1 for none: ``pack_keys_kernel``), y [batch, sq, q_heads, dv] (written).

    With `key_limits` (fast math) and ``shape.limits_keys``, each block of query rows computes its keys only up
    to the last one the bias of any of its rows leaves open (and the last non-finite V row): a causal mask's
    later keys, a padding mask's padding. The keys left out are those whose bias is at most -FLT_MAX (torch's
    ``finfo.min`` and -inf masks), in rows that each keep a key of bias >= -2^120, with a finite V: where every
    score is below 1.69e38 in magnitude their probability is exactly 0 (their shifted scores stay below exp's
    underflow to 0, -104) and they add only zeros, so the results are the kernel's without the limit, bit for
    bit. A NaN or an infinite score at a key left out no longer reaches its row (ONNX's Attention: NaN), which
    is why the limit is fast math's."""
    from tvm import tirx  # noqa: PLC0415
    from tvm.script import tirx as T  # noqa: PLC0415

    from ..lowering.converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    def own(x, name: str):  # a symbolic dim as the kernel's own int64 var, bound by the first buffer that has it
        return x if isinstance(x, int) else tirx.Var(name, "int64")

    b_n, sq, skv = own(shape.batch, "batch"), own(shape.sq, "sq"), own(shape.skv, "skv")
    hq, hk, d, dv = shape.q_heads, shape.kv_heads, shape.d, shape.dv
    lanes, rows = tiles.lanes, tiles.rows
    w1, w2 = tiles.key_step, tiles.lanes * tiles.o_vectors
    if isinstance(skv, int):
        skvp = padded_keys(shape, tiles)
        panels, scratch = skvp // w1, skvp
    else:  # kt's ceil(skv / key_step) panels, bound by kt; the scratch row never 0 long (a failed allocation)
        panels = tirx.Var("panels", "int64")
        skvp = panels * w1
        scratch = tirx.max(skvp, w1)
    if isinstance(sq, int):
        blocks = -(-sq // rows)
        per_task = min(BLOCKS_PER_TASK, blocks)
    else:
        blocks = tirx.floordiv(sq + (rows - 1), rows)
        per_task = BLOCKS_PER_TASK
    tasks = -(-blocks // per_task)
    group = hq // hk
    has_bias, has_limits = shape.bias is not None, key_limits and shape.limits_keys
    # each bias dim 1 (broadcast) or the kernel's own dim of (batch, q heads, sq, skv)
    bias_shape = tuple(1 if isinstance(n, int) and n == 1 else full
                       for n, full in zip(shape.bias or (1, 1, 1, 1), (b_n, hq, sq, skv), strict=True))
    exp_fn = fast_exp_expr if exp == "fast" else T.exp

    def i64(x):
        return T.int64(x) if isinstance(x, int) else x

    neg_inf = T.float32(float("-inf"))

    def broadcast_at(buf, *index):  # buf (the bias, or its first dims: rowlim) at index, dims of 1 broadcast
        return buf[tuple(i64(0) if isinstance(n, int) and n == 1 else x
                         for x, n in zip(index, bias_shape[:len(index)], strict=True))]

    @T.macro
    def key_limit(rowlim, kfin, b, h, g, i0, lim):
        """lim[0] = the keys this block of query rows computes: the most of its rows' ``row_limits`` and past the
        last key whose V row holds a NaN or an infinity (kfin)."""
        lim[0] = kfin[b, g] + T.int64(1)
        for r in range(rows):
            lim[0] = T.max(lim[0], broadcast_at(rowlim, b, h, T.min(i0 + r, i64(sq - 1))))

    @T.macro
    def body(q, kt, v, bias, rowlim, kfin, y):
      with T.sblock("root"):
       with T.sblock("fused_attention"):
        if has_limits:
            T.reads(q[:, :, :, :], kt[:, :, :, :, :], v[:, :, :, :], bias[:, :, :, :], rowlim[:, :, :], kfin[:, :])
        elif has_bias:
            T.reads(q[:, :, :, :], kt[:, :, :, :, :], v[:, :, :, :], bias[:, :, :, :])
        else:
            T.reads(q[:, :, :, :], kt[:, :, :, :, :], v[:, :, :, :])
        T.writes(y[:, :, :, :])
        for task in T.parallel(i64(b_n * hq * tasks)):
            b = task // i64(hq * tasks)
            h = task // i64(tasks) % i64(hq)
            g = h // i64(group)
            s = T.decl_buffer((rows, i64(scratch)), "float32", scope="global")
            part = T.decl_buffer((lanes,), "float32", scope="local")
            stat = T.decl_buffer((2,), "float32", scope="local")
            total = T.decl_buffer((rows,), "float32", scope="local")
            lim = T.decl_buffer((1,), "int64", scope="local")  # the keys computed for this block
            for bi in range(i64(per_task)):
                blk = task % i64(tasks) * i64(per_task) + bi
                if blk < i64(blocks):
                    i0 = blk * i64(rows)
                    lim[0] = i64(skv)
                    if has_limits:
                        key_limit(rowlim, kfin, b, h, g, i0, lim)
                    keys = (lim[0] + i64(w1 - 1)) // i64(w1) * i64(w1)  # whole score tiles up to the limit
                    for jt in range(keys // i64(w1)):
                        acc = T.decl_buffer((rows * w1,), "float32", scope="local")
                        for r in T.unroll(rows):
                            for c in T.vectorized(w1):
                                acc[r * w1 + c] = T.float32(0)
                        for k in range(i64(d)):
                            for r in T.unroll(rows):
                                for vv in T.unroll(tiles.s_vectors):
                                    for ln in T.vectorized(lanes):
                                        acc[r * w1 + vv * lanes + ln] = acc[r * w1 + vv * lanes + ln] + q[
                                            b, T.min(i0 + r, i64(sq - 1)), h, k] * kt[
                                            b, g, jt, k, vv * lanes + ln]
                        for r in T.unroll(rows):
                            for c in T.vectorized(w1):
                                s[r, jt * i64(w1) + c] = acc[r * w1 + c]
                    for r in range(rows):
                        qi = T.min(i0 + r, i64(sq - 1))
                        if has_bias:
                            for ln in T.vectorized(lanes):
                                part[ln] = T.float32(0)
                            for jc in range(lim[0] // i64(lanes)):
                                for ln in T.vectorized(lanes):
                                    s[r, jc * lanes + ln] = s[r, jc * lanes + ln] + broadcast_at(
                                        bias, b, h, qi, jc * lanes + ln)
                                    part[ln] = T.max(part[ln], T.Select(
                                        broadcast_at(bias, b, h, qi, jc * lanes + ln) == neg_inf,
                                        T.float32(0), T.float32(1)))
                            for j in range(lim[0] // i64(lanes) * i64(lanes), lim[0]):
                                s[r, j] = s[r, j] + broadcast_at(bias, b, h, qi, j)
                                part[0] = T.max(part[0], T.Select(broadcast_at(bias, b, h, qi, j) == neg_inf,
                                                                  T.float32(0), T.float32(1)))
                            stat[1] = part[0]
                            for ln in range(1, lanes):
                                stat[1] = T.max(stat[1], part[ln])
                        for j in range(lim[0], keys):
                            s[r, j] = neg_inf
                        for ln in T.vectorized(lanes):
                            part[ln] = neg_inf
                        for jc in range(keys // i64(lanes)):
                            for ln in T.vectorized(lanes):
                                part[ln] = T.max(part[ln], s[r, jc * lanes + ln])
                        stat[0] = part[0]
                        for ln in range(1, lanes):
                            stat[0] = T.max(stat[0], part[ln])
                        stat[0] = T.Select(stat[0] == neg_inf, T.float32(0), stat[0])
                        for ln in T.vectorized(lanes):
                            part[ln] = T.float32(0)
                        for jc in range(keys // i64(lanes)):
                            for ln in T.vectorized(lanes):
                                if has_bias:  # a fully masked row: probabilities 0 (y = 0 @ v, NaN where v is inf)
                                    s[r, jc * lanes + ln] = T.Select(stat[1] == T.float32(0), T.float32(0),
                                                                     exp_fn(s[r, jc * lanes + ln] - stat[0]))
                                else:
                                    s[r, jc * lanes + ln] = exp_fn(s[r, jc * lanes + ln] - stat[0])
                                part[ln] = part[ln] + s[r, jc * lanes + ln]
                        total[r] = part[0]
                        for ln in range(1, lanes):
                            total[r] = total[r] + part[ln]
                        total[r] = T.Select(total[r] == T.float32(0), T.float32(1), total[r])
                        # p = e / sum before the product with V, as the spec (a sum of e * V could overflow
                        # where p V does not: V near the float32 maximum)
                        for jc in range(keys // i64(lanes)):
                            for ln in T.vectorized(lanes):
                                s[r, jc * lanes + ln] = s[r, jc * lanes + ln] / total[r]
                    for ct in range(i64(dv // w2)):
                        acc2 = T.decl_buffer((rows * w2,), "float32", scope="local")
                        for r in T.unroll(rows):
                            for c in T.vectorized(w2):
                                acc2[r * w2 + c] = T.float32(0)
                        for j in range(lim[0]):
                            for r in T.unroll(rows):
                                for vv in T.unroll(tiles.o_vectors):
                                    for ln in T.vectorized(lanes):
                                        acc2[r * w2 + vv * lanes + ln] = acc2[r * w2 + vv * lanes + ln] + s[
                                            r, j] * v[b, j, g, ct * i64(w2) + vv * lanes + ln]
                        for r in T.unroll(rows):
                            if i0 + r < i64(sq):
                                for c in T.vectorized(w2):
                                    y[b, i0 + r, h, ct * i64(w2) + c] = acc2[r * w2 + c]

    q_shape = (i64(b_n), i64(sq), i64(hq), i64(d))
    kt_shape = (i64(b_n), i64(hk), i64(panels), i64(d), i64(w1))
    v_shape = (i64(b_n), i64(skv), i64(hk), i64(dv))
    y_shape = (i64(b_n), i64(sq), i64(hq), i64(dv))
    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, DECLARED_OP_PATTERN: 8}
    b_shape = tuple(i64(n) for n in bias_shape)
    if has_limits:
        @T.prim_func(private=True, s_tir=True)
        def fused_attention_limits(q: T.Buffer(q_shape, "float32"), kt: T.Buffer(kt_shape, "float32"),
                            v: T.Buffer(v_shape, "float32"), bias: T.Buffer(b_shape, "float32"),
                            rowlim: T.Buffer(b_shape[:3], "int64"), kfin: T.Buffer((i64(b_n), i64(hk)), "int64"),
                            y: T.Buffer(y_shape, "float32")):
            T.func_attr(attrs)
            body(q, kt, v, bias, rowlim, kfin, y)

        return fused_attention_limits
    if has_bias:
        @T.prim_func(private=True, s_tir=True)
        def fused_attention(q: T.Buffer(q_shape, "float32"), kt: T.Buffer(kt_shape, "float32"),
                            v: T.Buffer(v_shape, "float32"), bias: T.Buffer(b_shape, "float32"),
                            y: T.Buffer(y_shape, "float32")):
            T.func_attr(attrs)
            body(q, kt, v, bias, None, None, y)

        return fused_attention

    @T.prim_func(private=True, s_tir=True)
    def fused_attention_nobias(q: T.Buffer(q_shape, "float32"), kt: T.Buffer(kt_shape, "float32"),
                               v: T.Buffer(v_shape, "float32"), y: T.Buffer(y_shape, "float32")):
        T.func_attr(attrs)
        body(q, kt, v, None, None, None, y)

    return fused_attention_nobias


def carrier_shape(qs, ks, v, bias) -> AttentionShape | None:
    """The AttentionShape of an ATTENTION_CARRIER call's arguments (lowering/ops/transformer.py), or None where
    the fused kernel does not apply: a shape unknown (computed from values) or with a symbolic head count or head
    size, a batch or sequence that the arguments do not provably share (K and V's, Q and the bias's), a bias dim
    that is neither 1 nor provably the scores' dim (a symbolic dim that may be 1 and broadcast), a static 0, a
    type other than float32."""
    from ..lowering.broadcast import dims_equal  # noqa: PLC0415
    from ..lowering.converters import dims_of, dtype_of  # noqa: PLC0415

    args = [qs, ks, v] + ([bias] if bias is not None else [])
    dims = [dims_of(a) for a in args]
    if any(d is None or len(d) != 4 for d in dims) or any(dtype_of(a) != "float32" for a in args):
        return None
    (b, sq, hq, d), (bk, skv, hk, dk), (bv, skv_v, hv, dv) = dims[:3]
    if not all(isinstance(x, int) for x in (hq, d, hk, dk, hv, dv)) or hk == 0 or hq % hk or hv != hk or dk != d:
        return None
    if not (dims_equal(bk, b) and dims_equal(bv, b) and dims_equal(skv_v, skv)):
        return None
    if any(isinstance(x, int) and x == 0 for x in (b, sq, skv, hq, d, dv)):
        return None
    if bias is not None and not all((isinstance(n, int) and n == 1) or dims_equal(n, full)
                                    for n, full in zip(dims[3], (b, hq, sq, skv), strict=True)):
        return None
    return AttentionShape(b, hq, hk, sq, skv, d, dv, tuple(dims[3]) if bias is not None else None)


def pack_keys_kernel(shape: AttentionShape, tiles: AttentionTiles, *, finite_keys: bool = False):
    """The kernel (a scheduled PrimFunc) that copies K [batch, skv, kv heads, d] into the attention kernel's kt:
    [batch, kv heads, skvp / key_step, d, key_step], zeros past skv. Parallel over (batch, kv head), each key's d
    values read contiguously; no index divides by an expression of a symbolic length (TE's elementwise form,
    scheduled by the injective rule, did per element: 177 us for a 128-token GPT-2 layer's keys, AMD Zen 4).
    With `finite_keys` it also reads V [batch, skv, kv heads, dv] and writes kfin [batch, kv heads] (int64): the
    last key whose V row holds a NaN or an infinity, -1 for none (the attention kernel computes every key up to
    it: a probability of 0 times an infinity is NaN)."""
    from tvm import tirx  # noqa: PLC0415
    from tvm.script import tirx as T  # noqa: PLC0415

    from ..lowering.converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    b_n = shape.batch if isinstance(shape.batch, int) else tirx.Var("batch", "int64")
    skv = shape.skv if isinstance(shape.skv, int) else tirx.Var("skv", "int64")
    step, hk, d, dv = tiles.key_step, shape.kv_heads, shape.d, shape.dv
    panels = padded_keys(shape, tiles) // step if isinstance(skv, int) else tirx.Var("panels", "int64")
    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, DECLARED_OP_PATTERN: 8}
    flt_max = T.float32(FLT_MAX)

    def i64(x):
        return T.int64(x) if isinstance(x, int) else x

    k_shape = (i64(b_n), i64(skv), i64(hk), i64(d))
    kt_shape = (i64(b_n), i64(hk), i64(panels), i64(d), i64(step))

    @T.macro
    def copy(k, kt, bh, p, lane, j):
        if j < i64(skv):
            for c in range(i64(d)):
                kt[bh // i64(hk), bh % i64(hk), p, c, lane] = k[bh // i64(hk), j, bh % i64(hk), c]
        else:
            for c in range(i64(d)):
                kt[bh // i64(hk), bh % i64(hk), p, c, lane] = T.float32(0)

    if not finite_keys:
        @T.prim_func(private=True, s_tir=True)
        def pack_attention_keys(k: T.Buffer(k_shape, "float32"), kt: T.Buffer(kt_shape, "float32")):
            T.func_attr(attrs)
            with T.sblock("root"):
                with T.sblock("pack_attention_keys"):
                    T.reads(k[:, :, :, :])
                    T.writes(kt[:, :, :, :, :])
                    for bh in T.parallel(i64(b_n) * i64(hk)):
                        for p in range(i64(panels)):
                            for lane in range(i64(step)):
                                copy(k, kt, bh, p, lane, p * i64(step) + lane)

        return pack_attention_keys

    lanes = max(ln for ln in (1, 2, 4, 8, 16) if dv % ln == 0)

    @T.prim_func(private=True, s_tir=True)
    def pack_attention_keys_finite(k: T.Buffer(k_shape, "float32"),
                                   v: T.Buffer((i64(b_n), i64(skv), i64(hk), i64(dv)), "float32"),
                                   kt: T.Buffer(kt_shape, "float32"), kfin: T.Buffer((i64(b_n), i64(hk)), "int64")):
        T.func_attr(attrs)
        with T.sblock("root"):
            with T.sblock("pack_attention_keys"):
                T.reads(k[:, :, :, :], v[:, :, :, :])
                T.writes(kt[:, :, :, :, :], kfin[:, :])
                for bh in T.parallel(i64(b_n) * i64(hk)):
                    bad = T.decl_buffer((lanes,), "float32", scope="local")
                    kfin[bh // i64(hk), bh % i64(hk)] = T.int64(-1)
                    for p in range(i64(panels)):
                        for lane in range(i64(step)):
                            copy(k, kt, bh, p, lane, p * i64(step) + lane)
                    for j in range(i64(skv)):
                        for ln in T.vectorized(lanes):
                            bad[ln] = T.float32(0)
                        for c in range(i64(dv // lanes)):
                            for ln in T.vectorized(lanes):
                                bad[ln] = T.max(bad[ln], T.Select(T.fabs(v[bh // i64(hk), j, bh % i64(hk), c * lanes + ln])
                                                                  <= flt_max, T.float32(0), T.float32(1)))
                        for ln in range(lanes):
                            if bad[ln] > T.float32(0):
                                kfin[bh // i64(hk), bh % i64(hk)] = j

    return pack_attention_keys_finite


def row_limits_kernel(shape: AttentionShape, lanes: int):
    """The kernel (a scheduled PrimFunc) that reads the attention's bias (``shape.bias``'s dims, float32) and writes
    rowlim (int64, the bias's first three dims): for each query row, one past the last key whose bias is above
    -FLT_MAX or NaN, or skv when the row has no key of bias >= -2^120. The attention kernel computes each block
    of query rows up to the most of its rows' limits (``attention_kernel``). Parallel over the rows, each read
    once in vectors of `lanes`."""
    from tvm import tirx  # noqa: PLC0415
    from tvm.script import tirx as T  # noqa: PLC0415

    from ..lowering.converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    def own(x, name: str):
        return x if isinstance(x, int) else tirx.Var(name, "int64")

    b_n, sq, skv = own(shape.batch, "batch"), own(shape.sq, "sq"), own(shape.skv, "skv")
    dims = tuple(1 if isinstance(n, int) and n == 1 else full
                 for n, full in zip(shape.bias, (b_n, shape.q_heads, sq, skv), strict=True))
    flt_max = T.float32(FLT_MAX)
    open_floor = T.float32(-(2.0 ** 120))

    def i64(x):
        return T.int64(x) if isinstance(x, int) else x

    d0, d1, d2, d3 = (i64(n) for n in dims)
    chunks = dims[3] // lanes

    @T.prim_func(private=True, s_tir=True)
    def attention_key_limits(bias: T.Buffer((d0, d1, d2, d3), "float32"),
                             rowlim: T.Buffer((d0, d1, d2), "int64")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, DECLARED_OP_PATTERN: 8})
        with T.sblock("root"):
            with T.sblock("attention_key_limits"):
                T.reads(bias[:, :, :, :])
                T.writes(rowlim[:, :, :])
                for task in T.parallel((d0 * d1 * d2 + i64(LIMIT_ROWS_PER_TASK - 1)) // i64(LIMIT_ROWS_PER_TASK)):
                    lastv = T.decl_buffer((lanes,), "int32", scope="local")
                    top = T.decl_buffer((lanes,), "float32", scope="local")
                    for rt in range(i64(LIMIT_ROWS_PER_TASK)):
                        row = task * i64(LIMIT_ROWS_PER_TASK) + rt
                        if row < d0 * d1 * d2:
                            i, h, b = row % d2, row // d2 % d1, row // (d1 * d2)
                            for ln in T.vectorized(lanes):
                                lastv[ln] = -1
                                top[ln] = -flt_max
                            for jc in range(i64(chunks)):
                                for ln in T.vectorized(lanes):
                                    # NaN is not <= -FLT_MAX: a NaN bias is a key computed
                                    lastv[ln] = T.max(lastv[ln], T.Select(bias[b, h, i, jc * lanes + ln] <= -flt_max,
                                                                          -1, T.Cast("int32", jc * lanes + ln)))
                                    top[ln] = T.max(top[ln], bias[b, h, i, jc * lanes + ln])
                            for j in range(i64(chunks * lanes), d3):
                                lastv[0] = T.max(lastv[0], T.Select(bias[b, h, i, j] <= -flt_max, -1,
                                                                    T.Cast("int32", j)))
                                top[0] = T.max(top[0], bias[b, h, i, j])
                            rowlim[b, h, i] = T.int64(0)
                            for ln in range(lanes):
                                rowlim[b, h, i] = T.max(rowlim[b, h, i], T.Cast("int64", lastv[ln]) + T.int64(1))
                            for ln in range(lanes):
                                top[0] = T.max(top[0], top[ln])
                            # not (>=): a NaN that max kept leaves the row whole
                            if not (top[0] >= open_floor):
                                rowlim[b, h, i] = i64(skv)

    return attention_key_limits


def fused_attention_pass(target, fast_math: bool = True, counts: Counter | None = None):
    """The module pass (a function, so that importing optc does not import TVM) that replaces every
    ATTENTION_CARRIER call: on a CPU target, float32 and shapes ``carrier_shape`` takes (batch and sequences may
    be symbolic), by the K^T packing and the fused kernel
    (``attention_kernel``, exp and key limits per `fast_math`); elsewhere, and everywhere for ``target=None``, by
    ``expand_attention``'s decomposition. `counts` (optional) gets ``"kernel"`` / ``"expanded"`` added per call
    (bf16's conversion keeps the kernels float32 and makes the decomposition's matmuls bfloat16)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.relax import expr_functor  # noqa: PLC0415

    from ..lowering.ops.transformer import ATTENTION_CARRIER, expand_attention  # noqa: PLC0415
    from .relax_rewrite import function_pass  # noqa: PLC0415
    from .schedules import _is_cpu, _vector_lanes, max_accumulators, vector_registers  # noqa: PLC0415

    cpu = target is not None and _is_cpu(target)

    @expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) not in ATTENTION_CARRIER:
                return call
            qs, ks, v = call.args[:3]
            bias = call.args[3] if len(call.args) > 3 else None
            shape = carrier_shape(qs, ks, v, bias) if cpu else None
            tiles = None
            if shape is not None:
                lanes = _vector_lanes(target, 32)
                tiles = choose_tiles(shape, lanes, max_accumulators(lanes * 4, registers=vector_registers(target)))
            if counts is not None:
                counts["expanded" if tiles is None else "kernel"] += 1
            if tiles is None:
                return expand_attention(self.builder_, qs, ks, v, bias)
            # only a bias over the keys lets a block of rows leave keys out; only with fast math (a NaN or an
            # infinite score at a key left out would reach its row without the limit: ONNX's Attention)
            finite = fast_math and shape.limits_keys
            pack = self.builder_.add_func(pack_keys_kernel(shape, tiles, finite_keys=finite), "pack_attention_keys")
            kt_type = relax.TensorType(
                (shape.batch, shape.kv_heads, padded_keys(shape, tiles) // tiles.key_step, shape.d, tiles.key_step),
                "float32")
            if finite:
                packed = self.builder_.emit(relax.call_tir(pack, [ks, v], [kt_type, relax.TensorType(
                    (shape.batch, shape.kv_heads), "int64")]))
                kt = self.builder_.emit(relax.TupleGetItem(packed, 0))
                limits = self.builder_.add_func(row_limits_kernel(shape, tiles.lanes), "attention_key_limits")
                rowlim = self.builder_.emit(relax.call_tir(limits, [bias], relax.TensorType(shape.bias[:3], "int64")))
                extra = [bias, rowlim, self.builder_.emit(relax.TupleGetItem(packed, 1))]
            else:
                kt = self.builder_.emit(relax.call_tir(pack, [ks], kt_type))
                extra = [bias] if bias is not None else []
            kernel = attention_kernel(shape, tiles, exp="fast" if fast_math else "libm", key_limits=finite)
            gv = self.builder_.add_func(kernel, "fused_attention")
            out = relax.TensorType((shape.batch, shape.sq, shape.q_heads, shape.dv), "float32")
            return relax.call_tir(gv, [qs, kt, v, *extra], out)

    return function_pass("optc_fused_attention", _Rewriter)
