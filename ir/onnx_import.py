"""ONNX ModelProto -> optc IR, losslessly.

Everything the ONNX format can carry is kept (opsets, metadata, doc strings, node names, value_info, raw/typed/
external/sparse initializers, subgraphs with outer-scope references, model-local functions, custom domains).
What optc cannot represent (training_info, configuration, device configurations, segments, denotations) is
refused with an `OptcError`, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from ..errors import OptcError
from .core import _NO_ATTRS, _PENDING, Attr, AttrType, Function, Graph, Model, Node, Use, Value, gc_paused
from .tensors import _ELEMENT_TYPES, ProtoTensor, SparseTensor, tensor_from_proto
from .types import UnsupportedTypeFeature, type_from_proto

_GRAPH_ATTRS = (5, 10)  # GRAPH, GRAPHS


def from_onnx(proto: onnx.ModelProto, base_dir: str | None = None) -> Model:
    """Import an ONNX model. The IR shares tensor and attribute data with `proto`: do not mutate it after.

    `base_dir` is the directory external-data locations are relative to. Raises OptcError (one line) for an
    invalid model (no graph, undefined or doubly defined values, bad attributes) and for what the IR does not
    hold (training_info, multi-device configurations).
    """
    try:
        with gc_paused(promote=True):
            return _Importer(base_dir).model(proto)
    except UnsupportedTypeFeature as exc:
        raise OptcError(f"unsupported model: {exc}") from None
    except ValueError as exc:  # a malformed part, e.g. an element type that does not exist
        raise OptcError(f"invalid model: {exc}") from None


class _Importer:
    def __init__(self, base_dir: str | None):
        self.base_dir = base_dir
        self.types: dict[bytes, object] = {}
        self.forward_refs = 0  # forward references met so far (a graph that had some gets sorted)

    def model(self, mp: onnx.ModelProto) -> Model:
        if len(mp.training_info):
            raise OptcError("unsupported model: training_info is not supported")
        if len(mp.configuration):
            raise OptcError("unsupported model: configuration (multi-device) is not supported")
        if not mp.HasField("graph"):
            raise OptcError("invalid model: it has no graph")
        opsets: dict[str, int] = {}
        for o in mp.opset_import:
            if o.domain in opsets:
                raise OptcError(f"invalid model: opset domain '{o.domain}' is imported twice")
            opsets[o.domain] = o.version
        graph = self.graph(mp.graph, [])
        model = Model(graph, opsets, ir_version=mp.ir_version)
        model.producer_name = mp.producer_name
        model.producer_version = mp.producer_version
        model.domain = mp.domain
        model.model_version = mp.model_version
        model.doc_string = mp.doc_string
        model.metadata_props = {p.key: p.value for p in mp.metadata_props}
        model.base_dir = self.base_dir
        for fp in mp.functions:
            fn = self.function(fp)
            if fn.key in model.functions:
                raise OptcError(f"invalid model: function '{fp.domain}::{fp.name}' is defined twice")
            model.functions[fn.key] = fn
        return model

    def function(self, fp: onnx.FunctionProto) -> Function:
        g = Graph(name=fp.name)
        scope: dict[str, Value] = {}
        for name in fp.input:
            v = Value(name)
            if name in scope:
                raise OptcError(f"invalid model: function '{fp.name}' input '{name}' is defined twice")
            scope[name] = v
            g.inputs.append(v)
        self.nodes(g, fp.node, scope, [])
        self.value_info(g, fp.value_info, scope)
        for name in fp.output:
            v = scope.get(name)
            if v is None:
                raise OptcError(f"invalid model: function '{fp.name}' output '{name}' is not defined")
            g.outputs.append(v)
        defaults = {a.name: decode_attribute(a, self) for a in fp.attribute_proto}
        fn = Function(fp.domain, fp.name, g, overload=fp.overload, attributes=list(fp.attribute),
                      attribute_defaults=defaults, opset_imports={o.domain: o.version for o in fp.opset_import})
        fn.doc_string = fp.doc_string
        if len(fp.metadata_props):
            fn.metadata_props = {p.key: p.value for p in fp.metadata_props}
        return fn

    def graph(self, gp: onnx.GraphProto, outer: list[dict[str, Value]]) -> Graph:
        g = Graph(name=gp.name)
        g.doc_string = gp.doc_string
        if len(gp.metadata_props):
            g.metadata_props = {p.key: p.value for p in gp.metadata_props}
        scope: dict[str, Value] = {}
        for vi in gp.input:
            name = vi.name
            if name in scope:
                raise OptcError(f"invalid model: graph input '{name}' is defined twice")
            v = Value(name)
            self.set_value_info(v, vi)
            scope[name] = v
            g.inputs.append(v)
        base_dir = self.base_dir
        input_ids = {id(v) for v in g.inputs}
        scope_get = scope.get
        initializers = g.initializers
        element_types = _ELEMENT_TYPES
        new_tensor, new_value = _new_proto_tensor, _new_value
        for tp in gp.initializer:
            name = tp.name
            if tp.data_type in element_types and tp.data_location != _EXTERNAL and not tp.HasField("segment"):
                tensor = new_tensor(ProtoTensor)  # what tensor_from_proto returns, without its calls
                tensor.proto = tp
                tensor.name = name
                tensor.doc_string = tp.doc_string
            else:
                tensor = tensor_from_proto(tp, base_dir)  # external data, or the error for a bad tensor
            v = scope_get(name)
            if v is None:
                v = new_value(Value)
                v._name = name
                v._type = None
                v._vi_proto = None
                v.producer = None
                v.index = 0
                v._uses = {}
                v._doc_string = ""
                v._meta = None
                scope[name] = v
            elif v.const is not None or id(v) not in input_ids:
                self._add_initializer(g, scope, name, tensor, input_ids)  # the error
            v.const = tensor
            initializers[name] = v
        for sp in gp.sparse_initializer:
            self._add_initializer(g, scope, sp.values.name, SparseTensor(sp), input_ids)
        self.nodes(g, gp.node, scope, outer)
        self.value_info(g, gp.value_info, scope, {vi.name for vi in gp.output})
        for vi in gp.output:
            name = vi.name
            v = scope.get(name)
            if v is None:  # an outer-scope value: its own value_info is its enclosing graph's, not this output's
                v = _lookup(outer, name)
                if v is None:
                    raise OptcError(f"invalid model: graph output '{name}' is not produced by any node or input")
            elif v._type is None or v.producer is not None:
                self.set_value_info(v, vi)
            g.outputs.append(v)
        g.quantization_annotation = list(gp.quantization_annotation)
        return g

    def _add_initializer(self, g: Graph, scope: dict[str, Value], name: str, tensor, input_ids: set[int]) -> None:
        """Define initializer `name` (it may also be a graph input: `input_ids` are the ids of those)."""
        v = scope.get(name)
        if v is None:
            v = Value(name)
            scope[name] = v
        elif v.const is not None:
            raise OptcError(f"invalid model: initializer '{name}' is defined twice")
        elif id(v) not in input_ids:
            raise OptcError(f"invalid model: value '{name}' is defined twice")
        v.const = tensor
        g.initializers[name] = v

    def value_info(self, g: Graph, infos, scope: dict[str, Value], outputs=frozenset()) -> None:
        """Give typeless values the types of `infos`; other entries (and those of graph `outputs`, whose types
        export writes in `output`) are kept aside as they are.

        The entries are not decoded here: a value keeps its ValueInfoProto and decodes its type, doc string and
        metadata on first access (see `Value`); until then, export copies the proto as it is. Tools write
        value_info in node order: each entry is first compared with the node output after the last one found,
        and looked up by name only when that is not it."""
        scope_get = scope.get
        extra = g.extra_value_info
        pending = _PENDING
        head = g._head
        values = iter(())  # the node outputs after the last value found
        for vi in infos:
            name = vi.name
            v = next(values, None)
            if v is None or v._name != name:
                v = scope_get(name)
                if v is not None and v.producer is not None and v.producer.graph is g:
                    values = _outputs_after(v, head)
            if v is None or v._type is not None or name in outputs:
                extra.append(vi)
            else:
                v._type = pending
                v._vi_proto = vi

    def set_value_info(self, v: Value, vi: onnx.ValueInfoProto) -> None:
        """Set a value's type, doc string and metadata from a ValueInfoProto (decoded now: graph inputs and
        outputs are few, and a type optc cannot represent is refused at import)."""
        fields = vi.ListFields()
        if len(fields) == 2 and fields[0][0] is _VI_NAME and fields[1][0] is _VI_TYPE:
            v._type = self.decode_type(fields[1][1])
            v._doc_string = ""
            v._vi_proto = vi  # name and type only: export may copy it as it is
            return
        if vi.HasField("type"):
            v._type = self.decode_type(vi.type)
        v._vi_proto = None
        v._doc_string = vi.doc_string
        if len(vi.metadata_props):
            v._meta = {**(v._meta or {}), "onnx.metadata_props": {p.key: p.value for p in vi.metadata_props}}

    def decode_type(self, tp: onnx.TypeProto):
        """`type_from_proto`, memoized on the serialized proto (types are immutable, so they are shared)."""
        key = tp.SerializeToString()
        types = self.types
        t = types.get(key, _MISSING)
        if t is _MISSING:
            t = types[key] = type_from_proto(tp)
        return t

    def nodes(self, g: Graph, node_protos, scope: dict[str, Value], outer: list[dict[str, Value]]) -> None:
        """Import nodes in file order; forward references are resolved, then the graph is sorted.

        The hot loop of import, written out in one function: only the fields that are set are read
        (`ListFields`), objects are built without their constructors, and each node keeps its proto so that
        export can copy it while the node is unchanged."""
        forward: dict[str, Value] = {}
        forward_refs = self.forward_refs
        scope_get = scope.get
        scope_setdefault = scope.setdefault
        by_op = g._by_op
        by_op_get = by_op.get
        ops: dict[str, tuple] = {}  # op_type of the default domain -> (that string, its by_op bucket)
        ops_get = ops.get
        no_attrs = _NO_ATTRS
        has_subgraphs = False
        head = g._head
        last = head._prev
        count = 0
        new_node, new_value, new_use = _new_node, _new_value, _new_use
        node_cls, value_cls, use_cls = Node, Value, Use
        f_input, f_output, f_name, f_op_type, f_attribute, f_domain = _NODE_FIELDS
        graph_attrs = _GRAPH_ATTRS
        # An input named "" is an omitted optional input; a scope that defines "" takes the slow path.
        plain = "" not in scope
        for np_ in node_protos:
            ins = outs = attrs = ()
            op_type = domain = name = doc = overload = ""
            props = None
            for fd, val in np_.ListFields():
                if fd is f_input:
                    ins = val
                elif fd is f_output:
                    outs = val
                elif fd is f_name:
                    name = val
                elif fd is f_op_type:
                    op_type = val
                elif fd is f_attribute:
                    attrs = val
                elif fd is f_domain:
                    domain = val
                else:
                    num = fd.number
                    if num == 6:
                        doc = val
                    elif num == 8:
                        overload = val
                    elif num == 9:
                        props = {p.key: p.value for p in val}
                    elif num == 10:
                        raise OptcError("unsupported model: node device_configurations are not supported")
            if domain:
                key = (domain, op_type)
                bucket = by_op_get(key)
                if bucket is None:
                    bucket = by_op[key] = {}
            else:  # one op_type string per op (not one per node) and no key tuple to build
                entry = ops_get(op_type)
                if entry is None:
                    bucket = by_op_get(("", op_type))
                    if bucket is None:
                        bucket = by_op["", op_type] = {}
                    entry = ops[op_type] = (op_type, bucket)
                op_type, bucket = entry
            node = new_node(node_cls)
            bucket[node] = None
            node.op_type = op_type
            node.domain = domain
            node.overload = overload
            node.name = name
            node.doc_string = doc
            node.version = None
            node.meta = None
            node.metadata_props = props
            node.graph = g
            node._prev = last
            node._next = head
            last._next = node
            last = node
            count += 1
            # inputs: resolve the names, register the uses
            if not ins:
                node._inputs = ()
            else:
                inputs = list(map(scope_get, ins))
                i = 0
                for v in inputs:
                    if v is None:  # omitted, outer-scope or forward: the slow path (uses registered twice: no-op)
                        node._inputs = self.node_inputs(node, ins, scope, outer, forward)
                        break
                    v._uses[new_use(use_cls, (node, i))] = None
                    i += 1
                else:
                    node._inputs = tuple(inputs) if plain else self.node_inputs(node, ins, scope, outer, forward)
            # outputs: define the values (taking over forward references)
            if not outs:
                node._outputs = ()
            else:
                outputs = list(outs)  # the names, replaced by their values
                i = 0
                for oname in outputs:
                    if not oname:
                        outputs[i] = None
                        i += 1
                        continue
                    v = forward.pop(oname, None) if forward else None
                    if v is None:
                        v = new_value(value_cls)
                        v._name = oname
                        v._type = None
                        v._vi_proto = None
                        v.const = None
                        v._uses = {}
                        v._doc_string = ""
                        v._meta = None
                    v.producer = node
                    v.index = i
                    if scope_setdefault(oname, v) is not v:
                        raise OptcError(f"invalid model: value '{oname}' is defined twice")
                    outputs[i] = v
                    i += 1
                node._outputs = tuple(outputs)
            # attributes: kept encoded (decoded on first access), except those holding subgraphs
            holds_graph = False
            for a in attrs:
                if a.type in graph_attrs:
                    holds_graph = True
                    break
            if holds_graph:
                node._attr_protos = None
                node._attrs = decode_attributes(attrs, node, self, [scope, *outer])
                node._proto = node._proto_key = None
                has_subgraphs = True
            else:
                node._attr_protos = attrs if attrs else None
                node._attrs = no_attrs
                if props is None:
                    node._proto = np_
                    node._proto_key = (op_type, domain, name, doc, overload)
                else:
                    node._proto = node._proto_key = None
        head._prev = last
        g._len += count
        if has_subgraphs:
            g._no_subgraphs = False
        if forward:
            raise OptcError(f"invalid model: node input '{next(iter(forward))}' is not defined by any node, input "
                            f"or initializer")
        if self.forward_refs != forward_refs:
            try:
                g.sort()
            except ValueError as exc:
                raise OptcError(f"invalid model: {exc}") from None

    def node_inputs(self, node: Node, names, scope: dict[str, Value], outer: list[dict[str, Value]],
                    forward: dict[str, Value]) -> tuple:
        """Resolve input names (omitted, outer scopes, forward references) and register the uses."""
        inputs = []
        scope_get = scope.get
        i = 0
        for name in names:
            if not name:
                inputs.append(None)
                i += 1
                continue
            v = scope_get(name)
            if v is None:
                v = _lookup(outer, name)
                if v is None:
                    v = forward.get(name)
                    if v is None:
                        v = forward[name] = Value(name)
                        self.forward_refs += 1
            v._uses[_new_use(Use, (node, i))] = None
            inputs.append(v)
            i += 1
        return tuple(inputs)


_new_node = Node.__new__
_new_value = Value.__new__
_new_proto_tensor = ProtoTensor.__new__
_EXTERNAL = onnx.TensorProto.EXTERNAL
_new_use = tuple.__new__  # Use(node, i) without NamedTuple's Python-level __new__
_MISSING = object()
_VI_NAME = onnx.ValueInfoProto.DESCRIPTOR.fields_by_name["name"]
_VI_TYPE = onnx.ValueInfoProto.DESCRIPTOR.fields_by_name["type"]
_NODE_FIELDS = tuple(onnx.NodeProto.DESCRIPTOR.fields_by_name[f]
                     for f in ("input", "output", "name", "op_type", "attribute", "domain"))


def _outputs_after(v: Value, head) -> Iterator[Value]:
    """The node outputs (not None) that follow `v` in node order."""
    node = v.producer
    outs = node._outputs
    for i in range(v.index + 1, len(outs)):
        o = outs[i]
        if o is not None:
            yield o
    node = node._next
    while node is not head:
        for o in node._outputs:
            if o is not None:
                yield o
        node = node._next


def _lookup(outer: list[dict[str, Value]], name: str) -> Value | None:
    for scope in outer:
        v = scope.get(name)
        if v is not None:
            return v
    return None


def decode_attributes(protos, node: Node, importer: _Importer | None = None,
                      scopes: list[dict[str, Value]] | None = None) -> dict[str, Attr]:
    """Decode a node's AttributeProtos; GRAPH attributes become optc Graphs owned by `node`."""
    importer = importer or _Importer(None)
    attrs: dict[str, Attr] = {}
    for ap in protos:
        a = decode_attribute(ap, importer, scopes or [])
        if a.name in attrs:
            raise OptcError(f"invalid model: attribute '{a.name}' of {node.op_type} is given twice")
        if a.type == AttrType.GRAPH:
            a.value.parent = node
        elif a.type == AttrType.GRAPHS:
            for sub in a.value:
                sub.parent = node
        attrs[a.name] = a
    return attrs


def decode_attribute(ap: onnx.AttributeProto, importer: _Importer,
                     scopes: list[dict[str, Value]] | None = None) -> Attr:
    """Decode one AttributeProto into an Attr (tensors stay lazy)."""
    t = ap.type
    if ap.ref_attr_name:
        return Attr(ap.name, AttrType(t), None, ap.ref_attr_name, ap.doc_string)
    base_dir = importer.base_dir
    if t == 1:
        value = ap.f
    elif t == 2:
        value = ap.i
    elif t == 3:
        value = _decode_str(ap.s)
    elif t == 4:
        value = tensor_from_proto(ap.t, base_dir)
    elif t == 5:
        value = importer.graph(ap.g, scopes or [])
    elif t == 6:
        value = list(ap.floats)
    elif t == 7:
        value = list(ap.ints)
    elif t == 8:
        value = [_decode_str(s) for s in ap.strings]
    elif t == 9:
        value = [tensor_from_proto(x, base_dir) for x in ap.tensors]
    elif t == 10:
        value = [importer.graph(x, scopes or []) for x in ap.graphs]
    elif t == 11:
        value = SparseTensor(ap.sparse_tensor)
    elif t == 12:
        value = [SparseTensor(x) for x in ap.sparse_tensors]
    elif t == 13:
        value = type_from_proto(ap.tp)
    elif t == 14:
        value = [type_from_proto(x) for x in ap.type_protos]
    else:
        raise OptcError(f"invalid model: attribute '{ap.name}' has no type")
    return Attr(ap.name, AttrType(t), value, "", ap.doc_string)


def _decode_str(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b
