"""`optc auto`: the search, its requirement verdicts, per-class figures, report files, resume and errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import optc
import pytest
from optc.errors import OptcError
from optc.tools.cli import main
from optc.workflow.auto import Requirements, _Search, verdicts
from optc.workflow.report import pareto_front

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
MODEL = os.path.join(EXAMPLES, "digits_cnn.onnx")
TEST = os.path.join(EXAMPLES, "digits_test.npz")
CALIB = os.path.join(EXAMPLES, "digits_calib.npz")
IMPOSSIBLE = 1000.0  # a speed-up no step can reach: every step is tried and the verdict must say by how much


def _run(out, **kw):
    opts = dict(max_accuracy_drop=0.5, min_speedup=IMPOSSIBLE, budget_minutes=5, latency_batch=32, progress=False)
    opts.update(kw)
    return optc.auto(MODEL, TEST, CALIB, output=out, **opts)


@pytest.fixture(scope="module")
def budget_ended_then_resumed(tmp_path_factory):
    """A run whose budget ends after the baseline, then resumed with more time (the search goes on)."""
    out = tmp_path_factory.mktemp("auto") / "out"
    first = _run(out, budget_minutes=1e-6)
    return first, _run(out, resume=True), out


@pytest.fixture(scope="module")
def digits_run(budget_ended_then_resumed):
    _, result, out = budget_ended_then_resumed
    return result, out


# -- requirement verdicts ---------------------------------------------------------------------------------------


def test_verdicts_met_and_unmet_with_gap():
    req = Requirements.parse(0.5, "2.0ms", "2x", "4")
    ok = {"drop": 0.5, "latency_ms": {"median_ms": 1.5}, "speedup": 2.5, "size_mb": 3.9, "backend": "onnxruntime"}
    v = verdicts(req, ok, "points")
    assert all(x["met"] and x["gap"] == 0 for x in v.values())
    bad = {"drop": 0.8, "latency_ms": {"median_ms": 3.25}, "speedup": 1.25, "size_mb": 5.5, "backend": "onnxruntime"}
    v = verdicts(req, bad, "points")
    assert not any(x["met"] for x in v.values())
    assert v["accuracy"]["gap"] == pytest.approx(0.3)
    assert v["latency"]["gap"] == pytest.approx(1.25)
    assert v["speedup"]["gap"] == pytest.approx(0.75)
    assert v["size"]["gap"] == pytest.approx(1.5)
    assert "NOT met" in v["speedup"]["text"]
    nan = verdicts(Requirements.parse(0.5), {"drop": None}, "points")["accuracy"]
    assert not nan["met"] and math.isinf(nan["gap"])


@pytest.mark.parametrize("args", [("abc",), (0.5, "fast"), (0.5, None, "0"), (-1,), (0.5, None, None, "nan"),
                                  (None,)])
def test_requirements_that_cannot_be_parsed(args):
    with pytest.raises(OptcError):
        Requirements.parse(*args)


def test_pareto_front():
    pts = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 95.0), (0.5, 80.0)]
    assert pareto_front(pts) == [4, 0, 1]
    assert pareto_front([(1.0, 0.2), (2.0, 0.1)], higher_is_better=False) == [0, 1]


# -- the search on the digits classifier -------------------------------------------------------------------------


def test_impossible_requirement_reported_unmet_with_gap(digits_run):
    result, out = digits_run
    assert not result.met
    c = result.chosen
    sp = result.verdicts["speedup"]
    assert not sp["met"] and sp["value"] == c["speedup"] and sp["gap"] == pytest.approx(IMPOSSIBLE - c["speedup"])
    acc = result.verdicts["accuracy"]
    assert acc["met"] == (c["drop"] <= 0.5) and acc["met"]  # the chosen model keeps the accuracy budget
    assert any("speed-up" in line for line in result.unmet)
    # every step was tried (the requirement never held) and each candidate that ran was validated and timed
    names = [s["name"] for s in result.steps]
    assert names[:7] == ["-O2", "-O3", "float16", "bfloat16", "dynamic int8", "static int8", "int4 weight-only"]
    assert result.stop_reason == "every step was tried"
    for s in result.steps:
        assert s["status"] in ("kept", "rejected", "failed", "skipped")
        if s["status"] in ("kept", "rejected"):
            assert {"value", "drop", "per_class", "worst_class", "max_abs_diff", "latency_ms", "speedup",
                    "size_mb"} <= set(s)
            assert s["latency_ms"]["p90_ms"] >= s["latency_ms"]["median_ms"] > 0
        if s["status"] == "kept":
            assert s["drop"] <= 0.5
    kept = [s for s in result.steps if s["status"] == "kept"]
    assert (c["name"] == kept[-1]["name"]) if kept else c["name"].startswith("baseline")


def test_per_class_figures_match_evaluate(digits_run):
    result, out = digits_run
    base = optc.evaluate(MODEL, TEST)
    b = result.baseline[0]
    assert b["value"] == base["value"]
    assert b["per_class"] == {k: v["accuracy"] for k, v in base["per_class"].items()}
    mine = optc.evaluate(str(out / "model.onnx"), TEST, baseline=MODEL)
    c = result.chosen
    assert c["value"] == pytest.approx(mine["value"])
    assert c["per_class"] == pytest.approx({k: v["accuracy"] for k, v in mine["per_class"].items()})
    if not c["name"].startswith("baseline"):
        assert c["worst_class"]["drop_points"] == pytest.approx(mine["worst_class"]["drop_points"])
    for s in result.steps:  # the largest output difference of a step that changes numerics is not zero
        if s.get("name") == "float16" and "max_abs_diff" in s:
            assert s["max_abs_diff"] > 0


def test_report_files(digits_run):
    result, out = digits_run
    for name in ("report.md", "report.html", "report.json", "model.onnx", "state.json"):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary file left behind
    data = json.loads((out / "report.json").read_text())
    assert data["met"] is False and data["chosen"]["name"] == result.chosen["name"]
    assert len(data["steps"]) == len(result.steps)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # trade-off, per-class and profile plots, embedded
    assert "<script" not in html and "src='http" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert "| dynamic int8 |" in md and "NOT met" in md
    assert isinstance(data["profile"]["baseline"], dict) and data["profile"]["baseline"]["by_op_type"]


class _Interrupted(Exception):
    """Stands for the run being killed in the middle of a step."""


def test_resume_continues_without_redoing_steps(tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls, resumed = [], False
    real = _Search.measure

    def interrupted(self, name, *a, **k):
        calls.append(name)
        if name == "float16" and not resumed:
            raise _Interrupted
        return real(self, name, *a, **k)

    monkeypatch.setattr(_Search, "measure", interrupted)
    with pytest.raises(_Interrupted):
        _run(out)
    state = json.loads((out / "state.json").read_text())
    assert [r["name"] for r in state["records"]] == ["-O2", "-O3"] and state["next_step"] == 2
    assert not (out / "report.json").exists()
    with pytest.raises(OptcError, match="--resume"):
        _run(out)  # a directory holding a run is not overwritten
    calls.clear()
    resumed = True
    result = _run(out, resume=True)
    assert calls[0] == "float16" and "-O2" not in calls and "baseline (onnxruntime)" not in calls
    assert [s["name"] for s in result.steps][:3] == ["-O2", "-O3", "float16"]
    with pytest.raises(OptcError, match="other settings"):
        _run(out, resume=True, max_accuracy_drop=1.0)


def test_budget_ends_the_search_and_resume_goes_on(budget_ended_then_resumed):
    first, more, _ = budget_ended_then_resumed
    assert first.stop_reason == "the time budget ended" and first.steps == []
    assert first.chosen["name"] == "baseline (onnxruntime)"
    assert not first.verdicts["speedup"]["met"]
    assert more.stop_reason == "every step was tried" and more.steps[0]["name"] == "-O2"
    assert more.baseline == first.baseline  # measured once


# -- errors: one line, exit 2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--min-speedup", "fast"], "cannot parse --min-speedup"),
    (["--max-accuracy-drop", "half"], "cannot parse --max-accuracy-drop"),
    (["--budget-minutes", "0"], "--budget-minutes must be"),
    (["--backends", "tpu"], "unknown backend"),
])
def test_cli_errors(tmp_path, capsys, extra, message):
    rc = main(["auto", MODEL, "--eval", TEST, "-o", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_error_output_below_a_file(tmp_path, capsys):
    """A parent of the output directory is a file: one line, exit 2 (was an internal error, a breaker's find)."""
    (tmp_path / "afile").write_text("x")
    rc = main(["auto", MODEL, "--eval", TEST, "-o", str(tmp_path / "afile" / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot create the output directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 1, "config": []}'])
def test_cli_error_resume_of_an_unreadable_state(tmp_path, capsys, text):
    """A state file that is not JSON, or not an object: one line, exit 2 (was an internal error)."""
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "state.json").write_text(text)
    rc = main(["auto", MODEL, "--eval", TEST, "-o", str(tmp_path / "o"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "o" / "state.json").read_text() == text  # left as it was


def test_cli_error_test_set_does_not_match_model(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, np.int64))
    rc = main(["auto", MODEL, "--eval", str(other), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "test data" in err and len(err.strip().splitlines()) == 1


def test_cli_error_in_the_baseline_leaves_no_directory(tmp_path, capsys):
    # mse against the labels array: the [N, 10] scores cannot be compared with [N] labels (found measuring)
    rc = main(["auto", MODEL, "--eval", TEST, "--metric", "mse", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("optc: error:") and "mse" in err
    assert err.count("optc:") == 1 and "Traceback" not in err  # progress lines before it, then one error line
    assert not (tmp_path / "o").exists()


def test_cli_error_no_labels(tmp_path, capsys):
    rc = main(["auto", MODEL, "--eval", CALIB, "-o", str(tmp_path / "o")])  # calibration data has no labels
    err = capsys.readouterr().err
    assert rc == 2 and "labels 'y'" in err and len(err.strip().splitlines()) == 1


def test_cli_runs_and_exit_code_says_unmet(tmp_path, capsys):
    rc = main(["auto", MODEL, "--eval", TEST, "--min-speedup", "1000", "--budget-minutes", "0.00001",
               "-o", str(tmp_path / "o"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["met"] is False and out["stop_reason"] == "the time budget ended"
    assert any("speed-up" in line for line in out["unmet"])


# -- slow: TVM, and the report in a real browser -----------------------------------------------------------------


@pytest.mark.slow
def test_tvm_backend(tmp_path):
    result = _run(tmp_path / "out", backends="onnxruntime,tvm-cpu", budget_minutes=3)
    assert [b["backend"] for b in result.baseline] == ["onnxruntime", "tvm-cpu"]
    tvm_base = result.baseline[1]
    assert tvm_base["drop"] <= 0.5 and tvm_base["max_abs_diff"] < 1e-3 and tvm_base["latency_ms"]["median_ms"] > 0
    # a symbolic batch timed at 32: static entries for batch 1 and 32 (`_Search._static_batch`), so the latency
    # measured is that of static kernels
    meta = json.loads((tmp_path / "out" / "work" / "baseline.so.json").read_text())
    assert meta["entries"] == {"main_batch1": {"N": 1}, "main_batch32": {"N": 32}}
    tvm_steps = [s for s in result.steps if s["name"].startswith("tvm")]
    assert tvm_steps and tvm_steps[0]["name"] == "tvm untuned"
    first = tvm_steps[0]
    assert first["status"] in ("kept", "rejected", "failed")
    if first["status"] != "failed":
        assert first["backend"] == "tvm-cpu" and first["file"].endswith(".so")
    # the static int8 QDQ model of the same float model, compiled to integer kernels (reused, not re-quantized)
    static = next(s for s in result.steps if s["name"] == "static int8")
    int8 = next(s for s in tvm_steps if s["name"] == "tvm int8")
    assert int8["status"] in ("kept", "rejected"), int8.get("reason")
    assert int8["details"]["precision"] == "int8" and int8["file"].endswith(".so")
    assert int8["details"]["kernels"].startswith("integer kernels: 5 of 5 conv/matmul"), int8["details"]
    if static["status"] in ("kept", "rejected") and static["drop"] <= 0.5 \
            and static["details"]["source"] == int8["details"]["float_model"]:
        assert int8["details"]["source"] == static["file"] and "static int8" in int8["details"]["quantized_by"]
    else:  # (a pruning step kept since: the new float model is quantized anew)
        assert int8["details"]["quantized_by"] in ("this step", "the kept ONNX model (static int8)")
    if result.chosen["backend"] == "tvm-cpu":
        assert (tmp_path / "out" / "model.so").is_file() and (tmp_path / "out" / "model.so.json").is_file()
        ev = optc.evaluate(str(tmp_path / "out" / "model.so"), TEST)
        assert ev["value"] == pytest.approx(result.chosen["value"])


@pytest.mark.slow
def test_report_renders_in_chromium(digits_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed here (.ci/run installs it: apt-get install -y chromium)")
    from PIL import Image

    _, out = digits_run
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2600", f"file://{out / 'report.html'}"],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    non_white = (img.sum(axis=2) < 720).mean()
    assert non_white > 0.08, f"the page looks blank ({non_white:.1%} non-white pixels)"

    def pixels(rgb):  # pixels of a plot colour (matplotlib's, see workflow/report.py)
        return int((np.abs(img - np.array(rgb)).sum(axis=2) < 40).sum())

    assert pixels((31, 119, 180)) > 500  # the baseline's blue: per-class bars and markers
    assert pixels((255, 127, 14)) > 500  # the chosen model's orange: per-class bars and star
    assert pixels((23, 190, 207)) > 500  # the profile chart's bars


def test_tuning_step_keeps_the_kept_precision(tmp_path, monkeypatch):
    """The tuning step tunes and builds the library in the precision of the kept TVM step (bf16 after a kept
    `tvm bf16`): both the tuning child's command line and the final build from its database say so (the final
    build once dropped it and measured a float32 library under the name 'tvm tuned')."""
    import time
    import types

    import optc.codegen.compile as compile_mod

    calls: dict = {}

    class FakeChild:
        pid, returncode = 0, 0

        def __init__(self, cmd, **_kw):
            calls["cmd"] = cmd

        def communicate(self, timeout=None):
            return "", ""

    monkeypatch.setattr(subprocess, "Popen", FakeChild)
    monkeypatch.setattr(compile_mod, "compile_to_file", lambda *a, **kw: calls.setdefault("build", kw))
    search = types.SimpleNamespace(work=str(tmp_path), deadline=time.monotonic() + 600, progress=False,
                                   _static_batch=lambda source: (1, 32))
    _Search._tune(search, "m.onnx", str(tmp_path / "t.so"), None, "bf16")
    assert calls["cmd"][calls["cmd"].index("--precision") + 1] == "bf16"
    assert calls["build"]["precision"] == "bf16" and calls["build"]["trials"] == 0
    # the static batch entries too (tuned and built: tuning measures the entries' static kernels)
    assert calls["cmd"][calls["cmd"].index("--static-batch") + 1] == "1,32"
    assert calls["build"]["static_batch"] == (1, 32)


def test_tvm_int8_step_quantizes_the_best_float_model_once(tmp_path, monkeypatch):
    """`tvm int8` compiles the static int8 QDQ model of the best float model: the kept one when static int8 was
    kept; the `static int8` step's when it came from the same float model and kept the accuracy budget; else a
    new one (never a QDQ model of another float model, nor one over the budget)."""
    import types

    out = str(tmp_path)
    made = []
    search = types.SimpleNamespace(outdir=out, req=Requirements.parse(0.5))
    search._rel = lambda p: _Search._rel(search, p)
    search.reusable_qdq = lambda st, fp: _Search.reusable_qdq(search, st, fp)
    search._precision = lambda mode, src, drop: (made.append((mode, src)) or object(), {"quantized": 3})
    monkeypatch.setattr("optc.ir.save", lambda model, path: made.append(("saved", path)))
    static = {"name": "static int8", "drop": 0.25, "file": "work/05-static-int8.onnx",
              "details": {"source": "work/00-o2.onnx"}}
    state = {"precision": None, "onnx_file": None, "float_drop": 0.0, "records": [static]}
    same, other = os.path.join(out, "work/00-o2.onnx"), os.path.join(out, "work/07-prune-10.float.onnx")
    path, details = _Search._static_qdq(search, state, same, os.path.join(out, "work/12-tvm-int8"))
    assert path == os.path.join(out, static["file"]) and not made
    path, details = _Search._static_qdq(search, state, other, os.path.join(out, "work/12-tvm-int8"))
    assert path.endswith("12-tvm-int8.qdq.onnx") and made[0] == ("static", other) and details["quantized"] == 3
    made.clear()
    static["drop"] = 0.75  # over the budget: quantized again (the accuracy-aware search with what is left)
    _Search._static_qdq(search, state, same, os.path.join(out, "work/12-tvm-int8"))
    assert made and made[0] == ("static", same)
    made.clear()
    state.update(precision="static", onnx_file="work/08-prune-25.onnx")
    path, _ = _Search._static_qdq(search, state, other, os.path.join(out, "work/12-tvm-int8"))
    assert path == os.path.join(out, "work/08-prune-25.onnx") and not made


def test_prune_step_with_nothing_to_prune_is_skipped(tmp_path):
    """Pruning keeps whole multiples of 16 channels: at 10% no group of the digits CNN can lose one, and the step
    says so instead of measuring the unchanged model."""
    import types

    from optc.workflow.auto import _Skip

    search = types.SimpleNamespace(work=str(tmp_path), outdir=str(tmp_path), model=MODEL, calibration=None)
    search.float_path = lambda st: _Search.float_path(search, st)
    search._best_criterion = lambda *a: 0.0  # (the choice of criterion: test_prune_step_keeps_the_more_accurate_...)
    state = {"float_file": None, "precision": None, "float_drop": 0.0}
    with pytest.raises(_Skip, match="multiple of 16"):
        _Search.candidate(search, {"name": "prune 10%", "kind": "prune", "param": 0.1}, state, 7)
    path, float_path, details = _Search.candidate(search, {"name": "prune 50%", "kind": "prune", "param": 0.5},
                                                  state, 9)
    assert path == float_path and os.path.isfile(path) and details["params_after"] < details["params_before"]


def test_a_step_that_would_not_fit_is_skipped_and_retried_on_resume(tmp_path, monkeypatch):
    """A step estimated to take longer than the time left is skipped and the later steps still run; the stop
    reason names it; --resume (with time left) tries it first and puts its record in its place."""
    import sys

    auto_mod = sys.modules["optc.workflow.auto"]  # (optc.workflow.auto the attribute is the function)
    real = auto_mod._estimate
    monkeypatch.setattr(auto_mod, "_estimate", lambda step, state: 1e9 if step["name"] == "float16" else
                        real(step, state))
    out = tmp_path / "out"
    first = _run(out)
    names = [s["name"] for s in first.steps]
    skipped = first.steps[names.index("float16")]
    assert skipped["status"] == "skipped" and "would take about" in skipped["reason"]
    later = first.steps[names.index("float16") + 1:]
    assert any(s["status"] in ("kept", "rejected") for s in later)  # the search went on after it
    assert first.stop_reason == "the time budget ended (not tried for lack of time: float16)"
    monkeypatch.setattr(auto_mod, "_estimate", real)
    more = _run(out, resume=True)
    again = [s["name"] for s in more.steps]
    assert again == names  # same order: the retried step's record replaced in place
    assert more.steps[again.index("float16")]["status"] in ("kept", "rejected")
    assert more.stop_reason == "every step was tried"


def test_precision_on_a_pruned_model_gets_what_is_left_of_the_budget(tmp_path, monkeypatch):
    """A prune step on top of a kept precision measures the pruned float model's own drop and gives the
    precision (and later the tvm int8 step's quantizer) only what is left of the budget (it got the whole
    budget, the pruning's drop unaccounted)."""
    import types

    budgets = []
    search = types.SimpleNamespace(work=str(tmp_path), outdir=str(tmp_path), model=MODEL, against_baseline=False,
                                   metric="top1", req=Requirements.parse(0.5), calibration=None)
    search._evaluate = lambda path: {"value": 0.98}
    search._drop = lambda path, state: _Search._drop(search, path, state)
    search._drop_of = lambda ev, base: _Search._drop_of(search, ev, base)
    search.float_path = lambda st: _Search.float_path(search, st)
    search._best_criterion = lambda *a: _Search._best_criterion(search, *a)
    search._precision = lambda mode, src, drop: (budgets.append((mode, drop)) or optc.load(src), {})
    state = {"float_file": None, "precision": "dynamic", "float_drop": 0.0,
             "baseline": {"records": [{"value": 0.9861}]}}
    _, float_path, details = _Search.candidate(search, {"name": "prune 50%", "kind": "prune", "param": 0.5}, state,
                                               9)
    assert budgets == [("dynamic", pytest.approx(0.61))] and details["float_drop"] == pytest.approx(0.61)


def test_kept_tvm_int8_is_what_the_tuning_step_tunes(tmp_path):
    """After a kept `tvm int8`, the tuning step compiles that step's QDQ source with float32 compute for its float
    ops, and says int8 (it said fp32)."""
    from optc.workflow.auto import _keep

    state = {"records": []}
    rec = {"name": "tvm int8", "drop": 0.2, "details": {"source": "work/12-tvm-int8.qdq.onnx", "precision": "int8"}}
    _keep(state, {"name": "tvm int8", "kind": "tvm", "param": "int8"}, rec, str(tmp_path / "work/12.so"), None,
          str(tmp_path))
    assert state["tvm_source"] == "work/12-tvm-int8.qdq.onnx"
    assert state["tvm_precision"] == "fp32" and state["tvm_kind"] == "int8"


def test_tvm_int8_estimate_counts_quantizing_unless_a_qdq_model_is_reused(tmp_path):
    """The tvm int8 step quantizes (as long as the static int8 step took) unless it can reuse that step's model:
    its estimate says so (BERT-like ran 285 s of a 240 s budget when it did not)."""
    import types

    from optc.workflow.auto import _step_estimate

    out = str(tmp_path)
    search = types.SimpleNamespace(outdir=out, model=MODEL, req=Requirements.parse(0.5))
    search._rel = lambda p: _Search._rel(search, p)
    search.reusable_qdq = lambda st, fp: _Search.reusable_qdq(search, st, fp)
    search.float_path = lambda st: _Search.float_path(search, st)
    static = {"name": "static int8", "kind": "precision", "status": "rejected", "seconds": 100.0, "drop": 1.0,
              "file": "work/05-static-int8.onnx", "details": {"source": MODEL}}
    compiled = {"name": "tvm untuned", "kind": "tvm", "status": "rejected", "seconds": 20.0}
    state = {"float_file": None, "precision": None, "records": [static, compiled], "baseline": {"records": []}}
    step = {"name": "tvm int8", "kind": "tvm", "param": "int8"}
    assert _step_estimate(search, step, state) == 120.0  # over the budget: quantized again
    static["drop"] = 0.25
    assert _step_estimate(search, step, state) == 20.0  # reused: only the compile
    assert _step_estimate(search, {"name": "tvm bf16", "kind": "tvm", "param": "bf16"}, state) == 20.0


def _prune_step(tmp_path, calibration, values: dict[str, float], other: float) -> tuple[str, dict]:
    """Run the `prune 50%` step of a stand-in search on MODEL whose test-set top-1 is values[suffix] for a file
    ending in that suffix, else `other` (baseline 0.9861); (the kept model's path, the step's details)."""
    import types

    search = types.SimpleNamespace(work=str(tmp_path), outdir=str(tmp_path), model=MODEL, against_baseline=False,
                                   metric="top1", req=Requirements.parse(0.5), calibration=calibration)
    search._evaluate = lambda p: {"value": next((v for k, v in values.items() if p.endswith(k)), other)}
    for name in ("_drop", "_drop_of", "float_path", "_reconstructed", "_best_criterion"):
        setattr(search, name, getattr(_Search, name).__get__(search))
    state = {"float_file": None, "precision": None, "float_drop": 0.0, "baseline": {"records": [{"value": 0.9861}]}}
    path, _, details = _Search.candidate(search, {"name": "prune 50%", "kind": "prune", "param": 0.5}, state, 9)
    return path, details


@pytest.mark.parametrize("refit_better", [True, False])
def test_prune_step_keeps_the_more_accurate_of_plain_and_refitted(tmp_path, refit_better):
    """With calibration data the prune step also builds the pruned model with the layers that read the pruned
    channels refitted (optc.workflow.reconstruct) and keeps whichever has the smaller drop on the test set."""
    refit_value, plain_value = (0.9861, 0.9833) if refit_better else (0.9806, 0.9833)
    path, details = _prune_step(tmp_path, CALIB, {".refit.onnx": refit_value}, plain_value)
    assert details["criterion"] == "path" and details["drop_l1"] == details["drop_path"]  # a tie keeps "path"
    assert details["refitted"].startswith("1 of 2 layers")
    assert details["drop_plain"] == pytest.approx(0.28)
    assert details["drop_refitted"] == pytest.approx(0.0 if refit_better else 0.55)
    assert details["reconstruction"].startswith("kept" if refit_better else "not kept")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".refit.onnx")]
    from optc.workflow.prune import prune

    plain, _ = prune(MODEL, 0.5, criterion="path")
    refit, _ = prune(MODEL, 0.5, criterion="path", calibration=CALIB)
    chosen = optc.load(path)
    want = refit if refit_better else plain
    for name in ("10.weight", "10.bias", "12.weight"):
        np.testing.assert_array_equal(chosen.graph.initializers[name].const.numpy(),
                                      want.graph.initializers[name].const.numpy())


@pytest.mark.parametrize("l1_better", [True, False])
def test_prune_step_keeps_the_more_accurate_criterion(tmp_path, l1_better):
    """The prune step prunes by the "path" score and by the filter norm ("l1") and keeps the one with the smaller
    drop on the test set (without calibration data: no refit)."""
    from optc.workflow.prune import prune

    l1_value, path_value = (0.9889, 0.9833) if l1_better else (0.9806, 0.9833)
    path, details = _prune_step(tmp_path, None, {".l1.onnx": l1_value}, path_value)
    assert details["criterion"] == ("l1" if l1_better else "path")
    assert details["drop_l1"] == pytest.approx(-0.28 if l1_better else 0.55)
    assert details["drop_path"] == pytest.approx(0.28)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".l1.onnx")]
    want, _ = prune(MODEL, 0.5, criterion=details["criterion"])
    chosen = optc.load(path)
    for name in ("10.weight", "12.weight"):
        np.testing.assert_array_equal(chosen.graph.initializers[name].const.numpy(),
                                      want.graph.initializers[name].const.numpy())


def test_static_batch_only_for_a_batch_above_one_of_a_small_symbolic_model(tmp_path):
    import types

    import onnx

    search = types.SimpleNamespace(latency_batch=32)
    assert _Search._static_batch(search, MODEL) == (1, 32)
    search.latency_batch = 1
    assert _Search._static_batch(search, MODEL) is None  # the default batch-1 entry serves
    static = str(tmp_path / "static.onnx")
    m = onnx.load(MODEL)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 32
    onnx.save(m, static)
    search.latency_batch = 32
    assert _Search._static_batch(search, static) is None  # no symbolic batch: nothing to bind


@pytest.mark.parametrize("static_kept", [True, False])
def test_tvm_int8_runs_right_after_a_kept_static_int8(tmp_path, monkeypatch, static_kept):
    """With tvm-cpu among the backends, a kept static int8 is compiled to integer kernels (`tvm int8`) before the
    search may stop: the same QDQ model's other way out (the ResNet-like's ran ~10% faster than onnxruntime's,
    which only tied onnxruntime's own quantizer). A static int8 not kept leaves tvm int8 in its place. The steps
    are faked (records only); the order and the stop are what is tested."""
    import sys

    auto_mod = sys.modules["optc.workflow.auto"]
    order = []

    def fake(search, state, step, i, base):
        order.append(step["name"])
        speed = {"static int8": 2.5 if static_kept else 0.5, "tvm int8": 3.0}.get(step["name"], 1.0)
        rec = {"name": step["name"], "kind": step["kind"], "file": base["file"], "value": base["value"],
               "backend": "tvm-cpu" if step["kind"] == "tvm" else "onnxruntime", "speedup": speed, "drop": 0.0,
               "size_mb": 1.0, "status": "rejected", "reason": "faked", "seconds": 0.0}
        if speed > state["best"]["speedup"]:
            rec["status"] = "kept"
            state["best"] = dict(rec)
        return rec

    monkeypatch.setattr(auto_mod, "_attempt_step", fake)
    result = _run(tmp_path / "out", min_speedup=2.0, backends="onnxruntime,tvm-cpu")
    if static_kept:
        assert order[order.index("static int8"):] == ["static int8", "tvm int8"]
        assert result.chosen["name"] == "tvm int8" and result.stop_reason == "every requirement holds"
        names = [s["name"] for s in result.steps]
        assert names.index("tvm int8") == names.index("static int8") + 1
        state = json.loads((tmp_path / "out" / "state.json").read_text())
        assert state["next_step"] == [s["name"] for s in auto_mod._steps(("onnxruntime", "tvm-cpu"))].index(
            "static int8") + 1  # run out of turn: the steps between are not passed over on --resume
    else:
        assert order.index("tvm int8") == order.index("tvm bf16") + 1  # in its own place, after every other
        assert result.chosen["name"] == "tvm int8"


def _faked_steps(monkeypatch, speeds: dict, sizes: dict | None = None, interrupt: str | None = None):
    """Candidates and their measurements faked (the baseline's are real): every step's candidate is the input
    model (a TVM step's, the baseline's library), measured with the given speed-up (1.0 for the others) and size
    (MB; 1.0) and no accuracy drop; the search's own decisions (`_attempt_step`, `_keep`) run as they are.
    `interrupt`: raise _Interrupted when that step's candidate is built. Returns the list of steps measured."""
    order = []
    real_measure = _Search.measure

    def candidate(self, step, state, i):
        if step["name"] == interrupt:
            raise _Interrupted
        if step["kind"] == "tvm":
            return os.path.join(self.work, "baseline.so"), None, {"source": MODEL, "precision": "int8"}
        return MODEL, None, {"source": MODEL}

    def measure(self, name, path, backend, base):
        if name.startswith("baseline"):
            return real_measure(self, name, path, backend, base)
        order.append(name)
        return {"name": name, "backend": backend, "file": path, "value": base["value"], "drop": 0.0,
                "per_class": base["per_class"], "speedup": speeds.get(name, 1.0), "size_mb": (sizes or {}).get(name, 1.0),
                "latency_ms": base["latency_ms"], "max_abs_diff": 0.0, "seconds": 0.0}

    monkeypatch.setattr(_Search, "candidate", candidate)
    monkeypatch.setattr(_Search, "measure", measure)
    return order


def test_interrupted_tvm_int8_after_static_int8_runs_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "out"
    speeds = {"static int8": 2.5, "tvm int8": 3.0}
    _faked_steps(monkeypatch, speeds, interrupt="tvm int8")
    with pytest.raises(_Interrupted):
        _run(out, min_speedup=2.0, backends="onnxruntime,tvm-cpu")
    order = _faked_steps(monkeypatch, speeds)
    result = _run(out, min_speedup=2.0, backends="onnxruntime,tvm-cpu", resume=True)
    assert order == ["tvm int8"] and result.chosen["name"] == "tvm int8"  # (requirements held before it ran)
    assert result.stop_reason == "every requirement holds" and (out / "model.so").exists()


def test_tvm_int8_that_would_break_a_met_requirement_is_not_kept(tmp_path, monkeypatch):
    # static int8 meets every requirement (size included); tvm int8 is faster but its library is too big
    _faked_steps(monkeypatch, {"static int8": 2.5, "tvm int8": 3.0}, sizes={"static int8": 0.05, "tvm int8": 0.5})
    result = _run(tmp_path / "out", min_speedup=2.0, max_size_mb=0.1, backends="onnxruntime,tvm-cpu")
    assert result.met and result.chosen["name"] == "static int8"
    assert next(s for s in result.steps if s["name"] == "tvm int8")["status"] == "rejected"


def test_an_onnx_step_kept_after_a_tvm_step_drops_its_library(tmp_path):
    # tvm int8 kept right after static int8, then a pruned ONNX model faster still: model.so is not left over
    from optc.workflow.auto import _keep

    state = {"tvm_file": "work/12.so", "tvm_source": "work/05.onnx", "tvm_precision": "fp32", "tvm_kind": "int8",
             "precision": "static", "records": []}
    _keep(state, {"name": "prune 50%", "kind": "prune", "param": 0.5}, {"name": "prune 50%", "drop": 0.0},
          str(tmp_path / "work" / "09.onnx"), None, str(tmp_path))
    assert not {"tvm_file", "tvm_source", "tvm_precision", "tvm_kind"} & set(state)
