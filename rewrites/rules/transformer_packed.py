"""Packed-QKV attention for onnxruntime: a MultiHeadAttention whose query, key and value are linear projections of
one [B, S, E] input -> com.microsoft Attention(input, packed weights, packed bias, attention_bias).

After `FuseMultiHeadAttention` the projections are still in the graph, with the data movement that the exporter
wrote between them and the attention::

    G = Gemm(A, W, b) | Add(MatMul(A, W), b) | MatMul(A, W)       W, b constants; A = moves(X), X: [B, S, E]
    q3 = moves_q(G_q), k3 = moves_k(G_k), v3 = moves_v(G_v)       G_q, G_k, G_v: one G (torch's nn.MultiheadAttention:
                                                                  in_proj, then Reshape / Unsqueeze / Transpose /
                                                                  Squeeze / Gather) or three (BERT's q, k, v Linear)
    y = MultiHeadAttention(q3, k3, v3, attention_bias)

(`ShapeOfProjection` and `ShapeOfSplit` first take the projections and their Split out of the attention bias's
shape where it read q's and k's),
where "moves" are ops that only move, copy or drop elements (Reshape, Transpose, Squeeze, Unsqueeze, Gather,
Split, Slice, Flatten, Identity, their other inputs constants). Which element of G each element of q3 is, is
worked out by running the moves on a tensor of element indices (the same evaluator as constant folding): q3 is
exactly the columns `cols_q` of G at the row of its (b, s), and that row is the projection of X[b, s] (the moves
from X to A run the same way), for q, k and v alike. Then q3 = X @ W[:, cols_q] + b[cols_q], and the block is

    Attention(X, concat(W_q[:, cols_q], W_k[:, cols_k], W_v[:, cols_v]), concat(b_q[cols_q], ...), attention_bias)

with the MultiHeadAttention's heads and scale (qkv_hidden_sizes where V's width differs). onnxruntime's Attention
computes the three projections as one GEMM and the attention in one kernel: the projection's output, its copies
through the moves and MultiHeadAttention's own input handling are gone. Without moves (q3 is G itself) the shapes
may be symbolic; with moves they must be static (the indices are computed), or symbolic in the batch and the
sequence only where every move carries their axes through as axes of their own (`symbols_transparent`: dynamic-axes
exports of torch's nn.MultiheadAttention and of GPT-2's packed c_attn): the moves are then the same at every
length, and are traced at small lengths (`_TRACE_LENGTHS`), a Reshape whose target is computed taking its output
type. The projections and moves must feed nothing else (else they would run twice), and float32 only
(onnxruntime's CPU Attention).

Rounding: not bit-exact: onnxruntime's Attention adds the bias and sums the projection's products in its own order.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.core import Node, Value
from ...ir.types import DataType, TensorType
from ..passes.fold_constants import evaluate_node
from ..pattern import require
from ..rule import Rule
from ._util import full_shape, minus_one_target, normalize_axes
from .transformer_attention import ROUNDING
from .transformer_norm import MS

#: ops that only move, copy or drop elements of their first input (the others constants)
MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Split", "Slice", "Flatten",
                   "Identity"})
#: the most elements whose indices are traced through the moves (a projection output of 16M floats)
MAX_TRACE = 1 << 24
#: the lengths symbolic batch and sequence dims are traced at (`symbols_transparent` moves): above 1 and
#: different, so that each axis shows
_TRACE_LENGTHS = (2, 3)
#: MultiHeadAttention attributes that Attention takes as they are
_ATTRS = ("num_heads", "scale", "mask_filter_value")

Chain = list[tuple[Node, int]]


def moves_back(m, v: Value, computed_shapes: bool = False) -> tuple[Value, Chain]:
    """(source, chain): from `v` back through MOVES nodes (their data input first, every other input a constant;
    with `computed_shapes`, also a Reshape whose target is computed and whose output type is fully known) to the
    first value that is not made by one; `chain` lists (node, index of the output taken) from the source on."""
    chain: Chain = []
    while True:
        node = v.producer
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in MOVES or not node.inputs \
                or node.inputs[0] is None or any(x is not None and m.const(x) is None for x in node.inputs[1:]) and \
                not (computed_shapes and node.op_type == "Reshape" and full_shape(v) is not None):
            break
        chain.append((node, next(i for i, o in enumerate(node.outputs) if o is v)))
        v = node.inputs[0]
    chain.reverse()
    return v, chain


def run_moves(m, chain: Chain, data: np.ndarray, lengths: dict[str, int] | None = None) -> np.ndarray:
    """`data` through the chain's nodes (onnx semantics: `fold_constants.evaluate_node`). `lengths` (symbol ->
    length): a Reshape whose target is computed takes its output type, its symbols at those lengths."""
    for node, index in chain:
        args = [None if x is None else m.const(x) for x in node.inputs[1:]]
        if node.op_type == "Reshape" and args[0] is None:
            require(lengths is not None, "a Reshape's target is computed")
            args = [np.array(_at(full_shape(node.outputs[0]), lengths), np.int64)]
        outs = evaluate_node(node, [data, *args], m.opsets)
        require(outs is not None, f"{node.op_type} cannot be traced")
        data = np.asarray(outs[index])
    return data


def _at(shape: tuple, lengths: dict[str, int]) -> tuple[int, ...]:
    """`shape` with its symbols at their `lengths` (its other dims are ints: `symbols_transparent`)."""
    return tuple(lengths[d] if isinstance(d, str) else int(d) for d in shape)


def _symbol_axes(shape: tuple | None, symbols) -> dict[str, int] | None:
    """symbol -> its axis in `shape`, where each of `symbols` is one dim of it and its other dims are ints (else
    None)."""
    if shape is None:
        return None
    odd = {d: i for i, d in enumerate(shape) if not isinstance(d, int)}
    if sorted(odd) != sorted(symbols) or len(odd) != sum(1 for d in shape if not isinstance(d, int)):
        return None
    return odd


def symbols_transparent(m, chain: Chain, symbols) -> bool:
    """Each node of `chain` carries the axes of lengths `symbols` (a symbolic batch and sequence) through as axes
    of their own, index for index, so its moves are the same for every length of them: input and output have each
    symbol as one dim, their other dims ints; a Reshape / Flatten keeps the symbols in order and the products of
    the dims between them (row-major: the same mixed-radix digits, the symbols' axes untouched); Gather, Split and
    Slice act on other axes (a Slice over one could keep its length and reverse it). Transpose, Squeeze, Unsqueeze
    and Identity only move them. Tracing the moves at one length of each then gives them at every length."""
    for node, index in chain:
        x, y = full_shape(node.inputs[0]), full_shape(node.outputs[index])
        xa, ya = _symbol_axes(x, symbols), _symbol_axes(y, symbols)
        if xa is None or ya is None:
            return False
        if node.op_type in ("Reshape", "Flatten"):
            xs, ys = sorted(xa.values()), sorted(ya.values())
            if [x[i] for i in xs] != [y[j] for j in ys]:
                return False
            cuts = list(zip([-1, *xs], [*xs, len(x)], [-1, *ys], [*ys, len(y)], strict=True))
            if any(int(np.prod(x[a + 1:b])) != int(np.prod(y[c + 1:d])) for a, b, c, d in cuts):
                return False
        elif node.op_type in ("Gather", "Split"):
            axis = normalize_axes([node.attr("axis", 0)], len(x))
            if axis is None or axis[0] in xa.values():
                return False
        elif node.op_type == "Slice":
            axes = m.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
            axes = normalize_axes(np.arange(np.asarray(m.const(node.inputs[1])).size) if axes is None else axes,
                                  len(x))
            if axes is None or set(axes) & set(xa.values()):
                return False
    return True


def projection(m, g: Value) -> tuple[Value, np.ndarray, np.ndarray, list[Node]]:
    """(A, W [K, C], bias [C], nodes) of g = A @ W + bias: Gemm (alpha = beta = 1, no transA), Add(MatMul(A, W),
    bias) or MatMul(A, W), W and bias float32 constants; rejects anything else."""
    node = g.producer
    require(node is not None and node.domain in ("", "ai.onnx"), "the attention's input is not a projection")
    nodes = [node]
    if node.op_type == "Gemm":
        require(float(node.attr("alpha", 1.0)) == 1.0 and float(node.attr("beta", 1.0)) == 1.0
                and not node.attr("transA", 0), "a Gemm with alpha, beta or transA")
        a, w = node.inputs[0], m.const(node.inputs[1])
        require(w is not None and w.ndim == 2, "the Gemm's weight is not a 2-D constant")
        w = w.T if node.attr("transB", 0) else w
        c = m.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1, w.dtype)
    else:
        c = np.zeros(1, np.float32)
        if node.op_type == "Add":
            mm = next((x.producer for x in node.inputs if x is not None and x.producer is not None
                       and x.producer.op_type == "MatMul" and m.const(x) is None), None)
            require(mm is not None, "the attention's input is not a MatMul + bias")
            other = node.inputs[1] if node.inputs[0] is mm.outputs[0] else node.inputs[0]
            c = m.const(other)
            require(c is not None, "the bias is not a constant")
            nodes.append(mm)
            node = mm
        require(node.op_type == "MatMul", "the attention's input is not a projection")
        a, w = node.inputs[0], m.const(node.inputs[1])
        require(w is not None and w.ndim == 2, "the MatMul's weight is not a 2-D constant")
    require(w.dtype == np.float32 and c is not None and c.dtype == np.float32, "not float32")
    require(c.size in (1, w.shape[1]) and c.ndim <= 2 and all(d == 1 for d in c.shape[:-1]),
            "the bias is not one value per output column")
    return a, w, np.broadcast_to(c.reshape(-1), (w.shape[1],)).astype(np.float32), nodes


def _index_map(m, chain: Chain, shape: tuple, lengths: dict[str, int] | None = None) -> np.ndarray:
    """Element indices of a tensor of `shape` (static) after the chain's moves (`lengths`: see `run_moves`)."""
    size = int(np.prod(shape))
    require(size <= MAX_TRACE, "too many elements to trace")
    return run_moves(m, chain, np.arange(size, dtype=np.int64).reshape(shape), lengths)


def columns(m, chain: Chain, g_shape: tuple, out_shape: tuple,
            lengths: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows [B, S], cols [D]) such that element [b, s, d] of the chain's output is G's [rows[b, s], cols[d]]
    (G's rows: its leading dims flattened); rejects any other mapping. Shapes static (`lengths`: see
    `run_moves`)."""
    c = g_shape[-1]
    idx = _index_map(m, chain, g_shape, lengths)
    require(idx.shape == tuple(out_shape), "the moves do not give the attention input's shape")
    rows, cols = idx // c, idx % c
    require(bool(np.all(rows == rows[..., :1])) and bool(np.all(cols == cols[:1, :1, :])),
            "the moves mix rows and columns of the projection")
    return rows[..., 0], cols[0, 0]


def _source(m, a: Value, b: int, s: int, lengths: dict[str, int] | None = None,
            dims: tuple | None = None) -> tuple[Value, np.ndarray] | None:
    """(X, rows): a [B, S, E] value X whose moves make A (static shapes, or with `lengths`' symbols at those
    lengths, the moves `symbols_transparent`), with rows[r] = the (b * S + s) of A's row r; the farthest such X
    back first (its moves then go with the projection), or None. `dims`: the symbolic (B, S): an X not [B, S, E]
    itself is taken only where a constant target Reshapes it to that (`minus_one_target`: one symbol)."""
    src, chain = moves_back(m, a, computed_shapes=lengths is not None)
    a_shape = full_shape(a)
    if a_shape is None:
        return None
    for i in range(len(chain) + 1):
        x = src if i == 0 else chain[i - 1][0].outputs[chain[i - 1][1]]
        shape = full_shape(x)
        if lengths is not None and _symbol_axes(shape, lengths) is not None \
                and symbols_transparent(m, chain[i:], lengths):
            shape = _at(shape, lengths)
        if shape is None or not all(isinstance(d, int) for d in shape) or len(shape) < 2 \
                or int(np.prod(shape[:-1])) != b * s or shape[-1] != a_shape[-1]:
            continue
        if dims is not None and full_shape(x) != (*dims, shape[-1]) and minus_one_target((*dims, shape[-1])) is None:
            continue  # (the rewrite could not Reshape it to [B, S, E])
        e = shape[-1]
        idx = _index_map(m, chain[i:], shape, lengths).reshape(-1, e)
        if np.array_equal(idx % e, np.broadcast_to(np.arange(e), idx.shape)) and np.all(idx // e == idx[:, :1] // e):
            return x, idx[:, 0] // e
    return None


class ShapeOfProjection(Rule):
    """Shape(G), G = a projection A @ W + bias (`projection`: Gemm, Add(MatMul(A, W), bias), MatMul(A, W); W a
    constant [K, C]), A of rank 2 or more -> Concat(Slice(Shape(A), [0], [-1]), [C]): the shape without reading
    the projection. Exact (a shape, no float). Made for the attention bias of a symbolic-shape attention, which
    reads S and T from q's and k's shapes: with the projections no longer read there, they can go into
    `FusePackedAttention`'s Attention."""

    def pattern(self, op, g):
        return op.Shape(g, _name="shape")

    def check(self, m, g):
        require(not m["shape"].attributes, "Shape with start or end")
        a, w, _, _ = projection(m, g)
        require(a.rank is not None and a.rank >= 2, "the projection's input is not of rank 2 or more")
        m.info = (a, w.shape[1])
        return True

    def rewrite(self, op, m, g):
        a, width = m.info
        lead = op.Slice(op.Shape(a), np.array([0], np.int64), np.array([-1], np.int64))
        return op.Concat(lead, np.array([width], np.int64), axis=0)


class ShapeOfSplit(Rule):
    """Shape(Split(x, axis)[i]) -> Concat(Slice(Shape(x), [0], [axis]), [d], Slice(Shape(x), [axis + 1], [r])),
    d the output's static dim along the axis: the shape without reading the Split's output. Exact (a shape, no
    float). Made for the attention bias of GPT-2's dynamic-axes export, which reads S and T from the shapes of q
    and k split from one packed projection (c_attn): with them no longer read there, the split goes into
    `FusePackedAttention`'s Attention (and `ShapeOfProjection` then takes Shape(x) off the projection)."""

    def pattern(self, op, y):
        return op.Shape(y, _name="shape")

    def check(self, m, y):
        require(not m["shape"].attributes, "Shape with start or end")
        node = y.producer
        require(node is not None and node.op_type == "Split" and node.domain in ("", "ai.onnx"), "not a Split's")
        shape = y.shape
        require(shape is not None, "the Split's output has no known rank")
        axis = normalize_axes([node.attr("axis", 0)], len(shape))
        require(axis is not None and isinstance(shape[axis[0]], int), "the split axis's length is not static")
        m.info = (node.inputs[0], axis[0], int(shape[axis[0]]), len(shape))
        return True

    def rewrite(self, op, m, y):
        x, axis, d, rank = m.info
        pieces = []
        if axis > 0:
            pieces.append(op.Slice(op.Shape(x), np.array([0], np.int64), np.array([axis], np.int64)))
        pieces.append(np.array([d], np.int64))
        if axis < rank - 1:
            pieces.append(op.Slice(op.Shape(x), np.array([axis + 1], np.int64), np.array([rank], np.int64)))
        return op.Concat(*pieces, axis=0) if len(pieces) > 1 else op.Identity(pieces[0])


class FusePackedAttention(Rule):
    """MultiHeadAttention(q3, k3, v3, attention_bias) over projections of one input -> com.microsoft Attention
    with the projections' weights packed (see the module docstring)."""

    domain: ClassVar[str] = MS
    rounding: ClassVar[str] = ROUNDING

    def pattern(self, op, q3, k3, v3):
        return op.MultiHeadAttention(q3, k3, v3, _domain=MS, _allow_other_inputs=True, _name="mha")

    def check(self, m, q3, k3, v3):
        mha = m["mha"]
        extra = list(mha.inputs[3:])
        require(all(x is None for x in extra[:2]) and all(x is None for x in extra[3:]),
                "MultiHeadAttention has a bias, key padding mask or past state")
        require(set(mha.attributes) <= set(_ATTRS), "MultiHeadAttention has attributes Attention does not take")
        require(all(x.dtype is not None and DataType(x.dtype) == DataType.FLOAT for x in (q3, k3, v3)), "not float32")
        shapes = [full_shape(x) for x in (q3, k3, v3)]
        require(all(sh is not None and len(sh) == 3 for sh in shapes), "Q, K, V are not [B, S, D]")
        require(shapes[0][:2] == shapes[1][:2] == shapes[2][:2], "not self-attention (Q, K, V of other lengths)")
        b, s = shapes[0][:2]
        # a symbolic batch and sequence (a dynamic-axes export's) with moves: traced at lengths of them where the
        # moves carry their axes through untouched (`symbols_transparent`), which makes them the same at every length
        named = [d for d in dict.fromkeys((b, s)) if isinstance(d, str)]
        lengths = dict(zip(named, _TRACE_LENGTHS[:len(named)], strict=True)) if named else None
        traced = [(x, *moves_back(m, x, computed_shapes=lengths is not None)) for x in (q3, k3, v3)]
        projections = [projection(m, g) for _, g, _ in traced]
        inner = {id(n) for p in projections for n in p[3]} | {id(n) for _, _, ch in traced for n, _ in ch}
        inner.add(id(mha))
        for p, (_, _, ch) in zip(projections, traced, strict=True):
            for n in [*p[3], *(node for node, _ in ch)]:
                for o in n.outputs:
                    require(o is None or (not any(o is go for go in m.graph.outputs)
                                          and all(id(u.node) in inner for u in o.uses())),
                            "the projection or its moves feed something else")
        weights, biases = [], []
        if all(not ch for _, _, ch in traced):  # q3, k3, v3 are the projections' outputs: any shapes
            x = projections[0][0]
            require(all(p[0] is x for p in projections), "the projections read different inputs")
            require(full_shape(x) is not None and full_shape(x)[:2] == (b, s), "the input is not [B, S, E]")
            for _, w, c, _ in projections:
                weights.append(w)
                biases.append(c)
        else:
            require(isinstance(b, int) and isinstance(s, int) or lengths is not None,
                    "symbolic shapes with moves: cannot be traced")
            if lengths is not None:
                require(all(symbols_transparent(m, ch, lengths) for _, _, ch in traced),
                        "the moves do not carry the symbolic batch and sequence through as axes of their own")
                b, s = _at((b, s), lengths)
            require(b * s > 0, "a zero-size batch or sequence: nothing to trace")
            x = None
            for (t, g, ch), (a, w, c, _) in zip(traced, projections, strict=True):
                g_shape = full_shape(g)
                if lengths is not None and _symbol_axes(g_shape, lengths) is not None:
                    g_shape = _at(g_shape, lengths)
                require(g_shape is not None and all(isinstance(d, int) and d > 0 for d in g_shape),
                        "the projection's shape is not static and nonzero")
                t_shape = _at(full_shape(t), lengths) if lengths is not None else full_shape(t)
                rows, cols = columns(m, ch, g_shape, t_shape, lengths)
                found = _source(m, a, b, s, lengths, shapes[0][:2] if lengths is not None else None)
                require(found is not None, "the projection's input is not the rows of one [B, S, E] tensor")
                src, a_rows = found
                require(x is None or src is x, "the projections read different inputs")
                x = src
                require(np.array_equal(a_rows[rows], np.arange(b * s).reshape(b, s)),
                        "the moves put the projection's rows in another order than the input's")
                weights.append(w[:, cols])
                biases.append(c[cols])
        widths = [w.shape[1] for w in weights]
        require(widths[0] == widths[1], "Q and K have different widths")
        m.info = {"x": x, "w": np.concatenate(weights, axis=1), "b": np.concatenate(biases), "widths": widths,
                  "shape": shapes[0][:2], "out": full_shape(mha.outputs[0])}
        return True

    def rewrite(self, op, m, q3, k3, v3):
        info, mha = m.info, m["mha"]
        x = info["x"]
        b, s = info["shape"]
        if full_shape(x) != (b, s, info["w"].shape[0]):
            x = op.Reshape(x, np.array(minus_one_target((b, s, info["w"].shape[0])), np.int64))
        bias = mha.inputs[5] if len(mha.inputs) > 5 else None
        attrs = {k: mha.attr(k) for k in _ATTRS if k in mha.attributes}
        if info["widths"][2] != info["widths"][0]:
            attrs["qkv_hidden_sizes"] = info["widths"]
        args = [x, op.const(info["w"], hint="qkv_weight"), op.const(info["b"], hint="qkv_bias")]
        y = op.Attention(*args, *([None, None, bias] if bias is not None else []), _domain=MS, **attrs)
        y.type = TensorType(DataType.FLOAT, info["out"])  # ONNX's inference does not know contrib ops
        return y
