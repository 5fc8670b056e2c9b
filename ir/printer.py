"""The readable text form of optc's IR (what `optc show` prints)."""

from __future__ import annotations

import numpy as np

from .core import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensors import ExternalTensor, SparseTensor, Tensor

_INLINE_ELEMENTS = 8


def format_model(model: Model, max_nodes: int | None = None) -> str:
    """The whole model as text: header, main graph, then model-local functions."""
    opsets = ", ".join(f"{d or 'ai.onnx'}: {v}" for d, v in model.opset_imports.items())
    header = f"<ir_version: {model.ir_version}, opsets: {{{opsets}}}"
    if model.producer_name:
        header += f", producer: {model.producer_name!r}"
        if model.producer_version:
            header += f" {model.producer_version!r}"
    lines = [header + ">"]
    lines += _graph_lines(model.graph, "graph", 0, max_nodes)
    for fn in model.functions.values():
        lines.append("")
        lines += _function_lines(fn)
    return "\n".join(lines)


def format_graph(graph: Graph) -> str:
    """One graph as text."""
    return "\n".join(_graph_lines(graph, "graph", 0, None))


def format_node(node: Node) -> str:
    """One node as a line of text."""
    return _node_lines(node, 0)[0]


def _val(v: Value | None) -> str:
    if v is None:
        return "None"
    return "%" + (v.name or f"<{id(v):x}>")


def _typed(v: Value) -> str:
    t = v.type
    if t is None and v.const is not None:
        return f"{_val(v)}: {v.const.dtype.short_name}{list(v.const.shape)}"
    return f"{_val(v)}: {t if t is not None else '?'}"


def _graph_lines(g: Graph, keyword: str, indent: int, max_nodes: int | None) -> list[str]:
    pad = "  " * indent
    ins = ", ".join(_typed(v) for v in g.inputs)
    outs = ", ".join(_typed(v) for v in g.outputs)
    lines = [f"{pad}{keyword} {g.name or '_'} ({ins}) -> ({outs}) {{"]
    for v in g.initializers.values():
        lines.append(f"{pad}  {_val(v)} = init {_tensor_summary(v.const)}")
    for i, n in enumerate(g):
        if max_nodes is not None and i >= max_nodes:
            lines.append(f"{pad}  ... {len(g) - max_nodes} more nodes")
            break
        lines += _node_lines(n, indent + 1)
    lines.append(f"{pad}  return {', '.join(_val(v) for v in g.outputs)}")
    lines.append(f"{pad}}}")
    return lines


def _function_lines(fn: Function) -> list[str]:
    g = fn.graph
    attrs = f"<{', '.join(fn.attributes)}>" if fn.attributes else ""
    ins = ", ".join(_val(v) for v in g.inputs)
    outs = ", ".join(_val(v) for v in g.outputs)
    lines = [f"function {fn.domain}::{fn.name}{attrs}({ins}) -> ({outs}) {{"]
    for n in g:
        lines += _node_lines(n, 1)
    lines.append(f"  return {outs}")
    lines.append("}")
    return lines


def _node_lines(n: Node, indent: int) -> list[str]:
    pad = "  " * indent
    op = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
    outs = ", ".join(_val(o) for o in n.outputs)
    ins = ", ".join(_val(v) for v in n.inputs)
    plain, graphs = [], []
    for a in n.attributes.values():
        if a.type in (AttrType.GRAPH, AttrType.GRAPHS) and not a.ref_attr_name:
            graphs.append(a)
        else:
            plain.append(f"{a.name}={_attr_value(a)}")
    attrs = f" {{{', '.join(plain)}}}" if plain else ""
    lines = [f"{pad}{outs} = {op}({ins}){attrs}"]
    for a in graphs:
        subs = [a.value] if a.type == AttrType.GRAPH else a.value
        for sub in subs:
            lines += _graph_lines(sub, f"{a.name}:", indent + 1, None)
    return lines


def _attr_value(a: Attr) -> str:
    if a.ref_attr_name:
        return f"@{a.ref_attr_name}"
    v = a.value
    if a.type == AttrType.FLOAT:
        return str(np.float32(v))  # ONNX floats are float32: shortest repr, 0.2 not 0.20000000298023224
    if a.type == AttrType.FLOATS:
        return "[" + ", ".join(str(np.float32(x)) for x in v) + "]"
    if a.type in (AttrType.TENSOR, AttrType.SPARSE_TENSOR):
        return _tensor_summary(v)
    if a.type in (AttrType.TENSORS, AttrType.SPARSE_TENSORS):
        return "[" + ", ".join(_tensor_summary(t) for t in v) + "]"
    if a.type == AttrType.STRING:
        return repr(v)
    if a.type in (AttrType.TYPE_PROTO,):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(repr(x) if isinstance(x, str | bytes) else str(x) for x in v) + "]"
    return str(v)


def _tensor_summary(t: Tensor | SparseTensor) -> str:
    head = f"{t.dtype.short_name}{list(t.shape)}"
    if isinstance(t, SparseTensor):
        return f"sparse {head}"
    if isinstance(t, ExternalTensor):
        return f"{head} @external"
    if t.size <= _INLINE_ELEMENTS:
        try:
            data = np.asarray(t.numpy()).reshape(-1).tolist()
            return f"{head} {data}"
        except (ValueError, TypeError):
            return head
    return head
