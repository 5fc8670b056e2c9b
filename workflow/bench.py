"""`optc.bench`: latency of optc's compiled model beside onnxruntime's on the same inputs, and how far their
outputs differ (what `optc bench` prints)."""

from __future__ import annotations

import time

import numpy as np

from ..errors import OptcError, first_line
from ..inputs import random_inputs, session_input_specs
from ..ortsession import session


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
    (TVM's pool reads `TVM_NUM_THREADS` when it starts, as `optc bench --threads` sets it). Returns a dict:
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

    model = load(model_path)
    session = _ort_session(model_path, threads)
    feeds = random_inputs(session_input_specs(session), dims=dims, seed=seed)
    start = time.perf_counter()
    module = runtime.load(artifact) if artifact else compile_model(model, "cpu", level=level, trials=trials, db=db,
                                                                   fast_math=fast_math)
    compile_s = None if artifact else time.perf_counter() - start
    ort_out = session.run(None, feeds)
    optc_out = _first_run(module, feeds, f"the artifact '{artifact}'" if artifact else
                          f"the library compiled from '{model_path}'")
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(ort_out, optc_out.values(), strict=False))
    scale = max((float(np.max(np.abs(np.asarray(a, np.float64)))) if np.size(a) else 0.0) for a in ort_out)
    optc_ms = module.benchmark(feeds, repeat=repeat, warmup=warmup)
    ort_ms = _median_ms(lambda: session.run(None, feeds), repeat, warmup)
    return {"model": model_path, "artifact": artifact, "threads": threads, "repeat": repeat,
            "optc_ms": optc_ms, "onnxruntime_ms": ort_ms, "ratio": optc_ms / ort_ms, "max_abs_diff": diff,
            "max_abs_output": scale, "compile_s": compile_s,
            "fast_math": None if artifact else bool(fast_math), "kernels": module.metadata.get("kernels")}
