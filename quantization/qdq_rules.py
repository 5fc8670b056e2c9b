"""QDQ insertion as rewrite rules: each quantizable op is a Rule that puts QuantizeLinear/DequantizeLinear
pairs on its activations, int8 weights and an int32 bias in front of it and a Q/DQ pair on its output.

The result is the QDQ format runtimes fuse into integer kernels (onnxruntime: DQ -> Conv -> Q becomes
QLinearConv; DQ -> MatMul/Gemm becomes QGemm / MatMulIntegerToFloat); the arithmetic follows onnxruntime's
quantizer (`onnxruntime/quantization/qdq_quantizer.py`, `operators/*.py`):

* activations: per-tensor, the scheme's type (x86: uint8), scale and zero point from the calibrated range;
* weights: symmetric int8 per output channel, on the op's output-channel axis (Conv 0, ConvTranspose 1,
  MatMul 1 (columns of a [K, N] weight), Gemm 0 with transB else 1); depthwise and grouped convolutions get one
  scale per output channel (a per-tensor scale is the classic accuracy collapse of MobileNets);
* bias: int32, scale = input scale x weight scale (per channel), zero point 0, what the integer kernels add to
  their int32 accumulator;
* outputs: the consumer's range when the output feeds only a Relu/Clip (the rule `AbsorbActivation` then
  removes the activation: with the zero point at the type's minimum, DequantizeLinear(QuantizeLinear(y))
  is already >= 0, so Relu does nothing, exactly); graph outputs of MatMul/Gemm stay float (the integer
  kernels can produce float; quantizing logits only adds error).

Rules that only move a DequantizeLinear (`PropagateDequantize`): a per-tensor DequantizeLinear in front of an
op that only selects or reorders values (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Gather,
Expand, Identity, DepthToSpace, SpaceToDepth, MaxPool, GlobalMaxPool, Resize with nearest mode, constant Pad
with zero, Concat of equally quantized inputs) moves behind it, so the op runs on the integers: exact, since
DequantizeLinear is strictly increasing for a positive scale and these ops only pick, reorder or compare
values (Pad writes the zero point, which dequantizes to 0).

Every rule reads a `QdqContext`: the scheme, the calibrated ranges, the exclusions and the report of skipped
nodes. Nothing is folded: weights stay int8 initializers behind a DequantizeLinear (fold-constants never folds a
DequantizeLinear back to float).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..ir.core import Node, Value
from ..ir.types import DataType
from ..rewrites.pattern import require
from ..rewrites.rule import Rule
from .numerics import QParams, activation_qparams, integer_range, quantize, quantize_bias, quantize_weight
from .scheme import QuantScheme
from .selection import matches, node_label

__all__ = ["OP_SPECS", "QdqContext", "keep_name", "node_label", "qdq_rules"]


@dataclass
class QdqContext:
    """What the QDQ rules read: the scheme, calibrated ranges (value name -> (min, max)), value names whose
    calibration saw NaN/inf, exclusions (node names, op types or output names), and the report they write:
    `quantized` (node name -> op type) and `skipped` (node name -> (op type, reason))."""

    scheme: QuantScheme
    ranges: dict[str, tuple[float, float]]
    nonfinite: set[str] = field(default_factory=set)
    exclude: set[str] = field(default_factory=set)
    #: nodes the accuracy-aware mode returned to float (reported apart from the user's exclusions)
    keep_float: set[str] = field(default_factory=set)
    quantized: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: quantized node name -> (its output's name before quantization, the new node's float output Value, the
    #: dequantized output its readers see: None where it has no output Q/DQ pair of its own or absorbed a Relu)
    outputs: dict[str, tuple[str, Value, Value | None]] = field(default_factory=dict)
    _params: dict[str, QParams] = field(default_factory=dict)

    def excluded(self, node: Node) -> bool:
        return matches(node, self.exclude)

    def alias(self, new: str, old: str) -> None:
        """Value `new` replaces `old`: it has old's calibrated range."""
        if old in self.ranges:
            self.ranges[new] = self.ranges[old]
        if old in self.nonfinite:
            self.nonfinite.add(new)

    def activation(self, v: Value) -> QParams | None:
        """Per-tensor parameters for activation `v` from its calibrated range (None: no usable range)."""
        if v.name in self._params:
            return self._params[v.name]
        if v.name in self.nonfinite or v.name not in self.ranges:
            return None
        lo, hi = self.ranges[v.name]
        s = self.scheme
        qp = activation_qparams(lo, hi, s.activations, symmetric=s.symmetric_activations)
        self._params[v.name] = qp
        return qp


# -- helpers ---------------------------------------------------------------------------------------------


def producer_dq(v: Value | None) -> Node | None:
    """The standard-domain DequantizeLinear producing `v`, if any."""
    p = v.producer if v is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" and p.domain == "" else None


def _const(v: Value | None) -> np.ndarray | None:
    if v is None or v.const is None:
        return None
    return v.const.numpy()


def dq_params(dq: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a per-tensor DequantizeLinear whose parameters are constants, else None."""
    s = _const(dq.inputs[1] if len(dq.inputs) > 1 else None)
    if s is None or s.size != 1:
        return None
    zv = dq.inputs[2] if len(dq.inputs) > 2 else None
    if zv is None:
        if dq.inputs[0].dtype is None:
            return None
        z = np.zeros((), DataType(dq.inputs[0].dtype).numpy())
    else:
        z = _const(zv)
    if z is None or z.size != 1:
        return None
    return s.reshape(()), z.reshape(())


def keep_name(new_output: Value, old: Node) -> None:
    """Give the node producing `new_output` (built by a rewrite, not inserted yet) the name of the node it
    replaces, so reports, exclusions and error messages keep speaking of the user's node names."""
    if new_output.producer is not None and old.name:
        new_output.producer.name = old.name


def _is_float32(v: Value | None) -> bool:
    return v is not None and v.dtype is not None and DataType(v.dtype) == DataType.FLOAT


def _qdq(op, v: Value, qp: QParams, hint: str) -> Value:
    s = op.const(np.asarray(qp.scale, np.float32).reshape(()), hint=f"{hint}_scale")
    z = op.const(np.asarray(qp.zero_point).reshape(()), hint=f"{hint}_zero_point")
    return op.DequantizeLinear(op.QuantizeLinear(v, s, z), s, z)


def _dq_const(op, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None, hint: str) -> Value:
    s = op.const(np.asarray(scale, np.float32), hint=f"{hint}_scale")
    z = op.const(np.asarray(zp), hint=f"{hint}_zero_point")
    qv = op.const(q, hint=f"{hint}_quantized")
    if axis is None or np.asarray(scale).ndim == 0:
        return op.DequantizeLinear(qv, s, z)
    return op.DequantizeLinear(qv, s, z, axis=axis)


def _fit_into(qp: QParams, lo: float, hi: float) -> QParams | None:
    """`qp` with its scale lowered by a few ulps so that the dequantized integer range lies inside [lo, hi] (in
    float32, as DequantizeLinear computes it); None when no such scale is found."""
    qmin, qmax = integer_range(qp.dtype, symmetric=False)
    z = int(np.asarray(qp.zero_point))
    s = np.float32(qp.scale)
    for _ in range(8):
        top = np.float32(qmax - z) * s
        bottom = np.float32(qmin - z) * s
        if top <= np.float32(hi) and bottom >= np.float32(lo):
            return QParams(np.asarray(s, np.float32), qp.zero_point, qp.dtype)
        s = np.nextafter(s, np.float32(0))
    return None


def clip_bounds(node: Node) -> tuple[float, float] | None:
    """(lo, hi) of a Relu or a Clip with constant (or absent) bounds, else None."""
    if node.op_type == "Relu" and node.domain == "":
        return 0.0, np.inf
    if node.op_type != "Clip" or node.domain != "":
        return None
    if "min" in node.attributes or "max" in node.attributes:  # Clip-6
        return float(node.attr("min", -np.inf)), float(node.attr("max", np.inf))
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None:
            bounds.append(default)
            continue
        a = _const(v)
        if a is None or a.size != 1:
            return None
        bounds.append(float(a))
    return bounds[0], bounds[1]


# -- the quantizable ops ---------------------------------------------------------------------------------

ACT, WEIGHT, BIAS = "activation", "weight", "bias"


@dataclass(frozen=True)
class OpSpec:
    """How one op is quantized: `roles` of its inputs by index (ACT, WEIGHT, BIAS; `variadic`: every input is
    an activation), the weight's per-channel axis (a function of the node), whether its output gets a Q/DQ pair,
    and the op's exact ONNX output range when it has one (Softmax: [0, 1])."""

    op_type: str
    roles: dict[int, str]
    weight_axis: Callable[[Node, np.ndarray], int | None] | None = None
    output: bool = True
    variadic: bool = False
    fixed_range: tuple[float, float] | None = None


def _conv_axis(node: Node, w: np.ndarray) -> int | None:
    return 0


def _conv_transpose_axis(node: Node, w: np.ndarray) -> int | None:
    return 1


def _matmul_axis(node: Node, w: np.ndarray) -> int | None:
    return 1 if w.ndim == 2 else None


def _gemm_axis(node: Node, w: np.ndarray) -> int | None:
    return 0 if node.attr("transB", 0) else 1


OP_SPECS: dict[str, OpSpec] = {s.op_type: s for s in [
    OpSpec("Conv", {0: ACT, 1: WEIGHT, 2: BIAS}, _conv_axis),
    OpSpec("ConvTranspose", {0: ACT, 1: WEIGHT, 2: BIAS}, _conv_transpose_axis),
    OpSpec("MatMul", {0: ACT, 1: WEIGHT}, _matmul_axis),
    OpSpec("Gemm", {0: ACT, 1: WEIGHT, 2: BIAS}, _gemm_axis),
    OpSpec("Add", {0: ACT, 1: ACT}),
    OpSpec("Mul", {0: ACT, 1: ACT}),
    OpSpec("Concat", {}, variadic=True),
    OpSpec("AveragePool", {0: ACT}),
    OpSpec("GlobalAveragePool", {0: ACT}),
    OpSpec("Resize", {0: ACT}),
    OpSpec("Softmax", {0: ACT}, fixed_range=(0.0, 1.0)),
    OpSpec("Sigmoid", {0: ACT}, fixed_range=(0.0, 1.0)),
    OpSpec("LeakyRelu", {0: ACT}),
    OpSpec("LayerNormalization", {0: ACT}, output=False),
]}


class QuantizeOp(Rule):
    """Base of the per-op QDQ rules (one subclass per entry of OP_SPECS, named `Quantize<Op>`)."""

    spec: ClassVar[OpSpec]
    benefit: ClassVar[int] = 1

    def __init__(self, ctx: QdqContext):
        self.ctx = ctx

    def pattern(self, op, x):
        return getattr(op, self.spec.op_type)(x, _allow_other_inputs=True)

    # -- planning ---------------------------------------------------------------------------------
    def _skip(self, node: Node, reason: str) -> None:
        self.ctx.skipped[node_label(node)] = (node.op_type, reason)
        require(False, reason)

    def _roles(self, node: Node) -> dict[int, str]:
        if self.spec.variadic:
            return {i: ACT for i in range(len(node.inputs))}
        return self.spec.roles

    def _output_plan(self, node: Node, g) -> tuple[QParams | None, Node | None]:
        """The output's parameters (None: left float) and the Relu/Clip it absorbs."""
        y = node.outputs[0]
        if not self.spec.output or y is None or g.is_output(y):
            return None, None
        if any(u.node.op_type == "QuantizeLinear" for u in y.uses()):
            return None, None
        uses = y.uses()
        act = uses[0].node if len(uses) == 1 else None
        readers = [u.node for u in uses] + ([u.node for u in act.outputs[0].uses()] if act is not None else [])
        if any(matches(r, self.ctx.keep_float) for r in readers):
            return None, None  # a layer returned to float reads its input unquantized
        bounds = clip_bounds(act) if act is not None and not self.ctx.excluded(act) else None
        if self.spec.fixed_range is not None:
            lo, hi = self.spec.fixed_range
            return activation_qparams(lo, hi, self.ctx.scheme.activations,
                                      symmetric=self.ctx.scheme.symmetric_activations), None
        if bounds is not None and not g.is_output(act.outputs[0]):
            qp = self.ctx.activation(act.outputs[0])
            if qp is not None:
                fitted = _fit_into(qp, *bounds) if not self.ctx.scheme.symmetric_activations else None
                if fitted is not None:
                    return fitted, act
        return self.ctx.activation(y), None

    def check(self, m, x):
        node = m.root
        ctx = self.ctx
        require(any(_is_float32(v) for v in node.inputs if v is not None), "no float32 input (e.g. shape math)")
        if ctx.excluded(node):
            self._skip(node, "excluded by the user")
        if matches(node, ctx.keep_float):
            self._skip(node, "returned to float to meet --max-accuracy-drop")
        roles = self._roles(node)
        plan: dict[int, str] = {}
        for i, role in roles.items():
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                continue
            if producer_dq(v) is not None:
                continue  # already quantized
            if not _is_float32(v):
                self._skip(node, f"input {i} ('{v.name}') is not float32")
            if role == ACT:
                if m.is_initializer(v):
                    plan[i] = "const"
                elif v.name in ctx.nonfinite:
                    self._skip(node, f"'{v.name}' held NaN or infinities during calibration")
                elif ctx.activation(v) is None:
                    self._skip(node, f"no calibrated range for '{v.name}'")
                else:
                    plan[i] = ACT
            elif role == WEIGHT:
                if m.is_initializer(v):
                    plan[i] = WEIGHT
                elif ctx.activation(v) is not None and v.name not in ctx.nonfinite:
                    plan[i] = ACT  # MatMul of two activations (attention scores)
                else:
                    self._skip(node, f"input {i} ('{v.name}') is neither a constant nor calibrated")
            elif role == BIAS:
                plan[i] = BIAS if m.is_initializer(v) and plan.get(1) == WEIGHT and self._input_scale_known(node, plan) \
                    else "keep"
        out_qp, absorbed = self._output_plan(node, m.graph)
        changes = {i: p for i, p in plan.items() if p != "keep"}
        require(changes or out_qp is not None, "already quantized")
        m.plan = (plan, out_qp, absorbed)
        return True

    @staticmethod
    def _input_scale_known(node: Node, plan: dict[int, str]) -> bool:
        """The scale of input 0 is known now: it is being quantized, or dequantized with constant parameters."""
        if plan.get(0) == ACT:
            return True
        dq = producer_dq(node.inputs[0])
        return dq is not None and dq_params(dq) is not None

    # -- rewriting --------------------------------------------------------------------------------
    def rewrite(self, op, m, x):
        node = m.root
        plan, out_qp, absorbed = m.plan
        scheme = self.ctx.scheme
        inputs = list(node.inputs)
        hint = node.name or node.op_type.lower()
        weight_scale = None
        act_scale = None
        for i, what in sorted(plan.items()):
            v = inputs[i]
            if what == ACT:
                qp = self.ctx.activation(v)
                inputs[i] = _qdq(op, v, qp, f"{v.name}")
                if i == 0:
                    act_scale = qp.scale
            elif what == "const":
                a = _const(v).astype(np.float32)
                qp = activation_qparams(float(a.min(initial=0.0)), float(a.max(initial=0.0)), scheme.activations,
                                        symmetric=scheme.symmetric_activations)
                q = quantize(a, qp.scale, qp.zero_point, qp.dtype)
                inputs[i] = _dq_const(op, q, qp.scale, qp.zero_point, None, f"{hint}_in{i}")
            elif what == WEIGHT:
                w = _const(v)
                axis = self.spec.weight_axis(node, w) if scheme.per_channel and self.spec.weight_axis else None
                q, qp = quantize_weight(w, scheme.weights, axis, symmetric=scheme.symmetric_weights,
                                        reduce_range=scheme.reduce_range)
                inputs[i] = _dq_const(op, q, qp.scale, qp.zero_point, axis, f"{hint}_weight")
                weight_scale = qp
        if plan.get(2) == BIAS:
            inputs[2] = self._bias(op, node, inputs, act_scale, weight_scale, hint)
        attrs = dict(node.attributes)
        y = getattr(op, node.op_type)(*inputs, _domain=node.domain, _version=node.version, **attrs)
        keep_name(y, node)
        if out_qp is None:  # the output stays float under a new name: its readers quantize it with its range
            self.ctx.alias(y.name, node.outputs[0].name)
        label = node_label(node)
        self.ctx.quantized[label] = node.op_type
        self.ctx.skipped.pop(label, None)
        self.ctx.outputs[label] = (node.outputs[0].name, y, None)
        if out_qp is None:
            return y
        if absorbed is not None:
            self.ctx.quantized[node_label(absorbed)] = f"{absorbed.op_type} (absorbed into {node.op_type}'s output range)"
            return _qdq(op, y, out_qp, f"{node.outputs[0].name}")
        seen = _qdq(op, y, out_qp, f"{node.outputs[0].name}")
        self.ctx.outputs[label] = (node.outputs[0].name, y, seen)
        return seen

    def _bias(self, op, node: Node, inputs: list, act_scale, wq: QParams | None, hint: str):
        """The int32 bias behind a DequantizeLinear; the float bias when the scales are not known constants."""
        b = _const(node.inputs[2])
        if act_scale is None:
            dq = producer_dq(inputs[0])
            params = dq_params(dq) if dq is not None else None
            if params is None:
                return node.inputs[2]
            act_scale = params[0]
        if wq is None:
            return node.inputs[2]
        if node.op_type == "Gemm" and (float(node.attr("beta", 1.0)) != 1.0 or b.ndim != 1):
            return node.inputs[2]
        w_scale = np.asarray(wq.scale, np.float32)
        if node.op_type == "ConvTranspose" and w_scale.ndim == 1 and w_scale.size != b.size:
            w_scale = np.tile(w_scale, b.size // w_scale.size)  # groups: channel o uses the scale of o % (Cout/g)
        if w_scale.ndim == 1 and w_scale.size not in (1, b.size):
            return node.inputs[2]
        q, scale = quantize_bias(b, act_scale, w_scale)
        return _dq_const(op, q, scale, np.zeros(scale.shape, np.int32), 0 if scale.ndim == 1 else None,
                         f"{hint}_bias")


def _make_quantize_rule(spec: OpSpec) -> type[QuantizeOp]:
    doc = (f"Put QuantizeLinear/DequantizeLinear on the inputs{' and output' if spec.output else ''} of "
           f"{spec.op_type} (weights int8 per channel, bias int32).")
    return type(f"Quantize{spec.op_type}", (QuantizeOp,), {"spec": spec, "__doc__": doc})


QUANTIZE_RULES = [_make_quantize_rule(s) for s in OP_SPECS.values()]


class _OneOpRule(Rule):
    """A rule instantiated per op type (`PropagateDequantizeReshape`, `AbsorbRelu`, ...), rooted at that op."""

    prefix: ClassVar[str] = ""

    def __init__(self, op_type: str):
        self.op_type = op_type
        self.name = f"{self.prefix}{op_type}"

    def pattern(self, op, x):
        return getattr(op, self.op_type)(x, _allow_other_inputs=True)


# -- moving DequantizeLinear behind value-selecting ops --------------------------------------------------

_SELECTING = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Expand", "Identity",
              "DepthToSpace", "SpaceToDepth", "MaxPool", "GlobalMaxPool", "Resize", "Pad", "Concat")
#: the opset from which an op takes 8-bit integer inputs
_INT8_SINCE = {"MaxPool": 12, "GlobalMaxPool": 1, "Resize": 11, "Pad": 11, "Slice": 10}


class PropagateDequantize(_OneOpRule):
    """op(DequantizeLinear(q, s, z), ...) -> DequantizeLinear(op(q, ...), s, z) for ops that only select,
    reorder or compare values (exact: see the module docstring). Per-tensor DequantizeLinear only."""

    benefit: ClassVar[int] = 2

    prefix: ClassVar[str] = "PropagateDequantize"

    def check(self, m, x):
        node = m.root
        require(len([o for o in node.outputs if o is not None]) == 1, "more than one output")
        version = m.opset("") or 0
        require(version >= _INT8_SINCE.get(node.op_type, 1), f"{node.op_type}-{version} takes no 8-bit input")
        data = list(node.inputs) if node.op_type == "Concat" else [node.inputs[0]]
        dqs = [producer_dq(v) for v in data]
        require(all(d is not None for d in dqs), "the data input is not dequantized")
        params = [dq_params(d) for d in dqs]
        require(all(p is not None for p in params), "the DequantizeLinear is per-axis or has run-time parameters")
        s0, z0 = params[0]
        require(all(np.array_equal(s, s0) and np.array_equal(z, z0) and s.dtype == s0.dtype and z.dtype == z0.dtype
                    for s, z in params), "the inputs are quantized with different parameters")
        require(all(d.inputs[0].dtype == dqs[0].inputs[0].dtype for d in dqs), "different integer types")
        require(DataType(dqs[0].inputs[0].dtype) in (DataType.UINT8, DataType.INT8), "not an 8-bit quantized input")
        if node.op_type == "Resize":
            require(node.attr("mode", "nearest") == "nearest", "Resize interpolates (only nearest selects values)")
        if node.op_type == "Pad":
            require(node.attr("mode", "constant") == "constant", "Pad mode is not constant")
            value = node.inputs[2] if len(node.inputs) > 2 else None
            if value is not None:
                a = _const(value)
                require(a is not None and a.size == 1 and float(a) == 0.0 and not np.signbit(a),
                        "Pad writes a value other than +0")
            require(len(node.inputs) <= 3 and "value" not in node.attributes or float(node.attr("value", 0.0)) == 0.0,
                    "Pad writes a value other than +0")
        if node.op_type in ("MaxPool",):
            require(int(node.attr("storage_order", 0)) == 0, "MaxPool with storage_order")
        m.params = (dqs, s0, z0)
        return True

    def rewrite(self, op, m, x):
        node = m.root
        dqs, s, z = m.params
        inputs = list(node.inputs)
        if node.op_type == "Concat":
            inputs = [d.inputs[0] for d in dqs]
        else:
            inputs[0] = dqs[0].inputs[0]
        attrs = dict(node.attributes)
        zv = op.const(np.asarray(z).reshape(()), hint=f"{node.outputs[0].name}_zero_point")
        if node.op_type == "Pad":
            inputs = inputs[:2] + [zv] + inputs[3:]
            attrs.pop("value", None)
        y = getattr(op, node.op_type)(*inputs, _domain=node.domain, _version=node.version, **attrs)
        sv = op.const(np.asarray(s, np.float32).reshape(()), hint=f"{node.outputs[0].name}_scale")
        return op.DequantizeLinear(y, sv, zv)


class AbsorbActivation(_OneOpRule):
    """Relu/Clip(DequantizeLinear(q, s, z)) -> DequantizeLinear(q, s, z) when every dequantized value already lies
    in the activation's bounds (z at the type's minimum for Relu): exact, the activation changes nothing."""

    benefit: ClassVar[int] = 3

    prefix: ClassVar[str] = "Absorb"

    def check(self, m, x):
        dq = producer_dq(x)
        require(dq is not None, "the input is not dequantized")
        params = dq_params(dq)
        require(params is not None, "the DequantizeLinear is per-axis or has run-time parameters")
        bounds = clip_bounds(m.root)
        require(bounds is not None, "the bounds are not constants")
        s, z = params
        dtype = DataType(dq.inputs[0].dtype)
        require(dtype in (DataType.UINT8, DataType.INT8), "not an 8-bit quantized input")
        info = np.iinfo(np.uint8 if dtype == DataType.UINT8 else np.int8)
        s32 = np.float32(s)
        bottom = np.float32(int(info.min) - int(z)) * s32
        top = np.float32(int(info.max) - int(z)) * s32
        require(bottom >= np.float32(bounds[0]) and top <= np.float32(bounds[1]),
                "the quantized range reaches beyond the activation's bounds")
        return True

    def rewrite(self, op, m, x):
        return x


def qdq_rules(ctx: QdqContext) -> list[Rule]:
    """The rule list of static QDQ insertion for `ctx` (quantize rules, propagation, activation absorption)."""
    rules: list[Rule] = [cls(ctx) for cls in QUANTIZE_RULES]
    rules += [PropagateDequantize(t) for t in _SELECTING]
    rules += [AbsorbActivation(t) for t in ("Relu", "Clip")]
    return rules
