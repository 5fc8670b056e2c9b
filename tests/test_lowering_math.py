"""optc's converters for element-wise, cumulative and optimizer-step ops (lowering/ops/math_ops.py,
training.py, indexing.py's ReverseSequence), against onnx's reference evaluator and the conformance cases."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper

from .conftest import run_reference
from .lowering_sweep import conformance_case, overall, run_case

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
               np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int64): TensorProto.INT64,
               np.dtype(np.int32): TensorProto.INT32, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.bool_): TensorProto.BOOL}


def _model(op_type: str, feeds: dict, n_outputs: int = 1, domain: str = "", opset: int = 28,
           initializers: dict | None = None, shapes: dict | None = None, **attrs) -> onnx.ModelProto:
    initializers = initializers or {}
    shapes = shapes or {}
    names = list(feeds) + list(initializers)
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, domain=domain, **attrs)
    graph = helper.make_graph(
        [node], op_type.lower(),
        [helper.make_tensor_value_info(n, _NP_TO_ONNX[x.dtype], shapes.get(n, x.shape)) for n, x in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        [onnx.numpy_helper.from_array(v, n) for n, v in initializers.items()])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _compiled(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    got = optc.compile(optc.from_onnx(model)).run(feeds)
    return [got[o.name] for o in model.graph.output]


def _same(got: np.ndarray, want: np.ndarray, rtol: float = 1e-6) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=rtol)
    else:
        np.testing.assert_array_equal(got, want)


_SPECIAL = np.array([-3.0, -0.5, -0.0, 0.0, 0.25, 2.0, np.nan, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize(("op_type", "attrs"), [("Elu", {"alpha": 0.5}), ("Celu", {"alpha": 2.0}),
                                                ("Swish", {"alpha": 1.5}), ("Swish", {})])
def test_activations_keep_dtype_nan_and_signed_zero(op_type, attrs, dtype):
    """Elu/Celu/Swish in the input's dtype (the frontend's Elu built float32 constants for a float16 x),
    NaN through, Elu(-0.0) = -0.0 as the spec's `x for x >= 0` says."""
    x = _SPECIAL.astype(dtype)
    model = _model(op_type, {"x": x}, **attrs)
    (got,) = _compiled(model, {"x": x})
    (want,) = run_reference(model, {"x": x})
    _same(got, want, rtol=1e-3 if dtype == np.float16 else 1e-6)
    if op_type == "Elu":
        assert np.signbit(got[2]) and got[2] == 0


def test_swiglu_against_reference_and_refuses_mismatched_ranks():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    model = _model("SwiGLU", {"a": a, "b": b}, alpha=0.5)
    _same(_compiled(model, {"a": a, "b": b})[0], run_reference(model, {"a": a, "b": b})[0])
    bad = _model("SwiGLU", {"a": a, "b": b[0]})
    with pytest.raises(optc.UnsupportedError, match="SwiGLU of gate rank 2 and value rank 1"):
        optc.compile(optc.from_onnx(bad))


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_zero_norm_gives_zero_and_nan_stays(p):
    x = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, np.nan, 2.0]], np.float32)
    model = _model("LpNormalization", {"x": x}, opset=22, axis=1, p=p)
    (got,) = _compiled(model, {"x": x})
    want = x / (np.abs(x).sum(1, keepdims=True) if p == 1 else np.sqrt((x * x).sum(1, keepdims=True)))
    want[1] = 0.0
    _same(got, want.astype(np.float32))
    with pytest.raises(optc.UnsupportedError, match="p=3"):
        optc.compile(optc.from_onnx(_model("LpNormalization", {"x": x}, opset=22, p=3)))


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_cumprod_exclusive_reverse_with_zero_and_int64(exclusive, reverse, dtype):
    """A 0 in the middle (a division-based exclusive scan would give NaN) and int64 beyond 2^53."""
    x = np.array([[3, 0, 2 ** 20, 5], [7, 2 ** 22, 2 ** 20, -1]], dtype)
    axis = np.array(1, np.int64)
    model = _model("CumProd", {"x": x}, opset=26, initializers={"axis": axis}, exclusive=exclusive, reverse=reverse)
    _same(_compiled(model, {"x": x})[0], run_reference(model, {"x": x, "axis": axis})[0])


def test_cumprod_refuses_a_run_time_axis():
    x, axis = np.ones((2, 3), np.float32), np.array(0, np.int64)
    with pytest.raises(optc.UnsupportedError, match="CumProd with an axis computed at run time"):
        optc.compile(optc.from_onnx(_model("CumProd", {"x": x, "axis": axis}, opset=26)))


@pytest.mark.parametrize(("values", "to"), [
    (np.array([1.0, -0.0, np.nan, np.inf], np.float32), TensorProto.INT32),
    (np.array([-1, 0, 2 ** 62], np.int64), TensorProto.DOUBLE),
    (np.array([255, 0, 128], np.uint8), TensorProto.INT8),
    (np.array(1.5, np.float16), TensorProto.UINT16),
])
def test_bitcast_keeps_the_bits(values, to):
    model = _model("BitCast", {"x": values}, opset=26, to=to)
    (got,) = _compiled(model, {"x": values})
    want = values.view(helper.tensor_dtype_to_np_dtype(to))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_bitcast_refuses_a_change_of_width():
    x = np.ones(3, np.float32)
    with pytest.raises(optc.UnsupportedError, match="32 bits.*64 bits"):
        optc.compile(optc.from_onnx(_model("BitCast", {"x": x}, opset=26, to=TensorProto.DOUBLE)))


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(0, 1), (1, 0)])
def test_reverse_sequence_with_run_time_lengths_and_symbolic_batch(batch_axis, time_axis):
    """sequence_lens is fed at run time; the batch dim is symbolic (the model compiles once)."""
    rng = np.random.default_rng(1)
    shape = [3, 5, 2] if batch_axis == 0 else [5, 3, 2]
    x = rng.standard_normal(shape).astype(np.float32)
    lens = np.array([5, 1, 3], np.int64)
    sym = list(shape)
    sym[batch_axis] = "batch"
    model = _model("ReverseSequence", {"x": x, "lens": lens}, shapes={"x": sym, "lens": ["batch"]},
                   batch_axis=batch_axis, time_axis=time_axis)
    _same(_compiled(model, {"x": x, "lens": lens})[0], run_reference(model, {"x": x, "lens": lens})[0])


@pytest.mark.parametrize("symbolic", [False, True])
def test_reverse_sequence_clamps_lengths_beyond_the_time_axis(symbolic):
    """ONNX forbids a length above the time dim; the compiled code must still not read past x (it returned
    garbage from outside the buffer): such a length counts as the whole axis, as onnx's reference computes."""
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    lens = np.array([1, 2, 3, 9], np.int64)
    model = _model("ReverseSequence", {"x": x, "lens": lens}, shapes={"x": ["T", 4]} if symbolic else None,
                   batch_axis=1, time_axis=0)
    _same(_compiled(model, {"x": x, "lens": lens})[0], run_reference(model, {"x": x, "lens": lens})[0])


def test_reverse_sequence_refuses_axes_other_than_0_and_1():
    x, lens = np.ones((2, 3, 4), np.float32), np.array([1, 2], np.int64)
    with pytest.raises(optc.UnsupportedError, match="batch_axis 0 and time_axis 2"):
        optc.compile(optc.from_onnx(_model("ReverseSequence", {"x": x, "lens": lens}, batch_axis=0, time_axis=2)))


_TRAINING = "ai.onnx.preview.training"


def test_adam_two_groups_against_reference_at_t0_and_t3():
    rng = np.random.default_rng(2)
    tensors = {f"{k}{i}": rng.random((2, 3)).astype(np.float32) for k in "xgvh" for i in range(2)}
    for t in (0, 3):
        feeds = {"r": np.array(0.1, np.float32), "t": np.array(t, np.int64), **tensors}
        model = _model("Adam", feeds, n_outputs=6, domain=_TRAINING, alpha=0.9, beta=0.8, epsilon=1e-3,
                       norm_coefficient=0.01, norm_coefficient_post=0.05)
        for got, want in zip(_compiled(model, feeds), run_reference(model, feeds), strict=True):
            _same(got, want.astype(np.float32), rtol=1e-5)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
def test_momentum_against_reference(mode):
    rng = np.random.default_rng(3)
    for t in (0, 1):
        feeds = {"r": np.array(0.1, np.float32), "t": np.array(t, np.int64), "x": rng.random(4).astype(np.float32),
                 "g": rng.random(4).astype(np.float32), "v": rng.random(4).astype(np.float32)}
        model = _model("Momentum", feeds, n_outputs=2, domain=_TRAINING, alpha=0.9, beta=0.5, mode=mode,
                       norm_coefficient=0.01)
        for got, want in zip(_compiled(model, feeds), run_reference(model, feeds), strict=True):
            _same(got, want.astype(np.float32), rtol=1e-5)


def test_momentum_refuses_an_unknown_mode_and_adagrad_a_partial_group():
    feeds = {"r": np.array(0.1, np.float32), "t": np.array(1, np.int64), "x": np.ones(2, np.float32),
             "g": np.ones(2, np.float32), "v": np.ones(2, np.float32)}
    model = _model("Momentum", feeds, n_outputs=2, domain=_TRAINING, alpha=0.9, beta=0.5, mode="heavy",
                   norm_coefficient=0.0)
    with pytest.raises(optc.UnsupportedError, match="Momentum mode 'heavy'"):
        optc.compile(optc.from_onnx(model))
    partial = dict(list(feeds.items())[:4])
    with pytest.raises(optc.UnsupportedError, match="Adagrad needs R, T and 3 groups"):
        optc.compile(optc.from_onnx(_model("Adagrad", partial, n_outputs=2, domain=_TRAINING)))


_CASES = ["test_celu", "test_celu_float16_expanded", "test_swish", "test_swiglu_alpha", "test_lpnormalization_default",
          "test_l1normalization_axis_last", "test_cumprod_1d_reverse_exclusive", "test_cumprod_2d_int32",
          "test_bitcast_scalar_float32_to_int32", "test_bitcast_bool_to_uint8", "test_reversesequence_time",
          "test_reversesequence_bfloat16", "test_nesterov_momentum", "test_adagrad_multiple", "test_adam_multiple"]


@pytest.mark.parametrize("case", _CASES)
def test_conformance_case_passes(case):
    status, detail = overall(run_case(conformance_case(case)))
    assert status == "pass", detail
