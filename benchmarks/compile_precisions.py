"""The precision rows of benchmarks/compile.py (`--precisions`): optc fp32 / int8 / bf16 beside onnxruntime and
OpenVINO, on the float model and on one QDQ model that every runtime reads (a script helper, not a test).

Per (model, threads), in one process: onnxruntime fp32 and on the QDQ model (ORT_ENABLE_ALL), OpenVINO's CPU plugin
at its default precision on the float model and on the QDQ model, optc fp32, optc int8 (the QDQ model compiled:
QDQ Conv / MatMul / Gemm become integer kernels) and optc bf16 (`precision="bf16"` on the float model). Every
candidate has a turn of two `run` calls a round, in a new random order each round, so drift in the shared
machine's load hits all alike; the latency is the median over the rounds of the turn's second call (inputs in,
outputs back as numpy arrays), and the first call's median, after another runtime's call (its caches and idle
threads), is kept beside it as `<candidate>_cold`.
The QDQ model is optc's static int8 quantizer output (`optc.quantize(..., calibration=npz, method="minmax")`,
x86 defaults) calibrated on a few random samples: it measures speed, not accuracy.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable

import numpy as np

# (key, label); the order of the table's columns
#: the run-time values of the dynamic-axes exports' symbolic dims (compile.py's `*_dyn` models; no other model
#: has symbolic dims of these names)
DIMS = {"batch": 1, "seq": 128}
CANDIDATES = (("ort_fp32", "ORT fp32"), ("ort_qdq", "ORT QDQ"), ("ov_fp32", "OV default"), ("ov_qdq", "OV QDQ"),
              ("optc_fp32", "optc fp32"), ("optc_int8", "optc int8"), ("optc_bf16", "optc bf16"))


def make_qdq(path: str, qdq_path: str, samples: int, seed: int = 0) -> dict:
    """Quantize the float model at `path` into `qdq_path` with optc's static int8 quantizer, calibrated on
    `samples` random input sets (`optc.inputs.random_inputs`, seeds seed+1...; stacked on the batch axis).
    Returns {"quantize_s", "quantized", "skipped"} (node counts from the quantizer's report)."""
    import optc
    from optc.inputs import random_inputs, session_input_specs
    from optc.ortsession import session
    from optc.quantization.api import quantize_with_report

    specs = session_input_specs(session(path, optimize=False))
    sets = [random_inputs(specs, dims=DIMS, seed=seed + 1 + i) for i in range(samples)]
    npz = qdq_path[:-5] + "_calib.npz"
    np.savez(npz, **{k: np.concatenate([s[k] for s in sets]) for k in sets[0]})
    start = time.perf_counter()
    model, report = quantize_with_report(path, calibration=npz, method="minmax")
    optc.save(model, qdq_path)
    return {"quantize_s": time.perf_counter() - start, "quantized": len(report.get("quantized", [])),
            "skipped": len(report.get("skipped", []))}


def _openvino(path: str, feeds: dict[str, np.ndarray], threads: int) -> tuple[Callable, dict]:
    """An OpenVINO CPU run function for `path` (reshaped to the shapes of `feeds`) and its precision hint."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({name: list(a.shape) for name, a in feeds.items()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run() -> list[np.ndarray]:
        request.infer(feeds)
        return [np.array(request.get_output_tensor(i).data) for i in range(len(names))]

    return run, {"ov_precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                 "ov_threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}


def _max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0
               for x, y in zip(a, b, strict=True))


def side_by_side(path: str, qdq_path: str, threads: int, repeat: int, precisions: list[str], seed: int = 0) -> dict:
    """Measure every candidate (CANDIDATES; optc's precisions limited to `precisions`) for one model at
    `threads` intra-op threads (TVM's pool reads TVM_NUM_THREADS, set by the caller). Returns {key: median ms},
    {key + "_diff": max abs difference from onnxruntime fp32's outputs}, "optc_int8_vs_ort_qdq" (the same QDQ
    model's outputs from the two), compile times "compile_<precision>_s", "max_abs_output", OpenVINO's
    precision hint, optc int8's kernel summary, and "<key>_error" for a candidate that failed (one line)."""
    import optc
    from optc.inputs import random_inputs, session_input_specs
    from optc.ortsession import session

    spin = threads == 1  # (several threads: no runtime's idle pool may spin on the cores the next one runs on)
    ort32 = session(path, optimize=True, threads=threads, spin=spin)
    feeds = random_inputs(session_input_specs(ort32), dims=DIMS, seed=seed)
    result: dict = {"threads": threads, "repeat": repeat}
    builders: dict[str, Callable[[], Callable]] = {
        "ort_fp32": lambda: (lambda: ort32.run(None, feeds)),
        "ort_qdq": lambda: (lambda s: lambda: s.run(None, feeds))(session(qdq_path, optimize=True, threads=threads,
                                                                            spin=spin)),
        "ov_fp32": lambda: _ov(path), "ov_qdq": lambda: _ov(qdq_path)}

    def _ov(p: str) -> Callable:
        run, info = _openvino(p, feeds, threads)
        result.update(info)
        return run

    def _optc(p: str, precision: str) -> Callable:
        start = time.perf_counter()
        module = optc.compile(p, precision=precision)
        result[f"compile_{'int8' if p == qdq_path else precision}_s"] = time.perf_counter() - start
        if p == qdq_path:
            result["optc_int8_kernels"] = module.metadata.get("kernels")
        return lambda: list(module.run(feeds).values())

    if "fp32" in precisions:
        builders["optc_fp32"] = lambda: _optc(path, "fp32")
    if "int8" in precisions:
        builders["optc_int8"] = lambda: _optc(qdq_path, "fp32")
    if "bf16" in precisions:
        builders["optc_bf16"] = lambda: _optc(path, "bf16")
    runs: dict[str, Callable] = {}
    for key, build in builders.items():
        try:
            runs[key] = build()
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run the model is a table cell, not a crash
            result[f"{key}_error"] = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    outputs = {key: [np.asarray(y) for y in fn()] for key, fn in runs.items()}
    reference = outputs["ort_fp32"]
    result["max_abs_output"] = max(float(np.max(np.abs(y))) if np.size(y) else 0.0 for y in reference)
    for key, out in outputs.items():
        result[f"{key}_diff"] = _max_abs_diff(reference, out)
    if "optc_int8" in outputs and "ort_qdq" in outputs:
        result["optc_int8_vs_ort_qdq"] = _max_abs_diff(outputs["ort_qdq"], outputs["optc_int8"])
    for _ in range(max(3, repeat // 10)):  # warm-up
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cold: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    rng = random.Random(seed)
    for _ in range(repeat):
        rng.shuffle(order)
        for key in order:  # the turn's first call follows another runtime's; the second, timed, its own
            for series in (cold[key], times[key]):
                start = time.perf_counter()
                runs[key]()
                series.append(time.perf_counter() - start)
    result.update({key: statistics.median(t) * 1e3 for key, t in times.items()})
    result.update({f"{key}_cold": statistics.median(t) * 1e3 for key, t in cold.items()})
    return result


def _ms(r: dict, key: str) -> str:
    if key in r:
        return f"{r[key]:.2f}"
    return "error" if f"{key}_error" in r else "-"


def _ratio(r: dict, num: str, den: str) -> float | None:
    return r[num] / r[den] if num in r and den in r else None


def _fmt_ratio(x: float | None, target: float) -> str:
    return "-" if x is None else f"{x:.2f}x" + ("" if x <= target else " (NOT met)")


def _first_call(r: dict) -> str:
    cold = _ratio(r, "optc_int8_cold", "optc_fp32_cold")
    return "" if cold is None else f" ({cold:.2f}x)"


def markdown(rows: list[dict], threads: list[int], meta: dict) -> str:
    """The "## Compile: precisions" section of RESULTS.md: `rows` are {"model", "qdq": make_qdq's dict,
    threads: side_by_side's dict}."""
    out = ["## Compile: fp32 / int8 / bf16 beside onnxruntime and OpenVINO", "",
           f"`python benchmarks/compile.py {meta['argv']}` — {meta['date']}, CPU `{meta['cpu']}` "
           f"(LLVM: {meta['llvm_cpu']}, {meta['isa']}), {os.cpu_count()} cores **shared with other jobs** (load "
           f"average {meta['load']} at the start); onnxruntime {meta['onnxruntime']} (ORT_ENABLE_ALL), OpenVINO "
           f"{meta['openvino']} (CPU plugin, INFERENCE_NUM_THREADS = the thread count), TVM {meta['tvm']} (optc -O2, "
           "untuned). Per (model, threads) one process builds every runtime, then gives each a turn of two calls a "
           f"round, in a new random order for {meta['repeat']} rounds (after warm-up); latency: median ms of the "
           "turn's second call, batch 1. The first call of a turn follows another runtime's and pays for its "
           "caches and idle threads (at 2 threads 0.2-0.5 ms a call for every runtime here); its median is kept "
           "too, as the int8 / fp32 ratio in parentheses. "
           "At 2 threads and more, the thread pools stop spinning soon after a run (onnxruntime "
           "`session.force_spinning_stop=1`, TVM `TVM_THREAD_POOL_SPIN_COUNT=1000`): one runtime's idle threads "
           "spinning after its run otherwise held the cores the next runtime ran on (onnxruntime fp32 took "
           "twice its 1-thread time at 2 threads). "
           "QDQ: the same file for onnxruntime, OpenVINO and optc int8: `optc.quantize(model, calibration=npz, "
           f"method=\"minmax\")` (x86 defaults: uint8 asymmetric activations, per-channel int8 weights, 7-bit "
           f"weights without VNNI) calibrated on {meta['calib']} random input sets (speed, not accuracy). "
           f"OpenVINO's default inference precision here: {meta['ov_hint']}. "
           + ("This CPU has AMX: optc int8 runs its conv/matmul kernels on AMX tiles where they fit (else "
              "AVX512-VNNI), optc bf16 its matmuls and convs on AMX bf16 tiles where they fit (else AVX512-BF16 "
              "vdpbf16ps; the rest widened to float32)." if meta.get("amx") else
              "This CPU has AVX512-BF16 and AVX512-VNNI, no AMX: optc int8 runs its conv/matmul kernels on "
              "vpdpbusd, optc bf16 its matmuls and convs (16-column multiples, one group) on vdpbf16ps, the rest "
              "widened to float32." if meta.get("avx512_bf16") and meta.get("avx512_vnni") else
              "This CPU has no AMX and no AVX512-BF16: optc bf16 is emulated (bfloat16 weights and operand "
              "rounding, float32 multiply-add)."), ""]
    for t in threads:
        head = ["model"] + [label for _, label in CANDIDATES] + [
            "int8 / ORT QDQ (<= 1.0)", "int8 / optc fp32 (<= 0.5; turn's first call)", "best(bf16, int8) / OV default (<= 1.0)",
            "optc fp32 / ORT fp32 (<= 1.0, transformers)"]
        out += [f"### {t} thread{'s' if t > 1 else ''} (ms)", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        for row in rows:
            r = row.get(t, {})
            if "error" in r:
                out.append(f"| {row['model']} | error: {r['error']} |" + " |" * (len(head) - 2))
                continue
            best = min((r[k] for k in ("optc_bf16", "optc_int8") if k in r), default=None)
            cells = [row["model"]] + [_ms(r, k) for k, _ in CANDIDATES] + [
                _fmt_ratio(_ratio(r, "optc_int8", "ort_qdq"), 1.0), _fmt_ratio(_ratio(r, "optc_int8", "optc_fp32"), 0.5) + _first_call(r),
                _fmt_ratio(None if best is None or "ov_fp32" not in r else best / r["ov_fp32"], 1.0),
                _fmt_ratio(_ratio(r, "optc_fp32", "ort_fp32"), 1.0)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    t0 = threads[0]
    head = ["model", "QDQ nodes (quantized / skipped)", "compile s fp32 / int8 / bf16", "optc int8 kernels",
            "max abs diff vs ORT fp32: ORT QDQ / OV / OV QDQ", "optc fp32 / int8 / bf16", "optc int8 vs ORT QDQ",
            "max abs out"]
    out += [f"### Accuracy and build ({t0} thread run)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r, q = row.get(t0, {}), row.get("qdq", {})

        def d(k: str, r: dict = r) -> str:
            return f"{r[k + '_diff']:.2g}" if k + "_diff" in r else "-"

        kern = r.get("optc_int8_kernels")
        out.append("| " + " | ".join([
            row["model"], f"{q.get('quantized', '-')} / {q.get('skipped', '-')}" if "error" not in q else q["error"],
            " / ".join(f"{r[f'compile_{p}_s']:.0f}" if f"compile_{p}_s" in r else "-" for p in ("fp32", "int8", "bf16")),
            f"{kern['integer']} of {kern['integer'] + kern['bfloat16'] + kern['float']} integer" if kern else "-",
            " / ".join(d(k) for k in ("ort_qdq", "ov_fp32", "ov_qdq")),
            " / ".join(d(k) for k in ("optc_fp32", "optc_int8", "optc_bf16")),
            f"{r['optc_int8_vs_ort_qdq']:.2g}" if "optc_int8_vs_ort_qdq" in r else "-",
            f"{r['max_abs_output']:.2g}" if "max_abs_output" in r else "-"]) + " |")
    errors = [f"{row['model']} ({t}t) {k[:-6]}: {v}" for row in rows for t in threads
              for k, v in row.get(t, {}).items() if k.endswith("_error")]
    if errors:
        out += ["", "Failed candidates: " + "; ".join(errors) + "."]
    out += [""] + [f"- {n}" for n in meta.get("notes", [])]
    return "\n".join(out).rstrip("\n") + "\n"
