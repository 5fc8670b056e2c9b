"""Find the first rewrite that changes what a model computes (`optc optimize --bisect`), as LLVM's opt-bisect:
binary search over `--bisect-limit N` (apply only the first N rewrites of the pipeline) with a comparison of the
original and the partly optimized model as the oracle.

The search assumes that once a bad rewrite is applied the outputs stay wrong (later rewrites do not cancel it);
it runs the pipeline about log2(n) + 2 times for n rewrites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OptcError
from ..ir.core import Model
from ..tools.compare import DEFAULT_ATOL, DEFAULT_RTOL, Comparison, compare_outputs

__all__ = ["BisectResult", "bisect_rewrites"]


@dataclass
class BisectResult:
    """The outcome: `total` rewrites in the whole pipeline; `index` (1-based, "rewrite k of n") of the first bad
    one with its `rule`, `node` and `pass_name` (None when the fully optimized model matches); `comparison` the
    outputs with the first `index` rewrites applied (or with all, when none is bad); `error` the one-line reason
    when the model stopped running instead of differing; `runs` how many pipeline runs the search took."""

    total: int
    index: int | None
    rule: str | None
    node: str | None
    pass_name: str | None
    comparison: Comparison | None
    error: str | None
    runs: int

    @property
    def found(self) -> bool:
        return self.index is not None

    def describe(self) -> str:
        if not self.found:
            return f"bisect: all {self.total} rewrites keep the outputs within the tolerance"
        how = self.error or _worst(self.comparison)
        return (f"bisect: rewrite {self.index} of {self.total} is the first bad one: {self.rule} on {self.node} in "
                f"pass '{self.pass_name}' ({how}; {self.runs} pipeline runs)")

    def to_json(self) -> dict:
        return {"total": self.total, "index": self.index, "rule": self.rule, "node": self.node,
                "pass": self.pass_name, "error": self.error, "runs": self.runs,
                "comparison": self.comparison.to_json() if self.comparison is not None else None}


def _worst(comp: Comparison) -> str:
    bad = [o for o in comp.outputs if not o.equal]
    if not bad:
        return "the outputs differ"
    o = bad[0]
    where = f" at [{', '.join(map(str, o.worst_index))}]" if o.worst_index is not None else ""
    vals = f": {o.worst_text[0]} vs {o.worst_text[1]}" if o.worst_text else ""
    return f"output {o.name}{where}{vals}"


def bisect_rewrites(model: Model, pipeline: Any, inputs: Mapping[str, np.ndarray] | None = None, *,
                    rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, seed: int = 0,
                    **options: Any) -> BisectResult:
    """Binary-search the rewrites of `pipeline` (a Pass, as `build_pipeline` makes) on `model` (not modified)
    for the first one after which the outputs on `inputs` (random ones from `seed` when None) differ from the
    original's beyond |a - b| <= atol + rtol * max(|a|, |b|), or the model no longer runs on onnxruntime.
    `options` go to every `run_pipeline` (e.g. `disable`, `fast_math`: the run being bisected).
    Raises OptcError when the original itself cannot run or the inputs do not fit it."""
    from ..inputs import random_inputs
    from ..ortsession import first_line, session
    from ..quantization.data import model_input_specs
    from ..rewrites.pipelines import copy_model, run_pipeline
    from .verify import check_tolerances

    check_tolerances(rtol, atol)
    specs = model_input_specs(model)
    if inputs is None:
        inputs = random_inputs(specs, seed=seed)
    else:
        from .verify import check_inputs

        inputs = check_inputs("inputs", dict(inputs), specs)
    original = session(model, optimize=False, label="the original model")
    names = [o.name for o in original.get_outputs()]
    try:
        expected = dict(zip(names, original.run(None, dict(inputs)), strict=True))
    except Exception as exc:
        raise OptcError(f"the original model fails on onnxruntime: {first_line(exc)}") from None
    runs = 0

    def attempt(limit: int | None):
        """(report, comparison or None, error or None) with the first `limit` rewrites applied."""
        nonlocal runs
        runs += 1
        m = copy_model(model)
        report = run_pipeline(m, pipeline, bisect_limit=limit, **options)
        try:
            sess = session(m, optimize=False, label="the optimized model")
            out_names = [o.name for o in sess.get_outputs()]
            got = dict(zip(out_names, sess.run(None, dict(inputs)), strict=True))
        except OptcError as exc:
            return report, None, str(exc)
        except Exception as exc:
            return report, None, f"the optimized model fails on onnxruntime: {first_line(exc)}"
        return report, compare_outputs(expected, got, rtol, atol), None

    full, comp, error = attempt(None)
    total = full.rewrites
    if error is None and comp.equal:
        return BisectResult(total, None, None, None, None, comp, None, runs)
    good, bad = 0, total  # invariant: the first `good` rewrites are fine, the first `bad` are not
    state = (None, comp, error)  # (the report naming rewrite `bad`, its comparison, its error)
    while bad - good > 1:
        mid = (good + bad) // 2
        r, c, e = attempt(mid)
        if e is None and c.equal:
            good = mid
        else:
            bad, state = mid, (r, c, e)
    report, c, e = state if state[0] is not None else attempt(bad)  # (a run limited to `bad` names it)
    last = report.last_rewrite
    if last is None:  # (the pipeline applied fewer rewrites with the limit than without: not deterministic)
        raise OptcError(f"bisect: the pipeline did not reach rewrite {bad} again; its rewrites are not "
                        "reproducible")
    return BisectResult(total, bad, last.rule, last.node, last.pass_name, c, e, runs)
