"""Target control: --mcpu, any TVM target (dict / JSON / old string form), cuda[:sm_XX], the target recorded in the
artifact and the refusal of a library this CPU cannot run, --cc, --emit, --input-shape, --db alone, and CUDA kernels
compiled with nvcc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

from optc import runtime  # noqa: E402
from optc.codegen import targets  # noqa: E402
from optc.codegen.compile import compile_to_file  # noqa: E402
from optc.errors import OptcError  # noqa: E402
from optc.tools.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CNN = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
TINY_BERT = os.path.join(ROOT, "tests", "data", "tiny_bert_dynamo.onnx")
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _cli_error(capsys, *argv: str) -> str:
    """Run `optc ARGV` in this process; it must exit 2 with one line on stderr, returned."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: ") and "Traceback" not in err, err
    return lines[0]


def _cli_ok(capsys, *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _feed(batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def _ort(path: str, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)


def _missing_isa(cpu: str) -> list[str]:
    """The instruction-set features of LLVM's `cpu` that this host's /proc/cpuinfo lacks."""
    flags = targets.host_cpu_flags()
    feats = targets.llvm_features(targets.resolve_target("cpu", mcpu=cpu))
    return [f for f in feats if f in targets.X86_FLAGS and not any(h in flags for h in targets.X86_FLAGS[f])]


# ----------------------------------------------------------------------------- --mcpu and target forms
@pytest.mark.parametrize("cpu", [*targets.PORTABLE_CPUS, "skylake-avx512", "znver4"])
def test_mcpu_names(cpu):
    target = targets.resolve_target("cpu", mcpu=cpu)
    assert str(target.attrs["mcpu"]) == cpu and targets.describe_target(target) == f"cpu ({cpu})"


def test_portable_levels_differ_in_features():
    v2, v3, v4 = (set(targets.llvm_features(targets.resolve_target("cpu", mcpu=c)))
                  for c in ("x86-64-v2", "x86-64-v3", "x86-64-v4"))
    assert "sse4.2" in v2 and "avx2" not in v2
    assert {"avx2", "fma", "bmi2"} <= v3 and "avx512f" not in v3
    assert {"avx512f", "avx512bw", "avx512vl"} <= v4


def test_mcpu_native_is_this_cpu_checked_against_cpuinfo():
    target = targets.resolve_target("cpu", mcpu="native")
    assert str(target.attrs["mcpu"]) == targets.host_cpu_name()
    assert targets.resolve_target("cpu").attrs["mcpu"] == target.attrs["mcpu"]  # the default cpu target is native
    # whatever LLVM's name implies, the features the code may use are the ones /proc/cpuinfo lists
    flags = targets.host_cpu_flags()
    features = set(targets.llvm_features(target))
    for feat, names in targets.X86_FLAGS.items() if targets._machine() == "x86_64" else ():
        assert (feat in features) == any(n in flags for n in names), feat


def test_native_corrects_llvm_host_detection(monkeypatch):
    """LLVM names a Sapphire Rapids `rocketlake` (no AMX, no avx512bf16), and a VM may hide AVX-512 from a CPU that
    LLVM names skylake-avx512: native adds / removes those features from /proc/cpuinfo."""
    monkeypatch.setattr(targets, "_machine", lambda: "x86_64")
    spr_flags = set(targets.host_cpu_flags()) | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
                                                 "avx512_bf16", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}
    monkeypatch.setattr(targets, "host_cpu_name", lambda: "rocketlake")
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: frozenset(spr_flags))
    name, mattr = targets.native_cpu()
    assert name == "rocketlake" and {"+amx-tile", "+amx-int8", "+amx-bf16", "+avx512bf16"} <= set(mattr)
    feats = set(targets.llvm_features(targets.resolve_target("cpu", mcpu="native")))
    assert {"amx-tile", "amx-int8", "avx512bf16"} <= feats

    vm_flags = {f for f in targets.host_cpu_flags() if not f.startswith("avx512")} | {"avx2", "avx", "fma"}
    monkeypatch.setattr(targets, "host_cpu_name", lambda: "skylake-avx512")
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: frozenset(vm_flags))
    _, mattr = targets.native_cpu()
    assert "-avx512f" in mattr
    assert "avx512f" not in targets.llvm_features(targets.resolve_target("cpu", mcpu="native"))


def test_arm64_mcpu():
    target = targets.resolve_target("arm64", mcpu="neoverse-n1")
    assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu" and str(target.attrs["mcpu"]) == "neoverse-n1"
    assert {"neon", "dotprod"} <= set(targets.llvm_features(target))
    with pytest.raises(OptcError, match="unknown --mcpu 'znver4' for aarch64"):
        targets.resolve_target("arm64", mcpu="znver4")
    if targets._machine() != "aarch64":
        with pytest.raises(OptcError, match="--mcpu native names this .* machine's CPU, not an aarch64 one"):
            targets.resolve_target("arm64", mcpu="native")


def test_unknown_mcpu_did_you_mean(capsys):
    with pytest.raises(OptcError, match=r"unknown --mcpu 'skylak' for x86_64 \(did you mean 'skylake'\?\)"):
        targets.resolve_target("cpu", mcpu="skylak")
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", "/tmp/optc-targets-never.so", "--mcpu", "znver9")
    assert "unknown --mcpu 'znver9' for x86_64 (did you mean 'znver" in line
    assert not os.path.exists("/tmp/optc-targets-never.so")


@pytest.mark.parametrize("spec", [
    {"kind": "llvm", "mcpu": "znver4"},
    '{"kind": "llvm", "mcpu": "znver4"}',
    "llvm -mcpu=znver4",
], ids=["dict", "json", "string"])
def test_any_tvm_target(spec):
    target = targets.resolve_target(spec)
    assert target.kind.name == "llvm" and str(target.attrs["mcpu"]) == "znver4"


def test_old_string_form_translates_every_option_type():
    target = targets.resolve_target("llvm -mcpu=skylake -mattr=+avx2,+fma -num-cores=3 -fast-math")
    assert str(target.attrs["mcpu"]) == "skylake" and [str(a) for a in target.attrs["mattr"]] == ["+avx2", "+fma"]
    assert int(target.attrs["num-cores"]) == 3 and bool(target.attrs["fast-math"]) is True
    assert targets.parse_target_string("llvm -mtriple=aarch64-linux-gnu") == {"kind": "llvm",
                                                                              "mtriple": "aarch64-linux-gnu"}


@pytest.mark.parametrize(("spec", "fragment"), [
    ("{bad", "--target is not valid JSON"),
    ("[1]", "unsupported target '[1]'"),
    ('{"kind": "llvm", "bogus": 1}', "invalid target {\"kind\": \"llvm\", \"bogus\": 1}: Unknown config option 'bogus'"),
    ('{"kind": "nope"}', "invalid target {\"kind\": \"nope\"}: Target kind \"nope\" is not defined"),
    ('{"kind": "llvm", "mcpu": "bogus"}', "unknown --mcpu 'bogus'"),
    ("llvm -mcpuu=skylake", "target 'llvm' has no option '-mcpuu' (did you mean 'mcpu'?)"),
    ("llvm -num-cores=two", "target option '-num-cores=two': not an integer"),
    ("llvm mcpu=skylake", "target option 'mcpu=skylake' must look like -key=value"),
    ("lvm -mcpu=skylake", "unsupported target kind 'lvm' (did you mean 'llvm'?)"),
    ("cuda:86", "unknown CUDA architecture '86'"),
    ("tpu", "unsupported target 'tpu' (choose from cpu, cuda, cuda:sm_XX, arm64, or a TVM target as JSON"),
])
def test_bad_targets_are_one_line(capsys, spec, fragment):
    with pytest.raises(OptcError) as err:
        targets.resolve_target(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    if spec == "tpu":  # and the CLI: one line, exit 2, nothing written
        assert fragment in _cli_error(capsys, "compile", TINY_CNN, "-o", "/tmp/optc-targets-never.so", "--target", spec)


def test_mcpu_only_for_llvm_targets():
    with pytest.raises(OptcError, match="--mcpu applies to cpu and arm64 targets"):
        targets.resolve_target("cuda", mcpu="skylake")
    with pytest.raises(OptcError, match="--mcpu applies to llvm targets, not 'cuda'"):
        targets.resolve_target({"kind": "cuda", "arch": "sm_80"}, mcpu="skylake")
    # --mcpu with a JSON llvm target sets its mcpu
    assert str(targets.resolve_target('{"kind": "llvm"}', mcpu="x86-64-v3").attrs["mcpu"]) == "x86-64-v3"
    # ... or repeats it; one that contradicts the target's own mcpu is refused, not silently preferred
    assert str(targets.resolve_target("llvm -mcpu=skylake", mcpu="skylake").attrs["mcpu"]) == "skylake"
    with pytest.raises(OptcError, match="--mcpu znver4 contradicts the target's own mcpu 'skylake'"):
        targets.resolve_target('{"kind": "llvm", "mcpu": "skylake"}', mcpu="znver4")


def test_cuda_targets():
    explicit = targets.resolve_target("cuda:sm_86")
    assert str(explicit.attrs["arch"]) == "sm_86" and targets.describe_target(explicit, "cuda:sm_86") == "cuda (sm_86)"
    default = targets.resolve_target("cuda")
    arch = targets.gpu_arch()
    if arch is None:
        assert str(default.attrs["arch"]) == targets.DEFAULT_CUDA_ARCH
        assert targets.describe_target(default, "cuda") == "cuda (sm_75: no GPU found, default)"
    else:
        assert str(default.attrs["arch"]) == arch
        assert targets.describe_target(default, "cuda") == f"cuda ({arch}: detected)"


# ----------------------------------------------------------------------------- metadata and the refusal
@pytest.fixture(scope="module")
def v2_artifact(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("v2") / "v2.so")
    compile_to_file(TINY_CNN, path, "cpu", mcpu="x86-64-v2")
    return path


def test_metadata_records_the_target_as_json(v2_artifact):
    meta = json.loads(open(v2_artifact + ".json").read())
    info = meta["target_info"]
    assert info["kind"] == "llvm" and info["mcpu"] == "x86-64-v2" and info["mtriple"].startswith("x86_64")
    assert info["features"] == sorted(info["features"]) and all(isinstance(f, str) for f in info["features"])
    assert "sse4.2" in info["features"] and "avx2" not in info["features"]
    assert meta["target_spec"]["mcpu"] == "x86-64-v2" and meta["target_spec"]["keys"] == ["cpu"]  # JSON, no reprs
    cuda = targets.target_metadata(targets.resolve_target("cuda:sm_80"))
    assert cuda["kind"] == "cuda" and cuda["arch"] == "sm_80" and cuda["host"]["kind"] == "llvm"
    json.dumps(cuda)


def test_portable_library_loads_and_matches_onnxruntime(v2_artifact):
    feed = _feed(2)
    got = runtime.load(v2_artifact).run(feed)
    want = _ort(TINY_CNN, feed)
    np.testing.assert_allclose(got["probs"], want[0], rtol=1e-4, atol=1e-5)


def test_library_for_missing_instructions_is_refused(tmp_path):
    """A library built for a CPU with instructions this one lacks is refused by `optc run` / runtime.load with one
    line (not a SIGILL mid-run)."""
    if targets._machine() != "x86_64":
        pytest.skip("the x86 refusal case needs an x86 host")
    cpu = next(c for c in ("sapphirerapids", "graniterapids", "diamondrapids") if _missing_isa(c))
    missing = _missing_isa(cpu)
    path = str(tmp_path / "far.so")
    compile_to_file(TINY_CNN, path, "cpu", mcpu=cpu)
    with pytest.raises(OptcError, match=f"built for mcpu={cpu} with instructions this CPU lacks: "
                                        f"{', '.join(missing)}; rebuild it with --mcpu native"):
        runtime.load(path)
    proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", "run", path], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "instructions this CPU lacks" in proc.stderr


def test_refusal_is_conservative(v2_artifact, monkeypatch):
    meta = json.loads(open(v2_artifact + ".json").read())
    targets.check_runs_here({k: v for k, v in meta.items() if k != "target_info"})  # older artifacts: no check
    tuning_only = {**meta, "target_info": {**meta["target_info"], "features": ["macrofusion", "fast-gather", "sse2"]}}
    targets.check_runs_here(tuning_only)  # LLVM tuning flags and baseline features are never compared
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: frozenset())
    far = {**meta, "target_info": {**meta["target_info"], "features": ["avx512f"]}}
    targets.check_runs_here(far)  # no /proc/cpuinfo: nothing refused


def test_library_for_another_architecture_is_refused(v2_artifact):
    meta = json.loads(open(v2_artifact + ".json").read())
    other = "aarch64" if targets._machine() == "x86_64" else "x86_64"
    meta["target_info"] = {**meta["target_info"], "mtriple": f"{other}-linux-gnu"}
    with pytest.raises(OptcError, match=f"was built for {other} \\({other}-linux-gnu\\); this machine is"):
        targets.check_runs_here(meta, "m.so")


# ----------------------------------------------------------------------------- --cc and --emit
def test_cc_links_and_is_checked_before_the_build(tmp_path, capsys, monkeypatch):
    import optc.codegen.compile as compile_mod

    out = _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.so"), "--cc", "g++", "-q")
    assert "wrote" in out and runtime.load(tmp_path / "m.so").run(_feed())["probs"].shape == (1, 10)

    def no_lowering(*_a, **_k):
        raise AssertionError("lowered before the compiler was checked")

    monkeypatch.setattr(compile_mod, "lower", no_lowering)
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "x.so"), "--cc", "no-such-g++")
    assert "--cc 'no-such-g++': no such compiler" in line
    # arm64 without a cross compiler: found before lowering too
    monkeypatch.setattr(targets, "ARM64_CROSS_COMPILERS", ("no-such-aarch64-linux-gnu-g++",))
    monkeypatch.setattr(targets, "is_cross_target", lambda _t: True)
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "x.so"), "--target", "arm64")
    assert "no aarch64 cross compiler found (tried no-such-aarch64-linux-gnu-g++; install g++-aarch64-linux-gnu" in line
    assert not list(tmp_path.glob("x.so*"))


def test_foreign_triple_needs_a_cross_compiler_before_the_build(tmp_path, capsys, monkeypatch):
    import optc.codegen.compile as compile_mod

    riscv = targets.resolve_target('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}')
    assert targets.linker(riscv, "g++")  # named: the user's choice
    assert targets.linker(targets.resolve_target('{"kind": "llvm", "mtriple": "x86_64-linux-gnu"}')) is None
    with pytest.raises(OptcError, match=r"cannot link a library for riscv64 \(riscv64-linux-gnu\) with this"):
        targets.linker(riscv)
    monkeypatch.setattr(compile_mod, "lower", lambda *_a, **_k: pytest.fail("lowered before the linker check"))
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "r.so"), "--target",
                      '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}')
    assert "give --cc COMPILER (a cross compiler), or write the objects with --emit tar" in line
    assert not list(tmp_path.iterdir())


def test_emit_llvm_asm_tar(tmp_path, capsys):
    _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "v3.ll"), "--emit", "llvm", "--mcpu", "x86-64-v3", "-q")
    ir = (tmp_path / "v3.ll").read_text()
    assert "target triple = \"x86_64" in ir and "define " in ir and '"target-cpu"="x86-64-v3"' in ir
    _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "v2.s"), "--emit", "asm", "--mcpu", "x86-64-v2", "-q")
    _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "v3.s"), "--emit", "asm", "--mcpu", "x86-64-v3", "-q")
    v2, v3 = (tmp_path / "v2.s").read_text(), (tmp_path / "v3.s").read_text()
    assert "%xmm" in v2 and "%ymm" not in v2 and "vfmadd" not in v2  # SSE only
    assert "%ymm" in v3 and "vfmadd" in v3  # AVX2 + FMA
    _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.tar"), "--emit", "tar", "-q")
    with tarfile.open(tmp_path / "m.tar") as tar:
        names = tar.getnames()
    assert names and all(n.endswith(".o") for n in names)
    assert not list(tmp_path.glob("*.json"))  # no metadata without a library


@pytest.mark.parametrize(("argv", "fragment"), [
    (["-o", "/tmp/optc-targets-never.so", "--emit", "llvm"], "output '/tmp/optc-targets-never.so' must end with .ll"),
    (["-o", "/tmp/optc-targets-never.ll"], "must end with .so"),
    (["-o", "/tmp/optc-targets-never.s", "--emit", "asm", "--cc", "g++"], "--cc links a library; --emit asm links"),
    (["-o", "/tmp/optc-targets-never.ll", "--emit", "llvm", "--target", "cuda:sm_80"],
     "--emit llvm writes the code of llvm targets (cpu, arm64); for cuda use --emit tar"),
])
def test_emit_errors(capsys, argv, fragment):
    assert fragment in _cli_error(capsys, "compile", TINY_CNN, *argv)
    assert not os.path.exists(argv[1])


# ----------------------------------------------------------------------------- --input-shape
def test_input_shape_fixes_symbolic_dims(tmp_path, capsys):
    path = tmp_path / "b2.so"
    _cli_ok(capsys, "compile", TINY_CNN, "-o", str(path), "--input-shape", "x:2x3x32x32", "-q")
    meta = json.loads((tmp_path / "b2.so.json").read_text())
    assert meta["inputs"][0]["shape"] == [2, 3, 32, 32] and meta["outputs"][0]["shape"] == [2, 10]
    module = runtime.load(path)
    feed = _feed(2)
    np.testing.assert_allclose(module.run(feed)["probs"], _ort(TINY_CNN, feed)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(OptcError, match=r"input 'x': expected float32 \[2,3,32,32\], got float32 \[3,3,32,32\]"):
        module.run(_feed(3))


def _two_inputs(tmp_path) -> str:
    """y = a @ w + b: a [batch, 4], b [batch, 3] share the symbolic dim 'batch'."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    path = str(tmp_path / "two.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_input_shape_binds_a_dim_shared_by_inputs(tmp_path):
    from optc.codegen.input_shapes import fix_input_shapes
    from optc.ir import load

    model = load(_two_inputs(tmp_path))
    assert fix_input_shapes(model, {"a": (5, 4)}) == {"batch": 5}
    assert [tuple(v.type.shape) for v in model.graph.inputs] == [(5, 4), (5, 3)]
    assert tuple(model.graph.outputs[0].type.shape) == (5, 3)
    with pytest.raises(OptcError, match="--input-shape b: dim 'batch' is 2 in input 'a', got 3"):
        fix_input_shapes(load(_two_inputs(tmp_path)), {"a": (2, 4), "b": (3, 3)})


@pytest.mark.parametrize(("spec", "fragment"), [
    ("x", "--input-shape expects NAME:DIMS such as input_ids:1x128, got 'x'"),
    ("x:1xAx32x32", "--input-shape x: 'A' is not a size, an integer >= 0"),
    ("x:-1x3x32x32", "--input-shape x: '-1' is not a size, an integer >= 0"),
    ("x:1x3x99999999999999999999x32", "--input-shape x: 1x3x99999999999999999999x32 has more than 2**63 - 1"),
    ("x:4294967296x3x4294967296x1", "--input-shape x: 4294967296x3x4294967296x1 has more than 2**63 - 1"),
    ("xx:1x3x32x32", "--input-shape: the model has no input 'xx' (did you mean 'x'?) (inputs: x)"),
    ("x:1x3x32", "--input-shape x: the model's input has rank 4 float32[N,3,32,32], got 3 dims"),
    ("x:1x4x32x32", "--input-shape x: the model fixes this input to float32[N,3,32,32], got 1x4x32x32"),
])
def test_input_shape_errors(capsys, spec, fragment):
    assert fragment in _cli_error(capsys, "compile", TINY_CNN, "-o", "/tmp/optc-targets-never.so",
                                  "--input-shape", spec)


def test_input_shape_large_but_indexable():
    from optc.codegen.input_shapes import parse_input_shape

    assert parse_input_shape("x:3037000499x3037000499") == ("x", (3037000499, 3037000499))  # < 2**63 elements


def test_input_shape_given_twice(capsys):
    assert "--input-shape x is given twice" in _cli_error(
        capsys, "compile", TINY_CNN, "-o", "/tmp/optc-targets-never.so", "--input-shape", "x:1x3x32x32",
        "--input-shape", "x:2x3x32x32")


def test_symbolic_kernels_are_counted_as_skipped():
    """Tuning cannot measure kernels with symbolic shapes: extract_tasks counts them (the summary names them), and
    --input-shape makes them tunable."""
    from optc.codegen.input_shapes import fix_input_shapes
    from optc.codegen.tuning import extract_tasks
    from optc.ir import load
    from optc.lowering import lower

    symbolic: dict = {}
    assert extract_tasks(lower(load(TINY_CNN)), None, "cpu", skipped=symbolic) == []
    assert symbolic["symbolic"] > 0
    model = load(TINY_CNN)
    fix_input_shapes(model, {"x": (1, 3, 32, 32)})
    fixed: dict = {}
    assert len(extract_tasks(lower(model), None, "cpu", skipped=fixed)) == symbolic["symbolic"]
    assert fixed["symbolic"] == 0


# ----------------------------------------------------------------------------- --db alone, tuning targets
def test_db_alone_needs_an_existing_database(tmp_path, capsys):
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.so"), "--db", str(tmp_path / "nodb"))
    assert "--db " in line and "no such directory (without --tune, --db applies an existing database)" in line
    (tmp_path / "empty").mkdir()
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.so"), "--db", str(tmp_path / "empty"))
    assert f"no tuning database in '{tmp_path / 'empty'}' (tune into it first: --tune --db" in line
    assert not list((tmp_path / "empty").iterdir()) and not (tmp_path / "m.so").exists()


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_tune_needs_a_trial(tmp_path, capsys, trials):
    # --tune --trials 0 used to apply the (missing) database and say "tune into it first: --tune --db"
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.so"), "--tune", "--trials", trials,
                      "--db", str(tmp_path / "db"))
    assert f"--trials must be >= 1 with --tune, got {trials}" in line
    assert not (tmp_path / "db").exists() and not (tmp_path / "m.so").exists()


@pytest.mark.slow
def test_db_alone_applies_tuned_records(tmp_path, capsys):
    model, db = _two_inputs(tmp_path), tmp_path / "db"
    out = _cli_ok(capsys, "compile", model, "-o", str(tmp_path / "t.so"), "--tune", "--trials", "4", "--db", str(db),
                  "-q")
    # main's symbolic kernels cannot be measured; the batch-1 entry's static copies are tuned instead
    assert "tuning ran 4 new trials on 1 of 1 tasks" in out and \
        "kernels with symbolic shapes were not tuned (main's: the static batch entries' run at their sizes)" in out
    out = _cli_ok(capsys, "compile", model, "-o", str(tmp_path / "n.so"), "--static-batch", "none", "--tune",
                  "--trials", "4", "--db", str(tmp_path / "db_none"), "-q")
    assert "tuning ran 0 new trials on 0 of 0 tasks" in out and \
        "kernels with symbolic shapes were not tuned (fix them with --input-shape" in out
    out = _cli_ok(capsys, "compile", model, "-o", str(tmp_path / "t.so"), "--input-shape", "a:2x4", "--tune",
                  "--trials", "4", "--db", str(db), "-q")
    assert "tuning ran" in out and "symbolic" not in out
    # static shapes: the tuned build timed against the untuned one on this CPU, the faster written
    assert "; end to end the tuned build ran " in out and "x the untuned one's time: " in out
    report = json.loads(_cli_ok(capsys, "compile", model, "-o", str(tmp_path / "a.so"), "--input-shape", "a:2x4",
                                "--db", str(db), "-q", "--json"))
    assert report["build"]["tuned"] >= 1 and report["database"] == str(db) and "tuning" not in report
    assert report["tuning_check"]["kept"] in ("tuned", "untuned") and report["tuning_check"]["ratio"] > 0
    feed = {"a": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32),
            "b": np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_allclose(runtime.load(tmp_path / "a.so").run(feed)["y"], _ort(model, feed)[0], rtol=1e-5)


def test_tuning_a_target_this_machine_cannot_run_is_refused_first(tmp_path, capsys, monkeypatch):
    import optc.codegen.compile as compile_mod

    monkeypatch.setattr(compile_mod, "lower", lambda *_a, **_k: pytest.fail("lowered before the check"))
    monkeypatch.setattr(targets, "is_cross_target", lambda _t: True)
    line = _cli_error(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "m.so"), "--target", "cuda:sm_80",
                      "--tune", "--db", str(tmp_path / "db"))
    assert "cannot tune for cuda (sm_80): no CUDA GPU here; measure on a device with --rpc HOST:PORT:KEY" in line
    assert not (tmp_path / "db").exists()


# ----------------------------------------------------------------------------- CUDA kernels built with nvcc
def _nvcc_or_skip() -> str:
    from optc.codegen.build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        if os.environ.get("OPTC_REQUIRE_NVCC"):
            pytest.fail("OPTC_REQUIRE_NVCC is set but no nvcc was found (PATH, or pip's nvidia-cuda-nvcc)")
        pytest.skip("no CUDA compiler (nvcc on PATH or pip's nvidia-cuda-nvcc)")
    return nvcc


def _check_cuda_build(path: str, tmp_path, arch: str = "sm_75") -> dict:
    report: dict = {}
    compile_to_file(path, str(tmp_path / "m.so"), f"cuda:{arch}", report=report)
    cuda = report["cuda"]
    assert cuda["arch"] == arch and cuda["cubin_bytes"] > 0 and cuda["kernels_bytes"] > 0
    meta = json.loads((tmp_path / "m.so.json").read_text())
    assert meta["target"] == "cuda" and meta["target_info"]["arch"] == arch
    return report


def test_cuda_kernels_build(tmp_path, capsys):
    """The CUDA code of a CNN compiles with nvcc to a cubin (the summary says so) without a GPU."""
    _nvcc_or_skip()
    if targets.gpu_arch() is not None:
        pytest.skip("a GPU is present: TVM compiles the kernels itself (NVRTC) during the build")
    out = _cli_ok(capsys, "compile", TINY_CNN, "-o", str(tmp_path / "c.so"), "--target", "cuda", "-q")
    assert "cuda (sm_75: no GPU found, default)" in out and "CUDA kernels compiled with nvcc to a sm_75 cubin" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet", "light_resnet50", "tiny_bert"])
def test_cuda_kernels_build_models(name, tmp_path):
    _nvcc_or_skip()
    if targets.gpu_arch() is not None:
        pytest.skip("a GPU is present: TVM compiles the kernels itself (NVRTC) during the build")
    path = TINY_BERT if name == "tiny_bert" else os.path.join(LIGHT_DIR, f"{name}.onnx")
    _check_cuda_build(path, tmp_path, "sm_86")


def test_cuda_parameter_names_become_c_identifiers(tmp_path):
    """An input named like `gpu_0/data_0` (the ONNX model zoo's) made CUDA source nvcc rejects; the renamed module
    computes the same (checked on the CPU)."""
    from optc.codegen.build import build, c_identifier_params
    from optc.ir import load
    from optc.lowering import lower

    path = str(tmp_path / "slash.onnx")
    graph = helper.make_graph([helper.make_node("Relu", ["gpu_0/data_0"], ["y"])], "g",
                              [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("x:0", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    renamed = c_identifier_params()(lower(load(path)))
    assert [p.name for p in renamed["main"].params] == ["gpu_0_data_0", "x_0"]
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(build(renamed, None, "cpu"), tvm.cpu())
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(x))
    np.testing.assert_array_equal(got.numpy(), np.maximum(x, 0))


def test_nvcc_errors_are_one_line(monkeypatch, tmp_path):
    from optc.codegen.build import compile_cuda_kernels

    class _Module:
        kind = "cuda"
        imports: list = []

        @staticmethod
        def inspect_source(_fmt):
            return "__global__ void k() { this is not C++; }"

    class _Executable:
        mod = _Module()

    nvcc = _nvcc_or_skip()
    with pytest.raises(OptcError, match="nvcc could not compile the CUDA kernels for sm_80: .*error"):
        compile_cuda_kernels(_Executable(), targets.resolve_target("cuda:sm_80"), nvcc)


def test_python_api_takes_mcpu_and_targets_and_reexports_them(tmp_path):
    import optc

    module = optc.compile(TINY_CNN, mcpu="x86-64-v2", input_shapes={"x": (2, 3, 32, 32)})
    feed = _feed(2)
    np.testing.assert_allclose(module.run(feed)["probs"], _ort(TINY_CNN, feed)[0], rtol=1e-4, atol=1e-5)
    module.export(tmp_path / "re.so")  # the exact target is recorded, not the preset's native CPU
    meta = json.loads((tmp_path / "re.so.json").read_text())
    assert meta["target_info"]["mcpu"] == "x86-64-v2" and meta["inputs"][0]["shape"] == [2, 3, 32, 32]
    module = optc.compile(TINY_CNN, target={"kind": "llvm", "mcpu": "x86-64-v3"})
    module.export(tmp_path / "v3.so")
    assert json.loads((tmp_path / "v3.so.json").read_text())["target_spec"]["mcpu"] == "x86-64-v3"
