"""Elementwise functions of one 8-bit tensor as 256-entry lookup tables: `optc.TableLookup` (TVM compile path).

Between a DequantizeLinear and the next QuantizeLinear, a QDQ model's elementwise float ops compute a function of
each 8-bit value alone. Such a function has 256 possible inputs, so it is a table:

    QuantizeLinear(f(x), y_scale, y_zp)   ->   optc.TableLookup(x, table),   table[i] = Q(f(lowest + i))

x: a uint8 / int8 tensor (lowest: 0 / -128); f: any graph of elementwise ops (the op table's ELEMENTWISE trait:
Add, Mul, Div, Erf, Tanh, Sigmoid, Relu, Clip, Where, Cast, ...; QuantizeLinear and DequantizeLinear; earlier
tables) whose only non-constant input is x and whose constants each have one element (broadcast scalars:
per-tensor scales and zero points, 0.5, sqrt(2)). f may quantize in between (Q -> DQ pairs) and use x on several
paths (GELU's x * Phi(x)). The rule takes the farthest such x behind the QuantizeLinear (the largest f).

    optc.TableLookup(x, table) -> y:  y[...] = table[x[...] - lowest(x)]; table 1-D, 256 entries, y's type;
    y has x's shape.

Examples: the GELU after a quantized MatMul (erf or tanh form, with the QDQ pairs that quantize each step: per
element 5 divisions, 5 roundings and a rational polynomial become one load), Sigmoid, Tanh, HardSwish, Exp, a
uint8 image's normalisation into the first QuantizeLinear. onnxruntime does the same for its QLinearSigmoid /
QLinearLeakyRelu (a 256-entry table built from the float function, `QLinearLookupBase`), TFLite for its int8
Logistic and Tanh; here it covers any chain of elementwise ops, found by its data flow, not by op names.

Exactness: each entry is f evaluated once, at compile time, by the constant folder's evaluator
(`fold_constants.evaluate_node`: numpy, onnx's reference evaluator) in the graph's own types: float32 + - * /
and sqrt correctly rounded, QuantizeLinear's round half to even and saturation, so the table holds what the
graph computes for that value. Transcendental functions (Erf, Tanh, Exp, ...) come out correctly rounded from
float64, which ONNX does not require of a runtime: another runtime's erf may differ by an ulp, and where that
ulp crosses a rounding boundary of a QuantizeLinear the results differ by one quantized unit (the integer ops'
contract; tests/test_qlookup.py measures it against onnxruntime). A table after an integer conv / matmul maps that
op's result, which may itself be one unit from onnxruntime's: the table then differs by the step of f there (in
output units: f' x in_scale / out_scale), more than one unit for a steep f (a breaker measured up to 7 for an Exp
into a small output scale). Both runtimes compute the graph's formula; they round the matmul differently.

Worth it (`_worth_a_table`): f has an op beyond dequantization and cheap arithmetic (Relu, Clip, Min, Max, Add,
Sub, Mul, Neg, Abs, Cast, Identity), or a quantize step inside, or an earlier table. DQ -> Relu -> Q stays as it
is (the integer ops' epilogue clamps it for nothing).

Not rewritten (each a negative test): f with two non-constant inputs (x + y), a constant of more than one element
(a per-channel bias or scale: f depends on the channel), a non-8-bit x, a non-elementwise op on the way (Softmax,
a reduction), shapes not known to be equal, more than MAX_NODES ops, an op the evaluator cannot run.
"""

from __future__ import annotations

import numpy as np

from ...ir.core import Node, Value
from ...ir.schema import OPTC_DOMAIN, Trait, has_trait
from ...ir.types import DataType, TensorType
from ..passes.fold_constants import evaluate_node
from ..pattern import Optional, require
from ..rule import Rule
from ._util import np_dtype

DOMAIN = OPTC_DOMAIN
#: the most ops one table stands for (the search behind a QuantizeLinear stops there)
MAX_NODES = 64
_LOWEST = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: ops cheaper than a table lookup on their own (a chain of only these, without a quantize step, stays)
_CHEAP = frozenset(("DequantizeLinear", "Identity", "Relu", "Clip", "Min", "Max", "Add", "Sub", "Mul", "Neg",
                    "Abs", "Cast"))


def _is_table(n: Node) -> bool:
    return n.domain == DOMAIN and n.op_type == "TableLookup"


def _elementwise(m, n: Node) -> bool:
    """Whether `n` may be part of f: an elementwise op (or Q / DQ, or a table) whose constant inputs are scalars."""
    if n.subgraphs() or len(n.outputs) != 1:
        return False
    if _is_table(n):
        return True
    if n.domain not in ("", "ai.onnx") or has_trait(n.domain, n.op_type, Trait.NONDETERMINISTIC):
        return False
    if n.op_type not in _QDQ and not has_trait(n.domain, n.op_type, Trait.ELEMENTWISE):
        return False
    if n.op_type in _QDQ and n.attr("block_size", 0):
        return False
    consts = [m.const(v) for v in n.inputs if v is not None]
    return all(c is None or c.size == 1 for c in consts)


def _cone(m, v: Value) -> tuple[Value, list[Node]] | None:
    """(x, the nodes of f in topological order) for the farthest 8-bit x that all of `v` depends on through
    elementwise ops, or None. The ops behind `v` are collected first (at most MAX_NODES); then a frontier of values
    starts at `v` and repeatedly replaces its latest value (in that topological order) by its producer's inputs:
    whenever the frontier is one 8-bit value, every path from `v` back passes through it."""
    root = v.producer
    if root is None:
        return None
    order: list[Node] = []  # postorder: producers before consumers
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif id(node) not in seen and len(seen) < MAX_NODES and _elementwise(m, node):
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((u.producer, False) for u in node.inputs
                         if u is not None and u.producer is not None and m.const(u) is None)
    pos = {id(n): i for i, n in enumerate(order)}
    memo: dict[Value, bool] = {}

    def constant(u: Value) -> bool:  # the same for every element: a constant, or computed from constants only
        if u not in memo:
            p = u.producer
            memo[u] = m.const(u) is not None or (p is not None and id(p) in pos and all(
                constant(w) for w in p.inputs if w is not None))
        return memo[u]

    frontier = {v}
    used: list[Node] = []
    best = None
    while True:
        live = [u for u in frontier if not constant(u)]
        if len(live) == 1 and live[0] is not v and np_dtype(live[0]) in _LOWEST:
            best = (live[0], list(used))
        expandable = [u for u in live if u.producer is not None and id(u.producer) in pos]
        if not expandable:
            break
        p = max(expandable, key=lambda w: pos[id(w.producer)]).producer
        used.append(p)
        frontier = {w for w in frontier if w.producer is not p and not constant(w)}
        frontier.update(w for w in p.inputs if w is not None and not constant(w))
    if best is None:
        return None
    x, nodes = best
    return x, sorted(nodes, key=lambda n: pos[id(n)])


def _worth_a_table(nodes: list[Node], root: Node) -> bool:
    return any(n is not root and n.op_type not in _CHEAP for n in nodes)  # (a table is not cheap either)


def _table(m, x: Value, nodes: list[Node], out: Value) -> np.ndarray:
    """f on the 256 values of x (`nodes`: f's ops in topological order; the values they read are x, constants or
    computed from constants only): one output per value, in the root's type."""
    qtype = np_dtype(x)
    lowest = _LOWEST[qtype]
    env: dict[Value, np.ndarray] = {x: np.arange(lowest, lowest + 256).astype(qtype)}
    opsets = m.opsets

    def value(u: Value) -> np.ndarray:
        if u not in env:
            c = m.const(u)
            if c is not None:
                env[u] = c.reshape(()) if c.size == 1 else c  # a scalar broadcast (or an earlier table)
            else:  # computed from constants only (DequantizeLinear of a constant): a 0-d result
                require(u.producer is not None, f"'{u.name}' has no value")
                run(u.producer)
        return env[u]

    def run(n: Node) -> None:
        vals = [None if u is None else value(u) for u in n.inputs]
        if _is_table(n):
            table = vals[1].reshape(-1)
            require(table.size == 256, "an earlier table does not have 256 entries")
            outs = [table[vals[0].astype(np.int64) - _LOWEST[vals[0].dtype]]]
        else:
            # Q / DQ per tensor on 8-bit types mean the same from opset 10 on; onnx's reference evaluator has them
            # from opset 19
            ops = {**opsets, "": max(opsets.get("", 19), 19)} if n.op_type in _QDQ else opsets
            try:
                outs = evaluate_node(n, vals, ops)
            except Exception as exc:  # noqa: BLE001 - the evaluator raises assorted errors on cases it cannot run
                require(False, f"{n.op_type} could not be evaluated: {type(exc).__name__}")
            require(outs is not None, f"{n.op_type} is not evaluated exactly by the reference evaluator")
        env[n.outputs[0]] = np.asarray(outs[0])

    for n in nodes:
        if n.outputs[0] not in env:
            run(n)
    result = env[out]
    require(result.shape == (256,), f"f's result has shape {result.shape} on 256 values")
    expected = np_dtype(out)
    require(expected is None or result.dtype == expected, f"f computes {result.dtype}, the output is {expected}")
    return np.ascontiguousarray(result)


def _same_shape(a: Value, b: Value) -> bool:
    return a.shape is not None and b.shape is not None and tuple(a.shape) == tuple(b.shape)


class QdqElementwiseToTable(Rule):
    """QuantizeLinear(f(x)) -> optc.TableLookup(x, table): an elementwise function of one uint8 / int8 tensor x,
    evaluated on x's 256 values at compile time (see the module docstring)."""

    rounding = ("transcendental functions (Erf, Tanh, Exp, ...) in the table are correctly rounded from float64; "
                "a runtime's own may differ by an ulp, which moves a result by at most one quantized unit")

    def pattern(self, op, v, ys, yzp):
        return op.QuantizeLinear(v, ys, Optional(yzp), _name="q")

    def check(self, m, v, ys, yzp):
        q = m["q"]
        out = q.outputs[0]
        require(_elementwise(m, q), "the QuantizeLinear is not per tensor with constant parameters")
        found = _cone(m, v)
        require(found is not None, "its input is not an elementwise function of one uint8 / int8 tensor")
        x, nodes = found
        nodes.append(q)
        require(_worth_a_table(nodes, q), "f is cheaper than a table lookup (dequantize and cheap arithmetic only)")
        require(_same_shape(x, out), "x and the output do not have the same known shape")
        m.lookup = (x, _table(m, x, nodes, out))
        return True

    def rewrite(self, op, m, v, ys, yzp):
        x, table = m.lookup
        y = op.TableLookup(x, op.const(table, "table"), _domain=DOMAIN)
        y.type = TensorType(DataType.from_numpy(table.dtype), tuple(x.shape))
        return y


RULES = [QdqElementwiseToTable]
