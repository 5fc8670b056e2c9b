"""Helpers shared by the built-in passes."""

from __future__ import annotations

from ...ir.core import Graph, Model, Node


def graphs_of(model: Model) -> list[Graph]:
    """Main graph, function bodies and every If/Loop/Scan body (a snapshot list, parents before bodies)."""
    return list(model.graphs())


def function_graphs(model: Model) -> dict[int, dict[str, int]]:
    """id(graph) -> the opset imports of the function whose body (or nested body) it is."""
    out: dict[int, dict[str, int]] = {}
    for fn in model.functions.values():
        out[id(fn.graph)] = dict(fn.opset_imports) or dict(model.opset_imports)
        for g in fn.graph.subgraphs():
            out[id(g)] = out[id(fn.graph)]
    return out


def root_graph(graph: Graph) -> Graph:
    g = graph
    while g.parent is not None and g.parent.graph is not None:
        g = g.parent.graph
    return g


def describe(node: Node) -> str:
    """A short label for a node in reports: op type and its name (or first output's name)."""
    label = node.name or next((o.name for o in node.outputs if o is not None and o.name), "")
    op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    return f"{op} '{label}'" if label else op
