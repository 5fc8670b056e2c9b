"""`optc bench`: latency of the optc artifact beside onnxruntime, and how far their outputs differ."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ..errors import OptcError
from ..inputs import random_inputs, session_input_specs
from ..ortsession import session
from .native_log import stdout_to_stderr
from .verify_cmd import parse_dims


def _ort_session(path: str, threads: int):
    return session(path, optimize=True, threads=threads)


def _median_ms(fn, repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def bench(model_path: str, artifact: str | None = None, threads: int = 1, repeat: int = 50, warmup: int = 5,
          dims: dict[str, int] | None = None, seed: int = 0, *, level: int = 2, trials: int = 0,
          db: str | None = None, fast_math: bool = True) -> dict:
    """`optc.bench`: median latencies (ms) of optc and onnxruntime on the same random inputs
    (`optc.inputs.random_inputs`, `seed`; symbolic dims from `dims`, else 1), their ratio and the max abs
    difference of their outputs. `model_path`: an ONNX file; `artifact`: its library from `optc compile`, or
    None to compile the model for the CPU first (`level`, `fast_math`, and tuned with `trials` into the database
    `db` when given; `compile_s` is then the compile time in seconds). `threads`: onnxruntime's intra-op threads
    (TVM's pool reads `TVM_NUM_THREADS` when it starts, as `optc bench --threads` sets it). Returns a dict:
    model, artifact, threads, repeat, optc_ms, onnxruntime_ms, ratio, max_abs_diff, max_abs_output, compile_s,
    fast_math. OptcError (one line) for a bad model or artifact or `threads`/`repeat` < 1."""
    if threads < 1:
        raise OptcError("--threads must be at least 1")
    if repeat < 1 or warmup < 0:
        raise OptcError("--repeat must be at least 1 and --warmup not negative")
    from .. import runtime
    from ..codegen.compile import compile as compile_model
    from ..ir import load

    model = load(model_path)
    session = _ort_session(model_path, threads)
    feeds = random_inputs(session_input_specs(session), dims=dims, seed=seed)
    start = time.perf_counter()
    module = runtime.load(artifact) if artifact else compile_model(model, "cpu", level=level, trials=trials, db=db,
                                                                   fast_math=fast_math)
    compile_s = None if artifact else time.perf_counter() - start
    ort_out = session.run(None, feeds)
    optc_out = module.run(feeds)
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(ort_out, optc_out.values(), strict=False))
    scale = max((float(np.max(np.abs(np.asarray(a, np.float64)))) if np.size(a) else 0.0) for a in ort_out)
    optc_ms = module.benchmark(feeds, repeat=repeat, warmup=warmup)
    ort_ms = _median_ms(lambda: session.run(None, feeds), repeat, warmup)
    return {"model": model_path, "artifact": artifact, "threads": threads, "repeat": repeat,
            "optc_ms": optc_ms, "onnxruntime_ms": ort_ms, "ratio": optc_ms / ort_ms, "max_abs_diff": diff,
            "max_abs_output": scale, "compile_s": compile_s,
            "fast_math": None if artifact else bool(fast_math)}


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

    table = Table(title=f"{args.model}: median of {args.repeat} runs, {args.threads} thread(s)")
    for col in ("runtime", "median ms"):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    table.add_row("optc (TVM)", f"{result['optc_ms']:.3f}")
    table.add_row("onnxruntime (ORT_ENABLE_ALL)", f"{result['onnxruntime_ms']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"ratio optc/onnxruntime: {result['ratio']:.2f}x   max abs difference: {result['max_abs_diff']:.3g}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency of optc's compiled model beside onnxruntime",
                       description="Median latency of the optc artifact (compiled for the CPU when --artifact is "
                       "not given) and of onnxruntime (ORT_ENABLE_ALL, same thread count) after warm-up, their "
                       "ratio, and the max abs difference of their outputs on the same random inputs.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--artifact", metavar="MODEL.so", help="a library from optc compile (default: compile now)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="threads for both runtimes (default 1)")
    p.add_argument("--repeat", type=int, default=50, metavar="N", help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default 5)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim (default 1)")
    p.add_argument("--no-fast-math", dest="fast_math", action="store_false",
                   help="when compiling here: libm's exp / tanh / erf and the plain softmax (as optc compile)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: model, artifact, threads, "
                   "repeat, optc_ms, onnxruntime_ms, ratio, max_abs_diff, max_abs_output, compile_s, fast_math")
    p.set_defaults(func=run)
