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
* the cost model is ``xgb`` when xgboost is installed, else ``random``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
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
    return ms.database.JSONDatabase(
        path_workload=str(path / "database_workload.json"),
        path_tuning_record=str(path / "database_tuning_record.json"),
        allow_missing=True,
    )


def _make_builder(max_workers: int, timeout_sec: float, f_export=None):
    """LocalBuilder whose build function skips the slow ``tvm.s_tir.tensor_intrin`` import; `f_export`: how a
    built candidate is written (None: MetaSchedule's default, a ``.tar`` the runner links)."""
    ms = _ms()

    def f_build(mod, target, _params):  # pickled by value (nested function) into the workers
        from tvm.driver import build as tvm_build  # noqa: PLC0415
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec, f_build=f_build,
                                   f_export=f_export)


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


def _progress_callback(progress, task_names, total: int):
    from tvm.ir.utils import derived_object  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: PLC0415

    bar = progress.add_task("tuning", total=total)
    state = {"best": {}}

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            best = state["best"]
            for res in runner_results:
                secs = [float(s) for s in (res.run_secs or [])]
                if res.error_msg is None and secs:
                    t = float(np.mean(secs)) * 1e3
                    if t < best.get(task_id, float("inf")):
                        best[task_id] = t
            name = task_names[task_id] if task_id < len(task_names) else str(task_id)
            total_best = sum(best.values())
            progress.update(bar, advance=len(measure_candidates),
                            description=f"tuning {name[:32]:32s} sum of best kernels {total_best:8.3f} ms")

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


def _static_shapes(task) -> bool:
    """Whether MetaSchedule can measure the kernel: every buffer shape is static."""
    try:
        _ms().arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
    except Exception:  # noqa: BLE001 - symbolic dims: no concrete arguments to measure with
        return False
    return True


def extract_tasks(mod, params, target, *, layout: str | None = "auto", skipped: dict | None = None):
    """The tunable kernels of ``mod``: MetaSchedule ExtractedTasks of the fused module (kernels with symbolic
    shapes cannot be measured; they keep optc's default schedule, and ``skipped["symbolic"]`` counts them)."""
    from .build import fuse, prepare  # noqa: PLC0415

    ms = _ms()
    target = resolve_target(target)
    fused = fuse(prepare(mod, params, target, layout=layout), target)
    tasks = [t for t in ms.relax_integration.extract_tasks(fused, target)
             if not t.mod.attrs.get("tirx.is_scheduled", False)]
    static = [t for t in tasks if _static_shapes(t)]
    if skipped is not None:
        skipped["symbolic"] = len(tasks) - len(static)
    return static


def default_schedule(func, target):
    """optc's untuned schedule of one kernel (the rule that ``build`` would apply), or None."""
    from tvm.s_tir.dlight.base.transform import _apply_rules  # noqa: PLC0415

    from .build import default_rules  # noqa: PLC0415

    space = _apply_rules(func, target, default_rules(target), tunable=False)
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


def seed_default_records(tasks, database, target, builder, runner, max_variants: int = 0) -> tuple[int, int]:
    """Measure optc's default schedule of each task and commit it to ``database`` as a tuning record; also
    measure up to ``max_variants`` schedules by variants of optc's rules (``TiledReduction.variants()``).

    The database's best record for a kernel is then never slower than what an untuned build gets (a
    small trial budget cannot make a model slower), and MetaSchedule's evolutionary search starts its
    population from it. Returns (default records committed, variant records committed).
    """
    import tvm_ffi  # noqa: PLC0415

    ms = _ms()
    from tvm.s_tir.meta_schedule.utils import remove_build_dir  # noqa: PLC0415

    defaults, variants = [], []
    for task in tasks:
        mod = task.dispatched[0]
        sch = default_schedule(mod["main"], target)
        seen = set()
        if sch is not None:
            defaults.append((mod, sch, True))
            seen.add(tvm_ffi.structural_hash(sch.mod))
        variants += [(mod, v, False) for v in _rule_variants(mod["main"], target, seen)]
    entries = defaults + variants[:max_variants]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch, _ in entries])
    ready = [(*entry, res.artifact_path) for entry, res in zip(entries, built, strict=True) if res.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(path, device_type="cuda" if target.kind.name == "cuda" else "cpu",
                                                args_info=ms.arg_info.ArgInfo.from_entry_func(sch.mod))
                          for _, sch, _, path in ready])
    committed = [0, 0]
    for (mod, sch, is_default, path), future in zip(ready, futures, strict=True):
        result = future.result()
        remove_build_dir(path)
        if result.error_msg is not None or not result.run_secs:
            continue
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), result.run_secs, target,
            ms.arg_info.ArgInfo.from_entry_func(sch.mod)))
        committed[0 if is_default else 1] += 1
    return committed[0], committed[1]


def tune(mod, params: Mapping[str, np.ndarray] | None, target, db_dir, trials: int, progress: bool = True,
         *, max_trials_per_task: int | None = None, num_trials_per_iter: int = 64,
         cost_model: str = "auto", runner=None, builder=None, seed: int | None = None,
         layout: str | None = "auto", report: dict | None = None, rpc: str | None = None):
    """Tune the kernels of ``mod`` for ``target`` with at most ``trials`` measured candidates in all.

    Kernels already in the database at ``db_dir`` are skipped (0 new trials when all are known).
    ``rpc`` (``HOST:PORT:KEY``): measure on the servers of that key of a TVM RPC tracker, in parallel
    (``optc.remote.measure``; builds stay here, linked with the target's cross compiler); a candidate
    whose server dies fails and tuning goes on. ``runner`` may instead be any MetaSchedule runner. Cross
    targets (arm64 on x86, cuda without a GPU) need one of them. Returns the database; ``report``
    (a dict), when given, receives ``tasks``, ``skipped_symbolic`` (kernels with symbolic shapes, not tuned),
    ``tuned_tasks``, ``trials`` (all measured candidates),
    ``default_records``, ``variant_trials`` (schedules by variants of optc's rules, measured first),
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
    tasks = extract_tasks(mod, params, target, layout=layout, skipped=skipped)
    todo = [t for t in tasks if not database.has_workload(t.dispatched[0])]
    info = {"tasks": len(tasks), "tuned_tasks": len(todo), "trials": 0, "cost_model": _cost_model(cost_model),
            "skipped_symbolic": skipped["symbolic"]}
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


def _tune(ms, todo, database, target, trials, info, work_dir, builder, runner, progress, max_trials_per_task,
          num_trials_per_iter, seed, report):
    """`tune` once the tasks to tune, the builder and the runner are known."""
    _import_tensor_intrin()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, str(work_dir), strategy=_search_strategy(info["cost_model"]), num_threads=host_num_cores(), seed=seed)
    if builder is None:
        builder = _make_builder(max_workers=host_num_cores(), timeout_sec=60.0)
    if runner is None:
        runner = ms.runner.LocalRunner(timeout_sec=30.0, evaluator_config=measure_config())
    info["default_records"], info["variant_trials"] = seed_default_records(todo, database, target, builder, runner,
                                                                           max_variants=trials)
    trials -= info["variant_trials"]  # the rule variants are measured candidates: they count as trials
    if trials <= 0:
        info["trials"] = info["variant_trials"]
        if report is not None:
            report.update(info)
        return database
    per_task = max_trials_per_task or max(1, trials // len(contexts))
    per_task = min(per_task, trials)
    callbacks = ms.measure_callback.MeasureCallback.create("default")
    progress_ctx = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        progress_ctx = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=False)
        callbacks = list(callbacks) + [_progress_callback(progress_ctx, [t.task_name for t in todo],
                                                          min(trials, per_task * len(contexts)))]
    before = len(database.get_all_tuning_records())
    import logging  # noqa: PLC0415

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = ms_logger.level
    try:
        if progress_ctx is not None:
            ms_logger.setLevel(logging.WARNING)  # the bar replaces MetaSchedule's per-batch tables
            progress_ctx.start()
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(num_trials_per_iter, per_task),
            builder=builder,
            runner=runner,
            database=database,
            cost_model=info["cost_model"],
            measure_callbacks=callbacks,
            task_scheduler="gradient" if len(contexts) > 1 else "round-robin",
        )
    finally:
        ms_logger.setLevel(old_level)
        if progress_ctx is not None:
            progress_ctx.stop()
    info["trials"] = len(database.get_all_tuning_records()) - before + info["variant_trials"]
    if report is not None:
        report.update(info)
    return database
