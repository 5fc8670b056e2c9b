"""`optc compare`: run two endpoints (models, runtimes, artifacts) on the same inputs and compare their outputs,
or with `--mark-all` every intermediate tensor, naming the first node whose output diverges
(`optc.workflow.compare`). Exits 0 when everything matches, 1 on a difference, 2 on bad input."""

from __future__ import annotations

import json
import os

from ..errors import OptcError
from ..fileio import write_npz
from .native_log import stdout_to_stderr
from .paths import check_output_path


def _print_mark_all(report) -> None:
    m = report.mark_all
    differ = sum(not t.comparison.equal for t in m.tensors)
    missing = f"; {len(m.not_compared)} of a's tensors have no counterpart in b" if m.not_compared else ""
    print(f"mark-all: {len(m.tensors)} tensors compared, {differ} differ{missing}")
    if m.first is None:
        print("mark-all: no compared tensor diverges beyond the tolerance")
    else:
        print(m.first.describe())


def _save(path: str, arrays: dict) -> None:
    write_npz(path, arrays)
    print(f"wrote {path}")


def run(args) -> int:
    from ..workflow.compare import compare_models
    from .verify_cmd import _print_text, parse_dims

    if args.save_inputs and args.save_outputs and os.path.abspath(args.save_inputs) == \
            os.path.abspath(args.save_outputs):
        raise OptcError("--save-inputs and --save-outputs name the same file")
    for path in (args.save_inputs, args.save_outputs):
        if path:
            for source in (args.a, args.b, args.inputs):
                check_output_path(source if source and os.path.exists(source) else None, path, (".npz",))
    with stdout_to_stderr(args.json):
        report = compare_models(args.a, args.b, args.inputs, rtol=args.rtol, atol=args.atol, mark_all=args.mark_all,
                                data=args.data, dims=parse_dims(args.dim), seed=args.seed,
                                strict_zeros=args.strict_zeros)
        if args.save_inputs:
            _save(args.save_inputs, report.feeds)
        if args.save_outputs:
            _save(args.save_outputs, {**{f"a:{k}": v for k, v in report.outputs_a.items()},
                                      **{f"b:{k}": v for k, v in report.outputs_b.items()}})
    if args.json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False))
    else:
        _print_text(report.comparison, report.a, report.b, report.inputs)
        if report.samples > 1:
            print(f"samples: {report.mismatched_samples} of {report.samples} batches differ; shown: batch "
                  f"{report.sample}")
        if report.mark_all is not None:
            _print_mark_all(report)
    return 0 if report.equal else 1


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "compare", help="compare two models, runtimes or artifacts; --mark-all finds the first diverging node",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run A and B on the same inputs and compare their outputs, like Polygraphy's `run`. Each of A and B is:

  model.onnx            the model on onnxruntime (graph optimizations off)
  model.onnx@RUNTIME    the model on RUNTIME: onnxruntime, reference (onnx's reference evaluator),
                        optimized (optimized by optc at -O2, run on onnxruntime), tvm (compiled by optc, CPU)
  RUNTIME               the other side's model on RUNTIME
  lib.so                an artifact of `optc compile` (its lib.so.json beside it)

  optc compare m.onnx reference          m on onnxruntime vs m on the reference evaluator
  optc compare m.onnx tvm                m on onnxruntime vs m compiled for the CPU
  optc compare m.onnx m_opt.onnx --mark-all

--mark-all makes every intermediate tensor of both models an output, pairs them by name (and by the
provenance of optc's rewrites where the optimized model is made here, or the rewriter's NAME_k renaming),
compares them in A's topological order and names the first node whose output differs beyond the tolerance,
its op type, whether its inputs still matched (then that node is the culprit) and its worst element.
Compiled code (an artifact, tvm) has no intermediate tensors: --mark-all refuses it.

Element rules as `optc verify`: |a - b| <= atol + rtol * max(|a|, |b|); NaN equals only NaN; an infinity
only the same infinity. Exit 0 when everything matches, 1 on a difference, 2 on bad input (one line).""")
    p.add_argument("a", metavar="A", help="model.onnx, model.onnx@RUNTIME, RUNTIME or lib.so")
    p.add_argument("b", metavar="B", help="model.onnx, model.onnx@RUNTIME, RUNTIME or lib.so")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--inputs", metavar="X.npz", help="input values by input name (default: random)")
    src.add_argument("--data", metavar="PATH", help="an .npz file or a directory of them; every file (or every "
                     "batch of a fixed batch size) is compared")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--strict-zeros", action="store_true", help="count -0.0 vs +0.0 as a mismatch")
    p.add_argument("--mark-all", action="store_true",
                   help="compare every intermediate tensor and name the first diverging node")
    p.add_argument("--save-inputs", metavar="F.npz", help="write the inputs used (of the batch shown)")
    p.add_argument("--save-outputs", metavar="F.npz",
                   help="write both sides' outputs (every marked tensor with --mark-all) as 'a:NAME' and 'b:NAME'")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE",
                   help="value of a symbolic dim for random inputs (default 1; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: a, b, inputs, samples, "
                   "equal, outputs (as optc verify --json) and, with --mark-all, mark_all: compared, mismatched, "
                   "not_compared, first_divergence, tensors")
    p.set_defaults(func=run)
