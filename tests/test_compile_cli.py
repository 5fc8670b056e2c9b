"""`optc compile`, `optc run`, `optc bench` and `optc.compile` end to end, with their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto, helper

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_cnn.onnx")


def optc_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc.tools.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _ort(path: str, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("artifact") / "tiny.so")
    proc = optc_cli("compile", EXAMPLE, "-o", path, "--target", "cpu", "-O2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    return path


def test_compile_writes_library_and_metadata(artifact):
    meta = json.loads(open(artifact + ".json").read())
    assert meta["inputs"] == [{"name": "x", "shape": ["N", 3, 32, 32], "dtype": "float32"}]
    assert meta["outputs"][0]["name"] == "probs"
    assert meta["target"] == "cpu" and meta["optc_version"] and meta["tvm_version"]


@pytest.mark.parametrize("batch", [1, 8])
def test_run_matches_onnxruntime_at_any_batch(artifact, tmp_path, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    proc = optc_cli("run", artifact, "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"))
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npz")["probs"]
    (want,) = _ort(EXAMPLE, {"x": x})
    assert got.shape == (batch, 10)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-4


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.zeros((1, 3, 32), np.float32)}, "input 'x' is float32 [1,3,32]; the model takes float32 [N,3,32,32]"),
    ({"x": np.zeros((1, 3, 32, 32), np.float64)}, "input 'x' is float64 [1,3,32,32]; the model takes float32 [N,3,32,32]"),
    ({"y": np.zeros((1, 3, 32, 32), np.float32)}, "unknown input 'y' (expected inputs: x)"),
])
def test_run_rejects_wrong_inputs(artifact, tmp_path, arrays, fragment):
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "y.npz"
    proc = optc_cli("run", artifact, "--inputs", str(tmp_path / "bad.npz"), "-o", str(out))
    _assert_one_line_error(proc, fragment)
    assert not out.exists()


def test_bench_reports_both_runtimes(artifact):
    proc = optc_cli("bench", EXAMPLE, "--artifact", artifact, "--repeat", "5", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["optc_ms"] > 0 and result["onnxruntime_ms"] > 0
    # the median of 5 rounds' ratios, near the medians' ratio (test_cli_consistency: exactly it for one round)
    assert result["ratio"] == pytest.approx(result["optc_ms"] / result["onnxruntime_ms"], rel=0.5)
    assert result["repeat"] == 5 and result["max_abs_diff"] < 1e-4


def test_compile_unknown_target(tmp_path):
    out = tmp_path / "m.so"
    proc = optc_cli("compile", EXAMPLE, "-o", str(out), "--target", "tpu")
    _assert_one_line_error(proc, "unsupported target 'tpu' (choose from cpu, cuda, cuda:sm_XX, arm64, or a TVM target")
    assert not out.exists()


def test_compile_lists_every_unsupported_op(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["a"], domain="custom"), helper.make_node("Bar", ["a"], ["y"], domain="custom")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    out = tmp_path / "m.so"
    proc = optc_cli("compile", str(tmp_path / "custom.onnx"), "-o", str(out))
    _assert_one_line_error(proc, "custom::Bar (1 node), custom::Foo (1 node)")
    assert not out.exists() and not list(tmp_path.glob(".m.so*"))


def test_tune_needs_a_database(tmp_path):
    proc = optc_cli("compile", EXAMPLE, "-o", str(tmp_path / "m.so"), "--tune")
    _assert_one_line_error(proc, "--tune needs --db DIR")


def test_python_api_compile_runs_in_memory():
    module = optc.compile(EXAMPLE, target="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = module.run({"x": x})["probs"]
    (want,) = _ort(EXAMPLE, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(optc.OptcError, match="unknown input 'z'"):
        module.run({"z": x})


# -- fast math on / off ---------------------------------------------------------------------------------------


def _math_model(path) -> str:
    """y_exp = Exp(x), y_tanh = Tanh(x), y_erf = Erf(x), y_sm = Softmax(x) on float32 [N, 8]."""
    ops = ["Exp", "Tanh", "Erf", "Softmax"]
    nodes = [helper.make_node(op, ["x"], [f"y_{op.lower()}"]) for op in ops]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info(f"y_{op.lower()}", TensorProto.FLOAT, ["N", 8])
                               for op in ops])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def _libm_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    import math

    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    return {"y_exp": np.exp(x64), "y_tanh": np.tanh(x64), "y_erf": np.vectorize(math.erf)(x64),
            "y_softmax": e / e.sum(axis=1, keepdims=True)}


def test_compile_no_fast_math_uses_libm(tmp_path):
    from .test_fast_math import ulp_errors

    model = _math_model(tmp_path / "math.onnx")
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) * 4
    x[0, :6] = [np.nan, np.inf, -np.inf, -0.0, 1e-30, -1e-20]
    np.savez(tmp_path / "x.npz", x=x)
    ref = _libm_reference(x)
    outs = {}
    for flag in ("--no-fast-math", None):
        lib = tmp_path / ("plain.so" if flag else "fast.so")
        proc = optc_cli("compile", model, "-o", str(lib), "-q", *([flag] if flag else []))
        assert proc.returncode == 0, proc.stderr
        assert ("no fast math" in proc.stdout) == bool(flag)
        assert json.loads(open(str(lib) + ".json").read())["fast_math"] is (flag is None)
        proc = optc_cli("run", str(lib), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"))
        assert proc.returncode == 0, proc.stderr
        outs[flag] = dict(np.load(tmp_path / "y.npz"))
    plain, fast = outs["--no-fast-math"], outs[None]
    for name in ("y_exp", "y_tanh", "y_erf"):  # libm: within 1 ulp, NaN / inf / -0.0 exactly
        err = ulp_errors(plain[name], ref[name], allow_flush=False)
        assert err.max() <= 1.0, (name, err.max())
    # the plain float32 softmax: x - max rounds, exp magnifies that (not a libm question): a relative bound
    np.testing.assert_allclose(plain["y_softmax"][1:], ref["y_softmax"][1:], rtol=1e-5, atol=0)
    assert any(not np.array_equal(fast[k], plain[k], equal_nan=True) for k in ("y_exp", "y_tanh", "y_erf"))


def test_python_compile_and_bench_take_fast_math(tmp_path):
    model = _math_model(tmp_path / "math.onnx")
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    module = optc.compile(model, fast_math=False)
    assert np.array_equal(module.run({"x": x})["y_tanh"], np.tanh(x.astype(np.float64)).astype(np.float32))
    proc = optc_cli("bench", model, "--no-fast-math", "--repeat", "2", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fast_math"] is False
    proc = optc_cli("bench", model, "--artifact", "x.so", "--no-fast-math")
    _assert_one_line_error(proc, "--no-fast-math applies when bench compiles")
