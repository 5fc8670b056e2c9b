"""The fusion cases of `../shared/cases/fusion/` (models rebuilt from public bug reports against other
optimizers' transformer fusions): each case.json gives the optc command (IN / OUT stand for the paths), and
the checks its output must pass: `checker` (onnx's full check), `io_same` (the same graph inputs and outputs,
names and types), `ops` (op-type groups with a minimum count), `close` (onnxruntime outputs of the optimized
model within the case's tolerance of the original's, on the case's inputs, at the listed onnxruntime
optimization levels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from .conftest import ort_session_options

CASES = Path(os.environ.get("OPTC_SHARED_CASES", Path(__file__).resolve().parents[2] / "shared" / "cases")) / "fusion"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.json").is_file()) if CASES.is_dir() else []

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason=f"the shared cases are not at {CASES}")

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def _run(model: onnx.ModelProto, feeds: dict, level: str) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort_session_options()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _io(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [(v.name, v.type.SerializeToString()) for v in model.graph.input if v.name not in inits] + \
        [(v.name, v.type.SerializeToString()) for v in model.graph.output]


def _check(kind: dict, case: Path, spec: dict, original: onnx.ModelProto, out: onnx.ModelProto) -> None:
    what = kind["kind"]
    if what == "checker":
        onnx.checker.check_model(out, full_check=True)
    elif what == "io_same":
        assert _io(out) == _io(original), "graph inputs / outputs changed"
    elif what == "ops":
        have = [n.op_type for n in out.graph.node]
        for group in kind["groups"]:
            count = sum(have.count(op) for op in group["ops"])
            assert count >= group.get("min", 1), f"{group['ops']}: {count} nodes, want >= {group.get('min', 1)}"
    elif what == "close":
        with np.load(case / kind["inputs"]) as data:
            feeds = {k: data[k] for k in data.files}
        tol = spec.get("tol", {})
        rtol, atol = float(tol.get("rtol", 1e-4)), float(tol.get("atol", 1e-6))
        for level in kind.get("ort_levels", ["disable", "all"]):
            for want, got in zip(_run(original, feeds, level), _run(out, feeds, level), strict=True):
                assert got.shape == want.shape and got.dtype == want.dtype
                err, bound = float(np.max(np.abs(got - want))), rtol * float(np.max(np.abs(want))) + atol
                assert err <= bound, f"ORT level {level}: max |diff| {err:.3g} > {bound:.3g}"
    else:
        raise AssertionError(f"unknown check kind {what!r} in {case / 'case.json'}")


@pytest.mark.parametrize("name", NAMES)
def test_shared_fusion_case(name, tmp_path):
    case = CASES / name
    spec = json.loads((case / "case.json").read_text())
    out_path = tmp_path / "out.onnx"
    paths = {"IN": str(case / "model.onnx"), "OUT": str(out_path)}
    cmd = [paths.get(a, a) for a in spec["command"]]
    r = subprocess.run([sys.executable, "-m", "optc", *cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr[-2000:]}"
    original, out = onnx.load(case / "model.onnx"), onnx.load(out_path)
    for kind in spec["checks"]:
        _check(kind, case, spec, original, out)
