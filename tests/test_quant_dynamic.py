"""Dynamic quantization: MatMul and Gemm with constant weights become DynamicQuantizeLinear + MatMulInteger in
onnxruntime's form (which it fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat); activation-activation
MatMuls, small weights and excluded nodes stay float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.errors import OptcError
from optc.quantization import quantize_with_report

from .conftest import run_ort

RNG = np.random.default_rng(0)


def _w(name, *shape, scale=0.1):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _block(trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0) -> onnx.ModelProto:
    """x [B, T, 64] -> q/k projections (MatMul), scores = q @ k^T (two activations), a Gemm on [B*T, 64]."""
    d = 64
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "q"], ["ctx"], name="context"),
             helper.make_node("Reshape", ["ctx", "flat"], ["c2"]),
             helper.make_node("Gemm", ["c2", "wo", "bo"], ["o"], name="out_proj", transB=trans_b, alpha=alpha,
                              beta=beta),
             helper.make_node("MatMul", ["o", "wsmall"], ["y"], name="small")]
    inits = [_w("wq", d, d), _w("wk", d, d), _w("wo", *((48, d) if trans_b else (d, 48))), _w("bo", 48),
             _w("wsmall", 48, 8), numpy_helper.from_array(np.array([-1, d], np.int64), "flat")]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("trans_b,alpha,beta", [(1, 1.0, 1.0), (0, 0.5, 2.0)])
def test_weight_matmuls_and_gemm_become_matmul_integer_and_stay_close(tmp_path, trans_b, alpha, beta):
    import onnxruntime as ort

    m = _block(trans_b, alpha, beta)
    q, report = quantize_with_report(m, dynamic=True)
    proto = optc.to_onnx(q)
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMulInteger"] == 3 and ops["DynamicQuantizeLinear"] >= 2 and ops["Gemm"] == 0
    assert {e["node"] for e in report["quantized"]} == {"q_proj", "k_proj", "out_proj"}
    skipped = {e["node"]: e["reason"] for e in report["skipped"]}
    assert "smaller than 16" in skipped["small"]
    assert ops["MatMul"] == 3  # scores, context (two activations) and the small one stay float
    int8 = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8) >= 3
    x = RNG.standard_normal((2, 16, 64)).astype(np.float32)
    want, got = run_ort(m, {"x": x})[0], run_ort(proto, {"x": x})[0]
    # the attention scores amplify the weights' rounding (onnxruntime's quantize_dynamic: 4.8% here)
    assert np.abs(got - want).max() < 0.06 * np.abs(want).max()
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node)
    assert fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == 3, fused


def test_error_is_no_worse_than_onnxruntimes_quantize_dynamic(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = _block()
    onnx.save(m, str(tmp_path / "f.onnx"))
    q, report = quantize_with_report(m, dynamic=True, exclude=["Gemm"])  # onnxruntime's leaves Gemm in float
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "ort.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=report["reduce_range"])
    x = RNG.standard_normal((4, 2, 16, 64)).astype(np.float32)
    ours = theirs = 0.0
    for xi in x:
        want = run_ort(m, {"x": xi})[0]
        ours = max(ours, float(np.abs(run_ort(optc.to_onnx(q), {"x": xi})[0] - want).max()))
        theirs = max(theirs, float(np.abs(run_ort(str(tmp_path / "ort.onnx"), {"x": xi})[0] - want).max()))
    assert ours <= 1.1 * theirs, (ours, theirs)


def test_excluded_and_already_quantized_weights_stay(tmp_path):
    m = _block()
    q, report = quantize_with_report(m, dynamic=True, exclude=["k_proj", "Gemm"])
    assert {e["node"] for e in report["quantized"]} == {"q_proj"}
    with pytest.raises(OptcError, match="nothing to quantize"):
        quantize_with_report(optc.to_onnx(q), dynamic=True, exclude=["k_proj", "Gemm"])


def test_dynamic_model_round_trips_through_O2():
    q, _ = quantize_with_report(_block(), dynamic=True)
    before = optc.to_onnx(q)
    after = optc.to_onnx(optc.optimize(q, level=2))
    count = lambda p: Counter(n.op_type for n in p.graph.node)  # noqa: E731
    assert count(after)["MatMulInteger"] == count(before)["MatMulInteger"] == 3
    x = RNG.standard_normal((2, 16, 64)).astype(np.float32)
    np.testing.assert_allclose(run_ort(after, {"x": x})[0], run_ort(before, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_an_old_opset_is_refused_in_one_line():
    m = _block()
    m.opset_import[0].version = 10
    with pytest.raises(OptcError, match="needs ai.onnx opset 11"):
        quantize_with_report(m, dynamic=True)


def test_embedding_gather_gets_an_int8_table_dequantized_after_the_lookup():
    rng = np.random.default_rng(3)
    table = (rng.standard_normal((100, 32)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Gather", ["small", "ids"], ["s"], name="small_embed"),
             helper.make_node("Add", ["e", "s"], ["y"])]
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.standard_normal((100, 8)).astype(np.float32).repeat(4, 1), "small")]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    q, report = quantize_with_report(m, dynamic=True)
    proto = optc.to_onnx(q)
    onnx.checker.check_model(proto, full_check=True)
    assert {e["node"] for e in report["quantized"]} == {"embed", "small_embed"}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
    inits_q = {t.name: t for t in proto.graph.initializer}
    assert all(inits_q[n.input[0]].data_type == TensorProto.INT8 for n in gathers)
    ids = rng.integers(0, 100, (2, 5)).astype(np.int64)
    want, got = run_ort(m, {"ids": ids})[0], run_ort(proto, {"ids": ids})[0]
    scale = np.abs(table).max() / 127
    assert np.abs(got - want).max() <= 2 * scale  # each of the two tables within half a step (+ rounding)


def test_conv_becomes_conv_integer_only_when_asked():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((8, 2, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b")]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OptcError, match="nothing to quantize"):
        quantize_with_report(m, dynamic=True)
    q, report = quantize_with_report(m, dynamic=True, dynamic_conv=True)
    proto = optc.to_onnx(q)
    onnx.checker.check_model(proto, full_check=True)
    assert [e["node"] for e in report["quantized"]] == ["conv"]
    assert "ConvInteger" in [n.op_type for n in proto.graph.node]
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    want, got = run_ort(m, {"x": x})[0], run_ort(proto, {"x": x})[0]
    assert np.abs(got - want).max() < 0.03 * np.abs(want).max()
