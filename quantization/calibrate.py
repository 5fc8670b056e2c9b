"""Calibration: run the float model on onnxruntime over a dataset and measure the range of every float activation.

Methods (after onnxruntime's `calibrate.py` and TensorRT's entropy calibration):

- `minmax`: the smallest and largest finite value seen.
- `percentile` (default 99.999): clip the tails so that `percentile`% of the values lie inside the range, the
  excluded mass split equally between the two tails; read from a 2048-bin histogram over the MinMax range.
- `entropy`: the threshold t minimising the KL divergence between the histogram of |x| (2048 bins over
  [0, max |x|]) and its quantized version (TensorRT, "8-bit Inference with TensorRT", Migacz 2017); the range
  is [max(min, -t), min(max, t)]. onnxruntime uses as many histogram bins as quantized levels (128), so its
  candidate thresholds all equal the maximum and its Entropy ranges are the MinMax ones; with 2048 bins the
  candidates really differ.

Every float activation of the main graph is observed at once (the exclusions and per-op choices made later
don't need a new run). Memory is bounded by one batch: the statistics are running minima/maxima and
fixed-size histograms (the histogram methods take a second pass over the data, with the MinMax ranges fixed).
Ranges are cached in a JSON file keyed by the model's bytes, the data files (name, size, mtime) and the method,
so a re-run with other quantization options does not calibrate again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptcError
from ..fileio import write_json
from ..ir.core import Model, Value
from ..ir.types import DataType
from ..ortsession import first_line, session
from ..progress import progress
from .data import Dataset, complete_batch, drop_repeats

__all__ = ["METHODS", "ActivationRunner", "Calibration", "calibrate", "fixed_batch", "observable_values", "with_outputs"]

METHODS = ("minmax", "percentile", "entropy")
HISTOGRAM_BINS = 2048
_CACHE_VERSION = 1
_FLOAT_TYPES = {DataType.FLOAT, DataType.FLOAT16, DataType.BFLOAT16, DataType.DOUBLE}


@dataclass
class Calibration:
    """Calibrated ranges: value name -> (min, max) in float; `nonfinite` names saw NaN or infinities (their range
    covers the finite values only; the quantizer leaves them in float)."""

    method: str
    ranges: dict[str, tuple[float, float]]
    samples: int
    seconds: float
    nonfinite: set[str] = field(default_factory=set)
    cached: bool = False

    def to_json(self) -> dict:
        return {"method": self.method, "samples": self.samples, "seconds": round(self.seconds, 3),
                "cached": self.cached, "nonfinite": sorted(self.nonfinite),
                "ranges": {k: [float(a), float(b)] for k, (a, b) in sorted(self.ranges.items())}}


def observable_values(model: Model) -> list[Value]:
    """The float activations of the main graph (graph inputs and node outputs that are not constants)."""
    g = model.graph
    out: list[Value] = []
    seen: set[str] = set()
    candidates = [v for v in g.inputs if v.const is None]
    candidates += [o for n in g for o in n.outputs if o is not None and o.name]
    for v in candidates:
        if v.const is None and v.name not in seen and v.dtype is not None and DataType(v.dtype) in _FLOAT_TYPES:
            seen.add(v.name)
            out.append(v)
    return out


def with_outputs(model: Model, names: list[str]) -> bytes:
    """`model` serialized with the float activations `names` added as graph outputs (for onnxruntime to return
    them); OptcError past protobuf's 2 GB limit."""
    from onnx import helper

    from ..ir import to_onnx

    proto = to_onnx(model)
    have = {o.name for o in proto.graph.output}
    types = {v.name: int(DataType(v.dtype)) for v in observable_values(model)}
    for name in names:
        if name not in have:
            proto.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise OptcError(f"cannot expose the model's activations: {exc}") from None


def _fingerprint(model_bytes: bytes, data: Dataset) -> tuple[str, list]:
    """The cache key's parts: the model's SHA-256, and per data file its path, size and the BLAKE2 digest of its
    bytes (a file rewritten with the same size and mtime is still noticed)."""
    files = [data.path] if os.path.isfile(data.path) else sorted(
        os.path.join(data.path, f) for f in os.listdir(data.path) if f.endswith(".npz"))
    stamp = []
    for f in files:
        digest = hashlib.blake2b(digest_size=16)
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
        stamp.append([os.path.abspath(f), os.path.getsize(f), digest.hexdigest()])
    return hashlib.sha256(model_bytes).hexdigest(), stamp


def _cache_key(method: str, percentile: float) -> str:
    return f"percentile:{percentile:g}" if method == "percentile" else method


def _read_cache(path: str, model_hash: str, stamp: list, key: str, names: list[str]) -> Calibration | None:
    """The cached calibration for this model, data and method, or None: a missing, unreadable, foreign or
    malformed cache (every observed value needs a finite [min, max]) is a miss, recalibrated and overwritten."""
    try:
        with open(path) as f:
            cache = json.load(f)
        if (not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION or cache.get("model") != model_hash
                or cache.get("data") != stamp):
            return None
        entry = cache["entries"][key]
        ranges = {str(k): (float(a), float(b)) for k, (a, b) in entry["ranges"].items()}
        nonfinite = {str(n) for n in entry.get("nonfinite", ())}
        cal = Calibration(str(entry["method"]), ranges, int(entry["samples"]), float(entry["seconds"]), nonfinite,
                          cached=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    complete = all(n in ranges or n in nonfinite for n in names)
    finite = all(np.isfinite(a) and np.isfinite(b) and a <= b for a, b in ranges.values())
    return cal if complete and finite else None


def _write_cache(path: str, model_hash: str, stamp: list, key: str, cal: Calibration) -> None:
    cache = {"version": _CACHE_VERSION, "model": model_hash, "data": stamp, "entries": {}}
    try:
        with open(path) as f:
            old = json.load(f)
        if isinstance(old, dict) and old.get("model") == model_hash and old.get("data") == stamp:
            cache["entries"] = dict(old.get("entries", {}))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    cache["entries"][key] = cal.to_json()
    try:
        write_json(path, cache)
    except OptcError:  # an unwritable cache only costs the next run a calibration
        pass


class ActivationRunner:
    """The augmented model (serialized; every observed value a graph output) on onnxruntime, fed one batch at a
    time. A model whose inputs fix the batch size takes batches of exactly that size: a last, shorter batch is
    completed by repeating its last sample (`complete_batch`), and the repeats' rows are dropped from every value
    whose axis 0 is that batch (`drop_repeats`)."""

    def __init__(self, augmented: bytes, names: list[str], data: Dataset, batch_size: int | None):
        self.names = names
        self.data = data
        self.batch_size = batch_size
        self.sess = session(augmented, optimize=False, label="the calibration model")
        inputs = self.sess.get_inputs()
        self.feeds = [i.name for i in inputs]
        self.fixed = batch_size is not None and any(i.shape and i.shape[0] == batch_size for i in inputs)
        outputs = [o.name for o in self.sess.get_outputs()]
        self.index = [outputs.index(n) for n in names]

    def batches(self, label: str, show: bool | None) -> Iterable[tuple[int, list[np.ndarray]]]:
        with progress(label, self.data.num_samples, enabled=show) as advance:
            for batch in self.data.batches(self.batch_size, self.feeds):
                n = len(next(iter(batch.values())))
                if self.fixed:
                    batch = complete_batch(batch, self.batch_size)
                try:
                    values = self.sess.run(None, {k: batch[k] for k in self.feeds})
                except Exception as exc:
                    raise OptcError(f"onnxruntime failed to run the model on the calibration data: "
                                    f"{first_line(exc)}") from None
                yield n, [drop_repeats(values[i], n, self.batch_size if self.fixed else None) for i in self.index]
                advance(n)


def _minmax(runner: ActivationRunner, show: bool | None) -> tuple[dict, set, int]:
    lo = {n: np.inf for n in runner.names}
    hi = {n: -np.inf for n in runner.names}
    nonfinite: set[str] = set()
    samples = 0
    for n, values in runner.batches("calibrating (min/max)", show):
        samples += n
        for name, v in zip(runner.names, values, strict=True):
            v = np.asarray(v)
            if v.size == 0:
                continue
            finite = np.isfinite(v)
            if not finite.all():
                nonfinite.add(name)
                v = v[finite]
                if v.size == 0:
                    continue
            lo[name] = min(lo[name], float(v.min()))
            hi[name] = max(hi[name], float(v.max()))
    ranges = {n: (lo[n], hi[n]) for n in runner.names if np.isfinite(lo[n])}
    return ranges, nonfinite, samples


def _histograms(runner: ActivationRunner, ranges: dict, absolute: bool, show: bool | None) -> dict[str, np.ndarray]:
    hists = {n: np.zeros(HISTOGRAM_BINS, np.float64) for n in ranges}
    for _, values in runner.batches("calibrating (histograms)", show):
        for name, v in zip(runner.names, values, strict=True):
            if name not in hists:
                continue
            v = np.asarray(v, np.float32).ravel()
            v = v[np.isfinite(v)]
            lo, hi = ranges[name]
            if absolute:
                v = np.abs(v)
                lo, hi = 0.0, max(abs(lo), abs(hi))
            if hi <= lo or v.size == 0:
                continue
            hists[name] += np.histogram(v, bins=HISTOGRAM_BINS, range=(lo, hi))[0]
    return hists


def _percentile_range(hist: np.ndarray, lo: float, hi: float, percentile: float) -> tuple[float, float]:
    total = hist.sum()
    if total == 0 or hi <= lo:
        return lo, hi
    tail = (1.0 - percentile / 100.0) / 2.0 * total
    cdf = np.cumsum(hist)
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    left = int(np.searchsorted(cdf, tail, side="right"))
    right = int(np.searchsorted(cdf, total - tail, side="left"))
    return float(edges[min(left, HISTOGRAM_BINS)]), float(edges[min(right + 1, HISTOGRAM_BINS)])


def _kl_threshold(hist: np.ndarray, quant_levels: int) -> int:
    """The number of histogram bins (from 0) to keep: the one minimising KL(P || Q) (TensorRT's algorithm)."""
    n = hist.size
    if hist.sum() == 0:
        return n
    best, best_i = np.inf, n
    stride = max(1, (n - quant_levels) // 256)
    candidates = list(range(quant_levels, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)  # the MinMax range itself is always a candidate
    for i in candidates:
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()  # the clipped mass lands in the last kept bin
        nonzero = hist[:i] > 0
        # Q: merge the i bins into quant_levels groups, spread each group's mass over its nonzero bins.
        edges = np.linspace(0, i, quant_levels + 1).astype(np.int64)
        starts = edges[:-1]
        mass = np.add.reduceat(hist[:i], starts)
        count = np.add.reduceat(nonzero.astype(np.int64), starts)
        per_bin = np.where(count > 0, mass / np.maximum(count, 1), 0.0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.where(q[mask] > 0, q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def calibrate(model: Model, data: Dataset, *, method: str = "minmax", percentile: float = 99.999,
              batch_size: int | None = None, cache: str | None = None, show_progress: bool | None = None) -> Calibration:
    """Calibrate every float activation of `model` (an optc Model; only value types it lacks are filled in, by
    ONNX shape inference) on `data`.

    `batch_size`: samples per run (None: 1, or the model's fixed batch dimension; every activation of a run is
    held at once, so memory grows with it). `cache`: a JSON file of
    cached ranges (read when it matches this model, data and method; written after calibrating), or a
    directory holding one such file per model.
    Raises OptcError for an unknown method, a percentile outside (0, 100], or a model onnxruntime cannot run
    on the data.
    """
    if method not in METHODS:
        raise OptcError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
    if not 0 < percentile <= 100:
        raise OptcError(f"the percentile must be in (0, 100], not {percentile}")
    if any(o is not None and o.dtype is None for n in model.graph for o in n.outputs):
        from ..rewrites.passes.infer_shapes import infer_model_types

        infer_model_types(model)
    names = [v.name for v in observable_values(model)]
    if not names:
        raise OptcError("the model has no float activations to calibrate")
    fixed = fixed_batch(model)
    if batch_size is not None and fixed is not None and batch_size != fixed:
        raise OptcError(f"--batch-size {batch_size} does not fit the model, whose inputs fix a batch of {fixed}")
    if batch_size is None:
        batch_size = fixed or 1
    start = time.perf_counter()
    # One serialization serves both the cache key and the session: a second copy of a big model's weights
    # (hashing the plain model, then building the augmented one) doubled calibration's peak memory.
    augmented = with_outputs(model, names)
    model_hash, stamp = _fingerprint(augmented, data)
    key = _cache_key(method, percentile)
    if cache and os.path.isdir(cache):
        cache = os.path.join(cache, f"{model_hash[:24]}.json")
    if cache:
        hit = _read_cache(cache, model_hash, stamp, key, names)
        if hit is not None:
            return hit
    runner = ActivationRunner(augmented, names, data, batch_size)
    del augmented  # onnxruntime holds its own copy now
    ranges, nonfinite, samples = _minmax(runner, show_progress)
    if samples == 0:
        raise OptcError(f"calibration data '{data.path}' holds no samples")
    bad = [v.name for v in model.graph.inputs if v.name in nonfinite]
    if bad:
        raise OptcError(f"calibration data '{data.path}' array '{bad[0]}' holds NaN or infinite values")
    if method == "percentile":
        hists = _histograms(runner, ranges, False, show_progress)
        ranges = {n: _percentile_range(hists[n], *ranges[n], percentile) for n in ranges}
    elif method == "entropy":
        hists = _histograms(runner, ranges, True, show_progress)
        new = {}
        for n, (lo, hi) in ranges.items():
            top = max(abs(lo), abs(hi))
            if top == 0:
                new[n] = (lo, hi)
                continue
            levels = 255 if lo >= 0 else 128
            t = _kl_threshold(hists[n], levels) / HISTOGRAM_BINS * top
            new[n] = (max(lo, -t), min(hi, t))
        ranges = new
    cal = Calibration(method, ranges, samples, time.perf_counter() - start, nonfinite)
    if cache:
        _write_cache(cache, model_hash, stamp, key, cal)
    return cal


def fixed_batch(model: Model) -> int | None:
    """The batch size the model's inputs fix: axis 0 a number on the inputs that have one (inputs with a symbolic
    axis 0 follow it), the same on all of them; else None."""
    dims = set()
    for v in model.graph.inputs:
        if v.const is not None:
            continue
        shape = v.shape
        if shape and isinstance(shape[0], int):
            dims.add(shape[0])
    return dims.pop() if len(dims) == 1 else None
