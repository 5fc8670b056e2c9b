"""Output channels that are not whole vectors (24, 40: pruned layers, MobileNet-style projections): a small
constant weight's columns are zero-padded to whole vectors at compile time (`schedules._pad_ragged_tile`), the
products over the padding cropped by the epilogue. Without it the tile ran in half-width vectors: the pruned
digits CNN's 1x1 conv 16 -> 24 took 61 us against 13 us for 16 -> 16 (AMD EPYC Zen 4, batch 32).
Values against onnxruntime at symbolic and fixed batch, float32 and float64, with NaN / inf / -0 inputs."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h
from optc.codegen import schedules
from optc.codegen.kernel_check import check_kernels, fused_kernels
from optc.ir import from_onnx

from .conftest import AVX512, assert_ieee_close, scheduled_script, special_float_feeds

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _model(nodes, x_shape, inits, dtype=F32) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dtype, x_shape)],
                     [h.make_tensor_value_info("y", dtype, None)], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    return model


def _init(name: str, shape: tuple, dtype=np.float32, seed: int = 0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def conv1x1(cout: int = 24, cin: int = 16):
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"]), h.make_node("Relu", ["c"], ["y"])]
    return _model(nodes, ["N", cin, 8, 8], [_init("w", (cout, cin, 1, 1)), _init("b", (cout,), seed=1)])


def conv3x3(cout: int = 24, cin: int = 8):
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, [2, cin, 9, 9], [_init("w", (cout, cin, 3, 3))])


def grouped(cout: int = 24, cin: int = 8):
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], group=2)]
    return _model(nodes, [2, cin, 6, 6], [_init("w", (cout, cin // 2, 1, 1))])


def gemm(n: int = 40, k: int = 384, trans_b: int = 1):
    w = (n, k) if trans_b else (k, n)
    nodes = [h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b), h.make_node("Relu", ["g"], ["y"])]
    return _model(nodes, ["N", k], [_init("w", w), _init("b", (n,), seed=2)])


def matmul3d(n: int = 20, k: int = 64, dtype=F32):
    np_dtype = np.float64 if dtype == F64 else np.float32
    return _model([h.make_node("MatMul", ["x", "w"], ["y"])], ["N", 13, k], [_init("w", (k, n), np_dtype)], dtype)


CASES = {
    "conv1x1_24": (conv1x1, {}), "conv1x1_40": (conv1x1, {"cout": 40}),
    "conv3x3_24": (conv3x3, {}), "grouped_24": (grouped, {}), "gemm_40": (gemm, {}),
    "gemm_40_no_trans": (gemm, {"trans_b": 0}), "gemm_24_wide_k": (gemm, {"n": 24, "k": 1024}),
    "matmul3d_20": (matmul3d, {}), "matmul3d_12_f64": (matmul3d, {"n": 12, "dtype": F64}),
    "conv1x1_16_whole": (conv1x1, {"cout": 16}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_odd_output_channels_match_onnxruntime(case):
    make, kwargs = CASES[case]
    model = make(**kwargs)
    assert check_kernels(fused_kernels(from_onnx(model), "cpu"), "cpu") == []
    module = optc.compile(from_onnx(model), "cpu")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, special in ((1, False), (5, True), (32, False)):
        feeds = special_float_feeds(model, batch, special)
        assert_ieee_close(module.run(feeds)["y"], sess.run(None, feeds)[0], rtol=1e-5, atol_scale=1e-5)


def _scheduled(model: onnx.ModelProto) -> str:
    return scheduled_script(model, schedules.TiledReduction(), ("conv", "matmul"), AVX512)  # (16 lanes)


@pytest.mark.parametrize(("make", "kwargs", "padded"), [
    (conv1x1, {}, True), (gemm, {}, True), (matmul3d, {}, True),
    (matmul3d, {"n": 12, "dtype": F64}, True),  # 8 float64 lanes
    (conv1x1, {"cout": 16}, False),            # whole vectors: nothing to pad
    (gemm, {"n": 24, "k": 1024}, False),      # a 96 KB weight is packed into panels instead
])
def test_small_weights_with_odd_columns_are_padded_at_compile_time(make, kwargs, padded):
    script = _scheduled(make(**kwargs))
    # the weight's zero-padded copy: a pad block marked to be split off and folded at compile time
    blocks = re.split(r'T\.sblock\("', script)[1:]
    weight_pads = [b for b in blocks if b.split('"')[0].endswith("_pad") and "T.if_then_else" in b
                   and "meta_schedule.layout_rewrite_preproc" in b]
    assert bool(weight_pads) == padded, script
