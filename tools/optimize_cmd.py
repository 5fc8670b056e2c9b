"""`optc optimize`: run the -O pipeline (or a -p pipeline string) on a model and write the result."""

from __future__ import annotations

import json
import sys

from ..codegen.input_shapes import fix_input_shapes, parse_input_shapes
from ..errors import OptcError
from ..fileio import write_json
from ..ir import load, save
from ..ir.stats import file_bytes, model_stats
from ..ir.types import TensorType
from ..units import format_bytes, parse_bytes
from .paths import check_output_path


def run(args) -> int:
    from ..rewrites.pass_manager import PrintIRAfter, TimePasses, VerifyEach, get_pass_info
    from ..rewrites.pipelines import build_pipeline, run_pipeline

    check_output_path(args.model, args.output, (".onnx",))
    if args.level is not None and args.passes is not None:
        raise OptcError("give an optimization level (-O0..-O3) or a pipeline (-p), not both")
    if args.bisect_limit is not None and args.bisect_limit < 0:
        raise OptcError("--bisect-limit must be 0 or more")
    if args.report:
        check_output_path(args.model, args.report, (".json",))
    pipeline = build_pipeline(args.level, args.passes, args.runtime)
    if args.check < 0:
        raise OptcError("--check must be 0 or more (the number of random input sets to compare)")
    if args.bisect and args.check:
        raise OptcError("--bisect compares every step itself; give --bisect or --check, not both")
    if args.inputs and not (args.check or args.bisect):
        raise OptcError("--inputs gives the inputs of --check or --bisect; add one of them")
    input_shapes = parse_input_shapes(args.input_shape)
    if input_shapes and args.bisect:
        raise OptcError("--bisect runs the model as it is: give --input-shape without --bisect")
    if args.bisect:
        from .debug_cmd import run_bisect

        return run_bisect(args, pipeline)
    for name in args.print_ir_after or []:
        if name != "all":
            get_pass_info(name)
    size_limit = parse_bytes(args.size_limit, what="--size-limit")
    instruments = []
    if args.print_ir_after:
        instruments.append(PrintIRAfter(args.print_ir_after))
    if args.verify_each:
        instruments.append(VerifyEach())
    if args.time_passes:
        instruments.append(TimePasses())
    model = load(args.model)
    unranked = {v.name: input_shapes[v.name] for v in model.graph.inputs
                if v.name in input_shapes and isinstance(v.type, TensorType) and v.type.shape is None}
    fixed = fix_input_shapes(model, input_shapes) if input_shapes else {}
    before = model_stats(model)
    size_in = file_bytes(args.model, model)
    report = run_pipeline(model, pipeline, instruments=instruments, disable=args.disable or [],
                          bisect_limit=args.bisect_limit, verify_each=args.verify_each, fast_math=args.fast_math,
                          disable_rules=args.disable_rule or (), enable_rules=args.enable_rule,
                          trace_rules=args.trace or (), trace_sink=_trace_line, size_limit=size_limit)
    checked = _check(args, model, fixed, unranked) if args.check else None
    if checked is not None and not checked["equal"]:
        print(f"optc: check failed: {checked['message']}; {args.output} was not written (find the rewrite with "
              "--bisect)", file=sys.stderr)
        if args.json:
            print(json.dumps({"input": args.model, "output": None, "check": checked}, indent=2, allow_nan=False))
        return 1
    save(model, args.output)
    after = model_stats(model)
    sizes = (size_in, file_bytes(args.output))
    data = {"input": args.model, "output": args.output, "pipeline": pipeline.spec(), "fast_math": args.fast_math,
            **({"input_shapes": {k: list(v) for k, v in input_shapes.items()}} if input_shapes else {}),
            "before": _stats_json(before, sizes[0]), "after": _stats_json(after, sizes[1]),
            **({"check": checked} if checked is not None else {}), **report.to_json()}
    if args.report:
        write_json(args.report, data)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_table(before, after, sizes)
    say = _stderr
    say(f"optc: {report.nodes_before} -> {report.nodes_after} nodes, {report.rewrites} rewrites in "
        f"{report.seconds:.3f}s; wrote {args.output}")
    if report.fold_refusals:
        big = max(report.fold_refusals, key=lambda r: r.nbytes)
        limits = sorted({r.limit for r in report.fold_refusals if r.limit is not None})
        how = f"--size-limit {_round_up(big.nbytes)} folds them" if limits == [size_limit] else \
            f"raise the size-limit option of fold-constants in the pipeline (size-limit={_round_up(big.nbytes)})"
        say(f"optc: {len(report.fold_refusals)} constant(s) larger than the size limit "
            f"({', '.join(format_bytes(x) for x in limits)}) left to be computed at run time (largest "
            f"{format_bytes(big.nbytes)}, {big.node}); folding them would grow the file: {how}")
    if checked is not None:
        say(f"optc: check: outputs equal on {checked['samples']} {checked['source']} input set(s) (rtol "
            f"{checked['rtol']}, atol {checked['atol']}, onnxruntime)")
    if args.bisect_limit is not None:
        last = report.last_rewrite
        if args.bisect_limit == 0:
            say("optc: bisect: the limit is 0: no rewrite was applied")
        elif last is None:
            say(f"optc: bisect: the pipeline applied {report.rewrites} rewrites, fewer than the limit "
                f"{args.bisect_limit}")
        else:
            say(f"optc: bisect: rewrite #{last.index} (the last one applied) was {last.rule} on {last.node} "
                f"in pass '{last.pass_name}'")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _trace_line(line: str) -> None:
    print(f"optc: trace: {line}", file=sys.stderr)


def _round_up(nbytes: int) -> str:
    mb = -(-nbytes // (1 << 20))
    return f"{mb}MB"


def _stats_json(st, nbytes: int) -> dict:
    return {"nodes": st.nodes, "ops": dict(sorted(st.ops.items())), "parameters": st.parameters,
            "parameter_bytes": st.parameter_bytes, "file_bytes": nbytes}


def _check(args, model, dims: dict[str, int], unranked: dict[str, tuple[int, ...]]) -> dict:
    """Compare the input model and the optimized one on onnxruntime: on `args.inputs` when given, else on
    `args.check` random input sets (seeds 0..N-1), the symbolic dims `--input-shape` fixed (`dims`) at their sizes.
    Inputs of unknown rank that `--input-shape` gave a shape (`unranked`, {name: shape}) are fed at that shape:
    the input model is compared with those inputs fixed as the optimized one was.
    Returns {samples, source, rtol, atol, equal} and, when an output differs, `message` naming the first one."""
    from ..workflow.compare import compare_models
    from .compare import DEFAULT_ATOL, DEFAULT_RTOL

    reference = args.model
    if unranked:
        reference = load(args.model)
        fix_input_shapes(reference, unranked)
    seeds = [0] if args.inputs else list(range(args.check))
    result = {"samples": len(seeds), "source": "given" if args.inputs else "random", "rtol": DEFAULT_RTOL,
              "atol": DEFAULT_ATOL, "equal": True}
    for seed in seeds:
        rep = compare_models(reference, model, args.inputs, seed=seed, dims=dims or None)
        if not rep.equal:
            bad = next(c for c in rep.comparison.outputs if not c.equal)
            where = f"the inputs of {args.inputs}" if args.inputs else f"random input set {seed}"
            result.update(equal=False, message=f"the optimized model's output '{bad.name}' differs from the input "
                          f"model's on {where} (max abs error {bad.max_abs})")
            break
    return result


def _print_table(before, after, sizes: tuple[int, int]) -> None:
    """onnxsim-style before/after table on stderr: op counts, parameters and file size."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("", style="bold")
    table.add_column("input", justify="right")
    table.add_column("optimized", justify="right")
    for op in sorted(set(before.ops) | set(after.ops)):
        a, b = before.ops.get(op, 0), after.ops.get(op, 0)
        table.add_row(op, str(a), str(b) if a == b else f"[bold]{b}[/]")
    table.add_row("nodes", str(before.nodes), str(after.nodes))
    table.add_row("parameters", f"{before.parameters:,}", f"{after.parameters:,}")
    table.add_row("file size", format_bytes(sizes[0]), format_bytes(sizes[1]))
    Console(stderr=True, highlight=False).print(table)


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
    p.add_argument("--for", dest="runtime", choices=("standard", "onnxruntime"), default=None,
                   help="also fuse transformer blocks (attention, layer norms, Gelu) into standard ONNX ops "
                        "(standard; the opset raised up to 23 only where needed and safe) or into onnxruntime's "
                        "com.microsoft contrib ops (onnxruntime); default: keep the input's operator set")
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS", help="fix an input's shape before "
                   "optimizing, e.g. input_ids:1x128 (repeatable); symbolic dims it names are fixed everywhere, and "
                   "the optimized model then takes only that shape (an export whose symbolic dims it cannot run at "
                   "other sizes fuses as a static one)")
    p.add_argument("--fast-math", action="store_true",
                   help="also apply rewrites that are exact only in real arithmetic, not under IEEE 754 (x + 0.0 -> x "
                   "changes -0.0; `optc passes` marks them); off by default: every rewrite keeps NaN, infinities and "
                   "signed zeros")
    p.add_argument("--disable", action="append", metavar="NAME", help="skip the pass NAME (repeatable)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report: time, nodes before/after, rule counts "
                   "per pass, attempts/rejections/applications per rule, folds refused by --size-limit")
    p.add_argument("--print-ir-after", action="append", metavar="NAME",
                   help="print the IR (on stderr) after every run of pass NAME, or after every pass with 'all'")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass; fail naming the "
                   "pass that broke it")
    p.add_argument("--time-passes", action="store_true", help="print the time spent in each pass")
    p.add_argument("--trace", action="append", metavar="RULE",
                   help="print every attempted match of rule RULE ('all': every rule) on stderr: the rewrite it "
                   "made, or why it was rejected (the failing check, best partial match) (repeatable)")
    p.add_argument("--disable-rule", action="append", metavar="NAME",
                   help="never apply the rule NAME (repeatable; `optc passes` lists the rules)")
    p.add_argument("--enable-rule", action="append", metavar="NAME",
                   help="apply only the rules named (repeatable); other rules are filtered out, passes that are "
                   "not rule sets (fold-constants, cse, dce) still run")
    p.add_argument("--size-limit", metavar="SIZE", default="1MB",
                   help="largest tensor constant folding may create when the fold grows the model (ConstantOfShape, "
                   "Expand, Tile of constants), e.g. 64KB, 100MB, none (default 1MB): larger ones stay computed at "
                   "run time, so a model that generates its weights keeps its file size")
    p.add_argument("--check", type=int, metavar="N", default=0,
                   help="compare the input and the optimized model on onnxruntime on N random input sets (or on "
                   "--inputs) before writing; on a difference nothing is written and the exit code is 1 (default 0: "
                   "no check)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (before/after op counts, parameters, file bytes, rule "
                   "statistics, passes) instead of the table")
    p.add_argument("--bisect-limit", type=int, metavar="N", default=None,
                   help="apply only the first N rewrites and say which rewrite was number N")
    p.add_argument("--bisect", action="store_true",
                   help="find the first rewrite that changes the outputs (binary search over --bisect-limit, "
                   "original vs partly optimized on onnxruntime); writes the model with the rewrites before it; "
                   "exit 1 when one is found")
    p.add_argument("--inputs", metavar="X.npz", help="the inputs --check or --bisect run the models on (default: "
                   "random, seeds 0..N-1)")
    p.set_defaults(func=run)
