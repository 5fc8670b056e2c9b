"""Attention fusion on torch's sequence-first layout at a batch above 1: nn.MultiheadAttention (as a batch-first
nn.TransformerEncoderLayer calls it) transposes its input to [S, B, E], splits heads with Reshape([S, B*N, H]) ->
Transpose([1, 0, 2]) -> Reshape([B, N, S, H]) and merges them with Transpose([2, 0, 1, 3]) -> Reshape([S*B, E]).
TransposeBetweenReshapes moves the head split into one Reshape ([S, B, N, H], perm [1, 2, 0, 3]) and the
attention rules take it (transformer_attention.py). Hand-written graphs in the exporter's form (CI has no torch;
tests/test_transformer_exports.py runs the real exports where torch is installed), compared on onnxruntime and,
compiled, against onnxruntime."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper

from .conftest import run_ort

F = TensorProto.FLOAT
I64 = lambda v: np.array(v, np.int64)  # noqa: E731


class _G:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def op(self, op_type, *inputs, **attrs):
        names = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                self.n += 1
                names.append(f"c{self.n}")
                self.inits.append(numpy_helper.from_array(x, names[-1]))
            else:
                names.append(x)
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op_type, names, [out], name=f"n{self.n}", **attrs))
        return out


def _projected_model(g: _G, rng, flat: str, inputs: list, dims: tuple, opset: int, name: str) -> onnx.ModelProto:
    """The block's end as torch writes it: the output projection (Gemm) of the [S*B, E] rows `flat`, Reshape
    [S, B, E], Transpose to the batch-first output y [B, S, E]; the model, checked."""
    batch, seq, hidden = dims
    y = g.op("Gemm", flat, rng.normal(0, 0.2, (hidden, hidden)).astype(np.float32),
             rng.normal(0, 0.1, hidden).astype(np.float32), transB=1)
    g.op("Transpose", g.op("Reshape", y, I64([seq, batch, hidden])), perm=[1, 0, 2])
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(g.nodes, name, inputs, [helper.make_tensor_value_info("y", F, [batch, seq, hidden])],
                              g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def mha_graph(*, batch: int = 2, seq: int = 6, hidden: int = 32, heads: int = 4, mask: bool = True,
              merge: str = "seq", v_split: str = "seq", opset: int = 17, seed: int = 0,
              scale_first: bool = False) -> onnx.ModelProto:
    """x [batch, seq, hidden] -> a batch-first module's nn.MultiheadAttention as the TorchScript exporter writes
    it (packed in_proj, q and k scaled by sqrt(1/sqrt(H)) each, an additive key-padding mask [B, 1, 1, S] from
    an int64 mask when `mask`), output [batch, seq, hidden]. `merge`: "seq" (torch's [2, 0, 1, 3] merge) or
    "batch" ([0, 2, 1, 3] to [B, S, E], then back to sequence-first). `v_split`: "seq" (torch's) or "batch" (V
    split from a [B, S, E] tensor: Q/K/V split in different layouts). `scale_first`: Mul(c, q) instead of Mul(q, c)."""
    rng = np.random.default_rng(seed)
    g = _G()
    dh = hidden // heads
    xt = g.op("Transpose", "x", perm=[1, 0, 2])                                          # [S, B, E]
    proj = g.op("Add", g.op("MatMul", xt, rng.normal(0, 0.2, (hidden, 3 * hidden)).astype(np.float32)),
                rng.normal(0, 0.1, 3 * hidden).astype(np.float32))                       # [S, B, 3E]
    packed = g.op("Reshape", proj, I64([seq, batch, 3, hidden]))
    packed = g.op("Squeeze", g.op("Transpose", g.op("Unsqueeze", packed, I64([0])), perm=[3, 1, 2, 0, 4]), I64([3]))
    q_in, k_in, v_in = (g.op("Gather", packed, I64(i), axis=0) for i in range(3))       # [S, B, E] each

    def split(t):  # [S, B, E] -> [B, N, S, H]
        t = g.op("Transpose", g.op("Reshape", t, I64([seq, batch * heads, dh])), perm=[1, 0, 2])
        return g.op("Reshape", t, I64([batch, heads, seq, dh]))

    q, k = split(q_in), split(k_in)
    if v_split == "seq":
        v = split(v_in)
    else:
        vb = g.op("Transpose", v_in, perm=[1, 0, 2])                                     # [B, S, E]
        v = g.op("Transpose", g.op("Reshape", vb, I64([batch, seq, heads, dh])), perm=[0, 2, 1, 3])
    f = np.array(math.sqrt(1 / math.sqrt(dh)), np.float32)
    kt = g.op("Transpose", k, perm=[0, 1, 3, 2])
    s = g.op("MatMul", *((g.op("Mul", f, q), g.op("Mul", f, kt)) if scale_first else (g.op("Mul", q, f),
                                                                                          g.op("Mul", kt, f))))
    inputs = [helper.make_tensor_value_info("x", F, [batch, seq, hidden])]
    if mask:
        m = g.op("Cast", g.op("Unsqueeze", "attention_mask", I64([1, 2])), to=F)
        s = g.op("Add", s, g.op("Mul", g.op("Sub", np.array(1.0, np.float32), m), np.array(-10000.0, np.float32)))
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq]))
    o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)                                   # [B, N, S, H]
    if merge == "seq":
        flat = g.op("Reshape", g.op("Transpose", o, perm=[2, 0, 1, 3]), I64([seq * batch, hidden]))
    else:
        bse = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), I64([batch, seq, hidden]))
        flat = g.op("Reshape", g.op("Transpose", bse, perm=[1, 0, 2]), I64([seq * batch, hidden]))
    return _projected_model(g, rng, flat, inputs, (batch, seq, hidden), opset, "mha")


def _feeds(proto: onnx.ModelProto) -> list[dict]:
    batch, seq, hidden = (d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.default_rng(1).normal(0, 1, (batch, seq, hidden)).astype(np.float32)
    if len(proto.graph.input) == 1:
        return [{"x": x}]
    holes = np.ones((batch, seq), np.int64)
    holes[0, 1] = holes[-1, :2] = 0  # a hole, left padding; rows differ across the batch
    return [{"x": x, "attention_mask": holes}, {"x": x, "attention_mask": np.ones((batch, seq), np.int64)}]


def _ops(proto: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)


def _assert_close(proto, out, feeds_list) -> None:
    for feeds in feeds_list:
        for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
            assert got.shape == want.shape
            tol = 1e-4 * float(np.max(np.abs(want))) + 1e-6
            assert float(np.max(np.abs(got - want))) <= tol


@pytest.mark.parametrize("batch,merge", [(2, "seq"), (3, "seq"), (2, "batch")])
def test_sequence_first_attention_fuses_for_onnxruntime(batch, merge):
    proto = mha_graph(batch=batch, merge=merge)
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::Attention"] == 1 and have["Softmax"] == 0, dict(have)
    assert have["MatMul"] == 0  # q, k, v's projection packed into the Attention; the output projection a Gemm
    assert have["Transpose"] == 0  # the out-projection takes the rows batch-first (GemmOfPermutedRows)
    _assert_close(proto, out, _feeds(proto))


def test_sequence_first_attention_fuses_to_standard_attention():
    proto = mha_graph(batch=3, mask=False, opset=23)
    out = optc.to_onnx(optc.optimize(proto, runtime="standard"))
    onnx.checker.check_model(out, full_check=True)
    have = _ops(out)
    assert have["Attention"] == 1 and have["Softmax"] == 0, dict(have)
    _assert_close(proto, out, _feeds(proto))


def test_q_k_v_split_in_different_layouts_is_not_fused():
    # V split batch-first from [B, S, E], Q and K sequence-first: each op is right, but not one attention layout
    proto = mha_graph(batch=2, v_split="batch")
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::Attention"] == have["com.microsoft::MultiHeadAttention"] == 0, dict(have)
    assert have["Softmax"] == 1
    _assert_close(proto, out, _feeds(proto))


def test_batch_one_still_fuses_batch_first():
    # at B = 1 the split canonicalizes to the batch-first [0, 2, 1, 3] form: no Transposes around the Attention
    proto = mha_graph(batch=1)
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::Attention"] == 1 and have["Transpose"] == 0, dict(have)
    _assert_close(proto, out, _feeds(proto))


def test_sequence_first_attention_compiles_fused():
    pytest.importorskip("tvm")
    proto = mha_graph(batch=3)
    fused = optc.to_onnx(optc.optimize(proto, runtime="optc"))
    assert _ops(fused)["Softmax"] == 0 and _ops(fused)["Attention"] == 1, dict(_ops(fused))
    module = optc.compile(optc.from_onnx(proto), "cpu")
    for feeds in _feeds(proto):
        (want,) = run_ort(proto, feeds)
        np.testing.assert_allclose(module.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def _shared_input_graph(v_shape, v_perm, k_from: str, k_perm=(1, 2, 3, 0)) -> onnx.ModelProto:
    """Q and V split from one [S, B, E] tensor xs (Q sequence-first into 2 heads, V as `v_shape` / `v_perm`), K from
    xs or from a second input m (`k_from`), y = the [B, S, *] batch-first merge. Built by hand (a breaker's)."""
    b, s, n, h = 2, 3, 2, 4
    e = n * h
    hv = v_shape[-1]
    nodes = [helper.make_node("Transpose", ["x"], ["xs"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["m"], ["ms"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["xs", "sq"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["q"], perm=[1, 2, 0, 3]),
             helper.make_node("Reshape", [k_from, "sq"], ["k4"]),
             helper.make_node("Transpose", ["k4"], ["k"], perm=list(k_perm)),
             helper.make_node("Reshape", ["xs", "sv"], ["v4"]),
             helper.make_node("Transpose", ["v4"], ["v"], perm=list(v_perm)),
             helper.make_node("MatMul", ["q", "k"], ["sc"]),
             helper.make_node("Softmax", ["sc"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ot", "so"], ["y"])]
    inits = [numpy_helper.from_array(I64(v), name) for name, v in
             (("sq", [s, b, n, h]), ("sv", v_shape), ("so", [b, s, n * hv]))]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info(i, F, [b, s, e]) for i in ("x", "m")],
                              [helper.make_tensor_value_info("y", F, [b, s, n * hv])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.mark.parametrize("v_shape,v_perm,k_from,fused", [
    ((2, 3, 2, 4), (0, 2, 1, 3), "xs", False),  # V split batch-first from the [S, B, E] tensor Q and K are split from
    ((3, 2, 1, 8), (1, 2, 0, 3), "ms", False),  # V one head of 8 from Q's tensor (Q's split is 2 heads of 4)
    ((3, 2, 2, 4), (1, 2, 0, 3), "ms", True),   # V split as Q is, from the same tensor: attention
])
def test_q_k_v_of_one_tensor_are_each_their_own_split(v_shape, v_perm, k_from, fused):
    # the splits are found from the MatMuls that read q, k and v; found from the tensor's uses, Q's split stood for
    # all three: wrong outputs (mixed layouts) and a Reshape to the wrong size (one V head)
    proto = _shared_input_graph(v_shape, v_perm, k_from)
    rng = np.random.default_rng(0)
    feeds = {name: rng.normal(0, 1, (2, 3, 8)).astype(np.float32) for name in ("x", "m")}
    for runtime in ("onnxruntime", "optc"):
        out = optc.to_onnx(optc.optimize(proto, runtime=runtime))
        have = _ops(out)
        assert (have["Softmax"] == 0) == fused, (runtime, dict(have))
        if runtime == "onnxruntime":
            _assert_close(proto, out, [feeds])
    pytest.importorskip("tvm")
    (want,) = run_ort(proto, feeds)
    np.testing.assert_allclose(optc.compile(optc.from_onnx(proto), "cpu").run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def bmm_graph(*, batch: int = 2, seq: int = 5, hidden: int = 32, heads: int = 4, mask: bool = False,
              softmax_axis: int = -1, opset: int = 17, seed: int = 0, scale_first: bool = False) -> onnx.ModelProto:
    """nn.MultiheadAttention with need_weights=True (its default when called directly) as the TorchScript exporter
    writes it: heads as 3-D [B*N, S, H] batches (Reshape [S, B*N, H], Transpose [1, 0, 2]; K's [1, 2, 0]), q
    scaled by 1/sqrt(H), MatMul (bmm), an additive float mask [B*N, S, S] (an input) when `mask`, Softmax, MatMul,
    Transpose [1, 0, 2], Reshape [S*B, E], the output projection. x [batch, seq, hidden] -> y the same.
    `scale_first`: Mul(c, q) instead of Mul(q, c)."""
    rng = np.random.default_rng(seed)
    g = _G()
    dh = hidden // heads
    xt = g.op("Transpose", "x", perm=[1, 0, 2])
    q_in, k_in, v_in = (g.op("Add", g.op("MatMul", xt, rng.normal(0, 0.2, (hidden, hidden)).astype(np.float32)),
                             rng.normal(0, 0.1, hidden).astype(np.float32)) for _ in range(3))

    def split(t, perm):
        return g.op("Transpose", g.op("Reshape", t, I64([seq, batch * heads, dh])), perm=perm)

    c = np.array(1 / math.sqrt(dh), np.float32)
    q = g.op("Mul", c, split(q_in, [1, 0, 2])) if scale_first else g.op("Mul", split(q_in, [1, 0, 2]), c)
    s = g.op("MatMul", q, split(k_in, [1, 2, 0]))
    inputs = [helper.make_tensor_value_info("x", F, [batch, seq, hidden])]
    if mask:
        s = g.op("Add", s, "mask")
        inputs.append(helper.make_tensor_value_info("mask", F, [batch * heads, seq, seq]))
    o = g.op("MatMul", g.op("Softmax", s, axis=softmax_axis), split(v_in, [1, 0, 2]))
    flat = g.op("Reshape", g.op("Transpose", o, perm=[1, 0, 2]), I64([seq * batch, hidden]))
    return _projected_model(g, rng, flat, inputs, (batch, seq, hidden), opset, "bmm")


def _bmm_feeds(proto) -> dict:
    """x ~ N(0, 1), the mask (if any) ~ N(0, 3), at the inputs' static shapes."""
    rng = np.random.default_rng(1)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    return {name: rng.normal(0, 1 if name == "x" else 3, shape).astype(np.float32) for name, shape in dims.items()}


@pytest.mark.parametrize("batch,mask", [(2, False), (3, True), (1, False)])
def test_bmm_heads_are_lifted_and_fused(batch, mask):
    # LiftBatchedHeads (transformer_bmm.py) writes the 3-D heads as the 4-D sequence-first ones, then fused
    proto = bmm_graph(batch=batch, mask=mask)
    feeds = _bmm_feeds(proto)
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["Softmax"] == 0 and have["com.microsoft::Attention"] + have["com.microsoft::MultiHeadAttention"] == 1
    _assert_close(proto, out, [feeds])
    pytest.importorskip("tvm")
    fused = optc.to_onnx(optc.optimize(proto, runtime="optc"))
    assert _ops(fused)["Softmax"] == 0 and _ops(fused)["Attention"] == 1, dict(_ops(fused))
    (want,) = run_ort(proto, feeds)
    np.testing.assert_allclose(optc.compile(optc.from_onnx(proto), "cpu").run(feeds)["y"], want, rtol=1e-4,
                               atol=1e-5)


def test_bmm_heads_to_standard_attention():
    proto = bmm_graph(opset=23)
    out = optc.to_onnx(optc.optimize(proto, runtime="standard"))
    onnx.checker.check_model(out, full_check=True)
    assert _ops(out)["Attention"] == 1 and _ops(out)["Softmax"] == 0
    _assert_close(proto, out, [_bmm_feeds(proto)])


def test_bmm_softmax_over_another_axis_is_not_lifted():
    proto = bmm_graph(softmax_axis=1)
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    assert _ops(out)["Softmax"] == 1 and _ops(out)["com.microsoft::Attention"] == 0
    _assert_close(proto, out, [_bmm_feeds(proto)])


@pytest.mark.parametrize("build", [mha_graph, bmm_graph], ids=["4-d", "bmm"])
def test_scale_written_first_fuses(build):
    # Mul(c, q): the matcher takes Mul's operands in either order; the head splits are found behind either
    # (read as Mul's first input, the constant's missing producer crashed optimize: a breaker)
    proto = build(scale_first=True)
    feeds = _bmm_feeds(proto) if build is bmm_graph else _feeds(proto)[0]
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    assert _ops(out)["Softmax"] == 0, dict(_ops(out))
    _assert_close(proto, out, [feeds])


def mha_graph_symbolic_batch(*, seq: int = 6, hidden: int = 32, heads: int = 4, split_order: str = "bn",
                             seed: int = 0, q_rows: str = "same") -> onnx.ModelProto:
    """`mha_graph` as torch's TorchScript exporter writes it with `dynamic_axes` on the batch: x ["batch", seq,
    hidden] and attention_mask ["batch", seq]; every Reshape target computed from the shapes (the batch read
    from Shape of the sequence-first [S, B, E], the head size as E // heads, which ONNX's inference does not
    compute), so ONNX's inference leaves the split's [S, B*N, H] middle dim unnamed. `split_order`: "bn" (torch's
    [B, N, S, H] head split) or "nb" (a graph that splits B*N as [N, B]: another computation, not the heads).
    `q_rows`: "same", or "reversed" (Q from the batch in reverse order: a Slice with step -1 over the batch axis,
    which keeps its length)."""
    rng = np.random.default_rng(seed)
    g = _G()
    xt = g.op("Transpose", "x", perm=[1, 0, 2])                                          # [S, B, E]
    sh = g.op("Shape", xt)
    b1 = g.op("Unsqueeze", g.op("Gather", sh, I64(1), axis=0), I64([0]))                 # [B]
    dh = g.op("Unsqueeze", g.op("Div", g.op("Gather", sh, I64(2), axis=0), I64(heads)), I64([0]))  # [E // N]
    proj = g.op("Add", g.op("MatMul", xt, rng.normal(0, 0.2, (hidden, 3 * hidden)).astype(np.float32)),
                rng.normal(0, 0.1, 3 * hidden).astype(np.float32))                       # [S, B, 3E]
    lead = g.op("Slice", g.op("Shape", proj), I64([0]), I64([2]))
    packed = g.op("Reshape", proj, g.op("Concat", lead, I64([3, hidden]), axis=0))
    packed = g.op("Squeeze", g.op("Transpose", g.op("Unsqueeze", packed, I64([0])), perm=[3, 1, 2, 0, 4]), I64([3]))
    q_in, k_in, v_in = (g.op("Gather", packed, I64(i), axis=0) for i in range(3))       # [S, B, E] each
    if q_rows == "reversed":
        q_in = g.op("Slice", q_in, I64([-1]), I64([-2**63]), I64([1]), I64([-1]))
    bn = g.op("Mul", b1, I64([heads]))

    def split(t):  # [S, B, E] -> [S, B*N, H] -> [B*N, S, H] -> [B, N, S, H] (or [N, B, S, H])
        t = g.op("Transpose", g.op("Reshape", t, g.op("Concat", I64([seq]), bn, dh, axis=0)), perm=[1, 0, 2])
        four = (b1, I64([heads])) if split_order == "bn" else (I64([heads]), b1)
        return g.op("Reshape", t, g.op("Concat", *four, I64([seq]), dh, axis=0))

    q, k, v = split(q_in), split(k_in), split(v_in)
    f = np.array(math.sqrt(1 / math.sqrt(hidden // heads)), np.float32)
    s = g.op("MatMul", g.op("Mul", q, f), g.op("Mul", g.op("Transpose", k, perm=[0, 1, 3, 2]), f))
    m = g.op("Cast", g.op("Unsqueeze", "attention_mask", I64([1, 2])), to=F)
    s = g.op("Add", s, g.op("Mul", g.op("Sub", np.array(1.0, np.float32), m), np.array(-10000.0, np.float32)))
    o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)                                   # [B, N, S, H]
    rows = g.op("Mul", b1, I64([seq]))
    flat = g.op("Reshape", g.op("Transpose", o, perm=[2, 0, 1, 3]), g.op("Concat", rows, I64([hidden]), axis=0))
    y = g.op("Gemm", flat, rng.normal(0, 0.2, (hidden, hidden)).astype(np.float32),
             rng.normal(0, 0.1, hidden).astype(np.float32), transB=1)
    g.op("Transpose", g.op("Reshape", y, g.op("Concat", I64([seq]), b1, I64([hidden]), axis=0)), perm=[1, 0, 2])
    g.nodes[-1].output[0] = "y"
    inputs = [helper.make_tensor_value_info("x", F, ["batch", seq, hidden]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq])]
    graph = helper.make_graph(g.nodes, "mha_dynamic", inputs,
                              [helper.make_tensor_value_info("y", F, ["batch", seq, hidden])], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _symbolic_feeds(batch: int, seq: int = 6, hidden: int = 32) -> list[dict]:
    x = np.random.default_rng(batch).normal(0, 1, (batch, seq, hidden)).astype(np.float32)
    holes = np.ones((batch, seq), np.int64)
    holes[0, 1] = holes[-1, :2] = 0
    return [{"x": x, "attention_mask": holes}, {"x": x, "attention_mask": np.ones((batch, seq), np.int64)}]


@pytest.mark.parametrize("runtime,op", [("onnxruntime", "com.microsoft::Attention"), ("standard", "Attention")])
def test_symbolic_batch_attention_fuses(runtime, op):
    # the dynamic-axes export of the layout above: TransposeBetweenReshapes splits the unnamed B*N by the element
    # count, the merge's [S*B, E] rows are a [-1, E] target, GemmOfPermutedRows takes the rows batch-first; for
    # onnxruntime the q, k, v projection is packed in (its moves traced at one batch: they carry the batch axis)
    proto = mha_graph_symbolic_batch()
    out = optc.to_onnx(optc.optimize(proto, runtime=runtime, level=2))
    have = _ops(out)
    assert have[op] == 1 and have["Softmax"] == 0, dict(have)
    if runtime == "onnxruntime":
        assert have["Transpose"] == have["MatMul"] == 0, dict(have)
    (att,) = [n for n in out.graph.node if n.op_type in ("MultiHeadAttention", "Attention")]
    readers = [n.op_type for n in out.graph.node if att.output[0] in n.input]
    assert readers == ["Reshape"], readers  # the out-projection takes its rows batch-first: no Transpose back
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # still any batch
    for batch in (1, 2, 3):
        _assert_close(proto, out, _symbolic_feeds(batch))


def test_symbolic_batch_split_in_the_other_order_is_not_fused():
    # B*N split as [N, B]: a valid graph, but its "heads" mix batch rows: not an attention, computed as it is
    proto = mha_graph_symbolic_batch(split_order="nb")
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::MultiHeadAttention"] == have["com.microsoft::Attention"] == 0, dict(have)
    assert have["Softmax"] == 1
    for batch in (1, 4):  # (its [B, 1, 1, S] mask broadcasts against its [N, B, S, S] scores where B is 1 or N)
        _assert_close(proto, out, _symbolic_feeds(batch))


def test_symbolic_batch_queries_of_the_reversed_batch_are_not_fused():
    # Q read from the batch in reverse (a Slice with step -1 keeps the batch's length): computed as it is
    proto = mha_graph_symbolic_batch(q_rows="reversed")
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    assert _ops(out)["com.microsoft::Attention"] == 0, dict(_ops(out))
    for batch in (1, 3):
        _assert_close(proto, out, _symbolic_feeds(batch))


def test_symbolic_batch_attention_compiles_fused():
    pytest.importorskip("tvm")
    proto = mha_graph_symbolic_batch()
    fused = optc.to_onnx(optc.optimize(proto, runtime="optc"))
    assert _ops(fused)["Softmax"] == 0 and _ops(fused)["Attention"] == 1, dict(_ops(fused))
    module = optc.compile(optc.from_onnx(proto), "cpu")
    for batch in (1, 3):
        for feeds in _symbolic_feeds(batch):
            (want,) = run_ort(proto, feeds)
            np.testing.assert_allclose(module.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
