"""`optc compare` / `optc.compare`: endpoints, --mark-all on a model where one rewrite was deliberately broken
(tests/_broken_rewrite.py), saved inputs/outputs, --data, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import optc
import pytest
from onnx.reference import ReferenceEvaluator
from optc.ortsession import session
from optc.rewrites.pipelines import build_pipeline, run_pipeline
from optc.tests import _broken_rewrite as B
from optc.tools.cli import main


@pytest.fixture
def models(tmp_path, monkeypatch):
    """(original, optimized by the broken pipeline, optimized by a good one) as files."""
    B.install(monkeypatch)
    src = B.make_model(tmp_path / "fixture.onnx")
    out = {}
    for name, spec in (("broken", B.PIPELINE), ("good", "rules{rule-set=eliminate-noops},dce")):
        m = optc.load(src)
        run_pipeline(m, build_pipeline(None, spec))
        out[name] = str(tmp_path / f"{name}.onnx")
        optc.save(m, out[name])
    return src, out["broken"], out["good"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_mark_all_names_the_broken_rewrites_node(models, capsys, tmp_path):
    src, broken, _ = models
    rc, out, _ = _run(capsys, "compare", "--mark-all", src, broken, "--json", "--save-inputs",
                      str(tmp_path / "x.npz"))
    assert rc == 1
    doc = json.loads(out)
    first = doc["mark_all"]["first_divergence"]
    assert (first["node"], first["op_type"], first["output"]["op_type_b"]) == ("pool", "MaxPool", "AveragePool")
    assert first["culprit"] is True
    assert [i["name"] for i in first["inputs"]] == ["r1"] and first["inputs"][0]["state"].startswith("match")
    # every tensor before the pool matches; the worst element is what the two models compute there
    tensors = doc["mark_all"]["tensors"]
    names = [t["name"] for t in tensors]
    assert all(t["equal"] for t in tensors[:names.index("p")]) and not tensors[names.index("p")]["equal"]
    feeds = dict(np.load(tmp_path / "x.npz"))
    want_a = ReferenceEvaluator(onnx.load(src)).run(None, feeds, intermediate=True)["p"]
    want_b = ReferenceEvaluator(onnx.load(broken)).run(None, feeds, intermediate=True)["p"]
    idx = tuple(first["output"]["worst_index"])
    assert np.isclose(first["output"]["worst_a"], want_a[idx], rtol=1e-5)
    assert np.isclose(first["output"]["worst_b"], want_b[idx], rtol=1e-5)
    assert first["output"]["mismatched"] == int((~np.isclose(want_a, want_b, rtol=1e-4, atol=1e-5)).sum())
    rc, out, _ = _run(capsys, "compare", "--mark-all", src, broken)
    assert rc == 1 and "first diverging node: pool (MaxPool; made by AveragePool in b)" in out
    assert "its inputs match: this node is where the models part" in out


def test_mark_all_finds_nothing_when_the_rewrites_are_right(models, capsys):
    src, _, good = models
    rc, out, _ = _run(capsys, "compare", "--mark-all", src, good, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["equal"] and doc["mark_all"]["first_divergence"] is None
    assert doc["mark_all"]["compared"] >= 5 and doc["mark_all"]["mismatched"] == 0


def test_api_in_memory_models_and_runtime_names(models):
    src, _, _ = models
    original = optc.load(src)
    broken = optc.load(src)
    run_pipeline(broken, build_pipeline(None, B.PIPELINE))
    rep = optc.compare(original, broken, mark_all=True)
    assert not rep.equal and rep.mark_all.first.node == "pool"
    rep = optc.compare(src, "reference", mark_all=True)
    assert rep.equal and rep.b.runtime == "reference" and rep.mark_all.first is None
    rep = optc.compare(src, src + "@optimized")
    assert rep.equal and rep.b.runtime == "optimized"
    bad = optc.compare(src, src, inputs={"x": np.full((1, 2, 8, 8), np.nan, np.float32)})
    assert bad.equal  # NaN equals NaN at the same place


def test_saved_inputs_and_outputs_reproduce_the_run(models, capsys, tmp_path):
    src, broken, _ = models
    xi, xo = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    rc, _, _ = _run(capsys, "compare", src, broken, "--seed", "3", "--save-inputs", xi, "--save-outputs", xo)
    assert rc == 1
    feeds, outs = dict(np.load(xi)), dict(np.load(xo))
    assert set(outs) == {"a:y", "b:y"}
    np.testing.assert_array_equal(outs["a:y"], session(src, optimize=False).run(None, feeds)[0])  # a: as written
    rc, out, _ = _run(capsys, "compare", src, broken, "--inputs", xi, "--json")
    assert rc == 1 and json.loads(out)["outputs"][0]["max_abs"] > 1e-3


def test_data_directory_compares_every_file(models, capsys, tmp_path):
    src, broken, _ = models
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        np.savez(data / f"{i}.npz", x=np.random.default_rng(i).standard_normal((1, 2, 8, 8)).astype(np.float32))
    rc, out, _ = _run(capsys, "compare", src, broken, "--data", str(data), "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["samples"] == 3 and doc["mismatched_samples"] == 3
    rc, out, _ = _run(capsys, "compare", src, "reference", "--data", str(data), "--json")
    assert rc == 0 and json.loads(out)["samples"] == 3


@pytest.mark.parametrize("argv, message", [
    (["{src}@foo", "reference"], "unknown runtime 'foo'"),
    (["reference", "tvm"], "both runtime names"),
    (["{src}", "tvm", "--mark-all"], "--mark-all cannot look inside"),
    (["{src}", "{tmp}/lib.so", "--mark-all"], "--mark-all cannot look inside"),
    (["{src}", "reference", "--inputs", "{tmp}/bad.npz"], "not a valid"),
    (["{src}", "reference", "--inputs", "{tmp}/wrong.npz"], "input 'x'"),
    (["{src}", "reference", "--inputs", "{tmp}/extra.npz"], "unknown input 'z'"),
    (["{src}", "reference", "--inputs", "{tmp}/none.npz"], "does not exist"),
    (["{src}", "reference", "--rtol", "-1"], "tolerances (rtol, atol) must be finite and not negative, got rtol=-1"),
])
def test_errors_are_one_line_exit_2(models, capsys, tmp_path, argv, message):
    src = models[0]
    (tmp_path / "bad.npz").write_text("not a zip")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((1, 2, 4, 4), np.float32))
    np.savez(tmp_path / "extra.npz", x=np.zeros((1, 2, 8, 8), np.float32), z=np.zeros(1))
    args = [a.format(src=src, tmp=tmp_path) for a in argv]
    rc, out, err = _run(capsys, "compare", *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("optc: error:") and message in err, err


def test_mark_all_pairs_renamed_tensors_by_provenance(models, tmp_path):
    src = models[0]
    broken = optc.load(src)
    run_pipeline(broken, build_pipeline(None, B.PIPELINE))
    pool = next(n for n in broken.graph if n.op_type == "AveragePool")
    assert pool.meta["from"] == ["pool"]  # (what the rewrite recorded)
    pool.outputs[0].name = "renamed_by_a_fusion"
    rep = optc.compare(optc.load(src), broken, mark_all=True)
    first = rep.mark_all.first
    assert (first.node, first.output.name_b, first.output.paired_by) == ("pool", "renamed_by_a_fusion",
                                                                         "provenance")
    assert first.culprit
    # from a file the provenance is gone: the divergence shows at the next node, which says where to look
    path = str(tmp_path / "renamed.onnx")
    optc.save(broken, path)
    first = optc.compare(src, path, mark_all=True).mark_all.first
    assert first.node == "flatten" and not first.culprit
    assert dict(first.inputs)["p1"].startswith("not compared") and "pool (MaxPool)" in first.describe()


@pytest.mark.slow
def test_compiled_endpoints(models, capsys, tmp_path):
    """The model compiled by optc (`tvm`) and an artifact of `optc compile` agree with onnxruntime; --mark-all
    refuses both in one line."""
    from optc.codegen.compile import compile_to_file

    src = models[0]
    lib = str(tmp_path / "fixture.so")
    compile_to_file(optc.load(src), lib)
    for other in ("tvm", lib):
        rc, out, _ = _run(capsys, "compare", src, other, "--json")
        assert rc == 0 and json.loads(out)["equal"], out
    rc, _, err = _run(capsys, "compare", lib, src, "--mark-all")
    assert rc == 2 and err.count("\n") == 1 and "--mark-all cannot look inside" in err


def _relu_model(path, n: int, *, sliced: bool = False) -> str:
    """x[4] -> Relu -> y[n]; `sliced`: y is Relu's output sliced to [n] (a differently shaped y)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r" if sliced else "y"])]
    inits = []
    if sliced:
        inits = [helper.make_tensor("s", TensorProto.INT64, [1], [0]), helper.make_tensor("e", TensorProto.INT64,
                                                                                          [1], [n])]
        nodes.append(helper.make_node("Slice", ["r", "s", "e"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return str(path)


def test_mark_all_reports_a_shape_difference(capsys, tmp_path):
    """A paired tensor of another shape has no counts or errors (None): describe() says the shapes, no crash."""
    a = _relu_model(tmp_path / "a.onnx", 4)
    b = _relu_model(tmp_path / "b.onnx", 2, sliced=True)
    first = optc.compare(a, b, mark_all=True).mark_all.first
    c = first.output.comparison
    assert c.max_abs is None and c.mismatched is None
    text = first.describe()
    assert "output y: shape [4] vs [2]" in text and "None" not in text
    rc, out, err = _run(capsys, "compare", a, b, "--mark-all")
    assert rc == 1 and "first diverging node" in out and "shape [4] vs [2]" in out and "error" not in err
    rc, out, _ = _run(capsys, "compare", a, b, "--mark-all", "--json")
    assert rc == 1 and json.loads(out)["mark_all"]["first_divergence"]["output"]["max_abs"] is None


def test_mark_all_describes_strings_without_errors():
    """String tensors have counts but no abs/rel errors (None): describe() gives the count and the worst element."""
    from optc.tools.compare import compare
    from optc.workflow.compare import Divergence, TensorResult

    c = compare(np.array(["a", "b", "c"]), np.array(["a", "x", "c"]), name="s")
    assert c.max_abs is None and c.mismatched == 1
    text = Divergence("n", "Cast", TensorResult("s", "s", "name", "n", "Cast", "Cast", c), [("x", "match")],
                      True).describe()
    assert "output s: 1/3 elements differ; worst at [1]" in text and "max abs" not in text and "None" not in text


@pytest.mark.parametrize("rtol, atol", [(-1.0, 1e-5), (1e-4, float("nan")), (float("inf"), 0.0)])
def test_api_tolerance_error_names_no_cli_flag(models, rtol, atol):
    """The Python API's message names the arguments, not the CLI's --rtol/--atol flags."""
    with pytest.raises(optc.OptcError, match=r"^tolerances \(rtol, atol\) must be finite and not negative") as e:
        optc.compare(models[0], "reference", rtol=rtol, atol=atol)
    assert "--" not in str(e.value)
