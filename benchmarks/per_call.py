#!/usr/bin/env python
"""Per-call overhead of `optc.runtime` on tiny models, side by side with onnxruntime (a script, not a test).

Models: an identity model (the pure per-call floor: checks, conversion, one VM call, the output copy) and the
8x8 digits CNN (examples/digits_cnn.onnx) compiled for batch 1 and for batch 32 (`input_shapes`, static
shapes) and once with its symbolic batch (timed at 1 and 32). Each model runs in this process beside an
onnxruntime session (ORT_ENABLE_ALL, the same intra-op threads); optc and onnxruntime alternate, `--rounds`
rounds of `--repeat` calls each, and each column is the median over all calls. Columns: `run` (what a caller
pays: `Module.run`), `VM call` (the Relax VM's `main` on arguments already converted: kernels + VM
dispatch), `overhead` (run - VM call) and `old path` (the conversion before this benchmark: a TVM tensor
allocated and copied per input, `Tensor.numpy()` per output, around the same VM call).

    python benchmarks/per_call.py                    # results into RESULTS.md ("Per-call overhead")
    python benchmarks/per_call.py --trials 200       # also tune the batch-32 CNN (database in _work/per_call)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

THREADS = int(os.environ.setdefault("TVM_NUM_THREADS", "1"))  # TVM reads it once, when its thread pool starts

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from report import RESULTS, cpu_model, write_section  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work", "per_call")
DIGITS = os.path.join(HERE, "..", "examples", "digits_cnn.onnx")


def identity_model() -> onnx.ModelProto:
    """y = Identity(x), x: float32 [1, 1, 8, 8]."""
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [vi[0]], [vi[1]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _old_path(module, feeds):
    """The conversion `optc.runtime` did before: tvm.runtime.tensor per input, Tensor.numpy() per output."""
    import tvm

    args = [tvm.runtime.tensor(a, module._device) for a in module.check_inputs(feeds)]
    result = module._main(*args)  # (main: the old path had no batch-1 entry)
    return [v.numpy() for v in (list(result) if not hasattr(result, "numpy") else [result])]


def measure(name: str, module, session, feeds: dict, rounds: int, repeat: int) -> dict:
    """Median microseconds of each way of calling, alternating them round by round; checks that `run` gives
    onnxruntime's outputs (max abs difference) and the old path's bytes."""
    args, entry = module._prepare(feeds)
    ways = {"onnxruntime": lambda: session.run(None, feeds), "run": lambda: module.run(feeds),
            "VM call": lambda: module._functions[entry](*args), "old path": lambda: _old_path(module, feeds)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for fn in ways.values():  # warm-up
        for _ in range(max(3, repeat // 10)):
            fn()
    for _ in range(rounds):
        for key, fn in ways.items():
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    got = list(module.run(feeds).values())
    old = _old_path(module, feeds)
    ref = session.run(None, feeds)
    if not all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, old, strict=True)):
        raise SystemExit(f"{name}: run's outputs differ from the old path's")
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(got, ref, strict=True))
    us = {k: float(np.median(v) * 1e6) for k, v in times.items()}
    return {"model": name, **us, "overhead": us["run"] - us["VM call"], "ratio": us["run"] / us["onnxruntime"],
            "max_abs_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="alternation rounds (default 20)")
    ap.add_argument("--repeat", type=int, default=50, help="calls per way per round (default 50)")
    ap.add_argument("--trials", type=int, default=0, help="also tune the batch-32 CNN with this many trials")
    ap.add_argument("--note", action="append", default=[], help="a line for the notes under the table")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    from optc.codegen.compile import compile as compile_model
    from optc.ortsession import session

    os.makedirs(WORK, exist_ok=True)
    ident = os.path.join(WORK, "identity.onnx")
    onnx.save(identity_model(), ident)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 1, 8, 8), np.float32)
    x32 = rng.standard_normal((32, 1, 8, 8), np.float32)
    cases = [("identity, 1x1x8x8", ident, {}, x1, {}), ("digits CNN, batch 1", DIGITS, {"x": (1, 1, 8, 8)}, x1, {}),
             ("digits CNN, batch 32", DIGITS, {"x": (32, 1, 8, 8)}, x32, {}),
             ("digits CNN, symbolic batch, at 1", DIGITS, None, x1, {}),
             ("digits CNN, symbolic batch, at 32", DIGITS, None, x32, {}),
             ("digits CNN, symbolic batch with a batch-32 entry, at 32", DIGITS, None, x32,
              {"static_batch": (1, 32)})]
    if args.trials:
        cases.append((f"digits CNN, batch 32, tuned ({args.trials} trials)", DIGITS, {"x": (32, 1, 8, 8)}, x32,
                      {"trials": args.trials, "db": os.path.join(WORK, "db")}))
    rows, modules = [], {}
    for name, path, shapes, x, kw in cases:
        key = (path, tuple(sorted(shapes.items())) if shapes is not None else None, tuple(sorted(kw)))
        if key not in modules:
            modules[key] = compile_model(path, "cpu", input_shapes=shapes or None, **kw)
        sess = session(path, optimize=True, threads=THREADS)
        rows.append(measure(name, modules[key], sess, {"x": x}, args.rounds, args.repeat))
        print(rows[-1], flush=True)
    write_section(args.out, markdown(rows, args))
    return 0


def markdown(rows: list[dict], args) -> str:
    from importlib.metadata import version

    argv = " ".join(a for a in sys.argv[1:] if a not in args.note and a != "--note")
    lines = ["## Per-call overhead", "",
             f"`python benchmarks/per_call.py {argv}`".replace(" `", "`") + f" — {time.strftime('%Y-%m-%d')}, "
             f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores (shared with other engineers' jobs), "
             f"Python {platform.python_version()}; TVM {version('apache-tvm')}, onnxruntime "
             f"{version('onnxruntime')} (ORT_ENABLE_ALL), {THREADS} thread(s) each. Median microseconds per call "
             f"over {args.rounds} alternating rounds of {args.repeat} calls. ratio = optc run / onnxruntime "
             "(latency; below 1 is faster).", "",
             "| model | onnxruntime us | optc run us | VM call us | overhead us | old path us | ratio | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['onnxruntime']:.1f} | {r['run']:.1f} | {r['VM call']:.1f} | "
                     f"{r['overhead']:.1f} | {r['old path']:.1f} | {r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |")
    lines += [""] + [f"- {n}" for n in args.note]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
