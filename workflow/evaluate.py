"""Evaluate a model on a test set: top-1 / top-5 accuracy with per-class accuracy, or mean squared error / cosine
similarity, optionally against a baseline model (the worst per-class drop is the fairness check a quantized
model should pass). One service for `optc evaluate`, accuracy-aware quantization and `optc auto`.

Models run on onnxruntime (`optc.ortsession.session`, graph optimizations on) or, for compiled artifacts, with
`optc.runtime`. The data set is streamed (`optc.quantization.data`): one batch in memory at a time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import OptcError
from ..ortsession import first_line, session
from ..progress import progress as progress_bar
from ..quantization.data import Dataset, InputSpec, complete_batch, model_input_specs, open_dataset

__all__ = ["DEFAULT_BATCH_SIZE", "METRICS", "evaluate", "metric_drop"]

METRICS = ("top1", "top5", "mse", "cosine")
DEFAULT_BATCH_SIZE = 256  # samples per batch when neither the caller nor the model fixes one


@dataclass
class _Runner:
    """A model to run: `run(feeds)` -> its first output, with as many rows on axis 0 as the feeds have."""

    label: str
    specs: list[InputSpec]
    run_first: Callable[[dict[str, np.ndarray]], np.ndarray]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs fix on axis 0 (None when symbolic)."""
        fixed = {s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], int)}
        if len(fixed) > 1:
            raise OptcError(f"'{self.label}': inputs fix different batch sizes on axis 0 ({sorted(fixed)})")
        return fixed.pop() if fixed else None

    def run(self, batch: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The first output for the `n` samples of `batch`: in chunks of the model's fixed batch size (the last
        chunk padded by repeating its last sample, the padding's outputs dropped) or in one run."""
        step = self.fixed_batch or n
        outputs = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            feeds = complete_batch({s.name: batch[s.name][start:stop] for s in self.specs}, step)
            out = np.asarray(self.run_first(feeds))
            if out.ndim == 0 or out.shape[0] != step:
                raise OptcError(f"'{self.label}': the first output is {out.dtype} {list(out.shape)} for a batch of "
                                f"{step}; evaluate needs the batch on axis 0 of it")
            outputs.append(out[: stop - start])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _runner(model, threads: int | None, what: str) -> _Runner:
    """`model`: an .onnx path or artifact path, an optc `Model` or an `onnx.ModelProto`."""
    import onnx

    from ..ir import Model
    from .verify import is_artifact, open_side

    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if is_artifact(path):
            side = open_side(path)
            if any(s.dtype is None for s in side.inputs):
                bad = next(s for s in side.inputs if s.dtype is None)
                raise OptcError(f"'{path}': input '{bad.name}' has type {bad.type_text}, which numpy cannot hold")
            specs = [InputSpec(s.name, s.dtype, tuple(s.shape)) for s in side.inputs]
            first = side.outputs[0]
            return _Runner(path, specs, lambda feeds: side.run(feeds)[first])
        specs, source, label = model_input_specs(path), path, path
    elif isinstance(model, Model | onnx.ModelProto):
        specs, source, label = model_input_specs(model), model, f"in-memory {what}"
    else:
        raise OptcError(f"{what}: expected a path, an optc Model or an onnx.ModelProto, got {type(model).__name__}")
    sess = session(source, optimize=True, threads=threads, label=label)
    first = sess.get_outputs()[0].name

    def run_first(feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return sess.run([first], feeds)[0]
        except Exception as exc:
            raise OptcError(f"onnxruntime failed to run '{label}': {first_line(exc)}") from None

    return _Runner(label, specs, run_first)


# -- metrics ----------------------------------------------------------------------------------------------------


class _TopK:
    """Top-k accuracy: a sample is correct when its label's score is among the k highest of its row, ties going
    to the lower class index (the label's position in a stable descending sort is < k; for k = 1 that is
    `argmax(scores) == label`). A NaN score for the label is wrong. Per class: counts and correct by label."""

    def __init__(self, k: int, label: str):
        self.k, self.label = k, label
        self.count: np.ndarray | None = None
        self.correct: np.ndarray | None = None

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        if scores.ndim != 2:
            raise OptcError(f"top{self.k} needs [N, C] scores as the first output of '{self.label}'; it is "
                            f"{scores.dtype} {list(scores.shape)}")
        n, classes = scores.shape
        if self.k > classes:
            raise OptcError(f"top{self.k} needs at least {self.k} classes; '{self.label}' scores {classes}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise OptcError(f"top{self.k} needs integer class labels [N]; the labels are {labels.dtype} of rank "
                            f"{labels.ndim}")
        if n and (labels.min() < 0 or labels.max() >= classes):
            bad = labels[(labels < 0) | (labels >= classes)][0]
            raise OptcError(f"label {bad} is not a class of '{self.label}' (its first output scores {classes} "
                            f"classes: 0..{classes - 1})")
        if self.count is None:
            self.count, self.correct = np.zeros(classes, np.int64), np.zeros(classes, np.int64)
        elif len(self.count) != classes:
            raise OptcError(f"'{self.label}' scores {classes} classes in one batch, {len(self.count)} in another")
        labels = labels.astype(np.int64)
        own = scores[np.arange(n), labels][:, None]
        before = np.arange(classes)[None, :] < labels[:, None]
        rank = (scores > own).sum(1) + ((scores == own) & before).sum(1)
        hit = (rank < self.k) & ~np.isnan(own[:, 0])
        self.count += np.bincount(labels, minlength=classes)
        self.correct += np.bincount(labels[hit], minlength=classes)

    def value(self) -> float:
        return float(self.correct.sum() / self.count.sum())

    def per_class(self) -> dict[str, dict]:
        return {str(c): {"count": int(self.count[c]), "accuracy": float(self.correct[c] / self.count[c])}
                for c in np.flatnonzero(self.count)}


class _MSE:
    """Mean squared error over every element (float64 sums)."""

    def __init__(self):
        self.total, self.elements = 0.0, 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        diff = out.astype(np.float64) - ref.astype(np.float64)
        self.total += float(np.square(diff).sum())
        self.elements += diff.size

    def value(self) -> float:
        return self.total / self.elements if self.elements else 0.0


class _Cosine:
    """Mean over samples of the cosine similarity of each sample's flattened output and reference; two zero
    vectors count as 1, one zero vector as 0."""

    def __init__(self):
        self.total, self.samples = 0.0, 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        a = out.reshape(len(out), -1).astype(np.float64)
        b = ref.reshape(len(ref), -1).astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = (a * b).sum(1) / (na * nb)
        cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
        self.total += float(cos.sum())
        self.samples += len(cos)

    def value(self) -> float:
        return self.total / self.samples if self.samples else 0.0


def _check_same_shape(out: np.ndarray, ref: np.ndarray, label: str, reference: str) -> None:
    if out.shape != ref.shape:
        raise OptcError(f"the first output of '{label}' is {list(out.shape)} but {reference} is {list(ref.shape)}; "
                        "mse and cosine compare arrays of one shape")


def metric_drop(baseline: float, value: float, metric: str) -> float:
    """How much worse `value` is than `baseline`: percentage points for top1/top5 (accuracies as fractions in
    [0, 1]), metric units for cosine (baseline - value) and mse (value - baseline).

    Points are rounded to 1e-9 so that a drop of k samples in N compares exactly with a budget: in floating
    point 100 * (1.0 - 0.995) is 0.5000000000000004, which a 0.5-point budget would refuse."""
    if metric == "mse":
        return value - baseline
    if metric == "cosine":
        return baseline - value
    return round((baseline - value) * 100.0, 9)


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return x if math.isfinite(x) else None


# -- the service ------------------------------------------------------------------------------------------------


def evaluate(model, data, *, labels: str = "y", metric: str = "top1", baseline=None, batch_size: int | None = None,
             threads: int | None = None, progress: bool | None = None) -> dict:
    """Evaluate `model` on `data` and return a JSON-serializable dict.

    `model`, `baseline`: an .onnx path, a compiled optc artifact path (run with `optc.runtime`), an optc `Model`
    or an `onnx.ModelProto` (run on onnxruntime with its graph optimizations, `threads` intra-op threads).
    `data`: a path (an .npz file or a directory of them, opened as "test data") or a `Dataset`; inputs keyed by
    name with the batch on axis 0, and the labels array `labels`.
    `metric`:
      - `top1`, `top5`: the model's first output is [N, C] scores, `labels` integer [N] in 0..C-1; value is
        the fraction (0..1) of samples whose label is among the k highest scores (see `_TopK` for ties);
      - `mse`: mean over all elements of (output - reference)^2; `cosine`: mean over samples of the cosine
        similarity of the flattened output and reference. The reference is the labels array when the data
        holds one, else the baseline's first output (the baseline's value is then exact: 0 or 1).
    `batch_size`: samples per run (default: the model's fixed batch if its inputs fix axis 0, else
    `DEFAULT_BATCH_SIZE`); a model with a fixed batch is run in chunks of it, the last one padded.
    `progress`: a progress bar on stderr (None: only when stderr is a terminal).

    Returns `{"metric", "value", "samples", "seconds" (wall time of the evaluation loop), "model" (label)}`, for
    top-k also `"per_class": {"<class>": {"count", "accuracy"}}` (classes present in the labels), for mse/cosine
    `"reference": "labels" | "baseline"`; with a baseline also `"baseline": {"value"[, "per_class"]}`, `"drop"`
    (how much worse the model is, in metric units: baseline - value for top-k and cosine, value - baseline for
    mse) and for top-k `"drop_points"` (percentage points) and `"worst_class": {"class", "drop_points",
    "baseline", "value"}` (the class whose accuracy dropped most; ties: the lowest class). Non-finite values are
    null. Raises OptcError (one line) for an unknown metric, a bad model, data or batch size, labels missing
    for top-k, or for mse/cosine neither labels nor a baseline.
    """
    if metric not in METRICS:
        raise OptcError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise OptcError(f"threads must be a positive integer, got {threads!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise OptcError(f"batch size must be a positive integer, got {batch_size!r}")
    runner = _runner(model, threads, "model")
    base = _runner(baseline, threads, "baseline") if baseline is not None else None
    topk = metric in ("top1", "top5")
    if isinstance(data, Dataset):
        dataset = data
        dataset.check(runner.specs, labels if topk else None)
    elif isinstance(data, str | os.PathLike):
        dataset = open_dataset(data, runner.specs, labels=labels if topk else None, role="test data")
    else:
        raise OptcError(f"data: expected a path or a Dataset, got {type(data).__name__}")
    if base is not None:
        dataset.check(base.specs)
    reference = "labels" if topk or labels in dataset.array_names else "baseline" if base is not None else None
    if reference is None:
        raise OptcError(f"{metric} compares the model's first output with labels or a baseline: {dataset.role} "
                        f"'{dataset.path}' has no array '{labels}' and no baseline was given")
    if reference == "labels":
        dataset.check([], labels)

    def new_metric(label: str):
        return _TopK(int(metric[3:]), label) if topk else _MSE() if metric == "mse" else _Cosine()

    acc = new_metric(runner.label)
    base_acc = new_metric(base.label) if base is not None and reference == "labels" else None
    size = batch_size or runner.fixed_batch or DEFAULT_BATCH_SIZE
    start = time.perf_counter()
    samples = 0
    with progress_bar(f"evaluating {runner.label}", total=dataset.num_samples, enabled=progress) as advance:
        for batch in dataset.batches(size):
            n = len(next(iter(batch.values())))
            out = runner.run(batch, n)
            base_out = base.run(batch, n) if base is not None else None
            if reference == "labels":
                ref = batch[labels]
                if not topk:
                    _check_same_shape(out, ref, runner.label, f"labels '{labels}'")
                acc.add(out, ref)
                if base_acc is not None:
                    if not topk:
                        _check_same_shape(base_out, ref, base.label, f"labels '{labels}'")
                    base_acc.add(base_out, ref)
            else:
                _check_same_shape(out, base_out, runner.label, f"the baseline's ('{base.label}')")
                acc.add(out, base_out)
            samples += n
            advance(n)
    result = {"metric": metric, "value": _finite(acc.value()), "samples": samples}
    if topk:
        result["per_class"] = acc.per_class()
    else:
        result["reference"] = reference
    result["seconds"] = time.perf_counter() - start
    result["model"] = runner.label
    if base is not None:
        result.update(_compare(acc, base_acc, metric, base.label))
    return result


def _compare(acc, base_acc, metric: str, label: str) -> dict:
    """The baseline entries of the result (see `evaluate`)."""
    value = acc.value()
    if base_acc is None:  # the baseline is the reference itself
        base_value = 1.0 if metric == "cosine" else 0.0
    else:
        base_value = base_acc.value()
    drop = value - base_value if metric == "mse" else base_value - value
    out = {"baseline": {"model": label, "value": _finite(base_value)}, "drop": _finite(drop)}
    if metric in ("top1", "top5"):
        out["baseline"]["per_class"] = base_acc.per_class()
        out["drop_points"] = metric_drop(base_value, value, metric)
        mine, theirs = acc.per_class(), base_acc.per_class()
        drops = {c: metric_drop(theirs[c]["accuracy"], mine[c]["accuracy"], metric) for c in mine}
        worst = min(drops, key=lambda c: (-drops[c], int(c)))
        out["worst_class"] = {"class": worst, "drop_points": drops[worst], "baseline": theirs[worst]["accuracy"],
                              "value": mine[worst]["accuracy"]}
    return out
