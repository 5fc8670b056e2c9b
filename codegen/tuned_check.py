"""A build with a tuning database against the same build without it, end to end: the faster library is kept.

MetaSchedule times each kernel alone, over and over on the same warm buffers; in the library a kernel runs after
the others, on what they left in the caches, and a tiny one costs little more than its call. A record measured a
few percent faster alone can then run slower in the model (the 8 x 8 digits CNN, ~8 us a call: tuned 0.91-0.92x
onnxruntime's latency against 0.89x untuned, AMD EPYC Zen 4). So where the library runs here (the host CPU), the
two builds take turns on the same random inputs (`workflow.latency.time_alternating`) and the untuned one is kept
when it is the faster by the median of the rounds' ratios: tuning never leaves a model slower than its untuned
build, as measured the way the library runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: seconds of alternating calls the comparison spends (after a few warm-up calls of each), and the fewest rounds
#: (a 0.4 s model: 5 rounds, 4 s)
CHECK_SECONDS = 1.0
CHECK_MIN_ROUNDS = 5


def runs_here(target) -> bool:
    """Whether a CPU library for `target` (a tvm Target) runs on this machine: an llvm target of this
    architecture whose instructions this CPU has (`targets.check_runs_here`)."""
    from ..errors import OptcError  # noqa: PLC0415
    from .targets import check_runs_here, is_cross_target, target_metadata  # noqa: PLC0415

    if target.kind.name != "llvm" or is_cross_target(target):
        return False
    try:
        check_runs_here({"target_info": target_metadata(target)})
    except OptcError:
        return False
    return True


def keep_faster(tuned, build_untuned: Callable[[], object], inputs: list[dict], report: dict,
                entry: tuple[str, dict[str, int]] | None = None):
    """`tuned` (a relax Executable built with a tuning database) or the one `build_untuned()` makes, whichever
    runs faster on the host; `inputs`: the model's input signature (name, shape, dtype). Inputs of symbolic shape
    are timed through `entry` (the name of a static batch entry and the sizes it binds the symbolic dims to: what
    the runtime calls at that batch; the tuner tunes its kernels), else not at all. Fills `report` with
    "tuned_ms", "untuned_ms" (median ms a call), "ratio" (median over rounds of tuned / untuned time), "kept"
    ("tuned" or "untuned") and "entry" (the function timed), or "skipped" (why no comparison ran)."""
    import tvm  # noqa: PLC0415
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    from ..inputs import InputSpec, random_inputs  # noqa: PLC0415
    from ..workflow.latency import time_alternating  # noqa: PLC0415

    symbolic = {d for i in inputs for d in i["shape"] if not isinstance(d, int)}
    function, dims = "main", {}
    if symbolic:
        if entry is None or not symbolic <= set(entry[1]):
            report["skipped"] = "an input has a symbolic shape"
            return tuned
        function, dims = entry
    device = tvm.cpu()
    try:
        tuned_fn = VirtualMachine(tuned, device)[function]
    except (AttributeError, KeyError, ValueError):  # (the static entry was not built: main serves every size)
        report["skipped"] = "an input has a symbolic shape"
        return tuned
    untuned = build_untuned()
    untuned_fn = VirtualMachine(untuned, device)[function]
    feeds = random_inputs([InputSpec(i["name"], np.dtype(i["dtype"]), tuple(i["shape"])) for i in inputs],
                          dims=dims, seed=0)
    args = [tvm.runtime.tensor(feeds[i["name"]], device) for i in inputs]
    times = time_alternating({"tuned": lambda: tuned_fn(*args), "untuned": lambda: untuned_fn(*args)},
                             reference="untuned", target_s=CHECK_SECONDS, min_runs=CHECK_MIN_ROUNDS)
    ratio = 1.0 / times["tuned"]["speedup"]  # (speedup: untuned time / tuned time, median over rounds)
    kept = "untuned" if ratio > 1.0 else "tuned"
    report.update(tuned_ms=times["tuned"]["median_ms"], untuned_ms=times["untuned"]["median_ms"], ratio=ratio,
                  kept=kept, entry=function)
    return untuned if kept == "untuned" else tuned
