"""Accuracy-aware static quantization: quantize, measure, and return the most sensitive layers to float one at a
time until the accuracy drop is within the budget (as NNCF's and Intel Neural Compressor's accuracy-aware modes).

Sensitivity of a quantized layer: the error it *adds*, measured on the calibration data in one run of the float
and one of the quantized model: NRMSE(output) - max NRMSE(the nearest quantized layers feeding it), where
NRMSE = sqrt(mean((quantized - float)^2)) / std(float) of the layer's output as its readers see it (after the
layer's own output QuantizeLinear/DequantizeLinear, where it has one). A layer with a large error of its own ranks
first; a layer that only inherits its inputs' error ranks low.

The ranges are calibrated once; each step re-runs only the QDQ rules (cheap) and the evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import OptcError
from ..ir.core import Model
from ..ortsession import first_line, session
from ..rewrites.pipelines import copy_model
from .data import Dataset, complete_batch, drop_repeats, model_input_specs, open_dataset
from .qdq_rules import node_label

__all__ = ["accuracy_aware", "layer_sensitivity"]

#: samples of the calibration data used to rank the layers
SENSITIVITY_SAMPLES = 64


def _run(model: Model, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The values `names` of `model` on the batches `feeds`, concatenated along axis 0."""
    from .calibrate import fixed_batch, with_outputs

    sess = session(with_outputs(model, names), optimize=False, label="the sensitivity model")
    outs = [o.name for o in sess.get_outputs()]
    inputs = [i.name for i in sess.get_inputs()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    size = fixed_batch(model)
    for batch in feeds:
        rows = len(next(iter(batch.values())))
        if size is not None:  # its last batch completed (the float and the quantized model alike)
            batch = complete_batch(batch, size)
        try:
            values = sess.run(None, {k: batch[k] for k in inputs})
        except Exception as exc:
            raise OptcError(f"onnxruntime failed in the sensitivity analysis: {first_line(exc)}") from None
        for n in names:
            got[n].append(drop_repeats(values[outs.index(n)], rows, size))
    return {n: np.concatenate(v) for n, v in got.items()}


def layer_sensitivity(float_model: Model, quantized: Model, outputs: dict[str, tuple[str, str]],
                      data: Dataset, batch_size: int | None = None) -> list[tuple[str, float]]:
    """Rank the quantized layers by the error each adds (see the module docstring), most sensitive first.

    `outputs`: quantized node name -> (its output's name in the float model, its float output's name in the
    quantized model), as `QdqContext.outputs` records them. `batch_size`: samples per run (default: the
    batch the model's inputs fix, else 16)."""
    from .calibrate import fixed_batch

    batch_size = batch_size or fixed_batch(float_model) or 16
    feeds = []
    count = 0
    for batch in data.batches(batch_size, [v.name for v in float_model.graph.inputs if v.const is None]):
        feeds.append(batch)
        count += len(next(iter(batch.values())))
        if count >= SENSITIVITY_SAMPLES:
            break
    ref = _run(float_model, [f for f, _ in outputs.values()], feeds)
    got = _run(quantized, [q for _, q in outputs.values()], feeds)
    error: dict[str, float] = {}
    for node, (f, q) in outputs.items():
        a, b = ref[f].astype(np.float64), got[q].astype(np.float64)
        scale = float(a.std()) or 1.0
        error[node] = float(np.sqrt(np.mean((a - b) ** 2))) / scale if a.size else 0.0
    by_output = {f: node for node, (f, _) in outputs.items()}
    memo: dict[str, float] = {}

    def inherited(value_name: str, seen: set[str]) -> float:
        """The largest error of the quantized layers upstream of `value_name` (through unquantized nodes)."""
        if value_name in memo:
            return memo[value_name]
        if value_name in by_output:
            return error[by_output[value_name]]
        v = _value(float_model, value_name)
        p = v.producer if v is not None else None
        if p is None or value_name in seen:
            return 0.0
        seen.add(value_name)
        e = max((inherited(i.name, seen) for i in p.inputs if i is not None), default=0.0)
        memo[value_name] = e
        return e

    nodes = {node_label(n): n for n in float_model.graph}
    ranked = []
    for node, e in error.items():
        n = nodes.get(node)
        upstream = max((inherited(i.name, set()) for i in n.inputs if i is not None), default=0.0) if n else 0.0
        ranked.append((node, max(0.0, e - upstream)))
    ranked.sort(key=lambda t: -t[1])
    return ranked


def _value(model: Model, name: str):
    g = model.graph
    for v in g.inputs:
        if v.name == name:
            return v
    for n in g:
        for o in n.outputs:
            if o is not None and o.name == name:
                return o
    return None


def accuracy_aware(model: Model, calibration: Any, eval_data: Any, *, scheme, method: str, percentile: float,
                   exclude: set[str], labels: str, metric: str, max_drop: float, batch_size: int | None,
                   cache: str | None, show_progress: bool | None, quantize: Callable,
                   try_full_range: bool = False, time_limit: float | None = None) -> tuple[Model, dict]:
    """Quantize `model` (the optimized float model, not modified) with `quantize` (api._static); while the drop
    of `metric` on `eval_data` exceeds `max_drop`, return the next most sensitive layer to float. Returns the
    model that met the budget (or, when none did, the one with the smallest drop, with `met: false`) and the
    report: baseline, steps (layer returned to float, value, drop), the layers kept in float.

    `try_full_range`: the scheme's 7-bit weights (`reduce_range`) are only the host's default, not the user's
    choice: when they break the budget, 8-bit weights are measured first (same ranges, same speed) and kept when
    they drop less; layers go back to float only after that (onnxruntime's own U8S8 default is 8-bit).

    `time_limit` (seconds from the call): no layer is returned to float after it; the best model so far is
    returned, and the report's `stopped` says so (BERT-like's 70 layers, one evaluation each, had run 200 s)."""
    from ..workflow.evaluate import evaluate, metric_drop

    if max_drop < 0:
        raise OptcError(f"--max-accuracy-drop must be 0 or more, not {max_drop}")
    started = time.perf_counter()
    stopped = None
    data = calibration if isinstance(calibration, Dataset) else open_dataset(
        calibration, model_input_specs(model), role="calibration data")
    test = eval_data if isinstance(eval_data, Dataset) else open_dataset(
        eval_data, model_input_specs(model), labels=labels if metric in ("top1", "top5") else None,
        role="test data")
    if metric in ("mse", "cosine") and labels not in test.array_names:
        # No reference outputs in the data: the float model is the reference (mse 0, cosine 1 by definition).
        base = {"value": 0.0 if metric == "mse" else 1.0}

        def measure(q: Model) -> float:
            return evaluate(q, test, labels=labels, metric=metric, baseline=model, progress=show_progress)["value"]
    else:
        base = evaluate(model, test, labels=labels, metric=metric, progress=show_progress)

        def measure(q: Model) -> float:
            return evaluate(q, test, labels=labels, metric=metric, progress=show_progress)["value"]
    kept: set[str] = set()
    q, report, ranges = quantize(copy_model(model), data, scheme=scheme, method=method, percentile=percentile,
                                 exclude=exclude, batch_size=batch_size, cache=cache, show_progress=show_progress)
    value = measure(q)
    steps = [{"returned_to_float": None, "value": value, "drop": metric_drop(base["value"], value, metric)}]
    if steps[0]["drop"] > max_drop and try_full_range and scheme.reduce_range:
        full = replace(scheme, reduce_range=False)
        q8, report8, _ = quantize(copy_model(model), data, scheme=full, method=method, percentile=percentile,
                                  exclude=exclude, batch_size=batch_size, cache=cache, show_progress=show_progress,
                                  ranges=ranges)
        value8 = measure(q8)
        steps.append({"returned_to_float": None, "reduce_range": False, "value": value8,
                      "drop": metric_drop(base["value"], value8, metric)})
        if steps[-1]["drop"] < steps[0]["drop"]:
            scheme, q, report = full, q8, report8
    drop0 = min(step["drop"] for step in steps)
    best = (drop0, q, report, [])
    if drop0 > max_drop:
        ranked = layer_sensitivity(model, q, report.pop("_outputs"), data)
        for node, sensitivity in ranked:
            if time_limit is not None and time.perf_counter() - started > time_limit:
                stopped = f"the time limit of {time_limit:.0f} s ended the search ({len(kept)} layers in float)"
                break
            kept.add(node)
            if len(kept) == len(ranked):  # every layer back in float: nothing quantized is left to measure
                break
            q, report, _ = quantize(copy_model(model), data, scheme=scheme, method=method, percentile=percentile,
                                    exclude=exclude, batch_size=batch_size, cache=cache, show_progress=show_progress,
                                    ranges=ranges, keep_float=frozenset(kept))
            report.pop("_outputs", None)
            value = measure(q)
            drop = metric_drop(base["value"], value, metric)
            float_layers = sorted(kept)
            steps.append({"returned_to_float": node, "sensitivity": round(sensitivity, 6), "value": value,
                          "drop": drop})
            if drop < best[0]:
                best = (drop, q, report, float_layers)
            if drop <= max_drop or not report["quantized"]:
                break
    report = best[2]
    report.pop("_outputs", None)
    met = best[0] <= max_drop
    report["accuracy"] = {"metric": metric, "baseline": base["value"], "max_drop": max_drop, "met": met,
                          "drop": best[0], "steps": steps,
                          "float_layers": best[3], "stopped": stopped}
    return best[1], report
