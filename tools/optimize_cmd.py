"""`optc optimize`: run the -O pipeline (or a -p pipeline string) on a model and write the result."""

from __future__ import annotations

import sys

from ..errors import OptcError
from ..fileio import write_json
from ..ir import load, save
from .paths import check_output_path


def run(args) -> int:
    from ..rewrites.pass_manager import PrintIRAfter, TimePasses, VerifyEach, get_pass_info
    from ..rewrites.pipelines import build_pipeline, run_pipeline

    check_output_path(args.model, args.output)
    if args.level is not None and args.passes is not None:
        raise OptcError("give an optimization level (-O0..-O3) or a pipeline (-p), not both")
    if args.bisect_limit is not None and args.bisect_limit < 0:
        raise OptcError("--bisect-limit must be 0 or more")
    if args.report:
        check_output_path(args.model, args.report)
    pipeline = build_pipeline(args.level, args.passes)
    if args.bisect:
        from .debug_cmd import run_bisect

        return run_bisect(args, pipeline)
    for name in args.print_ir_after or []:
        if name != "all":
            get_pass_info(name)
    instruments = []
    if args.print_ir_after:
        instruments.append(PrintIRAfter(args.print_ir_after))
    if args.verify_each:
        instruments.append(VerifyEach())
    if args.time_passes:
        instruments.append(TimePasses())
    model = load(args.model)
    report = run_pipeline(model, pipeline, instruments=instruments, disable=args.disable or [],
                          bisect_limit=args.bisect_limit, verify_each=args.verify_each, fast_math=args.fast_math)
    save(model, args.output)
    if args.report:
        data = {"input": args.model, "output": args.output, "pipeline": pipeline.spec(), "fast_math": args.fast_math,
                **report.to_json()}
        write_json(args.report, data)
    summary = (f"optc: {report.nodes_before} -> {report.nodes_after} nodes, {report.rewrites} rewrites in "
               f"{report.seconds:.3f}s; wrote {args.output}")
    print(summary, file=sys.stderr)
    if args.bisect_limit is not None:
        last = report.last_rewrite
        if args.bisect_limit == 0:
            print("optc: bisect: the limit is 0: no rewrite was applied", file=sys.stderr)
        elif last is None:
            print(f"optc: bisect: the pipeline applied {report.rewrites} rewrites, fewer than the limit "
                  f"{args.bisect_limit}", file=sys.stderr)
        else:
            print(f"optc: bisect: rewrite #{last.index} (the last one applied) was {last.rule} on {last.node} "
                  f"in pass '{last.pass_name}'", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "optimize", help="optimize a model (-O0..-O3 or a pass pipeline)",
        description="Optimize an ONNX model with optc's rewrite passes and write the result (atomically; the "
        "input is never modified). `optc passes` lists the passes and rules.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    levels = p.add_mutually_exclusive_group()
    for level in range(4):
        levels.add_argument(f"-O{level}", dest="level", action="store_const", const=level,
                            help=f"optimization level {level}" + (" (default)" if level == 2 else ""))
    p.set_defaults(level=None)
    p.add_argument("-p", "--passes", metavar="PIPELINE", default=None,
                   help='a pass pipeline instead of a level, e.g. "fold-constants,cse,fuse{set=conv-bn},dce" or '
                   '"fixed-point{max-iterations=4}(cse,dce)"')
    p.add_argument("--fast-math", action="store_true",
                   help="also apply rewrites that are exact only in real arithmetic, not under IEEE 754 (x + 0.0 -> x "
                   "changes -0.0; `optc passes` marks them); off by default: every rewrite keeps NaN, infinities and "
                   "signed zeros")
    p.add_argument("--disable", action="append", metavar="NAME", help="skip the pass NAME (repeatable)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report: time, nodes before/after and rule "
                   "counts per pass")
    p.add_argument("--print-ir-after", action="append", metavar="NAME",
                   help="print the IR (on stderr) after every run of pass NAME, or after every pass with 'all'")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass; fail naming the "
                   "pass that broke it")
    p.add_argument("--time-passes", action="store_true", help="print the time spent in each pass")
    p.add_argument("--bisect-limit", type=int, metavar="N", default=None,
                   help="apply only the first N rewrites and say which rewrite was number N")
    p.add_argument("--bisect", action="store_true",
                   help="find the first rewrite that changes the outputs (binary search over --bisect-limit, "
                   "original vs partly optimized on onnxruntime); writes the model with the rewrites before it; "
                   "exit 1 when one is found")
    p.add_argument("--bisect-inputs", metavar="X.npz", help="inputs for --bisect (default: random, seed 0)")
    p.set_defaults(func=run)
