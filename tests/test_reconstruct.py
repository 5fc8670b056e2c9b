"""Least-squares reconstruction after structured pruning (optc.workflow.reconstruct, `optc prune --calibration`).

Oracles: a layer's rows (im2col patches, sample or token rows) times its own weights reproduce onnxruntime's
output of the layer exactly (1-D/2-D/3-D convolutions with strides, dilations and pads; Gemm with transB,
alpha, beta; MatMul); refitting lowers the pruned model's output error against the original on samples it never
saw; pruned channels that were zero all along leave nothing to refit ("no gain", outputs unchanged).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from optc import to_onnx
from optc.errors import OptcError
from optc.ir import load
from optc.tools import cli
from optc.workflow.prune import prune
from optc.workflow.reconstruct import MIN_SAMPLES, _Layer, _Refuse

from .conftest import run_ort
from .test_prune import CASES, DIGITS, _valid


def _samples(model: onnx.ModelProto, n: int, seed: int) -> dict[str, np.ndarray]:
    inp = model.graph.input[0]
    shape = [n] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}


def _mse(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> float:
    return float(np.mean((run_ort(a, feeds)[0].astype(np.float64) - run_ort(b, feeds)[0]) ** 2))


@pytest.mark.parametrize("case", sorted(CASES))
def test_refit_lowers_the_output_error_on_unseen_samples(tmp_path, case):
    build, ratio, _, _ = CASES[case]
    original = build(seed=3)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_samples(original, 60, 1))
    plain, _ = prune(original, 0.5, multiple=1)
    refit, report = prune(original, 0.5, multiple=1, calibration=calib)
    fits = report.reconstruction
    assert fits and all(f.status in ("refitted", "no gain") for f in fits), fits
    assert any(f.status == "refitted" for f in fits), fits
    for f in fits:
        assert f.rows > 0 and f.columns > 0 and f.ridge is not None
        if f.status == "refitted":
            assert f.error_after < f.error_before
    unseen = _samples(original, 40, 2)
    plain_p, refit_p = _valid(plain), _valid(refit)
    ours, theirs = _mse(refit_p, original, unseen), _mse(plain_p, original, unseen)
    assert ours < theirs, (ours, theirs)


@pytest.mark.parametrize("case", ["chain", "residual", "bn", "mlp", "flatten_gemm"])
def test_channels_that_were_zero_leave_nothing_to_refit(tmp_path, case):
    build, ratio, zero, _ = CASES[case]
    original = build(zero, seed=0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_samples(original, 25, 1))
    plain, _ = prune(original, ratio, multiple=1)
    refit, report = prune(original, ratio, multiple=1, calibration=calib)
    assert report.reconstruction and all(f.status == "no gain" for f in report.reconstruction), report.reconstruction
    feeds = _samples(original, 4, 5)
    np.testing.assert_array_equal(run_ort(to_onnx(refit), feeds)[0], run_ort(to_onnx(plain), feeds)[0])


def _single(op: str, x_shape: list, w: np.ndarray, b: np.ndarray | None, dtype=np.float32, **attrs):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(w.astype(dtype), "w")]
    inputs = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(dtype), "b"))
        inputs.append("b")
    node = helper.make_node(op, inputs, ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


RNG = np.random.default_rng(0)
LAYERS = {
    "conv2d 3x3 pad stride 2 dilation 2": ("Conv", [2, 3, 11, 9], RNG.standard_normal((4, 3, 3, 3)),
                                           RNG.standard_normal(4), {"pads": [1, 2, 0, 1], "strides": [2, 1],
                                                                    "dilations": [2, 1]}),
    "conv2d 1x1 no bias": ("Conv", [2, 5, 4, 4], RNG.standard_normal((3, 5, 1, 1)), None, {}),
    "conv1d k5 stride 3": ("Conv", [2, 2, 17], RNG.standard_normal((3, 2, 5)), RNG.standard_normal(3),
                           {"strides": [3], "pads": [2, 1]}),
    "conv3d 2x2x2 valid": ("Conv", [1, 2, 5, 4, 3], RNG.standard_normal((3, 2, 2, 2, 2)), RNG.standard_normal(3),
                           {"auto_pad": "VALID"}),
    "gemm transB alpha beta": ("Gemm", [3, 6], RNG.standard_normal((4, 6)), RNG.standard_normal(4),
                               {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    "gemm row bias": ("Gemm", [3, 6], RNG.standard_normal((6, 4)), RNG.standard_normal((1, 4)), {}),
    "matmul 3-d input": ("MatMul", [2, 5, 6], RNG.standard_normal((6, 4)), None, {}),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_times_the_weights_reproduce_the_layer(name, dtype):
    op, x_shape, w, b, attrs = LAYERS[name]
    proto = _single(op, x_shape, w, b, dtype, **attrs)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(dtype)
    # onnxruntime has no float64 Conv: the onnx reference evaluator computes that one
    y = run_ort(proto, {"x": x})[0] if dtype == np.float32 or op != "Conv" else ReferenceEvaluator(proto).run(
        None, {"x": x})[0]
    node = next(iter(load(proto).graph))
    layer = _Layer(node, None)
    for j in range(len(x)):
        p, t = layer.rows(x[j], y[j], np.random.default_rng(j))
        np.testing.assert_allclose(p @ layer.w0, t, rtol=1e-4, atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("op, attrs, reason", [
    ("Conv", {"group": 3}, "grouped"),
    ("Conv", {"auto_pad": "SAME_UPPER"}, "auto_pad"),
    ("Gemm", {"transA": 1}, "transA"),
    ("Gemm", {"alpha": 0.0}, "alpha 0"),
])
def test_layers_that_are_not_refitted_say_why(op, attrs, reason):
    w = np.ones((3, 1, 3, 3)) if op == "Conv" else np.ones((4, 3))
    proto = _single(op, [1, 3, 5, 5] if op == "Conv" else [4, 3], w, None, **attrs)
    with pytest.raises(_Refuse, match=reason):
        _Layer(next(iter(load(proto).graph)), None)


def test_float64_model_keeps_its_dtype(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 32)), "w1"),
             numpy_helper.from_array(rng.standard_normal(32), "b1"),
             numpy_helper.from_array(rng.standard_normal((32, 3)), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 3])], inits)
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((50, 12)))
    refit, report = prune(original, 0.5, multiple=1, calibration=tmp_path / "c.npz")
    assert [f.status for f in report.reconstruction] == ["refitted"]
    proto = _valid(refit)
    assert {i.data_type for i in proto.graph.initializer} == {TensorProto.DOUBLE}
    feeds = {"x": rng.standard_normal((30, 12))}
    plain, _ = prune(original, 0.5, multiple=1)
    assert _mse(proto, original, feeds) < _mse(_valid(plain), original, feeds)


def test_too_few_samples_and_unstructured_are_errors(tmp_path):
    np.savez(tmp_path / "few.npz", x=np.zeros((MIN_SAMPLES - 1, 1, 8, 8), np.float32))
    with pytest.raises(OptcError, match="at least 20 calibration samples"):
        prune(DIGITS, 0.5, calibration=tmp_path / "few.npz")
    with pytest.raises(OptcError, match="unstructured"):
        prune(DIGITS, 0.5, unstructured=True, calibration=tmp_path / "few.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros((8, 3, 8, 8), np.float32))
    with pytest.raises(OptcError, match="calibration data"):
        prune(DIGITS, 0.5, calibration=tmp_path / "bad.npz")


def test_cli_reports_the_refitted_layers(tmp_path, capsys):
    calib = os.path.join(os.path.dirname(DIGITS), "digits_calib.npz")
    before = open(DIGITS, "rb").read()
    out = tmp_path / "p.onnx"
    assert cli.main(["prune", DIGITS, "-o", str(out), "--ratio", "0.5", "--multiple", "1", "--criterion", "path",
                     "--calibration", calib]) == 0
    text = capsys.readouterr().out
    assert "refit   /10/Gemm: held-out error" in text and "ridge" in text, text
    assert open(DIGITS, "rb").read() == before
    _valid(onnx.load(out))
    assert cli.main(["prune", DIGITS, "-o", str(tmp_path / "q.onnx"), "--ratio", "0.5",
                     "--calibration", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "q.onnx").exists()
