"""optc's graph IR: Value, Use, Node, Graph, Function, Model.

Use-def chains are kept right by construction: a node's inputs are read-only and change only through
`Node.set_input` (O(1): a value's uses are the keys of a dict). The node list of a graph is a doubly linked
list that is safe to mutate while it is being iterated. Node attributes are decoded from their ONNX protos on
first access, so importing a large model costs little more than walking it.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import operator
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import onnx

from ..errors import OptcError
from .tensors import NumpyTensor, SparseTensor, Tensor
from .types import DataType, TensorType, UnsupportedTypeFeature, ValueType, type_from_proto


@contextlib.contextmanager
def gc_paused(promote: bool = False):
    """Pause the cyclic garbage collector while building or walking large graphs.

    Nodes and values reference each other, so every allocation burst of an import triggers full collections
    that rescan the whole (growing) graph: quadratic time for no garbage. Pausing it makes import linear.

    With `promote=True` (after building a graph), the objects created meanwhile move straight to the oldest
    generation (`gc.freeze()` then `gc.unfreeze()`), instead of being scanned by the young generations'
    collections that would follow the pause: they are long-lived, and that scan costs as much as the import.
    Objects promoted so are not counted by the collector's own trigger for full collections, so models
    dropped since (cyclic garbage) would never be freed in a process that loads model after model: once
    `_PROMOTED_LIMIT` objects were promoted with no full collection since, the next `promote=True` pause
    starts with one.
    """
    global _promoted, _full_collections
    if promote:
        full = gc.get_stats()[2]["collections"]
        if full != _full_collections:  # a full collection ran: what was promoted before has been looked at
            _promoted, _full_collections = 0, full
        elif _promoted > _PROMOTED_LIMIT:
            gc.collect()
            _promoted, _full_collections = 0, gc.get_stats()[2]["collections"]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if promote:
            _promoted += gc.get_count()[0]  # objects created (and still alive) since the last collection
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


_PROMOTED_LIMIT = 500_000
_promoted = 0  # objects promoted by `gc_paused(promote=True)` since the last full collection ...
_full_collections = 0  # ... whose count (of `gc.get_stats()`) was this


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<pending>"


_PENDING: Any = _Pending()  # `Value._type` while the type is still to be decoded from the imported ValueInfoProto


_NO_ATTRS: Any = MappingProxyType({})  # `Node._attrs` of an imported node without (decoded) attributes


class Use(NamedTuple):
    """One use of a value: input `index` of `node`."""

    node: Node
    index: int


class Value:
    """An SSA value: produced by one node output, a graph input, or an initializer (`const`).

    An imported value remembers its ValueInfoProto (`_vi`): while the name, type, doc string and meta are
    unchanged, export copies that proto instead of encoding it again. The type, doc string and metadata of a
    node output's value_info are decoded from it on first access (`_type is _PENDING` until then), so import
    does not decode types nothing reads. Reading or writing any of them (or the name) decodes them first;
    only setting the type skips decoding the old one. A type optc cannot represent is refused then, with an
    `OptcError` (graph inputs and outputs are decoded, and checked, at import).
    """

    __slots__ = ("_name", "_type", "_vi_proto", "producer", "index", "const", "_uses", "_doc_string", "_meta")

    def __init__(
        self,
        name: str = "",
        type: ValueType | None = None,  # noqa: A002 - mirrors ONNX's field name
        const: Tensor | SparseTensor | None = None,
    ):
        self._name = name
        self._type = type
        self._vi_proto: onnx.ValueInfoProto | None = None
        self.producer: Node | None = None
        self.index = 0
        self.const = const
        self._uses: dict[Use, None] = {}
        self._doc_string = ""
        self._meta: dict[str, Any] | None = None

    # -- name -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if name != self._name:
            if self._type is _PENDING:
                self._decode_vi()
            self._name = name
            self._forget_protos()

    def _forget_protos(self) -> None:
        """Drop the imported protos that spell this value's old name (its own, its producer's, its users')."""
        self._vi_proto = None
        p = self.producer
        if p is not None:
            p._proto = None
        for use in self._uses:
            use.node._proto = None

    # -- type, doc string, meta (decoded from the imported ValueInfoProto on first access) -------------
    @property
    def type(self) -> ValueType | None:
        t = self._type
        if t is _PENDING:
            t = self._decode_vi()
        return t

    @type.setter
    def type(self, t: ValueType | None) -> None:
        if self._type is _PENDING:  # the old type is not needed: only the doc string and metadata
            self._decode_vi(with_type=False)
        elif t is not self._type:
            self._vi_proto = None  # the imported proto spells the old type
        self._type = t

    @property
    def doc_string(self) -> str:
        if self._type is _PENDING:
            self._decode_vi()
        return self._doc_string

    @doc_string.setter
    def doc_string(self, doc: str) -> None:
        if self._type is _PENDING:
            self._decode_vi()
        if doc != self._doc_string:
            self._vi_proto = None
        self._doc_string = doc

    @property
    def meta(self) -> dict[str, Any] | None:
        if self._type is _PENDING:
            self._decode_vi()
        return self._meta

    @meta.setter
    def meta(self, meta: dict[str, Any] | None) -> None:
        if self._type is _PENDING:
            self._decode_vi()
        self._meta = meta

    @property
    def _vi(self) -> onnx.ValueInfoProto | None:
        """The imported ValueInfoProto that export may copy (None: export encodes the value's own info)."""
        return self._vi_proto

    @_vi.setter
    def _vi(self, vi: onnx.ValueInfoProto | None) -> None:
        if self._type is _PENDING:  # dropping (or replacing) the proto must not lose what it says
            self._decode_vi()
        self._vi_proto = vi

    def _decode_vi(self, with_type: bool = True) -> ValueType | None:
        """Decode the pending ValueInfoProto: type, doc string and metadata_props. The proto stays for export
        to copy only when it holds nothing else than the name and the type (and, `with_type=False`, when the
        caller is about to replace the type, not at all)."""
        vi = self._vi_proto
        t = None
        if not with_type:
            self._vi_proto = None
        elif vi.HasField("type"):
            try:
                t = type_from_proto(vi.type)
            except ValueError as exc:  # UnsupportedTypeFeature, or an element type that does not exist
                kind = "unsupported" if isinstance(exc, UnsupportedTypeFeature) else "invalid"
                raise OptcError(f"{kind} model: the type of value '{self._name}': {exc}") from None
        self._type = t
        doc = vi.doc_string
        if doc or len(vi.metadata_props):
            self._doc_string = doc
            if len(vi.metadata_props):
                props = {p.key: p.value for p in vi.metadata_props}
                self._meta = {**(self._meta or {}), "onnx.metadata_props": props}
            self._vi_proto = None  # export encodes these fields anew (as it would for a value built by hand)
        return t

    # -- uses -------------------------------------------------------------------------------------
    def uses(self) -> tuple[Use, ...]:
        """A snapshot of the uses, in insertion order (safe to mutate the graph while iterating it)."""
        return tuple(self._uses)

    @property
    def num_uses(self) -> int:
        return len(self._uses)

    def users(self) -> list[Node]:
        """The distinct nodes that use this value, in order of first use."""
        return list(dict.fromkeys(u.node for u in self._uses))

    def replace_all_uses_with(self, other: Value | None) -> None:
        """Point every user of this value at `other` instead (graph outputs are not touched)."""
        if other is self:
            return
        for use in tuple(self._uses):
            use.node.set_input(use.index, other)

    # -- type shortcuts ---------------------------------------------------------------------------
    @property
    def dtype(self) -> DataType | None:
        t = self.type
        if t is not None and hasattr(t, "dtype"):
            return t.dtype
        if self.const is not None:
            return self.const.dtype
        return None

    @property
    def shape(self) -> tuple | None:
        t = self.type
        if isinstance(t, TensorType) and t.shape is not None:
            return t.shape
        if self.const is not None:
            return self.const.shape
        return None

    @property
    def rank(self) -> int | None:
        s = self.shape
        return None if s is None else len(s)

    @property
    def is_initializer(self) -> bool:
        return self.const is not None

    def const_value(self) -> np.ndarray | None:
        """The constant's data if this value is an initializer or a Constant node's output."""
        if self.const is not None:
            return self.const.numpy()
        p = self.producer
        if p is not None and p.op_type == "Constant" and p.domain == "":
            return constant_node_value(p)
        return None

    def __repr__(self) -> str:
        return f"Value(%{self.name or '?'}: {self.type})"


class AttrType(enum.IntEnum):
    """ONNX attribute types, numbered as in `onnx.AttributeProto.AttributeType`."""

    UNDEFINED = 0
    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSOR = 11
    SPARSE_TENSORS = 12
    TYPE_PROTO = 13
    TYPE_PROTOS = 14


class Attr:
    """A typed node attribute. `ref_attr_name` makes it a reference to a function's attribute."""

    __slots__ = ("name", "type", "value", "ref_attr_name", "doc_string")

    def __init__(self, name: str, type: AttrType, value: Any, ref_attr_name: str = "", doc_string: str = ""):  # noqa: A002
        self.name = name
        self.type = AttrType(type)
        self.value = value
        self.ref_attr_name = ref_attr_name
        self.doc_string = doc_string

    @classmethod
    def infer(cls, name: str, value: Any) -> Attr:
        """An attribute whose type is inferred from a Python value."""
        return cls(name, infer_attr_type(value), value)

    def __repr__(self) -> str:
        return f"Attr({self.name}={self.value!r})"


def infer_attr_type(value: Any) -> AttrType:
    """The attribute type for a Python value (int, float, str, Tensor, Graph or lists of them)."""
    if isinstance(value, bool | int | np.integer):
        return AttrType.INT
    if isinstance(value, float | np.floating):
        return AttrType.FLOAT
    if isinstance(value, str | bytes):
        return AttrType.STRING
    if isinstance(value, Tensor | np.ndarray):
        return AttrType.TENSOR
    if isinstance(value, SparseTensor):
        return AttrType.SPARSE_TENSOR
    if isinstance(value, Graph):
        return AttrType.GRAPH
    if isinstance(value, list | tuple):
        if not value:
            raise TypeError("cannot infer the type of an empty list attribute")
        first = infer_attr_type(value[0])
        plural = {
            AttrType.INT: AttrType.INTS, AttrType.FLOAT: AttrType.FLOATS, AttrType.STRING: AttrType.STRINGS,
            AttrType.TENSOR: AttrType.TENSORS, AttrType.GRAPH: AttrType.GRAPHS,
            AttrType.SPARSE_TENSOR: AttrType.SPARSE_TENSORS,
        }[first]
        if plural == AttrType.INTS and any(isinstance(v, float) for v in value):
            return AttrType.FLOATS
        return plural
    raise TypeError(f"cannot infer an attribute type for {type(value).__name__}")


class Node:
    """An operation: op key `(domain, op_type)`, inputs (Value or None for an omitted optional input),
    outputs, typed attributes (decoded lazily) and subgraphs inside GRAPH attributes.

    An imported node keeps its NodeProto (`_proto`) so that export can copy it unchanged. Every change that
    export would spell differently drops it: `set_input(s)`, assigning `outputs`, reading `attributes` (the
    returned dict and Attrs are mutable), renaming an input or output value. Its op key, name, doc string
    and overload are compared with `_proto_key` at export, and metadata_props must stay empty.
    """

    __slots__ = (
        "op_type", "domain", "overload", "name", "doc_string", "version", "_inputs", "_outputs", "_attrs",
        "_attr_protos", "metadata_props", "meta", "graph", "_prev", "_next", "_proto", "_proto_key",
    )

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        attributes: dict[str, Any] | Iterable[Attr] | None = None,
        *,
        domain: str = "",
        num_outputs: int = 1,
        outputs: Sequence[Value | None] | None = None,
        name: str = "",
        version: int | None = None,
        overload: str = "",
    ):
        self.op_type = op_type
        self.domain = domain
        self.overload = overload
        self.name = name
        self.doc_string = ""
        self.version = version
        self.metadata_props: dict[str, str] | None = None
        self.meta: dict[str, Any] | None = None
        self.graph: Graph | None = None
        self._prev = self._next = None
        self._proto: onnx.NodeProto | None = None
        self._proto_key: tuple | None = None
        self._attr_protos = None
        self._attrs: dict[str, Attr] = {}
        if attributes:
            items = attributes.items() if isinstance(attributes, dict) else ((a.name, a) for a in attributes)
            for k, v in items:
                a = v if isinstance(v, Attr) else Attr.infer(k, v)
                self._attrs[k] = a
                _adopt_subgraphs(self, a)
        self._inputs = tuple(inputs)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses[Use(self, i)] = None
        if outputs is None:
            outputs = [Value() for _ in range(num_outputs)]
        self._outputs: tuple[Value | None, ...] = tuple(outputs)
        for i, v in enumerate(self._outputs):
            if v is not None:
                v.producer = self
                v.index = i

    # -- inputs -----------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Read-only; change one with `set_input`."""
        return self._inputs

    def set_input(self, index: int, value: Value | None) -> None:
        """Replace input `index` (extending with None as needed), keeping use-def chains right."""
        inputs = list(self._inputs)
        if index >= len(inputs):
            inputs.extend([None] * (index + 1 - len(inputs)))
        old = inputs[index]
        if old is value:
            return
        self._proto = None
        if old is not None:
            old._uses.pop(Use(self, index), None)
        if value is not None:
            value._uses[Use(self, index)] = None
        inputs[index] = value
        while inputs and inputs[-1] is None:
            inputs.pop()
        self._inputs = tuple(inputs)

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        """Replace all inputs."""
        self._proto = None
        self._detach_inputs()
        self._inputs = tuple(values)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses[Use(self, i)] = None

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop(Use(self, i), None)

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        """The output values, in order."""
        return self._outputs

    @outputs.setter
    def outputs(self, values: Sequence[Value | None]) -> None:
        self._outputs = tuple(values)
        self._proto = None

    @property
    def output(self) -> Value:
        """The single output (error if the node has several)."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op_type} has {len(self.outputs)} outputs")
        return self.outputs[0]

    # -- attributes -------------------------------------------------------------------------------
    @property
    def attributes(self) -> dict[str, Attr]:
        """Attributes by name (decoded from ONNX on first access)."""
        self._proto = None  # the caller may change the dict or its Attrs
        g = self.graph
        if g is not None:
            g._no_subgraphs = False  # ... and add a subgraph to it
        if self._attr_protos is not None:
            from .onnx_import import decode_attributes

            protos, self._attr_protos = self._attr_protos, None
            self._attrs = decode_attributes(protos, self)
        elif self._attrs is _NO_ATTRS:
            self._attrs = {}
        return self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's value, or `default` when it is absent."""
        a = self.attributes.get(name)
        return default if a is None else a.value

    def set_attr(self, name: str, value: Any, type: AttrType | None = None) -> None:  # noqa: A002
        """Set (or replace) an attribute; its type is inferred unless given."""
        a = Attr(name, type if type is not None else infer_attr_type(value), value)
        _adopt_subgraphs(self, a)
        self.attributes[name] = a

    def subgraphs(self) -> list[Graph]:
        """Graphs held in this node's attributes (If/Loop/Scan bodies)."""
        # GRAPH attributes are always decoded at import, so still-encoded attributes hold no graphs.
        if self._attr_protos is not None or not self._attrs:
            return []
        found = []
        for a in self._attrs.values():
            if a.type == AttrType.GRAPH:
                found.append(a.value)
            elif a.type == AttrType.GRAPHS:
                found.extend(a.value)
        return found

    @property
    def key(self) -> tuple[str, str]:
        """The op key `(domain, op_type)`."""
        return (self.domain, self.op_type)

    def prev(self) -> Node | None:
        """The previous node in the graph, or None."""
        p = self._prev
        return p if isinstance(p, Node) else None

    def next(self) -> Node | None:
        """The next node in the graph, or None."""
        n = self._next
        return n if isinstance(n, Node) else None

    def __repr__(self) -> str:
        op = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        return f"Node({op}{' ' + self.name if self.name else ''})"


def _adopt_subgraphs(node: Node, a: Attr) -> None:
    if a.type == AttrType.GRAPH:
        a.value.parent = node
    elif a.type == AttrType.GRAPHS:
        for g in a.value:
            g.parent = node


def constant_node_value(node: Node) -> np.ndarray | None:
    """The value of a `Constant` node as a numpy array (None for an unusual or sparse payload)."""
    attrs = node.attributes
    if len(attrs) != 1:
        return None
    (a,) = attrs.values()
    if a.ref_attr_name:
        return None
    v = a.value
    if a.name == "value" and isinstance(v, Tensor):
        return v.numpy()
    dtype = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}.get(a.name)
    if dtype is not None:
        return np.array(v, dtype=dtype)
    if a.name in ("value_string", "value_strings"):
        return np.array(v, dtype=object)
    return None


_decoded_attrs = operator.attrgetter("_attrs")


class _Head:
    """Sentinel of a graph's node list."""

    __slots__ = ("_prev", "_next")


class Graph:
    """A dataflow graph: inputs, outputs, initializers, and nodes kept in topological order.

    Iterating the graph is safe while nodes are inserted or removed: a removed node keeps its forward link,
    so an iterator standing on it moves on to the next live node.
    """

    __slots__ = (
        "name", "inputs", "outputs", "initializers", "doc_string", "parent", "metadata_props",
        "quantization_annotation", "extra_value_info", "_head", "_len", "_by_op", "_no_subgraphs",
    )

    def __init__(
        self,
        inputs: Sequence[Value] = (),
        outputs: Sequence[Value] = (),
        nodes: Iterable[Node] = (),
        initializers: Iterable[Value] = (),
        name: str = "",
    ):
        self.name = name
        self.inputs: list[Value] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.initializers: dict[str, Value] = {}
        self.doc_string = ""
        self.parent: Node | None = None
        self.metadata_props: dict[str, str] | None = None
        self.quantization_annotation: list[onnx.TensorAnnotation] = []
        self.extra_value_info: list[onnx.ValueInfoProto] = []
        head = _Head()
        head._prev = head._next = head
        self._head = head
        self._len = 0
        self._by_op: dict[tuple[str, str], dict[Node, None]] = {}
        # True while no node can hold a subgraph: none was linked by `_link` (nodes built in Python) and no
        # node's `attributes` were handed out (import sets it for the nodes it links itself).
        self._no_subgraphs = True
        for v in initializers:
            self.add_initializer(v)
        for n in nodes:
            self.append(n)

    # -- initializers -----------------------------------------------------------------------------
    def add_initializer(self, value: Value) -> Value:
        """Register a constant value (`value.const` must be set) under its name."""
        if value.const is None:
            raise ValueError(f"initializer '{value.name}' has no constant payload")
        if not value.name:
            raise ValueError("an initializer needs a name")
        if value.name in self.initializers and self.initializers[value.name] is not value:
            raise ValueError(f"initializer '{value.name}' is already defined")
        self.initializers[value.name] = value
        return value

    def fresh_initializer(self, array: np.ndarray | Tensor, hint: str = "const") -> Value:
        """A new initializer under a name that no value of this graph (or its model) uses yet."""
        tensor = array if isinstance(array, Tensor) else NumpyTensor(np.asarray(array))
        name = self.fresh_name(hint)
        return self.add_initializer(Value(name, const=tensor))

    def fresh_name(self, hint: str) -> str:
        """A value name unused in this graph and its enclosing graphs."""
        taken = self._names_in_scope()
        if hint not in taken:
            return hint
        i = 1
        while f"{hint}_{i}" in taken:
            i += 1
        return f"{hint}_{i}"

    def _names_in_scope(self) -> set[str]:
        names: set[str] = set()
        g: Graph | None = self
        while g is not None:
            names.update(g.initializers)
            names.update(v.name for v in g.inputs)
            for n in g.all_nodes():
                names.update(o.name for o in n.outputs if o is not None)
            g = g.parent.graph if g.parent is not None else None
        return names

    # -- node list --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Node]:
        head = self._head
        node = head._next
        while node is not head:
            if node.graph is self:
                yield node
            node = node._next

    def __reversed__(self) -> Iterator[Node]:
        head = self._head
        node = head._prev
        while node is not head:
            if node.graph is self:
                yield node
            node = node._prev

    @property
    def nodes(self) -> list[Node]:
        """A snapshot list of the nodes, in order."""
        return list(self)

    def all_nodes(self) -> Iterator[Node]:
        """Every node of this graph and, recursively, of its subgraphs (parents before bodies)."""
        for n in self:
            yield n
            if n._attrs and n._attr_protos is None:
                for g in n.subgraphs():
                    yield from g.all_nodes()

    def subgraphs(self) -> Iterator[Graph]:
        """Every graph nested in this one's nodes, recursively."""
        if not self._may_have_subgraphs():
            return
        for n in self:
            if n._attrs and n._attr_protos is None:
                for g in n.subgraphs():
                    yield g
                    yield from g.subgraphs()

    def _may_have_subgraphs(self) -> bool:
        """False when no node holds a subgraph: a scan of the op index at C speed, not of the linked list.

        Subgraphs live in decoded attributes only (GRAPH attributes are always decoded at import): when no
        node has decoded attributes, there are none. No scan at all while `_no_subgraphs` holds.
        """
        if self._no_subgraphs:
            return False
        return any(map(len, map(_decoded_attrs, chain.from_iterable(self._by_op.values()))))

    def first(self) -> Node | None:
        n = self._head._next
        return None if n is self._head else n

    def last(self) -> Node | None:
        n = self._head._prev
        return None if n is self._head else n

    def _link(self, node: Node, prev, nxt) -> None:
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        node.graph = self
        node._prev, node._next = prev, nxt
        prev._next = node
        nxt._prev = node
        self._len += 1
        key = (node.domain, node.op_type)
        bucket = self._by_op.get(key)
        if bucket is None:
            self._by_op[key] = {node: None}
        else:
            bucket[node] = None
        # `remove` dropped the uses of a node taken out of a graph: a node moved back in reads its inputs again.
        _attach_inputs(node)
        if node._attr_protos is None:  # decoded attributes (or a dict handed out) may hold a subgraph
            self._no_subgraphs = False
        if node._attrs and node._attr_protos is None:
            for g in node.subgraphs():
                for inner in g.all_nodes():
                    _attach_inputs(inner)

    def append(self, *nodes: Node) -> None:
        """Add nodes at the end."""
        for node in nodes:
            self._link(node, self._head._prev, self._head)

    def insert_before(self, anchor: Node, *nodes: Node) -> None:
        """Insert nodes, in order, before `anchor`."""
        self._check_anchor(anchor)
        for node in nodes:
            self._link(node, anchor._prev, anchor)

    def insert_after(self, anchor: Node, *nodes: Node) -> None:
        """Insert nodes, in order, after `anchor`."""
        self._check_anchor(anchor)
        for node in nodes:
            self._link(node, anchor, anchor._next)
            anchor = node

    def _check_anchor(self, anchor: Node) -> None:
        if anchor.graph is not self:
            raise ValueError(f"{anchor!r} is not in this graph")

    def remove(self, node: Node, safe: bool = True) -> None:
        """Remove a node and drop its uses of its inputs.

        With `safe=True` (the default), refuse when an output is still used or is a graph output.
        """
        if node.graph is not self:
            raise ValueError(f"{node!r} is not in this graph")
        if safe:
            for out in node.outputs:
                if out is None:
                    continue
                if out._uses:
                    raise ValueError(f"cannot remove {node!r}: output '{out.name}' is still used")
                if any(o is out for o in self.outputs):
                    raise ValueError(f"cannot remove {node!r}: output '{out.name}' is a graph output")
        node._prev._next = node._next
        node._next._prev = node._prev
        node.graph = None  # keep node._next so a live iterator moves on
        self._len -= 1
        bucket = self._by_op[(node.domain, node.op_type)]
        del bucket[node]
        node._detach_inputs()
        for g in node.subgraphs():
            for inner in g.all_nodes():
                inner._detach_inputs()

    def nodes_by_op(self, op_type: str, domain: str = "") -> list[Node]:
        """The nodes of this graph (not subgraphs) with op key `(domain, op_type)`, in insertion order."""
        return list(self._by_op.get((domain, op_type), ()))

    def op_keys(self) -> list[tuple[str, str]]:
        """Op keys present in this graph."""
        return [k for k, v in self._by_op.items() if v]

    def is_output(self, value: Value) -> bool:
        """True if `value` is one of this graph's outputs."""
        return any(o is value for o in self.outputs)

    def sort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where dependencies allow).

        Raises ValueError when the graph has a cycle.
        """
        nodes = list(self)
        pos = {n: i for i, n in enumerate(nodes)}
        pending = {}
        users: dict[Node, list[Node]] = {n: [] for n in nodes}
        for n in nodes:
            deps = set()
            for v in _node_free_inputs(n):
                p = v.producer
                if p is not None and p in pos and p is not n:
                    deps.add(p)
            pending[n] = len(deps)
            for d in deps:
                users[d].append(n)
        import heapq

        ready = [(pos[n], id(n), n) for n in nodes if pending[n] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, n = heapq.heappop(ready)
            order.append(n)
            for u in users[n]:
                pending[u] -= 1
                if pending[u] == 0:
                    heapq.heappush(ready, (pos[u], id(u), u))
        if len(order) != len(nodes):
            stuck = next(n for n in nodes if pending[n] > 0)
            raise ValueError(f"the graph has a cycle through {stuck!r}")
        head = self._head
        prev = head
        for n in order:
            prev._next = n
            n._prev = prev
            prev = n
        prev._next = head
        head._prev = prev

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._len} nodes)"


def _attach_inputs(node: Node) -> None:
    """Register the node's uses of its inputs (a no-op for those already registered)."""
    for i, v in enumerate(node._inputs):
        if v is not None:
            v._uses[Use(node, i)] = None


def _node_free_inputs(node: Node) -> Iterator[Value]:
    """The node's inputs plus the outer-scope values its subgraphs read."""
    for v in node.inputs:
        if v is not None:
            yield v
    for g in node.subgraphs():
        yield from outer_scope_values(g)


def outer_scope_values(graph: Graph) -> list[Value]:
    """Values read inside `graph` (or its subgraphs) that are defined outside it."""
    defined: set[int] = {id(v) for v in graph.inputs}
    defined.update(id(v) for v in graph.initializers.values())
    found: dict[int, Value] = {}
    for n in graph.all_nodes():
        for g in n.subgraphs():
            defined.update(id(v) for v in g.inputs)
            defined.update(id(v) for v in g.initializers.values())
        for o in n.outputs:
            if o is not None:
                defined.add(id(o))
    for n in graph.all_nodes():
        for v in n.inputs:
            if v is not None and id(v) not in defined:
                found.setdefault(id(v), v)
    return list(found.values())


class Function:
    """A model-local function: a body graph, its attribute parameters and its own opset imports."""

    __slots__ = ("domain", "name", "overload", "graph", "attributes", "attribute_defaults", "opset_imports",
                 "doc_string", "metadata_props")

    def __init__(self, domain: str, name: str, graph: Graph, *, overload: str = "",
                 attributes: Sequence[str] = (), attribute_defaults: dict[str, Attr] | None = None,
                 opset_imports: dict[str, int] | None = None):
        self.domain = domain
        self.name = name
        self.overload = overload
        self.graph = graph
        self.attributes = list(attributes)
        self.attribute_defaults = dict(attribute_defaults or {})
        self.opset_imports = dict(opset_imports or {})
        self.doc_string = ""
        self.metadata_props: dict[str, str] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.name, self.overload)

    def __repr__(self) -> str:
        return f"Function({self.domain}::{self.name}, {len(self.graph)} nodes)"


class Model:
    """A model: the main graph, opset imports, metadata and model-local functions."""

    __slots__ = ("graph", "ir_version", "opset_imports", "producer_name", "producer_version", "domain",
                 "model_version", "doc_string", "metadata_props", "functions", "base_dir")

    def __init__(self, graph: Graph, opset_imports: dict[str, int] | None = None, *, ir_version: int = 10,
                 functions: Iterable[Function] = ()):
        self.graph = graph
        self.ir_version = ir_version
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 21})
        self.producer_name = ""
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.functions: dict[tuple[str, str, str], Function] = {f.key: f for f in functions}
        self.base_dir: str | None = None

    def opset(self, domain: str = "") -> int | None:
        """The imported opset version of a domain (None if not imported)."""
        return self.opset_imports.get(domain)

    def graphs(self) -> Iterator[Graph]:
        """The main graph, every function body, and all their subgraphs."""
        for root in (self.graph, *(f.graph for f in self.functions.values())):
            yield root
            yield from root.subgraphs()

    def __repr__(self) -> str:
        return f"Model({self.graph!r}, opsets={self.opset_imports})"
