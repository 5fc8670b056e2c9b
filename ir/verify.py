"""Structural verification of the IR: the invariants every pass must keep."""

from __future__ import annotations

from .core import Graph, Model, Node, Value


class VerifyError(ValueError):
    """The IR broke an invariant; the message names the first violation."""


def verify(target: Model | Graph) -> None:
    """Check single definition, use-def symmetry, no dangling values, acyclicity and topological order.

    Raises VerifyError on the first violation.
    """
    if isinstance(target, Model):
        _verify_graph(target.graph, [])
        for fn in target.functions.values():
            _verify_graph(fn.graph, [])
    else:
        _verify_graph(target, [])


def _verify_graph(g: Graph, outer: list[set[int]]) -> None:
    defined: set[int] = set()
    names: dict[str, Value] = {}

    def define(v: Value, what: str) -> None:
        if id(v) in defined:
            raise VerifyError(f"value '{v.name}' is defined twice in graph '{g.name}' ({what})")
        if any(id(v) in scope for scope in outer):
            raise VerifyError(f"value '{v.name}' of graph '{g.name}' shadows an outer-scope value")
        if v.name:
            other = names.get(v.name)
            if other is not None and other is not v:
                raise VerifyError(f"two values are named '{v.name}' in graph '{g.name}'")
            names[v.name] = v
        defined.add(id(v))
        _check_uses(v)  # every use of every value, including uses by nodes that are in no graph

    for v in g.inputs:
        define(v, "graph input")
    for name, v in g.initializers.items():
        if v.const is None:
            raise VerifyError(f"initializer '{name}' has no constant payload")
        if id(v) not in defined:
            define(v, "initializer")
    visible = [defined, *outer]
    count = 0
    for n in g:
        count += 1
        if n.graph is not g:
            raise VerifyError(f"{n!r} is listed in graph '{g.name}' but points at another graph")
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            if not any(id(v) in scope for scope in visible):
                where = "later (not in topological order)" if _defined_later(n, v) else "nowhere in scope"
                raise VerifyError(f"input {i} '{v.name}' of {n!r} is defined {where}")
            if (n, i) not in v._uses:
                raise VerifyError(f"use-def broken: {n!r} reads '{v.name}' but is not among its uses")
        for sub in n.subgraphs():
            if sub.parent is not n:
                raise VerifyError(f"a subgraph of {n!r} does not point back at it")
            _verify_graph(sub, visible)
        for i, o in enumerate(n.outputs):
            if o is None:
                continue
            if o.producer is not n or o.index != i:
                raise VerifyError(f"output {i} '{o.name}' of {n!r} does not point back at it")
            define(o, f"output of {n!r}")
    if count != len(g):
        raise VerifyError(f"graph '{g.name}' counts {len(g)} nodes but lists {count}")
    for v in g.outputs:
        if not any(id(v) in scope for scope in visible):
            raise VerifyError(f"graph output '{v.name}' of graph '{g.name}' is not defined")


def _check_uses(v: Value) -> None:
    for node, index in v._uses:
        if index >= len(node.inputs) or node.inputs[index] is not v:
            raise VerifyError(f"use-def broken: '{v.name}' lists a use by {node!r} at input {index} that the "
                              f"node does not have")
        if node.graph is None:
            raise VerifyError(f"'{v.name}' is still used by removed {node!r}")


def _defined_later(node: Node, v: Value) -> bool:
    n = node.next()
    while n is not None:
        if v.producer is n:
            return True
        n = n.next()
    return False
