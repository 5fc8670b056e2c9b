#!/usr/bin/env python
"""Benchmark `optc.quantize` against onnxruntime's quantization tools (a script, not a test).

Models: the trained digits CNN shipped in examples/ (scikit-learn's digits, fp32 top-1 on the held-out split
about 0.99), and the generated ResNet-like, MobileNetV2-like, BERT-like and GPT-2-like models of
benchmarks/models.py. Side by side in one run on the same model and the same calibration data:

- static int8 (digits and the CNNs): onnxruntime's `quantize_static` with every combination of QDQ / QOperator
  format, uint8 / int8 activations and per-channel off / on (int8 weights; on the model after onnxruntime's
  `quant_pre_process`, MinMax calibration), against `optc.quantize(model, calibration=npz, method="minmax")`;
- dynamic int8 (BERT-like, GPT-2-like): `quantize_dynamic` with uint8 / int8 weights, per-channel off / on,
  against `optc.quantize(model, dynamic=True)`;
- int4 weight-only (BERT-like, GPT-2-like): `MatMulNBitsQuantizer` (block 32, symmetric) against
  `optc.quantize(model, weight_only="int4", block_size=32, format="contrib" | "standard")`.

Measured: accuracy (digits: top-1 on examples/digits_test.npz) or agreement with float32 on held-out random
inputs (top-1 along the last axis and cosine similarity of the first output), latency on onnxruntime (one
intra-op thread, graph optimizations on, every candidate of a model timed once a round, in a new random order each round, median of --repeat
runs, ratio to float32), file size (ratio to float32), and calibration time and peak memory of optc and of
onnxruntime's calibrator, each in a fresh process. A cell optc cannot fill says "n/a (first line of the error)".

    python benchmarks/quantize.py                      # everything; results into RESULTS.md ("Quantization")
    python benchmarks/quantize.py --quick              # small models, few repeats (a smoke check, < 1 min)
    python benchmarks/quantize.py --models digits,gpt2 --repeat 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
from models import bert_like, gpt2_like, mobilenetv2_like, resnet_like
from onnxruntime.quantization import CalibrationDataReader
from report import RESULTS, write_section

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
WORK = os.path.join(HERE, "_work", "quantize")
MODELS = ("digits", "resnet", "mobilenet", "bert", "gpt2")
STATIC = ("digits", "resnet", "mobilenet")  # static int8; the transformers get dynamic int8 and int4
CALIB_SAMPLES, EVAL_SAMPLES = 32, 16

# Sizes of the generated models. Default: a ResNet with ResNet-50's bottleneck widths and ResNet-18's depth (two
# blocks a stage) at 224x224, MobileNetV2 1.0 at 224x224, and the BERT-like / GPT-2-like sizes of models.py's
# torch modules; the whole default run takes about 5 minutes on 2 cores (--quick: under a minute).
SIZES: dict[str, dict[str, tuple[Callable, dict]]] = {
    "full": {"resnet": (resnet_like, {"width": 32, "blocks": (2, 2, 2, 2), "image": 224}),
             "mobilenet": (mobilenetv2_like, {"image": 224, "width": 1.0}),
             "bert": (bert_like, {"layers": 6, "hidden": 256, "heads": 4, "seq": 128, "vocab": 2000, "ffn": 1024}),
             "gpt2": (gpt2_like, {"layers": 4, "hidden": 256, "heads": 4, "seq": 128, "vocab": 2000})},
    "quick": {"resnet": (resnet_like, {"width": 8, "blocks": (1, 1, 1, 1), "image": 64}),
              "mobilenet": (mobilenetv2_like, {"image": 64, "width": 0.5}),
              "bert": (bert_like, {"layers": 2, "hidden": 128, "heads": 2, "seq": 32, "vocab": 500, "ffn": 512}),
              "gpt2": (gpt2_like, {"layers": 2, "hidden": 128, "heads": 2, "seq": 32, "vocab": 500})},
}


# -- data -----------------------------------------------------------------------------------------------------


def _random_inputs(model: onnx.ModelProto, n: int, seed: int, vocab: int) -> dict[str, np.ndarray]:
    """`n` samples per graph input, stacked on axis 0 (a static batch of 1 is the sample axis): images
    N(0, 1), token ids uniform in [0, vocab), attention masks of ones with a random padded tail."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
        if inp.name == "attention_mask":
            mask = np.ones((n, *dims), np.int64)
            for i, pad in enumerate(rng.integers(0, dims[-1] // 4 + 1, n)):
                mask[i, dims[-1] - pad:] = 0
            out[inp.name] = mask
        elif inp.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            out[inp.name] = rng.integers(0, vocab, (n, *dims)).astype(np.int64)
        else:
            out[inp.name] = rng.standard_normal((n, *dims)).astype(np.float32)
    return out


def _batches(arrays: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]


class NpzReader(CalibrationDataReader):
    """onnxruntime's calibration data reader over an .npz keyed by input name (samples on axis 0), `batch`
    samples per `get_next`."""

    def __init__(self, path: str, batch: int):
        with np.load(path) as data:
            self.items = _batches({k: data[k] for k in data.files}, batch)
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def prepare(name: str, sizes: str) -> dict:
    """A model's files and data: float32 path, calibration .npz, evaluation feeds, labels, the batch onnxruntime's
    reader uses and the feed timed for latency."""
    from optc.fileio import write_npz

    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    if name == "digits":
        test = np.load(os.path.join(EXAMPLES, "digits_test.npz"))
        return {"name": name, "path": os.path.join(EXAMPLES, "digits_cnn.onnx"), "dir": d,
                "calib": os.path.join(EXAMPLES, "digits_calib.npz"), "batch": 64, "desc": "examples/digits_cnn.onnx",
                "eval": [{"x": test["x"]}], "labels": test["y"], "timed": {"x": test["x"][:32]}}
    build, kwargs = SIZES[sizes][name]
    model = build(**kwargs)
    path = os.path.join(d, "float32.onnx")
    onnx.save(model, path)
    vocab = kwargs.get("vocab", 0)
    calib = os.path.join(d, "calib.npz")
    write_npz(calib, _random_inputs(model, CALIB_SAMPLES, 1, vocab))
    feeds = _batches(_random_inputs(model, EVAL_SAMPLES, 2, vocab), 1)
    desc = f"{build.__name__}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return {"name": name, "path": path, "dir": d, "calib": calib, "batch": 1, "desc": desc, "eval": feeds,
            "labels": None, "timed": feeds[0]}


# -- candidates: one quantized model file each ----------------------------------------------------------------


def _ort_pre(spec: dict) -> tuple[str, str]:
    """onnxruntime's recommended pre-processing (shape inference + optimization) of the float32 model."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = os.path.join(spec["dir"], "ort_pre.onnx")
    try:
        quant_pre_process(spec["path"], out)
        return out, ""
    except Exception as exc:
        return spec["path"], f"quant_pre_process failed on {spec['name']} ({_first(exc)}); the raw model was used"


def _first(exc: BaseException) -> str:
    """An error as one line for a table cell: its type and the first line of its message."""
    from optc.ortsession import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"[:160]


def candidates(spec: dict) -> list[tuple[str, str, Callable[[str], None]]]:
    """(group, label, build(out_path)) for every candidate of a model; group: fp32, static, dynamic, int4."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # its int4 quantizer logs each node
    src = spec["path"]
    pre, note = _ort_pre(spec)
    spec["notes"] = [note] if note else []
    cache = os.path.join(spec["dir"], "ort_calibration.json")
    if os.path.exists(cache):
        os.unlink(cache)
    out: list[tuple[str, str, Callable[[str], None]]] = []

    def optc_static(dst):
        import optc
        optc.save(optc.quantize(src, calibration=spec["calib"], method="minmax"), dst)

    def optc_dynamic(dst):
        import optc
        optc.save(optc.quantize(src, dynamic=True), dst)

    def optc_int4(fmt):
        def build(dst):
            import optc
            optc.save(optc.quantize(src, weight_only="int4", block_size=32, format=fmt), dst)
        return build

    if spec["name"] in STATIC:
        for fmt in ("QDQ", "QOperator"):
            for act in ("U8", "S8"):
                for pc in (False, True):
                    def build(dst, fmt=fmt, act=act, pc=pc):
                        quantize_static(pre, dst, NpzReader(spec["calib"], spec["batch"]),
                                        quant_format=getattr(QuantFormat, fmt), per_channel=pc,
                                        activation_type=QuantType.QUInt8 if act == "U8" else QuantType.QInt8,
                                        weight_type=QuantType.QInt8, calibration_cache_path=cache)
                    out.append(("static", f"ort {fmt} {act}S8{' per-channel' if pc else ''}", build))
        out.append(("static", "optc static", optc_static))
    else:
        for wt in ("U8", "S8"):
            for pc in (False, True):
                def build(dst, wt=wt, pc=pc):
                    quantize_dynamic(pre, dst, per_channel=pc,
                                     weight_type=QuantType.QUInt8 if wt == "U8" else QuantType.QInt8)
                out.append(("dynamic", f"ort dynamic {wt}{' per-channel' if pc else ''}", build))
        out.append(("dynamic", "optc dynamic", optc_dynamic))

        def ort_int4(dst):
            q = MatMulNBitsQuantizer(onnx.load(pre), block_size=32, is_symmetric=True)
            q.process()
            q.model.save_model_to_file(dst)
        out.append(("int4", "ort MatMulNBits", ort_int4))
        out.append(("int4", "optc int4 contrib", optc_int4("contrib")))
        out.append(("int4", "optc int4 standard", optc_int4("standard")))
    return out


# -- measurement ----------------------------------------------------------------------------------------------


def _agreement(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    top1 = np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(ref, out, strict=True)])
    cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
           for a, b in zip(ref, out, strict=True)]
    return {"top1_agree": float(top1), "cosine": float(np.mean(cos))}


def measure_model(spec: dict, repeat: int) -> dict:
    """Build every candidate, check its outputs against float32, then time all of them in alternation."""
    from optc.ortsession import session

    cands = [("fp32", "float32", None), *candidates(spec)]
    rows, sessions = [], {}
    ref = None
    for group, label, build in cands:
        row = {"group": group, "label": label}
        path = spec["path"]
        if build is not None:
            path = os.path.join(spec["dir"], label.replace(" ", "_") + ".onnx")
            t = time.perf_counter()
            try:
                build(path)
                row["build_s"] = time.perf_counter() - t
            except Exception as exc:
                row["error"] = _first(exc)
        if "error" not in row:
            try:
                sess = session(path, optimize=True, threads=1)
                outs = [sess.run(None, feed)[0] for feed in spec["eval"]]
                row["bytes"] = os.path.getsize(path)
                if ref is None:
                    ref = outs
                row.update(_agreement(ref, outs))
                if spec["labels"] is not None:
                    row["accuracy"] = float(np.mean(outs[0].argmax(-1) == spec["labels"]))
                sessions[label] = sess
            except Exception as exc:
                row["error"] = _first(exc)
        print(f"  [{spec['name']}] {label}: {_brief(row)}", file=sys.stderr, flush=True)
        rows.append(row)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(3):
        for sess in sessions.values():
            sess.run(None, spec["timed"])
    # Every round runs every candidate once, in a new random order: a fixed order would always put the same
    # candidate right after the slowest one (its weights evicted from the caches), a bias of a few percent.
    order = list(sessions)
    shuffle = random.Random(0).shuffle
    for _ in range(repeat):
        shuffle(order)
        for label in order:
            sess = sessions[label]
            t = time.perf_counter()
            sess.run(None, spec["timed"])
            times[label].append(time.perf_counter() - t)
    for row in rows:
        if row["label"] in times:
            q1, med, q3 = statistics.quantiles(times[row["label"]], n=4)
            row["ms"], row["iqr_pct"] = 1e3 * med, 100 * (q3 - q1) / med
            row["times_ms"] = [1e3 * t for t in times[row["label"]]]  # per round, aligned across candidates
    return {"model": spec["name"], "desc": spec["desc"], "rows": rows, "notes": spec.get("notes", [])}


def _brief(row: dict) -> str:
    if "error" in row:
        return "error: " + row["error"]
    acc = f", accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""
    return f"top-1 agree {row['top1_agree']:.3f}, cosine {row['cosine']:.4f}{acc}, {row['bytes'] / 1e3:.0f} kB"


# -- calibration time and memory, each in a fresh process ------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM of /proc/self/status (reset by exec; getrusage's
    ru_maxrss is not: a child started by fork + exec reports at least its parent's peak), ru_maxrss without /proc."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def calib_worker(tool: str, model: str, npz: str, batch: int, out: str) -> dict:
    """One calibration in this (fresh) process: seconds and peak RSS (MB, `peak_rss_mb`), with the peak right
    after the imports for reference."""
    if tool == "optc":
        import optc
    else:
        from onnxruntime.quantization import CalibrationMethod, QuantType, create_calibrator, quantize_static
    base = peak_rss_mb()
    t = time.perf_counter()
    if tool == "optc":
        optc.save(optc.quantize(model, calibration=npz, method="minmax"), out)
    elif tool == "ort-calibrator":
        cal = create_calibrator(model, augmented_model_path=out + ".augmented.onnx",
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(NpzReader(npz, batch))
        cal.compute_data()
    else:  # ort-quantize_static: calibration + QDQ quantization (S8S8 per-channel)
        quantize_static(model, out, NpzReader(npz, batch), per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
    secs = time.perf_counter() - t
    return {"seconds": secs, "peak_mb": peak_rss_mb(), "import_mb": base}


def measure_calibration(spec: dict, timeout: float) -> dict:
    pre = os.path.join(spec["dir"], "ort_pre.onnx")
    pre = pre if os.path.exists(pre) else spec["path"]
    res = {}
    for tool, model in (("optc", spec["path"]), ("ort-calibrator", pre), ("ort-quantize_static", pre)):
        out = os.path.join(spec["dir"], f"calib_{tool}.onnx")
        cmd = [sys.executable, __file__, "--calib-worker", tool, model, spec["calib"], str(spec["batch"]), out]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if p.returncode != 0:
                res[tool] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:160]}
            else:
                res[tool] = json.loads(p.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            res[tool] = {"error": f"timed out after {timeout:.0f} s"}
        print(f"  [{spec['name']}] calibration {tool}: {res[tool]}", file=sys.stderr, flush=True)
    return res


# -- report ---------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _best(rows: list[dict], group: str, who: str) -> dict | None:
    ok = [r for r in rows if r["group"] == group and r["label"].startswith(who) and "ms" in r]
    return min(ok, key=lambda r: r["ms"]) if ok else None


def _table(res: dict, groups: tuple[str, ...]) -> list[str]:
    rows = res["rows"]
    fp = next(r for r in rows if r["group"] == "fp32")
    acc = res["model"] == "digits"
    head = ["candidate", "accuracy" if acc else "top-1 agree", "cosine", "latency ms", "IQR", "vs fp32", "size kB",
            "vs fp32"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["group"] not in ("fp32", *groups):
            continue
        if "error" in r:
            who = "n/a" if r["label"].startswith("optc") else "error"
            err = r["error"] if len(r["error"]) <= 100 else r["error"][:100] + "…"
            out.append(f"| {r['label']} | {who} ({err}) |" + " |" * (len(head) - 2))
            continue
        first = f"{r['accuracy']:.4f}" if acc else f"{r['top1_agree']:.3f}"
        ms = r.get("ms")
        out.append(f"| {r['label']} | {first} | {r['cosine']:.4f} | " + (f"{ms:.3f}" if ms else "-")
                   + (f" | {r['iqr_pct']:.0f}%" if ms else " | -") + f" | {_ratio(ms, fp.get('ms'))} | "
                   + f"{r['bytes'] / 1e3:.1f} | {_ratio(r['bytes'], fp['bytes'])} |")
    return out


def _verdicts(results: list[dict]) -> list[str]:
    lines = []
    for res in results:
        rows, m = res["rows"], res["model"]
        fp = next(r for r in rows if r["group"] == "fp32")
        get = {r["label"]: r for r in rows}
        if m == "digits":
            o, best = get.get("optc static", {}), _best(rows, "static", "ort")
            if "accuracy" in o:
                loss = 100 * (fp["accuracy"] - o["accuracy"])
                lines.append(f"digits: optc static int8 loses {loss:.2f} points (target <= 0.5): "
                             + ("met" if loss <= 0.5 else "NOT met"))
            else:
                lines.append(f"digits: optc static int8 accuracy n/a ({o.get('error', 'not run')})")
            ort_acc = [r for r in rows if r["label"].startswith("ort") and "accuracy" in r]
            if ort_acc:
                worst = max(100 * (fp["accuracy"] - r["accuracy"]) for r in ort_acc)
                least = min(100 * (fp["accuracy"] - r["accuracy"]) for r in ort_acc)
                lines.append(f"digits: onnxruntime static int8 loses {least:.2f} to {worst:.2f} points over its "
                             "options")
        for group, label in (("static", "optc static"), ("dynamic", "optc dynamic")):
            best = _best(rows, group, "ort")
            if best is None or (group == "static" and m == "digits"):
                continue
            o = get.get(label, {})
            if "ms" in o:
                # Paired: the two ran one after the other in every round, so the per-round ratio cancels the
                # machine's drift that the ratio of two medians keeps.
                paired = [a / b for a, b in zip(o["times_ms"], best["times_ms"], strict=True)]
                q1, r, q3 = statistics.quantiles(paired, n=4)
                lines.append(f"{m}: {label} latency {r:.3f}x the best onnxruntime {group} model ({best['label']}, "
                             f"{_ratio(best['ms'], fp.get('ms'))} float32; median of per-round ratios, IQR "
                             f"{q1:.2f}-{q3:.2f}) (target <= 1.0): " + ("met" if r <= 1.0 else "NOT met"))
            else:
                lines.append(f"{m}: {label} n/a ({o.get('error', 'not run')}); best onnxruntime {group}: "
                             f"{best['label']}, {_ratio(best['ms'], fp.get('ms'))} float32")
        for label in ("optc int4 contrib", "optc int4 standard"):
            o = get.get(label)
            if o is None:
                continue
            if "bytes" in o:
                r = o["bytes"] / fp["bytes"]
                lines.append(f"{m}: {label} file {r:.3f}x float32 (target <= 0.27): "
                             + ("met" if r <= 0.27 else "NOT met"))
            else:
                lines.append(f"{m}: {label} n/a ({o.get('error', 'not run')})")
    return lines


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo and its int8 dot-product extensions (VNNI: what onnxruntime's
    int8 kernels are fastest with), e.g. "AMD EPYC (avx2, avx512_vnni)"."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(ext) or 'no AVX2'})"


def markdown(results: list[dict], calib: dict, meta: dict) -> str:
    out = ["## Quantization", "",
           f"`python benchmarks/quantize.py {meta['argv']}` — {meta['date']}, {meta['cpu']}, {meta['machine']}; "
           f"onnxruntime {meta['onnxruntime']} (CPU, 1 intra-op thread, all graph optimizations). Latency: median "
           f"of {meta['repeat']} runs after 3 warm-up runs (IQR: interquartile range / median), every candidate of "
           "a model timed in alternation; batch "
           "1 (digits: batch 32). Agreement with float32: top-1 along the last axis and cosine similarity of the "
           f"first output on {EVAL_SAMPLES} held-out random inputs (digits: top-1 accuracy on the 360 held-out "
           f"images). Calibration: {CALIB_SAMPLES} random samples (images N(0, 1), token ids in range; digits: "
           "examples/digits_calib.npz, 256 training images), the same .npz for optc and onnxruntime's reader. "
           "onnxruntime's tools get the model after its `quant_pre_process`; optc gets the float32 model.", "",
           "Models: " + "; ".join(f"{r['model']} = {r['desc']}" for r in results) + ".", ""]
    for res in results:
        groups = ("static",) if res["model"] in STATIC else ("dynamic", "int4")
        for g in groups:
            title = {"static": "static int8", "dynamic": "dynamic int8", "int4": "int4 weight-only"}[g]
            out += [f"### {res['model']}: {title}", "", *_table(res, (g,)), ""]
    if calib:
        out += ["### Calibration time and peak memory", "",
                "Each in a fresh process; peak RSS: VmHWM of the worker's /proc/self/status at its end, beside its "
                "value right after the imports (not getrusage's ru_maxrss: across fork + exec it keeps the parent's "
                "peak). optc: `optc.quantize(..., "
                "method=\"minmax\")` + save (calibration and QDQ insertion); ort-calibrator: `create_calibrator` + "
                "`collect_data` + `compute_data` (MinMax, calibration only); ort-quantize_static: calibration + "
                "QDQ S8S8 per-channel quantization.", "",
                "| model | tool | seconds | peak RSS MB | after imports MB |", "|---|---|---|---|---|"]
        for m, tools in calib.items():
            for tool, r in tools.items():
                if "error" in r:
                    out.append(f"| {m} | {tool} | {'n/a' if tool == 'optc' else 'error'} ({r['error']}) | | |")
                else:
                    out.append(f"| {m} | {tool} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['import_mb']:.0f} |")
        out.append("")
    out += ["### Targets", ""] + [f"- {v}" for v in _verdicts(results)] + [""]
    notes = [n for res in results for n in res["notes"]] + meta["notes"]
    notes.append("The best onnxruntime model of a group is its fastest option (whatever its accuracy); every option "
                 "is listed with its agreement.")
    notes.append("onnxruntime's static variants share one MinMax calibration (`calibration_cache_path`): the "
                 "ranges do not depend on format, activation type or per-channel.")
    if any(res["model"] == "gpt2" for res in results):
        notes.append("gpt2: onnxruntime's `quant_pre_process` folds the tied head's Transpose of the token embedding "
                     "into a second initializer, and `MatMulNBitsQuantizer` quantizes MatMul only: the Gemm "
                     "projections stay float32.")
    notes.append("'error' in an onnxruntime row: that option failed to quantize or to load; 'n/a' in an optc row: "
                 "optc cannot do it yet (the error's first line).")
    out += ["Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib-worker", nargs=5, metavar=("TOOL", "MODEL", "NPZ", "BATCH", "OUT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small models, 10 repeats (a smoke check)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    ap.add_argument("--repeat", type=int, help="timed runs per candidate (default 100, --quick 10)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per calibration worker")
    ap.add_argument("--note", action="append", default=[], help="a line for the notes under the tables")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    if args.calib_worker:
        tool, model, npz, batch, out = args.calib_worker
        print(json.dumps(calib_worker(tool, model, npz, int(batch), out)))
        return 0
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    repeat = args.repeat or (10 if args.quick else 100)
    results, calib = [], {}
    for name in names:
        print(f"{name}:", file=sys.stderr, flush=True)
        spec = prepare(name, "quick" if args.quick else "full")
        results.append(measure_model(spec, repeat))
        if name in STATIC:
            calib[name] = measure_calibration(spec, args.timeout)
    from importlib.metadata import version

    meta = {"date": time.strftime("%Y-%m-%d"), "repeat": repeat, "cpu": cpu_model(),
            "argv": " ".join(a for a in sys.argv[1:] if a not in args.note and a != "--note"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "onnxruntime": version("onnxruntime"), "notes": args.note}
    from optc.fileio import write_json

    write_json(os.path.join(WORK, "results.json"), {"models": results, "calibration": calib, "meta": meta})
    section = markdown(results, calib, meta)
    write_section(args.out, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
