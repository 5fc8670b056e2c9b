"""Lowering optc IR to TVM Relax: correctness against onnxruntime, dynamic dims, clear errors."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto, helper
from optc.lowering.relax_lowering import lower, unsupported_ops

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_cnn.onnx")


def _vm_run(mod, feeds: list[np.ndarray]) -> list[np.ndarray]:
    import tvm
    from optc.codegen import build
    from tvm import relax

    vm = relax.VirtualMachine(build(mod, target="cpu"), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in feeds])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def test_dynamic_batch_compiles_once_and_runs_at_batch_1_and_8():
    import tvm
    from optc.codegen import build
    from tvm import relax

    proto = onnx.load(EXAMPLE)
    mod = lower(optc.from_onnx(proto))
    vm = relax.VirtualMachine(build(mod, target="cpu"), tvm.cpu())
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        (want,) = _ort(proto, {"x": x})
        assert got.shape == (batch, 10)
        assert _rel_err(got, want) < 1e-4


def _shape_chain_model() -> onnx.ModelProto:
    """x: [N, 4, 6] -> Reshape(x, concat(shape(x)[0:1], [-1])) -> [N, 24]: a run-time shape computation."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Cast", ["n2"], ["n2f"], to=TensorProto.FLOAT),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("zero1", TensorProto.INT64, [1], [0]),
        helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("two", TensorProto.INT64, [], [2]),
    ]
    graph = helper.make_graph(
        nodes, "shape_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24]),
         helper.make_tensor_value_info("n2f", TensorProto.FLOAT, [])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_runtime_shape_computation_becomes_a_relax_shape():
    proto = _shape_chain_model()
    mod = lower(optc.from_onnx(proto))
    assert "R.reshape" in mod.script()
    x = np.arange(3 * 4 * 6, dtype=np.float32).reshape(3, 4, 6)
    got_y, got_n2 = _vm_run(mod, [x])
    want_y, want_n2 = _ort(proto, {"x": x})
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_n2, want_n2)


def test_if_with_constant_inputs_lowers():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    mod = lower(optc.from_onnx(proto))
    x = np.array([3.0, -2.0], np.float32)
    for cond in (True, False):
        (got,) = _vm_run(mod, [np.array(cond), x])
        (want,) = _ort(proto, {"c": np.array(cond), "x": x})
        np.testing.assert_allclose(got, want)


def test_unsupported_ops_are_all_listed_in_one_error():
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["a"], domain="custom"),
         helper.make_node("Foo", ["a"], ["b"], domain="custom"),
         helper.make_node("Relu", ["b"], ["c"]),
         helper.make_node("Bar", ["c"], ["y"], domain="other")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1),
                                                    helper.make_opsetid("other", 1)])
    model = optc.from_onnx(proto)
    assert dict(unsupported_ops(model)) == {"custom::Foo": 2, "other::Bar": 1}
    with pytest.raises(optc.OptcError) as err:
        lower(model)
    message = str(err.value)
    assert "custom::Foo (2 nodes)" in message and "other::Bar (1 node)" in message
    assert "\n" not in message


def test_supported_model_has_no_unsupported_ops():
    assert not unsupported_ops(optc.load(EXAMPLE))


def _dropout(training: bool | None) -> onnx.ModelProto:
    """Dropout(x, ratio=0.5[, training_mode]) with constant inputs."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "ratio")]
    inputs = ["x", "ratio"]
    if training is not None:
        inits.append(numpy_helper.from_array(np.array(training), "training"))
        inputs.append("training")
    graph = helper.make_graph([helper.make_node("Dropout", inputs, ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("training", [None, False])
def test_inference_dropout_is_the_identity(training):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    [y] = _vm_run(lower(optc.from_onnx(_dropout(training))), [x])
    np.testing.assert_array_equal(y, x)


def test_training_dropout_is_refused():
    """Dropout in training mode zeroes a random half: computing the identity instead would be a silent
    wrong result, so the lowering refuses it with one line."""
    with pytest.raises(optc.OptcError, match="Dropout in training mode"):
        lower(optc.from_onnx(_dropout(True)))
