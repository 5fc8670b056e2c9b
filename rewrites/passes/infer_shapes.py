"""`infer-shapes`: fill in unknown value types and shapes with ONNX's own inference, so shape folding and
rules that check ranks and shapes see them. Where it leaves dims unnamed (a dynamic-shape export's
`view(b, t, heads, -1)`), onnxruntime's symbolic shape inference fills them in (`_symbolic_types`).

The whole model goes through `onnx.shape_inference.infer_shapes` (C++, with data propagation) in one call;
weights above a few KB are handed over as external-data stubs (dims and type only), so no weight is copied.
Function bodies, which whole-model inference does not annotate, are inferred node by node (`ir.infer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from ...ir.core import Graph, Model
from ...ir.infer import InferenceError, infer_node
from ...ir.tensors import ExternalTensor, Tensor
from ...ir.types import DataType, TensorType, type_from_proto
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass
from ._util import function_graphs, root_graph

_INLINE_ELEMENTS = 1024
#: onnxruntime's symbolic shape inference (pure Python, sympy: about 3 ms a node on a GPT-2-like export) only for
#: graphs up to this many nodes
SYMBOLIC_MAX_NODES = 20_000


def _stub_writer(name: str, tensor: Tensor) -> onnx.TensorProto:
    """Small tensors inline (data propagation reads them), large ones as dims-only external stubs."""
    if tensor.size <= _INLINE_ELEMENTS and not isinstance(tensor, ExternalTensor):
        return tensor.to_proto(name)
    p = onnx.TensorProto()
    p.name = name
    p.data_type = int(tensor.dtype)
    p.dims.extend(tensor.shape)
    p.data_location = onnx.TensorProto.EXTERNAL
    e = p.external_data.add()
    e.key, e.value = "location", "optc-shape-inference-stub"
    return p


def _known(t) -> bool:
    """A value's type is known: set, and not a tensor of UNDEFINED element type (an output declared
    without a type, which onnx allows)."""
    return t is not None and not (isinstance(t, TensorType) and t.dtype == DataType.UNDEFINED and t.shape is None)


def _unknown_dims(shape) -> int:
    """How many dims of `shape` (a tuple, or None) nothing names: None, or a fresh symbol of ONNX's inference."""
    return sum(1 for d in shape if d is None or (isinstance(d, str) and d.startswith("unk__"))) if shape else 0


def _refines(old, new) -> bool:
    """`new` may replace the value type `old`: `old` is unknown; or a tensor of the same element type declared
    without a shape (a graph output declared as `FLOAT` with no rank, which left every pass that needs its rank,
    such as pruning, refusing the value) and `new` has one; or one of the same rank with dims only a fresh symbol
    names (`unk__N`) that `new` knows."""
    if not _known(old):
        return True
    if not (isinstance(old, TensorType) and isinstance(new, TensorType) and new.shape is not None
            and new.dtype == old.dtype):
        return False
    if old.shape is None:
        return True
    return len(old.shape) == len(new.shape) and _unknown_dims(new.shape) < _unknown_dims(old.shape)


def _proto_unknown_dims(tp: onnx.TypeProto) -> int:
    if not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return 0
    return sum(1 for d in tp.tensor_type.shape.dim
               if not d.HasField("dim_value") and (not d.dim_param or d.dim_param.startswith("unk__")))


def _unsound_for_symbolic(proto: onnx.ModelProto) -> bool:
    """A graph where onnxruntime's symbolic inference guesses: a Split whose sizes are computed (not a constant),
    which it takes as equal parts when it cannot evaluate them (the ONNX test of RotaryEmbedding's function splits
    [8, 0] and it wrote [4, 4]; onnxruntime then refused the optimized model)."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return any(n.op_type == "Split" and len(n.input) > 1 and n.input[1] and n.input[1] not in constants
               for n in proto.graph.node)


def _contradicts(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    """Two tensor types that cannot both hold: ranks differ, or a dim both know differs."""
    if not (a.HasField("tensor_type") and b.HasField("tensor_type") and a.tensor_type.HasField("shape")
            and b.tensor_type.HasField("shape")):
        return False
    da, db = a.tensor_type.shape.dim, b.tensor_type.shape.dim
    return len(da) != len(db) or any(x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value != y.dim_value
                                     for x, y in zip(da, db, strict=True))


def _symbolic_types(proto: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """Where ONNX's inference left dims unnamed (a Reshape to [batch, seq, heads, -1] of a dynamic-shape export: the
    head size, and through it an attention's scale), onnxruntime's symbolic shape inference (sympy: it divides
    the symbolic sizes) may know them: its types replace those with more unnamed dims in `types`. Any failure of
    it (an op it does not model, a weight it would read), a graph where it would guess (`_unsound_for_symbolic`),
    or any type of it that contradicts ONNX's (a rank or a dim both know: it misread an op, and its other types
    are not to be trusted either) leaves `types` as they are: a wrong dim would mislead every rule that checks
    shapes. It runs with `auto_merge` (without it, it stops at the first two symbols that meet in a broadcast), but
    its types are used only when it merged none: a merge takes two symbols to be equal where they met in a
    broadcast, which a dim of 1 satisfies too (a breaker's `x * cos[:Shape(y)[1]]`, valid at a y of length 1, was
    typed as a crop to x's sequence and fused into a RotaryEmbedding that computes otherwise; the GPT-2- and
    Llama-style dynamic-axes exports need such merges, and stay unfused)."""
    if _unsound_for_symbolic(proto):
        return
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        tool = SymbolicShapeInference(2**31 - 1, True, False, 0)  # (int_max, auto_merge, guess_output_rank, verbose)
        tool._preprocess(proto)  # (its infer_shapes, unrolled: the merges it assumed are read below)
        done = False
        while tool.run_:
            done = tool._infer_impl()
        tool._update_output_from_vi()
    except Exception:  # noqa: BLE001 - an optional refinement
        return
    if not done or tool.suggested_merge_:
        return  # two dims taken as equal where they met in a broadcast: an assumption, not a fact
    inferred = tool.out_mp_
    found: dict[str, onnx.TypeProto] = {}
    _collect(inferred.graph, found)
    if any(_contradicts(tp, types[name]) for name, tp in found.items() if name in types):
        return  # it misread some op (a Shape's start / end: the ONNX test of RotaryEmbedding's function): trust none
    for name, tp in found.items():
        old = types.get(name)
        if old is None or _proto_unknown_dims(tp) < _proto_unknown_dims(old):
            types[name] = tp


def _collect(gp: onnx.GraphProto, types: dict[str, onnx.TypeProto]) -> None:
    for vi in (*gp.value_info, *gp.output):
        if vi.HasField("type"):
            types.setdefault(vi.name, vi.type)
    for n in gp.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _collect(a.g, types)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _collect(g, types)


def infer_model_types(model: Model) -> int:
    """Whole-model inference; returns how many value types were filled in (raises on failure)."""
    from ...ir.onnx_export import to_onnx

    proto = to_onnx(model, _stub_writer)
    proto.ClearField("functions") if not model.functions else None
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    types: dict[str, onnx.TypeProto] = {}
    _collect(inferred.graph, types)
    if len(proto.graph.node) <= SYMBOLIC_MAX_NODES and any(_proto_unknown_dims(tp) for tp in types.values()):
        _symbolic_types(proto, types)
    count = 0
    cache: dict[bytes, object] = {}
    graphs = [model.graph, *model.graph.subgraphs()]
    for g in graphs:
        for node in g:
            for o in node.outputs:
                if o is None or not o.name or (_known(o.type) and not (isinstance(o.type, TensorType) and (
                        o.type.shape is None or _unknown_dims(o.type.shape)))):
                    continue
                tp = types.get(o.name)
                if tp is None:
                    continue
                key = tp.SerializeToString()
                t = cache.get(key, cache)
                if t is cache:
                    try:
                        t = type_from_proto(tp)
                    except Exception:
                        t = None
                    cache[key] = t
                if t is not None and _refines(o.type, t):
                    o.type = t
                    count += 1
    for g in graphs:
        for node in g:
            if node.op_type == "Tile" and node.domain in ("", "ai.onnx"):
                count += _tile_dims(node)
    return count


def _tile_dims(node) -> int:
    """Tile's symbolic output dims (ONNX's inference makes fresh ones, `unk__N`, for every symbolic input dim) from
    its input's: dim i is the input's dim i times repeats[i], so a repeat of 1 keeps the input's symbol
    (repeat_interleave's Unsqueeze + Tile of a [batch, heads, 1, seq, dim] tensor lost both the batch and the
    sequence), and a known input dim gives the product. Returns 1 when the type changed, else 0."""
    x, y = node.inputs[0], node.outputs[0]
    repeats = node.inputs[1].const_value() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if x is None or y is None or repeats is None or not isinstance(x.type, TensorType) or \
            not isinstance(y.type, TensorType) or x.type.shape is None or y.type.shape is None or \
            len(x.type.shape) != len(y.type.shape) or repeats.size != len(x.type.shape):
        return 0
    dims = list(y.type.shape)
    for i, (d_in, d_out, r) in enumerate(zip(x.type.shape, dims, repeats.reshape(-1).tolist(), strict=True)):
        if isinstance(d_out, str) and d_in is not None:
            dims[i] = d_in * int(r) if isinstance(d_in, int) else d_in if int(r) == 1 else d_out
    if dims == list(y.type.shape):
        return 0
    y.type = TensorType(y.type.dtype, tuple(dims))
    return 1


def infer_graph_nodewise(g: Graph, opsets: dict[str, int]) -> int:
    count = 0
    for node in g:
        if all(o is None or _known(o.type) for o in node.outputs) or node.subgraphs():
            continue
        try:
            types = infer_node(node, opsets)
        except (InferenceError, Exception):
            continue
        for o, t in zip(node.outputs, types, strict=False):
            if o is not None and not _known(o.type) and t is not None:
                o.type = t
                count += 1
    return count


@register_pass
@dataclass
class InferShapes(Pass):
    """Infer unknown value types and shapes (changes no node: it is not a rewrite)."""

    name: ClassVar[str] = "infer-shapes"
    description: ClassVar[str] = ("infer unknown value types and shapes with ONNX's inference (whole model, data "
                                  "propagation; no rewrites)")
    option_help: ClassVar[dict[str, str]] = {
        "nodewise": "infer node by node (slower; for models whole-model inference rejects)",
    }
    nodewise: bool = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        inferred = 0
        fn_opsets = function_graphs(model)
        done_main = False
        if not self.nodewise:
            try:
                inferred += infer_model_types(model)
                done_main = True
            except Exception:
                done_main = False
        for g in list(model.graphs()):
            in_fn = id(root_graph(g)) in fn_opsets
            if done_main and not in_fn:
                continue
            opsets = fn_opsets.get(id(root_graph(g))) or dict(model.opset_imports)
            inferred += infer_graph_nodewise(g, opsets)
        # Types are annotations, not rewrites: report no change so fixed-point groups are not kept spinning.
        return PassResult(False, counts={"inferred-types": inferred} if inferred else {})
