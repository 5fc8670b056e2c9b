"""Grouped-query attention (GQA; Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models
from Multi-Head Checkpoints"): an Attention over K/V heads that the graph repeated for the query heads takes the
unrepeated K and V instead, as ONNX's Attention (opset 23) defines for 4-D inputs with fewer K/V heads than query
heads: query head j reads K/V head j // (q heads / kv heads) (the reference's `np.repeat(K, reps, axis=1)`).

The repetition, as exporters write torch's `repeat_interleave(rep, dim=1)` and Hugging Face's `repeat_kv`::

    r = Reshape(Tile(x5, [1, 1, rep, 1, 1]), [B, Nkv*rep, T, H])      x5: [B, Nkv, 1, T, H] (TorchScript)
    r = Reshape(Expand(x5, [B, Nkv, rep, T, H]), [B, Nkv*rep, T, H])   (dynamo, repeat_kv)
    r = Gather(x, [0, .., 0, 1, .., 1, ..], axis=1)                    x: [B, Nkv, T, H], each index rep times

x5 is Unsqueeze(x, 2) (then x itself is taken) or any [B, Nkv, 1, T, H] value (then Squeeze(x5, [2])). Checked:
the dims of every step (the repeat only on the axis after the K/V heads, the Reshape merging exactly those two
axes, symbolic dims the same names), the same repeat count for K and V, no past K/V inputs and no output but Y
used (the present K/V would change shape; the rewrite engine refuses a match whose other outputs are used). The tiled order (heads [h0, h1, h0, h1], `Tile(x, [1, rep, 1, 1])`) is
not GQA's and is refused.

At a symbolic batch and sequence, torch's repeat_interleave computes the Reshape's target from the Tile's shape,
`Concat(Shape(t)[0:1], [-1], Shape(t)[3:5])`, and ONNX's inference rightly leaves its dims unnamed: at a sequence of
0 the element 0 copies t's dim 2. `FuseAttention4D` takes such a repeat as [B, N, T, H] all the same, and the
attention as grouped-query at once, where the points at which the Reshape gives other dims change no result of the
attention (`computed_repeat`: the unfused attention fails there, or gives the same empty tensor).

`ShapeOfRepeatedHeads` reads a repeat's dims other than the heads from the unrepeated value (the fused attention's
mask is sized by Shape(K)), so that the repeat leaves the graph with the fusion.

Rounding: bit-exact in ONNX's arithmetic (the same products and sums; a runtime's kernel may order them otherwise).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.core import Value
from ..passes.infer_shapes import is_crop_of
from ..pattern import require
from ..rule import Rule
from ._util import full_shape, normalize_axes, operand, shape_elements

_PAST = (4, 5)  # Attention's past_key, past_value inputs


def _dims_equal(a: tuple, b: tuple, skip: int) -> bool:
    """a and b agree on every axis but `skip` (ints equal, symbolic dims the same name)."""
    return len(a) == len(b) and all(i == skip or x == y for i, (x, y) in enumerate(zip(a, b, strict=True)))


def _interleaved_gather(m, r: Value) -> tuple[Value, int] | None:
    node = r.producer
    x = node.inputs[0]
    xs, idx = full_shape(x), m.const(node.inputs[1])
    if xs is None or len(xs) != 4 or not isinstance(xs[1], int) or xs[1] < 1 or idx is None or idx.ndim != 1:
        return None
    if normalize_axes([node.attr("axis", 0)], 4) != [1] or idx.size % xs[1]:
        return None
    rep = idx.size // xs[1]
    return (x, rep) if np.array_equal(idx, np.repeat(np.arange(xs[1]), rep)) else None


def _repeat_axis(m, t: Value, x5: Value) -> tuple[int, tuple] | None:
    """(rep, the [B, Nkv, rep, T, H] dims) of Tile / Expand `t` of x5 ([B, Nkv, 1, T, H]) repeating axis 2 only,
    else None. A Tile's dims come from x5's and its repeats (ONNX's inference gives a Tile fresh symbols for its
    symbolic dims, a dynamic sequence's among them); an Expand's from its output (what it broadcast)."""
    node, xs = t.producer, full_shape(x5)
    if xs is None or len(xs) != 5 or xs[2] != 1:
        return None
    if node.op_type == "Tile":
        reps = m.const(node.inputs[1])
        if reps is None or reps.size != 5:
            return None
        r = reps.reshape(-1).tolist()
        return (int(r[2]), (*xs[:2], int(r[2]), *xs[3:])) if r[:2] == [1, 1] and r[3:] == [1, 1] else None
    ts = full_shape(t)  # Expand: the output's dims say what it broadcast (only axis 2, from 1)
    if ts is None or len(ts) != 5 or not isinstance(ts[2], int) or not _dims_equal(ts, xs, 2):
        return None
    return ts[2], ts


def _merged_target(m, node, t: Value, ts: tuple) -> tuple | None:
    """The dims [B, Nkv*rep, T, H] of Reshape `node` of t ([B, Nkv, rep, T, H], `ts`) whose target is computed as
    t's own dims with axes 1 and 2 merged, `Concat(Shape(t)[0:1], [Nkv*rep or -1], Shape(t)[3:5])` (torch's
    repeat_interleave exported at a symbolic batch and sequence; ints where t's dims are), H an int > 0; else None.
    ONNX's inference leaves such a Reshape's dims unnamed (`infer_shapes._zero_copying_reshapes`), and rightly:
    at T = 0 the element T copies t's dim 2, rep. With [Nkv*rep] the Reshape then fails for B > 0 and gives
    [0, Nkv*rep, rep, H] at B = 0; with -1 it fails at B = 0 (nothing to infer -1 from) and gives [B, 0, rep, H]
    for B > 0, zero heads. `computed_repeat` says when these points change no result."""
    elems = shape_elements(m, node.inputs[1])
    if elems is None or len(elems) != 4 or not isinstance(ts[4], int) or ts[4] <= 0:
        return None
    for i, axis in ((0, 0), (2, 3), (3, 4)):
        e = elems[i]
        if not (isinstance(e, tuple) and e[0] is t and e[1] == axis
                or isinstance(e, int) and isinstance(ts[axis], int) and e == ts[axis] > 0):
            return None
    if elems[1] not in (ts[1] * ts[2], -1):
        return None
    return ts[0], ts[1] * ts[2], ts[3], ts[4]


def computed_repeat(m, r: Value, mask_shape: tuple | None, masked: bool) -> tuple | None:
    """(x, x5, rep, dims) for a K/V head repeat r (see `repeated_heads`, rep >= 2) whose Reshape target is
    computed (`_merged_target`) and read by an attention (Q with N = Nkv*rep heads), where taking r as
    [B, N, T, H] changes no result of the attention: where the Reshape gives other dims (only at a length of 0),
    the unfused attention fails or gives the same empty result. With a -1 for the heads: at T = 0, B > 0 it gives
    zero heads, which Q's N >= 2 cannot broadcast against (the scores' MatMul fails), and fails itself at B = 0.
    With Nkv*rep: it fails at T = 0, B > 0, and at B = T = 0 gives [0, N, rep, H]; the attention's mask (`masked`,
    of shape `mask_shape`) must then not broadcast against a key length of rep where K's is 0: its last dim is 1
    (the unfused and the fused attention both give the empty [0, N, S, Hv] as ONNX defines them; onnxruntime's
    Attention refuses a batch of 0, as README's "Transformer fusions" says), or K's sequence T or a crop min(T, L)
    of it (the unfused scores' [.., rep] against 0 fail). Else None. (The unfused graph and onnxruntime fail at a
    batch or a sequence of 0 on the exports seen.)"""
    node = r.producer if r is not None else None
    if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") \
            or node.attr("allowzero", 0) or full_shape(r) is not None:
        return None
    found = _repeat_parts(m, r, computed=True)
    if found is None or found[2] < 2:
        return None
    dims = found[3]
    heads_inferred = shape_elements(m, node.inputs[1])[1] == -1  # (zero heads at T = 0: Q's N >= 2 heads cannot
    # broadcast against them, the scores' MatMul fails)
    if not heads_inferred and masked \
            and not (isinstance(dims[0], int) and dims[0] > 0 or isinstance(dims[2], int) and dims[2] > 0):
        last = mask_shape[-1] if mask_shape else None
        if not (last == 1 or last == dims[2] or is_crop_of(last, dims[2])):
            return None
    return found


def repeated_heads(m, r: Value) -> tuple[Value, Value | None, int] | None:
    """(x, x5, rep) when r is x's heads each repeated rep times in place (see the module doc): x the
    [B, Nkv, T, H] source, or None with x5 the [B, Nkv, 1, T, H] value to Squeeze; else None."""
    found = _repeat_parts(m, r)
    return None if found is None else found[:3]


def _repeat_parts(m, r: Value, computed: bool = False) -> tuple | None:
    """(x, x5, rep, the [B, Nkv*rep, T, H] dims of r) for `repeated_heads`; `computed`: r's dims may come from its
    Reshape's computed target (`_merged_target`) where its type leaves them unnamed."""
    node = r.producer if r is not None else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Gather":
        found = _interleaved_gather(m, r)
        return None if found is None else (found[0], None, found[1], full_shape(r))
    t = node.inputs[0] if node.op_type == "Reshape" else None
    if t is None or t.producer is None or t.producer.op_type not in ("Tile", "Expand") or t.producer.domain:
        return None
    x5 = t.producer.inputs[0]
    found, rs = _repeat_axis(m, t, x5), full_shape(r)
    if found is not None and rs is None and computed:
        rs = _merged_target(m, node, t, found[1])
    if found is None or rs is None or len(rs) != 4 or not isinstance(found[1][1], int):
        return None
    rep, ts = found
    if (rs[0], rs[1], rs[2], rs[3]) != (ts[0], ts[1] * ts[2], ts[3], ts[4]):
        return None
    p = x5.producer
    if p is not None and p.op_type == "Unsqueeze" and not p.domain:
        known, axes = operand(p, 1, "axes", m.opsets, m)
        if known and axes is not None and normalize_axes(axes, 5) == [2]:
            return p.inputs[0], None, rep, rs
    return None, x5, rep, rs


def unrepeated(op, found: tuple) -> Value:
    """The [B, Nkv, T, H] source of a `repeated_heads` (or `computed_repeat`) result: x itself, or Squeeze(x5,
    [2])."""
    x, x5 = found[:2]
    return x if x is not None else op.Squeeze(x5, np.array([2], np.int64))


class ShapeOfRepeatedHeads(Rule):
    """Slice(Shape(r), [lo], [hi]) of a K/V head repeat r (see `repeated_heads`) over dims other than the heads
    axis -> the same Slice of the unrepeated value's shape: the dims agree there. The fused attention's mask is
    Expanded to [1, 1, S, T] with T read this way; once FuseGroupedQueryAttention takes the unrepeated K, the
    repeat would otherwise stay only for its Shape (onnxruntime computing it every call; TVM unable to prove the
    mask's T equal to K's)."""

    def pattern(self, op, r, lo, hi):
        return op.Slice(op.Shape(r), lo.const(), hi.const())

    def check(self, m, r, lo, hi):
        require(not m.root.inputs[0].producer.attributes, "Shape with start or end")  # (the Slice reads its dims)
        found = repeated_heads(m, r)
        require(found is not None, "not a repeat of each head in place")
        starts, ends = np.asarray(m.const(lo)), np.asarray(m.const(hi))
        require(starts.size == 1 and ends.size == 1, "not one range")
        a, b = (min(max(v + 4 if v < 0 else v, 0), 4) for v in (int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])))
        require(a < b and (b <= 1 or a >= 2), "the range covers the heads axis")
        m.info = found
        return True

    def rewrite(self, op, m, r, lo, hi):
        return op.Slice(op.Shape(unrepeated(op, m.info)), lo, hi)


class FuseGroupedQueryAttention(Rule):
    """Attention(q, repeat(k), repeat(v)) -> Attention(q, k, v) with fewer K/V heads (opset 23+, 4-D inputs)."""

    min_opset: ClassVar[int | None] = 23
    rounding: ClassVar[str] = "bit-exact in ONNX's arithmetic: the same products and sums"

    def pattern(self, op, q, k, v):
        return op.Attention(q, k, v, _allow_other_inputs=True)

    def check(self, m, q, k, v):
        node = m.root
        require(all(len(full_shape(x) or ()) == 4 for x in (q, k, v)), "q, k, v are not 4-D")
        require(all(i >= len(node.inputs) or node.inputs[i] is None for i in _PAST), "past K/V inputs")
        found = [repeated_heads(m, x) for x in (k, v)]
        require(all(f is not None for f in found), "K or V is not a repeat of each head in place")
        require(found[0][2] == found[1][2] and found[0][2] > 1, "K and V repeat their heads a different number of "
                "times (or once)")
        m.info = found
        return True

    def rewrite(self, op, m, q, k, v):
        return op.Attention(q, *(unrepeated(op, f) for f in m.info), *m.root.inputs[3:], **dict(m.root.attributes))
