"""A register tile's accumulator buffer stays on the stack (codegen/schedules.py `max_accumulators`).

TVM keeps a buffer allocated inside a kernel's loops on the stack only when it is smaller than 1024 bytes
(`runtime::kMaxStackAlloca`); a larger one costs two workspace-allocator calls per tile. 16 accumulators of 16
float32 / int32 lanes are exactly 1024 bytes, and an int8 1x1 conv 64 -> 256 at 56 x 56 ran ~1.3x slower for it.
These tests look at the lowered TIR (the buffers allocated under the parallel loop) and compare values with
onnxruntime; they never time anything."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import int8_kernels, schedules
from optc.codegen.build import fuse, prepare
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx
from tvm import relax, s_tir, tirx

from .conftest import run_qdq_exact


def _conv_model(c: int, hw: int, n: int, k: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, c, k, k)).astype(np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[k // 2] * 4)], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], [nh.from_array(w, "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _matmul_model(m: int, k: int, n: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], [nh.from_array(w, "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _kernel(model: onnx.ModelProto, name: str):
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if name in gv.name_hint]
    return func


def _tile_buffer_bytes(func, rule=None) -> list[int]:
    """Bytes of each buffer allocated under a parallel loop of kernel `func` as `rule` (default TiledReduction)
    schedules it, after buffer compaction and flattening (what LowerTVMBuiltin then sees)."""
    sch = (rule or schedules.TiledReduction()).apply(func, resolve_target("cpu"), False)
    assert sch is not None
    passes = [s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
              s_tir.transform.LowerMatchBuffer(), s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer()]
    low = tvm.ir.transform.Sequential(passes)(tvm.IRModule({"main": sch.mod["main"]}))["main"]
    sizes: list[int] = []

    def walk(stmt, parallel: bool) -> None:
        if isinstance(stmt, tirx.For):
            parallel = parallel or stmt.kind == tirx.ForKind.PARALLEL
        if isinstance(stmt, tirx.AllocBuffer) and parallel:
            sizes.append(int(np.prod([int(d) for d in stmt.buffer.shape])) * stmt.buffer.dtype.bits // 8)
        for child in [getattr(stmt, a, None) for a in ("body", "then_case", "else_case")] + \
                list(getattr(stmt, "seq", [])):
            if isinstance(child, tirx.Stmt):
                walk(child, parallel)

    walk(low.body, False)
    return sizes


def test_small_reduction_tile_stays_on_the_stack():
    """A 1x1 conv over 64 channels: each output sums 64 products, so the tile stays under 1024 bytes."""
    sizes = _tile_buffer_bytes(_kernel(_conv_model(64, 28, 256, 1), "conv2d"))
    assert sizes and all(s < schedules.STACK_ALLOCA_BYTES for s in sizes), sizes


def test_long_reduction_may_take_sixteen_accumulators():
    """K = 2048: the workspace calls are amortized over the reduction and the tile of 16 vectors is kept (on a
    CPU with 16 float lanes: 1024 bytes; 512 on an AVX2 one)."""
    target = resolve_target("cpu")
    lanes = schedules._vector_lanes(target, 32)
    sizes = _tile_buffer_bytes(_kernel(_matmul_model(128, 2048, 512), "matmul"))
    # (AVX2's 16 registers hold 12 accumulators beside the operands: schedules.REGISTERS_BESIDE_ACCUMULATORS)
    assert max(sizes) == schedules.max_accumulators(lanes * 4, 2048, schedules.vector_registers(target)) * lanes * 4, \
        sizes


@pytest.mark.parametrize("rows", ["N", 197])
def test_padded_rows_keep_the_tile_on_the_stack(rows):
    """Rows padded to whole tiles (symbolic, or 197 with no divisor in 3..8) read a workspace copy of the
    activations; a workspace tile beside it could alias it for all LLVM knew, so the tile was stored back after
    every product (the digits CNN's [N, 512] @ [512, 64]: 2x slower). With K = 2048 the tile still stays under
    1024 bytes there, where the unpadded matmul above takes 16 accumulators."""
    sizes = _tile_buffer_bytes(_kernel(_matmul_model(rows, 2048, 64), "matmul"))
    assert sizes and all(s < schedules.STACK_ALLOCA_BYTES for s in sizes), sizes


def test_max_accumulators():
    assert schedules.max_accumulators(64) == 15          # 16 lanes x 4 bytes: 15 x 64 = 960 < 1024
    assert schedules.max_accumulators(32) == 16          # 8 lanes x 4 bytes (AVX2): 512 bytes
    assert schedules.max_accumulators(64, 512) == 16     # long reduction
    assert schedules.max_accumulators(64, 511) == 15
    assert schedules.max_accumulators(128) == 7          # float64 x 16 lanes


@pytest.mark.parametrize("isa", list(int8_kernels.ISAS))
def test_int8_tiles_fit_the_stack(isa):
    lanes = int8_kernels.ISAS[isa][1]
    for m in [1, 7, 8, 14, 16, 28, 56, 64, 112, 128, 197]:
        for n_vecs in [1, 2, 3, 4, 6, 8, 16, 32]:
            u_m, u_n = int8_kernels._tile(isa, m, n_vecs)
            assert u_m * u_n * lanes * 4 < schedules.STACK_ALLOCA_BYTES, (isa, m, n_vecs, u_m, u_n)
            assert m % u_m == 0 and n_vecs % u_n == 0


@pytest.mark.skipif(not int8_kernels.int8_isas(resolve_target("cpu")), reason="this CPU has no int8 dot product")
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])  # vpdpbusd on VNNI; int8 activations: vpmaddwd pairs
def test_int8_conv_tile_stays_on_the_stack(x_dtype):
    """An int8 1x1 conv (u8 / s8 x s8 -> int32, requantized) as Int8Reduction schedules it: no buffer under the
    parallel loop reaches 1024 bytes, and the dot-product intrinsic allocates nothing (it read its activation bytes
    through a 4- or 2-byte local buffer, which also took a workspace call per tile)."""
    x = relax.Var("x", relax.TensorType((1, 64, 28, 28), x_dtype))
    w = np.random.default_rng(0).integers(-128, 128, (256, 64, 1, 1)).astype(np.int8)
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), out_dtype="int32"))
            f = relax.op.multiply(relax.op.astype(y, "float32"), relax.const(np.float32(1e-3)))
            out = bb.emit_output(relax.op.astype(relax.op.clip(relax.op.round(f), 0, 255), "uint8"))
        bb.emit_func_output(out)
    target = resolve_target("cpu")
    fused = fuse(prepare(bb.get(), None, target), target)
    [func] = [f for gv, f in fused.functions_items() if "conv2d" in gv.name_hint]
    sizes = _tile_buffer_bytes(func, int8_kernels.Int8Reduction())
    assert sizes and all(8 < s < schedules.STACK_ALLOCA_BYTES for s in sizes), sizes


def _qdq_conv(c: int, hw: int, n: int, k: int, stride: int) -> onnx.ModelProto:
    """float x -> Q/DQ (u8) -> Conv (per-channel s8 weights, int32 bias) -> Relu -> Q/DQ (u8)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    ws = (rng.random(n) * 0.01 + 0.001).astype(np.float32)
    inits = [nh.from_array(np.float32(0.02), "xs"), nh.from_array(np.uint8(7), "xz"), nh.from_array(w, "w"),
             nh.from_array(ws, "ws"), nh.from_array(np.zeros(n, np.int8), "wz"),
             nh.from_array(rng.integers(-1000, 1000, n).astype(np.int32), "b"), nh.from_array(ws * 0.02, "bs"),
             nh.from_array(np.zeros(n, np.int32), "bz"), nh.from_array(np.float32(0.05), "ys"),
             nh.from_array(np.uint8(0), "yz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             h.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
             h.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[k // 2] * 4, strides=[stride] * 2),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("c,hw,n,k,stride", [(64, 28, 256, 1, 1), (256, 14, 64, 1, 1), (128, 14, 128, 1, 2),
                                              (32, 14, 64, 3, 1)])
def test_int8_convs_with_stack_tiles_match_onnxruntime(c, hw, n, k, stride):
    """The retiled int8 convs (1x1, strided 1x1, 3x3) within one quantized unit of onnxruntime's QDQ result."""
    model = _qdq_conv(c, hw, n, k, stride)
    x = np.random.default_rng(1).standard_normal((1, c, hw, hw)).astype(np.float32)
    lib = optc.compile(model)
    got = lib.run({"x": x})["y"]
    want = run_qdq_exact(model, {"x": x})[0]  # (full-range weights: onnxruntime saturates without VNNI)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.05 * 1.001  # y scale: one unit
    assert np.mean(got == want) > 0.99
