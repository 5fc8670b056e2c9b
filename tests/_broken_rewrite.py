"""A test fixture for the debugging tools: a small CNN and a deliberately broken rewrite rule (MaxPool ->
AveragePool) that only the tests register, as the rule set `test-broken` (the no-op rules plus the broken
one, so that good rewrites come before and after the bad one)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from optc.rewrites.rule import Rule

PIPELINE = "rules{rule-set=test-broken},dce"


class BrokenMaxPool(Rule):
    """MaxPool(x) -> AveragePool(x) with the same window: wrong on purpose."""

    def pattern(self, op, x):
        return op.MaxPool(x)

    def rewrite(self, op, m, x):
        attrs = {k: m.root.attr(k) for k in ("kernel_shape", "strides", "pads") if m.root.attr(k) is not None}
        return op.AveragePool(x, **attrs)


def install(monkeypatch) -> None:
    """Register `test-broken` in optc's rule-set registry for the duration of a test."""
    from optc.rewrites import rules

    monkeypatch.setattr(rules, "_SETS", dict(rules._SETS))  # (the registry as it was comes back after the test)
    rules.register_rule_set("test-broken", [*rules.rule_sets()["eliminate-noops"].rules, BrokenMaxPool])


def make_model(path) -> str:
    """x [1,2,8,8] -> Identity -> Conv -> Relu -> Identity -> MaxPool 2x2 -> Identity -> Flatten -> Gemm ->
    Identity -> y [1,4] (four no-op Identities; `pool` is the MaxPool node). Returns the path."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((48, 4)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"], name="id0"),
        helper.make_node("Conv", ["x1", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r1"], name="id1"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Identity", ["p"], ["p1"], name="id2"),
        helper.make_node("Flatten", ["p1"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="gemm"),
        helper.make_node("Identity", ["g"], ["y"], name="id3"),
    ]
    graph = helper.make_graph(nodes, "broken_fixture",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)
