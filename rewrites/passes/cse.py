"""`cse`: common-subexpression elimination. Nodes with the same op, attributes and inputs compute the same
values, so later ones are replaced by the first (never for non-deterministic or side-effecting ops).
Initializers with identical content (same type, shape and bytes: a hash first, then an exact comparison) are
merged too. Recurses into If/Loop/Scan bodies and functions.

Exact under IEEE 754: float attributes are compared by their bits (-0.0 differs from 0.0, NaN never matches),
tensors byte for byte. Only the two inputs of a binary commutative op are compared in either order:
a + b = b + a and a * b = b * a bit for bit, but Sum(a, b, c) rounds (a + b) + c, not (c + b) + a, and
onnxruntime's Max / Min return their second input on a -0.0 / +0.0 tie (Max(-0.0, 0.0) = +0.0,
Max(0.0, -0.0) = -0.0), so those keep their input order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...ir.core import AttrType, Graph, Model, Node, Value
from ...ir.rewriter import Rewriter
from ...ir.schema import Trait, traits
from ...ir.tensors import SparseTensor, Tensor
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass
from ._util import describe


class _Unhashable(Exception):
    pass


def _tensor_key(t: Tensor) -> tuple:
    a = t.numpy()
    return ("tensor", int(t.dtype), tuple(a.shape), hashlib.blake2b(np.ascontiguousarray(a).tobytes(),
                                                                   digest_size=16).digest())


def _attr_value_key(t: AttrType, v: Any) -> Any:
    if t in (AttrType.GRAPH, AttrType.GRAPHS, AttrType.SPARSE_TENSOR, AttrType.SPARSE_TENSORS):
        raise _Unhashable
    if t == AttrType.TENSOR:
        return _tensor_key(v)
    if t == AttrType.TENSORS:
        return tuple(_tensor_key(x) for x in v)
    if t == AttrType.FLOAT:
        return _float_key(v)
    if t == AttrType.FLOATS:
        return tuple(_float_key(x) for x in v)
    if isinstance(v, list):
        return tuple(v)
    return v


def _float_key(v: Any) -> str:
    """The exact value of a float attribute: its hex form keeps the sign of zero (-0.0 == 0.0 in Python)."""
    f = float(v)
    if f != f:
        raise _Unhashable  # NaN never equals itself
    return f.hex()


# commutative in the op table, but not bit for bit in either input order (see the module docstring)
_ORDER_SENSITIVE = frozenset({"Max", "Min"})


def node_key(node: Node) -> tuple | None:
    """A hashable key: equal keys mean the nodes compute the same values (None: never merge this node)."""
    tr = traits(node.domain, node.op_type)
    if tr & (Trait.NONDETERMINISTIC | Trait.SIDE_EFFECTS):
        return None
    try:
        attrs = tuple(sorted((a.name, int(a.type), a.ref_attr_name or None,
                              None if a.ref_attr_name else _attr_value_key(a.type, a.value))
                             for a in node.attributes.values()))
    except (_Unhashable, TypeError):
        return None
    ins = tuple(id(v) if v is not None else None for v in node.inputs)
    if tr & Trait.COMMUTATIVE and len(ins) == 2 and None not in ins and node.op_type not in _ORDER_SENSITIVE:
        ins = tuple(sorted(ins))
    return (node.domain, node.op_type, node.overload, node.version, len(node.outputs),
            tuple(o is None for o in node.outputs), attrs, ins)


@register_pass
@dataclass
class CommonSubexpressionElimination(Pass):
    """Merge identical nodes and identical initializers."""

    name: ClassVar[str] = "cse"
    description: ClassVar[str] = ("merge nodes with the same op, attributes and inputs, and initializers with the "
                                  "same content (never non-deterministic ops)")
    option_help: ClassVar[dict[str, str]] = {
        "initializers": 'also merge initializers with equal dtype, shape and bytes',
    }
    initializers: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        counts: dict[str, int] = {}
        rw = Rewriter(model)
        for g in list(model.graphs()):
            if ctx.budget.exhausted:
                break
            if self.initializers:
                self._merge_initializers(rw, g, ctx, counts)
            self._merge_nodes(rw, g, ctx, counts)
        return PassResult(bool(counts), converged=not ctx.budget.exhausted, counts=counts)

    def _count(self, ctx: PassContext, counts: dict[str, int], rule: str, label: str) -> None:
        counts[rule] = counts.get(rule, 0) + 1
        ctx.record(self.name, rule, label)

    def _merge_nodes(self, rw: Rewriter, g: Graph, ctx: PassContext, counts: dict[str, int]) -> None:
        seen: dict[tuple, Node] = {}
        for node in g:
            if node.subgraphs():
                continue
            key = node_key(node)
            if key is None:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            if any(o is not None and rw.is_graph_output(o) for o in node.outputs):
                continue  # its output names are part of a graph's interface
            if not ctx.budget.take():
                return
            label = describe(node)
            for o, keep in zip(node.outputs, first.outputs, strict=True):
                if o is not None:
                    if keep.type is None and o.type is not None:
                        keep.type = o.type
                    rw.replace_all_uses_with(o, keep)
            rw.erase(node, safe=False)
            self._count(ctx, counts, "merge-node", label)

    def _merge_initializers(self, rw: Rewriter, g: Graph, ctx: PassContext, counts: dict[str, int]) -> None:
        if len(g.initializers) < 2:
            return
        protected = {id(v) for v in g.inputs}
        # Group by cheap metadata first: only same-type, same-shape tensors are ever read and hashed.
        groups: dict[tuple, list[Value]] = {}
        for v in g.initializers.values():
            t = v.const
            if isinstance(t, SparseTensor) or id(v) in protected or t is None or rw.is_graph_output(v):
                continue
            groups.setdefault((int(t.dtype), tuple(t.shape)), []).append(v)
        for vals in groups.values():
            if len(vals) < 2:
                continue
            # A strided sample of the bytes sorts out different tensors cheaply; tensors whose samples agree
            # are compared exactly (byte for byte: -0.0 and 0.0 differ, equal NaN payloads match).
            by_sample: dict[bytes, list[tuple[Value, np.ndarray]]] = {}
            for v in vals:
                a = v.const.numpy()
                if a.dtype == object:
                    continue
                flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                step = max(1, flat.size // 512)
                sample = flat[::step][:512].tobytes()
                bucket = by_sample.setdefault(sample, [])
                for keep, kflat in bucket:
                    if np.array_equal(kflat, flat):
                        if not v._uses:
                            break  # unused: dce removes it, merging it is no rewrite
                        if not ctx.budget.take():
                            return
                        rw.replace_all_uses_with(v, keep)
                        rw.remove_initializer(v, g)
                        self._count(ctx, counts, "merge-initializer", f"initializer '{v.name}'")
                        break
                else:
                    bucket.append((v, flat))
