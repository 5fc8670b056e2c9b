"""The fused CPU attention kernel (codegen/attention.py): the kernel alone against a float64 reference, ONNX
Attention nodes compiled through it against onnx's reference evaluator, and where it must not be used."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper

from .conftest import run_reference

tvm = pytest.importorskip("tvm")

from optc.codegen.attention import (  # noqa: E402
    AttentionShape,
    attention_kernel,
    choose_tiles,
    fast_exp_expr,
    padded_keys,
    row_limits_kernel,
)


def _host_target():
    from optc.codegen.targets import resolve_target

    return resolve_target("cpu")


def _reference(q, k, v, bias):
    """float64 attention of BSNH q [b, sq, hq, d], k [b, skv, hk, d], v [b, skv, hk, dv] with the spec's safe
    softmax (a row whose bias is all -inf: probabilities 0)."""
    hq, hk = q.shape[2], k.shape[2]
    k = np.repeat(k.astype(np.float64), hq // hk, axis=2)
    v = np.repeat(v.astype(np.float64), hq // hk, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k)
    if bias is not None:
        s = s + bias
    with np.errstate(invalid="ignore"):
        m = s.max(-1, keepdims=True)
        m[m == -np.inf] = 0
        e = np.exp(s - m)
        z = e.sum(-1, keepdims=True)
        z[z == 0] = 1
        p = e / z
    if bias is not None:
        p = np.where((np.broadcast_to(bias, s.shape) == -np.inf).all(-1, keepdims=True), 0.0, p)
    return np.einsum("bhij,bjhd->bihd", p, v)


def _kfin(v):
    """The pack kernel's kfin of v [b, skv, hk, dv]: per (batch, kv head) the last key whose V row holds a NaN or
    an infinity, -1 for none."""
    bad = ~np.isfinite(v).all(-1)  # [b, skv, hk]
    return np.where(bad, np.arange(v.shape[1])[None, :, None], -1).max(1).astype(np.int64)


def _row_limits(bias):
    """row_limits_kernel's rowlim of `bias` [.., skv]: one past the last key above -FLT_MAX (or NaN), all keys for
    a row without a key >= -2^120."""
    skv = bias.shape[-1]
    kept = ~(bias <= np.finfo(np.float32).min)
    last = np.where(kept, np.arange(skv), -1).max(-1) + 1
    return np.where((bias >= -(2.0 ** 120)).any(-1), last, skv).astype(np.int64)


def _run_kernel(shape: AttentionShape, q, k, v, bias, *, lanes=8, max_acc=12, exp="fast", key_limit=True):
    """The kernel's y for BSNH q, k, v and `bias`; `key_limit=False` passes kfin = the last key, so every block
    computes every key (the kernel as it was before blocks left masked keys out)."""
    tiles = choose_tiles(shape, lanes, max_acc)
    assert tiles is not None
    func = attention_kernel(shape, tiles, exp=exp).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=_host_target())
    skvp, step = padded_keys(shape, tiles), tiles.key_step
    kt = np.zeros((shape.batch, shape.kv_heads, shape.d, skvp), np.float32)
    kt[..., :shape.skv] = k.transpose(0, 2, 3, 1)
    kt = np.ascontiguousarray(kt.reshape(*kt.shape[:3], skvp // step, step).transpose(0, 1, 3, 2, 4))
    y = np.zeros((shape.batch, shape.sq, shape.q_heads, shape.dv), np.float32)
    args = [q, kt, v] + ([bias] if bias is not None else [])
    if shape.limits_keys:
        limits = row_limits_kernel(shape, lanes).with_attr("global_symbol", "main")
        rowlim = tvm.runtime.tensor(np.zeros(bias.shape[:3], np.int64))
        tvm.compile(tvm.IRModule({"main": limits}), target=_host_target())["main"](tvm.runtime.tensor(bias), rowlim)
        np.testing.assert_array_equal(rowlim.numpy(), _row_limits(bias))
        kfin = _kfin(v) if key_limit else np.full((shape.batch, shape.kv_heads), shape.skv - 1, np.int64)
        args += [rowlim.numpy(), kfin]
    args.append(y)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


@pytest.mark.parametrize(("b", "hq", "hk", "sq", "skv", "d", "dv", "bias_shape", "lanes", "max_acc"), [
    (1, 3, 3, 197, 197, 64, 64, None, 8, 12),  # ViT-like: rows and keys not multiples of the tiles
    (2, 4, 2, 9, 13, 16, 8, (2, 1, 1, 13), 8, 12),  # GQA, a padding bias per batch
    (1, 2, 2, 1, 40, 8, 16, (1, 1, 1, 40), 8, 12),  # one query row (decoding)
    (1, 8, 1, 5, 7, 4, 4, (1, 8, 5, 7), 4, 16),  # multi-query, a bias per head, NEON-sized vectors
    (1, 2, 2, 33, 64, 32, 32, (1, 1, 33, 64), 16, 15),  # AVX-512-sized tiles
])
def test_kernel_matches_float64_reference(b, hq, hk, sq, skv, d, dv, bias_shape, lanes, max_acc):
    rng = np.random.default_rng(0)
    q = (rng.standard_normal((b, sq, hq, d)) * 0.5).astype(np.float32)
    k = (rng.standard_normal((b, skv, hk, d)) * 0.5).astype(np.float32)
    v = rng.standard_normal((b, skv, hk, dv)).astype(np.float32)
    bias = None
    if bias_shape is not None:
        bias = np.where(rng.random(bias_shape) < 0.3, -np.inf, rng.standard_normal(bias_shape)).astype(np.float32)
    shape = AttentionShape(b, hq, hk, sq, skv, d, dv, bias_shape)
    for exp in ("fast", "libm"):
        got = _run_kernel(shape, q, k, v, bias, lanes=lanes, max_acc=max_acc, exp=exp)
        np.testing.assert_allclose(got, _reference(q, k, v, bias), rtol=2e-5, atol=2e-6)


def test_kernel_special_values():
    """A fully masked row gives 0 (NaN in the column where V has an infinity: 0 x inf, as the spec's P V); a NaN
    in Q makes its row NaN; a -inf bias entry removes one key; overflowing scores (+-inf) give the reference's
    NaN."""
    rng = np.random.default_rng(1)
    shape = AttentionShape(1, 1, 1, 6, 10, 8, 8, (1, 1, 6, 10))
    q = rng.standard_normal((1, 6, 1, 8)).astype(np.float32)
    k = rng.standard_normal((1, 10, 1, 8)).astype(np.float32)
    v = rng.standard_normal((1, 10, 1, 8)).astype(np.float32)
    bias = np.zeros((1, 1, 6, 10), np.float32)
    bias[0, 0, 0, :] = -np.inf  # row 0: fully masked
    bias[0, 0, 2, 4] = -np.inf  # row 2: one key removed
    v[0, 7, 0, 3] = np.inf
    q[0, 3, 0, 5] = np.nan  # row 3: NaN
    q[0, 4, 0, :] = np.float32(1e30)  # row 4: overflowing scores (+inf and -inf: NaN)
    got = _run_kernel(shape, q, k, v, bias)
    want = _reference(q, k, v, bias)
    others = [0, 1, 2, 4, 5, 6, 7]
    assert np.all(got[0, 0, 0, others] == 0) and np.isnan(got[0, 0, 0, 3])  # 0 x inf
    assert np.all(np.isnan(got[0, 3, 0]))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)  # (NaN where the reference has NaN)


FMIN = np.finfo(np.float32).min


def _mask(case: str, rng, b: int, hq: int, sq: int, skv: int) -> np.ndarray:
    """An additive attention bias of one kind (see test_key_limits_change_no_bit)."""
    causal = np.triu(np.ones((sq, skv), bool), 1 + skv - sq)  # True where masked (a past cache: skv > sq)
    if case == "causal_finfo_min":
        return np.where(causal, FMIN, 0).astype(np.float32)[None, None]
    if case == "causal_inf":
        return np.where(causal, -np.inf, 0).astype(np.float32)[None, None]
    if case == "causal_and_padding":  # GPT-2's sum of both, -inf where they meet; per batch
        lengths = rng.integers(1, skv + 1, size=b)
        pad = np.arange(skv)[None, :] >= lengths[:, None]
        with np.errstate(over="ignore"):
            m = np.where(causal[None], FMIN, np.float32(0)) + np.where(pad, FMIN, np.float32(0))[:, None]
        return m.astype(np.float32)[:, None]
    if case == "padding_row":  # [b, 1, 1, skv]: one row of bias for every query
        lengths = rng.integers(1, skv + 1, size=b)
        return np.where(np.arange(skv)[None, :] >= lengths[:, None], FMIN, 0).astype(np.float32)[:, None, None]
    if case == "per_head_random":  # masked keys anywhere, some rows masked entirely, NaN and -3e38 entries
        m = np.where(rng.random((1, hq, sq, skv)) < 0.6, FMIN, rng.standard_normal((1, hq, sq, skv)))
        m[0, 0, 1] = FMIN  # a row with no open key: its block computes every key
        m[0, 1, 2, skv - 1] = np.nan  # a NaN bias is a key computed
        m[0, 1, 3, :] = -3e38  # below -2^120 but above -FLT_MAX: every key computed, none open
        return m.astype(np.float32)
    if case == "alibi_causal":  # a slope per head on the open keys
        slopes = np.array([2.0 ** -(i + 1) for i in range(hq)], np.float32)[:, None, None]
        dist = (np.arange(skv)[None, :] - np.arange(sq)[:, None] - (skv - sq)).astype(np.float32)
        return np.where(causal[None], FMIN, slopes * dist).astype(np.float32)[None]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["causal_finfo_min", "causal_inf", "causal_and_padding", "padding_row",
                                  "per_head_random", "alibi_causal"])
@pytest.mark.parametrize(("b", "hq", "hk", "sq", "skv"), [(1, 4, 2, 21, 21), (2, 2, 1, 9, 30)])
def test_key_limits_change_no_bit(case, b, hq, hk, sq, skv):
    """Blocks of query rows that compute keys only up to the last one their bias leaves open give the results of
    the kernel that computes every key, bit for bit, and the float64 reference's within rounding; a V holding a
    NaN or an infinity at a masked key is still multiplied (0 x inf is NaN, as in the graph)."""
    rng = np.random.default_rng(hash((case, sq)) % 2**32)
    d = dv = 16
    q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, skv, hk, d)).astype(np.float32)
    v = rng.standard_normal((b, skv, hk, dv)).astype(np.float32)
    bias = _mask(case, rng, b, hq, sq, skv)
    shape = AttentionShape(b, hq, hk, sq, skv, d, dv, bias.shape)
    assert shape.limits_keys
    got = _run_kernel(shape, q, k, v, bias)
    np.testing.assert_array_equal(got, _run_kernel(shape, q, k, v, bias, key_limit=False))
    if case != "per_head_random":  # (its fully masked rows of -FLT_MAX are uniform, the reference's are not)
        np.testing.assert_allclose(got, _reference(q, k, v, bias), rtol=2e-5, atol=2e-6)
    v[0, skv - 1, 0, 3] = np.inf  # the last key: masked for the first query rows
    v[-1, skv - 2, -1, 0] = np.nan
    got = _run_kernel(shape, q, k, v, bias)
    np.testing.assert_array_equal(got, _run_kernel(shape, q, k, v, bias, key_limit=False))
    assert np.isnan(got[0, 0, 0, 3]) or case in ("padding_row", "causal_and_padding", "per_head_random")


def test_key_limits_leave_out_the_masked_keys_of_a_block():
    """The limit is in force: an overflowing score (+inf) at a key that a causal mask closes for a whole block of
    query rows no longer spoils those rows (the kernel without the limit: NaN, inf - inf); rows of a block that
    still computes that key are NaN either way (the documented fast-math corner)."""
    rng = np.random.default_rng(3)
    sq = skv = 8
    q = rng.standard_normal((1, sq, 1, 8)).astype(np.float32)
    k = rng.standard_normal((1, skv, 1, 8)).astype(np.float32)
    v = rng.standard_normal((1, skv, 1, 8)).astype(np.float32)
    q[..., 0] = 10.0
    k[0, 7, 0, :] = 0.0
    k[0, 7, 0, 0] = 1e38  # score 1e39 -> +inf for every query row
    bias = np.where(np.triu(np.ones((sq, skv), bool), 1), FMIN, 0).astype(np.float32)[None, None]
    shape = AttentionShape(1, 1, 1, sq, skv, 8, 8, bias.shape)
    tiles = choose_tiles(shape, 8, 12)
    assert tiles.rows == 4
    got = _run_kernel(shape, q, k, v, bias)
    without = _run_kernel(shape, q, k, v, bias, key_limit=False)
    assert np.all(np.isnan(without))
    assert np.all(np.isnan(got[0, 4:]))
    np.testing.assert_allclose(got[:, :4], _reference(q[:, :4], k[:, :7], v[:, :7], bias[..., :4, :7]),
                               rtol=2e-5, atol=2e-6)


def test_a_bias_broadcast_over_the_keys_limits_nothing():
    """A bias with one value for every key ([b, h, sq, 1]) has no key axis to limit: the kernel without row limits."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 6, 2, 8)).astype(np.float32) for _ in range(3))
    bias = np.array([0.5, FMIN, 1.0, -np.inf, 2.0, 0.0], np.float32).reshape(1, 1, 6, 1)
    shape = AttentionShape(1, 2, 2, 6, 6, 8, 8, bias.shape)
    assert not shape.limits_keys
    np.testing.assert_allclose(_run_kernel(shape, q, k, v, bias), _reference(q, k, v, bias), rtol=2e-5, atol=2e-6)


def _native_attention(q_rows: int, kv_rows: int, mask_shape=None, **attrs) -> onnx.ModelProto:
    """One opset-23 Attention node over Q [1, 2, q_rows, 8], K and V [1, 2, kv_rows, 8], with a float mask input M
    of `mask_shape` if given."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, q_rows if n == "Q" else kv_rows, 8])
           for n in "QKV"]
    if mask_shape is not None:
        ins.append(helper.make_tensor_value_info("M", TensorProto.FLOAT, list(mask_shape)))
    node = helper.make_node("Attention", [i.name for i in ins], ["Y"], **attrs)
    graph = helper.make_graph([node], "a", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize("fast_math", [True, False])
@pytest.mark.parametrize("keys", [1, 5])
def test_attention_with_a_mask_broadcast_over_the_keys(fast_math, keys):
    """A mask with one value per query row ([sq, 1]: at one key, no key axis to limit) reaches the kernel (a
    breaker: the call dropped it, 'Number of arguments and parameters mismatch')."""
    rng = np.random.default_rng(8)
    model = _native_attention(3, keys, (3, 1))
    feeds = {n: rng.standard_normal((1, 2, 3 if n == "Q" else keys, 8)).astype(np.float32) for n in "QKV"}
    feeds["M"] = np.array([[0.5], [-1.0], [2.0]], np.float32)
    assert _fused(model)
    np.testing.assert_allclose(optc.compile(model, fast_math=fast_math).run(feeds)["Y"],
                               run_reference(model, feeds)[0], rtol=2e-5, atol=2e-6)


def test_key_limits_only_with_fast_math():
    """ONNX's causal Attention adds its -inf bias to a NaN score: the rows that mask a NaN key are NaN too. Without
    fast math the kernel computes every key and gives the reference's NaN rows; with it, a block of query rows
    that closes the key leaves it out (rows 0-3 finite: the documented fast-math corner), a block that computes it
    is NaN in every row (a breaker found the limit in the no-fast-math build too)."""
    s = 8
    model = _native_attention(s, s, is_causal=1)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, s, 8)).astype(np.float32) for n in "QKV"}
    feeds["K"][0, 0, 7, 0] = np.nan
    want = run_reference(model, feeds)[0]
    assert np.all(np.isnan(want[0, 0])) and np.all(np.isfinite(want[0, 1]))
    exact = optc.compile(model, fast_math=False).run(feeds)["Y"]
    np.testing.assert_array_equal(np.isnan(exact), np.isnan(want))
    np.testing.assert_allclose(exact, want, rtol=1e-5, atol=1e-6)
    fast = optc.compile(model).run(feeds)["Y"]
    # the query rows split into blocks (their size follows the CPU's register tile: 4 rows with AVX2, 5 with
    # AVX-512 at this size): the blocks before row 7's are finite, row 7's block is NaN in every row
    finite, nan = np.all(np.isfinite(fast[0, 0]), axis=-1), np.all(np.isnan(fast[0, 0]), axis=-1)
    first_nan = int(np.argmax(nan))
    assert finite[0] and nan[-1] and finite[:first_nan].all() and nan[first_nan:].all(), (finite, nan)
    clean = {**feeds, "K": np.nan_to_num(feeds["K"])}  # rows before 7 never see key 7 (causal)
    np.testing.assert_allclose(fast[0, 0, :first_nan], run_reference(model, clean)[0][0, 0, :first_nan],
                               rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(fast[0, 1], want[0, 1], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dims", ["static", "symbolic"])
def test_kernel_divides_by_the_row_sum_before_the_product_with_v(dims):
    """P = e / sum, then P V, as the spec: with V near the float32 maximum a sum of e * V overflowed to inf where
    the reference's P V is finite (a breaker's case: uniform P over two keys of V = 3e38)."""
    shape = {"static": {"Q": [1, 1, 4, 8], "K": [1, 1, 2, 8], "V": [1, 1, 2, 8]},
             "symbolic": {n: ["b", 1, "s" if n == "Q" else "t", 8] for n in "QKV"}}[dims]
    feeds = {"Q": np.zeros((1, 1, 4, 8), np.float32), "K": np.zeros((1, 1, 2, 8), np.float32),
             "V": np.full((1, 1, 2, 8), 3e38, np.float32)}
    model = _attention_model(feeds, ["Y"], shapes=shape)
    assert _fused(model)
    for fast_math in (True, False):
        y = optc.compile(model, fast_math=fast_math).run(feeds)["Y"]
        np.testing.assert_allclose(y, run_reference(model, feeds)[0], rtol=1e-6)


def test_fast_exp_expr_is_topi_fast_exp():
    """The kernel's exp is TOPI's fast_exp expression, so the same values bit for bit."""
    from tvm import te, topi

    x = te.placeholder((4096,), "float32", name="x")
    ours = te.compute(x.shape, lambda i: fast_exp_expr(x[i]), name="ours")
    theirs = topi.fast_exp(x)
    lib = tvm.compile(te.create_prim_func([x, ours, theirs]), target=_host_target())
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.uniform(-100, 100, 4000), [0.0, -0.0, np.inf, -np.inf, np.nan, 88.3, -88.3, 89.0,
                                                            -104.0, 1e-30, -1e-30]]).astype(np.float32)
    values = np.resize(values, 4096)
    a, b, c = (tvm.runtime.tensor(t) for t in (values, np.zeros(4096, np.float32), np.zeros(4096, np.float32)))
    lib(a, b, c)
    np.testing.assert_array_equal(b.numpy().view(np.int32), c.numpy().view(np.int32))


def test_tiles_respect_the_accumulator_budget():
    shape = AttentionShape(1, 3, 3, 197, 197, 64, 64)
    for lanes, max_acc in ((8, 12), (16, 15), (4, 16)):
        tiles = choose_tiles(shape, lanes, max_acc)
        assert tiles.rows * tiles.s_vectors <= max_acc and tiles.rows * tiles.o_vectors <= max_acc
        assert 64 % (tiles.lanes * tiles.o_vectors) == 0
    assert choose_tiles(AttentionShape(1, 1, 1, 4, 4, 8, 6), 8, 12) is None  # dv = 6: no vector of 4 divides it
    decode = choose_tiles(AttentionShape(1, 8, 2, 1, 500, 64, 64), 8, 12)  # one query row: one tile row
    assert decode.rows == 1 and decode.s_vectors >= 2 and decode.o_vectors == 8


# -- Attention nodes through optc.compile -----------------------------------------------------------------------


def _attention_model(feeds: dict, outputs: list[str], node_inputs: list[str] | None = None, shapes=None,
                     **attrs) -> onnx.ModelProto:
    types = {np.float32: TensorProto.FLOAT, np.bool_: TensorProto.BOOL}
    shapes = shapes or {}
    inputs = [helper.make_tensor_value_info(n, types[x.dtype.type], shapes.get(n, x.shape)) for n, x in feeds.items()]
    node = helper.make_node("Attention", node_inputs or list(feeds), outputs, **attrs)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs if n]
    graph = helper.make_graph([node], "attention", inputs, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _fused(model: onnx.ModelProto, target: str = "cpu") -> bool:
    """Whether codegen's relax-level passes call the fused kernel; asserts that no carrier call is left."""
    from optc.codegen.build import prepare
    from optc.lowering import lower

    mod = prepare(lower(optc.from_onnx(model)), None, target)
    assert "nn.attention" not in mod["main"].script()
    return any(gv.name_hint.startswith("fused_attention") for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc))


def _check(model, feeds, rtol=2e-5, atol=2e-6):
    got = optc.compile(model).run(feeds)
    want = run_reference(model, feeds)
    for o, w in zip(model.graph.output, want, strict=True):
        np.testing.assert_allclose(got[o.name], w, rtol=rtol, atol=atol)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("case", ["3d", "4d_causal", "gqa_bool_mask", "past_cache", "padded_mask"])
def test_attention_nodes_use_the_fused_kernel_and_match_the_reference(case):
    rng = np.random.default_rng(3)
    attrs, node_inputs, outputs = {}, None, ["Y"]
    if case == "3d":
        feeds = {"Q": _rand(rng, 2, 11, 2 * 16), "K": _rand(rng, 2, 11, 2 * 16), "V": _rand(rng, 2, 11, 2 * 8)}
        attrs = {"q_num_heads": 2, "kv_num_heads": 2}
    elif case == "4d_causal":
        feeds = {"Q": _rand(rng, 1, 3, 17, 8), "K": _rand(rng, 1, 3, 17, 8), "V": _rand(rng, 1, 3, 17, 8)}
        attrs = {"is_causal": 1, "scale": 0.3}
    elif case == "gqa_bool_mask":
        feeds = {"Q": _rand(rng, 1, 4, 6, 8), "K": _rand(rng, 1, 2, 9, 8), "V": _rand(rng, 1, 2, 9, 16),
                 "attn_mask": rng.random((6, 9)) < 0.6}
        feeds["attn_mask"][2] = False  # a fully masked row
    elif case == "past_cache":
        feeds = {"Q": _rand(rng, 1, 2, 3, 8), "K": _rand(rng, 1, 2, 3, 8), "V": _rand(rng, 1, 2, 3, 8),
                 "past_key": _rand(rng, 1, 2, 5, 8), "past_value": _rand(rng, 1, 2, 5, 8)}
        node_inputs = ["Q", "K", "V", "", "past_key", "past_value"]
        outputs = ["Y", "present_key", "present_value"]
        attrs = {"is_causal": 1}
    else:  # a float mask shorter than the keys: padded with -inf
        feeds = {"Q": _rand(rng, 2, 1, 5, 8), "K": _rand(rng, 2, 1, 12, 8), "V": _rand(rng, 2, 1, 12, 8),
                 "attn_mask": _rand(rng, 2, 1, 5, 10)}
    model = _attention_model(feeds, outputs, node_inputs, **attrs)
    assert _fused(model)
    _check(model, feeds)


@pytest.mark.parametrize("case", ["softcap", "scores_output", "float64", "mask_of_another_length"])
def test_attention_outside_the_kernel_keeps_the_decomposition(case):
    """Negative cases: a softcap, the QK output, a float64 model, or a mask whose symbolic key length is not
    provably the keys' (it may be 1 and broadcast) are computed by the decomposed form, and still match the
    reference (the mask at the keys' length and at 1)."""
    rng = np.random.default_rng(4)
    feeds = {"Q": _rand(rng, 1, 2, 6, 8), "K": _rand(rng, 1, 2, 7, 8), "V": _rand(rng, 1, 2, 7, 8)}
    attrs, outputs, shapes = {}, ["Y"], None
    if case == "softcap":
        attrs = {"softcap": 2.0}
    elif case == "scores_output":
        outputs = ["Y", "", "", "qk"]
        attrs = {"qk_matmul_output_mode": 1}
    elif case == "float64":
        feeds = {n: x.astype(np.float64) for n, x in feeds.items()}
    else:
        shapes = {n: [1, 2, "s" if n == "Q" else "t", 8] for n in feeds} | {"attn_mask": ["m", "t"]}
        feeds["attn_mask"] = _rand(rng, 6, 7)
    if case == "float64":
        model = _attention_model({n: x.astype(np.float32) for n, x in feeds.items()}, outputs, **attrs)
        for vi in list(model.graph.input) + list(model.graph.output):
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    else:
        model = _attention_model(feeds, outputs, shapes=shapes, **attrs)
    assert not _fused(model)
    _check(model, feeds, rtol=1e-5, atol=1e-6)
    if case == "mask_of_another_length":
        _check(model, {**feeds, "attn_mask": feeds["attn_mask"][:1]}, rtol=1e-5, atol=1e-6)


def test_causal_attention_with_a_mask_of_other_symbols():
    """is_causal with a mask [ms, t] whose query dim is another symbol (1 or the query length when it runs): the
    causal bias and the mask broadcast against each other by the checked kernel (the converter failed on the
    sum's unknown shape). Checked against a float64 numpy form of the spec (onnx's reference builds the causal
    mask from the mask's own dims)."""
    rng = np.random.default_rng(7)
    shapes = {"Q": ["b", 2, "s", 8], "K": ["b", 2, "t", 8], "V": ["b", 2, "t", 8], "M": ["ms", "t"]}
    feeds = {"Q": _rand(rng, 1, 2, 5, 8), "K": _rand(rng, 1, 2, 6, 8), "V": _rand(rng, 1, 2, 6, 8),
             "M": _rand(rng, 5, 6)}
    module = optc.compile(_attention_model(feeds, ["Y"], shapes=shapes, is_causal=1))
    for ms in (5, 1):
        mask = feeds["M"][:ms]
        q, k, v = (feeds[n].astype(np.float64) for n in "QKV")
        causal = np.where(np.arange(6)[None, :] <= np.arange(5)[:, None], 0.0, -np.inf)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8) + mask + causal
        p = np.exp(scores - scores.max(-1, keepdims=True))
        want = (p / p.sum(-1, keepdims=True)) @ v
        np.testing.assert_allclose(module.run({**feeds, "M": mask})["Y"], want, rtol=2e-5, atol=2e-6)


def test_attention_whose_query_and_key_batches_are_other_symbols():
    """Q [b, ...] and K, V [bk, ...] (equal when it runs): not the fused kernel (the batches are not provably
    one), the decomposition's matmuls align the batch dims (the build failed on an unknown product shape)."""
    rng = np.random.default_rng(8)
    shapes = {"Q": ["b", 2, "s", 8], "K": ["bk", 2, "t", 8], "V": ["bk", 2, "t", 8]}
    feeds = {"Q": _rand(rng, 2, 2, 5, 8), "K": _rand(rng, 2, 2, 6, 8), "V": _rand(rng, 2, 2, 6, 8)}
    model = _attention_model(feeds, ["Y"], shapes=shapes)
    assert not _fused(model)
    _check(model, feeds)


def _symbolic_cases(rng, s: int, t: int, case: str):
    """(feeds, node inputs, outputs, attrs, symbolic shapes) of an Attention whose query length s and key length
    t are symbolic ("s", "t"; batch "b" too)."""
    node_inputs, outputs, attrs = None, ["Y"], {}
    if case == "3d":
        feeds = {"Q": _rand(rng, 2, s, 32), "K": _rand(rng, 2, t, 32), "V": _rand(rng, 2, t, 16)}
        shapes = {"Q": ["b", "s", 32], "K": ["b", "t", 32], "V": ["b", "t", 16]}
        attrs = {"q_num_heads": 2, "kv_num_heads": 2}
    elif case == "causal":
        feeds = {n: _rand(rng, 1, 3, s if n == "Q" else t, 8) for n in "QKV"}
        shapes = {n: ["b", 3, "s" if n == "Q" else "t", 8] for n in "QKV"}
        attrs = {"is_causal": 1, "scale": 0.3}
    elif case == "gqa_bool_mask":
        feeds = {"Q": _rand(rng, 1, 4, s, 8), "K": _rand(rng, 1, 2, t, 8), "V": _rand(rng, 1, 2, t, 16),
                 "attn_mask": rng.random((s, t)) < 0.6}
        if s > 2:
            feeds["attn_mask"][2] = False  # a fully masked row
        shapes = {"Q": ["b", 4, "s", 8], "K": ["b", 2, "t", 8], "V": ["b", 2, "t", 16], "attn_mask": ["s", "t"]}
    elif case == "padding_mask":  # a per-batch key-padding mask [b, 1, 1, t]
        feeds = {"Q": _rand(rng, 3, 2, s, 8), "K": _rand(rng, 3, 2, t, 8), "V": _rand(rng, 3, 2, t, 8),
                 "attn_mask": np.where(rng.random((3, 1, 1, t)) < 0.3, -np.inf, 0).astype(np.float32)}
        if t:
            feeds["attn_mask"][1] = -np.inf  # a batch all padding
        shapes = {"Q": ["b", 2, "s", 8], "K": ["b", 2, "t", 8], "V": ["b", 2, "t", 8], "attn_mask": ["b", 1, 1, "t"]}
    else:  # a cache of symbolic length p before t new keys: keys p + t
        p = max(s - 1, 0)
        feeds = {"Q": _rand(rng, 1, 2, s, 8), "K": _rand(rng, 1, 2, t, 8), "V": _rand(rng, 1, 2, t, 8),
                 "past_key": _rand(rng, 1, 2, p, 8), "past_value": _rand(rng, 1, 2, p, 8)}
        shapes = {"Q": ["b", 2, "s", 8], "K": ["b", 2, "t", 8], "V": ["b", 2, "t", 8],
                  "past_key": ["b", 2, "p", 8], "past_value": ["b", 2, "p", 8]}
        node_inputs = ["Q", "K", "V", "", "past_key", "past_value"]
        outputs = ["Y", "present_key", "present_value"]
    return feeds, node_inputs, outputs, attrs, shapes


@pytest.mark.parametrize("case", ["3d", "causal", "gqa_bool_mask", "padding_mask", "past_cache"])
def test_symbolic_sequences_use_the_fused_kernel(case):
    """Batch and sequence lengths known only at run time (a dynamic-axes export's): one library built with the
    fused kernel, matching the reference at many lengths, 1 and 0 included (no key: Y is 0; no query: empty)."""
    rng = np.random.default_rng(6)
    feeds, node_inputs, outputs, attrs, shapes = _symbolic_cases(rng, 5, 7, case)
    model = _attention_model(feeds, outputs, node_inputs, shapes=shapes, **attrs)
    assert _fused(model)
    module = optc.compile(model)
    for s, t in ((5, 7), (1, 1), (1, 40), (17, 17), (33, 100), (0, 4), (3, 0)):
        if case == "past_cache" and t == 0:
            continue
        feeds = _symbolic_cases(rng, s, t, case)[0]
        got = module.run(feeds)
        if 0 in (s, t):  # (the reference evaluator cannot reduce an empty softmax) the spec's empty or zero Y
            q = feeds["Q"]
            dv = feeds["V"].shape[-1]
            want = (q.shape[0], s, dv) if q.ndim == 3 else (q.shape[0], q.shape[1], s, dv)
            assert got["Y"].shape == want and not np.any(got["Y"]), (s, t, got["Y"].shape)
            continue
        for o, w in zip(model.graph.output, run_reference(model, feeds), strict=True):
            assert got[o.name].shape == w.shape, (s, t, o.name)
            np.testing.assert_allclose(got[o.name], w, rtol=2e-5, atol=2e-6, err_msg=f"s={s} t={t}")


def test_gpu_target_gets_the_decomposition():
    """The fused kernel is for CPUs; a CUDA target gets the decomposed form (no carrier call left for TVM's own
    legalization, whose softmax differs from the spec's)."""
    rng = np.random.default_rng(5)
    feeds = {"Q": _rand(rng, 1, 2, 6, 8), "K": _rand(rng, 1, 2, 7, 8), "V": _rand(rng, 1, 2, 7, 8)}
    assert _fused(_attention_model(feeds, ["Y"]))
    assert not _fused(_attention_model(feeds, ["Y"]), target="cuda")


def _decomposed_causal(b=1, s=5, t=6, heads=2, size=8) -> onnx.ModelProto:
    """Opset-17 attention as exporters write it: heads split by Reshape + Transpose, MatMul, Div by sqrt(size), a
    causal Where(tril, scores, -inf), Softmax, MatMul, heads merged."""
    n = helper.make_node
    inits = [onnx.numpy_helper.from_array(np.array([b, -1, heads, size], np.int64), "split"),
             onnx.numpy_helper.from_array(np.array([b, -1, heads * size], np.int64), "merge"),
             onnx.numpy_helper.from_array(np.array(np.sqrt(size), np.float32), "root"),
             onnx.numpy_helper.from_array(np.tril(np.ones((s, t), bool)), "cond"),
             onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "fill")]
    nodes = [n("Reshape", ["q", "split"], ["q4"]), n("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
             n("Reshape", ["k", "split"], ["k4"]), n("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
             n("Reshape", ["v", "split"], ["v4"]), n("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
             n("MatMul", ["qt", "kt"], ["s0"]), n("Div", ["s0", "root"], ["s1"]),
             n("Where", ["cond", "s1", "fill"], ["s2"]), n("Softmax", ["s2"], ["p"], axis=-1),
             n("MatMul", ["p", "vt"], ["o"]), n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             n("Reshape", ["ot", "merge"], ["y"])]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [b, s if x == "q" else t, heads * size])
              for x in "qkv"]
    graph = helper.make_graph(nodes, "causal", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_compile_fuses_exported_attention_only_with_fast_math():
    """The fused Attention adds its mask where the graph's Where replaced the masked scores, so a NaN in a key
    that some queries mask spoils their rows too (a documented fast-math difference); a key past every row's last
    open key is left out of the kernel's work, so its NaN reaches no row, as in the graph. Without fast math the
    compile keeps the graph's attention and matches the reference, NaN key and all."""
    from optc.codegen.build import prepare
    from optc.lowering import lower
    from optc.rewrites import optimize

    model = _decomposed_causal()
    fused = optimize(optc.from_onnx(model), level=2, runtime="standard")
    assert any(nd.op_type == "Attention" for nd in fused.graph)
    assert "fused_attention" in "".join(gv.name_hint for gv in prepare(lower(fused), None, "cpu").get_global_vars())

    rng = np.random.default_rng(6)
    feeds = {x: _rand(rng, 1, 5 if x == "q" else 6, 16) for x in "qkv"}
    np.testing.assert_allclose(optc.compile(model).run(feeds)["y"], run_reference(model, feeds)[0],
                               rtol=2e-5, atol=2e-6)  # finite scores: the fused form within rounding
    feeds["k"][0, 5] = np.nan  # key 5: masked for every query row, past every row's last open key
    want = run_reference(model, feeds)[0]
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(optc.compile(model, fast_math=False).run(feeds)["y"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optc.compile(model).run(feeds)["y"], want, rtol=2e-5, atol=2e-6)
    feeds["k"][0, 5] = 1.0
    feeds["k"][0, 3] = np.nan  # key 3: open for query rows 3 and 4, masked for rows 0-2 (in their block)
    want = run_reference(model, feeds)[0]
    assert np.all(np.isfinite(want[0, :3])) and np.all(np.isnan(want[0, 3:]))
    np.testing.assert_allclose(optc.compile(model, fast_math=False).run(feeds)["y"], want, rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(optc.compile(model).run(feeds)["y"]))  # the documented fast-math corner


def _runtime_mask_attention(b=2, s=5, heads=2, size=8) -> onnx.ModelProto:
    """GPT-2's mask as its TorchScript export writes it: allowed = tril & (mask[:, None, :] != 0) from an int64
    [b, s] input, bias = Where(allowed, 0, finfo.min)[:, None] added to the scores. A sequence whose first keys
    are padding has query rows with every key masked (finite fill: the graph's row is uniform, the mean of V)."""
    n = helper.make_node
    inits = [onnx.numpy_helper.from_array(np.array([b, s, heads, size], np.int64), "split"),
             onnx.numpy_helper.from_array(np.array([b, s, heads * size], np.int64), "merge"),
             onnx.numpy_helper.from_array(np.array(np.sqrt(size), np.float32), "root"),
             onnx.numpy_helper.from_array(np.tril(np.ones((1, s, s), bool)), "causal"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
             onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array(0.0, np.float32), "kept"),
             onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fill")]
    nodes = [n("Reshape", ["x", "split"], ["q4"]), n("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
             n("Reshape", ["x", "split"], ["k4"]), n("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
             n("Reshape", ["x", "split"], ["v4"]), n("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
             n("Unsqueeze", ["mask", "one"], ["m3"]), n("Equal", ["m3", "zero"], ["pad"]), n("Not", ["pad"], ["key"]),
             n("And", ["causal", "key"], ["allowed"]), n("Where", ["allowed", "kept", "fill"], ["b3"]),
             n("Unsqueeze", ["b3", "one"], ["bias"]),
             n("MatMul", ["qt", "kt"], ["s0"]), n("Div", ["s0", "root"], ["s1"]), n("Add", ["s1", "bias"], ["s2"]),
             n("Softmax", ["s2"], ["p"], axis=-1), n("MatMul", ["p", "vt"], ["o"]),
             n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), n("Reshape", ["ot", "merge"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, heads * size]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, [b, s])]
    graph = helper.make_graph(nodes, "gpt2_mask", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_compile_fuses_attention_whose_mask_can_mask_a_whole_row():
    """A mask computed at run time that can mask a whole query row: the standard form for onnxruntime refuses it
    (onnxruntime's Attention writes zeros for such a row), the form optc compile uses fuses it (its kernel, like
    the graph, gives a uniform row for a finite fill: the mean of V), and the compiled library matches
    onnxruntime's run of the graph, padded rows included."""
    from optc.rewrites import optimize

    from .conftest import run_ort

    model = _runtime_mask_attention()
    ops = lambda rt: [nd.op_type for nd in optimize(optc.from_onnx(model), level=2, runtime=rt).graph]  # noqa: E731
    assert "Attention" not in ops("standard") and "Softmax" in ops("standard")
    assert "Attention" in ops("optc") and "Softmax" not in ops("optc")
    rng = np.random.default_rng(8)
    feeds = {"x": _rand(rng, 2, 5, 16), "mask": np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int64)}
    want = run_ort(model, feeds)[0]
    got = optc.compile(model).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    v = feeds["x"][0, :, :8]  # head 0 of the first sequence: rows 0 and 1 see only padding keys
    np.testing.assert_allclose(got[0, :2, :8], np.broadcast_to(v.mean(0), (2, 8)), rtol=2e-5, atol=2e-6)
