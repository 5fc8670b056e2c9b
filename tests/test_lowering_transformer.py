"""optc's converters for ONNX's transformer ops (lowering/ops/transformer.py): Attention (opset 23/24),
RMSNormalization and RotaryEmbedding, against onnx's reference evaluator and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper

from .conftest import run_ort, run_reference

_NP_TO_ONNX = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.int64: TensorProto.INT64,
               np.bool_: TensorProto.BOOL, np.int32: TensorProto.INT32}


def _model(op_type: str, feeds: dict, outputs: list[str], opset: int = 23, shapes: dict | None = None,
           node_inputs: list[str] | None = None, **attrs) -> onnx.ModelProto:
    """A one-node model whose graph inputs are `feeds` (name -> array); `node_inputs` (default: the feeds'
    names) may hold '' for omitted optional inputs."""
    shapes = shapes or {}
    inputs = [helper.make_tensor_value_info(n, _NP_TO_ONNX[x.dtype.type], shapes.get(n, x.shape))
              for n, x in feeds.items()]
    node = helper.make_node(op_type, node_inputs or list(feeds), outputs, **attrs)
    out_type = _NP_TO_ONNX[next(iter(feeds.values())).dtype.type]  # every output here has the first input's type
    outs = [helper.make_tensor_value_info(n, out_type, None) for n in outputs if n]
    graph = helper.make_graph([node], op_type.lower(), inputs, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    module = optc.compile(optc.from_onnx(model))
    got = module.run(feeds)
    return [got[o.name] for o in model.graph.output]


def _check(got: list, want: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)


def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# -- Attention --------------------------------------------------------------------------------------------------


def test_attention_gqa_3d_against_onnxruntime_and_reference():
    """3-D Q/K/V, 4 query heads sharing 2 key/value heads, a float mask broadcast from (q, kv)."""
    rng = np.random.default_rng(0)
    feeds = {"Q": _rand(rng, 2, 3, 4 * 8), "K": _rand(rng, 2, 5, 2 * 8), "V": _rand(rng, 2, 5, 2 * 6),
             "attn_mask": _rand(rng, 3, 5)}
    model = _model("Attention", feeds, ["Y"], q_num_heads=4, kv_num_heads=2)
    got = _run(model, feeds)
    assert got[0].shape == (2, 3, 4 * 6)
    _check(got, run_reference(model, feeds))
    _check(got, run_ort(model, feeds), rtol=1e-4, atol=1e-5)


def test_attention_causal_with_past_key_value():
    """An internal cache: present = past ++ new; the causal frontier is offset by the past length."""
    rng = np.random.default_rng(1)
    feeds = {"Q": _rand(rng, 1, 2, 3, 4), "K": _rand(rng, 1, 2, 3, 4), "V": _rand(rng, 1, 2, 3, 4),
             "past_key": _rand(rng, 1, 2, 4, 4), "past_value": _rand(rng, 1, 2, 4, 4)}
    model = _model("Attention", feeds, ["Y", "present_key", "present_value"], is_causal=1,
                   node_inputs=["Q", "K", "V", "", "past_key", "past_value"])
    got = _run(model, feeds)
    assert got[1].shape == (1, 2, 7, 4)
    _check(got, run_reference(model, feeds))
    _check(got, run_ort(model, feeds), rtol=1e-4, atol=1e-5)


def test_attention_bool_mask_fully_masked_row_gives_zeros_not_nan():
    """A boolean mask (True = attend) with a query row that attends nothing: that row of Y is 0 (the spec's
    fully-masked-row rule), the others are the masked softmax."""
    rng = np.random.default_rng(2)
    mask = np.array([[True, False, True, True], [False, False, False, False], [True, True, True, False]])
    feeds = {"Q": _rand(rng, 2, 2, 3, 8), "K": _rand(rng, 2, 2, 4, 8), "V": _rand(rng, 2, 2, 4, 8), "attn_mask": mask}
    model = _model("Attention", feeds, ["Y"])
    got = _run(model, feeds)
    assert not np.isnan(got[0]).any() and not got[0][:, :, 1].any()
    _check(got, run_reference(model, feeds))


def _scores_feeds():
    rng = np.random.default_rng(3)
    mask = _rand(rng, 3, 5)
    mask[:, 4] = -np.inf
    return {"Q": _rand(rng, 1, 2, 3, 4), "K": 3 * _rand(rng, 1, 2, 5, 4), "V": _rand(rng, 1, 2, 5, 4), "attn_mask": mask}


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_attention_qk_matmul_output_modes(mode):
    """The fourth output after softcap (1), after the mask too (2), after softmax (3); the mask holds -inf."""
    feeds = _scores_feeds()
    model = _model("Attention", feeds, ["Y", "", "", "qk"], softcap=2.0, qk_matmul_output_mode=mode)
    _check(_run(model, feeds), run_reference(model, feeds))


def test_attention_qk_matmul_output_mode0_is_the_raw_product():
    """Mode 0 is Q*K^T before softcap, as the spec's text and function body say (the reference evaluator
    returns the softcapped value there), so it is checked against numpy."""
    feeds = _scores_feeds()
    model = _model("Attention", feeds, ["Y", "", "", "qk"], softcap=2.0, qk_matmul_output_mode=0)
    y, qk = _run(model, feeds)
    s = np.float32(np.sqrt(1 / np.sqrt(4)))
    np.testing.assert_allclose(qk, (feeds["Q"] * s) @ np.swapaxes(feeds["K"] * s, 2, 3), rtol=1e-5, atol=1e-6)
    _check([y], run_reference(model, feeds)[:1])


def test_attention_float16_softmax_in_float32():
    """float16 Q/K/V with softmax_precision=1 (float32): the probabilities (mode 3) come back as float16."""
    half = {n: x.astype(np.float16) if x.dtype == np.float32 else x for n, x in _scores_feeds().items()}
    model = _model("Attention", half, ["Y", "", "", "qk"], opset=24, qk_matmul_output_mode=3, softmax_precision=1)
    _check(_run(model, half), run_reference(model, half), rtol=2e-3, atol=1e-3)


def test_attention_nonpad_kv_seqlen_causal_opset24():
    """An external cache (opset 24): keys past each batch's nonpad_kv_seqlen are padding; the causal frontier
    is bottom-right (offset = nonpad_kv_seqlen - q_len), a negative offset fully masks the leading rows."""
    rng = np.random.default_rng(4)
    feeds = {"Q": _rand(rng, 3, 2, 2, 4), "K": _rand(rng, 3, 1, 6, 4), "V": _rand(rng, 3, 1, 6, 4),
             "nonpad_kv_seqlen": np.array([6, 3, 1], np.int64)}
    model = _model("Attention", feeds, ["Y"], opset=24, is_causal=1,
                   node_inputs=["Q", "K", "V", "", "", "", "nonpad_kv_seqlen"])
    got = _run(model, feeds)
    _check(got, run_reference(model, feeds))
    assert not got[0][2, :, 0].any()  # batch 2: offset 1 - 2 = -1, query 0 sees no key


def test_attention_dynamic_sequence_lengths():
    """Symbolic sequence lengths with a causal mask and a past cache: compiled once, run at two lengths."""
    rng = np.random.default_rng(5)
    shapes = {"Q": [1, 2, "s", 4], "K": [1, 2, "s", 4], "V": [1, 2, "s", 4], "past_key": [1, 2, "p", 4],
              "past_value": [1, 2, "p", 4]}
    feeds = {"Q": _rand(rng, 1, 2, 3, 4), "K": _rand(rng, 1, 2, 3, 4), "V": _rand(rng, 1, 2, 3, 4),
             "past_key": _rand(rng, 1, 2, 2, 4), "past_value": _rand(rng, 1, 2, 2, 4)}
    model = _model("Attention", feeds, ["Y", "present_key", "present_value"], shapes=shapes, is_causal=1,
                   node_inputs=["Q", "K", "V", "", "past_key", "past_value"])
    module = optc.compile(optc.from_onnx(model))
    for s, p in ((3, 2), (5, 1)):
        feeds = {"Q": _rand(rng, 1, 2, s, 4), "K": _rand(rng, 1, 2, s, 4), "V": _rand(rng, 1, 2, s, 4),
                 "past_key": _rand(rng, 1, 2, p, 4), "past_value": _rand(rng, 1, 2, p, 4)}
        got = module.run(feeds)
        want = run_reference(model, feeds)
        _check([got["Y"], got["present_key"], got["present_value"]], want)


@pytest.mark.parametrize(("mask_dtype", "attrs", "reason"), [
    (np.int32, {"is_causal": 1}, r"an integer \(int32\) attn_mask combined with padding, causal"),
    (np.float32, {"softcap": -1.0}, r"a negative softcap \(-1.0\) is ambiguous"),
])
def test_attention_refusals(mask_dtype, attrs, reason):
    """Nodes optc cannot lower exactly are refused with the reason: an integer mask with causal masking (-inf
    has no integer value), a negative softcap (the spec's function body and reference disagree)."""
    rng = np.random.default_rng(6)
    feeds = {"Q": _rand(rng, 1, 1, 2, 4), "K": _rand(rng, 1, 1, 2, 4), "V": _rand(rng, 1, 1, 2, 4),
             "attn_mask": np.zeros((2, 2), mask_dtype)}
    model = _model("Attention", feeds, ["Y"], **attrs)
    with pytest.raises(optc.UnsupportedError, match=r"cannot lower Attention node .*: Attention with " + reason):
        optc.compile(optc.from_onnx(model))


# -- RMSNormalization ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "dtype"), [(-1, np.float32), (0, np.float32), (1, np.float16)])
def test_rms_normalization(axis, dtype):
    """Normalized over axis..rank-1 (stash_type 1: float16 computed in float32), scale broadcast over them."""
    rng = np.random.default_rng(7)
    x = _rand(rng, 2, 3, 5, dtype=dtype)
    feeds = {"X": x, "scale": _rand(rng, *x.shape[axis % 3:], dtype=dtype)}
    model = _model("RMSNormalization", feeds, ["Y"], axis=axis, epsilon=1e-3)
    got = _run(model, feeds)
    tol = 1e-5 if dtype == np.float32 else 2e-3
    _check(got, run_reference(model, feeds), rtol=tol, atol=tol)
    _check(got, run_ort(model, feeds), rtol=tol, atol=tol)


# -- RotaryEmbedding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_4d_with_position_ids(interleaved):
    """4-D input (batch, heads, seq, head): caches gathered by position_ids, halves or interleaved pairs."""
    rng = np.random.default_rng(8)
    feeds = {"X": _rand(rng, 2, 3, 4, 8), "cos": _rand(rng, 10, 4), "sin": _rand(rng, 10, 4),
             "position_ids": np.array([[0, 1, 2, 3], [7, 5, 9, 0]], np.int64)}
    model = _model("RotaryEmbedding", feeds, ["Y"], interleaved=interleaved)
    got = _run(model, feeds)
    _check(got, run_reference(model, feeds))
    _check(got, run_ort(model, feeds))


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_3d_partial_without_position_ids(interleaved):
    """3-D input with num_heads, a partial rotation (rotary_embedding_dim < head size), per-token caches."""
    rng = np.random.default_rng(9)
    feeds = {"X": _rand(rng, 2, 4, 2 * 8), "cos": _rand(rng, 2, 4, 2), "sin": _rand(rng, 2, 4, 2)}
    model = _model("RotaryEmbedding", feeds, ["Y"], interleaved=interleaved, num_heads=2, rotary_embedding_dim=4)
    got = _run(model, feeds)
    _check(got, run_reference(model, feeds))
    np.testing.assert_array_equal(got[0].reshape(2, 4, 2, 8)[..., 4:], feeds["X"].reshape(2, 4, 2, 8)[..., 4:])


@pytest.mark.parametrize("sq, skv", [(0, 4), (4, 0), (0, 0)])
def test_attention_with_a_static_empty_sequence_compiles(sq, skv):
    """Attention whose static query or key length is 0 failed to build (the matmul schedule's tile arithmetic
    divided by the zero extent; such kernels now keep TVM's default schedule). sq = 0: an empty result; skv = 0:
    P @ V sums over no key, so zeros (onnxruntime refuses both lengths, the reference evaluator skv = 0)."""
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((1, 2, sq, 8)).astype(np.float32),
             "k": rng.standard_normal((1, 2, skv, 8)).astype(np.float32),
             "v": rng.standard_normal((1, 2, skv, 8)).astype(np.float32)}
    (y,) = _run(_model("Attention", feeds, ["y"]), feeds)
    assert y.shape == (1, 2, sq, 8)
    np.testing.assert_array_equal(y, np.zeros_like(y))


def test_matmul_over_a_static_empty_inner_dim_is_zeros_as_onnxruntime():
    """[4, 0] @ [0, 40], the zero-extent reduction beside the attention case above: zeros, as onnxruntime (and a
    nonempty inner dim of 3, the register-tiled kernel's, as onnxruntime)."""
    for k in (0, 3):
        feeds = {"a": np.ones((4, k), np.float32), "b": np.ones((k, 40), np.float32)}
        model = _model("MatMul", feeds, ["y"], opset=18)
        _check(_run(model, feeds), run_ort(model, feeds))
