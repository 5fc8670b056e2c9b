"""optc's own converters for ops whose TVM frontend lowering computes something else: IEEE special values
(NaN through Relu/Clip/Max/Min/reductions/pools), attribute semantics (Reduce noop_with_empty_axes, Reshape
allowzero, Slice clamping, OneHot depth), mixed-type Pow, refused casts, and the one-line refusals.

Each case compiles a small model with `optc.compile` and compares with onnxruntime exactly (NaN at the same
places, zeros and infinities with their sign); where onnxruntime and the ONNX spec disagree, the test follows
the spec and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .conftest import run_ort
from .test_shared_cases import identical

NAN, INF = np.nan, np.inf
X7 = np.array([NAN, -1.0, -0.0, 0.0, 2.0, INF, -INF], np.float32)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _in(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _out(name="y", dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, None)


def _compiled(model, feeds) -> list[np.ndarray]:
    return list(optc.compile(model).run(feeds).values())


def _assert_as_onnxruntime(model, feeds):
    want = run_ort(model, feeds)
    got = _compiled(model, feeds)
    for g, w in zip(got, want, strict=True):
        assert identical(g, w) is None, identical(g, w)


# -- IEEE special values -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Relu", "Neg", "Abs"])
def test_unary_keeps_nan_inf_and_signed_zero(op):
    _assert_as_onnxruntime(_model([helper.make_node(op, ["x"], ["y"])], [_in("x", [7])], [_out()]), {"x": X7})


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_propagate_nan(op):
    other = np.array([1, 1, 0.0, -0.0, NAN, 1, 1], np.float32)
    model = _model([helper.make_node(op, ["x", "c"], ["y"])], [_in("x", [7]), _in("c", [7])], [_out()])
    _assert_as_onnxruntime(model, {"x": X7, "c": other})


def test_max_min_of_integers_are_exact():
    a = np.array([2**62 + 1, -5, 7], np.int64)
    b = np.array([2**62, -4, 7], np.int64)
    model = _model([helper.make_node("Max", ["a", "b"], ["y"])], [_in("a", [3], TensorProto.INT64),
                   _in("b", [3], TensorProto.INT64)], [_out("y", TensorProto.INT64)])
    _assert_as_onnxruntime(model, {"a": a, "b": b})


def test_clip_keeps_nan_and_a_nan_bound_is_no_bound():
    lo, hi = numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(NAN, np.float32), "hi")
    model = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [_in("x", [7])], [_out()], [lo, hi])
    _assert_as_onnxruntime(model, {"x": X7})


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_propagate_nan_as_the_reference_does(op):
    # onnxruntime keeps a leading NaN and skips later ones (its answer depends on the position); the onnx
    # reference evaluator and numpy give NaN for any slice holding a NaN, and so does optc.
    x = np.array([[NAN, 1, 2, 3], [1, NAN, -1, -2], [1, 2, 3, 4]], np.float32)
    model = _model([helper.make_node(op, ["x"], ["y"], keepdims=0, axes=[1])], [_in("x", [3, 4])], [_out()], opset=17)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    assert identical(_compiled(model, {"x": x})[0], want) is None
    assert np.isnan(want[:2]).all() and not np.isnan(want[2])


def test_reduce_max_of_only_infinities_is_that_infinity():
    # TVM starts a max reduction from the lowest finite float: a slice of -inf gave -3.4e38
    x = np.array([[-INF, -INF], [INF, INF], [-INF, 2]], np.float32)
    for op, want in (("ReduceMax", [-INF, INF, 2]), ("ReduceMin", [-INF, INF, -INF])):
        model = _model([helper.make_node(op, ["x"], ["y"], keepdims=0, axes=[1])], [_in("x", [3, 2])], [_out()],
                       opset=17)
        assert _compiled(model, {"x": x})[0].tolist() == want


def test_argmax_points_at_the_first_nan():
    x = np.array([[NAN, 1, 2, 3], [1, 5, NAN, NAN], [1, 2, 3, 0]], np.float32)
    model = _model([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)], [_in("x", [3, 4])],
                   [_out("y", TensorProto.INT64)])
    assert _compiled(model, {"x": x})[0].tolist() == [0, 2, 2]  # numpy's and the reference evaluator's answer


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_maxpool_propagates_nan(op):
    # onnxruntime's answer depends on where in the window the NaN is (here: the first window skips it, the last
    # one gives NaN), the reference evaluator skips NaN; optc gives NaN for any window holding one, as ReduceMax.
    x = np.array([[[[NAN, 1, 2, 3], [1, 2, 3, 4], [5, 1, NAN, 0], [0, 0, NAN, NAN]]]], np.float32)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]} if op == "MaxPool" else {}
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_in("x", [1, 1, 4, 4])], [_out()])
    want = np.array([[[[NAN, 4], [5, NAN]]]] if op == "MaxPool" else [[[[NAN]]]], np.float32)
    assert identical(_compiled(model, {"x": x})[0], want) is None


POOLS = {  # name: (input shape, MaxPool attributes)
    "3x3 s2 pad1": ([2, 3, 7, 7], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "2x2 s2 ceil": ([1, 2, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "3x3 dilation 2": ([1, 2, 7, 6], {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [0, 1, 2, 1]}),
    "1-D k3": ([2, 3, 9], {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),
    "3-D k2": ([1, 2, 4, 4, 4], {"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}),
    "same upper": ([1, 2, 6, 5], {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
}


def _ieee_max_pool(x: np.ndarray, attrs: dict, out_shape: tuple) -> np.ndarray:
    """MaxPool by numpy over the windows' elements inside x (padding is no element): NaN when one is NaN, -inf
    for a window of -inf. `out_shape`: onnxruntime's output shape (its ceil mode and auto_pad sizes)."""
    k = attrs["kernel_shape"]
    n = len(k)
    strides, dil = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    if attrs.get("auto_pad") == "SAME_UPPER":
        total = [max(0, (o - 1) * s + (kk - 1) * d + 1 - i)
                 for o, s, kk, d, i in zip(out_shape[2:], strides, k, dil, x.shape[2:], strict=True)]
        before = [t // 2 for t in total]
    else:
        before = attrs.get("pads", [0] * 2 * n)[:n]
    y = np.empty(out_shape, x.dtype)
    for out in np.ndindex(*out_shape[2:]):
        index = []
        for axis in range(n):
            pos = out[axis] * strides[axis] + np.arange(k[axis]) * dil[axis] - before[axis]
            index.append(pos[(pos >= 0) & (pos < x.shape[2 + axis])])
        window = x[(slice(None), slice(None), *np.ix_(*index))].reshape(*x.shape[:2], -1)
        y[(slice(None), slice(None), *out)] = window.max(axis=-1)  # numpy's max propagates NaN
    return y


@pytest.mark.parametrize("name", list(POOLS))
def test_maxpool_is_ieee_in_every_window_shape(name):
    """optc's max-pool kernel (codegen/max_pool.py): finite inputs as onnxruntime exactly; windows of -inf give
    -inf (TOPI started and padded with -3.4e38, as onnxruntime does in a padded window) and a NaN in a window
    gives NaN, as numpy's max of the window's elements."""
    shape, attrs = POOLS[name]
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [_in("x", shape)], [_out()])
    rng = np.random.default_rng(3)
    finite = rng.standard_normal(shape).astype(np.float32)
    _assert_as_onnxruntime(model, {"x": finite})
    special = np.where(rng.random(shape) < 0.85, -INF, finite).astype(np.float32)
    special.reshape(-1)[rng.choice(special.size, 3, replace=False)] = NAN
    special.reshape(-1)[:4] = -0.0
    got = _compiled(model, {"x": special})[0]
    want = _ieee_max_pool(special, attrs, run_ort(model, {"x": finite})[0].shape)
    assert identical(got, want) is None, identical(got, want)
    assert (want == -INF).any() and np.isnan(want).any()  # the cases this test is about occur


def test_global_maxpool_of_infinities_and_nan():
    x = np.full([2, 3, 4, 5], -INF, np.float32)
    x[0, 1, 2, 3], x[1, 2, 0, 0], x[1, 0, 1, 1] = 7.0, NAN, -0.0
    model = _model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], [_in("x", list(x.shape))], [_out()])
    want = x.max(axis=(2, 3), keepdims=True)
    assert identical(_compiled(model, {"x": x})[0], want) is None


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_bfloat16_maxpool_is_ieee(op):
    """bfloat16 (opset 22): the kernel's NaN test is v != v there (TVM has no isnan for bfloat16; the build
    failed). Values exactly representable in bfloat16: the result is the float32 reference's, cast."""
    import ml_dtypes

    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]} if op == "MaxPool" else {}
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_in("x", [1, 2, 4, 4], TensorProto.BFLOAT16)],
                   [_out("y", TensorProto.BFLOAT16)], opset=22)
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) - 8
    x[0, 0, :2, :2], x[0, 1, 3, 3] = -INF, NAN
    got = _compiled(model, {"x": x.astype(ml_dtypes.bfloat16)})[0].astype(np.float32)
    want = _ieee_max_pool(x, attrs, (1, 2, 2, 2)) if op == "MaxPool" else x.max(axis=(2, 3), keepdims=True)
    assert identical(got, want) is None, identical(got, want)


@pytest.mark.parametrize("dtype", [TensorProto.INT8, TensorProto.UINT8])
def test_integer_maxpool_keeps_topi(dtype):
    """Integer max-pools keep TOPI's kernel (their lowest value is exact, no NaN): as onnxruntime, padding
    included."""
    np_type = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[dtype]
    attrs = POOLS["3x3 s2 pad1"][1]
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [_in("x", [1, 2, 7, 7], dtype)],
                   [_out("y", dtype)])
    info = np.iinfo(np_type)
    x = np.random.default_rng(0).integers(info.min, info.max + 1, [1, 2, 7, 7]).astype(np_type)
    x[0, 0] = info.min
    _assert_as_onnxruntime(model, {"x": x})


# -- attribute semantics ------------------------------------------------------------------------------


@pytest.mark.parametrize("op, expected", [
    ("ReduceSum", lambda x: x), ("ReduceSumSquare", lambda x: x * x), ("ReduceL1", np.abs),
    ("ReduceL2", np.abs), ("ReduceMax", lambda x: x), ("ReduceLogSum", np.log),
])
def test_reduce_noop_with_empty_axes(op, expected):
    x = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    model = _model([helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1)], [_in("x", [2, 2])], [_out()])
    with np.errstate(invalid="ignore"):
        want = expected(x).astype(np.float32)
    assert identical(_compiled(model, {"x": x})[0], want) is None
    _assert_as_onnxruntime(model, {"x": x})


@pytest.mark.parametrize("op, value", [("ReduceSum", 0.0), ("ReduceProd", 1.0), ("ReduceMax", -INF),
                                       ("ReduceMin", INF), ("ReduceLogSumExp", -INF)])
@pytest.mark.parametrize("dims", [[2, 0, 3], ["a", "n", 3]])
def test_reduce_over_zero_elements_gives_the_identity(op, value, dims):
    """A static 0 folds to the identity; a symbolic length that is 0 when it runs gives it too (ReduceMax and
    ReduceMin gave TVM's start, the lowest / highest finite float)."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    model = _model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [_in("x", dims)], [_out()], [axes])
    got = _compiled(model, {"x": np.zeros((2, 0, 3), np.float32)})[0]
    assert identical(got, np.full((2, 1, 3), value, np.float32)) is None


def test_reduce_of_bools_is_any_and_all():
    x = np.array([[True, False], [True, True]])
    for op, want in (("ReduceMax", [True, True]), ("ReduceMin", [False, True])):
        model = _model([helper.make_node(op, ["x"], ["y"], keepdims=0, axes=[1])], [_in("x", [2, 2], TensorProto.BOOL)],
                       [_out("y", TensorProto.BOOL)], opset=17)
        assert _compiled(model, {"x": x})[0].tolist() == want


@pytest.mark.parametrize("start, end, step", [(1, 2**63 - 1, 1), (-2**63, 2**63 - 1, 1), (5, -2**63, -1),
                                              (-1, -100, -2), (100, 0, -3), (2, 2, 1), (-2, 100, 4)])
def test_slice_bounds_clamp_as_the_spec_says(start, end, step):
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in
             ((start, "s"), (end, "e"), (1, "a"), (step, "st"))]
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [_in("x", [2, 6])], [_out()], inits)
    assert identical(_compiled(model, {"x": x})[0], x[:, start:end:step]) is None  # Python's slicing agrees here


def test_slice_where_onnxruntime_departs_from_the_spec():
    # end = INT64_MAX with a negative step: the spec clamps it to dim-1, so x[:, 6:INT64_MAX:-1] is empty (the
    # reference evaluator agrees); onnxruntime 1.31 returns the whole reversed row instead.
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in
             ((6, "s"), (2**63 - 1, "e"), (1, "a"), (-1, "st"))]
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [_in("x", [2, 6])], [_out()], inits)
    assert _compiled(model, {"x": x})[0].shape == (2, 0)
    assert ReferenceEvaluator(model).run(None, {"x": x})[0].shape == (2, 0)


def test_slice_where_the_reference_evaluator_departs_from_the_spec():
    # start = INT64_MIN with a negative step: the spec clamps the adjusted start to [0, dim-1], so the slice
    # holds element 0 (onnxruntime agrees); the reference evaluator uses Python's slicing and returns nothing.
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in
             ((-2**63, "s"), (-2**63, "e"), (1, "a"), (-1, "st"))]
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [_in("x", [2, 6])], [_out()], inits)
    _assert_as_onnxruntime(model, {"x": x})
    assert _compiled(model, {"x": x})[0].tolist() == [[0.0], [6.0]]


@pytest.mark.parametrize("shape, allowzero, x_shape", [([0, -1], 0, (4, 6)), ([0, 3], 1, (0, 6)),
                                                       ([3, 4, 0], 1, (0, 3, 4)), ([-1], 0, (4, 6))])
def test_reshape_zero_copies_or_is_zero_with_allowzero(shape, allowzero, x_shape):
    x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape)
    s = numpy_helper.from_array(np.array(shape, np.int64), "s")
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=allowzero)], [_in("x", list(x_shape))],
                   [_out()], [s])
    _assert_as_onnxruntime(model, {"x": x})


@pytest.mark.parametrize("shape, ok, bad", [([1, 4], (1, 4), (3, 4)), ([-1, 4], (2, 6), (1, 6)),
                                            ([0, 2, 2], (5, 4), None)])
def test_reshape_of_a_symbolic_input_checks_the_size_when_it_runs(shape, ok, bad, tmp_path):
    """A Reshape to a fixed shape of an input with a symbolic dim: the VM's reshape does not check the element
    count (`[N, 4] -> [1, 4]` at N = 3 returned the first row); the library now checks it (onnxruntime refuses
    such inputs too). No check where the sizes agree for every N (0 copies the symbolic dim)."""
    s = numpy_helper.from_array(np.array(shape, np.int64), "s")
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [_in("x", ["N", ok[1]])], [_out()], [s])
    x = np.arange(int(np.prod(ok)), dtype=np.float32).reshape(ok)
    _assert_as_onnxruntime(model, {"x": x})
    module = optc.compile(model)
    if bad is None:
        assert "match_cast" not in optc.lowering.lower(optc.from_onnx(model))["main"].script()
        return
    xb = np.zeros(bad, np.float32)
    with pytest.raises(optc.OptcError, match=r"^the inputs do not fit the model's shapes: .*elements where"):
        module.run({"x": xb})
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        run_ort(model, {"x": xb})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "x.npz", x=xb)
    subprocess.run([sys.executable, "-m", "optc.tools.cli", "compile", str(path), "-o", str(tmp_path / "m.so"), "-q"],
                   check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", "run", str(tmp_path / "m.so"), "--inputs",
                           str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "do not fit the model's shapes" in proc.stderr


def _reshape_to_computed_dims(target: str) -> onnx.ModelProto:
    """x [B, S, 24] -> h = x.reshape(-1, 24) @ W [B*S, 40] -> h.reshape(Concat(Shape(x)[0:2], tail)), tail [-1]
    ("minus_one") or [40] ("forty"). At S = 0 the shape's 0 copies h's dim 1 (ONNX, allowzero=0): with -1 the
    graph gives [B, 40, 0] (onnxruntime), not [B, 0, 40]; with 40 it refuses the inputs (0 elements as [B, 40, 40])."""
    w = numpy_helper.from_array(np.arange(24 * 40, dtype=np.float32).reshape(24, 40) / 100, "w")
    i64 = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["x2"]), helper.make_node("MatMul", ["x2", "w"], ["h"]),
             helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Slice", ["shp", "z", "two"], ["bs"]),
             helper.make_node("Concat", ["bs", "tail"], ["s2"], axis=0), helper.make_node("Reshape", ["h", "s2"], ["y"])]
    tail = [-1] if target == "minus_one" else [40]
    return _model(nodes, [_in("x", ["B", "S", 24])], [_out()],
                  [w, i64([-1, 24], "s1"), i64([0], "z"), i64([2], "two"), i64(tail, "tail")])


@pytest.mark.parametrize("target", ["minus_one", "forty"])
def test_a_computed_reshape_dim_that_is_0_when_it_runs_is_refused_not_given_the_wrong_shape(target, tmp_path):
    """A symbolic dim of a Reshape's computed shape that is 0 when the library runs copies the input's dim there
    (ONNX, allowzero=0): the library (lowered for the dims as written) gave [3, 0, 40] where the graph gives
    [3, 40, 0]. It now fails the call with one line naming the node (an in-place check, no copy); other sizes as
    onnxruntime; the CLI exits 2 with one line."""
    model = _reshape_to_computed_dims(target)
    module = optc.compile(model)
    assert "optc_shape_check" in optc.lowering.lower(optc.from_onnx(model)).script()
    for b, s in [(3, 2), (1, 5), (2, 1)]:
        x = np.random.default_rng(b + s).standard_normal((b, s, 24)).astype(np.float32)
        want = run_ort(model, {"x": x})[0]
        got = module.run({"x": x})["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    x0 = np.zeros((3, 0, 24), np.float32)
    if target == "minus_one":
        assert run_ort(model, {"x": x0})[0].shape == (3, 40, 0)
    else:
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
            run_ort(model, {"x": x0})
    with pytest.raises(optc.OptcError, match=r"^the library cannot run these inputs: Reshape node 'y': dim 1 of its "
                                             r"shape is 0 when it runs, which ONNX reads as 'copy the input's dim'"):
        module.run({"x": x0})
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=x0)
    subprocess.run([sys.executable, "-m", "optc.tools.cli", "compile", str(tmp_path / "m.onnx"), "-o",
                    str(tmp_path / "m.so"), "-q"], check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", "run", str(tmp_path / "m.so"), "--inputs",
                           str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "copy the input's dim" in proc.stderr


def test_computed_reshape_dims_that_cannot_copy_another_dim_get_no_check():
    """[B * S, 40] -> Concat(Shape(x)[0:1], [-1]) = [B, -1]: where B is 0 the input's dim 0 (B * S) is 0 too, so
    its copy changes nothing: no check kernel, and outputs as onnxruntime's (B = 0: onnxruntime refuses a -1 beside
    a 0; optc gives the empty result)."""
    w = numpy_helper.from_array(np.ones((24, 40), np.float32), "w")
    i64 = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["x2"]), helper.make_node("MatMul", ["x2", "w"], ["h"]),
             helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Slice", ["shp", "z", "one"], ["b"]),
             helper.make_node("Concat", ["b", "m1"], ["s2"], axis=0), helper.make_node("Reshape", ["h", "s2"], ["y"])]
    model = _model(nodes, [_in("x", ["B", "S", 24])], [_out()],
                   [w, i64([-1, 24], "s1"), i64([0], "z"), i64([1], "one"), i64([-1], "m1")])
    assert "_check" not in optc.lowering.lower(optc.from_onnx(model)).script()
    module = optc.compile(model)
    for b, s in [(2, 3), (0, 3), (2, 0), (0, 0)]:
        x = np.ones((b, s, 24), np.float32)
        want = run_ort(model, {"x": x})[0] if b else None
        got = module.run({"x": x})["y"]
        if want is not None:
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("depth", [np.array(5, np.int64), np.array([5], np.int64), np.array(5.7, np.float32)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_one_hot_depth_of_any_rank(depth, axis):
    idx = np.array([[0, -1], [7, 3]], np.int64)
    inits = [numpy_helper.from_array(depth, "d"), numpy_helper.from_array(np.array([0.5, 2], np.float32), "v")]
    model = _model([helper.make_node("OneHot", ["i", "d", "v"], ["y"], axis=axis)], [_in("i", [2, 2], TensorProto.INT64)],
                   [_out()], inits)
    _assert_as_onnxruntime(model, {"i": idx})


@pytest.mark.parametrize("base, exponent", [(TensorProto.FLOAT, TensorProto.INT64), (TensorProto.INT64, TensorProto.INT64),
                                            (TensorProto.INT32, TensorProto.FLOAT), (TensorProto.DOUBLE, TensorProto.FLOAT)])
def test_pow_of_mixed_types_has_the_base_type(base, exponent):
    b = np.array([2, 3, -2, 5], helper.tensor_dtype_to_np_dtype(base))
    e = np.array([3, 2, 3, 0], helper.tensor_dtype_to_np_dtype(exponent))
    model = _model([helper.make_node("Pow", ["b", "e"], ["y"])], [_in("b", [4], base), _in("e", [4], exponent)],
                   [_out("y", base)])
    _assert_as_onnxruntime(model, {"b": b, "e": e})


# -- refusals: one line, the op and the reason ---------------------------------------------------------------


def test_cast_to_float8_is_refused_with_its_reason():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)], [_in("x", [3])],
                   [_out("y", TensorProto.FLOAT8E4M3FN)], opset=19)
    with pytest.raises(optc.UnsupportedError, match=r"cannot lower Cast node \(output 'y'\): .*float8_e4m3fn"):
        optc.compile(model)


def test_run_time_reshape_is_refused_in_one_line_and_debug_shows_the_cause(tmp_path):
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [_in("x", [2, 3]), _in("s", [2], TensorProto.INT64)],
                   [_out()])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    cmd = [sys.executable, "-m", "optc.tools.cli", "compile", str(path), "-o", str(tmp_path / "m.so")]
    env = {k: v for k, v in os.environ.items() if k != "OPTC_DEBUG"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["optc: error: cannot lower Reshape node (output 'y'): Reshape to a shape "
                                        "computed from run-time values is not supported by the TVM back end"]
    assert not (tmp_path / "m.so").exists()
    debug = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OPTC_DEBUG": "1"})
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "lowering/ops/shape.py" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("optc: error: cannot lower Reshape")


def test_tvm_native_warnings_never_reach_the_user(tmp_path):
    # A converter that fails mid-function left the BlockBuilder with open blocks: TVM then printed
    # "BlockBuilder destroyed with remaining blocks!" on stderr after optc's error line.
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"])],
                   [_in("x", [2, 3]), _in("s", [2], TensorProto.INT64)], [_out()])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code = ("import optc, sys\ntry:\n    optc.compile(sys.argv[1])\nexcept optc.OptcError as e:\n    print('refused')\n"
            "import gc; gc.collect()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.stdout.strip() == "refused"
    assert "BlockBuilder" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.INT64])
def test_arg_reductions_over_an_empty_axis_fail_rather_than_give_minus_one(op, dtype):
    """ArgMax / ArgMin over an axis that is empty when the library runs: an empty slice has no index (onnxruntime
    and the reference evaluator fail); TVM's kernel gave -1. The call now fails with one line naming the node
    (a run-time check, none where the axis is static and nonempty); an empty result (B = 0) and nonempty axes as
    onnxruntime's; a static empty axis is refused when compiling."""
    node = helper.make_node(op, ["a"], ["y"], axis=1, keepdims=0)
    model = _model([node], [_in("a", ["B", "S", 3], dtype)], [_out("y", TensorProto.INT64)], opset=13)
    module = optc.compile(model)
    np_type = np.float32 if dtype == TensorProto.FLOAT else np.int64
    for shape in [(2, 4, 3), (1, 1, 3), (0, 0, 3), (0, 5, 3)]:
        a = np.random.default_rng(sum(shape)).integers(-3, 3, shape).astype(np_type)
        got = module.run({"a": a})["y"]
        if a.size:
            np.testing.assert_array_equal(got, run_ort(model, {"a": a})[0])
        else:
            assert got.shape == (0, 3)
    empty = np.zeros((2, 0, 3), np_type)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        run_ort(model, {"a": empty})
    with pytest.raises(optc.OptcError, match=rf"^the library cannot run these inputs: {op} node 'y': axis 1 is empty"):
        module.run({"a": empty})
    static = _model([node], [_in("a", [2, 4, 3], dtype)], [_out("y", TensorProto.INT64)], opset=13)
    assert "_check" not in optc.lowering.lower(optc.from_onnx(static)).script()
    with pytest.raises(optc.OptcError, match="axis 1 is empty"):
        optc.compile(_model([node], [_in("a", [2, 0, 3], dtype)], [_out("y", TensorProto.INT64)], opset=13))


def _swapped_reshape(tail: str) -> onnx.ModelProto:
    """y = Reshape(x [A, B, C], Gather(Shape(x), [1, 0, 2])) = [B, A, C] as written; at A = 0 or B = 0 a 0 in the
    computed shape copies x's dim there (allowzero=0). tail "shape": the output is Shape(y) (y's data is dead);
    "round_trip": ReduceSum(Reshape(y, Shape(x)), axes [2]), which the compile path's optimizer reduces to
    ReduceSum(x) once it trusts y's type."""
    perm = numpy_helper.from_array(np.array([1, 0, 2], np.int64), "perm")
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "perm"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    inits = [perm]
    if tail == "shape":
        nodes.append(helper.make_node("Shape", ["y"], ["out"]))
    else:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax"))
        nodes += [helper.make_node("Reshape", ["y", "s"], ["z"]),
                  helper.make_node("ReduceSum", ["z", "ax"], ["out"], keepdims=0)]
    return _model(nodes, [_in("x", ["A", "B", "C"])],
                  [_out("out", TensorProto.INT64 if tail == "shape" else TensorProto.FLOAT)], inits)


@pytest.mark.parametrize("tail", ["shape", "round_trip"])
def test_a_checked_reshape_stays_checked_when_only_its_shape_is_read_or_a_rewrite_removes_it(tail):
    """Found by a breaker: the run-time check of a computed Reshape element rode on the Reshape's data, so it was
    dead code where only Shape(y) is read (optc gave [0, 2, 0] for x [2, 0, 0], onnxruntime [2, 2, 0]); and the
    compile path's trusted types let eliminate-noops remove a Reshape round trip with its checks (optc gave an
    empty (2, 0), onnxruntime zeros (2, 2)). Checks on the inputs' dims are now made on the function's result,
    and the optimizer records the conditions its trusted types rest on (`metadata_props`), which the library
    checks whatever rewrite consumed the Reshape. At other sizes, as onnxruntime."""
    model = _swapped_reshape(tail)
    optimized = optc.optimize(model, level=2, runtime="optc")
    if tail == "round_trip":
        assert "Reshape" not in [n.op_type for n in optimized.graph]  # the rewrite the guards make safe
        assert "optc.checked_zeros" in optimized.metadata_props
        assert "optc.checked_zeros" not in optc.optimize(model, level=2, runtime="standard").metadata_props
    module = optc.compile(model)
    for shape in [(2, 3, 4), (3, 3, 0), (1, 1, 1)]:
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        want = run_ort(model, {"x": x})[0]
        got = module.run({"x": x})["out"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for shape in [(2, 0, 0), (0, 2, 0)]:
        run_ort(model, {"x": np.ones(shape, np.float32)})  # a result onnxruntime gives; optc refuses, not differs
        with pytest.raises(optc.OptcError, match=r"^the library cannot run these inputs: Reshape node 'y': dim \d"):
            module.run({"x": np.ones(shape, np.float32)})


@pytest.mark.parametrize("k", [0, 2])
def test_topk_of_a_constant_k_of_0_is_empty(k):
    """Found by a breaker: TopK with a constant k = 0 returned every element, sorted (TVM's topk reads k < 1 as
    "all"); onnxruntime and the reference give [3, 0] values and indices. k = 2 (negative): TVM's kernel, as
    onnxruntime."""
    k_init = numpy_helper.from_array(np.array([k], np.int64), "k")
    model = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)], [_in("x", [3, 4])],
                   [_out("v"), _out("i", TensorProto.INT64)], [k_init])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    got, want = optc.compile(model).run({"x": x}), run_ort(model, {"x": x})
    for name, w in zip(("v", "i"), want, strict=True):
        assert got[name].shape == w.shape == (3, k) and got[name].dtype == w.dtype
        np.testing.assert_array_equal(got[name], w)


def test_global_max_pool_over_a_static_empty_map_is_refused_not_garbage():
    """Found by a breaker: GlobalMaxPool of [2, 3, 0, 4] returned whatever memory held (onnxruntime and the reference
    fail: an empty map has no maximum); now refused in one line when compiling. A nonempty map as onnxruntime."""
    empty = _model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], [_in("x", [2, 3, 0, 4])], [_out()])
    with pytest.raises(optc.OptcError, match="GlobalMaxPool over an empty map has no maximum"):
        optc.compile(empty)
    model = _model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], [_in("x", [2, 3, 2, 4])], [_out()])
    _assert_as_onnxruntime(model, {"x": np.random.default_rng(1).standard_normal((2, 3, 2, 4)).astype(np.float32)})


@pytest.mark.parametrize("op, xs, ws", [("Conv", (1, 0, 3), (2, 0, 1)), ("ConvTranspose", (1, 0, 3, 3), (0, 3, 2, 2)),
                                        ("Conv", (1, 0, 5, 5), (3, 0, 3, 3)), ("Conv", (1, 2, 5, 5), (3, 2, 3, 3))])
def test_a_conv_over_no_input_channels_is_its_bias(op, xs, ws):
    """Found by a breaker: a Conv / ConvTranspose of a static 0 input channels with a bias gave NaN, not the bias
    (an empty sum is 0): the scheduled kernel kept its reduction's init inside a loop of extent 0, which never ran.
    Such an init now goes before the loops (as for a symbolic length that is 0). As the reference evaluator
    (onnxruntime refuses the 2-d case); 2 input channels (negative): as the reference too."""
    cout = ws[0] if op == "Conv" else ws[1]
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal(ws).astype(np.float32), "w")
    b = numpy_helper.from_array(np.arange(1, cout + 1, dtype=np.float32), "b")
    model = _model([helper.make_node(op, ["x", "w", "b"], ["y"])], [_in("x", list(xs))], [_out()], [w, b])
    x = np.random.default_rng(3).standard_normal(xs).astype(np.float32)
    np.testing.assert_allclose(optc.compile(model).run({"x": x})["y"], ReferenceEvaluator(model).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["resize", "instance_norm", "reduce_mean"])
def test_static_zero_extents_that_onnxruntime_runs_compile(case):
    """Found by a breaker: Resize of [1, 1, 0, 2] and InstanceNormalization of [1, 3, 0, 2] (empty results, as
    onnxruntime gives them) failed to build: TVM's kernels, legalized when constant folding too, divided by the zero
    extent or element count. An op with a zero-size result is now a zero-size constant before any legalization, and
    a mean over no elements NaN (0 / 0; ReduceMean of [2, 0] over axis 1: NaN as numpy, which the README documents
    where onnxruntime gives 0). Negative: a nonempty input as onnxruntime."""
    for rows in (0, 3):
        if case == "resize":
            scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
            model = _model([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")],
                           [_in("x", [1, 1, rows, 2])], [_out()], [scales])
            x = np.random.default_rng(rows).standard_normal((1, 1, rows, 2)).astype(np.float32)
        elif case == "instance_norm":
            g, b = (numpy_helper.from_array(np.full(3, v, np.float32), n) for v, n in ((1.5, "g"), (0.5, "b")))
            model = _model([helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"])],
                           [_in("x", [1, 3, rows, 2])], [_out()], [g, b])
            x = np.random.default_rng(rows).standard_normal((1, 3, rows, 2)).astype(np.float32)
        else:
            axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
            model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], [_in("x", [2, rows])],
                           [_out()], [axes])
            x = np.random.default_rng(rows).standard_normal((2, rows)).astype(np.float32)
        got = optc.compile(model).run({"x": x})["y"]
        if case == "reduce_mean" and rows == 0:
            assert got.shape == (2,) and np.isnan(got).all()
            continue
        want = run_ort(model, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["resize", "instance_norm", "reduce_mean", "expand"])
def test_a_static_zero_beside_a_symbolic_batch_compiles(case):
    """Found by a second breaker: with a symbolic batch N beside the static 0, the zero-size and empty-mean rewrites
    (static shapes only) skipped the op and the build divided by zero again (Resize of [N, 1, 0, 2],
    InstanceNormalization of [N, 3, 0, 2], ReduceMean of [N, 0, 3]); such results are now a scalar broadcast to their
    shape. And Expand of [2, 1] to [2, 0] (1 broadcasts to 0) was refused by TVM's converter. As onnxruntime (ReduceMean
    over no elements: NaN, documented; onnxruntime gives 0)."""
    if case == "resize":
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
        model = _model([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")], [_in("x", ["N", 1, 0, 2])],
                       [_out()], [scales])
        x = np.zeros((2, 1, 0, 2), np.float32)
    elif case == "instance_norm":
        g, b = (numpy_helper.from_array(np.full(3, v, np.float32), n) for v, n in ((1.5, "g"), (0.5, "b")))
        model = _model([helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"])], [_in("x", ["N", 3, 0, 2])],
                       [_out()], [g, b])
        x = np.zeros((2, 3, 0, 2), np.float32)
    elif case == "reduce_mean":
        axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
        model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], [_in("x", ["N", 0, 3])],
                       [_out()], [axes])
        x = np.zeros((2, 0, 3), np.float32)
    else:
        target = numpy_helper.from_array(np.array([2, 0], np.int64), "t")
        model = _model([helper.make_node("Expand", ["x", "t"], ["y"])], [_in("x", [2, 1])], [_out()], [target])
        x = np.ones((2, 1), np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    if case == "reduce_mean":
        assert np.isnan(got).all()
