#!/usr/bin/env python
"""Benchmark `optc optimize -O2` against onnxsim, onnxslim and onnxoptimizer (a script, not a test).

For each model: node count after each tool, each tool's wall time (median of --repeats runs, each in a fresh
worker process; the timed region is ModelProto in -> optimized ModelProto out, so optc's import and export are
included), and whether the result still computes the same outputs on onnxruntime (rtol 1e-4). Models: the nine
light models shipped with onnx, a generated ResNet-like CNN and BERT-like encoder (built with onnx.helper in the
style of a PyTorch export: Constant nodes, Shape->Gather->Unsqueeze->Concat->Reshape chains, decomposed
LayerNorm, Erf GELU, explicit Pad, BatchNorm after Conv, MatMul+Add), torch-exported versions of the same when
torch is installed, and generated graphs of 10k..200k nodes for optc's time per node.

    python benchmarks/optimize.py                  # everything, results into benchmarks/RESULTS.md ("Optimize")
    python benchmarks/optimize.py --quick          # fewer repeats and sizes
The comparison tools are installed for the benchmark only: pip install onnxsim onnxslim onnxoptimizer
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
from models import bert_like, resnet_like, scaling_graph, torch_models
from onnx import helper
from report import RESULTS, write_section

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work", "optimize")
TOOLS = ["optc", "onnxsim", "onnxslim", "onnxoptimizer"]



# -- workers: one tool on one model, timed, in a fresh process ------------------------------------------------


def _run_tool(tool: str, model: onnx.ModelProto) -> onnx.ModelProto:
    if tool == "optc":
        import optc
        from optc.ir import to_onnx

        return to_onnx(optc.optimize(optc.load(model), level=2, inplace=True))
    if tool == "onnxsim":
        import onnxsim

        out, ok = onnxsim.simplify(model)
        return out
    if tool == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    if tool == "onnxoptimizer":
        import onnxoptimizer

        return onnxoptimizer.optimize(model, onnxoptimizer.get_fuse_and_elimination_passes())
    raise ValueError(tool)


def worker(tool: str, src: str, dst: str) -> None:
    model = onnx.load(src)
    for mod in {"optc": ["optc"], "onnxsim": ["onnxsim"], "onnxslim": ["onnxslim"],
                "onnxoptimizer": ["onnxoptimizer"]}[tool]:
        __import__(mod)
    t = time.perf_counter()
    out = _run_tool(tool, model)
    secs = time.perf_counter() - t
    onnx.save(out, dst, save_as_external_data=out.ByteSize() > 1_800_000_000)
    print(json.dumps({"seconds": secs, "nodes": len(out.graph.node)}))


def run_worker(tool: str, src: str, dst: str, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", tool, src, dst], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last[:120]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- numerics ------------------------------------------------------------------------------------------------


def _feeds(model: onnx.ModelProto) -> dict:
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if "mask" in i.name:
            feeds[i.name] = np.ones(shape, dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[i.name] = rng.integers(0, 100, shape).astype(dtype)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def same_outputs(src: str, dst: str) -> str:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        a = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"])
        feeds = _feeds(onnx.load(src, load_external_data=False))
        names_b = {i.name for i in b.get_inputs()}
        ra = a.run(None, feeds)
        rb = b.run(None, {k: v for k, v in feeds.items() if k in names_b})
    except Exception as exc:
        return f"error: {str(exc).splitlines()[0][:80]}"
    for x, y in zip(ra, rb, strict=False):
        if x.shape != y.shape or not np.allclose(y, x, rtol=1e-4, atol=1e-5):
            return "MISMATCH"
    return "ok"


# -- the benchmark --------------------------------------------------------------------------------------------


def bench_models(models: dict[str, str], repeats: int, timeout: float, tools: list[str]) -> list[dict]:
    rows = []
    for name, src in models.items():
        m = onnx.load(src, load_external_data=False)
        row = {"model": name, "nodes": len(m.graph.node)}
        for tool in tools:
            dst = os.path.join(WORK, f"{name}.{tool}.onnx")
            runs = []
            for _ in range(repeats):
                r = run_worker(tool, src, dst, timeout)
                runs.append(r)
                if "error" in r:
                    break
            if "error" in runs[-1]:
                row[tool] = {"error": runs[-1]["error"]}
            else:
                row[tool] = {"nodes": runs[-1]["nodes"], "seconds": statistics.median(r["seconds"] for r in runs),
                             "check": same_outputs(src, dst)}
            print(f"  {name:<22} {tool:<14} {row[tool]}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def bench_scaling(sizes: list[int], repeats: int, timeout: float, others: list[str],
                  others_max: int, slim_max: int) -> list[dict]:
    rows = []
    for n in sizes:
        src = os.path.join(WORK, f"scaling_{n}.onnx")
        m = scaling_graph(n)
        onnx.save(m, src)
        row = {"nodes": len(m.graph.node)}
        runs = [run_worker("optc", src, os.path.join(WORK, f"scaling_{n}.optc.onnx"), timeout)
                for _ in range(repeats)]
        if any("error" in r for r in runs):
            row["optc"] = {"error": next(r for r in runs if "error" in r)["error"]}
        else:
            secs = statistics.median(r["seconds"] for r in runs)
            row["optc"] = {"seconds": secs, "nodes": runs[-1]["nodes"], "us_per_node": 1e6 * secs / row["nodes"]}
        for tool in others:
            if n > (others_max if tool == "onnxsim" else slim_max):
                continue
            r = run_worker(tool, src, os.path.join(WORK, f"scaling_{n}.{tool}.onnx"), timeout)
            row[tool] = r
        print(f"  scaling {row['nodes']:>7} nodes: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _cell(r: dict | None, what: str) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "fail"
    if what == "nodes":
        return str(r["nodes"]) + ("" if r.get("check", "ok") == "ok" else f" ({r['check']})")
    return f"{r['seconds']:.3f}"


def markdown(rows: list[dict], scaling: list[dict], tools: list[str], meta: dict) -> str:
    out = ["## Optimize", ""]
    out.append(f"`python benchmarks/optimize.py` — {meta['date']}, {meta['machine']}; optc -O2 vs "
               + ", ".join(f"{t} {meta['versions'].get(t, '?')}" for t in tools if t != "optc")
               + f". Wall time: median of {meta['repeats']} runs, each in a fresh process, ModelProto in -> "
               "optimized ModelProto out (optc's import and export included). Every result is checked on "
               "onnxruntime against the original (rtol 1e-4): a failed check is marked in the table.")
    out.append("")
    out.append("### Node count after optimization")
    out.append("")
    head = "| model | original | " + " | ".join(tools) + " | optc ≤ best of others |"
    out += [head, "|" + "---|" * (len(tools) + 3)]
    wins = 0
    for r in rows:
        others = [r[t]["nodes"] for t in tools if t != "optc" and isinstance(r.get(t), dict) and "nodes" in r[t]
                  and r[t].get("check") == "ok"]
        optc_n = r.get("optc", {}).get("nodes")
        ok = optc_n is not None and (not others or optc_n <= min(others))
        wins += ok
        out.append(f"| {r['model']} | {r['nodes']} | " + " | ".join(_cell(r.get(t), "nodes") for t in tools)
                   + f" | {'yes' if ok else 'no'} |")
    out.append("")
    out.append(f"optc's count is at most the best of the others on {wins} of {len(rows)} models.")
    out.append("")
    out.append("### Wall time (s) and speed-up of optc")
    out.append("")
    others = [t for t in tools if t != "optc"]
    out.append("| model | " + " | ".join(tools) + " | " + " | ".join(f"{t} / optc" for t in others) + " |")
    out.append("|" + "---|" * (1 + len(tools) + len(others)))
    for r in rows:
        ratios = []
        for t in others:
            a, o = r.get(t, {}), r.get("optc", {})
            ratios.append(f"{a['seconds'] / o['seconds']:.1f}x" if "seconds" in a and "seconds" in o else "-")
        out.append(f"| {r['model']} | " + " | ".join(_cell(r.get(t), "time") for t in tools) + " | "
                   + " | ".join(ratios) + " |")
    out.append("")
    if scaling:
        out.append("### optc -O2 time per node on generated graphs")
        out.append("")
        extra = [t for t in others if any(t in s for s in scaling)]
        out.append("| nodes | optc (s) | µs / node | nodes after | " + " | ".join(f"{t} (s)" for t in extra) + " |")
        out.append("|" + "---|" * (4 + len(extra)))
        for s in scaling:
            o = s["optc"]
            if "error" in o:
                out.append(f"| {s['nodes']} | fail | | | " + " | ".join("" for _ in extra) + " |")
                continue
            cells = []
            for t in extra:
                r = s.get(t)
                cells.append("-" if r is None else ("fail: " + r["error"] if "error" in r else
                                                    f"{r['seconds']:.2f} ({r['nodes']} nodes)"))
            out.append(f"| {s['nodes']} | {o['seconds']:.2f} | {o['us_per_node']:.1f} | {o['nodes']} | "
                       + " | ".join(cells) + " |")
        per = [s["optc"]["us_per_node"] for s in scaling if "us_per_node" in s["optc"]]
        if len(per) >= 2:
            out.append("")
            out.append(f"Time per node, largest / smallest graph: {per[-1] / per[0]:.2f}x "
                       f"(max / min over all sizes: {max(per) / min(per):.2f}x).")
        out.append("")
    notes = list(meta.get("notes") or [])
    notes.append("Scaling graphs: onnxslim and onnxoptimizer get them up to `--slim-max` nodes only (their time grows "
                 "quadratically), onnxsim up to `--others-max`; '-' means not run.")
    notes.append("fold-constants folds results that grow the model up to its `size-limit` (1 GiB per tensor by "
                 "default), so the light models' ConstantOfShape weights are materialized as onnxsim and onnxslim do; "
                 "that dominates optc's time on alexnet, vgg19 and zfnet512.")
    if "torch" in meta.get("versions", {}):
        notes.append(f"torch_resnet / torch_bert: the same architectures written in torch {meta['versions']['torch']} "
                     "and exported with its TorchScript exporter (opset 17); resnet_like / bert_like are built with "
                     "onnx.helper in the style of an older export.")
    out += [f"- {n}" for n in notes]
    out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1 repeat, sizes 10k and 50k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="10000,25000,50000,100000,200000")
    ap.add_argument("--others-max", type=int, default=50000, help="largest scaling graph onnxsim gets (one run)")
    ap.add_argument("--slim-max", type=int, default=25000,
                    help="largest scaling graph onnxslim and onnxoptimizer get (one run; their time grows "
                    "quadratically: 250-300 s at 27k nodes on 2 cores)")
    ap.add_argument("--resume", metavar="FILE", help="a results.json whose models and scaling sizes are kept "
                    "(only the missing ones are measured)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--from-json", metavar="FILE", help="only rewrite the section from a saved results.json")
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if args.from_json:
        data = json.load(open(args.from_json))
        tools = ["optc", *[t for t in TOOLS[1:] if t in data["meta"]["versions"]]]
        section = markdown(data["models"], data["scaling"], tools, data["meta"])
        write_section(args.out, section)
        print(section)
        return 0
    if args.quick:
        args.repeats, args.sizes = 1, "10000,50000"
    os.makedirs(WORK, exist_ok=True)
    from importlib.metadata import PackageNotFoundError, version

    versions, notes, tools = {}, [], ["optc"]
    for t in TOOLS[1:]:
        try:
            versions[t] = version(t)
            tools.append(t)
        except PackageNotFoundError:
            notes.append(f"{t} is not installed (pip install {t}); left out")
    models: dict[str, str] = {}
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    for p in sorted(glob.glob(os.path.join(light, "light_*.onnx"))):
        models[os.path.basename(p)[:-5]] = p
    for name, build in (("resnet_like", resnet_like), ("bert_like", bert_like)):
        path = os.path.join(WORK, f"{name}.onnx")
        onnx.save(build(), path)
        models[name] = path
    if not args.no_torch:
        tm = torch_models(WORK)
        if not tm:
            notes.append("torch is not installed or its export failed: no torch-exported models")
        for name in tm:
            models[name] = os.path.join(WORK, f"{name}.onnx")
        try:
            versions["torch"] = version("torch")
        except PackageNotFoundError:
            pass
    print(f"models: {list(models)}; tools: {tools}", file=sys.stderr)
    old = json.load(open(args.resume)) if args.resume else {"models": [], "scaling": []}
    done = {r["model"]: r for r in old["models"]}
    rows = bench_models({k: v for k, v in models.items() if k not in done}, args.repeats, args.timeout, tools)
    rows = [done.get(k) or next(r for r in rows if r["model"] == k) for k in models]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    have = {r["nodes"]: r for r in old["scaling"]}
    todo = [n for n in sizes if max(1, n // 11) * 12 not in have]
    scaling = bench_scaling(todo, args.repeats, args.timeout, [t for t in tools if t != "optc"], args.others_max,
                            args.slim_max)
    scaling = sorted([*have.values(), *scaling], key=lambda r: r["nodes"])
    import platform

    meta = {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "versions": versions, "notes": notes,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump({"models": rows, "scaling": scaling, "meta": meta}, f, indent=1)
    section = markdown(rows, scaling, tools, meta)
    write_section(args.out, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
