"""Static batch entries (codegen/static_batch.py): a small model whose only symbolic dims are batch dims gets
``main_batch1`` beside ``main`` (the batch bound to 1, its own static kernels), and `optc.runtime` calls it when
every batch dim is 1; `static_batch` / ``--static-batch`` asks for other sizes. Every entry must compute what
onnxruntime computes; models with other symbolic dims, with no symbolic dim, or too many MACs get no entry by
default, and asking for one on such a model is a one-line error."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.codegen import static_batch
from optc.codegen.static_batch import check_sizes, default_sizes, entry_name, model_batch_vars, parse_sizes
from optc.tools import cli

from .conftest import run_ort

HERE = os.path.dirname(__file__)
DIGITS = os.path.join(HERE, "..", "examples", "digits_cnn.onnx")
DIGITS_TEST = os.path.join(HERE, "..", "examples", "digits_test.npz")
BATCH_ONE = entry_name(1)


def _two_input_model(dims_x: list, dims_y: list) -> onnx.ModelProto:
    """z = Relu(x @ w) + y: x [., 4, 16], y [., 4, 8]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Add", ["r", "y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims_x),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, dims_y)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def digits():
    return optc.compile(DIGITS)


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_digits_batch_one_entry_and_main_match_onnxruntime(digits, n):
    assert digits.metadata["entries"] == {BATCH_ONE: {"N": 1}}
    x = np.load(DIGITS_TEST)["x"][:n]
    args, entry = digits._prepare({"x": x})
    assert entry == (BATCH_ONE if n == 1 else "main")
    want = run_ort(DIGITS, {"x": x})[0]
    got = digits.run({"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    by_main = digits._call(args, "main").numpy()  # the symbolic entry at the same size agrees
    np.testing.assert_allclose(by_main, want, rtol=1e-4, atol=1e-5)


def test_a_zero_size_batch_runs_main(digits):
    x = np.zeros((0, 1, 8, 8), np.float32)
    assert digits._prepare({"x": x})[1] == "main"
    assert digits.run({"x": x})["logits"].shape == (0, 10)


def test_two_inputs_sharing_the_batch_dim():
    model = _two_input_model(["B", 4, 16], ["B", 4, 8])
    module = optc.compile(model)
    assert module.metadata["entries"] == {BATCH_ONE: {"B": 1}}
    rng = np.random.default_rng(1)
    for n in (1, 3):
        feeds = {"x": rng.standard_normal((n, 4, 16)).astype(np.float32),
                 "y": rng.standard_normal((n, 4, 8)).astype(np.float32)}
        assert module._prepare(feeds)[1] == (BATCH_ONE if n == 1 else "main")
        np.testing.assert_allclose(module.run(feeds)["z"], run_ort(model, feeds)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(optc.OptcError, match="dimension 'B' is 1 elsewhere"):
        module.run({"x": np.zeros((1, 4, 16), np.float32), "y": np.zeros((2, 4, 8), np.float32)})


@pytest.mark.parametrize("dims_x, dims_y", [
    (["B", "S", 16], ["B", "S", 8]),  # a sequence length besides the batch
    ([4, "B", 16], [4, "B", 8]),  # a symbolic dim that is not the leading one
    ([2, 4, 16], [2, 4, 8]),  # static
])
def test_no_entry_unless_every_symbolic_dim_is_a_batch_dim(dims_x, dims_y):
    model = _two_input_model(dims_x, dims_y)
    assert default_sizes(optc.load(model)) == ()
    if dims_x[0] == 2:
        assert model_batch_vars(optc.load(model)) is None
    module = optc.compile(model)
    assert "entries" not in module.metadata


def test_no_entry_for_a_model_over_the_mac_limit(monkeypatch):
    monkeypatch.setattr(static_batch, "MAX_MACS", 80_000)  # the digits CNN: 84,608 per sample
    assert default_sizes(optc.load(DIGITS)) == ()
    assert model_batch_vars(optc.load(DIGITS)) == ["N"]  # asked for, entries are still built
    assert optc.compile(DIGITS, static_batch=[4]).metadata["entries"] == {entry_name(4): {"N": 4}}
    monkeypatch.setattr(static_batch, "MAX_MACS", 90_000)
    assert default_sizes(optc.load(DIGITS)) == (1,)


def test_artifact_keeps_the_entry_and_a_stale_entry_falls_back_to_main(tmp_path, capsys):
    lib = tmp_path / "d.so"
    assert cli.main(["compile", DIGITS, "-o", str(lib)]) == 0
    assert "batch-1 entry: N = 1" in capsys.readouterr().out
    meta = json.loads((tmp_path / "d.so.json").read_text())
    assert meta["entries"] == {BATCH_ONE: {"N": 1}}
    x = np.load(DIGITS_TEST)["x"][:1]
    module = optc.runtime.load(str(lib))
    assert module._prepare({"x": x})[1] == BATCH_ONE
    want = run_ort(DIGITS, {"x": x})[0]
    np.testing.assert_allclose(module.run({"x": x})["logits"], want, rtol=1e-4, atol=1e-5)
    meta["entries"] = {"no_such_function": {"N": 1}}
    (tmp_path / "d.so.json").write_text(json.dumps(meta))
    stale = optc.runtime.load(str(lib))
    assert stale._prepare({"x": x})[1] == "main"
    np.testing.assert_allclose(stale.run({"x": x})["logits"], want, rtol=1e-4, atol=1e-5)


def test_the_tir_that_preparation_writes_is_written_for_the_entry_too():
    """libm's tanh without fast math (and fast math's softmax) are TIR written when the module is prepared, after
    the entry is added: the entry gets its own static copy (one symbolic PrimFunc called with two shapes had made
    FuseTIR fail: "inconsistent buffers"). Both entries compute what onnxruntime computes."""
    ops = ["Exp", "Tanh", "Erf", "Softmax"]
    nodes = [helper.make_node(op, ["x"], [f"y_{op.lower()}"]) for op in ops]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info(f"y_{op.lower()}", TensorProto.FLOAT, ["N", 8])
                               for op in ops])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for fast_math in (False, True):
        module = optc.compile(model, fast_math=fast_math)
        assert module.metadata["entries"] == {BATCH_ONE: {"N": 1}}
        for n in (1, 3):
            x = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32) * 3
            assert module._prepare({"x": x})[1] == (BATCH_ONE if n == 1 else "main")
            got, want = module.run({"x": x}), run_ort(model, {"x": x})
            for name, ref in zip(got, want, strict=True):
                np.testing.assert_allclose(got[name], ref, rtol=2e-6 if not fast_math else 1e-5, atol=1e-7)


def test_a_model_whose_lowering_writes_tir_gets_no_entry():
    """GatherElements with indices from an input: the lowering writes the index check as TIR for the symbolic
    shapes (fused with static kernels reading the same values, FuseTIR refuses it): no entry, and the model
    compiles and runs as before."""
    nodes = [helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                                           helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = optc.compile(model)
    assert "entries" not in module.metadata
    rng = np.random.default_rng(0)
    for n in (1, 4):
        feeds = {"x": rng.standard_normal((n, 8)).astype(np.float32), "i": rng.integers(-8, 8, (n, 3))}
        np.testing.assert_array_equal(module.run(feeds)["y"], run_ort(model, feeds)[0])


def test_a_build_that_fails_with_the_entry_is_built_without_it(monkeypatch):
    """The entry only saves time: when the build with it fails, the library is built again without it."""
    def broken(sizes, report=None):
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="broken")
        def _pass(mod, _ctx):
            raise RuntimeError("simulated failure of the batch-1 entry")

        return _pass

    monkeypatch.setattr(static_batch, "static_batch_entries", broken)
    module = optc.compile(DIGITS)
    assert "entries" not in module.metadata
    x = np.load(DIGITS_TEST)["x"][:1]
    np.testing.assert_allclose(module.run({"x": x})["logits"], run_ort(DIGITS, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digits_1_32():
    return optc.compile(DIGITS, static_batch=(32, 1, 32))


@pytest.mark.parametrize("n", [1, 7, 32, 33])
def test_entries_for_the_sizes_asked_for_match_onnxruntime(digits_1_32, n):
    assert digits_1_32.metadata["entries"] == {entry_name(1): {"N": 1}, entry_name(32): {"N": 32}}
    x = np.load(DIGITS_TEST)["x"][:n]
    args, entry = digits_1_32._prepare({"x": x})
    assert entry == {1: entry_name(1), 32: entry_name(32)}.get(n, "main")
    want = run_ort(DIGITS, {"x": x})[0]
    np.testing.assert_allclose(digits_1_32.run({"x": x})["logits"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(digits_1_32._call(args, "main").numpy(), want, rtol=1e-4, atol=1e-5)


def test_no_entries_when_asked_for_none():
    assert "entries" not in optc.compile(DIGITS, static_batch=()).metadata


def test_tuning_sees_the_entries_static_kernels():
    """With a symbolic batch every kernel of main is symbolic (not measurable); the entries' are static tasks."""
    from optc.codegen.tuning import extract_tasks
    from optc.lowering import lower
    from optc.rewrites import optimize

    mod = lower(optimize(optc.load(DIGITS), level=2))
    skipped: dict = {}
    assert extract_tasks(mod, None, "cpu", skipped=skipped) == [] and skipped["symbolic"] > 0
    tasks = extract_tasks(mod, None, "cpu", batch_sizes=(1, 32))
    scripts = [t.mod.script() for t in tasks]
    assert any("T.Buffer((T.int64(32)," in s for s in scripts) and any("T.Buffer((T.int64(1)," in s for s in scripts)


def test_cli_static_batch(tmp_path, capsys):
    lib = tmp_path / "d.so"
    assert cli.main(["compile", DIGITS, "-o", str(lib), "--static-batch", "1,32", "-q"]) == 0
    assert "with batch-1 and batch-32 entries: N = 1 or 32 runs static kernels" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.so.json").read_text())["entries"] == {entry_name(1): {"N": 1},
                                                                           entry_name(32): {"N": 32}}
    assert cli.main(["compile", DIGITS, "-o", str(tmp_path / "n.so"), "--static-batch", "none", "-q"]) == 0
    assert "entries" not in json.loads((tmp_path / "n.so.json").read_text())


@pytest.mark.parametrize("args, message", [
    (["--static-batch", "1,x"], "--static-batch 1,x: expected batch sizes separated by commas (1,32) or none"),
    (["--static-batch", "0"], "a static batch size must be an integer from 1 to 65536, got 0"),
    (["--static-batch", "70000"], "a static batch size must be an integer from 1 to 65536, got 70000"),
    (["--static-batch", "2", "--input-shape", "x:3x1x8x8"],
     "static batch entries need a model whose symbolic input dims are all named leading batch dims; this model's "
     "inputs are x [3, 1, 8, 8]"),
])
def test_cli_static_batch_errors(tmp_path, capsys, args, message):
    out = tmp_path / "d.so"
    assert cli.main(["compile", DIGITS, "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"optc: error: {message}"
    assert not out.exists() and not os.listdir(tmp_path)


def test_sizes_from_python_and_numpy_integers():
    assert check_sizes(4, optc.load(DIGITS)) == (4,)
    assert check_sizes((np.int64(4), 1, 4), optc.load(DIGITS)) == (1, 4)
    with pytest.raises(optc.OptcError, match="got True"):
        check_sizes((True,), optc.load(DIGITS))


@pytest.mark.parametrize("text", ["1_0", "+2", "\uff11", "1,,2", "", " "])
def test_only_decimal_sizes_parse(text):
    with pytest.raises(optc.OptcError, match="expected batch sizes separated by commas"):
        parse_sizes(text)


def test_an_unnamed_batch_dim_is_refused_saying_it_must_be_named():
    model = _two_input_model([None, 4, 16], [None, 4, 8])
    with pytest.raises(optc.OptcError, match="all named leading batch dims; this model's inputs are x \\[\\?, 4, 16\\]"):
        optc.compile(model, static_batch=(2,))


def test_entries_asked_for_and_not_built_are_reported(tmp_path, capsys):
    """bf16 kernels are TIR the lowering writes for the symbolic shapes: no entries, and the summary says so
    (it said nothing)."""
    lib = tmp_path / "b.so"
    assert cli.main(["compile", DIGITS, "-o", str(lib), "--static-batch", "1,4", "--precision", "bf16", "-q"]) == 0
    assert "(no static batch entries: the lowering wrote kernels of its own" in capsys.readouterr().out
    assert "entries" not in json.loads((tmp_path / "b.so.json").read_text())


def test_kernels_of_a_symbolic_library_keep_noalias():
    """The VM's shape function (written without `tirx.noalias`) used to cost every kernel of a library with
    symbolic shapes its noalias parameters in TVM 0.27's LLVM codegen: the compute was inlined into the packed
    wrapper and a matmul's accumulators went back to memory after each multiply-add (the batch-32 entry's matmul
    took 3x a static build's). codegen/noalias.py marks the single-buffer shape function; every kernel's compute
    function then has noalias buffer parameters again."""
    import importlib

    from optc.lowering import lower
    from optc.rewrites import optimize

    build = importlib.import_module("optc.codegen.build")
    executable = build.build(lower(optimize(optc.from_onnx(onnx.load(DIGITS)), level=2)), None, "cpu",
                             batch_sizes=(32,))
    ll = next(m.inspect_source("ll") for m in executable.mod.imports if m.kind == "llvm")
    computes = [line for line in ll.splitlines() if line.startswith("define") and "matmul" in line
                and "_compute_(" in line]
    assert len(computes) >= 2, "no matmul compute function: the kernels were inlined without aliasing facts"
    assert all("ptr noalias" in line for line in computes), computes
