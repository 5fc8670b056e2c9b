"""`optc auto`: baseline, one optimization at a time, measured, kept when it helps, stop when the requirements
hold; a report in the output directory (see `optc.workflow.auto`)."""

from __future__ import annotations

import json
import sys

from ..workflow.auto import BACKENDS, auto
from ..workflow.evaluate import METRICS
from .native_log import stdout_to_stderr


def run(args) -> int:
    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr)

    with stdout_to_stderr(args.json):
        result = auto(args.model, args.eval, args.calibration, output=args.output, labels=args.labels,
                      metric=args.metric, max_accuracy_drop=args.max_accuracy_drop,
                      max_latency_ms=args.max_latency_ms, min_speedup=args.min_speedup, max_size_mb=args.max_size_mb,
                      backends=args.backends, threads=args.threads, budget_minutes=args.budget_minutes,
                      latency_batch=args.latency_batch, resume=args.resume, log=log)
    if args.json:
        print(json.dumps({"met": result.met, "chosen": result.chosen["name"], "backend": result.chosen["backend"],
                          "stop_reason": result.stop_reason, "unmet": result.unmet, "seconds": result.seconds,
                          "files": result.files}, indent=2))
    else:
        c = result.chosen
        print(f"chosen: {c['name']} on {c['backend']} (speed-up {c['speedup']:.2f}x, accuracy drop "
              f"{c['drop']:.3g} {result.report['unit']}, {c['size_mb']:.3f} MB)")
        for v in result.verdicts.values():
            print(f"  {v['text']}")
        print(f"stopped: {result.stop_reason}; {result.seconds:.0f} s of {result.budget_s:.0f} s")
        print(f"report: {result.files['report.html']}")
    return 0 if result.met else 1


def register(sub) -> None:
    p = sub.add_parser(
        "auto", help="the optimization workflow in one command: baseline, one step at a time, stop when met",
        description="Measure the baseline (accuracy, per-class accuracy, latency median and p90, size), then try "
        "graph optimization (-O2/-O3), float16/bfloat16, dynamic int8, static int8 (accuracy-aware), int4 "
        "weight-only, pruning at increasing ratios (whole multiples of 16 channels) and the TVM-compiled library "
        "(untuned, bf16 where the CPU has bf16 dot products, the static int8 model on integer kernels, then tuned "
        "within the budget), keeping a step only when it is faster (or smaller, under --max-size-mb) and within "
        "the accuracy budget; a step that would not fit in the time left is skipped (--resume tries it again); "
        "stop as soon as every requirement holds. Writes report.md, report.html, report.json and the "
        "chosen model(s) into OUTDIR. Exit 0 when every requirement holds, 1 when one fails (the report says by "
        "how much), 2 on errors.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--eval", required=True, metavar="PATH", help="the test set: an .npz file or a directory of them")
    p.add_argument("--calibration", metavar="PATH", help="calibration data for static int8 (skipped without it)")
    p.add_argument("--labels", default="y", metavar="NAME", help="the labels array in the test set (default: y)")
    p.add_argument("--metric", default="top1", choices=METRICS, help="the accuracy metric (default: top1)")
    p.add_argument("--max-accuracy-drop", default="0.5", metavar="D",
                   help="accuracy budget against the baseline: points for top1/top5 (default 0.5)")
    p.add_argument("--max-latency-ms", metavar="MS", help="median latency required on the chosen backend")
    p.add_argument("--min-speedup", metavar="X", help="speed-up over the baseline on the first backend (e.g. 2)")
    p.add_argument("--max-size-mb", metavar="MB", help="largest model file (10^6 bytes)")
    p.add_argument("--backends", default="onnxruntime", metavar="LIST",
                   help=f"comma-separated, from {','.join(BACKENDS)} (default: onnxruntime)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="intra-op threads of both runtimes (default 1)")
    p.add_argument("--budget-minutes", default="30", metavar="M", help="wall-clock budget (default 30)")
    p.add_argument("--latency-batch", type=int, default=1, metavar="N",
                   help="samples per timed run (default 1; a model with a fixed batch uses it)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run saved in OUTDIR")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="the output directory")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)
