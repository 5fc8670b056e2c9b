"""Whole models through the pipelines: the nine light models after -O3 (onnxruntime outputs within 1e-4
relative error), a small generated transformer block, and hypothesis-generated random graphs of elementwise,
MatMul and Reshape ops that -O2 must leave numerically unchanged."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import optc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from optc.ir import to_onnx
from optc.ir.verify import verify
from optc.rewrites import level_spec

from .conftest import feed_names, mismatch, run_ort

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    by_name = {i.name: i for i in model.graph.input}
    feeds = {}
    for name in feed_names(model):
        tt = by_name[name].type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        feeds[name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return feeds


def _assert_close(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict, rtol: float, atol: float):
    expected = run_ort(before, feeds)
    actual = run_ort(after, {k: v for k, v in feeds.items() if k in feed_names(after)})
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        why = mismatch(a, e, rtol=rtol, atol=atol, path=before.graph.output[i].name)
        assert why is None, why


# -O3, with fold-constants' size limit lowered to 64 MiB so the suite does not materialize VGG's 400 MB
# fully-connected weights (the light models make their weights with ConstantOfShape).
O3_SMALL = level_spec(3).replace("fold-constants", "fold-constants{size-limit=67108864}")


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: os.path.basename(p)[6:-5])
def test_light_model_after_O3_gives_the_same_outputs(path):
    original = onnx.load(path)
    model = optc.load(path)
    out = optc.optimize(model, passes=O3_SMALL, inplace=True)
    verify(out)
    after = to_onnx(out)
    onnx.checker.check_model(after)
    assert len(after.graph.node) < len(original.graph.node)
    assert [o.name for o in after.graph.output] == [o.name for o in original.graph.output]
    for seed in (0, 1):
        _assert_close(original, after, _feeds(original, seed), rtol=1e-4, atol=1e-6)


def test_light_models_are_there():
    assert len(LIGHT_MODELS) == 9


# -- a generated transformer block (MatMul+Add, LayerNorm, shape computations on static dims) -----------------


def transformer_block(seq: int = 8, hidden: int = 16, heads: int = 2, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, *shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    dh = hidden // heads
    x = "x"
    shape = node("Shape", [x], "shape")
    b = node("Gather", [shape, c("i0", np.array(0, np.int64))], "b", axis=0)
    s = node("Gather", [shape, c("i1", np.array(1, np.int64))], "s", axis=0)
    bu = node("Unsqueeze", [b, c("ax0", np.array([0], np.int64))], "bu")
    su = node("Unsqueeze", [s, "ax0"], "su")
    hshape = node("Concat", [bu, su, c("hd", np.array([heads, dh], np.int64))], "hshape", axis=0)
    qkv = []
    for n in "qkv":
        mm = node("MatMul", [x, w(f"w{n}", hidden, hidden)], f"mm{n}")
        add = node("Add", [mm, w(f"b{n}", hidden)], f"add{n}")
        r = node("Reshape", [add, hshape], f"r{n}")
        qkv.append(node("Transpose", [r], f"t{n}", perm=[0, 2, 1, 3] if n != "k" else [0, 2, 3, 1]))
    scores = node("MatMul", [qkv[0], qkv[1]], "scores")
    scaled = node("Div", [scores, c("sqrt_d", np.array(np.sqrt(dh), np.float32))], "scaled")
    probs = node("Softmax", [scaled], "probs", axis=-1)
    ctx = node("MatMul", [probs, qkv[2]], "ctx")
    ctx_t = node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3])
    oshape = node("Concat", [bu, su, c("hid", np.array([hidden], np.int64))], "oshape", axis=0)
    ctx_r = node("Reshape", [ctx_t, oshape], "ctx_r")
    proj = node("Add", [node("MatMul", [ctx_r, w("wo", hidden, hidden)], "mmo"), w("bo", hidden)], "proj")
    res = node("Add", [proj, x], "res")
    ln = node("LayerNormalization", [res, c("gamma", np.ones(hidden, np.float32)),
                                     c("beta", np.zeros(hidden, np.float32))], "ln", axis=-1, epsilon=1e-5)
    ident = node("Identity", [ln], "ident")
    y = node("Mul", [ident, c("one", np.array(1.0, np.float32))], "y")
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, seq, hidden])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("level", [1, 2, 3])
def test_generated_transformer_block(level):
    before = transformer_block()
    after = to_onnx(optc.optimize(optc.load(before), level=level))
    onnx.checker.check_model(after)
    _assert_close(before, after, _feeds(before), rtol=1e-4, atol=1e-5)
    ops = [n.op_type for n in after.graph.node]
    if level >= 3:
        assert "Shape" not in ops and "Concat" not in ops  # static shape computations are folded
        assert "Identity" not in ops


# -- hypothesis: random graphs are numerically unchanged by -O2 -----------------------------------------------

_UNARY = ["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity", "Exp"]
_BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@st.composite
def random_graphs(draw):
    """A random DAG over float[2,3] / float[3,3] values: elementwise ops, MatMul with square constants,
    Reshape round trips, Transpose pairs, x*1 / x+0, repeated subexpressions and constant-only branches."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inits, nodes = [], []
    values = ["x"]  # all float[2,3]
    consts = []

    def const(arr):
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    counter = [0]

    def out():
        counter[0] += 1
        return f"v{counter[0]}"

    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "matmul", "reshape", "transpose", "noop", "dup",
                                     "constexpr"]))
        a = draw(st.sampled_from(values))
        o = out()
        if kind == "unary":
            nodes.append(helper.make_node(draw(st.sampled_from(_UNARY)), [a], [o]))
        elif kind == "binary":
            nodes.append(helper.make_node(draw(st.sampled_from(_BINARY)), [a, draw(st.sampled_from(values))], [o]))
        elif kind == "const":
            shape = draw(st.sampled_from([(2, 3), (3,), (1, 3), ()]))
            c = const(rng.uniform(-1, 1, shape))
            consts.append(c)
            op = draw(st.sampled_from(["Add", "Mul", "Sub"]))
            nodes.append(helper.make_node(op, [a, c] if draw(st.booleans()) else [c, a], [o]))
        elif kind == "matmul":
            nodes.append(helper.make_node("MatMul", [a, const(rng.uniform(-1, 1, (3, 3)))], [o]))
        elif kind == "reshape":
            mid = out()
            nodes.append(helper.make_node("Reshape", [a, const_i64(inits, [3, 2])], [mid]))
            nodes.append(helper.make_node("Reshape", [mid, const_i64(inits, [2, 3])], [o]))
        elif kind == "transpose":
            mid = out()
            nodes.append(helper.make_node("Transpose", [a], [mid], perm=[1, 0]))
            nodes.append(helper.make_node("Transpose", [mid], [o], perm=[1, 0]))
        elif kind == "noop":
            op, v = draw(st.sampled_from([("Mul", 1.0), ("Add", 0.0), ("Sub", 0.0), ("Div", 1.0)]))
            nodes.append(helper.make_node(op, [a, const(np.array(v))], [o]))
        elif kind == "dup":
            b = draw(st.sampled_from(values))
            op = draw(st.sampled_from(_BINARY))
            mid1, mid2 = out(), out()
            nodes.append(helper.make_node(op, [a, b], [mid1]))
            nodes.append(helper.make_node(op, [a, b], [mid2]))
            nodes.append(helper.make_node("Add", [mid1, mid2], [o]))
        else:  # an expression of constants only, then used
            c1, c2 = const(rng.uniform(-1, 1, (2, 3))), const(rng.uniform(-1, 1, (2, 3)))
            e = out()
            nodes.append(helper.make_node(draw(st.sampled_from(_BINARY)), [c1, c2], [e]))
            nodes.append(helper.make_node("Add", [a, e], [o]))
        values.append(o)
    outputs = draw(st.lists(st.sampled_from(values[1:]), min_size=1, max_size=3, unique=True))
    graph = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in outputs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(m)
    return m


def const_i64(inits, values):
    name = f"c{len(inits)}"
    inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs(), seed=st.integers(0, 1000))
def test_random_graphs_are_numerically_unchanged_by_O2(model, seed):
    optimized = optc.optimize(optc.load(model), level=2)
    verify(optimized)
    after = to_onnx(optimized)
    onnx.checker.check_model(after)
    assert len(after.graph.node) <= len(model.graph.node)
    feeds = {"x": np.random.default_rng(seed).uniform(-2, 2, (2, 3)).astype(np.float32)}
    _assert_close(model, after, feeds, rtol=1e-5, atol=1e-5)
