"""The readable text form of optc's IR (what `optc show` prints, and what `optc.ir.parse` reads back).

The form, by example (`#` and `//` start comments, which the parser skips)::

    <ir_version: 8, opsets: {ai.onnx: 17, com.microsoft: 1}, producer: 'optc' '1.0'>
    graph main (%x: float32[N,3,32,32], %cond: bool[]) -> (%y: float32[N,8,32,32], %z: float32[2]) {
      %w = init float32[8, 3, 3, 3]                  # elided payload (`values=True` prints it)
      %b = init float32[8] [0.5, -0.0, inf, nan, 1e-05, 2.0, 3.0, 4.0]
      %c = Conv(%x, %w, %b) {pads=[1, 1, 1, 1], auto_pad='NOTSET'}   # `types=True`: %c: float32[N,8,32,32] = ...
      %y, None = com.microsoft::Op(%c, None) {alpha=0.2, axes=[]:ints, t=float32[2] [1.0, 2.0]}
      %z = If(%cond)
        then_branch: then () -> (%a: float32[2]) {   # a GRAPHS attribute prints as name[0]:, name[1]:, ...
          ...
          return %a
        }
        else_branch: ...
      return %y, %z
    }
    function local::Scale<s, t=2.0>(%F) -> (%G) opsets {ai.onnx: 18} {
      %k = Constant() {value_float=@s:float}        # a reference to the function's attribute, and its type
      ...
    }

Names that are not plain identifiers (`[A-Za-z0-9_./-]+` for values) print quoted (`%'in:0'`), strings
print as Python literals. Floats print as the shortest decimal that reads back to the same bits (`-0.0`,
`inf`, `nan`; a NaN with a non-default payload as `nan:0x7fc00001`). An empty list attribute carries its
type (`[]:ints`). Tensor payloads of more than 8 elements are elided unless `values=True`. A node's name
prints after it, `%c = Conv(%x, %w) {group=1} @conv1` (quoted when not an identifier: `@'/conv/Conv'`), and
its doc string after that (`@conv1 doc 'text'`; `@'' doc 'text'` when it has no name). Strings that are not
UTF-8 print as bytes literals (`b'\\xff'`). Sparse tensors print their parts:
`sparse float32[4, 4] values float32[2] [1.0, 2.0] indices int64[2] [0, 5]` (`values=True` or few elements).
Metadata, per-node opset versions and function overloads are not part of the text form.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .core import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensors import ExternalTensor, ProtoTensor, SparseTensor, Tensor
from .types import DataType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType

_INLINE_ELEMENTS = 8
VALUE_NAME = re.compile(r"[A-Za-z0-9_./\-]+")  # a value name printed without quotes
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # graph names, dims, domains, op types, attribute names
_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a symbolic dim printed without quotes
# words that start a line or a type: an op type, graph name or domain spelled so is quoted
KEYWORDS = frozenset({"None", "init", "return", "graph", "function", "sparse", "type", "seq", "optional", "map",
                      "_"})


def format_model(model: Model, max_nodes: int | None = None, *, values: bool = False, types: bool = False) -> str:
    """The whole model as text: header, main graph, then model-local functions.

    `max_nodes`: print at most that many nodes per graph (the result no longer parses). `values`: print every
    tensor payload in full (external data is read), so that `optc.ir.parse` rebuilds the exact model. `types`:
    print the type of every node output too (`%c: float32[N,8,32,32] = Conv(...)`; `?` where unknown).
    Raises ValueError for `max_nodes` below 1.
    """
    if max_nodes is not None and max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1, not {max_nodes}")
    style = _Style(values, types)
    opsets = ", ".join(f"{_domain(d)}: {v}" for d, v in model.opset_imports.items())
    header = f"<ir_version: {model.ir_version}, opsets: {{{opsets}}}"
    if model.producer_name or model.producer_version:
        header += f", producer: {model.producer_name!r}"
        if model.producer_version:
            header += f" {model.producer_version!r}"
    lines = [header + ">"]
    lines += _graph_lines(model.graph, "graph", 0, max_nodes, style)
    for fn in model.functions.values():
        lines.append("")
        lines += _function_lines(fn, style)
    return "\n".join(lines)


def format_graph(graph: Graph, *, values: bool = False, types: bool = False) -> str:
    """One graph as text (`values`, `types`: see `format_model`)."""
    return "\n".join(_graph_lines(graph, "graph", 0, None, _Style(values, types)))


def format_node(node: Node, *, values: bool = False, types: bool = False) -> str:
    """One node as a line of text (its subgraphs, if any, on the lines after it)."""
    return "\n".join(_node_lines(node, 0, _Style(values, types)))


class _Style(NamedTuple):
    values: bool  # tensor payloads in full
    types: bool  # node output types


def format_type(t) -> str:
    """A value type as text: `float32[N,3,?]`, `float32[]` (rank 0), `float32` (rank unknown), `?` (no type),
    `seq<...>`, `optional<...>`, `map<int64,float32[]>`, `sparse<float32[4,4]>`."""
    if t is None:
        return "?"
    if isinstance(t, TensorType):
        return DataType(t.dtype).short_name + _shape(t.shape)
    if isinstance(t, SparseTensorType):
        return f"sparse<{DataType(t.dtype).short_name}{_shape(t.shape)}>"
    if isinstance(t, SequenceType):
        return f"seq<{format_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"optional<{format_type(t.elem)}>"
    if isinstance(t, MapType):
        return f"map<{DataType(t.key).short_name},{format_type(t.value)}>"
    raise TypeError(f"not a value type: {t!r}")


def _shape(shape) -> str:
    if shape is None:
        return ""
    return "[" + ",".join(_dim(d) for d in shape) + "]"


def _dim(d) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    return d if _DIM.fullmatch(d) else repr(d)


def _name(name: str, pattern: re.Pattern = IDENT, keywords: frozenset = frozenset()) -> str:
    """A name as printed: bare when it is a plain identifier, else a quoted Python string literal."""
    return name if pattern.fullmatch(name) and name not in keywords else repr(name)


def _domain(d: str) -> str:
    return _name(d or "ai.onnx", keywords=KEYWORDS)


def _val(v: Value | None) -> str:
    if v is None:
        return "None"
    if not v.name:
        return f"%<unnamed {id(v):x}>"  # only values built in Python and never named; not parseable
    return "%" + _name(v.name, VALUE_NAME)


def _typed(v: Value) -> str:
    t = v.type
    if t is None and isinstance(v.const, Tensor):
        t = TensorType(v.const.dtype, tuple(v.const.shape))
    return f"{_val(v)}: {format_type(t)}"


def _graph_lines(g: Graph, keyword: str, indent: int, max_nodes: int | None, style: _Style) -> list[str]:
    pad = "  " * indent
    ins = ", ".join(_typed(v) for v in g.inputs)
    outs = ", ".join(_typed(v) for v in g.outputs)
    lines = [f"{pad}{keyword} {_name(g.name, keywords=KEYWORDS) if g.name else '_'} ({ins}) -> ({outs}) {{"]
    for v in g.initializers.values():
        lines.append(f"{pad}  {_val(v)} = init {format_tensor(v.const, style.values)}")
    for i, n in enumerate(g):
        if max_nodes is not None and i >= max_nodes:
            lines.append(f"{pad}  ... {len(g) - max_nodes} more nodes")
            break
        lines += _node_lines(n, indent + 1, style)
    lines.append(f"{pad}  return {', '.join(_val(v) for v in g.outputs)}")
    lines.append(f"{pad}}}")
    return lines


def _function_lines(fn: Function, style: _Style) -> list[str]:
    g = fn.graph
    params = [_name(a) for a in fn.attributes]  # attributes without a default, then those with one
    params += [f"{_name(k)}={_attr_value(a, style.values)}" for k, a in fn.attribute_defaults.items()]
    attrs = f"<{', '.join(params)}>" if params else ""
    ins = ", ".join(_val(v) for v in g.inputs)
    outs = ", ".join(_val(v) for v in g.outputs)
    opsets = ""
    if fn.opset_imports:
        opsets = " opsets {" + ", ".join(f"{_domain(d)}: {v}" for d, v in fn.opset_imports.items()) + "}"
    lines = [f"function {_domain(fn.domain) if fn.domain else ''}::{_name(fn.name)}{attrs}({ins}) -> ({outs})"
             f"{opsets} {{"]
    for n in g:
        lines += _node_lines(n, 1, style)
    lines.append(f"  return {outs}")
    lines.append("}")
    return lines


def _node_lines(n: Node, indent: int, style: _Style) -> list[str]:
    pad = "  " * indent
    op = _name(n.op_type, keywords=KEYWORDS)
    if n.domain:
        op = f"{_domain(n.domain)}::{op}"
    outs = ", ".join(_typed(o) if style.types and o is not None else _val(o) for o in n.outputs)
    ins = ", ".join(_val(v) for v in n.inputs)
    plain, graphs = [], []
    for a in n.attributes.values():
        if not a.ref_attr_name and (a.type == AttrType.GRAPH or (a.type == AttrType.GRAPHS and a.value)):
            graphs.append(a)
        else:
            plain.append(f"{_name(a.name)}={_attr_value(a, style.values)}")
    attrs = f" {{{', '.join(plain)}}}" if plain else ""
    label = f" @{_name(n.name, keywords=KEYWORDS)}" if n.name or n.doc_string else ""
    if n.doc_string:
        label += f" doc {n.doc_string!r}"
    lines = [f"{pad}{outs + ' = ' if outs else ''}{op}({ins}){attrs}{label}"]
    for a in graphs:
        if a.type == AttrType.GRAPH:
            lines += _graph_lines(a.value, f"{_name(a.name)}:", indent + 1, None, style)
        else:
            for i, sub in enumerate(a.value):
                lines += _graph_lines(sub, f"{_name(a.name)}[{i}]:", indent + 1, None, style)
    return lines


_PLURAL_KIND = {AttrType.FLOATS: "floats", AttrType.INTS: "ints", AttrType.STRINGS: "strings",
                AttrType.TENSORS: "tensors", AttrType.GRAPHS: "graphs", AttrType.SPARSE_TENSORS: "sparse_tensors",
                AttrType.TYPE_PROTOS: "type_protos"}


def _attr_value(a: Attr, values: bool = False) -> str:
    if a.ref_attr_name:
        return f"@{_name(a.ref_attr_name)}:{a.type.name.lower()}"
    v = a.value
    t = a.type
    if t == AttrType.FLOAT:
        return format_float(np.float32(v))  # ONNX floats are float32: 0.2, not 0.20000000298023224
    if t == AttrType.INT:
        return str(int(v))
    if t == AttrType.STRING:
        return repr(v)
    if t in (AttrType.TENSOR, AttrType.SPARSE_TENSOR):
        return format_tensor(v, values)
    if t == AttrType.TYPE_PROTO:
        return f"type {format_type(v)}"
    if t in _PLURAL_KIND:
        if not v:
            return f"[]:{_PLURAL_KIND[t]}"
        if t == AttrType.FLOATS:
            items = [format_float(np.float32(x)) for x in v]
        elif t == AttrType.INTS:
            items = [str(int(x)) for x in v]
        elif t == AttrType.STRINGS:
            items = [repr(x) for x in v]
        elif t == AttrType.TYPE_PROTOS:
            items = [f"type {format_type(x)}" for x in v]
        else:  # tensors (a non-empty GRAPHS list prints as blocks after the node)
            items = [format_tensor(x, values) for x in v]
        return "[" + ", ".join(items) + "]"
    return repr(v)


def format_float(x) -> str:
    """The shortest decimal that reads back to the same bits of `x` (a numpy float scalar or a Python float):
    `1.0`, `1e-05`, `-0.0`, `inf`, `nan`, and `nan:0x7fc00001` for a NaN whose bits are not numpy's own NaN
    (the bits of `x`'s own type: `nan:0x7f81` for a bfloat16, `nan:0xff` for a float8)."""
    with np.errstate(invalid="ignore"):  # (a signaling NaN)
        is_nan = bool(np.isnan(np.float32(x) if np.asarray(x).dtype.kind == "V" else x))
    if is_nan:
        x = np.asarray(x)
        u = np.dtype(f"u{x.dtype.itemsize}")
        bits = x.view(u)
        canon = np.asarray(np.nan, x.dtype).view(u)
        return "nan" if bits == canon else f"nan:0x{int(bits):0{x.dtype.itemsize * 2}x}"
    s = str(x) if isinstance(x, np.generic) else repr(float(x))
    return s if any(c in s for c in ".enia") else s + ".0"


def format_tensor(t: Tensor | SparseTensor, values: bool = False) -> str:
    """A tensor as text: `float32[2, 3] [1.0, ...]` (row-major values), or elided: `float32[16, 8, 3, 3]`
    (more than 8 elements, unless `values`), `float32[N] @external` (external data, unless `values`),
    `sparse float32[4, 4] values float32[2] [1.0, 2.0] indices int64[2] [0, 5]` (a sparse tensor: its values
    and indices as dense tensors, each elided as above). Complex tensors are always elided."""
    head = f"{DataType(t.dtype).short_name}{list(t.shape)}"
    if isinstance(t, SparseTensor):
        parts = ProtoTensor(t.proto.values), ProtoTensor(t.proto.indices)
        return f"sparse {head} values {format_tensor(parts[0], values)} indices {format_tensor(parts[1], values)}"
    if isinstance(t, ExternalTensor) and not values:
        return f"{head} @external"
    dtype = DataType(t.dtype)
    if dtype in (DataType.COMPLEX64, DataType.COMPLEX128):
        return head
    if t.size <= _INLINE_ELEMENTS or values:
        if dtype == DataType.STRING and isinstance(t, ProtoTensor):  # the bytes as stored: they need not be UTF-8
            return f"{head} [{', '.join(_elements(np.array(list(t.proto.string_data), dtype=object), dtype))}]"
        return f"{head} [{', '.join(_elements(np.asarray(t.numpy()), dtype))}]"
    return head


def _elements(data: np.ndarray, dtype: DataType) -> list[str]:
    flat = data.reshape(-1)
    if dtype == DataType.STRING:
        return [repr(_text(x)) for x in flat.tolist()]
    if dtype == DataType.BOOL:
        return ["true" if x else "false" for x in flat.tolist()]
    if dtype.is_floating:
        if flat.dtype.kind == "f" and flat.dtype.itemsize in (2, 4, 8):
            return [format_float(x) for x in flat]
        # ml_dtypes (bfloat16, float8, float4, ...): the shortest decimal of the exact float32 value reads back
        # to the same value; a NaN prints with the bits of its own type unless it is the type's default NaN
        with np.errstate(invalid="ignore"):  # (a signaling NaN)
            nan = np.isnan(flat.astype(np.float32))
        return [format_float(x) if is_nan else format_float(np.float32(x)) for x, is_nan in zip(flat, nan, strict=True)]
    return [str(int(x)) for x in flat.tolist()]


def _text(x: str | bytes) -> str | bytes:
    """A string element as printed: UTF-8 bytes as a str literal, other bytes as a bytes literal."""
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return x
    return x
