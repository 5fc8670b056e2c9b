"""`codegen/tuned_check.py`: a build with a tuning database is timed against the untuned build, end to end on this
CPU, and the faster is kept (tuning never leaves a model slower than its untuned build)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from optc.codegen.compile import build_executable
from optc.codegen.targets import resolve_target
from optc.codegen.tuned_check import keep_faster, runs_here


def _model(matmuls: int, shape=(64, 256)) -> onnx.ModelProto:  # (a str dim: symbolic)
    """y = Tanh(x @ W1 @ ... @ Wn) (n random [256, 256] weights; n = 0: Tanh(x))."""
    rng = np.random.default_rng(0)
    names = ["x"] + [f"m{i}" for i in range(matmuls)]
    nodes = [h.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(matmuls)]
    nodes.append(h.make_node("Tanh", [names[-1]], ["y"]))
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((shape[1], shape[1])) * 0.05).astype(np.float32),
                                          f"w{i}") for i in range(matmuls)]
    graph = h.make_graph(nodes, "m", [h.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def builds():
    slow, meta = build_executable(_model(12), "cpu")
    fast, _ = build_executable(_model(0), "cpu")
    return slow, fast, meta["inputs"]


def test_the_faster_build_is_kept(builds):
    """A 'tuned' build with 12 matmuls more work than the 'untuned' one is dropped for it; the other way round it
    is kept."""
    slow, fast, inputs = builds
    report: dict = {}
    assert keep_faster(slow, lambda: fast, inputs, report) is fast
    assert report["kept"] == "untuned" and report["ratio"] > 2 and report["tuned_ms"] > report["untuned_ms"]
    report = {}
    assert keep_faster(fast, lambda: slow, inputs, report) is fast
    assert report["kept"] == "tuned" and report["ratio"] < 0.5


def test_symbolic_inputs_are_not_timed(builds):
    """An input of symbolic shape: no sizes to time it at; the tuned build is kept and the untuned never built."""
    slow, _, _ = builds
    report: dict = {}

    def untuned():
        raise AssertionError("built")

    assert keep_faster(slow, untuned, [{"name": "x", "shape": ["n", 256], "dtype": "float32"}], report) is slow
    assert report == {"skipped": "an input has a symbolic shape"}


def test_only_libraries_that_run_here_are_compared():
    """Negative: a cross target (arm64 on x86), or an x86 CPU with instructions this one lacks, is not run."""
    import platform

    assert runs_here(resolve_target("cpu"))
    if platform.machine() == "x86_64":
        assert not runs_here(resolve_target("arm64"))
    flags = open("/proc/cpuinfo").read() if platform.machine() == "x86_64" else ""
    if "amx_tile" not in flags:
        assert not runs_here(resolve_target("cpu", mcpu="sapphirerapids"))


def test_values_of_the_kept_build(builds):
    """The kept executable is a whole library: it runs and gives the model's values."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    slow, fast, inputs = builds
    kept = keep_faster(slow, lambda: fast, inputs, {})
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    y = VirtualMachine(kept, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(y, np.tanh(x), rtol=1e-5, atol=1e-6)


def test_a_symbolic_batch_is_timed_through_its_static_entry():
    """A symbolic batch: the two builds' batch-1 entries (what the runtime calls at batch 1, and what the tuner
    tunes) are timed; the faster build is kept."""
    slow, meta = build_executable(_model(12, ("n", 256)), "cpu")
    fast, _ = build_executable(_model(0, ("n", 256)), "cpu")
    assert set(meta["entries"]) == {"main_batch1"}
    report: dict = {}
    assert keep_faster(slow, lambda: fast, meta["inputs"], report, ("main_batch1", {"n": 1})) is fast
    assert report["kept"] == "untuned" and report["entry"] == "main_batch1" and report["ratio"] > 1
    report = {}  # an entry that binds other dims than the input's: not timed
    assert keep_faster(slow, lambda: fast, meta["inputs"], report, ("main_batch1", {"m": 1})) is slow
    assert report == {"skipped": "an input has a symbolic shape"}
