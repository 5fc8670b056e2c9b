"""`optc verify` (through a subprocess, like a user runs it) and the comparison it is built on
(`optc.tools.compare.compare`): NaN, infinities, signed zeros, exact integers, --json, artifacts vs models, and
one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.tools.compare import compare, compare_outputs
from optc.workflow.verify import is_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
SHARED_CASES = "/work/shared/cases/lowering"  # the cases, when this checkout has them beside it


def optc_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc.tools.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OPTC_DEBUG": ""})


def _model(nodes, shape=(2,), initializers=(), inputs=("x",), elem=TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, elem, list(shape)) for i in inputs],
                          [helper.make_tensor_value_info("y", elem, list(shape))], initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _save(path, model: onnx.ModelProto) -> str:
    onnx.save(model, str(path))
    return str(path)


def _identity(tmp_path, name="identity.onnx", shape=(2,)) -> str:
    return _save(tmp_path / name, _model([helper.make_node("Identity", ["x"], ["y"])], shape))


def _assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str = "") -> None:
    where = f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode == 2, where
    assert "Traceback" not in proc.stderr + proc.stdout, where
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: "), where
    assert fragment in lines[0], where
    assert proc.stdout == "", where


# -- the case: [1, 2] vs [inf, inf] -------------------------------------------------------------------


@pytest.fixture
def inf_case(tmp_path):
    """verify_inf_a (y = x) and verify_inf_b (y = x / 0) with x = [1, 2], rebuilt here."""
    a = _identity(tmp_path, "verify_inf_a.onnx")
    zero = numpy_helper.from_array(np.zeros(2, np.float32), "z")
    b = _save(tmp_path / "verify_inf_b.onnx", _model([helper.make_node("Div", ["x", "z"], ["y"])],
                                                     initializers=[zero]))
    np.savez(tmp_path / "verify_inf_inputs.npz", x=np.array([1, 2], np.float32))
    return a, b, str(tmp_path / "verify_inf_inputs.npz")


@pytest.mark.parametrize("order", ["a-b", "b-a"])
def test_inf_vs_finite_is_a_mismatch_in_both_orders(inf_case, order):
    a, b, npz = inf_case
    first, second = (a, b) if order == "a-b" else (b, a)
    r = optc_cli("verify", first, second, "--inputs", npz)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH" in r.stdout and "2/2" in r.stdout
    worst = "worst at [0]: 1.0 vs inf" if order == "a-b" else "worst at [0]: inf vs 1.0"
    assert worst in r.stdout, r.stdout
    assert "2 infinities differ" in r.stdout


@pytest.mark.parametrize("order", ["a-b", "b-a"])
def test_shared_inf_case_files_in_both_orders(order):
    a, b = (os.path.join(SHARED_CASES, f"verify_inf_{s}.onnx") for s in ("a", "b"))
    if not os.path.exists(a):
        pytest.skip(f"{SHARED_CASES} is not there")
    first, second = (a, b) if order == "a-b" else (b, a)
    r = optc_cli("verify", first, second, "--inputs", os.path.join(SHARED_CASES, "verify_inf_inputs.npz"))
    assert r.returncode == 1 and "MISMATCH" in r.stdout, r.stdout + r.stderr


# -- NaN and signed zeros through the CLI ------------------------------------------------------------------


def _replace_nan(tmp_path) -> str:
    """y = x with NaN replaced by 0."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    return _save(tmp_path / "no_nan.onnx", _model([helper.make_node("IsNaN", ["x"], ["isnan"]),
                                                   helper.make_node("Where", ["isnan", "zero", "x"], ["y"])],
                                                  shape=(3,), initializers=[zero]))


def _mul_one(tmp_path) -> str:
    """y = x * 1 (NaN stays NaN, -0.0 stays -0.0)."""
    one = numpy_helper.from_array(np.ones((), np.float32), "one")
    return _save(tmp_path / "mul_one.onnx", _model([helper.make_node("Mul", ["x", "one"], ["y"])], shape=(3,),
                                                   initializers=[one]))


def _add_zero(tmp_path) -> str:
    """y = x + 0 (-0.0 becomes +0.0)."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    return _save(tmp_path / "add_zero.onnx", _model([helper.make_node("Add", ["x", "zero"], ["y"])], shape=(3,),
                                                    initializers=[zero]))


def test_nan_at_the_same_positions_is_equal(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.array([np.nan, 1, np.nan], np.float32))
    r = optc_cli("verify", _identity(tmp_path, shape=(3,)), _mul_one(tmp_path), "--inputs", tmp_path / "x.npz",
                 "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (out,) = json.loads(r.stdout)["outputs"]
    assert out["equal"] and out["nan_a"] == out["nan_b"] == 2 and out["nan_mismatched"] == 0


def test_nan_at_different_positions_is_a_mismatch(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.array([1, np.nan, 3], np.float32))
    r = optc_cli("verify", _identity(tmp_path, shape=(3,)), _replace_nan(tmp_path), "--inputs", tmp_path / "x.npz",
                 "--atol", "1e9")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "worst at [1]: nan vs 0.0" in r.stdout and "1 NaN at different positions" in r.stdout


def test_signed_zeros_are_reported_and_fail_only_when_strict(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.array([-0.0, 1.0, -0.0], np.float32))
    a, b = _identity(tmp_path, shape=(3,)), _add_zero(tmp_path)
    r = optc_cli("verify", a, b, "--inputs", tmp_path / "x.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 signed zeros differ" in r.stdout and "equal" in r.stdout
    r = optc_cli("verify", a, b, "--inputs", tmp_path / "x.npz", "--strict-zeros")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 signed zeros differ" in r.stdout and "worst at [0]: -0.0 vs 0.0" in r.stdout
    r = optc_cli("verify", a, b, "--inputs", tmp_path / "x.npz", "--json")
    assert r.returncode == 0
    (out,) = json.loads(r.stdout)["outputs"]
    assert out["signed_zeros"] == 2 and out["equal"] and out["mismatched"] == 0


# -- --json ------------------------------------------------------------------------------------------------


def test_json_is_the_only_stdout_and_has_the_fields(inf_case):
    a, b, npz = inf_case
    r = optc_cli("verify", a, b, "--inputs", npz, "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert doc["equal"] is False and doc["a"]["kind"] == doc["b"]["kind"] == "onnx"
    assert doc["inputs"]["source"] == npz and doc["inputs"]["arrays"] == {"x": {"dtype": "float32", "shape": [2]}}
    (out,) = doc["outputs"]
    assert out["name"] == "y" and out["equal"] is False
    assert out["max_abs"] == "inf" and out["max_rel"] == "inf"
    assert out["worst_index"] == [0] and out["worst_a"] == 1.0 and out["worst_b"] == "inf"
    assert out["mismatched"] == 2 and out["size"] == 2
    assert (out["nan_a"], out["nan_b"], out["inf_a"], out["inf_b"], out["inf_mismatched"]) == (0, 0, 0, 2, 2)
    assert out["signed_zeros"] == 0
    assert "Infinity" not in r.stdout and "NaN" not in r.stdout  # strict JSON


# -- artifacts ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.so")
    r = optc_cli("compile", EXAMPLE, "-o", path, "-q")
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.parametrize("order", ["model-artifact", "artifact-model"])
def test_artifact_matches_its_model(tiny_artifact, order):
    args = (EXAMPLE, tiny_artifact) if order == "model-artifact" else (tiny_artifact, EXAMPLE)
    r = optc_cli("verify", *args, "--dim", "N=3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "optc artifact" in r.stdout and "x float32[3,3,32,32]" in r.stdout and "worst at [" in r.stdout
    r = optc_cli("verify", *args, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["equal"] is True and {doc["a"]["kind"], doc["b"]["kind"]} == {"onnx", "artifact"}
    (out,) = doc["outputs"]
    assert out["name"] == "probs" and out["shape_a"] == [1, 10] and out["mismatched"] == 0


def test_artifacts_are_recognized_by_suffix_or_metadata(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"")
    (tmp_path / "m.bin.json").write_text("{}")
    assert is_artifact(str(tmp_path / "m.bin")) and is_artifact(str(tmp_path / "missing.so"))
    assert not is_artifact(str(tmp_path / "m.onnx")) and not is_artifact(EXAMPLE)


def test_two_artifacts_and_inputs_from_a_file(tiny_artifact, tmp_path):
    renamed = tmp_path / "copy.so"
    shutil.copyfile(tiny_artifact, renamed)
    shutil.copyfile(tiny_artifact + ".json", str(renamed) + ".json")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    r = optc_cli("verify", tiny_artifact, renamed, "--inputs", tmp_path / "x.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0/20" in r.stdout and f"b: {renamed} (optc artifact, cpu)" in r.stdout


def _affine(c: np.ndarray) -> onnx.ModelProto:
    """y = x * 2 + c, x: float32[N, 4]."""
    two = numpy_helper.from_array(np.full((), 2, np.float32), "two")
    return _model([helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "c"], ["y"])],
                  shape=("N", 4), initializers=[two, numpy_helper.from_array(c, "c")])


def test_artifact_against_a_model_with_a_changed_weight(tmp_path):
    c = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
    model = _save(tmp_path / "affine.onnx", _affine(c))
    lib = tmp_path / "affine.so"
    r = optc_cli("compile", model, "-o", lib, "-q")
    assert r.returncode == 0, r.stderr
    assert optc_cli("verify", model, lib, "--dim", "N=2").returncode == 0
    changed = c.copy()
    changed[2] = 2.5
    other = _save(tmp_path / "affine_changed.onnx", _affine(changed))
    for args in ((lib, other), (other, lib)):
        r = optc_cli("verify", *args, "--dim", "N=2", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        (out,) = json.loads(r.stdout)["outputs"]
        assert out["mismatched"] == 2 and out["worst_index"][1] == 2
        assert out["max_abs"] == pytest.approx(0.5)
    r = optc_cli("verify", model, lib, "--dim", "N=2", "--atol", "1")
    assert r.returncode == 0
    r = optc_cli("verify", lib, other, "--dim", "N=2")
    assert r.returncode == 1 and "MISMATCH" in r.stdout and "2/8" in r.stdout


# -- bad input: one line, exit 2 ------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, tiny_artifact):
    np.savez(tmp_path / "no_x.npz", z=np.zeros((1, 3, 32, 32), np.float32))
    np.savez(tmp_path / "x64.npz", x=np.zeros((1, 3, 32, 32), np.float64))
    np.savez(tmp_path / "x_small.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    (tmp_path / "not.npz").write_bytes(b"not a zip")
    (tmp_path / "nometa.so").write_bytes(b"\x7fELF")
    other = _save(tmp_path / "other_input.onnx", _model([helper.make_node("Identity", ["w"], ["y"])], inputs=["w"]))
    return {"model": EXAMPLE, "so": tiny_artifact, "d": str(tmp_path), "other": other}


BAD = {
    "missing model": (["{d}/missing.onnx", "{so}"], "no such file"),
    "missing artifact": (["{model}", "{d}/missing.so"], "no such artifact"),
    "artifact without metadata": (["{model}", "{d}/nometa.so"], "no metadata file"),
    "metadata instead of library": (["{model}", "{so}.json"], "give the library"),
    "missing npz": (["{model}", "{so}", "--inputs", "{d}/missing.npz"], "does not exist"),
    "corrupt npz": (["{model}", "{so}", "--inputs", "{d}/not.npz"], "not a valid .npz"),
    "npz without an input": (["{model}", "{so}", "--inputs", "{d}/no_x.npz"], "unknown input 'z' (expected inputs: x)"),
    "wrong dtype for the artifact": (["{so}", "{model}", "--inputs", "{d}/x64.npz"], "input 'x' is float64"),
    "wrong shape": (["{model}", "{so}", "--inputs", "{d}/x_small.npz"], "float32 [N,3,32,32]"),
    "different inputs": (["{so}", "{other}"], "different inputs"),
    "bad --dim": (["{model}", "{so}", "--dim", "N"], "NAME=VALUE"),
    "unknown --dim": (["{model}", "{so}", "--dim", "B=2"], "no input has a dimension named 'B'"),
    "negative tolerance": (["{model}", "{so}", "--rtol", "-1"],
                           "tolerances (rtol, atol) must be finite and not negative, got rtol=-1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, files):
    argv, fragment = BAD[case]
    r = optc_cli("verify", *(a.format(**files) for a in argv))
    _assert_one_line_error(r, fragment)


def test_bad_input_with_json_prints_nothing_on_stdout(files):
    r = optc_cli("verify", files["model"], files["so"], "--json", "--inputs", files["d"] + "/no_x.npz")
    _assert_one_line_error(r, "unknown input 'z'")


# -- compare() itself -----------------------------------------------------------------------------------------


def f32(*v):
    return np.array(v, np.float32)


def test_compare_nonfinite_rules_are_symmetric():
    cases = [
        (f32(1, 2), f32(np.inf, np.inf), False),
        (f32(np.inf, -np.inf), f32(np.inf, -np.inf), True),
        (f32(np.inf), f32(-np.inf), False),
        (f32(np.nan, 1), f32(np.nan, 1), True),
        (f32(np.nan, 1), f32(0, 1), False),
        (f32(np.nan), f32(np.inf), False),
        (f32(1e30), f32(np.inf), False),
    ]
    for a, b, equal in cases:
        for x, y in ((a, b), (b, a)):
            r = compare(x, y, rtol=1e9, atol=1e9)  # no tolerance makes a non-finite difference equal
            assert r.equal is equal, (x, y)
            assert compare(x, y).equal is equal


def test_compare_counts_and_worst():
    r = compare(f32(0, 1, 2, np.nan, -0.0), f32(0, 1.5, 2, 5, 0.0))
    assert not r.equal and r.mismatched == 2 and r.worst_index == (3,) and r.worst_text == ("nan", "5.0")
    assert (r.nan_a, r.nan_b, r.nan_mismatched, r.signed_zeros) == (1, 0, 1, 1)
    assert r.max_abs == float("inf")
    r = compare(f32(1, 2, 3), f32(1, 2.5, 3))
    assert r.worst_index == (1,) and r.max_abs == pytest.approx(0.5) and r.max_rel == pytest.approx(0.2)
    assert compare(f32(1, 2), f32(1, 2)).worst_index == (0,)


def test_compare_integers_and_bools_are_exact():
    big = 2**53
    r = compare(np.array([big + 1, 3]), np.array([big, 3]), rtol=1, atol=1e6)
    assert not r.equal and r.mismatched == 1 and r.worst_index == (0,) and r.max_abs == 1.0
    assert r.worst_a == big + 1 and r.worst_b == big
    assert compare(np.array([1, 2], np.int32), np.array([1, 2], np.int32)).equal
    assert not compare(np.array([True, False]), np.array([True, True]), atol=10).equal
    assert not compare(np.array([-128], np.int8), np.array([127], np.int8)).equal


def test_compare_shape_and_dtype_differences_are_mismatches():
    r = compare(f32(1, 2), f32(1, 2, 3))
    assert not r.equal and r.worst_index is None and "shape" in r.notes[0]
    r = compare(f32(1, 2), np.array([1, 2], np.float64))
    assert not r.equal and r.mismatched == 0 and "dtype float32 vs float64" in r.notes
    assert compare(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)).equal


def test_compare_outputs_pairs_by_name_and_flags_missing_outputs():
    c = compare_outputs({"a": f32(1), "b": f32(2)}, {"b": f32(2), "a": f32(1)})
    assert c.equal and [o.name for o in c.outputs] == ["a", "b"]
    c = compare_outputs({"a": f32(1), "b": f32(2)}, {"a": f32(1)})
    assert not c.equal and "only in a: b" in c.notes[0]
    c = compare_outputs([f32(1)], {"y": f32(1)})
    assert c.equal and c.outputs[0].name_b == "y"
    json.dumps(c.to_json(), allow_nan=False)
