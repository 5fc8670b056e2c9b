"""workflow/latency.py: side-by-side timing. What is asserted is how often each model is called (the warm
bursts of short calls, one call per round for long ones) and the shape of the result, never a time."""

from __future__ import annotations

import time

from optc.workflow.latency import MAX_BURST, time_alternating


def test_short_calls_run_in_warm_bursts_long_ones_once_per_round():
    calls = {"short": 0, "long": 0}

    def short():
        calls["short"] += 1

    def long():
        calls["long"] += 1
        time.sleep(0.004)  # longer than BURST_S: one call per round

    out = time_alternating({"short": short, "long": long}, reference="long", min_runs=5, max_runs=5, warmup=2)
    assert out["short"]["runs"] == out["long"]["runs"] == 5
    assert calls["long"] == 2 + 5
    assert calls["short"] == 2 + 5 * (MAX_BURST + 1)  # each turn: one untimed call, then the timed burst
    assert out["long"]["speedup"] == 1.0 and out["short"]["speedup"] > 1.0
    assert all(v["median_ms"] <= v["p90_ms"] for v in out.values())


def test_a_call_of_more_than_half_a_burst_still_gets_a_warm_turn(monkeypatch):
    """A call of 1.2 ms (one timed call fills BURST_S) is still preceded by an untimed one in each turn: timed
    cold after the other models' turns, a 1 ms QDQ model measured 1.35x slower than an equal one. (A fake clock:
    the call advances it by 1.2 ms, whatever the machine's load.)"""
    import types

    import optc.workflow.latency as latency

    clock = [0.0]
    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = {"mid": 0}

    def mid():
        calls["mid"] += 1
        clock[0] += 0.0012

    out = time_alternating({"mid": mid, "other": lambda: None}, min_runs=4, max_runs=4, warmup=1)
    assert out["mid"]["runs"] == 4 and calls["mid"] == 1 + 4 * 2


def test_without_reference_there_is_no_speedup():
    out = time_alternating({"a": lambda: None}, min_runs=3, max_runs=3)
    assert out["a"]["runs"] == 3 and "speedup" not in out["a"]
