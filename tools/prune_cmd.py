"""`optc prune`: structured channel pruning (or magnitude pruning to zeros) with a report of parameters and MACs
before and after, the groups pruned and those left alone with the reason, and with --eval the accuracy before
and after (see `optc.workflow.prune`)."""

from __future__ import annotations

import json

from ..errors import OptcError
from ..rewrites.passes.prune import CHANNEL_MULTIPLE, CRITERIA
from ..workflow.prune import PruneReport, prune
from .native_log import stdout_to_stderr
from .paths import check_output_path


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptcError(f"--ratio: '{text}' is not a number") from None
    if not 0 < value < 1:
        raise OptcError(f"--ratio must be in (0, 1), got {text}")
    return value


def _multiple(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise OptcError(f"--multiple must be a positive integer, got '{text}'")
    value = int(text)
    if not 1 <= value <= 1 << 16:
        raise OptcError(f"--multiple must be in 1..65536, got {text}")
    return value


def _change(before: int, after: int) -> str:
    pct = 100.0 * (before - after) / before if before else 0.0
    return f"{before:,} -> {after:,} (-{pct:.1f}%)"


def print_report(report: PruneReport, output: str) -> None:
    print(f"{report.mode} pruning, ratio {report.ratio:g}" +
          (f", criterion {report.criterion}, channels kept in multiples of {report.multiple}"
           if report.mode == "structured" else "") + f"; wrote {output}")
    print(f"parameters: {_change(report.params_before, report.params_after)}")
    if report.mode == "unstructured":
        print(f"non-zero parameters: {_change(report.nonzero_before, report.nonzero_after)} ({report.zeroed:,} "
              "weights set to zero)")
    print(f"MACs per sample (Conv/Gemm/MatMul): {_change(report.flops_before, report.flops_after)}")
    for g in report.groups_pruned:
        print(f"  pruned  {', '.join(g.producers)}: {g.channels_before} -> {g.channels_after} channels, "
              f"-{g.params_removed:,} params, -{g.macs_removed:,} MACs")
    for g in report.groups_skipped:
        print(f"  kept    {', '.join(g.producers)} ({g.channels_before} channels): {g.reason}")
    for f in report.reconstruction or []:
        if f.status == "skipped":
            print(f"  as is   {f.node}: not refitted: {f.reason}")
        else:
            print(f"  {'refit ' if f.status == 'refitted' else 'as is '}  {f.node}: held-out error "
                  f"{100 * f.error_before:.3g}% -> {100 * f.error_after:.3g}%"
                  f"{'' if f.status == 'refitted' else ' (no gain: weights left as pruned)'} ({f.columns} "
                  f"unknowns per channel, {f.rows:,} rows, ridge {f.ridge:g})")
    acc = report.accuracy
    if acc is not None:
        print(f"{acc['metric']} on {acc['samples']} samples: {100 * acc['baseline']['value']:.2f}% -> "
              f"{100 * acc['value']:.2f}% (drop {acc['drop_points']:.2f} points; worst class "
              f"{acc['worst_class']['class']}: drop {acc['worst_class']['drop_points']:.2f} points)")
    print(f"note: {report.note}")


def run(args) -> int:
    ratio, multiple = _ratio(args.ratio), _multiple(args.multiple)
    check_output_path(args.model, args.output, (".onnx",))
    with stdout_to_stderr(args.json):  # native libraries' chatter must not break the JSON document
        from ..ir import save
        from ..workflow.evaluate import evaluate

        model, report = prune(args.model, ratio, criterion=args.criterion, unstructured=args.unstructured,
                              multiple=multiple, calibration=args.calibration)
        if args.eval:
            report.accuracy = evaluate(model, args.eval, labels=args.labels, metric="top1", baseline=args.model,
                                       threads=args.threads)
        save(model, args.output)
    if args.json:
        print(json.dumps(dict(report.to_json(), output=args.output), indent=2))
    else:
        print_report(report, args.output)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "prune", help="remove the weakest channels of Conv/Gemm/MatMul (or zero the smallest weights)",
        description="Structured channel pruning: in each group of Conv/Gemm/MatMul output channels that must be "
        "dropped together (residual Adds, Concat, BatchNorm, depthwise convs, Flatten are followed through), "
        "remove the --ratio of channels with the smallest weight norm, and the matching inputs of every "
        "consumer. Channels that reach a graph output or an op the analysis does not understand are left alone "
        "(the report says why). No fine-tuning: accuracy usually drops; measure it with --eval, and win much of "
        "it back with --calibration (least-squares refit of the next layers). "
        "--unstructured sets the smallest weights to zero instead (no CPU speed-up by itself).")
    p.add_argument("model", help="the ONNX model (never modified)")
    p.add_argument("-o", "--output", required=True, help="the pruned ONNX model")
    p.add_argument("--ratio", required=True, metavar="R", help="fraction of channels (or weights) to remove, in (0, 1)")
    p.add_argument("--criterion", choices=CRITERIA, default="l1", help="channel score: l1 or l2, the norm of its "
                   "filter, summed over the layers of a group; path, the l1 norm times the depthwise filters and "
                   "BatchNorm scales on its way and the l1 norm of the next layers' weights that read it "
                   "(default: l1)")
    p.add_argument("--multiple", default=str(CHANNEL_MULTIPLE), metavar="N", help="keep a multiple "
                   "of N channels in each group, rounding the kept count up (never more than --ratio removed; a "
                   "group of N channels or fewer is left alone): vector kernels run whole vectors of channels, "
                   "and onnxruntime's convolutions ran up to 9x slower on other counts. 1: exactly the ratio "
                   f"(default: {CHANNEL_MULTIPLE})")
    p.add_argument("--unstructured", action="store_true", help="magnitude pruning: set the smallest weights of "
                   "each Conv/Gemm/MatMul to zero, shapes unchanged (for compression and sparse-aware back ends; no "
                   "CPU speed-up by itself)")
    p.add_argument("--calibration", metavar="DATA", help="the model's inputs (.npz or directory, as for optc "
                   "quantize; 20 samples or more, every 5th held out): refit the layers that read pruned channels by "
                   "least squares to reproduce the original model's outputs on them (structured only)")
    p.add_argument("--eval", metavar="DATA", help="a labelled test set (.npz or directory, as for optc evaluate): "
                   "top-1 accuracy before and after")
    p.add_argument("--labels", default="y", metavar="NAME", help="the labels array in --eval data (default: y)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads for --eval")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
