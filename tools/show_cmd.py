"""`optc show`: print a model as optc's text IR (the form `optc.ir.parse` reads back)."""

from __future__ import annotations

from ..ir import load
from ..ir.printer import format_model


def run(args) -> int:
    print(format_model(load(args.model), max_nodes=args.max_nodes, values=args.values, types=args.types))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "show", help="print a model as optc's text IR",
        description="Print a model as optc's text IR. The text parses back with optc.ir.parse(text) (and is the "
                    "input of FileCheck-style rule tests, see optc.rewrites.filecheck). Tensors of more than 8 "
                    "elements print elided (float32[16, 8, 3, 3]) unless --values is given; parse elided text with "
                    "optc.ir.parse(text, elided='zeros' or 'random').")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--max-nodes", type=int, default=None, metavar="N",
                   help="print at most N nodes per graph (the output then no longer parses)")
    p.add_argument("--values", action="store_true",
                   help="print every tensor payload in full (external data too), so the text parses back to the "
                        "exact model")
    p.add_argument("--types", action="store_true",
                   help="print the type of every node output (as far as the model states them; `?` where not)")
    p.set_defaults(func=run)
