"""`optc quantize` and the quantization cases of `../shared/cases/quantization/` through the command line: exit
codes, one-line errors, nothing written on failure, the input untouched, the report, and each case's checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.fileio import write_npz
from optc.tools.cli import main

from .conftest import run_ort

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CASES = Path(os.environ.get("OPTC_SHARED_CASES", Path(__file__).resolve().parents[2] / "shared" / "cases")) \
    / "quantization"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTC_CACHE_DIR", str(tmp_path / "cache"))


def _run(capfd, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


def _digits(tmp_path) -> Path:
    dst = tmp_path / "digits.onnx"
    shutil.copy(EXAMPLES / "digits_cnn.onnx", dst)
    return dst


def test_static_quantization_writes_the_model_and_a_report_and_leaves_the_input(tmp_path, capfd):
    src = _digits(tmp_path)
    before = src.read_bytes()
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    os.umask(0o022)
    rc, _, err = _run(capfd, "quantize", src, "-o", out, "--calibration", EXAMPLES / "digits_calib.npz",
                      "--report", report, "--method", "percentile")
    assert rc == 0, err
    assert src.read_bytes() == before
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(report.read_text())
    assert data["mode"] == "static" and data["calibration"]["method"] == "percentile"
    assert data["calibration"]["ranges"] and data["quantized"] and data["bytes_out"] < data["bytes_in"]
    assert "quantized" in err and err.count("\n") == 1
    # a second run with other options reuses the cached ranges
    rc, _, err = _run(capfd, "quantize", src, "-o", out, "--calibration", EXAMPLES / "digits_calib.npz",
                      "--method", "percentile", "--per-tensor")
    assert rc == 0 and "cached ranges" in err


def test_accuracy_aware_run_reports_the_steps(tmp_path, capfd):
    rc, out, err = _run(capfd, "quantize", _digits(tmp_path), "-o", tmp_path / "q.onnx", "--calibration",
                        EXAMPLES / "digits_calib.npz", "--eval", EXAMPLES / "digits_test.npz",
                        "--max-accuracy-drop", "0", "--json")
    assert rc == 0, err
    acc = json.loads(out)["accuracy"]
    assert acc["met"] and acc["max_drop"] == 0.0
    assert "within the budget" in err


@pytest.mark.parametrize("mode", [["--dynamic"], ["--weight-only", "int4", "--format", "contrib"], ["--float16"]])
def test_other_modes_write_a_model_that_runs(tmp_path, capfd, mode):
    out = tmp_path / "q.onnx"
    rc, _, err = _run(capfd, "quantize", _digits(tmp_path), "-o", out, *mode)
    assert rc == 0, err
    with np.load(EXAMPLES / "digits_test.npz") as d:
        x, y = d["x"], d["y"]
    assert (run_ort(str(out), {"x": x})[0].argmax(1) == y).mean() > 0.95


def _bad_data(tmp_path, name, **arrays) -> Path:
    path = tmp_path / f"{name}.npz"
    write_npz(str(path), arrays)
    return path


@pytest.mark.parametrize("case,message", [
    ("missing_input", "has no array for input 'x'"),
    ("wrong_dtype", "float64"),
    ("wrong_shape", "is float32 [4,1,9,8]; the model's input takes float32 [N,1,8,8]"),
    ("empty", "no samples"),
    ("labels_missing", "labels"),
    ("two_modes", "choose one quantization mode"),
    ("int4_static", "int4 weights are weight-only"),
    ("no_mode", "say how to quantize"),
    ("drop_without_eval", "needs --eval"),
    ("nothing_quantizable", "nothing to quantize"),
    ("missing_model", "no such file"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capfd, case, message):
    src = _digits(tmp_path)
    calib = EXAMPLES / "digits_calib.npz"
    args = {
        "missing_input": ["--calibration", _bad_data(tmp_path, "a", z=np.zeros((4, 1, 8, 8), np.float32))],
        "wrong_dtype": ["--calibration", _bad_data(tmp_path, "b", x=np.zeros((4, 1, 8, 8), np.float64))],
        "wrong_shape": ["--calibration", _bad_data(tmp_path, "c", x=np.zeros((4, 1, 9, 8), np.float32))],
        "empty": ["--calibration", _bad_data(tmp_path, "d", x=np.zeros((0, 1, 8, 8), np.float32))],
        "labels_missing": ["--calibration", calib, "--eval", calib, "--max-accuracy-drop", "1"],
        "two_modes": ["--calibration", calib, "--dynamic"],
        "int4_static": ["--calibration", calib, "--weights", "int4"],
        "no_mode": [],
        "drop_without_eval": ["--calibration", calib, "--max-accuracy-drop", "1"],
        "nothing_quantizable": ["--dynamic"],
        "missing_model": ["--dynamic"],
    }[case]
    if case == "nothing_quantizable":
        g = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    if case == "missing_model":
        src = tmp_path / "absent.onnx"
    out = tmp_path / "q.onnx"
    rc, stdout, err = _run(capfd, "quantize", src, "-o", out, *args)
    assert rc == 2, err
    assert err.startswith("optc: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".q.onnx")]


def test_output_over_the_input_is_refused(tmp_path, capfd):
    src = _digits(tmp_path)
    rc, _, err = _run(capfd, "quantize", src, "-o", src, "--dynamic")
    assert rc == 2 and "is the input model" in err


# -- the shared cases ------------------------------------------------------------------------------------

CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.json").is_file()) if CASES.is_dir() else []


def _graph_io(proto: onnx.ModelProto) -> list:
    inits = {t.name for t in proto.graph.initializer}
    return [(v.name, v.type.SerializeToString()) for v in proto.graph.input if v.name not in inits] + \
        [(v.name, v.type.SerializeToString()) for v in proto.graph.output]


def _check(kind: dict, case: Path, src: onnx.ModelProto, out: onnx.ModelProto, out_path: Path, tol: dict) -> None:
    k = kind["kind"]
    if k == "checker":
        onnx.checker.check_model(out, full_check=True)
    elif k == "io_same":
        assert _graph_io(out) == _graph_io(src)
    elif k == "close":
        with np.load(case / kind["inputs"]) as d:
            feeds = {n: d[n] for n in d.files}
        for want, got in zip(run_ort(src, feeds), run_ort(out, feeds), strict=True):
            err = np.abs(got.astype(np.float64) - want.astype(np.float64))
            assert (err <= tol["atol"] + tol["rtol"] * np.abs(want)).all(), f"max error {err.max()}"
    elif k == "int8_weights_kept":
        def weight_dqs(p):
            inits = {t.name: t for t in p.graph.initializer}
            return [inits[n.input[0]].data_type for n in p.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        before, after = weight_dqs(src), weight_dqs(out)
        assert sorted(after) == sorted(before)  # every int8 weight (and int32 bias) still behind its DQ
        q_shapes = {tuple(t.dims) for t in src.graph.initializer if t.data_type == TensorProto.INT8}
        assert not any(t.data_type == TensorProto.FLOAT and tuple(t.dims) in q_shapes and len(t.dims) > 1
                       for t in out.graph.initializer)
    elif k == "size_ratio":
        assert out_path.stat().st_size <= kind["max"] * (case / "model.onnx").stat().st_size
    elif k == "perchannel":
        producers = {o: n for n in out.graph.node for o in n.output}
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        convs = [n for n in out.graph.node if n.op_type == kind["op"]
                 and any(a.name == "group" and a.i == kind["group"] for a in n.attribute)]
        assert convs, f"no {kind['op']} with group {kind['group']}"
        dq = producers[convs[0].input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[1]].shape == (kind["channels"],)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert axis == kind["axis"]
    else:
        raise AssertionError(f"unknown check kind {k}")


@pytest.mark.skipif(not CASE_NAMES, reason=f"the shared cases are not at {CASES}")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_shared_quantization_case(tmp_path, capfd, name):
    case = CASES / name
    spec = json.loads((case / "case.json").read_text())
    out_path = tmp_path / "out.onnx"
    subs = {"IN": case / "model.onnx", "OUT": out_path, "CALIB": case / "calib.npz", "TEST": case / "test.npz"}
    rc, _, err = _run(capfd, *[subs.get(a, a) for a in spec["command"]])
    assert rc == 0, err
    src, out = onnx.load(case / "model.onnx"), onnx.load(out_path)
    for check in spec["checks"]:
        _check(check, case, src, out, out_path, spec.get("tol", {"atol": 0.0, "rtol": 0.0}))


# -- found by a fresh user trying to break it -----------------------------------------------------------------


def _mlp(path: Path, scale_outlier: float | None = None) -> tuple[Path, Path]:
    """fc1 (MatMul) -> Relu -> fc2 (MatMul) + add (bias): -O2 fuses fc2 + add into one Gemm; and its data."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"],
                                                                                          name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="fc2"), helper.make_node("Add", ["z", "b"], ["y"],
                                                                                         name="add")]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path / "m.onnx")
    x = rng.standard_normal((64, 16)).astype(np.float32)
    if scale_outlier:
        x[0] *= scale_outlier
    y = run_ort(str(path / "m.onnx"), {"x": x})[0].argmax(1)
    write_npz(str(path / "data.npz"), {"x": x, "y": y.astype(np.int64)})
    return path / "m.onnx", path / "data.npz"


def test_exclude_follows_a_node_into_the_fusion_that_replaced_it_and_a_typo_is_an_error(tmp_path, capfd):
    model, data = _mlp(tmp_path)
    rc, _, err = _run(capfd, "quantize", model, "-o", tmp_path / "q.onnx", "--calibration", data, "--exclude", "fc2",
                      "--report", tmp_path / "r.json")
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [e["op"] for e in report["skipped"]] == ["Gemm"] and report["skipped"][0]["reason"] == "excluded by the user"
    rc, _, err = _run(capfd, "quantize", model, "-o", tmp_path / "q2.onnx", "--calibration", data, "--exclude", "fc9")
    assert rc == 2 and "--exclude 'fc9' names no node" in err and not (tmp_path / "q2.onnx").exists()


def test_a_budget_no_quantized_model_meets_exits_1_with_the_best_model_and_the_steps(tmp_path, capfd):
    model, data = _mlp(tmp_path, scale_outlier=300.0)  # one outlier sample ruins the ranges
    rc, out, err = _run(capfd, "quantize", model, "-o", tmp_path / "q.onnx", "--calibration", data, "--eval", data,
                        "--max-accuracy-drop", "0", "--json")
    acc = json.loads(out)["accuracy"]
    returned = [s["returned_to_float"] for s in acc["steps"] if s["returned_to_float"]]
    assert not acc["met"] and acc["steps"][0]["drop"] > 20 and returned == ["fc1"]  # fc1 back; fc2 is the last
    assert rc == 1 and "NOT within the budget" in err and (tmp_path / "q.onnx").exists()
    assert "excluded by the user" not in out  # layers returned to float are not called user exclusions


@pytest.mark.parametrize("argv,message", [
    (["--max-accuracy-drop", "nan", "--eval", "DATA"], "must be a number >= 0"),
    (["--batch-size", "0"], "--batch-size must be 1 or more"),
    (["--block-size", "64"], "--block-size applies to weight-only quantization, not to static"),
    (["--report", "nodir/r.json"], "does not exist"),
])
def test_options_that_cannot_apply_are_refused_before_any_work(tmp_path, capfd, argv, message):
    model, data = _mlp(tmp_path)
    argv = [str(data) if a == "DATA" else str(tmp_path / a) if a.startswith("nodir") else a for a in argv]
    rc, _, err = _run(capfd, "quantize", model, "-o", tmp_path / "q.onnx", "--calibration", data, *argv)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "q.onnx").exists()


def test_nan_in_the_calibration_data_is_named_as_such(tmp_path, capfd):
    model, _ = _mlp(tmp_path)
    x = np.ones((8, 16), np.float32)
    x[3, 2] = np.nan
    write_npz(str(tmp_path / "nan.npz"), {"x": x})
    rc, _, err = _run(capfd, "quantize", model, "-o", tmp_path / "q.onnx", "--calibration", tmp_path / "nan.npz")
    assert rc == 2 and "array 'x' holds NaN or infinite values" in err


def test_evaluate_names_the_baseline_when_the_baseline_is_the_one_with_too_few_classes(tmp_path, capfd):
    model, data = _mlp(tmp_path)
    g = helper.make_graph([helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"])], "two",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in
                           (("st", 0), ("en", 2), ("ax", 1))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "two.onnx")
    with np.load(data) as d:
        if d["y"].max() < 2:
            pytest.skip("the labels happen to fit two classes")
    rc, _, err = _run(capfd, "evaluate", model, "--data", data, "--baseline", tmp_path / "two.onnx")
    assert rc == 2 and "two.onnx" in err and "m.onnx" not in err


def test_argparse_mistakes_are_one_line_too(tmp_path, capfd):
    rc, _, err = _run(capfd, "quantize", tmp_path / "m.onnx", "--calibration")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("optc: error: argument --calibration")


def test_accuracy_aware_mse_without_labels_compares_with_the_float_model(tmp_path, capfd):
    model, _ = _mlp(tmp_path)
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    write_npz(str(tmp_path / "nolabels.npz"), {"x": x})
    rc, out, err = _run(capfd, "quantize", model, "-o", tmp_path / "q.onnx", "--calibration", tmp_path / "nolabels.npz",
                        "--eval", tmp_path / "nolabels.npz", "--metric", "mse", "--max-accuracy-drop", "1", "--json")
    acc = json.loads(out)["accuracy"]
    assert rc == 0 and acc["baseline"] == 0.0 and 0 < acc["steps"][0]["value"] < 1, err
