"""Attention in a dynamic-shape export (batch and sequence symbolic, as `torch.onnx.export(dynamic_axes=...)`
writes GPT-2's `view(b, t, heads, -1)` and `q.shape[-1] ** 0.5`): ONNX's shape inference cannot divide the
symbolic sizes, so the head size was unknown and the scale a Pow of a Shape computed at run time, and attention
stayed unfused. infer-shapes now resolves what ONNX leaves unnamed, soundly (the -1 of a Reshape from the element
count where the symbols cancel, an arange's length, a crop `causal[:t]` as min(t, L), a broadcast of t against its
crop as t), fold-constants folds a Gather of a Shape's known dims, and the block fuses; outputs on onnxruntime at
several batch / sequence sizes. A crop by another input's length (valid when that length is 1) is not taken for
the sequence: those graphs stay unfused."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from optc.rewrites.passes.infer_shapes import infer_model_types

from .conftest import run_ort
from .test_transformer_fusion import F, G, assert_close, ops

HID, HEADS = 32, 4
i64 = lambda v: np.array(v, np.int64)  # noqa: E731


def dynamic_attention(scale: str = "gather", mask: str = "additive", crop_by: str = "x",
                      packed: bool = False, squeezed: bool = False) -> tuple:
    """x [B, T, HID] -> causal multi-head self-attention with the head split as `view(b, t, HEADS, -1)` from
    Shape(x) and the scale 1 / sqrt(q.shape[-1]) computed from Shape(q) by a Gather ("gather") or a Slice
    ("slice", nn.MultiheadAttention's export), or a constant ("constant"). `mask`: "additive" (a crop
    of a constant -1e4 table), "where" (Llama's `where(causal[:t, :t], 0, finfo.min)`), "where_upper" (a table
    strictly upper: a crop's last row keeps nothing), "where_offset" (a crop starting at row 1). `crop_by` "y": the
    mask cropped to the length of a second input y [batch, "other"] (valid when it is 1 or seq). `packed`: q, k
    and v Split from one [B, T, 3*HID] projection (GPT-2's c_attn) instead of three MatMuls. `squeezed`: the
    graph input is x4 [B, T, 1, HID], x its Squeeze (the rows of the projection then come from a 4-D input)."""
    g = G()
    rng = np.random.default_rng(0)
    if squeezed:
        g.nodes.append(onnx.helper.make_node("Squeeze", ["x4", g.const(i64([2]), "axes")], ["x"]))
    sh = g.op("Shape", "x")
    b, t = g.op("Gather", sh, i64(0), axis=0), g.op("Gather", sh, i64(1), axis=0)
    split = g.op("Concat", g.op("Unsqueeze", b, i64([0])), g.op("Unsqueeze", t, i64([0])), i64([HEADS]), i64([-1]),
                 axis=0)
    heads = []
    if packed:
        qkv = g.op("Add", g.op("MatMul", "x", rng.normal(0, 0.2, (HID, 3 * HID)).astype(np.float32)),
                   rng.normal(0, 0.1, 3 * HID).astype(np.float32))
        g.nodes.append(onnx.helper.make_node("Split", [qkv, g.const(i64([HID] * 3), "split")],
                                             ["q_in", "k_in", "v_in"], axis=2))
    for name in "qkv":
        w = rng.normal(0, 0.2, (HID, HID)).astype(np.float32)
        proj = f"{name}_in" if packed else g.op("MatMul", "x", w)
        heads.append(g.op("Transpose", g.op("Reshape", proj, split), perm=[0, 2, 1, 3]))
    q, k, v = heads
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    if scale != "constant":
        dims = g.op("Shape", q)
        last = g.op("Gather", dims, i64(3), axis=0) if scale == "gather" else \
            g.op("Slice", dims, i64([-1]), i64([np.iinfo(np.int64).max]))
        dim = g.op("Cast", last, to=TensorProto.FLOAT)
        s = g.op("Div", s, g.op("Pow", dim, np.array(0.5, np.float32)))
    else:
        s = g.op("Div", s, np.array(np.sqrt(HID // HEADS), np.float32))
    end = g.op("Unsqueeze", t if crop_by == "x" else g.op("Gather", g.op("Shape", "y"), i64(1), axis=0), i64([0]))
    if mask == "additive":
        table = np.triu(np.full((64, 64), -1e4, np.float32), 1)
    else:
        table = np.tril(np.ones((64, 64), bool)) if mask != "where_upper" else np.triu(np.ones((64, 64), bool), 1)
    first = i64([1]) if mask == "where_offset" else i64([0])
    crop = g.op("Slice", g.op("Slice", table, first, g.op("Add", end, first) if mask == "where_offset" else end,
                              i64([0])), i64([0]), end, i64([1]))
    bias = crop if mask == "additive" else g.op("Where", crop, np.array(0.0, np.float32),
                                                 np.array(np.finfo(np.float32).min, np.float32))
    p = g.op("Softmax", g.op("Add", s, bias), axis=-1)
    merge = g.op("Concat", g.op("Unsqueeze", b, i64([0])), g.op("Unsqueeze", t, i64([0])), i64([-1]), axis=0)
    y = g.op("Reshape", g.op("Transpose", g.op("MatMul", p, v), perm=[0, 2, 1, 3]), merge)
    inputs = [("x4", F, ["batch", "seq", 1, HID]) if squeezed else ("x", F, ["batch", "seq", HID])] + (
        [("y", F, ["batch", "other"])] if crop_by == "y" else [])
    return g.model(inputs, [y], 17), y


def test_infer_shapes_divides_symbolic_sizes():
    """Reshape(x [batch, seq, 32], [batch, seq, 4, -1]): the last dim is 8 (ONNX's inference: a fresh symbol);
    the causal crop is min(seq, 64) square, the masked scores [batch, 4, seq, seq], the head merge [batch, seq, 32]."""
    proto, _ = dynamic_attention()
    model = optc.from_onnx(proto)
    infer_model_types(model)
    shapes = {n.op_type: n.outputs[0].shape for n in model.graph}  # (the last node of each type)
    reshapes = [n.outputs[0].shape for n in model.graph if n.op_type == "Reshape"]
    assert reshapes[0] == ("batch", "seq", HEADS, HID // HEADS) and reshapes[-1] == ("batch", "seq", HID), reshapes
    assert shapes["Slice"] == ("min(seq,64)", "min(seq,64)") and shapes["Add"] == ("batch", HEADS, "seq", "seq"), \
        shapes


def test_a_slice_with_a_computed_step_keeps_its_dims_unnamed():
    """x [4, 8] sliced 0:100:step with step a graph input: its rows are 4 only at step 1, so Shape of it is not
    folded (onnxruntime's symbolic inference took the step for 1 and the Shape folded to [4, 8]); and a crop of a
    table of 0 rows to S, broadcast against x [S, 4], is 0 long at S = 1: the product's dim stays unnamed."""
    g = G()
    z = g.op("Slice", "x", i64([0]), i64([100]), i64([0]), "step")
    proto = g.model([("x", F, [4, 8]), ("step", TensorProto.INT64, [1])], [g.op("Cast", g.op("Shape", z), to=TensorProto.FLOAT), g.op("Relu", z)], 17)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2))
    for k in (1, 2):
        feeds = {"x": np.arange(32, dtype=np.float32).reshape(4, 8), "step": np.array([k], np.int64)}
        for got, want in zip(run_ort(out, feeds), run_ort(proto, feeds), strict=True):
            np.testing.assert_array_equal(got, want)
    g = G()
    crop = g.op("Slice", np.zeros((0, 4), np.float32), i64([0]), g.op("Slice", g.op("Shape", "x"), i64([0]), i64([1])),
                i64([0]))
    proto = g.model([("x", F, ["S", 4])], [g.op("Mul", "x", crop)], 17)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert [n.outputs[0].shape for n in model.graph if n.op_type == "Mul"][0][0] != "S"


def test_a_reshape_whose_computed_elements_could_copy_another_dim_is_not_resolved():
    """Reshape(x [a, b, 6], [x.shape[1], x.shape[0], -1]): at a = 0 the 0 in the shape copies x's dim 1 (allowzero
    0), giving [5, 5, 0], not [b, a, 6]: the -1 stays unnamed, and Shape of the result is not folded (a breaker's
    ConstantOfShape(Shape(y)[2:3]) had become 6 long where the graph makes it empty)."""
    g = G()
    sh = g.op("Shape", "x")
    dims = g.op("Concat", g.op("Unsqueeze", g.op("Gather", sh, i64(1), axis=0), i64([0])),
                g.op("Unsqueeze", g.op("Gather", sh, i64(0), axis=0), i64([0])), i64([-1]), axis=0)
    y = g.op("Reshape", "x", dims)
    size = g.op("Slice", g.op("Shape", y), i64([2]), i64([3]))
    out = g.op("ConstantOfShape", size, value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)))
    proto = g.model([("x", F, ["a", "b", 6])], [out], 17)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert next(n for n in model.graph if n.op_type == "Reshape").outputs[0].shape[2] != 6
    for runtime in (None, "standard"):
        opt = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
        for x in (np.zeros((0, 5, 6), np.float32), np.ones((2, 3, 6), np.float32)):
            assert run_ort(opt, {"x": x})[0].shape == run_ort(proto, {"x": x})[0].shape


def test_onnx_types_of_a_reshape_whose_computed_zero_copies_a_dim_are_not_trusted():
    """r = Reshape(t [1, 6], Concat(Shape(x)[0:1], [6])): ONNX's inference types it [a, 6], but at a = 0 the 0
    copies t's dim 0 (allowzero 0): r is [1, 6]. The type is not trusted, so Where(True, r, x) is not taken for r
    (a breaker: the optimized model gave (1, 6) where the graph gives (0, 6)). At a > 1 the graph itself fails
    (6 elements cannot be [a, 6]), so a runs over 0 and 1 only."""
    g = G()
    shape = g.op("Concat", g.op("Slice", g.op("Shape", "x"), i64([0]), i64([1])), i64([6]), axis=0)
    r = g.op("Reshape", np.arange(6, dtype=np.float32).reshape(1, 6), shape)
    proto = g.model([("x", F, ["a", 6])], [g.op("Where", np.array(True), r, "x")], 18)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert next(n for n in model.graph if n.op_type == "Reshape").outputs[0].shape[0] != "a"
    for runtime in ("onnxruntime", "standard"):
        opt = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
        for a in (0, 1):
            x = np.zeros((a, 6), np.float32)
            np.testing.assert_array_equal(run_ort(opt, {"x": x})[0], run_ort(proto, {"x": x})[0])


def test_a_computed_zero_typed_by_onnxs_own_symbol_is_not_trusted_either():
    """The test above with the dim named by ONNX's inference (unk__N: x expanded to n's length, n of no named
    length), not by a graph input: the Reshape's type [unk__0, 6] is hidden the same way (before, only named
    symbols were: the optimized model gave (1, 6) where the graph gives (0, 6))."""
    g = G()
    xe = g.op("Expand", "x", g.op("Concat", g.op("Shape", "n"), i64([6]), axis=0))
    shape = g.op("Concat", g.op("Slice", g.op("Shape", xe), i64([0]), i64([1])), i64([6]), axis=0)
    r = g.op("Reshape", np.arange(6, dtype=np.float32).reshape(1, 6), shape)
    proto = g.model([("x", F, [1, 6]), ("n", F, [None])], [g.op("Where", np.array(True), r, xe)], 18)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert next(n for n in model.graph if n.op_type == "Reshape").outputs[0].shape[0] is None
    for runtime in ("onnxruntime", "standard"):
        opt = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
        for a in (0, 1):
            feeds = {"x": np.ones((1, 6), np.float32), "n": np.zeros(a, np.float32)}
            np.testing.assert_array_equal(run_ort(opt, feeds)[0], run_ort(proto, feeds)[0])


def test_dims_a_model_names_like_crops_are_not_read_as_crops():
    """A graph input with a dim named "min(seq,5)" (the way optc names a crop): optc makes no crop names then, and
    neither the types nor the attention fusion read it as one: x [t] + y ["min(t,5)"] stays unnamed (at t = 1 and
    y of 3 it is 3 long)."""
    g = G()
    proto = g.model([("x", F, ["t"]), ("y", F, ["min(t,5)"])], [g.op("Add", "x", "y")], 17)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert next(n for n in model.graph if n.op_type == "Add").outputs[0].shape != ("t",)
    # the same name on a graph output (z cropped to k, k an input) and on no input
    nodes = [onnx.helper.make_node("Slice", ["z", "start", "k"], ["o"]), onnx.helper.make_node("Add", ["x", "o"], ["y"])]
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(nodes, "g", [vi("x", F, ["t"]), vi("z", F, ["n"]), vi("k", TensorProto.INT64, [1])],
                                   [vi("o", F, ["min(t,5)"]), vi("y", F, None)],
                                   [onnx.numpy_helper.from_array(np.zeros(1, np.int64), "start")])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=8)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    assert next(n for n in model.graph if n.op_type == "Add").outputs[0].shape != ("t",)


def test_a_crop_by_another_inputs_length_is_not_the_sequence():
    """A mask cropped to a second input's length (a cross attention's, valid when that length is 1 and broadcast)
    is min(other, 64), not seq: the masked scores' last dims stay unnamed and the block unfused, computing the same
    at other = seq and at other = 1 (the breaker's graph that onnxruntime's merged symbols fused wrongly)."""
    proto, _ = dynamic_attention(mask="where", crop_by="y")
    for runtime in ("onnxruntime", "standard"):
        out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
        have = ops(out)
        assert have["Softmax"] == 1 and have["Attention"] + have["com.microsoft::MultiHeadAttention"] == 0, dict(have)
        rng = np.random.default_rng(4)
        assert_close(proto, out, [{"x": rng.normal(0, 1, (b, t, HID)).astype(np.float32),
                                   "y": np.zeros((b, o), np.float32)} for b, t, o in ((1, 16, 16), (2, 5, 1))])


@pytest.mark.parametrize("pick", ["gather", "slice"])
def test_gather_of_a_shapes_known_dim_folds(pick):
    """Gather(Shape(x), 2) and Slice(Shape(x), [-1], [max]) are x's known last dim 8 although its batch and sequence
    are symbolic (an attention's scale q.shape[-1] ** 0.5): folded; Gather(Shape(x), 1) (the sequence) stays."""
    g = G()
    dims = g.op("Shape", "x")
    last = g.op("Gather", dims, i64(2), axis=0) if pick == "gather" else \
        g.op("Slice", dims, i64([-1]), i64([np.iinfo(np.int64).max]))
    seq = g.op("Cast", g.op("Gather", dims, i64(1), axis=0), to=TensorProto.FLOAT)
    y = g.op("Mul", g.op("Mul", "x", g.op("Cast", last, to=TensorProto.FLOAT)), seq)
    proto = g.model([("x", F, ["batch", "seq", 8])], [y], 17)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2))
    assert ops(out)["Shape"] == 1 and ops(out)["Gather"] == 1 and ops(out)["Slice"] == 0, dict(ops(out))
    x = np.random.default_rng(3).normal(0, 1, (2, 5, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(proto, {"x": x})[0])


@pytest.mark.parametrize("runtime", ["onnxruntime", "standard"])
@pytest.mark.parametrize("scale", ["gather", "slice", "constant"])
def test_dynamic_shape_attention_fuses(runtime, scale):
    proto, _ = dynamic_attention(scale)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
    have = ops(out)
    fused = ("com.microsoft::Attention", "com.microsoft::MultiHeadAttention") if runtime == "onnxruntime" else \
        ("Attention",)
    assert sum(have[f] for f in fused) == 1 and have["Softmax"] == 0, dict(have)
    rng = np.random.default_rng(1)
    assert_close(proto, out, [{"x": rng.normal(0, 1, (b, t, HID)).astype(np.float32)}
                              for b, t in ((1, 16), (3, 5), (2, 1))])


def test_dynamic_shape_packed_projection_fuses_with_its_weights():
    """q, k, v Split from one projection at a symbolic batch and sequence (GPT-2's dynamic-axes export): the
    attention bias, Expanded to [.., S, T], reads S and T from q's and k's shapes; ShapeOfSplit reads them from the
    projection's instead, and FusePackedAttention traces the Split at lengths of both symbols (its axis, the
    last, is neither of them): com.microsoft Attention with the weights packed."""
    proto, _ = dynamic_attention(packed=True)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime="onnxruntime"))
    have = ops(out)
    assert have["com.microsoft::Attention"] == 1 and have["MatMul"] == have["Split"] == 0, dict(have)
    rng = np.random.default_rng(1)
    assert_close(proto, out, [{"x": rng.normal(0, 1, (b, t, HID)).astype(np.float32)}
                              for b, t in ((1, 16), (3, 5), (2, 1))])


def test_dynamic_shape_packed_projection_of_a_squeezed_input():
    """The projection reads Squeeze(x4 [batch, seq, 1, HID]): x4's rows are the attention's, but no constant target
    Reshapes it to [batch, seq, HID] (two symbols), so the Attention takes the Squeeze's output (a breaker: the
    rewrite built a Reshape of x4 and crashed)."""
    proto, _ = dynamic_attention(packed=True, squeezed=True)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime="onnxruntime"))
    have = ops(out)
    assert have["com.microsoft::Attention"] == 1 and have["Squeeze"] == 1, dict(have)
    rng = np.random.default_rng(1)
    assert_close(proto, out, [{"x4": rng.normal(0, 1, (b, t, 1, HID)).astype(np.float32)}
                              for b, t in ((1, 16), (3, 5), (2, 1))])


@pytest.mark.parametrize(("mask", "fused"), [("where", True), ("where_upper", False), ("where_offset", False)])
def test_a_causal_crop_computed_at_run_time_keeps_a_score_in_every_row(mask, fused):
    """The standard Attention only where no query row can be fully masked (onnxruntime writes zeros there): a
    runtime crop `causal[:t, :t]` of a constant table qualifies when every row of the table keeps a score left of
    its diagonal (so does every row of a square crop from the origin); a strictly upper-triangular table (a crop's
    last row keeps nothing) or a crop from row 1 does not qualify and stays unfused; outputs equal either way."""
    proto, _ = dynamic_attention(mask=mask)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime="standard"))
    have = ops(out)
    assert (have["Attention"] == 1 and have["Softmax"] == 0) == fused, dict(have)
    rng = np.random.default_rng(2)
    assert_close(proto, out, [{"x": rng.normal(0, 1, (b, t, HID)).astype(np.float32)}
                              for b, t in ((1, 16), (2, 5), (1, 1))])


@pytest.mark.parametrize("name", ["test_rotary_embedding_expanded", "test_rotary_embedding_3d_input_expanded"])
def test_symbolic_inference_is_not_used_where_it_guesses(name):
    """ONNX's test of RotaryEmbedding's function splits the head by sizes computed from a Shape ([8, 0]); onnxruntime's
    symbolic inference cannot evaluate them there and takes equal parts ([4, 4]): with its types, the optimized
    model contradicted itself and onnxruntime refused it. Such a graph keeps ONNX's types: the model loads and
    computes what the reference evaluator does."""
    import onnx.reference
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases() if c.name == name)
    out = optc.to_onnx(optc.optimize(case.model, level=2))
    feeds = {i.name: v for i, v in zip(case.model.graph.input, case.data_sets[0][0], strict=True)}
    want = onnx.reference.ReferenceEvaluator(case.model).run(None, feeds)
    got = run_ort(out, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
