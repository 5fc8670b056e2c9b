"""Weight-only blockwise int4 quantization (quantization/weight_only.py): both formats run on onnxruntime and pass
onnx's full check; outputs equal the float model run with the dequantized weights (decoded here in numpy,
independently of the packer); contrib packing equals onnxruntime's MatMulNBitsQuantizer; file size; -O2."""

from __future__ import annotations

import os

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh
from optc.errors import OptcError
from optc.ir import from_onnx, to_onnx
from optc.ortsession import session
from optc.quantization.weight_only import quantize_weight_only

FORMATS = ["standard", "contrib"]


# -- helpers ----------------------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits, opset: int = 21) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    p = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(p, full_check=True)
    return p


def _vi(name, shape, dtype=TP.FLOAT):
    return oh.make_tensor_value_info(name, dtype, shape)


def _quantize(p: onnx.ModelProto, **kw) -> tuple[onnx.ModelProto, dict]:
    m = from_onnx(p)
    report = quantize_weight_only(m, **kw)
    out = to_onnx(m)
    onnx.checker.check_model(out, full_check=True)
    return out, report


def _run(p: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return session(p, optimize=False, threads=1).run(None, feeds)


def _inits(p: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in p.graph.initializer}


def _unpack(b: np.ndarray) -> np.ndarray:
    """uint8 bytes [..., n] -> codes [..., 2n] (low nibble first)."""
    return np.stack([b & 0xF, b >> 4], axis=-1).reshape(*b.shape[:-1], -1).astype(np.int32)


def _dq_blocked(q, scale, zp, axis: int, bs: int) -> np.ndarray:
    """DequantizeLinear (opset 21, blocked) in numpy."""
    n = q.shape[axis]
    s = np.repeat(scale.astype(np.float32), bs, axis=axis).take(range(n), axis=axis)
    z = 0 if zp is None else np.repeat(zp.astype(np.int32), bs, axis=axis).take(range(n), axis=axis)
    return ((q.astype(np.int32) - z) * s).astype(np.float32)


def _dequantized_weights(out: onnx.ModelProto) -> dict[str, np.ndarray]:
    """For each quantizing node (by output name): the float weight it computes with; a DequantizeLinear's in the
    weight's own layout, MatMulNBits' as [K, N], GatherBlockQuantized's as the table [V, D]."""
    inits = _inits(out)
    deq = {}
    for n in out.graph.node:
        attrs = {a.name: oh.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "DequantizeLinear":
            q, s = inits[n.input[0]], inits[n.input[1]]
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            deq[n.output[0]] = _dq_blocked(q, s, zp, attrs["axis"], attrs["block_size"])
        elif n.op_type == "MatMulNBits":
            k, nn, bs = attrs["K"], attrs["N"], attrs["block_size"]
            codes = _unpack(inits[n.input[1]]).reshape(nn, -1)[:, :k]  # [N, K]
            s = inits[n.input[2]].reshape(nn, -1)
            zp = _unpack(inits[n.input[3]])[:, :s.shape[1]] if len(n.input) > 3 and n.input[3] else np.full(s.shape, 8)
            deq[n.output[0]] = _dq_blocked(codes, s, zp, 1, bs).T  # [K, N]
        elif n.op_type == "GatherBlockQuantized":
            q, s = inits[n.input[0]], inits[n.input[2]]
            zp = inits[n.input[3]] if len(n.input) > 3 and n.input[3] else None
            deq[n.output[0]] = _dq_blocked(q, s, zp, attrs["quantize_axis"], attrs["block_size"])
    return deq


def _substitute(p: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`p` with some initializers replaced (the float model run with dequantized weights)."""
    q = onnx.ModelProto()
    q.CopyFrom(p)
    for t in q.graph.initializer:
        if t.name in weights:
            t.CopyFrom(nh.from_array(weights[t.name].astype(np.float32), t.name))
    return q


def _assert_exact(got, want):
    """Tight comparison (1e-5 relative to the output's magnitude): only summation order may differ."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def _assert_int4_close(got, want, frac: float = 0.15):
    """Int4 error bound: the relative (Frobenius) error is small (about 0.1 per int4 layer with blocks of 32:
    a step of range / 15 with uniform rounding error), and not zero."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < err <= frac, err


def _weight_of(report: dict, node: str) -> str:
    return next(q["weight"] for q in report["quantized"] if q["node"] == node)


RNG = np.random.default_rng(0)


def _w(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# -- MatMul -----------------------------------------------------------------------------------------------


def _matmul_model(k=100, n=48, a_shape=(2, 3)):
    return _model([oh.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [_vi("x", [*a_shape, k])],
                  [_vi("y", [*a_shape, n])], {"W": _w(k, n)})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("a_shape", [(5,), (2, 3)], ids=["A2d", "A3d"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_matmul(fmt, a_shape, symmetric):
    p = _matmul_model(a_shape=a_shape)  # K=100: not a multiple of the block size
    out, report = _quantize(p, format=fmt, symmetric=symmetric)
    assert report["quantized"] == [{"node": "mm", "op": "MatMul", "weight": "W", "shape": [100, 48]}]
    ops = [n.op_type for n in out.graph.node]
    assert ops == (["DequantizeLinear", "MatMul"] if fmt == "standard" else ["MatMulNBits"])
    assert "W" not in _inits(out)
    if fmt == "standard":
        want = TP.INT4 if symmetric else TP.UINT4
        assert {t.data_type for t in out.graph.initializer if t.name.endswith(("_q4", "_zp"))} == {want}
    x = RNG.standard_normal((*a_shape, 100)).astype(np.float32)
    y = _run(out, {"x": x})[0]
    deq = _dequantized_weights(out)
    (w_deq,) = deq.values()
    _assert_exact(y, _run(_substitute(p, {"W": w_deq}), {"x": x})[0])
    _assert_exact(y, x @ w_deq)
    _assert_int4_close(y, _run(p, {"x": x})[0])
    assert report["bytes_after"] < 0.3 * report["bytes_before"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_k_not_a_multiple_of_a_large_block(fmt):
    p = _matmul_model(k=80, n=32, a_shape=(4,))
    out, report = _quantize(p, format=fmt, block_size=64)
    x = RNG.standard_normal((4, 80)).astype(np.float32)
    (w_deq,) = _dequantized_weights(out).values()
    # two blocks per column: the second holds 16 rows only
    assert w_deq.shape == (80, 32)
    _assert_exact(_run(out, {"x": x})[0], x @ w_deq)
    assert report["block_size"] == 64


# -- Gemm -------------------------------------------------------------------------------------------------


GEMM_CASES = [
    dict(transB=0),
    dict(transB=1),
    dict(transB=1, alpha=0.5, beta=2.0, C=(48,)),
    dict(transB=0, alpha=1.5, beta=0.25, C=(1, 48)),
    dict(transB=0, C=(6, 48)),
    dict(transB=1, transA=1, C=(48,)),
]


def _gemm_model(case: dict, k=96, n=48, m=6):
    attrs = {a: case[a] for a in ("transA", "transB", "alpha", "beta") if a in case}
    w = _w(n, k) if case.get("transB") else _w(k, n)
    inits = {"B": w}
    ins = ["x", "B"]
    if "C" in case:
        inits["C"] = _w(*case["C"])
        ins.append("C")
    a_shape = [k, m] if case.get("transA") else [m, k]
    return _model([oh.make_node("Gemm", ins, ["y"], name="gemm", **attrs)], [_vi("x", a_shape)], [_vi("y", [m, n])],
                  inits), a_shape


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_gemm(fmt, case):
    p, a_shape = _gemm_model(case)
    out, report = _quantize(p, format=fmt)
    assert report["quantized"] == [{"node": "gemm", "op": "Gemm", "weight": "B", "shape": [96, 48]}]
    x = RNG.standard_normal(a_shape).astype(np.float32)
    y = _run(out, {"x": x})[0]
    (w_deq,) = _dequantized_weights(out).values()  # B's layout (standard), [K, N] (contrib)
    inits = _inits(p)
    a = x.T if case.get("transA") else x
    if fmt == "standard":
        assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "Gemm"]
        assert w_deq.shape == inits["B"].shape
        _assert_exact(y, _run(_substitute(p, {"B": w_deq}), {"x": x})[0])
    else:
        assert "MatMulNBits" in [n.op_type for n in out.graph.node]
        # a C folded into the bias leaves no initializer behind that nothing reads
        read = {i for n in out.graph.node for i in n.input}
        assert [i.name for i in out.graph.initializer if i.name not in read] == []
        # alpha lives in the scales, beta * C in the bias (or the Add): compute what the model should
        c = case.get("beta", 1.0) * inits["C"] if "C" in case else 0.0
        _assert_exact(y, a @ w_deq + c)
        alpha = case.get("alpha", 1.0)
        w_plain = inits["B"].T if case.get("transB") else inits["B"]
        assert np.abs(w_deq / alpha - w_plain).max() < 0.35 * np.abs(w_plain).max()
    _assert_int4_close(y, _run(p, {"x": x})[0])


# -- contrib packing equals onnxruntime's quantizer -------------------------------------------------------


@pytest.mark.parametrize("k", [96, 100, 256])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_contrib_matches_onnxruntime_quantizer(k, symmetric):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    p = _matmul_model(k=k, n=64, a_shape=(3,))
    ort_q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(p.SerializeToString()),
                                 algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric))
    ort_q.process()
    ref_model = ort_q.model.model
    ref = _inits(ref_model)
    out, _ = _quantize(p, format="contrib", symmetric=symmetric)
    mine = _inits(out)
    (ref_node,), (my_node,) = ref_model.graph.node, out.graph.node
    attrs = lambda n: {a.name: oh.get_attribute_value(a) for a in n.attribute}  # noqa: E731
    assert attrs(my_node) == attrs(ref_node)
    ref_b, my_b = ref[ref_node.input[1]], mine[my_node.input[1]]
    assert ref_b.shape == my_b.shape
    # every nibble of a real row is identical (rows past K are padding MatMulNBits never reads)
    np.testing.assert_array_equal(_unpack(ref_b).reshape(64, -1)[:, :k], _unpack(my_b).reshape(64, -1)[:, :k])
    np.testing.assert_array_equal(ref[ref_node.input[2]], mine[my_node.input[2]])
    assert (len(my_node.input) > 3) == (not symmetric)
    if not symmetric:
        np.testing.assert_array_equal(ref[ref_node.input[3]], mine[my_node.input[3]])
    x = RNG.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x})[0], _run(ref_model, {"x": x})[0])


# -- embeddings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_embedding_gather(fmt, symmetric):
    table = _w(50, 80)  # D = 80: a partial last block
    p = _model([oh.make_node("Gather", ["E", "ids"], ["y"], name="emb")], [_vi("ids", [2, 7], TP.INT64)],
               [_vi("y", [2, 7, 80])], {"E": table})
    out, report = _quantize(p, format=fmt, symmetric=symmetric)
    assert report["quantized"] == [{"node": "emb", "op": "Gather", "weight": "E", "shape": [50, 80]}]
    want_ops = ["DequantizeLinear", "Gather"] if fmt == "standard" else ["GatherBlockQuantized"]
    assert [n.op_type for n in out.graph.node] == want_ops
    ids = RNG.integers(0, 50, (2, 7)).astype(np.int64)
    y = _run(out, {"ids": ids})[0]
    (t_deq,) = _dequantized_weights(out).values()
    np.testing.assert_array_equal(y, t_deq[ids])  # a gather of exact values: bit-exact
    _assert_int4_close(y, table[ids])


def test_embeddings_off_leaves_gather():
    p = _model([oh.make_node("Gather", ["E", "ids"], ["g"], name="emb"), oh.make_node("MatMul", ["g", "W"], ["y"])],
               [_vi("ids", [3], TP.INT64)], [_vi("y", [3, 32])], {"E": _w(40, 64), "W": _w(64, 32)})
    out, report = _quantize(p, embeddings=False)
    assert [q["op"] for q in report["quantized"]] == ["MatMul"]
    assert "E" in _inits(out)


# -- a GPT-2-like block -----------------------------------------------------------------------------------


def _gpt2_block(d=64, s=8, opset=21):
    """LayerNorm -> Gemm qkv -> attention (MatMuls of two activations) -> Gemm proj -> residual; 2-D [S, D]."""
    nodes = [
        oh.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["ln"], axis=-1),
        oh.make_node("Gemm", ["ln", "w_qkv", "b_qkv"], ["qkv"], name="c_attn"),
        oh.make_node("Split", ["qkv"], ["q", "k", "v"], axis=1, num_outputs=3),
        oh.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        oh.make_node("MatMul", ["q", "kt"], ["scores"], name="attn_qk"),
        oh.make_node("Mul", ["scores", "scale"], ["scaled"]),
        oh.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        oh.make_node("MatMul", ["probs", "v"], ["ctx"], name="attn_v"),
        oh.make_node("Gemm", ["ctx", "w_proj", "b_proj"], ["proj"], name="c_proj"),
        oh.make_node("Add", ["x", "proj"], ["y"]),
    ]
    inits = {"ln_g": np.ones(d, np.float32), "ln_b": np.zeros(d, np.float32), "w_qkv": _w(d, 3 * d) * 0.2,
             "b_qkv": _w(3 * d) * 0.1, "scale": np.array(1 / np.sqrt(d), np.float32), "w_proj": _w(d, d) * 0.2,
             "b_proj": _w(d) * 0.1}
    return _model(nodes, [_vi("x", [s, d])], [_vi("y", [s, d])], inits, opset=opset)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt2_like_block(fmt):
    p = _gpt2_block()
    out, report = _quantize(p, format=fmt)
    assert sorted(q["node"] for q in report["quantized"]) == ["c_attn", "c_proj"]
    skipped = {s["node"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"attn_qk", "attn_v"}
    assert all("not a constant" in r for r in skipped.values())
    assert sum(n.op_type == "MatMul" for n in out.graph.node) == 2  # the attention MatMuls
    x = RNG.standard_normal((8, 64)).astype(np.float32)
    y = _run(out, {"x": x})[0]
    w_qkv, w_proj = _dequantized_weights(out).values()  # in node order; alpha = beta = 1: B as [K, N] both ways
    _assert_exact(y, _run(_substitute(p, {"w_qkv": w_qkv, "w_proj": w_proj}), {"x": x})[0])
    _assert_int4_close(y, _run(p, {"x": x})[0], frac=0.25)  # softmax amplifies the weight error


# -- file size and the -O2 round trip ---------------------------------------------------------------------


def _mlp(n_layers=4, d=512, gemm=False):
    nodes, inits, prev = [], {}, "x"
    for i in range(n_layers):
        out = "y" if i == n_layers - 1 else f"h{i}"
        if gemm:
            inits[f"w{i}"], inits[f"b{i}"] = _w(d, d) * 0.05, _w(d) * 0.1
            nodes.append(oh.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        else:
            inits[f"w{i}"] = _w(d, d) * 0.05
            nodes.append(oh.make_node("MatMul", [prev, f"w{i}"], [out], name=f"fc{i}"))
        prev = out
    return _model(nodes, [_vi("x", [4, d])], [_vi("y", [4, d])], inits)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("gemm", [False, True], ids=["matmul", "gemm"])
def test_file_size_ratio_and_O2_round_trip(tmp_path, fmt, gemm):
    p = _mlp(gemm=gemm)
    src = tmp_path / "float.onnx"
    onnx.save(p, src)
    m = optc.load(str(src))
    report = quantize_weight_only(m, format=fmt)
    assert len(report["quantized"]) == 4
    q_path = tmp_path / "q.onnx"
    optc.save(m, str(q_path))
    ratio = os.path.getsize(q_path) / os.path.getsize(src)
    assert ratio <= 0.27, ratio
    x = RNG.standard_normal((4, 512)).astype(np.float32)
    y_q = _run(onnx.load(str(q_path)), {"x": x})[0]
    _assert_int4_close(y_q, _run(p, {"x": x})[0], frac=0.3)  # four layers

    opt = optc.optimize(optc.load(str(q_path)), level=2)
    o_path = tmp_path / "q_O2.onnx"
    optc.save(opt, str(o_path))
    assert os.path.getsize(o_path) <= 1.01 * os.path.getsize(q_path)
    op_model = onnx.load(str(o_path))
    onnx.checker.check_model(op_model, full_check=True)
    ops = [n.op_type for n in op_model.graph.node]
    if fmt == "standard":
        assert ops.count("DequantizeLinear") == 4
        assert sum(t.data_type == TP.UINT4 for t in op_model.graph.initializer) == 8  # codes + zero points
    else:
        assert ops.count("MatMulNBits") == 4
    assert not any(t.data_type == TP.FLOAT and t.dims == [512, 512] for t in op_model.graph.initializer)
    np.testing.assert_allclose(_run(op_model, {"x": x})[0], y_q, rtol=1e-5, atol=1e-5 * np.abs(y_q).max())


@pytest.mark.parametrize("fmt", FORMATS)
def test_O2_keeps_gather_and_transposed_gemm_weights(fmt):
    p = _model([oh.make_node("Gather", ["E", "ids"], ["g"], name="emb"),
                oh.make_node("Gemm", ["g", "B"], ["y"], name="gemm", transB=1)],
               [_vi("ids", [5], TP.INT64)], [_vi("y", [5, 32])], {"E": _w(40, 64), "B": _w(32, 64)})
    out, _ = _quantize(p, format=fmt)
    opt = to_onnx(optc.optimize(from_onnx(out), level=2))
    onnx.checker.check_model(opt, full_check=True)
    assert sorted(n.op_type for n in opt.graph.node) == sorted(n.op_type for n in out.graph.node)
    assert not any(t.data_type == TP.FLOAT and list(t.dims) in ([40, 64], [32, 64]) for t in opt.graph.initializer)
    ids = np.array([0, 3, 39, 7, 3], np.int64)
    np.testing.assert_array_equal(_run(opt, {"ids": ids})[0], _run(out, {"ids": ids})[0])


# -- opset handling ---------------------------------------------------------------------------------------


def test_standard_raises_opset_when_no_op_changed():
    p = _model([oh.make_node("MatMul", ["x", "W"], ["h"], name="mm"), oh.make_node("Relu", ["h"], ["y"])],
               [_vi("x", [2, 64])], [_vi("y", [2, 32])], {"W": _w(64, 32)}, opset=17)
    out, _ = _quantize(p)
    assert {o.domain: o.version for o in out.opset_import}[""] == 21
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    _assert_int4_close(_run(out, {"x": x})[0], _run(p, {"x": x})[0])


def test_standard_refuses_opset_raise_when_an_op_changed_and_contrib_works():
    p = _model([oh.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                oh.make_node("Reshape", ["h", "shape"], ["y"])],  # Reshape changed at opset 19 and 21
               [_vi("x", [2, 64])], [_vi("y", [64])], {"W": _w(64, 32), "shape": np.array([64], np.int64)},
               opset=17)
    m = from_onnx(p)
    with pytest.raises(OptcError, match="--format contrib") as e:
        quantize_weight_only(m)
    assert "\n" not in str(e.value) and "Reshape" in str(e.value)
    assert m.opset_imports[""] == 17 and "W" in m.graph.initializers  # untouched
    out, report = _quantize(p, format="contrib")
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "com.microsoft": 1}
    assert [q["node"] for q in report["quantized"]] == ["mm"]


# -- what is not quantized --------------------------------------------------------------------------------


def test_non_constant_weight_untouched_and_nothing_to_quantize():
    p = _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [2, 64]), _vi("w", [64, 32])],
               [_vi("y", [2, 32])], {})
    m = from_onnx(p)
    with pytest.raises(OptcError, match="nothing to quantize.*not a constant"):
        quantize_weight_only(m)
    assert [n.op_type for n in m.graph] == ["MatMul"]


def test_initializer_overridable_by_an_input_is_not_a_constant():
    p = _matmul_model(k=64, n=32, a_shape=(2,))
    p.graph.input.append(_vi("W", [64, 32]))
    with pytest.raises(OptcError, match="nothing to quantize"):
        quantize_weight_only(from_onnx(p))


def test_excluded_node_untouched():
    p = _model([oh.make_node("MatMul", ["x", "W1"], ["h"], name="keep"),
                oh.make_node("MatMul", ["h", "W2"], ["y"], name="quant")],
               [_vi("x", [2, 64])], [_vi("y", [2, 32])], {"W1": _w(64, 64), "W2": _w(64, 32)})
    out, report = _quantize(p, exclude=["keep"])
    assert [q["node"] for q in report["quantized"]] == ["quant"]
    assert report["skipped"] == [{"node": "keep", "op": "MatMul", "reason": "excluded"}]
    assert np.array_equal(_inits(out)["W1"], _inits(p)["W1"])
    with pytest.raises(OptcError, match="nothing to quantize"):
        quantize_weight_only(from_onnx(p), exclude=["keep", "quant"])


def test_shared_and_small_weights_skipped():
    shared = _w(64, 64)
    p = _model([oh.make_node("MatMul", ["x", "S"], ["a"], name="s1"),
                oh.make_node("MatMul", ["a", "S"], ["b"], name="s2"),
                oh.make_node("MatMul", ["b", "T"], ["c"], name="tiny_n"),   # N = 8
                oh.make_node("MatMul", ["x16", "K16"], ["d"], name="short_k"),  # K = 16 < block size 32
                oh.make_node("MatMul", ["b", "W"], ["e"], name="ok")],
               [_vi("x", [2, 64]), _vi("x16", [2, 16])], [_vi("c", [2, 8]), _vi("d", [2, 32]), _vi("e", [2, 32])],
               {"S": shared, "T": _w(64, 8), "K16": _w(16, 32), "W": _w(64, 32)})
    out, report = _quantize(p)
    assert [q["node"] for q in report["quantized"]] == ["ok"]
    reasons = {s["node"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"s1", "s2", "tiny_n", "short_k"}
    assert "shared" in reasons["s1"] and "shared" in reasons["s2"]
    assert "too small" in reasons["tiny_n"] and "too small" in reasons["short_k"]
    assert {"S", "T", "K16"} <= set(_inits(out))


@pytest.mark.parametrize("kw, match", [
    (dict(bits=8), "4 bits"), (dict(bits=3), "4 bits"), (dict(block_size=8), "power of two"),
    (dict(block_size=48), "power of two"), (dict(block_size=0), "power of two"), (dict(format="qdq"), "format"),
])
def test_bad_options(kw, match):
    m = from_onnx(_matmul_model())
    with pytest.raises(OptcError, match=match):
        quantize_weight_only(m, **kw)
    assert "W" in m.graph.initializers


@pytest.mark.parametrize("fmt", FORMATS)
def test_float16_weight_keeps_float16_scales(fmt):
    w = _w(64, 32).astype(np.float16)
    p = _model([oh.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [_vi("x", [2, 64], TP.FLOAT16)],
               [_vi("y", [2, 32], TP.FLOAT16)], {"W": w})
    out, _ = _quantize(p, format=fmt)
    assert {t.data_type for t in out.graph.initializer if "scale" in t.name} == {TP.FLOAT16}
    x = RNG.standard_normal((2, 64)).astype(np.float16)
    y = _run(out, {"x": x})[0]
    assert y.dtype == np.float16
    (w_deq,) = _dequantized_weights(out).values()
    want = x.astype(np.float32) @ w_deq
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=0, atol=2e-3 * np.abs(want).max())  # fp16 output
    _assert_int4_close(y, _run(p, {"x": x})[0])
