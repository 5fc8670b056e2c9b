"""IR tools: printer (`optc show`), per-node inference, the op schema table, graphsurgeon and networkx views."""

from __future__ import annotations

from collections import OrderedDict

import networkx as nx
import numpy as np
import onnx
import onnx.parser
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from optc.ir import (
    Attr,
    AttrType,
    DataType,
    Graph,
    Model,
    Node,
    NumpyTensor,
    ProtoTensor,
    SequenceType,
    SparseTensorType,
    TensorType,
    Value,
    from_graphsurgeon,
    from_onnx,
    schema,
    to_graphsurgeon,
    to_networkx,
    to_onnx,
)
from optc.ir import graphsurgeon as gsconv
from optc.ir.infer import InferenceError, infer_node, infer_types
from optc.ir.nx_view import Source, to_dot
from optc.ir.printer import format_graph, format_model, format_node
from optc.ir.verify import verify

RICH = """
<ir_version: 10, opset_import: ["" : 18, "local" : 1]>
main (float[N, 4] X, bool C, float Opt) => (float[N, 4] Y, float[N, 4] Z, float[N, 2] S0, float[N, 2] S1,
                                                 float[N, 4] F, float[N, 4] K)
<float[4] W = {1.0, 2.0, 3.0, 4.0}, int64[2] shp = {-1, 4}, int8[4] H = {1, -2, 3, 4}>
{
  A = Add(X, W)
  B = Relu(A)
  R = Reshape(B, shp)
  Y = If(C) <then_branch = g1 () => (float[N, 4] o1) { o1 = Mul(R, W) },
             else_branch = g2 () => (float[N, 4] o2) { k = Constant <value = float[1] {3.0}> ()  o2 = Sub(R, k) }>
  T = Transpose <perm = [0, 1]> (R)
  Z = LeakyRelu <alpha = 0.2> (T)
  S0, S1 = Split <axis = 1, num_outputs = 2> (Z)
  Hf = Cast <to = 1> (H)
  M = Mul(Z, Hf)
  F = Clip(M, , Opt)
  K = local.Scale <s = 2.0> (F)
}
<domain: "local", opset_import: ["" : 18]>
Scale <s> (x) => (y) {
  c = Constant <value_float: float = @s> ()
  y = Mul(x, c)
}
"""


def rich_proto() -> onnx.ModelProto:
    mp = onnx.parser.parse_model(RICH)
    onnx.checker.check_model(mp, full_check=True)
    return mp


def run_ort(mp: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(mp.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def feeds_for(c: bool) -> dict:
    rng = np.random.default_rng(0)
    return {"X": rng.standard_normal((3, 4)).astype(np.float32), "C": np.array(c),
            "Opt": np.array(0.7, np.float32)}


# ---------------------------------------------------------------------------------------------------------------
# printer
# ---------------------------------------------------------------------------------------------------------------
def test_printer_shows_ops_attributes_subgraphs_and_functions():
    m = from_onnx(rich_proto())
    text = format_model(m)
    for piece in ("ir_version: 10", "ai.onnx: 18", "local: 1", "Add(%X, %W)", "Reshape(%B, %shp)",
                  "perm=[0, 1]", "alpha=0.2", "axis=1", "then_branch:", "else_branch:", "Mul(%R, %W)",
                  "Sub(%R, %k)", "%W = init float32[4] [1.0, 2.0, 3.0, 4.0]", "%X: float32[N,4]",
                  "Clip(%M, None, %Opt)", "local::Scale(%F) {s=2.0}", "function local::Scale<s>",
                  "value_float=@s", "%S0, %S1 = Split(%Z)", "return %Y, %Z, %S0, %S1, %F, %K"):
        assert piece in text, piece
    short = format_model(m, max_nodes=2)
    assert "more nodes" in short and "Transpose" not in short
    assert "Add" in format_graph(m.graph)
    assert format_node(m.graph.first()) == "%A = Add(%X, %W)"


def test_optc_show_cli(tmp_path, capsys):
    from optc.tools.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(rich_proto(), str(path))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "If(%C)" in out and "then_branch:" in out and "LeakyRelu(%T) {alpha=0.2}" in out


# ---------------------------------------------------------------------------------------------------------------
# per-node inference
# ---------------------------------------------------------------------------------------------------------------
OPS = {"": 18}


def test_infer_add_broadcasting():
    a = Value("a", TensorType(DataType.FLOAT, ("N", 1, 4)))
    b = Value("b", TensorType(DataType.FLOAT, (3, 1)))
    n = Node("Add", [a, b])
    assert infer_node(n, OPS) == [TensorType(DataType.FLOAT, ("N", 3, 4))]
    scalar = Value("s", TensorType(DataType.FLOAT, ()))
    assert infer_node(Node("Mul", [a, scalar]), OPS) == [TensorType(DataType.FLOAT, ("N", 1, 4))]


def test_infer_add_rejects_mismatched_types():
    a = Value("a", TensorType(DataType.FLOAT, (2,)))
    b = Value("b", TensorType(DataType.INT64, (2,)))
    with pytest.raises(InferenceError):
        infer_node(Node("Add", [a, b]), OPS)


def test_infer_reshape_with_constant_shape():
    x = Value("x", TensorType(DataType.FLOAT, (4, 3)))
    shape = Value("shape", const=NumpyTensor(np.array([2, -1], np.int64)))
    n = Node("Reshape", [x, shape])
    assert infer_node(n, OPS) == [TensorType(DataType.FLOAT, (2, 6))]
    # without the constant, only the rank is known
    (t,) = infer_node(n, OPS, use_constants=False)
    assert t.dtype == DataType.FLOAT and t.rank == 2


def test_infer_symbolic_batch_dims_propagate():
    x = Value("x", TensorType(DataType.FLOAT, ("batch", "seq", 8)))
    w = Value("w", const=NumpyTensor(np.zeros((8, 5), np.float32)))
    mm = Node("MatMul", [x, w])
    assert infer_node(mm, OPS) == [TensorType(DataType.FLOAT, ("batch", "seq", 5))]
    mm.output.type = None
    infer_types(mm, OPS)
    relu = Node("Relu", [mm.output])
    infer_types(relu, OPS)
    assert relu.output.type == TensorType(DataType.FLOAT, ("batch", "seq", 5))
    tr = Node("Transpose", [relu.output], {"perm": [2, 0, 1]})
    assert infer_node(tr, OPS) == [TensorType(DataType.FLOAT, (5, "batch", "seq"))]


def test_infer_multi_output_and_unknown_ops():
    x = Value("x", TensorType(DataType.FLOAT, ("N", 6)))
    split = Node("Split", [x], {"axis": 1, "num_outputs": 3}, num_outputs=3)
    assert infer_node(split, OPS) == [TensorType(DataType.FLOAT, ("N", 2))] * 3
    assert infer_node(Node("Foo", [x], domain="custom", num_outputs=2), OPS) == [None, None]


# ---------------------------------------------------------------------------------------------------------------
# schema table
# ---------------------------------------------------------------------------------------------------------------
def test_schema_lookup_and_versions():
    assert schema.get_schema("", "Add").name == "Add"
    onnx_add = schema.get_schema("ai.onnx", "Add")
    assert (onnx_add.domain, onnx_add.since_version) == ("", schema.get_schema("", "Add").since_version)
    assert schema.get_schema("", "Reshape", 4).since_version == 1
    assert schema.get_schema("", "Reshape", 13).since_version == 13
    assert schema.get_schema("", "NoSuchOp") is None
    assert schema.get_schema("com.example", "Add") is None
    assert schema.is_known("", "Conv") and not schema.is_known("", "Conv2D")


def test_schema_arity_and_defaults():
    assert schema.input_arity(schema.get_schema("", "Add")) == (2, 2)
    assert schema.input_arity(schema.get_schema("", "Sum")) == (1, None)
    assert schema.input_arity(schema.get_schema("", "Clip")) == (1, 3)
    assert schema.output_arity(schema.get_schema("", "Split"))[1] is None
    assert schema.attribute_default(schema.get_schema("", "LeakyRelu"), "alpha") == pytest.approx(0.01)
    assert schema.attribute_default(schema.get_schema("", "Transpose"), "perm") is None
    assert schema.attribute_default(schema.get_schema("", "Gemm"), "transA") == 0


def test_schema_traits():
    T = schema.Trait
    assert schema.has_trait("", "Add", T.COMMUTATIVE) and schema.has_trait("", "Add", T.ELEMENTWISE)
    assert not schema.has_trait("", "Sub", T.COMMUTATIVE) and schema.has_trait("", "Sub", T.ELEMENTWISE)
    assert schema.has_trait("", "Reshape", T.SHAPE_OP) and not schema.has_trait("", "Reshape", T.ELEMENTWISE)
    assert not schema.is_deterministic("", "RandomNormal") and schema.is_deterministic("", "Add")
    assert schema.traits("custom", "Add") == T.NONE
    # every op the table names exists in onnx.defs
    for domain, op in schema._TRAITS:
        assert schema.is_known(domain, op), op
    for op in ("Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal"):
        s = schema.get_schema("", op)
        assert s.min_input <= 2, op


# ---------------------------------------------------------------------------------------------------------------
# graphsurgeon
# ---------------------------------------------------------------------------------------------------------------
def test_graphsurgeon_round_trip_matches_onnxruntime():
    mp = rich_proto()
    m = from_onnx(mp)
    graph = to_graphsurgeon(m)
    assert isinstance(graph, gs.Graph)
    assert graph.opset == 18 and {(o.domain, o.version) for o in graph.import_domains} == {("", 18), ("local", 1)}
    assert [f.name for f in graph.functions] == ["Scale"]
    m2 = from_graphsurgeon(graph)
    verify(m2)
    mp2 = to_onnx(m2)
    onnx.checker.check_model(mp2, full_check=True)
    exported = gs.export_onnx(graph)
    onnx.checker.check_model(exported)
    for c in (True, False):
        expected = run_ort(mp, feeds_for(c))
        for got in (run_ort(mp2, feeds_for(c)), run_ort(exported, feeds_for(c))):
            assert len(got) == len(expected)
            for e, g in zip(expected, got, strict=True):
                np.testing.assert_array_equal(e, g)
    # structure is kept
    assert [n.op_type for n in m2.graph] == [n.op_type for n in m.graph]
    assert m2.opset_imports == m.opset_imports
    assert [v.name for v in m2.graph.inputs] == ["X", "C", "Opt"]
    assert m2.graph.inputs[0].type == TensorType(DataType.FLOAT, ("N", 4))
    assert set(m2.graph.initializers) == {"W", "shp", "H"}
    clip = m2.graph.nodes_by_op("Clip")[0]
    assert clip.inputs[1] is None
    fn = m2.functions[("local", "Scale", "")]
    assert fn.attributes == ["s"] and fn.opset_imports == {"": 18}
    assert fn.graph.first().attributes["value_float"].ref_attr_name == "s"


def test_graphsurgeon_subgraph_reads_outer_values_by_identity():
    m = from_onnx(rich_proto())
    graph = to_graphsurgeon(m)
    if_node = next(n for n in graph.nodes if n.op == "If")
    reshape = next(n for n in graph.nodes if n.op == "Reshape")
    then = if_node.attrs["then_branch"]
    assert isinstance(then, gs.Graph) and then.opset == 18
    assert then.nodes[0].inputs[0] is reshape.outputs[0]
    m2 = from_graphsurgeon(graph)
    if2 = m2.graph.nodes_by_op("If")[0]
    r2 = m2.graph.nodes_by_op("Reshape")[0].output
    body = if2.attr("then_branch")
    assert body.parent is if2 and body.first().inputs[0] is r2
    assert body.first().inputs[1] is m2.graph.initializers["W"]
    assert not body.initializers  # the outer constant is not duplicated
    verify(m2)


def test_graphsurgeon_constants_are_shared_not_copied():
    m = from_onnx(rich_proto())
    w = m.graph.initializers["W"]
    assert isinstance(w.const, ProtoTensor)
    graph = to_graphsurgeon(m)
    const = graph.tensors()["W"]
    assert isinstance(const, gs.Constant) and const._values.tensor is w.const.proto
    back = from_graphsurgeon(graph).graph.initializers["W"]
    assert isinstance(back.const, ProtoTensor) and back.const.proto is w.const.proto


def test_graphsurgeon_from_hand_built_graph():
    x = gs.Variable("x", dtype=np.float32, shape=["B", 3])
    w = gs.Constant("w", np.arange(3, dtype=np.float32))
    a, b, y = gs.Variable("a"), gs.Variable("b"), gs.Variable("y", dtype=np.float16, shape=["B", 3])
    # deliberately out of topological order
    n_cast = gs.Node("Cast", inputs=[b], outputs=[y], attrs=OrderedDict(to=np.float16))
    n_add = gs.Node("Add", inputs=[x, w], outputs=[a])
    n_relu = gs.Node("Relu", inputs=[a], outputs=[b], name="relu")
    graph = gs.Graph(nodes=[n_cast, n_relu, n_add], inputs=[x], outputs=[y], opset=17, ir_version=10)
    m = from_graphsurgeon(graph)
    verify(m)
    assert [n.op_type for n in m.graph] == ["Add", "Relu", "Cast"]
    assert m.opset_imports == {"": 17}
    cast = m.graph.last()
    assert cast.attributes["to"].type == AttrType.INT and cast.attr("to") == int(DataType.FLOAT16)
    assert isinstance(m.graph.initializers["w"].const, NumpyTensor)
    assert m.graph.outputs[0].type == TensorType(DataType.FLOAT16, ("B", 3))
    mp = to_onnx(m)
    onnx.checker.check_model(mp, full_check=True)
    xv = np.ones((2, 3), np.float32)
    (out,) = run_ort(mp, {"x": xv})
    np.testing.assert_array_equal(out, np.maximum(xv + np.arange(3), 0).astype(np.float16))
    (out2,) = run_ort(gs.export_onnx(graph), {"x": xv})
    np.testing.assert_array_equal(out, out2)


def test_graphsurgeon_undefined_tensor_is_an_error():
    ghost = gs.Variable("ghost", dtype=np.float32)
    y = gs.Variable("y", dtype=np.float32)
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[ghost], outputs=[y])], inputs=[], outputs=[y])
    with pytest.raises(ValueError, match="ghost"):
        from_graphsurgeon(graph)


def test_graphsurgeon_import_onnx_interop():
    """Graphs made by gs's own importer (gs.import_onnx) convert too."""
    mp = rich_proto()
    m = from_graphsurgeon(gs.import_onnx(mp))
    verify(m)
    mp2 = to_onnx(m)
    onnx.checker.check_model(mp2, full_check=True)
    for c in (True, False):
        for e, g in zip(run_ort(mp, feeds_for(c)), run_ort(mp2, feeds_for(c)), strict=True):
            np.testing.assert_array_equal(e, g)


@pytest.mark.parametrize("dt", [d for d in DataType if d not in (DataType.UNDEFINED,)], ids=lambda d: d.name)
def test_graphsurgeon_dtypes_round_trip(dt):
    assert gsconv._dtype_from_gs(gsconv._gs_dtype(dt)) == dt
    t = TensorType(dt, ("N", 2))
    dtype, shape, kind = gsconv._gs_type(t)
    v = gs.Variable("v", dtype=dtype, shape=shape, type=kind)
    assert gsconv._type_from_gs(v) == t
    if dt != DataType.STRING:
        arr = np.zeros((2,), dt.numpy())
        const = gsconv._gs_constant("c", NumpyTensor(arr))
        back = gsconv._FromGS(None).tensor(const)
        assert back.dtype == dt and back.numpy().tobytes() == arr.tobytes()
        proto = OnnxExporter.export_tensor_proto(const)
        assert proto.data_type == int(dt)


def test_graphsurgeon_value_types():
    for t in (SequenceType(TensorType(DataType.FLOAT, ("N",))), SparseTensorType(DataType.INT64, (3, 3)),
              TensorType(DataType.BFLOAT16, None)):
        dtype, shape, kind = gsconv._gs_type(t)
        assert gsconv._type_from_gs(gs.Variable("v", dtype=dtype, shape=shape, type=kind)) == t
    assert gsconv._shape_from_gs([-1, "B", 3]) == (None, "B", 3)


def test_graphsurgeon_attribute_kinds_round_trip():
    x = Value("x", TensorType(DataType.FLOAT, (2,)))
    tensor = NumpyTensor(np.array([1, 2], np.int64), name="t")
    attrs = [
        Attr("f", AttrType.FLOAT, 1.5), Attr("i", AttrType.INT, 3), Attr("s", AttrType.STRING, "hi"),
        Attr("fs", AttrType.FLOATS, [1.0, 2.0]), Attr("is_", AttrType.INTS, [1, 2]),
        Attr("ss", AttrType.STRINGS, ["a", "b"]), Attr("t", AttrType.TENSOR, tensor),
        Attr("ts", AttrType.TENSORS, [tensor]), Attr("tp", AttrType.TYPE_PROTO, TensorType(DataType.FLOAT, (2,))),
    ]
    node = Node("Custom", [x], attrs, domain="custom", outputs=[Value("y", TensorType(DataType.FLOAT, (2,)))])
    m = Model(Graph([x], [node.output], [node], name="g"), {"": 18, "custom": 1})
    m2 = from_graphsurgeon(to_graphsurgeon(m))
    got = m2.graph.first().attributes
    assert list(got) == [a.name for a in attrs]
    for a in attrs:
        assert got[a.name].type == a.type, a.name
    assert got["f"].value == 1.5 and got["i"].value == 3 and got["s"].value == "hi"
    assert got["ss"].value == ["a", "b"] and got["is_"].value == [1, 2]
    assert got["t"].value.numpy().tolist() == [1, 2]
    assert got["ts"].value[0].numpy().tolist() == [1, 2]
    assert got["tp"].value == TensorType(DataType.FLOAT, (2,))
    assert to_onnx(m2).graph.node[0] == to_onnx(m).graph.node[0]


# ---------------------------------------------------------------------------------------------------------------
# networkx view
# ---------------------------------------------------------------------------------------------------------------
def test_networkx_view_edges_and_dag():
    m = from_onnx(rich_proto())
    g = m.graph
    G = to_networkx(g)
    used = sum(1 for n in g for v in n.inputs if v is not None)
    assert G.number_of_edges() == used
    assert nx.is_directed_acyclic_graph(G)
    assert all(n in G for n in g)
    kinds = {d["kind"] for _, d in G.nodes(data=True)}
    assert kinds == {"node", "input", "initializer"}
    # edges carry the value and the input index
    for u, v, key, data in G.edges(keys=True, data=True):
        assert v.inputs[data["index"]] is data["value"] and key == data["index"]
        src = data["value"].producer if isinstance(u, Node) else u.value
        assert src is u or (isinstance(u, Source) and u.value is data["value"])
    # a topological order of the view is a valid node order
    order = [n for n in nx.topological_sort(G) if isinstance(n, Node)]
    pos = {n: i for i, n in enumerate(order)}
    for n in g:
        for v in n.inputs:
            if v is not None and v.producer is not None and v.producer.graph is g:
                assert pos[v.producer] < pos[n]
    assert [v for _, v in G.graph["outputs"]] == g.outputs


def test_networkx_implicit_and_output_edges():
    m = from_onnx(rich_proto())
    g = m.graph
    G = to_networkx(g, implicit=True, outputs=True)
    if_node = g.nodes_by_op("If")[0]
    reshape = g.nodes_by_op("Reshape")[0]
    implicit = [d for u, v, d in G.edges(data=True) if d["implicit"]]
    assert {d["value"].name for d in implicit} == {"R", "W"}
    assert G.has_edge(reshape, if_node)
    sinks = [n for n, d in G.nodes(data=True) if d["kind"] == "output"]
    assert len(sinks) == len(g.outputs)
    assert nx.is_directed_acyclic_graph(G)
    # a subgraph's view has sources for outer values
    body = if_node.attr("then_branch")
    Gb = to_networkx(body)
    assert {d["kind"] for n, d in Gb.nodes(data=True) if not isinstance(n, Node)} == {"outer"}


def test_networkx_detects_cycle_made_by_a_bad_fusion():
    x = Value("x", TensorType(DataType.FLOAT, (2,)))
    a = Node("Relu", [x], outputs=[Value("a")])
    b = Node("Neg", [a.output], outputs=[Value("b")])
    g = Graph([x], [b.output], [a, b])
    assert nx.is_directed_acyclic_graph(to_networkx(g))
    a.set_input(0, b.output)
    assert not nx.is_directed_acyclic_graph(to_networkx(g))


def test_to_dot():
    m = from_onnx(rich_proto())
    dot = to_dot(m)
    assert dot.startswith('digraph "main" {') and dot.rstrip().endswith("}")
    assert '[label="Add", shape=box]' in dot and 'label="local::Scale"' in dot
    assert 'label="input X"' in dot and 'label="initializer W"' in dot and 'label="output Y"' in dot
    assert "style=dashed" in dot  # the If body reads R and W
    n_edges = sum(1 for line in dot.splitlines() if "->" in line)
    used = sum(1 for n in m.graph for v in n.inputs if v is not None)
    assert n_edges == used + len(m.graph.outputs) + 2
    odd = Graph(name='we"ird')
    assert to_dot(odd).startswith('digraph "we\\"ird"')


LOOP = """
<ir_version: 10, opset_import: ["" : 18]>
loopy (float[N, 4] X, float[4] D) => (float[N, 4] Y, float[K, 4] Scan)
<int64 trip = {3}, bool go = {1}, float[4] D = {0.5, 0.5, 0.5, 0.5}, float[4] Unused = {9, 9, 9, 9}>
{
  Y, Scan = Loop(trip, go, X) <body = b (int64 i, bool c_in, float[N, 4] acc) => (bool c_out, float[N, 4] acc2,
                                                                                  float[4] row) {
      axes = Constant <value = int64[1] {0}> ()
      c_out = Identity(c_in)
      acc2 = Add(acc, D)
      row = ReduceSum <keepdims = 0> (acc2, axes)
  }>
}
"""


def test_graphsurgeon_loop_and_overridable_initializer():
    mp = onnx.parser.parse_model(LOOP)
    m = from_onnx(mp)
    verify(m)
    assert m.graph.inputs[1] is m.graph.initializers["D"]
    graph = to_graphsurgeon(m)
    assert isinstance(graph.inputs[1], gs.Constant)  # an initializer that is also an input
    body = graph.nodes[0].attrs["body"]
    assert [t.name for t in body.inputs] == ["i", "c_in", "acc"]
    m2 = from_graphsurgeon(graph)
    verify(m2)
    assert m2.graph.inputs[1] is m2.graph.initializers["D"]
    assert [n.op_type for n in m2.graph.first().attr("body")] == ["Constant", "Identity", "Add", "ReduceSum"]
    mp2 = to_onnx(m2)
    onnx.checker.check_model(mp2, full_check=True)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for feeds in ({"X": x}, {"X": x, "D": np.ones(4, np.float32)}):
        for e, g in zip(run_ort(mp, feeds), run_ort(mp2, feeds), strict=True):
            np.testing.assert_array_equal(e, g)
    # gs has no place for an initializer that nothing reads
    assert "Unused" in m.graph.initializers and "Unused" not in m2.graph.initializers


def test_graphsurgeon_unnamed_values_get_names():
    x = Value("x", TensorType(DataType.FLOAT, (2,)))
    a = Node("Relu", [x])  # unnamed output
    b = Node("Neg", [a.output], outputs=[Value("_v1", TensorType(DataType.FLOAT, (2,)))])
    m = Model(Graph([x], [b.output], [a, b], name="g"), {"": 18})
    graph = to_graphsurgeon(m)
    assert graph.nodes[0].outputs[0].name not in ("", "_v1", "x")
    m2 = from_graphsurgeon(graph)
    verify(m2)
    assert m2.graph.last().inputs[0] is m2.graph.first().output
    assert a.output.name == ""  # the model itself is not changed


def test_graphsurgeon_conversion_does_not_touch_the_model():
    mp = rich_proto()
    m = from_onnx(mp)
    before = to_onnx(m).SerializeToString()
    transpose = m.graph.nodes_by_op("Transpose")[0]
    encoded = transpose._attr_protos
    to_graphsurgeon(m)
    assert transpose._attr_protos is encoded  # still lazily encoded
    assert to_onnx(m).SerializeToString() == before
