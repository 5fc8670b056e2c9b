"""Tests of the TVM back end: targets, build (default schedules), artifacts, runtime, tuning."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from optc import from_onnx, runtime  # noqa: E402
from optc.codegen import build, export, read_metadata, resolve_target, tune  # noqa: E402
from optc.errors import OptcError  # noqa: E402
from optc.lowering import lower, signature  # noqa: E402
from optc.rewrites.rules._testing import random_feeds  # noqa: E402


def lower_onnx(model):
    """Lower an ONNX model through optc's IR (weights become Relax constants: no separate params)."""
    return lower(from_onnx(model)), None


def graph_io(model):
    return signature(from_onnx(model))

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


# ----------------------------------------------------------------------------- models
def _w(name, shape, rng, scale=0.1):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def small_cnn(res=32, batch=1):
    """conv/depthwise/pointwise/residual/maxpool/GAP/gemm/softmax: the ops of a mobile CNN."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x, cin, cout, k, s, g=1, relu=True):
        n = f"c{len(nodes)}"
        inits.append(_w(n + "_w", (cout, cin // g, k, k), rng, (2.0 / (cin // g * k * k)) ** 0.5))
        inits.append(_w(n + "_b", (cout,), rng))
        nodes.append(helper.make_node("Conv", [x, n + "_w", n + "_b"], [n], kernel_shape=[k, k],
                                      strides=[s, s], pads=[k // 2] * 4, group=g))
        if not relu:
            return n
        nodes.append(helper.make_node("Relu", [n], [n + "_r"]))
        return n + "_r"

    x = conv("x", 3, 16, 3, 2)
    x = conv(x, 16, 16, 3, 1, g=16)
    x = conv(x, 16, 32, 1, 1)
    y = conv(x, 32, 32, 3, 1, g=32)
    y = conv(y, 32, 32, 1, 1, relu=False)
    nodes.append(helper.make_node("Add", [x, y], ["res"]))
    nodes.append(helper.make_node("MaxPool", ["res"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]))
    x = conv("mp", 32, 48, 3, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["fl"]))
    inits += [_w("fc_w", (10, 48), rng), _w("fc_b", (10,), rng)]
    nodes.append(helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["logits"], transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, res, res])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)


def wide_convs(res=13):
    """3x3 64->128 and 1x1 128->256 convs (weights above PREPACK_MIN_BYTES: packed) + residual-free ReLUs, at a
    prime resolution (predicated tile tails)."""
    rng = np.random.default_rng(2)
    inits = [_w("w1", (128, 64, 3, 3), rng), _w("b1", (128,), rng), _w("w2", (256, 128, 1, 1), rng), _w("b2", (256,), rng)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Relu", ["c2"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, res, res])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, res, res])], inits)


def mlp(batch=4, d=64):
    rng = np.random.default_rng(1)
    inits = [_w("w1", (d, 2 * d), rng), _w("b1", (2 * d,), rng), _w("w2", (2 * d, d), rng),
             numpy_helper.from_array(np.ones(d, np.float32), "g"),
             numpy_helper.from_array(np.zeros(d, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["hr"]), helper.make_node("MatMul", ["hr", "w2"], ["o"]),
             helper.make_node("LayerNormalization", ["o", "g", "b"], ["y"], axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, d])], inits)


def two_io():
    """Two inputs, two outputs, a symbolic batch dimension."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("Tanh", ["s"], ["t"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 8])], [])


# ----------------------------------------------------------------------------- helpers
def _random_inputs(model, batch=1, seed=0):
    return random_feeds(model, seed, symbolic_dim=batch)


def _ort(model, feed):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed), strict=False))


def _compile(model, path, target="cpu", database=None):
    mod, params = lower_onnx(model)
    ex = build(mod, params, target, database=database)
    ins, outs = graph_io(model)
    export(ex, path, {"inputs": ins, "outputs": outs}, target=target)
    return runtime.load(path)


def _rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


# ----------------------------------------------------------------------------- targets
def test_target_presets():
    cpu = resolve_target("cpu")
    assert cpu.kind.name == "llvm" and int(cpu.attrs["num-cores"]) >= 1 and str(cpu.attrs["mcpu"])
    cuda = resolve_target("cuda")
    assert cuda.kind.name == "cuda" and str(cuda.attrs["arch"]).startswith("sm_")
    arm = resolve_target("arm64")
    assert arm.kind.name == "llvm" and str(arm.attrs["mtriple"]) == "aarch64-linux-gnu"


def test_unknown_target():
    with pytest.raises(OptcError, match=r"unsupported target 'tpu' \(choose from cpu, cuda, cuda:sm_XX, arm64, or a TVM"):
        resolve_target("tpu")


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("make", [small_cnn, mlp], ids=["small_cnn", "mlp"])
def test_compile_matches_onnxruntime(make, tmp_path):
    model = make()
    module = _compile(model, tmp_path / "model.so")
    feed = _random_inputs(model)
    got, want = module.run(feed), _ort(model, feed)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape
        assert _rel_err(got[name], want[name]) < 1e-4, name


def test_multiple_io_and_symbolic_dims(tmp_path):
    model = two_io()
    module = _compile(model, tmp_path / "two.so")
    meta = read_metadata(tmp_path / "two.so")
    assert meta["inputs"][0]["shape"] == ["N", 8] and meta["outputs"][1]["name"] == "p"
    for batch in (1, 3):
        feed = _random_inputs(model, batch=batch)
        got, want = module.run(feed), _ort(model, feed)
        assert list(got) == ["t", "p"]
        for name in want:
            assert _rel_err(got[name], want[name]) < 1e-5
    # symbolic dims must agree across inputs
    feed = {"a": np.zeros((2, 8), np.float32), "b": np.zeros((3, 8), np.float32)}
    with pytest.raises(OptcError, match="dimension 'N'"):
        module.run(feed)


def _single_op(op, shape, out_shape=None, inits=(), extra_inputs=(), **attrs):
    return _model([helper.make_node(op, ["x", *extra_inputs], ["y"], **attrs)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or shape)], list(inits))


def _fused_kernels(model, target="cpu"):
    from optc.codegen.build import fuse, prepare
    from tvm.tirx import PrimFunc

    mod, params = lower_onnx(model)
    tvm_target = resolve_target(target)
    fused = fuse(prepare(mod, params, tvm_target), tvm_target)
    return tvm_target, {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, PrimFunc)}


@pytest.mark.parametrize("shape,axis", [([1, 1000], 1), ([1, 4, 16, 16], -1), ([2, 8, 5, 6], 1), ([3, 7], 0)])
def test_row_reduction_schedule(shape, axis, tmp_path):
    """Softmax over the last, a middle and the first axis: optc's RowReduction rule schedules it (rows
    found from how the last block reads the reductions) and the numbers match onnxruntime."""
    from optc.codegen.schedules import RowReduction

    model = _single_op("Softmax", shape, axis=axis)
    target, kernels = _fused_kernels(model)
    assert [RowReduction().apply(f, target, False) is not None for f in kernels.values()] == [True]
    feed = _random_inputs(model)
    got, want = _compile(model, tmp_path / "softmax.so").run(feed), _ort(model, feed)
    assert _rel_err(got["y"], want["y"]) < 1e-5


@pytest.mark.parametrize("op", ["Exp", "Erf", "Tanh", "Softmax"])
def test_fast_math_keeps_special_values(op, tmp_path):
    """exp/erf/tanh/softmax use TOPI's vectorizable approximations: within 1e-6 of onnxruntime, with NaN,
    +-inf and overflow as onnxruntime gives them."""
    model = _single_op(op, [2, 16])
    x = np.linspace(-12, 12, 32, dtype=np.float32).reshape(2, 16)
    x[0, :6] = [np.nan, np.inf, -np.inf, 100.0, -100.0, 0.0]
    if op == "Softmax":
        x[0, :3] = [0.0, 1.0, 2.0]  # an inf row is NaN either way; keep one row finite
    feed = {"x": x}
    got, want = _compile(model, tmp_path / "m.so").run(feed)["y"], _ort(model, feed)["y"]
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6)


def test_row_reduction_declines_plain_elementwise():
    from optc.codegen.schedules import RowReduction

    target, kernels = _fused_kernels(_single_op("Relu", [4, 32]))
    assert all(RowReduction().apply(f, target, False) is None for f in kernels.values())


@pytest.mark.parametrize("groups,cin,cout,k", [(4, 24, 136, 1), (3, 12, 60, 3), (2, 8, 8, 3)])
def test_grouped_conv_schedule(groups, cin, cout, k, tmp_path):
    """Grouped convolutions whose channels per group are not a multiple of the SIMD width: vectors stay
    inside one group (no gathers) and the result matches onnxruntime."""
    rng = np.random.default_rng(3)
    w = _w("w", (cout, cin // groups, k, k), rng)
    model = _single_op("Conv", [1, cin, 9, 9], [1, cout, 9, 9], inits=[w], extra_inputs=["w"], group=groups,
                       kernel_shape=[k, k], pads=[k // 2] * 4)
    feed = _random_inputs(model)
    got, want = _compile(model, tmp_path / "gconv.so").run(feed), _ort(model, feed)
    assert _rel_err(got["y"], want["y"]) < 1e-4


LIGHT_FAST = ["squeezenet", "shufflenet"]
LIGHT_SLOW = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "vgg19", "zfnet512"]


def _light(name):
    path = os.path.join(LIGHT_DIR, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} not shipped with this onnx")
    return onnx.load(path)


def _check_light(name):
    """Compile (-O2, cpu) and run in memory; the outputs match onnxruntime's within 1e-4 relative error."""
    import optc

    model = _light(name)
    module = optc.compile(optc.from_onnx(model), "cpu")
    feed = _random_inputs(model)
    got, want = module.run(feed), _ort(model, feed)
    for out in want:
        assert _rel_err(got[out], want[out]) < 1e-4, out


@pytest.mark.parametrize("name", LIGHT_FAST)
def test_light_models(name):
    _check_light(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_SLOW)
def test_light_models_slow(name):
    _check_light(name)


def _assert_kernels_match(model):
    """Every kernel, scheduled by optc's default rules, computes what its unscheduled form computes on
    random inputs and weights (the light models' constant weights would hide a misplaced bias)."""
    from optc.codegen.kernel_check import check_kernels, fused_kernels

    assert check_kernels(fused_kernels(from_onnx(model), "cpu"), "cpu") == []


@pytest.mark.parametrize("make", [small_cnn, wide_convs])
def test_kernels_match_unscheduled(make):
    _assert_kernels_match(make())


@pytest.mark.parametrize("variant", range(8))
def test_rule_variants_match_unscheduled(variant):
    """The schedules that tuning measures besides the default (one heuristic choice fixed each way) are
    correct too: they become the build's schedule when they measure fastest."""
    from optc.codegen.kernel_check import check_kernels, fused_kernels
    from optc.codegen.schedules import TiledReduction, cpu_rules

    rules = TiledReduction.variants()
    assert len(rules) == 8
    for model in (small_cnn(res=26), wide_convs()):
        fused = fused_kernels(from_onnx(model), "cpu")
        assert check_kernels(fused, "cpu", rules=[rules[variant], *cpu_rules()]) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_FAST + [n for n in LIGHT_SLOW if n != "densenet121"])
def test_kernels_match_unscheduled_light(name):
    """Every kernel of the light models, scheduled vs TVM's unscheduled loops. densenet121 is left out (its
    unscheduled 224x224 convs took 5 of CI's 30 minutes; its kernel kinds — 1x1 / 3x3 convs, pooling, concat —
    are checked here on resnet50 and the inceptions, and the whole model against onnxruntime in
    test_light_models_slow)."""
    _assert_kernels_match(_light(name))


def _conv_clip(scalar_input=False):
    """Conv -> Clip(0, 6) (ReLU6); with ``scalar_input`` the lower bound is a 0-d graph input."""
    rng = np.random.default_rng(3)
    inits = [_w("w", (8, 3, 3, 3), rng, 1.0), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if scalar_input:
        inputs.append(helper.make_tensor_value_info("lo", TensorProto.FLOAT, []))
    else:
        inits.append(numpy_helper.from_array(np.array(0, np.float32), "lo"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)


def test_clip_fuses_into_the_convolution():
    """Clip with constant bounds lowers to maximum/minimum that NHWC layout conversion passes through: it is
    the conv kernel's epilogue (the frontend's TOPI kernels put a transpose pair around every ReLU6)."""
    import tvm
    from optc.codegen.kernel_check import fused_kernels

    fused = fused_kernels(from_onnx(_conv_clip()), "cpu")
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("conv2d" in n and "maximum" in n and "minimum" in n for n in names), names
    assert not any("maximum" in n and "transpose" in n for n in names), names


def test_scalar_input_runs():
    """A 0-d graph input (Clip's bound) passes the input check and runs; the result matches onnxruntime."""
    import optc

    model = _conv_clip(scalar_input=True)
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32),
            "lo": np.array(0.25, np.float32)}
    got, want = optc.compile(from_onnx(model)).run(feed), _ort(model, feed)
    assert _rel_err(got["y"], want["y"]) < 1e-5


def test_kernel_check_reports_a_wrong_schedule(monkeypatch):
    """The check fails when a schedule changes what a kernel computes (here: Abs becomes x * 2)."""
    import importlib

    import tvm
    from optc.codegen import kernel_check
    from tvm import te

    build_module = importlib.import_module("optc.codegen.build")

    def _doubled(a):
        return a, te.compute(a.shape, lambda *i: a(*i) * 2, "b")

    def wrong_schedules(target, schedule="default"):
        @tvm.transform.module_pass(opt_level=0, name="wrong_schedule")
        def _wrong(mod, _ctx):
            funcs = {}
            for gvar, func in mod.functions_items():
                if isinstance(func, tvm.tirx.PrimFunc):
                    shape = [int(d) for d in func.params[0].ty.shape]
                    func = te.create_prim_func(list(_doubled(te.placeholder(shape, "float32", "a"))))
                funcs[gvar] = func
            return tvm.IRModule(funcs)

        return [_wrong]

    relu = _model([helper.make_node("Abs", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [])
    fused = kernel_check.fused_kernels(from_onnx(relu), "cpu")
    assert kernel_check.check_kernels(fused, "cpu") == []
    monkeypatch.setattr(build_module, "schedule_passes", wrong_schedules)
    [bad] = kernel_check.check_kernels(fused, "cpu")
    assert bad.max_abs_diff > 0.5 and bad.max_abs_expected > 0.5


def test_light_models_listed():
    """The two lists above cover every light model onnx ships."""
    shipped = {os.path.basename(p)[len("light_"):-len(".onnx")] for p in glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx"))}
    assert shipped == set(LIGHT_FAST) | set(LIGHT_SLOW)


# ----------------------------------------------------------------------------- artifacts / runtime
@pytest.fixture(scope="module")
def mlp_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("art") / "mlp.so"
    return _compile(mlp(), path), path


def test_artifact_metadata(mlp_module):
    module, path = mlp_module
    assert path.exists() and path.with_name("mlp.so.json").exists()
    meta = json.loads(path.with_name("mlp.so.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [4, 64], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [4, 64], "dtype": "float32"}]
    assert meta["target"] == "cpu" and meta["tvm_version"] and meta["optc_version"]
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_a_library_rebuilt_at_the_same_path_runs_the_new_one(tmp_path):
    """Found by a breaker: dlopen hands back the library it already loaded from a path, so a model compiled again
    to the same path in the same process ran the old one. Each content now opens once, the first from its path,
    a later one from a private copy; loading the first again keeps its own results."""
    from optc.codegen.compile import compile_to_file

    def times(k: float):
        g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.full(4, k, np.float32), "k")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=8)

    path, x = tmp_path / "m.so", np.ones(4, np.float32)
    for k in (2.0, 3.0, 2.0):
        compile_to_file(times(k), path)
        np.testing.assert_array_equal(runtime.load(path).run({"x": x})["y"], np.full(4, k, np.float32))


def test_wrong_input_name(mlp_module):
    module, _ = mlp_module
    with pytest.raises(OptcError, match=r"unknown input 'z' \(expected inputs: x\)"):
        module.run({"z": np.zeros((4, 64), np.float32)})
    with pytest.raises(OptcError, match="missing input 'x'"):
        module.run({})


def test_wrong_input_shape(mlp_module):
    module, _ = mlp_module
    with pytest.raises(OptcError) as info:
        module.run({"x": np.zeros((4, 63), np.float32)})
    assert str(info.value) == "input 'x': expected float32 [4,64], got float32 [4,63]"


def test_wrong_input_dtype(mlp_module):
    module, _ = mlp_module
    with pytest.raises(OptcError, match=r"expected float32 \[4,64\], got float64 \[4,64\]"):
        module.run({"x": np.zeros((4, 64), np.float64)})


def test_benchmark(mlp_module):
    module, _ = mlp_module
    ms = module.benchmark({"x": np.ones((4, 64), np.float32)}, repeat=3, warmup=1)
    assert ms > 0


def test_load_errors(tmp_path):
    with pytest.raises(OptcError, match="no such artifact"):
        runtime.load(tmp_path / "missing.so")
    (tmp_path / "lonely.so").write_bytes(b"")
    with pytest.raises(OptcError, match="no metadata file"):
        runtime.load(tmp_path / "lonely.so")


def test_cuda_codegen(tmp_path):
    """CUDA code is generated and, without a GPU, its kernels compile with nvcc to a cubin (tests/test_targets.py
    compiles the light CNNs and the BERT-like too)."""
    from optc.codegen.build import compile_cuda_kernels, find_nvcc
    from optc.codegen.targets import gpu_arch

    if find_nvcc() is None:
        if os.environ.get("OPTC_REQUIRE_NVCC"):
            pytest.fail("OPTC_REQUIRE_NVCC is set but no nvcc was found (PATH, or pip's nvidia-cuda-nvcc)")
        pytest.skip("no CUDA compiler (nvcc on PATH or pip's nvidia-cuda-nvcc)")
    mod, params = lower_onnx(mlp())
    ex = build(mod, params, "cuda:sm_80")
    if gpu_arch() is None:  # with a GPU, TVM compiled the kernels itself (NVRTC) during the build
        cuda = compile_cuda_kernels(ex, resolve_target("cuda:sm_80"))
        assert cuda["arch"] == "sm_80" and cuda["cubin_bytes"] > 0
    export(ex, tmp_path / "mlp_cuda.so", {"inputs": [], "outputs": []}, target="cuda:sm_80")
    assert (tmp_path / "mlp_cuda.so").stat().st_size > 0


def test_arm64(tmp_path):
    """arm64 code generates; exporting needs the aarch64 cross compiler (a clear error otherwise)."""
    import shutil

    mod, params = lower_onnx(mlp())
    ex = build(mod, params, "arm64")
    meta = {"inputs": [], "outputs": []}
    if shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc"):
        export(ex, tmp_path / "mlp_arm.so", meta, target="arm64")
        assert (tmp_path / "mlp_arm.so").read_bytes()[:4] == b"\x7fELF"
    else:
        with pytest.raises(OptcError, match="aarch64 cross compiler"):
            export(ex, tmp_path / "mlp_arm.so", meta, target="arm64")
        assert not (tmp_path / "mlp_arm.so").exists()


# ----------------------------------------------------------------------------- tuning
@pytest.mark.slow
def test_tuning_database_reuse(tmp_path):
    model = mlp(batch=4, d=128)  # weights >= PREPACK_MIN_BYTES: packed at compile time
    mod, params = lower_onnx(model)
    db_dir = tmp_path / "db"
    first, second = {}, {}
    db = tune(mod, params, "cpu", db_dir, trials=8, progress=False, report=first)
    assert first["tasks"] >= 1 and first["trials"] >= 1
    # optc's default schedule of every kernel is measured and kept too: tuning never makes a kernel slower
    assert first["default_records"] == first["tuned_tasks"]
    assert (db_dir / "database_tuning_record.json").stat().st_size > 0
    db = tune(mod, params, "cpu", db_dir, trials=8, progress=False, report=second)
    assert second["tuned_tasks"] == 0 and second["trials"] == 0
    report = {}
    ex = build(mod, params, "cpu", database=db, report=report)
    assert report["tuned"] >= 1  # records from the database were really applied
    export(ex, tmp_path / "tuned.so", dict(zip(("inputs", "outputs"), graph_io(model), strict=False)))
    feed = _random_inputs(model)
    got, want = runtime.load(tmp_path / "tuned.so").run(feed), _ort(model, feed)
    assert _rel_err(got["y"], want["y"]) < 1e-4


@pytest.mark.parametrize("case", ["test_nonmaxsuppression_two_batches", "test_nonmaxsuppression_two_classes"])
def test_data_dependent_kernels_never_compute_wrong_results(case):
    """NonMaxSuppression's kernels index buffers with loaded values: optc's rules must not move such blocks
    (RowReduction once did, and the compiled cases computed wrong boxes). Refusing to build is acceptable."""
    from optc.tests.lowering_sweep import conformance_case, overall, run_case

    status, detail = overall(run_case(conformance_case(case)))
    assert status not in ("mismatch", "crash"), detail


# ----------------------------------------------------------------------------- ragged tiles (ViT's 197 tokens)
def _attention_scores(tokens: int, dh: int = 16, heads: int = 3, n_out: int = 24):
    """Q @ K^T (both activations, [1, heads, tokens, tokens]) scaled, softmax, @ V, then a dense layer with a
    constant weight: matmuls whose rows (and, for the scores, vector axis) are `tokens` long."""
    rng = np.random.default_rng(5)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, heads, tokens, dh])
    inits = [_w("w", (dh, n_out), rng), numpy_helper.from_array(np.array(0.25, np.float32), "s")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["x", "xt"], ["qk"]), helper.make_node("Mul", ["qk", "s"], ["qks"]),
             helper.make_node("Softmax", ["qks"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["pv"]),
             helper.make_node("MatMul", ["pv", "w"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, tokens, n_out])
    return _model(nodes, [x], [out], inits)


@pytest.mark.parametrize("tokens", [197, 13, 64])
def test_ragged_matmuls_match(tokens, tmp_path):
    """Odd token counts pad the matmul's iteration space (`_pad_ragged_tile`); results match onnxruntime
    and every kernel matches its unscheduled form (64 tokens: nothing to pad)."""
    model = _attention_scores(tokens)
    _assert_kernels_match(model)
    module = _compile(model, tmp_path / "att.so")
    feed = _random_inputs(model)
    assert _rel_err(module.run(feed)["y"], _ort(model, feed)["y"]) < 1e-4


def _batched_matmul(m: int, n: int, k: int, weight: bool = False):
    from tvm import te

    a = te.placeholder((1, 3, m, k), name="A")
    b = te.placeholder((k, n) if weight else (1, 3, k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((1, 3, m, n), lambda x, h, i, j: te.sum(a[x, h, i, r] * (b[r, j] if weight else b[x, h, r, j]),
                                                           axis=r), name="matmul")
    func = te.create_prim_func([a, b, c])
    return func.with_attr("layout_free_buffers", [1]) if weight else func


@pytest.mark.parametrize("m, n, k, weight, padded", [
    (197, 197, 32, False, {"A_pad", "B_pad"}),  # rows and vector axis ragged: both operands padded
    (197, 64, 32, False, {"A_pad"}),             # only the rows
    (200, 200, 32, False, set()),                # whole tiles: nothing to pad
    (197, 197, 32, True, {"A_pad", "B_pad"}),    # a small constant weight's columns: padded at compile time
    (200, 24, 32, True, {"B_pad"}),              # 24 output channels: 2 whole vectors instead of 3 half ones
    (197, 197, 128, True, {"A_pad", "B_pad"}),   # a weight large enough to be packed: to whole vectors too
    (200, 192, 128, True, set()),                # a packed weight whose 12 vectors tile 5 x 3: not padded
])
def test_pad_ragged_tile(m, n, k, weight, padded):
    from optc.codegen.schedules import _pad_ragged_tile
    from tvm import s_tir

    sch = s_tir.Schedule(_batched_matmul(m, n, k, weight))
    avx512 = resolve_target({"kind": "llvm", "mcpu": "znver4"})  # (scheduled only: 16 float32 lanes on any host)
    assert _pad_ragged_tile(sch, avx512) == (bool(padded), "B_pad" in padded,
                                                            weight and "B_pad" in padded)
    script = sch.mod["main"].script()
    assert {name for name in ("A_pad", "B_pad") if f'T.sblock("{name}")' in script} == padded
    if weight and "B_pad" in padded:  # the weight's padded copy is split off and folded at compile time
        pad = script[script.index('T.sblock("B_pad")'):]
        assert "meta_schedule.layout_rewrite_preproc" in pad[:pad.index("T.if_then_else")]


def test_pad_ragged_tile_declines_strided_windows():
    """A strided convolution is not an einsum: no padding, the predicated tile stays (still exact)."""
    from optc.codegen.schedules import _pad_ragged_tile
    from tvm import s_tir, te

    x = te.placeholder((1, 29, 29, 5), name="x")
    w = te.placeholder((3, 3, 5, 13), name="w")
    ry, rx, rc = te.reduce_axis((0, 3), "ry"), te.reduce_axis((0, 3), "rx"), te.reduce_axis((0, 5), "rc")
    y = te.compute((1, 14, 14, 13), lambda b, i, j, c: te.sum(x[b, 2 * i + ry, 2 * j + rx, rc] * w[ry, rx, rc, c],
                                                              axis=[ry, rx, rc]), name="conv")
    sch = s_tir.Schedule(te.create_prim_func([x, w, y]))
    assert _pad_ragged_tile(sch, resolve_target("cpu")) == (False, False, False)
