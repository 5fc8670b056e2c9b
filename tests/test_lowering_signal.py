"""optc's converters for the signal ops (lowering/ops/signal.py): Range, DFT, STFT, the Hann/Hamming/Blackman
windows and MelWeightMatrix, against onnx's reference evaluator, plus their refusals and conformance cases."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import helper, numpy_helper

from .conftest import run_reference
from .lowering_sweep import conformance_case, overall, run_case


def _model(nodes: list, feeds: dict, outputs: list[str], consts: dict | None = None, opset: int = 20,
           out_type: type = np.float32) -> onnx.ModelProto:
    """A model whose graph inputs are `feeds` (name -> array) and initializers `consts` (name -> array), with
    outputs of `out_type`."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
              for n, x in feeds.items()]
    outs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(out_type)), None)
            for n in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()]
    graph = helper.make_graph(nodes, "signal", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _compare(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-4, atol: float = 1e-5) -> list[np.ndarray]:
    got = optc.compile(optc.from_onnx(model)).run(feeds)
    want = run_reference(model, feeds)
    for out, w in zip(model.graph.output, want, strict=True):
        g = got[out.name]
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return [got[o.name] for o in model.graph.output]


# -- DFT ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "n", "inverse", "onesided"), [
    (1, None, 0, 0), (2, None, 0, 0), (1, 12, 0, 1), (2, 5, 0, 0), (2, 7, 1, 0), (2, None, 1, 1), (2, 9, 1, 1),
    (1, 8, 1, 0)])
def test_dft_opset20_against_reference(channels, n, inverse, onesided):
    """Padding (n > L), truncation (n < L), forward, inverse and one-sided both ways, along axis 1 of a 4-D
    input (axis and dft_length as initializers)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, channels)).astype(np.float32)
    consts = {"axis": np.array(1, np.int64)}
    if n is not None:
        consts["n"] = np.array(n, np.int64)
    node = helper.make_node("DFT", ["x", "n" if n is not None else "", "axis"], ["y"], inverse=inverse,
                            onesided=onesided)
    _compare(_model([node], {"x": x}, ["y"], consts), {"x": x})


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_dft_opset17_keeps_the_input_type(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16, 2)).astype(dtype)
    node = helper.make_node("DFT", ["x"], ["y"], axis=1)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == np.float16 else {"rtol": 1e-10, "atol": 1e-10}
    _compare(_model([node], {"x": x}, ["y"], opset=17, out_type=dtype), {"x": x}, **tol)


def test_dft_with_a_run_time_length_is_refused():
    x = np.zeros((1, 8, 1), np.float32)
    node = helper.make_node("DFT", ["x", "n"], ["y"], axis=1)
    model = _model([node], {"x": x, "n": np.array(8, np.int64)}, ["y"], opset=17)
    with pytest.raises(optc.UnsupportedError, match="dft_length computed at run time"):
        optc.compile(optc.from_onnx(model))


def test_dft_matrix_matches_numpy_fft():
    from optc.lowering.ops.signal import dft_matrix

    rng = np.random.default_rng(2)
    z = rng.standard_normal(6) + 1j * rng.standard_normal(6)
    interleaved = np.stack([z.real, z.imag], axis=-1).reshape(-1)
    y = (interleaved @ dft_matrix(6, 2, 8, False, False)).reshape(8, 2)
    np.testing.assert_allclose(y[:, 0] + 1j * y[:, 1], np.fft.fft(z, 8), atol=1e-12)
    real = (interleaved[:10] @ dft_matrix(5, 2, 8, True, True))
    np.testing.assert_allclose(real, np.fft.irfft(z[:5], 8), atol=1e-12)


# -- STFT ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("onesided", [0, 1])
def test_stft_with_a_run_time_window_against_reference(onesided):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 50, 1)).astype(np.float32)
    window = rng.random(12).astype(np.float32)
    node = helper.make_node("STFT", ["x", "step", "w"], ["y"], onesided=onesided)
    model = _model([node], {"x": x, "w": window}, ["y"], {"step": np.array(5, np.int64)}, opset=17)
    _compare(model, {"x": x, "w": window})


def test_stft_with_a_run_time_frame_step_is_refused():
    x = np.zeros((1, 32, 1), np.float32)
    node = helper.make_node("STFT", ["x", "step", "", "length"], ["y"])
    model = _model([node], {"x": x, "step": np.array(4, np.int64)}, ["y"], {"length": np.array(8, np.int64)},
                   opset=17)
    with pytest.raises(optc.UnsupportedError, match="frame_step computed at run time"):
        optc.compile(optc.from_onnx(model))


# -- Range, windows, MelWeightMatrix ------------------------------------------------------------------------------


def test_run_time_range_fused_with_values_computed_before_it():
    """A run-time Range whose result meets a value computed before it: TVM's FuseOps put that fused kernel above
    the binding of the length ("range_len has not been computed") before run_time_positions."""
    nodes = [helper.make_node("Mul", ["limit", "two"], ["scale"]),
             helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
             helper.make_node("Mul", ["r", "scale"], ["y"])]
    consts = {"two": np.array(2.0, np.float32), "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)}
    model = _model(nodes, {"limit": np.array(5.0, np.float32)}, ["y"], consts)
    module = optc.compile(optc.from_onnx(model))
    for limit in (5.0, 0.0, 3.5, -2.0):
        feeds = {"limit": np.array(limit, np.float32)}
        np.testing.assert_allclose(module.run(feeds)["y"], run_reference(model, feeds)[0])


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_of_constant_and_run_time_size(op, periodic):
    node = helper.make_node(op, ["size"], ["y"], periodic=periodic)
    constant = _model([node], {}, ["y"], {"size": np.array(10, np.int64)}, opset=17)
    _compare(constant, {}, rtol=1e-6, atol=1e-7)
    run_time = _model([node], {"size": np.array(10, np.int32)}, ["y"], opset=17)
    module = optc.compile(optc.from_onnx(run_time))
    for size in (10, 1, 33):
        feeds = {"size": np.array(size, np.int32)}
        want = run_reference(run_time, feeds)[0]
        got = module.run(feeds)["y"]
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_window_output_datatype_double():
    node = helper.make_node("HannWindow", ["size"], ["y"], output_datatype=onnx.TensorProto.DOUBLE)
    _compare(_model([node], {}, ["y"], {"size": np.array(7, np.int64)}, opset=17, out_type=np.float64), {}, rtol=1e-12,
             atol=1e-12)


def test_mel_weight_matrix_of_constants_against_reference():
    consts = {"bins": np.array(10, np.int32), "n": np.array(64, np.int32), "rate": np.array(16000, np.int32),
              "low": np.array(20.0, np.float32), "high": np.array(8000.0, np.float32)}
    node = helper.make_node("MelWeightMatrix", list(consts), ["y"])
    _compare(_model([node], {}, ["y"], consts, opset=17), {}, rtol=1e-6, atol=1e-7)


def test_mel_weight_matrix_of_run_time_inputs_is_refused():
    feeds = {"bins": np.array(10, np.int32), "n": np.array(64, np.int32), "rate": np.array(16000, np.int32),
             "low": np.array(20.0, np.float32), "high": np.array(8000.0, np.float32)}
    node = helper.make_node("MelWeightMatrix", list(feeds), ["y"])
    with pytest.raises(optc.UnsupportedError, match="MelWeightMatrix of inputs computed at run time"):
        optc.compile(optc.from_onnx(_model([node], feeds, ["y"], opset=17)))


# -- conformance --------------------------------------------------------------------------------------------------

_CASES = ["test_dft", "test_dft_axis", "test_dft_axis_opset19", "test_dft_inverse", "test_dft_inverse_opset19",
          "test_dft_irfft", "test_dft_irfft_opset19", "test_dft_opset19", "test_dft_rfft", "test_dft_rfft_opset19",
          "test_stft", "test_stft_with_window", "test_melweightmatrix", "test_hannwindow", "test_hannwindow_expanded",
          "test_hannwindow_symmetric", "test_hannwindow_symmetric_expanded", "test_hammingwindow",
          "test_hammingwindow_expanded", "test_hammingwindow_symmetric", "test_hammingwindow_symmetric_expanded",
          "test_blackmanwindow", "test_blackmanwindow_expanded", "test_blackmanwindow_symmetric",
          "test_blackmanwindow_symmetric_expanded", "test_range_float_type_positive_delta",
          "test_range_int32_type_negative_delta"]
_REFUSED = ["test_melweightmatrix"]  # every input of this case is fed at run time


@pytest.mark.parametrize("case", _CASES)
def test_conformance_case(case):
    forms = run_case(conformance_case(case))
    status, detail = overall(forms)
    if case in _REFUSED:
        assert status == "unsupported", detail
    else:
        assert status == "pass", detail
    assert all(s in ("pass", "unsupported") for s, _ in forms.values()), forms
