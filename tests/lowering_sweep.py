"""Sweep ONNX's node conformance cases through optc's TVM back end (lower -> build -> run).

Each case ends in one status: `pass` (matches the case's expected outputs), `mismatch` (runs, wrong numbers:
the worst outcome), `unsupported` (an op or a value type the lowering does not handle), `error` (lowering or
the TVM build rejected the model with an OptcError) or `crash` (TVM killed the worker process). Cases run in a
worker subprocess that is restarted after a crash, so one native fault does not end the sweep.

Run the whole sweep: `python -m optc.tests.lowering_sweep [--every N] [--match TEXT]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import Counter

import numpy as np

STATUSES = ("pass", "mismatch", "unsupported", "error", "crash")


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(want.dtype), want, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(got, want))


def run_case(case) -> tuple[str, str]:
    """Lower, build and run one conformance case on the CPU; returns (status, detail)."""
    import optc
    import tvm
    from optc.codegen import build
    from optc.lowering import lower, unsupported_ops
    from tvm import relax

    model = optc.from_onnx(case.model)
    missing = unsupported_ops(model)
    if missing:
        return "unsupported", ", ".join(sorted(missing))
    try:
        mod = lower(model)
        vm = relax.VirtualMachine(build(mod, target="cpu"), tvm.cpu())
    except optc.OptcError as exc:
        text = str(exc)
        return ("unsupported" if "only tensor inputs" in text or "is not a tensor" in text else "error"), text
    inputs, expected = case.data_sets[0]
    inputs, expected = ([np.asarray(x) if isinstance(x, np.generic) else x for x in xs] for xs in (inputs, expected))
    if any(not isinstance(x, np.ndarray) for x in list(inputs) + list(expected)):
        return "unsupported", "sequence or optional values"
    try:
        result = vm["main"](*[tvm.runtime.tensor(np.array(x, order="C")) for x in inputs])
    except Exception as exc:  # a run-time failure of the compiled code
        return "error", f"run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    outs = [result] if hasattr(result, "numpy") else list(result)
    if len(outs) != len(expected):
        return "mismatch", f"{len(outs)} outputs, expected {len(expected)}"
    rtol, atol = max(getattr(case, "rtol", 1e-3), 1e-4), max(getattr(case, "atol", 1e-7), 1e-5)
    for i, (got, want) in enumerate(zip(outs, expected, strict=False)):
        if want.dtype == np.float16:  # a few half-precision ulps: accumulation order differs between runtimes
            rtol, atol = max(rtol, 1e-2), max(atol, 1e-3)
        if not _close(got.numpy(), want, rtol, atol):
            return "mismatch", f"output {i} differs"
    return "pass", ""


def _worker(names: list[str], conn) -> None:
    import warnings

    from onnx.backend.test.case import node

    warnings.filterwarnings("ignore")
    by_name = {c.name: c for c in node.collect_testcases()}
    for name in names:
        conn.send(("start", name))
        try:
            status, detail = run_case(by_name[name])
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, never hidden
            status, detail = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        conn.send(("done", name, status, detail))
    conn.send(("finished",))


def sweep(names: list[str], case_timeout: float = 300.0) -> dict[str, tuple[str, str]]:
    """Run the named cases in a worker subprocess (restarted after a crash); {name: (status, detail)}."""
    ctx = mp.get_context("spawn")
    results: dict[str, tuple[str, str]] = {}
    todo = list(names)
    while todo:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(todo, child), daemon=True)
        proc.start()
        child.close()
        current = None
        while True:
            if not parent.poll(case_timeout):
                break
            try:
                msg = parent.recv()
            except EOFError:
                break
            if msg[0] == "start":
                current = msg[1]
            elif msg[0] == "done":
                results[msg[1]] = (msg[2], msg[3])
                current = None
            else:
                break
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        if current is not None:
            results[current] = ("crash", f"worker exit code {proc.exitcode}")
        todo = [n for n in todo if n not in results]
    return results


def select_cases(every: int = 1, match: str | None = None) -> list[str]:
    """Names of every `every`-th node conformance case (those containing `match`), in a fixed order."""
    from onnx.backend.test.case import node

    names = sorted(c.name for c in node.collect_testcases())
    return [n for n in names if match is None or match in n][::every]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="run every N-th case (default: all)")
    parser.add_argument("--match", help="only the cases whose name contains this text, e.g. softmax")
    args = parser.parse_args(argv)
    names = select_cases(args.every, args.match)
    start = time.perf_counter()
    results = sweep(names)
    counts = Counter(status for status, _ in results.values())
    print(f"{len(names)} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES))
    for name, (status, detail) in sorted(results.items()):
        if status in ("mismatch", "crash", "error"):
            print(f"  {status:8s} {name}: {detail[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
