"""Winograd F(2x2, 3x3) convolutions (codegen/winograd.py): the transform's algebra, which convolutions the compile
path computes this way, and that their outputs match onnxruntime's direct convolution (NaN where it gives NaN)."""

from __future__ import annotations

import platform

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.codegen import winograd

from .conftest import run_ort, run_reference


def _conv_model(c=16, k=32, size=(9, 9), batch=1, pads=(1, 1, 1, 1), strides=(1, 1), dilations=(1, 1), group=1,
                kernel=3, tail="relu", dtype=TensorProto.FLOAT, seed=0) -> onnx.ModelProto:
    """x [batch, c, *size] -> Conv (+ bias) -> `tail` ('relu', 'residual': + a second 1x1 conv of x then ReLU,
    'none') -> y."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = (rng.standard_normal((k, c // group, kernel, kernel)) * np.sqrt(2 / (c * kernel * kernel))).astype(np_dtype)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array((rng.standard_normal(k) * 0.1).astype(np_dtype), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel, kernel], pads=list(pads),
                              strides=list(strides), dilations=list(dilations), group=group)]
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif tail == "residual":
        inits.append(numpy_helper.from_array((rng.standard_normal((k, c, 1, 1)) * 0.3).astype(np_dtype), "w1"))
        nodes += [helper.make_node("Conv", ["x", "w1"], ["s"], kernel_shape=[1, 1]),
                  helper.make_node("Add", ["c", "s"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [batch, c, *size])],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _prepared(model: onnx.ModelProto, fast_math: bool = True) -> str:
    """The compile path's prepared Relax module (before legalization), as text."""
    from optc.codegen.build import prepare
    from optc.lowering import lower
    from optc.rewrites import optimize

    return prepare(lower(optimize(optc.from_onnx(model), level=2)), None, "cpu", fast_math=fast_math).script()


def _inputs(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _direct(x: np.ndarray, g: np.ndarray, pads) -> np.ndarray:
    """float64 NHWC convolution of x [n, h, w, c] by the HWIO kernel g [3, 3, c, k], stride 1."""
    xp = np.pad(x.astype(np.float64), [(0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)])
    ho, wo = xp.shape[1] - 2, xp.shape[2] - 2
    return sum(np.einsum("nhwc,ck->nhwk", xp[:, i:i + ho, j:j + wo], g[i, j].astype(np.float64))
               for i in range(3) for j in range(3))


def test_the_transform_matrices_compute_the_convolution():
    """A^T [(G g G^T) * (B^T d B)] A is the 2x2 valid correlation of the 4x4 block d by the 3x3 g (Lavin and
    Gray's identity), and `transformed_weight` lays G g G^T out as the kernel's matmul operand."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    got = winograd.A_T @ ((winograd.G @ g @ winograd.G.T) * (winograd.B_T @ d @ winograd.B_T.T)) @ winograd.A_T.T
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    w = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
    u = winograd.transformed_weight(w)
    assert u.shape == (16, 5, 7) and u.dtype == np.float32
    np.testing.assert_allclose(u[6, 2, 3], (winograd.G @ w[:, :, 2, 3].astype(np.float64) @ winograd.G.T)[1, 2], rtol=1e-7)
    np.testing.assert_allclose(u.reshape(4, 4, 5, 7)[:, :, 1, 4],
                               winograd.G @ w[:, :, 1, 4].astype(np.float64) @ winograd.G.T, rtol=1e-6, atol=1e-7)
    assert _direct(np.ones((1, 4, 4, 5)), w, (0, 0, 0, 0)).shape == (1, 2, 2, 7)


CASES = {  # (conv model arguments): each computed with F(2x2, 3x3), checked against onnxruntime
    "even 8x8, pad 1": dict(size=(8, 8)),
    "odd 9x9 (ragged last tiles)": dict(size=(9, 9)),
    "no padding, 7x10": dict(size=(7, 10), pads=(0, 0, 0, 0)),
    "asymmetric padding 2/0, 1/2": dict(size=(6, 5), pads=(2, 1, 0, 2)),
    "batch 3, 1x1 output": dict(size=(3, 3), pads=(0, 0, 0, 0), batch=3),
    "channels not a vector multiple": dict(c=20, k=40, size=(5, 6)),
    "residual add fused after": dict(c=32, k=32, size=(10, 10), tail="residual"),
    "no epilogue, 64 channels": dict(c=64, k=48, size=(14, 14), tail="none"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_winograd_convolutions_match_onnxruntime(case):
    model = _conv_model(**CASES[case])
    assert "winograd_data_pack" in _prepared(model)
    x = _inputs(model)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape
    # float32 rounding of a reassociated sum: a few ulp of the sum's terms
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


NOT_TAKEN = {  # conv model arguments (or fast math off) the rewrite leaves to the direct kernels
    "stride 2": dict(strides=(2, 2)),
    "dilation 2": dict(dilations=(2, 2), pads=(2, 2, 2, 2)),
    "depthwise": dict(group=32, c=32, k=32),
    "too few output channels (16)": dict(c=64, k=16),
    "too few input channels (8)": dict(c=8, k=32),
    "two groups": dict(group=2, c=32, k=32),
    "5x5 kernel": dict(kernel=5, pads=(2, 2, 2, 2)),
        "float64": dict(dtype=TensorProto.DOUBLE),
    "padding 3": dict(pads=(3, 3, 3, 3)),
    "no fast math": dict(),
}


@pytest.mark.parametrize("case", list(NOT_TAKEN))
def test_other_convolutions_stay_direct(case):
    model = _conv_model(**NOT_TAKEN[case])
    text = _prepared(model, fast_math=case != "no fast math")
    assert "conv2d" in text and "winograd" not in text
    x = _inputs(model)
    got = optc.compile(model, fast_math=case != "no fast math").run({"x": x})["y"]
    want = (run_reference if case == "float64" else run_ort)(model, {"x": x})[0]  # (onnxruntime: no float64 Conv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [2, 1, 0])
def test_symbolic_batch(batch):
    """A symbolic batch N: P = N x tiles rows, one library for every N (0 included: empty outputs)."""
    model = _conv_model(c=16, k=40, size=(7, 6), tail="residual")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert "winograd_data_pack" in _prepared(model)
    x = np.random.default_rng(batch).standard_normal((batch, 16, 7, 6)).astype(np.float32)
    # at batch 1 the default build's static batch-1 entry runs (static_batch.py): Winograd there too
    got = optc.compile(model, static_batch=None if batch == 1 else ()).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape == (batch, 40, 7, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max(initial=0)), 1.0))


@pytest.mark.parametrize("batch", [3, 0])
def test_a_batch_computed_from_symbolic_dims_stays_direct(batch):
    """[N, 2, C, H, W] reshaped to [2 N, C, H, W] (a video model's frames as a batch): the kernels' buffers could
    not define N from 2 N, so the conv stays direct (it failed to build)."""
    model = _conv_model()
    graph = model.graph
    graph.input[0].type.tensor_type.shape.Clear()
    for d in ("N", 2, 16, 9, 9):
        dim = graph.input[0].type.tensor_type.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 16, 9, 9], np.int64), "frames"))
    graph.node[0].input[0] = "x2"
    graph.node.insert(0, helper.make_node("Reshape", ["x", "frames"], ["x2"]))
    assert "winograd" not in _prepared(model)
    x = np.random.default_rng(0).standard_normal((batch, 2, 16, 9, 9)).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape == (2 * batch, 32, 9, 9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nan_reaches_exactly_the_outputs_it_reaches_directly():
    """A NaN input pixel makes the direct convolution's 3x3 neighbourhood NaN; the transforms add only their
    nonzero terms, so a tile's outputs whose window misses the pixel stay finite (no 0 * NaN)."""
    model = _conv_model(c=16, k=32, size=(10, 10), tail="none")
    assert "winograd_data_pack" in _prepared(model)
    lib = optc.compile(model)
    for (i, j) in [(4, 4), (3, 6), (0, 9), (9, 0)]:
        x = _inputs(model)
        x[0, 5, i, j] = np.nan
        got, want = lib.run({"x": x})["y"], run_ort(model, {"x": x})[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(got).sum() == got.shape[1] * np.isnan(want[0, 0]).sum() > 0
        finite = ~np.isnan(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_error_against_a_float64_reference_is_float32_rounding():
    """Deep sums (C = 256): the Winograd result is as close to the exact convolution as the direct one."""
    model = _conv_model(c=256, k=32, size=(8, 8), tail="none", seed=3)
    x = _inputs(model, seed=4)
    w = numpy_helper.to_array(model.graph.initializer[0]).transpose(2, 3, 1, 0)
    b = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    exact = _direct(x.transpose(0, 2, 3, 1), w, (1, 1, 1, 1)).transpose(0, 3, 1, 2) + b[:, None, None]
    got = optc.compile(model).run({"x": x})["y"].astype(np.float64)
    direct = optc.compile(model, fast_math=False).run({"x": x})["y"].astype(np.float64)
    scale = np.abs(exact).max()
    err_wino, err_direct = np.abs(got - exact).max() / scale, np.abs(direct - exact).max() / scale
    assert err_wino < 1e-5, err_wino
    assert err_wino < 10 * max(err_direct, 1e-7), (err_wino, err_direct)


def test_scheduled_winograd_kernels_agree_with_naive_loops():
    from optc.codegen.kernel_check import check_kernels, fused_kernels

    model = optc.from_onnx(_conv_model(c=32, k=32, size=(9, 9), tail="residual"))
    kernels = fused_kernels(model, "cpu")
    assert any("winograd_inverse" in gv.name_hint for gv, _ in kernels.functions_items())
    assert check_kernels(kernels, "cpu") == []


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="built for an AVX2 CPU: x86 hosts only")
def test_avx2_target_eight_lanes():
    """Built for an AVX2 CPU (8 float lanes; 24 channels: three vectors, 20: no whole vector of 8 in the data
    pack's channel loop), the results are onnxruntime's."""
    for c, k in ((24, 32), (20, 40)):
        model = _conv_model(c=c, k=k, size=(7, 9), tail="residual")
        x = _inputs(model)
        got = optc.compile(model, {"kind": "llvm", "mcpu": "haswell"}).run({"x": x})["y"]
        want = run_ort(model, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize(("size", "batch"), [((9, 9), 1), ((8, 11), 1), ((3, 3), 1), ((7, 6), 2)])
def test_the_inverse_runs_by_output_tiles_with_the_elementwise_kernels_bits(size, batch):
    """The fused inverse (bias + residual + ReLU inlined) is scheduled by 2 x 2 output tiles, the tile unrolled
    (`winograd.schedule_inverse`), and computes the same bits as the flat elementwise schedule (ragged last tiles
    of odd sizes included)."""
    from optc.codegen import schedules
    from optc.codegen.kernel_check import _run, _static_float_shapes, fused_kernels
    from optc.codegen.targets import resolve_target

    target = resolve_target("cpu")
    kernels = fused_kernels(optc.from_onnx(_conv_model(c=32, k=48, size=size, batch=batch, tail="residual")), "cpu")
    [func] = [f for gv, f in kernels.functions_items() if "winograd_inverse" in gv.name_hint]
    with target:
        tiled = winograd.inverse_rule().apply(func, target, False)
        flat = schedules.Injective().apply(func, target, False)
    assert tiled is not None and flat is not None
    text = tiled.mod["main"].script()
    lanes = schedules.vector_bits(target) // 32  # float32 lanes: 16 with AVX-512, 8 with AVX2 only
    assert text.count("T.unroll(T.int64(2))") == 2 and f"T.vectorized(T.int64({lanes}))" in text
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(dtype) for shape, dtype in _static_float_shapes(func)]
    np.testing.assert_array_equal(_run(tiled.mod["main"], [a.copy() for a in arrays], target),
                                  _run(flat.mod["main"], [a.copy() for a in arrays], target))


def test_other_kernels_are_not_winograd_inverses():
    """(negative) The rule takes only a fused kernel holding a `winograd_inverse` block."""
    from optc.codegen.kernel_check import fused_kernels
    from optc.codegen.targets import resolve_target

    target = resolve_target("cpu")
    kernels = fused_kernels(optc.from_onnx(_conv_model(c=32, k=48, size=(9, 9), tail="residual")), "cpu")
    others = [f for gv, f in kernels.functions_items() if "winograd_inverse" not in gv.name_hint
              and hasattr(f, "params") and not (f.attrs or {}).get("tirx.is_scheduled", False)]
    assert others
    with target:
        assert all(winograd.inverse_rule().apply(f, target, False) is None for f in others)


def test_the_inverse_of_a_symbolic_batch_runs_by_output_tiles():
    """The batch loop is fused with the tile rows, in parallel (a breaker: the rule read the batch loop's extent
    after that fuse had removed it, and every batch but 1 fell back to the elementwise schedule)."""
    from optc.codegen.targets import resolve_target
    from tvm import s_tir, tirx

    target = resolve_target("cpu")
    for n in (2, tirx.Var("n", "int64")):
        sch = s_tir.Schedule(winograd.inverse_kernel(n, 6, 6, 32, 3, 3))
        assert winograd.schedule_inverse(sch, target)
        text = sch.mod["main"].script()
        assert text.count("T.unroll(T.int64(2))") == 2
        assert ("T.parallel" in text) == (not isinstance(n, int))  # (2 x 6 x 6 x 32 outputs: too few for threads)
