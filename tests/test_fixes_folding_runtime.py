"""Regression tests for faults in constant folding and in compiled code / the runtime, each compared with
onnxruntime or the ONNX spec formula."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import optc
import pytest
from onnx import helper, numpy_helper
from optc import OptcError
from optc.codegen.build import find_nvcc
from optc.codegen.compile import compile_to_file
from optc.rewrites.passes.fold_constants import _REFERENCE_WRONG

from .conftest import run_ort
from .test_passes_support import check, op_types


def _lit(a: np.ndarray) -> str:
    """An ONNX text literal `{v0, v1, ...}` of a float or int array."""
    return "{" + ", ".join(repr(float(v)) if a.dtype.kind == "f" else str(int(v)) for v in a.reshape(-1)) + "}"


_RNG = np.random.default_rng(0)
_IMG = _RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
_X3 = _RNG.standard_normal((2, 3, 4)).astype(np.float32)


def _case(opset: int, shape: str, body: str, out: str = "y", extra_out: str = "") -> str:
    """A model `y = Add(x, <op of constants>)` at `opset`; `body` defines `r` from Constant nodes."""
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
    outs = f"float{shape} {out}" + (f", {extra_out}" if extra_out else "")
    return f"{header}g (float{shape} x) => ({outs}) {{\n{body}\n y = Add(x, r) }}"


# Cases onnx's reference evaluator (onnx 1.23) computes wrong; onnxruntime follows the spec. One per entry of
# fold_constants._REFERENCE_WRONG: folding them changed the model's outputs.
WRONG_CASES = {
    "LRN": _case(17, "[1,3,2,2]", """
      c = Constant<value=float[1,3,2,2] {0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0,9.0,10.0,11.0}>()
      r = LRN<size=3>(c)"""),
    "Softmax": _case(11, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Softmax<axis=1>(c)"),
    "LogSoftmax": _case(11, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = LogSoftmax(c)"),
    "Hardmax": _case(12, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Hardmax<axis=1>(c)"),
    "LpNormalization": _case(17, "[2,3,4]", f"""
      c = Constant<value=float[2,3,4] {_lit(_X3)}>()
      r = LpNormalization<axis=1, p=1>(c)"""),
    "MaxPool": _case(12, "[1,2,3,3]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      r, i = MaxPool<kernel_shape=[2,2]>(c)""", extra_out="int64[1,2,3,3] i"),
    "MaxUnpool": _case(11, "[1,1,5,5]", """
      v = Constant<value=float[1,1,2,2] {1.0, 2.0, 3.0, 4.0}>()
      k = Constant<value=int64[1,1,2,2] {1, 3, 8, 15}>()
      s = Constant<value=int64[4] {1, 1, 5, 5}>()
      r = MaxUnpool<kernel_shape=[2,2], strides=[2,2]>(v, k, s)"""),
    "RoiAlign": _case(10, "[1,2,2,2]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      b = Constant<value=float[1,4] {{0.5, 1.0, 3.0, 3.5}}>()
      n = Constant<value=int64[1] {{0}}>()
      r = RoiAlign<output_height=2, output_width=2, sampling_ratio=2>(c, b, n)"""),
    "Resize": _case(13, "[1,1,3,9]", f"""
      c = Constant<value=float[1,1,6,6] {_lit(np.arange(36, dtype=np.float32))}>()
      roi = Constant<value=float[0] {{}}>()
      sc = Constant<value=float[4] {{1.0, 1.0, 0.6, 1.5}}>()
      r = Resize<mode="nearest", nearest_mode="floor">(c, roi, sc)"""),
}


def test_every_reference_fault_has_a_case():
    assert set(WRONG_CASES) == set(_REFERENCE_WRONG)


@pytest.mark.parametrize("op", sorted(WRONG_CASES))
def test_reference_evaluator_faults_are_not_folded(op):
    """Before: folded with the reference evaluator's wrong values (LRN: max abs err 0.047 vs onnxruntime)."""
    _, after, _ = check(WRONG_CASES[op], "fold-constants")
    assert op in op_types(after)


# The same ops where the reference evaluator is right still fold.
RIGHT_CASES = {
    "Softmax": _case(13, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Softmax<axis=1>(c)"),
    "LpNormalization": _case(17, "[2,3,4]", f"""
      c = Constant<value=float[2,3,4] {_lit(_X3)}>()
      r = LpNormalization<axis=1, p=2>(c)"""),
    "MaxPool": _case(12, "[1,2,3,3]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      r = MaxPool<kernel_shape=[2,2]>(c)"""),
    "RoiAlign": _case(16, "[1,2,2,2]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      b = Constant<value=float[1,4] {{0.5, 1.0, 3.0, 3.5}}>()
      n = Constant<value=int64[1] {{0}}>()
      r = RoiAlign<output_height=2, output_width=2, sampling_ratio=2>(c, b, n)"""),
}


@pytest.mark.parametrize("op", sorted(RIGHT_CASES))
def test_reference_evaluator_ops_still_fold_where_right(op):
    _, after, _ = check(RIGHT_CASES[op], "fold-constants")
    assert op_types(after) == ["Add"]


# -- constants whose value onnxruntime computes otherwise than numpy / the spec (fold_constants._RUNTIMES_DIFFER) --

F32, F64, I32, I64 = np.float32, np.float64, np.int32, np.int64
NZ = -0.0
# op -> (attributes, constants where folding changed the output on onnxruntime (a breaker's finds), ordinary
# constants that still fold); the constants are the node's inputs in order (None: absent)
DIFFER_CASES = {
    "Relu": ({}, [np.array([NZ, 1, -2], F32)], [np.array([0.5, 1, -2], F32)]),
    "Max": ({}, [np.array([NZ, 0], F32), np.array([0, NZ], F32)], [np.array([1, 0], F32), np.array([0, 2], F32)]),
    "Min": ({}, [np.array([0, NZ], F32), np.array([NZ, 0], F32)], [np.array([1, 0], F32), np.array([0, 2], F32)]),
    "Sum": ({}, [np.array([NZ], F32), np.array([NZ], F32)], [np.array([1.5], F32), np.array([2], F32)]),
    "Mean": ({}, [np.array([NZ], F32), np.array([NZ], F32)], [np.array([1.5], F32), np.array([2], F32)]),
    "ReduceMax": ({"keepdims": 0}, [np.array([[NZ, 0, np.nan]], F32)], [np.array([[1, 0, 3]], F32)]),
    "ReduceMin": ({"keepdims": 0}, [np.array([[0, NZ, np.nan]], F32)], [np.array([[1, 0, 3]], F32)]),
    "Selu": ({}, [np.array([NZ, 1], F32)], [np.array([-1, 1], F32)]),
    "Celu": ({}, [np.array([NZ, 1], F32)], [np.array([-1, 1], F32)]),
    "ReduceLogSumExp": ({"keepdims": 0}, [np.array([[-np.inf, -np.inf], [np.inf, 1], [np.inf, np.inf]], F32)],
                        [np.array([[0, 0], [3, 1]], F32)]),
    "TopK": ({}, [np.array([[np.nan, 1, 2]], F32), np.array([3], I64)], [np.array([[0, 1, 2]], F32), np.array([2], I64)]),
    "Hardmax": ({}, [np.array([[np.nan, 1, 2], [1, np.nan, 0]], F32)], [np.array([[0, 1, 2], [1, 3, 0]], F32)]),
    "Unique": ({"sorted": 1}, [np.array([3, 1, np.nan, 1, np.nan], F32)], [np.array([3, 1, 2, 1], F32)]),
    "ArgMax": ({"axis": 1}, [np.array([[np.nan, 1, 5], [2, np.nan, 3]], F32)], [np.array([[0, 1, 5]], F32)]),
    "ArgMin": ({"axis": 1}, [np.array([[np.nan, 1, 5], [2, np.nan, 3]], F32)], [np.array([[0, 1, 5]], F32)]),
    "Pow": ({}, [np.array([2**27 + 1, 3, 10], I64), np.array([2, 39, 19], I64)],
            [np.array([3, -2], I64), np.array([5, 3], I64)]),
    "Mod": ({"fmod": 1}, [np.array([2**62 + 3, -(2**62) - 3], I64), np.array([5, 5], I64)],
            [np.array([7, -7], I64), np.array([5, 5], I64)]),
    "ReduceSum": ({"keepdims": 0}, [np.array([2**31 - 1, 1], I32)], [np.array([2**30, 5], I32)]),
    "ReduceProd": ({"keepdims": 0}, [np.array([2**20, 2**20], I32)], [np.array([2**10, 2**10], I32)]),
    "ReduceSumSquare": ({"keepdims": 0}, [np.array([2**30, 3], I32)], [np.array([2**10, 3], I32)]),
    "ReduceL1": ({"keepdims": 0}, [np.array([2**31 - 1, 1], I32)], [np.array([2**30, -5], I32)]),
    "ReduceL2": ({"keepdims": 0}, [np.array([2**30, 2**30], I32)], [np.array([3, 4], I32)]),
    "Clip": ({}, [np.array([np.inf, -np.inf, 1], F32), None, np.array(2, F32)],
             [np.array([5, -3, 1], F32), None, np.array(2, F32)]),
    "Cast": ({"to": onnx.TensorProto.FLOAT16}, [np.array([1 + 2**-11 + 2**-40, 2049 + 2**-30], F64)],
             [np.array([1.5, 2048.25], F64)]),
    "Range": ({}, [np.array(0.1, F32), np.array(10, F32), np.array(0.1, F32)],
              [np.array(0.5, F32), np.array(8, F32), np.array(0.5, F32)]),
}


def _constant_model(op: str, attrs: dict, consts: list) -> onnx.ModelProto:
    names = ["" if c is None else f"c{i}" for i, c in enumerate(consts)]
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(c)) for n, c in zip(names, consts,
                                                                                                    strict=True) if n]
    outputs = ["d", "indices"] if op == "TopK" else ["d"]  # (TopK's Indices output is not optional)
    nodes += [helper.make_node(op, names, outputs, **attrs), helper.make_node("Identity", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes() if a.dtype.kind == "f" else np.array_equal(a, b)


def test_every_runtime_difference_has_a_case():
    from optc.rewrites.passes.fold_constants import _RUNTIMES_DIFFER

    assert set(DIFFER_CASES) == set(_RUNTIMES_DIFFER)


@pytest.mark.parametrize("op", sorted(DIFFER_CASES))
def test_constants_onnxruntime_computes_otherwise_are_not_folded(op):
    """Folded, these gave numpy's / the spec's value where onnxruntime computes another (Relu(-0.0) = +0.0 instead
    of -0.0, int64 Pow exact instead of through double, ReduceMax skipping NaN, ...): left to the runtime, the
    outputs are onnxruntime's bit for bit. The same op on ordinary constants still folds."""
    import onnxruntime as ort

    attrs, differ, ordinary = DIFFER_CASES[op]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for consts, folded in ((differ, False), (ordinary, True)):
        model = _constant_model(op, attrs, consts)
        after = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=2))
        assert (op not in [n.op_type for n in after.graph.node]) == folded, [n.op_type for n in after.graph.node]
        want = run_ort(model, {}, options)[0]
        got = run_ort(after, {}, options)[0]
        assert _bits_equal(got, want), (got, want)


# -- piecewise activations at +-0.0 and NaN, compiled -------------------------------------------------

_SPECIAL = np.array([-0.0, 0.0, -1.0, 2.0, -0.3, 0.7, np.nan, -np.inf, np.inf], np.float32)


def _activation_model(op: str, attrs: dict, slope: np.ndarray | None = None, dtype: int = 1, shape=(9,)):
    """y = op(x[, slope]) for x of `shape` (9 elements); the slope (PRelu) is an initializer, or an input when
    None."""
    names = ["x"] if op != "PRelu" else ["x", "s"]
    inits = [numpy_helper.from_array(slope, "s")] if slope is not None else []
    inputs = [helper.make_tensor_value_info("x", dtype, list(shape))]
    if op == "PRelu" and slope is None:
        inputs.append(helper.make_tensor_value_info("s", dtype, [1]))
    graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", dtype, list(shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _zeros_and_nans_equal(got: np.ndarray, want: np.ndarray) -> bool:
    """NaN at the same places, and where `want` is a zero, the same zero (same sign)."""
    zero = want == 0
    return bool((np.isnan(got) == np.isnan(want)).all() and (got[zero] == 0).all()
                and (np.signbit(got[zero]) == np.signbit(want[zero])).all())


ACTIVATIONS = {
    "LeakyRelu-negative-alpha": ("LeakyRelu", {"alpha": -0.5}, None),
    "LeakyRelu": ("LeakyRelu", {"alpha": 0.1}, None),
    "PRelu-negative-slope": ("PRelu", {}, np.array([-0.25], np.float32)),
    "PRelu-positive-slope": ("PRelu", {}, np.array([0.25], np.float32)),
    "PRelu-slope-input": ("PRelu", {}, None),
    "Selu": ("Selu", {}, None),
    "ThresholdedRelu": ("ThresholdedRelu", {"alpha": 0.5}, None),
    "HardSigmoid": ("HardSigmoid", {"alpha": 0.3, "beta": 0.6}, None),
    "HardSigmoid-zero-beta": ("HardSigmoid", {"alpha": 0.2, "beta": 0.0}, None),
    "Elu": ("Elu", {"alpha": 0.7}, None),
    "Celu": ("Celu", {"alpha": 0.5}, None),
    "Shrink": ("Shrink", {"lambd": 0.5, "bias": 0.2}, None),
}


@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
def test_piecewise_activation_signed_zero_and_nan_as_onnxruntime(case):
    """Before: LeakyRelu(alpha=-0.5) and PRelu with a negative slope gave +0.0 for -0.0 and -0.0 for +0.0,
    Selu and HardSigmoid turned NaN into a number, ThresholdedRelu gave -0.0 and NaN where ONNX says 0."""
    op, attrs, slope = ACTIVATIONS[case]
    model = _activation_model(op, attrs, slope)
    feeds = {"x": _SPECIAL}
    if op == "PRelu" and slope is None:
        feeds["s"] = np.array([-0.25], np.float32)
    want = run_ort(model, feeds)[0]
    got = optc.compile(model).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert _zeros_and_nans_equal(got, want), f"{case}: optc {got} vs onnxruntime {want}"


@pytest.mark.parametrize("case", sorted(c for c in ACTIVATIONS if ACTIVATIONS[c][2] is not None or
                                         ACTIVATIONS[c][0] != "PRelu"))
def test_piecewise_activation_of_a_0d_tensor_as_onnxruntime(case):
    """The same on a 0-d x, one special value at a time: a 0-d kernel's constants are immediates, and TVM's
    simplifier dropped HardSigmoid's `+ 0.0` (beta = 0): HardSigmoid(-0.0) gave -0.0, onnxruntime +0.0."""
    op, attrs, slope = ACTIVATIONS[case]
    if slope is not None:
        slope = slope.reshape(())
    model = _activation_model(op, attrs, slope, shape=())
    lib = optc.compile(model)
    for v in _SPECIAL:
        feeds = {"x": np.array(v, np.float32)}
        want = run_ort(model, feeds)[0]
        got = lib.run(feeds)["y"]
        assert got.shape == () and _zeros_and_nans_equal(np.atleast_1d(got), np.atleast_1d(want)), (case, v, got, want)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("op", ["Selu", "ThresholdedRelu", "LeakyRelu", "HardSigmoid"])
def test_piecewise_activation_builds_for_float16_and_double(op):
    """Before: the frontend's Selu and ThresholdedRelu used float32 constants and failed to build for float16,
    LeakyRelu(alpha < 0) swapped the signed zeros and HardSigmoid turned NaN into 1. Compared with the ONNX formula computed in float64 (onnxruntime has no double kernels for these)."""
    x = np.array([-0.0, 0.0, -1.0, 2.0, -0.25, 0.75, np.nan, -3.0, 3.0], np.float64)
    alpha, gamma = 1.67326319217681884765625, 1.05070102214813232421875
    formulas = {
        "Selu": (lambda v: np.where(v <= 0, gamma * (alpha * np.exp(v) - alpha), gamma * v), {}),
        "ThresholdedRelu": (lambda v: np.where(v > 0.5, v, 0.0), {"alpha": 0.5}),
        "LeakyRelu": (lambda v: np.where(v < 0, -0.5 * v, v), {"alpha": -0.5}),
        "HardSigmoid": (lambda v: np.maximum(0, np.minimum(1, 0.2 * v + 0.5)), {}),
    }
    formula, attrs = formulas[op]
    for onnx_type, np_type, tol in ((10, np.float16, 2e-3), (11, np.float64, 1e-12)):
        got = optc.compile(_activation_model(op, attrs, dtype=onnx_type)).run({"x": x.astype(np_type)})["y"]
        assert got.dtype == np_type
        np.testing.assert_allclose(got.astype(np.float64), formula(x), rtol=tol, atol=tol)
        assert _zeros_and_nans_equal(got.astype(np.float64), formula(x))


# -- out-of-range indices in compiled code ------------------------------------------------------------

_X26 = np.arange(12, dtype=np.float32).reshape(2, 6)
_ONES = np.ones((2, 2), np.float32)

# op -> (graph signature and body, valid feeds, feeds with an index out of range). onnxruntime refuses the
# latter; before, the library read or wrote out of bounds: garbage for an index just past the end, a segfault
# for a far one.
INDEX_CASES = {
    "Gather": ("(float[N, 6] x, int64[K] i) => (float[N, K] y) { y = Gather<axis=1>(x, i) }",
               {"x": _X26, "i": np.array([0, -6, 5])}, [{"i": np.array([6])}, {"i": np.array([-7])},
                                                        {"i": np.array([10**8])}]),
    "Gather-int32": ("(float[2, 6] x, int32[2, 2] i) => (float[2, 2, 6] y) { y = Gather<axis=0>(x, i) }",
                     {"x": _X26, "i": np.array([[0, -1], [1, -2]], np.int32)},
                     [{"i": np.array([[0, 2], [1, 1]], np.int32)}]),
    "GatherElements": ("(float[N, 6] x, int64[N, 3] i) => (float[N, 3] y) { y = GatherElements<axis=1>(x, i) }",
                       {"x": _X26, "i": np.array([[0, -6, 5], [1, 2, 3]])},
                       [{"i": np.array([[0, 6, 5], [1, 2, 3]])}, {"i": np.array([[0, 1, 5], [1, 2, -10**9]])}]),
    "GatherND": ("(float[2, 6] x, int64[K, 2] i) => (float[K] y) { y = GatherND(x, i) }",
                 {"x": _X26, "i": np.array([[0, 5], [-1, -6]])}, [{"i": np.array([[2, 0]])},
                                                                   {"i": np.array([[0, 10**8]])}]),
    "ScatterElements": ("(float[N, 6] x, int64[N, 2] i, float[N, 2] u) => (float[N, 6] y) "
                        "{ y = ScatterElements<axis=1>(x, i, u) }",
                        {"x": _X26, "i": np.array([[0, -1], [2, 3]]), "u": _ONES},
                        [{"i": np.array([[0, 6], [2, 3]])}, {"i": np.array([[0, 10**8], [2, 3]])}]),
    "ScatterND": ("(float[2, 6] x, int64[K, 2] i, float[K] u) => (float[2, 6] y) { y = ScatterND(x, i, u) }",
                  {"x": _X26, "i": np.array([[0, 5], [-1, -6]]), "u": np.ones(2, np.float32)},
                  [{"i": np.array([[0, 6], [1, 1]])}, {"i": np.array([[10**8, 0], [1, 1]])}]),
    "NegativeLogLikelihoodLoss": ("(float[N, 6] x, int64[N] i) => (float y) "
                                  "{ y = NegativeLogLikelihoodLoss<reduction=\"mean\">(x, i) }",
                                  {"x": _X26, "i": np.array([5, -1])}, [{"i": np.array([0, 6])},
                                                                        {"i": np.array([10**8, 0])}]),
}


@pytest.fixture(scope="module", params=sorted(INDEX_CASES))
def index_case(request):
    text, ok, bad = INDEX_CASES[request.param]
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 18]>\ng {text}')
    return request.param, model, optc.compile(model), ok, bad


def test_indices_in_range_as_onnxruntime(index_case):
    _, model, module, ok, _ = index_case
    np.testing.assert_array_equal(module.run(ok)["y"], run_ort(model, ok)[0])


def test_out_of_range_index_is_a_one_line_error(index_case):
    """Before: garbage (an index just past the end) or a segfault (a far one); onnxruntime refuses them."""
    op, model, module, ok, bad = index_case
    for change in bad:
        feeds = {**ok, **change}
        with pytest.raises(Exception, match="(?i)out of|invalid ind"):  # onnxruntime refuses them too
            run_ort(model, feeds)
        with pytest.raises(OptcError, match=rf"^the inputs do not fit the model: {op.split('-')[0]} node 'y': "
                                            "an index is out of range for data ax[ie]s"):
            module.run(feeds)


def test_constant_out_of_range_index_is_refused_at_compile_time():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 6] x) => (float[N, 2] y) { i = Constant<value=int64[2] {1, 6}>() y = Gather<axis=1>(x, i) }""")
    with pytest.raises(OptcError, match=r"^Gather node 'y': index 6 is out of range for data axis 1 of size 6"):
        optc.compile(model)


def test_optc_run_out_of_range_index_exits_2(tmp_path):
    """Before: SIGSEGV (rc 139) for index 1e8, exit 0 with garbage for index 6."""
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 18]>\ng {INDEX_CASES["Gather"][0]}')
    onnx.save(model, tmp_path / "g.onnx")
    lib = optc.compile(model).export(tmp_path / "g.so")
    for index in (10**8, 6):
        np.savez(tmp_path / "in.npz", x=_X26, i=np.array([index]))
        run = subprocess.run([sys.executable, "-m", "optc", "run", str(lib), "--inputs", str(tmp_path / "in.npz")],
                             capture_output=True, text=True)
        assert run.returncode == 2, run.stderr[-500:]
        assert run.stderr.count("\n") == 1 and "Gather node 'y': an index is out of range" in run.stderr


def test_index_checks_build_for_cuda(tmp_path):
    """A CUDA kernel cannot fail the call: for GPU targets the checks only wrap negative indices, and the
    library builds (nvcc; no GPU needed)."""
    if find_nvcc() is None:
        pytest.skip("no nvcc")
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 18]>\ng {INDEX_CASES["Gather"][0]}')
    compile_to_file(model, tmp_path / "g.so", target="cuda")
    assert (tmp_path / "g.so").stat().st_size > 0


# -- artifacts whose library is not the one their metadata describes ---------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Two compiled models (a: y = x + 1; b: y = Gather(x, i)) and their ONNX files."""
    root = tmp_path_factory.mktemp("artifacts")
    models = {"a": "(float[N, 6] x) => (float[N, 6] y) { one = Constant<value=float {1.0}>() y = Add(x, one) }",
              "b": INDEX_CASES["Gather"][0]}
    for name, text in models.items():
        model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 18]>\ng {text}')
        onnx.save(model, root / f"{name}.onnx")
        compile_to_file(model, root / f"{name}.so")
    return root


def _artifact(root, name: str, library: bytes, meta: dict) -> str:
    (root / f"{name}.so").write_bytes(library)
    (root / f"{name}.so.json").write_text(json.dumps(meta))
    return str(root / f"{name}.so")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc", *map(str, args)], capture_output=True, text=True)


def _old_metadata(meta: dict) -> dict:
    """Metadata as optc wrote it before it recorded the library's size and sha256."""
    return {k: v for k, v in meta.items() if k not in ("library_size", "library_sha256")}


def test_export_records_library_size_and_sha256(artifacts):
    meta = json.loads((artifacts / "a.so.json").read_text())
    data = (artifacts / "a.so").read_bytes()
    assert meta["library_size"] == len(data)
    assert meta["library_sha256"] == hashlib.sha256(data).hexdigest()
    optc.runtime.load(artifacts / "a.so")
    optc.runtime.load(_artifact(artifacts, "old", data, _old_metadata(meta)))  # older metadata still loads


@pytest.mark.parametrize("old", [False, True], ids=["metadata", "old-metadata"])
def test_truncated_library_is_a_one_line_error(artifacts, old):
    """Before: `optc run` died with SIGBUS (rc 135) and no message; `optc inspect` exited 0."""
    meta = json.loads((artifacts / "a.so.json").read_text())
    lib = _artifact(artifacts, "trunc", (artifacts / "a.so").read_bytes()[:5000],
                    _old_metadata(meta) if old else meta)
    with pytest.raises(OptcError, match=r"^artifact '.*trunc.so' is (truncated|5000 bytes)"):
        optc.runtime.load(lib)
    for command in ("run", "inspect"):
        result = _cli(command, lib)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-400:]


def test_changed_library_is_a_one_line_error(artifacts):
    meta = json.loads((artifacts / "a.so.json").read_text())
    data = bytearray((artifacts / "a.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(OptcError, match="sha256 differs"):
        optc.runtime.load(_artifact(artifacts, "changed", bytes(data), meta))


def test_library_of_another_model_is_a_one_line_error(artifacts):
    """b's library beside a's metadata (of an older optc, without size and sha256). Before: `optc bench
    --artifact` exited 3 with TVM's 'expects 2 arguments (x, i), but 1 arguments were provided'."""
    meta = _old_metadata(json.loads((artifacts / "a.so.json").read_text()))
    lib = _artifact(artifacts, "swapped", (artifacts / "b.so").read_bytes(), meta)
    with pytest.raises(OptcError, match=r"does not match its metadata: the library takes inputs \(x, i\), the "
                                        r"metadata lists \(x\)"):
        optc.runtime.load(lib)
    for args in (("run", lib), ("bench", artifacts / "a.onnx", "--artifact", lib, "--repeat", 1, "--warmup", 0)):
        result = _cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-400:]
        assert "does not match its metadata" in result.stderr


def test_index_check_builds_beside_a_packed_weight():
    """An embedding Gather (run-time ids, constant table) before a MatMul whose weight is packed at compile time:
    the packing pass inspects every called kernel and refused the check's bare loop (a QDQ GPT-2-like failed to
    build: 'The body of the primfunc should be a root block')."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 128)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((128, 256)).astype(np.float32), "w")  # 128 KiB: packed
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [table, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    module = optc.compile(model)
    ids = rng.integers(-50, 50, (1, 16)).astype(np.int64)
    np.testing.assert_allclose(module.run({"ids": ids})["y"], run_ort(model, {"ids": ids})[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(OptcError, match="out of range"):
        module.run({"ids": np.full((1, 16), 50, np.int64)})
