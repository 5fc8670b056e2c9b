"""Rotary position embedding (RoPE, Su et al. 2021, "RoFormer", eq. 34) as Llama-style exports write it, the
rotate-half form::

    rotate_half(x) = Concat(Neg(x[..., h:]), x[..., :h], axis=-1)        x: [B, N, S, H] heads, h = H / 2
                     (the halves by two Slices, or by one Split into two)
    y = Add(Mul(x, cos), Mul(rotate_half(x), sin))                      cos, sin: constants [.., S, H]

-> RotaryEmbedding(x, cos_cache, sin_cache, position_ids) (ONNX opset 23, interleaved = 0; for onnxruntime, in a
model whose opset stays below 23, com.microsoft RotaryEmbedding(x, position_ids, cos_cache, sin_cache), the same
computation on the same inputs: `FuseRotaryEmbeddingContrib`), with the caches the
first half of the constants' rows ([S, h]) and position_ids = 0 .. S-1 for every batch row. In a dynamic-shape
export cos and sin are the first S rows of constant tables, cropped at run time (`self.cos[:t]`): the caches are
then the tables' first halves and position_ids 0 .. S-1 computed from x's shape (`Range`). ONNX's definition
computes y[..., :h] = cos * x1 - sin * x2 and y[..., h:] = sin * x1 + cos * x2 (x1, x2 the halves), which is what
the graph computes when cos and sin repeat their first half in their second (as `torch.cat([freqs, freqs])`
makes them); checked on the constants, with the slices being exactly the two halves of the last axis, the Concat
on that axis in rotate-half order, cos and sin the same for every batch row and head, S known.

Rounding: exact in ONNX's arithmetic ((-a) * b + c = c - a * b in IEEE 754); a runtime's kernel may contract the
multiply-adds (onnxruntime's: one rounding fewer), hence "not bit-exact".
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.types import DataType, TensorType
from ..passes.infer_shapes import crops_trusted, is_crop_of
from ..pattern import ANY, Or, require
from ..rule import Rule
from ._util import full_shape, is_float, normalize_axes, operand, origin_crop
from .transformer_norm import MS

ROUNDING = "not bit-exact: a runtime's RotaryEmbedding may contract the multiply-adds (one rounding fewer)"


def _last_axis(axes, rank: int) -> bool:
    return normalize_axes(axes, rank) == [rank - 1]


def _slice_range(m, node, rank: int, size: int) -> tuple[int, int] | None:
    """(start, end) of a Slice over the last axis of a tensor whose last dim is `size` (step 1, ends clamped),
    or None for any other Slice."""
    ins = list(node.inputs) + [None] * (5 - len(node.inputs))
    starts, ends, axes, steps = (None if v is None else m.const(v) for v in ins[1:5])
    if starts is None or ends is None or (ins[3] is not None and axes is None) or (ins[4] is not None and steps is None):
        return None
    if axes is None and rank != 1 or axes is not None and not _last_axis(axes, rank):
        return None
    if steps is not None and (steps.size != 1 or int(steps.reshape(-1)[0]) != 1):
        return None
    if starts.size != 1 or ends.size != 1:
        return None
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


def _halves_of_split(m, node, rank: int, h: int) -> bool:
    """Whether a two-output Split cuts the last axis into two halves of `h`."""
    if not _last_axis([node.attr("axis", 0)], rank):
        return False
    known, sizes = operand(node, 1, "split", m.opsets, m)  # an input from opset 13, an attribute before
    if not known:  # sizes computed at run time: not known to be halves
        return False
    if sizes is None:  # equal parts (num_outputs = 2 from opset 18)
        return True
    return [int(v) for v in np.asarray(sizes).reshape(-1)] == [h, h]


def _cache(c: np.ndarray, s: int, h: int) -> np.ndarray | None:
    """The [S, h] cache of a cos / sin constant that broadcasts as [.., S, 2h] over every batch row and head and
    repeats its first half in its second; None otherwise."""
    if c.ndim < 2 or c.ndim > 4 or c.shape[-2:] != (s, 2 * h) or any(d != 1 for d in c.shape[:-2]):
        return None
    c = c.reshape(s, 2 * h)
    return np.ascontiguousarray(c[:, :h]) if np.array_equal(c[:, :h], c[:, h:]) else None


def _shape_source(m, x, batch, seq) -> tuple:
    """(value, batch axis, sequence axis) to read the position ids' sizes from: a graph input whose dims name the
    same batch and sequence symbols as x's (every rotary embedding then builds the same position ids, which CSE
    merges: a Llama-style export computed them 8 times a call, 2% of its time), else x itself (axes 0, 2)."""
    if isinstance(batch, str) and isinstance(seq, str) and m.graph is not None:
        for v in m.graph.inputs:
            dims = list(v.shape or ())
            if v.const is None and batch in dims and seq in dims:
                return v, dims.index(batch), dims.index(seq)
    return x, 0, 2


def _row_crop(m, v, s) -> np.ndarray | None:
    """The constant table T ([.., rows, H]) when `v` is its first `s` rows (`origin_crop` along the rows axis only,
    `v`'s rows dim the same as x's sequence `s`, or min(s, rows), which broadcasts against x only where it is `s`),
    else None."""
    shape = full_shape(v)
    fits = shape is not None and len(shape) >= 2 and (shape[-2] == s or (is_crop_of(shape[-2], s)
                                                                          and crops_trusted(m.graph)))
    return origin_crop(m, v, len(shape) - 2) if fits else None


class FuseRotaryEmbedding(Rule):
    """x * cos + rotate_half(x) * sin on [B, N, S, H] heads -> RotaryEmbedding (opset 23; see the module
    docstring)."""

    min_opset: ClassVar[int | None] = 23
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, x, cos, sin):
        by_slices = op.Concat(op.Neg(op.Slice(x, ANY, ANY, _allow_other_inputs=True, _name="hi")),
                              op.Slice(x, ANY, ANY, _allow_other_inputs=True, _name="lo"), _name="cat")
        lo, hi = op.Split(x, _outputs=2, _allow_other_inputs=True, _name="split")
        by_split = op.Concat(op.Neg(hi), lo, _name="cat")
        return op.Add(op.Mul(x, cos), op.Mul(Or(by_slices, by_split), sin))

    def check(self, m, x, cos, sin):
        shape = full_shape(x)
        require(shape is not None and len(shape) == 4 and isinstance(shape[3], int) and shape[3] % 2 == 0,
                "x is not [B, N, S, H] with an even H known")
        require(is_float(x) and x.dtype == cos.dtype == sin.dtype, "x, cos and sin are not one float type")
        rank, s, size = 4, shape[2], shape[3]
        h = size // 2
        require(_last_axis([m["cat"].attr("axis")], rank), "the Concat is not over the last axis")
        if m.get("split") is not None:
            require(_halves_of_split(m, m["split"], rank, h), "the Split does not cut the last axis in halves")
        else:
            require(_slice_range(m, m["hi"], rank, size) == (h, size) and _slice_range(m, m["lo"], rank, size)
                    == (0, h), "the Slices are not the two halves of the last axis")
        if m.const(cos) is not None and m.const(sin) is not None:
            require(isinstance(s, int), "cos / sin are constants but S is not known")
            caches = [_cache(np.asarray(m.const(c)), s, h) for c in (cos, sin)]
            cropped = False
        else:  # a dynamic sequence: the first S rows of constant tables, cropped at run time (`self.cos[:t]`)
            tables = [_row_crop(m, c, s) for c in (cos, sin)]
            require(all(t is not None for t in tables), "cos / sin are neither constants nor the first S rows of "
                    "constant tables")
            caches = [_cache(t, t.shape[-2], h) for t in tables]
            cropped = True
        require(all(c is not None for c in caches), "cos / sin are not [S, H] tables repeating their first half")
        m.info = {"caches": caches, "batch": shape[0], "S": s, "cropped": cropped}
        return True

    def rewrite(self, op, m, x, cos, sin):
        cos_cache, sin_cache, positions = self._inputs(op, m, x)
        return op.RotaryEmbedding(x, cos_cache, sin_cache, positions, interleaved=0)

    @staticmethod
    def _inputs(op, m, x):
        """The caches (constants [S, h], or [rows, h] of tables cropped at run time) and the position ids ([B, S]
        int64: 0 .. S-1 in every row; for a cropped table S read from x's shape)."""
        cos_cache, sin_cache = m.info["caches"]
        b, s = m.info["batch"], m.info["S"]
        if m.info["cropped"]:
            i64 = lambda v: np.array(v, np.int64)  # noqa: E731
            src, b_axis, s_axis = _shape_source(m, x, b, s)
            dims = op.Shape(src)
            seq = op.Slice(dims, i64([s_axis]), i64([s_axis + 1]))
            positions = op.Expand(op.Unsqueeze(op.Range(i64(0), op.Squeeze(seq, i64([0])), i64(1)), i64([0])),
                                  op.Concat(op.Slice(dims, i64([b_axis]), i64([b_axis + 1])), seq, axis=0))
        elif isinstance(b, int):
            positions = op.const(np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy(), hint="position_ids")
        else:  # one row of positions per batch row, the batch from x's shape
            batch = op.Slice(op.Shape(x), np.array([0], np.int64), np.array([1], np.int64))
            positions = op.Expand(np.arange(s, dtype=np.int64)[None],
                                  op.Concat(batch, np.array([s], np.int64), axis=0))
        return op.const(cos_cache, hint="cos_cache"), op.const(sin_cache, hint="sin_cache"), positions


class FuseRotaryEmbeddingContrib(FuseRotaryEmbedding):
    """The same block -> com.microsoft RotaryEmbedding (float32 / float16, which onnxruntime's CPU kernel takes),
    where the model's opset is below 23 (the transformer pass raises it to 23, and the standard op is made, when
    that is safe)."""

    min_opset: ClassVar[int | None] = None
    max_opset: ClassVar[int | None] = 22

    def check(self, m, x, cos, sin):
        require(x.dtype is not None and DataType(x.dtype) in (DataType.FLOAT, DataType.FLOAT16),
                "not float32 / float16")
        return super().check(m, x, cos, sin)

    def rewrite(self, op, m, x, cos, sin):
        cos_cache, sin_cache, positions = self._inputs(op, m, x)
        y = op.RotaryEmbedding(x, positions, cos_cache, sin_cache, _domain=MS, interleaved=0)
        y.type = TensorType(x.dtype, full_shape(x))  # ONNX's inference does not know contrib ops
        return y
