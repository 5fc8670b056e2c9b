"""`optc quantize`: static (calibrated QDQ), dynamic, weight-only int4, float16/bfloat16; accuracy-aware."""

from __future__ import annotations

import json
import math
import os
import sys

from ..errors import OptcError
from ..fileio import write_json
from ..ir.stats import file_bytes
from ..units import format_bytes
from .native_log import stdout_to_stderr
from .paths import check_output_path


def default_cache_dir() -> str:
    """Where calibrated ranges are cached between runs: $OPTC_CACHE_DIR, else $XDG_CACHE_HOME/optc/calibration."""
    if os.environ.get("OPTC_CACHE_DIR"):
        return os.path.join(os.environ["OPTC_CACHE_DIR"], "calibration")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "optc", "calibration")


def _quantize(args, max_drop: float | None):
    from ..quantization.api import quantize_with_report

    return quantize_with_report(
        args.model, calibration=args.calibration, method=args.method, percentile=args.percentile,
        per_channel=args.per_channel, activations=args.activations, weights=args.weights,
        symmetric_activations=args.symmetric_activations or None, reduce_range=args.reduce_range,
        exclude=args.exclude or (), target=args.target, dynamic=args.dynamic, dynamic_conv=args.dynamic_conv,
        weight_only=args.weight_only,
        block_size=args.block_size, format=args.format, float16=args.float16, bfloat16=args.bfloat16,
        keep_io_types=not args.no_keep_io_types, eval_data=args.eval, labels=args.labels, metric=args.metric,
        max_accuracy_drop=max_drop, ranges_cache=args.ranges_cache, batch_size=args.batch_size)


def run(args) -> int:
    from ..ir import save

    check_output_path(args.model, args.output, (".onnx",))
    if args.report:
        check_output_path(args.model, args.report, (".json",))
    _check_mode_options(args)
    if args.no_cache and args.ranges_cache is not None:
        raise OptcError("--no-cache and --ranges-cache contradict each other; give one")
    if args.calibration is not None and not args.no_cache and args.ranges_cache is None:
        try:
            os.makedirs(default_cache_dir(), exist_ok=True)
            args.ranges_cache = default_cache_dir()
        except OSError:  # no usable cache directory: calibrate without one
            pass
    max_drop = args.max_accuracy_drop
    if args.eval is not None and max_drop is None:
        max_drop = math.inf  # --eval alone: measure, return nothing to float
    if max_drop is not None and args.eval is None:
        raise OptcError("--max-accuracy-drop needs --eval TEST_DATA")
    with stdout_to_stderr(args.json):  # --json leaves exactly one JSON document on stdout
        model, report = _quantize(args, max_drop)
    save(model, args.output)  # (the report's directory was checked before any work)
    report.update({"input": args.model, "output": args.output, "bytes_in": file_bytes(args.model),
                   "bytes_out": file_bytes(args.output)})
    if isinstance(report.get("accuracy", {}).get("max_drop"), float) and math.isinf(report["accuracy"]["max_drop"]):
        report["accuracy"]["max_drop"] = None
    if args.report:
        write_json(args.report, report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    _summary(report)
    acc = report.get("accuracy")
    return 1 if acc and acc["max_drop"] is not None and not acc["met"] else 0


#: options that only one mode reads, with their defaults (given with another mode: an error, not silence)
_MODE_OPTIONS = {
    "static": {"method": "minmax", "percentile": 99.999, "activations": None, "symmetric_activations": False,
               "eval": None, "max_accuracy_drop": None, "ranges_cache": None, "batch_size": None},
    "weight-only": {"block_size": None, "format": None},
    "float": {"no_keep_io_types": False},
    "dynamic": {"dynamic_conv": False},
}


def _check_mode_options(args) -> None:
    mode = ("static" if args.calibration is not None else "weight-only" if args.weight_only
            else "float" if args.float16 or args.bfloat16 else "dynamic")
    for owner, options in _MODE_OPTIONS.items():
        if owner == mode:
            continue
        for name, default in options.items():
            if getattr(args, name) != default:
                flag = "--" + name.replace("_", "-")
                raise OptcError(f"{flag} applies to {owner} quantization, not to {mode}")
    if args.block_size is None:
        args.block_size = 32
    if args.format is None:
        args.format = "standard"


def _summary(report: dict) -> None:
    mode = report["mode"]
    what = mode
    if mode == "static":
        s = report["scheme"]
        what = (f"static, {s['activations']} activations x {s['weights']} weights, "
                f"{'per-channel' if s['per_channel'] else 'per-tensor'}, {report['calibration']['method']}"
                f"{' (cached ranges)' if report['calibration']['cached'] else ''}")
    err = sys.stderr
    sizes = f"{format_bytes(report['bytes_in'])} -> {format_bytes(report['bytes_out'])}; wrote {report['output']}"
    if mode in ("float16", "bfloat16"):
        kept = len(report.get("kept_float32", ()))
        print(f"optc: {report.get('converted_nodes', 0)} nodes compute in {mode}, {kept} in float32 (weights "
              f"stored in {mode}); {sizes}", file=err)
    else:
        print(f"optc: quantized {len(report.get('quantized', ()))} nodes ({what}), "
              f"{len(report.get('skipped', ()))} left in float; {sizes}", file=err)
    acc = report.get("accuracy")
    if acc:
        first = acc["steps"][0]
        print(f"optc: {acc['metric']}: float {acc['baseline']:.4f}, quantized {first['value']:.4f} "
              f"(drop {first['drop']:.3g})", file=err)
        for step in acc["steps"][1:]:
            print(f"optc:   {step['returned_to_float']} back to float -> {step['value']:.4f} (drop {step['drop']:.3g})",
                  file=err)
        if acc["max_drop"] is not None:
            verdict = "within" if acc["met"] else "NOT within"
            kept = ", ".join(acc["float_layers"]) or "none"
            print(f"optc: drop {acc['drop']:.3g} is {verdict} the budget {acc['max_drop']}; layers kept in float: "
                  f"{kept}", file=err)


def register(sub) -> None:
    from ..quantization.calibrate import METHODS
    from ..quantization.scheme import TARGETS

    p = sub.add_parser(
        "quantize", help="quantize a model (static QDQ, dynamic, weight-only int4, float16/bfloat16)",
        description="Quantize an ONNX model with optc's rewrite rules and write the result (atomically; the input is "
        "never modified). Static: --calibration DATA (an .npz file or a directory of them, arrays keyed by input "
        "name, batch on axis 0). Or --dynamic, --weight-only int4, --float16, --bfloat16.")
    p.add_argument("model", help="an ONNX file (float32)")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    mode = p.add_argument_group("mode (choose one)")
    mode.add_argument("--calibration", metavar="DATA", help="calibration data: static quantization (QDQ)")
    mode.add_argument("--dynamic", action="store_true", help="int8 weights, activations quantized at run time "
                      "(MatMul/Gemm)")
    mode.add_argument("--dynamic-conv", action="store_true", help="with --dynamic: Conv too (ConvInteger)")
    mode.add_argument("--weight-only", choices=["int4"], help="blockwise int4 weights (MatMul, Gemm, Gather)")
    mode.add_argument("--float16", action="store_true", help="float16 compute, float32 kept where needed")
    mode.add_argument("--bfloat16", action="store_true", help="bfloat16, float32 kept where needed")
    st = p.add_argument_group("static quantization")
    st.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (default: minmax)")
    st.add_argument("--percentile", type=float, default=99.999, help="for --method percentile (default 99.999)")
    pc = st.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                    help="one weight scale per output channel (default)")
    pc.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one scale per weight")
    st.add_argument("--activations", choices=["uint8", "int8"], help="activation type (default: the target's; "
                    "cpu: uint8)")
    st.add_argument("--weights", choices=["int8", "int4"], default="int8", help="weight type (int4: weight-only)")
    st.add_argument("--symmetric-activations", action="store_true", help="zero point 0 (128 for uint8)")
    rr = st.add_mutually_exclusive_group()
    rr.add_argument("--reduce-range", dest="reduce_range", action="store_true", default=None,
                    help="7-bit weights (default on x86 CPUs without VNNI, whose VPMADDUBSW saturates u8 x s8 sums)")
    rr.add_argument("--no-reduce-range", dest="reduce_range", action="store_false", help="full 8-bit weights")
    st.add_argument("--target", choices=TARGETS, default="cpu", help="whose integer kernels to suit (default cpu)")
    st.add_argument("--exclude", nargs="+", action="extend", metavar="NODE_OR_OP",
                    help="node names, op types or output names to leave in float (repeatable; a fused node matches "
                    "the names of the nodes it replaced)")
    st.add_argument("--ranges-cache", metavar="PATH", help="a JSON file (or directory) caching calibrated ranges "
                    "(default: a per-model file in $XDG_CACHE_HOME/optc/calibration)")
    st.add_argument("--no-cache", action="store_true", help="calibrate again; cache nothing")
    st.add_argument("--batch-size", type=int, metavar="N",
                    help="calibration samples per run (default 1: every activation of a run is held at once)")
    acc = p.add_argument_group("accuracy")
    acc.add_argument("--eval", metavar="DATA", help="test data (with a labels array): measure float and quantized")
    acc.add_argument("--labels", default="y", metavar="NAME", help="the labels array in --eval data (default y)")
    acc.add_argument("--metric", choices=["top1", "top5", "mse", "cosine"], default="top1")
    acc.add_argument("--max-accuracy-drop", type=float, metavar="POINTS", help="return the most sensitive layers "
                     "to float until the drop (top1/top5: percentage points; mse: increase, cosine: decrease) is at most POINTS; exit 1 (the best "
                     "model found still written) when no quantized model meets it")
    wo = p.add_argument_group("weight-only and float16")
    wo.add_argument("--block-size", type=int, default=None, help="int4 block size (default 32)")
    wo.add_argument("--format", choices=["standard", "contrib"], default=None,
                    help="int4 as opset-21 blocked DequantizeLinear (standard) or com.microsoft MatMulNBits")
    wo.add_argument("--no-keep-io-types", action="store_true", help="float16/bfloat16 graph inputs and outputs too")
    p.add_argument("--report", metavar="FILE", help="write the JSON report (ranges, formats, skipped nodes)")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    p.set_defaults(func=run)
