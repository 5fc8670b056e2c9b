"""optc's converters for the transformer ops of ONNX opset 23+: Attention, RMSNormalization, RotaryEmbedding.

TVM's frontend converts `Attention` as the com.microsoft contrib op (other inputs and attributes: every ONNX
Attention node failed), has no RotaryEmbedding, and its RMSNormalization fails for a scale that covers more
than the last axis. These converters follow the ONNX spec: the operator text and function bodies of
onnx/defs/nn/defs.cc, and the reference implementations in onnx/reference/ops (op_attention.py, ...).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from ..broadcast import align_batch_dims, align_operands, broadcast_to
from ..converters import const, converter, dims_of, dtype_of, refuse

_FLOATS = ("float16", "float32", "float64", "bfloat16")
_ONNX_FLOAT = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # TensorProto element types


def _static(d) -> bool:
    return isinstance(d, int)


def _is_tensor(x) -> bool:
    """A Relax tensor expression (not a dim: TIR expressions are Exprs too)."""
    return isinstance(getattr(x, "ty", None), relax.TensorType)


def _scalar(bb, value, dtype: str):
    """A 0-d constant of a float `dtype` (bfloat16: a float32 constant cast, numpy has no bfloat16)."""
    if dtype == "bfloat16":
        return bb.normalize(relax.op.astype(const(np.float32(value)), "bfloat16"))
    return const(np.asarray(value, dtype=dtype))


def _cast(bb, x, dtype: str):
    return x if dtype_of(x) == dtype else bb.normalize(relax.op.astype(x, dtype))


def _split_halves(bb, x, axis: int = -1):
    parts = bb.normalize(relax.op.split(x, 2, axis=axis))
    return bb.normalize(relax.TupleGetItem(parts, 0)), bb.normalize(relax.TupleGetItem(parts, 1))


def _positions(bb, start, stop):
    """int64 [start, stop): a constant when both are static, else a Relax arange over TIR expressions."""
    if _static(start) and _static(stop):
        return const(np.arange(start, stop, dtype=np.int64))
    return bb.normalize(relax.op.arange(start, stop, 1, "int64"))


def _difference(a, b):
    """`a - b` for dims, simplified to an int where possible (None when it stays symbolic)."""
    if _static(a) and _static(b):
        return a - b
    from tvm.sym.analyzer import Analyzer

    d = Analyzer().simplify(a - b)
    return int(d.value) if isinstance(d, tirx.IntImm) else None


# -- Attention ------------------------------------------------------------------------------------------------


def _heads_last(bb, x, heads: int, name: str):
    """(batch, seq, heads * size) -> (batch, seq, heads, size), a view."""
    b, s, hidden = dims_of(x)
    if not _static(hidden):
        raise refuse(f"a 3-D {name} with a symbolic hidden size is not supported by the TVM back end")
    if heads <= 0 or hidden % heads:
        raise refuse(f"the hidden size {hidden} of {name} is not a multiple of its {heads} heads")
    return bb.normalize(relax.op.reshape(x, [b, s, heads, hidden // heads]))


def _frontier_bias(bb, sq, skv, offset, allowed, dtype: str):
    """The additive bias (0 where allowed, -inf elsewhere) of a causal or sliding-window frontier:
    `allowed(d)` for d = (i + offset) - j, query i, key j. `offset` is a scalar dim (the bias is (sq, skv)) or
    an int64 tensor of shape (batch,) (the bias is (batch, 1, sq, skv))."""
    j = bb.normalize(relax.op.reshape(_positions(bb, 0, skv), [1, skv]))
    if _is_tensor(offset):
        i = bb.normalize(relax.op.reshape(_positions(bb, 0, sq), [1, sq, 1]))
        i = bb.normalize(relax.op.add(i, relax.op.reshape(offset, [-1, 1, 1])))
    else:
        i = bb.normalize(relax.op.reshape(_positions(bb, offset, offset + sq), [sq, 1]))
    ok = allowed(bb, bb.normalize(relax.op.subtract(i, j)))
    bias = bb.normalize(relax.op.where(ok, _scalar(bb, 0.0, dtype), _scalar(bb, -np.inf, dtype)))
    if _is_tensor(offset):
        bias = bb.normalize(relax.op.expand_dims(bias, 1))
    return bias


def _causal(bb, d):
    return bb.normalize(relax.op.greater_equal(d, const(np.int64(0))))


def _window(left: int, right: int):
    def allowed(bb, d):
        ok = None
        if left >= 0:
            ok = bb.normalize(relax.op.less_equal(d, const(np.int64(left))))
        if right >= 0:
            r = bb.normalize(relax.op.greater_equal(d, const(np.int64(-right))))
            ok = r if ok is None else bb.normalize(relax.op.logical_and(ok, r))
        return ok

    return allowed


def _add(bb, a, b):
    """a + b (b where a is None), an operand whose symbolic dim may broadcast at run time broadcast first (a mask
    [ms, t] and the causal bias [s, t]: the sum's shape was unknown and the converter failed)."""
    if a is None:
        return b
    a, b = align_operands(bb, [a, b])
    return bb.normalize(relax.op.add(a, b))


def _safe_softmax(bb, x):
    """Softmax over the last axis where a row that is all -inf gives zeros, not NaN (the reference's
    `_softmax`); NaN still propagates through its row."""
    dtype = dtype_of(x)
    m = bb.normalize(relax.op.max(x, axis=-1, keepdims=True))
    zero, one = _scalar(bb, 0.0, dtype), _scalar(bb, 1.0, dtype)
    m = bb.normalize(relax.op.where(relax.op.equal(m, _scalar(bb, -np.inf, dtype)), zero, m))
    e = bb.normalize(relax.op.exp(relax.op.subtract(x, m)))
    s = bb.normalize(relax.op.sum(e, axis=-1, keepdims=True))
    s = bb.normalize(relax.op.where(relax.op.equal(s, zero), one, s))
    return bb.normalize(relax.op.divide(e, s))


def _matmul(bb, a, b, dtype: str):
    """a @ b rounded to `dtype`; half-precision products accumulate in float32. Batch dims that are different
    symbols (Q's batch b, K's bk) are aligned first (the product's shape was unknown, which TVM cannot build)."""
    a, b = align_batch_dims(bb, [a, b])
    if dtype in ("float16", "bfloat16"):
        return _cast(bb, bb.normalize(relax.op.matmul(a, b, out_dtype="float32")), dtype)
    return bb.normalize(relax.op.matmul(a, b))


@converter("", "Attention")
def attention(bb, inputs, attrs, ctx):
    # ONNX Attention (opset 23+), not TVM's frontend (which implements com.microsoft's Attention).
    def opt(i):
        return inputs[i] if len(inputs) > i else None

    q, k, v = inputs[0], inputs[1], inputs[2]
    mask, past_k, past_v, nonpad = opt(3), opt(4), opt(5), opt(6)
    t = dtype_of(q)
    if t not in _FLOATS:
        raise refuse(f"Attention on {t} is not supported (Q must be a float type)")
    for name, x in (("K", k), ("V", v), ("past_key", past_k), ("past_value", past_v)):
        if x is not None and dtype_of(x) != t:
            raise refuse(f"Attention with {name} of type {dtype_of(x)} and Q of type {t} is not supported by the "
                         "TVM back end (the spec's function body multiplies them as one type)")
    rank = q.ty.ndim
    if rank not in (3, 4) or k.ty.ndim != rank or v.ty.ndim != rank:
        raise refuse(f"Attention needs Q, K and V of one rank, 3 or 4 (got {q.ty.ndim}, {k.ty.ndim}, {v.ty.ndim})")
    if (past_k is None) != (past_v is None):
        raise refuse("Attention needs past_key and past_value together")
    if nonpad is not None and past_k is not None:
        raise refuse("Attention with both nonpad_kv_seqlen and past_key/past_value is invalid (the spec forbids "
                     "combining them)")
    mode = attrs.get("qk_matmul_output_mode", 0)
    if mode not in (0, 1, 2, 3):
        raise refuse(f"Attention with qk_matmul_output_mode={mode} is invalid (0..3)")
    precision = attrs.get("softmax_precision")
    if precision is not None and precision not in _ONNX_FLOAT:
        raise refuse(f"Attention with softmax_precision={precision} is not supported (not a float type)")
    softmax_dtype = _ONNX_FLOAT[precision] if precision is not None else t
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    if left < -1 or right < -1:
        raise refuse(f"Attention with left_window_size={left}, right_window_size={right} is invalid (-1 or >= 0)")
    softcap = attrs.get("softcap", 0.0)
    if softcap < 0:  # c * tanh(x / c) = |c| * tanh(x / |c|): the function body caps, the reference does not
        raise refuse(f"Attention with a negative softcap ({softcap}) is ambiguous in the spec (its function body "
                     "caps the scores, its reference implementation does not)")
    num_outputs = attrs["tvm_custom"]["num_outputs"]

    # Q, K, V as (batch, heads, seq, head size); the present cache is past ++ new along the sequence axis.
    if rank == 3:
        hq, hkv = attrs.get("q_num_heads", 0), attrs.get("kv_num_heads", 0)
        if not hq or not hkv:
            raise refuse("3-D Attention needs the q_num_heads and kv_num_heads attributes")
        q_heads_last, k_heads_last, v_heads_last = (_heads_last(bb, q, hq, "Q"), _heads_last(bb, k, hkv, "K"),
                                                    _heads_last(bb, v, hkv, "V"))
        q, k, v = (bb.normalize(relax.op.permute_dims(x, [0, 2, 1, 3]))
                   for x in (q_heads_last, k_heads_last, v_heads_last))
    else:
        q_heads_last = k_heads_last = v_heads_last = None
    if past_k is not None:
        if past_k.ty.ndim != 4 or past_v.ty.ndim != 4:
            raise refuse("Attention needs 4-D past_key and past_value")
        k = bb.normalize(relax.op.concat([past_k, k], axis=2))
        v = bb.normalize(relax.op.concat([past_v, v], axis=2))
    present_k, present_v = k, v
    qd, kd, vd = dims_of(q), dims_of(k), dims_of(v)
    hq, hk, hv = qd[1], kd[1], vd[1]
    if not (_static(hq) and _static(hk) and _static(hv)):
        raise refuse("Attention with a symbolic number of heads is not supported by the TVM back end")
    if hk != hv:
        raise refuse(f"Attention with {hk} key heads but {hv} value heads is invalid")
    if hq % hk:
        raise refuse(f"Attention with {hq} query heads and {hk} key/value heads is invalid (not a multiple)")
    batch, sq, skv = qd[0], qd[2], kd[2]

    # The additive attention bias, broadcastable to (batch, q heads, sq, skv). It is built in the float mask's
    # type (or T) and cast to T, as the function body does; 0 and -inf are exact in every float type.
    is_causal = bool(attrs.get("is_causal", 0))
    windowed = left >= 0 or right >= 0
    bias_dtype = dtype_of(mask) if mask is not None and dtype_of(mask) in _FLOATS else t
    bias = None
    if mask is not None:
        md = dims_of(mask)
        if not 1 <= len(md) <= 4:
            raise refuse(f"Attention with a rank-{len(md)} attn_mask is invalid (it must broadcast to "
                         "(batch, heads, q_sequence_length, total_sequence_length))")
        pad = _difference(skv, md[-1])
        if pad is None:
            raise refuse("Attention with an attn_mask whose last dim may differ from the total sequence length "
                         "at run time is not supported by the TVM back end")
        if pad < 0:
            raise refuse(f"Attention with an attn_mask longer ({md[-1]}) than the total sequence length ({skv}) "
                         "is invalid")
        mdt = dtype_of(mask)
        if mdt == "bool":
            mask = bb.normalize(relax.op.where(mask, _scalar(bb, 0.0, bias_dtype), _scalar(bb, -np.inf, bias_dtype)))
        elif mdt not in _FLOATS:
            if pad or is_causal or windowed or nonpad is not None:
                raise refuse(f"Attention with an integer ({mdt}) attn_mask combined with padding, causal, window or "
                             "nonpad_kv_seqlen masking is not supported (-inf has no integer value)")
            mask = _cast(bb, mask, t)
        if pad:
            fill = relax.op.broadcast_to(_scalar(bb, -np.inf, bias_dtype), md[:-1] + [pad])  # (full's legalizer fails)
            mask = bb.normalize(relax.op.concat([mask, bb.normalize(fill)], axis=-1))
        bias = mask
    if is_causal or windowed:
        if nonpad is not None:  # an external cache: the query block ends at each batch's valid length
            offset = bb.normalize(relax.op.subtract(nonpad, _dim_tensor(bb, sq)))
        else:
            offset = dims_of(past_k)[2] if past_k is not None else 0
        if is_causal:
            bias = _add(bb, bias, _frontier_bias(bb, sq, skv, offset, _causal, bias_dtype))
        if windowed:
            bias = _add(bb, bias, _frontier_bias(bb, sq, skv, offset, _window(left, right), bias_dtype))
    if nonpad is not None:
        j = bb.normalize(relax.op.reshape(_positions(bb, 0, skv), [1, skv]))
        valid = bb.normalize(relax.op.less(j, relax.op.reshape(nonpad, [-1, 1])))
        padding = bb.normalize(relax.op.where(valid, _scalar(bb, 0.0, bias_dtype), _scalar(bb, -np.inf, bias_dtype)))
        bias = _add(bb, bias, bb.normalize(relax.op.reshape(padding, [batch, 1, 1, skv])))
    if bias is not None:
        bias = _cast(bb, bias, t)

    scale = attrs.get("scale")
    if scale is None:
        if not _static(qd[3]):
            raise refuse("Attention with a symbolic head size and no scale attribute is not supported by the TVM "
                         "back end")
        scale = 1.0 / np.sqrt(qd[3])
    with np.errstate(invalid="ignore"):  # a negative scale gives NaN, as the spec's Sqrt does
        root = _scalar(bb, np.sqrt(np.float64(scale)), t)  # Q and K are each scaled by sqrt(scale)

    if t == "float32" and softmax_dtype == "float32" and not softcap > 0 and num_outputs <= 3:
        # Only Y and the present cache: one relax attention call (BSNH), which codegen's fused_attention_pass
        # turns into one kernel (CPU) or back into the decomposition below (see ATTENTION_CARRIER).
        def bsnh(x, heads_last):  # a 3-D input's view, else (batch, heads, seq, size) transposed
            return heads_last if heads_last is not None else bb.normalize(relax.op.permute_dims(x, [0, 2, 1, 3]))

        cached = past_k is not None
        qs = bb.normalize(relax.op.multiply(bsnh(q, q_heads_last), root))
        ks = bb.normalize(relax.op.multiply(bsnh(k, None if cached else k_heads_last), root))
        vb = bsnh(v, None if cached else v_heads_last)
        if bias is not None:
            bd = dims_of(bias)
            bias = bb.normalize(relax.op.reshape(bias, [1] * (4 - len(bd)) + list(bd)))
        y = bb.normalize(relax.op.nn.attention(qs, ks, vb, bias, scale=1.0))
        if rank == 3:
            y = bb.normalize(relax.op.reshape(y, [batch, sq, hq * vd[3] if _static(vd[3]) else -1]))
        else:
            y = bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3]))
        return y if num_outputs == 1 else relax.Tuple([y, present_k, present_v][:num_outputs])

    qs = bb.normalize(relax.op.multiply(q, root))
    ks = bb.normalize(relax.op.multiply(relax.op.permute_dims(k, [0, 1, 3, 2]), root))
    qk, capped, scores, probs, y = scaled_dot_product(bb, qs, ks, v, bias, softmax_dtype=softmax_dtype,
                                                      softcap=softcap)
    if rank == 3:
        y = bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3]))
        y = bb.normalize(relax.op.reshape(y, [batch, sq, hq * vd[3] if _static(vd[3]) else -1]))
    if num_outputs == 1:
        return y
    outputs = [y, present_k, present_v, (qk, capped, scores, probs)[mode]]
    return relax.Tuple(outputs[:num_outputs])


#: How the Attention converter hands a float32 attention with no softcap and no scores output to codegen:
#: ``relax.nn.attention(qs, ks, v, bias, scale=1.0)`` (or ``relax.nn.attention_bias``), Q, K (each already
#: multiplied by sqrt(scale)) and V in BSNH layout (batch, seq, heads, size), K/V heads dividing Q's (GQA),
#: ``bias`` an additive float32 bias of rank 4 broadcastable to (batch, q heads, sq, skv), and the softmax the
#: spec's (a fully masked row gives 0, not NaN). TVM's own legalization of the op differs (NaN rows, one head
#: count): codegen's fused_attention_pass must replace every such call, with one kernel or with
#: ``expand_attention``.
ATTENTION_CARRIER = ("relax.nn.attention", "relax.nn.attention_bias")


def expand_attention(bb, qs, ks, v, bias):
    """The decomposed form (matmul, bias, safe softmax, matmul) of an ATTENTION_CARRIER call's arguments:
    returns Y (batch, sq, q heads, v size), BSNH."""
    qh = bb.normalize(relax.op.permute_dims(qs, [0, 2, 1, 3]))
    kh = bb.normalize(relax.op.permute_dims(ks, [0, 2, 1, 3]))
    vh = bb.normalize(relax.op.permute_dims(v, [0, 2, 1, 3]))
    kt = bb.normalize(relax.op.permute_dims(kh, [0, 1, 3, 2]))
    y = scaled_dot_product(bb, qh, kt, vh, bias, softmax_dtype=dtype_of(qs), softcap=0.0)[-1]
    return bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3]))


def scaled_dot_product(bb, qs, ks_t, v, bias, *, softmax_dtype: str, softcap: float):
    """Attention's scores and output from Q (batch, q heads, sq, d), K^T (batch, kv heads, d, skv) -- each already
    multiplied by sqrt(scale) -- and V (batch, kv heads, skv, dv); `bias`: None or the additive bias (Q's type)
    broadcastable to the scores. Returns (qk, capped, scores, probs, y): the spec's QK matmul output modes 0-3
    and Y (batch, q heads, sq, dv)."""
    t = dtype_of(qs)
    hq, hk = dims_of(qs)[1], dims_of(ks_t)[1]
    if hq != hk:  # grouped-query attention: each K/V head serves hq / hk consecutive query heads
        ks_t = bb.normalize(relax.op.repeat(ks_t, hq // hk, axis=1))
        v = bb.normalize(relax.op.repeat(v, hq // hk, axis=1))
    qk = _matmul(bb, qs, ks_t, t)
    if bias is not None and dims_of(bb.normalize(relax.op.add(qk, bias))) is None:
        # a bias dim neither 1 nor provably the scores' (a symbol that may be 1 at run time and broadcast): the
        # sum's shape would be unknown, which TVM cannot legalize, and TOPI would read such a dim as never 1
        bias = broadcast_to(bb, bias, dims_of(qk))
    fully_masked = None
    if bias is not None:
        # A query row whose bias is all -inf attends no key: its probabilities (and Y's row) are 0. (Not
        # max(bias) == -inf: TVM's max reduction starts at the lowest finite value, not at -inf.)
        open_key = relax.op.astype(relax.op.not_equal(bias, _scalar(bb, -np.inf, t)), "int8")
        any_open = bb.normalize(relax.op.max(open_key, axis=-1, keepdims=True))
        fully_masked = bb.normalize(relax.op.equal(any_open, const(np.int8(0))))
    capped = qk
    if softcap > 0:
        cap = _scalar(bb, softcap, t)
        capped = bb.normalize(relax.op.multiply(relax.op.tanh(relax.op.divide(qk, cap)), cap))
    scores = capped if bias is None else bb.normalize(relax.op.add(capped, bias))
    probs = _cast(bb, _safe_softmax(bb, _cast(bb, scores, softmax_dtype)), t)
    if fully_masked is not None:
        probs = bb.normalize(relax.op.where(fully_masked, _scalar(bb, 0.0, t), probs))
    return qk, capped, scores, probs, _matmul(bb, probs, v, t)


def _dim_tensor(bb, n):
    """The dim `n` as an int64 tensor of one element."""
    return _positions(bb, n, n + 1)


# -- RMSNormalization --------------------------------------------------------------------------------------------


def _wider(a: str, b: str) -> str:
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    return max(a, b, key=lambda d: int("".join(c for c in d if c.isdigit())))


@converter("", "RMSNormalization")
def rms_normalization(bb, inputs, attrs, ctx):
    # The function body: XU = Cast(X, stash_type); Normalized = XU / Sqrt(ReduceMean(XU * XU) + epsilon);
    # Y = Cast(Normalized, T) * Scale.
    x, scale = inputs[0], inputs[1]
    t = dtype_of(x)
    rank = x.ty.ndim
    if t not in _FLOATS or dtype_of(scale) not in _FLOATS:
        raise refuse(f"RMSNormalization of {t} X and {dtype_of(scale)} scale is invalid (both must be float types)")
    if rank < 1:
        raise refuse("RMSNormalization needs an input of known rank >= 1")
    axis = attrs.get("axis", -1)
    if not -rank <= axis < rank:
        raise refuse(f"RMSNormalization with axis={axis} is invalid for an input of rank {rank}")
    stash_type = attrs.get("stash_type", 1)
    if stash_type not in _ONNX_FLOAT:
        raise refuse(f"RMSNormalization with stash_type={stash_type} is not supported (not a float type)")
    stash = _ONNX_FLOAT[stash_type]
    xs = _cast(bb, x, stash)
    mean_square = bb.normalize(relax.op.mean(relax.op.multiply(xs, xs), list(range(axis % rank, rank)), keepdims=True))
    eps = _scalar(bb, np.float32(attrs.get("epsilon", 1e-5)), stash)
    rms = bb.normalize(relax.op.sqrt(relax.op.add(mean_square, eps)))
    normalized = _cast(bb, bb.normalize(relax.op.divide(xs, rms)), t)
    st = dtype_of(scale)
    if st == t:
        return relax.op.multiply(normalized, scale)
    # Scale of another type (the function body would not type-check): numpy's promotion, as the reference does.
    wide = _wider(t, st)
    return relax.op.astype(relax.op.multiply(_cast(bb, normalized, wide), _cast(bb, scale, wide)), t)


# -- RotaryEmbedding ---------------------------------------------------------------------------------------------


@converter("", "RotaryEmbedding")
def rotary_embedding(bb, inputs, attrs, ctx):
    x, cos, sin = inputs[0], inputs[1], inputs[2]
    position_ids = inputs[3] if len(inputs) > 3 else None
    t = dtype_of(x)
    if t not in _FLOATS:
        raise refuse(f"RotaryEmbedding on {t} is not supported (the input must be a float type)")
    if dtype_of(cos) != t or dtype_of(sin) != t:
        raise refuse("RotaryEmbedding with cos_cache/sin_cache of another type than the input is invalid")
    rank = x.ty.ndim
    interleaved = bool(attrs.get("interleaved", 0))
    rotary_dim = attrs.get("rotary_embedding_dim", 0)
    dims = dims_of(x)
    if rank == 4:  # (batch, heads, seq, head size): the caches broadcast over axis 1
        x4, head_axis = x, 1
    elif rank == 3:  # (batch, seq, heads * head size) -> (batch, seq, heads, head size)
        heads = attrs.get("num_heads", 0)
        if not heads:
            raise refuse("3-D RotaryEmbedding needs the num_heads attribute")
        if not _static(dims[2]) or dims[2] % heads:
            raise refuse(f"RotaryEmbedding with a hidden size {dims[2]} that is not a static multiple of "
                         f"num_heads={heads} is not supported")
        x4 = bb.normalize(relax.op.reshape(x, [dims[0], dims[1], heads, dims[2] // heads]))
        head_axis = 2
    else:
        raise refuse(f"RotaryEmbedding needs a 3-D or 4-D input (got rank {rank})")
    d4 = dims_of(x4)
    head = d4[3]
    if not _static(head):
        raise refuse("RotaryEmbedding with a symbolic head size is not supported by the TVM back end")
    rotary_dim = rotary_dim or head
    if rotary_dim > head or rotary_dim % 2:
        raise refuse(f"RotaryEmbedding with rotary_embedding_dim={rotary_dim} is invalid for head size {head}")
    half = rotary_dim // 2

    def cache(c):  # (batch, seq, half) -> broadcastable to x4's rotated part
        if position_ids is not None:
            if c.ty.ndim != 2:
                raise refuse("RotaryEmbedding with position_ids needs 2-D cos_cache and sin_cache")
            c = bb.normalize(relax.op.take(c, position_ids, axis=0, mode="wrap"))
        elif c.ty.ndim != 3:
            raise refuse("RotaryEmbedding without position_ids needs 3-D cos_cache and sin_cache")
        width = dims_of(c)[-1]
        if not _static(width) or width < half:
            raise refuse(f"RotaryEmbedding with caches of width {width} for rotary_embedding_dim={rotary_dim} "
                         "is invalid")
        if width > half:  # the function body slices the caches to rotary_embedding_dim / 2
            c = bb.normalize(relax.op.strided_slice(c, [2], [0], [half]))
        c = bb.normalize(relax.op.expand_dims(c, head_axis))
        return bb.normalize(relax.op.expand_dims(c, -1)) if interleaved else c

    cos, sin = cache(cos), cache(sin)
    rotated = x4
    if rotary_dim < head:
        rotated = bb.normalize(relax.op.strided_slice(x4, [3], [0], [rotary_dim]))
        kept = bb.normalize(relax.op.strided_slice(x4, [3], [rotary_dim], [head]))
    if interleaved:  # pairs (x[2i], x[2i+1])
        pairs = bb.normalize(relax.op.reshape(rotated, d4[:3] + [half, 2]))
        x1, x2 = _split_halves(bb, pairs)
    else:  # halves (x[i], x[i + half])
        x1, x2 = _split_halves(bb, rotated)
    real = bb.normalize(relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2)))
    imag = bb.normalize(relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2)))
    out = bb.normalize(relax.op.concat([real, imag], axis=-1))
    if interleaved:
        out = bb.normalize(relax.op.reshape(out, d4[:3] + [rotary_dim]))
    if rotary_dim < head:
        out = bb.normalize(relax.op.concat([out, kept], axis=-1))
    return relax.op.reshape(out, dims) if rank == 3 else out
