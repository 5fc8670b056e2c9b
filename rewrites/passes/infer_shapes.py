"""`infer-shapes`: fill in unknown value types and shapes with ONNX's own inference, so shape folding and
rules that check ranks and shapes see them. Where it leaves dims unnamed (a dynamic-shape export's
`view(b, t, heads, -1)`, a crop `causal[:t, :t]`), optc's own rules fill in what follows for every input the graph
runs on (`_resolved_dims`), and ONNX infers again. (onnxruntime's symbolic shape inference is not used: it takes two
symbols that meet in a broadcast to be equal, and a Slice's computed step to be 1; a breaker's graphs fused wrongly
on such types.)

The whole model goes through `onnx.shape_inference.infer_shapes` (C++, with data propagation) in one call;
weights above a few KB are handed over as external-data stubs (dims and type only), so no weight is copied.
Function bodies, which whole-model inference does not annotate, are inferred node by node (`ir.infer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from ...ir.core import Graph, Model
from ...ir.infer import CONTRIB_OPS, InferenceError, infer_node
from ...ir.tensors import ExternalTensor, Tensor
from ...ir.types import DataType, TensorType, type_from_proto
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass
from ._util import function_graphs, root_graph

_INLINE_ELEMENTS = 1024
#: rounds of resolving dims ONNX's inference leaves unnamed (`_resolved_dims`) and inferring again: each resolves
#: a layer of them (an arange's length, then the head split it reaches, then the head merge)
_RESOLVE_ROUNDS = 6
#: rounds of hiding the computed shapes of Reshapes whose types rest on no shape element being 0
#: (`_zero_copying_reshapes`) and inferring everything again
_OPAQUE_ROUNDS = 3


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


def _dim_name(d) -> int | str | None:
    """A dim of a TensorShapeProto: its value, its symbol, or None where nothing names it (or a fresh `unk__`)."""
    if d.HasField("dim_value"):
        return d.dim_value
    return d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None


def _shape_pieces(name: str, producers: dict, constants: dict, types: dict) -> list | None:
    """The elements of a Reshape's shape input, as far as they are constant: a list with an int for each
    constant element and None for each other, from a constant or a Concat of constants and values of static
    length (the `Concat(Unsqueeze(Gather(Shape(x), i)), ..., [-1])` of a dynamic-shape export); None otherwise."""
    if name in constants:
        return [int(v) for v in constants[name].reshape(-1)]
    node = producers.get(name)
    if node is None or node.op_type != "Concat":
        return None
    pieces: list = []
    for i in node.input:
        if i in constants:
            pieces.extend(int(v) for v in constants[i].reshape(-1))
            continue
        tp = types.get(i)
        dims = [_dim_name(d) for d in tp.tensor_type.shape.dim] if tp is not None else None
        if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
            return None
        pieces.extend([None] * dims[0])
    return pieces


def _symbol(d) -> int | str | None:
    """A dim of a TensorShapeProto: its value, its symbol (ONNX's fresh unk__N included), or None."""
    if d.HasField("dim_value"):
        return d.dim_value
    return d.dim_param or None


def _count_forbids_copy(pieces: list, x_dims: list, i: int) -> bool:
    """A Reshape's one computed shape element, at i, cannot copy the input's dim there and succeed unless that dim
    is 0 too: the other elements are constants > 0, the input's other dims ints, and their products differ (a 0 at
    i gives the output x[i] * prod(other elements) elements against the input's x[i] * prod(other dims), equal
    only where x[i] is 0: torch's head split [B*N, S, H] -> [B, N, S, H] with B computed). The dim ONNX gave the
    element then holds wherever the Reshape runs."""
    others = [p for j, p in enumerate(pieces) if j != i]
    rest = [d for j, d in enumerate(x_dims) if j != i]
    return (i < len(x_dims) and all(isinstance(p, int) and p > 0 for p in others)
            and all(isinstance(d, int) for d in rest)
            and int(np.prod(rest, dtype=np.int64)) != int(np.prod(others, dtype=np.int64)))


def _zero_safe(pieces: list, x_dims: list, y_dims: list) -> bool:
    """A Reshape's computed shape elements (None in `pieces`) cannot copy another dim than ONNX's inference gave
    them: each is a nonzero int, or the input's own dim at its position (a 0 there copies the same 0). Else a
    computed 0 (a symbol of 0 at run time) copies the input's dim and the element count says nothing (a
    breaker: [x.shape[1], x.shape[0], -1] of an [a, b, 6] x with a = 0 is [5, 5, 0])."""
    return all(p is not None or (isinstance(y, int) and y != 0) or (i < len(x_dims) and y == x_dims[i])
               for i, (p, y) in enumerate(zip(pieces, y_dims, strict=True)))


def _int64_constants(gp: onnx.GraphProto) -> dict:
    """The int64 constants of `gp` by name: inline initializers that no graph input overrides (one that is also a
    graph input is a default only) and Constant nodes' values."""
    overridable = {vi.name for vi in gp.input}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in gp.initializer
                 if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type == onnx.TensorProto.INT64
                 and t.name not in overridable}
    for n in gp.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" and \
                n.attribute[0].t.data_type == onnx.TensorProto.INT64:
            constants[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return constants


#: metadata_props key of the Reshape types the compile path's optimizer trusted (`infer-shapes{checked-zeros=true}`):
#: a JSON list of [label, i, element, input dim], each a computed shape element (an input's dim name, or an int)
#: that must not be 0 while the input's dim at i (a name or an int) is not, which optc's library checks when it
#: runs (`lowering.relax_lowering`): the types hold for every input it runs, whatever rewrite consumed the Reshape
CHECKED_ZEROS_KEY = "optc.checked_zeros"


def _zero_copy_guards(pieces: list, x_dims: list, y_dims: list, checkable: set[str]) -> list | None:
    """[(i, element, input dim)] for the computed elements of a Reshape that a 0 could make copy another dim than
    ONNX's inference gave (see `_zero_safe`), each named by a graph input's dim (in `checkable`) or an int, as is
    the input's dim (past the input's rank: 1, a 0 there copies nothing); None when one is not so named."""
    guards = []
    for i, (p, y) in enumerate(zip(pieces, y_dims, strict=True)):
        if p is not None or (isinstance(y, int) and y != 0) or (i < len(x_dims) and y == x_dims[i]):
            continue
        x = x_dims[i] if i < len(x_dims) else 1
        if not isinstance(y, str) or y not in checkable or not (isinstance(x, int) or x in checkable):
            return None
        guards.append((i, y, x))
    return guards


def _input_dim_names(gp: onnx.GraphProto) -> set[str]:
    return {d.dim_param for vi in gp.input if vi.type.tensor_type.HasField("shape")
            for d in vi.type.tensor_type.shape.dim if d.dim_param}


def _resolved_dims(gp_model: onnx.ModelProto, inferred: dict[str, onnx.TypeProto],
                   crops: bool = True, checkable: set[str] | None = None) -> dict[str, onnx.TypeProto]:
    """Dims ONNX's inference leaves unnamed in a dynamic-shape export, where they follow from what it knows (each
    sound for every input the graph runs on, unlike onnxruntime's symbolic inference, which takes two symbols that
    meet in a broadcast to be equal):

    - the -1 of a Reshape (`view(b, t, heads, -1)` of an [b, t, 256] tensor: the head size 64, and through it the
      attention's scale `q.shape[-1] ** 0.5`), from the element count: the input's dims over the output's other
      dims, where the symbols cancel exactly (the same symbol is the same length) and what is left is a whole
      number; only a literal -1 of the shape input, and computed elements only where a 0 among them could not
      copy another dim (`_zero_safe`);
    - Range(0, Gather(Shape(x), i), 1) (`arange(t)`): x's dim i;
    - Slice: an axis not sliced keeps its dim; one sliced from 0 to a dim t is min(t, L) (`_slice_type`);
    - Tile's symbolic dims under a repeat of 1 (`_tile_type`);
    - a broadcast of t against 1, t or crops of t is t (`_broadcast_type`).

    `inferred`: the value types known (by name); `crops`: name crops (not where the model's inputs name a dim
    like one); `checkable` (the compile path: `infer_model_types(checked_zeros=True)`): the graph inputs' dim
    names, by which computed Reshape elements that are not `_zero_safe` can be guarded (`_zero_copy_guards`).
    Returns the types it completed, by value name."""
    gp = gp_model.graph
    types = dict(inferred)
    for vi in gp.input:
        types.setdefault(vi.name, vi.type)
    for t in gp.initializer:
        types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    constants = _int64_constants(gp)
    producers = {o: n for n in gp.node for o in n.output}
    resolved: dict[str, onnx.TypeProto] = {}
    for n in gp.node:
        if n.op_type != "Reshape" or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        x_tp, y_tp = types.get(n.input[0]), types.get(n.output[0])
        if x_tp is None or y_tp is None or not y_tp.tensor_type.HasField("shape") or \
                not x_tp.tensor_type.HasField("shape"):
            continue
        x_dims = [_dim_name(d) for d in x_tp.tensor_type.shape.dim]
        y_dims = [_dim_name(d) for d in y_tp.tensor_type.shape.dim]
        unknown = [i for i, d in enumerate(y_dims) if d is None]
        pieces = _shape_pieces(n.input[1], producers, constants, types)
        if len(unknown) != 1 or None in x_dims or pieces is None or len(pieces) != len(y_dims) or \
                pieces[unknown[0]] != -1 or not (_zero_safe(pieces, x_dims, y_dims) or checkable is not None
                                                 and _zero_copy_guards(pieces, x_dims, y_dims, checkable) is not None):
            continue
        x_syms = sorted(d for d in x_dims if isinstance(d, str))
        y_syms = sorted(d for d in y_dims if isinstance(d, str))
        x_int = int(np.prod([d for d in x_dims if isinstance(d, int)], dtype=np.int64))
        y_int = int(np.prod([d for d in y_dims if isinstance(d, int)], dtype=np.int64))
        if x_syms != y_syms or y_int <= 0 or x_int % y_int:
            continue
        tp = onnx.TypeProto()
        tp.CopyFrom(y_tp)
        dim = tp.tensor_type.shape.dim[unknown[0]]
        dim.Clear()
        dim.dim_value = x_int // y_int
        resolved[n.output[0]] = tp
    for n in gp.node:
        if n.op_type == "Range" and n.domain in ("", "ai.onnx") and len(n.input) == 3 and \
                _is_const(constants, n.input[0], 0) and _is_const(constants, n.input[2], 1):
            tp, length = types.get(n.output[0]), _shape_dim(n.input[1], producers, constants, types)
            if tp is not None and tp.tensor_type.HasField("shape") and len(tp.tensor_type.shape.dim) == 1 and \
                    _dim_name(tp.tensor_type.shape.dim[0]) is None and isinstance(length, str):
                out = onnx.TypeProto()
                out.CopyFrom(tp)
                out.tensor_type.shape.dim[0].Clear()
                out.tensor_type.shape.dim[0].dim_param = length
                resolved[n.output[0]] = out
    for n in gp.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type == "Slice":
            tp = _slice_type(n, producers, constants, types, crops)
        elif n.op_type == "Tile":
            tp = _tile_type(n, constants, types)
        elif n.op_type in _BROADCASTING:
            tp = _broadcast_type(n, types, crops)
        else:
            continue
        if tp is not None:
            resolved[n.output[0]] = tp
    return resolved


_CROP = "min("
#: ops whose output shape is their inputs' multidirectional broadcast (ONNX's Broadcasting.md)
_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less", "Greater",
                           "LessOrEqual", "GreaterOrEqual", "Where", "Max", "Min", "Sum", "Mean", "BitShift",
                           "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu"})


def crop_dim(symbol: str, length: int) -> str:
    """The name of the dim min(symbol, length): a static axis of `length` sliced from 0 to a dim `symbol` long
    (`causal[:t]` of a dynamic-shape export). Never a plain symbol's name: it is the same length as `symbol` only
    where symbol <= length."""
    return f"{_CROP}{symbol},{length})"


def is_crop_of(d, symbol) -> bool:
    """`d` is the dim min(symbol, L) of `crop_dim`, L >= 2 (exactly: a symbol may itself hold commas)."""
    prefix = f"min({symbol},"
    if not (isinstance(symbol, str) and isinstance(d, str) and d.startswith(prefix) and d.endswith(")")):
        return False
    length = d[len(prefix):-1]
    return length.isdigit() and int(length) >= 2


def _slice_type(n, producers: dict, constants: dict, types: dict, crops: bool) -> onnx.TypeProto | None:
    """Slice's output dims that ONNX's inference leaves unnamed where a start or end is computed (it then names
    none): an axis not sliced keeps the input's dim, and an axis sliced from 0 with step 1 to an end that is a dim
    t (`Gather(Shape(y), i)`) of a static axis L >= 2 keeps min(t, L) of it (`crop_dim`: `causal[:t]`; not where
    `crops` is False: the model names some dim like a crop)."""
    tp, x_tp = types.get(n.output[0]), types.get(n.input[0])
    if tp is None or x_tp is None or not tp.tensor_type.HasField("shape") or not x_tp.tensor_type.HasField("shape") \
            or len(n.input) < 3 or len(tp.tensor_type.shape.dim) != len(x_tp.tensor_type.shape.dim):
        return None
    x_dims = [_dim_name(d) for d in x_tp.tensor_type.shape.dim]
    rank = len(x_dims)
    starts = constants.get(n.input[1])
    has_steps = len(n.input) > 4 and bool(n.input[4])
    steps = constants.get(n.input[4]) if has_steps else None  # (a step computed at run time: anything)
    axes = constants.get(n.input[3]) if len(n.input) > 3 and n.input[3] else (
        np.arange(starts.size) if starts is not None else None)
    if axes is None:
        return None
    axes = [int(a) + (rank if a < 0 else 0) for a in axes.reshape(-1).tolist()]
    ends = _end_dims(n.input[2], producers, constants, types)
    from_origin = starts is not None and starts.size == len(axes) and not np.any(starts != 0) and (
        not has_steps or (steps is not None and not np.any(steps != 1))) and ends is not None and \
        len(ends) == len(axes) and crops
    # (a crop of an axis of 0 or 1 is that long whatever t is, and broadcasts: only L >= 2 is named min(t, L))
    out = onnx.TypeProto()
    out.CopyFrom(tp)
    dims = out.tensor_type.shape.dim
    changed = False
    for axis, (dim, d) in enumerate(zip(dims, x_dims, strict=True)):
        if _dim_name(dim) is not None:
            continue
        if axis not in axes:
            new = d  # an axis not sliced is kept
        elif from_origin and isinstance(ends[axes.index(axis)], str) and isinstance(d, int) and d >= 2:
            new = crop_dim(ends[axes.index(axis)], d)
        else:
            continue
        if new is None:
            continue
        dim.Clear()
        if isinstance(new, int):
            dim.dim_value = new
        else:
            dim.dim_param = new
        changed = True
    return out if changed else None


def _tile_type(n, constants: dict, types: dict) -> onnx.TypeProto | None:
    """Tile's symbolic output dims (ONNX's inference makes fresh ones for every symbolic input dim) from its
    input's: dim i is the input's dim i times repeats[i], so a repeat of 1 keeps the input's symbol
    (repeat_interleave's Unsqueeze + Tile of a [batch, heads, 1, seq, dim] tensor lost both the batch and the
    sequence), and a known input dim gives the product."""
    tp, x_tp, repeats = types.get(n.output[0]), types.get(n.input[0]), \
        constants.get(n.input[1]) if len(n.input) > 1 else None
    if tp is None or x_tp is None or repeats is None or not tp.tensor_type.HasField("shape") or \
            not x_tp.tensor_type.HasField("shape") or len(x_tp.tensor_type.shape.dim) != repeats.size or \
            len(tp.tensor_type.shape.dim) != repeats.size:
        return None
    out = onnx.TypeProto()
    out.CopyFrom(tp)
    changed = False
    for dim, d, r in zip(out.tensor_type.shape.dim, [_dim_name(d) for d in x_tp.tensor_type.shape.dim],
                         repeats.reshape(-1).tolist(), strict=True):
        if _dim_name(dim) is not None or d is None or (isinstance(d, str) and int(r) != 1):
            continue
        dim.Clear()
        if isinstance(d, int):
            dim.dim_value = d * int(r)
        else:
            dim.dim_param = d
        changed = True
    return out if changed else None


def _end_dims(name: str, producers: dict, constants: dict, types: dict) -> list | None:
    """Slice ends: a constant's ints, or one dim of a shape (`Unsqueeze(Gather(Shape(y), i))` or
    `Slice(Shape(y), [i], [i + 1])`) as its name."""
    if name in constants:
        return [int(v) for v in constants[name].reshape(-1)]
    node = producers.get(name)
    if node is not None and node.op_type == "Unsqueeze":
        d = _shape_dim(node.input[0], producers, constants, types)
        return None if d is None else [d]
    if node is not None and node.op_type == "Slice" and len(node.input) in (3, 4) and \
            all(i in constants and constants[i].size == 1 for i in node.input[1:3]):
        shape = producers.get(node.input[0])
        lo, hi = int(constants[node.input[1]].reshape(-1)[0]), int(constants[node.input[2]].reshape(-1)[0])
        x_tp = types.get(shape.input[0]) if shape is not None and \
            shape.op_type == "Shape" and not shape.attribute else None
        if x_tp is not None and x_tp.tensor_type.HasField("shape") and 0 <= lo == hi - 1 < \
                len(x_tp.tensor_type.shape.dim) and (len(node.input) == 3 or _is_const(constants, node.input[3], 0)):
            return [_dim_name(x_tp.tensor_type.shape.dim[lo])]
    return None


def _broadcast_type(n, types: dict, crops: bool) -> onnx.TypeProto | None:
    """An output dim of a broadcasting op that ONNX's inference leaves unnamed where the inputs' dims there are
    a symbol t, 1, or crops of t (min(t, L), `crop_dim`): it is t wherever the op runs (a crop shorter than t
    and not 1 does not broadcast against t: the op fails)."""
    tp = types.get(n.output[0])
    ins = [types.get(i) for i in n.input if i]
    if tp is None or not tp.tensor_type.HasField("shape") or any(
            t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape") for t in ins):
        return None
    rank = len(tp.tensor_type.shape.dim)
    shapes = [[_dim_name(d) for d in t.tensor_type.shape.dim] for t in ins]
    if any(len(sh) > rank for sh in shapes):
        return None
    out = onnx.TypeProto()
    out.CopyFrom(tp)
    changed = False
    for i, dim in enumerate(out.tensor_type.shape.dim):
        if _dim_name(dim) is not None:
            continue
        here = [sh[i - (rank - len(sh))] for sh in shapes if i - (rank - len(sh)) >= 0]
        if any(d is None for d in here):
            continue
        plain = {d for d in here if isinstance(d, str) and not d.startswith(_CROP)}
        if len(plain) == 1:
            (t,) = plain
            if all(d == 1 or d == t or (crops and is_crop_of(d, t)) for d in here):
                dim.Clear()
                dim.dim_param = t
                changed = True
    return out if changed else None


def crops_trusted(graph) -> bool:
    """Whether dims named like crops (`crop_dim`) in `graph` (an IR Graph, or None) are optc's: no graph input or
    output names a dim so (a model whose inputs or outputs do gets no crop names, and rules must not read its dims
    as crops; a graph output that is itself a crop also turns them off: a lost fusion, not a wrong one)."""
    return graph is None or not any(isinstance(d, str) and d.startswith(_CROP)
                                    for v in (*graph.inputs, *graph.outputs) if v is not None
                                    for d in (v.shape or ()))


def _names_like_crops(gp: onnx.GraphProto) -> bool:
    """A graph input or output names a dim like a crop (`min(...`): then no dim is named so (it could not be told
    apart)."""
    return any(d.dim_param.startswith(_CROP) for vi in (*gp.input, *gp.output) for d in vi.type.tensor_type.shape.dim)


def _is_const(constants: dict, name: str, value: int) -> bool:
    return name in constants and constants[name].size == 1 and int(constants[name].reshape(-1)[0]) == value


def _shape_dim(name: str, producers: dict, constants: dict, types: dict) -> int | str | None:
    """The dim a scalar is, where it is `Gather(Shape(x), i)` (through Casts to integer types) and x's dim i is
    named: the `arange(x.shape[i])` of a dynamic-shape export is [that dim] long."""
    node = producers.get(name)
    while node is not None and node.op_type == "Cast" and \
            node.attribute[0].i in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Gather" or len(node.input) != 2 or node.input[1] not in constants or \
            constants[node.input[1]].ndim != 0:
        return None
    shape = producers.get(node.input[0])
    if shape is None or shape.op_type != "Shape" or shape.attribute:
        return None
    x_tp = types.get(shape.input[0])
    if x_tp is None or not x_tp.tensor_type.HasField("shape"):
        return None
    dims = x_tp.tensor_type.shape.dim
    i = int(constants[node.input[1]])
    return _dim_name(dims[i]) if -len(dims) <= i < len(dims) else None


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


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)


def _declared(proto: onnx.ModelProto, known: dict[str, onnx.TypeProto]) -> onnx.ModelProto:
    """A copy of `proto` with the types `known` declared (ONNX keeps a declared dim where it infers none, and a
    symbol it inferred before over the one it would infer now: the fresh symbols of an earlier inference go)."""
    given = onnx.ModelProto()
    given.CopyFrom(proto)
    for vi in given.graph.value_info:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param.startswith("unk__"):
                d.Clear()
    for name, tp in known.items():
        vi = given.graph.value_info.add()
        vi.name = name
        vi.type.CopyFrom(tp)
    return given


def _zero_copying_reshapes(gp_model: onnx.ModelProto, types: dict, checkable: set[str] | None = None,
                           guards: dict | None = None) -> dict[str, onnx.TypeProto]:
    """Reshapes (allowzero 0) to which ONNX's inference gave dims that hold only while no computed shape element
    is 0: such an element copies the input's dim at its position, where ONNX names it by what it computes (a
    breaker's Reshape(t [1, 6], Concat(Shape(x)[0:1], [6])) typed [a, 6] is [1, 6] at a = 0, and a rule then
    dropped a Where on it). Returns, by output name, their types with those dims (and a -1's) unnamed. With
    `checkable` (see `_resolved_dims`), a Reshape whose elements can all be guarded keeps its types and its guards
    go into `guards` (by output name: [label, i, element, input dim] each)."""
    gp = gp_model.graph
    constants = _int64_constants(gp)
    producers = {o: n for n in gp.node for o in n.output}
    all_types = dict(types)
    for vi in gp.input:
        all_types.setdefault(vi.name, vi.type)
    out: dict[str, onnx.TypeProto] = {}
    for n in gp.node:
        if n.op_type != "Reshape" or n.domain not in ("", "ai.onnx") or len(n.input) < 2 or n.input[1] in constants \
                or any(a.name == "allowzero" and a.i for a in n.attribute):
            continue
        y_tp, x_tp = all_types.get(n.output[0]), all_types.get(n.input[0])
        if y_tp is None or not y_tp.tensor_type.HasField("shape"):
            continue
        # ONNX's fresh symbols (unk__N) too: they name a dim as much as a graph input's symbol does
        y_dims = [_symbol(d) for d in y_tp.tensor_type.shape.dim]
        x_dims = [_symbol(d) for d in x_tp.tensor_type.shape.dim] if x_tp is not None and \
            x_tp.tensor_type.HasField("shape") else []
        pieces = _shape_pieces(n.input[1], producers, constants, all_types)
        pieces = pieces if pieces is not None and len(pieces) == len(y_dims) else [None] * len(y_dims)
        unsafe = [i for i, (p, y) in enumerate(zip(pieces, y_dims, strict=True)) if p is None and y is not None
                  and not ((isinstance(y, int) and y != 0) or (i < len(x_dims) and y == x_dims[i])
                           or _count_forbids_copy(pieces, x_dims, i))]
        if not unsafe:
            continue
        found = _zero_copy_guards(pieces, x_dims, y_dims, checkable) if checkable is not None else None
        if found is not None and guards is not None:
            guards[n.output[0]] = [[f"{n.op_type} node '{n.name or n.output[0]}'", i, y, x] for i, y, x in found]
            continue
        tp = onnx.TypeProto()
        tp.CopyFrom(y_tp)
        for i, p in enumerate(pieces):
            if i in unsafe or p == -1:
                tp.tensor_type.shape.dim[i].Clear()
        out[n.output[0]] = tp
    return out


def _opaque_shapes(proto: onnx.ModelProto, outputs: set[str]) -> onnx.ModelProto:
    """A copy of `proto` in which the Reshapes making `outputs` read their shapes from graph inputs of their own
    (int64 [k]: ONNX's inference then knows the rank and no dim)."""
    given = onnx.ModelProto()
    given.CopyFrom(proto)
    types: dict[str, onnx.TypeProto] = {}
    _collect(_infer(proto).graph, types)
    for i, n in enumerate(given.graph.node):
        if n.op_type == "Reshape" and n.output[0] in outputs:
            name = f"optc_opaque_shape_{i}"
            tp = types.get(n.input[1])
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim] \
                if tp is not None and tp.tensor_type.HasField("shape") else [None]
            given.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, dims))
            n.input[1] = name
    return given


def _contradicts(declared: onnx.TypeProto, inferred: onnx.TypeProto) -> bool:
    """Two tensor types that cannot describe the same value: other element types, ranks, or a dim both give as a
    different number."""
    if not (declared.HasField("tensor_type") and inferred.HasField("tensor_type")):
        return False
    a, b = declared.tensor_type, inferred.tensor_type
    if a.elem_type and b.elem_type and a.elem_type != b.elem_type:
        return True
    if not (a.HasField("shape") and b.HasField("shape")):
        return False
    if len(a.shape.dim) != len(b.shape.dim):
        return True
    return any(x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value != y.dim_value
               for x, y in zip(a.shape.dim, b.shape.dim, strict=True))


def _stale_declarations(source: onnx.ModelProto) -> set[str]:
    """The main graph's values whose declared type (`value_info`: an exporter's, or one a tool left after editing
    the graph) the graph contradicts: ONNX's inference without the declarations gives another element type, rank
    or static dim. onnxruntime runs such a model on the graph's own shapes (onnx.checker's full check rejects it);
    optc's rules read heads and sizes from the types, so a stale one fused an attention with the wrong head count."""
    declared = {vi.name: vi.type for vi in source.graph.value_info}
    if not declared:
        return set()
    bare = onnx.ModelProto()
    bare.CopyFrom(source)
    bare.graph.ClearField("value_info")
    try:
        inferred = _infer(bare)
    except Exception:  # noqa: BLE001 - an inference failure is reported by the main run
        return set()
    return {vi.name for vi in inferred.graph.value_info
            if vi.name in declared and _contradicts(declared[vi.name], vi.type)}


def infer_model_types(model: Model, *, checked_zeros: bool = False) -> int:
    """Whole-model inference; returns how many value types were filled in (raises on failure).

    A Reshape (allowzero 0) whose computed shape element may be 0 at run time copies the input's dim there, so the
    dims ONNX's inference gives it hold only while no such element is 0: they are left unnamed, unless
    `checked_zeros` (the model is lowered by optc) and each such element and the dim it would copy are named by the
    graph inputs' dims (or are ints): then the types are kept and the conditions recorded in the model's
    `metadata_props[CHECKED_ZEROS_KEY]`, which optc's library checks when it runs (the call fails where such a 0
    would copy another dim), so they hold for every input it runs, whatever rewrite later consumes the Reshape."""
    from ...ir.onnx_export import to_onnx

    source = to_onnx(model, _stub_writer)
    stale = _stale_declarations(source)
    if stale:  # the graph's own types replace them
        for g in (model.graph, *model.graph.subgraphs()):
            for node in g:
                for o in node.outputs:
                    if o is not None and o.name in stale:
                        o.type = None
        source = to_onnx(model, _stub_writer)
    source.ClearField("functions") if not model.functions else None
    crops = not _names_like_crops(source.graph)
    opaque: dict[str, onnx.TypeProto] = {}
    checkable = _input_dim_names(source.graph) if checked_zeros else None
    guards: dict[str, list] = {}
    for _ in range(_OPAQUE_ROUNDS):
        proto = _opaque_shapes(source, set(opaque)) if opaque else source
        known = dict(opaque)
        inferred = _infer(_declared(proto, known) if known else proto)
        types = dict(known)
        _collect(inferred.graph, types)
        for _ in range(_RESOLVE_ROUNDS):
            resolved = {name: tp for name, tp in _resolved_dims(inferred, types, crops, checkable).items()
                        if known.get(name) != tp}
            if not resolved:
                break
            known.update(resolved)
            inferred = _infer(_declared(proto, known))
            types = dict(known)  # (the declared types first: ONNX may list a value again with the type it inferred)
            _collect(inferred.graph, types)
        # Reshapes whose types hold only while no computed shape element is 0: again, their shapes hidden from
        # ONNX's data propagation (each round can only add some: the types they rested on were resolved)
        more = {k: v for k, v in _zero_copying_reshapes(inferred, types, checkable, guards).items()
                if k not in opaque}
        if not more:
            break
        opaque.update(more)
    if guards:
        _record_guards(model, [g for name, found in guards.items() if name not in opaque for g in found])
    count = 0
    cache: dict[bytes, object] = {}
    graphs = [model.graph, *model.graph.subgraphs()]
    # what such a Reshape reaches is typed again, whatever it was declared (an exporter's value_info, or ONNX's
    # inference as it was read into the model, names those dims just as wrongly)
    retype = _reached(model.graph, set(opaque))
    fresh = _fresh_symbols(graphs, types, retype)
    for g in graphs:
        for node in g:
            for o in node.outputs:
                if o is None or not o.name:
                    continue
                if o.name in retype and o.name in types and isinstance(o.type, TensorType):
                    try:
                        new = type_from_proto(fresh(types[o.name]))
                    except Exception:  # noqa: BLE001 - a type optc's IR does not model: left as it is
                        new = None
                    if isinstance(new, TensorType) and new.dtype == o.type.dtype and new != o.type:
                        o.type = new
                        count += 1
                    continue
                if _known(o.type) and not (isinstance(o.type, TensorType) and (
                        o.type.shape is None or _unknown_dims(o.type.shape))):
                    continue
                tp = types.get(o.name)
                if tp is None:
                    continue
                tp = fresh(tp)
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
    return count


def _fresh_symbols(graphs: list[Graph], types: dict[str, onnx.TypeProto], retype: set[str]):
    """A function giving an inferred TypeProto (of `types`, this run's) with ONNX's fresh symbols (unk__N) renamed
    so they do not collide with the symbols the model's values already have. ONNX's inference numbers them from
    unk__0 each run (the fresh symbols of earlier runs are cleared from what it is given, `_declared`), so a value
    typed in an earlier run and kept, and one typed now, could otherwise share a name for two different dims,
    which the rules and onnxruntime's buffer reuse take for equal (CI's conformance suite: AffineGrid's expanded
    function at -O3, "Shape mismatch attempting to re-use buffer"). A name this run gave a dim of a value whose type the model
    keeps (not in `retype`) where that type has a symbol is that symbol (the same value's dim); any other is a new
    unk__N no value has. A graph input's symbols are what ONNX was given: they stay."""
    used, mapped = set(), {}
    for g in graphs:
        for v in g.inputs:
            if v is not None and isinstance(v.type, TensorType) and v.type.shape is not None:
                mapped.update((d, d) for d in v.type.shape if isinstance(d, str))
    for g in graphs:
        for v in [*g.inputs, *(o for n in g for o in n.outputs)]:
            if v is None or not isinstance(v.type, TensorType) or v.type.shape is None:
                continue
            used.update(d for d in v.type.shape if isinstance(d, str))
            tp = types.get(v.name) if v.name not in retype else None
            if tp is None or not tp.HasField("tensor_type") or len(tp.tensor_type.shape.dim) != len(v.type.shape):
                continue
            for d, old in zip(tp.tensor_type.shape.dim, v.type.shape, strict=True):
                if d.dim_param.startswith("unk__") and isinstance(old, str):
                    mapped.setdefault(d.dim_param, old)
    numbers = iter(range(1 << 62))

    def fresh(tp: onnx.TypeProto) -> onnx.TypeProto:
        if not tp.HasField("tensor_type") or not any(d.dim_param.startswith("unk__")
                                                     for d in tp.tensor_type.shape.dim):
            return tp
        out = onnx.TypeProto()
        out.CopyFrom(tp)
        for d in out.tensor_type.shape.dim:
            if d.dim_param.startswith("unk__"):
                if d.dim_param not in mapped:
                    name = d.dim_param
                    while name in used:
                        name = f"unk__{next(numbers)}"
                    used.add(name)
                    mapped[d.dim_param] = name
                d.dim_param = mapped[d.dim_param]
        return out

    return fresh


def _record_guards(model: Model, guards: list) -> None:
    """Add `guards` ([label, i, element, input dim] each) to the model's CHECKED_ZEROS_KEY list (no repeats)."""
    import json

    known = json.loads(model.metadata_props.get(CHECKED_ZEROS_KEY, "[]"))
    known += [g for g in guards if g not in known]
    model.metadata_props[CHECKED_ZEROS_KEY] = json.dumps(known)


def _reached(g: Graph, names: set[str]) -> set[str]:
    """The names of `names` and of every value of `g` computed from them (its nodes are in topological order)."""
    reached = set(names)
    if not reached:
        return reached
    for node in g:
        if any(i is not None and i.name in reached for i in node.inputs):
            reached.update(o.name for o in node.outputs if o is not None and o.name)
    return reached


def infer_graph_nodewise(g: Graph, opsets: dict[str, int], ops: frozenset | None = None) -> int:
    """Infer the unknown output types of `g`'s nodes one by one (only those whose (domain, op type) is in `ops`,
    when given); returns how many were filled in."""
    count = 0
    for node in g:
        if all(o is None or _known(o.type) for o in node.outputs) or node.subgraphs():
            continue
        if ops is not None and (node.domain, node.op_type) not in ops:
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
        "checked-zeros": "keep ONNX's types of Reshapes whose computed shape element may be 0 at run time (which "
                         "then copies the input's dim): for a model optc lowers, whose library fails the call where "
                         "such a 0 would copy another dim (optc compile's pipeline)",
    }
    nodewise: bool = False
    checked_zeros: bool = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        inferred = 0
        fn_opsets = function_graphs(model)
        done_main = False
        if not self.nodewise:
            try:
                inferred += infer_model_types(model, checked_zeros=self.checked_zeros)
                done_main = True
            except Exception:
                done_main = False
        for g in list(model.graphs()):
            in_fn = id(root_graph(g)) in fn_opsets
            opsets = fn_opsets.get(id(root_graph(g))) or dict(model.opset_imports)
            # ONNX's whole-model inference has no schema for onnxruntime's contrib ops: those optc knows, here
            inferred += infer_graph_nodewise(g, opsets, CONTRIB_OPS if done_main and not in_fn else None)
        # Types are annotations, not rewrites: report no change so fixed-point groups are not kept spinning.
        return PassResult(False, counts={"inferred-types": inferred} if inferred else {})
