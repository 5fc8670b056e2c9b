"""`optc inspect`: a summary of a model (nodes, op histogram, parameters, inputs/outputs, opsets), or of a compiled
artifact's metadata (target, inputs/outputs, versions)."""

from __future__ import annotations

import json

from ..ir import Model, load
from ..ir.core import Value
from ..ir.stats import model_stats
from ..units import format_bytes


def summarize(model: Model) -> dict:
    """The summary `optc inspect` prints, as a JSON-ready dict."""
    st = model_stats(model)
    return {
        "nodes": st.nodes,
        "ops": dict(sorted(st.ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": st.parameters,
        "parameter_bytes": st.parameter_bytes,
        "inputs": [_io(v) for v in model.graph.inputs if v.name not in model.graph.initializers],
        "outputs": [_io(v) for v in model.graph.outputs],
        "opsets": {d or "ai.onnx": v for d, v in model.opset_imports.items()},
        "functions": len(model.functions),
        "ir_version": model.ir_version,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "kind": "onnx",
    }


def _io(v: Value) -> dict:
    t = v.type
    return {
        "name": v.name,
        "dtype": t.dtype.short_name if hasattr(t, "dtype") else (str(t) if t else None),
        "shape": list(t.shape) if getattr(t, "shape", None) is not None else None,
    }


def summarize_artifact(path: str) -> dict:
    """What `optc inspect` prints for an artifact of `optc compile`: its metadata file (no TVM import), with the
    library's size in bytes. OptcError (one line) for a missing library or missing / foreign metadata."""
    import os

    from ..codegen.artifact import read_metadata

    meta = read_metadata(path)
    keys = ("target", "opt_level", "fast_math", "optc_version", "tvm_version", "format_version")
    return {"kind": "artifact", "library": path, "bytes": os.path.getsize(path),
            **{k: meta.get(k) for k in keys}, "inputs": meta.get("inputs", []), "outputs": meta.get("outputs", [])}


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _io_table(summary: dict):
    from rich.table import Table

    io = Table(title="inputs / outputs", show_edge=False)
    for col in ("kind", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for e in summary[kind]:
            io.add_row(kind[:-1], e["name"], str(e["dtype"]), _shape(e["shape"]))
    return io


def run(args) -> int:
    from ..workflow.verify import is_artifact_path

    artifact = is_artifact_path(args.model)
    summary = summarize_artifact(args.model) if artifact else summarize(load(args.model))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if artifact:
        console.print(f"[bold]{args.model}[/]  optc artifact for {summary['target']}, -O{summary['opt_level']}, "
                      f"fast math {'on' if summary['fast_math'] else 'off'}, {format_bytes(summary['bytes'])}; "
                      f"built by optc {summary['optc_version']} with TVM {summary['tvm_version']}")
        console.print(_io_table(summary))
        return 0
    console.print(f"[bold]{args.model}[/]  ir_version {summary['ir_version']}, opsets "
                  + ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
                  + (f", producer {summary['producer']}" if summary["producer"] else ""))
    console.print(f"nodes: {summary['nodes']}   parameters: {summary['parameters']:,} "
                  f"({format_bytes(summary['parameter_bytes'])})   functions: {summary['functions']}")
    console.print(_io_table(summary))
    ops = Table(title="ops", show_edge=False)
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    return 0


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarize a model (nodes, ops, parameters, inputs/outputs, opsets) or an "
                       "artifact", description="Summarize a model: node count, op histogram, parameters (count, "
                       "bytes), inputs/outputs and opsets. For an artifact of `optc compile` (a .so with its "
                       ".so.json beside it): target, optimization level, fast math, inputs/outputs and the optc and "
                       "TVM versions that built it, from the metadata (the library is not loaded).")
    p.add_argument("model", help="an ONNX file or an artifact (.so)")
    p.add_argument("--json", action="store_true", help="print JSON (model keys: kind, nodes, ops, parameters, "
                   "parameter_bytes, inputs, outputs, opsets, ...; artifact keys: kind, library, bytes, target, "
                   "opt_level, fast_math, optc_version, tvm_version, format_version, inputs, outputs)")
    p.set_defaults(func=run)
