"""Sliding-window reductions (depthwise convolutions, average pooling): the innermost window loop (the kernel
width) is unrolled inside the register tile (`schedules._window_loop`), so that the taps of neighbouring outputs
share their input loads. Values against onnxruntime (float32) and onnx's reference evaluator (float64), strides
1 and 2, with NaN / inf / -0 inputs; the schedule's loop order checked on the script, with the cases it must leave
alone."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h
from onnx.reference import ReferenceEvaluator
from optc.codegen import schedules
from optc.codegen.build import fast_math_default
from optc.codegen.kernel_check import check_kernels, fused_kernels
from optc.ir import from_onnx

from .conftest import AVX2, AVX512, assert_ieee_close, scheduled_script, special_float_feeds

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _model(nodes, x_shape, inits, dtype=F32) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dtype, x_shape)],
                     [h.make_tensor_value_info("y", dtype, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _init(name: str, shape: tuple, dtype=np.float32, seed: int = 0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def depthwise(c: int = 32, size: int = 14, k: int = 3, stride: int = 1, dtype=F32, bias: bool = True):
    np_dtype = np.float64 if dtype == F64 else np.float32
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [h.make_node("Conv", inputs, ["c"], group=c, kernel_shape=[k, k], pads=[k // 2] * 4,
                         strides=[stride, stride]),
             h.make_node("Relu", ["c"], ["y"])]
    inits = [_init("w", (c, 1, k, k), np_dtype)] + ([_init("b", (c,), np_dtype, seed=1)] if bias else [])
    return _model(nodes, ["N", c, size, size], inits, dtype)


def depthwise_1d(c: int = 48, length: int = 30, k: int = 5):
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], group=c, kernel_shape=[k], pads=[k // 2] * 2)]
    return _model(nodes, ["N", c, length], [_init("w", (c, 1, k))])


def average_pool(c: int = 32, size: int = 12):
    nodes = [h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1)]
    return _model(nodes, ["N", c, size, size], [])


def dense3x3(c: int = 16, size: int = 10):
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)]
    return _model(nodes, ["N", c, size, size], [_init("w", (32, c, 3, 3))])


CASES = {
    "dw3x3": (depthwise, {}), "dw3x3_s2": (depthwise, {"stride": 2, "size": 15}),
    "dw5x5_no_bias": (depthwise, {"k": 5, "bias": False}), "dw3x3_f64": (depthwise, {"dtype": F64}),
    "dw3x3_c144_56": (depthwise, {"c": 144, "size": 28}), "dw1d_k5": (depthwise_1d, {}),
    "avgpool3x3": (average_pool, {}), "dw9x9": (depthwise, {"k": 9}), "dense3x3": (dense3x3, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_window_kernels_match_onnxruntime(case):
    make, kwargs = CASES[case]
    model = make(**kwargs)
    with fast_math_default(False):  # the direct window kernels (a dense 3x3 conv is Winograd's with fast math)
        assert check_kernels(fused_kernels(from_onnx(model), "cpu"), "cpu") == []
    module = optc.compile(from_onnx(model), "cpu", fast_math=False)
    f64 = model.graph.input[0].type.tensor_type.elem_type == F64  # onnxruntime has no float64 Conv
    sess = ReferenceEvaluator(model) if f64 else \
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, special in ((1, False), (3, True)):
        feeds = special_float_feeds(model, batch, special)
        assert_ieee_close(module.run(feeds)["y"], sess.run(None, feeds)[0], rtol=1e-5, atol_scale=1e-6)


def _scheduled(model: onnx.ModelProto) -> str:
    with fast_math_default(False):  # the direct kernel (not Winograd's)
        return scheduled_script(model, schedules.TiledReduction(), ("conv", "pool"))


def _unrolled_tap(script: str) -> int | None:
    """The extent of an unrolled loop right around the tile's vector loop that binds a reduction axis, or None."""
    for loop, extent in re.findall(r"for (\w+) in T\.unroll\(T\.int64\((\d+)\)\):\s+for \w+ in T\.vectorized", script):
        if re.search(rf'T\.axis\.(?:reduce\([^,]+, {loop}\)|remap\("S*R+", \[[^]]*\b{loop}\b)', script):
            return int(extent)
    return None


@pytest.mark.parametrize(("case", "tap"), [
    ("dw3x3", 3), ("dw3x3_s2", 3), ("dw5x5_no_bias", 5), ("dw3x3_f64", 3),
    ("dw1d_k5", None),   # a 1-D conv stays NCW: its window slides along the vector axis, not the tile rows
    ("dw9x9", None),     # 9 taps: more than WINDOW_UNROLL_MAX, the loop stays where it was
    ("dense3x3", None),  # the innermost reduction is over input channels: it does not slide along the rows
])
def test_the_window_taps_are_unrolled_inside_the_tile(case, tap):
    make, kwargs = CASES[case]
    assert _unrolled_tap(_scheduled(make(**kwargs))) == tap


def _tile_accumulators(script: str) -> int:
    """Vectors in the register tile: the product of the unrolled loops inside the tile's init block's loop nest."""
    nest = re.search(r'((?:\s+for \w+_init in T\.(?:unroll|vectorized)\(T\.int64\(\d+\)\):)+)', script).group(1)
    extents = [int(e) for e in re.findall(r"unroll\(T\.int64\((\d+)\)\)", nest)]
    return int(np.prod(extents))


def _window_tiles(target) -> tuple[int, int]:
    """Accumulators of a depthwise and a dense 3x3 conv's tiles (direct kernels) for `target`."""
    with fast_math_default(False):
        return tuple(_tile_accumulators(scheduled_script(m, schedules.TiledReduction(), ("conv",), target))
                     for m in (depthwise(c=144, size=28), dense3x3(c=64, size=28)))


def test_a_depthwise_tile_leaves_avx2_registers_for_its_taps(monkeypatch):
    """With 16 vector registers a depthwise conv's tile holds at most WINDOW_MAX_ACC accumulators (with 12, LLVM
    spilled weights and inputs to the stack); without the cap it would hold more. A dense conv, whose taps are
    not unrolled in the tile, is not capped; nor is any tile with AVX-512's 32 registers."""
    dw, dense = _window_tiles(AVX2)
    assert dw <= schedules.WINDOW_MAX_ACC
    assert _window_tiles(AVX512)[0] > schedules.WINDOW_MAX_ACC
    monkeypatch.setattr(schedules, "WINDOW_MAX_ACC", 16)
    uncapped_dw, uncapped_dense = _window_tiles(AVX2)
    assert uncapped_dw > dw and uncapped_dense == dense
