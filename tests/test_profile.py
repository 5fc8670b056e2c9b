"""optc profile: per-op times from onnxruntime's profiler and per-kernel times of a compiled artifact."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.errors import OptcError
from optc.tools import cli
from optc.workflow.profile import Profile, _ort_samples, kernel_op_type, profile

DIGITS = os.path.join(os.path.dirname(__file__), "..", "examples", "digits_cnn.onnx")


def _small() -> onnx.ModelProto:
    """x [N, 8] -> MatMul -> Relu -> MatMul -> Softmax."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="mm2"),
             helper.make_node("Softmax", ["z"], ["y"], name="sm", axis=-1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _check_sums(p: Profile, runs: int) -> None:
    assert p.runs == runs
    assert p.total_us > 0
    assert sum(e.total_us for e in p.by_op_type) == pytest.approx(p.total_us, rel=1e-9)
    assert sum(e.total_us for e in p.by_node) == pytest.approx(p.total_us, rel=1e-9)
    assert sum(e.share for e in p.by_op_type) == pytest.approx(1.0, rel=1e-9)
    assert [e.total_us for e in p.by_node] == sorted((e.total_us for e in p.by_node), reverse=True)
    for e in p.by_node:  # every node runs once per measured run (no control flow in these models)
        assert e.calls == runs


def test_digits_onnxruntime_op_types_and_sums():
    p = profile(DIGITS, runs=4)
    _check_sums(p, 4)
    types = {e.name for e in p.by_op_type}
    assert "Conv" in types and types & {"Gemm", "FusedGemm"}
    assert p.backend == "onnxruntime"
    assert sum(e.calls for e in p.by_op_type) == sum(e.calls for e in p.by_node)


def test_small_model_in_memory_with_given_inputs():
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    p = profile(_small(), {"x": x}, runs=3, threads=1)
    _check_sums(p, 3)
    assert {"MatMul", "Softmax"} <= {e.op_type for e in p.by_node}


def test_warmup_runs_are_excluded():
    """Synthetic trace: the first model_run's node events must not be counted."""
    trace = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "a_fence_before", "ts": 205, "dur": 1, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 7, "args": {"op_name": "Conv"}},
    ]
    samples, walls = _ort_samples(trace, warmup=1)
    assert samples == [("a", "Conv", 7.0)] and walls == [100.0]


def test_top_keeps_the_largest_nodes_and_every_op_type():
    full = profile(DIGITS, runs=2)
    p = profile(DIGITS, runs=2, top=2)
    assert len(p.by_node) == 2 and len(p.by_op_type) == len(full.by_op_type)


def test_kernel_op_type():
    assert kernel_op_type("fused_conv2d1_add1_maximum11") == "conv2d_add_maximum"
    assert kernel_op_type("transpose31") == "transpose"
    assert kernel_op_type("vm.builtin.alloc_tensor") == "vm.builtin.alloc_tensor"


def test_cli_json_schema(capsys):
    assert cli.main(["profile", DIGITS, "--runs", "2", "--json", "--top", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"model", "backend", "runs", "warmup", "threads", "total_us", "wall_us", "by_op_type", "by_node"} <= set(doc)
    assert len(doc["by_node"]) == 3
    for e in doc["by_op_type"] + doc["by_node"]:
        assert set(e) == {"name", "op_type", "total_us", "calls", "share", "mean_us"}
        assert e["mean_us"] == pytest.approx(e["total_us"] / e["calls"])


def test_cli_table(capsys):
    assert cli.main(["profile", DIGITS, "--runs", "2", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "by node" in out and "by op type" in out and "Conv" in out


@pytest.mark.parametrize("argv, message", [
    (["--runs", "0"], "runs must be an integer >= 1"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--top", "-1"], "top must be an integer >= 1"),
])
def test_cli_bad_options_exit_2(capsys, argv, message):
    assert cli.main(["profile", DIGITS, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_and_paths(tmp_path):
    with pytest.raises(OptcError, match="does not exist"):
        profile(str(tmp_path / "none.onnx"))
    with pytest.raises(OptcError, match="unknown input 'z'"):
        profile(_small(), {"z": np.zeros((1, 8), np.float32)})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OptcError):
        profile(str(bad))


@pytest.mark.slow
def test_compiled_artifact_kernels(tmp_path, capsys):
    from optc.codegen.compile import compile_to_file

    src = tmp_path / "small.onnx"
    onnx.save(_small(), src)
    lib = compile_to_file(str(src), tmp_path / "small.so")
    p = profile(str(lib), {"x": np.ones((2, 8), np.float32)}, runs=3)
    assert p.total_us > 0 and p.backend == "tvm-cpu"
    assert sum(e.total_us for e in p.by_node) == pytest.approx(p.total_us)
    assert sum(e.total_us for e in p.by_op_type) == pytest.approx(p.total_us)
    kernels = [e for e in p.by_node if not e.name.startswith("vm.")]
    assert kernels and any("matmul" in e.op_type for e in kernels)
    assert all(e.calls % 3 == 0 for e in p.by_node)  # the same instructions in every run
    from optc import runtime

    loaded = profile(runtime.load(lib), {"x": np.ones((2, 8), np.float32)}, runs=2)
    assert loaded.backend == "tvm-cpu" and {e.name for e in loaded.by_node} == {e.name for e in p.by_node}
    assert cli.main(["profile", str(src), "--artifact", str(lib), "--runs", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "tvm-cpu" and doc["by_node"]


def test_cli_inputs_from_npz(tmp_path, capsys):
    from optc.fileio import write_npz

    src, data = tmp_path / "small.onnx", tmp_path / "x.npz"
    onnx.save(_small(), src)
    write_npz(data, {"x": np.ones((5, 8), np.float32)})
    assert cli.main(["profile", str(src), "--inputs", str(data), "--runs", "2", "--json"]) == 0
    assert {e["name"] for e in json.loads(capsys.readouterr().out)["by_op_type"]} >= {"MatMul", "Softmax"}
    write_npz(data, {"x": np.ones((5, 3), np.float32)})  # wrong shape: onnxruntime's one-line error
    assert cli.main(["profile", str(src), "--inputs", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optc: error: onnxruntime failed to run") and len(err.strip().splitlines()) == 1


def test_cli_dim_sets_the_random_inputs_symbolic_dims(tmp_path, capsys):
    """Reshape(x [n], [2, -1]) runs only for an even n: at the default n = 1 onnxruntime fails (exit 2), with
    --dim n=4 it runs; --dim with --inputs is refused in one line."""
    from optc.fileio import write_npz

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])],
                              [numpy_helper.from_array(np.array([2, -1], np.int64), "shape")])
    src = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    assert cli.main(["profile", str(src), "--runs", "1"]) == 2
    capsys.readouterr()
    assert cli.main(["profile", str(src), "--runs", "1", "--dim", "n=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["by_op_type"]
    write_npz(tmp_path / "x.npz", {"x": np.ones(4, np.float32)})
    assert cli.main(["profile", str(src), "--inputs", str(tmp_path / "x.npz"), "--dim", "n=4"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and len(err.strip().splitlines()) == 1


def _fake_artifact(tmp_path, inputs, outputs) -> str:
    """A library file (never loaded) with optc artifact metadata giving this signature."""
    from optc.codegen.artifact import FORMAT, metadata_path

    lib = tmp_path / "fake.so"
    lib.write_bytes(b"not loaded")
    metadata_path(lib).write_text(json.dumps({"format": FORMAT, "inputs": inputs, "outputs": outputs}))
    return str(lib)


def _sig(name, shape, dtype="float32") -> dict:
    return {"name": name, "shape": shape, "dtype": dtype}


@pytest.mark.parametrize("inputs, outputs, message", [
    ([_sig("x", ["N", 8])], [_sig("y", ["N", 4], "float16")], "output 'y' is float32 in the model, float16 in the "
                                                              "artifact"),
    ([_sig("x", ["N", 8], "int64")], [_sig("y", ["N", 4])], "input 'x' is float32 in the model, int64"),
    ([_sig("img", ["N", 8])], [_sig("y", ["N", 4])], "input 'x' only in the model; input 'img' only in the artifact"),
    ([_sig("x", ["N", 8])], [_sig("y", ["N", 4]), _sig("z", [1])], "output 'z' only in the artifact"),
    ([_sig("x", ["N", 3, 16, 16])], [_sig("y", ["N", 4])], "input 'x' has shape ['N', 8] in the model, ['N', 3, 16"),
    ([_sig("x", [2, 9])], [_sig("y", [2, 4])], "input 'x' has shape ['N', 8] in the model, [2, 9]"),
])
def test_cli_refuses_an_artifact_of_another_model(tmp_path, capsys, inputs, outputs, message):
    src = tmp_path / "small.onnx"
    onnx.save(_small(), src)
    lib = _fake_artifact(tmp_path, inputs, outputs)
    assert cli.main(["profile", str(src), "--artifact", lib, "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "was not built from" in err and len(err.strip().splitlines()) == 1


def test_artifact_source_check_accepts_the_models_signature(tmp_path, capsys):
    """Names, dtypes, ranks and fixed dims agree (a symbolic dim fixed by the compile is fine)."""
    from optc.workflow.profile import check_artifact_source

    src = tmp_path / "small.onnx"
    onnx.save(_small(), src)
    for n in ("N", 2):
        check_artifact_source(str(src), _fake_artifact(tmp_path, [_sig("x", [n, 8])], [_sig("y", [n, 4])]))
    # the model must exist and be a model, whatever the artifact
    assert cli.main(["profile", str(tmp_path / "none.onnx"), "--artifact", _fake_artifact(
        tmp_path, [_sig("x", ["N", 8])], [_sig("y", ["N", 4])])]) == 2
    assert "'" + str(tmp_path / "none.onnx") + "' does not exist" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert cli.main(["profile", str(tmp_path / "bad.onnx"), "--artifact", str(tmp_path / "fake.so")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
