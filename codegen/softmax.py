"""Softmax over rows whose length is not a multiple of the vector width (ViT's 197 tokens, any odd sequence
length) or is symbolic (a dynamic-axes export's attention scores), for the fast-math pass (codegen/fast_math.py).

TOPI's fast_softmax reduces the row max and the row sum in one loop each; the sum is one chain of dependent
scalar adds (LLVM may not reorder float adds), and RowReduction's vector partials (an rfactor of the row split
into whole vectors) need a row length that is a multiple of the vector width. Here each reduction is written in
two steps, ``lanes`` partial results over strided chunks of the row and then those, so that RowReduction
vectorizes the partials. A [3, 197, 197] softmax: 206 -> 83 us (onnxruntime 54), AMD EPYC Zen 4.
"""

from __future__ import annotations

#: partial results per row: a multiple of every CPU target's float32 vector width (NEON 4, AVX2 8, AVX-512 16)
SOFTMAX_LANES = 16


def is_ragged_row(shape: tuple, axis: int) -> bool:
    """Whether a softmax of `shape` over `axis` is over the last axis and its length is longer than
    `SOFTMAX_LANES` and not a multiple of it (shorter rows and multiples keep TOPI's fast_softmax), or symbolic
    with the same symbol among the rows' dims (attention scores [B, H, S, S] of a dynamic-axes export: a row
    length of 0 then leaves no row to compute, so no row reads its partials' clamped indices)."""
    if not shape or axis not in (-1, len(shape) - 1):
        return False
    if not isinstance(shape[-1], int):
        return any(d.same_as(shape[-1]) for d in shape[:-1] if not isinstance(d, int))
    return shape[-1] > SOFTMAX_LANES and shape[-1] % SOFTMAX_LANES != 0


def lane_partial_softmax(x, lanes: int = SOFTMAX_LANES, *, n: int | None = None, prologue=None):
    """fast_softmax over the last axis of the TE tensor `x` (float32, static row length n > `lanes`, or a symbolic
    one, see `is_ragged_row`): the same values as `topi.nn.fast_softmax` (its fast_exp, its max) but for the
    order of the sum.

    The row max is the max of `lanes` partial maxima, each over x[j * lanes + l] for the whole chunks j of the
    row and then the tail element n - n % lanes + l (the last element where there is none: a duplicate does not
    change a max); the row sum likewise, the tail's duplicates skipped with a select. The whole chunks read
    contiguous vectors; only the tail's vector per row is a gather. Returns the [..., n] result.

    `n`: the softmax of each row's first n elements only (x's rows may be longer: a matmul's output padded to
    whole vectors, read in place instead of cropped first). `prologue`: a function of one float32 TE value applied
    to every element read (a DequantizeLinear's `(v - zero_point) * scale`), instead of a kernel of its own."""
    from tvm import te, tirx, topi

    shape = tuple(x.shape)
    whole = n is None
    n = (int(shape[-1]) if isinstance(shape[-1], tirx.IntImm) else shape[-1]) if n is None else n
    rows = shape[:-1]
    shape = (*rows, n)
    body = n // lanes  # whole chunks: every x[j * lanes + l] with j < body is in the row
    tail = body * lanes
    if prologue is not None or not whole:
        source = x
        x = te.compute(shape, lambda *i: prologue(source(*i)) if prologue is not None else source(*i),
                       name="T_softmax_input")

    j = te.reduce_axis((0, body), name="j")
    body_max = te.compute((*rows, lanes), lambda *i: te.max(x[(*i[:-1], j * lanes + i[-1])], axis=j),
                          name="T_softmax_maxpart")
    part_max = te.compute((*rows, lanes), lambda *i: te.max(
        body_max[i], x[(*i[:-1], te.min(tail + i[-1], n - 1))]), name="T_softmax_maxtail")
    lane = te.reduce_axis((0, lanes), name="l")
    max_elem = te.compute(rows, lambda *i: te.max(part_max[(*i, lane)], axis=lane), name="T_softmax_maxelem")
    delta = te.compute(shape, lambda *i: x[i] - max_elem[i[:-1]], name="T_softmax_delta")
    exp = topi.math.fast_exp(delta)
    j2 = te.reduce_axis((0, body), name="j")
    body_sum = te.compute((*rows, lanes), lambda *i: te.sum(exp[(*i[:-1], j2 * lanes + i[-1])], axis=j2),
                          name="T_softmax_sumpart")
    # the tail's values computed again from x in blocks of their own (the same operations on the same values): under
    # the select's condition TVM's simplifier drops the clamp of an index (the select evaluates both sides, so the
    # lanes past the row would read past the buffer); and read from `exp`, the clamped reads made the region of `exp`
    # that the row loop computes an expression TVM could not simplify to the row when n is symbolic (its loop then
    # not vectorized: a [1, 8, 128, 128] softmax over a symbolic row took 2.2x the static one's time)
    tail_delta = te.compute((*rows, lanes), lambda *i: x[(*i[:-1], te.min(tail + i[-1], n - 1))] - max_elem[i[:-1]],
                            name="T_softmax_taildelta")
    tail_exp = topi.math.fast_exp(tail_delta)
    zero = tirx.const(0.0, x.dtype)
    part_sum = te.compute((*rows, lanes), lambda *i: body_sum[i] + tirx.Select(tail + i[-1] < n, tail_exp[i], zero),
                          name="T_softmax_sumtail")
    lane2 = te.reduce_axis((0, lanes), name="l")
    expsum = te.compute(rows, lambda *i: te.sum(part_sum[(*i, lane2)], axis=lane2), name="T_softmax_expsum")
    return te.compute(shape, lambda *i: exp[i] / expsum[i[:-1]], name="T_softmax_norm",
                      attrs={"axis": len(shape) - 1})
