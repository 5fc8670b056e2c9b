"""`optc evaluate`: a model's accuracy (or mse / cosine similarity) on a test set, per class, and against a
baseline model: the value, the drop and the class that lost the most (see `optc.workflow.evaluate`)."""

from __future__ import annotations

import json

from ..workflow.evaluate import METRICS, evaluate
from .native_log import stdout_to_stderr


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "nan"
    return f"{100 * value:.2f}%" if metric.startswith("top") else f"{value:.6g}"


def print_report(result: dict) -> None:
    """The result of `evaluate` as a short plain-text report on stdout."""
    metric, base = result["metric"], result.get("baseline")
    print(f"model: {result['model']}")
    print(f"samples: {result['samples']} ({result['seconds']:.2f}s)")
    line = f"{metric}: {_fmt(metric, result['value'])}"
    if "reference" in result:
        line += f" (against the {result['reference']})"
    print(line)
    if base is not None:
        drop = (f"{result['drop_points']:.2f} points" if "drop_points" in result
                else "nan" if result["drop"] is None else f"{result['drop']:.6g}")
        print(f"baseline: {_fmt(metric, base['value'])} ({base['model']}); drop: {drop}")
    per_class = result.get("per_class")
    if per_class:
        rows = [("class", "count", "accuracy") + (("baseline", "drop (points)") if base else ())]
        for c, entry in per_class.items():
            row = (c, str(entry["count"]), _fmt(metric, entry["accuracy"]))
            if base:
                theirs = base["per_class"][c]["accuracy"]
                row += (_fmt(metric, theirs), f"{100 * (theirs - entry['accuracy']):.2f}")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w)
                            in enumerate(zip(r, widths, strict=True))))
    worst = result.get("worst_class")
    if worst:
        print(f"worst class: {worst['class']} ({_fmt(metric, worst['baseline'])} -> {_fmt(metric, worst['value'])}, "
              f"drop {worst['drop_points']:.2f} points)")


def run(args) -> int:
    with stdout_to_stderr(args.json):  # native libraries' chatter must not break the JSON document
        result = evaluate(args.model, args.data, labels=args.labels, metric=args.metric, baseline=args.baseline,
                          batch_size=args.batch_size, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a model on a test set, per class and against a baseline",
        description="Evaluate a model (ONNX on onnxruntime, or an artifact from `optc compile`) on a test set: "
        ".npz files keyed by input name with the batch on axis 0 and a labels array. Reports top-1 (or the chosen "
        "metric), per-class accuracy and, with --baseline, the drop and the class that lost the most.")
    p.add_argument("model", help="an ONNX file or a compiled artifact (.so)")
    p.add_argument("--data", required=True, metavar="PATH", help="an .npz file or a directory of them (streamed)")
    p.add_argument("--labels", default="y", metavar="NAME", help="the labels array in the data (default: y)")
    p.add_argument("--metric", default="top1", choices=METRICS,
                   help="top1/top5: accuracy of [N, C] scores against integer labels; mse/cosine: the first "
                   "output against the labels array, or against the baseline's output when the data has no labels "
                   "(default: top1)")
    p.add_argument("--baseline", metavar="MODEL", help="a reference model (e.g. the float model) to compare with")
    p.add_argument("--batch-size", type=int, metavar="N", help="samples per run (default: the model's fixed batch, "
                   "else 256)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
