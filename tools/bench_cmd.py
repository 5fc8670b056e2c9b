"""`optc bench`: latency of the optc artifact beside onnxruntime, and how far their outputs differ."""

from __future__ import annotations

import json
import os

from ..errors import OptcError
from ..workflow.bench import bench
from .native_log import stdout_to_stderr
from .verify_cmd import parse_dims


def run(args) -> int:
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    if args.artifact and not args.fast_math:
        raise OptcError("--no-fast-math applies when bench compiles the model; an --artifact is already compiled")
    with stdout_to_stderr(args.json):
        result = bench(args.model, args.artifact, args.threads, args.repeat, args.warmup, parse_dims(args.dim),
                       fast_math=args.fast_math)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.model}: median of {args.repeat} alternating rounds, {args.threads} thread(s)")
    for col in ("runtime", "median ms"):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    table.add_row("optc (TVM)", f"{result['optc_ms']:.3f}")
    table.add_row("onnxruntime (ORT_ENABLE_ALL)", f"{result['onnxruntime_ms']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"ratio optc/onnxruntime: {result['ratio']:.2f}x   max abs difference: {result['max_abs_diff']:.3g}")
    from ..codegen.compile import describe_kernels

    line = describe_kernels(result["kernels"])
    if line:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency of optc's compiled model beside onnxruntime",
                       description="Median latency of the optc artifact (compiled for the CPU when --artifact is "
                       "not given) and of onnxruntime (ORT_ENABLE_ALL, same thread count) after warm-up, taking "
                       "turns round after round in one process (a call under 2 ms timed warm, in a burst), the "
                       "median of the rounds' ratios, and the max abs difference of their outputs on the same "
                       "random inputs.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--artifact", metavar="MODEL.so", help="a library from optc compile (default: compile now)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="threads for both runtimes (default 1)")
    p.add_argument("--repeat", type=int, default=50, metavar="N", help="timed rounds, a turn of each runtime per round (default 50)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed calls of each first (default 5)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim (default 1)")
    p.add_argument("--no-fast-math", dest="fast_math", action="store_false",
                   help="when compiling here: libm's exp / tanh / erf, the plain softmax and direct 3x3 "
                   "convolutions (as optc compile)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: model, artifact, threads, "
                   "repeat, optc_ms, onnxruntime_ms, ratio, max_abs_diff, max_abs_output, compile_s, fast_math, kernels "
                   "(integer / bfloat16 / float conv-matmul counts, float_reasons)")
    p.set_defaults(func=run)
