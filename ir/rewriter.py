"""The Rewriter: the one door through which passes mutate the IR.

Every mutation (insert, erase, set an input or attribute, replace a value) goes through a `Rewriter`, which keeps
use-def chains right (via `Node.set_input`) and notifies its listeners, so a worklist driver learns exactly which
nodes a change touched:

    on_insert(node)          after `node` was linked into a graph
    on_erase(node)           after `node` left its graph (`node.inputs` still lists what it read)
    on_modify(node)          after an input or attribute of `node` changed
    on_replace(old, new)     after every use of `old` was moved to `new`

Graph outputs are not uses: replacing a value that is a graph output needs `replace_graph_outputs=True`, and then
the output keeps its name and type (the new value is renamed to the old output's name; refused when that is not
safe, e.g. the new value is a graph input, an initializer, or already another graph output).

Names: `fresh_name` hands out value names unused anywhere in the model, from a set built once (so a pass that
adds thousands of constants stays linear); initializers added through `add_initializer` get such names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from .constants import Constants
from .core import AttrType, Graph, Model, Node, Value
from .tensors import NumpyTensor, Tensor
from .types import TensorType


class RewriteListener(Protocol):
    def on_insert(self, node: Node) -> None: ...
    def on_erase(self, node: Node) -> None: ...
    def on_modify(self, node: Node) -> None: ...
    def on_replace(self, old: Value, new: Value | None) -> None: ...


class RewriteError(ValueError):
    """A mutation was refused (it would break an invariant, e.g. rename a graph input)."""


class Rewriter:
    """Mutates a Model (all its graphs, subgraphs and function bodies) or a single Graph, notifying listeners."""

    def __init__(self, target: Model | Graph, listeners: Iterable[RewriteListener] = ()):
        if isinstance(target, Model):
            self.model: Model | None = target
            self.graph = target.graph
        else:
            self.model = None
            self.graph = target
        self.listeners: list[Any] = list(listeners)
        self._names: set[str] | None = None
        self._outputs: dict[Value, list[Graph]] | None = None
        self._constants: Constants | None = None
        self._node_counter = 0
        self._node_names: set[str] | None = None

    # -- listeners --------------------------------------------------------------------------------
    def add_listener(self, listener: RewriteListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: RewriteListener) -> None:
        self.listeners.remove(listener)

    def _notify(self, event: str, *args) -> None:
        for listener in self.listeners:
            fn = getattr(listener, event, None)
            if fn is not None:
                fn(*args)

    # -- graphs and names -------------------------------------------------------------------------
    def graphs(self) -> list[Graph]:
        """Every graph reachable from the target (main graph, function bodies, nested bodies)."""
        if self.model is not None:
            return list(self.model.graphs())
        return [self.graph, *self.graph.subgraphs()]

    def _name_set(self) -> set[str]:
        if self._names is None:
            names: set[str] = set()
            for g in self.graphs():
                names.update(g.initializers)
                names.update(v.name for v in g.inputs)
                for n in g:
                    names.update(o.name for o in n.outputs if o is not None and o.name)
            self._names = names
        return self._names

    def fresh_name(self, hint: str = "v") -> str:
        """A value name used nowhere in the model yet (and reserve it)."""
        names = self._name_set()
        hint = hint or "v"
        name = hint
        if name in names:
            i = 1
            while f"{hint}_{i}" in names:
                i += 1
            name = f"{hint}_{i}"
        names.add(name)
        return name

    def take_name(self, new: Value, old: Value) -> None:
        """Give `new` the name of `old`, a value no longer in the graph (a rewrite replaced it), and leave `old`
        unnamed, so the user's value names survive rewrites. Raises RewriteError if `old` is still produced or
        used, or is a graph output (replacing an output already moves its name)."""
        if old.uses() or self.is_graph_output(old) or (old.producer is not None and old.producer.graph is not None):
            raise RewriteError(f"'{old.name}' is still in the graph; its name cannot move to '{new.name}'")
        new.name, old.name = old.name, ""

    def reserve_name(self, name: str) -> None:
        if name:
            self._name_set().add(name)

    def fresh_node_name(self, hint: str) -> str:
        """A node name used by no node of the model yet (onnxruntime rejects a model with two nodes of one name;
        a counter per Rewriter alone had repeated `UnitTransposeReshape_1` across two passes), reserved."""
        if self._node_names is None:
            self._node_names = {n.name for g in self.graphs() for n in g if n.name}
        while True:
            self._node_counter += 1
            name = f"{hint}_{self._node_counter}"
            if name not in self._node_names:
                self._node_names.add(name)
                return name

    # -- graph outputs ----------------------------------------------------------------------------
    def _output_index(self) -> dict[Value, list[Graph]]:
        if self._outputs is None:
            index: dict[Value, list[Graph]] = {}
            for g in self.graphs():
                for v in g.outputs:
                    index.setdefault(v, []).append(g)
            self._outputs = index
        return self._outputs

    def output_graphs(self, value: Value) -> list[Graph]:
        """The graphs that list `value` among their outputs."""
        found = [g for g in self._output_index().get(value, ()) if any(o is value for o in g.outputs)]
        p = value.producer
        if p is not None and p.graph is not None and p.graph not in found and any(o is value for o in p.graph.outputs):
            found.append(p.graph)  # outputs changed behind the rewriter's back
        return found

    def is_graph_output(self, value: Value) -> bool:
        """True if `value` is an output of any graph (main graph, function body or nested body)."""
        if value in self._output_index():
            return bool(self.output_graphs(value))
        p = value.producer
        return p is not None and p.graph is not None and any(o is value for o in p.graph.outputs)

    def why_not_replace_output(self, old: Value, new: Value | None) -> str | None:
        """Why replacing graph output `old` by `new` (keeping the output's name) is unsafe; None when safe."""
        graphs = self.output_graphs(old)
        if not graphs:
            return None
        if new is None:
            return f"graph output '{old.name}' cannot be removed"
        if new.producer is None:
            kind = "an initializer" if new.const is not None else "a graph input"
            return f"graph output '{old.name}' would be replaced by {kind} ('{new.name}'), losing its name"
        if self.is_graph_output(new):
            return f"graph output '{old.name}' would be replaced by another graph output ('{new.name}')"
        if any(new.producer.graph is not g for g in graphs):
            return f"graph output '{old.name}' would be replaced by a value of another scope"
        return None

    # -- nodes ------------------------------------------------------------------------------------
    def _inserted(self, nodes: Sequence[Node]) -> None:
        if self._names is not None:
            for n in nodes:
                for o in n.outputs:
                    if o is not None and o.name:
                        self._names.add(o.name)
        for n in nodes:
            self._notify("on_insert", n)

    def insert_before(self, anchor: Node, *nodes: Node) -> None:
        """Insert `nodes`, in order, before `anchor` (in anchor's graph)."""
        anchor.graph.insert_before(anchor, *nodes)
        self._inserted(nodes)

    def insert_after(self, anchor: Node, *nodes: Node) -> None:
        """Insert `nodes`, in order, after `anchor` (in anchor's graph)."""
        anchor.graph.insert_after(anchor, *nodes)
        self._inserted(nodes)

    def append(self, graph: Graph, *nodes: Node) -> None:
        """Append `nodes` at the end of `graph`."""
        graph.append(*nodes)
        self._inserted(nodes)

    def erase(self, node: Node, safe: bool = True) -> None:
        """Remove `node` from its graph. With `safe`, refuse if an output is still used or is a graph output."""
        g = node.graph
        if g is None:
            raise RewriteError(f"{node!r} is not in a graph")
        if safe:
            for o in node.outputs:
                if o is None:
                    continue
                if o._uses:
                    raise RewriteError(f"cannot erase {node!r}: output '{o.name}' is still used")
                if self.is_graph_output(o):
                    raise RewriteError(f"cannot erase {node!r}: output '{o.name}' is a graph output")
        g.remove(node, safe=False)
        self._notify("on_erase", node)

    def move_before(self, anchor: Node, node: Node) -> None:
        """Move `node` (possibly from another graph, e.g. a body being inlined) before `anchor`, keeping its uses."""
        src = node.graph
        if src is not None:
            node._prev._next = node._next
            node._next._prev = node._prev
            node.graph = None
            src._len -= 1
            del src._by_op[(node.domain, node.op_type)][node]
        anchor.graph.insert_before(anchor, node)
        self._inserted((node,))

    # -- inputs, attributes -----------------------------------------------------------------------
    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        """Set input `index` of `node`."""
        if index < len(node.inputs) and node.inputs[index] is value:
            return
        node.set_input(index, value)
        self._notify("on_modify", node)

    def set_inputs(self, node: Node, values: Sequence[Value | None]) -> None:
        node.set_inputs(values)
        self._notify("on_modify", node)

    def set_attr(self, node: Node, name: str, value: Any, type: AttrType | None = None) -> None:  # noqa: A002
        """Set (or replace) an attribute of `node`."""
        node.set_attr(name, value, type)
        self._notify("on_modify", node)

    def del_attr(self, node: Node, name: str) -> None:
        if node.attributes.pop(name, None) is not None:
            self._notify("on_modify", node)

    # -- values -----------------------------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value | None, *, replace_graph_outputs: bool = False) -> None:
        """Point every use of `old` at `new`.

        If `old` is a graph output, `replace_graph_outputs=True` is required; `new` then takes the output's place
        with the old output's name and type (RewriteError when that is unsafe, see `why_not_replace_output`).
        """
        if new is old:
            return
        graphs = self.output_graphs(old)
        if graphs:
            if not replace_graph_outputs:
                raise RewriteError(f"'{old.name}' is a graph output; pass replace_graph_outputs=True to replace it")
            why = self.why_not_replace_output(old, new)
            if why:
                raise RewriteError(why)
        users = []
        for use in old.uses():
            use.node.set_input(use.index, new)
            users.append(use.node)
        if graphs:
            name, typ = old.name, old.type
            old.name = ""
            new.name = name
            if typ is not None:
                new.type = typ
            index = self._output_index()
            for g in graphs:
                g.outputs = [new if o is old else o for o in g.outputs]
                index.setdefault(new, []).append(g)
            index.pop(old, None)
        self._notify("on_replace", old, new)
        for n in dict.fromkeys(users):
            self._notify("on_modify", n)

    def replace_node_outputs(self, node: Node, new_values: Sequence[Value | None], *,
                             replace_graph_outputs: bool = False) -> None:
        """Replace each output of `node` by the corresponding new value (None entries are skipped)."""
        if len(new_values) != len(node.outputs):
            raise RewriteError(f"{node!r} has {len(node.outputs)} outputs, got {len(new_values)} replacements")
        for old, new in zip(node.outputs, new_values, strict=False):
            if old is not None and new is not None:
                self.replace_all_uses_with(old, new, replace_graph_outputs=replace_graph_outputs)

    def replace_node(self, node: Node, new_nodes: Sequence[Node], new_values: Sequence[Value | None], *,
                     replace_graph_outputs: bool = False) -> None:
        """Insert `new_nodes` before `node`, move its outputs' uses to `new_values`, then erase it."""
        if new_nodes:
            self.insert_before(node, *new_nodes)
        self.replace_node_outputs(node, new_values, replace_graph_outputs=replace_graph_outputs)
        self.erase(node)

    def set_graph_output(self, graph: Graph, index: int, value: Value) -> None:
        """Make `value` output `index` of `graph` (no renaming)."""
        old = graph.outputs[index]
        graph.outputs[index] = value
        idx = self._output_index()
        idx.setdefault(value, []).append(graph)
        if old is not value and old in idx:
            idx[old] = [g for g in idx[old] if g is not graph or any(o is old for o in graph.outputs)]

    def clear_graph_outputs(self, graph: Graph) -> None:
        """Forget `graph`'s outputs (a body that is being inlined and then dropped)."""
        idx = self._output_index()
        for v in graph.outputs:
            if v in idx:
                idx[v] = [g for g in idx[v] if g is not graph]
                if not idx[v]:
                    del idx[v]
        graph.outputs = []

    # -- constants --------------------------------------------------------------------------------
    def add_initializer(self, array: np.ndarray | Tensor, hint: str = "const", graph: Graph | None = None) -> Value:
        """A new initializer under a fresh name (never overwrites an existing weight)."""
        g = graph or self.graph
        tensor = array if isinstance(array, Tensor) else NumpyTensor(np.asarray(array))
        value = Value(self.fresh_name(hint), TensorType(tensor.dtype, tuple(tensor.shape)), const=tensor)
        g.add_initializer(value)
        return value

    def remove_initializer(self, value: Value, graph: Graph | None = None) -> None:
        """Drop an unused initializer."""
        g = graph or self.graph
        if value._uses:
            raise RewriteError(f"initializer '{value.name}' is still used")
        if self.is_graph_output(value) or any(v is value for v in g.inputs):
            raise RewriteError(f"initializer '{value.name}' is part of the graph's interface")
        if g.initializers.get(value.name) is value:
            del g.initializers[value.name]

    def adopt_initializer(self, value: Value, graph: Graph | None = None, hint: str | None = None) -> Value:
        """Make an existing constant Value (`value.const` set, no producer) an initializer of `graph` under a
        fresh name (from `hint`, else its current name): for constants a rewrite built or moved from a body."""
        if value.const is None or value.producer is not None:
            raise RewriteError(f"'{value.name}' is not a free constant value")
        g = graph or self.graph
        value.name = self.fresh_name(hint or value.name or "const")
        g.add_initializer(value)
        for use in value.uses():
            self._notify("on_modify", use.node)
        return value

    def detach_initializer(self, value: Value, graph: Graph) -> None:
        """Take the initializer `value` out of `graph`'s table, keeping its uses (to adopt it elsewhere)."""
        if graph.initializers.get(value.name) is not value:
            raise RewriteError(f"'{value.name}' is not an initializer of this graph")
        del graph.initializers[value.name]

    def fold_to_initializer(self, value: Value, tensor: Tensor, graph: Graph) -> None:
        """`value`, an output of a node about to be erased, becomes an initializer of `graph` holding `tensor`
        (it keeps its uses and its name, unless the name is empty or taken by another initializer; its type
        becomes the tensor's). The caller erases the producer next. Users are notified as modified."""
        value.producer = None
        value.index = 0
        value.const = tensor
        value.type = TensorType(tensor.dtype, tuple(tensor.shape))
        if not value.name or (value.name in graph.initializers and graph.initializers[value.name] is not value):
            value.name = self.fresh_name(value.name or "folded")
        graph.add_initializer(value)
        for use in value.uses():
            self._notify("on_modify", use.node)

    def set_constant(self, value: Value, tensor: Tensor) -> None:
        """Give the initializer `value` a new payload (its type follows the tensor); users are notified."""
        if value.const is None:
            raise RewriteError(f"'{value.name}' is not a constant")
        value.const = tensor
        value.type = TensorType(tensor.dtype, tuple(tensor.shape))
        for use in value.uses():
            self._notify("on_modify", use.node)

    def set_graph_inputs(self, graph: Graph, values: Sequence[Value]) -> None:
        """Replace `graph`'s input list (e.g. drop weights that were listed as inputs); values keep their uses."""
        graph.inputs = list(values)
        self._constants = None

    def constants(self) -> Constants:
        """Which values are really constants (`ir.constants`), for the target as it is now."""
        if self._constants is None:
            self._constants = Constants(self.graphs())
        return self._constants

    def remove_function(self, key: tuple) -> None:
        """Drop a model-local function (domain, name, overload) that nothing calls."""
        if self.model is None or key not in self.model.functions:
            raise RewriteError(f"no model-local function {key!r}")
        for n in self.model.functions[key].graph:
            self._notify("on_erase", n)
        del self.model.functions[key]
        self._outputs = None
