"""A networkx view of a graph, for analyses (dominators, cycle checks after fusion, partitioning) and DOT.

The rewrite hot path never goes through here: the view is a snapshot, built in O(nodes + uses).

Representation (`to_networkx`): a `networkx.MultiDiGraph` whose nodes are
- the optc `Node`s of the graph (node attribute `kind="node"`), and
- one `Source` per value that no node of this graph produces but some node reads: a graph input
  (`kind="input"`), an initializer (`kind="initializer"`) or, in a subgraph, an outer-scope value
  (`kind="outer"`). A `Source` hashes by identity and carries its `value`.
Values are edge data, not nodes: there is one edge per used input, from the value's producer (or `Source`) to
the reading node, keyed by the input index and carrying `value` (the Value), `index` (the input index) and
`output_index` (which output of the producer it is). Omitted optional inputs (None) make no edge. Hence the
number of edges equals the number of non-None node inputs.

With `implicit=True`, a node whose subgraphs (If/Loop/Scan bodies) read values of this graph also gets one
edge per such distinct value with `implicit=True` and `index=None`, so that cycle checks see those dependencies.
With `outputs=True`, each graph output gets a `Source` sink (`kind="output"`, `index` = its position).
Graph outputs are always listed in `G.graph["outputs"]`.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .core import Graph, Model, Node, Value, outer_scope_values

__all__ = ["Source", "to_dot", "to_networkx"]


class Source:
    """A networkx node standing for a value with no producer in the graph (or for a graph output sink)."""

    __slots__ = ("kind", "value", "index")

    def __init__(self, kind: str, value: Value, index: int | None = None):
        self.kind = kind
        self.value = value
        self.index = index

    def __repr__(self) -> str:
        return f"Source({self.kind}, %{self.value.name})"


def to_networkx(graph: Graph | Model, *, implicit: bool = False, outputs: bool = False) -> nx.MultiDiGraph:
    """The dataflow of `graph` (a Model means its main graph) as a MultiDiGraph; see the module docstring."""
    g = graph.graph if isinstance(graph, Model) else graph
    G = nx.MultiDiGraph(name=g.name)
    inputs = {id(v) for v in g.inputs}
    sources: dict[int, Source] = {}
    own: set[int] = set()
    for n in g:
        G.add_node(n, kind="node", op_type=n.op_type, domain=n.domain, name=n.name)
        own.add(id(n))

    def source_of(v: Value) -> Any:
        p = v.producer
        if p is not None and id(p) in own:
            return p
        s = sources.get(id(v))
        if s is None:
            if id(v) in inputs:
                kind = "input"
            elif g.initializers.get(v.name) is v:
                kind = "initializer"
            else:
                kind = "outer"
            s = sources[id(v)] = Source(kind, v)
            G.add_node(s, kind=kind, name=v.name)
        return s

    for n in g:
        for i, v in enumerate(n.inputs):
            if v is not None:
                G.add_edge(source_of(v), n, key=i, value=v, index=i, output_index=v.index, implicit=False)
        if implicit:
            read = {id(v): v for sub in n.subgraphs() for v in outer_scope_values(sub)}
            for v in read.values():
                src = source_of(v)
                if src is not n:
                    G.add_edge(src, n, value=v, index=None, output_index=v.index, implicit=True)
    G.graph["outputs"] = [(source_of(v), v) for v in g.outputs]
    if outputs:
        for i, v in enumerate(g.outputs):
            sink = Source("output", v, i)
            G.add_node(sink, kind="output", name=v.name, index=i)
            G.add_edge(source_of(v), sink, key=i, value=v, index=i, output_index=v.index, implicit=False)
    return G


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph | Model, *, outputs: bool = True) -> str:
    """The graph in Graphviz DOT syntax (written by hand: no pydot/pygraphviz needed).

    Nodes are labelled with their op type (and name), sources with the value name; edges with the value name.
    Reads of this graph's values from inside a node's subgraphs are dashed edges.
    """
    G = to_networkx(graph, implicit=True, outputs=outputs)
    ids = {id(x): f"n{i}" for i, x in enumerate(G.nodes)}
    lines = [f"digraph {_q(G.graph.get('name') or 'graph')} {{", "  rankdir=TB;"]
    for x, data in G.nodes(data=True):
        if isinstance(x, Node):
            op = f"{x.domain}::{x.op_type}" if x.domain else x.op_type
            label = f"{op}\n{x.name}" if x.name else op
            lines.append(f"  {ids[id(x)]} [label={_q(label)}, shape=box];")
        else:
            shape = {"input": "ellipse", "initializer": "note", "outer": "ellipse", "output": "doublecircle"}
            lines.append(f"  {ids[id(x)]} [label={_q(data['kind'] + ' ' + x.value.name)}, "
                         f"shape={shape.get(data['kind'], 'ellipse')}];")
    for a, b, data in G.edges(data=True):
        style = ", style=dashed" if data.get("implicit") else ""
        lines.append(f"  {ids[id(a)]} -> {ids[id(b)]} [label={_q(data['value'].name)}{style}];")
    lines.append("}")
    return "\n".join(lines)
