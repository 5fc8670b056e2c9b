"""`optc optimize`, `optc passes`, `optc verify` through a subprocess, and `optc.optimize` in Python."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import optc
import pytest

from .test_passes_support import parse

CLI = [sys.executable, "-m", "optc.tools.cli"]

MODEL = """
g (float[N,3] x) => (float[N,3] y) <float[3] c = {1.0, 2.0, 3.0}, float[3] c2 = {1.0, 2.0, 3.0}> {
  two = Constant<value = float {2.0}>()
  c3 = Mul(c, two)
  a = Add(x, c3)
  b = Add(x, c3)
  d = Add(c2, x)
  dead = Relu(x)
  m = Mul(a, b)
  e = Relu(d)
  y = Add(m, e)
}"""


def optc_cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "in.onnx"
    p.write_bytes(parse(MODEL).SerializeToString())
    return p


def digest(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_optimize_writes_a_smaller_equivalent_model_and_leaves_the_input(model_path, tmp_path):
    before = digest(model_path)
    out = tmp_path / "out.onnx"
    r = optc_cli("optimize", model_path, "-o", out)
    assert r.returncode == 0, r.stderr
    assert digest(model_path) == before
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert len(m.graph.node) < 9
    assert "nodes" in r.stderr and "rewrites" in r.stderr
    v = optc_cli("verify", model_path, out, "--dim", "N=5")
    assert v.returncode == 0, v.stdout + v.stderr
    assert "max abs err" in v.stdout and "equal" in v.stdout
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_levels_and_pipelines(model_path, tmp_path):
    out = tmp_path / "o0.onnx"
    assert optc_cli("optimize", model_path, "-o", out, "-O0").returncode == 0
    assert len(onnx.load(out).graph.node) == 9
    assert optc_cli("optimize", model_path, "-o", out, "-O1").returncode == 0
    assert len(onnx.load(out).graph.node) < 9
    r = optc_cli("optimize", model_path, "-o", out, "-p", "cse,dce")
    assert r.returncode == 0, r.stderr
    assert [n.op_type for n in onnx.load(out).graph.node].count("Constant") == 1  # no folding asked for


def test_bad_pipeline_is_one_line_and_exit_2(model_path, tmp_path):
    r = optc_cli("optimize", model_path, "-o", tmp_path / "o.onnx", "-p", "fold-constants,cse{oops=1}")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "has no option 'oops'" in r.stderr
    r = optc_cli("optimize", model_path, "-o", tmp_path / "o.onnx", "--disable", "no-such-pass")
    assert r.returncode == 2 and "unknown pass 'no-such-pass'" in r.stderr
    r = optc_cli("optimize", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = optc_cli("optimize", model_path, "-o", tmp_path / "o.onnx", "-O1", "-p", "dce")
    assert r.returncode == 2 and "not both" in r.stderr
    r = optc_cli("optimize", model_path, "-o", model_path)
    assert r.returncode == 2 and "is the input model" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_report_time_passes_print_ir_and_verify_each(model_path, tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = optc_cli("optimize", model_path, "-o", out, "-p", "fold-constants,cse,dce", "--report", rep,
                 "--time-passes", "--print-ir-after", "cse", "--verify-each")
    assert r.returncode == 0, r.stderr
    data = json.loads(rep.read_text())
    assert [p["name"] for p in data["passes"]] == ["fold-constants", "cse", "dce"]
    assert data["nodes_before"] == 9 and data["nodes_after"] == len(onnx.load(out).graph.node)
    assert data["passes"][1]["counts"] == {"merge-initializer": 1, "merge-node": 1}
    assert "Pass execution timing report" in r.stderr and "IR after cse" in r.stderr


def test_bisect_limit_session(model_path, tmp_path):
    out = tmp_path / "o.onnx"
    full = optc_cli("optimize", model_path, "-o", out, "-p", "fold-constants,cse,dce", "--report",
                    tmp_path / "r.json")
    total = json.loads((tmp_path / "r.json").read_text())["rewrites"]
    assert total >= 5, full.stderr
    r = optc_cli("optimize", model_path, "-o", out, "-p", "fold-constants,cse,dce", "--bisect-limit", 2)
    assert r.returncode == 0, r.stderr
    assert "bisect: rewrite #2 (the last one applied) was fold:Mul on Mul 'c3' in pass 'fold-constants'" in r.stderr
    assert "2 rewrites" in r.stderr
    r = optc_cli("optimize", model_path, "-o", out, "-p", "fold-constants,cse,dce", "--bisect-limit", 3)
    assert "bisect: rewrite #3 (the last one applied) was merge-initializer on initializer 'c2' in pass 'cse'" in r.stderr
    r = optc_cli("optimize", model_path, "-o", out, "-p", "fold-constants,cse,dce", "--bisect-limit", 999)
    assert f"applied {total} rewrites, fewer than the limit 999" in r.stderr


def test_passes_lists_passes_rules_and_levels():
    r = optc_cli("passes")
    assert r.returncode == 0, r.stderr
    for name in ("fold-constants", "dce", "cse", "infer-shapes", "eliminate-noops", "canonicalize", "fuse",
                 "fixed-point", "-O2"):
        assert name in r.stdout


def test_verify_detects_mismatch_and_bad_input(model_path, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(parse(MODEL.replace("{1.0, 2.0, 3.0}, float[3] c2", "{1.0, 2.0, 3.5}, float[3] c2"))
                      .SerializeToString())
    r = optc_cli("verify", model_path, other)
    assert r.returncode == 1 and "MISMATCH" in r.stdout
    r = optc_cli("verify", model_path, other, "--atol", "100")
    assert r.returncode == 0
    r = optc_cli("verify", model_path, tmp_path / "nope.onnx")
    assert r.returncode == 2 and "no such file" in r.stderr
    np.savez(tmp_path / "in.npz", x=np.ones((4, 3), np.float32))
    r = optc_cli("verify", model_path, model_path, "--inputs", tmp_path / "in.npz")
    assert r.returncode == 0
    np.savez(tmp_path / "bad.npz", z=np.ones((4, 3), np.float32))
    r = optc_cli("verify", model_path, model_path, "--inputs", tmp_path / "bad.npz")
    assert r.returncode == 2 and "unknown input 'z' (expected inputs: x)" in r.stderr
    r = optc_cli("verify", model_path, model_path, "--dim", "N")
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr


def test_python_optimize_returns_new_model_and_leaves_argument():
    model = optc.load(parse(MODEL))
    n = len(model.graph)
    out = optc.optimize(model)
    assert len(model.graph) == n and len(out.graph) < n
    assert len(optc.optimize(model, level=0).graph) == n
    assert len(optc.optimize(model, passes="dce").graph) == n - 1
    with pytest.raises(optc.OptcError, match="unknown pass"):
        optc.optimize(model, passes="nope")
    with pytest.raises(optc.OptcError, match="unknown optimization level"):
        optc.optimize(model, level=5)


# -- IEEE semantics: x + 0.0 is not x for x = -0.0 ------------------------------------------------------------

ADD_ZERO = """
<ir_version: 8, opset_import: ["" : 13]>
add_zero_negzero (float[3] x) => (float[3] y, float[3] y2) <float[3] z = {0, 0, 0}, float one = {1}> {
  a = Add(x, z)
  y = Div(one, a)
  b = Sub(x, z)
  y2 = Div(one, b)
}"""
SHARED_CASE = "/work/shared/cases/lowering/add_zero_negzero"  # the case, when the checkout has it beside it


def _ort(path, feeds):
    from .conftest import run_ort

    return run_ort(str(path), feeds)


@pytest.mark.parametrize("source", ["inline", "shared"])
def test_optimize_O3_keeps_add_zero_for_negative_zero(source, tmp_path):
    """`optc optimize -O3` on the add_zero_negzero case computes exactly what onnxruntime computes on the
    original (y = 1 / (x + 0) = [inf, inf, 0.5] for x = [-0, 0, 2]); `--fast-math` removes the Add."""
    import os

    from optc.rewrites.rules._testing import assert_same_bits

    if source == "shared":
        if not os.path.exists(SHARED_CASE + ".onnx"):
            pytest.skip("the shared case files are not beside this checkout")
        model, feeds = SHARED_CASE + ".onnx", dict(np.load(SHARED_CASE + "_inputs.npz"))
    else:
        model = tmp_path / "add_zero_negzero.onnx"
        model.write_bytes(onnx.parser.parse_model(ADD_ZERO).SerializeToString())
        feeds = {"x": np.array([-0.0, 0.0, 2.0], np.float32)}
    out = tmp_path / "a.onnx"
    r = optc_cli("optimize", model, "-O3", "-o", out)
    assert r.returncode == 0, r.stderr
    expected = _ort(model, feeds)
    assert_same_bits(expected[0], np.array([np.inf, np.inf, 0.5], np.float32), "y on the original")
    for got, want in zip(_ort(out, feeds), expected, strict=True):
        assert_same_bits(got, want, "optimized vs original")
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "Add" in ops and "Sub" not in ops  # x - (+0.0) is exact and goes
    np.savez(tmp_path / "in.npz", **feeds)
    v = optc_cli("verify", model, out, "--inputs", tmp_path / "in.npz")
    assert v.returncode == 0, v.stdout + v.stderr
    fast = tmp_path / "fast.onnx"
    r = optc_cli("optimize", model, "-O3", "--fast-math", "-o", fast, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "Add" not in [n.op_type for n in onnx.load(fast).graph.node]
    assert json.loads((tmp_path / "r.json").read_text())["fast_math"] is True
    assert np.signbit(_ort(fast, feeds)[0][0]) and not np.signbit(expected[0][0])  # -inf: what fast-math gives up


def test_passes_marks_fast_math_and_rounding_rules():
    r = optc_cli("passes")
    assert r.returncode == 0, r.stderr
    line = next(i for i, ln in enumerate(r.stdout.splitlines()) if ln.strip().startswith("AddZero"))
    assert "--fast-math only" in r.stdout.splitlines()[line + 1]
    assert "[not bit-exact" in r.stdout
    v = optc_cli("passes", "-v")
    assert "rounding: not bit-exact: weights and bias rescaled" in v.stdout


def test_python_optimize_fast_math_flag():
    proto = onnx.parser.parse_model(ADD_ZERO)
    assert "Add" in [n.op_type for n in optc.optimize(proto).graph]
    assert "Add" not in [n.op_type for n in optc.optimize(proto, fast_math=True).graph]


def test_input_shape_fixes_symbolic_dims_before_optimizing(model_path, tmp_path):
    """`--input-shape x:2x3`, as `optc compile` takes it: the optimized model takes only that shape (N fixed
    everywhere), `--check` runs both models at it, the JSON says what was fixed. Bad specs (a fixed dim that
    differs, an unknown input), and with --bisect: one line, exit 2, nothing written."""
    out = tmp_path / "out.onnx"
    r = optc_cli("optimize", model_path, "-o", out, "--input-shape", "x:2x3", "--check", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["input_shapes"] == {"x": [2, 3]} and data["check"]["equal"] is True
    proto = onnx.load(out)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 3]
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [2, 3]
    for args, needle in [(["--input-shape", "x:2x4"], "fixes this input"),
                         (["--input-shape", "xx:2x3"], "no input 'xx'"),
                         (["--input-shape", "x:2x3", "--bisect"], "without --bisect")]:
        bad = tmp_path / "bad.onnx"
        r = optc_cli("optimize", model_path, "-o", bad, *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not bad.exists(), r.stderr


def test_input_shape_checks_unranked_initialized_and_empty_inputs(tmp_path):
    """--check feeds an input of unknown rank at the shape given (it refused: "data files can only feed tensors of
    known rank"); an input with an initializer is named as such (it was "no input"); a dim of 0 is a size (an
    empty batch: compiled and checked); inputs too large for --check name both flags that size dims."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [nh.from_array(np.ones(1, np.float32), "w")])
    path = tmp_path / "unranked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    out = tmp_path / "out.onnx"
    r = optc_cli("optimize", path, "-o", out, "--input-shape", "x:2x3", "--check", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["check"]["equal"] is True
    r = optc_cli("optimize", path, "-o", tmp_path / "never.onnx", "--input-shape", "w:1")
    assert r.returncode == 2 and "--input-shape w: this input has an initializer" in r.stderr, r.stderr
    assert "inputs without one: x" in r.stderr and not (tmp_path / "never.onnx").exists()
    batch = tmp_path / "batch.onnx"
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), batch)
    r = optc_cli("optimize", batch, "-o", out, "--input-shape", "x:0x3", "--check", "1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["check"]["equal"] is True and data["input_shapes"] == {"x": [0, 3]}
    assert [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim] == [0, 3]
    r = optc_cli("optimize", batch, "-o", tmp_path / "never.onnx", "--input-shape", "x:100000000000x3", "--check", "1")
    assert r.returncode == 2 and "(--dim, --input-shape)" in r.stderr, r.stderr


def test_input_shape_edge_cases_a_breaker_found(tmp_path):
    """An input of unknown rank takes the shape given (it crashed: zip over no dims); dims are ASCII digits only
    (int() took '1_0', ' 2', '+2' and other scripts' digits); one input's own repeated dim [N, N] given two sizes
    says so (the message named "another input")."""
    from onnx import TensorProto, helper
    from optc.codegen.input_shapes import fix_input_shapes, parse_input_shape
    from optc.errors import OptcError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "norank.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = optc_cli("optimize", path, "-o", tmp_path / "out.onnx", "--input-shape", "x:5x3")
    assert r.returncode == 0, r.stderr
    out = onnx.load(tmp_path / "out.onnx")
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [5, 3]
    for spec in ("x:1_0x3", "x: 2x3", "x:+2", "x:\u0663x3"):
        with pytest.raises(OptcError, match="is not a size"):
            parse_input_shape(spec)
    square = optc.from_onnx(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(OptcError, match="dim 'N' is 2 in this input, got 3"):
        fix_input_shapes(square, {"x": (2, 3)})
