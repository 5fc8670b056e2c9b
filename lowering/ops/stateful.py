"""optc's converters for ONNX's stateful sequence ops: CausalConvWithState and LinearAttention (opset 27),
TensorScatter (opset 24) and FlexAttention (domain ai.onnx.preview, version 1).

TVM's frontend has none of them. The converters follow the operator text of the ONNX spec (onnx/defs/nn/defs.cc
and onnx/defs/tensor/defs.cc) and compute what onnx's reference implementations compute
(onnx/reference/ops/op_causal_conv_with_state.py, op_linear_attention.py, op_tensor_scatter.py and
aionnx_preview/op_flex_attention.py), in the same precision: where the reference computes in float32 and
casts back (SiLU, the LinearAttention recurrence, FlexAttention's softmax of half-precision inputs), so do they.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, converter, dims_of, dtype_of, refuse
from .transformer import _FLOATS, _ONNX_FLOAT, _cast, _matmul, _positions, _scalar, _static

_MAX_STEPS = 256  # the longest LinearAttention sequence whose recurrence is unrolled


def _opt(inputs, i: int):
    """Input `i`, or None where it is omitted."""
    return inputs[i] if len(inputs) > i else None


def _text(attrs: dict, name: str, default: str) -> str:
    value = attrs.get(name, default)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _same(a, b) -> bool:
    """False only where two dims are both static and differ."""
    return not (_static(a) and _static(b)) or a == b


def _shape(x) -> list:
    """The dims of a tensor (ints where static), refused where TVM does not know its shape."""
    if not isinstance(x.ty.shape, relax.ShapeExpr):
        raise refuse("an input of unknown shape is not supported by the TVM back end here")
    return dims_of(x)


def _check_dims(name: str, x, want: list) -> None:
    """Refuse `x` unless its rank is len(want) and its static dims match `want`'s (None: any)."""
    if x.ty.ndim != len(want):
        raise refuse(f"{name} of rank {x.ty.ndim} is invalid here (expected rank {len(want)})")
    got = _shape(x)
    if any(w is not None and not _same(g, w) for g, w in zip(got, want, strict=True)):
        shown = ", ".join("?" if w is None else str(w) for w in want)
        raise refuse(f"{name} of shape {tuple(got)} is invalid here (expected ({shown}))")


def _zeros(bb, shape: list, dtype: str):
    """A zero tensor of `shape` (dims may be symbolic), as a broadcast 0-d constant."""
    return bb.normalize(relax.op.broadcast_to(_scalar(bb, 0.0, dtype), shape))


def _window(bb, x, axis: int, begin, size):
    """x's positions [begin, begin + size) along `axis`; with a symbolic bound, a take of an arange (TVM's
    strided_slice shape of symbolic bounds holds an if_then_else that its VM cannot lower)."""
    if _static(begin) and _static(size):
        return bb.normalize(relax.op.strided_slice(x, [axis], [begin], [begin + size]))
    return bb.normalize(relax.op.take(x, _positions(bb, begin, begin + size), axis=axis, mode="clip"))


def _silu(bb, x):
    """x * sigmoid(x) computed in float32 and cast back to x's type, as the references do (float64 too)."""
    t = dtype_of(x)
    xf = _cast(bb, x, "float32")
    return _cast(bb, bb.normalize(relax.op.multiply(xf, relax.op.sigmoid(xf))), t)


# -- CausalConvWithState -------------------------------------------------------------------------------------------


@converter("", "CausalConvWithState")
def causal_conv_with_state(bb, inputs, attrs, ctx):
    """ONNX CausalConvWithState (opset 27): a depthwise causal conv1d over a carried state.

    input (B, C, L), weight (C, 1, K), optional bias (C,) and past_state (B, C, K - 1), all of one float type
    T; outputs output (B, C, L) and present_state (B, C, K - 1): the last K - 1 positions of past_state ++ input
    (zeros when past_state is omitted). activation 'silu'/'swish' applies x * sigmoid(x) in float32. Half
    precision products accumulate in float32; the sum is rounded to T once, as the reference's conv does.
    """
    x, w, bias, past = inputs[0], inputs[1], _opt(inputs, 2), _opt(inputs, 3)
    t = dtype_of(x)
    if t not in _FLOATS:
        raise refuse(f"CausalConvWithState on {t} is not supported (the input must be a float type)")
    for name, v in (("weight", w), ("bias", bias), ("past_state", past)):
        if v is not None and dtype_of(v) != t:
            raise refuse(f"CausalConvWithState with {name} of type {dtype_of(v)} and input of type {t} is invalid")
    activation = _text(attrs, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise refuse(f"CausalConvWithState with activation '{activation}' is invalid (none, silu or swish)")
    if x.ty.ndim != 3:
        raise refuse(f"CausalConvWithState needs a rank-3 input (batch, channels, length), got rank {x.ty.ndim}")
    batch, channels, length = _shape(x)
    if w.ty.ndim != 3 or not _static(_shape(w)[2]):
        raise refuse("CausalConvWithState needs a rank-3 weight (channels, 1, k) with a static kernel size k")
    k = _shape(w)[2]
    if k < 1:
        raise refuse("CausalConvWithState with kernel size 0 is invalid")
    _check_dims("CausalConvWithState weight", w, [channels, 1, k])
    if bias is not None:
        _check_dims("CausalConvWithState bias", bias, [channels])
    if past is not None:
        _check_dims("CausalConvWithState past_state", past, [batch, channels, k - 1])

    if k == 1:
        padded = x
    else:
        pad = past if past is not None else _zeros(bb, [batch, channels, k - 1], t)
        padded = bb.normalize(relax.op.concat([pad, x], axis=2))
    acc = "float32" if t in ("float16", "bfloat16") else t
    taps = _cast(bb, bb.normalize(relax.op.permute_dims(w, [1, 0, 2])), acc)  # (1, C, K)
    padded_acc = _cast(bb, padded, acc)
    out = None
    for j in range(k):  # output[..., i] = sum_j weight[:, 0, j] * padded[..., i + j]
        term = bb.normalize(relax.op.multiply(_window(bb, padded_acc, 2, j, length), _window(bb, taps, 2, j, 1)))
        out = term if out is None else bb.normalize(relax.op.add(out, term))
    if bias is not None:
        out = bb.normalize(relax.op.add(out, relax.op.reshape(_cast(bb, bias, acc), [1, channels, 1])))
    out = _cast(bb, out, t)
    if activation != "none":
        out = _silu(bb, out)
    present = _window(bb, padded, 2, length, k - 1)
    return relax.Tuple([out, present])


# -- LinearAttention ---------------------------------------------------------------------------------------------


def _static_last(name: str, x) -> int:
    if x.ty.ndim != 3:
        raise refuse(f"LinearAttention needs a rank-3 {name} (batch, sequence, heads * size), got rank {x.ty.ndim}")
    last = _shape(x)[2]
    if not _static(last):
        raise refuse(f"LinearAttention with a symbolic last dim of {name} is not supported by the TVM back end")
    return last


@converter("", "LinearAttention")
def linear_attention(bb, inputs, attrs, ctx):
    """ONNX LinearAttention (opset 27): the linear / gated / delta / gated_delta recurrence, unrolled over T.

    query (B, T, Hq * dk), key (B, T, Hkv * dk), value (B, T, Hkv * dv) of type T; optional past_state
    (B, Hkv, dk, dv) of type S, decay (B, T, Hkv or Hkv * dk, log-space) and beta (B, T, Hkv or 1). Outputs
    output (B, T, Hq * dv) of type T and present_state (B, Hkv, dk, dv) of type S (T without past_state). As
    the reference does, every step is computed in float32. Query head h reads the state of KV head
    h // (Hq / Hkv). T must be static and at most `_MAX_STEPS` (the recurrence is unrolled).
    """
    q, k, v = inputs[0], inputs[1], inputs[2]
    past, decay, beta = _opt(inputs, 3), _opt(inputs, 4), _opt(inputs, 5)
    t = dtype_of(q)
    if t not in _FLOATS:
        raise refuse(f"LinearAttention on {t} is not supported (query must be a float type)")
    for name, x in (("key", k), ("value", v), ("decay", decay), ("beta", beta), ("past_state", past)):
        if x is not None and dtype_of(x) not in _FLOATS:
            raise refuse(f"LinearAttention with {name} of type {dtype_of(x)} is invalid (a float type)")
    rule = _text(attrs, "update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise refuse(f"LinearAttention with update_rule '{rule}' is invalid (linear, gated, delta or gated_delta)")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gating != (decay is not None):
        raise refuse(f"LinearAttention with update_rule '{rule}' {'needs' if gating else 'forbids'} the decay input")
    if delta != (beta is not None):
        raise refuse(f"LinearAttention with update_rule '{rule}' {'needs' if delta else 'forbids'} the beta input")
    hq, hkv = attrs.get("q_num_heads", 0), attrs.get("kv_num_heads", 0)
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise refuse(f"LinearAttention with q_num_heads={hq}, kv_num_heads={hkv} is invalid (q_num_heads must be "
                     "a positive multiple of kv_num_heads)")
    q_last, k_last, v_last = _static_last("query", q), _static_last("key", k), _static_last("value", v)
    if q_last % hq or v_last % hkv or k_last != hkv * (q_last // hq):
        raise refuse(f"LinearAttention with last dims {q_last} (query), {k_last} (key), {v_last} (value) does not "
                     f"split into {hq} query and {hkv} key/value heads of one key size")
    batch, steps = _shape(q)[:2]
    if not _static(steps):
        raise refuse("LinearAttention with a symbolic sequence length is not supported by the TVM back end (its "
                     "recurrence is unrolled over the static length)")
    if steps > _MAX_STEPS:
        raise refuse(f"LinearAttention over {steps} steps is not supported by the TVM back end (its recurrence is "
                     f"unrolled, up to {_MAX_STEPS} steps)")
    dk, dv, group = q_last // hq, v_last // hkv, hq // hkv
    _check_dims("LinearAttention key", k, [batch, steps, k_last])
    _check_dims("LinearAttention value", v, [batch, steps, v_last])
    f32 = "float32"

    # Every per-step tensor is 5-D (B, 1, Hkv, ., .): each step's output is then a matmul result that the final
    # concat over T reads as it is (reshapes between them fused into one kernel of T blocks, whose scheduling
    # time grew quadratically with T), and each step's kernels are the same PrimFuncs whatever the step.
    def per_step(x, shape: list) -> list:
        """x (B, T, n) in float32 reshaped to (B, T, *shape), as T slices (B, 1, *shape): takes at a constant
        index."""
        x = bb.normalize(relax.op.reshape(_cast(bb, x, f32), [batch, steps, *shape]))
        if steps == 1:
            return [x]
        return [bb.normalize(relax.op.take(x, const(np.array([i], np.int64)), axis=1, mode="clip"))
                for i in range(steps)]

    qs = per_step(q, [hkv, group, dk])  # query head h = kv head * group + g
    ks = per_step(k, [hkv, dk, 1])
    k_rows = per_step(k, [hkv, 1, dk]) if delta else []
    vs = per_step(v, [hkv, 1, dv])
    if decay is not None:
        d_last = _static_last("decay", decay)
        if d_last not in (hkv, hkv * dk):
            raise refuse(f"LinearAttention with a decay last dim of {d_last} is invalid (kv_num_heads={hkv} or "
                         f"kv_num_heads * head size = {hkv * dk})")
        _check_dims("LinearAttention decay", decay, [batch, steps, d_last])
        factor = bb.normalize(relax.op.exp(_cast(bb, decay, f32)))
        gates = per_step(factor, [hkv, 1 if d_last == hkv else dk, 1])
    if beta is not None:
        b_last = _static_last("beta", beta)
        if b_last not in (hkv, 1):
            raise refuse(f"LinearAttention with a beta last dim of {b_last} is invalid (kv_num_heads={hkv} or 1)")
        _check_dims("LinearAttention beta", beta, [batch, steps, b_last])
        betas = per_step(beta, [b_last, 1, 1])
    state_type = t
    if past is not None:
        _check_dims("LinearAttention past_state", past, [batch, hkv, dk, dv])
        state_type = dtype_of(past)
        state = bb.normalize(relax.op.reshape(_cast(bb, past, f32), [batch, 1, hkv, dk, dv]))
    else:
        state = _zeros(bb, [batch, 1, hkv, dk, dv], f32)
    scale = attrs.get("scale", 0.0) or 1.0 / np.sqrt(dk)
    scale = _scalar(bb, np.float32(scale), f32)

    outputs = []
    for i in range(steps):
        if gating:  # S *= exp(g_t)
            state = bb.normalize(relax.op.multiply(state, gates[i]))
        update = vs[i]
        if delta:  # v_t <- beta_t * (v_t - S^T k_t)
            retrieved = bb.normalize(relax.op.matmul(k_rows[i], state))
            update = bb.normalize(relax.op.multiply(betas[i], relax.op.subtract(update, retrieved)))
        state = bb.normalize(relax.op.add(state, relax.op.multiply(ks[i], update)))  # S += k_t (x) v_t
        outputs.append(bb.normalize(relax.op.multiply(relax.op.matmul(qs[i], state), scale)))  # (B, 1, Hkv, G, dv)
    if not outputs:
        out = _zeros(bb, [batch, 0, hq * dv], t)
    else:
        out = outputs[0] if steps == 1 else bb.normalize(relax.op.concat(outputs, axis=1))
        out = bb.normalize(relax.op.reshape(out, [batch, steps, hq * dv]))
    state = bb.normalize(relax.op.reshape(state, [batch, hkv, dk, dv]))
    return relax.Tuple([_cast(bb, out, t), _cast(bb, state, state_type)])


# -- TensorScatter -----------------------------------------------------------------------------------------------


@converter("", "TensorScatter")
def tensor_scatter(bb, inputs, attrs, ctx):
    """ONNX TensorScatter (opset 24): writes `update` into a copy of `past_cache` along `axis`.

    past_cache (B, ..., max_seq, ...) and update (B, ..., seq, ...) of any one type, optional write_indices
    (B,) int64 (zeros when omitted). Batch b's update position s goes to cache position write_indices[b] + s,
    modulo max_seq in 'circular' mode. 'linear' mode computes the same: where its positions are in range they
    are not wrapped, and a negative index counts from the end, as numpy's indexing in the reference does.
    Lowered as one gather from update ++ past_cache: position p reads update[(p - w) mod max_seq] where that
    is < seq, else past_cache[p].
    """
    past, update, indices = inputs[0], inputs[1], _opt(inputs, 2)
    mode = _text(attrs, "mode", "linear")
    if mode not in ("linear", "circular"):
        raise refuse(f"TensorScatter with mode '{mode}' is invalid (linear or circular)")
    if dtype_of(update) != dtype_of(past):
        raise refuse(f"TensorScatter of a {dtype_of(update)} update into a {dtype_of(past)} cache is invalid")
    rank = past.ty.ndim
    if rank < 2 or update.ty.ndim != rank:
        raise refuse(f"TensorScatter needs past_cache and update of one rank >= 2 (got {rank}, {update.ty.ndim})")
    axis = attrs.get("axis", -2)
    if not -rank <= axis < rank or axis % rank == 0:
        raise refuse(f"TensorScatter with axis={axis} is invalid for rank {rank} (not the batch axis 0)")
    axis %= rank
    pd, ud = _shape(past), _shape(update)
    for i, (a, b) in enumerate(zip(pd, ud, strict=True)):
        if i != axis and not _same(a, b):
            raise refuse(f"TensorScatter with past_cache {tuple(pd)} and update {tuple(ud)} is invalid (they differ "
                         f"outside axis {axis})")
    max_seq, seq = pd[axis], ud[axis]
    if _static(max_seq) and _static(seq) and seq > max_seq:
        raise refuse(f"TensorScatter of {seq} positions into a cache of {max_seq} is invalid")
    if _static(seq) and seq == 0:
        return past
    if indices is not None:
        if dtype_of(indices) != "int64" or indices.ty.ndim != 1:
            raise refuse("TensorScatter needs write_indices as a 1-D int64 tensor (batch_size,)")
        _check_dims("TensorScatter write_indices", indices, [pd[0]])
    else:
        indices = _zeros(bb, [pd[0]], "int64")
    one = [1] * rank
    p = bb.normalize(relax.op.reshape(_positions(bb, 0, max_seq), one[:axis] + [max_seq] + one[axis + 1:]))
    w = bb.normalize(relax.op.reshape(indices, [pd[0]] + one[1:]))
    n = bb.normalize(relax.op.reshape(_positions(bb, max_seq, max_seq + 1), []))
    s = bb.normalize(relax.op.floor_mod(relax.op.subtract(p, w), n))  # the update position cache position p gets
    seq_t = bb.normalize(relax.op.reshape(_positions(bb, seq, seq + 1), []))
    index = bb.normalize(relax.op.where(relax.op.less(s, seq_t), s, relax.op.add(p, seq_t)))
    index = bb.normalize(relax.op.broadcast_to(index, pd))
    source = bb.normalize(relax.op.concat([update, past], axis=axis))
    return relax.op.gather_elements(source, index, axis=axis)


# -- FlexAttention -----------------------------------------------------------------------------------------------


def _modifier(bb, ctx, graph, x, name: str):
    """Lower a score_mod / prob_mod subgraph (one rank-4 input, one output of its shape and type) applied to x."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise refuse(f"FlexAttention's {name} needs one input and one output (got {len(graph.inputs)}, "
                     f"{len(graph.outputs)})")
    if any(True for _ in graph.subgraphs()):
        raise refuse(f"FlexAttention with a {name} that holds subgraphs is not supported by the TVM back end")
    t = dtype_of(x)
    arg = graph.inputs[0]
    if arg.dtype and ctx.element_type(arg) != t:  # (an undeclared type is UNDEFINED, 0)
        raise refuse(f"FlexAttention's {name} takes {ctx.element_type(arg)}, but its scores are {t} "
                     "(softmax_precision)")
    (out,) = ctx.lower_subgraph(graph, [x])
    if not isinstance(out.ty, relax.TensorType) or dtype_of(out) != t or out.ty.ndim != 4:
        raise refuse(f"FlexAttention's {name} must return a rank-4 {t} tensor")
    if not all(_same(a, b) for a, b in zip(_shape(out), _shape(x), strict=True)):
        raise refuse(f"FlexAttention's {name} changes the shape {tuple(_shape(x))} to {tuple(_shape(out))}")
    return out


@converter("ai.onnx.preview", "FlexAttention")
def flex_attention(bb, inputs, attrs, ctx):
    """FlexAttention (ai.onnx.preview, version 1): softmax(score_mod(scale * Q K^T)) then prob_mod, times V.

    Q (B, Hq, L, E), K (B, Hkv, S, E), V (B, Hkv, S, Ev) of one float type T; Y (B, Hq, L, Ev) of type T. Q and
    K are each multiplied by sqrt(scale) rounded to float32 then T (scale defaults to 1 / sqrt(E)), their
    product is in T, then cast to the softmax type (softmax_precision; default float32 for half types, else
    T): score_mod, softmax, prob_mod and the product with V are computed there, Y is cast back to T. Query
    head h uses K/V head h // (Hq / Hkv). The modifier subgraphs are lowered inline with the graph's ops.
    """
    q, k, v = inputs[0], inputs[1], inputs[2]
    t = dtype_of(q)
    if t not in _FLOATS:
        raise refuse(f"FlexAttention on {t} is not supported (Q must be a float type)")
    if dtype_of(k) != t or dtype_of(v) != t:
        raise refuse(f"FlexAttention with Q, K, V of types {t}, {dtype_of(k)}, {dtype_of(v)} is invalid (one type)")
    if q.ty.ndim != 4 or k.ty.ndim != 4 or v.ty.ndim != 4:
        raise refuse(f"FlexAttention needs rank-4 Q, K and V (got {q.ty.ndim}, {k.ty.ndim}, {v.ty.ndim})")
    (_, hq, _, e), (_, hk, s, ek), (_, hv, sv, _) = _shape(q), _shape(k), _shape(v)
    if not (_static(hq) and _static(hk) and _static(hv)):
        raise refuse("FlexAttention with a symbolic number of heads is not supported by the TVM back end")
    if hk != hv or not _same(s, sv) or not _same(e, ek):
        raise refuse("FlexAttention with K and V of different heads or lengths, or Q and K of different head "
                     "sizes, is invalid")
    if hk == 0 or hq % hk:
        raise refuse(f"FlexAttention with {hq} query heads and {hk} key/value heads is invalid (not a multiple)")
    precision = attrs.get("softmax_precision")
    if precision is not None and precision not in _ONNX_FLOAT:
        raise refuse(f"FlexAttention with softmax_precision={precision} is not supported (not a float type)")
    compute = _ONNX_FLOAT[precision] if precision is not None else ("float32" if t in ("float16", "bfloat16") else t)
    scale = attrs.get("scale")
    if scale is None:
        if not _static(e):
            raise refuse("FlexAttention with a symbolic head size and no scale attribute is not supported by the "
                         "TVM back end")
        scale = 1.0 / np.sqrt(e)
    with np.errstate(invalid="ignore"):  # a negative scale gives NaN, as the reference's sqrt does
        root = _scalar(bb, np.sqrt(np.float32(scale)), t)
    score_mod, prob_mod = attrs.get("score_mod"), attrs.get("prob_mod")

    if hq != hk:
        k = bb.normalize(relax.op.repeat(k, hq // hk, axis=1))
        v = bb.normalize(relax.op.repeat(v, hq // hk, axis=1))
    qs = bb.normalize(relax.op.multiply(q, root))
    ks = bb.normalize(relax.op.permute_dims(relax.op.multiply(k, root), [0, 1, 3, 2]))
    scores = _cast(bb, _matmul(bb, qs, ks, t), compute)
    if score_mod is not None:
        scores = _modifier(bb, ctx, score_mod, scores, "score_mod")
    m = bb.normalize(relax.op.max(scores, axis=-1, keepdims=True))
    ex = bb.normalize(relax.op.exp(relax.op.subtract(scores, m)))
    probs = bb.normalize(relax.op.divide(ex, relax.op.sum(ex, axis=-1, keepdims=True)))
    if prob_mod is not None:
        probs = _modifier(bb, ctx, prob_mod, probs, "prob_mod")
    return _cast(bb, _matmul(bb, probs, _cast(bb, v, compute), compute), t)
