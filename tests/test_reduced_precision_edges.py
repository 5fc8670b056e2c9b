"""Edge cases of the reduced-precision compile paths, tried as a new user would: QDQ / QOperator models with the
shapes and quantization parameters the rule authors' own tests do not build (rewrites/rules/qinteger.py,
lowering/ops/qinteger.py), and `--precision` on the command line (codegen/precision.py).

Every quantized output is compared with onnxruntime running the model as written (ORT_DISABLE_ALL, the QDQ
reference) and must be within 1 quantized unit on every element; the weights are 7-bit where onnxruntime's own
integer kernels (QLinear*, QGemm) are the reference, since its u8 x s8 AVX2 kernels saturate with 8-bit ones.
Each model holds several branches so that one build checks them all.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.ir import load
from optc.rewrites import optimize
from optc.rewrites.rules.qinteger import to_integer_ops

RNG = np.random.default_rng(11)


class Graph:
    """A graph with one float input `x` (or a uint8 one), its nodes and constants, built branch by branch."""

    def __init__(self):
        self.nodes, self.inits, self.outputs = [], {}, []

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs, outputs, **attrs) -> str:
        self.nodes.append(h.make_node(op, list(inputs), list(outputs), **attrs))
        return outputs[0]

    def quantize(self, src: str, p: str, scale: float, zp, dtype) -> tuple[str, str]:
        """QuantizeLinear -> DequantizeLinear of `src` per tensor: (quantized, dequantized) names."""
        s, z = self.const(f"{p}_s", np.float32(scale)), self.const(f"{p}_z", np.array(zp, dtype))
        q = self.node("QuantizeLinear", [src, s, z], [f"{p}_q"])
        return q, self.node("DequantizeLinear", [q, s, z], [f"{p}_d"])

    def weight(self, p: str, w: np.ndarray, scale, zp=None, axis: int = 0) -> str:
        ins = [self.const(f"{p}_w", w), self.const(f"{p}_ws", np.asarray(scale, np.float32))]
        if zp is not None:
            ins.append(self.const(f"{p}_wz", np.asarray(zp, w.dtype)))
        return self.node("DequantizeLinear", ins, [f"{p}_wd"], axis=axis)

    def output_q(self, src: str, out: str, scale=0.05, zp=10, dtype=np.uint8) -> str:
        s, z = self.const(f"{out}_ys", np.float32(scale)), self.const(f"{out}_yz", np.array(zp, dtype))
        self.node("QuantizeLinear", [src, s, z], [out])
        self.outputs.append(out)
        return out

    def model(self, x_shape, x_type=TensorProto.FLOAT, opset: int = 17) -> onnx.ModelProto:
        graph = h.make_graph(self.nodes, "g", [h.make_tensor_value_info("x", x_type, x_shape)],
                             [onnx.ValueInfoProto(name=o) for o in self.outputs],
                             [nh.from_array(v, k) for k, v in self.inits.items()])
        return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.microsoft", 1)],
                            ir_version=8)


def int8s(shape, bound: int = 63) -> np.ndarray:
    return RNG.integers(-bound, bound + 1, shape).astype(np.int8)


def channel_scales(n: int) -> np.ndarray:
    return (RNG.random(n) * 0.01 + 0.002).astype(np.float32)


def ort_reference(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}), strict=True))


def summary_of(model: onnx.ModelProto) -> tuple[dict, list[str]]:
    m = optimize(load(model.SerializeToString()), level=2)
    summary = to_integer_ops(m)
    return summary, [n.op_type for g in m.graphs() for n in g]


def assert_matches_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Quantized outputs within 1 unit of onnxruntime, float outputs within 1e-5 of its largest value."""
    got = optc.compile(model).run({"x": x})
    for name, ref in ort_reference(model, x).items():
        g = got[name]
        assert g.dtype == ref.dtype and g.shape == ref.shape, (name, g.dtype, g.shape, ref.dtype, ref.shape)
        if ref.dtype.kind == "f":
            err = np.abs(g.astype(np.float64) - ref).max(initial=0) / (np.abs(ref).max(initial=0) + 1e-30)
            assert err < 1e-5, f"{name}: relative error {err:.3g}"
        else:
            values, counts = np.unique(g.astype(np.int64) - ref, return_counts=True)
            assert np.abs(values).max(initial=0) <= 1, f"{name}: differences {dict(zip(values, counts, strict=True))}"


# -- QDQ convolutions: 1-D, dilated, auto_pad SAME, negative and weight zero points, shared weights --------------

def test_qdq_convs_of_unusual_shapes_and_zero_points():
    """int8 activations with a negative zero point (the padding reads it), SAME padding with an even kernel and
    stride 2, asymmetric per-channel weight zero points, uint8 weights, a weight shared by two convs, a quantized
    output that is a graph output and also feeds the next conv's DequantizeLinear."""
    g = Graph()
    _, xd = g.quantize("x", "x", 0.02, -5, np.int8)
    w1 = g.weight("c1", int8s([4, 3, 3]), channel_scales(4), np.zeros(4, np.int8))
    g.output_q(g.node("Conv", [xd, w1], ["c1"], dilations=[2], pads=[2, 1]), "y1", zp=-3, dtype=np.int8)
    w2 = g.weight("c2", int8s([5, 3, 2]), 0.005)
    g.output_q(g.node("Conv", [xd, w2], ["c2"], auto_pad="SAME_UPPER", strides=[2]), "y2")
    w3 = g.weight("c3", int8s([4, 3, 3], 100), channel_scales(4), np.array([3, -7, 0, 20], np.int8))
    g.output_q(g.node("Conv", [xd, w3], ["c3"], auto_pad="SAME_LOWER", strides=[2]), "y3", zp=0, dtype=np.int8)
    w4 = g.weight("c4", RNG.integers(0, 200, [3, 3, 3]).astype(np.uint8), 0.004, np.uint8(90))
    y4 = g.output_q(g.node("Conv", [xd, w4], ["c4"], pads=[1, 1]), "y4", zp=-2, dtype=np.int8)
    y4d = g.node("DequantizeLinear", [y4, "y4_ys", "y4_yz"], ["y4_d"])  # y4: a graph output and a conv input
    g.output_q(g.node("Conv", [y4d, w4], ["c5"], pads=[1, 1]), "y5")  # the same weight again
    model = g.model(["N", 3, 13])
    summary, ops = summary_of(model)
    assert summary["integer"] == 5 and summary["float"] == 0 and "Conv" not in ops, summary
    assert_matches_onnxruntime(model, RNG.standard_normal([2, 3, 13]).astype(np.float32) * 1.5)


def test_qdq_intermediates_used_elsewhere_and_single_elements():
    """A DequantizeLinear output also read by a float op, a Relu output that is a graph output (the integer op
    keeps its float output for it), Clip with only a max, a 1 x 1 conv of a 1 x 1 image with padding and a
    negative input zero point."""
    g = Graph()
    _, xd = g.quantize("x", "x", 0.02, -9, np.int8)
    g.outputs.append(g.node("Sigmoid", [xd], ["s"]))
    conv = g.node("Conv", [xd, g.weight("a", int8s([4, 1, 1, 1]), 0.01)], ["a"], pads=[1, 1, 1, 1])
    g.outputs.append(g.node("Relu", [conv], ["r"]))
    g.output_q("r", "y1")
    hi = g.const("hi", np.float32(0.02))
    clip = g.node("Clip", [g.node("Conv", [xd, g.weight("b", int8s([3, 1, 1, 1]), 0.01)], ["b"]), "", hi], ["cl"])
    g.output_q(clip, "y2", scale=0.001)
    model = g.model([1, 1, 1, 1])
    summary, _ = summary_of(model)
    assert summary["integer"] == 2 and summary["float"] == 0, summary
    assert_matches_onnxruntime(model, np.array([[[[1.3]]]], np.float32))


# -- QDQ matmuls / Gemm ---------------------------------------------------------------------------------------

def test_qdq_matmuls_symbolic_batch_and_gemm_variants():
    g = Graph()
    _, xd = g.quantize("x", "x", 0.02, -3, np.int8)
    w = g.weight("m", int8s([6, 5]), channel_scales(5), axis=-1)  # a negative axis: the columns
    g.output_q(g.node("MatMul", [xd, w], ["m"]), "y1", zp=-1, dtype=np.int8)
    s = g.const("s", np.float32(0.03))
    g.node("QuantizeLinear", [g.node("MatMul", [xd, g.weight("n", int8s([6, 4]), 0.01)], ["n"]), s], ["y2"])
    g.outputs.append("y2")  # QuantizeLinear without a zero point: uint8
    model = g.model(["B", "S", 6])
    summary, _ = summary_of(model)
    assert summary["integer"] == 2, summary
    assert_matches_onnxruntime(model, RNG.standard_normal([3, 4, 6]).astype(np.float32))


def test_gemm_that_stays_float_says_why():
    """transA and alpha keep the float Gemm, exactly; the summary gives the Gemm rule's reason, not the Conv rule's
    'expected Conv, found Gemm' (the first rule that looked at the QuantizeLinear)."""
    g = Graph()
    _, xd = g.quantize("x", "x", 0.02, 128, np.uint8)
    g.output_q(g.node("Gemm", [xd, g.weight("t", int8s([4, 3]), 0.01)], ["t"], transA=1), "y1")
    c = g.const("cb", RNG.standard_normal(3).astype(np.float32))
    g.output_q(g.node("Gemm", [xd, g.weight("a", int8s([3, 4]), 0.01), c], ["a"], transB=1, alpha=0.5, beta=2.0),
               "y2")
    model = g.model([4, 4])
    summary, _ = summary_of(model)
    assert summary["integer"] == 0 and summary["float_reasons"] == {
        "Gemm 't'": "Gemm transposes A", "Gemm 'a'": "Gemm alpha/beta != 1"}, summary
    assert_matches_onnxruntime(model, RNG.standard_normal([4, 4]).astype(np.float32))


def test_equal_reasons_are_counted_together():
    """Two convs refused for the same reason make one entry of the compile summary (the reason once, not once per
    node with the node's partial match); uint8 weights 0..255 with zero point 20 do not fit int8 once shifted."""
    from optc.codegen.compile import describe_kernels

    g = Graph()
    _, xd = g.quantize("x", "x", 0.02, 128, np.uint8)
    for p in ("a", "b"):
        w = g.weight(p, RNG.integers(0, 256, [2, 3, 1, 1]).astype(np.uint8), 0.01, np.uint8(20))
        g.output_q(g.node("Conv", [xd, w], [p]), f"y{p}")
    summary, _ = summary_of(g.model([1, 3, 4, 4]))
    assert describe_kernels(summary) == \
        "integer kernels: 0 of 2 conv/matmul (2 float: 2 the weight minus its zero point does not fit int8)"


# -- onnxruntime's QOperator QGemm ------------------------------------------------------------------------------

def _qgemm_model(trans_b: bool, per_column: bool, bias: bool, quantized_out: bool, alpha: float = 1.0,
                 trans_a: bool = False):
    g = Graph()
    xq, _ = g.quantize("x", "x", 0.02, 100, np.uint8)
    n, k = 5, 6
    b = int8s([n, k] if trans_b else [k, n])
    bs = channel_scales(n) if per_column else np.float32(0.006)
    bz = np.zeros(n, np.int8) if per_column else np.int8(0)
    ins = [xq, "x_s", "x_z", g.const("b", b), g.const("bs", bs), g.const("bz", bz)]
    ins.append(g.const("c", RNG.integers(-900, 900, n).astype(np.int32)) if bias else "")
    if quantized_out:
        ins += [g.const("ys", np.float32(0.05)), g.const("yz", np.uint8(7))]
    g.node("QGemm", ins, ["y"], domain="com.microsoft", transA=int(trans_a), transB=int(trans_b), alpha=alpha)
    g.outputs.append("y")
    model = g.model([k, 3] if trans_a else [3, k])
    model.graph.output[0].CopyFrom(  # typed, as onnxruntime's quantizer writes it (no inference for QGemm)
        h.make_tensor_value_info("y", TensorProto.UINT8 if quantized_out else TensorProto.FLOAT, [3, n]))
    return model


def test_qgemm_becomes_qmatmul_within_one_unit():
    """What quantize_static(..., quant_format=QOperator) makes of a Gemm: before this rule optc could not compile
    it at all ('no converter: com.microsoft::QGemm')."""
    x = RNG.standard_normal([3, 6]).astype(np.float32)
    for trans_b, per_column, bias, quantized_out in [(True, True, True, True), (False, False, False, True),
                                                     (True, False, True, False), (False, True, False, False)]:
        model = _qgemm_model(trans_b, per_column, bias, quantized_out)
        summary, ops = summary_of(model)
        assert "QGemm" not in ops and ops.count("QMatMul") == 1, ops
        assert_matches_onnxruntime(model, x)


def test_qgemm_with_alpha_is_not_rewritten():
    summary, ops = summary_of(_qgemm_model(True, False, True, True, alpha=0.5))
    assert "QGemm" in ops and "QMatMul" not in ops, ops


@pytest.mark.parametrize("trans_b, per_column, bias, quantized_out", [(True, True, True, True),
                                                                      (False, False, False, False)])
def test_qgemm_the_rule_leaves_compiles_within_one_unit(trans_b, per_column, bias, quantized_out):
    """A QGemm the integer rule refuses (alpha != 1) runs through lowering/ops/quant.py's QGemm converter (before:
    'no converter: com.microsoft::QGemm', exit 2)."""
    model = _qgemm_model(trans_b, per_column, bias, quantized_out, alpha=0.5)
    assert_matches_onnxruntime(model, RNG.standard_normal([3, 6]).astype(np.float32))
    transposed = _qgemm_model(trans_b, per_column, bias, quantized_out, trans_a=True)
    assert "QGemm" in summary_of(transposed)[1]
    assert_matches_onnxruntime(transposed, RNG.standard_normal([6, 3]).astype(np.float32))


# -- the command line --------------------------------------------------------------------------------------------

def test_cli_precision_errors_are_one_line_exit_2(tmp_path):
    g = Graph()
    g.outputs.append(g.node("Conv", ["x", g.const("w", RNG.standard_normal([2, 3, 3, 3]).astype(np.float32))],
                            ["y"]))
    path = tmp_path / "conv.onnx"
    onnx.save(g.model([1, 3, 5, 5]), path)
    for args, expected in [(["--precision", "bf17"], "invalid choice: 'bf17'"),
                           (["--precision", "bf16", "--target", "cuda"], "supported for CPU targets")]:
        proc = subprocess.run([sys.executable, "-m", "optc", "compile", str(path), "-o", str(tmp_path / "m.so"),
                               *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("optc: error:") and expected in lines[0], proc.stderr


# -- models quantized by onnxruntime's own quantizer -------------------------------------------------------------

def _float_cnn(path) -> None:
    """Conv(+bias) -> Relu -> strided Conv -> Relu -> Flatten -> Gemm(transB) -> MatMul, symbolic batch."""
    g = Graph()
    w = lambda *shape: g.const(f"w{len(g.inits)}", (RNG.standard_normal(shape) * 0.3).astype(np.float32))  # noqa: E731
    r1 = g.node("Relu", [g.node("Conv", ["x", w(8, 3, 3, 3), w(8)], ["c1"], pads=[1] * 4)], ["r1"])
    r2 = g.node("Relu", [g.node("Conv", [r1, w(8, 8, 3, 3)], ["c2"], strides=[2, 2], pads=[1] * 4)], ["r2"])
    gemm = g.node("Gemm", [g.node("Flatten", [r2], ["f"]), w(10, 128), w(10)], ["g"], transB=1)
    g.outputs.append(g.node("MatMul", [gemm, w(10, 6)], ["y"]))
    model = g.model(["N", 3, 8, 8])
    model.graph.output[0].CopyFrom(h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]))
    onnx.save(model, path)


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader protocol: 8 random batches of one image."""

    def __init__(self):
        self.batches = iter([{"x": RNG.standard_normal([1, 3, 8, 8]).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["qdq_u8s8_per_channel", "qdq_s8s8", "qoperator_u8s8_reduce_range",
                                 "qoperator_s8s8_per_channel", "dynamic_per_channel"])
def test_models_quantized_by_onnxruntime(tmp_path, how):
    """Every conv/matmul runs on integer kernels and the output is within 1 unit of its final DequantizeLinear's
    scale of the reference: onnxruntime as written for QDQ and QOperator (7-bit weights where its u8 x s8 kernels
    could saturate), the onnx reference evaluator for dynamic quantization (onnxruntime's ConvInteger /
    MatMulInteger saturate with 8-bit per-channel weights: measured 15% off, optc exact)."""
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    _float_cnn(src)
    x = RNG.standard_normal([3, 3, 8, 8]).astype(np.float32)
    if how == "dynamic_per_channel":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        (ref,) = ReferenceEvaluator(str(dst)).run(None, {"x": x})
        unit = 1e-6 * np.abs(ref).max()  # float output: the integer sums are exact, only float32 scaling differs
    else:
        fmt = QuantFormat.QDQ if how.startswith("qdq") else QuantFormat.QOperator
        act = QuantType.QInt8 if "s8s8" in how else QuantType.QUInt8
        quantize_static(src, dst, _Calibration(), quant_format=fmt, activation_type=act, weight_type=QuantType.QInt8,
                        per_channel="per_channel" in how, reduce_range="reduce_range" in how)
        ref = ort_reference(onnx.load(dst), x)["y"]
        last = next(n for n in onnx.load(dst).graph.node if n.output[0] == "y")
        assert last.op_type == "DequantizeLinear", last.op_type
        unit = float(next(nh.to_array(i) for i in onnx.load(dst).graph.initializer if i.name == last.input[1]))
    artifact = optc.compile(dst)
    assert artifact.metadata["kernels"]["integer"] == 4 and artifact.metadata["kernels"]["float"] == 0, \
        artifact.metadata["kernels"]
    (got,) = artifact.run({"x": x}).values()
    assert np.abs(got - ref).max() <= unit * 1.001, f"{np.abs(got - ref).max() / unit:.3g} units"
