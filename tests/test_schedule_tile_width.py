"""A register tile (float32 here) three vectors wide where that holds more accumulators (codegen/schedules.py,
`_widest_tile`).

Two vectors per tile row gave ViT's [197, 192] @ [192, 768] a tile of 5 x 2 = 10 accumulators (of the 15 that fit
on the stack) and a BERT's [128, 256] @ [256, 768] 4 x 2 = 8; three give 5 x 3 = 15 and 4 x 3 = 12, and the
kernels ran 4% and 13% faster (AMD EPYC Zen 5, 1 thread). The tests read the tile from the schedule (an explicit
AVX-512 target, nothing built for it) and compare the host's compiled values with onnxruntime; they
never time anything."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx

from .conftest import run_ort

AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}


def _matmul_model(m: int, k: int, n: int, *, bias: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
    nodes = [h.make_node("MatMul", ["x", "w"], ["mm" if bias else "y"])]
    if bias:
        inits.append(nh.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(h.make_node("Add", ["mm", "b"], ["y"]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, m, k])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _tile(model: onnx.ModelProto, target: dict) -> tuple[int, int, int]:
    """(rows, vectors per row, lanes) of the register tile TiledReduction gives the model's matmul kernel."""
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if "matmul" in gv.name_hint]
    sch = schedules.TiledReduction().apply(func, resolve_target(target), False)
    assert sch is not None
    update = sch.get_sblock("matmul_update")
    extents = [int(sch.get(lp).extent) for lp in sch.get_loops(update)]
    return extents[-3], extents[-2], extents[-1]


@pytest.mark.parametrize(("m", "k", "n", "tile"), [
    (128, 256, 768, (4, 3, 16)),   # 48 vectors of columns: 4 x 3 = 12 accumulators, not 4 x 2 = 8
    (197, 192, 768, (5, 3, 16)),   # 197 rows padded to 200: 5 x 3 = 15, not 5 x 2 = 10
    (128, 256, 144, (4, 3, 16)),   # 9 vectors (odd): 4 x 3 = 12, not 8 x 1 = 8
])
def test_three_vectors_wide_where_it_holds_more_accumulators(m, k, n, tile):
    assert _tile(_matmul_model(m, k, n), AVX512) == tile


@pytest.mark.parametrize(("m", "k", "n", "target", "tile"), [
    # (weights under PREPACK_MIN_BYTES where the count of vectors has no multiple of 3: a packed weight's columns
    # would be padded to one, test_pad_packed_columns.py)
    (128, 16, 512, AVX512, (4, 2, 16)),    # 32 vectors: no multiple of 3, the tile stays two wide
    (14, 256, 768, AVX512, (7, 2, 16)),    # 7 x 2 = 14 beats 2 x 3 = 6 (no height of 3 to 5 divides 14 rows)
    (12, 256, 768, AVX512, (6, 2, 16)),    # 6 x 2 = 4 x 3 = 12: a tie keeps two
    (128, 16, 688, AVX512, (8, 1, 16)),    # 43 vectors (a prime): one wide
    (128, 8, 2000, AVX512, (8, 1, 16)),    # 125 vectors: five wide is not tried (slower in a model)
])
def test_two_vectors_wide_where_three_hold_fewer(m, k, n, target, tile):
    assert _tile(_matmul_model(m, k, n), target) == tile


@pytest.mark.parametrize(("m", "k", "n"), [(128, 256, 768), (197, 192, 768), (128, 64, 144), (3, 32, 48), (8, 64, 80)])
def test_three_wide_tiles_compute_what_onnxruntime_does(m, k, n):
    model = _matmul_model(m, k, n, bias=True)
    x = np.random.default_rng(1).standard_normal((1, m, k)).astype(np.float32)
    got = optc.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-4)
