"""The same behaviour across commands: --json where the output is data (one document on stdout), one .npz reader
(no pickle), one check of input names, one random-inputs generator, -o extensions, --version, `python -m optc`,
`optc run` on a model, `optc inspect` on an artifact, output modes under the umask, and the Python API."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optc
import pytest
from optc.errors import OptcError
from optc.inputs import InputSpec, check_input_names, random_inputs
from optc.quantization.data import read_npz
from optc.tools import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "examples" / "tiny_cnn.onnx")  # x: float32 [N,3,32,32] -> probs [N,10]
DIGITS = str(ROOT / "examples" / "digits_cnn.onnx")
DIGITS_TEST = str(ROOT / "examples" / "digits_test.npz")
TEXT_ONLY = {"show": "prints the text IR, which optc.ir.parse reads back"}


def optc_cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def in_process(capfd, *args) -> subprocess.CompletedProcess:
    """`optc ARGS` run by `cli.main` in this process (no interpreter start-up), output captured at the fd level."""
    capfd.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["optc", *args], rc, out, err)


def one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: ") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def x_input(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("art") / "tiny.so"
    r = optc_cli("compile", TINY, "-o", path, "-q")
    assert r.returncode == 0, r.stderr
    return str(path)


# -- python -m optc, --version ------------------------------------------------------------------------------


def test_python_dash_m_optc_runs_the_cli():
    r = optc_cli("inspect", TINY, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"][0]["name"] == "x"
    assert optc_cli().returncode == 2  # no command: the usage, exit 2


def test_version_lists_the_components_without_importing_tvm():
    code = ("import sys; from optc.tools.cli import main; rc = main(['--version']); "
            "print('TVM_IMPORTED' if 'tvm' in sys.modules else 'NO_TVM'); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "NO_TVM"
    assert lines[:-1] == [f"optc {optc.__version__}", f"onnx {version('onnx')}",
                          f"onnxruntime {version('onnxruntime')}", f"tvm {version('apache-tvm')}",
                          f"tvm-ffi {version('apache-tvm-ffi')}"]


# -- --json ---------------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_with_data_output_has_json():
    missing = []
    for name, sub in _subparsers(cli.build_parser()).items():
        if name in TEXT_ONLY:
            continue
        leaves = _subparsers(sub) or {"": sub}  # `optc debug reduce`: the leaf commands
        for leaf, p in leaves.items():
            if not any("--json" in a.option_strings for a in p._actions):
                missing.append(f"{name} {leaf}".strip())
    assert not missing, f"commands without --json: {missing}"


def test_json_detector_is_not_vacuous():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    sub.add_parser("a").add_argument("--json", action="store_true")
    sub.add_parser("b")
    subs = _subparsers(p)
    assert [n for n, s in subs.items() if any("--json" in a.option_strings for a in s._actions)] == ["a"]


JSON_RUNS = {
    "inspect": (["inspect", TINY, "--json"], lambda d: d["kind"] == "onnx" and d["nodes"] > 0),
    "convert": (["convert", TINY, "-o", "{tmp}/c.onnx", "--json"], lambda d: d["nodes"] > 0 and d["bytes_out"] > 0),
    "run": (["run", TINY, "-o", "{tmp}/y.npz", "--json"],
            lambda d: d["kind"] == "onnx" and d["outputs"] == [{"name": "probs", "dtype": "float32", "shape": [1, 10]}]),
    "verify": (["verify", TINY, TINY, "--json"], lambda d: d["equal"] is True),
    "quantize": (["quantize", DIGITS, "-o", "{tmp}/q.onnx", "--dynamic", "--json"], lambda d: d["bytes_out"] > 0),
    "evaluate": (["evaluate", DIGITS, "--data", DIGITS_TEST, "--json"], lambda d: 0 <= d["value"] <= 1),
}


@pytest.mark.parametrize("command", list(JSON_RUNS))
def test_json_is_one_document_on_stdout(command, tmp_path):
    argv, check = JSON_RUNS[command]
    r = optc_cli(*(a.format(tmp=tmp_path) for a in argv))
    assert r.returncode == 0, r.stderr
    assert check(json.loads(r.stdout)), r.stdout


def test_compile_run_inspect_bench_json_on_an_artifact(artifact, tmp_path, capfd):
    r = in_process(capfd, "inspect", artifact, "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["kind"] == "artifact" and meta["target"] == "cpu" and meta["bytes"] == os.path.getsize(artifact)
    assert meta["inputs"] == [{"name": "x", "shape": ["N", 3, 32, 32], "dtype": "float32"}]
    assert meta["optc_version"] == optc.__version__ and meta["opt_level"] == 2
    text = in_process(capfd, "inspect", artifact)
    assert text.returncode == 0 and "optc artifact for cpu" in text.stdout and "[N,3,32,32]" in text.stdout
    one_line_error(in_process(capfd, "inspect", f"{artifact}.json"), "is the metadata of an artifact; give the library")
    one_line_error(in_process(capfd, "inspect", tmp_path / "none.so"), "no such artifact")
    r = in_process(capfd, "bench", TINY, "--artifact", artifact, "--repeat", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["optc_ms"] > 0 and d["onnxruntime_ms"] > 0 and d["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_compile_json(tmp_path):
    r = optc_cli("compile", TINY, "-o", tmp_path / "m.so", "-q", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["output"] == str(tmp_path / "m.so") and d["build"]["kernels"] > 0 and os.path.isfile(d["metadata"])


# -- optc run: a model or an artifact -------------------------------------------------------------------------


def test_run_onnx_matches_onnxruntime(tmp_path):
    x = x_input(2)
    np.savez(tmp_path / "x.npz", x=x)
    r = optc_cli("run", TINY, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    assert "probs: float32[2, 10]" in r.stdout
    want = ort.InferenceSession(TINY, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = read_npz(tmp_path / "y.npz")
    assert list(got) == ["probs"]
    np.testing.assert_allclose(got["probs"], want, rtol=1e-5, atol=1e-6)


def test_run_artifact_matches_run_onnx(artifact, tmp_path, capfd):
    np.savez(tmp_path / "x.npz", x=x_input(3))
    for path, out in ((artifact, "a.npz"), (TINY, "b.npz")):
        r = in_process(capfd, "run", path, "--inputs", tmp_path / "x.npz", "-o", tmp_path / out)
        assert r.returncode == 0, r.stderr
    a, b = read_npz(tmp_path / "a.npz")["probs"], read_npz(tmp_path / "b.npz")["probs"]
    assert a.shape == (3, 10)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_run_random_inputs_follow_dim_and_seed(tmp_path):
    outs = []
    for seed in (0, 0, 1):
        r = optc_cli("run", TINY, "--dim", "N=2", "--seed", seed, "-o", tmp_path / f"y{len(outs)}.npz", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["inputs"]["arrays"] == [{"name": "x", "dtype": "float32", "shape": [2, 3, 32, 32]}]
        outs.append(read_npz(tmp_path / f"y{len(outs)}.npz")["probs"])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


# -- one .npz reader, no pickle ---------------------------------------------------------------------------------


class _Tripwire:
    """Unpickling it creates a file: proof that something unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_read_npz_round_trips_and_never_unpickles(tmp_path):
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False]),
              "s": np.array(7, np.int64), "e": np.zeros((0, 4), np.float16)}
    np.savez(tmp_path / "a.npz", **arrays)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    for name in ("a.npz", "c.npz"):
        got = read_npz(tmp_path / name)
        assert set(got) == set(arrays)
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    trip = tmp_path / "unpickled"
    obj = np.empty(1, dtype=object)
    obj[0] = _Tripwire(str(trip))
    np.savez(tmp_path / "obj.npz", x=obj)
    with pytest.raises(OptcError, match=r"inputs '.*obj.npz' array 'x' holds Python objects \(a pickle\)"):
        read_npz(tmp_path / "obj.npz")
    assert not trip.exists()


@pytest.mark.parametrize("kind", ["object array", "corrupt", "missing", "directory", "truncated"])
def test_bad_npz_is_one_line_in_run_and_verify(kind, tmp_path, capfd):
    path = tmp_path / "x.npz"
    if kind == "object array":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
        fragment = "holds Python objects"
    elif kind == "corrupt":
        path.write_bytes(b"not a zip at all")
        fragment = "is not a valid .npz file"
    elif kind == "missing":
        fragment = "does not exist"
    elif kind == "directory":
        path.mkdir()
        fragment = "is not a file"
    else:
        np.savez(path, x=x_input())
        path.write_bytes(path.read_bytes()[:200])
        fragment = "not a valid .npz file"
    for argv in (["run", TINY, "--inputs", path], ["verify", TINY, TINY, "--inputs", path]):
        one_line_error(in_process(capfd, *argv), fragment)


def test_no_other_npz_reader_or_pickle_in_the_package():
    """`np.load` (which can unpickle) and allow_pickle=True appear nowhere in optc's own code."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", ".venv", "build") or rel.parts[0].startswith("."):
            continue
        text = path.read_text()
        if re.search(r"\bnp\.load\(|numpy\.load\(|allow_pickle\s*=\s*True", text):
            offenders.append(str(rel))
    assert not offenders, offenders


# -- one check of input names ---------------------------------------------------------------------------------


def test_check_input_names_messages():
    check_input_names(["a", "b"], ["b", "a"])
    with pytest.raises(OptcError, match=r"^f: unknown input 'q' \(expected inputs: a, b\)$"):
        check_input_names(["a", "q", "b"], ["a", "b"], "f")
    with pytest.raises(OptcError, match=r"^missing input 'b' \(expected inputs: a, b\)$"):
        check_input_names(["a"], ["a", "b"])


def test_extra_and_missing_inputs_are_rejected_alike_everywhere(artifact, tmp_path, capfd):
    np.savez(tmp_path / "extra.npz", x=x_input(), q=np.zeros(2, np.float32))
    np.savez(tmp_path / "none.npz", y=np.zeros(2, np.float32))
    for npz, fragment in (("extra.npz", "unknown input 'q' (expected inputs: x)"),
                          ("none.npz", "unknown input 'y' (expected inputs: x)")):
        for argv in (["run", TINY], ["run", artifact], ["verify", TINY, artifact]):
            one_line_error(in_process(capfd, *argv, "--inputs", tmp_path / npz), fragment)
    feeds = {"x": x_input(), "q": np.zeros(2, np.float32)}
    for call in (lambda: optc.verify(TINY, artifact, feeds), lambda: optc.runtime.load(artifact).run(feeds)):
        with pytest.raises(OptcError, match=r"unknown input 'q' \(expected inputs: x\)"):
            call()
    with pytest.raises(OptcError, match=r"missing input 'x' \(expected inputs: x\)"):
        optc.verify(TINY, TINY, {})


# -- one random-inputs generator -------------------------------------------------------------------------------


def test_random_inputs_shapes_dtypes_ranges_and_seed():
    specs = [InputSpec("f", np.dtype(np.float32), ("N", 3)), InputSpec("i", np.dtype(np.int64), (None, 2)),
             InputSpec("u", np.dtype(np.uint8), (4,)), InputSpec("b", np.dtype(np.bool_), ("M",))]
    a = random_inputs(specs, dims={"N": 5}, seed=3)
    assert {k: (v.dtype, v.shape) for k, v in a.items()} == {
        "f": (np.float32, (5, 3)), "i": (np.int64, (1, 2)), "u": (np.uint8, (4,)), "b": (np.bool_, (1,))}
    assert a["f"].min() >= -1 and a["f"].max() < 1 and set(np.unique(a["i"])) <= {0, 1}
    b = random_inputs(specs, dims={"N": 5}, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = random_inputs(specs, dims={"N": 5}, seed=4)
    assert not np.array_equal(a["f"], c["f"])
    wide = random_inputs(specs[:3], default_dim=400, float_range=None, int_range=None, seed=0)
    assert wide["f"].shape == (400, 3) and np.abs(wide["f"]).max() > 1  # standard normal
    assert wide["i"].min() < 0 and set(np.unique(wide["i"])) <= set(range(-5, 6))
    assert set(np.unique(wide["u"])) <= set(range(10))


def test_random_inputs_refuses_non_numeric_types():
    with pytest.raises(OptcError, match="input 's' has type seq\\(tensor\\(float\\)\\); random values cannot be made"):
        random_inputs([InputSpec("s", None, (), "seq(tensor(float))")])
    with pytest.raises(OptcError, match="input 't' has type <U1"):
        random_inputs([InputSpec("t", np.dtype("U1"), (1,))])


def test_one_random_inputs_generator_in_the_package():
    """Random inputs are made in optc/inputs.py only: no other `default_rng` feeding models in optc's own code."""
    defs = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "examples", ".venv", "build") or rel.parts[0].startswith("."):
            continue
        for m in re.finditer(r"^def (random_\w+|\w*random_(?:feeds|inputs)\w*)\(", path.read_text(), re.M):
            defs.append(f"{rel}:{m.group(1)}")
    assert sorted(defs) == ["inputs.py:random_inputs", "rewrites/rules/_testing.py:random_feeds"], defs


# -- -o extensions -----------------------------------------------------------------------------------------------


BAD_OUTPUTS = {
    "convert": (["convert", TINY, "-o", "{tmp}/m.pb"], "output '{tmp}/m.pb' must end with .onnx"),
    "quantize": (["quantize", DIGITS, "-o", "{tmp}/q.bin", "--dynamic"], "must end with .onnx"),
    "quantize report": (["quantize", DIGITS, "-o", "{tmp}/q.onnx", "--dynamic", "--report", "{tmp}/r.txt"],
                        "output '{tmp}/r.txt' must end with .json"),
    "compile": (["compile", TINY, "-o", "{tmp}/m.dll"], "must end with .so"),
    "run": (["run", TINY, "-o", "{tmp}/y.txt"], "must end with .npz"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_output_extensions_are_checked_before_any_work(case, tmp_path, capfd):
    argv, fragment = BAD_OUTPUTS[case]
    one_line_error(in_process(capfd, *(a.format(tmp=tmp_path) for a in argv)), fragment.format(tmp=tmp_path))
    assert os.listdir(tmp_path) == []


def test_right_extensions_are_case_insensitive(tmp_path):
    r = optc_cli("convert", TINY, "-o", tmp_path / "M.ONNX")
    assert r.returncode == 0, r.stderr


# -- outputs keep the user's umask ------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_get_the_umask_mode(mask, tmp_path):
    code = (f"import os, sys; os.umask({mask:#o}); from optc.tools.cli import main; sys.exit(main(sys.argv[1:]))")
    for argv, out in ((["convert", TINY, "-o", tmp_path / "c.onnx"], "c.onnx"),
                      (["run", TINY, "-o", tmp_path / "y.npz"], "y.npz")):
        r = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / out).stat().st_mode & 0o777 == 0o666 & ~mask


# -- the Python API ----------------------------------------------------------------------------------------------


def test_api_verify_and_bench_and_export(artifact, tmp_path):
    x = x_input(2)
    comp = optc.verify(TINY, artifact, {"x": x})
    assert comp.equal and [o.name for o in comp.outputs] == ["probs"] and comp.outputs[0].max_abs < 1e-4
    np.savez(tmp_path / "x.npz", x=x)
    assert optc.verify(artifact, TINY, tmp_path / "x.npz").equal
    strict = optc.verify(TINY, artifact, {"x": x}, rtol=0, atol=0)  # compiled kernels round differently
    assert strict.equal == (strict.outputs[0].max_abs == 0)
    with pytest.raises(OptcError, match="inputs must be a path to an .npz file or a mapping"):
        optc.verify(TINY, TINY, [x])
    with pytest.raises(OptcError, match="--threads must be at least 1"):
        optc.bench(TINY, artifact=artifact, threads=0)
    d = optc.bench(TINY, artifact=artifact, repeat=1, warmup=0)  # one round: its ratio is the medians' ratio
    assert d["optc_ms"] > 0 and d["ratio"] == pytest.approx(d["optc_ms"] / d["onnxruntime_ms"])
    copy = optc.runtime.load(artifact).export(tmp_path / "copy.so")  # a loaded module is copied
    assert json.loads(Path(f"{copy}.json").read_text())["library"] == "copy.so"
    np.testing.assert_array_equal(optc.runtime.load(copy).run({"x": x})["probs"],
                                  optc.runtime.load(artifact).run({"x": x})["probs"])
    with pytest.raises(OptcError, match="must end with .so"):
        optc.runtime.load(artifact).export(tmp_path / "copy.bin")
    with pytest.raises(OptcError, match="is the loaded library itself"):
        optc.runtime.load(artifact).export(artifact)


@pytest.mark.slow
def test_api_export_of_a_compiled_module(tmp_path):
    module = optc.compile(TINY)
    path = module.export(tmp_path / "m.so")
    x = x_input(2)
    np.testing.assert_array_equal(optc.runtime.load(path).run({"x": x})["probs"], module.run({"x": x})["probs"])
    assert optc.verify(TINY, path, {"x": x}).equal
    with pytest.raises(OptcError, match="does not exist"):
        module.export(tmp_path / "nodir" / "m.so")


# -- found by a fresh-user attack ------------------------------------------------------------------------------


def test_outputs_never_overwrite_an_input_file(tmp_path, capfd):
    np.savez(tmp_path / "x.npz", x=x_input())
    one_line_error(in_process(capfd, "run", TINY, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "x.npz"),
                   "is the input")
    one_line_error(in_process(capfd, "compare", TINY, "reference", "--inputs", tmp_path / "x.npz",
                              "--save-outputs", tmp_path / "x.npz"), "is the input")
    one_line_error(in_process(capfd, "compare", TINY, "reference", "--save-inputs", tmp_path / "s.npz",
                              "--save-outputs", tmp_path / "s.npz"), "name the same file")
    assert sorted(np.load(tmp_path / "x.npz").files) == ["x"]  # untouched


def test_an_output_does_not_overwrite_the_input_models_external_data(tmp_path, capfd):
    """`optc optimize m.onnx -o w.onnx` writes w.onnx.data: refused when m.onnx keeps its weights there."""
    import onnx

    model = optc.to_onnx(optc.load(DIGITS))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.onnx.data", size_threshold=0)
    before = (tmp_path / "w.onnx.data").read_bytes()
    one_line_error(in_process(capfd, "optimize", tmp_path / "m.onnx", "-o", tmp_path / "w.onnx"),
                   "which the input model")
    assert (tmp_path / "w.onnx.data").read_bytes() == before
    assert in_process(capfd, "optimize", tmp_path / "m.onnx", "-o", tmp_path / "other.onnx").returncode == 0


def test_dims_that_do_not_exist_or_do_not_fit_are_one_line(tmp_path, capfd):
    one_line_error(in_process(capfd, "run", TINY, "--dim", "Q=3"), "no input has a dimension named 'Q'")
    one_line_error(in_process(capfd, "run", TINY, "--dim", "N=99999999999"), "do not fit in the memory")


def test_no_abbreviated_options(capsys):
    """An option that is only the start of another is not taken as that one: `--symmetric` was read as
    `--symmetric-activations` and refused with that option's error (which names a flag the user never gave)."""
    from optc.tools.cli import main

    assert main(["quantize", "m.onnx", "-o", "q.onnx", "--weight-only", "int4", "--symmetric"]) == 2
    assert capsys.readouterr().err.strip() == \
        "optc: error: unrecognized arguments: --symmetric (see 'optc --help')"
