"""Pooling windows get a register tile of one pixel by its channel vectors, the rows in parallel
(codegen/schedules.py, ``_pooling_window``): which kernels take it, and that pools of every shape class compute
what onnxruntime does (max-pools bit for bit, NaN included)."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.codegen import schedules

from .conftest import run_ort


def _pool(op="MaxPool", c=64, size=(23, 23), batch=1, kernel=(3, 3), strides=(2, 2), pads=(0, 0, 0, 0),
          dilations=None, ceil_mode=0, count_include_pad=None, before_conv=False) -> onnx.ModelProto:
    """x [batch, c, *size] -> `op` -> y (NCHW; the compile path runs it in NHWC). ``before_conv``: a 1x1 conv
    first (a CNN's pool reads a conv's output)."""
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads))
    if op == "MaxPool":
        attrs["ceil_mode"] = ceil_mode
        if dilations:
            attrs["dilations"] = list(dilations)
    elif count_include_pad is not None:
        attrs["count_include_pad"] = count_include_pad
    nodes, inits, src = [], [], "x"
    if before_conv:
        w = (np.random.default_rng(0).standard_normal((c, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c"]))
        src = "c"
    nodes.append(helper.make_node(op, [src], ["y"], **attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


CASES = {
    "SqueezeNet's 3x3 / 2 over 64 channels, NaN and infinities": dict(c=64, size=(31, 31)),
    "128 channels (8 vectors), after a conv": dict(c=128, size=(15, 15), before_conv=True),
    "256 channels (a tile of 8 of 16 vectors)": dict(c=256, size=(9, 9)),
    "40 channels (not whole 16-lane vectors)": dict(c=40, size=(12, 12)),
    "padded, ceil mode": dict(c=32, size=(14, 14), pads=(1, 1, 1, 1), ceil_mode=1),
    "dilation 2": dict(c=32, size=(17, 17), dilations=(2, 2), strides=(1, 1)),
    "2x2 / 2, batch 3": dict(c=48, size=(8, 10), kernel=(2, 2), batch=3),
    "average, padding counted": dict(op="AveragePool", c=64, size=(13, 13), pads=(1, 1, 1, 1), count_include_pad=1),
    "average, padding not counted": dict(op="AveragePool", c=64, size=(13, 13), pads=(1, 1, 1, 1),
                                         count_include_pad=0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pools_match_onnxruntime(case):
    args = CASES[case]
    model = _pool(**args)
    rng = np.random.default_rng(1)
    x = rng.standard_normal([args.get("batch", 1), args["c"], *args["size"]]).astype(np.float32)
    if "NaN" in case:
        x[0, 5, 3, 4], x[0, 63, 30, 30], x[0, 0, 0, 0] = np.nan, np.inf, -np.inf
        x[0, 17] = -np.inf  # a whole channel of -inf: its windows' max is -inf
    got = optc.compile(model).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape
    if "NaN" in case:  # optc's max-pool is IEEE (codegen/max_pool.py): a window holding a NaN gives NaN and one of
        # -inf gives -inf, where onnxruntime drops the NaN and gives -FLT_MAX: numpy's max over the windows
        windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
        want = windows.max(axis=(-2, -1))
        assert np.isnan(want).sum() == 2 and np.isneginf(want).sum() == 15 * 15
    if args.get("op", "MaxPool") == "MaxPool" and not args.get("before_conv"):
        np.testing.assert_array_equal(got, want)  # (a max is exact; NaN where onnxruntime has NaN)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_symbolic_batch_pool():
    model = _pool(c=64, size=(15, 15))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    lib = optc.compile(model, static_batch=())
    for batch in (2, 0):
        x = np.random.default_rng(batch).standard_normal((batch, 64, 15, 15)).astype(np.float32)
        np.testing.assert_array_equal(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0])


def _tiled(model: onnx.ModelProto, name: str):
    """The fused kernel whose name holds `name`, its block and loops, and TiledReduction's schedule of it."""
    from optc.codegen.kernel_check import fused_kernels
    from optc.codegen.targets import resolve_target
    from tvm import s_tir

    fused = fused_kernels(optc.from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if name in gv.name_hint]
    target = resolve_target("cpu")
    with target:
        sch = schedules.TiledReduction().apply(func, target, False)
    return func, s_tir.Schedule(func), sch


def test_a_max_pool_is_tiled_by_pixel_and_vectorized_across_its_channels():
    """The NHWC max-pool kernel (as the compile path writes it after ConvertLayout): one pixel of 64 channels a
    tile, the output rows in parallel, the write-back one vector."""
    from optc.codegen.max_pool import max_pool_te
    from optc.codegen.targets import resolve_target
    from tvm import s_tir, te, tirx

    def i64(dims):
        return [tirx.IntImm("int64", d) for d in dims]

    x = te.placeholder(i64([1, 47, 47, 64]), "float32", name="x")
    func = te.create_prim_func([x, max_pool_te(x, [3, 3], [2, 2], [1, 1], [0, 0, 0, 0], [1, 2], i64([1, 23, 23, 64]))])
    target = resolve_target("cpu")
    sch0 = s_tir.Schedule(func)
    block = sch0.get_sblock("pool_max")
    stmt = sch0.get(block)
    assert schedules._pooling_window(sch0, stmt, sch0.get_loops(block)[4:], stmt.iter_vars[2].var)
    with target:
        sch = schedules.TiledReduction().apply(func, target, False)
    text = sch.mod["main"].script()
    assert "T.parallel(T.int64(23))" in text and "T.vectorized(T.int64(64))" in text


def test_a_depthwise_convolution_is_not_a_pooling_window():
    """(negative) A depthwise conv slides a window too, but reads a weight: it keeps the register tile of several
    rows (its weights are reused across them)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=32, pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    _func, sch0, sch = _tiled(model, "conv2d")
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    [main] = [i for i in normalize_prim_func(sch0) if not i.is_injective()]
    stmt = sch0.get(main.block_rv)
    loops = sch0.get_loops(main.block_rv)
    n_s = len(main.dom_kind()) - len(main.dom_kind().lstrip("S"))
    assert not schedules._pooling_window(sch0, stmt, loops[n_s:], stmt.iter_vars[n_s - 2].var)
    assert sch is not None and "T.parallel(T.int64(16))" not in sch.mod["main"].script()


@pytest.mark.parametrize("second", ["MaxPool", "AveragePool", "depthwise"])
def test_a_window_over_a_symbolic_height_and_width(second):
    """1x1 conv -> a 3x3 / 2 window over x [1, 40, H, W] (NHWC after ConvertLayout: symbolic rows under a symbolic
    row loop). TiledReduction's predicated symbolic tile wrote past the output's end (a breaker: wrong values, then
    heap corruption); such kernels are left to the other rules."""
    c = 40
    inits = [numpy_helper.from_array((np.eye(c) * 2).astype(np.float32).reshape(c, c, 1, 1), "w")]
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    if second == "depthwise":
        inits.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((c, 1, 3, 3)).astype(np.float32),
                                             "wd"))
        node = helper.make_node("Conv", ["xc", "wd"], ["y"], group=c, **attrs)
    else:
        node = helper.make_node(second, ["xc"], ["y"], **attrs)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["xc"]), node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    lib = optc.compile(model)
    for size in [(7, 9), (16, 33), (1, 2)]:
        x = np.random.default_rng(4).standard_normal((1, c, *size)).astype(np.float32)
        want = run_ort(model, {"x": x})[0]
        for _ in range(3):
            got = lib.run({"x": x})["y"]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
