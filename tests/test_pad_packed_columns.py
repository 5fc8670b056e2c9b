"""A constant weight large enough to be packed into panels whose count of column vectors tiles badly gets its
columns zero-padded at compile time (codegen/schedules.py: `_column_step`, `_pad_ragged_tile`), the padded copy
packed in place and folded into one constant, and the padded columns cropped from the output.

A Llama-style decoder's [128, 256] @ [256, 688] (43 vectors of 16 floats, a prime) and @ [256, 2000] (125
vectors) ran 8 x 1 tiles; padded to 45 and 126 vectors they run 4 x 3 (AMD EPYC Zen 5, 1 thread: 1.16x -> 1.06x
and 1.15x -> 1.01x onnxruntime's time). The tile tests read the schedule for an explicit AVX-512 target (nothing
built for it); the value tests run on the host against onnxruntime; nothing is timed."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.build import schedule_passes
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx
from tvm import relax
from tvm.ir.expr import GenericConst  # (a Relax tensor constant)

from .conftest import run_ort

AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}


def _matmul(m: int | str, k: int, n: int, *, dtype: int = TP.FLOAT, weight: bool = True,
            relu: bool = False) -> onnx.ModelProto:
    """x [1, m, k] @ w [k, n] (a constant, or a second input `w` when not `weight`), + bias and ReLU if `relu`."""
    np_dtype = np.float64 if dtype == TP.DOUBLE else np.float32
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np_dtype), "w")] if weight else []
    inputs = [h.make_tensor_value_info("x", dtype, [1, m, k])]
    if not weight:
        inputs.append(h.make_tensor_value_info("w", dtype, [k, n]))
    nodes = [h.make_node("MatMul", ["x", "w"], ["mm" if relu else "y"])]
    if relu:
        inits.append(nh.from_array(rng.standard_normal(n).astype(np_dtype), "b"))
        nodes += [h.make_node("Add", ["mm", "b"], ["z"]), h.make_node("Relu", ["z"], ["y"])]
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("y", dtype, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _schedule(model: onnx.ModelProto, target=AVX512):
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if "matmul" in gv.name_hint]
    sch = schedules.TiledReduction().apply(func, resolve_target(target), False)
    assert sch is not None
    return sch


def _tile(sch) -> tuple[int, int, int]:
    """(rows, vectors per row, lanes) of the matmul's register tile."""
    extents = [int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock("matmul_update"))]
    return extents[-3], extents[-2], extents[-1]


def _folded_weights(sch) -> list[tuple[int, ...]]:
    """Shapes of the buffers that blocks marked to be folded at compile time write (packed / padded weights)."""
    return [tuple(int(d) for d in w.source.shape) for blk in schedules._block_stmts(sch)
            if "meta_schedule.layout_rewrite_preproc" in blk.annotations for w in blk.writes]


@pytest.mark.parametrize(("m", "k", "n", "tile", "packed"), [
    (128, 256, 688, (4, 3, 16), (15, 256, 48)),      # 43 vectors (a prime) -> 45: 4 x 3, not 8 x 1
    (128, 256, 2000, (4, 3, 16), (42, 256, 48)),     # 125 -> 126
    (128, 256, 512, (4, 3, 16), (11, 256, 48)),      # 32 -> 33 (3% padding): 12 accumulators, not 4 x 2 = 8
    (197, 256, 688, (5, 3, 16), (15, 256, 48)),      # rows padded to 200 as well: 5 x 3
    (128, 256, 1000, (4, 3, 16), (21, 256, 48)),     # 62.5 vectors: 63, not a half-vector tile (unpacked before)
])
def test_awkward_packed_columns_are_padded_into_one_folded_weight(m, k, n, tile, packed):
    sch = _schedule(_matmul(m, k, n))
    assert _tile(sch) == tile
    # one block computes the weight at compile time: zero-padded and packed into panels of one tile's width
    assert _folded_weights(sch) == [packed]
    script = sch.mod["main"].script()
    assert "T.if_then_else" in script[script.index("meta_schedule.layout_rewrite_preproc") - 600:]


@pytest.mark.parametrize(("m", "k", "n", "tile", "packed"), [
    (128, 256, 768, (4, 3, 16), (16, 256, 48)),      # 48 vectors tile 4 x 3 already
    (128, 256, 256, (4, 2, 16), (8, 256, 32)),       # 16 -> 18 would pad 12.5% (no faster, measured)
    (128, 688, 512, (8, 2, 16), (16, 688, 32)),      # 8 x 2 = 16 accumulators (sums of 688 products): no gain
])
def test_packed_columns_that_tile_well_are_not_padded(m, k, n, tile, packed):
    sch = _schedule(_matmul(m, k, n))
    assert _tile(sch) == tile
    assert _folded_weights(sch) == [packed]
    assert "T.if_then_else" not in sch.mod["main"].script()


def test_the_library_holds_only_the_padded_packed_weight():
    """After the build splits off the weight's padding + packing and folds it (`split_packed_weights`,
    FoldConstant), the model's constants hold the [256, 688] weight only as [15, 256, 48] panels: no copy of the
    weight is made at run time, and the unpadded weight is not kept."""
    target = resolve_target(AVX512)  # (compiled, never run: 16 float32 lanes on any host; AVX2 packs 29 x 24)
    mod = fused_kernels(from_onnx(_matmul(128, 256, 688)), AVX512)
    with target:
        mod = tvm.transform.Sequential([*schedule_passes(target), schedules.split_packed_weights(),
                                        relax.transform.FoldConstant()])(mod)
    shapes = []
    tvm_ffi.structural_walk(mod["main"], (GenericConst, lambda c: shapes.append(tuple(c.value.shape))),
                            order="post")
    assert shapes == [(15, 256, 48)]


def test_the_tuner_measures_the_unpadded_schedule():
    """MetaSchedule's builder drops compile-time blocks with RemoveWeightLayoutRewriteBlock, which takes plain
    copies only: the tuner's default schedule and rule variants pad no weight, so they build and are measured."""
    from optc.codegen import tuning
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    fused = fused_kernels(from_onnx(_matmul(128, 256, 688)), "cpu")
    [func] = [f for gv, f in fused.functions_items() if "matmul" in gv.name_hint]
    target = resolve_target(AVX512)
    schedules_measured = [tuning.default_schedule(func, target), *tuning._rule_variants(func, target, set())]
    for sch in schedules_measured:
        assert _folded_weights(sch) in ([(43, 256, 16)], [])  # packed (or not), never padded
        RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod)  # (a padded copy fails its check)


def test_run_time_weights_are_not_padded():
    """B an input (computed at run time): a padded copy would be made at every call."""
    sch = _schedule(_matmul(128, 256, 688, weight=False))
    assert _tile(sch) == (8, 1, 16)
    assert _folded_weights(sch) == []
    assert "_pad" not in sch.mod["main"].script()


def test_symbolic_rows_keep_the_columns():
    """Symbolic rows are padded to PAD_ROWS and tiled at a height dividing them; the widths do not change that."""
    sch = _schedule(_matmul("N", 256, 688))
    assert _folded_weights(sch) == [(43, 256, 16)]  # packed, not padded


def test_column_step():
    """The padding chosen for 16 float lanes, 15 accumulators at most (a padded kernel's), per row count."""
    step = schedules._column_step
    assert step(128, 688, 16, 15, 15) == 3      # 43 -> 45: 4 x 3
    assert step(128, 2000, 16, 15, 15) == 2     # 125 -> 126 (2 and 3 give the same count)
    assert step(7, 688, 16, 15, 15) == 2        # 7 rows: 7 x 2 = 14 (no 3-wide tile of 2 rows or more)
    assert step(128, 768, 16, 15, 15) == 0      # 48 vectors: 4 x 3 already
    assert step(128, 512, 16, 16, 15) == 0      # 8 x 2 = 16 unpadded (long sums) beats 4 x 3
    assert step(128, 24, 16, 15, 15) == 1       # not whole vectors: whole ones at least
    assert step(2, 688, 8, 15, 15) == 3         # 8 lanes (float64): 86 -> 87 vectors, 2 x 3


@pytest.mark.parametrize(("m", "k", "n", "dtype", "relu"), [
    (128, 256, 688, TP.FLOAT, False), (128, 256, 688, TP.FLOAT, True), (128, 256, 2000, TP.FLOAT, True),
    (197, 256, 688, TP.FLOAT, True), (128, 256, 1000, TP.FLOAT, False), (128, 256, 344, TP.DOUBLE, True),
    ("N", 256, 688, TP.FLOAT, True),
])
def test_padded_columns_compute_what_onnxruntime_does(m, k, n, dtype, relu):
    model = _matmul(m, k, n, dtype=dtype, relu=relu)
    module = optc.compile(model)
    for rows in ((m,) if isinstance(m, int) else (1, 13)):
        x = np.random.default_rng(1).standard_normal((1, rows, k))
        x = x.astype(np.float64 if dtype == TP.DOUBLE else np.float32)
        got, want = module.run({"x": x})["y"], run_ort(model, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
