"""Generate the example models shipped in examples/ (run: python examples/make_models.py).

`tiny_cnn.onnx` is a small image classifier with a dynamic batch dimension, written the way exporters
write models: BatchNormalization after Conv, Identity nodes, MatMul+Add instead of Gemm, a Mul by one and a
Reshape computed from Shape — so every stage of optc (optimize, verify, compile) has work to do.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """A 9k-parameter CNN: 2 conv blocks, max-pool, a classifier head; input x: float32[N,3,32,32]."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("conv1.w", 8, 3, 3, 3), init("conv1.b", 8),
        init("bn1.scale", 8), init("bn1.bias", 8), init("bn1.mean", 8),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn1.var"),
        init("conv2.w", 16, 8, 3, 3), init("conv2.bias_add", 1, 16, 1, 1),
        numpy_helper.from_array(np.ones((1,), np.float32), "one"),
        init("fc.w", 256, 10, scale=0.05), init("fc.b", 10),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"],
                         epsilon=1e-5, name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Identity", ["r1"], ["r1_id"], name="identity"),
        helper.make_node("Conv", ["r1_id", "conv2.w"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Add", ["c2", "conv2.bias_add"], ["c2b"], name="conv2_bias"),
        helper.make_node("Mul", ["c2b", "one"], ["c2m"], name="times_one"),
        helper.make_node("Relu", ["c2m"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[4, 4], strides=[4, 4], name="pool"),
        helper.make_node("Shape", ["p2"], ["p2_shape"], name="shape"),
        helper.make_node("Gather", ["p2_shape", "axis0"], ["batch"], axis=0, name="batch_dim"),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], axis=0, name="flat_shape"),
        helper.make_node("Reshape", ["p2", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["logits_mm"], name="fc_matmul"),
        helper.make_node("Add", ["logits_mm", "fc.b"], ["logits"], name="fc_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="optc-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_cnn.onnx")
    onnx.save(tiny_cnn(), out)
    print(f"wrote {out}")
