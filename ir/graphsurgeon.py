"""Direct conversion between optc's IR and onnx-graphsurgeon graphs (no round trip through ONNX bytes).

`to_graphsurgeon(model)` builds a `gs.Graph` whose `gs.export_onnx` writes the same model as `to_onnx`, and
`from_graphsurgeon(graph)` reads a `gs.Graph` into a `Model` the way `gs.export_onnx` + `from_onnx` would.

Mapping:
- a Value becomes one gs tensor object (an unnamed Value gets a fresh name, as gs reads "" as omitted), shared by every scope that reads it (outer-scope reads inside If/Loop/
  Scan bodies are the same object, as in gs); an initializer becomes a `gs.Constant`, anything else a
  `gs.Variable`; an omitted optional input/output (None) becomes an empty `gs.Variable("")`.
- constants are not copied: a `ProtoTensor` is handed to gs as `LazyValues` over its proto, a `NumpyTensor` as
  its array (as `LazyValues` over a proto when gs cannot type the array itself, e.g. float8e4m3fnuz), an
  external tensor as a read-only memory map. Back from gs, `LazyValues` become `ProtoTensor`s over the same
  proto and arrays become `NumpyTensor`s (a `Constant.export_dtype` conversion is applied).
- element types follow gs's own importer: a numpy dtype where gs has one, else the ONNX enum value (bfloat16,
  float8). Sequence and sparse tensor types use `Variable.type`; optional and map types have no gs
  representation beyond their `type` string and come back as unknown (`None`) element types.
- attributes: the Python values gs uses (int, float, str, lists, `gs.Constant`, `gs.Graph`,
  `gs.Node.AttributeRef`); attribute kinds gs cannot model (TENSORS, SPARSE_TENSOR(S), TYPE_PROTO(S)) are
  passed as ONNX protos, which `gs.export_onnx` writes as they are. GRAPHS attributes are refused.
- the default-domain opset is `gs.Graph.opset`; all imports are `import_domains`; model-local functions are
  `gs.Function`s (their constants become Constant nodes on the way back, as functions have no initializers).

gs has no place for: doc strings of nodes and values, node/value metadata, node overloads, unused
initializers (gs tensors exist only through nodes and graph inputs/outputs), extra value_info, quantization
annotations, model metadata, model domain and version. Those are not carried.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import constant_to_onnx_tensor, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues
from onnx_graphsurgeon.util import misc as gs_misc

from .core import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensors import ExternalTensor, NumpyTensor, ProtoTensor, SparseTensor, Tensor, tensor_from_proto
from .types import (
    DataType,
    MapType,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    ValueType,
    type_from_proto,
    type_to_proto,
)

__all__ = ["from_graphsurgeon", "to_graphsurgeon"]

# Element types gs's importer keeps as ONNX enum values rather than numpy dtypes.
_GS_ENUM_DTYPES = {
    DataType.BFLOAT16, DataType.FLOAT8E4M3FN, DataType.FLOAT8E4M3FNUZ, DataType.FLOAT8E5M2,
    DataType.FLOAT8E5M2FNUZ,
}


# ---------------------------------------------------------------------------------------------------------------
# element types
# ---------------------------------------------------------------------------------------------------------------
def _gs_dtype(dt: DataType | None) -> Any:
    """The dtype gs uses for an element type: a numpy dtype where gs maps it back exactly, else the enum."""
    if dt is None or dt == DataType.UNDEFINED:
        return None
    dt = DataType(dt)
    if dt in _GS_ENUM_DTYPES:
        return int(dt)
    try:
        np_dtype = dt.numpy()
        if dtype_to_onnx(np_dtype) == int(dt):
            return np_dtype
    except (ValueError, KeyError, TypeError):
        pass
    return int(dt)


def _dtype_from_gs(dtype: Any) -> DataType | None:
    if dtype is None:
        return None
    if isinstance(dtype, int | np.integer) and not isinstance(dtype, bool):
        return DataType(int(dtype))
    return DataType.from_numpy(np.dtype(dtype))


def _gs_shape(shape) -> list | None:
    return None if shape is None else list(shape)


def _shape_from_gs(shape) -> tuple | None:
    if shape is None:
        return None
    dims = []
    for d in shape:
        if isinstance(d, int | np.integer) and not isinstance(d, bool):
            dims.append(int(d) if d >= 0 else None)  # gs writes -1 (Tensor.DYNAMIC) for an unknown dim
        elif isinstance(d, str):
            dims.append(d or None)
        else:
            dims.append(None)
    return tuple(dims)


def _gs_type(t: ValueType | None) -> tuple[Any, list | None, str]:
    """(dtype, shape, gs type string) for a value type."""
    if isinstance(t, TensorType):
        return _gs_dtype(t.dtype), _gs_shape(t.shape), "tensor_type"
    if isinstance(t, SparseTensorType):
        return _gs_dtype(t.dtype), _gs_shape(t.shape), "sparse_tensor_type"
    if isinstance(t, SequenceType):
        if isinstance(t.elem, TensorType):
            return _gs_dtype(t.elem.dtype), _gs_shape(t.elem.shape), "sequence_type"
        return None, None, "sequence_type"
    if isinstance(t, OptionalType):
        return None, None, "optional_type"
    if isinstance(t, MapType):
        return None, None, "map_type"
    return None, None, "tensor_type"


def _type_from_gs(t: gs.Tensor) -> ValueType | None:
    if isinstance(t, gs.Constant):
        return TensorType(_const_dtype(t), _shape_from_gs(t.shape))
    raw_dtype = getattr(t, "dtype", None)
    kind = getattr(t, "type", "tensor_type") or "tensor_type"
    if isinstance(raw_dtype, onnx.TypeProto):  # gs's importer stores the element TypeProto for optionals
        elem = type_from_proto(raw_dtype)
        return OptionalType(elem) if kind == "optional_type" else elem
    dtype = _dtype_from_gs(raw_dtype)
    shape = _shape_from_gs(getattr(t, "shape", None))
    if kind == "sequence_type":
        return SequenceType(TensorType(dtype, shape) if dtype is not None else None)
    if kind == "optional_type":
        return OptionalType(TensorType(dtype, shape) if dtype is not None else None)
    if kind == "map_type":
        return None
    if kind == "sparse_tensor_type":
        return SparseTensorType(dtype if dtype is not None else DataType.UNDEFINED, shape)
    if dtype is None and shape is None:
        return None
    return TensorType(dtype if dtype is not None else DataType.UNDEFINED, shape)


def _const_dtype(c: gs.Constant) -> DataType:
    values = c._values
    if isinstance(values, SparseValues):
        return DataType(values.tensor.values.data_type)
    if isinstance(values, LazyValues):
        return DataType(values.tensor.data_type)
    return _dtype_from_gs(c.export_dtype)


# ---------------------------------------------------------------------------------------------------------------
# optc -> gs
# ---------------------------------------------------------------------------------------------------------------
def _gs_constant(name: str, const: Tensor | SparseTensor) -> gs.Constant:
    if isinstance(const, SparseTensor):
        return gs.Constant(name, SparseValues(const.to_proto(name)))
    if isinstance(const, NumpyTensor):
        array = const.array
        try:
            native = dtype_to_onnx(array.dtype) == int(const.dtype)
        except (TypeError, ValueError, KeyError):
            native = False
        # gs writes an array's bytes as they are: packed (4-bit, 2-bit) types must go as protos
        if native and array.dtype != object and const.dtype.itemsize_bits % 8 == 0:
            return gs.Constant(name, array)
    elif isinstance(const, ExternalTensor):
        dt = const.dtype
        if dt not in _GS_ENUM_DTYPES and dt.itemsize_bits % 8 == 0 and dt != DataType.STRING:
            return gs.Constant(name, const.numpy())  # memory-mapped, read only
        return gs.Constant(name, LazyValues(const.inline_proto(name)))
    return gs.Constant(name, LazyValues(const.to_proto(name)))


class _ToGS:
    def __init__(self) -> None:
        self.tensors: dict[int, gs.Tensor] = {}
        self.opset: int | None = None  # given to subgraphs, as gs's importer does
        self.taken: set[str] = set()  # names in use: an unnamed value gets a fresh one (gs reads "" as omitted)
        self.fresh = 0

    def fresh_name(self) -> str:
        while True:
            self.fresh += 1
            name = f"_v{self.fresh}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def tensor(self, v: Value | None) -> gs.Tensor:
        if v is None:
            return gs.Variable.empty()
        t = self.tensors.get(id(v))
        if t is None:
            name = v.name or self.fresh_name()
            if v.const is not None:
                t = _gs_constant(name, v.const)
            else:
                dtype, shape, kind = _gs_type(v.type)
                t = gs.Variable(name, dtype=dtype, shape=shape, type=kind)
            self.tensors[id(v)] = t
        return t

    def graph(self, g: Graph, cls=gs.Graph, name: str | None = None, **kwargs) -> gs.Graph:
        inputs = [self.tensor(v) for v in g.inputs]
        nodes = [self.node(n) for n in g]
        outputs = [self.tensor(v) for v in g.outputs]
        return cls(nodes=nodes, inputs=inputs, outputs=outputs, name=g.name if name is None else name,
                   doc_string=g.doc_string, **kwargs)

    def node(self, n: Node) -> gs.Node:
        # Read still-encoded attributes without `n.attributes`, which would decode them into the node (and drop
        # its cached export proto): converting must not change the model.
        if n._attr_protos is not None:
            from .onnx_import import decode_attributes

            decoded = decode_attributes(n._attr_protos, n)
        else:
            decoded = n._attrs
        attrs = OrderedDict((a.name, self.attribute(a)) for a in decoded.values())
        return gs.Node(
            op=n.op_type, name=n.name, attrs=attrs, domain=n.domain or None,
            inputs=[self.tensor(v) for v in n.inputs], outputs=[self.tensor(v) for v in n.outputs],
        )

    def attribute(self, a: Attr) -> Any:
        if a.ref_attr_name:
            return gs.Node.AttributeRef(a.ref_attr_name, gs_misc.convert_from_onnx_attr_type(int(a.type)))
        t, v = a.type, a.value
        if t == AttrType.FLOAT:
            return float(v)
        if t == AttrType.INT:
            return int(v)
        if t == AttrType.STRING:
            return v
        if t == AttrType.FLOATS:
            return [float(x) for x in v]
        if t == AttrType.INTS:
            return [int(x) for x in v]
        if t == AttrType.STRINGS:
            return list(v)
        if t == AttrType.TENSOR:
            tensor = NumpyTensor(v) if isinstance(v, np.ndarray) else v
            return _gs_constant(tensor.name, tensor)
        if t == AttrType.GRAPH:
            return self.graph(v, opset=self.opset)
        if t == AttrType.TENSORS:
            return [(NumpyTensor(x) if isinstance(x, np.ndarray) else x).to_proto(getattr(x, "name", "")) for x in v]
        if t == AttrType.SPARSE_TENSOR:
            return v.proto
        if t == AttrType.SPARSE_TENSORS:
            return [x.proto for x in v]
        if t == AttrType.TYPE_PROTO:
            return type_to_proto(v)
        if t == AttrType.TYPE_PROTOS:
            return [type_to_proto(x) for x in v]
        raise ValueError(f"attribute '{a.name}' ({t.name}) cannot be represented in onnx-graphsurgeon")

    def function(self, fn: Function, functions: list) -> gs.Function:
        attrs: dict[str, Any] = {name: None for name in fn.attributes}
        for name, a in fn.attribute_defaults.items():
            attrs[name] = self.attribute(a)
        imports = [onnx.helper.make_opsetid(d, v) for d, v in fn.opset_imports.items()]
        opset = fn.opset_imports.get("")
        return self.graph(fn.graph, gs.Function, name=fn.name, domain=fn.domain, opset=opset,
                          import_domains=imports or None, attrs=attrs, functions=functions)


def to_graphsurgeon(model: Model) -> gs.Graph:
    """Convert a Model into an onnx-graphsurgeon Graph (functions become `gs.Function`s).

    Constant payloads are shared with the model, not copied: do not mutate them through gs in place.
    """
    conv = _ToGS()
    for g in model.graphs():
        conv.taken.update(v.name for v in g.inputs)
        conv.taken.update(g.initializers)
        conv.taken.update(o.name for n in g for o in n.outputs if o is not None)
    functions: list[gs.Function] = []
    for fn in model.functions.values():
        conv.tensors = {}
        conv.opset = fn.opset_imports.get("", model.opset_imports.get(""))
        functions.append(conv.function(fn, functions))
    conv.tensors = {}
    conv.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    imports = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    graph = conv.graph(
        model.graph, opset=conv.opset, import_domains=imports,
        producer_name=model.producer_name, producer_version=model.producer_version, functions=functions,
        ir_version=model.ir_version,
    )
    return graph


# ---------------------------------------------------------------------------------------------------------------
# gs -> optc
# ---------------------------------------------------------------------------------------------------------------
class _Scope:
    """Values of one graph, by gs tensor identity and by name (gs identifies tensors by name on export)."""

    __slots__ = ("by_id", "by_name")

    def __init__(self) -> None:
        self.by_id: dict[int, Value] = {}
        self.by_name: dict[str, Value] = {}

    def add(self, t: gs.Tensor, v: Value) -> None:
        self.by_id[id(t)] = v
        if t.name:
            self.by_name.setdefault(t.name, v)


class _FromGS:
    def __init__(self, base_dir: str | None) -> None:
        self.base_dir = base_dir

    def tensor(self, c: gs.Constant) -> Tensor | SparseTensor:
        values = c._values
        if isinstance(values, SparseValues):
            return SparseTensor(values.tensor)
        if isinstance(values, LazyValues):
            return tensor_from_proto(values.tensor, self.base_dir)
        array = np.asarray(values)
        export_dtype = c._export_dtype
        if export_dtype is not None and dtype_to_onnx(export_dtype) != dtype_to_onnx(array.dtype):
            return ProtoTensor(constant_to_onnx_tensor(c))
        return NumpyTensor(array, name=c.name)

    def graph(self, gg: gs.Graph, outer: list[_Scope], *, function: bool = False) -> Graph:
        g = Graph(name=gg.name or "")
        g.doc_string = gg.doc_string or ""
        scope = _Scope()
        scopes = [scope, *outer]
        consts: list[Node] = []  # Constant nodes for a function's constants

        def lookup(t: gs.Tensor) -> Value | None:
            for s in scopes:
                v = s.by_id.get(id(t))
                if v is not None:
                    return v
            for s in scopes:
                v = s.by_name.get(t.name)
                if v is not None:
                    return v
            return None

        def constant(t: gs.Constant) -> Value:
            v = Value(t.name)
            if function:
                v.type = _type_from_gs(t)
                node = Node("Constant", [], [Attr("value", AttrType.TENSOR, self.tensor(t))], outputs=[v])
                consts.append(node)
            else:
                v.const = self.tensor(t)
                g.add_initializer(v)
            scope.add(t, v)
            return v

        for t in gg.inputs:
            v = Value(t.name, _type_from_gs(t))
            if isinstance(t, gs.Constant):
                v.const = self.tensor(t)
                g.add_initializer(v)
            g.inputs.append(v)
            scope.add(t, v)
        position: dict[int, int] = {}
        for i, gn in enumerate(gg.nodes):
            for t in gn.outputs:
                if not t.name:
                    continue
                if id(t) in scope.by_id:
                    raise ValueError(f"gs tensor '{t.name}' is produced twice (or is also a graph input)")
                scope.add(t, Value(t.name, _type_from_gs(t)))
                position[id(t)] = i
        needs_sort = False
        for i, gn in enumerate(gg.nodes):
            inputs: list[Value | None] = []
            for t in gn.inputs:
                if not t.name:
                    inputs.append(None)
                    continue
                v = lookup(t)
                if v is None:
                    if not isinstance(t, gs.Constant):
                        raise ValueError(f"gs tensor '{t.name}' (input of node '{gn.name or gn.op}') is not "
                                         f"produced by any node nor a graph input")
                    v = constant(t)
                elif position.get(id(t), -1) >= i:
                    needs_sort = True
                inputs.append(v)
            outputs = [scope.by_id[id(t)] if t.name else None for t in gn.outputs]
            attrs = [self.attribute(k, val, scopes) for k, val in gn.attrs.items()]
            g.append(Node(gn.op, inputs, attrs, domain=gn.domain or "", outputs=outputs, name=gn.name or ""))
        for t in gg.outputs:
            v = lookup(t)
            if v is None:
                if not isinstance(t, gs.Constant):
                    raise ValueError(f"gs graph output '{t.name}' is not produced by any node nor a graph input")
                v = constant(t)
            if v.type is None and not isinstance(t, gs.Constant):
                v.type = _type_from_gs(t)
            g.outputs.append(v)
        if consts:
            first = g.first()
            if first is None:
                g.append(*consts)
            else:
                g.insert_before(first, *consts)
        if needs_sort:
            g.sort()
        return g

    def attribute(self, name: str, val: Any, scopes: list[_Scope]) -> Attr:
        if isinstance(val, gs.Node.AttributeRef):
            return Attr(name, AttrType(int(gs_misc.convert_to_onnx_attr_type(val.type))), None, val.name)
        if isinstance(val, gs.Constant):
            return Attr(name, AttrType.TENSOR, self.tensor(val))
        if isinstance(val, gs.Graph):
            return Attr(name, AttrType.GRAPH, self.graph(val, scopes))
        if isinstance(val, onnx.TensorProto):
            return Attr(name, AttrType.TENSOR, tensor_from_proto(val, self.base_dir))
        if isinstance(val, onnx.SparseTensorProto):
            return Attr(name, AttrType.SPARSE_TENSOR, SparseTensor(val))
        if isinstance(val, onnx.TypeProto):
            return Attr(name, AttrType.TYPE_PROTO, type_from_proto(val))
        if isinstance(val, np.dtype | type):
            return Attr(name, AttrType.INT, int(dtype_to_onnx(val)))
        if isinstance(val, bool | int | np.integer):
            return Attr(name, AttrType.INT, int(val))
        if isinstance(val, float | np.floating):
            return Attr(name, AttrType.FLOAT, float(val))
        if isinstance(val, str | bytes):
            return Attr(name, AttrType.STRING, val)
        if isinstance(val, np.ndarray):
            return Attr(name, AttrType.TENSOR, NumpyTensor(val))
        if isinstance(val, list | tuple):
            items = list(val)
            if not items:
                return Attr(name, AttrType.INTS, [])
            if all(isinstance(x, gs.Constant) for x in items):
                return Attr(name, AttrType.TENSORS, [self.tensor(x) for x in items])
            if all(isinstance(x, onnx.TensorProto) for x in items):
                return Attr(name, AttrType.TENSORS, [tensor_from_proto(x, self.base_dir) for x in items])
            if all(isinstance(x, onnx.SparseTensorProto) for x in items):
                return Attr(name, AttrType.SPARSE_TENSORS, [SparseTensor(x) for x in items])
            if all(isinstance(x, onnx.TypeProto) for x in items):
                return Attr(name, AttrType.TYPE_PROTOS, [type_from_proto(x) for x in items])
            if all(isinstance(x, gs.Graph) for x in items):
                return Attr(name, AttrType.GRAPHS, [self.graph(x, scopes) for x in items])
            if all(isinstance(x, bool | int | np.integer) for x in items):
                return Attr(name, AttrType.INTS, [int(x) for x in items])
            if all(isinstance(x, int | float | np.integer | np.floating) for x in items):
                return Attr(name, AttrType.FLOATS, [float(x) for x in items])
            if all(isinstance(x, str | bytes) for x in items):
                return Attr(name, AttrType.STRINGS, items)
        raise ValueError(f"attribute '{name}': cannot convert a {type(val).__name__} from onnx-graphsurgeon")

    def function(self, gf: gs.Function) -> Function:
        g = self.graph(gf, [], function=True)
        required = [k for k, v in gf.attrs.items() if v is None]
        defaults = {k: self.attribute(k, v, []) for k, v in gf.attrs.items() if v is not None}
        if gf.import_domains:
            opsets = {o.domain: o.version for o in gf.import_domains}
        else:
            opsets = {"": gf.opset} if gf.opset is not None else {}
        _add_used_domains(g, opsets)
        fn = Function(gf.domain or "", gf.name, g, attributes=required, attribute_defaults=defaults,
                      opset_imports=opsets)
        fn.doc_string = gf.doc_string or ""
        return fn


def _add_used_domains(g: Graph, opsets: dict[str, int]) -> None:
    """Import every custom domain a node uses (version 1 when unknown, as gs's exporter does)."""
    for n in g.all_nodes():
        if n.domain not in opsets and n.domain not in ("", "ai.onnx"):
            opsets[n.domain] = 1


def from_graphsurgeon(graph: gs.Graph, base_dir: str | None = None) -> Model:
    """Convert an onnx-graphsurgeon Graph (with its `functions`) into a Model.

    Opsets follow `gs.export_onnx`: `graph.import_domains` when set, else `{"": graph.opset}`, plus version 1
    for any other domain a node uses. Lazy constants keep sharing their TensorProtos. `base_dir` resolves
    external-data constants. Raises ValueError for a tensor read but defined nowhere.
    """
    conv = _FromGS(base_dir)
    g = conv.graph(graph, [])
    if graph.import_domains is not None:
        opsets = {o.domain: o.version for o in graph.import_domains}
    else:
        opsets = {"": graph.opset}
    _add_used_domains(g, opsets)
    functions = [conv.function(f) for f in graph.functions]
    ir_version = graph.ir_version if graph.ir_version is not None else 10
    model = Model(g, opsets, ir_version=ir_version, functions=functions)
    model.producer_name = graph.producer_name or ""
    model.producer_version = graph.producer_version or ""
    return model
