"""onnxruntime's QOperator contrib ops (domain com.microsoft) as QDQ around the standard float op, for the TVM
back end: what `onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QOperator)` writes for the
ops other than Conv and MatMul (whose default-domain QLinearConv / QLinearMatMul become optc's integer ops in
`qinteger.py`). Only the TVM compile path runs these rules (`to_qdq_ops`, from
`codegen.compile.build_executable`, at every -O level: TVM has no converter for these ops); ONNX out keeps them,
since onnxruntime runs them natively. (QLinearReduceMean has no CPU kernel in onnxruntime 1.31 and is left
alone.) The formulas are those of onnxruntime's operator schemas
(docs/ContribOperators.md, version 1 of each):

    QLinearAdd / QLinearMul(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?)
        -> Q(Add / Mul(DQ(A), DQ(B)), C_scale, C_zp)
    QLinearSigmoid(X, X_scale, X_zp?, Y_scale, Y_zp?)           -> Q(Sigmoid(DQ(X)), Y_scale, Y_zp)
    QLinearLeakyRelu(same, alpha)                               -> Q(LeakyRelu(DQ(X), alpha), ...)
    QLinearSoftmax(X, X_scale, x_zp?, y_scale, y_zp, axis, opset)  -> Q(Softmax(DQ(X)), ...)  (opset < 13: the
        input coerced to 2-D at `axis`, as Softmax-1/11 does: Flatten, Softmax(axis 1), Reshape back)
    QLinearConcat(Y_scale, Y_zp, (X_i, X_scale_i, X_zp_i)..., axis) -> Q(Concat(DQ(X_i)...), Y_scale, Y_zp)
    QLinearAveragePool / QLinearGlobalAveragePool(X, x_scale, x_zp, y_scale, y_zp, pool attributes,
        channels_last)                                          -> Q(AveragePool / GlobalAveragePool(DQ(X)))
        (channels_last = 1: NHWC, transposed to NCHW around the float pool and back)
    QLinearWhere(condition, X, x_scale, x_zp, Y, y_scale, y_zp, z_scale, z_zp)
                                                                -> Q(Where(condition, DQ(X), DQ(Y)), ...)
    QuantizeLinear / DequantizeLinear (com.microsoft, 8- and 16-bit) -> the standard ops (the same formula), where
        the model's opset has the type (16-bit: 21 on); else they lower as they are (`lowering/ops/quant.py`)

An absent output zero point becomes a zero of the input's type (the contrib ops keep their input's type; a
standard QuantizeLinear without one would write uint8).

Rounding: DQ -> float op -> Q computes the float function of the dequantized values and rounds once, half to even,
as the schemas define it. onnxruntime's kernels compute the same formula differently (QLinearAdd / Mul in float32
with the scale ratios precombined, Sigmoid / LeakyRelu / Softmax through 256-entry tables of the float function):
the results agree to within 1 unit of the output's scale, the same contract as optc's integer kernels
(tests/test_qoperator.py measures it against onnxruntime).
"""

from __future__ import annotations

import numpy as np

from ...ir.core import Model, Node, Value
from ..context import PassContext
from ..pattern import Or, require
from ..rule import Rule
from ._util import np_dtype

MS_DOMAIN = "com.microsoft"
_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))
#: rounds of type inference and rewriting (each types what the previous rewrote: contrib ops chained through
#: standard ones)
MAX_ROUNDS = 16
_QDQ_TYPES = (*_INT8, np.dtype(np.uint16), np.dtype(np.int16))
#: the pooling attributes QLinearAveragePool shares with AveragePool
_POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")


def _input(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _per_tensor(m, node: Node, scale: int, zero_point: int | None, what: str) -> None:
    """The scale (and zero point, where given) at these positions are per tensor (one element), the scale float32."""
    s = _input(node, scale)
    require(s is not None and s.shape is not None and int(np.prod(s.shape)) == 1, f"{what}'s scale is not one value")
    require(np_dtype(s) == np.float32, f"{what}'s scale is not float32")
    z = _input(node, zero_point) if zero_point is not None else None
    require(z is None or (z.shape is not None and int(np.prod(z.shape)) == 1), f"{what}'s zero point is not one "
                                                                                  "value")


def _quantized(what: str, *values: Value | None) -> np.dtype:
    """The quantized type of `what`: the first known element type among `values` (its zero point, a constant,
    first; then the tensor itself, whose type is unknown at -O0 and -O1, which infer no types)."""
    qtype = next((t for t in (np_dtype(v) for v in values if v is not None) if t is not None), None)
    require(qtype in _INT8, f"{what} is {qtype}, not uint8/int8")
    return qtype


def _same_type(qtype: np.dtype, *values: Value | None) -> bool:
    """Whether every value of known type among `values` is of `qtype`."""
    return all(np_dtype(v) in (None, qtype) for v in values if v is not None)


def _dq(op, x: Value, scale: Value, zero_point: Value | None):
    return op.DequantizeLinear(x, scale, zero_point) if zero_point is not None else op.DequantizeLinear(x, scale)


def _q(op, y, scale: Value, zero_point: Value | None, qtype: np.dtype):
    """QuantizeLinear to `qtype`: an absent zero point is a zero of that type (the standard op would write uint8)."""
    return op.QuantizeLinear(y, scale, zero_point if zero_point is not None else np.zeros((), qtype))


class _QLinearToQdq(Rule):
    """Base of the rules below: the root is the contrib op `op_type`, named "q"."""

    op_type = ""
    rounding = ("onnxruntime's kernel computes the schema's formula with precombined scale ratios or a 256-entry "
                "table; the float op between DequantizeLinear and QuantizeLinear rounds once: within 1 unit of the "
                "output's scale")

    def pattern(self, op):
        return getattr(op, self.op_type)(_allow_other_inputs=True, _domain=MS_DOMAIN, _name="q")


class QLinearBinaryToQdq(_QLinearToQdq):
    """QLinearAdd / QLinearMul -> Q(Add / Mul(DQ(A), DQ(B)))."""

    def check(self, m):
        q = m["q"]
        require(len(q.inputs) >= 7 and all(_input(q, i) is not None for i in (0, 1, 3, 4, 6)), "an input is absent")
        m.qtype = _quantized("A", _input(q, 2), q.inputs[0])
        require(_same_type(m.qtype, q.inputs[0], q.inputs[3], _input(q, 5), _input(q, 7)), "A, B and C differ in type")
        for scale, zp, what in ((1, 2, "A"), (4, 5, "B"), (6, 7, "C")):
            _per_tensor(m, q, scale, zp, what)
        return True

    def rewrite(self, op, m):
        q = m["q"]
        a = _dq(op, q.inputs[0], q.inputs[1], _input(q, 2))
        b = _dq(op, q.inputs[3], q.inputs[4], _input(q, 5))
        return _q(op, getattr(op, q.op_type.removeprefix("QLinear"))(a, b), q.inputs[6], _input(q, 7), m.qtype)


class QLinearAddToQdq(QLinearBinaryToQdq):
    """QLinearAdd(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?) -> Q(Add(DQ(A), DQ(B)), C_scale, C_zp)."""

    op_type = "QLinearAdd"


class QLinearMulToQdq(QLinearBinaryToQdq):
    """QLinearMul(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?) -> Q(Mul(DQ(A), DQ(B)), C_scale, C_zp)."""

    op_type = "QLinearMul"


class _QLinearUnaryToQdq(_QLinearToQdq):
    """Ops of one quantized input (X, X_scale, X_zp?, Y_scale, Y_zp?) -> Q(f(DQ(X)), Y_scale, Y_zp)."""

    def check(self, m):
        q = m["q"]
        require(len(q.inputs) >= 4 and all(_input(q, i) is not None for i in (0, 1, 3)), "an input is absent")
        m.qtype = _quantized("X", _input(q, 2), q.inputs[0])
        require(_same_type(m.qtype, q.inputs[0], _input(q, 4)), "X and Y differ in type")
        _per_tensor(m, q, 1, 2, "X")
        _per_tensor(m, q, 3, 4, "Y")
        return True

    def float_op(self, op, x, q: Node, m):
        raise NotImplementedError

    def rewrite(self, op, m):
        q = m["q"]
        y = self.float_op(op, _dq(op, q.inputs[0], q.inputs[1], _input(q, 2)), q, m)
        return _q(op, y, q.inputs[3], _input(q, 4), m.qtype)


class QLinearSigmoidToQdq(_QLinearUnaryToQdq):
    """QLinearSigmoid -> Q(Sigmoid(DQ(X)))."""

    op_type = "QLinearSigmoid"

    def float_op(self, op, x, q, m):
        return op.Sigmoid(x)


class QLinearLeakyReluToQdq(_QLinearUnaryToQdq):
    """QLinearLeakyRelu -> Q(LeakyRelu(DQ(X), alpha)) (alpha's default 0.01, the schema's)."""

    op_type = "QLinearLeakyRelu"

    def float_op(self, op, x, q, m):
        return op.LeakyRelu(x, alpha=float(q.attr("alpha", 0.01)))


class QLinearSoftmaxToQdq(_QLinearUnaryToQdq):
    """QLinearSoftmax -> Q(Softmax(DQ(X))), along `axis` (default -1) for `opset` >= 13; below, the input coerced
    to 2-D at `axis` as Softmax-1/11 defines it (Flatten, Softmax over axis 1, Reshape to the input's shape)."""

    op_type = "QLinearSoftmax"

    def check(self, m):
        super().check(m)
        q = m["q"]
        require(q.attr("opset", None) is not None, "QLinearSoftmax lacks its opset attribute")
        require(int(q.attr("opset")) >= 13 or q.inputs[0].rank is not None, "the input's rank is unknown (opset < "
                                                                               "13 coerces it to 2-D at axis)")
        return True

    def float_op(self, op, x, q, m):
        axis, rank = int(q.attr("axis", -1)), q.inputs[0].rank
        if int(q.attr("opset")) >= 13:
            return op.Softmax(x, axis=axis)
        flat = op.Flatten(x, axis=axis % rank if rank else 0)
        return op.Reshape(op.Softmax(flat, axis=1), op.Shape(x))


def _channels_first(op, x, rank: int):
    """NHWC -> NCHW (rank 3 and up)."""
    return op.Transpose(x, perm=[0, rank - 1, *range(1, rank - 1)])


def _channels_last(op, x, rank: int):
    return op.Transpose(x, perm=[0, *range(2, rank), 1])


class _QLinearPoolToQdq(_QLinearUnaryToQdq):
    def check(self, m):
        super().check(m)
        if int(m["q"].attr("channels_last", 0)):
            require(m["q"].inputs[0].rank is not None and m["q"].inputs[0].rank >= 3,
                    "a channels-last input of unknown rank")
        return True

    def float_op(self, op, x, q, m):
        last = int(q.attr("channels_last", 0))
        rank = q.inputs[0].rank
        x = _channels_first(op, x, rank) if last else x
        y = self.pool(op, x, q)
        return _channels_last(op, y, rank) if last else y

    def pool(self, op, x, q: Node):
        raise NotImplementedError


class QLinearAveragePoolToQdq(_QLinearPoolToQdq):
    """QLinearAveragePool -> Q(AveragePool(DQ(X))) with the node's pooling attributes."""

    op_type = "QLinearAveragePool"

    def pool(self, op, x, q):
        attrs = {k: q.attr(k) for k in _POOL_ATTRS if q.attr(k, None) is not None}
        return op.AveragePool(x, **attrs)


class QLinearGlobalAveragePoolToQdq(_QLinearPoolToQdq):
    """QLinearGlobalAveragePool -> Q(GlobalAveragePool(DQ(X)))."""

    op_type = "QLinearGlobalAveragePool"

    def pool(self, op, x, q):
        return op.GlobalAveragePool(x)


class QLinearConcatToQdq(_QLinearToQdq):
    """QLinearConcat(Y_scale, Y_zp, (X_i, X_scale_i, X_zp_i)...) -> Q(Concat(DQ(X_i)...), Y_scale, Y_zp)."""

    op_type = "QLinearConcat"

    def check(self, m):
        q = m["q"]
        require(len(q.inputs) >= 5 and (len(q.inputs) - 2) % 3 == 0, "the inputs are not (tensor, scale, zero "
                                                                      "point) triples")
        require(all(v is not None for v in q.inputs), "an input is absent")
        m.qtype = _quantized("Y", q.inputs[1])
        _per_tensor(m, q, 0, 1, "Y")
        for i in range(2, len(q.inputs), 3):
            require(_same_type(m.qtype, q.inputs[i], q.inputs[i + 2]), "the inputs differ in type from the output")
            _per_tensor(m, q, i + 1, i + 2, f"input {(i - 2) // 3}")
        return True

    def rewrite(self, op, m):
        q = m["q"]
        parts = [_dq(op, q.inputs[i], q.inputs[i + 1], q.inputs[i + 2]) for i in range(2, len(q.inputs), 3)]
        return _q(op, op.Concat(*parts, axis=int(q.attr("axis"))), q.inputs[0], q.inputs[1], m.qtype)


class QLinearWhereToQdq(_QLinearToQdq):
    """QLinearWhere(condition, X, x_scale, x_zp, Y, y_scale, y_zp, z_scale, z_zp) -> Q(Where(c, DQ(X), DQ(Y)))."""

    op_type = "QLinearWhere"

    def check(self, m):
        q = m["q"]
        require(len(q.inputs) == 9 and all(v is not None for v in q.inputs), "an input is absent")
        m.qtype = _quantized("the output", q.inputs[8])
        require(_same_type(m.qtype, *(q.inputs[i] for i in (1, 3, 4, 6))), "X, Y and the output differ in type")
        for scale, what in ((2, "X"), (5, "Y"), (7, "the output")):
            _per_tensor(m, q, scale, scale + 1, what)
        return True

    def rewrite(self, op, m):
        q = m["q"]
        x = _dq(op, q.inputs[1], q.inputs[2], q.inputs[3])
        y = _dq(op, q.inputs[4], q.inputs[5], q.inputs[6])
        return _q(op, op.Where(q.inputs[0], x, y), q.inputs[7], q.inputs[8], m.qtype)


class ContribQdqToStandard(Rule):
    """com.microsoft QuantizeLinear / DequantizeLinear (8- and 16-bit) -> the standard op of the same name and
    axis: the same formula (y = saturate(round(x / scale) + zero_point), half to even; (x - zero_point) * scale).
    Exact."""

    def pattern(self, op):
        return Or(op.QuantizeLinear(_allow_other_inputs=True, _domain=MS_DOMAIN, _name="q"),
                  op.DequantizeLinear(_allow_other_inputs=True, _domain=MS_DOMAIN, _name="q"))

    def check(self, m):
        q = m["q"]
        require(len(q.inputs) >= 2 and q.inputs[0] is not None and q.inputs[1] is not None, "an input is absent")
        quantized = _input(q, 2) if q.op_type == "QuantizeLinear" else q.inputs[0]
        require(quantized is None or np_dtype(quantized) in _QDQ_TYPES, "not an 8- or 16-bit integer type")
        return True

    def rewrite(self, op, m):
        q = m["q"]
        attrs = {"axis": int(q.attr("axis"))} if q.attr("axis", None) is not None else {}
        inputs = list(q.inputs[:3])
        while inputs and inputs[-1] is None:
            inputs.pop()
        return getattr(op, q.op_type)(*inputs, **attrs)


RULES = [QLinearAddToQdq, QLinearMulToQdq, QLinearSigmoidToQdq, QLinearLeakyReluToQdq, QLinearSoftmaxToQdq,
         QLinearAveragePoolToQdq, QLinearGlobalAveragePoolToQdq, QLinearConcatToQdq,
         QLinearWhereToQdq, ContribQdqToStandard]


def to_qdq_ops(model: Model) -> int:
    """Apply the rules to `model` in place (the TVM compile path only). Returns the number of contrib nodes
    rewritten; the ones a rule declines stay (the lowering then names them)."""
    from ..driver import apply_rules
    from ..pass_manager import create_pass

    roots = {rule.op_type for rule in RULES if issubclass(rule, _QLinearToQdq)} | {"QuantizeLinear", "DequantizeLinear"}
    if not any(n.domain == MS_DOMAIN and n.op_type in roots for g in model.graphs() for n in g):
        return 0
    # the new nodes need their inputs' types, which -O0 / -O1 do not infer, and a contrib op's output has none until
    # it is rewritten: a standard op between two contrib ops is typed only by the round after the first's rewrite
    total = 0
    for _ in range(MAX_ROUNDS):
        create_pass("infer-shapes").run(model, PassContext())
        rewrites = apply_rules(model, RULES, PassContext(opsets=dict(model.opset_imports)), "qoperator-to-qdq").rewrites
        total += rewrites
        if not rewrites:
            break
    return total
