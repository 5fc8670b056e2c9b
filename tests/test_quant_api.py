"""optc.quantize as an API: modes, and the opset conversion the standard int4 format needs."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.errors import OptcError
from optc.quantization import quantize_with_report

from .conftest import run_ort


def _opset17_reshape_matmul() -> onnx.ModelProto:
    """Reshape (redefined at opsets 19 and 21) in front of a 256x256 MatMul, at opset 17."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array([-1, 256], np.int64), "shape"),
             numpy_helper.from_array((rng.standard_normal((256, 256)) * 0.05).astype(np.float32), "w")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_standard_int4_converts_an_older_opset_with_onnxs_version_converter():
    m = _opset17_reshape_matmul()
    q, report = quantize_with_report(m, weight_only="int4", format="standard")
    proto = optc.to_onnx(q)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    onnx.checker.check_model(proto, full_check=True)
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert {t.name: t.data_type for t in proto.graph.initializer}[dq.input[0]] in (TensorProto.UINT4, TensorProto.INT4)
    x = np.random.default_rng(1).standard_normal((4, 16, 16)).astype(np.float32)
    want, got = run_ort(m, {"x": x})[0], run_ort(proto, {"x": x})[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert report["quantized"]


def test_unknown_modes_and_options_are_one_line_errors():
    m = _opset17_reshape_matmul()
    with pytest.raises(OptcError, match="say how to quantize"):
        quantize_with_report(m)
    with pytest.raises(OptcError, match="supports int4"):
        quantize_with_report(m, weight_only="int2")
    with pytest.raises(OptcError, match="unknown quantization target"):
        quantize_with_report(m, calibration="x.npz", target="tpu")
    with pytest.raises(OptcError, match="takes a Model"):
        quantize_with_report(42, dynamic=True)


def test_insert_qdq_is_a_pass_that_bisects_like_every_other(tmp_path):
    from pathlib import Path

    from optc.rewrites.pipelines import build_pipeline, run_pipeline

    examples = Path(__file__).resolve().parents[1] / "examples"
    calib = examples / "digits_calib.npz"
    float_model = optc.optimize(optc.load(str(examples / "digits_cnn.onnx")), level=2)
    q, report = quantize_with_report(float_model, calibration=str(calib))
    full = optc.optimize(float_model, passes=f"insert-qdq{{calibration={calib}}},cse,dce")
    ops = [n.op_type for n in optc.to_onnx(full).graph.node]
    assert ops == [n.op_type for n in optc.to_onnx(q).graph.node]  # the pass is what optc quantize runs
    partial = optc.rewrites.copy_model(float_model)
    rep = run_pipeline(partial, build_pipeline(None, f"insert-qdq{{calibration={calib}}}"), bisect_limit=1)
    assert rep.rewrites == 1 and rep.last_rewrite.rule == "QuantizeConv"
    with pytest.raises(OptcError, match="needs calibration=DATA"):
        optc.optimize(float_model, passes="insert-qdq")
    with pytest.raises(OptcError, match="pass 'insert-qdq': activations must be"):
        optc.optimize(float_model, passes=f"insert-qdq{{calibration={calib},activations=int7}}")
    dyn = optc.optimize(float_model, passes="quantize-dynamic,cse,dce")
    assert "MatMulInteger" in [n.op_type for n in optc.to_onnx(dyn).graph.node]
