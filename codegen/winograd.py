"""Winograd F(2x2, 3x3) for float32 3x3 stride-1 convolutions on CPU (a relax pass, with fast math only).

Source: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 4 (the
matrices B^T, G and A^T of F(2x2, 3x3) below are theirs). An NHWC convolution y = conv(x, g) with a 3x3 HWIO
kernel g [3, 3, C, K], stride 1 and dilation 1 is computed per 2x2 block of outputs from the 4x4 block of inputs
that covers it:

    V[e, v, p, c] = (B^T d_p,c B)[e, v]          d_p,c: the 4x4 input block of tile p, channel c (0 outside x)
    U[e, v, c, k] = (G g_c,k G^T)[e, v]          at compile time, in float64, rounded once to float32
    M[e, v, p, k] = sum_c V[e, v, p, c] U[e, v, c, k]        16 matmuls [P, C] @ [C, K]: `relax.matmul`
    y_p,k = A^T M[:, :, p, k] A                  the 2x2 outputs of tile p

The matmuls do 16 / 36 of the direct convolution's multiplies (4 x 4 products per 2 x 2 outputs instead of
9 x 4); the input and output transforms are additions only (B^T and A^T hold 0 and +-1). Tiles: P = N x
ceil(Ho / 2) x ceil(Wo / 2); a ragged last row or column of tiles reads zeros and its extra outputs are not
stored.

Three kernels: `winograd_data_pack` (declared opaque, so no producer is inlined into it: each input element is read
by up to four tiles), the matmul with the constant transformed weight (packed and tiled like any matmul by
`schedules.TiledReduction`), and `winograd_inverse`, an elementwise-shaped kernel into which the bias, ReLU and
residual add that follow fuse.

Numerics: each output is the same sum of products as the direct convolution's, reassociated, and the weights are
transformed with factors 1/2 (exact in binary) and rounded once, so the results differ from the direct
convolution's by float32 rounding only (bounded by Lavin and Gray's error analysis; measured in
tests/test_winograd.py). NaN reaches exactly the outputs it reaches directly, but infinities do not: an infinite
input element enters several of a tile's transformed values, and the inverse transform subtracts them (inf - inf:
NaN where the direct sum is +-inf; a breaker: one +inf input of a 16 -> 32 conv gave 211 NaN of its 288 infinite
outputs); and where a direct sum of finite products stays finite, a transform's intermediate sum can overflow to
inf. This is why the rewrite is part of fast math (`optc compile --no-fast-math` keeps every convolution direct).

Taken where it pays (measured: benchmarks/RESULTS.md "Winograd"): static image size and channels (the batch may be
symbolic), groups 1, at least `MIN_CHANNELS` input and `MIN_OUTPUT_CHANNELS` output channels.
"""

from __future__ import annotations

import math

import numpy as np

#: Lavin and Gray's F(2x2, 3x3) matrices
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
#: output tile (m) and input tile (m + 3 - 1)
TILE, ALPHA = 2, 4
#: the fewest input channels (the matmuls' depth) and output channels (their width) a convolution needs to be
#: computed this way: 16 -> 16 at 112 x 112 ran 4% slower than the direct kernel (one vector of columns), 16 -> 64
#: (SqueezeNet's expand) and 32 -> 32 faster (benchmarks/RESULTS.md "Winograd")
MIN_CHANNELS, MIN_OUTPUT_CHANNELS = 16, 32


def transformed_weight(w_hwio: np.ndarray) -> np.ndarray:
    """U [16, C, K] float32 (row e * 4 + v) = G g G^T of each (c, k) of the HWIO kernel `w_hwio` [3, 3, C, K];
    computed in float64 and rounded once."""
    u = np.einsum("ia,abck,jb->ijck", G, w_hwio.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(ALPHA * ALPHA, *w_hwio.shape[2:])).astype(np.float32)


def _pick(index, values: list[int]):
    """The TIR expression values[index] for a small loop variable `index` (a chain of selects)."""
    from tvm import tirx

    expr = tirx.const(values[-1], "int64")
    for k in range(len(values) - 2, -1, -1):
        expr = tirx.Select(index == tirx.const(k, "int64"), tirx.const(values[k], "int64"), expr)
    return expr


def _i64(value):
    """An int64 TIR extent: a constant for an int, the expression itself for a symbolic (int64) one."""
    from tvm import tirx

    return tirx.IntImm("int64", value) if isinstance(value, int) else value


def _terms(row: np.ndarray) -> list[tuple[int, float]]:
    return [(int(j), float(row[j])) for j in np.flatnonzero(row)]


def data_pack_kernel(n: int, h: int, w: int, c: int, pad_top: int, pad_left: int, tiles_h: int, tiles_w: int,
                     lanes: int = 1):
    """The PrimFunc V [16, P, C] = B^T d B of every tile p (row e * 4 + v) from x [n, h, w, c] float32 (NHWC),
    tile (b, i, j) = p = (b * tiles_h + i) * tiles_w + j reading rows 2i - pad_top .. + 3 and columns
    2j - pad_left .. + 3 of image b (zeros outside x). Each row of B^T has two nonzero entries (+-1), so an
    element of V is a sum of four input elements."""
    from tvm import s_tir, te, tirx

    from ..lowering.converters import declare_op_pattern
    from .schedules import PARALLEL_MIN_WORK

    i64 = _i64
    x = te.placeholder([i64(n), i64(h), i64(w), i64(c)], "float32", name="x")
    rows = [_terms(B_T[e]) for e in range(ALPHA)]  # [(offset, sign), (offset, sign)] per transform row
    first, second = [r[0][0] for r in rows], [r[1][0] for r in rows]
    sign_first, sign_second = [int(r[0][1]) for r in rows], [int(r[1][1]) for r in rows]

    def element(xi, p, ch):
        e, v = xi // ALPHA, xi % ALPHA
        b, rest = p // (tiles_h * tiles_w), p % (tiles_h * tiles_w)
        y0, x0 = rest // tiles_w * TILE - pad_top, rest % tiles_w * TILE - pad_left
        total = None
        for oy, sy in ((_pick(e, first), _pick(e, sign_first)), (_pick(e, second), _pick(e, sign_second))):
            for ox, sx in ((_pick(v, first), _pick(v, sign_first)), (_pick(v, second), _pick(v, sign_second))):
                yy, xx = y0 + oy, x0 + ox
                inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
                value = tirx.if_then_else(inside, x[b, yy, xx, ch], tirx.const(0.0, "float32"))
                term = tirx.Select((sy * sx) > 0, value, -value)
                total = term if total is None else total + term
        return total

    packed = te.compute([i64(ALPHA * ALPHA), i64(n * tiles_h * tiles_w), i64(c)], element, name="winograd_data_pack")
    sch = s_tir.Schedule(te.create_prim_func([x, packed]).without_attr("global_symbol"))
    xi, p, ch = sch.get_loops(sch.get_sblock("winograd_data_pack"))
    if lanes > 1 and c % lanes == 0:
        ch, vec = sch.split(ch, [None, lanes])
        sch.reorder(p, ch, xi, vec)
        sch.vectorize(vec)
    else:
        sch.reorder(p, ch, xi)
    sch.unroll(xi)
    if not isinstance(n, int) or ALPHA * ALPHA * n * tiles_h * tiles_w * c >= PARALLEL_MIN_WORK:
        sch.parallel(p)
    func = sch.mod["main"].with_attrs({"tirx.noalias": True, "tirx.is_scheduled": True})
    return declare_op_pattern(func, 8)  # kOpaque: see the module doc


def inverse_kernel(n: int, ho: int, wo: int, k: int, tiles_h: int, tiles_w: int):
    """The PrimFunc y [n, ho, wo, k] = A^T M A of each tile from M [16, P, k] (float32): output (b, oy, ox, ch) is
    element (oy % 2, ox % 2) of tile (b, oy // 2, ox // 2). Its fusion pattern is declared a reduction's
    (OutEWiseFusable): the bias, ReLU and residual add after it fuse into it, a layout transpose does not (its
    strided stores read every tile 16 times)."""
    from tvm import te, tirx

    from ..lowering.converters import declare_op_pattern

    i64 = _i64
    m = te.placeholder([i64(ALPHA * ALPHA), i64(n * tiles_h * tiles_w), i64(k)], "float32", name="m")

    def element(b, oy, ox, ch):
        p = (b * tiles_h + oy // TILE) * tiles_w + ox // TILE
        r, s = oy % TILE, ox % TILE

        def combine(values, which):  # row `which` (0 or 1) of A^T applied to 4 values
            out = []
            for row in A_T:
                total = None
                for j, sign in _terms(row):
                    total = values[j] if total is None else (total + values[j] if sign > 0 else total - values[j])
                out.append(total)
            return tirx.Select(which == 0, out[0], out[1])

        cols = [combine([m[e * ALPHA + v, p, ch] for v in range(ALPHA)], s) for e in range(ALPHA)]
        return combine(cols, r)

    y = te.compute([i64(n), i64(ho), i64(wo), i64(k)], element, name="winograd_inverse")
    func = te.create_prim_func([m, y]).without_attr("global_symbol").with_attr("tirx.noalias", True)
    return declare_op_pattern(func, 4)  # kOutEWiseFusable


def schedule_inverse(sch, target) -> bool:
    """Schedule the fused `winograd_inverse` kernel in `sch` (an s_tir Schedule of one PrimFunc; the bias, ReLU and
    residual add fused after it are inlined into one block over [..., Ho, Wo, K]): the output rows and columns
    split into tiles of TILE x TILE, the tile's 4 outputs unrolled per vector of channels, the tile rows in
    parallel. Unrolled, each output's ``oy % 2`` and ``ox % 2`` are constants, so its pick between A^T's rows
    folds away and the 4 outputs share the tile's 16 loads. Scheduled as a flat elementwise kernel, every vector
    computed all four picks from its own loads: SqueezeNet's 55 x 55 x 64 inverse took 216 us, 73 us this way
    (AMD EPYC Zen 4, 1 thread). False (nothing changed) where the kernel is not one such block of static
    Ho, Wo, K or K has no vector width of 4 lanes or more."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    from .schedules import PARALLEL_MIN_WORK, _extent, _largest_divisor, _vector_lanes, try_inline

    infos = normalize_prim_func(sch)
    if infos is None or not any(sch.get(i.block_rv).name_hint == "winograd_inverse" for i in infos):
        return False
    infos = try_inline(sch, infos)
    if len(infos) != 1 or not infos[0].is_injective():
        return False
    block = infos[0].block_rv
    loops = sch.get_loops(block)
    if len(loops) < 3:
        return False
    *outer, h, w, c = loops
    extents = [_extent(sch, lp) for lp in (h, w, c)]
    if None in extents:
        return False
    lanes = _vector_lanes(target, 32)
    vec = _largest_divisor(extents[2], lanes, [lanes, lanes // 2, lanes // 4])
    if vec < 4:
        return False
    h_o, h_i = sch.split(h, [None, TILE])
    w_o, w_i = sch.split(w, [None, TILE])
    c_o, c_v = sch.split(c, [None, vec])
    sch.reorder(*outer, h_o, w_o, c_o, h_i, w_i, c_v)
    batch = [_extent(sch, lp) for lp in outer]  # (read before the fuse below removes these loops)
    rows = sch.fuse(*outer, h_o) if outer else h_o
    if None in batch or math.prod(batch) * math.prod(extents) >= PARALLEL_MIN_WORK:  # (symbolic: parallel)
        sch.parallel(rows)
    sch.unroll(h_i)
    sch.unroll(w_i)
    sch.vectorize(c_v)
    return True


def inverse_rule():
    """A schedule rule (``schedules.cpu_rules``) that takes the fused Winograd inverse kernels
    (``schedule_inverse``)."""
    from tvm import s_tir

    from .schedules import _Rule

    class WinogradInverse(_Rule):
        def schedule(self, func, target):
            sch = s_tir.Schedule(func)
            return sch if schedule_inverse(sch, target) else None

    return WinogradInverse()


def winograd_pass(target, enabled: bool = True):
    """The module pass (a function, so that importing optc does not import TVM): every conv2d that `eligible`
    accepts becomes data pack -> matmul -> inverse. ``enabled=False`` (no fast math): the identity."""
    from tvm import relax

    from .relax_rewrite import call_rewrite_pass
    from .schedules import _vector_lanes

    lanes = _vector_lanes(target, 32)

    def rewrite(builder, call):
        plan = eligible(call) if enabled else None
        if plan is None:
            return None
        (n, h, w, c), weight, (pt, pl, pb, pr) = plan
        k = weight.shape[3]
        ho, wo = h + pt + pb - 2, w + pl + pr - 2
        th, tw = -(-ho // TILE), -(-wo // TILE)
        pack = builder.add_func(data_pack_kernel(n, h, w, c, pt, pl, th, tw, lanes), "winograd_data_pack")
        packed = builder.emit(relax.call_tir(pack, [call.args[0]], relax.TensorType(
            (ALPHA * ALPHA, n * th * tw, c), "float32")))
        product = builder.emit(relax.op.matmul(packed, relax.const(transformed_weight(weight))))
        inverse = builder.add_func(inverse_kernel(n, ho, wo, k, th, tw), "winograd_inverse")
        return relax.call_tir(inverse, [product], relax.TensorType((n, ho, wo, k), "float32"))

    return call_rewrite_pass("optc_winograd", "relax.nn.conv2d", rewrite)


def eligible(call):
    """((n, h, w, c), HWIO weight, (top, left, bottom, right) padding) of a relax conv2d that F(2x2, 3x3) computes
    here, else None: NHWC float32 data with static dims but the batch n (an int, or a symbolic dim: a TIR variable), a
    constant 3x3 HWIO float32 kernel, stride 1 (``nhwc_conv.static_float32_conv``), dilation 1,
    one group, at least MIN_CHANNELS input and MIN_OUTPUT_CHANNELS output channels, padding at most 2 on each side."""
    from .nhwc_conv import static_float32_conv

    plan = static_float32_conv(call)
    attrs = call.attrs
    if plan is None or int(attrs.groups) != 1 or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    dims, weight = plan
    if weight.shape[:2] != (3, 3) or weight.shape[2] != dims[3]:
        return None
    pads = [int(p) for p in attrs.padding]
    if len(pads) != 4 or min(pads) < 0 or max(pads) > 2:
        return None
    if dims[3] < MIN_CHANNELS or weight.shape[3] < MIN_OUTPUT_CHANNELS:
        return None
    ho, wo = dims[1] + pads[0] + pads[2] - 2, dims[2] + pads[1] + pads[3] - 2
    if ho < 1 or wo < 1:
        return None
    return dims, weight, tuple(pads)
