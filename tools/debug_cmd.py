"""`optc debug reduce`: shrink a failing model to a small subgraph that still fails (`optc.workflow.reduce`);
and `run_bisect`, the body of `optc optimize --bisect` (`optc.workflow.bisect`)."""

from __future__ import annotations

import json
import sys

from ..errors import OptcError
from .native_log import stdout_to_stderr
from .paths import check_output_path


def run_bisect(args, pipeline) -> int:
    """`optc optimize --bisect`: name the first rewrite that changes the outputs and write the model optimized
    with the rewrites before it (all of them when none does). Exit 1 when a bad rewrite is found."""
    from ..ir import load, save
    from ..quantization.data import read_npz
    from ..rewrites.pipelines import run_pipeline
    from ..workflow.bisect import bisect_rewrites

    if args.bisect_limit is not None:
        raise OptcError("--bisect searches the limit itself; give --bisect or --bisect-limit, not both")
    inputs = read_npz(args.inputs) if args.inputs else None
    model = load(args.model)
    from ..units import parse_bytes

    options = {"disable": args.disable or [], "fast_math": args.fast_math, "disable_rules": args.disable_rule or (),
               "enable_rules": args.enable_rule, "size_limit": parse_bytes(args.size_limit, what="--size-limit")}
    result = bisect_rewrites(model, pipeline, inputs, **options)
    keep = result.index - 1 if result.found else None
    run_pipeline(model, pipeline, bisect_limit=keep, **options)
    save(model, args.output)
    print(f"optc: {result.describe()}", file=sys.stderr)
    what = "every rewrite" if keep is None else f"the first {keep} rewrites (the last good ones)"
    print(f"optc: wrote {args.output} with {what}", file=sys.stderr)
    doc = {"input": args.model, "output": args.output, "pipeline": pipeline.spec(), "bisect": result.to_json()}
    if args.report:
        from ..fileio import write_json

        write_json(args.report, doc)
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    return 1 if result.found else 0


def _reduce(args) -> int:
    from ..fileio import atomic_path
    from ..inputs import random_inputs
    from ..ir import load, to_onnx
    from ..quantization.data import model_input_specs, read_npz
    from ..workflow.reduce import against_oracle, command_oracle, reduce_model
    from ..workflow.verify import check_inputs, check_tolerances

    check_output_path(args.model, args.output, (".onnx",))
    if args.save_inputs:
        check_output_path(args.model, args.save_inputs, (".npz",))
    check_tolerances(args.rtol, args.atol)
    if args.check_cmd and (args.against or args.passes):
        raise OptcError("give --check-cmd or --against/--passes, not both")
    model = load(args.model)
    specs = model_input_specs(model)
    feeds = (check_inputs(args.inputs, read_npz(args.inputs), specs) if args.inputs
             else random_inputs(specs, seed=args.seed))
    if args.check_cmd:
        oracle = command_oracle(args.check_cmd)
        check = f"--check-cmd {args.check_cmd!r}"
    else:
        against = args.against or "optimized"
        oracle = against_oracle(against, passes=args.passes, rtol=args.rtol, atol=args.atol)
        check = f"onnxruntime vs {against}" + (f" ({args.passes})" if args.passes else "")
    with stdout_to_stderr(args.json):
        result = reduce_model(to_onnx(model), oracle, feeds)
    with atomic_path(args.output, suffix=".onnx") as tmp:
        import onnx

        onnx.save(result.model, tmp)
    if args.save_inputs:
        from ..fileio import write_npz

        write_npz(args.save_inputs, result.feeds)
    if args.json:
        print(json.dumps({"model": args.model, "output": args.output, "check": check, **result.to_json()},
                         indent=2))
    else:
        kept = ", ".join(f"{n or '?'} ({t})" for n, t in result.nodes[:8]) + (" ..." if len(result.nodes) > 8
                                                                             else "")
        print(f"reduced {args.model}: {result.nodes_before} -> {result.nodes_after} nodes ({result.checks} checks "
              f"of {check}); still fails")
        print(f"kept: {kept}")
        print(f"wrote {args.output}" + (f" and its inputs {args.save_inputs}" if args.save_inputs else ""))
    return 0


def register(sub) -> None:
    import argparse

    p = sub.add_parser("debug", help="debugging tools: reduce a failing model")
    dsub = p.add_subparsers(dest="debug_command", metavar="TOOL", required=True)
    r = dsub.add_parser(
        "reduce", help="shrink a failing model to a small subgraph that still fails",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Shrink a model that fails a check to a small subgraph that still fails, like Polygraphy's `debug reduce`:
bisect the end (shortest failing prefix, later nodes cut off and the values they read marked as outputs),
then the start (earlier nodes cut off, the values they made fed as inputs with what the full model
computes there), then drop single nodes while the rest still fails. Writes a valid ONNX model.

The check (a candidate "fails"):
  default / --against optimized   onnxruntime vs the model optimized by optc (-O2, or --passes PIPELINE)
  --against tvm                   onnxruntime vs the model compiled by optc for the CPU
  --against reference             onnxruntime vs onnx's reference evaluator
  --check-cmd "CMD {model}"       run CMD ({model}: the candidate .onnx, {inputs}: its inputs .npz, in
                                  the same directory as model.onnx; CMD needs one of the two);
                                  exit 0 = good, anything else = fails

  optc debug reduce m.onnx -o /tmp/reduced.onnx --against tvm
  optc debug reduce m.onnx -o /tmp/reduced.onnx --check-cmd "optc compare {model} reference --inputs {inputs}"
""")
    r.add_argument("model", help="an ONNX model that fails the check")
    r.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the reduced model")
    r.add_argument("--against", choices=("optimized", "tvm", "reference"), default=None,
                   help="what onnxruntime's outputs are compared with (default: optimized)")
    r.add_argument("--passes", metavar="PIPELINE", default=None,
                   help="the pipeline of --against optimized (default: -O2)")
    r.add_argument("--check-cmd", metavar="CMD", help="a command that exits 0 for a good model; {model}: the "
                   "candidate's .onnx path, {inputs}: its inputs .npz (beside it as model.onnx); one of the two is "
                   "needed")
    r.add_argument("--inputs", metavar="X.npz", help="the model's inputs (default: random, --seed)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    r.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    r.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    r.add_argument("--save-inputs", metavar="F.npz", help="also write the reduced model's inputs")
    r.add_argument("--json", action="store_true", help="print one JSON object: model, output, check, "
                   "nodes_before, nodes_after, checks, nodes, inputs")
    r.set_defaults(func=_reduce)
