"""Softmax over rows whose length is not a multiple of the vector width (ViT's 197 tokens, any odd sequence
length), for the fast-math pass (codegen/fast_math.py).

TOPI's fast_softmax reduces the row max and the row sum in one loop each; the sum is one chain of dependent
scalar adds (LLVM may not reorder float adds), and RowReduction's vector partials (an rfactor of the row split
into whole vectors) need a row length that is a multiple of the vector width. Here each reduction is written in
two steps, ``lanes`` partial results over strided chunks of the row and then those, so that RowReduction
vectorizes the partials. A [3, 197, 197] softmax: 206 -> 83 us (onnxruntime 54), AMD EPYC Zen 4; with the tail's
exponentials in one vector, a model of that one softmax 70 -> 61 us a call (AMD EPYC Zen 5, 1 thread).
"""

from __future__ import annotations

#: partial results per row: a multiple of every CPU target's float32 vector width (NEON 4, AVX2 8, AVX-512 16)
SOFTMAX_LANES = 16


def is_ragged_row(shape: tuple, axis: int) -> bool:
    """Whether a softmax of a static `shape` over `axis` is over the last axis and its length is longer than
    `SOFTMAX_LANES` and not a multiple of it (shorter rows and multiples keep TOPI's fast_softmax)."""
    if not shape or axis not in (-1, len(shape) - 1) or not isinstance(shape[-1], int):
        return False
    return shape[-1] > SOFTMAX_LANES and shape[-1] % SOFTMAX_LANES != 0


def lane_partial_softmax(x, lanes: int = SOFTMAX_LANES, *, n: int | None = None, prologue=None):
    """fast_softmax over the last axis of the TE tensor `x` (float32, static row length n > `lanes`): the same
    values as `topi.nn.fast_softmax` (its fast_exp, its max) but for the order of the sum.

    The row max is the max of `lanes` partial maxima, each over x[j * lanes + l] for the whole chunks j of the
    row and then x[n - lanes + l], the row's last whole vector (elements read twice do not change a max). The
    exponentials are computed for the whole chunks and for that last vector, whose lanes past the chunks are the
    tail's (a vector of exps, not a scalar loop over the tail); the row sum adds tail element n - n % lanes + l
    to partial l, the other lanes skipped with a select. Every read is a contiguous vector. Returns the [..., n]
    result.

    `n`: the softmax of each row's first n elements only (x's rows may be longer: a matmul's output padded to
    whole vectors, read in place instead of cropped first). `prologue`: a function of one float32 TE value applied
    to every element read (a DequantizeLinear's `(v - zero_point) * scale`), instead of a kernel of its own."""
    from tvm import te, tirx, topi

    shape = tuple(x.shape)
    n = int(shape[-1]) if n is None else n
    rows = shape[:-1]
    shape = (*rows, n)
    body = n // lanes  # whole chunks: every x[j * lanes + l] with j < body is in the row
    tail = body * lanes
    if prologue is not None or n != int(x.shape[-1]):
        source = x
        x = te.compute(shape, lambda *i: prologue(source(*i)) if prologue is not None else source(*i),
                       name="T_softmax_input")

    j = te.reduce_axis((0, body), name="j")
    start = n - lanes  # the row's last whole vector: x[start + l], overlapping the chunks (start >= 0: n > lanes)
    body_max = te.compute((*rows, lanes), lambda *i: te.max(x[(*i[:-1], j * lanes + i[-1])], axis=j),
                          name="T_softmax_maxpart")
    part_max = te.compute((*rows, lanes), lambda *i: te.max(body_max[i], x[(*i[:-1], start + i[-1])]),
                          name="T_softmax_maxtail")  # (elements read twice do not change a max)
    lane = te.reduce_axis((0, lanes), name="l")
    max_elem = te.compute(rows, lambda *i: te.max(part_max[(*i, lane)], axis=lane), name="T_softmax_maxelem")
    exp = topi.math.fast_exp(te.compute((*rows, tail), lambda *i: x[i] - max_elem[i[:-1]], name="T_softmax_delta"))
    # the tail's exps as one vector (the row's last `lanes` elements), not a scalar loop over the tail elements: a
    # model of ViT's [3, 197, 197] softmax took 70 us a call with the loop, 61 with the vector
    last = topi.math.fast_exp(te.compute((*rows, lanes), lambda *i: x[(*i[:-1], start + i[-1])] - max_elem[i[:-1]],
                                         name="T_softmax_lastdelta"))
    j2 = te.reduce_axis((0, body), name="j")
    body_sum = te.compute((*rows, lanes), lambda *i: te.sum(exp[(*i[:-1], j2 * lanes + i[-1])], axis=j2),
                          name="T_softmax_sumpart")
    zero = tirx.const(0.0, x.dtype)
    # tail element tail + l goes to partial l, as it did when the tail was read element by element: the same sum
    ragged = n - tail
    part_sum = te.compute((*rows, lanes), lambda *i: body_sum[i] + tirx.Select(
        i[-1] < ragged, last[(*i[:-1], te.min(i[-1] + lanes - ragged, lanes - 1))], zero), name="T_softmax_sumtail")
    lane2 = te.reduce_axis((0, lanes), name="l")
    expsum = te.compute(rows, lambda *i: te.sum(part_sum[(*i, lane2)], axis=lane2), name="T_softmax_expsum")
    return te.compute(shape, lambda *i: tirx.Select(
        i[-1] < tail, exp[(*i[:-1], te.min(i[-1], tail - 1))], last[(*i[:-1], te.max(i[-1] - start, 0))])
        / expsum[i[:-1]], name="T_softmax_norm", attrs={"axis": len(shape) - 1})
