"""optc IR -> TVM Relax IRModule, through a BlockBuilder and the op table in `converters.py`.

Graph inputs become Relax parameters whose symbolic dims are shared TIR variables (a model with a dynamic batch
dim compiles once and runs at any batch size). Initializers become Relax constants, so the exported library is
self-contained. A model with ops that cannot be lowered fails with one error listing every such op.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from ..errors import OptcError, UnsupportedError, first_line
from ..ir.core import Attr, AttrType, Graph, Model, Node, Value
from ..ir.types import DataType, TensorType
from .converters import const, is_supported, lookup
from .shape_values import ShapeEvaluator


def unsupported_ops(model: Model) -> Counter[str]:
    """Op names (with node counts) in the main graph and its subgraphs that have no converter."""
    opset = _default_opset(model)
    missing: Counter[str] = Counter()
    for g in _graphs(model.graph):
        for n in g:
            if not is_supported(n.domain, n.op_type, opset):
                missing[f"{n.domain}::{n.op_type}" if n.domain else n.op_type] += 1
    return missing


def lower(model: Model, func_name: str = "main"):
    """Lower a model's main graph to a Relax IRModule with one function `func_name`.

    Raises OptcError listing every op that cannot be lowered, or naming the node whose conversion failed.
    """
    missing = unsupported_ops(model)
    if missing:
        listed = ", ".join(f"{op} ({count} node{'s' if count > 1 else ''})" for op, count in sorted(missing.items()))
        raise UnsupportedError(f"cannot lower to TVM: {len(missing)} op type(s) have no converter: {listed}")
    return _Lowering(model).run(func_name)


def signature(model: Model) -> tuple[list[dict], list[dict]]:
    """The graph's inputs (initializers excluded) and outputs as `{"name", "shape", "dtype"}` dicts;
    symbolic dims are strings, unknown dims get a name of their own (`<value>_dim<i>`)."""

    def entry(v: Value) -> dict:
        t = v.type
        if not isinstance(t, TensorType):
            raise OptcError(f"cannot compile: '{v.name}' is not a tensor ({t})")
        if t.dtype == DataType.UNDEFINED:
            raise OptcError(f"cannot compile: the element type of '{v.name}' is unknown (shape inference could not "
                            "tell it; declare it in the model)")
        shape = [] if t.shape is None else [
            d if isinstance(d, int | str) else f"{v.name}_dim{i}" for i, d in enumerate(t.shape)]
        return {"name": v.name, "shape": shape, "dtype": t.dtype.numpy().name}

    g = model.graph
    return [entry(v) for v in g.inputs if v.const is None], [entry(v) for v in g.outputs]


def _graphs(g: Graph):
    yield g
    yield from g.subgraphs()


def _default_opset(model: Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 21))


class _Lowering:
    """Lowering state; `frontend_params` is the `[nodes, params]` pair TVM's converters expect."""

    def __init__(self, model: Model):
        from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

        self.model = model
        self.opset = _default_opset(model)
        self.frontend = ONNXGraphImporter({}, {}, keep_params_in_input=False, sanitize=True)
        self.frontend.opset = self.opset
        self.bb = self.frontend.bb
        self.frontend_params = [self.frontend._nodes, self.frontend._params]
        self.exprs: dict[Value, Any] = {}
        self.shapes = ShapeEvaluator(self)
        self.dims: dict[str, Any] = {}
        self.node: Node | None = None  # the node being converted (converters may read its IR types)
        self.float_grid: dict[Value, Any] = {}  # a quantized value -> it as float32 (ops/quant.record_float_grid)
        self.unknown_from: dict[Value, str] = {}  # a value of unknown shape -> the node where shapes were lost
        # run-time checks on the inputs' dims alone (`run_checks.fail_if_zero` arguments: length, unless, message),
        # made on the function's result, which every call computes (a check on a value read only by a Shape
        # would be dead code)
        self.deferred_checks: list[tuple] = []
        self._anonymous = 0

    # -- entry ------------------------------------------------------------------------------------
    def run(self, func_name: str):

        g = self.model.graph
        params = []
        for v in g.inputs:
            if v.const is not None:
                continue  # an input with a default (initializer): lowered as the constant
            var = self.frontend._new_var(self.frontend._sanitize_name(v.name), shape=self._shape(v),
                                         dtype=self._dtype(v))
            self.exprs[v] = var
            params.append(var)
        self._constants(g)
        has_if = any(True for _ in _if_nodes(g))
        self._defer_guards()
        try:
            self._function(g, func_name, params, has_if)
        except BaseException:
            _discard_open_blocks(self.bb)
            raise
        mod = self.bb.get()
        mod[func_name] = mod[func_name].with_attrs({"num_input": len(params)})
        return mod

    def _function(self, g: Graph, func_name: str, params: list, has_if: bool) -> None:
        from tvm import relax

        with self.bb.function(func_name, params=params):
            with contextlib.ExitStack() as stack:
                if not has_if:
                    stack.enter_context(self.bb.dataflow())
                self._body(g)
                outs = self._checked([self._expr(v) for v in g.outputs])
                result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
                if not has_if:
                    result = self.bb.emit_output(result)
            self.bb.emit_func_output(result)

    def defer_check(self, length, unless, message: str) -> bool:
        """Make `run_checks.fail_if_zero(length, unless, message)` on the function's result if both dims depend on
        the graph inputs' dims only (True); else False (the caller checks where it is)."""
        from tvm import tirx

        inputs = {v.name for v in self.dims.values()}
        free = [v for d in (length, unless) if not isinstance(d, int) for v in tirx.analysis.undefined_vars(d)]
        if any(v.name not in inputs for v in free):
            return False
        if message not in (m for _, _, m in self.deferred_checks):
            self.deferred_checks.append((length, unless, message))
        return True

    def _defer_guards(self) -> None:
        """The run-time checks of the Reshape types the optimizer trusted (`infer_shapes.CHECKED_ZEROS_KEY`): dims
        named by the graph inputs' dims; a name no input has any more (fixed by a static batch entry to a size of
        at least 1) cannot be 0."""
        import json

        from ..rewrites.passes.infer_shapes import CHECKED_ZEROS_KEY
        from .ops.shape import zero_copy_message

        for label, i, element, dim in json.loads(self.model.metadata_props.get(CHECKED_ZEROS_KEY, "[]")):
            length = self.dims.get(element) if isinstance(element, str) else element
            unless = self.dims.get(dim) if isinstance(dim, str) else dim
            if length is not None and unless is not None:
                self.defer_check(length, unless, zero_copy_message(label, i))

    def _checked(self, outs: list) -> list:
        """The function's outputs, the first of known shape passed through the deferred checks (in place, no copy)."""
        from tvm import relax

        from .run_checks import fail_if_zero

        if not self.deferred_checks:
            return outs
        at = next((i for i, o in enumerate(outs) if isinstance(o.ty, relax.TensorType)
                   and isinstance(o.ty.shape, relax.ShapeExpr)), None)
        if at is None:
            raise UnsupportedError("the model's run-time checks need an output of known shape")
        out = outs[at]
        for length, unless, message in self.deferred_checks:
            out = fail_if_zero(self.bb, out, length, unless, "optc_shape_check", message)
        return [*outs[:at], out, *outs[at + 1:]]

    # -- values -----------------------------------------------------------------------------------
    def _shape(self, v: Value) -> list | None:
        t = v.type
        if not isinstance(t, TensorType):
            raise UnsupportedError(f"cannot lower input '{v.name}': only tensor inputs are supported, not {t}")
        if t.shape is None:
            return None
        from tvm import tirx

        shape = []
        for d in t.shape:
            if isinstance(d, int):
                shape.append(d)
            else:
                key = d if isinstance(d, str) else f"_unk{len(self.dims)}"
                if key not in self.dims:
                    self.dims[key] = tirx.Var(_identifier(key), "int64")
                shape.append(self.dims[key])
        return shape

    def lower_subgraph(self, body: Graph, bindings: list, shape_values: dict | None = None) -> list:
        """Lower one instance of a subgraph (a Loop/Scan body step, a FlexAttention modifier) with its inputs
        bound to `bindings` (Relax expressions) and, optionally, symbolic shape values; returns the expressions
        of its outputs. A body node gets the same converters, shape evaluation and errors as any node; values of
        a previous instance are forgotten first, so a body can be instantiated once per step.

        Raises UnsupportedError when the number of bindings differs from the body's inputs."""
        if len(body.inputs) != len(bindings):
            raise UnsupportedError(f"the body graph has {len(body.inputs)} inputs, the node gives it {len(bindings)}")
        for n in body.all_nodes():
            for v in n.outputs:
                if v is not None:
                    self.exprs.pop(v, None)
                    self.float_grid.pop(v, None)
                    self.shapes.values.pop(v, None)
        for v, expr in zip(body.inputs, bindings, strict=True):
            self.exprs[v] = expr
            self.shapes.values.pop(v, None)
        for v, sv in (shape_values or {}).items():
            self.shapes.values[v] = sv
        self._constants(body)
        self._body(body)
        return [self._expr(v) for v in body.outputs]

    def element_type(self, v: Value) -> str:
        """The Relax dtype string of an IR value's element type (`float32`, ...)."""
        return self._dtype(v)

    @staticmethod
    def _dtype(v: Value) -> str:
        from tvm.relax.frontend.onnx.onnx_frontend import get_type

        if v.dtype == DataType.STRING:
            raise UnsupportedError(f"cannot lower '{v.name}': string tensors are not supported by the TVM back end")
        return get_type(int(v.dtype or DataType.FLOAT))

    def _constants(self, g: Graph) -> None:
        for v in g.initializers.values():
            if v.const.dtype == DataType.STRING:
                raise UnsupportedError(f"cannot lower the constant '{v.name}': string tensors are not supported by "
                                       "the TVM back end")
            if v.const.dtype.itemsize_bits and v.const.dtype.itemsize_bits < 8:
                raise UnsupportedError(f"cannot lower the {v.const.dtype.numpy().name} constant '{v.name}': TVM "
                                       "cannot build tensors of sub-byte elements")
            self.exprs[v] = const(v.const.numpy())

    # -- nodes ------------------------------------------------------------------------------------
    def _body(self, g: Graph):
        for n in g:
            self._node(n)

    def _expr(self, v: Value):
        """The Relax expression of a value (materializing a symbolic shape value on first need)."""
        expr = self.exprs.get(v)
        if expr is None:
            expr = self.exprs[v] = self.shapes.materialize(v)
        return expr

    def _node(self, n: Node) -> None:
        from tvm import relax
        from tvm.relax.frontend.onnx.onnx_frontend import onnx_input

        from .broadcast import (
            BROADCAST_OPS,
            CONV_WEIGHTS,
            NORM_SCALES,
            align_batch_dims,
            align_concat,
            align_operands,
            check_conv_channels,
            check_gemm_reduction,
            check_norm_channels,
        )

        if self.shapes.try_lower(n):
            return
        inputs = onnx_input()
        for v in n.inputs:
            inputs.append(None if v is None else self._expr(v))
        if n.op_type == "If" and n.domain in ("", "ai.onnx"):
            self._if(n, inputs)
            return
        for i, x in enumerate(inputs):
            if x is not None and isinstance(x.ty, relax.ShapeType) and n.op_type not in _SHAPE_COMPATIBLE:
                raise OptcError(f"cannot lower {_label(n)}: input {i} is a shape expression")
        if n.op_type in _SELF_OPS and n.domain in ("", "ai.onnx") and len(inputs) == 2 and inputs[0] is not None \
                and inputs[0] is inputs[1] and isinstance(inputs[0].ty, relax.TensorType) \
                and str(inputs[0].ty.dtype).startswith(("float", "bfloat")):
            self._bind_outputs(n, self._self_op(n.op_type, inputs[0]))
            return
        scalar_result = False
        if n.op_type in _ARITHMETIC and n.domain in ("", "ai.onnx"):
            inputs, scalar_result = self._scalar_constants_as_tensors(inputs)
        if n.op_type in BROADCAST_OPS and n.domain in ("", "ai.onnx"):
            inputs = align_operands(self.bb, inputs)  # symbolic dims TVM cannot broadcast (see broadcast.py)
        elif (_domain(n.domain), n.op_type) in _MATMUL_OPERANDS:
            inputs = align_batch_dims(self.bb, inputs, _MATMUL_OPERANDS[_domain(n.domain), n.op_type], _label(n))
        elif n.op_type == "Concat" and n.domain in ("", "ai.onnx"):
            inputs = align_concat(self.bb, inputs, int(n.attr("axis", 0)))
        elif n.op_type == "Gemm" and n.domain in ("", "ai.onnx"):
            inputs = check_gemm_reduction(self.bb, inputs, bool(n.attr("transA", 0)), bool(n.attr("transB", 0)),
                                          _label(n))
        elif (_domain(n.domain), n.op_type) in CONV_WEIGHTS:
            inputs = check_conv_channels(self.bb, inputs, CONV_WEIGHTS[_domain(n.domain), n.op_type],
                                         int(n.attr("group", 1)), _label(n))
        elif (_domain(n.domain), n.op_type) in NORM_SCALES:
            inputs = check_norm_channels(self.bb, inputs, n.op_type, int(n.attr("axis", -1)), _label(n))
        attrs = {a.name: _frontend_attr(a) for a in n.attributes.values()}
        attrs["tvm_custom"] = {"name": n.name or self._fresh_name(n), "num_outputs": len(n.outputs)}
        convert = lookup(n.domain, n.op_type, self.opset)
        self.node = n
        try:
            result = self._converted(convert, inputs, attrs, scalar_result)
        except UnsupportedError as exc:  # a deliberate refusal: name the node
            raise UnsupportedError(f"cannot lower {_label(n)}: {exc}") from exc
        except OptcError:
            raise
        except NotImplementedError as exc:  # TVM's frontend says it does not handle this form: a refusal
            raise UnsupportedError(f"cannot lower {_label(n)}: {first_line(exc)}") from exc
        except Exception as exc:  # the converter failed: a back-end bug, named with its node
            unknown = [i for i, x in enumerate(inputs) if _dims_unknown(x)]
            if unknown:  # TVM's converters need shapes: one computed from input values is a limit, not a bug
                what = "rank" if inputs[unknown[0]].ty.ndim == -1 else "shape"
                origin = self.unknown_from.get(n.inputs[unknown[0]])
                raise UnsupportedError(
                    f"cannot lower {_label(n)}: the {what} of input {unknown[0]} depends on input values or on "
                    f"symbolic dims TVM cannot relate{origin or ''}; the TVM back end needs it at compile time (fix the "
                    f"input shapes: --input-shape)"
                ) from exc
            raise OptcError(f"cannot lower {_label(n)}: {type(exc).__name__}: {first_line(exc)}") from exc
        self._bind_outputs(n, result)
        self._note_unknown_shapes(n, inputs)

    def _converted(self, convert, inputs, attrs: dict, scalar_result: bool):
        """The converter's result, normalized: TVM checks an op's operands when the expression is normalized, so a
        converter's call TVM rejects fails here, inside the node's error handling (`_node`), never as an internal
        error. `scalar_result`: reshaped back to 0-d (see `_scalar_constants_as_tensors`)."""
        from tvm import relax

        result = convert(self.bb, inputs, attrs, self)
        if isinstance(result, relax.Expr):
            result = self.bb.normalize(result)
        if scalar_result:
            result = self.bb.normalize(relax.op.reshape(result, ()))
        return result

    def _note_unknown_shapes(self, n: Node, inputs: list) -> None:
        """Remember where an output's shape became unknown, for the refusal of a later node that needs it: a node
        whose inputs all had known shapes but whose output has none (a Squeeze without axes of symbolic dims; a
        shape computed from values), or the origin an input of unknown shape carries."""
        from tvm import relax
        from tvm.sym.analyzer import Analyzer

        outs = [v for v in n.outputs if v is not None and _dims_unknown(self.exprs.get(v))]
        if not outs:
            return
        inherited = next((self.unknown_from[v] for v in n.inputs if v in self.unknown_from), None)
        if inherited is None:
            analyzer = Analyzer()
            shapes = [_shape_text(x.ty.shape, analyzer) for x in inputs
                      if x is not None and isinstance(x.ty, relax.TensorType)]
            inherited = f" (from {_label(n)}, inputs {' and '.join(shapes)})"
        for v in outs:
            self.unknown_from[v] = inherited

    def _self_op(self, op: str, x):
        """Sub or Div of a float tensor by itself, in the form IEEE 754 gives it: inside a fused kernel TVM's
        arithmetic simplifier rewrites `a - a` to 0 and `a / a` to 1 (also without fast math; a division by such a
        zero then fails to compile), wrong for infinities, NaN and 0 / 0. IEEE: x - x = +0 for finite x, NaN
        otherwise; x / x = 1 for finite non-zero x, NaN otherwise. (`a == a` is left alone by TVM: tested.)"""
        from tvm import relax

        dtype = str(x.ty.dtype)
        ok = relax.op.isfinite(x)
        if op == "Div":
            ok = relax.op.logical_and(ok, relax.op.not_equal(x, relax.const(0, dtype)))
        value = relax.const(0.0 if op == "Sub" else 1.0, dtype)
        return self.bb.normalize(relax.op.where(ok, value, relax.const(float("nan"), dtype)))

    def _scalar_constants_as_tensors(self, inputs):
        """0-d float constants reshaped to [1, ..., 1] of the widest operand's rank (the result's shape is the
        same; when every operand is 0-d, the second value says to reshape the result back to 0-d). Legalized as a 0-d operand, the constant became an immediate in the kernel, and TVM's arithmetic
        simplifier then rewrote x * 0.0 to 0.0 and x / 0.0 into a compile-time division by zero: IEEE says
        inf * 0 = NaN and x / 0 = +-inf."""
        from tvm import relax

        from .converters import constant_value

        ranks = [x.ty.ndim for x in inputs if x is not None and isinstance(x.ty, relax.TensorType)]
        values = [None if x is None else constant_value(x) for x in inputs]
        if not any(v is not None and v.ndim == 0 and v.dtype.kind == "f" for v in values) or min(ranks) < 0:
            return inputs, False
        rank = max(max(ranks), 1)  # all 0-d: compute on [1] and reshape the result back to 0-d
        out = type(inputs)()
        for x, value in zip(inputs, values, strict=True):
            if value is not None and value.ndim == 0 and value.dtype.kind == "f":
                x = const(value.reshape([1] * rank))
            out.append(x)
        return out, max(ranks) == 0

    def _bind_outputs(self, n: Node, result) -> None:
        from tvm import relax

        if n.op_type in _RETURNS_TUPLE_VALUE:
            items = [result]
        elif isinstance(result, relax.Tuple):
            items = list(result.fields)
        elif isinstance(result.ty, relax.TupleType):
            items = [self.bb.emit(relax.TupleGetItem(result, i)) for i in range(len(result.ty.fields))]
        else:
            items = [result]
        if len(n.outputs) > len(items):
            raise OptcError(f"cannot lower {_label(n)}: it yields {len(items)} outputs, the node "
                            f"has {len(n.outputs)}")
        for out, expr in zip(n.outputs, items, strict=False):
            if out is not None:
                self.exprs[out] = expr

    def _if(self, n: Node, inputs) -> None:
        from tvm import relax

        branches = []
        for name in ("then_branch", "else_branch"):
            body: Graph = n.attr(name)
            self._constants(body)
            self._body(body)
            outs = [self._expr(v) for v in body.outputs]
            expr = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            branches.append(relax.SeqExpr(blocks=[], body=expr))
        result = self.bb.emit(relax.If(inputs[0], branches[0], branches[1]))
        if len(n.outputs) == 1:
            self.exprs[n.outputs[0]] = result
        else:
            for i, out in enumerate(n.outputs):
                self.exprs[out] = self.bb.emit(relax.TupleGetItem(result, i))

    def _fresh_name(self, n: Node) -> str:
        self._anonymous += 1
        return f"{n.op_type.lower()}_{self._anonymous}"


_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "PRelu"}
_SELF_OPS = {"Sub", "Div"}  # see _Lowering._self_op
# (domain, op) -> the positions of a matmul's two operands, whose batch dims `align_batch_dims` aligns
_MATMUL_OPERANDS = {("", "MatMul"): (0, 1), ("", "MatMulInteger"): (0, 1), ("", "QLinearMatMul"): (0, 3),
                    ("optc", "QMatMul"): (0, 3)}


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain
_SHAPE_COMPATIBLE = {"Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand", "Concat",
                     "Equal", "Where", "Cast", "CastLike", "Squeeze"}
_RETURNS_TUPLE_VALUE = {"Optional", "OptionalGetElement", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
                        "SequenceInsert", "ConcatFromSequence", "SplitToSequence"}


def _dims_unknown(expr) -> bool:
    """A Relax tensor expression whose dims TVM does not know: no shape, or a shape held in a shape variable (a
    shape computed from values, such as ConstantOfShape of an input)."""
    from tvm import relax

    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and not isinstance(ty.shape, relax.ShapeExpr)


def _shape_text(shape, analyzer) -> str:
    """A Relax shape as `[batch, seq * 4, 256]` (dims simplified; `?` when unknown)."""
    from tvm import relax

    if not isinstance(shape, relax.ShapeExpr):  # unknown, or a shape variable
        return "?"
    dims = [analyzer.simplify(d) for d in shape.values]
    return "[" + ", ".join(str(d.value) if hasattr(d, "value") else str(d) for d in dims) + "]"


def _label(n: Node) -> str:
    """How errors name a node: `Reshape node 'name'`, or by its first output when it has no name."""
    if n.name:
        return f"{n.op_type} node '{n.name}'"
    first = next((v.name for v in n.outputs if v is not None), "?")
    return f"{n.op_type} node (output '{first}')"


def _discard_open_blocks(bb) -> None:
    """Close what a failed conversion left open in the BlockBuilder (its binding blocks and the function's
    scope), so that TVM does not warn "BlockBuilder destroyed with remaining blocks!" when it is freed."""
    while True:
        try:
            bb._end_block()
        except Exception:  # noqa: BLE001 - no block left open
            break
    try:
        bb.end_scope()
    except Exception:  # noqa: BLE001 - no scope left open
        pass


def _if_nodes(g: Graph):
    return (n for n in g if n.op_type == "If" and n.domain in ("", "ai.onnx"))


def _frontend_attr(a: Attr) -> Any:
    """An attribute in the form TVM's ONNX converters read (bytes for strings, tuples, TensorProtos)."""
    t, v = a.type, a.value
    if t == AttrType.STRING:
        return v if isinstance(v, bytes) else v.encode("utf-8")
    if t in (AttrType.INTS, AttrType.FLOATS):
        return tuple(v)
    if t == AttrType.STRINGS:
        return tuple(x if isinstance(x, bytes) else x.encode("utf-8") for x in v)
    if t == AttrType.TENSOR:
        return v.to_proto(v.name)
    if t == AttrType.TENSORS:
        return tuple(x.to_proto(x.name) for x in v)
    if t in (AttrType.SPARSE_TENSOR,):
        return v.proto
    if t == AttrType.TYPE_PROTO:
        from ..ir.types import type_to_proto

        return type_to_proto(v)
    return v


def _identifier(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and (out[0].isalpha() or out[0] == "_") else f"d_{out}"
