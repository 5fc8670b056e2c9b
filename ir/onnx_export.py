"""optc IR -> ONNX ModelProto.

Values without a name, or whose name another value of the same scope already took, get fresh names; graph
inputs and outputs keep theirs. Export never mutates the model. Unchanged attributes are copied from their
original protos without being decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from .core import Attr, AttrType, Function, Graph, Model, Node, Value, gc_paused
from .tensors import NumpyTensor, SparseTensor, Tensor
from .types import fill_type_proto

TensorWriter = Callable[[str, Tensor], onnx.TensorProto]


def _default_writer(name: str, tensor: Tensor) -> onnx.TensorProto:
    return tensor.to_proto(name)


def to_onnx(model: Model, tensor_writer: TensorWriter | None = None) -> onnx.ModelProto:
    """Export a model. `tensor_writer(name, tensor)` may turn tensors into external-data references.

    The result is what the IR holds (node meta such as provenance is not ONNX and is dropped). Raises
    OptcError when a tensor's payload cannot be read (missing external data)."""
    return _export(model, _Exporter(tensor_writer or _default_writer))


def to_onnx_bytes(model: Model, tensor_writer: TensorWriter | None = None) -> bytes:
    """Export and serialize a model, with the same content as `to_onnx(...).SerializeToString()`.

    The main graph's nodes, initializers and value_info are serialized one by one (unchanged imported protos
    as they are, without first being copied into a ModelProto) and written after the graph's other fields,
    inside the one `graph` field, which is written last. (Protobuf parsers accept fields in any order; the
    graph is not split in two, which parsers that do not merge repeated messages, such as protobuf.js, would
    misread.) Raises `google.protobuf.message.EncodeError` past protobuf's 2 GB limit.
    """
    return b"".join(to_onnx_parts(model, tensor_writer)[0])


def to_onnx_parts(model: Model, tensor_writer: TensorWriter | None = None) -> tuple[list[bytes], int]:
    """`to_onnx_bytes` in pieces, and their total size: written one after the other (`writelines`), they are
    the model's bytes, without joining them into one large object first."""
    exporter = _Exporter(tensor_writer or _default_writer)
    exporter.spliced = _SplicedGraph()
    mp = _export(model, exporter)
    graph_head = mp.graph.SerializeToString()
    mp.ClearField("graph")
    return exporter.spliced.parts(mp.SerializeToString(), graph_head)


def _export(model: Model, exporter: _Exporter) -> onnx.ModelProto:
    mp = onnx.ModelProto()
    mp.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        o = mp.opset_import.add()
        o.domain = domain
        o.version = version
    if model.producer_name:
        mp.producer_name = model.producer_name
    if model.producer_version:
        mp.producer_version = model.producer_version
    if model.domain:
        mp.domain = model.domain
    if model.model_version:
        mp.model_version = model.model_version
    if model.doc_string:
        mp.doc_string = model.doc_string
    _fill_props(mp.metadata_props, model.metadata_props)
    with gc_paused():
        exporter.graph(model.graph, mp.graph, set(), exporter.spliced)
        for fn in model.functions.values():
            exporter.function(fn, mp.functions.add())
    return mp


def node_to_proto(node: Node) -> onnx.NodeProto:
    """One node as a NodeProto; unnamed values are named by position (`_in0`, `_out0`, ...)."""
    exporter = _Exporter(_default_writer)
    for prefix, values in (("_in", node.inputs), ("_out", node.outputs)):
        for i, v in enumerate(values):
            if v is not None and not v.name:
                exporter.renamed[id(v)] = f"{prefix}{i}"
    p = onnx.NodeProto()
    exporter.fill_node(node, p, set())
    return p


def _fill_props(field, props: dict[str, str] | None) -> None:
    if props:
        for k, v in props.items():
            e = field.add()
            e.key, e.value = k, v


_MAX_PROTO = 2**31 - 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Frames(dict):
    """The frame of a field's item of each size: the field's tag and the size (a varint), made on demand."""

    __slots__ = ("tag",)

    def __init__(self, tag: bytes):
        super().__init__()
        self.tag = tag

    def __missing__(self, size: int) -> bytes:
        if len(self) >= 1 << 16:  # sizes of large tensors are seldom met twice: stay small
            self.clear()
        frame = self[size] = self.tag + _varint(size)
        return frame


class _SerializedField:
    """Stands in for a repeated message field of a GraphProto (`add`, `extend`) and keeps its items to be
    serialized one by one: framed with the field's tag, they form that field's part of the graph's bytes."""

    _frames: dict[int, _Frames] = {}  # by field number, shared by all exports

    def __init__(self, field_number: int, message_type):
        frames = self._frames.get(field_number)
        if frames is None:
            frames = self._frames[field_number] = _Frames(bytes([field_number << 3 | 2]))
        self.frames = frames
        self.message_type = message_type
        self.items: list = []

    def add(self):
        m = self.message_type()
        self.items.append(m)
        return m

    def extend(self, messages) -> None:
        self.items.extend(messages)

    def encode(self, parts: list[bytes]) -> None:
        """Append the framed items to `parts`: for each, its frame (tag and size) and its bytes (C loops)."""
        data = list(map(_serialize, self.items))
        parts.extend(chain.from_iterable(zip(map(self.frames.__getitem__, map(len, data)), data, strict=True)))


_serialize = onnx.NodeProto.SerializeToString  # the Message method: serializes a message of any type


class _SplicedGraph:
    """The main graph's `node`, `initializer` and `value_info` fields, serialized apart from the rest of the
    model."""

    def __init__(self):
        self.node = _SerializedField(1, onnx.NodeProto)
        self.initializer = _SerializedField(5, onnx.TensorProto)
        self.value_info = _SerializedField(13, onnx.ValueInfoProto)

    def parts(self, model_head: bytes, graph_head: bytes) -> tuple[list[bytes], int]:
        """The model's bytes in pieces, and their total size: `model_head` (a serialized ModelProto without its
        graph), then the `graph` field (number 7): `graph_head` (the graph's other fields) followed by these
        fields."""
        parts: list[bytes] = [model_head, b"\x3a", b"", graph_head]
        self.initializer.encode(parts)
        self.node.encode(parts)
        self.value_info.encode(parts)
        size = sum(map(len, parts)) - len(model_head) - 1
        if len(model_head) + size + 6 > _MAX_PROTO:
            raise EncodeError("the model is over protobuf's 2 GB limit")
        parts[2] = head = _varint(size)
        return parts, len(model_head) + 1 + len(head) + size


class _Exporter:
    def __init__(self, tensor_writer: TensorWriter):
        self.write_tensor = tensor_writer
        self.renamed: dict[int, str] = {}
        self.spliced: _SplicedGraph | None = None

    def name_of(self, v: Value | None) -> str:
        if v is None:
            return ""
        return self.renamed.get(id(v)) or v.name

    def claim(self, v: Value, used: set[str], hint: str = "v") -> None:
        """Reserve a unique name for a value defined in the current scope."""
        name = v.name
        if name and name not in used:
            used.add(name)
            return
        base = name or hint
        i = len(used)
        while f"{base}_{i}" in used:
            i += 1
        new = f"{base}_{i}"
        used.add(new)
        self.renamed[id(v)] = new

    def value_info(self, vi: onnx.ValueInfoProto, v: Value) -> None:
        vi.name = self.name_of(v)
        if v.type is not None:
            fill_type_proto(vi.type, v.type)
        if v.doc_string:
            vi.doc_string = v.doc_string
        if v.meta and "onnx.metadata_props" in v.meta:
            _fill_props(vi.metadata_props, v.meta["onnx.metadata_props"])

    def graph(self, g: Graph, gp: onnx.GraphProto, used: set[str], fields: _SplicedGraph | None = None) -> None:
        """Fill `gp` from `g`. `used` holds the names of enclosing scopes (copied, not changed). The nodes,
        initializers and value_info go to `fields` when given (see `to_onnx_bytes`), else into `gp`."""
        used = set(used)
        node_field = gp.node if fields is None else fields.node
        vi_field = gp.value_info if fields is None else fields.value_info
        gp.name = g.name
        if g.doc_string:
            gp.doc_string = g.doc_string
        _fill_props(gp.metadata_props, g.metadata_props)
        for v in g.inputs:
            self.claim(v, used, "input")
        self.value_infos(gp.input, g.inputs, typed_only=False)
        inputs = {id(v) for v in g.inputs}
        self.initializers(g, gp, used, inputs, gp.initializer if fields is None else fields.initializer)
        values = self.nodes(g, node_field, used)
        outputs = {id(v) for v in g.outputs}
        self.value_infos(vi_field, [v for v in values if id(v) not in outputs])
        self.value_infos(vi_field, [v for v in g.initializers.values()
                                    if id(v) not in inputs and id(v) not in outputs])
        vi_field.extend(g.extra_value_info)
        self.value_infos(gp.output, g.outputs, typed_only=False)
        gp.quantization_annotation.extend(g.quantization_annotation)

    def initializers(self, g: Graph, gp: onnx.GraphProto, used: set[str], inputs: set[int], field) -> None:
        """Write the initializers (dense ones through the tensor writer) into `field`, appended in bulk."""
        dense: list[onnx.TensorProto] = []
        for v in g.initializers.values():
            if id(v) not in inputs:
                self.claim(v, used, "init")
            name = self.name_of(v)
            if isinstance(v.const, SparseTensor):
                gp.sparse_initializer.append(v.const.to_proto(name))
            else:
                dense.append(self.write_tensor(name, v.const))
        field.extend(dense)

    def value_infos(self, field, values, typed_only: bool = True) -> None:
        """Append the ValueInfoProtos of `values` (of the typed ones only, with `typed_only`); unchanged
        imported ones (those whose type is still undecoded included) are copied in bulk."""
        run: list[onnx.ValueInfoProto] = []
        renamed = self.renamed
        for v in values:
            vi = v._vi_proto
            if vi is not None and not v._doc_string and not v._meta and not (renamed and id(v) in renamed):
                run.append(vi)  # the type, doc string and meta were not changed since import
                continue
            if typed_only and v._type is None:
                continue
            if run:
                field.extend(run)
                run = []
            self.value_info(field.add(), v)
        if run:
            field.extend(run)

    def nodes(self, g: Graph, field, used: set[str]) -> list[Value]:
        """Append the nodes of `g` (unchanged imported NodeProtos are copied in bulk); return their output
        values, in order."""
        run: list[onnx.NodeProto] = []
        values: list[Value] = []
        add_value = values.append
        add_used = used.add
        renamed = self.renamed
        for n in g:
            for o in n._outputs:
                if o is not None:
                    add_value(o)
                    name = o._name
                    if name and name not in used:
                        add_used(name)
                    else:
                        self.claim(o, used, n.op_type.lower())
            p = n._proto
            if (p is not None and (n.op_type, n.domain, n.name, n.doc_string, n.overload) == n._proto_key
                    and not n.metadata_props and (not renamed or self._names_kept(n))):
                run.append(p)  # the imported NodeProto still says what `fill_node` would write
                continue
            if run:
                field.extend(run)
                run = []
            self.fill_node(n, field.add(), used)
        if run:
            field.extend(run)
        return values

    def _names_kept(self, n: Node) -> bool:
        """True if this export renames none of the node's values.

        (Mutations of inputs, outputs and attributes, and renames of its values, drop `n._proto` (see `Node`);
        the plain fields and metadata are compared with `_proto_key` by `nodes`.)
        """
        renamed = self.renamed
        for v in n._inputs:
            if v is not None and id(v) in renamed:
                return False
        for v in n._outputs:
            if v is not None and id(v) in renamed:
                return False
        return True

    def fill_node(self, n: Node, p: onnx.NodeProto, used: set[str]) -> None:
        """Write one node (its output names already claimed) into `p`."""
        if self.renamed:
            p.input.extend([self.name_of(v) for v in n._inputs])
            p.output.extend([self.name_of(v) for v in n.outputs])
        else:
            p.input.extend(["" if v is None else v.name for v in n._inputs])
            p.output.extend(["" if v is None else v.name for v in n.outputs])
        p.op_type = n.op_type
        if n.domain:
            p.domain = n.domain
        if n.name:
            p.name = n.name
        if n.overload:
            p.overload = n.overload
        if n.doc_string:
            p.doc_string = n.doc_string
        if n.metadata_props:
            _fill_props(p.metadata_props, n.metadata_props)
        if n._attr_protos is not None:
            p.attribute.extend(n._attr_protos)
        elif n._attrs:
            for a in n._attrs.values():
                self.attribute(a, p.attribute.add(), used)

    def function(self, fn: Function, fp: onnx.FunctionProto) -> None:
        fp.name = fn.name
        fp.domain = fn.domain
        if fn.overload:
            fp.overload = fn.overload
        used: set[str] = set()
        g = fn.graph
        for v in g.inputs:
            self.claim(v, used, "input")
        fp.input.extend(self.name_of(v) for v in g.inputs)
        values = self.nodes(g, fp.node, used)
        fp.output.extend(self.name_of(v) for v in g.outputs)
        fp.attribute.extend(fn.attributes)
        for a in fn.attribute_defaults.values():
            self.attribute(a, fp.attribute_proto.add(), used)
        for domain, version in fn.opset_imports.items():
            o = fp.opset_import.add()
            o.domain, o.version = domain, version
        if fn.doc_string:
            fp.doc_string = fn.doc_string
        self.value_infos(fp.value_info, values)
        fp.value_info.extend(g.extra_value_info)
        _fill_props(fp.metadata_props, fn.metadata_props)

    def attribute(self, a: Attr, ap: onnx.AttributeProto, used: set[str]) -> None:
        ap.name = a.name
        ap.type = int(a.type)
        if a.doc_string:
            ap.doc_string = a.doc_string
        if a.ref_attr_name:
            ap.ref_attr_name = a.ref_attr_name
            return
        t, v = a.type, a.value
        if t == AttrType.FLOAT:
            ap.f = float(v)
        elif t == AttrType.INT:
            ap.i = int(v)
        elif t == AttrType.STRING:
            ap.s = _encode_str(v)
        elif t == AttrType.TENSOR:
            ap.t.CopyFrom(_attr_tensor(v))
        elif t == AttrType.GRAPH:
            self.graph(v, ap.g, used)
        elif t == AttrType.FLOATS:
            ap.floats.extend(float(x) for x in v)
        elif t == AttrType.INTS:
            ap.ints.extend(int(x) for x in v)
        elif t == AttrType.STRINGS:
            ap.strings.extend(_encode_str(x) for x in v)
        elif t == AttrType.TENSORS:
            ap.tensors.extend(_attr_tensor(x) for x in v)
        elif t == AttrType.GRAPHS:
            for sub in v:
                self.graph(sub, ap.graphs.add(), used)
        elif t == AttrType.SPARSE_TENSOR:
            ap.sparse_tensor.CopyFrom(v.proto)
        elif t == AttrType.SPARSE_TENSORS:
            ap.sparse_tensors.extend(x.proto for x in v)
        elif t == AttrType.TYPE_PROTO:
            fill_type_proto(ap.tp, v)
        elif t == AttrType.TYPE_PROTOS:
            for x in v:
                fill_type_proto(ap.type_protos.add(), x)
        else:
            raise ValueError(f"attribute '{a.name}' has no type")


def _attr_tensor(v: Tensor | np.ndarray) -> onnx.TensorProto:
    if isinstance(v, np.ndarray):
        v = NumpyTensor(v)
    return v.to_proto(v.name)


def _encode_str(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8")
