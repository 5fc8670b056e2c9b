"""`--tune` spends its trials where the untuned model spends its time (`profile_shares`, `allocate_trials`),
and MetaSchedule's xgboost cost model works end to end with TVM 0.27 (a tiny budget)."""

from __future__ import annotations

import pytest
from optc.codegen.tuning import _cost_model, allocate_trials, profile_shares


def test_shares_are_time_times_calls():
    shares = profile_shares([1, 2, 1], {0: 3e-3, 1: 1e-3, 2: 5e-3})
    assert shares == pytest.approx([0.3, 0.2, 0.5])


def test_unmeasured_task_counts_as_the_slowest_and_nothing_measured_counts_calls():
    assert profile_shares([1, 1], {0: 2e-3}) == pytest.approx([0.5, 0.5])
    assert profile_shares([1, 1, 2], {}) == pytest.approx([0.25, 0.25, 0.5])


def test_trials_follow_the_shares():
    parts = allocate_trials([0.6, 0.3, 0.1], 200, min_trials=16)
    assert parts == [120, 60, 20] and sum(parts) == 200


def test_rounding_keeps_the_total():
    parts = allocate_trials([1 / 3] * 3, 100, min_trials=1)
    assert sum(parts) == 100 and sorted(parts) == [33, 33, 34]


def test_a_small_share_gets_no_trials_and_its_part_goes_to_the_others():
    # 5% of 200 = 10 trials < 16: dropped, not a token search that cannot beat the default schedule
    parts = allocate_trials([0.75, 0.2, 0.05], 200, min_trials=16)
    assert parts[2] == 0 and sum(parts) == 200 and parts[0] > parts[1] > 0


def test_budget_below_the_minimum_goes_to_the_largest_share():
    assert allocate_trials([0.2, 0.5, 0.3], 8, min_trials=16) == [0, 8, 0]


def test_cap_and_empty_cases():
    assert allocate_trials([0.9, 0.1], 100, min_trials=1, max_per_task=50) == [50, 10]
    assert allocate_trials([0.5, 0.5], 0) == [0, 0]
    assert allocate_trials([], 10) == []
    assert allocate_trials([0.0, 0.0], 40, min_trials=16) == [20, 20]  # no time measured: split evenly


def test_even_split_is_not_what_happens_when_one_kernel_dominates():
    """The old split (trials // tasks each) gave 13 kernels of a tiny CNN 9 trials each, cast and reshape
    included; weighted, the dominant kernel gets most of the budget."""
    shares = profile_shares([1] * 13, {0: 400e-6, **{i: 5e-6 for i in range(1, 13)}})
    parts = allocate_trials(shares, 128)
    assert parts[0] == 128 and sum(parts[1:]) == 0


@pytest.mark.slow
def test_xgboost_cost_model_tunes_end_to_end(tmp_path):
    """xgboost is a dependency: 'auto' picks it, and a tiny tune with it measures candidates beyond optc's
    default schedule, applies them and keeps the model's outputs."""
    from optc import runtime
    from optc.codegen import build, export, tune

    from .test_codegen import _ort, _random_inputs, _rel_err, graph_io, lower_onnx, mlp

    assert _cost_model("auto") == "xgb"
    model = mlp(batch=4, d=128)
    mod, params = lower_onnx(model)
    report: dict = {}
    db = tune(mod, params, "cpu", tmp_path / "db", trials=24, progress=False, report=report,
              num_trials_per_iter=8, seed=0)
    assert report["cost_model"] == "xgb"
    assert report["trials"] > report["variant_trials"]  # MetaSchedule's search measured candidates
    assert sum(t["trials"] for t in report["task_trials"]) <= 24 - report["variant_trials"]
    shares = [t["share"] for t in report["task_trials"]]
    assert shares == sorted(shares, reverse=True)  # the largest share is searched first
    built: dict = {}
    ex = build(mod, params, "cpu", database=db, report=built)
    assert built["tuned"] >= 1
    export(ex, tmp_path / "m.so", dict(zip(("inputs", "outputs"), graph_io(model), strict=False)))
    feed = _random_inputs(model)
    got = runtime.load(tmp_path / "m.so").run(feed)
    assert _rel_err(got["y"], _ort(model, feed)["y"]) < 1e-4


def test_kernels_scheduled_when_made_are_not_tasks():
    """Winograd's data pack and the channel shuffle are scheduled when they are made (`tirx.is_scheduled` on the
    PrimFunc): not tuning tasks, so the trial split does not count them as the slowest, never-measured kernels
    (each took an 18% share in a SqueezeNet tune). The Winograd matmul and the convolutions are tasks."""
    import optc
    from optc.codegen.tuning import extract_tasks
    from optc.lowering import lower
    from optc.rewrites import optimize

    from .test_layout_copies import _shuffled
    from .test_winograd import _conv_model

    for model, scheduled, tunable in [(_conv_model(c=32, k=32, size=(8, 8)), "winograd_data_pack", "matmul"),
                                      (_shuffled(4, 136, batch=1), "channel_shuffle", "conv2d")]:
        names = [t.task_name for t in extract_tasks(lower(optimize(optc.from_onnx(model), level=2)), None, "cpu")]
        assert any(tunable in n for n in names) and not any(scheduled in n for n in names), names


def test_candidates_are_built_as_the_library_builds_its_kernels():
    """The tuner's builder lowers a candidate with the passes the library's build runs on every scheduled kernel
    (`candidate_module`): a NaN-propagating max pool's `isnan` becomes the bit test the vectorizer takes. Measured
    without it, ShuffleNet's first max pool timed 3.5x slower than in the library, and the search replaced its
    schedule by one 9x slower in the library. A kernel without class tests is left as it is."""
    import optc
    import tvm
    import tvm_ffi
    from optc.codegen.tuning import candidate_module, default_schedule, extract_tasks
    from optc.lowering import lower
    from optc.rewrites import optimize

    from .test_schedule_pooling import _pool
    from .test_winograd import _conv_model

    def default_kernel(model, name):
        tasks = extract_tasks(lower(optimize(optc.from_onnx(model), level=2)), None, "cpu")
        task = next(t for t in tasks if name in t.task_name)
        return tvm.IRModule({"main": default_schedule(task.dispatched[0]["main"], tvm.target.Target("llvm")).mod["main"]})

    pool = default_kernel(_pool(c=24, size=(32, 32), pads=(1, 1, 1, 1)), "max_pool")
    assert "isnan" in pool.script()
    built = candidate_module(pool)
    assert "isnan" not in built.script() and "reinterpret" in built.script()
    conv = default_kernel(_conv_model(c=8, k=8, size=(6, 6)), "conv")
    assert "isnan" not in conv.script()
    assert tvm_ffi.structural_equal(candidate_module(conv), conv)
