"""A softmax over rows that are no whole vectors (ViT's 197 tokens) reads through what made its input
(`codegen/fast_math.py` `_ragged_softmax`, `codegen/softmax.py`): a DequantizeLinear's (v - zero point) * scale is
its prologue, and the crop of a padded integer matmul output (the Q K^T of 197 columns, padded to 208) a read of
the padded rows in place. Each case is compared bit for bit with the same graph where an added zero tensor (a
graph input: nothing folds it) keeps those steps kernels of their own, and against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

RNG = np.random.default_rng(11)


def _attention_scores(tokens: int, *, matmul: bool, blocked: bool) -> onnx.ModelProto:
    """y = Q(Softmax(DQ(s))) over rows of `tokens`: s = Q(MatMul(DQ(Q(x)), DQ(Q(z)))) (an integer Q K^T whose N
    is padded, `matmul`) or s = Q(x); `blocked`: DQ(s) + a zero tensor before the softmax."""
    inits = [nh.from_array(np.float32(0.031), "as"), nh.from_array(np.array(128, np.uint8), "az"),
             nh.from_array(np.float32(0.027), "ks"), nh.from_array(np.array(131, np.uint8), "kz"),
             nh.from_array(np.float32(0.05), "ss"), nh.from_array(np.array(100, np.uint8), "sz"),
             nh.from_array(np.float32(1 / 255), "ys"), nh.from_array(np.array(0, np.uint8), "yz")]
    shape = [1, 3, tokens, tokens]
    inputs = [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, tokens, 64] if matmul else shape)]
    if matmul:
        inputs.append(h.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 64, tokens]))
        nodes = [h.make_node("QuantizeLinear", ["x", "as", "az"], ["aq"]),
                 h.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
                 h.make_node("QuantizeLinear", ["z", "ks", "kz"], ["kq"]),
                 h.make_node("DequantizeLinear", ["kq", "ks", "kz"], ["kd"]),
                 h.make_node("MatMul", ["ad", "kd"], ["mm"]),
                 h.make_node("QuantizeLinear", ["mm", "ss", "sz"], ["s"])]
    else:
        nodes = [h.make_node("QuantizeLinear", ["x", "ss", "sz"], ["s"])]
    nodes.append(h.make_node("DequantizeLinear", ["s", "ss", "sz"], ["sd"]))
    scores = "sd"
    if blocked:
        inputs.append(h.make_tensor_value_info("zero", TensorProto.FLOAT, shape))
        nodes.append(h.make_node("Add", ["sd", "zero"], ["sd0"]))
        scores = "sd0"
    nodes += [h.make_node("Softmax", [scores], ["p"], axis=-1), h.make_node("QuantizeLinear", ["p", "ys", "yz"], ["y"])]
    graph = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("y", TensorProto.UINT8, shape)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _kernels(model: onnx.ModelProto) -> list[str]:
    from optc.codegen.build import fuse, prepare
    from optc.codegen.compile import _as_model, integer_kernels
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower
    from optc.rewrites import optimize

    m = optimize(_as_model(model), level=2)
    integer_kernels(m, 2)
    target = resolve_target("cpu")
    fused = fuse(prepare(lower(m), None, target), target)
    return [gv.name_hint for gv, f in fused.functions_items() if hasattr(f, "body")]


@pytest.mark.parametrize("tokens", [197, 50], ids=["vit-qk-197", "qk-50"])
def test_softmax_reads_through_the_dequantize_and_the_crop(tokens):
    model = _attention_scores(tokens, matmul=True, blocked=False)
    blocked = _attention_scores(tokens, matmul=True, blocked=True)
    names, blocked_names = _kernels(model), _kernels(blocked)
    assert [n for n in names if "lane_partial_softmax" in n] and not any("crop_last_axis" in n for n in names), names
    assert not any("subtract" in n and "matmul" not in n for n in names), names  # no DQ kernel
    assert any("crop_last_axis" in n for n in blocked_names), blocked_names  # a kernel of its own there
    assert any("subtract" in n and "matmul" not in n for n in blocked_names), blocked_names  # the DQ and the Add

    feeds = {i.name: (RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * 3)
             .astype(np.float32) for i in model.graph.input}
    got = optc.compile(model).run(feeds)["y"]
    want = optc.compile(blocked).run({**feeds, "zero": np.zeros([1, 3, tokens, tokens], np.float32)})["y"]
    np.testing.assert_array_equal(got, want)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    assert np.abs(got.astype(np.int64) - ref).max() <= 1


@pytest.mark.parametrize("tokens", [197, 64], ids=["no-crop-197", "whole-vectors-64"])
def test_softmax_without_a_crop_is_unchanged(tokens):
    """Negatives: a softmax of a DequantizeLinear of an elementwise producer (no crop: the DQ fuses there, the
    softmax reads its output), and rows of whole vectors (TOPI's fast_softmax); exact against the blocked graph."""
    model = _attention_scores(tokens, matmul=False, blocked=False)
    names = _kernels(model)
    assert not any("softmax" in n and "subtract" in n.split("softmax")[0] for n in names), names
    if tokens % 16 == 0:
        assert not any("lane_partial" in n for n in names), names
    feeds = {"x": (RNG.standard_normal([1, 3, tokens, tokens]) * 3).astype(np.float32)}
    got = optc.compile(model).run(feeds)["y"]
    want = optc.compile(_attention_scores(tokens, matmul=False, blocked=True)).run(
        {**feeds, "zero": np.zeros([1, 3, tokens, tokens], np.float32)})["y"]
    np.testing.assert_array_equal(got, want)
