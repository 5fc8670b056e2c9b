"""optc's converters for ONNX's stateful sequence ops (lowering/ops/stateful.py): CausalConvWithState and
LinearAttention (opset 27), TensorScatter (opset 24) and FlexAttention (ai.onnx.preview), against onnx's
reference evaluator, onnxruntime where it has the op, and the ONNX conformance cases."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper

from .conftest import run_ort, run_reference
from .lowering_sweep import conformance_case, overall, run_case

_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
         np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}
_PREVIEW = "ai.onnx.preview"


def _model(op_type: str, feeds: dict, outputs: list[str], node_inputs: list[str] | None = None, opset: int = 27,
           domain: str = "", shapes: dict | None = None, typed: bool = False, **attrs) -> onnx.ModelProto:
    """A one-node model fed `feeds` (name -> array; `shapes` may give symbolic dims); `node_inputs` may hold ''
    for omitted optional inputs; `typed`: the outputs are declared of the first feed's type (onnxruntime
    needs it)."""
    shapes = shapes or {}
    inputs = [helper.make_tensor_value_info(n, _ONNX[x.dtype], shapes.get(n, x.shape)) for n, x in feeds.items()]
    node = helper.make_node(op_type, node_inputs or list(feeds), outputs, domain=domain, **attrs)
    out_type = _ONNX[next(iter(feeds.values())).dtype] if typed else TensorProto.UNDEFINED
    outs = [helper.make_tensor_value_info(n, out_type, None) for n in outputs]
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph([node], op_type.lower(), inputs, outs)
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    got = optc.compile(optc.from_onnx(model)).run(feeds)
    return [got[o.name] for o in model.graph.output]


def _check(got: list, want: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)


def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _refused(model: onnx.ModelProto, match: str) -> None:
    with pytest.raises(optc.UnsupportedError, match=match):
        optc.compile(optc.from_onnx(model))


# -- CausalConvWithState -----------------------------------------------------------------------------------------


def test_causal_conv_bias_past_state_silu():
    """Bias, a carried state and the fused SiLU; the length is symbolic (one build serves every length)."""
    rng = np.random.default_rng(0)
    feeds = {"x": _rand(rng, 2, 3, 5), "w": _rand(rng, 3, 1, 4), "b": _rand(rng, 3), "past": _rand(rng, 2, 3, 3)}
    model = _model("CausalConvWithState", feeds, ["y", "state"], activation="silu", shapes={"x": [2, 3, "L"]})
    module = optc.compile(optc.from_onnx(model))
    for length in (5, 1):
        f = dict(feeds, x=feeds["x"][:, :, :length])
        got = module.run(f)
        _check([got["y"], got["state"]], run_reference(model, f))


def test_causal_conv_float16_without_past_state():
    """float16 (products accumulated in float32), no past_state: zeros on the left; a length shorter than the
    kernel keeps part of the zero padding in present_state."""
    rng = np.random.default_rng(1)
    feeds = {"x": _rand(rng, 1, 4, 2, dtype=np.float16), "w": _rand(rng, 4, 1, 5, dtype=np.float16)}
    model = _model("CausalConvWithState", feeds, ["y", "state"], activation="swish")
    got = _run(model, feeds)
    assert got[1].shape == (1, 4, 4) and not got[1][:, :, :2].any()
    _check(got, run_reference(model, feeds), rtol=2e-3, atol=2e-3)


def test_causal_conv_invalid_activation_is_refused():
    rng = np.random.default_rng(2)
    feeds = {"x": _rand(rng, 1, 2, 3), "w": _rand(rng, 2, 1, 2)}
    _refused(_model("CausalConvWithState", feeds, ["y", "state"], activation="relu"), "activation 'relu' is invalid")


# -- LinearAttention ---------------------------------------------------------------------------------------------


def _linear_attention_feeds(rng, rule: str, b=2, t=3, hq=4, hkv=2, dk=4, dv=3, decay_last=None, beta_last=None,
                            dtype=np.float32) -> tuple[dict, list[str]]:
    feeds = {"q": _rand(rng, b, t, hq * dk), "k": _rand(rng, b, t, hkv * dk) / 2, "v": _rand(rng, b, t, hkv * dv)}
    names = ["q", "k", "v", ""]
    if rule in ("gated", "gated_delta"):
        feeds["decay"] = -rng.random((b, t, decay_last or hkv * dk)).astype(np.float32)
        names[4:] = ["decay"]
    if rule in ("delta", "gated_delta"):
        feeds["beta"] = rng.random((b, t, beta_last or hkv)).astype(np.float32)
        names[4:] = [names[4] if len(names) > 4 else "", "beta"]
    return {n: x.astype(dtype) for n, x in feeds.items()}, names


@pytest.mark.parametrize(("rule", "extra"), [("linear", {}), ("gated", {"decay_last": 2}),
                                             ("delta", {"beta_last": 1}), ("gated_delta", {})])
def test_linear_attention_update_rules_gqa(rule, extra):
    """Each update rule, 4 query heads on 2 KV heads; per-head decay and a shared beta in two of them."""
    rng = np.random.default_rng(3)
    feeds, names = _linear_attention_feeds(rng, rule, **extra)
    model = _model("LinearAttention", feeds, ["y", "state"], node_inputs=names, q_num_heads=4, kv_num_heads=2,
                   update_rule=rule)
    _check(_run(model, feeds), run_reference(model, feeds), rtol=1e-4, atol=1e-5)


def test_linear_attention_float16_with_float32_past_state_and_scale():
    """float16 activations with a float32 state (S != T): computed in float32, output float16, state float32."""
    rng = np.random.default_rng(4)
    feeds, names = _linear_attention_feeds(rng, "gated_delta", hq=2, hkv=2, dtype=np.float16)
    feeds["past"] = _rand(rng, 2, 2, 4, 3)
    model = _model("LinearAttention", feeds, ["y", "state"], node_inputs=["q", "k", "v", "past", "decay", "beta"],
                   q_num_heads=2, kv_num_heads=2, scale=0.3)
    got = _run(model, feeds)
    assert got[0].dtype == np.float16 and got[1].dtype == np.float32
    _check(got, run_reference(model, feeds), rtol=2e-3, atol=2e-3)


def test_linear_attention_symbolic_or_long_sequence_is_refused():
    rng = np.random.default_rng(5)
    feeds, names = _linear_attention_feeds(rng, "linear", t=2)
    symbolic = _model("LinearAttention", feeds, ["y", "state"], node_inputs=names[:3], q_num_heads=4,
                      kv_num_heads=2, update_rule="linear", shapes={n: [2, "T", x.shape[2]] for n, x in feeds.items()})
    _refused(symbolic, "symbolic sequence length")
    feeds, names = _linear_attention_feeds(rng, "linear", t=300)
    long = _model("LinearAttention", feeds, ["y", "state"], node_inputs=names[:3], q_num_heads=4, kv_num_heads=2,
                  update_rule="linear")
    _refused(long, "over 300 steps")


def test_linear_attention_gated_without_decay_is_refused():
    rng = np.random.default_rng(6)
    feeds, names = _linear_attention_feeds(rng, "linear", t=1)
    model = _model("LinearAttention", feeds, ["y", "state"], node_inputs=names[:3], q_num_heads=4, kv_num_heads=2,
                   update_rule="gated")
    _refused(model, "needs the decay input")


# -- TensorScatter -----------------------------------------------------------------------------------------------


def test_tensor_scatter_circular_wraps_and_linear_matches_onnxruntime():
    """Circular mode wraps past the end of the cache; linear mode (axis 1 of a 3-D cache) against onnxruntime."""
    rng = np.random.default_rng(7)
    feeds = {"past": _rand(rng, 3, 2, 5, 4), "update": _rand(rng, 3, 2, 3, 4), "idx": np.array([0, 3, 4], np.int64)}
    model = _model("TensorScatter", feeds, ["present"], opset=24, mode="circular")
    _check(_run(model, feeds), run_reference(model, feeds), rtol=0, atol=0)
    linear = {"past": _rand(rng, 2, 6, 3), "update": _rand(rng, 2, 2, 3), "idx": np.array([4, 1], np.int64)}
    model = _model("TensorScatter", linear, ["present"], opset=24, typed=True, axis=1)
    got = _run(model, linear)
    _check(got, run_reference(model, linear), rtol=0, atol=0)
    _check(got, run_ort(model, linear), rtol=0, atol=0)


def test_tensor_scatter_int_cache_symbolic_dims_without_indices():
    """An int32 cache with symbolic batch and sequence dims; no write_indices: written at position 0."""
    rng = np.random.default_rng(8)
    feeds = {"past": rng.integers(-9, 9, (2, 5, 3)).astype(np.int32),
             "update": rng.integers(-9, 9, (2, 5, 2)).astype(np.int32)}
    model = _model("TensorScatter", feeds, ["present"], opset=24, axis=-1,
                   shapes={"past": ["B", 5, "M"], "update": ["B", 5, "S"]})
    module = optc.compile(optc.from_onnx(model))
    for batch, seq in ((2, 2), (1, 3)):
        f = {"past": feeds["past"][:batch], "update": rng.integers(-9, 9, (batch, 5, seq)).astype(np.int32)}
        _check([module.run(f)["present"]], run_reference(model, f), rtol=0, atol=0)


def test_tensor_scatter_on_the_batch_axis_is_refused():
    rng = np.random.default_rng(9)
    feeds = {"past": _rand(rng, 4, 3), "update": _rand(rng, 2, 3)}
    _refused(_model("TensorScatter", feeds, ["present"], opset=24, axis=0), "axis=0 is invalid")


# -- FlexAttention -----------------------------------------------------------------------------------------------


def _mod_graph(name: str, dtype: int, nodes: list, initializers: list) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [helper.make_tensor_value_info("s", dtype, ["B", "H", "L", "S"])],
                             [helper.make_tensor_value_info("out", dtype, ["B", "H", "L", "S"])], initializers)


def _causal_score_mod(dtype: int = TensorProto.FLOAT) -> onnx.GraphProto:
    """score_mod: -inf above the diagonal (position ranges from the scores' run-time shape)."""
    i64 = TensorProto.INT64
    nodes = [helper.make_node("Shape", ["s"], ["shape"]),
             helper.make_node("Gather", ["shape", "two"], ["l"], axis=0),
             helper.make_node("Gather", ["shape", "three"], ["n"], axis=0),
             helper.make_node("Range", ["zero", "l", "one"], ["qi"]),
             helper.make_node("Range", ["zero", "n", "one"], ["ki"]),
             helper.make_node("Unsqueeze", ["qi", "one_axis"], ["qcol"]),
             helper.make_node("GreaterOrEqual", ["qcol", "ki"], ["mask"]),
             helper.make_node("Where", ["mask", "s", "ninf"], ["out"])]
    inits = [helper.make_tensor(n, i64, [], [v]) for n, v in (("zero", 0), ("one", 1), ("two", 2), ("three", 3))]
    inits += [helper.make_tensor("one_axis", i64, [1], [1]), helper.make_tensor("ninf", dtype, [], [-np.inf])]
    return _mod_graph("causal", dtype, nodes, inits)


def _flex(feeds: dict, **attrs) -> onnx.ModelProto:
    return _model("FlexAttention", feeds, ["Y"], opset=26, domain=_PREVIEW, **attrs)


def test_flex_attention_gqa_scale_float16():
    """float16, 4 query heads on 2 KV heads, V of another head size, an explicit scale (softmax in float32)."""
    rng = np.random.default_rng(10)
    feeds = {"Q": _rand(rng, 2, 4, 3, 8, dtype=np.float16), "K": _rand(rng, 2, 2, 5, 8, dtype=np.float16),
             "V": _rand(rng, 2, 2, 5, 6, dtype=np.float16)}
    model = _flex(feeds, scale=0.2)
    _check(_run(model, feeds), run_reference(model, feeds), rtol=2e-3, atol=2e-3)


def test_flex_attention_double_softmax_precision_float32():
    """float64 inputs with softmax_precision=FLOAT: the softmax and P @ V in float32, Y float64."""
    rng = np.random.default_rng(11)
    feeds = {"Q": _rand(rng, 1, 2, 4, 4, dtype=np.float64), "K": _rand(rng, 1, 2, 3, 4, dtype=np.float64),
             "V": _rand(rng, 1, 2, 3, 4, dtype=np.float64)}
    model = _flex(feeds, softmax_precision=TensorProto.FLOAT)
    _check(_run(model, feeds), run_reference(model, feeds), rtol=1e-5, atol=1e-6)


def test_flex_attention_score_mod_and_prob_mod_subgraphs():
    """A causal score_mod (Shape/Range/Where on the scores) and a prob_mod that scales, both lowered inline."""
    rng = np.random.default_rng(12)
    feeds = {"Q": _rand(rng, 1, 2, 4, 4), "K": _rand(rng, 1, 2, 4, 4), "V": _rand(rng, 1, 2, 4, 4)}
    prob_mod = _mod_graph("half", TensorProto.FLOAT, [helper.make_node("Mul", ["s", "c"], ["out"])],
                          [helper.make_tensor("c", TensorProto.FLOAT, [], [0.5])])
    model = _flex(feeds, score_mod=_causal_score_mod(), prob_mod=prob_mod)
    got = _run(model, feeds)
    _check(got, run_reference(model, feeds))
    np.testing.assert_allclose(got[0][:, :, 0], 0.5 * feeds["V"][:, :, 0], rtol=1e-6)  # row 0 sees key 0 only


def test_flex_attention_score_mod_of_another_type_is_refused():
    """The scores of float32 inputs are float32; a score_mod declared on float16 does not fit."""
    rng = np.random.default_rng(13)
    feeds = {"Q": _rand(rng, 1, 1, 2, 4), "K": _rand(rng, 1, 1, 2, 4), "V": _rand(rng, 1, 1, 2, 4)}
    _refused(_flex(feeds, score_mod=_causal_score_mod(TensorProto.FLOAT16)), "score_mod takes float16")


# -- conformance cases -------------------------------------------------------------------------------------------


# one case per op form; `python -m optc.tests.lowering_sweep --match linear_attention` (and causal_conv,
# tensorscatter, flexattention) runs all of them
_CASES = ["test_causal_conv_with_state_" + n for n in ("with_bias_and_past_state", "silu_fp16", "decode_step")]
_CASES += ["test_linear_attention_" + n for n in ("gated_delta_mqa", "delta", "prefill_with_past", "fp16")]
_CASES += ["test_tensorscatter_circular", "test_tensorscatter_3d"]
_CASES += ["test_flexattention" + n for n in ("_gqa", "_prob_mod", "_relative_positional", "_double")]


@pytest.mark.parametrize("case", _CASES)
def test_conformance_case_passes(case):
    status, detail = overall(run_case(conformance_case(case)))
    assert status == "pass", detail
