"""Resize computes the input coordinate as the ONNX spec (and onnxruntime) does, so nearest-mode ties round the same:

1. nearest: x_original = (x_resized + 0.5) / scale - 0.5 (half_pixel), with scale = output / input (or the given
   `scales`), in float32. TVM's resize multiplied by input / output instead, which lands on 1.5000001 instead of the
   tie 1.5 for 4 -> 7 rows (output row 3), so round_prefer_floor took row 2 instead of row 1.
2. align_corners to an output length of 1: x_original = 0 (the spec's formula divides by output - 1); the TVM build
   failed with "Divide by zero", and where the length is a symbolic dim that is 1 at run time, linear and cubic
   gave NaN for the whole output.

Nearest mode is checked for equality (not closeness) with onnxruntime (and onnx's reference for the ties above,
where the two agree; the reference computes in float64 and differs from onnxruntime elsewhere), linear and cubic
for closeness (TVM's interpolation rounds differently).
"""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from .conftest import run_ort

COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
# (input H, W) -> (output H, W): upsampling and downsampling, sizes whose coordinates land on ties.
SIZE_PAIRS = [((4, 7), (7, 3)), ((5, 6), (8, 4)), ((3, 8), (9, 5))]
# Whole-scale and exact fractional scales (out = in * scale exactly, so `scales` is accepted).
SCALE_CASES = [((4, 6), (1.75, 0.5)), ((3, 8), (3.0, 0.25)), ((8, 4), (0.375, 2.5)), ((6, 8), (1.5, 0.625))]


def _model(dims: list, node: onnx.NodeProto, inits: dict, extra: list | None = None) -> onnx.ModelProto:
    """One float input x of `dims`, one output y."""
    g = h.make_graph([*(extra or []), node], "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                     [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def _resize(inputs: list[str], mode: str, coordinate_mode: str, nearest_mode: str = "round_prefer_floor"):
    return h.make_node("Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=coordinate_mode,
                       nearest_mode=nearest_mode)


def _roi(coordinate_mode: str) -> np.ndarray:
    """A crop for tf_crop_and_resize (coordinates outside it extrapolate), empty otherwise."""
    if coordinate_mode == "tf_crop_and_resize":
        return np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 0.7], np.float32)
    return np.zeros(0, np.float32)


def _input(shape: tuple) -> np.ndarray:
    """Distinct values, so a wrong source row or column shows."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1


def _equals_onnxruntime(model: onnx.ModelProto, shapes: list[tuple], reference: bool = False) -> None:
    """The model compiled once equals onnxruntime (and onnx's reference) exactly at every input shape."""
    lib = optc.compile(optc.from_onnx(model))
    for shape in shapes:
        x = _input(shape)
        want = run_ort(model, {"x": x})[0]
        got = lib.run({"x": x})["y"]
        np.testing.assert_array_equal(got, want, err_msg=f"onnxruntime, input {shape}")
        if reference:
            np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, {"x": x})[0],
                                          err_msg=f"reference, input {shape}")


# -- 1. nearest-mode ties -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil"])
@pytest.mark.parametrize("coordinate_mode", ["half_pixel", "pytorch_half_pixel"])
def test_nearest_half_pixel_tie_4_to_7(coordinate_mode, nearest_mode):
    """Output row 3 of 4 -> 7 maps to (3 + 0.5) / (7 / 4) - 0.5 = 1.5 exactly: row 1 or row 2 by nearest_mode."""
    node = _resize(["x", "", "", "sz"], "nearest", coordinate_mode, nearest_mode)
    model = _model([1, 1, 4, 5], node, {"sz": np.array([1, 1, 7, 5], np.int64)})
    _equals_onnxruntime(model, [(1, 1, 4, 5)], reference=True)


@pytest.mark.parametrize("pairs", SIZE_PAIRS, ids=lambda p: f"{p[0]}to{p[1]}")
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coordinate_mode", COORDINATE_MODES)
def test_nearest_sizes_equal_onnxruntime(coordinate_mode, nearest_mode, pairs):
    (h0, h1), (w0, w1) = pairs
    node = _resize(["x", "roi", "", "sz"], "nearest", coordinate_mode, nearest_mode)
    model = _model([1, 2, h0, w0], node, {"roi": _roi(coordinate_mode), "sz": np.array([1, 2, h1, w1], np.int64)})
    _equals_onnxruntime(model, [(1, 2, h0, w0)])


@pytest.mark.parametrize("case", SCALE_CASES, ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coordinate_mode", COORDINATE_MODES)
def test_nearest_scales_equal_onnxruntime(coordinate_mode, nearest_mode, case):
    (h0, w0), (sh, sw) = case
    node = _resize(["x", "roi", "sc"], "nearest", coordinate_mode, nearest_mode)
    model = _model([1, 2, h0, w0], node, {"roi": _roi(coordinate_mode), "sc": np.array([1, 1, sh, sw], np.float32)})
    _equals_onnxruntime(model, [(1, 2, h0, w0)])


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coordinate_mode", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
def test_nearest_symbolic_sizes_equal_onnxruntime(coordinate_mode, nearest_mode):
    """sizes = [N, 1, H * 7 // 4, W * 3 // 5] from a shape computation on symbolic N, H, W."""
    extra = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Mul", ["s", "num"], ["scaled"]),
             h.make_node("Div", ["scaled", "den"], ["sizes"])]
    node = _resize(["x", "", "", "sizes"], "nearest", coordinate_mode, nearest_mode)
    inits = {"num": np.array([1, 1, 7, 3], np.int64), "den": np.array([1, 1, 4, 5], np.int64)}
    _equals_onnxruntime(_model(["N", 1, "H", "W"], node, inits, extra), [(1, 1, 4, 5), (2, 1, 8, 10), (1, 1, 5, 7)])


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coordinate_mode", ["half_pixel", "asymmetric"])
def test_nearest_whole_scales_on_symbolic_dims_stay_right(coordinate_mode, nearest_mode):
    """Whole scales on symbolic H, W had no tie to get wrong: they stay equal to onnxruntime."""
    node = _resize(["x", "", "sc"], "nearest", coordinate_mode, nearest_mode)
    model = _model(["N", 1, "H", "W"], node, {"sc": np.array([1, 1, 2, 3], np.float32)})
    _equals_onnxruntime(model, [(1, 1, 4, 5), (2, 1, 3, 1)])


@pytest.mark.parametrize("rank", [3, 5])
def test_nearest_1d_and_3d_tie(rank):
    """The 4 -> 7 tie along the last axis of a 1-D and a 3-D image."""
    dims = [1, 2, *([3] * (rank - 3)), 4]
    out = [1, 2, *([5] * (rank - 3)), 7]
    node = _resize(["x", "", "", "sz"], "nearest", "half_pixel")
    _equals_onnxruntime(_model(dims, node, {"sz": np.array(out, np.int64)}), [tuple(dims)])


# -- 2. align_corners to an output length of 1 ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("out_hw", [(1, 1), (1, 3), (6, 1)])
def test_align_corners_to_length_1(mode, out_hw):
    """x_original = 0 along an axis resized to 1: the first row (or column) of the input."""
    node = _resize(["x", "", "", "sz"], mode, "align_corners")
    model = _model([1, 2, 4, 5], node, {"sz": np.array([1, 2, *out_hw], np.int64)})
    if mode == "nearest":
        _equals_onnxruntime(model, [(1, 2, 4, 5)], reference=True)
        return
    x = _input((1, 2, 4, 5))
    np.testing.assert_allclose(optc.compile(optc.from_onnx(model)).run({"x": x})["y"], run_ort(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_linear_align_corners_to_length_1_in_3d():
    """onnxruntime's cubic mode has no 3-D images: linear only."""
    node = _resize(["x", "", "", "sz"], "linear", "align_corners")
    model = _model([1, 1, 3, 4, 5], node, {"sz": np.array([1, 1, 5, 1, 7], np.int64)})
    lib = optc.compile(optc.from_onnx(model))
    x = _input((1, 1, 3, 4, 5))
    np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_align_corners_to_a_symbolic_length_that_is_1(mode):
    """Scale 1 on symbolic H, W, and sizes from a shape computation: the output length is 1 at run time."""
    identity = _model([1, 2, "H", "W"], _resize(["x", "", "sc"], mode, "align_corners"),
                      {"sc": np.array([1, 1, 1, 1], np.float32)})
    extra = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Mul", ["s", "num"], ["sizes"])]
    doubled_w = _model([1, 2, "H", "W"], _resize(["x", "", "", "sizes"], mode, "align_corners"),
                       {"num": np.array([1, 1, 1, 2], np.int64)}, extra)
    for model in (identity, doubled_w):
        lib = optc.compile(optc.from_onnx(model))
        for shape in [(1, 2, 1, 1), (1, 2, 1, 4), (1, 2, 3, 1), (1, 2, 3, 4)]:
            x = _input(shape)
            np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_linear_align_corners_to_a_symbolic_length_that_is_1_in_3d():
    model = _model([1, 1, "D", "H", "W"], _resize(["x", "", "sc"], "linear", "align_corners"),
                   {"sc": np.array([1, 1, 1, 1, 1], np.float32)})
    lib = optc.compile(optc.from_onnx(model))
    for shape in [(1, 1, 1, 1, 1), (1, 1, 2, 1, 3), (1, 1, 2, 3, 4)]:
        x = _input(shape)
        np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


# -- negative: what was right stays right ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coordinate_mode", ["half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"])
def test_linear_and_cubic_stay_close(mode, coordinate_mode):
    node = _resize(["x", "", "", "sz"], mode, coordinate_mode)
    model = _model([1, 2, 4, 7], node, {"sz": np.array([1, 2, 7, 3], np.int64)})
    lib = optc.compile(optc.from_onnx(model))
    x = _input((1, 2, 4, 7))
    np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-4)
