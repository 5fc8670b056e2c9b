"""A run-time QMatMul operand's transpose moved next to the QMatMul (TVM compile path, with `qinteger.py`).

Attention's Q K^T reaches the integer op as `QMatMul(q, ..., w)` with w = Q(f(DQ(Transpose(k))))): the exporters
transpose K (torch's `k.transpose(-2, -1)`, often merged with the head split into one `perm`) *before* the
quantize steps, so the lowering met an 8-bit tensor already transposed and its kernel wrote K^T byte by byte at a
stride of N bytes, then packed it again for the dot-product instruction (`lowering/ops/qinteger.py`). This rule
moves the Transpose past those elementwise steps:

    QMatMul(a, ..., E_k(...E_1(Transpose(t, perm))...), ...)  ->  QMatMul(a, ..., Transpose(E_k(...E_1(t)...), perm), ...)

so that the lowering finds w = Transpose(t') and packs the kernel's operand straight from t' (K in its own
layout: the 4 bytes of a dot-product group are contiguous there).

E_i: elementwise ops whose other inputs are the same for every element: DequantizeLinear / QuantizeLinear with
rank-0 scale and zero point, Cast, Relu, Add / Sub / Mul / Div with an operand of one element whose rank is at
most the chain's. Each step's output feeds the next step only (and no graph output), so nothing else sees the
layout change.

Exactness: each E_i computes the same scalar function of each element in either layout; the transpose only
moves elements. Bit for bit the same values reach the QMatMul.

Not rewritten (negative tests in tests/test_qtranspose.py): a per-axis Q / DQ (its axis would move), an operand of
more than one element (a per-channel bias), an intermediate with another use, a constant w, no elementwise step
between the Transpose and the QMatMul (nothing to move), a step that is not elementwise (Softmax), an
optc.TableLookup (elementwise, but the rewriter infers the types of new nodes with ONNX's inference, which does not
know optc's ops: the rewrite was rejected; a K through a sigmoid is no attention pattern).
"""

from __future__ import annotations

from ...ir.core import Node, Value
from ...ir.schema import OPTC_DOMAIN
from ..pattern import ANY, require
from ..rule import Rule

#: elementwise ops the transpose moves past: op type -> the input positions that must be broadcast scalars
_SCALAR_INPUTS = {"DequantizeLinear": (1, 2), "QuantizeLinear": (1, 2), "Cast": (), "Relu": ()}
_BINARY = ("Add", "Sub", "Mul", "Div")
#: the longest chain of steps followed back from the QMatMul
MAX_STEPS = 16


def _single_use(v: Value) -> bool:
    graph = v.producer.graph if v.producer is not None else None
    return v.num_uses == 1 and (graph is None or v not in graph.outputs)


def _scalar(v: Value | None, rank: int | None) -> bool:
    """v has one element and no more dims than `rank` (broadcasting it against the chain changes no shape)."""
    if v is None:
        return True
    shape = v.shape
    return shape is not None and all(d == 1 for d in shape) and rank is not None and len(shape) <= rank


def _step(node: Node, v: Value) -> int | None:
    """The input position of `v` in `node` when `node` is an elementwise step the transpose moves past, else None."""
    rank = v.rank
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in _SCALAR_INPUTS:
        if node.inputs[0] is not v or int(node.attr("block_size", 0) or 0):
            return None
        scalars = [node.inputs[i] if i < len(node.inputs) else None for i in _SCALAR_INPUTS[node.op_type]]
        return 0 if all(s is None or (s.shape is not None and len(s.shape) == 0) for s in scalars) else None
    if node.op_type in _BINARY and len(node.inputs) == 2 and node.inputs[0] is not node.inputs[1]:
        pos = 0 if node.inputs[0] is v else 1
        return pos if _scalar(node.inputs[1 - pos], rank) else None
    return None


def _chain(w: Value) -> tuple[Node, list[tuple[Node, int]]] | None:
    """(the Transpose, the steps from it to w in order with the chain's input position) behind QMatMul's w."""
    steps: list[tuple[Node, int]] = []
    v = w
    while len(steps) <= MAX_STEPS:
        p = v.producer
        if p is None or not _single_use(v):
            return None
        if p.op_type == "Transpose" and p.domain in ("", "ai.onnx"):
            return (p, steps[::-1]) if steps else None
        pos = next((i for i, x in enumerate(p.inputs) if x is not None and x.producer is not None
                    and _step(p, x) == i), None)
        if pos is None:
            return None
        steps.append((p, pos))
        v = p.inputs[pos]
    return None


class SinkTransposeToQMatMul(Rule):
    """QMatMul(a, .., E(Transpose(t)), ..) -> QMatMul(a, .., Transpose(E(t)), ..) for a run-time w (module doc)."""

    domain = OPTC_DOMAIN

    def pattern(self, op):
        return op.QMatMul(ANY, _allow_other_inputs=True, _domain=OPTC_DOMAIN, _name="qmm")

    def check(self, m):
        qmm = m["qmm"]
        require(len(qmm.inputs) > 3 and qmm.inputs[3] is not None, "no w input")
        require(m.const(qmm.inputs[3]) is None, "w is a constant")
        found = _chain(qmm.inputs[3])
        require(found is not None, "w is not a chain of elementwise steps behind a Transpose")
        m.transpose, m.steps = found
        return True

    def rewrite(self, op, m):
        qmm = m["qmm"]
        cur = m.transpose.inputs[0]
        for node, pos in m.steps:
            inputs = list(node.inputs)
            inputs[pos] = cur
            attrs = {name: node.attr(name) for name in node.attributes}
            cur = getattr(op, node.op_type)(*inputs, _domain=node.domain or "", **attrs)
        perm = m.transpose.attr("perm")
        moved = op.Transpose(cur, perm=list(perm)) if perm is not None else op.Transpose(cur)
        inputs = list(qmm.inputs)
        inputs[3] = moved
        attrs = {name: qmm.attr(name) for name in qmm.attributes}
        return op.QMatMul(*inputs, _domain=OPTC_DOMAIN, **attrs)
