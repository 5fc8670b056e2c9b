"""`sink-row-gathers`: a Gather of rows moved above the ops that compute each gathered slice from the
same slice of their inputs, so that only the gathered rows are computed.

A classifier that reads one token of a transformer's output (a ViT's class token, `enc(x)[:, 0]`) makes the last
block's feed-forward network, output projection and attention for every token and keeps one row; a GPT-2-like
model that reads each sequence's last token (`x[arange(b), mask.sum(-1) - 1]`, a Gather of computed indices) does
the same. With the Gather moved up:

    Gather(Add(x, MatMul(Gelu(MatMul(LayerNorm(x), W1) + b1), W2) + b2), [0], axis=1)
    -> Add(Gather(x), MatMul(Gelu(MatMul(LayerNorm(Gather(x)), W1) + b1), W2) + b2)

and through the attention to its queries (`Attention(Gather(q), k, v)`: each query row's output reads its own
row of q and of the mask, and every key and value): the last block computes one row where it computed 197.

Exact: each op the Gather moves over computes an output element from the inputs' elements at the same index on
the gathered axis (elementwise and broadcasting ops; LayerNormalization / RMSNormalization / Softmax over other
axes; MatMul and Gemm rows; Transpose, whose axis it follows; a Reshape / Flatten / Squeeze / Unsqueeze that only
inserts or removes axes of size 1; Attention's query rows without a causal mask, whose positions would move), so the gathered output is the same
function of the gathered inputs. An input that broadcasts along the axis (size 1 there, or lacking it) is taken
whole. Gather's own semantics come along: the index is the same tensor (a constant or computed, of rank 1), every
gathered input has the output's length on the axis, so a negative index picks the same row and one out of range
still fails the run. A kernel may add the products of a row in another order
at another row count (onnxruntime's and optc's GEMMs split their work by shape), which ONNX's MatMul leaves open.

Only where the op's output has no other use (the rule's match: nothing is computed twice); a Gather of an input
that another moved Gather already made is reused, so two paths that meet (a residual and the block beside it) make
one. A scalar index (which drops the axis) first becomes a one-element index and a Squeeze.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.core import Node, Value
from ...ir.types import DataType
from ..pattern import Or, require
from ..rule import Rule
from ._util import transpose_perm

# ops whose output element reads the inputs' elements at its own index, numpy-broadcast
_ELEMENTWISE = ("Relu", "LeakyRelu", "PRelu", "Gelu", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Neg",
                "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Cast", "Softplus", "Softsign", "Elu", "Selu", "Celu",
                "Mish", "ThresholdedRelu", "Clip", "Identity", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
                "Not", "IsNaN", "IsInf", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Equal", "Less",
                "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Where")
_ROWWISE = ("LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax", "Hardmax")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_SINKABLE = _ELEMENTWISE + _ROWWISE + _RESHAPES + ("MatMul", "Gemm", "Transpose", "Attention")


def _dims(v: Value | None) -> tuple | None:
    """v's dims (ints, symbols, None for unknown; a constant's from its data), or None for an unknown rank."""
    if v is None:
        return None
    if v.shape is None and v.const is not None:
        return tuple(int(d) for d in v.const.shape)
    return None if v.shape is None else tuple(v.shape)


def _rank(v: Value | None) -> int | None:
    dims = _dims(v)
    return None if dims is None else len(dims)


def _length_one(d) -> bool:
    return isinstance(d, int) and d == 1


def _broadcast_plan(node: Node, axis: int, rank: int, inputs: range) -> list | None:
    """[(input index, its axis)] to gather for a numpy-broadcasting op's `inputs`; None when an input's dim there
    is neither 1 nor provably the output's (unknown, or another symbol)."""
    out = _dims(node.outputs[0])
    plan = []
    for i in inputs:
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None:
            continue
        dims = _dims(v)
        if dims is None:
            return None
        a = axis - (rank - len(dims))
        if a < 0 or _length_one(dims[a]):
            continue  # broadcast along the axis: taken whole
        if dims[a] is None or dims[a] != out[axis]:
            return None
        plan.append((i, a))
    return plan


def plan(node: Node, axis: int, opset: int) -> list | None:
    """How a Gather on `axis` of node's first output moves above `node`: [(input index, axis)] of the inputs to
    gather (the others taken whole; for the reshapes also ("target", the output shape): they become a Reshape to
    it with the gathered length), or None where it cannot."""
    rank = _rank(node.outputs[0])
    if node.domain not in ("", "ai.onnx") or rank is None or not 0 <= axis < rank:
        return None
    out = _dims(node.outputs[0])
    if out is None or _length_one(out[axis]) or out[axis] is None:
        return None
    op = node.op_type
    if op in _ELEMENTWISE:
        if opset < 7 and node.attr("broadcast", 0):  # opset 6's broadcast aligns B at `axis`, not on the right
            return None
        return _broadcast_plan(node, axis, rank, range(len(node.inputs)))
    if op in ("LayerNormalization", "RMSNormalization"):
        if axis >= node.attr("axis", -1) % rank:
            return None
        # Scale and B broadcast against X (unidirectionally): one that varies along the axis is gathered too
        rest = _broadcast_plan(node, axis, rank, range(1, len(node.inputs)))
        return None if rest is None else [(0, axis), *rest]
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        first = node.attr("axis", -1 if opset >= 13 else 1) % rank
        return [(0, axis)] if (axis != first if opset >= 13 else axis < first) else None
    if op == "MatMul":
        ra, rb = _rank(node.inputs[0]), _rank(node.inputs[1])
        if ra is None or rb is None or ra < 2 or rb < 2:
            return None
        if axis == rank - 2:
            return [(0, ra - 2)]
        if axis < rank - 2:  # a batch axis: both operands broadcast there
            return _broadcast_plan(node, axis, rank, range(2))
        return None
    if op == "Gemm":
        if axis != 0 or node.attr("transA", 0):
            return None
        c = node.inputs[2] if len(node.inputs) > 2 else None
        dc = _dims(c) if c is not None else ()
        if dc is None:
            return None
        if len(dc) == 2 and not _length_one(dc[0]):
            if dc[0] != out[0]:
                return None
            return [(0, 0), (2, 0)]
        return [(0, 0)]
    if op == "Transpose":
        perm = transpose_perm(node, rank)
        return None if perm is None else [(0, perm[axis])]
    if op in _RESHAPES:
        return _reshape_plan(node, axis)
    if op == "Attention":
        return _attention_plan(node, axis, rank)
    return None


def _reshape_plan(node: Node, axis: int) -> list | None:
    """A Reshape / Flatten / Squeeze / Unsqueeze that only inserts or removes axes of size 1 (static shapes): the
    input axis that carries `axis`."""
    x, y = _dims(node.inputs[0]), _dims(node.outputs[0])
    if x is None or y is None or not all(isinstance(d, int) and d > 0 for d in x + y):
        return None
    xs, ys = [i for i, d in enumerate(x) if d != 1], [i for i, d in enumerate(y) if d != 1]
    if [x[i] for i in xs] != [y[i] for i in ys] or axis not in ys:
        return None
    return [(0, xs[ys.index(axis)]), ("target", list(y))]


def _attention_plan(node: Node, axis: int, rank: int) -> list | None:
    """The standard Attention (opset 23) on query rows: 3-D [B, S, D] (axis 1) or 4-D [B, N, S, H] (axis 2) Q,
    no causal mask (it reads the query's position), no past key / value, the mask's query axis gathered."""
    if node.attr("is_causal", 0) or axis != rank - 2 or _rank(node.inputs[0]) != rank:
        return None
    if any(v is not None for v in node.inputs[4:]):
        return None
    out = [(0, rank - 2)]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None:
        dm = _dims(mask)
        if dm is None:
            return None
        if len(dm) >= 2 and not _length_one(dm[-2]):
            if dm[-2] != _dims(node.outputs[0])[axis]:
                return None
            out.append((3, len(dm) - 2))
    return out


def _gather_axis(g: Node) -> int | None:
    """The axis of Gather `g` as a non-negative int, or None when its input's rank is unknown."""
    rank = _rank(g.inputs[0])
    return None if rank is None else g.attr("axis", 0) % rank


def _same_index(m, a: Value, b: Value) -> bool:
    """Two Gather indices that pick the same rows: the same value, or equal constants."""
    if a is b:
        return True
    x, y = m.const(a), m.const(b)
    return x is not None and y is not None and x.shape == y.shape and bool(np.array_equal(x, y))


def _index_ok(m, idx: Value) -> bool:
    """A rank-1 integer index: a constant, or computed with a known rank."""
    arr = m.const(idx)
    if arr is not None:
        return arr.ndim == 1 and arr.dtype.kind in "iu"
    return _rank(idx) == 1 and getattr(idx.type, "dtype", None) in (DataType.INT64, DataType.INT32)


def _gathered(op, m, v: Value, axis: int, idx: Value, before: Node) -> Value:
    """Gather(v, idx, axis): an equal Gather of v that precedes `before` in the graph if there is one, else new."""
    order = None
    for use in v.uses():
        n = use.node
        if n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or use.index != 0 or n.outputs[0] is None:
            continue
        if len(n.inputs) < 2 or _gather_axis(n) != axis or not _same_index(m, n.inputs[1], idx):
            continue
        order = order or {node: i for i, node in enumerate(m.graph)}
        if order.get(n, len(order)) < order.get(before, -1):
            return n.outputs[0]
    return op.Gather(v, idx, axis=axis)


class RowGatherOfScalarIndex(Rule):
    """Gather(y, c, axis) with a scalar c, y made by an op a Gather moves above -> Squeeze(Gather(y, [c], axis)):
    the same values (a one-element index keeps the axis, the Squeeze drops it), in the form SinkRowGather takes."""

    def pattern(self, op, idx):
        return op.Gather(Or(*(getattr(op, t)(_name="p", _allow_other_inputs=True) for t in _SINKABLE)),
                         idx.const(), _name="g")

    def check(self, m, idx):
        arr = m.const(idx)
        require(arr is not None and arr.ndim == 0 and arr.dtype.kind in "iu", "the index is not a constant scalar")
        axis = _gather_axis(m["g"])
        require(axis is not None, "the gathered value's rank is unknown")
        require(m["g"].inputs[0].num_uses == 1, "the gathered value has other uses")
        return require(plan(m["p"], axis, m.opset("") or 0) is not None, "the op cannot compute the gathered rows "
                                                                          "alone")

    def rewrite(self, op, m, idx):
        axis = _gather_axis(m["g"])
        g = op.Gather(m["g"].inputs[0], np.asarray(m.const(idx)).reshape(1), axis=axis)
        opset = m.opset("") or 0
        return op.Squeeze(g, np.array([axis], np.int64)) if opset >= 13 else op.Squeeze(g, axes=[axis])


class SinkRowGather(Rule):
    """Gather(op(x, ...), idx, axis) with 1-D indices -> op(Gather(x, idx, axis'), ...) for an op that computes each
    slice on the axis from the same slice of its inputs (module docstring: which ops, and why exact)."""

    rounding: ClassVar[str] = ("a MatMul / Gemm on fewer rows may add a row's products in another order, as kernels "
                               "split their work by shape (ONNX leaves the order open)")

    def pattern(self, op, idx):
        return op.Gather(Or(*(getattr(op, t)(_name="p", _allow_other_inputs=True) for t in _SINKABLE)), idx,
                         _name="g")

    def check(self, m, idx):
        require(_index_ok(m, idx), "the index is not a 1-D integer tensor")
        require(m["g"].inputs[0] is m["p"].outputs[0], "the Gather reads another output of the op")
        axis = _gather_axis(m["g"])
        require(axis is not None, "the gathered value's rank is unknown")
        steps = plan(m["p"], axis, m.opset("") or 0)
        require(steps is not None, "the op cannot compute the gathered rows alone")
        n = _dims(idx)[0]
        # a reshape's new target needs the length; 0 there would copy a dim (Reshape's allowzero=0)
        return require(not any(i == "target" for i, _ in steps) or isinstance(n, int) and n > 0,
                       "the index's length is not static and > 0 (a reshape's target needs it)")

    def rewrite(self, op, m, idx):
        p, g = m["p"], m["g"]
        axis = _gather_axis(g)
        inputs = list(p.inputs)
        target = None
        for i, a in plan(p, axis, m.opset("") or 0):
            if i == "target":
                target = list(a)
                target[axis] = int(_dims(idx)[0])
                continue
            inputs[i] = _gathered(op, m, inputs[i], a, idx, g)
        if target is not None:  # a reshape of the gathered rows, whichever op it was
            return op.Reshape(inputs[0], op.const(np.array(target, np.int64), hint="shape"))
        attrs = dict(p.attributes.items())
        return getattr(op, p.op_type)(*inputs, _domain=p.domain, **attrs)


RULES: list[type[Rule]] = [RowGatherOfScalarIndex, SinkRowGather]

__all__ = ["RULES"]
