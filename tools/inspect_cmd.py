"""`optc inspect`: a summary of a model (nodes, op histogram, parameters, inputs/outputs, opsets)."""

from __future__ import annotations

import json
from collections import Counter

from ..ir import Model, SparseTensor, load
from ..ir.core import Value
from ..units import format_bytes


def summarize(model: Model) -> dict:
    """The summary `optc inspect` prints, as a JSON-ready dict."""
    ops: Counter[str] = Counter()
    nodes = 0
    parameters = 0
    parameter_bytes = 0
    for g in model.graphs():
        for n in g:
            nodes += 1
            ops[f"{n.domain}::{n.op_type}" if n.domain else n.op_type] += 1
        for v in g.initializers.values():
            t = v.const
            parameters += int(t.proto.values.dims[0]) if isinstance(t, SparseTensor) and t.proto.values.dims \
                else t.size
            parameter_bytes += t.nbytes
    return {
        "nodes": nodes,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "inputs": [_io(v) for v in model.graph.inputs if v.name not in model.graph.initializers],
        "outputs": [_io(v) for v in model.graph.outputs],
        "opsets": {d or "ai.onnx": v for d, v in model.opset_imports.items()},
        "functions": len(model.functions),
        "ir_version": model.ir_version,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
    }


def _io(v: Value) -> dict:
    t = v.type
    return {
        "name": v.name,
        "dtype": t.dtype.short_name if hasattr(t, "dtype") else (str(t) if t else None),
        "shape": list(t.shape) if getattr(t, "shape", None) is not None else None,
    }


def run(args) -> int:
    summary = summarize(load(args.model))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{args.model}[/]  ir_version {summary['ir_version']}, opsets "
                  + ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
                  + (f", producer {summary['producer']}" if summary["producer"] else ""))
    console.print(f"nodes: {summary['nodes']}   parameters: {summary['parameters']:,} "
                  f"({format_bytes(summary['parameter_bytes'])})   functions: {summary['functions']}")
    io = Table(title="inputs / outputs", show_edge=False)
    for col in ("kind", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for e in summary[kind]:
            shape = "?" if e["shape"] is None else "[" + ",".join("?" if d is None else str(d) for d in e["shape"]) + "]"
            io.add_row(kind[:-1], e["name"], str(e["dtype"]), shape)
    console.print(io)
    ops = Table(title="ops", show_edge=False)
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    return 0


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarize a model: nodes, ops, parameters, inputs/outputs, opsets",
                       description="Summarize a model: node count, op histogram, parameters (count, bytes), "
                       "inputs/outputs and opsets.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--json", action="store_true", help="print JSON (keys: nodes, ops, parameters, "
                   "parameter_bytes, inputs, outputs, opsets, ...)")
    p.set_defaults(func=run)
