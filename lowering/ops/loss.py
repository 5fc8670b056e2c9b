"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (ONNX opset 12+), which TVM's frontend lacks.

For input `x` of shape (N, C, d1, ..., dk) and integer `target` of shape (N, d1, ..., dk) (ONNX spec,
onnx/defs/math/defs.cc):

    w[n, d]    = weight[target[n, d]] (1 without weights), and 0 where target[n, d] == ignore_index
    loss[n, d] = -x[n, target[n, d], d] * w[n, d]
    reduction: "none" -> loss; "sum" -> sum(loss); "mean" -> sum(loss) / sum(w)

SoftmaxCrossEntropyLoss is the same on `log_prob = LogSoftmax(scores, axis=1)`, its optional second output.
Targets equal to `ignore_index` may be out of range; they are never used as an index. Any other target outside
[-C, C) fails the call (`indexing.checked_indices`; a negative one counts from the end, as onnxruntime does).
"""

from __future__ import annotations

from tvm import relax

from ..converters import const, converter, dtype_of, refuse
from .indexing import checked_indices


def _nll(bb, ctx, x, target, weight, reduction: str, ignore_index: int | None, op: str):
    dtype = dtype_of(x)
    if x.ty.ndim < 2:
        raise refuse("NegativeLogLikelihoodLoss needs an input of rank 2 or more (N, C, ...)")
    if ignore_index is not None:
        ignored = bb.normalize(relax.op.equal(target, const(ignore_index, dtype_of(target))))
        target = bb.normalize(relax.op.where(ignored, const(0, dtype_of(target)), target))
    index = relax.op.astype(target, "int64") if dtype_of(target) != "int64" else target
    index = checked_indices(bb, ctx, bb.normalize(index), x, 1, 1, op)
    picked = relax.op.squeeze(relax.op.gather_elements(x, relax.op.expand_dims(index, 1), axis=1), [1])
    if weight is not None:
        w = bb.normalize(relax.op.take(weight, index, axis=0))
    else:
        w = bb.normalize(relax.op.ones_like(index, dtype))
    if ignore_index is not None:
        w = bb.normalize(relax.op.where(ignored, const(0, dtype), w))
    loss = bb.normalize(relax.op.negative(relax.op.multiply(picked, w)))
    if reduction == "none":
        return loss
    total = relax.op.sum(loss, None, False)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return relax.op.divide(total, relax.op.sum(w, None, False))
    raise refuse(f"reduction '{reduction}' is not one of none, sum, mean")


def _reduction(attrs) -> str:
    value = attrs.get("reduction", b"mean")
    return value.decode() if isinstance(value, bytes) else str(value)


@converter("", "NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(bb, inputs, attrs, ctx):
    weight = inputs[2] if len(inputs) > 2 else None
    return _nll(bb, ctx, inputs[0], inputs[1], weight, _reduction(attrs), attrs.get("ignore_index"),
                "NegativeLogLikelihoodLoss")


@converter("", "SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(bb, inputs, attrs, ctx):
    scores = inputs[0]
    if scores.ty.ndim < 2:
        raise refuse("SoftmaxCrossEntropyLoss needs scores of rank 2 or more (N, C, ...)")
    log_prob = bb.normalize(relax.op.nn.log_softmax(scores, axis=1))
    weight = inputs[2] if len(inputs) > 2 else None
    loss = bb.normalize(_nll(bb, ctx, log_prob, inputs[1], weight, _reduction(attrs), attrs.get("ignore_index"),
                             "SoftmaxCrossEntropyLoss"))
    if attrs["tvm_custom"]["num_outputs"] > 1:
        return relax.Tuple([loss, log_prob])
    return loss
