"""FusePackedAttention (rewrites/rules/transformer_packed.py): a com.microsoft MultiHeadAttention whose q, k, v
are linear projections of one [B, S, E] input, through the data movement torch's nn.MultiheadAttention exports
write (one packed in_proj Gemm, then Reshape / Unsqueeze / Transpose / Squeeze / Gather), becomes onnxruntime's
Attention with the projections' weights packed. Positive cases fuse and compute what the graph computes on
onnxruntime; negative ones (rows or columns moved otherwise, the projection used elsewhere, weights that are not
constants, another input per projection, a key padding mask) stay as they are. The separate q/k/v projections of a
BERT block are in test_transformer_fusion.py; real exports in test_transformer_exports.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.rewrites.rule import explain
from optc.rewrites.rules.transformer_packed import FusePackedAttention

from .conftest import run_ort

MS = "com.microsoft"
RNG = np.random.default_rng(7)
E, HEADS = 16, 4


def mha_graph(*, batch: int = 1, seq: int = 6, merge: str = "transpose", order=(0, 1, 2), weight_input=False,
              extra_output=False, cross=False, key_padding=False, swap: bool = False) -> onnx.ModelProto:
    """x [B, S, E] -> Transpose [S, B, E] -> Reshape [S*B, E] -> Gemm(in_proj, transB) [S*B, 3E] -> Reshape
    [S, B, 3, E] -> Unsqueeze(0) -> Transpose(3, 1, 2, 0, 4) -> Squeeze(3) [3, S, B, E] -> Gather(i) [S, B, E]
    -> to [B, S, E] (`merge`: "transpose" (right for any B) or "reshape" (right for B = 1 only)) ->
    MultiHeadAttention, q, k, v taking Gather indices `order`. `swap`: a Transpose of q's S and E axes and back
    through a Reshape (the columns mixed with rows); `cross`: k and v from a second input."""
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    w = RNG.normal(0, 0.3, (3 * E, E)).astype(np.float32)
    const("b", RNG.normal(0, 0.1, 3 * E).astype(np.float32))
    if not weight_input:
        const("w", w)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, E])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3 * E, E]))
    if cross:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [batch, seq, E]))

    def projection(x, tag):
        nodes.append(helper.make_node("Transpose", [x], [f"xt{tag}"], perm=[1, 0, 2]))
        nodes.append(helper.make_node("Reshape", [f"xt{tag}", const(f"s2{tag}", np.array([seq * batch, E]))],
                                      [f"x2d{tag}"]))
        nodes.append(helper.make_node("Gemm", [f"x2d{tag}", "w", "b"], [f"g{tag}"], transB=1))
        nodes.append(helper.make_node("Reshape", [f"g{tag}", const(f"s4{tag}", np.array([seq, batch, 3, E]))],
                                      [f"g4{tag}"]))
        nodes.append(helper.make_node("Unsqueeze", [f"g4{tag}", const(f"ax0{tag}", np.array([0]))], [f"g5{tag}"]))
        nodes.append(helper.make_node("Transpose", [f"g5{tag}"], [f"g6{tag}"], perm=[3, 1, 2, 0, 4]))
        nodes.append(helper.make_node("Squeeze", [f"g6{tag}", const(f"ax3{tag}", np.array([3]))], [f"qkv{tag}"]))
        return f"qkv{tag}"

    qkv = projection("x", "")
    kv = projection("x2", "_2") if cross else qkv
    heads = []
    for name, src, i in zip("qkv", (qkv, kv, kv), order, strict=True):
        nodes.append(helper.make_node("Gather", [src, const(f"i{name}", np.array(i))], [f"{name}_sbe"], axis=0))
        if merge == "transpose":
            nodes.append(helper.make_node("Transpose", [f"{name}_sbe"], [f"{name}3"], perm=[1, 0, 2]))
        else:
            nodes.append(helper.make_node("Reshape", [f"{name}_sbe", const(f"s3{name}", np.array([batch, seq, E]))],
                                          [f"{name}3"]))
        heads.append(f"{name}3")
    if swap:
        nodes.append(helper.make_node("Transpose", ["q3"], ["q_t"], perm=[0, 2, 1]))
        nodes.append(helper.make_node("Reshape", ["q_t", const("s_sw", np.array([batch, seq, E]))], ["q_sw"]))
        heads[0] = "q_sw"
    mha_inputs = heads + (["", "kpm"] if key_padding else [])
    if key_padding:
        inputs.append(helper.make_tensor_value_info("kpm", TensorProto.INT32, [batch, seq]))
    nodes.append(helper.make_node("MultiHeadAttention", mha_inputs, ["y"], domain=MS, num_heads=HEADS))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, E])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, [seq * batch, 3 * E]))
    graph = helper.make_graph(nodes, "mha", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                              ir_version=8)
    return onnx.shape_inference.infer_shapes(model)  # the values' types, as an exporter writes them


def _ops(proto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)


def _fuse(proto) -> onnx.ModelProto:
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), passes="fuse-transformer{runtime=onnxruntime},dce"))
    onnx.checker.check_model(out)
    return out


def _feeds(proto) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i in proto.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.name == "kpm":
            out[i.name] = np.ones(dims, np.int32)
        else:
            out[i.name] = rng.normal(0, 1, dims).astype(np.float32)
    return out


def _same(proto, out) -> None:
    feeds = _feeds(proto)
    for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(want))))


@pytest.mark.parametrize("batch, merge", [(1, "transpose"), (1, "reshape"), (3, "transpose")])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_packed_projection_through_moves_fuses(batch, merge, order):
    proto = mha_graph(batch=batch, merge=merge, order=order)
    out = _fuse(proto)
    have = _ops(out)
    assert have[f"{MS}::Attention"] == 1 and have[f"{MS}::MultiHeadAttention"] == 0, dict(have)
    assert have["Gemm"] == have["Gather"] == have["Squeeze"] == 0, dict(have)  # the projection and its moves
    node = next(n for n in out.graph.node if n.op_type == "Attention")
    assert node.input[0] == "x"  # the [B, S, E] input itself: its Transpose went with the projection
    w = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name == node.input[1])
    assert w.shape == (E, 3 * E)
    _same(proto, out)


@pytest.mark.parametrize("kwargs, why", [
    ({"batch": 3, "merge": "reshape"}, "the moves put the projection's rows in another order than the input's"),
    ({"swap": True}, "the moves mix rows and columns of the projection"),
    ({"extra_output": True}, "the projection or its moves feed something else"),
    ({"weight_input": True}, "the Gemm's weight is not a 2-D constant"),
    ({"cross": True}, "the projections read different inputs"),
    ({"key_padding": True}, "MultiHeadAttention has a bias, key padding mask or past state"),
])
def test_not_fused(kwargs, why):
    proto = mha_graph(**kwargs)
    model = optc.from_onnx(proto)
    node = next(n for n in model.graph if n.op_type == "MultiHeadAttention")
    assert f"check: {why}" in explain(FusePackedAttention, node, model)
    out = _fuse(proto)
    have = _ops(out)
    assert have[f"{MS}::Attention"] == 0 and have[f"{MS}::MultiHeadAttention"] == 1, (why, dict(have))
    _same(proto, out)


def _shape_graph(bias_shape=(4,), start: int | None = None) -> onnx.ModelProto:
    """y = x @ W + b (x [batch, seq, 8], W [8, 4]) and s = Shape(y) (with `start` if given)."""
    w = numpy_helper.from_array(RNG.normal(0, 1, (8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(0, 1, bias_shape).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"]),
             helper.make_node("Shape", ["y"], ["s"], **({} if start is None else {"start": start}))]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s", TensorProto.INT64, None)], [w, b])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                               ir_version=8))


@pytest.mark.parametrize("bias_shape, start, rewritten", [((4,), None, True), ((1, 4), None, True),
                                                         ((2, 1, 4), None, False), ((4,), 1, False)])
def test_shape_of_projection(bias_shape, start, rewritten):
    """The shape of x @ W + b is x's leading dims and W's columns: Shape no longer reads the projection (positive);
    a bias that broadcasts the batch up, or a Shape with start, stays as it is (negative). Same values either way."""
    proto = _shape_graph(bias_shape, start)
    out = _fuse(proto)
    shape_node = next(n for n in out.graph.node if n.op_type == "Shape")
    assert (shape_node.input[0] == "x") == rewritten
    for dims in ((2, 3, 8), (1, 5, 8)):
        feeds = {"x": np.random.default_rng(1).normal(0, 1, dims).astype(np.float32)}
        for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_shape", [[0, 5, 12], [2, 0, 12]])
def test_zero_size_batch_or_sequence_is_not_traced(x_shape):
    """GPT-2's c_attn + Split into MultiHeadAttention with a static batch or sequence of 0: nothing to trace, not
    fused (it indexed an empty index map)."""
    e = x_shape[-1]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["g"]),
             helper.make_node("Split", ["g", "sizes"], ["q", "k", "v"], axis=2),
             helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=MS, num_heads=3)]
    graph = helper.make_graph(nodes, "mha", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
                              [numpy_helper.from_array(RNG.normal(0, 0.3, (e, 3 * e)).astype(np.float32), "W"),
                               numpy_helper.from_array(RNG.normal(0, 0.3, 3 * e).astype(np.float32), "b"),
                               numpy_helper.from_array(np.array([e, e, e], np.int64), "sizes")])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)], ir_version=8))
    out = _fuse(proto)
    assert _ops(out)[f"{MS}::MultiHeadAttention"] == 1 and _ops(out)[f"{MS}::Attention"] == 0


class _Consts:
    """What `symbols_transparent` reads of a match: constants."""

    @staticmethod
    def const(v):
        return v.const_value() if v is not None else None


def _chain(nodes: list, y_shape: list) -> list:
    """x ["b", 6, 32] through `nodes` (onnx helper nodes, each reading the previous output "t0", "t1", ...), the
    last output declared `y_shape`, the others declared by ONNX's inference; the chain of (node, 0) in order."""
    from optc.ir import from_onnx

    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("start", [-1]), ("end", [-2**63]), ("ax0", [0]), ("ax1", [1]), ("step", [-1]), ("i0", 0))]
    vi = [helper.make_tensor_value_info(f"t{len(nodes) - 1}", TensorProto.FLOAT, y_shape)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, 32])], vi,
                              inits)
    model = from_onnx(onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    return [(n, 0) for n in model.graph]


@pytest.mark.parametrize("nodes,y_shape,carried", [
    ([helper.make_node("Transpose", ["x"], ["t0"], perm=[1, 0, 2])], [6, "b", 32], True),
    ([helper.make_node("Reshape", ["x", "s"], ["t0"])], ["b", 6, 4, 8], True),
    # a Slice over the batch axis keeps its length and reverses it: not the same moves at every length
    ([helper.make_node("Slice", ["x", "start", "end", "ax0", "step"], ["t0"])], ["b", 6, 32], False),
    ([helper.make_node("Slice", ["x", "start", "end", "ax1", "step"], ["t0"])], ["b", 6, 32], True),
    ([helper.make_node("Gather", ["x", "i0"], ["t0"], axis=0)], [6, 32], False),
    # a Reshape that merges the batch with another axis
    ([helper.make_node("Reshape", ["x", "s"], ["t0"])], ["m", 32], False),
])
def test_symbols_transparent(nodes, y_shape, carried):
    from optc.rewrites.rules.transformer_packed import symbols_transparent

    if nodes[0].op_type == "Reshape":
        nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(
            np.array([0, 6, 4, 8] if len(y_shape) == 4 else [-1, 32], np.int64))), nodes[0]]
        nodes[1].output[0] = "t1"
        chain = _chain(nodes, y_shape)[1:]
    else:
        chain = _chain(nodes, y_shape)
    assert symbols_transparent(_Consts(), chain, {"b": 2}) is carried


@pytest.mark.parametrize("axis, start, rewritten", [(2, None, True), (0, None, False), (2, 1, False)])
def test_shape_of_split(axis, start, rewritten):
    """Shape of a Split's output is the input's shape with the output's static length along the split axis: Shape
    reads x (positive); a split along the symbolic batch (ONNX's inference leaves its parts' length unnamed) or a
    Shape with start stays (negative). Same values either way."""
    sizes = numpy_helper.from_array(np.array([4, 4], np.int64), "sizes")
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=axis),
             helper.make_node("Shape", ["a"], ["s"], **({} if start is None else {"start": start}))]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("s", TensorProto.INT64, None)], [sizes])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                                ir_version=8))
    out = _fuse(proto)
    assert all(n.op_type != "Split" for n in out.graph.node) == rewritten
    x = np.random.default_rng(1).normal(0, 1, (8, 5, 8) if axis == 0 else (2, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(proto, {"x": x})[0])
