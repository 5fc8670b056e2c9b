"""`optc show`: print a model as optc's text IR (the form `optc.ir.parse` reads back)."""

from __future__ import annotations

import argparse

from ..errors import OptcError
from ..ir import load
from ..ir.printer import format_model
from ..workflow.verify import is_artifact_path


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not '{text}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def run(args) -> int:
    if is_artifact_path(args.model):
        raise OptcError(f"'{args.model}' is an optc artifact (a compiled library), not an ONNX model: "
                        f"'optc inspect {args.model}' describes it")
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
    p.add_argument("--max-nodes", type=_positive, default=None, metavar="N",
                   help="print at most N nodes per graph, N >= 1 (the output then no longer parses)")
    p.add_argument("--values", action="store_true",
                   help="print every tensor payload in full (external data too), so the text parses back to the "
                        "exact model (sparse tensors print their values and indices)")
    p.add_argument("--types", action="store_true",
                   help="print the type of every node output (as far as the model states them; `?` where not)")
    p.set_defaults(func=run)
