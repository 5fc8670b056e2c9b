"""ONNX node conformance cases through optc's TVM back end: whatever compiles must compute the right numbers."""

from __future__ import annotations

import pytest

from .lowering_sweep import STATUSES, counts, overall, select_cases, sweep

EVERY = 5  # the full sweep: python -m optc.tests.lowering_sweep


@pytest.mark.slow
def test_lowered_conformance_cases_never_compute_wrong_results():
    results = sweep(select_cases(EVERY))
    either = counts(results)["either"]
    print(f"\nlowering conformance (every {EVERY}th case): " + ", ".join(f"{s} {either.get(s, 0)}" for s in STATUSES))
    errors = {name: overall(forms)[1][:120] for name, forms in results.items() if overall(forms)[0] == "error"}
    if errors:  # a back-end failure without a clean refusal: listed, not yet a failure of this test
        print("errors (not refused cleanly):\n  " + "\n  ".join(f"{n}: {d}" for n, d in sorted(errors.items())))
    bad = {name: overall(forms) for name, forms in results.items() if overall(forms)[0] in ("mismatch", "crash")}
    assert not bad, f"compiled cases that compute wrong results or crash: {bad}"
    assert either["pass"] >= len(results) * 3 // 5, either
