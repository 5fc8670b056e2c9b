"""`optc.bench`: latency of optc's compiled model beside onnxruntime's on the same inputs, and how far their
outputs differ (what `optc bench` prints).

The two runtimes take turns, round after round (`latency.time_alternating`): timed one after the other, a slow
spell of a shared machine fell on one of them. On a 2-core VM a MobileNetV2-like library timed 14.7 ms beside
onnxruntime's 11.5 ms at 2 threads (1.28x) in one such run, and 1.00-1.08x in every alternating one. With more
than one thread neither runtime's idle workers spin after its turn (onnxruntime's `session.force_spinning_stop`,
TVM's `TVM_THREAD_POOL_SPIN_COUNT`), as in benchmarks/compile_precisions.py, where spinning workers held the
cores the other runtime was about to run on."""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import OptcError, first_line
from ..inputs import random_inputs, session_input_specs
from ..ortsession import session
from .latency import time_alternating

#: TVM's thread-pool workers spin this many times for work before they sleep, when `bench` times more than one
#: thread (TVM's default, 300000, kept a core busy through onnxruntime's turn)
TVM_SPIN_COUNT = "1000"


def _first_run(module, feeds: dict, what: str) -> dict:
    """`module.run(feeds)`; a failure of the library (`what`: how to name it) is an OptcError (one line), as
    `optc run` and `optc verify` report it."""
    try:
        return module.run(feeds)
    except OptcError:
        raise
    except Exception as exc:  # noqa: BLE001 - the library's own failure, not optc's
        raise OptcError(f"{what} failed to run: {first_line(exc, last=True)}") from None


def bench(model_path: str, artifact: str | None = None, threads: int = 1, repeat: int = 50, warmup: int = 5,
          dims: dict[str, int] | None = None, seed: int = 0, *, level: int = 2, trials: int = 0,
          db: str | None = None, fast_math: bool = True) -> dict:
    """`optc.bench`: median latencies (ms) of optc and onnxruntime on the same random inputs
    (`optc.inputs.random_inputs`, `seed`; symbolic dims from `dims`, else 1), their ratio and the max abs
    difference of their outputs. `model_path`: an ONNX file; `artifact`: its library from `optc compile`, or
    None to compile the model for the CPU first (`level`, `fast_math`, and tuned with `trials` into the database
    `db` when given; `compile_s` is then the compile time in seconds). `threads`: onnxruntime's intra-op threads
    (TVM's pool reads `TVM_NUM_THREADS` when it starts, as `optc bench --threads` sets it; above 1, this sets
    `TVM_THREAD_POOL_SPIN_COUNT` to `TVM_SPIN_COUNT` unless it is set). The two run in turns, `repeat` rounds
    after `warmup` calls each (`latency.time_alternating`; a call under 2 ms is timed warm, in a burst):
    `optc_ms` and `onnxruntime_ms` are medians over rounds, `ratio` the median of the rounds' optc /
    onnxruntime. Returns a dict:
    model, artifact, threads, repeat, optc_ms, onnxruntime_ms, ratio, max_abs_diff, max_abs_output, compile_s,
    fast_math, kernels (how the conv/matmul ops run: the artifact metadata's `kernels`, None for an older
    artifact). OptcError (one line) for a bad model or artifact or `threads`/`repeat` < 1."""
    if threads < 1:
        raise OptcError("--threads must be at least 1")
    if repeat < 1 or warmup < 0:
        raise OptcError("--repeat must be at least 1 and --warmup not negative")
    from .. import runtime
    from ..codegen.compile import compile as compile_model
    from ..ir import load

    if threads > 1:
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", TVM_SPIN_COUNT)
    model = load(model_path)
    ort_session = session(model_path, optimize=True, threads=threads, spin=threads == 1)
    feeds = random_inputs(session_input_specs(ort_session), dims=dims, seed=seed)
    start = time.perf_counter()
    module = runtime.load(artifact) if artifact else compile_model(model, "cpu", level=level, trials=trials, db=db,
                                                                   fast_math=fast_math)
    compile_s = None if artifact else time.perf_counter() - start
    ort_out = ort_session.run(None, feeds)
    optc_out = _first_run(module, feeds, f"the artifact '{artifact}'" if artifact else
                          f"the library compiled from '{model_path}'")
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(ort_out, optc_out.values(), strict=False))
    scale = max((float(np.max(np.abs(np.asarray(a, np.float64)))) if np.size(a) else 0.0) for a in ort_out)
    timed = time_alternating({"optc": lambda: module.run(feeds), "onnxruntime": lambda: ort_session.run(None, feeds)},
                             reference="optc", min_runs=repeat, max_runs=repeat, warmup=warmup, progress=False)
    return {"model": model_path, "artifact": artifact, "threads": threads, "repeat": repeat,
            "optc_ms": timed["optc"]["median_ms"], "onnxruntime_ms": timed["onnxruntime"]["median_ms"],
            "ratio": timed["onnxruntime"]["speedup"], "max_abs_diff": diff,
            "max_abs_output": scale, "compile_s": compile_s,
            "fast_math": None if artifact else bool(fast_math), "kernels": module.metadata.get("kernels")}
