"""`fold-constants`: evaluate nodes whose inputs are all constants, and shape computations on static shapes.

A folded node's outputs become initializers (the output Value object is kept, so its name, its uses and its
place among the graph outputs stay the same). Inside model-local functions, which cannot hold initializers, they
become `Constant` nodes instead. Evaluation uses numpy for the common cheap ops and onnx's reference evaluator
for everything else, except the cases that evaluator computes wrong (`_REFERENCE_WRONG`: LRN, Softmax before
opset 13, LpNormalization p=1, ...), which are not folded. Never folded: non-deterministic ops (op table trait),
ops with side effects, nodes with subgraphs, calls of model-local functions, ops of domains the reference
evaluator does not know, DequantizeLinear (a QDQ model's int8/int4 weights stay quantized, for the runtime's
integer kernels), a Cast that widens a float16/bfloat16 weight of 64 or more elements (weights stored in half
precision stay half the size; the runtime widens them), and results larger than the size limit when folding
them would grow the model (`ConstantOfShape`, `Expand`, `Tile`...): the pass option `size-limit` (bytes), else
the run's `PassContext.fold_size_limit` (`optc optimize --size-limit`; 1 MiB by default). Refused folds are
listed in `PassContext.fold_refusals` so the summary can say so.

IEEE semantics: data movement, integer arithmetic (wrapping as onnxruntime does; integer Div truncates toward
zero, in integers: no float64 round trip of int64 values) and the correctly rounded float operations (+ - * /,
sqrt, casts) fold to exactly what a runtime computes, NaN, infinities and signed zeros included. A result in
another element type than the node's output is refused unless the conversion is exact (a float32 computed
for a float64 output, or an int64 that does not fit an int32 output, is not folded). Integer Div / Mod by
zero is left to the runtime, and so is a node whose value on its constants onnxruntime computes otherwise than
the spec or numpy (`_RUNTIMES_DIFFER`: Relu / Max / Min / Sum of -0.0, ReduceMax and ArgMax over NaN, integer Pow
beyond 2^53, integer reductions that overflow, float Range, ...). Transcendental functions and reductions fold to
numpy's (or the reference evaluator's) value, which ONNX does not specify to the bit: it may differ from a
runtime's by its libm's rounding or summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...ir.core import Graph, Model, Node, Value, constant_node_value
from ...ir.schema import Trait, get_schema, has_trait
from ...ir.tensors import NumpyTensor
from ...ir.types import DataType, TensorType
from ..context import FoldRefusal, PassContext, PassResult
from ..pass_manager import Pass, register_pass
from ._util import describe, function_graphs, graphs_of, root_graph

FROM_CONTEXT = -1  # size_limit: use the run's PassContext.fold_size_limit
_FOLDABLE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


class _Skip(Exception):
    pass


def _np(v: Value) -> np.ndarray | None:
    return v.const_value()


def _reshape(data: np.ndarray, shape: np.ndarray, allowzero: int) -> np.ndarray:
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


def _axes_input(node: Node, vals: list, index: int, attr: str = "axes"):
    if len(vals) > index and vals[index] is not None:
        return [int(a) for a in vals[index].reshape(-1)]
    a = node.attr(attr)
    return None if a is None else [int(x) for x in a]


def _fast_eval(node: Node, vals: list[np.ndarray | None], version: int) -> list[np.ndarray] | None:
    """numpy implementations of cheap, common ops (None: use the reference evaluator)."""
    op = node.op_type
    x = vals[0] if vals else None
    if op == "Identity":
        return [x]
    if op in ("Add", "Sub", "Mul") and len(vals) == 2 and x.dtype == vals[1].dtype and x.dtype.kind in "fiu":
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op]
        with np.errstate(all="ignore"):  # integers wrap and floats overflow to inf, as in onnxruntime
            return [np.asarray(f(x, vals[1]), dtype=x.dtype)]
    if op == "Div" and len(vals) == 2 and x.dtype == vals[1].dtype and x.dtype.kind == "f":
        with np.errstate(all="ignore"):  # x / 0 is +-inf or NaN, as in IEEE
            return [np.asarray(np.divide(x, vals[1]), dtype=x.dtype)]
    if op == "Transpose":
        perm = node.attr("perm")
        return [np.array(np.transpose(x, None if perm is None else [int(p) for p in perm]), order="C")]
    if op == "Reshape" and version >= 5:
        return [_reshape(x, vals[1], int(node.attr("allowzero", 0)))]
    if op == "Unsqueeze":
        axes = _axes_input(node, vals, 1)  # an input from opset 13, an attribute before
        if axes is None:
            return None
        rank = x.ndim + len(axes)
        out = x
        for a in sorted(a % rank for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = _axes_input(node, vals, 1)
        return [np.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes))]
    if op == "Concat" and all(v is not None for v in vals):
        return [np.concatenate(vals, axis=int(node.attr("axis")))]
    if op == "ConstantOfShape":
        t = node.attr("value")
        fill = t.numpy().reshape(-1) if t is not None else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in x.reshape(-1)), fill[0], dtype=fill.dtype)]
    if op == "Gather" and vals[1].dtype.kind in "iu":
        axis = int(node.attr("axis", 0))
        idx = vals[1].astype(np.int64)
        idx = np.where(idx < 0, idx + x.shape[axis], idx)
        return [np.take(x, idx, axis=axis)]
    if op == "Cast":
        to = DataType(int(node.attr("to")))
        if to.is_floating and to in (DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16) and x.dtype.kind in "fiub":
            return [x.astype(to.numpy())]
        if to.is_integer and to.itemsize_bits >= 8 and x.dtype.kind in "iub":
            return [x.astype(to.numpy())]
        return None
    if op == "Shape":
        return [_shape_slice(node, x.shape)]
    if op == "Size":
        return [np.array(x.size, dtype=np.int64)]
    if op == "QuantizeLinear":
        return _quantize(node, vals)
    return None


_SATURATE = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.uint16, np.int16)}


def _quantize(node: Node, vals: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """QuantizeLinear of float32 x with a float32 scale, per tensor or per axis, to (u)int8 / (u)int16:
    saturate(rint(x / y_scale) + y_zero_point), the division in float32, round half to even, NaN taken as 0 (ONNX
    leaves it undefined; onnxruntime and optc's kernels give the zero point). onnx's reference evaluator converts
    rint(x / y_scale) to int32 before it saturates, so a quotient beyond the int32 range (exp(17) / 0.01, +-inf)
    wrapped to the wrong end. None (the reference evaluator then) for other types and blocked quantization."""
    x, scale = vals[0], vals[1]
    zp = vals[2] if len(vals) > 2 else None
    out = zp.dtype if zp is not None else np.dtype(np.uint8)
    if x.dtype != np.float32 or scale.dtype != np.float32 or out not in _SATURATE or node.attr("block_size", 0) \
            or (node.attr("output_dtype", 0) and zp is None) or node.attr("precision", 0):
        return None
    if scale.size != 1 or (zp is not None and zp.size != 1):
        if scale.ndim != 1 or x.ndim == 0 or (zp is not None and zp.shape != scale.shape):
            return None
        shape = [1] * x.ndim
        shape[int(node.attr("axis", 1)) % x.ndim] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp is not None else None
    else:
        scale = scale.reshape(())
        zp = zp.reshape(()) if zp is not None else None
    with np.errstate(all="ignore"):
        q = np.rint(np.divide(x, scale, dtype=np.float32)).astype(np.float64)
    q = np.where(np.isnan(q), 0.0, q) + (0 if zp is None else zp.astype(np.float64))
    lo, hi = _SATURATE[out]
    return [np.clip(q, lo, hi).astype(out)]


def _static_shape_pick(node: Node, graph: Graph, constant) -> np.ndarray | None:
    """Gather(Shape(x), idx) along axis 0, or Slice(Shape(x), starts, ends[, 0[, 1]]), where the dims it picks are
    known integers (x's others symbolic: the head size of a dynamic-shape export, an attention's scale computed
    from it): those dims; else None. `constant`: the pass's reader of a constant value (indices, starts, ends)."""
    shape_node = node.inputs[0].producer if node.inputs and node.inputs[0] is not None else None
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain != "" or len(node.inputs) < 2:
        return None
    x = shape_node.inputs[0] if shape_node.inputs else None
    if x is None or x.shape is None or int(node.attr("axis", 0)) != 0:
        return None
    end = shape_node.attr("end")
    dims = list(x.shape)[int(shape_node.attr("start", 0)):None if end is None else int(end)]
    args = [constant(v, graph) if v is not None else None for v in node.inputs[1:]]
    if not dims or any(a is None or a.dtype.kind not in "iu" for a in args[:1 if node.op_type == "Gather" else 2]):
        return None
    if node.op_type == "Gather":
        idx = args[0]
        flat = [int(i) + len(dims) if int(i) < 0 else int(i) for i in idx.reshape(-1)]
        if any(not 0 <= i < len(dims) for i in flat):
            return None
        shape = idx.shape
    else:  # one range of the 1-D shape, step 1
        if any(a is not None and (a.size != 1 or int(a.reshape(-1)[0]) != want)
               for a, want in zip(args[2:4], (0, 1), strict=False)) or args[0].size != 1 or args[1].size != 1:
            return None
        flat = list(range(len(dims)))[slice(int(args[0].reshape(-1)[0]), int(args[1].reshape(-1)[0]))]
        shape = (len(flat),)
    if not all(isinstance(dims[i], int | np.integer) for i in flat):
        return None
    return np.array([int(dims[i]) for i in flat], dtype=np.int64).reshape(shape)


def _shape_slice(node: Node, shape: tuple) -> np.ndarray:
    start = int(node.attr("start", 0))
    end = node.attr("end")
    dims = list(shape)[start:None if end is None else int(end)]
    return np.array(dims, dtype=np.int64)


# Cases where onnx's reference evaluator (onnx 1.23) computes something else than onnxruntime on ordinary
# inputs (against the ONNX spec, but for MaxUnpool and Resize, where the spec leaves room): folding them would
# change what the model computes on its runtime, so they are left to the runtime. Each entry is (does this node
# hit the fault, given the node and its opset version; the fault). Found by folding every standard op with random
# constant inputs and comparing with onnxruntime (tests/test_fixes_folding_runtime.py checks each entry);
# re-check when onnx is upgraded.
_REFERENCE_WRONG: dict[str, tuple[Callable[[Node, int], bool], str]] = {
    "LRN": (lambda n, v: True, "sums the squares over a window of the batch axis, not of the channels"),
    "Softmax": (lambda n, v: v < 13, "only the opset-13 semantics (one axis), not the older 2-D coercion"),
    "LogSoftmax": (lambda n, v: v < 13, "only the opset-13 semantics (one axis), not the older 2-D coercion"),
    "Hardmax": (lambda n, v: v < 13, "only the opset-13 semantics (one axis), not the older 2-D coercion"),
    "LpNormalization": (lambda n, v: int(n.attr("p", 2)) == 1, "p=1 sums x, not |x|"),
    "MaxPool": (lambda n, v: len(n.outputs) > 1 and n.outputs[1] is not None,
                "its Indices are not the flat positions in the input"),
    "MaxUnpool": (lambda n, v: len(n.inputs) > 2 and n.inputs[2] is not None,
                  "with output_shape it scatters into the default shape and pads that (as ONNX's conformance case "
                  "does); onnxruntime scatters the flat indices into output_shape"),
    "RoiAlign": (lambda n, v: v < 16, "before opset 16 the coordinates are output_half_pixel, it uses half_pixel"),
    "Resize": (lambda n, v: n.attr("mode", "nearest") == "nearest",
               "nearest picks are computed in float64, a runtime's in float32: they differ at ties "
               "(e.g. scale 0.6, nearest_mode floor)"),
}


def _floats(vals: list) -> list[np.ndarray]:
    return [v for v in vals if v is not None and v.dtype.kind == "f"]


def _negative_zero(node: Node, vals: list) -> bool:
    return any(np.any((v == 0) & np.signbit(v)) for v in _floats(vals))


def _nan(node: Node, vals: list) -> bool:
    return any(np.isnan(v).any() for v in _floats(vals))


def _beyond_double(node: Node, vals: list) -> bool:
    """Integer operands or a result beyond 2^53 (onnxruntime computes integer Pow and fmod through double)."""
    if vals[0].dtype.kind not in "iu" or (node.op_type == "Mod" and not int(node.attr("fmod", 0))):
        return False
    limit = 2.0**53
    if any(np.abs(v.astype(np.float64)).max(initial=0) > limit for v in vals if v is not None):
        return True
    if node.op_type == "Pow":
        with np.errstate(all="ignore"):
            return bool(np.abs(np.power(vals[0].astype(np.float64), vals[1].astype(np.float64))).max(initial=0)
                        > limit)
    return False


def _integer_reduction_overflows(node: Node, vals: list) -> bool:
    """An integer ReduceSum / ReduceProd / ReduceSumSquare / ReduceL1 / ReduceL2 whose result may leave its type
    (bounded in float64 over the whole tensor): onnxruntime saturates where the reference wraps around."""
    x = vals[0]
    if x.dtype.kind not in "iu" or x.size == 0:
        return False
    a = np.abs(x.astype(np.float64))
    bound = {"ReduceProd": float(np.prod(np.maximum(a, 1.0))), "ReduceSumSquare": float((a * a).sum()),
             "ReduceL2": float((a * a).sum())}.get(node.op_type, float(a.sum()))
    return bound >= float(np.iinfo(x.dtype).max)


def _clip_unbounded_infinity(node: Node, vals: list) -> bool:
    """Clip without a min or a max on an infinite input: onnxruntime clamps it to the type's finite range."""
    bounds = [node.attr("min"), node.attr("max")] if len(vals) == 1 and node.attr("min") is not None \
        else [vals[i] if len(vals) > i else None for i in (1, 2)]
    return any(b is None for b in bounds) and any(np.isinf(v).any() for v in _floats(vals[:1]))


def _double_rounded_cast(node: Node, vals: list) -> bool:
    """A float64 -> float16 Cast that onnxruntime rounds twice (through float32), where that differs."""
    to = DataType(int(node.attr("to")))
    x = vals[0]
    if x.dtype != np.float64 or to not in (DataType.FLOAT16, DataType.BFLOAT16):
        return False
    target = to.numpy()
    return not np.array_equal(x.astype(target), x.astype(np.float32).astype(target), equal_nan=True)


def _accumulated_range(node: Node, vals: list) -> bool:
    """A float Range: onnxruntime adds delta step by step, the spec (and the reference) computes start + i * delta;
    where the two differ."""
    start, limit, delta = (np.asarray(v).reshape(()) for v in vals[:3])
    if start.dtype.kind != "f" or not np.isfinite([start, limit, delta]).all() or delta == 0:
        return False
    n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    if n > 1 << 20:
        return True
    accumulated = np.empty(n, start.dtype)
    v = start
    for i in range(n):
        accumulated[i] = v
        v = (v + delta).astype(start.dtype)
    return not np.array_equal(accumulated, (start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype))


# op -> (when the folded value, the spec's or numpy's, may differ from what onnxruntime computes for the node; why):
# such a node is left to the runtime. A breaker's finds (2026-12-05), each checked on onnxruntime 1.31 in
# tests/test_fixes_folding_runtime.py.
_RUNTIMES_DIFFER: dict[str, tuple[Callable[[Node, list], bool], str]] = {
    "Relu": (_negative_zero, "Relu(-0.0) is -0.0 on onnxruntime, +0.0 in numpy"),
    "Max": (_negative_zero, "onnxruntime keeps the first of equal zeros"),
    "Min": (_negative_zero, "onnxruntime keeps the first of equal zeros"),
    "Sum": (_negative_zero, "the reference sums from +0.0"),
    "Mean": (_negative_zero, "the reference sums from +0.0"),
    "ReduceMax": (lambda n, v: _nan(n, v) or _negative_zero(n, v), "onnxruntime skips NaN and keeps the first zero"),
    "ReduceMin": (lambda n, v: _nan(n, v) or _negative_zero(n, v), "onnxruntime skips NaN and keeps the first zero"),
    "Selu": (_negative_zero, "Selu(-0.0) is +0.0 on onnxruntime"),
    "Celu": (_negative_zero, "Celu(-0.0) is +0.0 on onnxruntime"),
    "ReduceLogSumExp": (lambda n, v: any(np.isinf(x).any() for x in _floats(v[:1])),
                        "the reference's max subtraction gives NaN for infinities, onnxruntime +-inf"),
    "TopK": (_nan, "onnxruntime ranks NaN below every number"),
    "Hardmax": (_nan, "onnxruntime's row holding a NaN is all zeros"),
    "Unique": (_nan, "onnxruntime drops NaN"),
    "ArgMax": (_nan, "onnxruntime's index of a slice with a NaN is not numpy's"),
    "ArgMin": (_nan, "onnxruntime's index of a slice with a NaN is not numpy's"),
    "Pow": (_beyond_double, "onnxruntime computes integer Pow in double"),
    "Mod": (_beyond_double, "onnxruntime computes integer fmod in double"),
    "ReduceSum": (_integer_reduction_overflows, "onnxruntime saturates an integer overflow"),
    "ReduceProd": (_integer_reduction_overflows, "onnxruntime saturates an integer overflow"),
    "ReduceSumSquare": (_integer_reduction_overflows, "onnxruntime saturates an integer overflow"),
    "ReduceL1": (_integer_reduction_overflows, "onnxruntime saturates an integer overflow"),
    "ReduceL2": (_integer_reduction_overflows, "onnxruntime saturates an integer overflow"),
    "Clip": (_clip_unbounded_infinity, "onnxruntime clamps an infinity to the type's range without a bound"),
    "Cast": (_double_rounded_cast, "onnxruntime casts float64 to float16 through float32"),
    "Range": (_accumulated_range, "onnxruntime accumulates start + delta + delta + ..."),
}


def runtimes_differ(node: Node, vals: list) -> str | None:
    """Why folding `node` on the constants `vals` could give another value than onnxruntime computes, or None."""
    entry = _RUNTIMES_DIFFER.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if entry is None or not vals or vals[0] is None or not entry[0](node, vals):
        return None
    return entry[1]


def reference_eval_fault(node: Node, version: int) -> str | None:
    """Why onnx's reference evaluator computes this node (of opset `version`) wrong, or None if it does not."""
    entry = _REFERENCE_WRONG.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if entry is None or not entry[0](node, version):
        return None
    return entry[1]


def _reference_eval(node: Node, vals: list[np.ndarray | None], opsets: dict[str, int]) -> list:
    from onnx.reference import ReferenceEvaluator

    from ...ir.onnx_export import node_to_proto

    proto = node_to_proto(node)
    feeds = {name: v for name, v in zip(proto.input, vals, strict=False) if name}
    domain = "" if node.domain == "ai.onnx" else node.domain
    ops = {domain: opsets.get(node.domain, opsets.get(domain, 21))}
    if domain != "":
        ops[""] = opsets.get("", 21)
    ev = ReferenceEvaluator(proto, opsets=ops)
    outs = ev.run(None, feeds)
    return list(outs)


def evaluate_node(node: Node, vals: list[np.ndarray | None], opsets: dict[str, int]) -> list[np.ndarray] | None:
    """The outputs of `node` on the constant inputs `vals` (None for an absent optional input): numpy for the cheap
    common ops, onnx's reference evaluator for the rest; None where that evaluator computes the op wrong
    (`reference_eval_fault`), or where its value on these constants may not be onnxruntime's (`runtimes_differ`).
    Raises whatever the evaluator raises on a case it cannot run. IEEE semantics as in the module docstring (the folder and `rules/qlookup.py`'s tables use this one evaluator)."""
    version = opsets.get(node.domain, opsets.get("", 21))
    with np.errstate(all="ignore"):  # log(0), x / 0, overflow: IEEE results, not warnings on the user's terminal
        if runtimes_differ(node, vals) is not None:
            return None
        outs = _fast_eval(node, vals, version) if node.domain == "" else None
        if outs is None:
            if reference_eval_fault(node, version) is not None:
                return None
            outs = _reference_eval(node, vals, opsets)
    return outs


class ConstantFolder:
    """Folds one node at a time (`fold(node) -> bool`); shared by the pass and the rewrite driver."""

    def __init__(self, ctx: PassContext, *, size_limit: int | None = FROM_CONTEXT, fold_shapes: bool = True,
                 constant_nodes: bool = True, pass_name: str = "fold-constants", model: Model | None = None,
                 rewriter=None):
        from ...ir.rewriter import Rewriter

        if model is None and rewriter is None:
            raise TypeError("ConstantFolder needs the model or a Rewriter of it (every change goes through one)")
        self.ctx = ctx
        self.rewriter = rewriter if rewriter is not None else Rewriter(model)
        if model is None:
            model = rewriter.model
        self.size_limit = ctx.fold_size_limit if size_limit == FROM_CONTEXT else size_limit
        self.fold_shapes = fold_shapes
        self.constant_nodes = constant_nodes
        self.pass_name = pass_name
        self.counts: dict[str, int] = {}
        self._fn_opsets = function_graphs(model) if model is not None else {}
        self._fn_roots: set[int] = set(self._fn_opsets)
        self._local_fns = {(d, n) for d, n, _ in model.functions} if model is not None else set()

    # -- queries ------------------------------------------------------------------------------------
    def _opsets(self, graph: Graph) -> dict[str, int]:
        return self._fn_opsets.get(id(root_graph(graph))) or self.ctx.opsets

    def _in_function(self, graph: Graph) -> bool:
        return id(root_graph(graph)) in self._fn_roots

    def _is_constant(self, v: Value, graph: Graph) -> bool:
        return self.rewriter.constants().is_constant(v)

    def _constant(self, v: Value, graph: Graph) -> np.ndarray | None:
        return self.rewriter.constants().data(v)

    # -- folding ------------------------------------------------------------------------------------
    def __call__(self, node: Node) -> bool:
        return self.fold(node)

    def fold(self, node: Node) -> bool:
        graph = node.graph
        if graph is None:
            return False
        if node.op_type == "Constant" and node.domain == "":
            return self._constant_to_initializer(node, graph)
        if node.domain not in _FOLDABLE_DOMAINS or (node.domain, node.op_type) in self._local_fns:
            return False
        if has_trait(node.domain, node.op_type, Trait.NONDETERMINISTIC | Trait.SIDE_EFFECTS):
            return False
        if node.subgraphs() or not node.outputs or all(o is None for o in node.outputs):
            return False
        if node.op_type == "Identity" and node.domain == "" and self._forward_identity(node, graph):
            return True
        opsets = self._opsets(graph)
        version = opsets.get(node.domain, opsets.get("", 21))
        if get_schema(node.domain, node.op_type, version) is None:
            return False
        try:
            results = self._evaluate(node, graph, opsets, version)
        except _Skip:
            return False
        except Exception:  # the evaluator cannot run it (unsupported case): leave the node alone
            return False
        if results is None:
            return False
        return self._replace(node, graph, results)

    @staticmethod
    def _widens_half_weight(node: Node) -> bool:
        """A Cast of a float16/bfloat16 constant of 64+ elements to float32/float64 (a weight stored in half
        precision, see `quantization.float_precision`)."""
        x = node.inputs[0] if node.inputs else None
        if x is None or x.const is None or x.dtype is None:
            return False
        to = node.attr("to")
        return (DataType(x.dtype) in (DataType.FLOAT16, DataType.BFLOAT16) and to is not None
                and DataType(int(to)) in (DataType.FLOAT, DataType.DOUBLE) and math.prod(x.const.shape) >= 64)

    def _evaluate(self, node: Node, graph: Graph, opsets: dict[str, int], version: int):
        op = node.op_type
        self._in_bytes = 0
        if op == "DequantizeLinear":
            return None  # a quantized weight stays quantized: folding it loses the int8/int4 data for a 4x float
        if op == "Cast" and node.domain == "" and self._widens_half_weight(node):
            return None
        if self.fold_shapes and op in ("Shape", "Size") and node.domain == "" and node.inputs:
            x = node.inputs[0]
            shape = x.shape if x is not None else None
            if shape is not None:
                if op == "Size" and all(isinstance(d, int) for d in shape):
                    return [np.array(math.prod(shape), dtype=np.int64)]
                if op == "Shape":
                    start = int(node.attr("start", 0))
                    end = node.attr("end")
                    part = list(shape)[start:None if end is None else int(end)]
                    if all(isinstance(d, int) for d in part):
                        return [np.array(part, dtype=np.int64)]
        if self.fold_shapes and op in ("Gather", "Slice") and node.domain == "":
            picked = _static_shape_pick(node, graph, self._constant)
            if picked is not None:
                return [picked]
        if not any(v is not None for v in node.inputs):
            return None  # nothing to fold (random ops and Constant are handled elsewhere)
        # Constness first (cheap), data second: a Gather of a big embedding by a runtime index decodes nothing.
        for v in node.inputs:
            if v is not None and not self._is_constant(v, graph):
                return None
        vals: list[np.ndarray | None] = []
        in_bytes = 0
        for v in node.inputs:
            if v is None:
                vals.append(None)
                continue
            a = self._constant(v, graph)
            if a is None:
                return None
            if a.dtype == object:
                raise _Skip  # string tensors: leave to the runtime
            vals.append(a)
            in_bytes += a.nbytes
        self._in_bytes = in_bytes
        if op in ("Div", "Mod") and len(vals) == 2 and vals[1] is not None and vals[1].dtype.kind in "iu" \
                and not vals[1].all():
            return None  # integer division by zero: undefined (onnxruntime traps); leave it to the runtime
        # Cheap pre-check: ops whose output size is given by a constant input.
        if op in ("ConstantOfShape", "Expand", "Tile", "Range") and self.size_limit is not None:
            est = self._estimate_size(op, vals, node)
            if est is not None and est > self.size_limit and est > in_bytes:
                self._refuse(node, est)
                return None
        return evaluate_node(node, vals, opsets)

    @staticmethod
    def _estimate_size(op: str, vals: list, node: Node) -> int | None:
        try:
            if op == "ConstantOfShape":
                t = node.attr("value")
                itemsize = t.numpy().itemsize if t is not None else 4
                return int(np.prod(vals[0].astype(np.int64))) * itemsize
            if op == "Expand":
                shape = np.broadcast_shapes(vals[0].shape, tuple(int(d) for d in vals[1].reshape(-1)))
                return math.prod(shape) * vals[0].itemsize
            if op == "Tile":
                return int(vals[0].size * np.prod(vals[1].astype(np.int64))) * vals[0].itemsize
        except Exception:
            return None
        return None

    def _check_outputs(self, node: Node, results: list) -> list[np.ndarray] | None:
        if len(results) < len(node.outputs):
            return None
        arrays = []
        out_bytes = 0
        for o, r in zip(node.outputs, results, strict=False):
            if o is None:
                arrays.append(None)
                continue
            if not isinstance(r, np.ndarray) and not np.isscalar(r):
                return None  # sequences, optionals, maps: not a tensor constant
            r = np.asarray(r)
            if r.dtype == object:
                return None
            t = o.type
            if t is not None:
                if not isinstance(t, TensorType):
                    return None
                try:
                    expected = DataType(t.dtype).numpy()
                except ValueError:
                    return None
                if r.dtype != expected:
                    # Only exact conversions: a float result of another precision was computed with other
                    # rounding (wider: not rounded to the output type; narrower: rounded too early), and an
                    # integer result must fit (no wrap-around that the op did not do).
                    if not (r.dtype.kind in "iub" and expected.kind in "iu"):
                        return None
                    converted = r.astype(expected)
                    if not np.array_equal(converted.astype(r.dtype), r) or \
                            ((r < 0) != (converted < 0)).any():
                        return None
                    r = converted
                if t.shape is not None:
                    if len(t.shape) != r.ndim or any(isinstance(d, int) and d != s for d, s in zip(t.shape, r.shape, strict=True)):
                        return None
            out_bytes += r.nbytes
            arrays.append(r)
        in_bytes = getattr(self, "_in_bytes", 0)
        if self.size_limit is not None and out_bytes > in_bytes:
            big = max((a.nbytes for a in arrays if a is not None), default=0)
            if big > self.size_limit:
                self._refuse(node, big)
                return None
        return arrays

    def _refuse(self, node: Node, nbytes: int) -> None:
        refusals = self.ctx.fold_refusals
        if not any(r.ref is node for r in refusals):
            refusals.append(FoldRefusal(describe(node), node.op_type, int(nbytes), node, self.size_limit))

    def _replace(self, node: Node, graph: Graph, results: list) -> bool:
        arrays = self._check_outputs(node, results)
        if arrays is None:
            return False
        if not self.ctx.budget.take():
            return False
        label = describe(node)
        in_fn = self._in_function(graph)
        for o, a in zip(node.outputs, arrays, strict=True):
            if o is None:
                continue
            tensor = NumpyTensor(a if a.flags.c_contiguous else np.array(a, order="C"))
            if in_fn:
                c = Node("Constant", [], {"value": tensor}, outputs=[o])
                o.type = TensorType(tensor.dtype, tuple(tensor.shape))
                self.rewriter.insert_before(node, c)
            else:
                self._make_initializer(o, tensor, graph)
        self._erase(node, graph)
        rule = f"fold:{node.op_type}"
        self.counts[rule] = self.counts.get(rule, 0) + 1
        self.ctx.record(self.pass_name, rule, label)
        return True

    def _forward_identity(self, node: Node, graph: Graph) -> bool:
        """Identity of an initializer: its users read the initializer itself (no copy of the weight)."""
        x = node.inputs[0] if node.inputs else None
        o = node.outputs[0] if node.outputs else None
        if x is None or o is None or x.const is None or not self._is_constant(x, graph):
            return False
        if self.rewriter.is_graph_output(o):
            return False
        if not self.ctx.budget.take():
            return False
        label = describe(node)
        self.rewriter.replace_all_uses_with(o, x)
        if x.type is None and o.type is not None:
            x.type = o.type
        self._erase(node, graph)
        self.counts["fold:Identity"] = self.counts.get("fold:Identity", 0) + 1
        self.ctx.record(self.pass_name, "fold:Identity", label)
        return True

    def _erase(self, node: Node, graph: Graph) -> None:
        self.rewriter.erase(node, safe=False)

    def _make_initializer(self, o: Value, tensor: NumpyTensor, graph: Graph) -> None:
        self.rewriter.fold_to_initializer(o, tensor, graph)

    def _constant_to_initializer(self, node: Node, graph: Graph) -> bool:
        if not self.constant_nodes or self._in_function(graph):
            return False
        o = node.outputs[0] if node.outputs else None
        if o is None:
            return False
        a = constant_node_value(node)
        if a is None or a.dtype == object:
            return False
        if not self.ctx.budget.take():
            return False
        label = describe(node)
        a_attr = next(iter(node.attributes.values()))
        tensor = a_attr.value if a_attr.name == "value" else NumpyTensor(a)
        self._erase(node, graph)
        self._make_initializer(o, tensor, graph)
        self.counts["fold:Constant"] = self.counts.get("fold:Constant", 0) + 1
        self.ctx.record(self.pass_name, "fold:Constant", label)
        return True


def make_folder(ctx: PassContext, *, size_limit: int | None = FROM_CONTEXT, fold_shapes: bool = True,
                constant_nodes: bool = True, pass_name: str = "fold-constants",
                model: Model | None = None, rewriter=None) -> Callable[[Node], bool]:
    """A callable that folds one node in place and says whether it did (for the rewrite driver).

    On True the node has been removed from its graph, each of its former outputs is now an initializer (or,
    in a function body, the output of a new Constant node) and keeps its uses; the caller should revisit the
    users of those values. The folder asks `ctx.budget.take()` before each fold and records it in `ctx`.
    Pass `model` (folds inside model-local functions use their own opsets) and/or the `rewriter` (an
    `ir.rewriter.Rewriter`) the caller listens to: every change goes through it (one is made when not given).
    """
    return ConstantFolder(ctx, size_limit=size_limit, fold_shapes=fold_shapes, constant_nodes=constant_nodes,
                          pass_name=pass_name, model=model, rewriter=rewriter)


@register_pass
@dataclass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants; fold Shape/Size of static shapes."""

    name: ClassVar[str] = "fold-constants"
    description: ClassVar[str] = ("evaluate nodes whose inputs are constants (numpy / onnx reference evaluator), "
                                  "Shape/Size of static shapes; Constant nodes become initializers")
    option_help: ClassVar[dict[str, str]] = {
        "size-limit": "bytes (or 64KB, 1MB): the largest tensor a fold that grows the model may create; unset: the run's limit (optc optimize --size-limit, 1MB)",
        "fold-shapes": 'also fold Shape/Size of values whose shape is static',
        "constant-nodes": 'turn Constant nodes into initializers',
    }
    size_limit: int | None = None  # bytes (`size-limit=64KB` works too); None: the run's PassContext.fold_size_limit
    fold_shapes: bool = True
    constant_nodes: bool = True

    def __post_init__(self):
        if self.size_limit is not None:
            from ...units import parse_bytes

            self.size_limit = parse_bytes(self.size_limit, what="pass 'fold-constants': option 'size-limit'")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        limit = FROM_CONTEXT if self.size_limit is None else self.size_limit
        folder = ConstantFolder(ctx, size_limit=limit, fold_shapes=self.fold_shapes,
                                constant_nodes=self.constant_nodes, pass_name=self.name, model=model)
        changed = False
        for g in graphs_of(model):
            for node in g:  # safe while removing; folds cascade forward in topological order
                if folder.fold(node):
                    changed = True
                elif ctx.budget.exhausted:
                    break
        return PassResult(changed, converged=not ctx.budget.exhausted, counts=folder.counts)
