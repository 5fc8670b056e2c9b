"""optc's converters for CenterCropPad, Col2Im and Det (lowering/ops/image.py) against onnx's reference evaluator
and numpy, their refusals, and their conformance cases."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import helper, numpy_helper

from .conftest import run_reference
from .lowering_sweep import conformance_case, overall, run_case


def _model(node, feeds: dict, consts: dict | None = None, opset: int = 22) -> onnx.ModelProto:
    """A one-node model: graph inputs `feeds`, initializers `consts` (name -> array), an output 'y' of the first
    feed's type."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
              for n, x in feeds.items()]
    out_type = helper.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()]
    graph = helper.make_graph([node], "image", inputs, [helper.make_tensor_value_info("y", out_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return optc.compile(optc.from_onnx(model)).run(feeds)["y"]


# -- CenterCropPad ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axes"), [([4, 9, 2], None), ([7, 5], [0, 1]), ([3, 4], [-1, -3])])
def test_center_crop_pad_against_reference(shape, axes):
    """Odd and even crops and pads; IEEE specials come through unchanged."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 6, 3)).astype(np.float32)
    x[2, 3, 1], x[3, 2, 0], x[3, 3, 2] = np.nan, -np.inf, -0.0
    kwargs = {} if axes is None else {"axes": axes}
    node = helper.make_node("CenterCropPad", ["x", "shape"], ["y"], **kwargs)
    model = _model(node, {"x": x}, {"shape": np.array(shape, np.int64)}, opset=18)
    got, want = _run(model, {"x": x}), run_reference(model, {"x": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_center_crop_pad_to_a_run_time_shape_is_refused():
    node = helper.make_node("CenterCropPad", ["x", "shape"], ["y"])
    model = _model(node, {"x": np.zeros((4, 4), np.float32), "shape": np.array([2, 2], np.int64)}, opset=18)
    with pytest.raises(optc.UnsupportedError, match="CenterCropPad with a shape computed at run time"):
        optc.compile(optc.from_onnx(model))


# -- Col2Im -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "block", "attrs"), [
    ([5, 6], [2, 3], {}), ([7, 7], [3, 2], {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}),
    ([4, 3, 5], [2, 1, 2], {"strides": [1, 2, 2]})])
def test_col2im_against_reference(image, block, attrs):
    n = len(image)
    strides, pads, dilations = attrs.get("strides", [1] * n), attrs.get("pads", [0] * 2 * n), attrs.get(
        "dilations", [1] * n)
    blocks = [(image[i] + pads[i] + pads[i + n] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
              for i in range(n)]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3 * int(np.prod(block)), int(np.prod(blocks)))).astype(np.float32)
    x[0, 1, 0] = np.inf
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], **attrs)
    model = _model(node, {"x": x}, {"image": np.array(image, np.int64), "block": np.array(block, np.int64)},
                   opset=18)
    got, want = _run(model, {"x": x}), run_reference(model, {"x": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_col2im_with_a_run_time_block_shape_is_refused():
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"])
    feeds = {"x": np.zeros((1, 4, 16), np.float32), "block": np.array([2, 2], np.int64)}
    model = _model(node, feeds, {"image": np.array([5, 5], np.int64)}, opset=18)
    with pytest.raises(optc.UnsupportedError, match="Col2Im with a block_shape computed at run time"):
        optc.compile(optc.from_onnx(model))


# -- Det ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_det_against_numpy(dtype):
    """Random, singular, pivoting-needing and permutation matrices, batched."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 4))
    x[1, 3] = x[1, 0] + x[1, 2]  # singular
    x[2, :, 0] = [0.0, 1e-9, 3.0, -5.0]  # the first pivot is not on the diagonal
    x[3] = np.eye(4)[[2, 0, 3, 1]]  # a permutation
    x[4, :, 1] = 0.0  # a zero column
    x = x.astype(dtype)
    got = _run(_model(helper.make_node("Det", ["x"], ["y"]), {"x": x}), {"x": x})
    assert got.shape == (6,) and got.dtype == dtype
    np.testing.assert_allclose(got, np.linalg.det(x), rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_det_of_a_large_matrix_is_refused():
    x = np.zeros((17, 17), np.float32)
    with pytest.raises(optc.UnsupportedError, match="Det of"):
        optc.compile(optc.from_onnx(_model(helper.make_node("Det", ["x"], ["y"]), {"x": x})))


# -- conformance --------------------------------------------------------------------------------------------------

_CASES = ["test_center_crop_pad_crop", "test_center_crop_pad_crop_and_pad", "test_center_crop_pad_crop_axes_chw",
          "test_center_crop_pad_crop_axes_hwc", "test_center_crop_pad_crop_negative_axes_hwc",
          "test_center_crop_pad_pad", "test_center_crop_pad_crop_expanded", "test_col2im", "test_col2im_5d",
          "test_col2im_dilations", "test_col2im_pads", "test_col2im_strides", "test_det_2d", "test_det_nd"]


@pytest.mark.parametrize("case", _CASES)
def test_conformance_case(case):
    forms = run_case(conformance_case(case))
    assert overall(forms)[0] == "pass", forms
    assert all(s in ("pass", "unsupported") for s, _ in forms.values()), forms
