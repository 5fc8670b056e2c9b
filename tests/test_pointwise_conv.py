"""1x1 convolutions over a ragged width as a matmul over all pixels (codegen/pointwise_conv.py): which convolutions
the compile path computes this way, that the results are TVM's direct kernel's bit for bit and onnxruntime's, and
that the tuner's rule variants build and compute the same."""

from __future__ import annotations

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
        patch.setattr(pointwise_conv, "eligible", lambda call: None)
        np.testing.assert_array_equal(got, optc.compile(model).run(feeds)["y"])


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
