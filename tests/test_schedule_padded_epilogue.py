"""A kernel whose rows TiledReduction pads to whole register tiles (13 output rows, tiles of 8, padded to 16) writes
the unpadded output in its epilogue, so the last tile's epilogue is predicated by row. Fused across rows into one
vector, that predicate was miscompiled by LLVM for -mcpu=znver4 (inception_v1's 1x1 conv: garbage up to 1e13;
correct for skylake-avx512 / sapphirerapids): the epilogue of a padded tile keeps one vector per row."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.kernel_check import check_kernels, fused_kernels
from optc.codegen.targets import host_cpu_flags, resolve_target
from optc.ir import from_onnx

ZEN4 = json.dumps({"kind": "llvm", "mcpu": "znver4"})


def _conv_13x13() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"]), h.make_node("Relu", ["c"], ["y"])]
    inits = [nh.from_array(rng.standard_normal((24, 512, 1, 1)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal(24).astype(np.float32), "b")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512, 13, 13])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def test_padded_tile_epilogue_is_not_vectorized_across_rows():
    fused = fused_kernels(from_onnx(_conv_13x13()), ZEN4)
    # (a 1x1 conv over a width of 13 is a matmul over all 169 pixels, padded to 176: codegen/pointwise_conv.py)
    [func] = [f for gv, f in fused.functions_items() if "pointwise_conv" in gv.name_hint]
    sch = schedules.TiledReduction().apply(func, resolve_target(ZEN4), False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert "_pad" in text  # the rows were padded (the case this test is about)
    vector_vars = set(re.findall(r"for (\w+) in T\.vectorized", text))
    predicates = [line for line in text.splitlines() if "T.where(" in line]
    assert predicates and not [p for p in predicates if any(re.search(rf"\b{v}\b", p) for v in vector_vars)]


def test_padded_tile_kernel_matches_unscheduled_on_zen4_code():
    if "avx512f" not in host_cpu_flags() or "avx512_bf16" not in host_cpu_flags():
        pytest.skip("runs znver4 code: needs an AVX-512 CPU with AVX512-BF16 (the structural test above runs anywhere)")
    assert check_kernels(fused_kernels(from_onnx(_conv_13x13()), ZEN4), ZEN4) == []
