"""A conv's register tile over two row axes, height x width (codegen/schedules.py, `_plane_tile`).

AVX2 has 16 vector registers: 12 accumulators, so a tile two vectors wide has at most 6 rows. A conv output 14 or
7 wide then ran its rows in tiles of 6 with the last one predicated (14 = 6 + 6 + 2), and the predicate sat in
every tile's reduction loop: a float32 1x1 conv 256 -> 1024 at 14 x 14 reached 63 GFLOP/s (onnxruntime 96),
2048 -> 512 at 7 x 7 39 GFLOP/s (onnxruntime 93); with the tiles below 90 and 80. Whole tiles over height and width (2 x 2 rows x 2 vectors) or one vector wide
(7 rows) have no predicate (AMD EPYC Zen 3, 1 thread). The tests read the tile from the schedule for an AVX2 and
an AVX-512 target (nothing built for those) and compare results built for an AVX2 CPU, which every x86 host
that runs this suite can execute, with onnxruntime's; they never time anything.
"""

from __future__ import annotations

import platform

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.build import fast_math_default
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx

from .conftest import AVX2, AVX512, run_ort

#: TVM ForKind values of a tile's loops
VECTORIZED, UNROLLED = 2, 3
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.parametrize(("h_rows", "w_rows", "n_vecs", "u_n", "u_w", "max_acc", "tile"), [
    (14, 14, 128, 2, 6, 12, (2, 2, 2)),     # 6 rows predicated over 14 -> 2 x 2 rows x 2 vectors
    (7, 7, 256, 2, 6, 12, (1, 1, 7)),       # 7 is prime: one vector wide, 7 rows
    (14, 14, 32, 2, 6, 12, (2, 2, 2)),
    (28, 28, 64, 2, 4, 12, None),           # 4 x 2 = 8 whole: no two-axis tile holds more
    (14, 14, 128, 2, 7, 14, None),          # AVX-512: 7 x 2 = 14, whole
    (13, 13, 64, 2, 6, 12, None),           # primes: every whole tile is 1 row, the predicated one stays
    (6, 10, 48, 2, 5, 12, (3, 2, 2)),       # 5 x 2 = 10 whole; 2 x 2 x 3 = 12 is more
])
def test_plane_tile_choice(h_rows, w_rows, n_vecs, u_n, u_w, max_acc, tile):
    assert schedules._plane_tile(h_rows, w_rows, n_vecs, u_n, u_w, max_acc) == tile


def test_plane_tile_never_exceeds_its_limits():
    for h_rows in range(1, 30):
        for w_rows in range(1, 30):
            for n_vecs in (1, 2, 3, 6, 64):
                for max_acc in (8, 12, 16):
                    plane = schedules._plane_tile(h_rows, w_rows, n_vecs, 1, 1, max_acc)
                    if plane is None:
                        continue
                    vecs, outer, inner = plane
                    assert h_rows % outer == 0 and w_rows % inner == 0 and n_vecs % vecs == 0
                    assert vecs * outer * inner <= max_acc and outer * inner <= schedules.MAX_TILE_ROWS


def _conv_model(c: int, hw: int, k: int, r: int, *, stride: int = 1, pad: int = 0,
                residual: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((k, c, r, r)).astype(np.float32) * 0.1, "w"),
             nh.from_array(rng.standard_normal(k).astype(np.float32), "b")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[r, r], strides=[stride] * 2, pads=[pad] * 4)]
    out = (hw + 2 * pad - r) // stride + 1
    inputs = [h.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])]
    if residual:
        inputs.append(h.make_tensor_value_info("s", TP.FLOAT, [1, k, out, out]))
        nodes.append(h.make_node("Add", ["y", "s"], ["ys"]))
    nodes.append(h.make_node("Relu", ["ys" if residual else "y"], ["z"]))
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("z", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _update_loops(model: onnx.ModelProto, target: dict, kernel: str = "conv2d") -> list[int]:
    """The extents of the loops inside the reduction loops of the model's `kernel` (`conv2d`, or `pointwise_conv`:
    a 1x1 conv over the pixels, codegen/pointwise_conv.py) built for `target` (the register tile, lanes last)."""
    with fast_math_default(False):  # the direct conv kernel (a 3x3 conv is Winograd's with fast math)
        fused = fused_kernels(from_onnx(model), target)
    [func] = [f for gv, f in fused.functions_items() if kernel in gv.name_hint]
    sch = schedules.TiledReduction().apply(func, resolve_target(target), False)
    assert sch is not None
    update = sch.get_sblock(f"{kernel}_nhwc_update" if kernel == "conv2d" else f"{kernel}_update")
    loops = [sch.get(lp) for lp in sch.get_loops(update)]
    tile = [int(lp.extent) for lp in loops if int(lp.kind) in (VECTORIZED, UNROLLED)]
    assert int(loops[-1].kind) == VECTORIZED
    return tile


@pytest.mark.parametrize(("model", "kernel", "tile"), [
    (_conv_model(256, 14, 1024, 1), "conv2d", [2, 2, 2, 8]),
    (_conv_model(64, 14, 64, 3, pad=1), "conv2d", [2, 2, 2, 8]),
    # 7 rows x 1 vector for the image's rows (`test_plane_tile_choice`); its 49 pixels as one axis tile 6 x 2,
    # one tile of 9 predicated, which pays (codegen/pointwise_conv.py, `pixels_pay`)
    (_conv_model(2048, 7, 512, 1), "pointwise_conv", [6, 2, 8]),
    (_conv_model(64, 7, 64, 3, pad=1), "conv2d", [7, 1, 8]),
])
def test_avx2_conv_tiles_are_whole(model, kernel, tile):
    assert _update_loops(model, AVX2, kernel) == tile


@pytest.mark.parametrize("model", [_conv_model(256, 14, 1024, 1), _conv_model(2048, 7, 512, 1)])
def test_avx512_keeps_its_one_axis_tile(model):
    """(negative) 16 accumulators: 7 rows x 2 vectors is whole, no tile over the height holds more."""
    assert _update_loops(model, AVX512) == [7, 2, 16]


@pytest.mark.skipif(not X86, reason="built for an AVX2 CPU: runs on x86 hosts only")
@pytest.mark.parametrize("model", [
    _conv_model(64, 14, 128, 1),
    _conv_model(32, 14, 64, 3, pad=1),
    _conv_model(32, 14, 64, 3, pad=1, residual=True),
    _conv_model(64, 7, 96, 1),
    _conv_model(32, 7, 64, 3, pad=1, residual=True),
    _conv_model(32, 28, 64, 3, stride=2, pad=1),
    _conv_model(16, 10, 48, 3, pad=1),
])
def test_plane_tiles_compute_what_onnxruntime_does(model):
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    got = optc.compile(model, AVX2, fast_math=False).run(feeds)["z"]  # the direct kernels' plane tiles
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], rtol=1e-5, atol=1e-4)


def _grouped_model(c: int, hw: int, groups: int = 4) -> onnx.ModelProto:
    """A ShuffleNet-style grouped 1x1 conv, c -> c channels in `groups` groups over hw x hw, with bias and ReLU."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((c, c // groups, 1, 1)).astype(np.float32) * 0.1, "w"),
             nh.from_array(rng.standard_normal(c).astype(np.float32), "b")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1], group=groups),
             h.make_node("Relu", ["y"], ["z"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                     [h.make_tensor_value_info("z", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _batched_matmul_model(batch: int, m: int, k: int, n: int) -> onnx.ModelProto:
    """x [batch, m, k] @ a constant [batch, k, n] (a Winograd transform's batched product)."""
    w = np.random.default_rng(0).standard_normal((batch, k, n)).astype(np.float32) * 0.1
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["z"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [batch, m, k])],
                     [h.make_tensor_value_info("z", TP.FLOAT, None)], [nh.from_array(w, "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def test_a_padded_weight_alone_allows_the_plane_tile():
    """`register_tile(plane=...)`: a kernel that is `padded` takes no plane tile unless told it may (its only
    padding a constant weight's columns); one that is not padded takes it unless told it may not."""
    args = dict(n_s=4, lanes=8, dtype_bits=32, reduction=68, registers=16)
    assert schedules.register_tile(14, 14, 72, padded=True, **args) == (8, 9, 1, 1, 7)
    assert schedules.register_tile(14, 14, 72, padded=True, plane=True, **args) == (8, 9, 3, 2, 2)
    assert schedules.register_tile(14, 14, 72, **args) == (8, 9, 3, 2, 2)
    assert schedules.register_tile(14, 14, 72, plane=False, **args) == (8, 9, 1, 1, 7)


@pytest.mark.parametrize(("model", "target", "tile"), [
    # (panels of the group's vectors, then the tile) 68 channels a group padded to 72 (the weight, at compile
    # time): 3 panels of 3 vectors x 2 x 2 rows, not 9 of 1 vector x 7 rows
    (_grouped_model(272, 14), AVX2, [3, 2, 2, 3, 8]),
    # AVX-512: 34 channels a group padded to 48 = 3 vectors of 16
    (_grouped_model(136, 14), AVX512, [1, 2, 2, 3, 16]),
    # 13 x 13: the image rows are padded too (13 -> 16, a copy per call): tiles along one row axis
    (_grouped_model(272, 13), AVX2, [3, 4, 3, 8]),
])
def test_grouped_conv_tiles(model, target, tile):
    assert _update_loops(model, target, "grouped_conv") == tile


@pytest.mark.parametrize(("hw", "copies"), [(14, False), (22, True), (13, True)])
def test_which_padding_copies_an_activation(hw, copies):
    """`_pads_an_activation`: 68 channels a group padded to 72 pad only the constant weight (a compile-time copy);
    at 22 or 13 pixels a row the image rows are padded too (to 24, 16), the input copied per call."""
    from tvm import s_tir

    with fast_math_default(False):
        fused = fused_kernels(from_onnx(_grouped_model(272, hw)), AVX2)
    [func] = [f for gv, f in fused.functions_items() if "grouped_conv" in gv.name_hint]
    sch = s_tir.Schedule(func)
    assert schedules._pad_ragged_tile(sch, resolve_target(AVX2)) == (True, True, True)
    assert schedules._pads_an_activation(sch, schedules.normalize_prim_func(sch)) == copies


def test_a_padded_batched_matmul_keeps_its_one_axis_tile():
    """(negative) a batched matmul's batch axis indexes its weight: a tile over batches x rows would load a weight
    vector per accumulator. Its columns padded (320 -> 336, whole tiles of 3 vectors), it keeps 3 rows x 3
    vectors (Inception-v1's Winograd product, 12% slower in batch planes)."""
    assert _update_loops(_batched_matmul_model(16, 9, 160, 320), AVX2, "matmul") == [3, 3, 8]


@pytest.mark.skipif(not X86, reason="built for an AVX2 CPU: runs on x86 hosts only")
@pytest.mark.parametrize("model", [_grouped_model(272, 14), _grouped_model(136, 28), _grouped_model(272, 13),
                                   _batched_matmul_model(16, 9, 160, 320)])
def test_padded_weight_tiles_compute_what_onnxruntime_does(model):
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    got = optc.compile(model, AVX2).run(feeds)["z"]
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], rtol=1e-5, atol=1e-4)
