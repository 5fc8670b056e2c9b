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

`ShapeOfRepeatedHeads` reads a repeat's dims other than the heads from the unrepeated value (the fused attention's
mask is sized by Shape(K)), so that the repeat leaves the graph with the fusion.

Rounding: bit-exact in ONNX's arithmetic (the same products and sums; a runtime's kernel may order them otherwise).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.core import Value
from ..pattern import require
from ..rule import Rule
from ._util import full_shape, normalize_axes, operand

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


def repeated_heads(m, r: Value) -> tuple[Value, Value | None, int] | None:
    """(x, x5, rep) when r is x's heads each repeated rep times in place (see the module doc): x the
    [B, Nkv, T, H] source, or None with x5 the [B, Nkv, 1, T, H] value to Squeeze; else None."""
    node = r.producer if r is not None else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Gather":
        found = _interleaved_gather(m, r)
        return None if found is None else (found[0], None, found[1])
    t = node.inputs[0] if node.op_type == "Reshape" else None
    if t is None or t.producer is None or t.producer.op_type not in ("Tile", "Expand") or t.producer.domain:
        return None
    x5 = t.producer.inputs[0]
    found, rs = _repeat_axis(m, t, x5), full_shape(r)
    if found is None or rs is None or len(rs) != 4 or not isinstance(found[1][1], int):
        return None
    rep, ts = found
    if (rs[0], rs[1], rs[2], rs[3]) != (ts[0], ts[1] * ts[2], ts[3], ts[4]):
        return None
    p = x5.producer
    if p is not None and p.op_type == "Unsqueeze" and not p.domain:
        known, axes = operand(p, 1, "axes", m.opsets, m)
        if known and axes is not None and normalize_axes(axes, 5) == [2]:
            return p.inputs[0], None, rep
    return None, x5, rep


def unrepeated(op, found: tuple[Value, Value | None, int]) -> Value:
    """The [B, Nkv, T, H] source of a `repeated_heads` result: x itself, or Squeeze(x5, [2])."""
    x, x5, _ = found
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
