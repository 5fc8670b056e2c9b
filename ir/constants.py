"""Is this value really a constant? One answer for every pass.

ONNX lets an initializer also be listed as a graph input: it is then a default that the caller may override at
run time (IR version 4 and later; before that every weight had to be listed), so no rewrite may treat its data
as what the graph computes with. A value is a constant when it is an initializer not listed among the inputs of
any graph of the model (main graph, bodies, functions: listing in any of them is treated as overridable), or
the output of a standard `Constant` node.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .core import Graph, Model, Value


class Constants:
    """The constant check for one model (or graph): built once (O(inputs)), each query O(1).

    Rebuild it after a graph's input list changes (`Rewriter.constants()` does)."""

    __slots__ = ("_inputs",)

    def __init__(self, graphs: Model | Graph | Iterable[Graph]):
        if isinstance(graphs, Model):
            graphs = graphs.graphs()
        elif isinstance(graphs, Graph):
            graphs = [graphs, *graphs.subgraphs()]
        self._inputs = {v for g in graphs for v in g.inputs}

    def is_overridable(self, v: Value) -> bool:
        """An initializer that is also a graph input: a default, not a constant."""
        return v in self._inputs

    def is_constant(self, v: Value | None) -> bool:
        if v is None:
            return False
        if v.const is not None:
            return v.producer is None and v not in self._inputs
        p = v.producer
        return p is not None and p.op_type == "Constant" and p.domain == ""

    def data(self, v: Value | None) -> np.ndarray | None:
        """The constant's data (None when `v` is not a constant, or its payload cannot be read, e.g. missing
        external data)."""
        if not self.is_constant(v):
            return None
        try:
            return v.const_value()
        except Exception:  # noqa: BLE001 - an unreadable payload is not a usable constant
            return None
