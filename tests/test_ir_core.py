"""IR invariants: use-def chains, node list mutation, the per-op index, sort, verify, and random edit sequences."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optc.ir import Graph, Model, Node, NumpyTensor, TensorType, Use, Value, from_onnx, to_onnx
from optc.ir.types import DataType
from optc.ir.verify import VerifyError, verify

F23 = TensorType(DataType.FLOAT, (2, 3))


def val(name: str) -> Value:
    return Value(name, F23)


def chain(n: int = 3) -> tuple[Graph, Value, list[Node]]:
    """x -> Relu -> Relu -> ... (n nodes); the last output is the graph output."""
    x = val("x")
    nodes, cur = [], x
    for i in range(n):
        node = Node("Relu", [cur], outputs=[val(f"r{i}")], name=f"n{i}")
        nodes.append(node)
        cur = node.output
    g = Graph([x], [cur], nodes, name="chain")
    return g, x, nodes


def uses_of(v: Value) -> list[tuple[Node, int]]:
    return [(u.node, u.index) for u in v.uses()]


# ---------------------------------------------------------------------------------------------------------------
# use-def chains
# ---------------------------------------------------------------------------------------------------------------
def test_construction_registers_uses_and_producer():
    a, b = val("a"), val("b")
    n = Node("Add", [a, b, a], outputs=[val("c")])
    assert uses_of(a) == [(n, 0), (n, 2)]
    assert uses_of(b) == [(n, 1)]
    assert n.output.producer is n and n.output.index == 0
    assert a.users() == [n]
    assert isinstance(a.uses()[0], Use)


def test_set_input_moves_use():
    a, b, c = val("a"), val("b"), val("c")
    n = Node("Add", [a, b])
    n.set_input(1, c)
    assert n.inputs == (a, c)
    assert b.num_uses == 0 and uses_of(c) == [(n, 1)]
    n.set_input(1, c)  # no-op
    assert uses_of(c) == [(n, 1)]
    n.set_input(0, c)
    assert uses_of(c) == [(n, 1), (n, 0)] and a.num_uses == 0


def test_set_input_extends_and_trims():
    a, b = val("a"), val("b")
    n = Node("Clip", [a])
    n.set_input(2, b)
    assert n.inputs == (a, None, b)
    assert uses_of(b) == [(n, 2)]
    n.set_input(2, None)
    assert n.inputs == (a,)
    assert b.num_uses == 0


def test_set_inputs_replaces_all():
    a, b, c = val("a"), val("b"), val("c")
    n = Node("Add", [a, b])
    n.set_inputs([c, None, c])
    assert n.inputs == (c, None, c)
    assert a.num_uses == 0 and b.num_uses == 0
    assert uses_of(c) == [(n, 0), (n, 2)]


def test_replace_all_uses_with():
    g, x, (n0, n1, n2) = chain()
    y = val("y")
    g.inputs.append(y)
    n1.set_input(1, n0.output)  # a second use of r0
    n0.output.replace_all_uses_with(y)
    assert n0.output.num_uses == 0
    assert uses_of(y) == [(n1, 0), (n1, 1)]
    assert n1.inputs == (y, y)
    verify(g)
    # graph outputs are not touched
    n2.output.replace_all_uses_with(y)
    assert g.outputs[0] is n2.output
    # replacing with itself or None
    y.replace_all_uses_with(y)
    assert y.num_uses == 2
    y.replace_all_uses_with(None)
    assert n1.inputs == () and y.num_uses == 0


def test_uses_snapshot_allows_mutation():
    a, b = val("a"), val("b")
    nodes = [Node("Relu", [a]) for _ in range(5)]
    for u in a.uses():
        u.node.set_input(u.index, b)
    assert a.num_uses == 0 and b.num_uses == 5
    assert [u.node for u in b.uses()] == nodes


# ---------------------------------------------------------------------------------------------------------------
# removal
# ---------------------------------------------------------------------------------------------------------------
def test_remove_safe_refuses_used_output():
    g, x, (n0, n1, n2) = chain()
    with pytest.raises(ValueError, match="still used"):
        g.remove(n0)
    assert n0.graph is g and len(g) == 3
    verify(g)


def test_remove_safe_refuses_graph_output():
    g, x, (n0, n1, n2) = chain()
    with pytest.raises(ValueError, match="graph output"):
        g.remove(n2)
    assert len(g) == 3
    verify(g)


def test_remove_drops_uses_of_inputs():
    g, x, (n0, n1, n2) = chain()
    dead = Node("Neg", [n0.output, x], outputs=[val("dead")])
    g.insert_after(n0, dead)
    assert n0.output.num_uses == 2 and x.num_uses == 2
    g.remove(dead)
    assert dead.graph is None
    assert n0.output.num_uses == 1 and x.num_uses == 1
    assert g.nodes == [n0, n1, n2]
    verify(g)


def test_remove_unsafe_then_verify_catches_dangling():
    g, x, (n0, n1, n2) = chain()
    g.remove(n1, safe=False)
    with pytest.raises(VerifyError):
        verify(g)


def test_remove_not_in_graph():
    g, x, nodes = chain()
    with pytest.raises(ValueError):
        g.remove(Node("Relu", [x]))


def test_remove_and_reinsert_keeps_use_def():
    """Moving a node (remove + insert) must leave its input uses registered."""
    g, x, (n0, n1, n2) = chain()
    side = Node("Neg", [x], outputs=[val("side")])
    g.insert_after(n0, side)
    g.remove(side)
    g.insert_before(n2, side)
    assert uses_of(x) == [(n0, 0), (side, 0)]
    verify(g)


def test_remove_node_with_subgraph_detaches_outer_reads():
    x, c = val("x"), Value("c", TensorType(DataType.BOOL, ()))
    body_out = val("bo")
    body = Graph([], [body_out], [Node("Relu", [x], outputs=[body_out])], name="body")
    else_out = val("eo")
    other = Graph([], [else_out], [Node("Neg", [x], outputs=[else_out])], name="other")
    node = Node("If", [c], {"then_branch": body, "else_branch": other}, outputs=[val("y")])
    g = Graph([x, c], [x], [node])
    assert x.num_uses == 2
    g.remove(node)
    assert x.num_uses == 0 and c.num_uses == 0


# ---------------------------------------------------------------------------------------------------------------
# insertion and ordering
# ---------------------------------------------------------------------------------------------------------------
def test_insert_before_after_append_ordering():
    g, x, (n0, n1, n2) = chain()
    a, b, c, d, e = (Node("Identity", [x], name=k) for k in "abcde")
    g.insert_before(n1, a, b)
    g.insert_after(n1, c, d)
    g.append(e)
    assert [n.name for n in g] == ["n0", "a", "b", "n1", "c", "d", "n2", "e"]
    assert [n.name for n in reversed(g)] == ["e", "n2", "d", "c", "n1", "b", "a", "n0"]
    assert len(g) == 8
    assert g.first() is n0 and g.last() is e
    assert a.prev() is n0 and a.next() is b and e.next() is None and n0.prev() is None
    f = Node("Identity", [x], name="f")
    g.insert_before(n0, f)
    assert g.first() is f


def test_insert_twice_or_at_foreign_anchor_fails():
    g, x, (n0, n1, n2) = chain()
    with pytest.raises(ValueError):
        g.append(n0)
    g2, _, _ = chain()
    with pytest.raises(ValueError):
        g.insert_after(g2.first(), Node("Relu", [x]))


def test_iterate_remove_current():
    g, x, nodes = chain(5)
    for n in nodes[:-1]:
        n.outputs[0].replace_all_uses_with(x)
    seen = []
    for n in g:
        seen.append(n.name)
        if n is not nodes[-1]:
            g.remove(n)
    assert seen == ["n0", "n1", "n2", "n3", "n4"]
    assert g.nodes == [nodes[-1]]
    verify(g)


def test_iterate_remove_next():
    g, x, nodes = chain(5)
    seen = []
    for n in g:
        seen.append(n.name)
        nxt = n.next()
        if n.name == "n1":
            nxt.output.replace_all_uses_with(n.output)
            g.remove(nxt)  # n2 is never visited
    assert seen == ["n0", "n1", "n3", "n4"]
    verify(g)


def test_iterate_remove_current_and_next():
    g, x, nodes = chain(5)
    seen = []
    for n in g:
        seen.append(n.name)
        if n.name == "n1":
            nxt = n.next()
            nxt.output.replace_all_uses_with(x)
            n.output.replace_all_uses_with(x)
            g.remove(nxt)
            g.remove(n)
    assert seen == ["n0", "n1", "n3", "n4"]
    assert [n.name for n in g] == ["n0", "n3", "n4"]
    verify(g)


def test_iterate_insert_after_current_visits_new_node():
    g, x, nodes = chain(3)
    seen = []
    for n in g:
        seen.append(n.name)
        if n.name == "n0":
            g.insert_after(n, Node("Identity", [n.output], outputs=[val("new")], name="new"))
        if n.name == "n2":
            g.append(Node("Identity", [n.output], outputs=[val("tail")], name="tail"))
    assert seen == ["n0", "new", "n1", "n2", "tail"]
    verify(g)


def test_iterate_insert_before_current_not_visited():
    g, x, nodes = chain(3)
    seen = []
    for n in g:
        seen.append(n.name)
        if n.name == "n1":
            g.insert_before(n, Node("Identity", [x], outputs=[val("pre")], name="pre"))
    assert seen == ["n0", "n1", "n2"]
    assert [n.name for n in g] == ["n0", "pre", "n1", "n2"]


def test_reversed_iteration_while_removing():
    g, x, nodes = chain(4)
    g.outputs[0] = x
    seen = []
    for n in reversed(g):
        seen.append(n.name)
        g.remove(n)
    assert seen == ["n3", "n2", "n1", "n0"]
    assert len(g) == 0 and g.first() is None
    verify(g)


# ---------------------------------------------------------------------------------------------------------------
# nodes_by_op
# ---------------------------------------------------------------------------------------------------------------
def test_nodes_by_op_tracks_edits():
    g, x, (n0, n1, n2) = chain()
    assert g.nodes_by_op("Relu") == [n0, n1, n2]
    a = Node("Add", [x, x], outputs=[val("a")])
    m = Node("Gemm", [x, x], domain="com.example", outputs=[val("m")])
    g.insert_before(n1, a)
    g.append(m)
    assert g.nodes_by_op("Add") == [a]
    assert g.nodes_by_op("Gemm") == []
    assert g.nodes_by_op("Gemm", "com.example") == [m]
    g.remove(a)
    assert g.nodes_by_op("Add") == []
    assert ("", "Add") not in g.op_keys()
    assert set(g.op_keys()) == {("", "Relu"), ("com.example", "Gemm")}
    n2.output.replace_all_uses_with(x)
    g.outputs[0] = x
    g.remove(n2)
    assert g.nodes_by_op("Relu") == [n0, n1]


def test_nodes_by_op_after_import():
    mp = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  b = Relu(a)  y = Add(a, b) }
    """)
    g = from_onnx(mp).graph
    assert [n.output.name for n in g.nodes_by_op("Relu")] == ["a", "b"]
    assert len(g.nodes_by_op("Add")) == 1


# ---------------------------------------------------------------------------------------------------------------
# sort
# ---------------------------------------------------------------------------------------------------------------
def test_sort_reorders_stably():
    x = val("x")
    a = Node("Relu", [x], outputs=[val("a")], name="a")
    b = Node("Relu", [a.output], outputs=[val("b")], name="b")
    c = Node("Neg", [x], outputs=[val("c")], name="c")
    d = Node("Add", [b.output, c.output], outputs=[val("d")], name="d")
    g = Graph([x], [d.output], [d, b, c, a])
    with pytest.raises(VerifyError, match="later"):
        verify(g)
    g.sort()
    assert [n.name for n in g] == ["c", "a", "b", "d"]
    assert [n.name for n in reversed(g)] == ["d", "b", "a", "c"]
    verify(g)
    g.sort()  # idempotent
    assert [n.name for n in g] == ["c", "a", "b", "d"]


def test_sort_detects_cycle():
    x = val("x")
    a = Node("Add", [x], outputs=[val("a")], name="a")
    b = Node("Relu", [a.output], outputs=[val("b")], name="b")
    a.set_input(1, b.output)
    g = Graph([x], [b.output], [a, b])
    with pytest.raises(ValueError, match="cycle"):
        g.sort()
    with pytest.raises(VerifyError):
        verify(g)


def test_sort_respects_subgraph_outer_reads():
    x, c = val("x"), Value("c", TensorType(DataType.BOOL, ()))
    producer = Node("Relu", [x], outputs=[val("p")], name="p")
    out = val("o")
    body = Graph([], [out], [Node("Neg", [producer.output], outputs=[out])])
    other = Graph([], [x], [])
    node = Node("If", [c], {"then_branch": body, "else_branch": other}, outputs=[val("y")], name="if")
    g = Graph([x, c], [node.output], [node, producer])
    g.sort()
    assert [n.name for n in g] == ["p", "if"]
    verify(g)


# ---------------------------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------------------------
def _good_model() -> Model:
    mp = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[N, 4] x, bool c) => (float[N, 4] y, float[N, 4] z)
        <float[4] w = {1.0, 2.0, 3.0, 4.0}>
        {
          a = Add(x, w)
          y = If(c) <then_branch = t () => (float[N, 4] o) { o = Mul(a, w) },
                     else_branch = e () => (float[N, 4] o2) { o2 = Neg(a) }>
          z = Relu(a)
        }
    """)
    return from_onnx(mp)


def test_verify_passes_on_good_graphs():
    m = _good_model()
    verify(m)
    verify(m.graph)
    g, _, _ = chain()
    verify(g)
    verify(Graph())


def test_verify_catches_unregistered_use():
    g, x, (n0, n1, n2) = chain()
    del n1.output._uses[Use(n2, 0)]
    with pytest.raises(VerifyError, match="use-def"):
        verify(g)


def test_verify_catches_stale_use():
    g, x, (n0, n1, n2) = chain()
    n1.output._uses[Use(n0, 3)] = None
    with pytest.raises(VerifyError, match="use-def"):
        verify(g)


def test_verify_catches_use_by_detached_node():
    g, x, (n0, n1, n2) = chain()
    Node("Neg", [x])  # built and abandoned: x now lists a use no graph knows
    with pytest.raises(VerifyError, match="removed|use"):
        verify(g)


def test_verify_catches_use_by_detached_node_of_otherwise_unused_value():
    g, x, (n0, n1, n2) = chain()
    Node("Neg", [n2.output])  # r2 is only a graph output; its use count is now wrong
    assert n2.output.num_uses == 1
    with pytest.raises(VerifyError, match="removed|use"):
        verify(g)
    g2, x2, _ = chain()
    w = g2.fresh_initializer(np.zeros(3, np.float32), "w")
    Node("Neg", [w])
    with pytest.raises(VerifyError, match="removed|use"):
        verify(g2)


def test_verify_catches_value_defined_twice():
    g, x, (n0, n1, n2) = chain()
    n1.outputs = (n0.output,)
    n0.output.producer = n1
    with pytest.raises(VerifyError):
        verify(g)
    g2, x2, nodes2 = chain()
    g2.inputs.append(x2)
    with pytest.raises(VerifyError, match="twice"):
        verify(g2)


def test_verify_catches_duplicate_names():
    g, x, (n0, n1, n2) = chain()
    n1.output.name = "r0"
    with pytest.raises(VerifyError, match="named"):
        verify(g)


def test_verify_catches_input_defined_later():
    g, x, (n0, n1, n2) = chain()
    n0.set_input(0, n2.output)
    with pytest.raises(VerifyError, match="later"):
        verify(g)


def test_verify_catches_input_defined_nowhere():
    g, x, (n0, n1, n2) = chain()
    n1.set_input(0, val("ghost"))
    with pytest.raises(VerifyError, match="nowhere"):
        verify(g)


def test_verify_catches_dangling_graph_output():
    g, x, (n0, n1, n2) = chain()
    g.outputs.append(val("ghost"))
    with pytest.raises(VerifyError, match="graph output"):
        verify(g)


def test_verify_catches_bad_producer_link():
    g, x, (n0, n1, n2) = chain()
    n1.output.index = 3
    with pytest.raises(VerifyError, match="point back"):
        verify(g)


def test_verify_catches_wrong_node_count():
    g, x, nodes = chain()
    g._len += 1
    with pytest.raises(VerifyError, match="counts"):
        verify(g)


def test_verify_catches_initializer_without_payload():
    g, x, nodes = chain()
    w = Value("w", F23, const=NumpyTensor(np.zeros((2, 3), np.float32)))
    g.add_initializer(w)
    verify(g)
    w.const = None
    with pytest.raises(VerifyError, match="payload"):
        verify(g)


def test_verify_subgraph_scoping():
    m = _good_model()
    verify(m)
    if_node = m.graph.nodes_by_op("If")[0]
    then = if_node.attr("then_branch")
    assert then.parent is if_node
    # a subgraph may not read a value the outer graph defines after the If
    z = m.graph.nodes_by_op("Relu")[0].output
    then.first().set_input(0, z)
    with pytest.raises(VerifyError):
        verify(m)


def test_verify_catches_subgraph_parent_mismatch():
    m = _good_model()
    if_node = m.graph.nodes_by_op("If")[0]
    if_node.attr("then_branch").parent = None
    with pytest.raises(VerifyError, match="point back"):
        verify(m)


def test_add_initializer_checks():
    g = Graph()
    with pytest.raises(ValueError):
        g.add_initializer(Value("w"))
    with pytest.raises(ValueError):
        g.add_initializer(Value("", const=NumpyTensor(np.zeros(1))))
    g.add_initializer(Value("w", const=NumpyTensor(np.zeros(1))))
    with pytest.raises(ValueError):
        g.add_initializer(Value("w", const=NumpyTensor(np.zeros(1))))
    v = g.fresh_initializer(np.ones(2), "w")
    assert v.name == "w_1" and v.const_value().tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# property tests: random edit sequences keep verify() and the ONNX checker happy
# ---------------------------------------------------------------------------------------------------------------
def _base() -> tuple[Model, list[Value]]:
    x, y = val("x"), val("y")
    w = Value("w", F23, const=NumpyTensor(np.arange(6, dtype=np.float32).reshape(2, 3)))
    n0 = Node("Add", [x, w], outputs=[val("t0")])
    n1 = Node("Mul", [n0.output, y], outputs=[val("t1")])
    g = Graph([x, y], [n1.output], [n0, n1], [w], name="rand")
    return Model(g, {"": 18}), [x, y, w]


def _available_before(g: Graph, anchor: Node | None, roots: list[Value]) -> list[Value]:
    """Values defined strictly before `anchor` (all values when anchor is None)."""
    vals = list(roots)
    for n in g:
        if n is anchor:
            break
        vals.extend(o for o in n.outputs if o is not None)
    return vals


EDITS = ["add_before", "add_after", "append", "remove", "rewire", "rauw", "set_inputs", "move"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_edits_keep_invariants(data):
    model, roots = _base()
    g = model.graph
    counter = [0]

    def fresh() -> Value:
        counter[0] += 1
        return val(f"v{counter[0]}")

    def new_node(avail: list[Value]) -> Node:
        op = data.draw(st.sampled_from(["Relu", "Neg", "Add", "Mul", "Sub"]))
        arity = 1 if op in ("Relu", "Neg") else 2
        ins = [data.draw(st.sampled_from(avail)) for _ in range(arity)]
        return Node(op, ins, outputs=[fresh()])

    steps = data.draw(st.integers(1, 12))
    for _ in range(steps):
        edit = data.draw(st.sampled_from(EDITS))
        nodes = g.nodes
        if edit == "append":
            g.append(new_node(_available_before(g, None, roots)))
        elif edit in ("add_before", "add_after") and nodes:
            anchor = data.draw(st.sampled_from(nodes))
            if edit == "add_before":
                g.insert_before(anchor, new_node(_available_before(g, anchor, roots)))
            else:
                nxt = anchor.next()
                g.insert_after(anchor, new_node(_available_before(g, nxt, roots)))
        elif edit == "remove":
            dead = [n for n in nodes if all(o.num_uses == 0 and not g.is_output(o) for o in n.outputs)]
            used = [n for n in nodes if n not in dead]
            if used and data.draw(st.booleans()):
                with pytest.raises(ValueError):
                    g.remove(data.draw(st.sampled_from(used)))
            elif dead:
                g.remove(data.draw(st.sampled_from(dead)))
        elif edit == "rewire" and nodes:
            n = data.draw(st.sampled_from(nodes))
            i = data.draw(st.integers(0, len(n.inputs) - 1))
            n.set_input(i, data.draw(st.sampled_from(_available_before(g, n, roots))))
        elif edit == "set_inputs" and nodes:
            n = data.draw(st.sampled_from(nodes))
            avail = _available_before(g, n, roots)
            n.set_inputs([data.draw(st.sampled_from(avail)) for _ in n.inputs])
        elif edit == "move" and len(nodes) > 1:
            # move a node anywhere between its last producer and its first user (remove + insert)
            n = data.draw(st.sampled_from(nodes))
            idx = {m: i for i, m in enumerate(nodes)}
            lo = max([idx[v.producer] for v in n.inputs if v is not None and v.producer in idx], default=-1)
            hi = min([idx[u.node] for o in n.outputs for u in o.uses()], default=len(nodes))
            spots = [i for i in range(lo + 1, hi) if i != idx[n]]
            if spots:
                anchor = nodes[data.draw(st.sampled_from(spots))]
                g.remove(n, safe=False)
                if idx[anchor] < idx[n]:
                    g.insert_before(anchor, n)
                else:
                    g.insert_after(anchor, n)
        elif edit == "rauw" and nodes:
            n = data.draw(st.sampled_from(nodes))
            replacement = data.draw(st.sampled_from(_available_before(g, n, roots)))
            n.output.replace_all_uses_with(replacement)
            assert n.output.num_uses == 0
        verify(model)
        # the per-op index agrees with the list
        for key in g.op_keys():
            # (nodes_by_op lists in insertion order, not graph order)
            assert set(g.nodes_by_op(key[1], key[0])) == {n for n in g if n.key == key}
        assert sum(len(g.nodes_by_op(k[1], k[0])) for k in g.op_keys()) == len(g)
        # uses are exactly the inputs
        expected = {}
        for n in g:
            for i, v in enumerate(n.inputs):
                expected.setdefault(id(v), set()).add((id(n), i))
        for v in [*roots, *(o for n in g for o in n.outputs)]:
            assert {(id(u.node), u.index) for u in v.uses()} == expected.get(id(v), set())
    proto = to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.graph.node) == len(g)
    back = from_onnx(proto)
    verify(back)
    assert [n.op_type for n in back.graph] == [n.op_type for n in g]


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(6))))
def test_sort_restores_any_shuffle(perm):
    g, x, nodes = chain(6)
    for n in list(g):
        g.remove(n, safe=False)
    for i in perm:
        g.append(nodes[i])
    # re-register uses dropped by the unsafe removal
    for n in nodes:
        n.set_inputs(n.inputs)
    g.sort()
    assert g.nodes == nodes
    verify(g)
