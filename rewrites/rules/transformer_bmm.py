"""Attention on 3-D heads, as torch's nn.MultiheadAttention computes it with `need_weights=True` (its default when
called directly): the heads of a sequence-first [S, B, E] input batched as B*N matrices (`bmm`)::

    q = Transpose(Reshape(q_in, [S, B*N, H]), perm=[1, 0, 2])          q_in: [S, B, N*H]; q: [B*N, S, H]
    k = Transpose(Reshape(k_in, [T, B*N, H]), perm=[1, 2, 0])          k: [B*N, H, T]
    v = Transpose(Reshape(v_in, [T, B*N, Hv]), perm=[1, 0, 2])         v: [B*N, T, Hv]
    y = Transpose(MatMul(Softmax(MatMul(q | Mul(q, c), k) [+ mask]), v), perm=[1, 0, 2])    y: [S, B*N, Hv]

`LiftBatchedHeads` writes the same computation on 4-D heads [B, N, ., .] (Reshape [S, B, N, H] and Transpose
[1, 2, 0, 3], the layout FuseAttention takes sequence-first; the result Transposed [2, 0, 1, 3] and Reshaped back to
[S, B*N, Hv]), so that the attention rules fuse it. Exact: every product, sum and softmax row is the same, only the
batch axes are split (row b*N + n of the 3-D batch is [b, n] of the 4-D one). The mask, when there is one, is an
additive float mask of rank <= 2, [1, S, T], or [B*N, S, T] (Reshaped to [B, N, S, T]). Static head splits only.
Any factorization B x N of B*N computes the same; N is read from the merged output's width (or Q's input) so that
the attention rules see the model's heads.
"""

from __future__ import annotations

import numpy as np

from ..pattern import Or, require
from ..rule import Rule
from ._util import is_float, static_shape
from .transformer_attention import unscaled


def _heads3(op, x, shape, perm):
    return op.Transpose(op.Reshape(x, shape, _allow_other_inputs=True), perm=perm)


def _split_shape(read) -> tuple[int, ...] | None:
    """The static output shape of the head split's Reshape behind `read` (what a MatMul reads: the split's
    Transpose, or a Mul of it and a constant in either order): found from the MatMuls, as q, k and v may be split
    from one tensor."""
    return static_shape(unscaled(read).inputs[0])


class LiftBatchedHeads(Rule):
    """3-D `bmm` attention heads of a sequence-first input -> the same attention on 4-D heads (see the module
    docstring)."""

    def pattern(self, op, q_in, k_in, v_in, qs, ks, vs, c, mask):
        q = _heads3(op, q_in, qs, [1, 0, 2])
        s = op.MatMul(Or(q, op.Mul(q, c.const(scalar=True), _name="qscale")), _heads3(op, k_in, ks, [1, 2, 0]),
                      _name="scores")
        p = op.Softmax(Or(op.Add(s, mask, _name="add_mask"), s), _name="softmax")
        o = op.MatMul(p, _heads3(op, v_in, vs, [1, 0, 2]))
        return op.Transpose(o, perm=[1, 0, 2])

    def check(self, m, q_in, k_in, v_in, qs, ks, vs, c, mask):
        scores, pv = m["scores"], m.root.inputs[0].producer
        split = [_split_shape(read) for read in (scores.inputs[0], scores.inputs[1], pv.inputs[1])]
        require(all(sp is not None and len(sp) == 3 and 0 not in sp for sp in split),
                "a head split is not a static 3-D Reshape")
        (sq, bn, h), (t, bnk, hk), (tv, bnv, hv) = split
        require(bn == bnk == bnv and t == tv and h == hk, "the head splits disagree on B*N, T or H")
        require(all(is_float(x) and x.dtype == q_in.dtype for x in (q_in, k_in, v_in)), "not one float type")
        default_axis = -1 if (m.opset("") or 13) >= 13 else 1
        require(int(m["softmax"].attr("axis", default_axis)) in (-1, 2), "Softmax is not over the last axis")
        if mask is not None:
            ms = static_shape(mask)
            require(is_float(mask) and mask.dtype == q_in.dtype and ms is not None and (
                len(ms) <= 2 or ms == (1, sq, t) or ms == (bn, sq, t)),
                "the mask is not float [.., T], [1, S, T] or [B*N, S, T] (static)")
            require(len(ms) != 2 or (ms[0] in (1, sq) and ms[1] in (1, t)), "the mask broadcasts the scores")
            require(len(ms) != 1 or ms[0] in (1, t), "the mask broadcasts the scores")
        # any B x N = B*N computes the same (a re-batching); the heads' count N is read from the merged output's
        # width (the Reshape after the root, [.., N*Hv]) or Q's input ([S, B, N*H]), so that the attention rules
        # then see the model's own heads
        n = self._heads(m, hv) or self._heads_of_input(q_in, h)
        require(n is not None and bn % n == 0, "the head count is known neither from the output nor from Q's input")
        m.info = (bn // n, n, h, hv, sq, t)
        return True

    @staticmethod
    def _heads(m, hv: int) -> int | None:
        """N from the one Reshape reading the root's [S, B*N, Hv]: its static output's last dim, N*Hv."""
        out = m.outputs[0]
        if out.num_uses != 1 or out.uses()[0].node.op_type != "Reshape":
            return None
        shape = static_shape(out.uses()[0].node.outputs[0])
        return shape[-1] // hv if shape and shape[-1] % hv == 0 and shape[-1] >= hv else None

    @staticmethod
    def _heads_of_input(x, h: int) -> int | None:
        """N from Q's input [S, B, N*H], when its shape is static."""
        shape = static_shape(x)
        return shape[-1] // h if shape and len(shape) == 3 and shape[-1] % h == 0 and shape[-1] >= h else None

    def rewrite(self, op, m, q_in, k_in, v_in, qs, ks, vs, c, mask):
        b, n, h, hv, s, t = m.info

        def heads(x, length, size, perm):
            return op.Transpose(op.Reshape(x, op.const(np.array([length, b, n, size], np.int64), hint="shape")),
                                perm=perm)

        q = heads(q_in, s, h, [1, 2, 0, 3])
        if m.get("qscale") is not None:
            q = op.Mul(q, c)
        scores = op.MatMul(q, heads(k_in, t, h, [1, 2, 3, 0]))
        if mask is not None:
            ms = static_shape(mask)
            if len(ms) == 3:
                target = [s, t] if ms[0] == 1 else [b, n, s, t]
                mask = op.Reshape(mask, op.const(np.array(target, np.int64), hint="shape"))
            scores = op.Add(scores, mask)
        o = op.MatMul(op.Softmax(scores, axis=-1), heads(v_in, t, hv, [1, 2, 0, 3]))
        merged = op.Transpose(o, perm=[2, 0, 1, 3])
        return op.Reshape(merged, op.const(np.array([s, b * n, hv], np.int64), hint="shape"))
