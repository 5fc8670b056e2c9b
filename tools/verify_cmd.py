"""`optc verify`: check that two models — ONNX files run on onnxruntime, or artifacts from `optc compile` run
with `optc.runtime` — compute the same outputs on the same inputs.

Inputs come from an .npz file (`--inputs`) or are random with the right shapes and dtypes (symbolic dims are 1
unless `--dim NAME=VALUE` says otherwise); both sides get exactly the same arrays. The element-wise rules live in
`optc.tools.compare` (`compare`); running and checking the two sides, in `optc.workflow.verify`. Exits 0 when every output matches, 1 on a mismatch, 2 on bad input.
"""

from __future__ import annotations

import json

from ..errors import OptcError
from ..workflow.verify import Side, verify_sides
from .compare import Comparison
from .native_log import stdout_to_stderr


def parse_dims(specs: list[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for spec in specs or []:
        name, eq, value = spec.partition("=")
        if not eq or not name:
            raise OptcError(f"--dim expects NAME=VALUE, got '{spec}'")
        try:
            dims[name] = int(value)
        except ValueError:
            raise OptcError(f"--dim {name}: '{value}' is not an integer") from None
        if dims[name] < 0:
            raise OptcError(f"--dim {name}: must not be negative")
    return dims


# -- printing --------------------------------------------------------------------------------------------------


def _fmt_err(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _fmt_index(idx) -> str:
    return "[" + ", ".join(map(str, idx)) + "]"


def _print_text(comp: Comparison, a: Side, b: Side, info: dict) -> None:
    arrays = ", ".join(f"{n} {v['dtype']}[{','.join(map(str, v['shape']))}]" for n, v in info["arrays"].items())
    source = f"random (seed {info['seed']})" if info["source"] == "random" else info["source"]
    print(f"a: {a.description}")
    print(f"b: {b.description}")
    print(f"inputs: {source}: {arrays or 'none'}")
    rows = []
    for o in comp.outputs:
        label = o.name if not o.name_b else f"{o.name} / {o.name_b}"
        mism = "-" if o.mismatched is None else f"{o.mismatched}/{o.size}"
        worst = (f"worst at {_fmt_index(o.worst_index)}: {o.worst_text[0]} vs {o.worst_text[1]}"
                 if o.worst_index is not None and o.worst_text else "")
        rows.append((label, "ok" if o.equal else "MISMATCH", mism, _fmt_err(o.max_abs), _fmt_err(o.max_rel), worst))
    head = ("output", "result", "mismatched", "max abs err", "max rel err", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    print(f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:>{widths[2]}}  {head[3]:>{widths[3]}}  "
          f"{head[4]:>{widths[4]}}")
    for r, o in zip(rows, comp.outputs, strict=True):
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
              f"{r[4]:>{widths[4]}}  {r[5]}".rstrip())
        for note in o.notes:
            print(f"{'':<{widths[0]}}  {note}")
    for note in comp.notes:
        print(note)
    tol = f"rtol={comp.rtol:g}, atol={comp.atol:g}" + (", strict zeros" if comp.strict_zeros else "")
    n = len(comp.outputs)
    outputs = f"{n} output{'s' if n != 1 else ''}"
    if comp.equal:
        print(f"equal ({outputs}; {tol})")
    else:
        print(f"mismatch ({sum(not o.equal for o in comp.outputs)}/{n} outputs differ; {tol})")


# -- the command -----------------------------------------------------------------------------------------------


def _side_json(side: Side) -> dict:
    return {"path": side.path, "kind": side.kind, **({"target": side.target} if side.kind == "artifact" else {})}


def run(args) -> int:
    with stdout_to_stderr(args.json):
        comp, a, b, info = verify_sides(args.model_a, args.model_b, inputs=args.inputs, dims=parse_dims(args.dim),
                                        seed=args.seed, rtol=args.rtol, atol=args.atol,
                                        strict_zeros=args.strict_zeros)
    if args.json:
        doc = {"a": _side_json(a), "b": _side_json(b),
               "inputs": info, **comp.to_json()}
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        _print_text(comp, a, b, info)
    return 0 if comp.equal else 1


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "verify", help="check two models compute the same outputs (ONNX on onnxruntime, or an optc artifact)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run A and B on the same inputs and compare every output. Each of A and B is an ONNX model (run on
onnxruntime, graph optimizations off) or an artifact from `optc compile` (a .so with its .so.json metadata
beside it, run with optc.runtime), in any order and combination: `optc verify model.onnx model.so` checks a
compiled library against its model.

Element rules: integers and booleans must be identical; floats must satisfy
|a - b| <= atol + rtol * max(|a|, |b|) (symmetric: swapping A and B never changes the verdict); NaN equals
only NaN at the same position; an infinity equals only the same infinity (inf vs a finite number or vs -inf
is a mismatch whatever the tolerances); a shape or dtype difference is a mismatch. -0.0 vs +0.0 is counted
and reported ("N signed zeros differ") but is not a mismatch unless --strict-zeros is given.

For every output it prints the number of mismatching elements, the max absolute and relative error
(|a - b| / max(|a|, |b|)), and the worst element (furthest outside the tolerance) with both values.
Exit 0 when all outputs are equal, 1 on a mismatch, 2 on bad input (one line on stderr).""")
    p.add_argument("model_a", metavar="A", help="a.onnx or artifact.so")
    p.add_argument("model_b", metavar="B", help="b.onnx or artifact.so")
    p.add_argument("--inputs", metavar="X.npz", help="input values by input name (default: random)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--strict-zeros", action="store_true",
                   help="count -0.0 vs +0.0 as a mismatch (default: reported, not a mismatch)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim for random "
                   "inputs (default 1; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object and nothing else on stdout: a, b, inputs, equal, rtol, atol, "
                   "strict_zeros, notes, and per output: name, equal, shape_a/b, dtype_a/b, size, mismatched, "
                   "max_abs, max_rel, worst_index, worst_a, worst_b, nan_a/b, nan_mismatched, inf_a/b, "
                   "inf_mismatched, signed_zeros, notes (non-finite numbers as the strings \"inf\", \"-inf\", "
                   "\"nan\")")
    p.set_defaults(func=run)
