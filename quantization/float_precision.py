"""float16 / bfloat16 conversion (`optc quantize --float16 | --bfloat16`, pass `convert-float`).

Every float32 tensor of the main graph (initializers, Constant nodes, activations, `Cast(to=float)` targets,
`ConstantOfShape` fill values) becomes the target type, except float32 islands kept for:

- ops onnxruntime's CPU provider cannot load at that type: found by probing (a one-node model with the node's
  op, domain, opset and attributes and the new type on its float inputs, loaded with `optc.ortsession.session`),
  cached in memory per (domain, op, opset, input types, attributes). Note: for float16, onnxruntime inserts its
  own float32 Casts around ops that have only a float32 kernel (its InsertCastTransformer), so such an op still
  loads and is converted (it runs natively in float16 on providers that have the kernel); bfloat16 has no such
  fallback, so with bfloat16 most compute ops on the CPU provider stay float32 islands;
- with bfloat16, every node: onnxruntime's CPU provider has few bfloat16 kernels, and bfloat16 data-movement
  chains crashed its graph optimizer (a segfault at ORT_ENABLE_ALL, onnxruntime 1.31), so bfloat16 means
  bfloat16 *weights* (half the file) with float32 compute; bfloat16 compute belongs to the TVM back end
  (`optc compile --precision bf16`);
- nodes named, or whose op type is listed, in `exclude`;
- values whose magnitude exceeds the type's largest finite number (65504 for float16, ~3.39e38 for bfloat16):
  initializers and Constant nodes by their data, activations by calibrated `ranges`; every node reading or
  producing such a value stays float32;
- op inputs/outputs whose ONNX type constraint (onnx.defs schema at the model's opset) does not allow the type
  (e.g. Resize's float32-only `scales`); a node none of whose float32 positions allows it stays float32;
- nodes with subgraphs (If/Loop/Scan): they and their bodies are left float32 entirely, as are outer-scope values
  their bodies read; model-local function bodies are not touched either.

Weights of float32 islands (initializers and Constant nodes of at least `_MIN_ISLAND_WEIGHT` elements read at a
position that allows the type) are still stored in the target type with a Cast to float32 in front: the file
halves. Cast insertion follows onnxconverter-common's `float16.convert_float_to_float16` but one Cast per value
and direction (shared by all consumers); data-movement ops (Reshape, Transpose, Gather, Cast, ...) between float32
values stay float32, so no float32 -> low -> float32 pair between two islands appears. Graph inputs/outputs keep
float32 with `keep_io_types` (a Cast at the boundary), else change type.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import onnx

from ..errors import OptcError
from ..ir.core import Graph, Model, Node, Value, constant_node_value, outer_scope_values
from ..ir.onnx_export import node_to_proto
from ..ir.rewriter import Rewriter
from ..ir.schema import Trait, get_schema, has_trait
from ..ir.tensors import NumpyTensor
from ..ir.types import DataType, TensorType, type_to_proto
from ..ortsession import session
from ..rewrites.context import PassContext, PassResult
from ..rewrites.pass_manager import Pass, register_pass
from .selection import matches, node_label

__all__ = ["ConvertFloat", "convert_float"]

_TARGETS = {"float16": DataType.FLOAT16, "bfloat16": DataType.BFLOAT16}
#: why bfloat16 keeps every activation in float32 (its weights are still stored in bfloat16)
_BF16_ACTIVATIONS = ("bfloat16 activations are not used on onnxruntime's CPU provider: it has few bfloat16 "
                     "kernels, and bfloat16 data-movement chains (Gather -> Transpose -> Shape/Cast) crash its "
                     "graph optimizer (1.31); the weights are stored in bfloat16")
_MIN_ISLAND_WEIGHT = 64  # elements: below this a Cast node costs more than storing the island's tensor in float32
_F32 = DataType.FLOAT


class _Want(enum.Enum):
    LOW = "low"  # read in the target type
    F32_WEAK = "f32"  # read in float32 by an island whose weights may still be stored in the target type
    F32 = "f32-strict"  # read in float32, stored in float32 (excluded node, type constraint, overflow, subgraph)


@dataclass
class _Plan:
    """What happens to one node: the float32 input/output positions that become the target type, or why not."""

    low_in: set[int] = field(default_factory=set)
    low_out: set[int] = field(default_factory=set)
    reason: str | None = None  # set: the node stays float32
    weights_low: bool = False  # an island whose float32 weights may be stored in the target type


# -- probing onnxruntime -----------------------------------------------------------------------------------

_PROBES: dict[tuple, str | None] = {}  # key -> None (loads) or onnxruntime's first error line


def _attr_signature(proto: onnx.NodeProto) -> tuple:
    """The attributes as a hashable key (large tensor attributes by name and type only)."""
    sig = []
    for a in sorted(proto.attribute, key=lambda a: a.name):
        sig.append((a.name, a.SerializeToString() if a.ByteSize() <= 256 else a.type))
    return tuple(sig)


def _probe(node: Node, types: Sequence[DataType | None], opsets: Mapping[str, int]) -> str | None:
    """Load a one-node model of `node` with input element types `types` on onnxruntime's CPU provider.

    Returns None when it loads, else onnxruntime's first error line. Cached per (domain, op, opset, input
    types, number of outputs, attributes).
    """
    proto = node_to_proto(node)
    opset = opsets.get(node.domain, 1)
    key = (node.domain, node.op_type, opset, tuple(types), len(node.outputs), _attr_signature(proto))
    if key in _PROBES:
        return _PROBES[key]
    inputs = []
    names = []
    for i, (v, t) in enumerate(zip(node.inputs, types, strict=True)):
        if v is None or t is None:
            names.append("")
            continue
        vi = onnx.ValueInfoProto(name=f"in{i}")
        shape = v.shape
        vi.type.CopyFrom(type_to_proto(TensorType(t, tuple(shape) if shape is not None else None)))
        inputs.append(vi)
        names.append(f"in{i}")
    outs = [f"out{i}" if o is not None else "" for i, o in enumerate(node.outputs)]
    del proto.input[:]
    proto.input.extend(names)
    del proto.output[:]
    proto.output.extend(outs)
    proto.name = "probe"
    graph = onnx.helper.make_graph([proto], "probe", inputs, [onnx.ValueInfoProto(name=o) for o in outs if o])
    ids = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    ir_version = onnx.helper.find_min_ir_version_for(ids, ignore_unknown=True)
    model = onnx.helper.make_model(graph, opset_imports=ids, ir_version=max(ir_version, 7))
    try:
        session(model, optimize=False, threads=1, label="probe")
        result = None
    except OptcError as exc:
        result = str(exc).split(": ", 1)[-1]
    _PROBES[key] = result
    return result


# -- type constraints --------------------------------------------------------------------------------------


def _type_param(schema: onnx.defs.OpSchema, index: int, output: bool) -> str | None:
    """The formal type string (a parameter such as 'T', or a literal 'tensor(float)') of an input/output."""
    formals = schema.outputs if output else schema.inputs
    if not formals:
        return None
    if index >= len(formals):
        last = formals[-1]
        if last.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return None
        return last.type_str
    return formals[index].type_str


def _allowed(schema: onnx.defs.OpSchema, type_str: str) -> set[str]:
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}


def _is_f32(v: Value | None) -> bool:
    """A float32 tensor (by its type, or an initializer's payload)."""
    return v is not None and (isinstance(v.type, TensorType) or v.type is None) and v.dtype == _F32


# -- the conversion ----------------------------------------------------------------------------------------


class _Converter:
    def __init__(self, model: Model, low: DataType, keep_io_types: bool, ranges: Mapping[str, tuple[float, float]],
                 exclude: set[str]):
        self.model = model
        self.graph: Graph = model.graph
        self.low = low
        self.np_low = low.numpy()
        self.limit = float(ml_dtypes.finfo(self.np_low).max)
        self.keep_io = keep_io_types
        self.ranges = ranges
        self.exclude = exclude
        self.rw = Rewriter(model)
        self.opsets = dict(model.opset_imports)
        self.plans: dict[Node, _Plan] = {}
        self.overflow: dict[Value, str] = {}
        self.pinned: set[Value] = set()
        self.inputs = {v for v in self.graph.inputs}
        self.outputs = {v for v in self.graph.outputs}
        self.f32_values: list[Value] = [v for v in self.graph.inputs if _is_f32(v)]
        self.f32_values += [v for v in self.graph.initializers.values() if v.dtype == _F32 and v not in self.inputs]
        self.f32_values += [o for n in self.graph for o in n.outputs if _is_f32(o)]
        self.changed = 0

    # -- analysis ---------------------------------------------------------------------------------
    def _constants(self) -> list[Value]:
        """float32 constants of the main graph: initializers that are not graph inputs, Constant outputs."""
        found = [v for v in self.graph.initializers.values()
                 if v.dtype == _F32 and v not in self.inputs and v not in self.outputs]
        for n in self.graph.nodes_by_op("Constant"):
            if _is_f32(n.outputs[0]) and n.outputs[0] not in self.outputs and constant_node_value(n) is not None:
                found.append(n.outputs[0])
        return found

    def _find_overflow(self, constants: list[Value]) -> None:
        name = self.low.short_name
        for v in constants:
            a = np.asarray(v.const_value(), dtype=np.float32)
            peak = float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
            if peak > self.limit:
                self.overflow[v] = f"'{v.name}' holds |x| up to {peak:.6g} > {self.limit:.6g} ({name} overflows)"
        named: dict[str, list[Value]] = {}
        if self.ranges:
            for v in (*self.graph.inputs, *(o for n in self.graph for o in n.outputs if o is not None)):
                named.setdefault(v.name, []).append(v)
        for vname, (lo, hi) in self.ranges.items():
            peak = max(abs(float(lo)), abs(float(hi)))
            if peak > self.limit:
                for v in named.get(vname, ()):
                    self.overflow[v] = (f"'{vname}' ranges up to |x| = {peak:.6g} > {self.limit:.6g} "
                                        f"({name} overflows)")

    def _plan(self, node: Node) -> _Plan | None:
        f32_in = [i for i, v in enumerate(node.inputs) if _is_f32(v)]
        f32_out = [i for i, v in enumerate(node.outputs) if _is_f32(v)]
        if not f32_in and not f32_out:
            return None
        plan = _Plan()
        if matches(node, self.exclude):
            plan.reason = "excluded"
            return plan
        if node.subgraphs():
            plan.reason = "has a subgraph (If/Loop/Scan bodies are left float32)"
            return plan
        if (node.domain, node.op_type, node.overload) in self.model.functions:
            plan.reason = "calls a model-local function (its body is left float32)"
            return plan
        if self.low == DataType.BFLOAT16:
            plan.reason = _BF16_ACTIVATIONS
            plan.weights_low = True
            return plan
        unknown = [v.name for v in (*node.inputs, *node.outputs) if v is not None and v.dtype is None]
        if unknown:
            plan.reason = f"unknown type of '{unknown[0]}'"
            return plan
        for v in (*node.inputs, *node.outputs):
            if v is not None and (v in self.overflow or (v in self.pinned and v.producer is node)):
                plan.reason = self.overflow.get(v) or f"'{v.name}' is read inside a subgraph"
                plan.weights_low = True
                return plan
        low_in, low_out, why = self._positions(node, f32_in, f32_out)
        if not low_in and not low_out:
            plan.reason = why
            plan.weights_low = True
            return plan
        types = [self.low if i in low_in else (v.dtype if v is not None else None) for i, v in enumerate(node.inputs)]
        error = _probe(node, types, self.opsets)
        if error is not None:
            base = _probe(node, [v.dtype if v is not None else None for v in node.inputs], self.opsets)
            plan.weights_low = True
            if base is not None:
                plan.reason = f"probe inconclusive: onnxruntime cannot load it at float32 either ({base})"
            else:
                plan.reason = f"no onnxruntime CPU kernel at {self.low.short_name} ({error})"
            return plan
        plan.low_in, plan.low_out = low_in, low_out
        return plan

    def _positions(self, node: Node, f32_in: list[int], f32_out: list[int]) -> tuple[set[int], set[int], str]:
        """The float32 positions whose type constraint allows the target type (outputs only where the type
        follows an input, or a Cast's `to` / ConstantOfShape's `value` says it)."""
        opset = self.opsets.get(node.domain if node.domain != "ai.onnx" else "")
        schema = get_schema(node.domain, node.op_type, opset)
        if schema is None:  # no onnx.defs schema (another domain): the probe decides alone
            return set(f32_in), set(f32_out), ""
        want = f"tensor({self.low.short_name})"
        in_params = {_type_param(schema, i, False) for i in range(len(node.inputs))}
        low_in = {i for i in f32_in if want in _allowed(schema, _type_param(schema, i, False) or "")}
        low_out = set()
        for i in f32_out:
            param = _type_param(schema, i, True) or ""
            follows = param in in_params or (node.domain == "" and node.op_type in ("Cast", "ConstantOfShape"))
            if follows and want in _allowed(schema, param):
                low_out.add(i)
        return low_in, low_out, f"type constraints of {node.op_type} allow no {self.low.short_name} here"

    # -- the type each value is produced in, and wanted in ------------------------------------------
    def produced_low(self, v: Value) -> bool | None:
        """True/False: v is produced in the target type / float32; None: a constant (stored either way)."""
        if v in self.inputs:
            return not self.keep_io and v not in self.pinned and v not in self.overflow
        p = v.producer
        if p is None:
            return None if v.const is not None else False
        if p.op_type == "Constant" and p.domain == "":
            return None
        plan = self.plans.get(v.producer)
        return plan is not None and plan.reason is None and v.index in plan.low_out

    def want(self, node: Node, index: int) -> _Want:
        plan = self.plans.get(node)
        if plan is None:
            return _Want.F32
        if plan.reason is None:
            return _Want.LOW if index in plan.low_in else _Want.F32
        return _Want.F32_WEAK if plan.weights_low else _Want.F32

    def _movement(self) -> None:
        """Data-movement ops between float32 values stay float32 (no float32 -> low -> float32 pair)."""
        work = [n for n in self.graph if n in self.plans and self.plans[n].reason is None and self._moves(n)]
        while work:
            node = work.pop()
            plan = self.plans[node]
            if plan.reason is not None or not self._keep_moving_f32(node, plan):
                continue
            plan.reason = "moves data between float32 values (kept to avoid a cast pair)"
            plan.weights_low = True
            plan.low_in, plan.low_out = set(), set()
            near = [v.producer for v in node.inputs if v is not None and v.producer is not None]
            near += [u.node for o in node.outputs if o is not None for u in o.uses()]
            work.extend(n for n in near if n in self.plans and self.plans[n].reason is None and self._moves(n))

    @staticmethod
    def _moves(node: Node) -> bool:
        return has_trait(node.domain, node.op_type, Trait.SHAPE_OP) or (node.domain, node.op_type) == ("", "Cast")

    def _keep_moving_f32(self, node: Node, plan: _Plan) -> bool:
        acts = [node.inputs[i] for i in plan.low_in if self.produced_low(node.inputs[i]) is not None]
        if acts and not any(self.produced_low(v) for v in acts):
            return True
        outs = [node.outputs[i] for i in plan.low_out]
        if not outs:
            return False
        for o in outs:
            if o in self.outputs and not self.keep_io:
                return False
            if not o.uses() or any(self.want(u.node, u.index) == _Want.LOW for u in o.uses()):
                return False
        return True

    def _store_low(self, v: Value) -> bool:
        """Whether a float32 constant is stored in the target type."""
        if v in self.overflow or v in self.pinned:
            return False
        wants = {self.want(u.node, u.index) for u in v.uses()}
        if _Want.F32 in wants:
            return False
        if _Want.LOW in wants or not wants:
            return True
        return int(np.prod(v.shape or ())) >= _MIN_ISLAND_WEIGHT

    # -- rewriting ---------------------------------------------------------------------------------
    def run(self) -> tuple[dict[str, Any], bool]:
        """Convert; returns the report and whether anything changed."""
        g = self.graph
        for n in g:
            for sub in n.subgraphs():
                self.pinned.update(v for v in outer_scope_values(sub) if _is_f32(v))
        constants = self._constants()
        self._find_overflow(constants)
        for n in g:
            if n.op_type == "Constant" and n.domain == "":
                continue
            plan = self._plan(n)
            if plan is not None:
                self.plans[n] = plan
        self._movement()
        stored_low = {v: self._store_low(v) for v in constants}
        self._retype(stored_low)
        casts = self._insert_casts(stored_low)
        kept = [{"node": node_label(n), "op": n.op_type, "reason": p.reason} for n, p in self.plans.items()
                if p.reason is not None]
        converted = sum(1 for p in self.plans.values() if p.reason is None)
        self.changed += converted + casts
        return {"dtype": self.low.short_name, "converted_nodes": converted, "kept_float32": kept,
                "casts_inserted": casts}, self.changed > 0

    def _low_type(self, v: Value) -> TensorType:
        return TensorType(self.low, v.shape)

    def _low_tensor(self, array: np.ndarray) -> NumpyTensor:
        return NumpyTensor(np.asarray(array, dtype=np.float32).astype(self.np_low), self.low)

    def _retype(self, stored_low: dict[Value, bool]) -> None:
        """Constants, graph inputs and converted nodes' outputs take the target type: payloads and attributes
        through the Rewriter (`set_constant`, `set_attr`), value types directly (a type is no graph edge)."""
        for v, low in stored_low.items():
            if not low:
                continue
            self.changed += 1
            tensor = self._low_tensor(v.const_value())
            if v.producer is None:
                self.rw.set_constant(v, tensor)
            else:
                node = v.producer
                for name in list(node.attributes):
                    self.rw.del_attr(node, name)
                self.rw.set_attr(node, "value", tensor)
            v.type = self._low_type(v)
        for v in self.graph.inputs:
            if _is_f32(v) and self.produced_low(v):
                v.type = self._low_type(v)
                self.changed += 1
        for node, plan in self.plans.items():
            if plan.reason is not None:
                continue
            for i in plan.low_out:
                node.outputs[i].type = self._low_type(node.outputs[i])
            if node.domain == "" and node.op_type == "Cast" and plan.low_out:
                self.rw.set_attr(node, "to", int(self.low))
            if node.domain == "" and node.op_type == "ConstantOfShape" and plan.low_out:
                fill = node.attr("value")
                self.rw.set_attr(node, "value", self._low_tensor(
                    fill.numpy() if fill is not None else np.zeros(1, np.float32)))

    def _insert_casts(self, stored_low: dict[Value, bool]) -> int:
        """One Cast per value and direction where a reader (or a graph output) wants the other type."""
        g = self.graph
        out_low = not self.keep_io
        count = 0
        for v in dict.fromkeys(self.f32_values):
            is_low = v.dtype == self.low
            stale = [u for u in v.uses() if u.node.graph is g and u.node in self.plans
                     and (self.want(u.node, u.index) == _Want.LOW) != is_low]
            as_output = [i for i, o in enumerate(g.outputs) if o is v and out_low != is_low
                         and v.producer is not None]  # an initializer that is an output keeps its name and type
            if not stale and not as_output:
                continue
            to = _F32 if is_low else self.low
            cast_out = Value(self.rw.fresh_name(f"{v.name}_{to.short_name}"), TensorType(to, v.shape))
            cast = Node("Cast", [v], {"to": int(to)}, outputs=[cast_out],
                        name=self.rw.fresh_node_name(f"{v.name}_cast_{to.short_name}"))
            if v.producer is not None:
                self.rw.insert_after(v.producer, cast)
            elif g.first() is not None:
                self.rw.insert_before(g.first(), cast)
            else:
                self.rw.append(g, cast)
            count += 1
            for u in stale:
                self.rw.set_input(u.node, u.index, cast_out)
            if as_output:
                name = v.name
                for i in as_output:
                    self.rw.set_graph_output(g, i, cast_out)
                v.name = self.rw.fresh_name(f"{name}_{v.dtype.short_name}")
                cast_out.name = name
        return count


def convert_float(model: Model, *, dtype: str = "float16", keep_io_types: bool = True,
                  ranges: Mapping[str, tuple[float, float]] | None = None, exclude: Sequence[str] = ()) -> dict:
    """Convert `model`'s float32 tensors to float16 or bfloat16 in place, keeping float32 islands (see the
    module docstring for which and why).

    `dtype`: "float16" or "bfloat16". `keep_io_types`: graph inputs/outputs stay float32 (a Cast at the
    boundary); else they take `dtype`. `ranges`: value name -> (min, max) from calibration (any unit of the
    value itself); a value whose magnitude exceeds `dtype`'s largest finite number keeps its producer and
    readers in float32. `exclude`: node names or op types kept in float32.

    Returns a JSON-serializable report: {"dtype", "converted_nodes", "kept_float32": [{"node", "op", "reason"}],
    "casts_inserted"}. Raises OptcError for a `dtype` other than "float16" / "bfloat16".
    """
    return _convert(model, dtype, keep_io_types, ranges or {}, exclude)[0]


def _convert(model: Model, dtype: str, keep_io_types: bool, ranges: Mapping[str, tuple[float, float]],
             exclude: Sequence[str]) -> tuple[dict[str, Any], bool]:
    low = _TARGETS.get(dtype)
    if low is None:
        raise OptcError(f"unsupported float conversion type '{dtype}' (use float16 or bfloat16)")
    from ..rewrites.passes.infer_shapes import infer_model_types

    try:
        infer_model_types(model)
    except Exception:  # noqa: BLE001 - onnx's inference gave up: the types the model states are used alone
        pass
    return _Converter(model, low, keep_io_types, ranges, set(exclude)).run()


@register_pass
@dataclass
class ConvertFloat(Pass):
    """float32 -> float16/bfloat16 with float32 islands where kernels are missing or values overflow."""

    name: ClassVar[str] = "convert-float"
    description: ClassVar[str] = ("convert float32 tensors to float16 or bfloat16 (dtype=...), keeping float32 "
                                  "where onnxruntime has no kernel or values overflow; keep-io-types=false "
                                  "changes the graph's inputs and outputs too")
    option_help: ClassVar[dict[str, str]] = {
        "dtype": "float16 or bfloat16",
        "keep-io-types": "keep the graph's inputs and outputs float32 (Cast at the boundary)",
    }
    dtype: str = "float16"
    keep_io_types: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _TARGETS:
            raise OptcError(f"pass 'convert-float': unsupported dtype '{self.dtype}' (use float16 or bfloat16)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not ctx.budget.take():  # the whole conversion is one rewrite: a half-converted model is no use
            return PassResult(False, converged=False)
        report, changed = _convert(model, self.dtype, self.keep_io_types, {}, ())
        ctx.record(self.name, "convert-float", f"{report['converted_nodes']} nodes to {self.dtype}")
        return PassResult(changed, counts={"converted-nodes": report["converted_nodes"],
                                           "casts-inserted": report["casts_inserted"]})
