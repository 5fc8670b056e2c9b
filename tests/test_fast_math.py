"""codegen fast math: the polynomial exp / tanh / erf / softmax / sigmoid stay within their documented ulp bounds
(`codegen.fast_math.MAX_ULP`, measured by benchmarks/fast_math_ulp.py), and `fast_math=False` gives libm's
results: within 1 ulp of the correctly rounded value, NaN, infinities and signed zeros exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from optc.codegen.fast_math import MAX_ULP, compiled_op  # noqa: E402

TINY_NORMAL = 2.0**-126
F32_MAX = float(np.finfo(np.float32).max)
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0**-149, -(2.0**-149), 2.0**-126, -(2.0**-126), 1e-30,
                     -1e-30, 1e-8, -1e-8, 2.0**-12, F32_MAX, -F32_MAX, 88.72283, 88.72284, -87.33654, -103.97208,
                     -103.9721, 3.92, -3.92, 9.01, -9.01, 0.5, -0.5, 1.0, -1.0], np.float32)


def _reference(op: str, x: np.ndarray) -> np.ndarray:
    """float64 reference (softmax over rows of x)."""
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        if op == "exp":
            return np.exp(x64)
        if op == "tanh":
            return np.tanh(x64)
        if op == "erf":
            return np.vectorize(math.erf, otypes=[np.float64])(x64)
        if op == "sigmoid":
            t = np.exp(-np.abs(x64))
            return np.where(x64 < 0, t / (1 + t), 1 / (1 + t))
        e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def _sample(n: int = 1 << 14, seed: int = 0) -> np.ndarray:
    """Random bit patterns (every exponent alike), normal values at several scales, and the specials."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scales = [rng.standard_normal(n // 4).astype(np.float32) * s for s in (0.01, 1, 4, 30)]
    return np.concatenate([bits, *scales, SPECIALS])


def ulp_errors(y: np.ndarray, ref: np.ndarray, *, allow_flush: bool) -> np.ndarray:
    """|y - ref| in float32 ulp of ref; 0 where y is the correctly rounded float32 of ref (so NaN for NaN,
    the same infinity, the same signed zero); inf for any other NaN / infinity / signed-zero difference.
    `allow_flush`: a nonzero subnormal result returned as 0 counts as 0 (the fast kernels flush them)."""
    y, ref = y.reshape(-1), ref.reshape(-1)
    with np.errstate(all="ignore"):
        cr = ref.astype(np.float32)
    same = (y.view(np.uint32) == cr.view(np.uint32)) | (np.isnan(y) & np.isnan(cr))
    err = np.zeros(y.shape, np.float64)
    special = ~same & (np.isnan(y) | np.isnan(cr) | np.isinf(y) | np.isinf(cr) | ((y == 0) & (cr == 0)))
    err[special] = np.inf
    rest = ~same & ~special
    a = np.abs(ref[rest])
    ulp = np.where(a < TINY_NORMAL, 2.0**-149, np.ldexp(1.0, np.frexp(a)[1] - 24))
    err[rest] = np.abs(y[rest].astype(np.float64) - ref[rest]) / ulp
    if allow_flush:
        err[rest & (y == 0) & (np.abs(cr) < TINY_NORMAL)] = 0.0
    return err


def _describe(x, y, ref, err) -> str:
    i = int(np.argmax(err))
    return f"max {err[i]:.3f} ulp at x = {x.reshape(-1)[i]!r}: {y.reshape(-1)[i]!r} vs {ref.reshape(-1)[i]!r}"


def _run(op: str, x: np.ndarray, fast_math: bool) -> tuple[np.ndarray, np.ndarray]:
    """The op compiled as in a model, on x (softmax: on rows [x, 0]); returns (y, float64 reference)."""
    if op == "softmax":
        x = np.stack([x, np.zeros_like(x)], axis=1)
    y = compiled_op(op, x.shape, fast_math=fast_math)(x)
    return y, _reference(op, x)


@pytest.mark.parametrize("op", ["exp", "tanh", "erf"])
def test_no_fast_math_is_libm_exact(op):
    # within 1 ulp of the correctly rounded result everywhere, special values (NaN, +-inf, -0.0, subnormal
    # results) exactly: glibc's expf and erff, and tanh through double (glibc's tanhf is off by up to 2 ulp)
    x = _sample()
    y, ref = _run(op, x, fast_math=False)
    err = ulp_errors(y, ref, allow_flush=False)
    assert err.max() <= 1.0, _describe(x, y, ref, err)
    special = np.isnan(x) | np.isinf(x) | (x == 0)  # bit for bit: NaN, +-1 / inf / 0, the sign of zero
    assert (err[special] == 0).all(), _describe(x[special], y[special], ref[special], err[special])


def test_no_fast_math_softmax_is_the_plain_one():
    # the plain softmax (libm expf, a sum and a division) on rows [x, 0]: within 2.5 ulp, NaN and +-inf rows as
    # the float64 formula
    x = _sample()
    y, ref = _run("softmax", x, fast_math=False)
    err = ulp_errors(y, ref, allow_flush=False)
    assert err.max() <= 2.5, _describe(np.repeat(x, 2), y, ref, err)


@pytest.mark.parametrize("op", ["exp", "tanh", "erf", "softmax", "sigmoid"])
def test_fast_math_within_documented_bound(op):
    # the bound measured over every float32 input (benchmarks/RESULTS.md "Fast math"), checked on a sample;
    # subnormal results flushed to 0 are documented separately and not counted
    x = _sample(seed=1)
    y, ref = _run(op, x, fast_math=True)
    err = ulp_errors(y, ref, allow_flush=True)
    if op == "exp":  # documented: overflows to inf from x = 88.38 instead of 88.72
        early = (x > 88.3) & (x <= 88.7228317) & np.isinf(y.reshape(-1))
        err[early] = 0.0
    assert err.max() <= MAX_ULP[op], _describe(np.repeat(x, 2) if op == "softmax" else x, y, ref, err)


@pytest.mark.parametrize("op", ["tanh", "erf"])
def test_fast_math_keeps_special_values(op):
    # NaN stays NaN, +-0.0 keep their sign, +-inf give +-1, tiny inputs (subnormals included) are exact
    x = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 2.0**-149, -(2.0**-140), 1e-20, -1e-30], np.float32)
    y, ref = _run(op, x, fast_math=True)
    err = ulp_errors(y, ref, allow_flush=False)
    assert np.isnan(y[0]) and not np.signbit(y[1]) and np.signbit(y[2])
    assert y[3] == 1 and y[4] == -1
    assert (err[1:] <= 1.0).all(), _describe(x[1:], y[1:], ref[1:], err[1:])


def test_fast_math_sigmoid_special_values_and_vectors(tmp_path):
    """NaN -> NaN, +-inf -> 1 / 0, +-0 -> 0.5, far tails 1 / 0; and no scalar libm call: the kernel is vectors
    (libm's sigmoid was 16 expf calls per 16 lanes, the Llama-style SwiGLU MLP's gate kernel 3x its matmul)."""
    from onnx import TensorProto, helper
    from optc.codegen.compile import compile_to_file

    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 200.0, -200.0], np.float32)
    y, _ = _run("sigmoid", x, fast_math=True)
    assert np.isnan(y[0]) and y[1] == 1 and y[2] == 0 and y[3] == 0.5 and y[4] == 0.5 and y[5] == 1 and y[6] == 0
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for fast, calls in ((True, False), (False, True)):
        out = tmp_path / f"sigmoid_{fast}.s"
        compile_to_file(model, out, emit="asm", fast_math=fast)
        assert ("expf" in out.read_text()) is calls


def test_fast_math_exp_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -104.0, 88.8], np.float32)
    y, _ = _run("exp", x, fast_math=True)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0 and y[3] == 1 and y[4] == 1
    assert y[5] == 0 and y[6] == np.inf


def test_ulp_errors_counts_what_it_should():
    # the measure itself: 1 ulp off is 1 (minus the reference's distance), signed zeros and NaN are exact
    ref = np.array([1.0, 1.0, 0.0, -0.0, np.nan, 3e-45], np.float64)
    y = np.array([1.0, np.nextafter(np.float32(1), np.float32(2)), 0.0, 0.0, np.nan, 0.0], np.float32)
    err = ulp_errors(y, ref, allow_flush=False)
    assert err[0] == 0 and err[1] == 1.0 and err[2] == 0 and err[3] == np.inf and err[4] == 0 and err[5] > 1
    assert ulp_errors(y, ref, allow_flush=True)[5] == 0


def test_pass_rewrites_only_under_fast_math():
    from optc.codegen.fast_math import fast_math_pass
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.exp(x))
            b = bb.emit(relax.op.tanh(a))
            c = bb.emit(relax.op.erf(b))
            d = bb.emit(relax.op.nn.softmax(c, axis=-1))
            e = bb.emit(relax.op.power(d, relax.const(np.float32(2.0))))
            f = bb.emit(relax.op.power(e, relax.const(np.float32(3.0))))
            out = bb.emit_output(f)
        bb.emit_func_output(out)
    mod = bb.get()
    fast = fast_math_pass(True)(mod).script()
    plain = fast_math_pass(False)(mod).script()
    assert "fast_exp" in fast and "fast_tanh" in fast and "fast_softmax" in fast and "R.erf" not in fast
    assert "R.power" not in fast  # x * x: exact, both ways; (x * x) * x under fast math only
    assert plain.count("R.power") == 1 and "R.const(3.0" in plain.split("R.power")[1].split("\n")[0]
    assert "R.exp" in plain and "R.erf" in plain and "R.nn.softmax" in plain and "fast_" not in plain
    assert "tanh_libm" in plain and "R.tanh" not in plain


@pytest.mark.parametrize("fast_math", [True, False])
def test_cube_power(fast_math):
    """Pow(x, 3) (tanh-form GELU): (x * x) * x under fast math, within 2 ulp where the cube is normal, NaN, +-inf and
    signed zeros exact; without fast math libm's powf (the rewrite is not applied)."""
    import optc
    from onnx import TensorProto, helper, numpy_helper

    x = _sample()
    x = x[np.isfinite(x) & (np.abs(x) < 1e12) | ~np.isfinite(x)]  # cubes up to 1e36 (float32 max: 3.4e38)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Pow", ["x", "three"], ["y"])], "cube",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    y = optc.compile(model.SerializeToString(), "cpu", fast_math=fast_math).run({"x": x})["y"]
    ref = x.astype(np.float64) ** 3
    err = ulp_errors(y, ref, allow_flush=fast_math)
    assert err.max() <= (2.0 if fast_math else 1.0), _describe(x, y, ref, err)
    special = ~np.isfinite(x) | (x == 0)
    assert special.sum() >= 5 and err[special].max() == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_uses_the_fast_erf_and_tanh(approximate):
    """ONNX Gelu (opset 20, both forms) under fast math: TVM's formula with the fast erf / tanh (no libm call in
    the pass's output), within 1e-6 relative of float64 plus 1e-6 absolute (below x = -4, 0.5 + erf(..) * 0.5 cancels:
    erf's error near -1, a few ulp of 1, times x; libm's erf loses the same there), NaN and +-inf as the formula's;
    without fast math the op is left to TVM's legalization (libm)."""
    import optc
    from onnx import TensorProto, helper
    from optc.codegen.fast_math import fast_math_pass
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    op = relax.op.nn.gelu if approximate == "none" else relax.op.nn.gelu_tanh
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(op(x)))
        bb.emit_func_output(out)
    fast = fast_math_pass(True)(bb.get()).script()
    plain = fast_math_pass(False)(bb.get()).script()
    assert "R.nn.gelu" not in fast and "R.erf" not in fast and "R.tanh" not in fast
    assert "R.nn.gelu" in plain

    v = np.concatenate([np.linspace(-12, 12, 4001), [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]]).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [v.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [v.size])]),
        opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    got = optc.compile(model).run({"x": v})["y"]
    x64 = v.astype(np.float64)  # the spec's formulas in float64 (-inf gives NaN: -inf x 0)
    with np.errstate(invalid="ignore"):
        if approximate == "none":
            want = 0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
        else:
            want = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
