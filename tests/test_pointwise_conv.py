"""1x1 convolutions as a matmul over all pixels (codegen/pointwise_conv.py): a ragged width, or an image whose rows
tile with fewer accumulators than its pixels do (7 x 7 with AVX2's registers); which convolutions the compile path
computes this way, that the results are TVM's direct kernel's bit for bit and onnxruntime's, and that the tuner's
rule variants build and compute the same."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from optc.codegen import pointwise_conv, schedules

from .conftest import run_ort, run_reference
from .test_grouped_conv import _feeds, _prepared
from .test_grouped_conv import _model as _conv_model


def _model(c=48, k=40, size=(13, 13), group=1, tail="relu", **options) -> onnx.ModelProto:
    """x [batch, c, *size] -> Conv (+ bias) -> `tail` -> y (test_grouped_conv's builder, one group by default)."""
    return _conv_model(c=c, k=k, size=size, group=group, tail=tail, **options)


def test_padded_rows():
    assert [pointwise_conv._padded_rows(m) for m in (13, 169, 27, 55, 7, 16, 11, 121)] == \
        [16, 176, 27, 55, 7, 16, 16, 128]


CASES = {
    "SqueezeNet's classifier shape (13 x 13, 1000 outputs, packed weight)": dict(c=512, k=1000),
    "13 x 13 squeeze, residual": dict(c=64, k=64, tail="residual"),
    "11 x 11, no epilogue": dict(c=32, k=48, size=(11, 11), tail="none"),
    "13 x 17, concat after (a fire module)": dict(c=24, k=40, size=(13, 17), tail="concat"),
    "columns not whole vectors": dict(c=40, k=36, size=(13, 26)),
    "batch 3": dict(c=16, k=48, batch=3, size=(3, 13)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pointwise_convolutions_match_onnxruntime_and_the_direct_kernel(case, monkeypatch):
    model = _model(**CASES[case])
    assert "pointwise_conv" in _prepared(model)
    feeds = _feeds(model)
    got = optc.compile(model).run(feeds)["y"]
    want = run_ort(model, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # the same products summed in the same order as TVM's own kernel: the same bits
    with monkeypatch.context() as patch:
        patch.setattr(pointwise_conv, "eligible", lambda *args: None)
        np.testing.assert_array_equal(got, optc.compile(model).run(feeds)["y"])


#: AVX2's register file (16 vector registers, 8 float32 lanes) and AVX-512's (32, 16)
AVX2_REGISTERS, AVX512_REGISTERS = (8, 16), (16, 32)


@pytest.mark.parametrize(("shape", "avx2", "avx512"), [
    ((1, 7, 7, 160, 960), True, False),  # 7 rows x 1 vector (7 accumulators) -> 6 x 2 over 49 pixels (10.9)
    ((1, 7, 7, 960, 320), True, False),
    ((4, 7, 7, 512, 2048), False, False),  # a batch of 4: the pixels' tile spans 4 images x 1 pixel x 2 vectors (8)
    ((None, 7, 7, 512, 2048), True, False),  # a symbolic batch
    ((1, 7, 7, 48, 40), False, False),  # 5 vectors: 7 x 1 either way
    ((1, 14, 14, 256, 1024), False, False),  # 2 x 2 rows x 2 vectors whole: 8 either way
    ((1, 28, 28, 512, 128), False, False),
    ((1, 56, 56, 64, 256), False, False),
    ((1, 13, 13, 512, 1000), True, True),  # a ragged width: 169 -> 176 padded against 13 -> 16 per row
])
def test_pixels_pay_where_their_register_tile_does_more(shape, avx2, avx512):
    n, h, w, c, k = shape
    assert pointwise_conv.pixels_pay(n, h, w, c, k, *AVX2_REGISTERS) is avx2
    assert pointwise_conv.pixels_pay(n, h, w, c, k, *AVX512_REGISTERS) is avx512


def test_the_tiles_compared_are_the_ones_tiled_reduction_builds():
    """`register_tile` is TiledReduction's choice: 7 x 7 over 320 columns tiles 7 rows x 1 vector with AVX2's
    registers, its 49 pixels 6 x 2."""
    tile = functools.partial(schedules.register_tile, lanes=8, dtype_bits=32, reduction=960, registers=16)
    assert tile(7, 7, 320, n_s=3) == (8, 40, 1, 1, 7)
    assert tile(None, 49, 320, n_s=2) == (8, 40, 2, 1, 6)
    assert tile(7, 7, 320, n_s=3, lanes=16, registers=32)[2:] == (2, 1, 7)


SEVEN = {  # 7 x 7 images, computed over the pixels (forced where this CPU's registers would not take it)
    "ResNet's 2048 -> 512, residual": dict(c=256, k=256, size=(7, 7), tail="residual"),
    "MobileNetV2's 160 -> 960, no epilogue": dict(c=160, k=960, size=(7, 7), tail="none"),
    "batch 2, ReLU": dict(c=64, k=48, batch=2, size=(7, 7)),
    "7 x 14, concat after": dict(c=24, k=40, size=(7, 14), tail="concat"),
}


@pytest.mark.parametrize("case", list(SEVEN))
def test_seven_by_seven_as_pixels_matches_onnxruntime_and_the_direct_kernel(case, monkeypatch):
    model = _model(**SEVEN[case])
    feeds = _feeds(model)
    feeds["x"][0, 3, 6, 6], feeds["x"][0, 5, 0, 0] = np.nan, -np.inf  # reach their own pixel only
    with monkeypatch.context() as patch:
        patch.setattr(pointwise_conv, "eligible", lambda *args: None)
        direct = optc.compile(model).run(feeds)["y"]
    with monkeypatch.context() as patch:
        patch.setattr(pointwise_conv, "pixels_pay", lambda *args: True)
        assert "pointwise_conv" in _prepared(model)
        got = optc.compile(model).run(feeds)["y"]
    want = run_ort(model, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5 * float(np.abs(want[finite]).max()))
    np.testing.assert_array_equal(got, direct)  # the same products in the same order: the same bits


NOT_TAKEN = {  # model arguments the pass leaves to TVM's convolution
    "width 14: whole tiles of 7 rows": dict(size=(14, 14)),
    "width 27: whole tiles of 3 rows": dict(size=(27, 27)),
    "one row of 13": dict(size=(1, 13)),
    "3x3 kernel": dict(kernel=3, pads=(1, 1, 1, 1)),
    "stride 2": dict(strides=(2, 2), size=(25, 25)),
    "padded 1x1": dict(pads=(1, 1, 1, 1)),
    "grouped": dict(c=48, k=48, group=2),
    "weight computed at run time": dict(weight_input=True),
    "float64": dict(dtype=TensorProto.DOUBLE),
}


@pytest.mark.parametrize("case", list(NOT_TAKEN))
def test_other_convolutions_stay_with_tvms_kernel(case):
    model = _model(**NOT_TAKEN[case])
    text = _prepared(model)
    assert "pointwise_conv" not in text and any(op in text for op in ("conv2d", "winograd", "grouped_conv"))
    feeds = _feeds(model)
    got = optc.compile(model).run(feeds)["y"]
    want = (run_reference if case == "float64" else run_ort)(model, feeds)[0]  # (onnxruntime: no float64 Conv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("batch", [2, 0])
def test_symbolic_batch(batch):
    model = _model(c=32, k=40)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert "pointwise_conv" in _prepared(model)
    x = np.random.default_rng(batch).standard_normal((batch, 32, 13, 13)).astype(np.float32)
    got = optc.compile(model, static_batch=()).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape == (batch, 40, 13, 13)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max(initial=0)), 1.0))


def test_special_values_stay_in_their_pixel():
    """NaN and infinities in one input pixel reach only that pixel's outputs, as in onnxruntime's convolution
    (the padded pixels are zeros: they reach nothing)."""
    model = _model(c=48, k=40, tail="none")
    lib = optc.compile(model)
    for value, channel, (i, j) in [(np.nan, 7, (12, 12)), (np.inf, 40, (0, 0)), (-np.inf, 0, (6, 12))]:
        feeds = _feeds(model)
        feeds["x"][0, channel, i, j] = value
        got, want = lib.run(feeds)["y"], run_ort(model, feeds)[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        special = ~np.isfinite(got)
        assert special[0, :, i, j].sum() > 0 and special.sum() == special[0, :, i, j].sum()
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_every_rule_variant_builds_and_computes_the_kernel():
    """The tuner measures TiledReduction's variants (which pad no weight) on the fused kernel: each builds and
    computes what the unscheduled kernel does."""
    from optc.codegen.kernel_check import check_kernels, fused_kernels

    fused = fused_kernels(optc.from_onnx(_model(c=256, k=1000, tail="relu")), "cpu")
    assert any("pointwise_conv" in gv.name_hint for gv, _ in fused.functions_items())
    for rule in [schedules.TiledReduction(), *schedules.TiledReduction.variants()]:
        assert check_kernels(fused, "cpu", rules=[rule, *schedules.cpu_rules()], rtol=1e-5) == []
