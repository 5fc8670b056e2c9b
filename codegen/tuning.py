"""MetaSchedule tuning with a persistent database directory.

``tune(mod, params, target, db_dir, trials)`` extracts the kernels of the module exactly as
``codegen.build`` will see them (same relax preprocessing, same legalize + fusion), tunes only the
kernels the database in ``db_dir`` does not know yet, and returns the database. Build with it::

    db = tune(mod, params, "cpu", "tuning-db", trials=200)
    ex = build(mod, params, "cpu", database=db)

A second ``tune`` with the same database runs no new trials. Pitfalls handled here (TVM 0.27):

* tasks are extracted from the *fused* module, and ``build`` applies the database right after its own
  fusion of the same module (never re-fusing a fused module), so records do match;
* the LocalBuilder's default build function imports ``tvm.s_tir.tensor_intrin`` (slower than the
  builder's timeout on small machines): a build function without that import is used;
* the cost model is ``xgb`` (xgboost is a dependency; ``random`` if it does not import);
* the trials go where the untuned model spends its time: optc's default schedule of every kernel is measured
  first, and each kernel's search gets trials in proportion to its measured time x calls per inference
  (``profile_shares``, ``allocate_trials``), the largest first, one shared cost model; kernels with too
  small a share keep their default schedule;
* candidates are built as the library builds its kernels (``candidate_module``: the passes the build runs after
  scheduling, the same TIR pipeline; a max pool measured 3.5x slower without its vectorizable NaN tests) and
  timed as the library runs: caches flushed before every run (``measure_config``), in runner
  processes that inherit ``TVM_NUM_THREADS`` (the thread count the library will run with).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import OptcError
from .targets import host_num_cores, resolve_target, target_kind


def _ms():
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    return ms


def open_database(db_dir, *, create: bool = True):
    """The JSON MetaSchedule database stored in ``db_dir`` (created when missing)."""
    ms = _ms()
    path = Path(db_dir)
    if path.exists() and not path.is_dir():
        raise OptcError(f"tuning database '{db_dir}' is not a directory")
    if not path.exists():
        if not create:
            raise OptcError(f"no tuning database at '{db_dir}'")
        path.mkdir(parents=True)
    from .amx import register_named  # noqa: PLC0415
    from .int8_kernels import register_intrinsics  # noqa: PLC0415

    register_intrinsics()  # the records of int8 kernels name optc's tensor intrinsics: loading needs them
    records = path / "database_tuning_record.json"
    if records.exists():
        register_named(records.read_text())  # AMX intrinsics are registered per tile shape, as records name them
    return ms.database.JSONDatabase(
        path_workload=str(path / "database_workload.json"),
        path_tuning_record=str(path / "database_tuning_record.json"),
        allow_missing=True,
    )


def _make_builder(max_workers: int, timeout_sec: float, f_export=None):
    """LocalBuilder whose build function lowers a candidate as the library's build lowers its kernels
    (``build.scheduled_kernel_passes``, the same TIR pipeline) and skips the slow ``tvm.s_tir.tensor_intrin``
    import; `f_export`: how a built candidate is written (None: MetaSchedule's default, a ``.tar`` the runner
    links)."""
    ms = _ms()

    def f_build(mod, target, _params):  # pickled by value (nested function) into the workers
        from optc.codegen import tvm_ops  # noqa: PLC0415
        from optc.codegen.gather import tir_pipeline  # noqa: PLC0415
        from optc.codegen.tuning import candidate_module  # noqa: PLC0415
        from tvm.driver import build as tvm_build  # noqa: PLC0415

        tvm_ops.register()
        return tvm_build(candidate_module(mod), target=target, pipeline=tir_pipeline(target))

    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec, f_build=f_build,
                                   f_export=f_export)


def candidate_module(mod):
    """A scheduled kernel (IRModule) as the tuner's builder lowers it: its weight layout rewrite taken out (the
    library computes it at compile time) and the passes the library's build runs on every scheduled kernel
    (``build.scheduled_kernel_passes``), so a candidate is timed as the library will run it."""
    import tvm  # noqa: PLC0415
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    from .build import scheduled_kernel_passes  # noqa: PLC0415

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.transform.Sequential(scheduled_kernel_passes())(mod)


def _import_tensor_intrin() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext does, for its side effects) in seconds
    instead of minutes: its hundreds of ``@T.prim_func`` each call ``inspect.stack()``, and for the frames of
    ``<frozen importlib._bootstrap>`` inspect scans every loaded module to find their module (the import took
    94 s with TVM loaded, 15 s with this, on 2 busy cores). Telling inspect which module those files are skips
    the scan; nothing else changes."""
    import inspect  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        inspect.modulesbyfile.setdefault(f"<frozen {name}>", name)
    import tvm.s_tir.tensor_intrin  # noqa: F401, PLC0415


def _cost_model(kind: str):
    if kind == "auto":
        try:
            import xgboost  # noqa: F401, PLC0415

            return "xgb"
        except ImportError:
            return "random"
    return kind


def _progress_callback(progress, bar, best: dict, index: int, name: str):
    """A measure callback advancing the rich `progress` bar `bar` for the search of task `index` (`name`);
    `best` (shared by the callbacks of all tasks) keeps each task's best measured milliseconds."""
    from tvm.ir.utils import derived_object  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: PLC0415

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for res in runner_results:
                secs = [float(s) for s in (res.run_secs or [])]
                if res.error_msg is None and secs:
                    best[index] = min(best.get(index, float("inf")), float(np.mean(secs)) * 1e3)
            progress.update(bar, advance=len(measure_candidates),
                            description=f"tuning {name[:32]:32s} sum of best kernels {sum(best.values()):8.3f} ms")

    return _Progress()


def _search_strategy(cost_model: str):
    """MetaSchedule's evolutionary search; without a learned cost model (``random``) its genetic rounds rank
    candidates by random scores, so a small population and one round give the same quality of candidates
    in a fraction of the search time (4 rounds over 512 schedules took ~20 s per batch on 2 cores)."""
    ms = _ms()
    if cost_model == "random":
        return ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=1, init_min_unmeasured=32)
    return "evolutionary"


def measure_config():
    """How candidates are timed: the weights and outputs are flushed from the CPU caches before every run,
    as they are in a whole model (the weights of one layer stream in from memory once per inference);
    with warm caches the tuner favoured schedules that were slower end to end. 10 runs, no batching."""
    return _ms().runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)


def _runner_worker_init() -> None:
    """Each runner worker (a fresh process: the AMX permission does not survive exec) asks for the AMX tiles."""
    from optc.codegen.amx import request_permission  # noqa: PLC0415

    request_permission()


def _static_shapes(task) -> bool:
    """Whether MetaSchedule can measure the kernel: every buffer shape is static."""
    try:
        _ms().arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
    except Exception:  # noqa: BLE001 - symbolic dims: no concrete arguments to measure with
        return False
    return True


def extract_tasks(mod, params, target, *, layout: str | None = "auto", skipped: dict | None = None,
                  batch_sizes: Sequence[int] = ()):
    """The tunable kernels of ``mod``: MetaSchedule ExtractedTasks of the fused module (kernels with symbolic
    shapes cannot be measured; they keep optc's default schedule, and ``skipped["symbolic"]`` counts them; nor can
    kernels whose default schedule pads a weight, ``skipped["padded_weights"]``; kernels
    scheduled when they are made, such as Winograd's data pack, are not tasks: never measured, the trial split
    counted each as the slowest kernel), with
    the static batch entries of ``batch_sizes`` that the build adds (``static_batch.py``: their static kernels
    are tuned; the build applies the records to them). The index checks of gathers and scatters are left out: a
    loop over the indices with nothing to tune, which the random indices of a measurement would fail."""
    from ..lowering.ops.indexing import INDEX_CHECK_ATTR  # noqa: PLC0415
    from .build import fuse, prepare  # noqa: PLC0415

    ms = _ms()
    target = resolve_target(target)
    try:
        fused = fuse(prepare(mod, params, target, layout=layout, batch_sizes=batch_sizes), target)
    except Exception:  # noqa: BLE001 - as the build does: without the entries when they fail
        if not batch_sizes:
            raise
        fused = fuse(prepare(mod, params, target, layout=layout), target)
    tasks = [t for t in ms.relax_integration.extract_tasks(fused, target)
             if not t.mod.attrs.get("tirx.is_scheduled", False)
             and not (t.mod["main"].attrs or {}).get("tirx.is_scheduled", False)
             and INDEX_CHECK_ATTR not in (t.mod["main"].attrs or {})]
    static = [t for t in tasks if _static_shapes(t)]
    measurable = [t for t in static if not _untuned_pads_weights(t.dispatched[0]["main"], target)]
    if skipped is not None:
        skipped["symbolic"] = len(tasks) - len(static)
        skipped["padded_weights"] = len(static) - len(measurable)
    return measurable


def _untuned_pads_weights(func, target) -> bool:
    """optc's untuned schedule of a kernel pads a constant weight (``TiledReduction(pad_weights=True)``: the grouped
    1x1 convolutions' columns, folded at compile time), which the tuner's rules cannot build and measure
    (``cpu_rules(tunable=True)``): such a kernel is not a tuning task, so the build keeps that schedule. Tuned,
    the database's best of schedules measured without the padding replaced it, 2x slower in the library (a
    ShuffleNet 0.79x onnxruntime untuned ran 1.33x tuned)."""
    import tvm_ffi  # noqa: PLC0415
    from tvm.s_tir.dlight.base.transform import _apply_rules  # noqa: PLC0415

    from .build import default_rules  # noqa: PLC0415

    untuned = _apply_rules(func, target, default_rules(target), tunable=False)
    measured = default_schedule(func, target)
    if not untuned or measured is None:
        return bool(untuned) != (measured is not None)
    return tvm_ffi.structural_hash(untuned[0].mod) != tvm_ffi.structural_hash(measured.mod)


def default_schedule(func, target):
    """optc's untuned schedule of one kernel as the tuner measures it (the rule that ``build`` would apply, but
    padding no constant weight: ``schedules.cpu_rules(tunable=True)``), or None."""
    from tvm.s_tir.dlight.base.transform import _apply_rules  # noqa: PLC0415

    from .build import default_rules  # noqa: PLC0415

    space = _apply_rules(func, target, default_rules(target, tunable=True), tunable=False)
    return space[0] if space else None


def _rule_variants(func, target, seen: set) -> list:
    """Schedules of ``func`` by the variants of optc's rules that differ from every schedule in ``seen``."""
    import tvm_ffi  # noqa: PLC0415

    from .schedules import TiledReduction  # noqa: PLC0415

    if target.kind.name != "llvm":
        return []
    out = []
    for rule in TiledReduction.variants():
        sch = rule.apply(func, target, False)
        if sch is None:
            continue
        key = tvm_ffi.structural_hash(sch.mod)
        if key not in seen:
            seen.add(key)
            out.append(sch)
    return out


def seed_default_records(tasks, database, target, builder, runner, max_variants: int = 0,
                         default_secs: dict[int, float] | None = None) -> tuple[int, int]:
    """Measure optc's default schedule of each task and commit it to ``database`` as a tuning record; also
    measure up to ``max_variants`` schedules by variants of optc's rules (``TiledReduction.variants()``).

    The database's best record for a kernel is then never slower than what an untuned build gets (a
    small trial budget cannot make a model slower), and MetaSchedule's evolutionary search starts its
    population from it. Returns (default records committed, variant records committed); ``default_secs``
    (a dict), when given, receives the mean measured seconds of each task's default schedule by task index
    (tasks whose default schedule did not build or run are missing).
    """
    import tvm_ffi  # noqa: PLC0415

    ms = _ms()
    from tvm.s_tir.meta_schedule.utils import remove_build_dir  # noqa: PLC0415

    defaults, variants = [], []
    for index, task in enumerate(tasks):
        mod = task.dispatched[0]
        sch = default_schedule(mod["main"], target)
        seen = set()
        if sch is not None:
            defaults.append((mod, sch, index))
            seen.add(tvm_ffi.structural_hash(sch.mod))
        variants += [(mod, v, None) for v in _rule_variants(mod["main"], target, seen)]
    entries = defaults + variants[:max_variants]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch, _ in entries])
    ready = [(*entry, res.artifact_path) for entry, res in zip(entries, built, strict=True) if res.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(path, device_type="cuda" if target.kind.name == "cuda" else "cpu",
                                                args_info=ms.arg_info.ArgInfo.from_entry_func(sch.mod))
                          for _, sch, _, path in ready])
    committed = [0, 0]
    for (mod, sch, index, path), future in zip(ready, futures, strict=True):
        result = future.result()
        remove_build_dir(path)
        if result.error_msg is not None or not result.run_secs:
            continue
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), result.run_secs, target,
            ms.arg_info.ArgInfo.from_entry_func(sch.mod)))
        committed[0 if index is not None else 1] += 1
        if index is not None and default_secs is not None:
            default_secs[index] = float(np.mean([float(t) for t in result.run_secs]))
    return committed[0], committed[1]


#: a task's own search gets at least this many trials, or none: fewer rarely beat optc's default schedule
MIN_TASK_TRIALS = 16


def profile_shares(weights, default_secs: Mapping[int, float]) -> list[float]:
    """Each task's share of the untuned model's kernel time: its default schedule's measured seconds times
    its calls per inference (``weights``: MetaSchedule's task weights), normalized to sum 1. A task whose
    default schedule was not measured counts as the slowest measured one (it may well be slow); with no
    measurement at all every call counts alike."""
    measured = [default_secs[i] for i in range(len(weights)) if i in default_secs]
    fallback = max(measured) if measured else 1.0
    times = [float(w) * default_secs.get(i, fallback) for i, w in enumerate(weights)]
    total = sum(times)
    return [t / total for t in times] if total > 0 else [1.0 / len(times)] * len(times)


def allocate_trials(shares, trials: int, min_trials: int = MIN_TASK_TRIALS,
                    max_per_task: int | None = None) -> list[int]:
    """Split ``trials`` over tasks in proportion to ``shares`` (their share of the model's time): the search
    goes where the time is. A task whose proportional part is under ``min_trials`` gets none (the smallest
    such share is dropped first and the rest re-split), unless it is the last one left; ``max_per_task``
    caps every task. Rounding by largest remainder; the parts sum to ``trials`` (less where capped)."""
    if trials <= 0 or not shares:
        return [0] * len(shares)
    alive = [i for i, s in enumerate(shares) if s > 0] or list(range(len(shares)))
    while True:
        total = sum(shares[i] for i in alive)
        exact = {i: trials * (shares[i] / total if total > 0 else 1.0 / len(alive)) for i in alive}
        small = [i for i in alive if exact[i] < min_trials]
        if not small or len(alive) == 1:
            break
        alive.remove(min(small, key=lambda i: (shares[i], -i)))
    parts = {i: int(exact[i]) for i in alive}
    for i in sorted(alive, key=lambda i: (parts[i] - exact[i], -shares[i]))[:trials - sum(parts.values())]:
        parts[i] += 1
    out = [parts.get(i, 0) for i in range(len(shares))]
    return [min(p, max_per_task) for p in out] if max_per_task is not None else out


def tune(mod, params: Mapping[str, np.ndarray] | None, target, db_dir, trials: int, progress: bool = True,
         *, max_trials_per_task: int | None = None, num_trials_per_iter: int = 64,
         cost_model: str = "auto", runner=None, builder=None, seed: int | None = None,
         layout: str | None = "auto", report: dict | None = None, rpc: str | None = None,
         batch_sizes: Sequence[int] = ()):
    """Tune the kernels of ``mod`` for ``target`` with at most ``trials`` measured candidates in all, those of
    the static batch entries of ``batch_sizes`` included (``extract_tasks``).

    Kernels already in the database at ``db_dir`` are skipped (0 new trials when all are known).
    ``rpc`` (``HOST:PORT:KEY``): measure on the servers of that key of a TVM RPC tracker, in parallel
    (``optc.remote.measure``; builds stay here, linked with the target's cross compiler); a candidate
    whose server dies fails and tuning goes on. ``runner`` may instead be any MetaSchedule runner. Cross
    targets (arm64 on x86, cuda without a GPU) need one of them. Returns the database; ``report``
    (a dict), when given, receives ``tasks``, ``skipped_symbolic`` (kernels with symbolic shapes, not tuned),
    ``skipped_padded_weights`` (kernels whose untuned schedule pads a weight, not tuned: ``_untuned_pads_weights``),
    ``tuned_tasks``, ``trials`` (all measured candidates),
    ``default_records``, ``variant_trials`` (schedules by variants of optc's rules, measured first),
    ``task_trials`` (``[{"task", "share", "trials"}]``: each searched kernel's share of the untuned time and its
    trials, largest share first),
    ``cost_model`` and, with ``rpc``, ``rpc``: ``servers`` (registered at the start), ``measured`` and
    ``failed`` (candidates per ``host:port``). OptcError (one line) for a bad ``rpc`` address, an
    unreachable tracker or no server with the key, before any kernel is extracted.
    """
    ms = _ms()
    from .targets import is_cross_target  # noqa: PLC0415

    target = resolve_target(target)
    if trials < 0:
        raise OptcError(f"trials must be >= 0, got {trials}")
    if rpc is not None and runner is None:
        from ..remote.tracker import parse_address, require_key  # noqa: PLC0415

        require_key(parse_address(rpc))
    database = open_database(db_dir)
    skipped: dict = {}
    tasks = extract_tasks(mod, params, target, layout=layout, skipped=skipped, batch_sizes=batch_sizes)
    todo = [t for t in tasks if not database.has_workload(t.dispatched[0])]
    info = {"tasks": len(tasks), "tuned_tasks": len(todo), "trials": 0, "cost_model": _cost_model(cost_model),
            "skipped_symbolic": skipped["symbolic"], "skipped_padded_weights": skipped["padded_weights"]}
    if report is not None:
        report.update(info)
    if not todo or trials == 0:
        return database
    if runner is None and rpc is None and is_cross_target(target):
        raise OptcError(f"cannot measure {target_kind(target)} kernels on this machine: "
                        "measure them on a remote device (--rpc HOST:PORT:KEY)")
    work_dir = Path(db_dir) / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    rpc_log = None
    if runner is None and rpc is not None:
        from ..remote.measure import export_function, rpc_runner  # noqa: PLC0415

        if builder is None:
            builder = _make_builder(max_workers=host_num_cores(), timeout_sec=60.0, f_export=export_function(target))
        fd, rpc_log = tempfile.mkstemp(prefix="optc-rpc-", suffix=".log")
        os.close(fd)
        runner, info["rpc"] = rpc_runner(rpc, measure_config(), rpc_log)
        info["rpc"] = {"servers": info["rpc"]}
    try:
        return _tune(ms, todo, database, target, trials, info, work_dir, builder, runner, progress,
                     max_trials_per_task, num_trials_per_iter, seed, report)
    finally:
        if rpc_log is not None:
            from ..remote.measure import servers_used  # noqa: PLC0415

            info["rpc"].update(servers_used(rpc_log))
            os.unlink(rpc_log)
            if report is not None:
                report.update(info)


def _drop_foreign_handlers() -> None:
    """Remove the handlers MetaSchedule did not configure from its logger: its logging setup lists the logger's
    handlers by name in a `dictConfig`, and one without a name (attached after a first tune in the process)
    failed the second tune with `'NoneType' object has no attribute 'format'`."""
    import logging  # noqa: PLC0415

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if not (handler.get_name() or "").startswith("tvm.s_tir.meta_schedule"):
            logger.removeHandler(handler)


def _tune(ms, todo, database, target, trials, info, work_dir, builder, runner, progress, max_trials_per_task,
          num_trials_per_iter, seed, report):
    """`tune` once the tasks to tune, the builder and the runner are known."""
    _import_tensor_intrin()
    _drop_foreign_handlers()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, str(work_dir), strategy=_search_strategy(info["cost_model"]), num_threads=host_num_cores(), seed=seed)
    if builder is None:
        builder = _make_builder(max_workers=host_num_cores(), timeout_sec=60.0)
    if runner is None:
        runner = ms.runner.LocalRunner(timeout_sec=30.0, evaluator_config=measure_config(),
                                       initializer=_runner_worker_init)
    default_secs: dict[int, float] = {}
    info["default_records"], info["variant_trials"] = seed_default_records(todo, database, target, builder, runner,
                                                                           max_variants=trials,
                                                                           default_secs=default_secs)
    trials -= info["variant_trials"]  # the rule variants are measured candidates: they count as trials
    if trials <= 0:
        info["trials"] = info["variant_trials"]
        if report is not None:
            report.update(info)
        return database
    # the search goes where the untuned model spends its time: each task's trials in proportion to its
    # default schedule's measured time x its calls per inference (an even split gave a 1%-kernel as many
    # trials as the 60% one); the largest first, each task with its own budget, re-split after each task over
    # the tasks left (a small search space is exhausted early: its unused trials go to the others)
    shares = profile_shares([float(w) for w in weights], default_secs)
    remaining = sorted(range(len(todo)), key=lambda i: -shares[i])
    info["task_trials"] = []
    cost_model = ms.cost_model.CostModel.create(info["cost_model"], num_tuning_cores=host_num_cores())
    progress_ctx, bar, best = None, None, {}
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        progress_ctx = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=False)
        bar = progress_ctx.add_task("tuning", total=trials)
    before = len(database.get_all_tuning_records())
    import logging  # noqa: PLC0415

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = ms_logger.level
    try:
        if progress_ctx is not None:
            ms_logger.setLevel(logging.WARNING)  # the bar replaces MetaSchedule's per-batch tables
            progress_ctx.start()
        left = trials
        while remaining and left > 0:
            budget = allocate_trials([shares[i] for i in remaining], left, min(MIN_TASK_TRIALS, left),
                                     max_trials_per_task)[0]
            i = remaining.pop(0)
            if budget == 0:
                continue
            callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
            if progress_ctx is not None:
                callbacks.append(_progress_callback(progress_ctx, bar, best, i, todo[i].task_name))
            start = len(database.get_all_tuning_records())
            ms.tune.tune_tasks(
                tasks=[contexts[i]],
                task_weights=[weights[i]],
                work_dir=str(work_dir),
                max_trials_global=budget,
                max_trials_per_task=budget,
                num_trials_per_iter=min(num_trials_per_iter, budget),
                builder=builder,
                runner=runner,
                database=database,
                cost_model=cost_model,  # one model for all tasks: what it learnt on one guides the next
                measure_callbacks=callbacks,
                task_scheduler="round-robin",
            )
            used = len(database.get_all_tuning_records()) - start
            info["task_trials"].append({"task": todo[i].task_name, "share": round(shares[i], 4), "trials": used})
            left -= used
    finally:
        ms_logger.setLevel(old_level)
        if progress_ctx is not None:
            progress_ctx.stop()
    info["trials"] = len(database.get_all_tuning_records()) - before + info["variant_trials"]
    if report is not None:
        report.update(info)
    return database
