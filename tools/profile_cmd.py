"""`optc profile`: where a model's time goes, per op (onnxruntime's profiler) or per compiled kernel (an artifact
from `optc compile`, timed on TVM's Relax VM), grouped by node and by op type (see `optc.workflow.profile`)."""

from __future__ import annotations

import json

from ..errors import OptcError
from ..workflow.profile import check_artifact_source, profile
from .native_log import stdout_to_stderr
from .verify_cmd import parse_dims


def run(args) -> int:
    if args.artifact and args.model.endswith((".so", ".dylib", ".dll")):
        raise OptcError("give the artifact with --artifact and the ONNX model as MODEL, or the artifact alone")
    if args.artifact:
        check_artifact_source(args.model, args.artifact)  # MODEL must exist and be the artifact's source
    target = args.artifact or args.model
    with stdout_to_stderr(args.json):  # native libraries' chatter must not break the JSON document
        result = profile(target, args.inputs, threads=args.threads, runs=args.runs, top=args.top,
                         dims=parse_dims(args.dim))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        from rich.console import Console

        Console().print(result.table(args.top))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "profile", help="time of every op (onnxruntime) or compiled kernel (TVM), by node and by op type",
        description="Profile a model: run it (warm-up runs not counted) and report the time of every node and "
        "op type, its share of the total, its calls and mean time. An ONNX model runs on onnxruntime with its "
        "profiler (the ops are those onnxruntime runs after its own fusions); with --artifact (or an artifact "
        "as MODEL) the kernels of the library from `optc compile` are timed on TVM's Relax VM.")
    p.add_argument("model", help="an ONNX file (or a compiled artifact .so)")
    p.add_argument("--artifact", metavar="LIB", help="profile this compiled artifact (from `optc compile "
                   "MODEL`) instead of the ONNX model on onnxruntime; refused when its inputs and outputs (names, "
                   "dtypes) are not MODEL's")
    p.add_argument("--inputs", metavar="NPZ", help="input arrays by name (default: random, symbolic dims from "
                   "--dim, else 1)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim for the random "
                   "inputs (repeatable; not with --inputs)")
    p.add_argument("--top", type=int, metavar="N", help="show the N slowest nodes and op types (default: all)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="intra-op threads (default: 1)")
    p.add_argument("--runs", type=int, default=10, metavar="N", help="measured runs after 2 warm-up runs "
                   "(default: 10)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON (all op types; the top "
                   "nodes with --top)")
    p.set_defaults(func=run)
