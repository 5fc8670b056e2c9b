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
    assert r.returncode == 2 and "no value for input 'x'" in r.stderr
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
