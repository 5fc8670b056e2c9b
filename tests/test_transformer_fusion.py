"""Transformer fusions (`optc optimize --for standard|onnxruntime`): each rule on small hand-written graphs with
the exporters' patterns (positive and negative cases), the fused models checked by onnx's checker and run on
onnxruntime against the unfused model (1e-4 of the output's largest magnitude), attention on masks with holes,
left padding and all ones. Runs without torch; the torch exports are in test_transformer_exports."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.rewrites.passes.infer_shapes import infer_model_types
from optc.rewrites.pipelines import level_spec
from optc.rewrites.rule import explain
from optc.rewrites.rules._testing import run_ort
from optc.rewrites.rules.transformer_attention import FuseMultiHeadAttention

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


# -- building graphs --------------------------------------------------------------------------------------


class G:
    """A tiny graph builder: `g.op("Add", a, b)` returns the output name; numpy arrays become initializers."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, arr, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, *inputs, domain: str = "", **attrs) -> str:
        ins = [x if isinstance(x, str) else self.const(np.asarray(x, np.float32) if isinstance(x, float) else x)
               for x in inputs]
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, ins, [out], domain=domain, **attrs))
        return out

    def model(self, inputs, outputs, opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                                  [helper.make_tensor_value_info(n, F, None) for n in outputs], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
        inferred = {vi.name: vi for vi in m.graph.value_info}
        for out in m.graph.output:  # the outputs' types, as inferred
            if out.name in inferred:
                out.type.CopyFrom(inferred[out.name].type)
        onnx.checker.check_model(m, full_check=True)
        return m


def block_raise(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with a GridSample node (its modes changed meaning at opset 20) on a new graph input `gs_x`: its
    opset cannot be raised to 23."""
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 2, 2, 2), np.float32), "gs_grid"))
    proto.graph.input.append(helper.make_tensor_value_info("gs_x", F, [1, 1, 4, 4]))
    proto.graph.node.append(helper.make_node("GridSample", ["gs_x", "gs_grid"], ["gs_y"]))
    proto.graph.output.append(helper.make_tensor_value_info("gs_y", F, [1, 1, 2, 2]))
    return proto


def reduce_mean(g: G, x: str, axes, keepdims: int, opset: int) -> str:
    if opset >= 18:
        return g.op("ReduceMean", x, np.array(axes, np.int64), keepdims=keepdims)
    return g.op("ReduceMean", x, axes=axes, keepdims=keepdims)


def layer_norm_graph(*, opset: int = 17, square: str = "pow", div: str = "div", gamma: bool = True,
                     keepdims: int = 1, axes=(-1,), shape=(2, 5, 8), eps_input: bool = False,
                     residual: bool = False, sum_used: bool = False) -> onnx.ModelProto:
    """The decomposed LayerNorm of PyTorch exports below opset 17 (optionally of a residual sum)."""
    g = G()
    c = shape[-1]
    x = "x"
    if residual:
        x = g.op("Add", "x", "r")
    mean = reduce_mean(g, x, list(axes), keepdims, opset)
    d = g.op("Sub", x, mean)
    sq = g.op("Pow", d, np.array(2.0, np.float32)) if square == "pow" else g.op("Mul", d, d)
    var = reduce_mean(g, sq, list(axes), keepdims, opset)
    std = g.op("Sqrt", g.op("Add", var, "eps" if eps_input else np.array(1e-5, np.float32)))
    n = g.op("Div", d, std) if div == "div" else g.op("Mul", d, g.op("Reciprocal", std))
    if gamma:
        n = g.op("Mul", n, RNG.uniform(0.5, 1.5, c).astype(np.float32))
    y = g.op("Add", n, RNG.normal(0, 0.1, c).astype(np.float32))
    inputs = [("x", F, list(shape))] + ([("r", F, list(shape))] if residual else [])
    inputs += [("eps", F, [])] if eps_input else []
    outputs = [y] + ([x] if sum_used else [])
    return g.model(inputs, outputs, opset)


def rms_norm_graph(*, opset: int = 23, square: str = "pow", div: str = "recip", eps=1e-6) -> onnx.ModelProto:
    """Llama's RMSNorm: x * 1/sqrt(mean(x^2) + eps) * gamma."""
    g = G()
    sq = g.op("Pow", "x", np.array(2.0, np.float32)) if square == "pow" else g.op("Mul", "x", "x")
    std = g.op("Sqrt", g.op("Add", reduce_mean(g, sq, [-1], 1, opset), np.asarray(eps, np.float32)))
    if div == "recip":
        n = g.op("Mul", "x", g.op("Reciprocal", std))
    elif div == "one_over":  # torch.rsqrt in a TorchScript export
        n = g.op("Mul", "x", g.op("Div", np.array(1.0, np.float32), std))
    else:
        n = g.op("Div", "x", std)
    y = g.op("Mul", n, RNG.uniform(0.5, 1.5, 8).astype(np.float32))
    return g.model([("x", F, [2, 5, 8])], [y], opset)


def gelu_graph(*, form: str = "erf", order: int = 0, opset: int = 17, bias: str | None = None,
               sqrt2: float = math.sqrt(2.0), k: float = 0.044715, half_shape=()) -> onnx.ModelProto:
    """Gelu as exporters write it (three orders of the 0.5 * x * t product); `bias`: "vec" (a [C] bias Add
    first, BiasGelu), "mat" (a [S, C] bias, no BiasGelu); `half_shape`: the shape of the 0.5 constant."""
    g = G()
    x = "x"
    if bias is not None:
        shape = (8,) if bias == "vec" else (5, 8)
        x = g.op("Add", g.op("MatMul", "x", RNG.normal(0, 0.3, (8, 8)).astype(np.float32)),
                 RNG.normal(0, 0.1, shape).astype(np.float32))
    if form == "erf":
        t = g.op("Add", g.op("Erf", g.op("Div", x, np.array(sqrt2, np.float32))), np.array(1.0, np.float32))
    else:
        inner = g.op("Add", x, g.op("Mul", g.op("Pow", x, np.array(3.0, np.float32)), np.array(k, np.float32)))
        t = g.op("Add", g.op("Tanh", g.op("Mul", inner, np.array(math.sqrt(2 / math.pi), np.float32))),
                 np.array(1.0, np.float32))
    half = np.full(half_shape, 0.5, np.float32)
    if order == 0:
        y = g.op("Mul", g.op("Mul", x, t), half)
    elif order == 1:
        y = g.op("Mul", g.op("Mul", x, half), t)
    else:
        y = g.op("Mul", x, g.op("Mul", t, half))
    return g.model([("x", F, [2, 5, 8])], [y], opset)


def attention_graph(*, opset: int = 17, mask: str = "padding", heads: int = 4, kv_heads: int | None = None,
                    scale: str = "div", softmax_axis: int = -1, dynamic: bool = True, hidden: int = 32,
                    seq: int = 8, big_mask: bool = False) -> onnx.ModelProto:
    """A BERT/GPT-2 self-attention block as the TorchScript exporter writes it: Q/K/V MatMul + Add, head split
    Reshape (shape computed from Shape/Gather/Concat when `dynamic`) + Transpose, MatMul, Div or Mul scale, a mask
    ("padding": from a 2-D int mask through Unsqueeze/Cast/Sub/Mul; "causal": Where with a constant lower
    triangle; "causal_add": an additive constant triangle; "none"), Softmax, MatMul, Transpose + Reshape merge,
    the output projection. `kv_heads=1`: one K/V head broadcast over the query heads by MatMul (multi-query
    attention); another count below the query heads' does not broadcast (an invalid model)."""
    g = G()
    dh = hidden // heads
    kvh = kv_heads or heads
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731

    def proj(cout):
        return g.op("Add", g.op("MatMul", "x", RNG.normal(0, 0.2, (hidden, cout)).astype(np.float32)),
                    RNG.normal(0, 0.1, cout).astype(np.float32))

    def split(t, n, perm):
        if dynamic:
            shape = g.op("Shape", t)
            b = g.op("Unsqueeze", g.op("Gather", shape, i64(0), axis=0), i64([0]))
            s = g.op("Unsqueeze", g.op("Gather", shape, i64(1), axis=0), i64([0]))
            target = g.op("Concat", b, s, i64([n]), i64([dh]), axis=0)
        else:
            target = i64([1, seq, n, dh])
        return g.op("Transpose", g.op("Reshape", t, target), perm=perm)

    q = split(proj(hidden), heads, [0, 2, 1, 3])
    k = split(proj(kvh * dh), kvh, [0, 2, 3, 1])
    v = split(proj(kvh * dh), kvh, [0, 2, 1, 3])
    if scale in ("qk", "qk_neg"):  # torch's nn.MultiheadAttention: q and k each times sqrt(1/sqrt(H))
        f = np.array(math.sqrt(1 / math.sqrt(dh)) * (-1 if scale == "qk_neg" else 1), np.float32)
        q, k = g.op("Mul", q, f), g.op("Mul", k, f)
    s = g.op("MatMul", q, k)
    if scale == "div":
        s = g.op("Div", s, np.array(math.sqrt(dh), np.float32))
    elif scale in ("mul", "neg"):  # "neg": a negative scale (Attention refuses it)
        s = g.op("Mul", s, np.array((1 if scale == "mul" else -1) / math.sqrt(dh), np.float32))
    elif scale == "input":  # a scale that is a graph input: not fused
        s = g.op("Div", s, "scale")
    inputs = [("x", F, ["batch", "seq", hidden] if dynamic else [1, seq, hidden])]
    if mask == "padding":
        m = g.op("Cast", g.op("Unsqueeze", g.op("Unsqueeze", "attention_mask", i64([1])), i64([2])), to=F)
        m = g.op("Mul", g.op("Sub", np.array(1.0, np.float32), m), np.array(-10000.0, np.float32))
        if big_mask:  # broadcasts the scores to a bigger shape: not an attention mask
            m = g.op("Add", m, np.zeros((3, 1, 1, 1), np.float32))
        s = g.op("Add", s, m)
        inputs.append(("attention_mask", TensorProto.INT64, ["batch", "seq"] if dynamic else [1, seq]))
    elif mask in ("causal", "causal_small_fill"):
        tri = np.tril(np.ones((seq, seq), bool))[None, None]
        fill = np.finfo(np.float32).min if mask == "causal" else -10000.0
        s = g.op("Where", g.const(tri, "causal"), s, np.array(fill, np.float32))
    elif mask == "causal_add":
        tri = np.where(np.tril(np.ones((seq, seq), bool)), 0.0, -1e9).astype(np.float32)[None, None]
        s = g.op("Add", s, tri)
    if scale == "input":
        inputs.append(("scale", F, []))
    p = g.op("Softmax", s, axis=softmax_axis)
    o = g.op("Transpose", g.op("MatMul", p, v), perm=[0, 2, 1, 3])
    if dynamic:
        shape = g.op("Shape", o)
        merged = g.op("Reshape", o, g.op("Concat", g.op("Slice", shape, i64([0]), i64([2])), i64([hidden]), axis=0))
    else:
        merged = g.op("Reshape", o, i64([1, seq, hidden]))
    y = g.op("Add", g.op("MatMul", merged, RNG.normal(0, 0.2, (hidden, hidden)).astype(np.float32)),
             RNG.normal(0, 0.1, hidden).astype(np.float32))
    return g.model(inputs, [y], opset)


# -- running ----------------------------------------------------------------------------------------------


ORT_ATTENTION = "com.microsoft::Attention"
MHA = "com.microsoft::MultiHeadAttention"


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


def fuse(proto: onnx.ModelProto, runtime: str, disable_rules=()) -> onnx.ModelProto:
    """The model through `fuse-transformer{runtime=...}` (and dce), checked by onnx's checker."""
    out = optc.to_onnx(optc.optimize(optc.from_onnx(proto), passes=f"fuse-transformer{{runtime={runtime}}},dce",
                                     disable_rules=disable_rules))
    onnx.checker.check_model(out, full_check=runtime == "standard")
    assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
    return out


def assert_close(proto: onnx.ModelProto, out: onnx.ModelProto, feeds_list) -> None:
    """Same outputs on onnxruntime within 1e-4 of each output's largest magnitude (+1e-6); `block_raise`'s input
    is fed ones."""
    for feeds in feeds_list:
        if any(i.name == "gs_x" for i in proto.graph.input):
            feeds = {**feeds, "gs_x": np.ones((1, 1, 4, 4), np.float32)}
        for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype
            tol = 1e-4 * float(np.max(np.abs(want))) + 1e-6
            assert float(np.max(np.abs(got - want))) <= tol, (float(np.max(np.abs(got - want))), tol)


def x_feeds(shape=(2, 5, 8), seed: int = 1, **more) -> dict:
    return {"x": np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32), **more}


def check_fused(proto, runtime, present, gone=(), feeds_list=None) -> onnx.ModelProto:
    out = fuse(proto, runtime)
    have = ops(out)
    for op in present:
        assert have[op] >= 1, f"{op} missing: {dict(have)}"
    for op in gone:
        assert have[op] == 0, f"{op} still there: {dict(have)}"
    assert_close(proto, out, feeds_list or [x_feeds()])
    return out


def check_not_fused(proto, runtime, feeds_list=None) -> None:
    out = fuse(proto, runtime)
    assert ops(out) == ops(proto), f"{dict(ops(proto))} -> {dict(ops(out))}"
    assert_close(proto, out, feeds_list or [x_feeds()])


# -- LayerNormalization -----------------------------------------------------------------------------------


@pytest.mark.parametrize("square,div,gamma,opset", [("pow", "div", True, 17), ("mul", "recip", True, 17),
                                                    ("pow", "div", False, 17), ("pow", "div", True, 18),
                                                    ("pow", "div", True, 14)])
@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
def test_decomposed_layernorm_fuses(square, div, gamma, opset, runtime):
    proto = layer_norm_graph(square=square, div=div, gamma=gamma, opset=opset)
    out = check_fused(proto, runtime, ["LayerNormalization"], gone=["ReduceMean", "Sqrt", "Sub"])
    # opset 14: raised to LayerNormalization's 17 (its ReduceMean ops, gone now, took attribute axes)
    assert {o.domain: o.version for o in out.opset_import}[""] == max(opset, 17)


def test_layernorm_keepdims0_is_not_a_layernorm():
    # on a square input, x - mean(keepdims=0) subtracts row i's mean from column i
    proto = layer_norm_graph(keepdims=0, shape=(8, 8))
    check_not_fused(proto, "standard", [x_feeds((8, 8))])


@pytest.mark.parametrize("case", ["other_axis", "eps_input", "not_raisable"])
def test_layernorm_negative(case):
    if case == "other_axis":
        proto = layer_norm_graph(axes=(1,), shape=(2, 8, 8))
        feeds = [x_feeds((2, 8, 8))]
    elif case == "eps_input":
        proto = layer_norm_graph(eps_input=True)
        feeds = [x_feeds(eps=np.array(1e-5, np.float32))]
    else:  # opset 16 without LayerNormalization, and a GridSample that keeps it there
        proto = block_raise(layer_norm_graph(opset=16))
        feeds = None
    check_not_fused(proto, "standard", feeds)


def test_layernorm_means_of_one_tensor():
    proto = layer_norm_graph()
    sub = next(n for n in proto.graph.node if n.op_type == "Sub")
    other = helper.make_node("Identity", ["x"], ["x_copy"])
    sub.input[0] = "x_copy"  # (x' - mean(x)): not a layer norm of one tensor (an RMS norm of d = x' - mean(x))
    proto.graph.node.insert(0, other)
    out = fuse(proto, "standard")
    assert ops(out)["LayerNormalization"] == 0 and ops(out)["ReduceMean"] >= 1
    assert_close(proto, out, [x_feeds()])


# -- SkipLayerNormalization -------------------------------------------------------------------------------


def test_post_ln_residual_is_sum_and_layernorm_for_onnxruntime():
    """From opset 17 the onnxruntime form of LayerNorm(Add(x, r)) is LayerNormalization(Sum(x, r)): onnxruntime
    fuses an Add (not a Sum) in front of a LayerNormalization into its SkipLayerNormalization, whose CPU kernel
    is several times slower (FuseResidualLayerNorm)."""
    proto = layer_norm_graph(residual=True)
    feeds = [x_feeds(r=np.random.default_rng(5).normal(0, 1, (2, 5, 8)).astype(np.float32))]
    out = check_fused(proto, "onnxruntime", ["LayerNormalization", "Sum"], gone=["ReduceMean", "Add"],
                      feeds_list=feeds)
    assert ops(out)["com.microsoft::SkipLayerNormalization"] == 0
    [ln] = [n for n in out.graph.node if n.op_type == "LayerNormalization"]
    [total] = [n for n in out.graph.node if n.op_type == "Sum"]
    assert list(ln.input)[0] == total.output[0] and sorted(total.input) == ["r", "x"]
    out = check_fused(proto, "standard", ["LayerNormalization"], feeds_list=feeds)
    assert "com.microsoft" not in {o.domain for o in out.opset_import}


def test_skip_layernorm_where_layernormalization_is_missing_or_asked_for():
    """Below opset 17 (the opset kept there) the residual block is SkipLayerNormalization; so it is where the
    Sum form is disabled (onnxruntime's CUDA kernels, where SkipLayerNormalization is fast)."""
    feeds = [x_feeds(r=np.random.default_rng(5).normal(0, 1, (2, 5, 8)).astype(np.float32))]
    low = block_raise(layer_norm_graph(residual=True, opset=16))
    check_fused(low, "onnxruntime", ["com.microsoft::SkipLayerNormalization"], gone=["ReduceMean", "Add", "Sum"],
                feeds_list=feeds)
    proto = layer_norm_graph(residual=True)
    out = fuse(proto, "onnxruntime", disable_rules=["FuseResidualLayerNorm"])
    assert ops(out)["com.microsoft::SkipLayerNormalization"] == 1 and ops(out)["Sum"] == 0, dict(ops(out))
    assert_close(proto, out, feeds)


def test_skip_layernorm_keeps_a_sum_used_elsewhere():
    proto = layer_norm_graph(residual=True, sum_used=True)
    feeds = [x_feeds(r=np.random.default_rng(5).normal(0, 1, (2, 5, 8)).astype(np.float32))]
    out = check_fused(proto, "onnxruntime", ["LayerNormalization", "Add"], feeds_list=feeds)
    assert ops(out)["com.microsoft::SkipLayerNormalization"] == 0 and ops(out)["Sum"] == 0


def with_float_type(proto: onnx.ModelProto, dtype) -> onnx.ModelProto:
    """`proto` with its float32 inputs, outputs and initializers in `dtype` (np.float16 / np.float64)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for i, t in enumerate(out.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(dtype), t.name))
    for vi in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        if vi.type.tensor_type.elem_type == F:
            vi.type.tensor_type.elem_type = elem
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("dtype,fused", [(np.float16, True), (np.float64, False)])
def test_skip_layernorm_only_for_types_onnxruntime_has(dtype, fused):
    # onnxruntime's SkipLayerNormalization has float and float16 kernels: a double one would not load (the Sum
    # form takes the same types, so that a rule set without it fuses what it did)
    proto = with_float_type(layer_norm_graph(residual=True), dtype)
    rng = np.random.default_rng(6)
    feeds = {"x": rng.normal(0, 1, (2, 5, 8)).astype(dtype), "r": rng.normal(0, 1, (2, 5, 8)).astype(dtype)}
    out = fuse(proto, "onnxruntime")
    assert ops(out)["Sum"] == int(fused) and ops(out)["com.microsoft::SkipLayerNormalization"] == 0, dict(ops(out))
    out = fuse(proto, "onnxruntime", disable_rules=["FuseResidualLayerNorm"])
    assert ops(out)["com.microsoft::SkipLayerNormalization"] == int(fused), dict(ops(out))
    for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        tol = (3e-3 if dtype == np.float16 else 1e-4) * float(np.max(np.abs(want)))
        assert float(np.max(np.abs(got.astype(np.float64) - want))) <= tol


# -- RMSNormalization -------------------------------------------------------------------------------------


@pytest.mark.parametrize("square,div", [("pow", "recip"), ("mul", "div"), ("pow", "one_over")])
def test_rms_norm_fuses_at_opset_23(square, div):
    check_fused(rms_norm_graph(square=square, div=div), "standard", ["RMSNormalization"], gone=["ReduceMean"])


def test_rms_norm_negative():
    check_not_fused(block_raise(rms_norm_graph(opset=17)), "standard")  # opset 23 out of reach
    check_not_fused(rms_norm_graph(eps=np.full(8, 1e-6)), "standard")  # eps not a scalar


# -- Gelu -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_gelu_fuses(form, order):
    std = check_fused(gelu_graph(form=form, order=order, opset=20), "standard", ["Gelu"], gone=["Mul"])
    want = "tanh" if form == "tanh" else "none"
    node = next(n for n in std.graph.node if n.op_type == "Gelu")
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("approximate", b"none") == \
        want.encode()
    contrib = "com.microsoft::Gelu" if form == "erf" else "com.microsoft::FastGelu"
    check_fused(gelu_graph(form=form, order=order, opset=17), "onnxruntime", [contrib], gone=["Mul"])


@pytest.mark.parametrize("kwargs", [{"form": "erf", "sqrt2": 1.5}, {"form": "tanh", "k": 0.045}])
def test_gelu_negative(kwargs):
    # wrong constants are another function
    for runtime in ("standard", "onnxruntime"):
        check_not_fused(gelu_graph(**{"opset": 20, **kwargs}), runtime)


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_gelu_constant_that_broadcasts_is_not_fused(form):
    # a [1, 1, 1] 0.5 keeps x's 3-D shape: Gelu; a [1, 1, 1, 1] one makes the result 4-D, which Gelu(x) is not
    check_fused(gelu_graph(form=form, opset=20, half_shape=(1, 1, 1)), "standard", ["Gelu"], gone=["Mul"])
    for runtime in ("standard", "onnxruntime"):
        check_not_fused(gelu_graph(form=form, opset=20, half_shape=(1, 1, 1, 1)), runtime)


@pytest.mark.parametrize("form,op", [("erf", "com.microsoft::BiasGelu"), ("tanh", "com.microsoft::FastGelu")])
def test_bias_gelu(form, op):
    out = check_fused(gelu_graph(form=form, bias="vec"), "onnxruntime", [op], gone=["Add"])
    node = next(n for n in out.graph.node if n.op_type == op.split("::")[1])
    assert len(node.input) == 2  # x and the bias
    # a [S, C] bias is not a per-channel bias: Gelu / FastGelu without it
    out = check_fused(gelu_graph(form=form, bias="mat"), "onnxruntime", ["Add"])
    assert ops(out)["com.microsoft::BiasGelu"] == 0
    assert all(len(n.input) == 1 for n in out.graph.node if n.op_type in ("Gelu", "FastGelu"))


# -- attention --------------------------------------------------------------------------------------------


def masks(batch: int = 3, seq: int = 8) -> list[np.ndarray]:
    """A mask with holes, left padding, all ones (never to be turned into sequence lengths)."""
    holes = np.array([[1, 0, 1, 1, 0, 1, 1, 1]] * batch, np.int64)
    left = np.ones((batch, seq), np.int64)
    left[:, :3] = 0
    return [holes[:, :seq], left, np.ones((batch, seq), np.int64)]


def attention_feeds(proto, batch: int = 3, seq: int = 8) -> list[dict]:
    x = np.random.default_rng(3).normal(0, 1, (batch, seq, 32)).astype(np.float32)
    names = {i.name for i in proto.graph.input}
    if "attention_mask" not in names:
        return [{"x": x}]
    return [{"x": x, "attention_mask": m} for m in masks(batch, seq)]


@pytest.mark.parametrize("scale", ["div", "mul", "qk"])
def test_bert_attention_with_padding_mask_fuses(scale):
    proto = attention_graph(scale=scale)
    # MultiHeadAttention, then its q, k, v projections packed into onnxruntime's Attention (transformer_packed.py)
    out = check_fused(proto, "onnxruntime", [ORT_ATTENTION], gone=["Softmax", "Transpose", MHA],
                      feeds_list=attention_feeds(proto))
    node = next(n for n in out.graph.node if n.op_type == "Attention")
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["num_heads"] == 4
    assert node.input[3] == "" and node.input[5]  # no mask_index: the mask stays an additive attention_bias
    assert ops(out)["MatMul"] == 1  # the output projection; q, k, v's are in the Attention
    out = fuse(proto, "onnxruntime", disable_rules=("FusePackedAttention",))
    node = next(n for n in out.graph.node if n.op_type == "MultiHeadAttention")
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["num_heads"] == 4
    assert node.input[4] == ""  # no key_padding_mask: the mask stays an additive bias
    assert_close(proto, out, attention_feeds(proto))


def test_attention_to_standard_attention_at_opset_23():
    proto = attention_graph(opset=23)
    check_fused(proto, "standard", ["Attention"], gone=["Softmax"], feeds_list=attention_feeds(proto))


def causal_with_cond_input(opset: int) -> onnx.ModelProto:
    """attention_graph's causal block with the Where condition a [1, 1, 8, 8] bool graph input `cond`."""
    proto = attention_graph(mask="causal", dynamic=False, opset=opset)
    next(n for n in proto.graph.node if n.op_type == "Where").input[0] = "cond"
    proto.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, [1, 1, 8, 8]))
    del proto.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def test_standard_attention_keeps_rows_that_may_be_fully_masked():
    # onnxruntime's Attention computes a row masked everywhere (finfo.min / -inf) unlike the graph (a uniform
    # average of V): a Where condition known only at run time stays unfused for it, MultiHeadAttention matches
    cond = np.tril(np.ones((1, 1, 8, 8), bool))
    cond[..., 3, :] = False  # row 3 masks every key
    feeds = [{**f, "cond": cond} for f in attention_feeds(attention_graph(mask="none"), batch=1)]
    out = fuse(causal_with_cond_input(23), "standard")
    assert ops(out)["Attention"] == 0 and ops(out)["Softmax"] == 1
    check_fused(causal_with_cond_input(17), "onnxruntime", [ORT_ATTENTION], gone=["Softmax"],
                feeds_list=feeds)
    # a constant additive mask with a fully masked row: unfused too; one that keeps a score per row fuses
    proto = attention_graph(mask="causal_add", dynamic=False, opset=23)
    tri = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    for row, fused in ((np.finfo(np.float32).min, 0), (-1e4, 1)):
        a = numpy_helper.to_array(tri).copy()
        a[..., 3, :] = row
        tri.CopyFrom(numpy_helper.from_array(a, tri.name))
        out = fuse(proto, "standard")
        assert ops(out)["Attention"] == fused
        assert_close(proto, out, attention_feeds(proto, batch=1))


@pytest.mark.parametrize("runtime,op", [("onnxruntime", ORT_ATTENTION),
                                        ("standard", "Attention")])
def test_attention_scale_must_be_positive(runtime, op):
    # onnxruntime's Attention refuses a scale <= 0 when the session loads: a negative one stays unfused; q and k
    # both scaled by a negative factor make a positive scale and fuse
    opset = 23 if runtime == "standard" else 17
    proto = attention_graph(scale="neg", opset=opset)
    out = fuse(proto, runtime)
    assert ops(out)[op] == 0 and ops(out)["Softmax"] == 1
    assert_close(proto, out, attention_feeds(proto))
    proto = attention_graph(scale="qk_neg", opset=opset)
    check_fused(proto, runtime, [op], gone=["Softmax"], feeds_list=attention_feeds(proto))


@pytest.mark.parametrize("mask", ["causal", "causal_add", "none"])
@pytest.mark.parametrize("runtime,op", [("onnxruntime", ORT_ATTENTION),
                                        ("standard", "Attention")])
def test_gpt2_causal_attention_fuses(mask, runtime, op):
    proto = attention_graph(mask=mask, dynamic=False, opset=23 if runtime == "standard" else 17)
    check_fused(proto, runtime, [op], gone=["Softmax"], feeds_list=attention_feeds(proto, batch=1))


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_one_broadcast_kv_head_is_multi_query_attention(runtime, dynamic):
    """One K/V head that the MatMuls broadcast over the query heads (multi-query attention): the standard
    Attention with kv_num_heads = 1 in both forms (com.microsoft MultiHeadAttention does not take it)."""
    proto = attention_graph(kv_heads=1, dynamic=dynamic)
    out = check_fused(proto, runtime, ["Attention"], gone=["Softmax", MHA],
                      feeds_list=attention_feeds(proto, batch=3 if dynamic else 1))
    node = next(n for n in out.graph.node if n.op_type == "Attention")
    heads = {a.name: a.i for a in node.attribute if a.name.endswith("num_heads")}
    assert heads == {"q_num_heads": 4, "kv_num_heads": 1}
    model = optc.from_onnx(proto)
    infer_model_types(model)
    root = [n for n in model.graph if n.op_type == "Reshape"][-1]  # the head merge, the pattern's root
    assert "K/V have another head count (a single K/V head: the standard form's Attention takes it)" in \
        explain(FuseMultiHeadAttention, root, model)


@pytest.mark.parametrize("kwargs", [{"softmax_axis": 2}, {"big_mask": True},
                                    {"scale": "input"}, {"mask": "causal_small_fill", "dynamic": False}])
def test_attention_negative(kwargs):
    proto = attention_graph(**kwargs)
    feeds = attention_feeds(proto, batch=1 if kwargs.get("big_mask") or "mask" in kwargs else 3)
    if kwargs.get("scale") == "input":
        feeds = [{**f, "scale": np.array(2.0, np.float32)} for f in feeds]
    out = fuse(proto, "onnxruntime")
    assert ops(out)[ORT_ATTENTION] == ops(out)[MHA] == 0 and ops(out)["Softmax"] == 1
    assert_close(proto, out, feeds)
    assert "com.microsoft" not in {o.domain for o in out.opset_import}


@pytest.mark.parametrize("opset", [14, 17, 22])
def test_standard_attention_raises_the_opset_when_safe(opset):
    proto = attention_graph(opset=opset)
    out = check_fused(proto, "standard", ["Attention"], gone=["Softmax"], feeds_list=attention_feeds(proto))
    assert {o.domain: o.version for o in out.opset_import}[""] == 23
    assert out.ir_version >= 10


def test_standard_form_keeps_the_opset_when_an_op_changed_meaning():
    # GridSample's modes changed meaning at opset 20: no raise, so no opset-23 Attention; the opset stays
    proto = block_raise(attention_graph(opset=17))
    out = fuse(proto, "standard")
    assert ops(out)["Attention"] == 0 and {o.domain: o.version for o in out.opset_import}[""] == 17
    assert_close(proto, out, attention_feeds(proto))


@pytest.mark.parametrize("sizes", [False, True])
def test_a_split_into_equal_parts_keeps_the_opset(sizes):
    """A Split without sizes (equal parts by its output count, valid to opset 17) is invalid from opset 18 without
    num_outputs: beside it the opset is not raised (the raised model did not load); with a sizes input it is."""
    proto = attention_graph(opset=17)
    ins = ["x", "halves"] if sizes else ["x"]
    if sizes:
        proto.graph.initializer.append(numpy_helper.from_array(np.array([16, 16], np.int64), "halves"))
    proto.graph.node.append(helper.make_node("Split", ins, ["p0", "p1"], axis=-1))
    x = next(i for i in proto.graph.input if i.name == "x").type.tensor_type.shape.dim
    dims = [d.dim_param or d.dim_value for d in x][:-1] + [16]
    proto.graph.output.extend(helper.make_tensor_value_info(n, F, dims) for n in ("p0", "p1"))
    out = fuse(proto, "standard")
    assert {o.domain: o.version for o in out.opset_import}[""] == (23 if sizes else 17)
    assert ops(out)["Attention"] == (1 if sizes else 0)
    assert_close(proto, out, attention_feeds(proto))


def test_reduce_ops_take_their_opset_18_form_only_when_the_opset_is_raised():
    # a ReduceMean with attribute axes beside the attention: rewritten to its opset-18 form (same axes) as the
    # model goes to opset 23 for Attention; without a fusion that needs it, the model keeps opset 17 and its form
    proto = attention_graph(opset=17)
    proto.graph.node.append(helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1))
    proto.graph.output.append(helper.make_tensor_value_info("m", F, ["batch", "seq", 1]))
    out = fuse(proto, "standard")
    assert ops(out)["Attention"] == 1 and {o.domain: o.version for o in out.opset_import}[""] == 23
    assert_close(proto, out, attention_feeds(proto))
    out = fuse(proto, "onnxruntime")  # com.microsoft Attention needs no raise
    assert ops(out)[ORT_ATTENTION] == 1
    assert {o.domain: o.version for o in out.opset_import}[""] == 17
    assert all(len(n.input) == 1 for n in out.graph.node if n.op_type == "ReduceMean")


def test_standard_form_raises_the_opset_only_when_needed():
    out = fuse(layer_norm_graph(opset=18), "standard")  # LayerNormalization is in opset 17
    assert ops(out)["LayerNormalization"] == 1 and {o.domain: o.version for o in out.opset_import}[""] == 18
    out = fuse(gelu_graph(opset=18), "standard")  # Gelu needs 20
    assert ops(out)["Gelu"] == 1 and {o.domain: o.version for o in out.opset_import}[""] == 20
    out = fuse(gelu_graph(opset=18), "onnxruntime")  # the contrib Gelu: no raise
    assert ops(out)["com.microsoft::Gelu"] == 1 and {o.domain: o.version for o in out.opset_import}[""] == 18


def core_graph(*, opset: int = 18, kv_heads: int = 4, q_from: str = "rope") -> onnx.ModelProto:
    """The attention core on [B, N, S, H] heads as a Llama export has it: q and k rotary-embedded (q * cos +
    rotate_half(q) * sin), K/V heads repeated by Unsqueeze/Tile/Reshape (repeat_interleave), a causal bias,
    MatMul(q, Transpose(k, [0,1,3,2])) / sqrt(H), Softmax, MatMul with v. `q_from="transpose"`: q straight from
    a Transpose (the head-split form, FuseAttention's), `kv_heads=1` with no repeat: a K/V head broadcast by the
    MatMuls (multi-query attention)."""
    g = G()
    n, s, h = 4, 8, 16
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    ang = np.outer(np.arange(s), 1.0 / 10000 ** (np.arange(0, h, 2) / h))
    cos = g.const(np.cos(np.concatenate([ang, ang], -1)).astype(np.float32), "cos")
    sin = g.const(np.sin(np.concatenate([ang, ang], -1)).astype(np.float32), "sin")

    def rope(x):
        first = g.op("Slice", x, i64([0]), i64([h // 2]), i64([3]))
        second = g.op("Slice", x, i64([h // 2]), i64([h]), i64([3]))
        rot = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))

    def repeat(x):
        if kv_heads in (1, n):
            return x
        tiled = g.op("Tile", g.op("Unsqueeze", x, i64([2])), i64([1, 1, n // kv_heads, 1, 1]))
        return g.op("Reshape", tiled, i64([1, n, s, h]))

    q = rope("q") if q_from == "rope" else g.op("Transpose", "q_bsnh", perm=[0, 2, 1, 3])
    k, v = repeat(rope("k")), repeat("v")
    scores = g.op("Div", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), np.array(4.0, np.float32))
    tri = np.where(np.tril(np.ones((s, s), bool)), 0.0, np.finfo(np.float32).min).astype(np.float32)
    p = g.op("Softmax", g.op("Add", scores, tri), axis=-1)
    y = g.op("MatMul", p, v)
    q_in = ("q", F, [1, n, s, h]) if q_from == "rope" else ("q_bsnh", F, [1, s, n, h])
    return g.model([q_in, ("k", F, [1, kv_heads, s, h]), ("v", F, [1, kv_heads, s, h])], [y], opset)


def core_feeds(proto) -> list[dict]:
    rng = np.random.default_rng(4)
    return [{i.name: rng.normal(0, 1, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in proto.graph.input}]


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
def test_rotary_and_repeated_kv_attention_fuses_on_4d_heads(runtime, kv_heads):
    proto = core_graph(kv_heads=kv_heads)
    out = check_fused(proto, runtime, ["Attention", "RotaryEmbedding"], gone=["Softmax", "Neg"],
                      feeds_list=core_feeds(proto))
    assert {o.domain: o.version for o in out.opset_import}[""] == 23


@pytest.mark.parametrize("runtime", ["standard", "onnxruntime"])
def test_one_broadcast_kv_head_is_multi_query_attention_on_4d_heads(runtime):
    """K/V [1, 1, S, H] that the MatMuls broadcast over 4 query heads: Attention with K/V of one head."""
    proto = core_graph(kv_heads=1)
    out = check_fused(proto, runtime, ["Attention", "RotaryEmbedding"], gone=["Softmax"],
                      feeds_list=core_feeds(proto))
    assert {o.domain: o.version for o in out.opset_import}[""] == 23


@pytest.mark.parametrize("kwargs", [{"q_from": "transpose"}, {"opset": 17}])
def test_4d_attention_negative(kwargs):
    # q from a head-split Transpose (FuseAttention's, which wants the split); an opset-17 model that cannot be
    # raised to 23
    proto = core_graph(**kwargs)
    if kwargs.get("opset") == 17:
        proto = block_raise(proto)
    out = fuse(proto, "standard")
    assert ops(out)["Attention"] == 0 and ops(out)["Softmax"] == 1
    assert_close(proto, out, core_feeds(proto))


# -- pipeline, API and CLI --------------------------------------------------------------------------------


def test_levels_run_the_fusions_only_when_asked():
    assert "fuse-transformer" not in level_spec(2)
    assert "fuse-transformer{runtime=onnxruntime}" in level_spec(2, "onnxruntime")
    assert "fuse-transformer{runtime=standard}" in level_spec(3, "standard")
    with pytest.raises(optc.OptcError, match="unknown runtime 'tvm'"):
        level_spec(2, "tvm")
    with pytest.raises(optc.OptcError, match="-p"):
        optc.optimize(attention_graph(), passes="dce", runtime="onnxruntime")


def test_optimize_api_fuses_at_O2():
    proto = attention_graph()
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    assert ops(out)[ORT_ATTENTION] == 1
    assert_close(proto, out, attention_feeds(proto))
    assert ops(optc.to_onnx(optc.optimize(proto)))["Softmax"] == 1  # without runtime: no fusion


def test_cli_for(tmp_path):
    src, dst = tmp_path / "attn.onnx", tmp_path / "out.onnx"
    onnx.save(attention_graph(), src)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "optc", "optimize", str(src), "-o", str(dst), *args],
                              capture_output=True, text=True, timeout=120)

    r = cli("--for", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert ops(onnx.load(dst))[ORT_ATTENTION] == 1
    r = cli("--for", "tvm")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
    r = cli("--for", "standard", "-p", "dce")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
