"""Latency of models measured side by side: the runs of every model alternate (a new order each round), so a
slow spell of a shared machine hits all of them alike, and the speed-up is the median of per-round ratios."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

import numpy as np

from ..progress import progress as progress_bar

__all__ = ["time_alternating"]


def time_alternating(fns: Mapping[str, Callable[[], object]], *, reference: str | None = None, min_runs: int = 20,
                     max_runs: int = 300, target_s: float = 1.5, warmup: int = 3, seed: int = 0,
                     progress: bool | None = None) -> dict[str, dict]:
    """Time each of `fns` (one call = one inference) over the same rounds, every round calling each once in a
    new random order (seeded by `seed`).

    Rounds: enough for the timed calls to take about `target_s` seconds in all, clamped to
    [`min_runs`, `max_runs`] (estimated from the `warmup` untimed calls of each).
    Returns `{name: {"median_ms", "p90_ms", "runs"}}`, with `"speedup"` (median over rounds of
    reference time / this time, dimensionless) for every name when `reference` names one of `fns`.
    """
    names = list(fns)
    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        for name in names:
            fns[name]()
    per_round = (time.perf_counter() - start) / max(1, warmup)
    runs = int(min(max_runs, max(min_runs, target_s / max(per_round, 1e-9))))
    times = {name: np.empty(runs) for name in names}
    rng = random.Random(seed)
    order = list(names)
    with progress_bar("timing " + " vs ".join(names), total=runs, enabled=progress, unit="rounds") as advance:
        for r in range(runs):
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                fns[name]()
                times[name][r] = time.perf_counter() - t0
            advance(1)
    out = {name: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3), "runs": runs}
           for name, t in times.items()}
    if reference is not None:
        for name in names:
            out[name]["speedup"] = float(np.median(times[reference] / times[name]))
    return out
