"""Least-squares reconstruction after structured pruning (`reconstruct`): refit the weights of the layers that
read pruned channels so that, on calibration data, they compute what the unpruned model computed.

When pruning removes input channels of a Conv/Gemm/MatMul (a *consumer*), its output drifts. Each consumer's
weight W and bias b are refitted, one layer at a time in graph order, by ridge least squares:

    minimize  ||P [W; b] - T||^2 + lam * ||[W; b] - [W0; b0]||^2

P: the consumer's input rows in the pruned model (im2col patches for a Conv, a sample or a token per row for a
Gemm/MatMul) with a ones column for the bias; T: the same layer's output in the original model, at the output
channels it keeps; W0, b0: the pruned weights, so that where the data says little the fit stays near them. This
is the reconstruction step of He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural Networks"
(ICCV 2017) and of Luo, Wu and Lin, "ThiNet" (ICCV 2017); here the prune pass's criterion chooses the channels.
Layers are refitted in order, each from the input that the refitted layers before it produce, so a layer also
makes up for what an earlier one could not.

lam is chosen among `RIDGE` x mean(diag(P^T P)) on the held-out calibration samples (every `HOLDOUT`-th), and a
refit is kept only where it lowers the held-out error below the pruned weights' by more than `MIN_GAIN` (else
the layer keeps them: "no gain"); the chosen lam is then refitted on all samples. Only sums are kept (P^T P, P^T T, ||T||^2), never the
rows: memory is O(columns^2) per layer. Every weight change goes through the Rewriter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OptcError
from ..ir.core import Model, Node, Value
from ..ir.rewriter import Rewriter
from ..ir.tensors import NumpyTensor
from ..quantization.calibrate import ActivationRunner, fixed_batch, with_outputs
from ..quantization.data import Dataset
from ..rewrites.passes.prune import drop_unused, own_initializer

__all__ = ["HOLDOUT", "MAX_COLUMNS", "MIN_GAIN", "MIN_SAMPLES", "RIDGE", "ROWS_PER_SAMPLE", "LayerFit", "reconstruct"]

#: ridge strengths tried, relative to the mean diagonal of P^T P
RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: a layer with more unknowns per output channel (input channels x kernel size, + 1) is left alone
MAX_COLUMNS = 4096
#: rows taken per sample (output positions of a Conv, tokens of a MatMul), at random, seeded by the sample index
ROWS_PER_SAMPLE = 256
#: every HOLDOUT-th calibration sample is held out to choose the ridge and to accept or refuse the refit
HOLDOUT = 5
#: fewer calibration samples than this are refused: with one or two held out, a layer's held-out error fell
#: while the whole model moved further from the original than plain pruning (5-10 samples on a small MLP)
MIN_SAMPLES = 20
#: a refit is kept when it lowers the held-out error by more than this share of ||T||^2 (not by rounding alone)
MIN_GAIN = 1e-6


@dataclass
class LayerFit:
    """What reconstruction did to one consumer. `status`: "refitted", "no gain" (the refit did not lower the
    held-out error; weights left as pruned) or "skipped" (`reason` says why). `columns`: unknowns per output
    channel; `rows`: rows fitted; `error_before` / `error_after`: held-out squared error relative to ||T||^2
    with the pruned and with the refitted weights; `ridge`: the chosen lam relative to mean(diag(P^T P))."""

    node: str
    status: str
    columns: int = 0
    rows: int = 0
    error_before: float | None = None
    error_after: float | None = None
    ridge: float | None = None
    reason: str | None = None


class _Sums:
    """Sums over rows of P^T P, P^T T and ||T||^2: enough to solve and to score any weights."""

    def __init__(self, columns: int, outputs: int):
        self.g = np.zeros((columns, columns))
        self.b = np.zeros((columns, outputs))
        self.tt = 0.0
        self.rows = 0

    def add(self, p: np.ndarray, t: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: the sums' finiteness is checked after
            self.g += p.T @ p
            self.b += p.T @ t
            self.tt += float(np.square(t).sum())
        self.rows += len(p)

    def __iadd__(self, other: _Sums) -> _Sums:
        self.g += other.g
        self.b += other.b
        self.tt += other.tt
        self.rows += other.rows
        return self

    def error(self, w: np.ndarray) -> float:
        """||P w - T||^2 = tr(w^T G w) - 2 tr(w^T B) + ||T||^2."""
        return float(np.einsum("ij,ij->", w, self.g @ w) - 2.0 * np.einsum("ij,ij->", w, self.b) + self.tt)

    def solve(self, w0: np.ndarray, ridge: float) -> np.ndarray:
        lam = ridge * float(np.trace(self.g)) / len(self.g)
        return np.linalg.solve(self.g + lam * np.eye(len(self.g)), self.b + lam * w0)


class _Layer:
    """One consumer as a matrix problem: `w0` (columns, outputs) with the bias as its last row when `bias`;
    `rows(x, y)` turns one sample's input and original output into (P, T); `store` writes weights back."""

    def __init__(self, node: Node, keep: np.ndarray | None):
        self.node, self.keep = node, keep
        op = node.op_type
        w = node.inputs[1].const_value() if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if w is None or w.dtype.kind != "f":
            raise _Refuse("its weight is not a float constant")
        self.w_dtype = w.dtype
        b_in = node.inputs[2] if len(node.inputs) > 2 else None
        b = None if b_in is None else b_in.const_value()
        if b_in is not None and b is None:
            raise _Refuse("its bias is not a constant")
        if op == "Conv":
            if node.attr("group", 1) != 1:
                raise _Refuse("a grouped convolution")
            if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise _Refuse("auto_pad SAME_* is not handled")
            self.shape = w.shape
            m = w.reshape(w.shape[0], -1).T
            self.scale, self.bias_scale = 1.0, 1.0
        elif op == "Gemm":
            if node.attr("transA", 0):
                raise _Refuse("Gemm with transA")
            self.scale, self.bias_scale = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
            if self.scale == 0:
                raise _Refuse("Gemm with alpha 0")
            m = (w.T if node.attr("transB", 0) else w) * self.scale
            if b is not None and (b.ndim == 0 or b.shape[-1] != m.shape[1] or b.size != m.shape[1]):
                raise _Refuse("its C input is not one value per output column")
            if self.bias_scale == 0:
                raise _Refuse("Gemm with beta 0")
        elif op == "MatMul":
            if w.ndim != 2:
                raise _Refuse("a batched MatMul weight")
            m, self.scale = w, 1.0
        else:
            raise _Refuse(f"{op} is not refitted")
        self.bias = op != "MatMul"
        self.b_shape = None if b is None else b.shape
        bias_row = np.zeros(m.shape[1]) if b is None else b.reshape(-1) * self.bias_scale
        self.w0 = np.vstack([m, bias_row[None]]) if self.bias else np.asarray(m, np.float64)
        self.w0 = self.w0.astype(np.float64)
        if len(self.w0) > MAX_COLUMNS:
            raise _Refuse(f"{len(self.w0)} unknowns per output channel (more than {MAX_COLUMNS})")

    def rows(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(P, T) of one sample: `x` the layer's input and `y` the original output, without the batch axis."""
        if self.node.op_type == "Conv":
            p = self._patches(x)
            t = y.reshape(y.shape[0], -1).T
        else:
            p = x.reshape(-1, x.shape[-1])
            t = y.reshape(-1, y.shape[-1])
        if len(p) != len(t):
            raise _Refuse(f"its input gives {len(p)} rows for {len(t)} output rows")
        if len(p) > ROWS_PER_SAMPLE:
            pick = rng.choice(len(p), ROWS_PER_SAMPLE, replace=False)
            p, t = p[pick], t[pick]
        if self.keep is not None:
            t = t[:, self.keep]
        p = p.astype(np.float64)
        if self.bias:
            p = np.hstack([p, np.ones((len(p), 1))])
        return p, t.astype(np.float64)

    def _patches(self, x: np.ndarray) -> np.ndarray:
        """im2col of one sample `x` (C, *spatial): (output positions, C x kernel elements), columns in the
        weight's (C, *kernel) order."""
        node, k = self.node, self.shape[2:]
        r = len(k)
        strides = node.attr("strides", [1] * r)
        dil = node.attr("dilations", [1] * r)
        pads = node.attr("pads", [0] * (2 * r)) if node.attr("auto_pad", "NOTSET") == "NOTSET" else [0] * (2 * r)
        xp = np.pad(x, [(0, 0)] + [(pads[i], pads[i + r]) for i in range(r)])
        extent = [(k[i] - 1) * dil[i] + 1 for i in range(r)]
        win = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=tuple(range(1, r + 1)))
        win = win[(slice(None),) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dil)]
        positions = int(np.prod(win.shape[1:1 + r]))
        return np.moveaxis(win, 0, r).reshape(positions, -1)

    def store(self, rw: Rewriter, w: np.ndarray) -> None:
        node = self.node
        m, bias = (w[:-1], w[-1]) if self.bias else (w, None)
        if node.op_type == "Conv":
            weight = m.T.reshape((m.shape[1],) + tuple(self.shape[1:]))
        elif node.op_type == "Gemm":
            weight = (m.T if node.attr("transB", 0) else m) / self.scale
        else:
            weight = m
        _set_input(rw, node, 1, weight.astype(self.w_dtype))
        if bias is not None:
            bias = bias / self.bias_scale
            _set_input(rw, node, 2, bias.reshape(self.b_shape or bias.shape).astype(self.w_dtype))


class _Refuse(Exception):
    """A consumer that cannot be refitted (the message says why)."""


def _set_input(rw: Rewriter, node: Node, index: int, array: np.ndarray) -> None:
    """Input `index` of `node` becomes the constant `array`: in place when `node` is the only reader of its own
    initializer (the name stays), else a new initializer (appended when the optional input was absent)."""
    old = node.inputs[index] if index < len(node.inputs) else None
    if old is not None and old.num_uses == 1 and own_initializer(rw, old):
        rw.set_constant(old, NumpyTensor(np.ascontiguousarray(array)))
        return
    new = rw.add_initializer(np.ascontiguousarray(array), hint=(old.name if old is not None else None) or "refit")
    if old is None:
        rw.set_inputs(node, [*node.inputs, *([None] * (index - len(node.inputs))), new])
    else:
        rw.set_input(node, index, new)
        drop_unused(rw, [old])


def _label(node: Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0] is not None else node.op_type)


def _pairs(pruned: Model, reference: Model, x: Value, y: Value, data: Dataset,
           batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input in the pruned model, output in the reference model) of one layer, a batch at a time."""
    xs = ActivationRunner(with_outputs(pruned, [x.name]), [x.name], data, batch)
    ys = ActivationRunner(with_outputs(reference, [y.name]), [y.name], data, batch)
    for (_, (xb,)), (_, (yb,)) in zip(xs.batches("", False), ys.batches("", False), strict=True):
        yield xb, yb


def reconstruct(pruned: Model, reference: Model, consumers: list[tuple[Node, np.ndarray | None]],
                data: Dataset) -> list[LayerFit]:
    """Refit, in place, the weights (and biases) of `consumers` of `pruned` (the Conv/Gemm/MatMul nodes whose
    input channels pruning cut, in graph order, each with the mask of its original output channels it keeps;
    see `optc.rewrites.passes.prune.PruneResult.consumers`) to reproduce, on `data`, what the same nodes
    compute in `reference` (the model before pruning; value names must match, types inferred).

    Returns one `LayerFit` per consumer. A Conv with a group > 1 or auto_pad SAME_*, a Gemm with transA, a
    weight that is not a float constant or one with more than `MAX_COLUMNS` unknowns per output channel is
    skipped (with the reason). Raises OptcError when `data` holds fewer than `MIN_SAMPLES` samples or
    onnxruntime cannot run a model on it.
    """
    if data.num_samples < MIN_SAMPLES:
        raise OptcError(f"reconstruction needs at least {MIN_SAMPLES} calibration samples (every {HOLDOUT}th is "
                        f"held out), '{data.path}' has {data.num_samples}")
    batch = fixed_batch(pruned) or 16
    rw = Rewriter(pruned)
    fits = []
    for node, keep in consumers:
        try:
            fits.append(_refit(rw, pruned, reference, node, keep, data, batch))
        except _Refuse as why:
            fits.append(LayerFit(_label(node), "skipped", reason=str(why)))
    return fits


def _refit(rw: Rewriter, pruned: Model, reference: Model, node: Node, keep: np.ndarray | None, data: Dataset,
           batch: int) -> LayerFit:
    layer = _Layer(node, keep)
    columns, outputs = layer.w0.shape
    fit, held = _Sums(columns, outputs), _Sums(columns, outputs)
    sample = 0
    for xb, yb in _pairs(pruned, reference, node.inputs[0], node.outputs[0], data, batch):
        for j in range(len(xb)):
            p, t = layer.rows(xb[j], yb[j], np.random.default_rng(sample))
            (held if sample % HOLDOUT == HOLDOUT - 1 else fit).add(p, t)
            sample += 1
    label = _label(node)
    if not (np.isfinite(fit.g).all() and np.isfinite(held.g).all() and np.isfinite(fit.b).all()):
        raise _Refuse("its input or output holds NaN or infinite values on the calibration data")
    if not np.trace(fit.g) > 0 or held.tt == 0:
        raise _Refuse("its input or output is zero on the calibration data")
    before = held.error(layer.w0)
    scores = {}
    for ridge in RIDGE:
        try:
            scores[ridge] = held.error(fit.solve(layer.w0, ridge))
        except np.linalg.LinAlgError:
            continue
    rows = fit.rows + held.rows
    if not scores:
        raise _Refuse("the least-squares system is singular")
    best = min(scores, key=scores.get)
    result = LayerFit(label, "no gain", columns, rows, before / held.tt, scores[best] / held.tt, best)
    if not before - scores[best] > MIN_GAIN * held.tt:
        return result
    fit += held
    layer.store(rw, fit.solve(layer.w0, best))
    result.status = "refitted"
    return result
