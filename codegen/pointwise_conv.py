"""1x1 convolutions as a matmul over all pixels (a relax pass), where the pixels tile better than the image rows.

TiledReduction tiles an NHWC convolution's output by rows of pixels along the width. A width with no divisor in
3..8 (SqueezeNet's and AlexNet's 13, a prime) is zero-padded to whole tiles of 8 rows per image row: 13 -> 16, 23%
of the multiply-adds over padding. A 1x1 convolution with stride 1 and no padding is a matmul over the pixels,
which need not go row by row:

    y3[n, p, k] = sum_c x[n, p // W, p % W, c] * w[0, 0, c, k]          p < H W
    y[n, i, j, k] = y3[n, i W + j, k]

Here it is a kernel of its own with the pixels as one axis (``pointwise_conv_kernel``), which TiledReduction pads
once for the whole image (169 -> 176: 4%) and tiles as a matmul; the merge back to [n, H, W, K] (and the bias and
ReLU that FuseOps puts after it) is a copy after the tiles (``schedules._keep_copy_before_arithmetic_reads``).
SqueezeNet's 512 -> 1000 classifier convolution at 13 x 13: 1.91 -> 1.65 ms (onnxruntime: 1.60; AMD EPYC Zen
4, 1 thread). The same holds where no row is padded but the image's rows tile with fewer accumulators than its
pixels do (``pixels_pay``): a 7 x 7 image with AVX2's 16 registers, the last stage of ResNets and MobileNets. The
sums are the direct convolution's, term for term in the same order: exact, with or without fast math.
"""

from __future__ import annotations

import numpy as np


def _padded_rows(m: int) -> int:
    """The rows TiledReduction computes for `m` rows: m where it is at most a tile's height or a tile height
    divides it (``schedules.rows_divide_into_tiles``), else m rounded up to a multiple of ``schedules.PAD_ROWS``
    (``schedules._pad_ragged_tile``)."""
    from .schedules import MAX_TILE_ROWS, PAD_ROWS, rows_divide_into_tiles

    if m <= MAX_TILE_ROWS or rows_divide_into_tiles(m):
        return m
    return -(-m // PAD_ROWS) * PAD_ROWS


def _tile_work(h: int | None, m: int, k: int, c: int, lanes: int, registers: int) -> float:
    """Useful multiply-adds per reduction step of TiledReduction's register tile over an output of `h` x `m` rows
    (`h` None: one row axis) and `k` columns summing `c` products each: its accumulators times the share of its
    rows that are not padding or a predicated last tile's."""
    from .schedules import register_tile

    _, _, u_n, u_h, u_m = register_tile(h, m, k, n_s=3 if h is not None else 2, lanes=lanes, dtype_bits=32,
                                        reduction=c, registers=registers)
    return u_n * u_h * u_m * m / (-(-m // u_m) * u_m)


#: the matmul over all pixels is taken where its tile does at least this much more useful work per step than the
#: convolution's: it adds a copy of the output back to [n, h, w, k] (or its epilogue) after the tiles
PIXEL_TILE_GAIN = 1.25


def pixels_pay(n: int | None, h: int, w: int, c: int, k: int, lanes: int, registers: int) -> bool:
    """Whether a 1x1 convolution over [n, h, w, c] (NHWC, `n` None: symbolic) to `k` channels runs faster as a
    matmul over all h w pixels: its rows are padded less than the image rows are (13 x 13: 169 -> 176 against
    13 -> 16 per row), or, unpadded, its register tile does PIXEL_TILE_GAIN times the useful work per step of the
    convolution's (`_tile_work`, for `lanes` float32 lanes and `registers` vector registers). With AVX2's 12
    accumulators a 7 x 7 image tiles only as 7 rows x 1 vector (7 accumulators: 6 rows x 2 vectors would predicate
    every image row's second tile); its 49 pixels as one axis take 6 x 2 with one predicated tile of 9 (10.9):
    1x1 convs 160 -> 960, 576 -> 160, 512 -> 2048, 2048 -> 512 and 960 -> 320 at 7 x 7 ran 10-20% faster (AMD
    EPYC znver1, 1 thread). With AVX-512's 32 registers both take 7 x 2: no gain, not taken."""
    if _padded_rows(h * w) < h * _padded_rows(w):
        return True
    if _padded_rows(h * w) != h * w or _padded_rows(w) != w:
        return False
    conv = _tile_work(h, w, k, c, lanes, registers)
    pixels = _tile_work(n if n is not None and n > 1 else None, h * w, k, c, lanes, registers)  # (a unit batch
    # loop is no tile axis)
    return pixels >= PIXEL_TILE_GAIN * conv


def eligible(call, lanes: int, registers: int):
    """((n, h, w, c), weight [c, k]) of a relax conv2d that this pass computes, else None: NHWC float32 data with
    static dims but the batch (``nhwc_conv.static_float32_conv``), a constant 1x1 HWIO float32 kernel, stride 1,
    one group, no padding, at least two image rows, where the pixels as one axis pay (`pixels_pay`)."""
    from .nhwc_conv import static_float32_conv

    plan = static_float32_conv(call)
    if plan is None or int(call.attrs.groups) != 1 or any(int(p) for p in call.attrs.padding):
        return None
    (n, h, w, c), weight = plan
    if weight.shape[:3] != (1, 1, c) or h < 2:
        return None
    if not pixels_pay(n if isinstance(n, int) else None, h, w, c, weight.shape[3], lanes, registers):
        return None
    return (n, h, w, c), np.ascontiguousarray(weight[0, 0])


def pointwise_conv_kernel(n, h: int, w: int, c: int, k: int):
    """The PrimFunc y [n, h, w, k] = conv2d(x [n, h, w, c], 1x1 kernel w2 [c, k]) (float32) over the pixels as
    one axis: x viewed as [n, h w, c] (a block the schedule inlines), the reduction [n, h w, k], merged back;
    ``n`` an int or a symbolic (int64) dim. Its fusion pattern is declared a reduction's (OutEWiseFusable), so
    that the bias, ReLU and residual add after it fuse into it."""
    from tvm import te

    from ..lowering.converters import declare_op_pattern
    from .winograd import _i64

    x = te.placeholder([_i64(n), _i64(h), _i64(w), _i64(c)], "float32", name="x")
    x3 = te.compute([_i64(n), _i64(h * w), _i64(c)], lambda b, p, ch: x[b, p // _i64(w), p % _i64(w), ch],
                    name="pointwise_conv_pixels")
    w2 = te.placeholder([_i64(c), _i64(k)], "float32", name="w")
    r = te.reduce_axis((_i64(0), _i64(c)), name="rc")
    y3 = te.compute([_i64(n), _i64(h * w), _i64(k)], lambda b, p, o: te.sum(x3[b, p, r] * w2[r, o], axis=r),
                    name="pointwise_conv")
    y = te.compute([_i64(n), _i64(h), _i64(w), _i64(k)], lambda b, i, j, o: y3[b, i * _i64(w) + j, o],
                   name="pointwise_conv_merge")
    func = te.create_prim_func([x, w2, y]).without_attr("global_symbol").with_attr("tirx.noalias", True)
    return declare_op_pattern(func, 4)  # kOutEWiseFusable


def pointwise_conv_pass(target):
    """The module pass (a function, so that importing optc does not import TVM): every conv2d that `eligible`
    accepts for the target's vector width and register file becomes `pointwise_conv_kernel`."""
    from tvm import relax

    from .relax_rewrite import call_rewrite_pass
    from .schedules import _vector_lanes, vector_registers

    lanes, registers = _vector_lanes(target, 32), vector_registers(target)

    def rewrite(builder, call):
        plan = eligible(call, lanes, registers)
        if plan is None:
            return None
        (n, h, w, c), weight = plan
        k = weight.shape[1]
        kernel = builder.add_func(pointwise_conv_kernel(n, h, w, c, k), "pointwise_conv")
        return relax.call_tir(kernel, [call.args[0], relax.const(weight)], relax.TensorType((n, h, w, k), "float32"))

    return call_rewrite_pass("optc_pointwise_conv", "relax.nn.conv2d", rewrite)
