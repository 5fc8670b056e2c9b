"""`optc auto`: the optimization workflow as one search. Measure the baseline (accuracy, per-class accuracy,
latency median and p90 on each backend, size), then try one technique at a time in order of expected gain per
accuracy risk, measure each candidate on the whole test set and beside the baseline, keep a step only when it
helps and keeps the accuracy budget, and stop as soon as every requirement holds or the time budget ends.

The steps (each composes with the steps kept before it):

    -O2, -O3              graph optimization (optc.optimize) of the best float model
    float16, bfloat16     reduced-precision floats (optc.quantize)          } one precision is kept: each
    dynamic int8          int8 weights, activations quantized at run time   } applies to the best float model
    static int8           calibrated QDQ, accuracy-aware (layers returned   }
                          to float until the drop is within what is left,   }
                          for at most half the time left)                   }
    int4 weight-only      MatMulNBits (onnxruntime's contrib op)            }
    prune 10/25/50%       structured channel pruning of the best float model (optc.workflow.prune: whole
                          multiples of 16 channels kept; with calibration data, also with the layers that read
                          the pruned channels refitted by least squares, optc.workflow.reconstruct, and the
                          more accurate of the two kept), the kept precision re-applied on top; a larger ratio is
                          tried only while the smaller keeps the accuracy budget (skipped where no group of
                          channels can lose a multiple at that ratio)
    tvm untuned, bf16,    the best float32 model compiled by TVM (optc.compile); then with --precision bf16
    int8, tuned           where the CPU has bf16 dot-product instructions (AMX-BF16 / AVX512-BF16: skipped
                          elsewhere, where bf16 is emulated); then its static int8 QDQ model (the `static int8`
                          step's when it was built from the same float model and kept the accuracy budget, else
                          quantized the same way) compiled to integer kernels; then the kept one tuned by
                          MetaSchedule in the time left (TVM's float16 kernels are slower than its float32 ones)

The workflow owns no optimization of its own: it composes the passes, `evaluate` and `profile`.

A step helps when its median speed-up over the baseline (per-round ratios, timed in alternation with the
baseline) beats the best kept model's by `MIN_GAIN`, or, while a size requirement fails, when it is smaller
without being slower by more than `MIN_GAIN`. Without any latency, speed-up or size requirement, every step is
tried and the fastest model within the accuracy budget is chosen.

Time: a step whose estimate (the longest earlier step of its kind) exceeds the time left is skipped, and the
search goes on to later steps that may fit (the TVM library after a slow accuracy-aware quantization); the
search stops when no time is left, and the stop reason lists the steps left out.

State is saved in `outdir/state.json` (atomically) after every step; `resume=True` continues from it, trying
the steps left out for lack of time first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptcError
from ..fileio import atomic_path, write_json
from ..progress import progress as progress_bar
from .latency import time_alternating

__all__ = ["BACKENDS", "AutoResult", "Requirements", "auto", "parse_backends", "verdicts"]

BACKENDS = ("onnxruntime", "tvm-cpu")
PRUNE_RATIOS = (0.1, 0.25, 0.5)
TUNE_TRIALS = 400  # MetaSchedule trials asked of the tuning step; the time budget usually ends it first
TUNE_RESERVE_S = 30.0  # kept from the tuning for building the tuned library and measuring it
TUNE_MIN_S = 30.0  # less time than this for tuning: the step fails with the reason
MIN_GAIN = 0.03  # a step must be 3% faster than the best kept model to be kept
ACCURACY_SHARE = 0.5  # static int8's accuracy-aware search may use this share of the time left
STATE_FILE = "state.json"
WORK_DIR = "work"
STATE_VERSION = 1
_EPS = 1e-9  # comparisons of requirement values tolerate float rounding of the drop (100 * (a - b))


# -- requirements -------------------------------------------------------------------------------------------------


def _parse_number(flag: str, value: Any, suffixes: Sequence[str], *, zero_ok: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise OptcError(f"cannot parse {flag} {value!r}: expected a number")
    text = str(value).strip().lower()
    for s in suffixes:
        if text.endswith(s):
            text = text[: -len(s)].strip()
            break
    try:
        x = float(text)
    except ValueError:
        raise OptcError(f"cannot parse {flag} '{value}': expected a number") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
        raise OptcError(f"{flag} must be a finite number {'>= 0' if zero_ok else '> 0'}, not '{value}'")
    return x


@dataclass(frozen=True)
class Requirements:
    """What the chosen model must satisfy. `max_accuracy_drop`: in percentage points for top1/top5 (metric units
    for mse/cosine), against the baseline; `max_latency_ms`: median latency on the candidate's backend;
    `min_speedup`: median speed-up over the baseline on the reference backend (x); `max_size_mb`: the model
    file (10^6 bytes)."""

    max_accuracy_drop: float
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    max_size_mb: float | None = None

    @classmethod
    def parse(cls, max_accuracy_drop: Any, max_latency_ms: Any = None, min_speedup: Any = None,
              max_size_mb: Any = None) -> Requirements:
        """Numbers or strings ("2x", "2.0ms", "4MB" accepted). OptcError (one line) for what cannot be parsed,
        a missing accuracy budget, a negative or non-finite value, or a zero latency, speed-up or size."""
        if max_accuracy_drop is None:
            raise OptcError("--max-accuracy-drop is required (the accuracy budget, e.g. 0.5 points of top-1)")
        return cls(_parse_number("--max-accuracy-drop", max_accuracy_drop, ("points", "pt", "%"), zero_ok=True),
                   _parse_number("--max-latency-ms", max_latency_ms, ("ms",), zero_ok=False),
                   _parse_number("--min-speedup", min_speedup, ("x",), zero_ok=False),
                   _parse_number("--max-size-mb", max_size_mb, ("mb",), zero_ok=False))

    @property
    def performance(self) -> bool:
        """Whether any latency, speed-up or size requirement is given."""
        return any(v is not None for v in (self.max_latency_ms, self.min_speedup, self.max_size_mb))

    def to_json(self) -> dict:
        return {"max_accuracy_drop": self.max_accuracy_drop, "max_latency_ms": self.max_latency_ms,
                "min_speedup": self.min_speedup, "max_size_mb": self.max_size_mb}


def verdicts(req: Requirements, record: dict, unit: str) -> dict[str, dict]:
    """For each requirement given: `{"required", "value", "met", "gap", "text"}`; `gap` is how far the value is
    from the requirement (0 when met), in the requirement's unit. `record`: a measured candidate (`drop`,
    `latency_ms.median_ms`, `speedup`, `size_mb`); `unit`: the drop's unit ("points" or the metric's)."""
    out: dict[str, dict] = {}

    def add(name: str, value: float | None, required: float, *, at_most: bool, fmt: str, what: str) -> None:
        met = value is not None and (value <= required + _EPS if at_most else value >= required - _EPS)
        gap = 0.0 if met else (math.inf if value is None else abs(value - required))
        shown = "n/a" if value is None else fmt.format(value)
        op = "<=" if at_most else ">="
        text = f"{what} {shown} {op} {fmt.format(required)}: " + ("met" if met else
                                                                  f"NOT met ({fmt.format(gap)} short)")
        out[name] = {"required": required, "value": value, "met": met, "gap": gap, "text": text}

    add("accuracy", record.get("drop"), req.max_accuracy_drop, at_most=True, fmt="{:.3g} " + unit,
        what="accuracy drop")
    if req.max_latency_ms is not None:
        add("latency", (record.get("latency_ms") or {}).get("median_ms"), req.max_latency_ms, at_most=True,
            fmt="{:.3f} ms", what=f"median latency ({record.get('backend')})")
    if req.min_speedup is not None:
        add("speedup", record.get("speedup"), req.min_speedup, at_most=False, fmt="{:.2f}x", what="speed-up")
    if req.max_size_mb is not None:
        add("size", record.get("size_mb"), req.max_size_mb, at_most=True, fmt="{:.3f} MB", what="size")
    return out


def parse_backends(backends: str | Sequence[str]) -> tuple[str, ...]:
    """`"onnxruntime,tvm-cpu"` or a sequence -> a tuple of known backend names (order kept, duplicates
    dropped). OptcError for an unknown or empty list."""
    names = [b.strip() for b in (backends.split(",") if isinstance(backends, str) else backends)]
    names = [b for b in dict.fromkeys(names) if b]
    if not names:
        raise OptcError(f"--backends: name at least one of {', '.join(BACKENDS)}")
    for b in names:
        if b not in BACKENDS:
            raise OptcError(f"--backends: unknown backend '{b}' (choose from {', '.join(BACKENDS)})")
    return tuple(names)


# -- the result -----------------------------------------------------------------------------------------------


@dataclass
class AutoResult:
    """What `auto` found. `chosen`: the record of the chosen model (see `auto`); `met`: every requirement holds
    for it; `verdicts`: per requirement (see `verdicts`); `steps`: every candidate measured, in order, with its
    status (baseline, kept, rejected, failed, skipped) and reason; `files`: name -> path of what was written in
    `outdir` (report.md, report.html, report.json, model.onnx, model.so)."""

    outdir: str
    met: bool
    chosen: dict
    verdicts: dict
    baseline: dict
    steps: list[dict]
    stop_reason: str
    seconds: float
    budget_s: float
    files: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    @property
    def unmet(self) -> list[str]:
        """One line per requirement the chosen model fails, saying by how much."""
        return [v["text"] for v in self.verdicts.values() if not v["met"]]

    def to_json(self) -> dict:
        return self.report


# -- the run --------------------------------------------------------------------------------------------------


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _size_mb(path: str) -> float:
    size = os.path.getsize(path)
    data = path + ".data"
    if os.path.exists(data):
        size += os.path.getsize(data)
    return size / 1e6


def _steps(backends: tuple[str, ...]) -> list[dict]:
    """The search order: (name, kind, param) of every step."""
    steps: list[dict] = []
    if "onnxruntime" in backends:
        steps += [{"name": "-O2", "kind": "optimize", "param": 2}, {"name": "-O3", "kind": "optimize", "param": 3},
                  {"name": "float16", "kind": "precision", "param": "float16"},
                  {"name": "bfloat16", "kind": "precision", "param": "bfloat16"},
                  {"name": "dynamic int8", "kind": "precision", "param": "dynamic"},
                  {"name": "static int8", "kind": "precision", "param": "static"},
                  {"name": "int4 weight-only", "kind": "precision", "param": "int4"}]
        steps += [{"name": f"prune {round(r * 100)}%", "kind": "prune", "param": r} for r in PRUNE_RATIOS]
    if "tvm-cpu" in backends:
        steps += [{"name": "tvm untuned", "kind": "tvm", "param": 0},
                  {"name": "tvm bf16", "kind": "tvm", "param": "bf16"},
                  {"name": "tvm int8", "kind": "tvm", "param": "int8"},
                  {"name": "tvm tuned", "kind": "tvm", "param": "tuned"}]
    return steps


class _Search:
    """One run of `auto`: the data, the baseline's reference session, the state, and the steps."""

    def __init__(self, model: str, eval_data: str, calibration: str | None, *, labels: str, metric: str,
                 req: Requirements, backends: tuple[str, ...], threads: int, budget_s: float, outdir: str,
                 latency_batch: int, progress: bool | None, log: Callable[[str], None]):
        from ..quantization.data import model_input_specs, open_dataset

        self.model, self.eval_path, self.calibration = model, eval_data, calibration
        self.labels, self.metric, self.req, self.backends = labels, metric, req, backends
        self.threads, self.budget_s, self.outdir, self.progress, self.log = threads, budget_s, outdir, progress, log
        self.topk = metric in ("top1", "top5")
        self.unit = "points" if self.topk else metric
        specs = model_input_specs(model)
        self.input_names = [s.name for s in specs]
        self.test = open_dataset(eval_data, specs, labels=labels if self.topk else None, role="test data")
        self.against_baseline = not self.topk and labels not in self.test.array_names
        if calibration is not None:
            open_dataset(calibration, specs, role="calibration data")
        fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
        self.latency_batch = fixed.pop() if len(fixed) == 1 else latency_batch
        batch = next(self.test.batches(self.latency_batch, self.input_names))
        if len(next(iter(batch.values()))) < self.latency_batch:
            raise OptcError(f"the latency batch is {self.latency_batch} samples; test data '{eval_data}' holds "
                            f"{self.test.num_samples}")
        self.feeds = {k: np.ascontiguousarray(v).copy() for k, v in batch.items()}
        self.work = os.path.join(outdir, WORK_DIR)
        self._fns: dict[str, Callable[[], object]] = {}
        self.base_out: np.ndarray | None = None
        self.deadline = math.inf

    # -- measuring --------------------------------------------------------------------------------------------

    def _timer(self, path: str, backend: str) -> Callable[[], object]:
        if backend == "onnxruntime":
            from ..ortsession import session

            sess = session(path, optimize=True, threads=self.threads, label=path)
            return lambda: sess.run(None, self.feeds)
        from .. import runtime

        module = runtime.load(path)
        return lambda: module.run(self.feeds)

    def _first_outputs(self, path: str):
        """Yield (start, first output) over the test set, batch by batch."""
        from .evaluate import DEFAULT_BATCH_SIZE, _runner

        runner = _runner(path, self.threads, "model")
        start = 0
        for batch in self.test.batches(runner.fixed_batch or DEFAULT_BATCH_SIZE, self.input_names):
            n = len(next(iter(batch.values())))
            yield start, runner.run(batch, n)
            start += n

    def _max_diff(self, path: str) -> float | None:
        """The largest |output - baseline output| of the first output over the whole test set (inf where one
        is NaN and the other not; None when the shapes differ)."""
        worst = 0.0
        for start, out in self._first_outputs(path):
            ref = self.base_out[start:start + len(out)]
            if out.shape != ref.shape:
                return None
            a, b = out.astype(np.float64), ref.astype(np.float64)
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            with np.errstate(invalid="ignore"):
                d = np.where(nan_a | nan_b, np.where(nan_a == nan_b, 0.0, np.inf), np.abs(a - b))
            if d.size:
                worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max()))
        return worst

    def _evaluate(self, path: str) -> dict:
        from .evaluate import evaluate

        return evaluate(path, self.test, labels=self.labels, metric=self.metric, threads=self.threads,
                        baseline=self.model if self.against_baseline else None, progress=self.progress)

    def measure(self, name: str, path: str, backend: str, base: dict | None) -> dict:
        """A candidate's record: accuracy and per-class accuracy on the whole test set, the drop and the worst
        per-class drop against the baseline, the largest output difference, latency beside the baseline, size."""
        from .evaluate import metric_drop

        start = time.perf_counter()
        ev = self._evaluate(path)
        rec: dict[str, Any] = {"name": name, "backend": backend, "file": os.path.relpath(path, self.outdir)
                               if path.startswith(self.outdir) else path, "value": ev["value"]}
        if self.topk:
            rec["per_class"] = {c: e["accuracy"] for c, e in ev["per_class"].items()}
        if base is None:
            rec["drop"] = 0.0 if not self.against_baseline else ev["drop"]
        else:
            rec["drop"] = self._drop_of(ev, base["value"])
        if self.topk and base is not None:
            drops = {c: metric_drop(base["per_class"][c], a, self.metric) for c, a in rec["per_class"].items()
                     if c in base["per_class"]}
            worst = min(drops, key=lambda c: (-drops[c], int(c)))
            rec["worst_class"] = {"class": worst, "drop_points": drops[worst]}
        rec["max_abs_diff"] = 0.0 if path == self.model and backend == "onnxruntime" else self._max_diff(path)
        fn = self._timer(path, backend)
        ref = self._fns.get("reference")
        timed = time_alternating({"reference": ref, "candidate": fn} if ref is not None else {"candidate": fn},
                                 reference="reference" if ref is not None else None, progress=self.progress)
        rec["latency_ms"] = {k: timed["candidate"][k] for k in ("median_ms", "p90_ms", "runs")}
        rec["speedup"] = timed["candidate"].get("speedup", 1.0)
        if ref is not None:
            rec["reference_ms"] = timed["reference"]["median_ms"]
        rec["size_mb"] = _size_mb(path)
        rec["seconds"] = time.perf_counter() - start
        if ref is None:
            self._fns["reference"] = fn
        return rec

    def baseline(self) -> dict:
        """The baseline on every backend; the first backend's is the reference of every speed-up."""
        records = []
        for backend in self.backends:
            path, t0 = self.model, time.perf_counter()
            if backend == "tvm-cpu":
                path = self._compile(self.model, os.path.join(self.work, "baseline.so"), 0)
            if self.base_out is None:
                self.base_out = np.concatenate([o for _, o in self._first_outputs(self.model)])
            rec = self.measure(f"baseline ({backend})", path, backend, records[0] if records else None)
            rec["status"], rec["seconds"] = "baseline", time.perf_counter() - t0  # compile included
            records.append(rec)
        return {"records": records}

    # -- building candidates ----------------------------------------------------------------------------------

    def _compile(self, source: str, out: str, param: int | str, untuned_s: float | None = None,
                 precision: str = "fp32") -> str:
        """Compile `source` (`param`: 0 untuned, "bf16" untuned in bf16, "tuned": tuned in `precision`)."""
        from ..codegen.compile import compile_to_file

        if param == "tuned":
            return self._tune(source, out, untuned_s, precision)
        precision = "bf16" if param == "bf16" else "fp32"
        with progress_bar(f"compiling {os.path.basename(source)} with TVM ({precision})", total=None,
                          enabled=self.progress, unit=""):
            compile_to_file(source, out, "cpu", level=2, precision=precision, static_batch=self._static_batch(source))
        return out

    def _static_batch(self, source: str) -> tuple[int, ...] | None:
        """The static batch entries of `source`'s library: batch 1 and the latency batch for a model that gets a
        batch-1 entry by default (`static_batch.default_sizes`: symbolic batch dims only, a small model), so the
        latency measured is that of static kernels; else None (the default)."""
        from ..codegen.static_batch import default_sizes
        from ..ir import load

        if self.latency_batch <= 1 or not default_sizes(load(source)):
            return None
        return (1, self.latency_batch)

    def _tune(self, source: str, out: str, untuned_s: float | None, precision: str = "fp32") -> str:
        """Tune with MetaSchedule in a child process (`optc compile --tune`, `TUNE_TRIALS` trials) that gets what
        is left of the budget, less the time to build and measure the library (1.2 x the untuned step's
        `untuned_s` + 10 s, at least `TUNE_RESERVE_S`): at the deadline it is
        stopped, and the library is built with whatever kernels its database holds by then (the others keep
        optc's default schedules)."""
        import signal
        import subprocess
        import sys

        from ..codegen.compile import compile_to_file

        db = os.path.join(self.work, "tuning_db")
        reserve = max(TUNE_RESERVE_S, 1.2 * untuned_s + 10) if untuned_s else TUNE_RESERVE_S
        left = self.deadline - time.monotonic() - reserve
        if left < TUNE_MIN_S:
            raise OptcError(f"{max(0.0, left + reserve):.0f} s left of the budget: too little to tune")
        static_batch = self._static_batch(source)
        cmd = [sys.executable, "-m", "optc.tools.cli", "compile", source, "-o", out + ".tuning.so", "--tune",
               "--trials", str(TUNE_TRIALS), "--db", db, "--precision", precision, "-q"]
        if static_batch:
            cmd += ["--static-batch", ",".join(map(str, static_batch))]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        with progress_bar(f"tuning {TUNE_TRIALS} trials, at most {left:.0f} s", total=None, enabled=self.progress,
                          unit="s"):
            try:
                _, err = child.communicate(timeout=left)
                if child.returncode != 0:
                    lines = (err or "").strip().splitlines()
                    raise OptcError(f"tuning failed: {lines[-1] if lines else f'exit code {child.returncode}'}")
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # the child and its builder/runner workers
                child.communicate()
        for leftover in (out + ".tuning.so", out + ".tuning.so.json"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        # 0 new trials: the database's kernels, in the precision they were tuned in
        compile_to_file(source, out, "cpu", level=2, trials=0, db=db, precision=precision, static_batch=static_batch)
        return out

    def _precision(self, mode: str, float_path: str, float_drop: float) -> tuple[Any, dict]:
        from ..quantization.api import quantize_with_report

        opts: dict[str, Any] = {"progress": self.progress}
        if mode in ("float16", "bfloat16"):
            opts[mode] = True
        elif mode == "dynamic":
            opts["dynamic"] = True
        elif mode == "int4":
            opts.update(weight_only="int4", format="contrib")
        else:
            if self.calibration is None:
                raise OptcError("static int8 needs calibration data (--calibration)")
            # half the time left at most for returning layers to float: the TVM steps after it need time too
            opts.update(calibration=self.calibration, eval_data=self.eval_path, labels=self.labels,
                        metric=self.metric, max_accuracy_drop=max(0.0, self.req.max_accuracy_drop - float_drop),
                        accuracy_seconds=max(0.0, ACCURACY_SHARE * (self.deadline - time.monotonic())))
        details: dict[str, Any] = {}
        model, report = quantize_with_report(float_path, **opts)
        if "quantized" in report:
            details["quantized"] = len(report["quantized"])
        if "accuracy" in report:
            details["float_layers"] = report["accuracy"]["float_layers"]
            if report["accuracy"].get("stopped"):
                details["stopped"] = report["accuracy"]["stopped"]
        return model, details

    def _drop_of(self, ev: dict, base_value: float) -> float | None:
        """An `evaluate` result's drop against the baseline's metric value `base_value` (None: no value)."""
        from .evaluate import metric_drop

        if self.against_baseline:
            return ev["drop"]
        return None if ev["value"] is None else metric_drop(base_value, ev["value"], self.metric)

    def _drop(self, path: str, state: dict) -> float:
        """The accuracy drop of the model at `path` (ONNX, on onnxruntime) against the baseline; inf when its
        metric is NaN."""
        drop = self._drop_of(self._evaluate(path), state["baseline"]["records"][0]["value"])
        return math.inf if drop is None or math.isnan(drop) else float(drop)

    def float_path(self, state: dict) -> str:
        """The best float model so far: the kept float file, else the input model."""
        return os.path.join(self.outdir, state["float_file"]) if state["float_file"] else self.model

    def _rel(self, path: str) -> str:
        """`path` relative to the output directory when it lies in it (as the state stores files), else as is."""
        return os.path.relpath(path, self.outdir) if path.startswith(self.outdir + os.sep) else path

    def reusable_qdq(self, state: dict, float_path: str) -> tuple[str, str] | None:
        """(path, what made it) of a static int8 QDQ model of `float_path` already built within the accuracy
        budget: the kept ONNX model when static int8 was kept, else the `static int8` step's; None when there is
        none (`tvm int8` then quantizes, which takes as long as that step did)."""
        if state["precision"] == "static" and state.get("onnx_file"):
            return os.path.join(self.outdir, state["onnx_file"]), "the kept ONNX model (static int8)"
        for rec in state["records"]:
            if (rec["name"] == "static int8" and rec.get("drop") is not None and rec.get("file")
                    and rec["drop"] <= self.req.max_accuracy_drop + _EPS
                    and rec.get("details", {}).get("source") == self._rel(float_path)):
                return os.path.join(self.outdir, rec["file"]), "the static int8 step"
        return None

    def _static_qdq(self, state: dict, float_path: str, stem: str) -> tuple[str, dict]:
        """The static int8 QDQ model of the best float model, for the `tvm int8` step: the kept ONNX model when
        static int8 was kept, else the `static int8` step's model when it was quantized from the same float
        model and kept the accuracy budget (on onnxruntime), else quantized now (accuracy-aware, as that step)."""
        reused = self.reusable_qdq(state, float_path)
        if reused is not None:
            return reused[0], {"quantized_by": reused[1]}
        from ..ir import save

        model, details = self._precision("static", float_path, state["float_drop"])
        save(model, stem + ".qdq.onnx")
        return stem + ".qdq.onnx", {**details, "quantized_by": "this step"}

    def candidate(self, step: dict, state: dict, index: int) -> tuple[str, str | None, dict]:
        """Build a step's candidate from the kept state: returns (its file, its float model's file or None when
        the step does not change the float model, details)."""
        from ..ir import load, save
        from ..rewrites.pipelines import optimize

        stem = os.path.join(self.work, f"{index:02d}-{_slug(step['name'])}")
        kind, details = step["kind"], {}
        float_path = self.float_path(state)
        if kind == "tvm":
            # TVM compiles the best float32 model (the ResNet-like in float16 ran 3.5x slower than in float32 on it),
            # its static int8 QDQ model, or (tuning) the kept TVM step's source
            source, precision = float_path, state.get("tvm_precision", "fp32")
            if step["param"] == "int8":
                source, details = self._static_qdq(state, float_path, stem)
                details["float_model"] = self._rel(float_path)
            elif step["param"] == "tuned" and state.get("tvm_source"):
                source = os.path.join(self.outdir, state["tvm_source"])
            untuned = [r["seconds"] for r in state["records"] if r["name"] == "tvm untuned" and "seconds" in r]
            lib = self._compile(source, stem + ".so", step["param"], untuned[0] if untuned else None, precision)
            details.update(compiled=os.path.basename(source), source=self._rel(source),
                           precision=step["param"] if step["param"] in ("bf16", "int8") else
                           state.get("tvm_kind", precision))
            if step["param"] == "int8" or details["source"] != self._rel(float_path):
                from ..codegen.compile import describe_kernels

                details["kernels"] = describe_kernels(json.load(open(lib + ".json")).get("kernels"))
            return lib, None, details
        if kind == "precision":
            model, details = self._precision(step["param"], float_path, state["float_drop"])
            details["source"] = self._rel(float_path)
            save(model, stem + ".onnx")
            return stem + ".onnx", None, details
        if kind == "optimize":
            new_float = optimize(load(float_path), level=step["param"], inplace=True)
        else:
            from .prune import prune

            # "path" ranks a channel by what its readers make of it too: on the digits classifier it kept the
            # accuracy at 25% where the plain filter norm lost 1.4 points (benchmarks/RESULTS.md, "Pruning"); at
            # 50% the filter norm lost none where "path" lost a test sample: both are tried (`_best_criterion`)
            new_float, report = prune(load(float_path), step["param"], criterion="path")
            if not report.groups_pruned:
                reasons = sorted({g.reason for g in report.groups_skipped})
                raise _Skip("no channel group can be pruned at this ratio: " + "; ".join(reasons[:2]))
            details = {k: v for k, v in _jsonable(report).items() if isinstance(v, int | float | str)}
        save(new_float, stem + ".float.onnx")
        float_drop = None
        if kind == "prune":
            float_drop = self._best_criterion(float_path, step["param"], stem, state, details)
        if kind == "prune" and self.calibration is not None:
            float_drop = self._reconstructed(float_path, step["param"], stem, state, details, float_drop)
        if state["precision"] is None:
            os.replace(stem + ".float.onnx", stem + ".onnx")
            return stem + ".onnx", stem + ".onnx", details
        if float_drop is None:  # (what is left of the budget for the precision)
            float_drop = self._drop(stem + ".float.onnx", state)
        model, more = self._precision(state["precision"], stem + ".float.onnx", float_drop)
        save(model, stem + ".onnx")
        return stem + ".onnx", stem + ".float.onnx", {**details, **more, "float_drop": float_drop}


    def _best_criterion(self, float_path: str, ratio: float, stem: str, state: dict, details: dict) -> float:
        """`stem`.float.onnx holds `float_path` pruned by the "path" criterion; prune it by "l1" (the filter norm)
        too and keep there whichever has the smaller accuracy drop ("path" on a tie), note both drops and the
        criterion in `details`, and return the kept model's drop."""
        from ..ir import load, save
        from .prune import prune

        drops = {"path": self._drop(stem + ".float.onnx", state)}
        other, report = prune(load(float_path), ratio, criterion="l1")
        if report.groups_pruned:
            save(other, stem + ".l1.onnx")
            drops["l1"] = self._drop(stem + ".l1.onnx", state)
            if drops["l1"] < drops["path"]:
                os.replace(stem + ".l1.onnx", stem + ".float.onnx")
            else:
                os.remove(stem + ".l1.onnx")
        details["criterion"] = min(drops, key=lambda c: (drops[c], c != "path"))
        details.update({f"drop_{c}": d for c, d in drops.items()})
        return drops[details["criterion"]]

    def _reconstructed(self, float_path: str, ratio: float, stem: str, state: dict, details: dict,
                       plain_drop: float) -> float:
        """Prune `float_path` again by `details["criterion"]` with the layers that read the pruned channels
        refitted on the calibration data (`optc.workflow.reconstruct`); keep at `stem`.float.onnx whichever of the
        two pruned models, refitted or plain (already there, with `plain_drop`), has the smaller accuracy drop
        (the refitted one on a tie: its outputs are closer to the original's), note both drops and the layers
        refitted in `details`, and return the kept model's drop."""
        from ..ir import load, save
        from .prune import prune

        refit, report = prune(load(float_path), ratio, criterion=details["criterion"], calibration=self.calibration)
        fits = report.reconstruction or []
        done = [f for f in fits if f.status == "refitted"]
        details["refitted"] = f"{len(done)} of {len(fits)} layers that read pruned channels"
        details["drop_plain"] = plain_drop
        if not done:
            return plain_drop
        save(refit, stem + ".refit.onnx")
        refit_drop = self._drop(stem + ".refit.onnx", state)
        details["drop_refitted"] = refit_drop
        if refit_drop <= plain_drop:
            os.replace(stem + ".refit.onnx", stem + ".float.onnx")
            details["reconstruction"] = "kept (the refitted model's drop is no larger)"
            return refit_drop
        os.remove(stem + ".refit.onnx")
        details["reconstruction"] = "not kept (the plain pruned model's drop is smaller)"
        return plain_drop


class _Skip(Exception):
    """A step that turns out to have nothing to try (its reason is the message)."""


def _jsonable(obj: Any) -> Any:
    """A report object as JSON data: its `to_json()`, a dataclass's fields, or its repr."""
    import dataclasses

    if hasattr(obj, "to_json"):
        return obj.to_json()
    if dataclasses.is_dataclass(obj):
        return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
    if isinstance(obj, dict):
        return json.loads(json.dumps(obj, default=str))
    return {"summary": str(obj)}


def _helps(rec: dict, best: dict, req: Requirements) -> tuple[bool, str]:
    gain = rec["speedup"] / best["speedup"]
    if gain >= 1 + MIN_GAIN:
        return True, f"{gain:.2f}x faster than the best kept model"
    if (req.max_size_mb is not None and best["size_mb"] > req.max_size_mb and rec["size_mb"] < best["size_mb"]
            and gain >= 1 - MIN_GAIN):
        return True, f"{best['size_mb'] / rec['size_mb']:.2f}x smaller, not slower"
    return False, f"no gain ({gain:.2f}x the best kept model's speed)"


def _native_bf16() -> bool:
    from ..codegen.precision import native_bf16
    from ..codegen.targets import resolve_target

    return native_bf16(resolve_target("cpu"))


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"optc.workflow.{module}") is not None


def _profile(path: str, feeds: dict, threads: int, top: int = 12) -> dict | str:
    """Where the time goes (`optc.workflow.profile`): the run's backend, total and the `top` op types (or kernel
    kinds) as {op_type, total_us, share, calls}; a one-line reason when profiling fails."""
    from .profile import profile

    try:
        prof = profile(path, feeds, threads=threads, runs=10)
    except OptcError as exc:
        return f"profile failed: {exc}"
    return {"backend": prof.backend, "total_us": prof.total_us, "runs": prof.runs,
            "by_op_type": [{"op_type": e.op_type or e.name, "total_us": e.total_us, "share": e.share,
                            "calls": e.calls} for e in prof.by_op_type[:top]]}


def _copy(src: str, dst: str) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def auto(model: str | os.PathLike, eval_data: str | os.PathLike, calibration: str | os.PathLike | None = None, *,
         output: str | os.PathLike, labels: str = "y", metric: str = "top1", max_accuracy_drop: Any = 0.5,
         max_latency_ms: Any = None, min_speedup: Any = None, max_size_mb: Any = None,
         backends: str | Sequence[str] = ("onnxruntime",), threads: int = 1, budget_minutes: float = 30.0,
         latency_batch: int = 1, resume: bool = False, progress: bool | None = None,
         log: Callable[[str], None] | None = None) -> AutoResult:
    """Search for the fastest model within the requirements; write the report and the chosen model(s).

    `model`: an .onnx path (not modified). `eval_data`: the test set (.npz file or directory; inputs keyed by
    name, batch on axis 0, and the labels array `labels` for top1/top5). `calibration`: data for static int8
    (the step is skipped without it). `metric`: top1 | top5 | mse | cosine (see `optc.evaluate`).
    Requirements (see `Requirements`): `max_accuracy_drop` (points for top-k), `max_latency_ms`, `min_speedup`
    (x, against the baseline on the first of `backends`), `max_size_mb`. `backends`: "onnxruntime",
    "tvm-cpu" (the ONNX-level steps run on onnxruntime, the compiled library on TVM; TVM_NUM_THREADS is set to
    `threads`; a kept static int8 is compiled to integer kernels right after it, before the search may stop). `budget_minutes`: wall-clock budget (> 0); checked between steps, and tuning is given the time
    left. `latency_batch`: samples per timed run (the model's fixed batch wins). `output`: the directory of
    report.md, report.html, report.json, model.onnx (the chosen ONNX model), model.so (+ .json, when a TVM
    library is chosen), state.json and work/ (every candidate). `resume`: continue the run saved in `output`.

    Returns an `AutoResult`. Raises OptcError (one line) for unparseable requirements, a budget of 0, unknown
    backends or metric, a test set that does not match the model's inputs or lacks labels for top-k, an output
    directory holding another run (without `resume`) or no run (with it).
    """
    from .evaluate import METRICS

    log = log or (lambda line: None)
    req = Requirements.parse(max_accuracy_drop, max_latency_ms, min_speedup, max_size_mb)
    budget = _parse_number("--budget-minutes", budget_minutes, ("min",), zero_ok=False)
    if metric not in METRICS:
        raise OptcError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise OptcError(f"--threads must be a positive integer, not {threads!r}")
    if isinstance(latency_batch, bool) or not isinstance(latency_batch, int) or latency_batch < 1:
        raise OptcError(f"--latency-batch must be a positive integer, not {latency_batch!r}")
    backend_list = parse_backends(backends)
    model, eval_data = os.path.abspath(os.fspath(model)), os.path.abspath(os.fspath(eval_data))
    calibration = os.path.abspath(os.fspath(calibration)) if calibration is not None else None
    outdir = os.path.abspath(os.fspath(output))
    if not os.path.isfile(model):
        raise OptcError(f"model '{model}' does not exist")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise OptcError(f"output '{outdir}' exists and is not a directory")
    state_path = os.path.join(outdir, STATE_FILE)
    config = {"model": model, "model_sha256": _digest(model), "eval_data": eval_data, "calibration": calibration,
              "labels": labels, "metric": metric, "requirements": req.to_json(), "backends": list(backend_list),
              "threads": threads, "latency_batch": latency_batch}
    if resume:
        if not os.path.isfile(state_path):
            raise OptcError(f"--resume: '{outdir}' holds no run to resume (no {STATE_FILE})")
        try:
            with open(state_path) as f:
                state = json.load(f)
        except (OSError, ValueError) as exc:
            raise OptcError(f"--resume: cannot read '{state_path}': {exc}") from None
        if not isinstance(state, dict):
            raise OptcError(f"--resume: '{state_path}' is not the state of an optc auto run")
        if state.get("version") != STATE_VERSION or state.get("config") != config:
            given = state.get("config") if isinstance(state.get("config"), dict) else {}
            changed = sorted(k for k in config if given.get(k) != config[k])
            raise OptcError(f"--resume: the run in '{outdir}' was started with other settings ({', '.join(changed)}"
                            " differ); start a new run in another directory")
        # resumed with time left: the search goes on where the budget ended it or left a step out for lack of time
        # (the requirements held when tvm int8, right after a kept static int8, did not fit)
        if (state["stop_reason"] or "").startswith("the time budget ended") or \
                any(r.get("time_skipped") for r in state["records"]):
            state["stop_reason"] = None
    else:
        if os.path.isdir(outdir) and os.listdir(outdir):
            raise OptcError(f"output directory '{outdir}' is not empty; continue its run with --resume or choose "
                            "another directory")
        state = {"version": STATE_VERSION, "config": config, "elapsed_s": 0.0, "baseline": None, "records": [],
                 "next_step": 0, "float_file": None, "float_drop": 0.0, "onnx_file": None, "precision": None,
                 "best": None, "stop_reason": None, "profile": {}}
    if "tvm-cpu" in backend_list:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
    search = _Search(model, eval_data, calibration, labels=labels, metric=metric, req=req, backends=backend_list,
                     threads=threads, budget_s=budget * 60, outdir=outdir, latency_batch=latency_batch,
                     progress=progress, log=log)
    created = [d for d in (outdir, search.work) if not os.path.isdir(d)]
    try:
        os.makedirs(search.work, exist_ok=True)
    except OSError as exc:
        raise OptcError(f"cannot create the output directory '{outdir}': {exc.strerror or exc}") from None
    started = time.monotonic()
    search.deadline = started + budget * 60 - state["elapsed_s"]

    def save_state() -> None:
        state["elapsed_s"] += time.monotonic() - save_state.mark
        save_state.mark = time.monotonic()
        write_json(state_path, state)

    save_state.mark = started
    try:
        _run_steps(search, state, save_state)
    except OptcError:
        if state["baseline"] is None:  # nothing measured, nothing saved: leave no directory behind
            for d in reversed(created):
                shutil.rmtree(d, ignore_errors=True)
        raise
    return _finish(search, state, save_state)


def _run_steps(search: _Search, state: dict, save_state: Callable[[], None]) -> None:
    req, log = search.req, search.log
    if state["baseline"] is None:
        log("measuring the baseline")
        state["baseline"] = search.baseline()
        base = state["baseline"]["records"][0]
        state["best"] = dict(base)
        state["onnx_file"] = None
        state["profile"]["baseline"] = _profile(search.model, search.feeds, search.threads)
        save_state()
    else:
        search.base_out = np.concatenate([o for _, o in search._first_outputs(search.model)])
        search._fns["reference"] = search._timer(search.model if search.backends[0] == "onnxruntime" else
                                                 os.path.join(search.work, "baseline.so"), search.backends[0])
    base = state["baseline"]["records"][0]
    for rec in state["baseline"]["records"][1:]:  # the compiled baseline can already meet the requirements
        if req.performance and _all_met(req, rec, search.unit) and not _all_met(req, state["best"], search.unit):
            state["best"] = dict(rec)
    steps = _steps(search.backends)
    # steps an earlier session left for lack of time are tried again first (their records are replaced in place)
    retry = [i for i, s in enumerate(steps[:state["next_step"]])
             if any(r["name"] == s["name"] and r.get("time_skipped") for r in state["records"])]

    def attempt(i: int, advance: bool = True) -> dict | None:
        """Run step i unless the budget ends first (then the stop reason is set and None returned); a step run out
        of turn (`advance=False`) is left out for lack of time instead (the stop reason lists it)."""
        step = steps[i]
        left, need = search.deadline - time.monotonic(), _step_estimate(search, step, state)
        if state["stop_reason"] is None and left <= 0 and advance:
            state["stop_reason"] = "the time budget ended"
        if state["stop_reason"] is not None:
            return None
        log(f"step {i + 1}/{len(steps)}: {step['name']}")
        if left < need or left <= 0:  # this step would not fit: a later, shorter one may (the report says so)
            rec = {"name": step["name"], "kind": step["kind"], "status": "skipped", "time_skipped": True,
                   "reason": f"not tried: it would take about {need:.0f} s; {left:.0f} s of the budget were left"}
        else:
            rec = _attempt_step(search, state, step, i, base)
        log(f"  {rec['status']}: {rec.get('reason', '')}")
        _record(state, rec, i, advance=advance)
        save_state()
        return rec

    def static_int8_on_integer_kernels() -> None:
        """After a kept static int8 (also when a resumed run finds one whose `tvm int8` was interrupted or left for
        lack of time): the same QDQ model compiled to integer kernels, before the search may stop: static int8's
        other way out (its accuracy the same to a unit of the last quantized place; on the ResNet-like ~10%
        faster than on onnxruntime, where it only tied onnxruntime's own best quantizer option)."""
        j = next((k for k, s in enumerate(steps) if s["name"] == "tvm int8"), None)
        kept = any(r["name"] == "static int8" and r.get("status") == "kept" for r in state["records"])
        done = any(r["name"] == "tvm int8" and not r.get("time_skipped") for r in state["records"])
        if j is not None and kept and not done and state["stop_reason"] is None:
            attempt(j, advance=False)

    static_int8_on_integer_kernels()  # (a resumed run)
    # one line per step (log); each long operation inside a step has its own progress bar (rich shows one at a time)
    for i in [*retry, *range(state["next_step"], len(steps))]:
        step = steps[i]
        if i not in retry and any(r["name"] == step["name"] and not r.get("time_skipped") for r in state["records"]):
            continue  # run out of turn (tvm int8 after a kept static int8)
        if state["stop_reason"] is None and req.performance and _all_met(req, state["best"], search.unit):
            state["stop_reason"] = _met_reason(state)
        rec = attempt(i)
        if rec is None:
            break
        if step["name"] == "static int8" and rec["status"] == "kept":
            static_int8_on_integer_kernels()
    left_out = [r["name"] for r in state["records"] if r.get("time_skipped")]
    if state["stop_reason"] is None and req.performance and _all_met(req, state["best"], search.unit):
        state["stop_reason"] = _met_reason(state)
    if state["stop_reason"] is None:
        state["stop_reason"] = (f"the time budget ended (not tried for lack of time: {', '.join(left_out)})"
                                if left_out else "every step was tried")


def _met_reason(state: dict) -> str:
    """The stop reason when every requirement holds, naming the steps left out for lack of time (--resume with more
    time tries them)."""
    left_out = [r["name"] for r in state["records"] if r.get("time_skipped")]
    return "every requirement holds" + (f" (not tried for lack of time: {', '.join(left_out)})" if left_out else "")


def _attempt_step(search: _Search, state: dict, step: dict, i: int, base: dict) -> dict:
    """Build and measure step i's candidate; its record, kept (into the state) or rejected with the reason, or
    skipped."""
    req = search.req
    rec: dict[str, Any] = {"name": step["name"], "kind": step["kind"]}
    skip = None
    if step["kind"] == "prune" and not _available("prune"):
        skip = "optc.workflow.prune is not available in this build"
    elif step["kind"] == "prune" and any(r.get("kind") == "prune" and r["status"] == "rejected"
                                         and r.get("over_budget") for r in state["records"]):
        skip = "a smaller pruning ratio already broke the accuracy budget"
    elif step["param"] in ("static", "int8") and search.calibration is None:
        skip = "no calibration data (--calibration)"
    elif step["param"] == "bf16" and not _native_bf16():
        skip = "this CPU has no bf16 dot-product instructions (AMX-BF16 / AVX512-BF16): bf16 would be emulated"
    if skip is not None:
        rec.update(status="skipped", reason=skip)
        return rec
    t0 = time.perf_counter()
    try:
        path, float_path, details = search.candidate(step, state, i)
        backend = "tvm-cpu" if step["kind"] == "tvm" else "onnxruntime"
        rec.update(search.measure(step["name"], path, backend, base))
        rec["kind"], rec["details"] = step["kind"], details
        rec["seconds"] = time.perf_counter() - t0  # building the candidate included
        ok_acc = rec["drop"] is not None and rec["drop"] <= req.max_accuracy_drop + _EPS
        helps, why = _helps(rec, state["best"], req)
        if helps and req.performance and _all_met(req, state["best"], search.unit) and \
                not _all_met(req, rec, search.unit):  # (tvm int8 right after a static int8 that met them all)
            helps, why = False, "faster, but it breaks a requirement the kept model meets"
        if not ok_acc:
            rec["status"], rec["reason"] = "rejected", (
                f"accuracy drop {rec['drop']:.3g} {search.unit} over the budget "
                f"{req.max_accuracy_drop:g}" if rec["drop"] is not None else "accuracy is NaN")
            rec["over_budget"] = True
        elif not helps:
            rec["status"], rec["reason"] = "rejected", why
        else:
            rec["status"], rec["reason"] = "kept", why
            _keep(state, step, rec, path, float_path, search.outdir)
    except _Skip as why:
        rec.update(status="skipped", reason=str(why))
    except OptcError as exc:
        rec.update(status="failed", reason=str(exc), seconds=time.perf_counter() - t0)
    return rec


def _record(state: dict, rec: dict, index: int, *, advance: bool = True) -> None:
    """Put a step's record in the state: in place of the record of a retried step, else appended; the next step
    to run moves past `index` (not with `advance=False`: a step run out of turn)."""
    same = [k for k, r in enumerate(state["records"]) if r["name"] == rec["name"]]
    if same:
        state["records"][same[0]] = rec
    else:
        state["records"].append(rec)
    if advance:
        state["next_step"] = max(state["next_step"], index + 1)


def _step_estimate(search: _Search, step: dict, state: dict) -> float:
    """`_estimate`, plus for `tvm int8` the static int8 step's time when no QDQ model of the best float model can
    be reused (the step then quantizes as that step did)."""
    need = _estimate(step, state)
    if step["param"] == "int8":
        if search.reusable_qdq(state, search.float_path(state)) is None:
            need += max((r["seconds"] for r in state["records"] if r["name"] == "static int8" and "seconds" in r),
                        default=0.0)
    return need


def _estimate(step: dict, state: dict) -> float:
    """Seconds `step` should take: the longest earlier step of its kind, else the median of the earlier steps
    (the compiled baseline's compile and measurement for the first TVM step); 0 for tuning, which is given the
    time left, and before any measurement."""
    if step["param"] == "tuned":
        return 0.0
    done = [r["seconds"] for r in state["records"] if r.get("status") in ("kept", "rejected") and "seconds" in r]
    same = [r["seconds"] for r in state["records"] if r.get("kind") == step["kind"] and "seconds" in r
            and r.get("status") in ("kept", "rejected")]
    if same:
        return max(same)
    if step["kind"] == "tvm":
        compiled = [r.get("seconds", 0.0) for r in state["baseline"]["records"] if r["backend"] == "tvm-cpu"]
        return max(compiled, default=0.0)
    return float(np.median(done)) if done else 0.0


def _all_met(req: Requirements, rec: dict, unit: str) -> bool:
    return all(v["met"] for v in verdicts(req, rec, unit).values())


def _keep(state: dict, step: dict, rec: dict, path: str, float_path: str | None, outdir: str) -> None:
    rel = os.path.relpath(path, outdir)
    if step["kind"] == "tvm":
        state["tvm_file"] = rel
        if step["param"] != "tuned":  # what the tuning step then tunes: this source in this compute precision
            state["tvm_source"] = rec["details"]["source"]
            state["tvm_precision"] = "bf16" if step["param"] == "bf16" else "fp32"
            state["tvm_kind"] = rec["details"]["precision"]  # fp32, bf16 or int8 (a QDQ source)
    else:
        state["onnx_file"] = rel
        # a TVM library kept before (tvm int8 right after a kept static int8) is not of this model: the later TVM
        # steps compile and tune from the new one
        for key in ("tvm_file", "tvm_source", "tvm_precision", "tvm_kind"):
            state.pop(key, None)
        if step["kind"] == "precision":
            state["precision"] = step["param"]
        if float_path is not None:
            state["float_file"] = os.path.relpath(float_path, outdir)
            # the float model's own drop: measured apart when a precision was applied on top of it
            state["float_drop"] = rec["details"].get("float_drop", rec["drop"])
    state["best"] = {k: v for k, v in rec.items() if k != "details"}


def _finish(search: _Search, state: dict, save_state: Callable[[], None]) -> AutoResult:
    from .report import write_report

    outdir, best = search.outdir, state["best"]
    files: dict[str, str] = {}
    onnx_src = os.path.join(outdir, state["onnx_file"]) if state.get("onnx_file") else search.model
    files["model.onnx"] = os.path.join(outdir, "model.onnx")
    _copy(onnx_src, files["model.onnx"])
    if state.get("tvm_file"):
        lib = os.path.join(outdir, state["tvm_file"])
        files["model.so"] = os.path.join(outdir, "model.so")
        _copy(lib, files["model.so"])
        meta = json.load(open(lib + ".json"))
        meta["library"] = "model.so"
        write_json(files["model.so"] + ".json", meta)
    if "chosen" not in state["profile"]:
        chosen_path = os.path.join(outdir, best["file"]) if not os.path.isabs(best["file"]) else best["file"]
        state["profile"]["chosen"] = _profile(chosen_path, search.feeds, search.threads)
    save_state()
    ver = verdicts(search.req, best, search.unit)
    met = all(v["met"] for v in ver.values())
    seconds = state["elapsed_s"]
    report = {"model": search.model, "config": state["config"], "metric": search.metric, "unit": search.unit,
              "requirements": search.req.to_json(), "budget_s": search.budget_s, "seconds": seconds,
              "stop_reason": state["stop_reason"], "met": met, "verdicts": ver,
              "baseline": state["baseline"]["records"], "steps": state["records"], "chosen": best,
              "profile": state["profile"],
              "files": {k: os.path.relpath(v, outdir) for k, v in files.items()}}
    for name in ("report.json", "report.md", "report.html"):
        files[name] = os.path.join(outdir, name)
    report["files"] = {k: os.path.relpath(v, outdir) for k, v in files.items()}
    write_report(outdir, report)
    return AutoResult(outdir=outdir, met=met, chosen=best, verdicts=ver, baseline=report["baseline"],
                      steps=report["steps"], stop_reason=state["stop_reason"], seconds=seconds,
                      budget_s=search.budget_s, files=files, report=report)
