"""Multi-head attention fusion for transformer exports (BERT-style padding masks, GPT-2-style causal masks).

The block, as the TorchScript exporter and hand-written graphs write it::

    q = Transpose(Reshape(q_in, [B, S, N, H]), perm=[0, 2, 1, 3])          q_in, k_in, v_in: [B, S|T, N*H]
                                                              (or, with static shapes, e.g. the [B*S, N*H] of a Gemm)
    k = Transpose(Reshape(k_in, [B, T, N, H]), perm=[0, 2, 3, 1])           (or perm [0,2,1,3] then [0,1,3,2])
    v = Transpose(Reshape(v_in, [B, T, N, Hv]), perm=[0, 2, 1, 3])
    s = Div(MatMul(q, k), c) | Mul(MatMul(q, k), c) | MatMul(q, k)           c: a scalar constant
                                        (q and k may each be Mul'ed by a scalar first, as torch's MHA does)
    s = Add(s, mask) | Where(cond, s, fill) | s                              mask: additive, any broadcast
    y = Reshape(Transpose(MatMul(Softmax(s, axis=-1), v), perm=[0, 2, 1, 3]), [B, S, N*Hv])
                                         (perm [2, 0, 1, 3], sequence-first, when B = 1)
                                         (the shape constant, or computed from the Transpose's own Shape)

or sequence-first, as torch's nn.MultiheadAttention computes a batch-first module at a batch above 1 (after
`TransposeBetweenReshapes` has moved its head split into one Reshape), q_in, k_in, v_in then [S|T, B, N*H]:

    q = Transpose(Reshape(q_in, [S, B, N, H]), perm=[1, 2, 0, 3])
    k = Transpose(Reshape(k_in, [T, B, N, H]), perm=[1, 2, 3, 0])       (or perm [1,2,0,3] then [0,1,3,2])
    v = Transpose(Reshape(v_in, [T, B, N, Hv]), perm=[1, 2, 0, 3])
    y = Reshape(Transpose(..., perm=[2, 0, 1, 3]), [S, B, N*Hv])         (or the [S*B, N*Hv] of a Gemm)

which becomes Transpose(Attention(Transpose(q_in, [1, 0, 2]), ...), [1, 0, 2]) (Q, K and V all split
sequence-first or all batch-first; the merge's layout is its own). At a symbolic batch b (a dynamic-axes export)
the split is the same after `TransposeBetweenReshapes`, and the merge's [S*b, N*Hv] rows, whose dim the types
leave unnamed, are Reshaped to with the constant target [-1, N*Hv] (the element count says the rows).

Checked: the shapes of the head split and merge (N and H known; the batch and sequence dims of q_in, the
split and the merged output the same); the scale a float scalar (the product of the scales > 0, as
onnxruntime's Attention wants); the mask does not broadcast the scores to a bigger shape; Softmax over the last
axis. The mask stays what it is, an additive [.., .., S, T] bias
(Where(cond, s, fill) becomes the bias Where(cond, 0, fill), for a fill of -inf or <= -1e30 so that s + fill
is fill): a 2-D [batch, seq] mask is never turned into
sequence lengths, so masks with holes and left padding keep their meaning (onnxruntime#18945).

Outputs: the standard `Attention` (opset 23+) or onnxruntime's com.microsoft `MultiHeadAttention` with the
mask as its `attention_bias`; both want the bias's last two dims to be [S, T], so a smaller one is Expanded.
Grouped-query attention with one K/V head (multi-query attention, the head broadcast by the MatMuls) is
fused too (kv_num_heads = 1; for onnxruntime, whose MultiHeadAttention does not take it, as the standard op:
`FuseMultiQueryAttention`); K/V heads repeated in the graph are FuseGroupedQueryAttention's (transformer_gqa.py).
The standard form also needs a kept score in every
row of a constant mask or Where condition, and a constant condition (`check_no_masked_row`): onnxruntime's
Attention computes fully masked rows otherwise than the graph; an additive mask computed at run time is fused only
when its values are bounded above its dtype's minimum (value_bounds.py: BERT's (1 - mask) * -10000 from an integer
mask, not a float mask input) or it is a causal crop keeping a score in every row (a key-padding mask that can
hold the minimum is not: a sequence with every key masked would compute otherwise on onnxruntime).

Rounding: not bit-exact: the fused kernel applies the scale and sums the products in its own order.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...ir.core import Value
from ...ir.types import DataType, TensorType
from ..passes.infer_shapes import crops_trusted, is_crop_of
from ..pattern import ANY, Or, require
from ..rule import Rule
from ._util import full_shape, is_float, minus_one_target, np_dtype, origin_crop
from .transformer_gqa import computed_repeat, unrepeated
from .transformer_norm import MS
from .value_bounds import value_bounds

ROUNDING = "not bit-exact: the fused attention applies the scale and sums the products in its own order"

_SPLIT = [0, 2, 1, 3]
#: the head split of a sequence-first [S, B, N, H] (torch's nn.MultiheadAttention at a batch above 1)
_SEQ_FIRST = [1, 2, 0, 3]
#: K's split straight to [B, N, H, T]: batch-first, sequence-first
_K_SPLIT = ([0, 2, 3, 1], [1, 2, 3, 0])


def _heads(op, x, shape, perms):
    return op.Transpose(op.Reshape(x, shape, _allow_other_inputs=True), perm=lambda p: list(p) in perms)


def attention_pattern(op, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
    splits = (_SPLIT, _SEQ_FIRST)
    q = _heads(op, q_in, qs, splits)
    k = Or(_heads(op, k_in, ks, _K_SPLIT),
           op.Transpose(_heads(op, k_in, ks, splits), perm=[0, 1, 3, 2]))
    v = _heads(op, v_in, vs, splits)
    # PyTorch's nn.MultiheadAttention scales q and k by sqrt(1/sqrt(H)) each before their MatMul
    s = op.MatMul(Or(q, op.Mul(q, qscale.const(scalar=True))), Or(k, op.Mul(k, kscale.const(scalar=True))),
                  _name="scores")
    scaled = Or(op.Div(s, scale.const(scalar=True), _name="div"), op.Mul(s, scale.const(scalar=True)), s)
    masked = Or(op.Add(scaled, mask, _name="add_mask"), op.Where(cond, scaled, fill.const(scalar=True)), scaled)
    o = op.MatMul(op.Softmax(masked, _name="softmax"), v)
    # [0, 2, 1, 3] gives [B, S, N, H]; [2, 0, 1, 3] gives the [S, B, N, H] of a sequence-first layout
    merged = op.Transpose(o, perm=lambda p: list(p) in (_SPLIT, [2, 0, 1, 3]), _name="merge")
    return op.Reshape(merged, Or(_shape_of(op, merged), out_shape), _allow_other_inputs=True)


def _shape_of(op, t):
    """The merge's target shape computed from t's own shape, as exporters of dynamic shapes write it (its Shape
    node must be part of the match): Concat(Slice(Shape(t)), D) or Concat(Unsqueeze(Gather(Shape(t), i)), ...)."""
    sh = op.Shape(t)
    dim = op.Unsqueeze(op.Gather(sh, ANY, axis=0), _allow_other_inputs=True)
    return Or(op.Concat(op.Slice(sh, ANY, ANY, _allow_other_inputs=True), ANY, axis=0),
              op.Concat(dim, op.Unsqueeze(op.Gather(sh, ANY, axis=0), _allow_other_inputs=True), ANY, axis=0))


def _same_dim(a, b) -> bool:
    return a is not None and a == b


def _fits(small, big, crops: bool = False) -> bool:
    """Broadcasting a tensor of shape `small` against `big` gives `big` (dims equal, or 1 in `small`, or a crop of
    `big`'s symbol, min(t, L), which broadcasts against t only where it is t: the op fails otherwise; `crops`:
    the graph's crop names are optc's, `crops_trusted`)."""
    if small is None or big is None or len(small) > len(big):
        return False
    return all(d == 1 or _same_dim(d, b) or (crops and is_crop_of(d, b))
               for d, b in zip(small, big[len(big) - len(small):], strict=True))


def _static(*shapes) -> bool:
    return all(s is not None and all(isinstance(d, int) for d in s) for s in shapes)


def _as_3d(x_shape, want) -> bool | None:
    """How a value that the graph Reshapes to [B, S, N, H] stands for the [B, S, N*H] tensor `want`: False (it
    is one), True (a Reshape to a static `want` makes it one, in the same row-major order: e.g. the [B*S, D] of a
    Gemm), None (it cannot: dynamic dims that differ)."""
    if x_shape is not None and len(x_shape) == 3 and all(_same_dim(a, b) for a, b in zip(x_shape, want, strict=True)):
        return False
    return True if _static(want) else None


def check_scores(m, q, qkv, scale, mask, cond, fill, scores_shape: tuple | None = None) -> float:
    """Checks of the scores part (one float type, Softmax's axis, the scale, the mask); returns the scale.
    `scores_shape`: the scores' dims where their type leaves some unnamed (K's at a computed shape)."""
    require(all(is_float(x) and x.dtype == q.dtype for x in qkv), "Q, K, V are not one float type")
    sm = m["softmax"]
    default_axis = -1 if (m.opset("") or 13) >= 13 else 1
    require(int(sm.attr("axis", default_axis)) in (-1, 3), "Softmax is not over the last axis")
    c = np.asarray(m.const(scale)) if scale is not None else np.ones((), np.float32)
    require(c.dtype.kind == "f" and np.isfinite(c).all() and float(c.reshape(-1)[0]) != 0.0,
            "the scale is not a finite nonzero float")
    value = float(c.reshape(-1)[0])
    if m.get("div") is not None:
        value = 1.0 / value
    for name in ("qscale", "kscale"):  # q and k scaled before their MatMul
        if m.get(name) is not None:
            f = np.asarray(m.const(name))
            require(f.dtype.kind == "f" and np.isfinite(f).all() and float(f.reshape(-1)[0]) != 0.0,
                    "a q / k scale is not a finite nonzero float")
            value *= float(f.reshape(-1)[0])
    # onnxruntime's Attention refuses a scale <= 0 when the session loads (MultiHeadAttention reads 0 as "default")
    require(value > 0.0, "the product of the scales is not positive")
    scores_shape = scores_shape or full_shape(m["scores"].outputs[0])
    if mask is not None:
        require(is_float(mask) and mask.dtype == q.dtype, "the mask is not of the scores' float type")
        require(_fits(full_shape(mask), scores_shape, crops_trusted(m.graph)),
                "the mask broadcasts the scores to another shape")
    if cond is not None:
        require(cond.dtype is not None and DataType(cond.dtype) == DataType.BOOL, "Where's condition is not bool")
        f = float(np.asarray(m.const(fill)).reshape(-1)[0])
        # s + fill must round to fill, as Where writes it (a fully masked row stays uniform): -inf, or a float32
        # fill at or below -1e30 (finfo.min, as exporters write it), which any |s| < 1e22 cannot move
        require(f == -np.inf or (DataType(q.dtype) in (DataType.FLOAT, DataType.DOUBLE) and f <= -1e30),
                "Where's fill is not -inf or <= -1e30: as a bias it would not stand for a masked score")
        require(_fits(full_shape(cond), scores_shape, crops_trusted(m.graph)),
                "the Where broadcasts the scores to another shape")
    return value


def unscaled(read: Value):
    """The node that makes what a MatMul of the matched block reads, through a scale: Mul(x, c) or Mul(c, x)
    (the matcher takes Mul's operands in either order) -> x's producer."""
    node = read.producer
    if node.op_type == "Mul":
        x = next(i for i in node.inputs if i.producer is not None and i.producer.op_type != "Constant")
        node = x.producer
    return node


def _head_split(read: Value):
    """(the head split's Reshape, its Transpose's perm) behind `read`, what a MatMul of the matched block reads as q,
    k or v: through a scale (Mul), K's [0, 1, 3, 2] Transpose after a split, the split's Transpose. Found from the
    MatMuls, not from q_in's uses: q, k and v may be split from one tensor, each its own way (a breaker)."""
    node = unscaled(read)
    inner = node.inputs[0].producer
    if inner.op_type == "Transpose":  # k: the split's Transpose, then [0, 1, 3, 2]
        node, inner = inner, inner.inputs[0].producer
    return inner, [int(p) for p in node.attr("perm")]


def check_attention(m, q_in, k_in, v_in, scale, mask, cond, fill, *, multi_query: bool = False) -> dict:
    """The attention's sizes: {"heads", "kv_heads", "scale", "S", "T", "reshape" (name -> [B, S, D] to Reshape
    it to, or None), "merged" ([B, S, N*Hv]), "out" (a constant target to Reshape the result to, or None)}; rejects
    what is not a plain multi-head attention (`multi_query`: or one K/V head that the MatMuls broadcast over the
    query heads)."""
    shapes, reshape, layouts = {}, {}, set()
    scores, pv = m["scores"], m["merge"].inputs[0].producer
    for name, x, read in (("q", q_in, scores.inputs[0]), ("k", k_in, scores.inputs[1]), ("v", v_in, pv.inputs[1])):
        split, perm = _head_split(read)
        require(split.inputs[0] is x, f"the {name} head split is not of {name}'s input")
        s4 = full_shape(split.outputs[0])
        require(s4 is not None and len(s4) == 4 and isinstance(s4[2], int) and isinstance(s4[3], int),
                f"the {name} head split is not [B, S, N, H] with N and H known")
        want = (s4[0], s4[1], s4[2] * s4[3])
        how = _as_3d(full_shape(x), want)
        require(how is not None, f"the {name} head split is not [B, S, N*H] -> [B, S, N, H]")
        reshape[name] = want if how else None
        seq_first = perm in (_SEQ_FIRST, _K_SPLIT[1])
        layouts.add(seq_first)
        shapes[name] = (s4[1], s4[0], s4[2], s4[3]) if seq_first else s4  # as [B, S, N, H]
    require(len(layouts) == 1, "Q, K and V are not all split sequence-first, nor all batch-first")
    seq_first = layouts.pop()
    q4, k4, v4 = shapes["q"], shapes["k"], shapes["v"]
    n, h = q4[2], q4[3]
    single = k4[2] == v4[2] == 1
    require(k4[2] == v4[2] == n or (multi_query and single), "K/V have another head count" + (
        " (a single K/V head: the standard form's Attention takes it)" if single and not multi_query else ""))
    require(k4[3] == h, "Q and K heads differ in size")
    require(_same_dim(k4[0], q4[0]) and _same_dim(v4[0], q4[0]) and _same_dim(k4[1], v4[1]),
            "Q, K and V disagree on B or T")
    merged = (q4[0], q4[1], n * v4[3])
    # the merge's layout is its own, whatever the split's: o is [B, N, S, Hv] either way; a sequence-first merge
    # ([S, B, N, Hv]) is the fused [B, S, N*Hv] transposed, or at B = 1 Reshaped
    merge_seq_first = list(m["merge"].attr("perm")) != _SPLIT and q4[0] != 1
    out_want = (q4[1], q4[0], n * v4[3]) if merge_seq_first else merged
    # the merge's output: [B, S, N*Hv] itself, or another shape of it that a constant target gives (a static
    # one, or the [S*b, N*Hv] rows of a Gemm at a symbolic batch b as [-1, N*Hv])
    how = _as_3d(full_shape(m.root.outputs[0]), out_want)
    target = None if how is False else minus_one_target(m.root.outputs[0].shape)
    require(how is False or target is not None, "the head merge is not [B, S, N, Hv] -> [B, S, N*Hv]"
            + (" (sequence-first: [S, B, N, Hv] -> [S, B, N*Hv])" if merge_seq_first else ""))
    value = check_scores(m, q_in, (q_in, k_in, v_in), scale, mask, cond, fill)
    return {"heads": n, "kv_heads": k4[2], "scale": value, "S": q4[1], "T": k4[1], "seq_first": seq_first,
            "merge_seq_first": merge_seq_first, "reshape": reshape,
            "out": target, "merged": merged}


def _inputs_3d(op, info, q_in, k_in, v_in):
    """q_in, k_in, v_in as [B, S|T, D] (Reshaped where they are not, Transposed from [S|T, B, D] where they are
    sequence-first)."""
    out = []
    for name, x in (("q", q_in), ("k", k_in), ("v", v_in)):
        want = info["reshape"][name]
        x = x if want is None else op.Reshape(x, np.array(want, np.int64))
        out.append(op.Transpose(x, perm=[1, 0, 2]) if info["seq_first"] else x)
    return out


def _output(op, info, y):
    """The fused [B, S, N*Hv] result as the block's output: Transposed to [S, B, N*Hv] for a sequence-first
    merge, Reshaped where the graph's output is another shape."""
    if info["merge_seq_first"]:
        y = op.Transpose(y, perm=[1, 0, 2])
    return y if info["out"] is None else op.Reshape(y, np.array(info["out"], np.int64))


def _bias(op, m, info, q3, k3, mask, cond, fill):
    """The additive bias [.., .., S, T] the fused ops want, or None without a mask."""
    ms = full_shape(cond if cond is not None else mask)  # Where(cond, 0, fill) has cond's shape
    if cond is not None:
        dtype = np.asarray(m.const(fill)).dtype
        mask = op.Where(cond, np.zeros((), dtype), fill)
    if mask is None:
        return None
    s, t = info["S"], info["T"]
    if isinstance(s, int) and isinstance(t, int):
        if len(ms) == 4 and ms[2] == s and ms[3] == t:
            return mask
        target = op.const(np.array([1, 1, s, t], np.int64), hint="attn_bias_shape")
    else:  # S and T from q's and k's sequence axes (1 in [B, S, D], 2 in [B, N, S, H])
        axis = info.get("seq_axis", 1)
        lo, hi = np.array([axis], np.int64), np.array([axis + 1], np.int64)
        target = op.Concat(np.array([1, 1], np.int64), op.Slice(op.Shape(q3), lo, hi),
                           op.Slice(op.Shape(k3), lo, hi), axis=0)
    return op.Expand(mask, target)


def check_no_masked_row(m, mask, cond) -> None:
    """For the standard Attention: no row of the mask may mask every key. onnxruntime's Attention (1.31) does not
    compute a row whose bias is all -inf or its dtype's minimum as the spec (and the unfused graph) does, a NaN
    row or a uniform average of V: it writes zeros. A Where condition must be a constant with a True in every
    row; an additive mask that is a constant must have a score above max(-1e30, the dtype's minimum) in every row
    (compared in float64; -2 for float16 and bfloat16: `_HALF_MASK_FLOOR`); one computed at run time must be
    bounded above that floor
    (`value_bounds`: BERT's (1 - mask) * -10000 from an integer mask is, a float graph input or a Where that
    writes finfo.min is not), or be a causal crop that keeps a score in every row. A key-padding mask ([.., 1, T])
    that can hold the minimum is refused too: a sequence whose every key is masked would get zeros (a breaker)."""
    if cond is not None:
        c = m.const(cond)
        table = _origin_crop(m, cond) if c is None else None
        require((c is not None and bool(np.all(np.any(c, axis=-1))))
                or (table is not None and _kept_left_of_diagonal(table.astype(bool))),
                "Where's condition is not a constant with a kept score in every row")
    if mask is not None:
        c = m.const(mask)
        dtype = np.dtype(np_dtype(mask) or np.float32)
        floor = _mask_floor(dtype)
        if c is not None:
            require(bool(np.all(np.max(np.asarray(c, np.float64), axis=-1) > floor)),
                    "the mask masks every score of a row")
        else:
            bounds = value_bounds(m, mask)
            require((bounds is not None and bounds[0] > floor) or _cropped_causal(m, mask, floor),
                    "a mask computed at run time may mask every score of a row (it is not bounded above the dtype's "
                    "minimum, nor a causal crop)")


#: the mask floor of 16-bit floats: a bias below it on every score of a row is, added in float16 in the fused kernel,
#: coarser than the scores (float16's spacing at 10000 is 8: the row became the mean of V), while onnxruntime
#: computes the unfused float16 Add and Softmax in float32, which keeps them (a breaker's find); at 2 the spacing
#: is 2^-9 (float16), below the rounding of the scores themselves
_HALF_MASK_FLOOR = -2.0


def _mask_floor(dtype: np.dtype) -> float:
    """The value at or below which a mask element counts as masking its score (`check_no_masked_row`):
    max(-1e30, the dtype's minimum), and `_HALF_MASK_FLOOR` for float16 and bfloat16 (ml_dtypes' bfloat16 is of
    kind 'V')."""
    if dtype.itemsize == 2 and dtype.kind in "fV":
        return _HALF_MASK_FLOOR
    return max(-1e30, float(np.finfo(dtype).min)) if dtype.kind == "f" else -1e30


def _origin_crop(m, v: Value) -> np.ndarray | None:
    """The constant table T when `v` is T cropped from its origin (`origin_crop`) to a shape whose last two dims are
    equal (the same symbol: `causal[:t, :t]` of a dynamic-shape export), else None."""
    shape = full_shape(v)
    return origin_crop(m, v) if shape is not None and len(shape) >= 2 and shape[-1] == shape[-2] else None


def _kept_left_of_diagonal(keep: np.ndarray) -> bool:
    """Every row i of every [.., R, C] matrix of `keep` (bool) keeps a score at some column j <= i: then so does
    every row of its square crops from the origin (row i of `T[:t, :t]` holds columns 0..i)."""
    rows, cols = keep.shape[-2:]
    lower = np.tril(np.ones((rows, cols), bool))
    return bool(np.all(np.any(keep & lower, axis=-1)[..., :min(rows, cols)]))


def _cropped_causal(m, mask: Value, floor: float) -> bool:
    """A mask computed at run time from a square crop of a constant table (`where(causal[:t, :t], 0, fill)` or the
    crop of an additive table) that keeps a score above `floor` left of the diagonal in every row."""
    table = _origin_crop(m, mask)
    if table is not None:
        return table.dtype.kind == "f" and _kept_left_of_diagonal(np.asarray(table, np.float64) > floor)
    node = mask.producer
    if node is None or node.op_type != "Where" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 3:
        return False
    cond = _origin_crop(m, node.inputs[0])
    kept = value_bounds(m, node.inputs[1])
    return cond is not None and kept is not None and kept[0] > floor and _kept_left_of_diagonal(cond.astype(bool))


class FuseAttention(Rule):
    """The multi-head attention block -> Attention(q_in, k_in, v_in, bias) (opset 23+, 3-D inputs); with a
    single K/V head broadcast over the query heads (multi-query attention), kv_num_heads = 1."""

    min_opset: ClassVar[int | None] = 23
    rounding: ClassVar[str] = ROUNDING
    #: whoever runs the fused op computes a fully masked row as the spec says (optc's own lowering): no mask
    #: check (`check_no_masked_row` is for onnxruntime's Attention)
    spec_masked_rows: ClassVar[bool] = False

    def pattern(self, op, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        return attention_pattern(op, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale,
                                 kscale)

    def check(self, m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        m.info = check_attention(m, q_in, k_in, v_in, scale, mask, cond, fill, multi_query=True)
        if not self.spec_masked_rows:
            check_no_masked_row(m, mask, cond)
        return True

    def rewrite(self, op, m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        info = m.info
        q3, k3, v3 = _inputs_3d(op, info, q_in, k_in, v_in)
        bias = _bias(op, m, info, q3, k3, mask, cond, fill)
        return _output(op, info, op.Attention(q3, k3, v3, bias, q_num_heads=info["heads"],
                                              kv_num_heads=info["kv_heads"], scale=info["scale"]))


class FuseMultiQueryAttention(FuseAttention):
    """For onnxruntime: the block with a single K/V head broadcast over the query heads, which com.microsoft
    MultiHeadAttention does not take, -> the standard Attention with kv_num_heads = 1 (opset 23+)."""

    def check(self, m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        super().check(m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale)
        return require(m.info["kv_heads"] == 1 < m.info["heads"], "K/V have the query heads: MultiHeadAttention's")


class FuseMultiHeadAttention(FuseAttention):
    """The multi-head attention block -> com.microsoft MultiHeadAttention(q_in, k_in, v_in, attention_bias)
    (float32)."""

    min_opset: ClassVar[int | None] = None

    def check(self, m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        require(q_in.dtype is not None and DataType(q_in.dtype) == DataType.FLOAT, "not float32")
        m.info = check_attention(m, q_in, k_in, v_in, scale, mask, cond, fill)  # fully masked rows as the graph
        return True

    def rewrite(self, op, m, q_in, k_in, v_in, qs, ks, vs, scale, mask, cond, fill, out_shape, qscale, kscale):
        info = m.info
        q3, k3, v3 = _inputs_3d(op, info, q_in, k_in, v_in)
        bias = _bias(op, m, info, q3, k3, mask, cond, fill)
        y = op.MultiHeadAttention(q3, k3, v3, None, None, bias, _domain=MS, num_heads=info["heads"],
                                  scale=info["scale"])
        y.type = TensorType(q_in.dtype, info["merged"])  # ONNX's inference does not know contrib ops
        return _output(op, info, y)


def core_pattern(op, q4, k4, v4, scale, mask, cond, fill):
    s = op.MatMul(q4, op.Transpose(k4, perm=[0, 1, 3, 2]), _name="scores")
    scaled = Or(op.Div(s, scale.const(scalar=True), _name="div"), op.Mul(s, scale.const(scalar=True)), s)
    masked = Or(op.Add(scaled, mask, _name="add_mask"), op.Where(cond, scaled, fill.const(scalar=True)), scaled)
    return op.MatMul(op.Softmax(masked, _name="softmax"), v4)


class FuseAttention4D(Rule):
    """Attention on [B, N, S, H] heads that are not a plain head split (rotary-embedded q and k, K/V heads
    repeated for grouped-query attention): MatMul(Softmax(MatMul(q, Transpose(k, [0,1,3,2])) * scale + mask), v)
    -> Attention(q, k, v, bias) with 4-D inputs (opset 23+); one K/V head broadcast by the MatMuls is taken as
    it is (multi-query attention). Repeated K/V heads are then taken unrepeated, as grouped-query attention, by
    FuseGroupedQueryAttention (transformer_gqa.py). q made by a head-split Transpose is left to FuseAttention /
    FuseMultiHeadAttention, which also take the split and merge."""

    min_opset: ClassVar[int | None] = 23
    rounding: ClassVar[str] = ROUNDING
    spec_masked_rows: ClassVar[bool] = False  # (as FuseAttention's)

    def pattern(self, op, q4, k4, v4, scale, mask, cond, fill):
        return core_pattern(op, q4, k4, v4, scale, mask, cond, fill)

    def check(self, m, q4, k4, v4, scale, mask, cond, fill):
        p = q4.producer
        require(p is None or p.op_type != "Transpose", "q is a head split: FuseAttention's")
        qs, ks, vs = (full_shape(x) for x in (q4, k4, v4))
        repeats = None
        if qs is not None and (ks is None or vs is None):  # K/V heads repeated at a computed shape: taken unrepeated
            ms = full_shape(cond if cond is not None else mask)
            repeats = [computed_repeat(m, x, ms, mask is not None or cond is not None) for x in (k4, v4)]
            require(all(r is not None for r in repeats), "q, k, v are not 4-D (K or V not a repeat of its heads "
                    "at a computed shape, or one whose mask could broadcast against its length at 0)")
            require(repeats[0][2] == repeats[1][2], "K and V repeat their heads a different number of times")
            ks, vs = repeats[0][3], repeats[1][3]
        require(all(s is not None and len(s) == 4 for s in (qs, ks, vs)), "q, k, v are not 4-D")
        # one K/V head broadcast by the MatMuls over the query heads is multi-query attention (ONNX's Attention
        # reads K/V head j // N for query head j: head 0 for all)
        require(isinstance(qs[1], int) and (_same_dim(qs[1], ks[1]) and _same_dim(qs[1], vs[1])
                                            or ks[1] == vs[1] == 1),
                "q, k, v have different (or unknown) head counts")
        require(_same_dim(qs[3], ks[3]) and _same_dim(ks[2], vs[2]) and _same_dim(qs[0], ks[0])
                and _same_dim(qs[0], vs[0]), "q, k, v disagree on B, T or the head size")
        value = check_scores(m, q4, (q4, k4, v4), scale, mask, cond, fill,
                             (*qs[:3], ks[2]) if repeats else None)
        if not self.spec_masked_rows:
            check_no_masked_row(m, mask, cond)
        m.info = {"scale": value, "S": qs[2], "T": ks[2], "seq_axis": 2, "repeats": repeats}
        return True

    def rewrite(self, op, m, q4, k4, v4, scale, mask, cond, fill):
        if m.info["repeats"]:  # grouped-query attention at once (FuseGroupedQueryAttention's form), its T from K
            k4, v4 = (unrepeated(op, r) for r in m.info["repeats"])
        bias = _bias(op, m, m.info, q4, k4, mask, cond, fill)
        return op.Attention(q4, k4, v4, bias, scale=m.info["scale"])


class FuseAttentionAnyMask(FuseAttention):
    """FuseAttention for optc's own lowering (`fuse-transformer{runtime=optc}`, which `optc compile` runs), which
    computes a fully masked row as the spec does: also with a mask that can mask a whole row (GPT-2's causal +
    padding mask written with finfo.min at run time: such a row is uniform, the graph's mean of V, on both sides)."""

    spec_masked_rows: ClassVar[bool] = True


class FuseAttention4DAnyMask(FuseAttention4D):
    """FuseAttention4D for optc's own lowering (see FuseAttentionAnyMask)."""

    spec_masked_rows: ClassVar[bool] = True
