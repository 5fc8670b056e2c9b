"""`optc debug reduce`: a model with a deliberately broken rewrite (tests/_broken_rewrite.py) shrinks to the op
the rule breaks; a command oracle; a model that does not fail is refused."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import optc
import pytest
from optc.tests import _broken_rewrite as B
from optc.tools.cli import main
from optc.workflow.reduce import against_oracle


@pytest.fixture
def src(tmp_path, monkeypatch) -> str:
    B.install(monkeypatch)
    return B.make_model(tmp_path / "fixture.onnx")


def test_reduce_to_the_op_the_broken_rule_rewrites(src, tmp_path, capfd):
    out, xi = str(tmp_path / "reduced.onnx"), str(tmp_path / "reduced_inputs.npz")
    rc = main(["debug", "reduce", src, "-o", out, "--passes", B.PIPELINE, "--save-inputs", xi, "--json"])
    doc = json.loads(capfd.readouterr().out)
    assert rc == 0 and doc["nodes_before"] == 9
    reduced = onnx.load(out)
    onnx.checker.check_model(reduced, full_check=True)
    ops = [n.op_type for n in reduced.graph.node]
    assert "MaxPool" in ops and len(ops) <= 2 and doc["nodes_after"] == len(ops)
    # it still fails the check, on the inputs it was reduced with (the values the full model computes there)
    feeds = dict(np.load(xi))
    assert against_oracle("optimized", passes=B.PIPELINE)(reduced, feeds)
    full = optc.compare(src, "reference", mark_all=True, inputs=None)
    for name, value in feeds.items():  # a cut input carries the full model's value of that tensor
        if name != "x":
            np.testing.assert_allclose(value, full.outputs_a[name], rtol=1e-6)


def test_reduce_with_a_command_oracle(src, tmp_path, capfd):
    out = str(tmp_path / "reduced.onnx")
    script = "import onnx, sys; sys.exit(any(n.op_type == 'Gemm' for n in onnx.load(sys.argv[1]).graph.node))"
    rc = main(["debug", "reduce", src, "-o", out, "--check-cmd", f"{sys.executable} -c \"{script}\" {{model}}"])
    assert rc == 0 and "9 -> 1 nodes" in capfd.readouterr().out
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Gemm"]


def test_reduce_with_a_command_that_names_only_the_inputs(src, tmp_path, capfd):
    """`{inputs}` alone is enough: the candidate is model.onnx beside it (as the help says)."""
    out = str(tmp_path / "reduced.onnx")
    script = ("import numpy, onnx, os, sys; x = numpy.load(sys.argv[1]); "
              "m = onnx.load(os.path.join(os.path.dirname(sys.argv[1]), 'model.onnx')); "
              "assert set(x.files) == {i.name for i in m.graph.input} - {t.name for t in m.graph.initializer}; "
              "sys.exit(any(n.op_type == 'Gemm' for n in m.graph.node))")
    rc = main(["debug", "reduce", src, "-o", out, "--check-cmd", f"{sys.executable} -c \"{script}\" {{inputs}}"])
    assert rc == 0 and "9 -> 1 nodes" in capfd.readouterr().out
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Gemm"]


@pytest.mark.parametrize("argv, message", [
    (["--passes", "rules{rule-set=eliminate-noops},dce"], "nothing to reduce"),
    (["--check-cmd", "true"], "needs '{model}' (the candidate's .onnx path) or '{inputs}'"),
    (["--check-cmd", "x {model}", "--against", "tvm"], "not both"),
    (["--check-cmd", "/nonexistent/tool {model}"], "--check-cmd cannot run"),
])
def test_reduce_errors(src, tmp_path, capfd, argv, message):
    rc = main(["debug", "reduce", src, "-o", str(tmp_path / "r.onnx"), *argv])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
