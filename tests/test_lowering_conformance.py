"""ONNX node conformance cases through optc's TVM back end: whatever compiles must compute the right numbers."""

from __future__ import annotations

from collections import Counter

import pytest

from .lowering_sweep import STATUSES, select_cases, sweep

EVERY = 5  # the full sweep: python -m optc.tests.lowering_sweep


@pytest.mark.slow
def test_lowered_conformance_cases_never_compute_wrong_results():
    results = sweep(select_cases(EVERY))
    counts = Counter(status for status, _ in results.values())
    print(f"\nlowering conformance (every {EVERY}th case): " + ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES))
    mismatches = {name: detail for name, (status, detail) in results.items() if status == "mismatch"}
    assert not mismatches, f"compiled cases that compute wrong results: {mismatches}"
    assert counts["pass"] >= len(results) // 3, counts
