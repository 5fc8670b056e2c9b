"""FuseGroupedQueryAttention (rewrites/rules/transformer_gqa.py): an Attention over K/V heads repeated in place
(torch's repeat_interleave as Unsqueeze + Tile + Reshape, Hugging Face's repeat_kv as Expand + Reshape, or a
Gather of each head index rep times) takes the unrepeated K and V (ONNX Attention's grouped-query form). Positive
cases fuse in both output forms and compute the same on onnxruntime; negative ones (heads in the tiled order,
K and V repeated differently, an Expand that also broadcasts the batch, a present K output in use) keep the
repetition, say why, and compute the same."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper
from optc.rewrites.passes.infer_shapes import infer_model_types
from optc.rewrites.rule import explain
from optc.rewrites.rules.transformer_gqa import FuseGroupedQueryAttention

from .test_transformer_fusion import F, G, assert_close, fuse, ops, run_ort

N, S, H = 8, 6, 16
i64 = lambda v: np.array(v, np.int64)  # noqa: E731


def repeat(g: G, x: str, kv: int, rep: int, form: str, batch) -> str:
    """x's kv heads ([batch, kv, S, H]) repeated rep times each: "tile" (Unsqueeze + Tile + Reshape), "expand"
    (Unsqueeze + Expand + Reshape), "expand5" (Reshape to 5-D + Expand + Reshape), "gather" (Gather of each
    head index rep times). Negative forms: "tile_order" (Tile on the heads axis: h0, h1, h0, h1), "gather_order"
    (indices 0, 1, 0, 1), "expand_batch" (the Expand also broadcasts a batch of 1 to 2)."""
    b = 2 if form == "expand_batch" else batch
    merged = i64([0, kv * rep, S, H])  # 0: the batch dim as it is (symbolic or not)
    if form in ("tile", "expand", "expand_batch"):
        x5 = g.op("Unsqueeze", x, i64([2]))
    elif form == "expand5":
        x5 = g.op("Reshape", x, i64([0, kv, 1, S, H]))
    if form == "tile":
        t = g.op("Tile", x5, i64([1, 1, rep, 1, 1]))
    elif form in ("expand", "expand5", "expand_batch"):
        target = g.op("Concat", g.op("Slice", g.op("Shape", x5), i64([0]), i64([1])), i64([kv, rep, S, H]), axis=0)
        t = g.op("Expand", x5, i64([b, kv, rep, S, H]) if form == "expand_batch" else target)
    elif form == "tile_order":
        return g.op("Tile", x, i64([1, rep, 1, 1]))
    elif form in ("gather", "gather_order"):
        idx = np.repeat(np.arange(kv), rep) if form == "gather" else np.tile(np.arange(kv), rep)
        return g.op("Gather", x, i64(idx), axis=1)
    return g.op("Reshape", t, merged)


def gqa_graph(*, kv: int = 2, form: str = "tile", v_kv: int | None = None, batch=1):
    """Attention core (MatMul, scale, causal Where, Softmax, MatMul) on q [batch, N, S, H] and K/V heads
    repeated from [batch, kv, S, H] (V from `v_kv` heads when given), opset 23."""
    g = G()
    v_kv = v_kv or kv
    k = repeat(g, "k", kv, N // kv, form, batch)
    v = repeat(g, "v", v_kv, N // v_kv, form, batch)
    s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", k, perm=[0, 1, 3, 2])), np.array(H ** -0.5, np.float32))
    s = g.op("Where", g.const(np.tril(np.ones((S, S), bool))[None, None], "causal"), s,
             np.array(np.finfo(np.float32).min, np.float32))
    y = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    qb = 2 if form == "expand_batch" else batch
    return g.model([("q", F, [qb, N, S, H]), ("k", F, [batch, kv, S, H]), ("v", F, [batch, v_kv, S, H])], [y], 23)


def feeds(batch=1, kv: int = 2, v_kv: int | None = None, qb=None) -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"q": rng.normal(0, 1, (qb or batch, N, S, H)).astype(np.float32),
             "k": rng.normal(0, 1, (batch, kv, S, H)).astype(np.float32),
             "v": rng.normal(0, 1, (batch, v_kv or kv, S, H)).astype(np.float32)}]


def attention_inputs(out) -> list[tuple]:
    """(K's, V's) shapes as graph inputs feed them to each Attention (the graph's k / v, or a Squeeze of one)."""
    return [tuple(n.input[1:3]) for n in out.graph.node if n.op_type == "Attention"]


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("form,kv,batch", [("tile", 2, 1), ("expand", 2, 1), ("expand5", 4, 1), ("gather", 2, 1),
                                           ("tile", 1, 1), ("expand", 2, "B")])
def test_repeated_kv_heads_become_grouped_query_attention(runtime, form, kv, batch):
    proto = gqa_graph(kv=kv, form=form, batch=batch)
    out = fuse(proto, runtime)
    have = ops(out)
    assert have["Attention"] == 1 and have["Softmax"] == 0, dict(have)
    assert have["Tile"] == have["Expand"] == have["Gather"] == 0, dict(have)
    # K and V reach the Attention with their kv heads: the inputs themselves, or a Squeeze of the 5-D value
    assert have["Squeeze"] == (2 if form == "expand5" else 0)
    if form != "expand5":
        assert attention_inputs(out) == [("k", "v")]
    batches = [2, 1] if batch == "B" else [batch]
    assert_close(proto, out, [f for b in batches for f in feeds(b, kv)])


@pytest.mark.parametrize("form,kw,reason", [
    ("tile_order", {}, "K or V is not a repeat of each head in place"),
    ("gather_order", {}, "K or V is not a repeat of each head in place"),
    ("expand_batch", {}, "K or V is not a repeat of each head in place"),
    ("tile", {"v_kv": 1}, "K and V repeat their heads a different number of times"),
])
def test_other_repeats_are_not_grouped_query_attention(form, kw, reason):
    proto = gqa_graph(form=form, **kw)
    out = fuse(proto, "standard")
    have = ops(out)
    assert have["Attention"] == 1 and have["Tile"] + have["Expand"] + have["Gather"] >= 1, dict(have)
    model = optc.from_onnx(out)
    infer_model_types(model)
    attention = next(n for n in model.graph if n.op_type == "Attention")
    assert reason in explain(FuseGroupedQueryAttention, attention, model)
    assert_close(proto, out, feeds(kv=2, v_kv=kw.get("v_kv"), qb=2 if form == "expand_batch" else None))


def test_present_key_in_use_keeps_the_repeat():
    """A hand-written Attention whose present_key is a graph output: that output has the repeated heads' shape,
    so the repetition stays (the rewrite engine refuses a match with another output in use)."""
    g = G()
    k, v = repeat(g, "k", 2, N // 2, "tile", 1), repeat(g, "v", 2, N // 2, "tile", 1)
    g.nodes.append(helper.make_node("Attention", ["q", k, v], ["y", "present_key"]))
    graph = helper.make_graph(g.nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in
                                             (("q", [1, N, S, H]), ("k", [1, 2, S, H]), ("v", [1, 2, S, H]))],
                              [helper.make_tensor_value_info(n, F, [1, N, S, H]) for n in ("y", "present_key")],
                              g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    out = fuse(proto, "standard")
    assert ops(out)["Tile"] == 2
    model = optc.from_onnx(proto)
    infer_model_types(model)
    attention = next(n for n in model.graph if n.op_type == "Attention")
    assert "'present_key' (of Attention 'y') is a graph output" in explain(FuseGroupedQueryAttention, attention, model)
    assert_close(proto, out, feeds())


def test_hand_written_attention_with_a_mask_input():
    """The rule takes any standard Attention (here with an additive mask input and is_causal unset), keeping its
    other inputs and attributes."""
    g = G()
    k, v = repeat(g, "k", 2, N // 2, "expand", 1), repeat(g, "v", 2, N // 2, "expand", 1)
    mask = g.const(np.random.default_rng(3).normal(0, 1, (S, S)).astype(np.float32), "mask")
    g.nodes.append(helper.make_node("Attention", ["q", k, v, mask], ["y"], scale=0.3))
    proto = g.model([("q", F, [1, N, S, H]), ("k", F, [1, 2, S, H]), ("v", F, [1, 2, S, H])], ["y"], 23)
    out = fuse(proto, "onnxruntime")
    node = next(n for n in out.graph.node if n.op_type == "Attention")
    assert list(node.input)[:3] == ["q", "k", "v"] and len(node.input) == 4
    assert [(a.name, a.f) for a in node.attribute] == [("scale", pytest.approx(0.3))]
    assert_close(proto, out, feeds())


@pytest.mark.parametrize("form", ["tile", "gather"])
def test_grouped_query_attention_compiles_and_matches_onnxruntime(form):
    """The compile path lowers the grouped-query Attention (K/V of 2 heads for 8 query heads) and computes what
    the unfused graph computes on onnxruntime."""
    proto = gqa_graph(kv=2, form=form)
    out = fuse(proto, "standard")
    assert ops(out)["Tile"] == ops(out)["Gather"] == 0
    f = feeds()[0]
    got = next(iter(optc.compile(out).run(f).values()))
    want = run_ort(proto, f)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mask_sized_by_the_repeated_k_reads_the_unrepeated_shape():
    """A symbolic sequence: the fused attention's mask is Expanded to [1, 1, S, T] with T from Shape(K). With K
    a head repeat, ShapeOfRepeatedHeads reads T from the unrepeated K, so the repeat (here a Gather) is gone from
    the graph and the TVM build proves the mask's T equal to K's (it refused the model before)."""
    g = G()
    k, v = repeat(g, "k", 2, N // 2, "gather", 1), repeat(g, "v", 2, N // 2, "gather", 1)
    mask = g.op("Mul", g.op("Sub", np.array(1.0, np.float32), g.op("Cast", "keep", to=F)),
                np.array(-10000.0, np.float32))
    s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", k, perm=[0, 1, 3, 2])), np.array(H ** -0.5, np.float32))
    y = g.op("MatMul", g.op("Softmax", g.op("Add", s, mask), axis=-1), v)
    proto = g.model([("q", F, [1, N, "S", H]), ("k", F, [1, 2, "S", H]), ("v", F, [1, 2, "S", H]),
                     ("keep", TensorProto.INT64, [1, 1, 1, "S"])], [y], 23)
    out = optc.to_onnx(optc.optimize(proto, runtime="standard"))
    have = ops(out)
    assert have["Attention"] == 1 and have["Gather"] == 0, dict(have)
    rng = np.random.default_rng(9)
    for seq in (5, 3):
        keep = np.ones((1, 1, 1, seq), np.int64)
        keep[..., 0] = 0
        f = {"q": rng.normal(0, 1, (1, N, seq, H)).astype(np.float32), "keep": keep,
             **{n: rng.normal(0, 1, (1, 2, seq, H)).astype(np.float32) for n in "kv"}}
        assert_close(proto, out, [f])
        got = next(iter(optc.compile(out).run(f).values()))
        np.testing.assert_allclose(got, run_ort(proto, f)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lo,hi,taken", [(2, 3, True), (-2, -1, True), (0, 1, True), (0, 2, False), (1, 4, False)])
def test_shape_of_repeated_heads_only_off_the_heads_axis(lo, hi, taken):
    from optc.rewrites.rules.transformer_gqa import ShapeOfRepeatedHeads

    g = G()
    k = repeat(g, "k", 2, N // 2, "tile", 1)
    y = g.op("Slice", g.op("Shape", k), np.array([lo], np.int64), np.array([hi], np.int64))
    proto = g.model([("k", F, [1, 2, S, H])], [], 23)
    proto.graph.output.append(helper.make_tensor_value_info(y, TensorProto.INT64, None))
    model = optc.from_onnx(proto)
    infer_model_types(model)
    node = next(n for n in model.graph if n.op_type == "Slice")
    text = explain(ShapeOfRepeatedHeads, node, model)
    assert (" matches at " in text) == taken, text
    if not taken:
        assert "the range covers the heads axis" in text


def _dynamic_repeat(g: G, x: str, kv: int, rep: int, form: str) -> str:
    """x ([B, kv, S, H], B and S symbolic) repeated as a dynamic-shape export writes it: the Reshape's target (and
    the Expand's) computed from Shape(x); "tile_last": a Tile that also repeats the last axis (not a head repeat)."""
    x5 = g.op("Unsqueeze", x, i64([2]))
    if form in ("tile", "tile_last"):
        t = g.op("Tile", x5, i64([1, 1, rep, 1, 2 if form == "tile_last" else 1]))
    else:
        sh = g.op("Shape", x5)
        t = g.op("Expand", x5, g.op("Concat", g.op("Slice", sh, i64([0]), i64([2])), i64([rep]),
                                     g.op("Slice", sh, i64([3]), i64([5])), axis=0))
    sh = g.op("Shape", x)
    last = i64([2 * H]) if form == "tile_last" else g.op("Slice", sh, i64([3]), i64([4]))
    return g.op("Reshape", t, g.op("Concat", g.op("Slice", sh, i64([0]), i64([1])), i64([kv * rep]),
                                   g.op("Slice", sh, i64([2]), i64([3])), last, axis=0))


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("form", ["tile", "expand", "tile_last"])
def test_a_dynamic_sequence_repeat_is_grouped_query_attention(runtime, form):
    """Batch and sequence symbolic, the repeat's shapes computed at run time: ONNX's inference gives the Tile's
    output fresh symbols for both (`unk__N`), so its dims are read from its input and repeats (the Tile form was
    left unfused). A Tile that also repeats the head size is no head repeat: refused."""
    g = G()
    k, v = _dynamic_repeat(g, "k", 2, N // 2, form), _dynamic_repeat(g, "v", 2, N // 2, form)
    width = 2 * H if form == "tile_last" else H
    s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", k, perm=[0, 1, 3, 2])), np.array(H ** -0.5, np.float32))
    y = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    proto = g.model([("q", F, ["B", N, "S", width]), ("k", F, ["B", 2, "S", H]), ("v", F, ["B", 2, "S", H])],
                    [y], 23)
    out = fuse(proto, runtime)
    have = ops(out)
    assert have["Attention"] == 1, dict(have)
    assert (have["Tile"] + have["Expand"] == 0) == (form != "tile_last"), dict(have)
    rng = np.random.default_rng(3)
    for batch, seq in ((2, 5), (1, 3)):
        f = {"q": rng.normal(0, 1, (batch, N, seq, width)).astype(np.float32),
             **{n: rng.normal(0, 1, (batch, 2, seq, H)).astype(np.float32) for n in "kv"}}
        assert_close(proto, out, [f])


def test_inference_keeps_a_tiles_symbolic_dims():
    """infer-shapes: a Tile's dims from its input's and its repeats (ONNX's own inference made fresh symbols)."""
    g = G()
    t = g.op("Tile", g.op("Unsqueeze", "k", i64([2])), i64([1, 1, 3, 1, 2]))
    proto = g.model([("k", F, ["B", 2, "S", H])], [t], 23)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    tile = next(n for n in model.graph if n.op_type == "Tile")
    assert tile.outputs[0].shape == ("B", 2, 3, "S", 2 * H)


def test_shape_of_repeated_heads_refuses_a_shape_with_start():
    """Slice(Shape(r, start=2), [0], [1]) is r's dim 2 (the sequence), not dim 0: the rule reads a Shape's dims
    from axis 0 and is refused for one with start or end (it made the batch of it)."""
    from optc.rewrites.rules.transformer_gqa import ShapeOfRepeatedHeads

    g = G()
    k = repeat(g, "k", 2, N // 2, "tile", 1)
    shape = g.name("shape")
    g.nodes.append(helper.make_node("Shape", [k], [shape], start=2))
    y = g.op("Slice", shape, np.array([0], np.int64), np.array([1], np.int64))
    proto = g.model([("k", F, [1, 2, S, H])], [], 23)
    proto.graph.output.append(helper.make_tensor_value_info(y, TensorProto.INT64, None))
    model = optc.from_onnx(proto)
    infer_model_types(model)
    node = next(n for n in model.graph if n.op_type == "Slice")
    assert "Shape with start or end" in explain(ShapeOfRepeatedHeads, node, model)


def dynamic_repeat_graph(kv: int = 2, heads: str = "-1", mask: str | None = None):
    """A Llama-style dynamic-axes export's repeat_interleave: K/V [B, kv, T, H] -> Unsqueeze -> Tile(rep) ->
    Reshape to Concat(Shape(t)[0:1], [-1], Shape(t)[3:5]) = [B, -1, T, H], computed when the graph runs; the
    attention core on q [B, N, T, H] (scale, no mask). `heads`: "-1", "merged" (the element [kv * rep]) or
    "swapped" (Shape(t)[4], Shape(t)[3]: not t's dims in order; negative). `mask`: None, "crop" (a causal
    [min(T, 64), min(T, 64)] crop of a constant, added)."""
    g = G()

    def rep(x):
        t = g.op("Tile", g.op("Unsqueeze", x, i64([2])), i64([1, 1, N // kv, 1, 1]))
        shape = g.op("Shape", t)
        tail = g.op("Slice", shape, i64([3]), i64([5])) if heads != "swapped" else \
            g.op("Concat", g.op("Slice", shape, i64([4]), i64([5])), g.op("Slice", shape, i64([3]), i64([4])), axis=0)
        target = g.op("Concat", g.op("Slice", shape, i64([0]), i64([1])), i64([N if heads == "merged" else -1]),
                      tail, axis=0)
        return g.op("Reshape", t, target)

    s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", rep("k"), perm=[0, 1, 3, 2])), np.array(H ** -0.5, np.float32))
    inputs = [("q", F, ["B", N, "T", H]), ("k", F, ["B", kv, "T", H]), ("v", F, ["B", kv, "T", H])]
    if mask == "crop":
        t = g.op("Slice", g.op("Shape", "q"), i64([2]), i64([3]))
        causal = np.triu(np.full((64, 64), -1e4, np.float32), 1)
        s = g.op("Add", s, g.op("Slice", g.op("Slice", g.const(causal, "causal"), i64([0]), t, i64([0])),
                                i64([0]), t, i64([1])))
    y = g.op("MatMul", g.op("Softmax", s, axis=-1), rep("v"))
    return g.model(inputs, [y], 23)


def _optimized(proto, runtime: str):
    """-O2 for `runtime` (its shape inference types the Tile), checked by onnx's checker."""
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
    onnx.checker.check_model(out, full_check=runtime == "standard")
    return out


def _dynamic_feed(rng, b: int, t: int, kv: int = 2) -> dict:
    return {"q": rng.normal(0, 1, (b, N, t, H)).astype(np.float32),
            "k": rng.normal(0, 1, (b, kv, t, H)).astype(np.float32),
            "v": rng.normal(0, 1, (b, kv, t, H)).astype(np.float32)}


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("heads,mask", [("-1", None), ("-1", "crop"), ("merged", None), ("merged", "crop")])
def test_a_dynamic_repeat_at_a_computed_shape_is_grouped_query_attention(runtime, heads, mask):
    """[B, -1 | N, T, H] computed from Shape(t): ONNX's inference leaves its dims unnamed (at T = 0 the element T
    copies t's dim 2), yet where that copy happens the unfused attention fails or gives the same empty result
    (`computed_repeat`): with -1, zero heads that Q's N cannot broadcast against; with N, at B = T = 0, a mask of
    T keys (or a crop of T) or none. So it fuses for ONNX out, K and V unrepeated, and computes what onnxruntime
    does at every length the unfused graph runs at; at the lengths of 0 where it changes the repeat's dims, the
    unfused graph fails on onnxruntime (checked: the fusion only turns a failure into a result)."""
    proto = dynamic_repeat_graph(heads=heads, mask=mask)
    out = _optimized(proto, runtime)
    have = ops(out)
    assert have["Attention"] == 1 and have["Tile"] == 0 and have["Softmax"] == 0, dict(have)
    rng = np.random.default_rng(3)
    for b, t in [(1, 1), (2, 5), (1, 17)]:
        assert_close(proto, out, [_dynamic_feed(rng, b, t)])
    zero = [(1, 0)] + ([(0, 3)] if heads == "-1" else [(0, 0)] if mask == "crop" else [])
    for b, t in zero:
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime's failure, of whichever node
            run_ort(proto, _dynamic_feed(rng, b, t))


def test_a_computed_repeat_that_is_not_ts_dims_in_order_is_not_fused():
    """Negative: the target Concat(Shape(t)[0:1], [-1], Shape(t)[4:5], Shape(t)[3:4]) is not t's dims in order
    (at T = H it runs and transposes nothing: the keys are read in another order): the repeat stays, and the
    model computes the same."""
    from optc.rewrites.rules.transformer_attention import FuseAttention4D

    proto = dynamic_repeat_graph(heads="swapped")
    out = _optimized(proto, "standard")
    have = ops(out)
    assert have["Attention"] == 0 and have["Softmax"] == 1, dict(have)
    model = optc.from_onnx(proto)
    infer_model_types(model)
    node = next(n for n in model.graph if n.op_type == "MatMul" and n.inputs[0].producer is not None
                and n.inputs[0].producer.op_type == "Softmax")
    assert "did not match" in explain(FuseAttention4D, node, model)
    rng = np.random.default_rng(5)
    assert_close(proto, out, [_dynamic_feed(rng, 2, H)])  # (T = H: the swapped Reshape runs, the same shape)


def test_a_target_read_through_a_column_is_not_a_merged_target():
    """Negative (a breaker's): the target Squeeze(Concat(Slice(Z, [0], [1], axes=[-1]), Slice(Y, [1], [4],
    axes=[-1]), axis=1)) of two [4, 1] columns (Unsqueeze on axes computed at run time: their rank unknown) is Z,
    [B, 1, -1, H]: every head's keys in one. Read as lists, the Slices cut [B] off Z and [-1, T, H] off Y, the
    merged target: fused, the attention gave other outputs. Shape elements are read only through values of rank at
    most 1: not fused, the same outputs."""
    g = G()

    def rep(x):
        t = g.op("Tile", g.op("Unsqueeze", x, i64([2])), i64([1, 1, N // 2, 1, 1]))
        shape = g.op("Shape", t)
        sl = lambda a, b: g.op("Slice", shape, i64([a]), i64([b]))  # noqa: E731
        one = g.op("Min", sl(0, 1), i64([1]))  # [1] where B >= 1, not a constant
        z = g.op("Unsqueeze", g.op("Concat", sl(0, 1), i64([1, -1]), sl(4, 5), axis=0), one)
        y = g.op("Unsqueeze", g.op("Concat", i64([0, -1]), sl(3, 5), axis=0), one)
        target = g.op("Concat", g.op("Slice", z, i64([0]), i64([1]), i64([-1])),
                      g.op("Slice", y, i64([1]), i64([4]), i64([-1])), axis=1)
        return g.op("Reshape", t, g.op("Squeeze", target, i64([1])))

    s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", rep("k"), perm=[0, 1, 3, 2])), np.array(H ** -0.5, np.float32))
    y = g.op("MatMul", g.op("Softmax", s, axis=-1), rep("v"))
    inputs = [helper.make_tensor_value_info(n, F, [d0, k, "T", H]) for n, d0, k in
              (("q", "B", N), ("k", "B", 2), ("v", "B", 2))]
    proto = helper.make_model(helper.make_graph(g.nodes, "g", inputs, [helper.make_tensor_value_info(y, F, ["B", N, "T", H])],
                                                g.inits), opset_imports=[helper.make_opsetid("", 23)], ir_version=8)
    onnx.checker.check_model(proto)  # (not the full check: its inference refuses values of unknown rank)
    for runtime in ("standard", "onnxruntime"):
        out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))
        assert ops(out)["Attention"] == 0, dict(ops(out))
        rng = np.random.default_rng(1)
        assert_close(proto, out, [_dynamic_feed(rng, b, t) for b, t in [(1, 5), (2, 3)]])


@pytest.mark.parametrize("heads,last,taken", [("merged", "T", True), ("merged", 1, True), ("merged", "M", False),
                                              ("merged", 4, False), ("merged", "min(T,64)", True),
                                              ("-1", "M", True)])
def test_computed_repeat_and_the_masks_key_length(heads, last, taken):
    """`computed_repeat` with the [N] element: at B = T = 0 the Reshape gives rep keys where the fused K has 0, so
    a mask whose key length could be rep (a symbol M of its own, the int rep) is refused; 1, T or a crop of T is
    not (the unfused attention then gives the same empty result, or fails). With -1 (zero heads there) the mask
    does not matter. (The attention rules' own check that the mask fits the scores refuses M first.)"""
    from optc.rewrites.rules.transformer_gqa import computed_repeat

    model = optc.from_onnx(dynamic_repeat_graph(heads=heads))
    infer_model_types(model)
    reshape = next(n for n in model.graph if n.op_type == "Reshape")

    class _M:  # what computed_repeat reads of a match: constants and opsets
        opsets = model.opset_imports

        @staticmethod
        def const(v):
            return v.const_value()

    found = computed_repeat(_M, reshape.outputs[0], ("B", 1, 1, last), True)
    assert (found is not None) == taken
    if taken:
        assert found[2] == N // 2 and found[3] == ("B", N, "T", H)


def test_a_dynamic_repeat_fuses_for_optcs_lowering_too():
    """optc's own lowering (`optc compile`'s pipeline, `infer-shapes{checked-zeros=true}`) fuses the same repeat
    (its library fails the call where a 0 would copy another dim), and the library computes what onnxruntime
    does."""
    proto = dynamic_repeat_graph()
    lowered = optc.optimize(optc.from_onnx(proto), level=2, runtime="optc")
    assert "Attention" in [n.op_type for n in lowered.graph] and "Tile" not in [n.op_type for n in lowered.graph]
    module = optc.compile(proto)
    rng = np.random.default_rng(3)
    for b, t in [(1, 1), (2, 5), (1, 17)]:
        feed = _dynamic_feed(rng, b, t)
        want = run_ort(proto, feed)[0]
        got = next(iter(module.run(feed).values()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
