"""onnxruntime's QOperator contrib ops (com.microsoft QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu,
QLinearSoftmax, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool, QLinearWhere, and the
contrib QuantizeLinear / DequantizeLinear) compiled by optc (`rewrites/rules/qoperator.py`) against onnxruntime
running the same model: within 1 unit of the output's scale on every element. Found by a breaker: a QOperator model
with a residual Add, a pool or a Softmax did not compile ("no converter: com.microsoft::QLinearAdd")."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.ir import load
from optc.rewrites.rule import explain
from optc.rewrites.rules.qoperator import QLinearSoftmaxToQdq, to_qdq_ops

RNG = np.random.default_rng(11)


def _conv(name: str, x: str, cin: int, cout: int, k: int = 3) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    w = nh.from_array((RNG.standard_normal((cout, cin, k, k)) * 0.4).astype(np.float32), f"{name}_w")
    return h.make_node("Conv", [x, w.name], [name], pads=[k // 2] * 4), w


def _float_model(kind: str) -> onnx.ModelProto:
    """x [2, 3, 8, 8] -> two convs a, b -> the op under test -> y."""
    (ca, wa), (cb, wb) = _conv("a", "x", 3, 8), _conv("b", "x", 3, 8, 1)
    nodes, inits = [ca, cb], [wa, wb]
    if kind in ("Add", "Mul"):
        nodes.append(h.make_node(kind, ["a", "b"], ["y"]))
    elif kind in ("Sigmoid", "LeakyRelu"):
        nodes.append(h.make_node(kind, ["a"], ["y"], **({"alpha": 0.2} if kind == "LeakyRelu" else {})))
    elif kind == "Concat":
        nodes.append(h.make_node("Concat", ["a", "b"], ["y"], axis=1))
    elif kind == "AveragePool":
        nodes.append(h.make_node("AveragePool", ["a"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    elif kind == "GlobalAveragePool":
        nodes.append(h.make_node("GlobalAveragePool", ["a"], ["y"]))
    elif kind == "Softmax":
        nodes.append(h.make_node("Softmax", ["a"], ["y"], axis=1))
    graph = h.make_graph(nodes, kind, [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _qoperator(model: onnx.ModelProto, tmp_path, activation: str, shape=(2, 3, 8, 8)) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [{"x": RNG.standard_normal(shape).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    qtype = QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8
    # uint8 x int8: 7-bit weights (reduce_range), as onnxruntime advises for x86 without VNNI, whose u8 x s8 kernel
    # saturates int16 pairs of products of wider ones (up to 80 units off here: test_qinteger's docstring)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator, activation_type=qtype,
                    weight_type=QuantType.QInt8, reduce_range=activation == "uint8")
    return onnx.load(dst)


def _output_scale(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that writes the graph output."""
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert dq.op_type == "DequantizeLinear", dq.op_type
    return float(inits[dq.input[1]])


def _assert_within_one_unit(model: onnx.ModelProto, x: np.ndarray, level: int = 2) -> None:
    got = optc.compile(model, level=level).run({"x": x})["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape
    units = np.abs(got.astype(np.float64) - want) / _output_scale(model)
    assert units.max() <= 1.0 + 1e-3, (units.max(), np.histogram(units, bins=[0, 0.5, 1.5, 2.5, 1e9])[0])


KINDS = ["Add", "Mul", "Sigmoid", "LeakyRelu", "Concat", "AveragePool", "GlobalAveragePool", "Softmax"]


@pytest.mark.parametrize("activation", ["uint8", "int8"])
@pytest.mark.parametrize("kind", KINDS)
def test_qoperator_models_from_onnxruntimes_quantizer(kind, activation, tmp_path):
    model = _qoperator(_float_model(kind), tmp_path, activation)
    contrib = [n.op_type for n in model.graph.node if n.domain == "com.microsoft"]
    assert contrib, [n.op_type for n in model.graph.node]  # the quantizer wrote the contrib op under test
    _assert_within_one_unit(model, (RNG.standard_normal((2, 3, 8, 8)) * 1.5).astype(np.float32))


@pytest.mark.parametrize("activation", ["uint8", "int8"])
@pytest.mark.parametrize("kind", ["Sigmoid", "LeakyRelu"])
def test_qgemm_feeding_a_qlinear_op(kind, activation, tmp_path):
    """Gemm -> LeakyRelu (or Sigmoid) in QOperator format is QGemm -> QLinearLeakyRelu: ONNX's inference has no
    schema for QGemm, and its output had no type, so the QLinear op after it was not rewritten (no converter, the
    compile refused; a breaker's find). `ir.infer` types QGemm's output now."""
    rng = np.random.default_rng(3)
    op = h.make_node(kind, ["g"], ["y"], **({"alpha": 0.1} if kind == "LeakyRelu" else {}))
    graph = h.make_graph([h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), op], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [nh.from_array((rng.standard_normal((8, 16)) * 0.3).astype(np.float32), "w"),
                          nh.from_array(rng.standard_normal(8).astype(np.float32), "b")])
    model = _qoperator(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), tmp_path, activation,
                       (4, 16))
    assert [n.op_type for n in model.graph.node][1:3] == ["QGemm", f"QLinear{kind}"]
    _assert_within_one_unit(model, rng.standard_normal((4, 16)).astype(np.float32))


def test_qgemm_output_type():
    """QGemm's output: [M, N] of y_zero_point's type, float32 without y_scale; a negative: no A, no type."""
    from optc.ir.infer import infer_node

    def qgemm(inputs, **attrs):
        graph = h.make_graph([h.make_node("QGemm", inputs, ["y"], domain="com.microsoft", **attrs)], "g",
                             [h.make_tensor_value_info("a", TensorProto.UINT8, [5, 7])],
                             [h.make_tensor_value_info("y", TensorProto.UNDEFINED, None)],
                             [nh.from_array(np.zeros((3, 7), np.int8), "b"), nh.from_array(np.float32(0.1), "s"),
                              nh.from_array(np.uint8(3), "zu"), nh.from_array(np.int8(0), "zi")])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
        node = next(iter(optc.from_onnx(model).graph))
        return infer_node(node, {"": 17, "com.microsoft": 1})[0]

    t = qgemm(["a", "s", "zu", "b", "s", "zi", "", "s", "zi"], transB=1)
    assert (t.dtype, t.shape) == (TensorProto.INT8, (5, 3))
    t = qgemm(["a", "s", "zu", "b", "s", "zi"], transB=1)
    assert (t.dtype, t.shape) == (TensorProto.FLOAT, (5, 3))
    assert qgemm(["", "s", "zu", "b", "s", "zi"], transB=1) is None


@pytest.mark.parametrize("level", [0, 1])
def test_qoperator_chain_at_low_levels(level, tmp_path):
    """-O0 and -O1 infer no types, which the rules' new nodes need: conv -> Add -> Sigmoid -> AveragePool ->
    Concat -> Softmax, all quantized (QLinearConv and five contrib ops in a chain)."""
    (ca, wa), (cb, wb) = _conv("a", "x", 3, 8), _conv("b", "x", 3, 8, 1)
    nodes = [ca, cb, h.make_node("Add", ["a", "b"], ["s"]), h.make_node("Sigmoid", ["s"], ["g"]),
             h.make_node("AveragePool", ["g"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("AveragePool", ["a"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Concat", ["p", "p2"], ["c"], axis=1), h.make_node("Softmax", ["c"], ["y"], axis=1)]
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [wa, wb])
    model = _qoperator(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), tmp_path, "uint8")
    contrib = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"QLinearAdd", "QLinearSigmoid", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax"} <= contrib
    _assert_within_one_unit(model, (RNG.standard_normal((2, 3, 8, 8)) * 1.5).astype(np.float32), level)


def _single(op: str, inputs: list[str], inits: list, attrs: dict, x_shape=(2, 4, 6, 6), qtype=TensorProto.UINT8,
            opset: int = 17) -> onnx.ModelProto:
    """x float -> QuantizeLinear (scale 0.05, zero point 128 / 0) -> the contrib op -> DequantizeLinear -> y. Also
    there: c = x > 0.5 (bool) and k, a quantized [1, 4, 1, 1] constant (scale 0.1, zero point xz)."""
    np_q = np.uint8 if qtype == TensorProto.UINT8 else np.int8
    zp = 128 if qtype == TensorProto.UINT8 else 0
    inits = [nh.from_array(np.array(0.05, np.float32), "xs"), nh.from_array(np.array(zp, np_q), "xz"),
             nh.from_array(np.array(0.03, np.float32), "ys"), nh.from_array(np.array(zp // 2, np_q), "yz"),
             nh.from_array(np.array(0.5, np.float32), "half"), nh.from_array(np.array(0.1, np.float32), "ks"),
             nh.from_array((np.arange(4).reshape(1, 4, 1, 1) * 20 + zp - 30).astype(np_q), "k"), *inits]
    nodes = [h.make_node("Greater", ["x", "half"], ["c"]), h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node(op, inputs, ["yq"], domain="com.microsoft", **attrs),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = h.make_graph(nodes, op, [h.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.microsoft", 1)],
                        ir_version=8)


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset"), [
    ("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], {"axis": -1, "opset": 13}, 17),
    ("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], {"axis": 2, "opset": 11}, 17),  # 2-D coerced at axis 2
    ("QLinearAveragePool", ["xq", "xs", "xz", "ys", "yz"], {"kernel_shape": [3, 3], "channels_last": 1}, 17),
    ("QLinearGlobalAveragePool", ["xq", "xs", "xz", "ys", "yz"], {"channels_last": 1}, 17),
    ("QLinearAdd", ["xq", "xs", "xz", "xq", "xs", "xz", "ys"], {}, 17),  # no output zero point: 0 of the type
    ("QLinearLeakyRelu", ["xq", "xs", "xz", "ys", "yz"], {}, 17),  # alpha's default
    ("QLinearWhere", ["c", "xq", "xs", "xz", "k", "ks", "xz", "ys", "yz"], {}, 17),
    ("QLinearConcat", ["ys", "yz", "xq", "xs", "xz", "xq", "ks", "xz"], {"axis": 3}, 17),  # one input, 2 scales
    ("QLinearMul", ["xq", "xs", "xz", "k", "ks", "xz", "ys", "yz"], {}, 17),  # broadcast
])
@pytest.mark.parametrize("qtype", [TensorProto.UINT8, TensorProto.INT8])
def test_contrib_op_forms(op, inputs, attrs, opset, qtype):
    """Forms the quantizer does not write here: Softmax of opset 11 (2-D coercion), channels-last pools, absent zero
    points, default alpha, Where, a Concat and a Mul with a broadcast constant; infinities in the float input (quantized first)."""
    model = _single(op, inputs, [], attrs, qtype=qtype, opset=opset)
    if len(inputs) == 7:  # the output's type follows the input's without a zero point: DequantizeLinear without one
        model.graph.node[3].input[2:] = []
    ort_model = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (RNG.standard_normal((2, 4, 6, 6)) * 2).astype(np.float32)
    x[0, 0, 0, :2] = [np.inf, -np.inf]  # (NaN's quantized value is undefined in ONNX)
    got, want = optc.compile(model).run({"x": x})["y"], ort_model.run(None, {"x": x})[0]
    assert got.shape == want.shape, (got.shape, want.shape)
    units = np.abs(got.astype(np.float64) - want) / 0.03
    assert units.max() <= 1.0 + 1e-3, units.max()


def test_contrib_quantize_dequantize_are_the_standard_ops():
    """com.microsoft QuantizeLinear / DequantizeLinear (int16 here, per axis) become the standard ops: exact."""
    scale = nh.from_array(np.array([0.01, 0.02, 0.05, 0.1], np.float32), "s")
    zp = nh.from_array(np.array([0, 10, -10, 3], np.int16), "z")
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], domain="com.microsoft", axis=1),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], domain="com.microsoft", axis=1)]
    graph = h.make_graph(nodes, "qdq16", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, zp])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)],
                         ir_version=10)
    x = (RNG.standard_normal((2, 4, 5)) * 300).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(optc.compile(model).run({"x": x})["y"], want)


def _per_channel_output_scale(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(nh.from_array(np.array([0.05, 0.06], np.float32), "ys2"))
    model.graph.node[2].input[3] = "ys2"


def _without_opset(model: onnx.ModelProto) -> None:
    attrs = [a for a in model.graph.node[2].attribute if a.name != "opset"]
    del model.graph.node[2].attribute[:]
    model.graph.node[2].attribute.extend(attrs)


@pytest.mark.parametrize(("mutate", "reason"), [
    (_per_channel_output_scale, "one value"),
    (_without_opset, "opset"),
], ids=["per-channel-output-scale", "no-opset-attribute"])
def test_not_rewritten(mutate, reason):
    """Negative cases: the rule declines (the op stays, the lowering then names it)."""
    model = _single("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], [], {"axis": -1, "opset": 13})
    mutate(model)
    ir = load(model)
    assert to_qdq_ops(ir) == 0
    node = next(n for n in ir.graph if n.op_type == "QLinearSoftmax")
    assert reason in explain(QLinearSoftmaxToQdq, node, ir)


def _from_image(nodes: list, inits: list, shape=(2, 4, 6, 6)) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("case", ["sigmoid-conv-add", "sigmoid-flatten-softmax"])
def test_contrib_ops_chained_through_standard_ops(case, level, tmp_path):
    """Found by a breaker: a contrib op reading a standard op (QLinearConv, Flatten) that reads another contrib op
    was left unconverted (its input had no type until the first contrib op was rewritten: the rules now run in
    rounds of type inference and rewriting), and QLinearSoftmax of opset >= 13 asked for its input's rank."""
    w = nh.from_array((RNG.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32), "w")
    if case == "sigmoid-conv-add":
        nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Conv", ["s", "w"], ["c"]),
                 h.make_node("Add", ["c", "s"], ["y"])]
    else:
        nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Flatten", ["s"], ["f"]),
                 h.make_node("Softmax", ["f"], ["y"], axis=1)]
    model = _qoperator(_from_image(nodes, [w]), tmp_path, "uint8", shape=(2, 4, 6, 6))
    assert sum(n.domain == "com.microsoft" for n in model.graph.node) == 2, [n.op_type for n in model.graph.node]
    _assert_within_one_unit(model, (RNG.standard_normal((2, 4, 6, 6)) * 1.5).astype(np.float32), level)


def test_16_bit_contrib_quantize_before_opset_21():
    """Found by a breaker: uint16 contrib QuantizeLinear / DequantizeLinear in an opset-17 model (where the standard
    ops have no 16-bit types: the rule declines) lower as they are: exact."""
    scale = nh.from_array(np.array(0.01, np.float32), "s")
    zp = nh.from_array(np.array(30000, np.uint16), "z")
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], domain="com.microsoft"),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], domain="com.microsoft")]
    graph = h.make_graph(nodes, "qdq16", [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 10])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, zp])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)],
                         ir_version=8)
    x = (RNG.standard_normal((3, 10)) * 300).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(optc.compile(model).run({"x": x})["y"], want)
