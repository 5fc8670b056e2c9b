"""`optc.quantize`: the quantization modes behind one entry point, each a set of rewrite rules on optc's IR.

    static       calibration data given: QDQ insertion rules (qdq_rules.py) on the calibrated ranges
    dynamic      int8 weights, activations quantized at run time (dynamic.py)
    weight-only  blockwise int4 weights (weight_only.py)
    float16 / bfloat16   reduced-precision floats with float32 islands (float_precision.py)

The model is first optimized at -O2 (BatchNormalization folded into the convolutions, MatMul + Add into Gemm,
constants folded) so that calibration and quantization see the graph that will run. With `eval_data` and
`max_accuracy_drop`, static quantization is accuracy-aware (accuracy.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import onnx

from ..errors import OptcError
from ..ir.core import Model
from ..rewrites.context import PassContext
from ..rewrites.driver import apply_rules
from ..rewrites.pipelines import copy_model, optimize
from .scheme import QuantScheme
from .selection import check_names

__all__ = ["quantize", "quantize_with_report"]

#: DequantizeLinear with `axis` (per-channel weights) and MatMulInteger/DynamicQuantizeLinear need these
_MIN_OPSET = {"static": 13, "dynamic": 11}


def _load(model: Any) -> Model:
    from ..ir import load

    if isinstance(model, Model):
        return copy_model(model)
    if isinstance(model, onnx.ModelProto | str | os.PathLike | bytes):
        return load(model)
    raise OptcError(f"quantize() takes a Model, a ModelProto or a path, not {type(model).__name__}")


def _mode(calibration, dynamic: bool, weight_only: str | None, float16: bool, bfloat16: bool) -> str:
    modes = [name for name, on in (("static", calibration is not None), ("dynamic", dynamic),
                                   ("weight-only", weight_only is not None), ("float16", float16),
                                   ("bfloat16", bfloat16)) if on]
    if not modes:
        raise OptcError("say how to quantize: calibration data (static), --dynamic, --weight-only int4, --float16 "
                        "or --bfloat16")
    if len(modes) > 1:
        raise OptcError(f"choose one quantization mode, not {' and '.join(modes)}")
    return modes[0]


def _check_opset(model: Model, mode: str) -> None:
    need = _MIN_OPSET.get(mode)
    have = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if need and have is not None and have < need:
        raise OptcError(f"{mode} quantization needs ai.onnx opset {need} or later; the model imports opset {have} "
                        f"(convert it first, e.g. with onnx.version_converter)")


def _entries(quantized: dict[str, str], skipped: dict[str, tuple[str, str]], model: Model) -> tuple[list, list]:
    from .qdq_rules import node_label

    live = {node_label(n) for n in model.graph}
    q = [{"node": k, "op": v} for k, v in quantized.items()]
    s = [{"node": k, "op": op, "reason": why} for k, (op, why) in skipped.items() if k in live]
    return q, s


def _static(model: Model, calibration, *, scheme: QuantScheme, method: str, percentile: float, exclude: set[str],
            batch_size: int | None, cache: str | None, show_progress: bool | None,
            ranges=None, keep_float: frozenset[str] = frozenset()) -> tuple[Model, dict, Any]:
    from .calibrate import calibrate
    from .data import Dataset, model_input_specs, open_dataset
    from .qdq_rules import QdqContext, qdq_rules

    if ranges is None:
        data = calibration if isinstance(calibration, Dataset) else open_dataset(
            calibration, model_input_specs(model), role="calibration data")
        ranges = calibrate(model, data, method=method, percentile=percentile, batch_size=batch_size, cache=cache,
                           show_progress=show_progress)
    ctx = QdqContext(scheme, dict(ranges.ranges), set(ranges.nonfinite), set(exclude), set(keep_float))
    apply_rules(model, qdq_rules(ctx), PassContext(), "quantize-qdq")
    optimize(model, passes="cse,dce", inplace=True)
    quantized, skipped = _entries(ctx.quantized, ctx.skipped, model)
    # the output a layer's readers see (its own output quantization included, what the accuracy-aware mode blames
    # the layer for: a residual Add's quantized sum was BERT's worst error), else its float output
    outputs = {}
    for k, (f, y, seen) in ctx.outputs.items():
        v = seen if _alive(seen) else y if _alive(y) else None
        if v is not None:
            outputs[k] = (f, v.name)
    report = {"scheme": scheme.to_json(), "calibration": ranges.to_json(), "quantized": quantized,
              "skipped": skipped, "_outputs": outputs}
    return model, report, ranges


def _alive(value) -> bool:
    """`value` (or None) is still computed by a node of the graph (a later rewrite may have replaced it)."""
    return value is not None and value.producer is not None and value.producer.graph is not None


def _opset_for_standard_int4(model: Model) -> Model:
    """The model at ai.onnx opset 21 (blocked int4 DequantizeLinear), converted by onnx's version converter
    (its adapters rewrite the ops whose definition changed, e.g. Reshape/Squeeze/Cast); the model unchanged when
    it already imports 21 or the converter cannot convert it (quantize_weight_only then explains)."""
    from onnx import version_converter

    from ..ir import from_onnx, to_onnx

    have = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if have is None or have >= 21:
        return model
    try:
        converted = version_converter.convert_version(to_onnx(model), 21)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - the converter's failures are many kinds; the caller refuses in one line
        return model
    return from_onnx(converted)


def quantize_with_report(model: Any, *, calibration: Any = None, method: str = "minmax", percentile: float = 99.999,
                         per_channel: bool = True, activations: str | None = None, weights: str = "int8",
                         symmetric_activations: bool | None = None, reduce_range: bool | None = None,
                         exclude: Sequence[str] = (), target: str = "cpu", dynamic: bool = False,
                         dynamic_conv: bool = False, weight_only: str | None = None, block_size: int = 32,
                         format: str = "standard",  # noqa: A002
                         float16: bool = False, bfloat16: bool = False, keep_io_types: bool = True,
                         eval_data: Any = None, labels: str = "y", metric: str = "top1",
                         max_accuracy_drop: float | None = None, ranges_cache: str | None = None,
                         batch_size: int | None = None, optimize_first: bool = True,
                         progress: bool | None = None, accuracy_seconds: float | None = None) -> tuple[Model, dict]:
    """Quantize `model` (a path, an `onnx.ModelProto` or an optc `Model`, which is not modified); return the
    quantized Model and a JSON-serializable report (mode, scheme, calibrated ranges, quantized and skipped nodes
    with reasons, accuracy steps).

    Modes (exactly one): `calibration` (a .npz file or directory of them, arrays keyed by input name, batch on
    axis 0) for static QDQ; `dynamic=True` (`dynamic_conv=True`: Conv too, as ConvInteger);
    `weight_only="int4"` (`block_size`, `format` "standard" for opset-21
    blocked DequantizeLinear or "contrib" for com.microsoft MatMulNBits); `float16` / `bfloat16`.
    Static options: `method` minmax | percentile (`percentile`, default 99.999) | entropy; `per_channel`;
    `activations` uint8 | int8 and `symmetric_activations` (default: the target's, x86 `cpu`: uint8 asymmetric;
    `arm64`: int8; `cuda`: int8 symmetric); `reduce_range` (7-bit weights; None: on for `cpu` when this x86 host
    lacks VNNI, whose VPMADDUBSW saturates u8 x s8 sums); `exclude`: node names, op types or output names left in float;
    `ranges_cache`: JSON file of cached ranges; `eval_data` + `max_accuracy_drop` (points of `metric`):
    accuracy-aware, returning the most sensitive layers to float until the drop is within budget (or until
    `accuracy_seconds` have passed: the best model so far, `report["accuracy"]["stopped"]` saying so).
    Raises OptcError (one line) for bad options, bad data or a model with nothing to quantize.
    """
    mode = _mode(calibration, dynamic, weight_only, float16, bfloat16)
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:  # NaN too
        raise OptcError(f"--max-accuracy-drop must be a number >= 0, not {max_accuracy_drop}")
    if batch_size is not None and batch_size < 1:
        raise OptcError(f"--batch-size must be 1 or more, not {batch_size}")
    if max_accuracy_drop is not None and (mode != "static" or eval_data is None):
        raise OptcError("--max-accuracy-drop needs static quantization (calibration data) and --eval data")
    if weights not in ("int8", "int4"):
        raise OptcError(f"--weights must be int8 or int4, not '{weights}'")
    if weights == "int4" and mode != "weight-only":
        raise OptcError("int4 weights are weight-only (MatMul/Gemm/Gather): use --weight-only int4; static and "
                        "dynamic quantization store int8 weights")
    start = time.perf_counter()
    source = _load(model)
    _check_opset(source, mode)
    if exclude:
        given = copy_model(source)
    if optimize_first:
        optimize(source, level=2, inplace=True)
    if exclude:  # names of the model as given, or as optimized (what reports print)
        check_names([given, source], exclude)
    exclude_set = set(exclude)
    report: dict[str, Any] = {"mode": mode}
    if mode == "static":
        scheme = QuantScheme.for_target(target, activations=activations, per_channel=per_channel,
                                        symmetric_activations=symmetric_activations, reduce_range=reduce_range)
        if max_accuracy_drop is not None:
            from .accuracy import accuracy_aware

            result, extra = accuracy_aware(source, calibration, eval_data, scheme=scheme, method=method,
                                           percentile=percentile, exclude=exclude_set, labels=labels, metric=metric,
                                           max_drop=max_accuracy_drop, batch_size=batch_size, cache=ranges_cache,
                                           show_progress=progress, quantize=_static,
                                           try_full_range=reduce_range is None, time_limit=accuracy_seconds)
        else:
            result, extra, _ = _static(source, calibration, scheme=scheme, method=method,
                                       percentile=percentile, exclude=exclude_set, batch_size=batch_size,
                                       cache=ranges_cache, show_progress=progress)
            extra.pop("_outputs")
        report.update(extra)
    elif mode == "dynamic":
        from .dynamic import DynamicContext, dynamic_rules

        if reduce_range is None:
            reduce_range = target == "cpu" and QuantScheme.host_saturates()
        ctx = DynamicContext(per_channel=per_channel, reduce_range=reduce_range, conv=dynamic_conv,
                             exclude=exclude_set)
        result = source
        apply_rules(result, dynamic_rules(ctx), PassContext(), "quantize-dynamic")
        optimize(result, passes="cse,dce", inplace=True)
        quantized, skipped = _entries(ctx.quantized, ctx.skipped, result)
        report.update({"per_channel": per_channel, "reduce_range": reduce_range, "quantized": quantized,
                       "skipped": skipped})
    elif mode == "weight-only":
        from .weight_only import quantize_weight_only

        if weight_only != "int4":
            raise OptcError(f"--weight-only supports int4, not '{weight_only}'")
        result = _opset_for_standard_int4(source) if format == "standard" else source
        report.update(quantize_weight_only(result, bits=4, block_size=block_size, format=format,
                                           exclude=tuple(exclude_set)))
    else:
        from .float_precision import convert_float

        result = source
        report.update(convert_float(result, dtype=mode, keep_io_types=keep_io_types, exclude=tuple(exclude_set)))
    if mode in ("static", "dynamic") and not report["quantized"]:
        reasons = "; ".join(f"{s['node']}: {s['reason']}" for s in report["skipped"][:3])
        raise OptcError("nothing to quantize: no node could be quantized" + (f" ({reasons})" if reasons else
                        " (no Conv, MatMul, Gemm or other quantizable op with float32 inputs)"))
    report["seconds"] = round(time.perf_counter() - start, 3)
    return result, report


def quantize(model: Any, **options: Any) -> Model:
    """Quantize `model`; see `quantize_with_report` for the options. Returns the quantized optc Model (the
    argument is not modified). Raises OptcError as `quantize_with_report` does (bad options, calibration data
    that does not fit the model, an accuracy budget that cannot be met)."""
    return quantize_with_report(model, **options)[0]
