"""QDQ patterns -> optc.QConv / optc.QMatMul (rewrites/rules/qinteger.py, lowering/ops/qinteger.py).

Exactness contract: on every element the integer op is within 1 quantized unit of onnxruntime running the same
QDQ model as written (ORT_DISABLE_ALL: DequantizeLinear, the float op, QuantizeLinear), and, for weights of
7 bits (what optc's quantizer makes on x86 without VNNI), of onnxruntime's own fused integer kernels
(ORT_ENABLE_ALL: QLinearConv / QGemm). With full 8-bit weights onnxruntime's u8 x s8 kernels on AVX2 (no VNNI)
saturate pairs of products in VPMADDUBSW (255 * 127 * 2 > 32767): measured up to 58 units off the QDQ model on
a 1x1 conv, where optc's integer kernel had no difference at all; those histograms are printed, not asserted.
Each compiled model holds several branches (shape classes) so that one build covers them; every assertion
message carries the histogram of the differences, {difference in quantized units: count}.
"""

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
from optc.rewrites import optimize
from optc.rewrites.rules.qinteger import DOMAIN, kernel_summary, to_integer_ops

RNG = np.random.default_rng(7)
XS, YS = np.float32(0.02), np.float32(0.05)


class Builder:
    """A QDQ graph: one quantized input `x`, branches that each end in a graph output."""

    def __init__(self, shape, x_dtype=np.uint8, x_zp=128, weight_max=127):
        self.weight_max = weight_max
        self.shape, self.nodes, self.inits, self.outputs = list(shape), [], [], []
        self.x_dtype = x_dtype
        self.init("xs", np.array(XS))
        self.init("xz", np.array(x_zp, x_dtype))
        self.nodes += [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                       h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]

    def init(self, name, value):
        self.inits.append(nh.from_array(np.asarray(value), name))
        return name

    def weight(self, p, shape, per_channel, axis, w_dtype=np.int8, w_zp=0):
        lo, hi = (-self.weight_max, self.weight_max + 1) if w_dtype == np.int8 else (0, 256)
        w = RNG.integers(lo, hi, shape).astype(w_dtype)
        n = shape[axis]
        ws = (RNG.random(n).astype(np.float32) * 0.01 + 0.002) if per_channel else np.array(0.006, np.float32)
        wz = np.full(ws.shape, w_zp, w_dtype)
        self.init(f"{p}_w", w), self.init(f"{p}_ws", ws), self.init(f"{p}_wz", wz)
        self.nodes.append(h.make_node("DequantizeLinear", [f"{p}_w", f"{p}_ws", f"{p}_wz"], [f"{p}_wd"], axis=axis))
        return ws

    def bias(self, p, n, ws):
        bs = (XS * np.broadcast_to(ws, (n,))).astype(np.float32)
        self.init(f"{p}_b", RNG.integers(-3000, 3000, n).astype(np.int32))
        self.init(f"{p}_bs", bs), self.init(f"{p}_bz", np.zeros(n, np.int32))
        self.nodes.append(h.make_node("DequantizeLinear", [f"{p}_b", f"{p}_bs", f"{p}_bz"], [f"{p}_bd"], axis=0))
        return f"{p}_bd"

    def finish(self, p, out, act=None, y_dtype=np.uint8, y_zp=10):
        if act == "relu":
            self.nodes.append(h.make_node("Relu", [out], [f"{p}_act"]))
            out = f"{p}_act"
        elif act == "clip":
            self.init(f"{p}_lo", np.float32(-0.3)), self.init(f"{p}_hi", np.float32(2.5))
            self.nodes.append(h.make_node("Clip", [out, f"{p}_lo", f"{p}_hi"], [f"{p}_act"]))
            out = f"{p}_act"
        self.init(f"{p}_ys", YS), self.init(f"{p}_yz", np.array(y_zp, y_dtype))
        self.nodes.append(h.make_node("QuantizeLinear", [out, f"{p}_ys", f"{p}_yz"], [p]))
        self.outputs.append(h.make_tensor_value_info(p, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(y_dtype)),
                                                     None))

    def conv(self, p, m, k, stride=1, pad=0, group=1, per_channel=True, bias=True, act=None, quantized_out=True,
             **kw):
        c = self.shape[1]
        ws = self.weight(p, [m, c // group, k, k], per_channel, 0, **kw)
        ins = [f"{p}_wd"] + ([self.bias(p, m, ws)] if bias else [])
        self.nodes.append(h.make_node("Conv", ["xd", *ins], [f"{p}_c"], strides=[stride] * 2, pads=[pad] * 4,
                                      group=group))
        if quantized_out:
            self.finish(p, f"{p}_c", act)
        else:
            self.outputs.append(h.make_tensor_value_info(f"{p}_c", TensorProto.FLOAT, None))

    def matmul(self, p, n, gemm=False, trans_b=True, per_channel=True, bias=True, act=None, quantized_out=True,
               y_dtype=np.uint8):
        k = self.shape[-1]
        shape, axis = ([n, k], 0) if gemm and trans_b else ([k, n], 1)
        ws = self.weight(p, shape, per_channel, axis)
        if gemm:
            ins = [f"{p}_wd"] + ([self.bias(p, n, ws)] if bias else [])
            self.nodes.append(h.make_node("Gemm", ["xd", *ins], [f"{p}_c"], transB=int(trans_b)))
        else:
            self.nodes.append(h.make_node("MatMul", ["xd", f"{p}_wd"], [f"{p}_c"]))
        if quantized_out:
            self.finish(p, f"{p}_c", act, y_dtype=y_dtype, y_zp=0 if y_dtype == np.int8 else 10)
        else:
            self.outputs.append(h.make_tensor_value_info(f"{p}_c", TensorProto.FLOAT, None))

    def model(self, opset=17) -> onnx.ModelProto:
        x = h.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)
        graph = h.make_graph(self.nodes, "g", [x], self.outputs, self.inits)
        return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


def _ort(model: onnx.ModelProto, x: np.ndarray, optimized: bool) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in model.graph.output], sess.run(None, {"x": x}), strict=True))


def histogram(diff: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(diff, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def assert_within_one_unit(model: onnx.ModelProto, x: np.ndarray, fused_too: bool = False) -> dict:
    """optc vs onnxruntime on the QDQ model as written (asserted), and vs onnxruntime's fused integer kernels
    (asserted when `fused_too`); returns {output: histogram} of the first."""
    got = optc.compile(model).run({"x": x})
    hists, fused_hists = {}, {}
    for (name, r), f in zip(_ort(model, x, False).items(), _ort(model, x, True).values(), strict=True):
        g = got[name]
        assert g.dtype == r.dtype and g.shape == r.shape, (name, g.dtype, g.shape, r.dtype, r.shape)
        if r.dtype.kind == "f":  # a float output (MatMul / Gemm without QuantizeLinear)
            for ref in (r, f):
                err = np.abs(g.astype(np.float64) - ref) / (np.abs(ref).max() + 1e-30)
                assert err.max() < 1e-5, f"{name}: relative error {err.max():.3g}"
            continue
        hists[name] = histogram(g.astype(np.int64) - r)
        fused_hists[name] = histogram(g.astype(np.int64) - f)
        assert max(map(abs, hists[name])) <= 1, f"{name}: histogram of differences {hists[name]}"
        if fused_too:
            assert max(map(abs, fused_hists[name])) <= 1, f"{name} vs fused: histogram {fused_hists[name]}"
    print("differences (quantized units) vs the QDQ model:", hists, "; vs onnxruntime's fused kernels:", fused_hists)
    return hists


def _integer_ops(model: onnx.ModelProto):
    m = optimize(load(model.SerializeToString()), level=2)
    summary = to_integer_ops(m)
    ops = [n.op_type for g in m.graphs() for n in g]
    return m, summary, ops


# -- exactness against onnxruntime ------------------------------------------------------------------------------

def test_convs_of_every_shape_class_within_one_unit():
    b = Builder([2, 8, 11, 11], x_zp=131, weight_max=63)
    b.conv("c1x1", 16, 1)
    b.conv("c3x3", 12, 3, act="relu")
    b.conv("strided_padded", 8, 3, stride=2, pad=1)  # padded with a nonzero x zero point
    b.conv("depthwise", 8, 3, pad=1, group=8, act="clip")
    b.conv("grouped", 8, 3, pad=2, group=4, bias=False)
    b.conv("per_tensor", 6, 5, pad=1, per_channel=False)
    b.conv("u8_weight", 4, 3, w_dtype=np.uint8, w_zp=128, per_channel=False)
    model = b.model()
    _, summary, ops = _integer_ops(model)
    assert summary["integer"] == 7 and summary["float"] == 0, summary
    assert "Conv" not in ops and "DequantizeLinear" not in ops and ops.count("QConv") == 7
    x = RNG.standard_normal(b.shape).astype(np.float32) * 1.5
    hists = assert_within_one_unit(model, x, fused_too=True)
    assert len(hists) == 7


def test_full_range_weights_match_the_qdq_model():
    """8-bit weights: exact against the QDQ model; onnxruntime's saturating u8 x s8 kernels may differ (printed)."""
    b = Builder([1, 16, 6, 6], x_zp=131)
    b.conv("c1x1", 16, 1)
    b.matmul("mm", 8)
    assert_within_one_unit(b.model(), RNG.standard_normal(b.shape).astype(np.float32) * 1.5)


def test_signed_activations_and_one_input_channel():
    b = Builder([1, 1, 7, 7], x_dtype=np.int8, x_zp=-3)
    b.conv("one_term", 4, 1)  # a reduction of one term (REDUCTION OF ONE)
    b.conv("s8_padded", 5, 3, pad=1, act="relu")
    b.conv("float_out", 3, 3, pad=1, quantized_out=False)
    model = b.model()
    assert _integer_ops(model)[1]["integer"] == 3
    assert_within_one_unit(model, RNG.standard_normal(b.shape).astype(np.float32))


def test_matmuls_within_one_unit():
    b = Builder([3, 5, 24], x_zp=120, weight_max=63)
    b.matmul("batched", 16)
    b.matmul("batched_relu_s8_out", 9, act="relu", y_dtype=np.int8)
    b.matmul("per_tensor", 7, per_channel=False, act="clip")
    b.matmul("float_out", 6, quantized_out=False)
    model = b.model()
    _, summary, ops = _integer_ops(model)
    assert summary == {"integer": 4, "bfloat16": 0, "float": 0, "float_reasons": {}}, summary
    assert ops.count("QuantizeLinear") == 1  # the input's: each output's requantize is inside its QMatMul
    assert_within_one_unit(model, RNG.standard_normal(b.shape).astype(np.float32), fused_too=True)


def test_gemms_within_one_unit():
    b = Builder([4, 32], x_dtype=np.int8, x_zp=5)
    b.matmul("gemm_bias", 10, gemm=True)
    b.matmul("gemm_no_trans", 12, gemm=True, trans_b=False, act="relu")
    b.matmul("gemm_no_bias", 3, gemm=True, bias=False)
    b.matmul("gemm_float_out", 8, gemm=True, quantized_out=False)
    model = b.model()
    _, summary, ops = _integer_ops(model)
    assert summary["integer"] == 4 and "Gemm" not in ops and ops.count("QuantizeLinear") == 1
    assert_within_one_unit(model, RNG.standard_normal(b.shape).astype(np.float32))


def test_qlinear_ops_import_to_the_integer_ops():
    """7-bit weights: onnxruntime's QLinearConv is a saturating u8 x s8 kernel on AVX2 (module docstring)."""
    xz, yz = np.array(100, np.uint8), np.array(7, np.uint8)
    w = RNG.integers(-63, 64, (6, 4, 3, 3)).astype(np.int8)
    ws = (RNG.random(6).astype(np.float32) * 0.01 + 0.002)
    wm = RNG.integers(-63, 64, (81, 5)).astype(np.int8)
    inits = [nh.from_array(v, n) for v, n in [
        (np.array(XS), "xs"), (xz, "xz"), (w, "w"), (ws, "ws"), (np.zeros(6, np.int8), "wz"), (np.array(YS), "ys"),
        (yz, "yz"), (RNG.integers(-900, 900, 6).astype(np.int32), "b"), (wm, "wm"), (np.array(0.004, np.float32), "wms"),
        (np.array(0, np.int8), "wmz")]]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1] * 4),
             h.make_node("Reshape", ["y", "shape"], ["flat"]),
             h.make_node("QLinearMatMul", ["flat", "ys", "yz", "wm", "wms", "wmz", "ys", "yz"], ["z"])]
    inits.append(nh.from_array(np.array([1, 6, 81], np.int64), "shape"))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                         [h.make_tensor_value_info("y", TensorProto.UINT8, None),
                          h.make_tensor_value_info("z", TensorProto.UINT8, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    _, summary, ops = _integer_ops(model)
    assert ops.count("QConv") == 1 and ops.count("QMatMul") == 1 and "QLinearConv" not in ops, ops
    assert summary["integer"] == 2
    assert_within_one_unit(model, RNG.standard_normal((1, 4, 9, 9)).astype(np.float32) * 2)


@pytest.mark.slow
def test_corpus_model_quantized_by_optc():
    from optc.ir.onnx_export import to_onnx
    from optc.quantization.api import quantize

    q = to_onnx(quantize("examples/digits_cnn.onnx", calibration="examples/digits_calib.npz"))
    q.ir_version = min(q.ir_version, 10)
    _, summary, ops = _integer_ops(q)
    assert summary["integer"] == 5 and summary["float"] == 0, summary  # 3 Conv + 2 Gemm
    # the trained classifier keeps its int8 accuracy when compiled: within 0.2 points of onnxruntime's on the same
    # QDQ model over the whole held-out split (360 images: the same number right)
    test = np.load("examples/digits_test.npz")
    x, labels = test["x"].astype(np.float32), test["y"]
    ref = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = optc.compile(q).run({"x": x})[q.graph.output[0].name]
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f"logits relative difference {err:.3g}"
    accuracy, ort_accuracy = (got.argmax(1) == labels).mean(), (ref.argmax(1) == labels).mean()
    assert abs(accuracy - ort_accuracy) < 0.002 and accuracy > 0.95, (accuracy, ort_accuracy)


# -- what is and is not rewritten -------------------------------------------------------------------------------

def _single_conv(mutate) -> onnx.ModelProto:
    b = Builder([1, 4, 6, 6])
    b.conv("y", 4, 3, pad=1)
    model = b.model()
    mutate(model)
    return model


def _node(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def _inits(model):
    return {t.name: t for t in model.graph.initializer}


def _weight_as_input(model):
    w = _inits(model)["y_w"]
    model.graph.initializer.remove(w)
    model.graph.input.append(h.make_tensor_value_info("y_w", w.data_type, list(w.dims)))


def _scale_as_input(model):
    model.graph.initializer.remove(_inits(model)["xs"])
    model.graph.input.append(h.make_tensor_value_info("xs", TensorProto.FLOAT, []))


def _sigmoid_between(model):
    conv = _node(model, "Conv")
    model.graph.node.insert(list(model.graph.node).index(conv) + 1, h.make_node("Sigmoid", ["y_c"], ["y_s"]))
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == "y_c":
            n.input[0] = "y_s"


def _output_is_graph_output(model):
    model.graph.output.append(h.make_tensor_value_info("y_c", TensorProto.FLOAT, None))


def _output_used_elsewhere(model):
    model.graph.node.append(h.make_node("Neg", ["y_c"], ["neg"]))
    model.graph.output.append(h.make_tensor_value_info("neg", TensorProto.FLOAT, None))


def _float_bias(model):
    for n in model.graph.node:
        if n.op_type == "Conv":
            n.input[2] = "fbias"
    model.graph.initializer.append(nh.from_array(np.linspace(-1, 1, 4).astype(np.float32), "fbias"))


def _bias_scale_off(model):
    bs = _inits(model)["y_bs"]
    bs.CopyFrom(nh.from_array(nh.to_array(bs) * np.float32(1.01), "y_bs"))


def _bias_near_int32s_limit(model):
    """A bias whose sum with the products can leave int32 (the QDQ graph computes it in float)."""
    b = _inits(model)["y_b"]
    b.CopyFrom(nh.from_array(np.full(nh.to_array(b).shape, -(2**31) + 10, np.int32), "y_b"))


@pytest.mark.parametrize("mutate,reason", [
    (_bias_near_int32s_limit, "can overflow the int32 accumulator"),
    (_weight_as_input, "the weight's quantized values are not a constant"),
    (_scale_as_input, "the input's scale is not a constant"),
    (_float_bias, "a float bias is not fused"),
    (_bias_scale_off, "the bias's scale is not input scale x weight scale"),
])
def test_not_rewritten(mutate, reason):
    model = _single_conv(mutate)
    _, summary, ops = _integer_ops(model)
    assert "QConv" not in ops and "Conv" in ops
    assert summary["float"] == 1 and summary["integer"] == 0
    (why,) = summary["float_reasons"].values()
    assert reason in why, why


@pytest.mark.parametrize("mutate", [_sigmoid_between, _output_is_graph_output, _output_used_elsewhere])
def test_float_output_when_the_quantizelinear_cannot_fuse(mutate):
    """A float op between the Conv and its QuantizeLinear, or a Conv output used elsewhere: the QuantizeLinear
    stays, the Conv becomes an integer conv with a float output (QdqConvFloatOut)."""
    _, summary, ops = _integer_ops(_single_conv(mutate))
    assert "Conv" not in ops and ops.count("QConv") == 1 and ops.count("QuantizeLinear") == 2, ops
    assert summary["integer"] == 1


def test_float16_scales_not_rewritten():
    b = Builder([1, 4, 6, 6])
    b.conv("y", 4, 3)
    model = b.model()
    for t in model.graph.initializer:
        if t.name in ("y_ws", "y_ys"):
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.float16), t.name))
    _, summary, ops = _integer_ops(model)
    assert "QConv" not in ops and summary["float"] == 1
    assert "not float32" in next(iter(summary["float_reasons"].values()))


def test_float_model_counts_float_and_standard_optimize_keeps_onnx():
    b = Builder([1, 4, 6, 6])
    b.conv("y", 4, 3, act="relu")
    model = b.model()
    m = optimize(load(model.SerializeToString()), level=3)  # `optc optimize`: standard ONNX only
    assert all(n.domain != DOMAIN for g in m.graphs() for n in g)
    assert kernel_summary(m)["float"] == 1


@pytest.mark.parametrize("mutate,integer", [(_float_bias, 0), (_sigmoid_between, 1), (_bias_near_int32s_limit, 0)])
def test_unrewritten_and_float_output_patterns_still_exact(mutate, integer):
    """A rejected pattern (a float bias) keeps the float path; a Sigmoid in between gets a float-output integer
    conv: both within 1 unit of onnxruntime."""
    model = _single_conv(mutate)
    assert _integer_ops(model)[1]["integer"] == integer
    assert_within_one_unit(model, RNG.standard_normal((1, 4, 6, 6)).astype(np.float32))


def test_dynamic_quantization_matmul_integer_runs_on_raw_operands():
    """optc's dynamic quantizer: DynamicQuantizeLinear + MatMulInteger (a's zero point known at run time) ->
    optc.QMatMul with an int32 output; the whole model equal to the ONNX reference evaluator's (the integer
    part exactly; the float scaling after it is the same float32 ops)."""
    from onnx.reference import ReferenceEvaluator
    from optc.ir.onnx_export import to_onnx
    from optc.quantization.api import quantize

    w = RNG.standard_normal((32, 24)).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [nh.from_array(w, "w")])
    q = to_onnx(quantize(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), dynamic=True))
    q.ir_version = min(q.ir_version, 10)
    _, summary, ops = _integer_ops(q)
    assert "MatMulInteger" not in ops and ops.count("QMatMul") == 1 and summary["integer"] == 1, ops
    x = RNG.standard_normal((2, 3, 32)).astype(np.float32)
    ref = ReferenceEvaluator(q).run(None, {"x": x})[0]
    got = optc.compile(q).run({"x": x})[q.graph.output[0].name]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_matmul_integer_with_constant_zero_points():
    a_zp, b = np.array(3, np.uint8), RNG.integers(0, 256, (20, 6)).astype(np.uint8)
    nodes = [h.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("a", TensorProto.UINT8, [4, 20])],
                         [h.make_tensor_value_info("y", TensorProto.INT32, None)],
                         [nh.from_array(b, "b"), nh.from_array(a_zp, "a_zp"),
                          nh.from_array(np.array(128, np.uint8), "b_zp")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    assert _integer_ops(model)[2].count("QMatMul") == 1
    a = RNG.integers(0, 256, (4, 20)).astype(np.uint8)
    want = (a.astype(np.int64) - 3) @ (b.astype(np.int64) - 128)
    np.testing.assert_array_equal(optc.compile(model).run({"a": a})["y"], want)


def test_reduction_too_long_for_int32_stays_float(monkeypatch):
    """A reduction longer than MAX_TERMS could overflow the int32 accumulator: the float path stays."""
    import optc.rewrites.rules.qinteger as rules

    monkeypatch.setattr(rules, "MAX_TERMS", 8)  # a 4 x 3 x 3 filter has 36 terms
    _, summary, ops = _integer_ops(_single_conv(lambda m: None))
    assert "QConv" not in ops and "too long for an int32" in next(iter(summary["float_reasons"].values()))


@pytest.mark.slow
def test_compile_and_bench_say_which_kernels_ran_integer(tmp_path):
    import json
    import subprocess
    import sys

    b = Builder([1, 4, 6, 6], weight_max=63)
    b.conv("q", 4, 3, pad=1)
    b.init("wf", RNG.standard_normal((2, 4, 1, 1)).astype(np.float32))
    b.nodes.append(h.make_node("Conv", ["x", "wf"], ["f"]))
    b.outputs.append(h.make_tensor_value_info("f", TensorProto.FLOAT, None))
    path, lib = tmp_path / "m.onnx", tmp_path / "m.so"
    onnx.save(b.model(), path)

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    line = "integer kernels: 1 of 2 conv/matmul (1 float: 1 not quantized (its inputs are not DequantizeLinear outputs))"
    assert line in cli("compile", path, "-o", lib, "-q").splitlines()
    meta = json.loads((tmp_path / "m.so.json").read_text())["kernels"]
    assert meta == {"integer": 1, "bfloat16": 0, "float": 1,
                    "float_reasons": {"Conv 'f'": "not quantized (its inputs are not DequantizeLinear outputs)"},
                    "instructions": {}, "int4_weights": 0}  # 3 output channels: no dot-product kernel takes the integer conv
    assert line in cli("bench", path, "--artifact", lib, "--repeat", 2, "--warmup", 0).splitlines()
    assert json.loads(cli("bench", path, "--artifact", lib, "--repeat", 1, "--json"))["kernels"] == meta


def test_kernel_line_of_a_float_model_and_of_truncated_reasons():
    """A model with no quantized conv/matmul gets no line (the summaries of float models stay as they were);
    metadata that kept 8 of 26 reasons still adds up to the float count."""
    from optc.codegen.compile import describe_kernels

    why = "not quantized (its inputs are not DequantizeLinear outputs)"
    kept = {f"MatMul 'm{i}'": why for i in range(8)}
    assert describe_kernels({"integer": 0, "bfloat16": 0, "float": 26, "float_reasons": kept}) == ""
    mixed = {**dict(list(kept.items())[:7]), "Conv 'c'": "its weight is computed at run time"}
    assert describe_kernels({"integer": 2, "bfloat16": 0, "float": 26, "float_reasons": mixed}) == \
        (f"integer kernels: 2 of 28 conv/matmul (26 float: 7 {why}; 1 its weight is computed at run time; 18 more)")
    # the compiled kernels' dot-product instructions (build's count), bf16 tiles left to the bf16 summary
    isas = {"AMX int8": 3, "AVX2": 1, "AMX bf16": 2}
    assert describe_kernels({"integer": 4, "bfloat16": 0, "float": 0, "float_reasons": {}, "instructions": isas}) \
        == "integer kernels: 4 of 4 conv/matmul [compiled kernels by instruction: 3 AMX int8, 1 AVX2]"


def test_integer_conv_chain_stays_in_nhwc(tmp_path):
    """Conv -> Relu -> Conv -> Relu quantized: ConvertLayout moves the integer convs and their requantize epilogues
    to NHWC together, so the chain has one transpose in and one out (a rank-3 [C, 1, 1] correction constant and the
    NaN select of a NaN-free requantize had kept every epilogue in NCHW: 4 transposes per conv, 30 -> 15 ms on a
    ResNet-like)."""
    from optc.codegen.build import prepare
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w1"),
             nh.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32), "w2"),
             nh.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             nh.from_array(rng.standard_normal(16).astype(np.float32), "b2")]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4), h.make_node("Relu", ["c2"], ["y"])]
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 8, 10, 10)).astype(np.float32))
    q = optimize(optc.quantize(model, calibration=str(tmp_path / "calib.npz")), level=2)
    summary = to_integer_ops(q)
    assert summary["integer"] == 2, summary
    script = prepare(lower(q), None, resolve_target("cpu"))["main"].script()
    assert script.count("R.permute_dims") <= 2, script


@pytest.mark.parametrize("x_dtype,x_zp", [(np.uint8, 131), (np.uint8, 0), (np.int8, -3)])
def test_rgb_stem_conv_runs_on_the_dot_product_instruction(x_dtype, x_zp):
    """Three input channels (an image's stem: 7x7, stride 2, padded) are padded to four with zero weights, so
    that the dot-product instruction (4 channels per lane) takes the kernel; before, it ran on generic int32
    loops (2.5 ms of ResNet-like's 30). Still within one unit of onnxruntime, with a zero or a nonzero x_zp."""
    b = Builder([1, 3, 33, 33], x_dtype=x_dtype, x_zp=x_zp)
    b.conv("stem", 16, 7, stride=2, pad=3, act="relu")
    b.conv("stem_unpadded", 8, 3, bias=False)
    model = b.model()
    from optc.codegen.int8_kernels import int8_isas
    from optc.codegen.targets import resolve_target

    compiled = optc.compile(model)
    instructions = compiled.metadata["kernels"]["instructions"]
    if int8_isas(resolve_target("cpu")):
        assert sum(instructions.values()) == 2, instructions
    assert_within_one_unit(model, RNG.standard_normal(b.shape).astype(np.float32) * 2)


# -- activation x activation matmuls (attention's Q K^T and P V): a run-time w ---------------------------------

def _act_matmul(shape_a, shape_b, *, a_dtype=np.uint8, b_dtype=np.uint8, a_zp=128, b_zp=121, y_dtype=np.uint8,
                act=None, quantized_out=True, b_axis=None) -> onnx.ModelProto:
    """x (float, shape_a) quantized to a; b = a second quantization of a float input z (shape_b); MatMul of the
    dequantized pair [-> Relu] -> QuantizeLinear (or a float output)."""
    inits = [nh.from_array(np.float32(0.031), "as"), nh.from_array(np.array(a_zp, a_dtype), "az"),
             nh.from_array(np.float32(0.027) if b_axis is None else np.full(shape_b[b_axis], 0.027, np.float32), "bs"),
             nh.from_array(np.array(b_zp, b_dtype) if b_axis is None else np.full(shape_b[b_axis], b_zp, b_dtype),
                           "bz"),
             nh.from_array(np.float32(0.4), "ys"), nh.from_array(np.array(7 if y_dtype == np.uint8 else -3, y_dtype),
                                                                 "yz")]
    extra = {} if b_axis is None else {"axis": b_axis}
    nodes = [h.make_node("QuantizeLinear", ["x", "as", "az"], ["aq"]),
             h.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
             h.make_node("QuantizeLinear", ["z", "bs", "bz"], ["bq"], **extra),
             h.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], **extra),
             h.make_node("MatMul", ["ad", "bd"], ["mm"])]
    out = "mm"
    if act == "relu":
        nodes.append(h.make_node("Relu", ["mm"], ["mm_r"]))
        out = "mm_r"
    if quantized_out:
        nodes.append(h.make_node("QuantizeLinear", [out, "ys", "yz"], ["y"]))
        y = h.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(y_dtype)), None)
    else:
        nodes.append(h.make_node("Identity", [out], ["y"]))
        y = h.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs = [h.make_tensor_value_info("x", TensorProto.FLOAT, list(shape_a)),
              h.make_tensor_value_info("z", TensorProto.FLOAT, list(shape_b))]
    graph = h.make_graph(nodes, "g", inputs, [y], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _act_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return {name: (RNG.standard_normal(s) * 2).astype(np.float32) for name, s in shapes.items()}


ACT_CASES = {
    "vit-qk": dict(shape_a=(1, 3, 197, 64), shape_b=(1, 3, 64, 197)),  # N = 197: padded to 208, cropped back
    "vit-pv": dict(shape_a=(1, 3, 197, 197), shape_b=(1, 3, 197, 64), b_zp=128),  # K = 197: padded to 200
    "bert-qk-s8": dict(shape_a=(1, 4, 128, 64), shape_b=(1, 4, 64, 128), a_dtype=np.int8, a_zp=-5,
                       b_dtype=np.int8, b_zp=0, y_dtype=np.int8),
    "2d-relu-narrow": dict(shape_a=(13, 40), shape_b=(40, 10), act="relu", a_zp=0),  # N = 10: a plain slice
    "broadcast-b-float-out": dict(shape_a=(2, 9, 33), shape_b=(33, 24), quantized_out=False, b_dtype=np.int8,
                                  b_zp=-7),
}


@pytest.mark.parametrize("case", list(ACT_CASES), ids=list(ACT_CASES))
def test_activation_matmuls_run_integer_within_one_unit(case):
    model = _act_matmul(**ACT_CASES[case])
    _, summary, ops = _integer_ops(model)
    assert summary["integer"] == 1 and summary["float"] == 0, summary
    assert "MatMul" not in ops and "QMatMul" in ops, ops
    feeds = _act_feeds(model)
    got = optc.compile(model).run(feeds)["y"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind == "f":
        err = np.abs(got.astype(np.float64) - want) / (np.abs(want).max() + 1e-30)
        assert err.max() < 1e-5, err.max()
        return
    hist = histogram(got.astype(np.int64) - want)
    print(case, "differences (quantized units) vs the QDQ model:", hist)
    assert max(map(abs, hist)) <= 1, hist


def test_activation_matmul_kernel_is_the_dot_product_schedule():
    """The Q K^T kernel (197 rows and columns) is scheduled by Int8Reduction (w packed in the kernel), with the
    crop of the padded columns a kernel of its own, where the target has a dot-product instruction."""
    from optc.codegen.build import fuse, prepare
    from optc.codegen.int8_kernels import Int8Reduction, int8_isas
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    target = resolve_target("cpu")
    if not [i for i in int8_isas(target) if i != "amx"]:
        pytest.skip("this CPU has no int8 dot-product instruction")
    m, _, _ = _integer_ops(_act_matmul(**ACT_CASES["vit-qk"]))
    fused = fuse(prepare(lower(m), None, target), target)
    kernels = {gv.name_hint: f for gv, f in fused.functions_items() if hasattr(f, "body")}
    matmul = [f for name, f in kernels.items() if "matmul" in name]
    assert len(matmul) == 1 and Int8Reduction().apply(matmul[0], target, False) is not None
    assert any(name.startswith("crop_last_axis") for name in kernels), list(kernels)


def _per_column_b(model):
    for init in model.graph.initializer:
        if init.name in ("bs", "bz"):
            arr = nh.to_array(init)
            init.CopyFrom(nh.from_array(np.full(197, arr, arr.dtype), init.name))
    for n in model.graph.node:
        if n.input[0] in ("z", "bq"):
            n.attribute.append(h.make_attribute("axis", 3))


@pytest.mark.parametrize(("mutate", "reason"), [
    (_per_column_b, "per tensor"),
    (lambda m: None, "reduction is too long"),
], ids=["per-column-b", "long-k"])
def test_activation_matmul_not_rewritten(mutate, reason, monkeypatch):
    import optc.rewrites.rules.qinteger as rules

    if reason.startswith("reduction"):
        monkeypatch.setattr(rules, "MAX_RUNTIME_TERMS", 32)  # K = 64
    model = _act_matmul(**ACT_CASES["vit-qk"])
    mutate(model)
    _, summary, ops = _integer_ops(model)
    assert "MatMul" in ops and summary["float"] == 1, (ops, summary)
    assert reason in next(iter(summary["float_reasons"].values())), summary


@pytest.mark.parametrize(("shape_a", "shape_b", "rewritten"), [
    (["batch", 33, 64], ["batch", 64, 17], True),  # symbolic batch, N = 17: the padded columns are sliced off
    ([2, "M", 64], [2, 64, 17], True),
    (["B", 33, 64], [2, 64, 16], True),  # a symbolic batch against a static one
    (["B", 4, 33, 64], [1, 4, 64, 16], True),  # ... but against 1 it broadcasts (GPT-2's P V after the mask)
    ([None, 33, 64], [None, 64, 17], True),  # two unknown batches, unrelated symbols to TVM (a breaker's case)
    (["P", 33, 64], ["Q", 64, 17], True),  # two named batches, run as 1 against 3: broadcast at run time
])
def test_activation_matmuls_with_symbolic_dims(shape_a, shape_b, rewritten):
    """Found by breakers: the crop of the padded columns needed static dims, a symbolic batch broadcast against
    a static one failed inside TVM's legalization, and two unrelated symbolic batches left the integer matmul's
    result shape unknown (its batch dims are now aligned as MatMul's are)."""
    model = _act_matmul(shape_a=[1, 1, 64], shape_b=[1, 64, 16])
    for vi, shape in zip(model.graph.input, (shape_a, shape_b), strict=True):
        vi.CopyFrom(h.make_tensor_value_info(vi.name, TensorProto.FLOAT, shape))
    _, summary, ops = _integer_ops(model)
    assert ("QMatMul" in ops) is rewritten, ops

    def concrete(s):
        named = {"batch": 2, "B": 1 if len(s) == 4 else 2, "M": 19, "P": 1, "Q": 3, None: 2}
        return [named[d] if d is None or isinstance(d, str) else d for d in s]

    feeds = {"x": (RNG.standard_normal(concrete(shape_a)) * 2).astype(np.float32),
             "z": (RNG.standard_normal(concrete(shape_b)) * 2).astype(np.float32)}
    got = optc.compile(model).run(feeds)["y"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    hist = histogram(got.astype(np.int64) - want)
    assert max(map(abs, hist)) <= 1, hist


def _attention_scores(key_shape: list, transposed: bool) -> onnx.ModelProto:
    """Q [B, 4, S, 64] x K^T: the key input z quantized, as attention's Q K^T with a symbolic key length S:
    `transposed`: z is K [B, 4, S, 64], transposed before its QuantizeLinear (the exporters' order, moved next to
    the QMatMul by qtranspose.py); else z is K^T [B, 4, 64, S] itself."""
    model = _act_matmul(shape_a=[1, 1, 64], shape_b=[1, 64, 16])
    for vi, shape in zip(model.graph.input, (["B", 4, "S", 64], key_shape), strict=True):
        vi.CopyFrom(h.make_tensor_value_info(vi.name, TensorProto.FLOAT, shape))
    if transposed:
        [qz] = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "z"]
        qz.input[0] = "zt"
        model.graph.node.insert(0, h.make_node("Transpose", ["z"], ["zt"], perm=[0, 1, 3, 2]))
    return model


def _one_integer_kernel(model: onnx.ModelProto):
    """(optc's library, onnxruntime's session of the QDQ graph as written) for a model whose one MatMul must become
    an integer op, run on the dot-product instructions where the CPU has them."""
    from optc.codegen.int8_kernels import int8_isas
    from optc.codegen.targets import resolve_target

    _, summary, ops = _integer_ops(model)
    assert summary["integer"] == 1 and "QMatMul" in ops, (summary, ops)
    lib = optc.compile(model)
    if [i for i in int8_isas(resolve_target("cpu")) if i != "amx"]:  # the dot-product kernel, not the fallback
        assert lib.metadata["kernels"]["instructions"], lib.metadata["kernels"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lib, session


@pytest.mark.parametrize("transposed", [True, False], ids=["k-transposed", "k-t-input"])
def test_attention_scores_with_a_symbolic_key_length(transposed):
    """Q K^T with a symbolic key length (N = S: dynamic-axes exports) runs as one integer kernel: N padded to whole
    vectors at run time, the padded columns cropped by a kernel of its own. Before, such a matmul stayed float
    ("K or N is not static"): a dynamic-axes GPT-2-like int8 build ran 7.8 ms against 4.6 for the static export.
    Exact against onnxruntime's QDQ model at lengths that are and are not multiples of 16."""
    model = _attention_scores(["B", 4, "S", 64] if transposed else ["B", 4, 64, "S"], transposed)
    lib, session = _one_integer_kernel(model)
    for batch, length in ((2, 33), (1, 128), (1, 1), (3, 7)):
        key = [batch, 4, length, 64] if transposed else [batch, 4, 64, length]
        feeds = {"x": (RNG.standard_normal([batch, 4, length, 64]) * 2).astype(np.float32),
                 "z": (RNG.standard_normal(key) * 2).astype(np.float32)}
        got, want = lib.run(feeds)["y"], session.run(None, feeds)[0]
        assert got.shape == want.shape == (batch, 4, length, length)
        hist = histogram(got.astype(np.int64) - want)
        assert max(map(abs, hist)) <= 1, (length, hist)


def _attention_values(a_dtype=np.uint8, a_zp=0, b_zp=121) -> onnx.ModelProto:
    """P [B, 4, S, S] x V [B, 4, S, 64]: attention's P V over a symbolic key length S (K = S)."""
    model = _act_matmul(shape_a=[1, 1, 64], shape_b=[1, 64, 16], a_dtype=a_dtype, a_zp=a_zp, b_zp=b_zp)
    for vi, shape in zip(model.graph.input, (["B", 4, "S", "S"], ["B", 4, "S", 64]), strict=True):
        vi.CopyFrom(h.make_tensor_value_info(vi.name, TensorProto.FLOAT, shape))
    return model


@pytest.mark.parametrize("a_dtype, a_zp", [(np.uint8, 0), (np.int8, -128)], ids=["u8-zp0", "s8-zp-128"])
def test_attention_values_with_a_symbolic_reduction(a_dtype, a_zp):
    """P V over a symbolic key length (K = S: dynamic-axes exports) runs as one integer kernel on the dot-product
    instructions when P's zero point is 0 as the kernel reads it (a softmax quantized to uint8): K padded to whole
    groups at run time, no K x za x zw term. Before, it stayed float ("the second input's K is not static"): 4 of
    the dynamic-axes Llama-style int8 build's 37 matmuls. Exact against onnxruntime's QDQ model at lengths that are
    and are not multiples of 4, batch 1-3."""
    model = _attention_values(a_dtype, a_zp)
    lib, session = _one_integer_kernel(model)
    for batch, length in ((1, 1), (2, 5), (1, 17), (1, 128), (3, 33)):
        feeds = {"x": RNG.uniform(0, 7, [batch, 4, length, length]).astype(np.float32),
                 "z": (RNG.standard_normal([batch, 4, length, 64]) * 2).astype(np.float32)}
        got, want = lib.run(feeds)["y"], session.run(None, feeds)[0]
        assert got.shape == want.shape == (batch, 4, length, 64)
        hist = histogram(got.astype(np.int64) - want)
        assert max(map(abs, hist)) <= 1, (length, hist)


def test_attention_values_with_both_zero_points_stay_float():
    """Negative: over a symbolic K with both zero points nonzero as the kernel reads them, the K x za x zw term
    would need K at run time: the MatMul stays float, and says why."""
    _, summary, ops = _integer_ops(_attention_values(np.uint8, 3))
    assert "QMatMul" not in ops and summary["float"] == 1, (summary, ops)
    assert "neither zero point is 0" in next(iter(summary["float_reasons"].values())), summary


def test_attention_values_longer_than_int32_keeps_exact_fail_the_call(monkeypatch):
    """A symbolic K longer than MAX_TERMS when the library runs (a sum that could leave int32) fails the call
    with one line naming the MatMul, instead of a wrapped-around result; up to it the library runs. (MAX_TERMS
    lowered to 40 here: the real bound, 32896 keys, needs a [32897, 32897] P.)"""
    import optc.lowering.ops.qinteger as lowering_qinteger

    monkeypatch.setattr(lowering_qinteger, "MAX_TERMS", 40)
    lib = optc.compile(_attention_values())
    feeds = lambda n: {"x": np.ones([1, 4, n, n], np.float32), "z": np.ones([1, 4, n, 64], np.float32)}  # noqa: E731
    assert lib.run(feeds(40))["y"].shape == (1, 4, 40, 64)
    with pytest.raises(optc.OptcError, match="the library cannot run these inputs: the integer MatMul computing "
                       "'y': its reduction over S is longer than 40 terms when it runs"):
        lib.run(feeds(41))


def _integer_matmul_of_inputs(op: str) -> onnx.ModelProto:
    a = h.make_tensor_value_info("a", TensorProto.UINT8, ["P", 5, 8])
    b = h.make_tensor_value_info("b", TensorProto.INT8, ["Q", 8, 6])
    if op == "MatMulInteger":
        nodes = [h.make_node(op, ["a", "b", "az"], ["y"])]
        inits = [h.make_tensor("az", TensorProto.UINT8, [], [3])]
    else:
        nodes = [h.make_node(op, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])]
        inits = [h.make_tensor("as", TensorProto.FLOAT, [], [0.1]), h.make_tensor("az", TensorProto.UINT8, [], [3]),
                 h.make_tensor("bs", TensorProto.FLOAT, [], [0.05]), h.make_tensor("bz", TensorProto.INT8, [], [0]),
                 h.make_tensor("ys", TensorProto.FLOAT, [], [0.2]), h.make_tensor("yz", TensorProto.UINT8, [], [100])]
    y = h.make_tensor_value_info("y", TensorProto.INT32 if op == "MatMulInteger" else TensorProto.UINT8, None)
    graph = h.make_graph(nodes, "g", [a, b], [y], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("op", ["MatMulInteger", "QLinearMatMul"])
def test_integer_matmuls_of_unrelated_symbolic_batches(op):
    """MatMulInteger / QLinearMatMul of two graph inputs whose batches are different symbols (P, Q): the result's
    batch is their broadcast, a dim computed from both, which the NaN select's kernel could not take from its
    buffers ("variables (P, Q) are used, but are not passed in"). Exact against onnxruntime at equal and
    broadcast batches; unequal batches other than 1 are refused at run time."""
    model = _integer_matmul_of_inputs(op)
    lib = optc.compile(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for pa, pb in ((2, 2), (1, 3), (3, 1)):
        feeds = {"a": RNG.integers(0, 256, (pa, 5, 8)).astype(np.uint8),
                 "b": RNG.integers(-64, 65, (pb, 8, 6)).astype(np.int8)}  # 7 bits (module docstring)
        got, want = lib.run(feeds)["y"], session.run(None, feeds)[0]
        assert got.shape == want.shape == (max(pa, pb), 5, 6)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(optc.OptcError, match="shape"):
        lib.run({"a": np.zeros((2, 5, 8), np.uint8), "b": np.zeros((3, 8, 6), np.int8)})


def test_subnormal_scale_product_gives_an_exact_multiplier():
    """x_scale * w_scale = 1e-44 is a float32 subnormal of 3 significant bits (2% off 1e-44): the requantize
    multiplier is then computed in float64 and rounded once. Was 3 units off (a breaker's find); now within 1 unit
    of the QDQ graph on onnxruntime and of the exact result."""
    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (16, 8)).astype(np.int8)
    scales = {"xs": np.float32(1e-22), "ws": np.float32(1e-22), "ys": np.float32(3e-43)}
    nodes = [h.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]), h.make_node("DequantizeLinear", ["w", "ws"], ["wd"]),
             h.make_node("MatMul", ["xd", "wd"], ["m"]), h.make_node("QuantizeLinear", ["m", "ys", "yz"], ["y"])]
    inits = [nh.from_array(np.asarray(v), k) for k, v in {**scales, "xz": np.uint8(128), "w": w, "yz": np.uint8(128)}.items()]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.UINT8, [4, 16])],
                         [h.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 19)], ir_version=9)
    assert _integer_ops(model)[1]["integer"] == 1
    x = rng.integers(0, 256, (4, 16)).astype(np.uint8)
    got = optc.compile(model).run({"x": x})["y"].astype(np.int64)
    exact = (x.astype(np.float64) - 128) @ w.astype(np.float64) * (1e-22 * 1e-22 / 3e-43)
    exact = np.clip(np.rint(exact) + 128, 0, 255)
    assert np.abs(got - exact).max() <= 1, histogram(got - exact.astype(np.int64))
