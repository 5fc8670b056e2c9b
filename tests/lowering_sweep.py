"""Sweep ONNX's node conformance cases through optc's compile path (optimize -O2 -> lower -> build -> run).

Each case runs in two forms: `inputs` (as the case is written: every input fed at run time) and `constants`
(every input but the first made an initializer, as weights are in a real model; only for cases with more
than one input). Each form ends in one status: `pass` (matches the case's expected outputs: NaN at the same
places, infinities with their sign), `mismatch` (runs, wrong numbers: the worst outcome), `unsupported` (optc
refused it with a one-line reason: an op, an attribute value or a value type the back end does not handle),
`error` (any other failure of lowering, build or run: a back-end bug) or `crash` (TVM killed the worker
process). Cases run in a worker subprocess that is restarted after a crash, so one native fault does not end
the sweep. A case passes overall when it passes in either form; it mismatches or crashes when either form
does.

Run the whole sweep: `python -m optc.tests.lowering_sweep [--every N] [--match TEXT] [--show STATUS,...] [--jobs N]`.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import sys
import time
from collections import Counter

import numpy as np

STATUSES = ("pass", "mismatch", "unsupported", "error", "crash")
FORMS = ("inputs", "constants")
_RANK = {"mismatch": 0, "crash": 1, "pass": 2, "error": 3, "unsupported": 4}  # which form's status a case gets


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        got = got.astype(want.dtype)
        special = ~np.isfinite(want) | ~np.isfinite(got)
        if not np.array_equal(np.isnan(got), np.isnan(want)) or not np.array_equal(got[special & ~np.isnan(got)],
                                                                                    want[special & ~np.isnan(want)]):
            return False
        return bool(np.allclose(got[~special], want[~special], rtol=rtol, atol=atol))
    return bool(np.array_equal(got, want))


def _status_of_error(exc: Exception) -> str:
    import optc

    if isinstance(exc, optc.UnsupportedError):
        return "unsupported"
    return "error"


def run_form(model, inputs: list, expected: list, rtol: float, atol: float) -> tuple[str, str]:
    """Compile one ONNX model through `optc.compile`'s path on the CPU, run it and compare; (status, detail)."""
    import optc
    import tvm
    from optc.codegen.compile import build_executable
    from tvm import relax

    if any(not isinstance(x, np.ndarray) for x in list(inputs) + list(expected)):
        return "unsupported", "sequence or optional values"
    try:
        executable, _meta = build_executable(optc.from_onnx(model), "cpu")
        vm = relax.VirtualMachine(executable, tvm.cpu())
    except optc.OptcError as exc:
        return _status_of_error(exc), str(exc)
    try:
        result = vm["main"](*[tvm.runtime.tensor(np.array(x, order="C", copy=None)) for x in inputs])
    except Exception as exc:  # a run-time failure of the compiled code
        return "error", f"run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    outs = [result] if hasattr(result, "numpy") else list(result)
    if len(outs) != len(expected):
        return "mismatch", f"{len(outs)} outputs, expected {len(expected)}"
    for i, (got, want) in enumerate(zip(outs, expected, strict=False)):
        r, a = rtol, atol
        got = got.numpy()
        if want.dtype == np.float16 or want.dtype.name == "bfloat16":  # a few half-precision ulps: rounding
            r, a = max(r, 1e-2), max(a, 1e-3)  # and accumulation order differ between runtimes
            got, want = got.astype(np.float32), want.astype(np.float32)
        if not _close(got, want, r, a):
            return "mismatch", f"output {i} differs (shape {got.shape} vs {want.shape})"
    return "pass", ""


def run_case(case) -> dict[str, tuple[str, str]]:
    """Both forms of one conformance case: {form: (status, detail)}."""
    from .conftest import bind_inputs

    inputs, expected = case.data_sets[0]
    inputs, expected = ([np.asarray(x) if isinstance(x, np.generic) else x for x in xs] for xs in (inputs, expected))
    rtol, atol = max(getattr(case, "rtol", 1e-3), 1e-4), max(getattr(case, "atol", 1e-7), 1e-5)
    results = {"inputs": run_form(case.model, inputs, expected, rtol, atol)}
    if len(inputs) > 1:
        bound = bind_inputs(case.model, inputs, keep_first=True)
        if bound is not None:
            results["constants"] = run_form(bound[0], bound[1], expected, rtol, atol)
    return results


def _worker(names: list[str], conn) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for name in names:
        conn.send(("start", name))
        try:
            results = run_case(conformance_case(name))
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, never hidden
            results = {"inputs": ("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")}
        conn.send(("done", name, results))
    conn.send(("finished",))


def sweep(names: list[str], case_timeout: float = 300.0) -> dict[str, dict[str, tuple[str, str]]]:
    """Run the named cases in a worker subprocess (restarted after a crash); {name: {form: (status, detail)}}."""
    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, tuple[str, str]]] = {}
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
                results[msg[1]] = msg[2]
                current = None
            else:
                break
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        if current is not None:
            results[current] = {"inputs": ("crash", f"worker exit code {proc.exitcode}")}
        todo = [n for n in todo if n not in results]
    return results


def parallel_sweep(names: list[str], jobs: int = 1) -> dict[str, dict[str, tuple[str, str]]]:
    """`sweep` with the cases dealt round-robin to `jobs` workers that run side by side."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = max(1, min(jobs, len(names)))
    with ThreadPoolExecutor(jobs) as pool:
        parts = pool.map(sweep, [names[i::jobs] for i in range(jobs)])
    return {name: forms for part in parts for name, forms in part.items()}


def overall(forms: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """A case's status over its forms: mismatch or crash if any form has it, else pass if any form passes."""
    return min(forms.values(), key=lambda sd: _RANK[sd[0]])


def counts(results: dict[str, dict[str, tuple[str, str]]]) -> dict[str, Counter]:
    """Status counts per form (cases without that form count under their `inputs` status) and `either`."""
    out = {form: Counter((r.get(form) or r["inputs"])[0] for r in results.values()) for form in FORMS}
    out["either"] = Counter(overall(r)[0] for r in results.values())
    return out


@functools.lru_cache(maxsize=1)
def _cases_by_name() -> dict:
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():  # the cases' generators overflow casts on purpose
        warnings.simplefilter("ignore")
        return {c.name: c for c in node.collect_testcases()}


def conformance_case(name: str):
    """ONNX's node conformance case `name` (cases are generated once per process: a few seconds)."""
    return _cases_by_name()[name]


def select_cases(every: int = 1, match: str | None = None) -> list[str]:
    """Names of every `every`-th node conformance case (those containing `match`), in a fixed order."""
    return [n for n in sorted(_cases_by_name()) if match is None or match in n][::every]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="run every N-th case (default: all)")
    parser.add_argument("--match", help="only the cases whose name contains this text, e.g. softmax")
    parser.add_argument("--show", default="mismatch,crash,error",
                        help="statuses whose cases are listed with their reason, per form (default: "
                             "mismatch,crash,error)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes running cases side by side")
    args = parser.parse_args(argv)
    names = select_cases(args.every, args.match)
    start = time.perf_counter()
    results = parallel_sweep(names, args.jobs)
    print(f"{len(names)} cases in {time.perf_counter() - start:.0f} s")
    for form, c in counts(results).items():
        print(f"  {form:9s} " + ", ".join(f"{s} {c.get(s, 0)}" for s in STATUSES))
    show = set(args.show.split(","))
    for name, forms in sorted(results.items()):
        for form, (status, detail) in forms.items():
            if status in show:
                print(f"  {status:11s} {form:9s} {name}: {detail[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
