"""Max-pools with IEEE results, in one kernel: the legalization of relax's max_pool1d/2d/3d for float tensors.

TOPI's max-pool starts each window at the lowest finite value and pads with it, and its max (`a > b ? a : b`) can
drop a NaN. ONNX's MaxPool is the max of the window's elements (ieee.py says why a window holding a NaN gives
NaN), so a window of -inf gives -inf (TOPI: -3.4e38) and a NaN anywhere in it gives NaN. The lowering used to get
NaN right with three pools (of x, of its NaN flags, and sqrt(-flags) added), 3x the memory traffic of one: the
8x8 digits CNN's max-pool took 38 us of its 130 us at batch 32. Here the window's reduction itself is IEEE: it
starts at -inf, the padding reads -inf, and its combiner keeps the accumulator when it is NaN or greater,
`select(isnan(acc) || acc > x, acc, x)` (the same result as `max` on everything else, signed zeros included).

relax keeps the op (so ConvertLayout moves it to NHWC with the convolutions); only its legalization changes.
Layouts with a split channel (NCHW16c) and integer tensors keep TOPI's kernel (integers have no NaN, and their
lowest value is exact).
"""

from __future__ import annotations

#: relax ops whose legalization `legalize_map` replaces
MAX_POOL_OPS = ("relax.nn.max_pool1d", "relax.nn.max_pool2d", "relax.nn.max_pool3d")


def max_pool_te(x, pool_size: list[int], strides: list[int], dilation: list[int], padding: list[int],
                spatial_axes: list[int], out_shape: list):
    """The max-pool of the TE tensor `x` (float) over `spatial_axes` (one per window dim, in the order of
    `pool_size`): `padding` is (before..., after...) in elements; `out_shape` is the output's shape (relax's
    shape inference, ceil mode included). Window positions outside `x` read -inf. Returns the TE tensor."""
    from tvm import te, tirx

    n = len(pool_size)
    before = padding[:n]
    neg_inf = tirx.const(float("-inf"), x.dtype)

    def nan(v):  # (TVM has no isnan for bfloat16; v != v is the same test)
        return v != v if x.dtype == "bfloat16" else tirx.isnan(v)

    reducer = te.comm_reducer(lambda acc, v: tirx.Select(tirx.Or(nan(acc), acc > v), acc, v),
                              lambda dtype: tirx.const(float("-inf"), dtype), name="ieee_max")
    window = [te.reduce_axis((0, k), name=f"r{i}") for i, k in enumerate(pool_size)]
    checked = [i for i, axis in enumerate(spatial_axes) if padding[i] or padding[n + i]
               or not _inside(out_shape[axis], x.shape[axis], pool_size[i], strides[i], dilation[i])]

    def element(*out):
        index = list(out)
        inside = []
        for i, axis in enumerate(spatial_axes):
            pos = out[axis] * strides[i] + window[i] * dilation[i] - before[i]
            index[axis] = pos
            if i in checked:
                inside += [pos >= 0, pos < x.shape[axis]]
        value = x(*index)
        return reducer(tirx.if_then_else(tirx.all(*inside), value, neg_inf) if inside else value, axis=window)

    return te.compute(out_shape, element, name="pool_max", tag="pool_max")


def _inside(out, size, k: int, stride: int, dilation: int) -> bool:
    """Whether the last of `out` windows ends inside an axis of `size` elements (provably: static sizes)."""
    from tvm import tirx

    if not all(isinstance(v, int | tirx.IntImm) for v in (out, size)):
        return False
    return (int(out) - 1) * stride + (k - 1) * dilation < int(size)


def _legalize(default):
    def legalize(bb, call):
        x, attrs = call.args[0], call.attrs
        dtype = str(x.ty.dtype.dtype)
        n = len(attrs.pool_size)
        letters = "DHW"[3 - n:]
        layout, out_layout = str(attrs.layout), str(attrs.out_layout)
        if (not dtype.startswith(("float", "bfloat")) or layout != out_layout or not layout.isupper()
                or any(layout.count(c) != 1 for c in letters)):
            return default(bb, call)
        return bb.call_te(max_pool_te, x, [int(k) for k in attrs.pool_size], [int(s) for s in attrs.strides],
                          [int(d) for d in attrs.dilation], [int(p) for p in attrs.padding],
                          [layout.index(c) for c in letters], list(call.ty.shape),
                          primfunc_name_hint=f"max_pool{n}d")

    return legalize


def legalize_map() -> dict:
    """{op name: legalization} for `relax.transform.LegalizeOps(customize_legalize_map=...)`."""
    import tvm

    return {name: _legalize(tvm.ir.Op.get(name).get_attr("FLegalize")) for name in MAX_POOL_OPS}
