"""ONNX node conformance through the optimizer: every runnable case still reproduces its expected outputs after
`optc.optimize(model, level=2)` (and `level=3`).

A case is runnable when its ORIGINAL model reproduces the expected outputs on onnxruntime or on onnx's reference
evaluator (the runtime, the comparison and the case's tolerances are those of `test_conformance.py`). The model
is imported, optimized, verified and exported; the result must keep the graph outputs (names, element types,
ranks), pass onnx's checker when the original does, and reproduce the expected outputs on the same runtime.

Most cases feed every operand as a graph input, which leaves the optimizer little to do, so each case is also
checked in two more forms, one model per data set (each runs on the first runtime that reproduces it unoptimized):
  - `constants`: every tensor input becomes an initializer, so the whole graph folds (the constant folder, its
    numpy fast paths and the reference-evaluator fallback are held to the expected outputs);
  - `weights`: every tensor input but the first becomes an initializer (rules, fusions and partial folds see
    constant operands next to runtime data).
Models that run on neither runtime ("unrunnable") must still optimize and export without an error.

The full sweep is split into shards (for pytest-xdist) and marked slow; every 20th case runs in the quick suite.
Counts: `python -m optc.tests.test_optimize_conformance [every]`.
"""

from __future__ import annotations

import sys
import time
import types
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import optc
import pytest
from optc.ir.verify import verify

from .conftest import bind_inputs
from .test_conformance import QUICK_STRIDE, _reproduces, all_node_cases

LEVELS = (2, 3)
VARIANTS = ("inputs", "constants", "weights")
SHARDS = 16
RUNTIMES = ("ort", "reference")


@dataclass
class Outcome:
    status: str = "pass"  # 'pass' | 'unrunnable' | 'fail'
    runnable: bool = True  # the original model reproduces the expected outputs on some runtime
    failures: list[str] = field(default_factory=list)
    checks: Counter = field(default_factory=Counter)  # variant -> models compared (per level)
    bound_unrunnable: int = 0  # constant-bound models that neither runtime reproduces unoptimized


def _optimize(model: optc.Model, level: int) -> optc.Model:
    return optc.optimize(model, level=level, inplace=True)


def _first_runtime(model: onnx.ModelProto, case) -> str | None:
    return next((rt for rt in RUNTIMES if _reproduces(rt, model, case) is None), None)


def _signature_problem(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    """Graph outputs must keep their names, kinds, element types and ranks (a folded output may gain dims)."""
    if [o.name for o in after.graph.output] != [o.name for o in before.graph.output]:
        return f"graph outputs {[o.name for o in after.graph.output]} instead of {[o.name for o in before.graph.output]}"
    for a, b in zip(after.graph.output, before.graph.output, strict=True):
        ta, tb = a.type, b.type
        if ta.WhichOneof("value") != tb.WhichOneof("value"):
            return f"output {b.name}: {ta.WhichOneof('value')} instead of {tb.WhichOneof('value')}"
        if tb.HasField("tensor_type"):
            if ta.tensor_type.elem_type != tb.tensor_type.elem_type:
                return f"output {b.name}: element type {ta.tensor_type.elem_type} instead of {tb.tensor_type.elem_type}"
            if ta.tensor_type.HasField("shape") and tb.tensor_type.HasField("shape") and \
                    len(ta.tensor_type.shape.dim) != len(tb.tensor_type.shape.dim):
                return f"output {b.name}: rank {len(ta.tensor_type.shape.dim)} instead of {len(tb.tensor_type.shape.dim)}"
        elif ta != tb:
            return f"output {b.name}: type {ta} instead of {tb}"
    return None


def _checks(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except Exception:  # noqa: BLE001
        return False
    return True


def optimized_problem(model: onnx.ModelProto, case, runtime: str | None, level: int,
                      optimize: Callable[[optc.Model, int], optc.Model] = _optimize) -> str | None:
    """None if `model`, optimized at `level` and exported, still reproduces `case` on `runtime` (with
    runtime=None: if it optimizes and exports at all)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize(optc.from_onnx(model), level)
            verify(optimized)
            out = optc.to_onnx(optimized)
    except Exception as exc:  # noqa: BLE001
        return f"optimize/export raised {type(exc).__name__}: {exc}"
    if runtime is None:
        return None
    why = _signature_problem(model, out)
    if why:
        return why
    if _checks(model) and not _checks(out):
        try:
            onnx.checker.check_model(out)
        except Exception as exc:  # noqa: BLE001
            return f"the checker rejects the optimized model: {str(exc).splitlines()[0]}"
    why = _reproduces(runtime, out, case)
    return None if why is None else f"{runtime}: {why}"


def _variant_models(case, variant: str):
    """(label, model, case-like with data_sets and tolerances) to check for `variant`."""
    if variant == "inputs":
        yield "", case.model, case
        return
    for k, (inputs, expected) in enumerate(case.data_sets):
        bound = bind_inputs(case.model, list(inputs), keep_first=variant == "weights")
        if bound is None:
            continue
        model, rest = bound
        sub = types.SimpleNamespace(name=case.name, data_sets=[(rest, expected)],
                                    rtol=getattr(case, "rtol", None), atol=getattr(case, "atol", None))
        yield f" data set {k}", model, sub


def check_case(case, levels=LEVELS, variants=VARIANTS,
               optimize: Callable[[optc.Model, int], optc.Model] = _optimize) -> Outcome:
    out = Outcome()
    runtime = _first_runtime(case.model, case)
    if runtime is None:
        out.status, out.runnable = "unrunnable", False
        for level in levels:
            why = optimized_problem(case.model, case, None, level, optimize)
            if why:
                out.failures.append(f"-O{level} (unrunnable model): {why}")
    else:
        for variant in variants:
            for label, model, sub in _variant_models(case, variant):
                rt = runtime if variant == "inputs" else _first_runtime(model, sub)
                if rt is None:
                    out.bound_unrunnable += 1
                    continue
                out.checks[variant] += 1
                for level in levels:
                    why = optimized_problem(model, sub, rt, level, optimize)
                    if why:
                        out.failures.append(f"-O{level} {variant}{label}: {why}")
    if out.failures:
        out.status = "fail"
    return out


def sweep(cases) -> tuple[dict[str, Outcome], list[str]]:
    start = time.perf_counter()
    results = {c.name: check_case(c) for c in cases}
    statuses = Counter(o.status for o in results.values())
    checks = sum((o.checks for o in results.values()), Counter())
    runnable = sum(o.runnable for o in results.values())
    lines = [
        f"{len(cases)} cases through -O{' and -O'.join(map(str, LEVELS))} in {time.perf_counter() - start:.0f} s: "
        f"passed {statuses['pass']} / runnable {runnable}; unrunnable {len(cases) - runnable}; "
        f"failed {statuses['fail']}",
        "models compared per level: " + ", ".join(f"{v} {checks[v]}" for v in VARIANTS)
        + f" (constant-bound models neither runtime reproduces: {sum(o.bound_unrunnable for o in results.values())})",
    ]
    lines += [f"  FAILED {name}: {f[:400]}" for name, o in results.items() for f in o.failures]
    return results, lines


def _assert_no_failures(results: dict[str, Outcome]) -> None:
    failed = {name: o.failures for name, o in results.items() if o.failures}
    assert not failed, "\n".join(f"{name}: {f}" for name, fs in failed.items() for f in fs)


def test_optimize_conformance_quick(report):
    """Every 20th node case, all variants, -O2 and -O3."""
    results, lines = sweep(all_node_cases()[::QUICK_STRIDE])
    report(f"ONNX node conformance through optimize, quick subset (every {QUICK_STRIDE}th case)", lines)
    _assert_no_failures(results)
    assert sum(o.status == "pass" for o in results.values()) >= len(results) * 9 // 10


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_optimize_conformance_full(shard, report):
    cases = all_node_cases()
    assert len(cases) > 1000
    results, lines = sweep(cases[shard::SHARDS])
    report(f"ONNX node conformance through optimize, shard {shard + 1}/{SHARDS}", lines[:2])
    _assert_no_failures(results)


def test_sweep_is_not_vacuous(monkeypatch):
    """The constants variant folds the whole graph, and a wrong fold or a wrong rewrite is caught."""
    from optc.rewrites.passes import fold_constants

    case = next(c for c in all_node_cases() if c.name == "test_relu")
    assert check_case(case).status == "pass"
    model, _ = bind_inputs(case.model, list(case.data_sets[0][0]), keep_first=False)
    assert len(optc.to_onnx(_optimize(optc.from_onnx(model), 2)).graph.node) == 0

    def relu_to_abs(m: optc.Model, level: int) -> optc.Model:
        proto = optc.to_onnx(_optimize(m, level))
        for n in proto.graph.node:
            if n.op_type == "Relu":
                n.op_type = "Abs"
        return optc.from_onnx(proto)

    failures = check_case(case, optimize=relu_to_abs).failures
    assert failures and all(" inputs:" in f for f in failures), failures

    real = fold_constants._reference_eval
    monkeypatch.setattr(fold_constants, "_reference_eval", lambda *a: [-x for x in real(*a)])
    failures = check_case(case).failures
    assert failures and all(" constants data set 0:" in f for f in failures), failures


def main(argv: list[str]) -> int:
    every = int(argv[0]) if argv else 1
    results, lines = sweep(all_node_cases()[::every])
    print("\n".join(lines))
    return 1 if any(o.failures for o in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
