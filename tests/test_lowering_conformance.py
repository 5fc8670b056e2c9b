"""ONNX node conformance cases through optc's TVM back end: whatever compiles must compute the right numbers,
and whatever does not is refused in one line."""

from __future__ import annotations

import pytest

from .lowering_sweep import STATUSES, counts, overall, select_cases, sweep

EVERY = 5  # the full sweep: python -m optc.tests.lowering_sweep
SHARDS = 4  # the sweep in this many tests, so that pytest-xdist's workers share it (it took 400 s in one on CI)


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_lowered_conformance_cases_never_compute_wrong_results(shard):
    results = sweep(select_cases(EVERY)[shard::SHARDS])
    either = counts(results)["either"]
    print(f"\nlowering conformance (every {EVERY}th case, shard {shard} of {SHARDS}): "
          + ", ".join(f"{s} {either.get(s, 0)}" for s in STATUSES))
    bad = {name: overall(forms) for name, forms in results.items() if overall(forms)[0] in ("mismatch", "crash")}
    assert not bad, f"compiled cases that compute wrong results or crash: {bad}"
    errors = {name: overall(forms)[1][:160] for name, forms in results.items() if overall(forms)[0] == "error"}
    assert not errors, f"cases that fail without a one-line refusal (a back-end bug): {errors}"
    assert either["pass"] >= len(results) * 3 // 4, either  # the full sweep: 1,565 of 1,884 (83%)
