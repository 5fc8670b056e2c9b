"""Layout transposes that need not copy, removed after ConvertLayout (a relax pass).

1. A transpose before a Flatten, folded into the next matmul's constant weight. After ConvertLayout a CNN's
   classifier reads its NHWC feature map through a transpose back to NCHW, because Flatten's order of the
   features is NCHW's: matmul(reshape(permute_dims(x, [0, 3, 1, 2]), [N, K]), W). Permuting the rows of the
   constant W once, at compile time, gives the same products from reshape(x, [N, K]), a view. onnxruntime's
   NCHWc transformer and OpenVINO do the same. Any permutation that keeps axis 0 (the batch) qualifies; each
   output element is the sum of the same products, added in x's order instead of the transpose's (float
   rounding may differ in the last places, as with any other reduction order). The 8x8 digits CNN at batch
   32: the transpose took 10-18 us of about 80.
2. A transpose that moves only axes of size 1 (the NCHW -> NHWC transpose of a one-channel image, of a
   [N, C, 1, 1] pooled map) keeps every element where it is: a reshape, a view.
3. The NCHW -> NHWC transpose of a padded 8-bit tensor whose channels are padded to 4 (a quantized image before
   an integer convolution, whose dot-product instructions take groups of 4 channels): each output pixel's 4
   bytes written as one uint32 (`_nhwc4_kernel`), 16 pixels to a vector store, the input planes read in
   vectors. Scheduled as an elementwise kernel, the transpose stored the bytes one at a time: MobileNetV2-like's
   quantized image took 126 us of its 2.1 ms (AMD EPYC Zen 5). The same bytes in the same places: exact.
4. A channel shuffle (ShuffleNet's reshape [N, G, K, H, W] -> transpose -> reshape, which ConvertLayout leaves
   between transposes to NCHW and back; or the same three ops on an NHWC tensor): y[n, h, w, q G + r] =
   x[n, h, w, r K + q], checked by applying the chain to the element indices at compile time. As one fused
   injective kernel each output lane computed its pixel and channel from the flat index and gathered one float
   (ShuffleNet's 28 x 28 x 136 shuffle: ~100 us); `_shuffle_kernel` runs q, then r unrolled, per pixel, which LLVM
   vectorizes as interleaved loads and stores (8 us, AMD EPYC Zen 4, 1 thread). A copy: exact.
"""

from __future__ import annotations

import numpy as np


def _weight_rows_permuted(w: np.ndarray, transposed_dims: list[int], perm: list[int]) -> np.ndarray:
    """W[K, M] of matmul(reshape(transpose(x, perm), [N, K]), W) as the W' of matmul(reshape(x, [N, K]), W'):
    `transposed_dims` are transpose(x)'s dims after the batch. W' = W viewed as [*transposed_dims, M], its axes
    put in x's order."""
    rank = len(perm)
    inverse = np.argsort(perm)  # x's axis a is axis inverse[a] of the transposed tensor
    view = w.reshape(*transposed_dims, w.shape[-1])
    return np.ascontiguousarray(view.transpose([int(inverse[a]) - 1 for a in range(1, rank)] + [rank - 1])
                                ).reshape(w.shape)


#: the channels of an NHWC tensor packed into one 32-bit word per pixel by rewrite 3
PACKED_CHANNELS = 4
#: the pixels of one vector store of rewrite 3 (16 x 32 bits: one AVX-512 register, four NEON ones)
PACKED_LANES = 16


def _nhwc4_kernel(n: int, c: int, h: int, w: int, pads: tuple[int, int, int, int], fill: int, dtype: str):
    """y[n, pt + i, pl + j, k] = x[n, k, i, j] (k < c), `fill` elsewhere (the padded border and channels k >= c):
    x [n, c, h, w] and y [n, pt + h + pb, pl + w + pr, 4] of the 8-bit `dtype`, y written as uint32 words
    (little-endian: channel k is byte k of its pixel's word). `pads`: (pt, pb, pl, pr), >= 0; `fill` in 0..255
    (the pad value's byte)."""
    from tvm.script import tirx as T  # noqa: PLC0415

    from ..lowering.converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    pt, pb, pl, pr = pads
    h2, w2 = pt + h + pb, pl + w + pr
    word_fill = sum(fill << (8 * k) for k in range(PACKED_CHANNELS))
    pad_word = sum(fill << (8 * k) for k in range(c, PACKED_CHANNELS))
    body, lanes = w // PACKED_LANES, PACKED_LANES
    i64 = T.int64

    def word(x, b, i, j):  # the pixel's packed word: byte k = channel k
        packed = T.uint32(pad_word)
        for k in range(c):
            packed = packed | (T.Cast("uint32", T.Cast("uint8", x[b, k, i, j])) << T.uint32(8 * k))
        return packed

    @T.prim_func(private=True, s_tir=True)
    def nhwc4(x: T.Buffer((i64(n), i64(c), i64(h), i64(w)), dtype),
              y: T.Buffer((i64(n), i64(h2), i64(w2), i64(PACKED_CHANNELS)), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, DECLARED_OP_PATTERN: 8})
        with T.sblock("root"):
            T.reads(x[0:n, 0:c, 0:h, 0:w])
            T.writes(y[0:n, 0:h2, 0:w2, 0:PACKED_CHANNELS])
            for r in T.parallel(i64(n * h2)):
                y32 = T.decl_buffer((i64(n), i64(h2), i64(w2)), "uint32", data=y.data)
                b, row = r // i64(h2), r % i64(h2)
                if row < i64(pt) or row >= i64(pt + h):
                    for j in T.vectorized(i64(w2)):
                        with T.sblock("border_row"):
                            y32[b, row, j] = T.uint32(word_fill)
                else:
                    for j in range(i64(pl)):
                        with T.sblock("border_left"):
                            y32[b, row, j] = T.uint32(word_fill)
                    for v in range(i64(body)):
                        for j in T.vectorized(i64(lanes)):
                            with T.sblock("packed"):
                                y32[b, row, i64(pl) + v * i64(lanes) + j] = word(x, b, row - i64(pt),
                                                                                 v * i64(lanes) + j)
                    for j in range(i64(body * lanes), i64(w)):
                        with T.sblock("packed_tail"):
                            y32[b, row, i64(pl) + j] = word(x, b, row - i64(pt), j)
                    for j in range(i64(pr)):
                        with T.sblock("border_right"):
                            y32[b, row, i64(pl + w) + j] = T.uint32(word_fill)

    return nhwc4


#: the most elements a chain of layout ops is traced on (at compile time, int32 indices: 16 MiB) to find a channel
#: shuffle
SHUFFLE_TRACE_MAX = 1 << 22
#: a shuffle's groups (its inner loop) are unrolled up to this many
SHUFFLE_UNROLL_MAX = 16


def shuffle_groups(dims: list[int], ops: list[tuple[str, list[int]]]) -> int | None:
    """G when applying ``ops`` (``("permute", axes)`` or ``("reshape", shape)``, in order) to a tensor x of the
    static ``dims`` [N, H, W, C] gives y [N, H, W, C] with y[n, h, w, q G + r] = x[n, h, w, r K + q] (K = C / G, 1
    < G < C), else None (traced on the element indices; None above SHUFFLE_TRACE_MAX elements)."""
    size = int(np.prod(dims))
    if len(dims) != 4 or size == 0 or size > SHUFFLE_TRACE_MAX:
        return None
    index = np.arange(size, dtype=np.int32).reshape(dims)
    for kind, arg in ops:
        index = index.transpose(arg) if kind == "permute" else index.reshape(arg)
    c = dims[3]
    if list(index.shape) != list(dims):
        return None
    channels = index - (np.arange(size // c, dtype=np.int32) * c).reshape(*dims[:3], 1)
    if not (channels == channels.reshape(-1, c)[0]).all():
        return None
    perm, out = channels.reshape(-1, c)[0], np.arange(c)
    for g in range(2, c):
        if c % g == 0 and np.array_equal(perm, out % g * (c // g) + out // g):
            return g
    return None


def _shuffle_kernel(n: int, h: int, w: int, groups: int, k: int, dtype: str):
    """y[b, i, j, q * groups + r] = x[b, i, j, r * k + q] (x, y [n, h, w, groups * k]): per pixel (in parallel), q
    then r (unrolled up to SHUFFLE_UNROLL_MAX); not vectorized by TVM (LLVM vectorizes the interleaved copy)."""
    from tvm import s_tir, te  # noqa: PLC0415

    from ..lowering.converters import declare_op_pattern  # noqa: PLC0415
    from .schedules import PARALLEL_MIN_WORK  # noqa: PLC0415
    from .winograd import _i64  # noqa: PLC0415

    x = te.placeholder([_i64(n), _i64(h), _i64(w), _i64(groups * k)], dtype, name="x")
    y = te.compute([_i64(n), _i64(h), _i64(w), _i64(groups * k)],
                   lambda b, i, j, c: x[b, i, j, c % _i64(groups) * _i64(k) + c // _i64(groups)],
                   name="channel_shuffle")
    sch = s_tir.Schedule(te.create_prim_func([x, y]).without_attr("global_symbol"))
    b, i, j, c = sch.get_loops(sch.get_sblock("channel_shuffle"))
    q, r = sch.split(c, [k, groups])
    pixel = sch.fuse(b, i, j)
    if groups <= SHUFFLE_UNROLL_MAX:
        sch.unroll(r)
    if n * h * w * groups * k >= PARALLEL_MIN_WORK:
        sch.parallel(pixel)
    func = sch.mod["main"].with_attrs({"tirx.noalias": True, "tirx.is_scheduled": True})
    return declare_op_pattern(func, 8)  # opaque: fused with a neighbour, the kernel would be rescheduled


def layout_copies_pass():
    """The module pass (a function, so that importing optc does not import TVM)."""
    import tvm  # noqa: PLC0415
    from tvm import relax, sym  # noqa: PLC0415
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard  # noqa: PLC0415

    from ..lowering.converters import constant_value, dims_of  # noqa: PLC0415

    x_pat, shape_pat, w_pat = wildcard(), wildcard(), is_const()
    transposed = is_op("relax.permute_dims")(x_pat)
    flat = is_op("relax.reshape")(transposed, shape_pat)
    pattern = is_op("relax.matmul")(flat, w_pat)

    def rewriter(expr, matches):
        x, w = matches[x_pat], constant_value(matches[w_pat])
        t, f = matches[transposed], matches[flat]
        perm = [int(a) for a in t.attrs.axes] if t.attrs.axes is not None else None
        x_dims, f_dims = dims_of(x), dims_of(f)
        if (perm is None or perm[0] != 0 or w is None or w.ndim != 2 or x_dims is None or f_dims is None
                or len(f_dims) != 2 or not sym.Analyzer().can_prove_equal(f_dims[0], x_dims[0])
                or not all(isinstance(d, int) for d in x_dims[1:]) or int(np.prod(x_dims[1:])) != w.shape[0]):
            return expr
        new_w = _weight_rows_permuted(w, [x_dims[a] for a in perm[1:]], perm)
        return relax.op.matmul(relax.op.reshape(x, f.ty.shape), relax.const(new_w), out_dtype=expr.attrs.out_dtype)

    unit_pat = is_op("relax.permute_dims")(wildcard())

    def unit_axes_only(expr, matches):
        x = expr.args[0]
        x_dims, y_dims = dims_of(x), dims_of(expr)
        if x_dims is None or y_dims is None:
            return expr
        perm = [int(a) for a in expr.attrs.axes] if expr.attrs.axes is not None else list(range(len(x_dims)))[::-1]
        moved = [a for a in perm if not isinstance(x_dims[a], int) or x_dims[a] != 1]  # (symbolic: not size 1)
        if moved != sorted(moved):
            return expr
        return relax.op.reshape(x, expr.ty.shape)

    padded_pat = is_op("relax.nn.pad")(wildcard())
    nhwc_pat = is_op("relax.permute_dims")(padded_pat)
    builder = []  # the BlockBuilder over the module being rewritten (rewrite 3 adds its kernels to it)

    def packed_nhwc4(expr, matches):
        pad = matches[padded_pat]
        x = pad.args[0]
        x_dims = dims_of(x)
        perm = [int(a) for a in expr.attrs.axes] if expr.attrs.axes is not None else None
        widths = [int(p) for p in pad.attrs.pad_width]
        if (perm != [0, 2, 3, 1] or x_dims is None or len(x_dims) != 4 or not all(isinstance(d, int) for d in x_dims)
                or str(x.ty.dtype) not in ("uint8", "int8") or pad.attrs.pad_mode != "constant"
                or min(widths) < 0 or widths[:3] != [0, 0, 0] or x_dims[1] + widths[3] != PACKED_CHANNELS):
            return expr
        dtype = str(x.ty.dtype)
        fill = float(pad.attrs.pad_value)
        lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
        if fill != int(fill) or not lo <= fill <= hi:
            return expr
        n, c, h, w = x_dims
        gv = builder[0].add_func(_nhwc4_kernel(n, c, h, w, tuple(widths[4:]), int(fill) & 0xFF, dtype), "pack_nhwc4")
        return relax.call_tir(gv, [x], expr.ty)

    def layout_chain(*kinds):  # a pattern of layout ops applied in this order, and its nodes
        nodes, node = [], wildcard()
        for kind in kinds:
            node = is_op("relax.permute_dims")(node) if kind == "permute" else is_op("relax.reshape")(node, wildcard())
            nodes.append(node)
        return node, nodes

    shuffle_patterns = [layout_chain("permute", "reshape", "permute", "reshape", "permute"),  # NCHW model's
                        layout_chain("reshape", "permute", "reshape")]  # an NHWC model's

    def channel_shuffle(nodes):
        def rewrite(expr, matches):
            calls = [matches[node] for node in nodes]
            x = calls[0].args[0]
            x_dims = dims_of(x)
            ops = []
            for call in calls:
                out_dims = dims_of(call)
                if out_dims is None or not all(isinstance(d, int) for d in out_dims):
                    return expr
                if call.op.name == "relax.permute_dims":
                    ops.append(("permute", [int(a) for a in call.attrs.axes] if call.attrs.axes is not None
                                else list(range(len(out_dims)))[::-1]))
                else:
                    ops.append(("reshape", out_dims))
            if x_dims is None or not all(isinstance(d, int) for d in x_dims):
                return expr
            groups = shuffle_groups(x_dims, ops)
            if groups is None:
                return expr
            n, h, w, c = x_dims
            kernel = _shuffle_kernel(n, h, w, groups, c // groups, str(x.ty.dtype))
            return relax.call_tir(builder[0].add_func(kernel, "channel_shuffle"), [x], expr.ty)

        return rewrite

    @tvm.transform.module_pass(opt_level=0, name="optc_layout_copies")
    def _pass(mod, _ctx):
        builder[:] = [relax.BlockBuilder(mod)]
        rewritten = {}
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                for shuffle_pat, nodes in shuffle_patterns:
                    func = rewrite_call(shuffle_pat, channel_shuffle(nodes), func)
                func = rewrite_call(unit_pat, unit_axes_only, rewrite_call(pattern, rewriter, func))
                rewritten[gv] = rewrite_call(nhwc_pat, packed_nhwc4, func)
        mod = builder.pop().get()
        for gv, func in rewritten.items():
            mod[gv] = func
        return mod

    return _pass
