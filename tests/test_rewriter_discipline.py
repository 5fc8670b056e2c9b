"""Every graph mutation a pass makes goes through the Rewriter (so listeners, the worklist among them, see it),
checked while the -O pipelines run on real models; and regressions found while routing passes through it."""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import onnx
import onnx.backend.test
import optc
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.ir import core
from optc.ortsession import session
from optc.rewrites.pipelines import build_pipeline, run_pipeline

LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.backend.test.__file__), "data", "light", "*.onnx")))
_MUTATORS = [(core.Graph, "remove"), (core.Graph, "insert_before"), (core.Graph, "insert_after"),
             (core.Graph, "append"), (core.Graph, "add_initializer"), (core.Node, "set_input"),
             (core.Node, "set_inputs"), (core.Node, "set_attr"), (core.Value, "replace_all_uses_with")]


def _called_from_rewriter() -> bool:
    f = sys._getframe(2)
    while f is not None:
        path = f.f_code.co_filename
        if path.endswith(os.path.join("ir", "rewriter.py")):
            return True
        if path.endswith(os.path.join("ir", "core.py")):  # a mutator built on another one
            f = f.f_back
            continue
        return False
    return False


@pytest.fixture
def only_through_rewriter(monkeypatch):
    """While a pipeline runs, a Graph/Node/Value mutator called from anywhere but the Rewriter is recorded."""
    offenders: list[str] = []
    state = {"on": False}

    def wrap(cls, name):
        original = getattr(cls, name)

        def checked(self, *args, **kwargs):
            if state["on"] and not _called_from_rewriter():
                caller = sys._getframe(1)
                offenders.append(f"{cls.__name__}.{name} from {caller.f_code.co_filename}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, checked)

    for cls, name in _MUTATORS:
        wrap(cls, name)
    yield state, offenders


@pytest.mark.parametrize("path", LIGHT[:5], ids=lambda p: os.path.basename(p)[6:-5])
@pytest.mark.parametrize("level", [2, 3])
def test_passes_mutate_only_through_the_rewriter(path, level, only_through_rewriter):
    state, offenders = only_through_rewriter
    model = optc.load(path)
    state["on"] = True
    try:
        run_pipeline(model, build_pipeline(level), size_limit=64 << 20)
    finally:
        state["on"] = False
    assert not offenders, "mutations outside the Rewriter:\n" + "\n".join(sorted(set(offenders)))


DIGITS = os.path.join(os.path.dirname(optc.__file__), "examples", "digits_cnn.onnx")


@pytest.mark.parametrize("passes", ["quantize-dynamic", "convert-float", "convert-float{dtype=bfloat16}",
                                    "prune{ratio=0.25}", "prune{ratio=0.5,unstructured=true}",
                                    f"insert-qdq{{calibration={DIGITS[:-len('cnn.onnx')]}calib.npz}}"])
def test_quantization_and_pruning_passes_mutate_only_through_the_rewriter(passes, only_through_rewriter):
    state, offenders = only_through_rewriter
    model = optc.load(DIGITS)
    state["on"] = True
    try:
        run_pipeline(model, build_pipeline(passes=passes))
    finally:
        state["on"] = False
    assert not offenders, "mutations outside the Rewriter:\n" + "\n".join(sorted(set(offenders)))


def test_the_check_sees_a_direct_mutation(only_through_rewriter):
    state, offenders = only_through_rewriter
    model = optc.load(LIGHT[0])
    node = next(iter(model.graph))
    state["on"] = True
    node.set_attr("made_up", 1)
    state["on"] = False
    assert offenders and offenders[0].startswith("Node.set_attr from")


def _loop_with_constant_if() -> onnx.ModelProto:
    """A Loop body holding `If(true)` whose then-branch returns its own initializer: inlining the branch in a
    nested graph (no initializers there) must keep the constant (it was lost: the model became invalid)."""
    then_g = h.make_graph([], "then", [], [h.make_tensor_value_info("c", T.FLOAT, [2])],
                          [nh.from_array(np.array([1, 2], np.float32), "c")])
    else_g = h.make_graph([h.make_node("Neg", ["xo"], ["e"])], "else", [], [h.make_tensor_value_info("e", T.FLOAT, [2])])
    body = h.make_graph(
        [h.make_node("Constant", [], ["cond_t"], value=nh.from_array(np.array(True))),
         h.make_node("If", ["cond_t"], ["r"], then_branch=then_g, else_branch=else_g),
         h.make_node("Add", ["xo", "r"], ["xn"]), h.make_node("Identity", ["cin"], ["cout"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cin", T.BOOL, []),
         h.make_tensor_value_info("xo", T.FLOAT, [2])],
        [h.make_tensor_value_info("cout", T.BOOL, []), h.make_tensor_value_info("xn", T.FLOAT, [2])])
    g = h.make_graph([h.make_node("Loop", ["n", "c0", "x"], ["y"], body=body)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT, [2])],
                     [nh.from_array(np.array(3, np.int64), "n"), nh.from_array(np.array(True), "c0")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_inlined_branch_constant_in_a_nested_graph_is_kept(level):
    m = _loop_with_constant_if()
    out = optc.to_onnx(optc.optimize(optc.from_onnx(m), level))
    body = out.graph.node[0].attribute[0].g
    assert "If" not in [n.op_type for n in body.node]  # the If was inlined
    onnx.checker.check_model(out)
    x = np.array([1, -3], np.float32)
    want = session(m).run(None, {"x": x})[0]
    got = session(out).run(None, {"x": x})[0]
    assert np.array_equal(want, got) and np.array_equal(got, x + 3 * np.array([1, 2], np.float32))


def test_declared_side_effects_keep_a_dead_custom_op(monkeypatch):
    from optc.ir import schema

    monkeypatch.setattr(schema, "_TRAITS", dict(schema._TRAITS))
    schema.register_traits("test.effects", "Print", schema.Trait.SIDE_EFFECTS)
    g = h.make_graph([h.make_node("Print", ["x"], ["p"], domain="test.effects"),
                      h.make_node("Pure", ["x"], ["q"], domain="test.effects"),
                      h.make_node("Relu", ["x"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("y", T.FLOAT, [2])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test.effects", 1)], ir_version=10)
    kept = optc.optimize(optc.from_onnx(m), passes="dce{keep-unknown=false}")
    assert sorted(n.op_type for n in kept.graph) == ["Print", "Relu"]  # dead Pure dropped, dead Print kept
    kept = optc.optimize(optc.from_onnx(m), passes="dce")
    assert sorted(n.op_type for n in kept.graph) == ["Print", "Pure", "Relu"]  # unknown ops kept by default


def test_fresh_node_names_are_unique_across_rewriters():
    """Each Rewriter numbered node names from 1: two passes (or -O3's second pipeline run) each named a node
    `UnitTransposeReshape_1`, and onnxruntime rejected the model ("two nodes with same node name")."""
    from optc.ir.rewriter import Rewriter

    model = optc.load(h.make_model(h.make_graph(
        [h.make_node("Relu", ["x"], ["y"], name="Rule_1"), h.make_node("Relu", ["y"], ["z"], name="Rule_3")], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [2])], [h.make_tensor_value_info("z", T.FLOAT, [2])]),
        opset_imports=[h.make_opsetid("", 17)]))
    first = Rewriter(model).fresh_node_name("Rule")
    assert first == "Rule_2"  # Rule_1 and Rule_3 are taken
    list(model.graph)[1].name = first  # a pass renamed a node with it: Rule_1 and Rule_2 are taken now
    second = Rewriter(model).fresh_node_name("Rule")  # the next pass's Rewriter
    assert second not in {"Rule_1", "Rule_2"}
    rw = Rewriter(model)
    assert len({rw.fresh_node_name("Rule") for _ in range(5)} | {"Rule_1", "Rule_2"}) == 7
