"""Latency of models measured side by side: the runs of every model alternate (a new order each round), so a
slow spell of a shared machine hits all of them alike, and the speed-up is the median of per-round ratios.

A model's turn in a round is warm: a model that runs in less than `BURST_S` is called once untimed and then
enough times back to back to fill it (once, for a call of more than half of it), and its time is the mean of
those calls. One cold call after a dozen other models' turns measured caches refilling: the 8x8 digits CNN at
batch 32 (a ~60 us TVM library) timed at 0.25 ms among 14 candidates, 0.06 ms beside one; a 1 ms QDQ ResNet-like
timed cold at 1.03 ms beside onnxruntime's own QDQ model at 0.76 ms, the two equal when both are warm."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

import numpy as np

from ..progress import progress as progress_bar

__all__ = ["time_alternating"]

#: a model's turn in a round lasts about this long (seconds) when one call is shorter (see the module docstring)
BURST_S = 2e-3
#: at most this many timed calls in one turn
MAX_BURST = 64


def time_alternating(fns: Mapping[str, Callable[[], object]], *, reference: str | None = None, min_runs: int = 20,
                     max_runs: int = 300, target_s: float = 1.5, warmup: int = 3, seed: int = 0,
                     progress: bool | None = None) -> dict[str, dict]:
    """Time each of `fns` (one call = one inference) over the same rounds, every round giving each a turn in a
    new random order (seeded by `seed`): one timed call, or for a call shorter than `BURST_S` an untimed call
    and then a burst of up to `MAX_BURST` timed ones whose mean is the round's time (warm caches).

    Rounds: enough for the turns to take about `target_s` seconds in all, clamped to [`min_runs`, `max_runs`]
    (estimated from the `warmup` untimed calls of each).
    Returns `{name: {"median_ms", "p90_ms", "runs"}}` (over rounds, ms per call), with `"speedup"` (median over
    rounds of reference time / this time, dimensionless) for every name when `reference` names one of `fns`.
    """
    names = list(fns)
    once = dict.fromkeys(names, float("inf"))  # the fastest warm-up call of each (the first is cold)
    for _ in range(max(1, warmup)):
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            once[name] = min(once[name], time.perf_counter() - t0)
    burst = {name: max(1, min(MAX_BURST, int(BURST_S / max(t, 1e-9)))) for name, t in once.items()}
    warm = {name: t < BURST_S for name, t in once.items()}  # a short call's turn starts with an untimed one
    per_round = sum(t * (burst[name] + warm[name]) for name, t in once.items())
    runs = int(min(max_runs, max(min_runs, target_s / max(per_round, 1e-9))))
    times = {name: np.empty(runs) for name in names}
    rng = random.Random(seed)
    order = list(names)
    with progress_bar("timing " + " vs ".join(names), total=runs, enabled=progress, unit="rounds") as advance:
        for r in range(runs):
            rng.shuffle(order)
            for name in order:
                fn, k = fns[name], burst[name]
                if warm[name]:
                    fn()  # the turn's first call refills the caches the other models' turns took
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                times[name][r] = (time.perf_counter() - t0) / k
            advance(1)
    out = {name: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3), "runs": runs}
           for name, t in times.items()}
    if reference is not None:
        for name in names:
            out[name]["speedup"] = float(np.median(times[reference] / times[name]))
    return out
