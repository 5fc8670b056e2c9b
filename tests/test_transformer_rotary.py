"""FuseRotaryEmbedding (rewrites/rules/transformer_rotary.py): x * cos + rotate_half(x) * sin on [B, N, S, H] heads
-> ONNX RotaryEmbedding (opset 23), in both output forms. Positive cases (rotate_half by two Slices or one Split,
cos / sin as [S, H] or [1, 1, S, H], static or symbolic batch) fuse and compute the same on onnxruntime; negative
ones (cos whose halves differ, a cos per head, slices that are not the halves, the halves in the other order, an
opset that cannot be raised) stay as they are and compute the same."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.rewrites.passes.infer_shapes import infer_model_types
from optc.rewrites.rule import explain
from optc.rewrites.rules.transformer_rotary import FuseRotaryEmbeddingContrib

from .test_transformer_fusion import F, G, assert_close, block_raise, fuse, ops

N, S, H = 4, 8, 16


def rope_graph(*, batch=1, split: str = "slice", table_shape=(S, H), halves_differ=False, per_head=False,
               lo_start: int = 0, swap=False, opset: int = 18):
    """y = x * cos + rotate_half(x) * sin, x [batch, N, S, H]; rotate_half by "slice" (two Slices) or "split"
    (Split with sizes). Negative knobs: `halves_differ` (cos's second half is another table), `per_head` (cos
    differs per head), `lo_start` (where the first half's Slice starts), `swap` (Concat(x1, -x2), not rotate_half)."""
    g = G()
    h = H // 2
    ang = np.outer(np.arange(S), 1.0 / 10000 ** (np.arange(0, H, 2) / H))
    second = ang * 1.5 if halves_differ else ang
    cos = np.cos(np.concatenate([ang, second], -1)).astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)
    if per_head:
        cos = np.stack([cos * (1 + 0.1 * i) for i in range(N)])[None]
    else:
        cos, sin = cos.reshape(table_shape), sin.reshape(table_shape)
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    if split == "slice":
        x1 = g.op("Slice", "x", i64([lo_start]), i64([lo_start + h]), i64([-1]))
        x2 = g.op("Slice", "x", i64([h]), i64([np.iinfo(np.int64).max]), i64([3]), i64([1]))
    else:
        x1, x2 = g.name("split"), g.name("split")
        g.nodes.append(helper.make_node("Split", ["x", g.const(i64([h, h]))], [x1, x2], axis=-1))
    rot = g.op("Concat", x1, g.op("Neg", x2), axis=-1) if swap else g.op("Concat", g.op("Neg", x2), x1, axis=-1)
    y = g.op("Add", g.op("Mul", "x", g.const(cos, "cos")), g.op("Mul", rot, g.const(sin, "sin")))
    return g.model([("x", F, [batch, N, S, H])], [y], opset)


def feeds(batch: int = 1) -> list[dict]:
    rng = np.random.default_rng(5)
    return [{"x": rng.normal(0, 1, (batch, N, S, H)).astype(np.float32)}]


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("kwargs", [{}, {"split": "split"}, {"table_shape": (1, 1, S, H)}, {"batch": 3},
                                    {"batch": "B"}])
def test_rotary_embedding_fuses(runtime, kwargs):
    proto = rope_graph(**kwargs)
    out = fuse(proto, runtime)
    have = ops(out)
    assert have["RotaryEmbedding"] == 1 and have["Neg"] == have["Mul"] == 0, dict(have)
    # a symbolic batch: the position ids are Expanded to [B, S], B from x's shape (Shape, Slice, Concat, Expand)
    assert have["Concat"] == (kwargs.get("batch") == "B") and have["Expand"] == (kwargs.get("batch") == "B")
    assert {o.domain: o.version for o in out.opset_import}[""] == 23
    node = next(n for n in out.graph.node if n.op_type == "RotaryEmbedding")
    assert [a.name for a in node.attribute] == ["interleaved"] and node.attribute[0].i == 0
    batches = {"B": [2, 1]}.get(kwargs.get("batch"), [kwargs.get("batch", 1)])
    assert_close(proto, out, [f for b in batches for f in feeds(b)])


@pytest.mark.parametrize("kwargs", [{"halves_differ": True}, {"per_head": True}, {"lo_start": 1},
                                    {"swap": True}, {"opset": 17}])
def test_rotary_embedding_negative(kwargs):
    proto = rope_graph(**kwargs)
    if kwargs.get("opset") == 17:
        proto = block_raise(proto)
    out = fuse(proto, "standard")
    assert ops(out)["RotaryEmbedding"] == 0 and ops(out)["Neg"] == 1, dict(ops(out))
    assert_close(proto, out, feeds())


@pytest.mark.parametrize("kwargs", [{}, {"split": "split"}, {"batch": "B"}])
def test_onnxruntime_form_below_opset_23_takes_the_contrib_op(kwargs):
    """A model that stays below opset 23 (its GridSample changed meaning at 20): com.microsoft RotaryEmbedding
    for onnxruntime, nothing for the standard form (the negative case above)."""
    proto = block_raise(rope_graph(opset=17, **kwargs))
    out = fuse(proto, "onnxruntime")
    have = ops(out)
    assert have["com.microsoft::RotaryEmbedding"] == 1 and have["Neg"] == have["Mul"] == 0, dict(have)
    assert {o.domain: o.version for o in out.opset_import}[""] == 17
    batches = [2, 1] if kwargs.get("batch") == "B" else [1]
    assert_close(proto, out, [f for b in batches for f in feeds(b)])


def test_contrib_rotary_only_for_the_types_onnxruntime_has():
    proto = block_raise(rope_graph(opset=17))
    for t in proto.graph.initializer:  # x, cos and sin in float64
        if t.name.startswith(("cos", "sin")):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    del proto.graph.value_info[:]
    out = fuse(proto, "onnxruntime")
    assert ops(out)["com.microsoft::RotaryEmbedding"] == 0 and ops(out)["Neg"] == 1
    model = optc.from_onnx(proto)
    infer_model_types(model)
    add = next(n for n in model.graph if n.op_type == "Add")
    assert "check: not float32 / float16" in explain(FuseRotaryEmbeddingContrib, add, model)


def test_split_sizes_computed_at_run_time_are_not_halves():
    """A Split whose sizes are a graph input may cut anywhere: not fused (it was taken for halves, and the
    RotaryEmbedding computed something else for sizes [3, 13])."""
    tables = {t.name.split("_")[0]: t for t in rope_graph().graph.initializer if t.name.startswith(("cos", "sin"))}
    tables["cos"].name, tables["sin"].name = "cos", "sin"
    nodes = [helper.make_node("Split", ["x", "sizes"], ["lo", "hi"], axis=-1), helper.make_node("Neg", ["hi"], ["n"]),
             helper.make_node("Concat", ["n", "lo"], ["rot"], axis=-1), helper.make_node("Mul", ["x", "cos"], ["a"]),
             helper.make_node("Mul", ["rot", "sin"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "rope", [helper.make_tensor_value_info("x", F, [1, N, S, H]),
                                              helper.make_tensor_value_info("sizes", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", F, [1, N, S, H])], list(tables.values()))
    for opset in (17, 23):
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        for runtime in ("onnxruntime", "standard"):
            out = fuse(proto, runtime)
            assert ops(out)["RotaryEmbedding"] == ops(out)["com.microsoft::RotaryEmbedding"] == 0, dict(ops(out))
            x = feeds()[0]["x"]
            assert_close(proto, out, [{"x": x, "sizes": np.array(s, np.int64)} for s in ([3, 13], [8, 8])])


def cropped_rope_graph(crop: str = "rows", batch="B", branches: int = 1):
    """rotate-half RoPE on x [batch, N, "S", H] with cos / sin the first S rows of [64, H] tables, cropped at run
    time as a dynamic-shape export does (`self.cos[:t]`, t from Shape(x)). Negative knobs: crop "from_row_1" (rows
    1 .. S), "columns" (also a crop of the columns: not the rows only), "constant_rows" (a fixed 8-row crop),
    "other_input" (rows cropped to a second input y's length, valid when it is 1 or S: min(T, 64), not S),
    "comma_name" (the same, y's length named "S,1": a crop of it is not one of S), "step" (rows 0:S:step, step a
    graph input), "one_row" (tables of 1 row: a crop of them is 1 row whatever S is, and broadcasts).
    `branches` > 1: that many rotary embeddings, of x times 1, 2, ... (an attention's q and k), summed."""
    g = G()
    h = H // 2
    ang = np.outer(np.arange(64), 1.0 / 10000 ** (np.arange(0, H, 2) / H))
    tables = {n: f(np.concatenate([ang, ang], -1)).astype(np.float32) for n, f in (("cos", np.cos), ("sin", np.sin))}
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    if crop == "one_row":
        tables = {n: t[:1] for n, t in tables.items()}
    t = g.op("Slice", g.op("Shape", "y" if crop in ("other_input", "comma_name") else "x"), i64([2]), i64([3]))
    crops = {}
    for name, table in tables.items():
        if crop == "from_row_1":
            crops[name] = g.op("Slice", g.const(table, name), i64([1]), g.op("Add", t, i64([1])), i64([0]))
        elif crop == "columns":
            crops[name] = g.op("Slice", g.const(table, name), i64([0, 0]), g.op("Concat", t, i64([H]), axis=0),
                               i64([0, 1]))
        elif crop == "step":
            crops[name] = g.op("Slice", g.const(table, name), i64([0]), t, i64([0]), "step")
        elif crop == "constant_rows":
            crops[name] = g.op("Slice", g.const(table, name), i64([0]), i64([S]), i64([0]))
        else:
            crops[name] = g.op("Slice", g.const(table, name), i64([0]), t, i64([0]))
    outs = []
    for k in range(branches):
        xb = "x" if branches == 1 else g.op("Mul", "x", np.array(k + 1.0, np.float32))
        x1 = g.op("Slice", xb, i64([0]), i64([h]), i64([-1]))
        x2 = g.op("Slice", xb, i64([h]), i64([H]), i64([-1]))
        rot = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        outs.append(g.op("Add", g.op("Mul", xb, crops["cos"]), g.op("Mul", rot, crops["sin"])))
    y = outs[0] if branches == 1 else g.op("Sum", *outs)
    inputs = [("x", F, [batch, N, "S" if crop != "constant_rows" else S, H])]
    inputs += [("y", F, [1, 1, "T" if crop == "other_input" else "S,1"])] if crop in ("other_input", "comma_name") else []
    inputs += [("step", onnx.TensorProto.INT64, [1])] if crop == "step" else []
    return g.model(inputs, [y], 18)


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("crop", ["rows", "from_row_1", "columns", "other_input", "comma_name", "step", "one_row"])
def test_rotary_tables_cropped_at_run_time(runtime, crop):
    """Cropped to the sequence at run time: RotaryEmbedding on the whole tables' first halves, position ids 0 ..
    S-1 from x's shape; a crop that does not start at row 0 (positions 1 .. S) is refused, and so is one that also
    slices the columns (only a crop of the rows is taken). Outputs at several sequence lengths."""
    proto = cropped_rope_graph(crop)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime=runtime))  # (infer-shapes: S)
    have = ops(out)
    fused = crop == "rows"
    assert (have["RotaryEmbedding"] + have["com.microsoft::RotaryEmbedding"] == 1) == fused, dict(have)
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.normal(0, 1, (b, N, s, H)).astype(np.float32)} for b, s in ((2, S), (1, 1), (1, 40))]
    if crop in ("other_input", "comma_name"):  # y as long as x's sequence, or 1 (its crop broadcasts over every row)
        feeds = [{"x": f["x"], "y": np.zeros((1, 1, t), np.float32)} for f in feeds for t in (f["x"].shape[2], 1)]
    elif crop == "step":  # a step of 2 crops ceil(S / 2) rows: 1 row at S = 2, which broadcasts
        feeds = [{"x": rng.normal(0, 1, (1, N, s, H)).astype(np.float32), "step": np.array([k], np.int64)}
                 for s, k in ((3, 1), (2, 2), (1, 3))]
    assert_close(proto, out, feeds)


def test_rotary_embeddings_of_one_sequence_share_their_position_ids():
    """Two rotary embeddings (q and k) on values of the graph input's batch and sequence: both read the sizes from
    that input, so CSE leaves one set of position ids (a Llama-style export computed them 8 times a call)."""
    proto = cropped_rope_graph(branches=2)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), level=2, runtime="standard"))
    have = ops(out)
    assert have["RotaryEmbedding"] == 2 and have["Range"] == 1, dict(have)
    rng = np.random.default_rng(7)
    assert_close(proto, out, [{"x": rng.normal(0, 1, (b, N, s, H)).astype(np.float32)} for b, s in ((2, S), (1, 1))])
