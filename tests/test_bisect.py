"""`optc optimize --bisect` / `bisect_rewrites`: the first bad rewrite of a pipeline with a deliberately broken
rule (tests/_broken_rewrite.py) is named, and none is named when every rewrite is right."""

from __future__ import annotations

import json

import numpy as np
import optc
import pytest
from optc.ortsession import session
from optc.rewrites.context import PassContext
from optc.rewrites.pipelines import build_pipeline, run_pipeline
from optc.tests import _broken_rewrite as B
from optc.tools.cli import main
from optc.workflow.bisect import bisect_rewrites


@pytest.fixture
def src(tmp_path, monkeypatch) -> str:
    B.install(monkeypatch)
    return B.make_model(tmp_path / "fixture.onnx")


def _records(path: str, spec: str):
    """Every rewrite the pipeline applies, in the bisect order (independently of the bisection)."""
    model = optc.load(path)
    ctx = PassContext(opsets=dict(model.opset_imports))
    run_pipeline(model, build_pipeline(None, spec), ctx=ctx)
    return ctx.records


def test_bisect_names_the_broken_rewrite(src):
    records = _records(src, B.PIPELINE)
    bad = next(r for r in records if r.rule == "BrokenMaxPool")
    assert 1 < bad.index < len(records)  # (good rewrites before and after it)
    result = bisect_rewrites(optc.load(src), build_pipeline(None, B.PIPELINE))
    assert result.found and (result.index, result.total) == (bad.index, len(records))
    assert (result.rule, result.node, result.pass_name) == ("BrokenMaxPool", bad.node, bad.pass_name)
    assert not result.comparison.equal
    assert f"rewrite {bad.index} of {len(records)}" in result.describe()


def test_bisect_finds_nothing_in_right_rewrites(src):
    spec = "rules{rule-set=eliminate-noops},dce"
    result = bisect_rewrites(optc.load(src), build_pipeline(None, spec))
    assert not result.found and result.total == len(_records(src, spec)) > 0 and result.comparison.equal


def test_optimize_bisect_cli(src, tmp_path, capfd):
    out = str(tmp_path / "out.onnx")
    rc = main(["optimize", src, "-o", out, "-p", B.PIPELINE, "--bisect"])
    err = capfd.readouterr().err
    total = len(_records(src, B.PIPELINE))
    bad = next(r for r in _records(src, B.PIPELINE) if r.rule == "BrokenMaxPool")
    assert rc == 1
    assert f"rewrite {bad.index} of {total} is the first bad one: BrokenMaxPool on {bad.node}" in err
    # the written model has the rewrites before the bad one: it still computes what the original does
    x = {"x": np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)}
    written = optc.load(out)
    assert [n.op_type for n in written.graph].count("MaxPool") == 1
    np.testing.assert_allclose(session(out, optimize=False).run(None, x)[0],
                               session(src, optimize=False).run(None, x)[0], rtol=1e-5, atol=1e-6)
    rc = main(["optimize", src, "-o", out, "-p", "rules{rule-set=eliminate-noops},dce", "--bisect"])
    assert rc == 0 and "keep the outputs within the tolerance" in capfd.readouterr().err


def test_bisect_with_a_limit_is_refused(src, tmp_path, capfd):
    rc = main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "--bisect", "--bisect-limit", "2"])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--bisect or --bisect-limit" in err


def test_bisect_json(src, tmp_path, capfd):
    rc = main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "-p", B.PIPELINE, "--bisect", "--json"])
    doc = json.loads(capfd.readouterr().out)
    bad = next(r for r in _records(src, B.PIPELINE) if r.rule == "BrokenMaxPool")
    assert rc == 1 and (doc["bisect"]["index"], doc["bisect"]["rule"]) == (bad.index, "BrokenMaxPool")


def test_bisect_honours_disable_rule(src, tmp_path, capfd):
    out = str(tmp_path / "out.onnx")
    rc = main(["optimize", src, "-o", out, "-p", B.PIPELINE, "--bisect", "--disable-rule", "BrokenMaxPool"])
    assert rc == 0 and "keep the outputs within the tolerance" in capfd.readouterr().err
