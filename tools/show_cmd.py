"""`optc show`: print a model as optc's readable text IR."""

from __future__ import annotations

from ..ir import load
from ..ir.printer import format_model


def run(args) -> int:
    print(format_model(load(args.model), max_nodes=args.max_nodes))
    return 0


def register(sub) -> None:
    p = sub.add_parser("show", help="print a model as optc's text IR",
                       description="Print a model as optc's readable text IR.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--max-nodes", type=int, default=None, metavar="N", help="print at most N nodes per graph")
    p.set_defaults(func=run)
