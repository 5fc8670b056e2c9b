"""Grouped 1x1 convolutions with the group as an axis of the kernel (codegen/grouped_conv.py): which convolutions
the compile path computes this way, that the results are the direct kernel's bit for bit and onnxruntime's, and the
schedule's copy block before an epilogue that reads the result through index arithmetic (codegen/schedules.py)."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.codegen import grouped_conv, schedules

from .conftest import run_ort, run_reference


def _model(c=136, k=136, group=4, size=(6, 7), batch=1, kernel=1, strides=(1, 1), pads=(0, 0, 0, 0),
           tail="relu", dtype=TensorProto.FLOAT, weight_input=False, seed=0) -> onnx.ModelProto:
    """x [batch, c, *size] -> grouped Conv (+ bias) -> `tail` ('relu'; 'residual': + x, then ReLU (k == c);
    'concat': ReLU, then concatenated with x along the channels; 'shuffle': ShuffleNet's channel shuffle; 'none') ->
    y. ``weight_input``: the weight is a graph input."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = (rng.standard_normal((k, c // group, kernel, kernel)) * np.sqrt(2 / (c // group))).astype(np_dtype)
    inits = [numpy_helper.from_array((rng.standard_normal(k) * 0.1).astype(np_dtype), "b")]
    inputs = [helper.make_tensor_value_info("x", dtype, [batch, c, *size])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("w", dtype, list(w.shape)))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel, kernel], pads=list(pads),
                              strides=list(strides), group=group)]
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif tail == "residual":
        nodes += [helper.make_node("Add", ["c", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    elif tail == "concat":  # concatenated with x along the channels, as a fire module's
        nodes += [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Concat", ["r", "x"], ["y"], axis=1)]
    elif tail == "shuffle":
        inits += [numpy_helper.from_array(np.array([0, group, k // group, *size], np.int64), "split"),
                  numpy_helper.from_array(np.array([0, k, *size], np.int64), "merge")]
        nodes += [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Reshape", ["r", "split"], ["s"]),
                  helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", ["t", "merge"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _prepared(model: onnx.ModelProto) -> str:
    """The compile path's prepared Relax module (before legalization), as text."""
    from optc.codegen.build import prepare
    from optc.lowering import lower
    from optc.rewrites import optimize

    return prepare(lower(optimize(optc.from_onnx(model), level=2)), None, "cpu").script()


def _feeds(model: onnx.ModelProto, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
        helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in model.graph.input}


def _without_the_pass(model, monkeypatch, **options) -> np.ndarray:
    """The library's output with every conv left to TVM's grouped kernel."""
    with monkeypatch.context() as patch:
        patch.setattr(grouped_conv, "eligible", lambda call, lanes: None)
        return optc.compile(model, **options)


# Output channels per group that are more than a vector and not a multiple of one, at 8 (AVX2) and 16 (AVX-512)
# float lanes alike, so the cases below are taken on every x86 host that runs this suite (ShuffleNet's own 544 / 4,
# 136 a group, is 17 whole AVX2 vectors: the pass leaves it to TVM's kernel there, and this case failed on one).
CASES = {
    "ShuffleNet 136 / 4 (34 a group), residual": dict(c=136, k=136, size=(28, 28), tail="residual"),
    "ShuffleNet 272 / 4 (68), 14x14, weight packed": dict(c=272, k=272, size=(14, 14)),
    "ShuffleNet-like 552 / 4 (138), 7x7, no epilogue": dict(c=552, k=552, size=(7, 7), tail="none"),
    "24 -> 112, 4 groups (6 in, 28 out a group)": dict(c=24, k=112, size=(12, 12)),
    "two groups of 20": dict(c=40, k=40, group=2, size=(5, 9)),
    "8 groups of 25, odd sizes": dict(c=200, k=200, group=8, size=(3, 11)),
    "batch 3": dict(c=68, k=68, group=2, size=(4, 5), batch=3),
    "channel shuffle after": dict(c=136, k=136, size=(9, 9), tail="shuffle"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grouped_convolutions_match_onnxruntime_and_the_direct_kernel(case, monkeypatch):
    model = _model(**CASES[case])
    assert "grouped_conv" in _prepared(model)
    feeds = _feeds(model)
    got = optc.compile(model).run(feeds)["y"]
    want = run_ort(model, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # the same products summed in the same order as TVM's own kernel: the same bits
    np.testing.assert_array_equal(got, _without_the_pass(model, monkeypatch).run(feeds)["y"])


NOT_TAKEN = {  # model arguments the pass leaves to TVM's grouped kernel
    "32 a group: whole vectors already": dict(c=128, k=128),
    "8 a group: one vector": dict(c=32, k=32),
    "depthwise (1 input channel a group)": dict(c=68, k=136, group=68),
    "one group": dict(c=34, k=34, group=1),
    "3x3 kernel": dict(kernel=3, pads=(1, 1, 1, 1)),
    "stride 2": dict(strides=(2, 2)),
    "padded 1x1": dict(pads=(1, 1, 1, 1)),
    "weight computed at run time": dict(weight_input=True),
    "float64": dict(dtype=TensorProto.DOUBLE),
}


@pytest.mark.parametrize("case", list(NOT_TAKEN))
def test_other_convolutions_stay_with_tvms_kernel(case):
    model = _model(**NOT_TAKEN[case])
    text = _prepared(model)
    assert "conv2d" in text and "grouped_conv" not in text
    feeds = _feeds(model)
    got = optc.compile(model).run(feeds)["y"]
    want = (run_reference if case == "float64" else run_ort)(model, feeds)[0]  # (onnxruntime: no float64 Conv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("batch", [2, 0])
def test_symbolic_batch(batch):
    model = _model(c=68, k=68, group=2, size=(5, 6), tail="residual")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert "grouped_conv" in _prepared(model)
    x = np.random.default_rng(batch).standard_normal((batch, 68, 5, 6)).astype(np.float32)
    got = optc.compile(model, static_batch=()).run({"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape == (batch, 68, 5, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max(initial=0)), 1.0))


def test_special_values_stay_in_their_group_and_pixel():
    """NaN and an infinity in one input channel reach only the outputs of that channel's group at that pixel, as
    in onnxruntime's convolution (inf - inf there gives NaN in both)."""
    model = _model(c=136, k=136, size=(6, 6), tail="none")
    lib = optc.compile(model)
    for value, channel, (i, j) in [(np.nan, 40, (2, 3)), (np.inf, 100, (0, 5)), (-np.inf, 0, (5, 0))]:
        feeds = _feeds(model)
        feeds["x"][0, channel, i, j] = value
        got, want = lib.run(feeds)["y"], run_ort(model, feeds)[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        special = ~np.isfinite(got)
        assert special[0, :, i, j].sum() > 0 and special.sum() == special[0, :, i, j].sum()
        group = channel // 34
        assert not special[0, : group * 34, i, j].any() and not special[0, (group + 1) * 34:, i, j].any()
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cg", "out_shape"), [(64, [1, 272, 2, 6]), (64, [3, 272, 2, 1]), (16, [1, 272, 2, 6])])
def test_an_epilogue_that_broadcasts_the_result(cg, out_shape):
    """conv [1, 272, 2, 1] + o `out_shape` (broadcast along the width or the batch; fused into the kernel): the
    Add is not inlined into the copy block, and at the tile its region read through `c // 68` spanned the whole
    group where the tile held one panel of 16 columns (a weight of 64 KiB or more is packed in panels): it read
    columns not yet computed (2304 of 3264 outputs wrong). It now runs after the tiles."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((272, cg, 1, 1)) / np.sqrt(cg)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=4), helper.make_node("Add", ["c", "o"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4 * cg, 2, 1]),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, out_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert "grouped_conv" in _prepared(model)
    feeds = _feeds(model)
    got, want = optc.compile(model).run(feeds)["y"], run_ort(model, feeds)[0]
    assert got.shape == want.shape == tuple(out_shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_repeated_runs_write_only_their_own_group():
    """The epilogue of a tile writes its group's 34 columns only: reading the padded [.., 48] result through
    `c // 34`, it wrote the next group's first 14 too, from values not yet computed, so tiles of neighbouring
    groups on two threads raced (TVM's pool has a thread per core: two on CI's machine)."""
    model = _model(c=136, k=136, size=(28, 28), tail="residual")
    feeds = _feeds(model)
    lib = optc.compile(model)
    want = run_ort(model, feeds)[0]
    for _ in range(20):
        np.testing.assert_allclose(lib.run(feeds)["y"], want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_the_copy_before_arithmetic_reads_is_kept_and_every_rule_variant_builds():
    """The fused grouped kernel's epilogue reads `y5[b, c // K, i, j, c % K]`: the schedule keeps a copy block
    before it, padded (the default rule: pad_einsum's crop) or not (the tuner's variants, which pad no weight:
    a `cache_write`; without it their builds failed). Every variant computes what the unscheduled kernel does."""
    from optc.codegen.kernel_check import check_kernels, fused_kernels
    from optc.codegen.targets import resolve_target
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    fused = fused_kernels(optc.from_onnx(_model(c=272, k=272, size=(14, 14), tail="residual")), "cpu")
    [func] = [f for gv, f in fused.functions_items() if "grouped_conv" in gv.name_hint]
    for pad_weights in (True, False):
        sch = s_tir.Schedule(func)
        if pad_weights:
            assert schedules._pad_ragged_tile(sch, resolve_target("cpu"))[0]
        kept = schedules._keep_copy_before_arithmetic_reads(sch, normalize_prim_func(sch))
        assert len(kept) == 1
    for rule in [schedules.TiledReduction(), *schedules.TiledReduction.variants()]:
        assert check_kernels(fused, "cpu", rules=[rule, *schedules.cpu_rules()], rtol=1e-5) == []


def test_plain_matmul_epilogues_keep_no_copy():
    """(negative) A padded matmul (197 rows and columns) whose epilogue reads its result at the loop variables:
    no copy block is kept, the crop is inlined as before."""
    from optc.codegen.kernel_check import fused_kernels
    from optc.codegen.targets import resolve_target
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 197)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [197, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    fused = fused_kernels(optc.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    [func] = [f for gv, f in fused.functions_items() if "matmul" in gv.name_hint]
    sch = s_tir.Schedule(func)
    assert schedules._pad_ragged_tile(sch, resolve_target("cpu"))[0]
    assert schedules._keep_copy_before_arithmetic_reads(sch, normalize_prim_func(sch)) == frozenset()


@pytest.mark.parametrize("c,group,skipped", [(136, 4, 1), (128, 4, 0), (64, 1, 0)])
def test_kernels_whose_untuned_schedule_pads_weights_are_not_tuning_tasks(c, group, skipped):
    """A grouped 1x1 conv of 34 columns a group has its weight columns padded to whole vectors at compile time by
    the untuned schedule, which the tuner's rules cannot build and measure: it is no tuning task (tuned, the best
    of schedules measured without the padding replaced it and ran 2x slower: ShuffleNet 0.79x -> 1.33x
    onnxruntime). 32 columns a group, or one group, pad nothing: tuned as before."""
    from optc.codegen.tuning import extract_tasks
    from optc.lowering import lower
    from optc.rewrites import optimize

    counts: dict = {}
    names = [t.task_name for t in extract_tasks(lower(optimize(optc.from_onnx(_model(c=c, k=c, group=group)),
                                                                level=2)), None, "cpu", skipped=counts)]
    assert counts["padded_weights"] == skipped
    assert any("conv2d" in n for n in names) == (not skipped), names
