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
    bad = {name: overall(forms) for name, forms in results.items() if overall(forms)[0] in ("mismatch", "crash", "error")}
    assert not bad, f"compiled cases that compute wrong results, crash, or fail without a clean refusal: {bad}"
    assert either["pass"] >= len(results) // 3, either
