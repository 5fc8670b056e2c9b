"""`optc run`: run an ONNX model (on onnxruntime) or a compiled artifact on inputs from an .npz file (or random
inputs), print what it returned and write the outputs to an .npz file."""

from __future__ import annotations

import json

import numpy as np

from ..errors import OptcError
from ..inputs import random_inputs
from ..workflow.verify import check_inputs, open_side
from .native_log import stdout_to_stderr
from .paths import check_output_path
from .verify_cmd import parse_dims


def _describe(arrays: dict[str, np.ndarray]) -> list[dict]:
    return [{"name": n, "dtype": str(v.dtype), "shape": list(v.shape)} for n, v in arrays.items()]


def run_model(path: str, inputs: str | None = None, *, dims: dict[str, int] | None = None,
              seed: int = 0, rpc: str | None = None, rpc_timeout: float = 30.0) -> tuple[dict[str, np.ndarray], dict]:
    """Run `path` (an ONNX model on onnxruntime with its graph optimizations off, or an artifact from
    `optc compile`, told apart as `optc verify` does) on the arrays of the .npz file `inputs` (exactly the model's
    input names; dtypes and fixed dims checked) or, without it, on `optc.inputs.random_inputs` (symbolic dims from
    `dims`, else 1). `rpc` (`HOST:PORT:KEY`): run the artifact on a server of a TVM RPC tracker instead
    (`optc.runtime.load(path, rpc=...)`), after the inputs are checked; `rpc_timeout`: seconds to wait for a free
    server and its answer. Returns `({output name: array}, info)`;
    `info` holds `model`, `kind` ("onnx" or "artifact"), `inputs` (`source`: the .npz path or "random", `seed`,
    and `arrays`: name, dtype, shape) and, with `rpc`, `server` ("host:port"). OptcError (one line) for a bad
    model, a bad file, inputs that do not fit, and (with `rpc`) an ONNX model, a bad address, an unreachable
    tracker, no server with the key or a server that does not answer."""
    from ..quantization.data import read_npz

    if rpc is not None:
        from ..remote.tracker import parse_address

        parse_address(rpc)
    arrays = read_npz(inputs) if inputs else None
    side = open_side(path)
    if rpc is not None and side.kind != "artifact":
        raise OptcError(f"--rpc runs an artifact of `optc compile` on a remote device; '{path}' is an ONNX model")
    if arrays is not None:
        feeds = check_inputs(inputs, arrays, side.inputs, "the model takes")
        source: dict = {"source": inputs}
    else:
        known = {d for s in side.inputs for d in s.shape if isinstance(d, str)}
        unknown = sorted(set(dims or {}) - known)
        if unknown:
            raise OptcError(f"--dim {unknown[0]}: no input has a dimension named '{unknown[0]}' (symbolic dims: "
                            f"{', '.join(sorted(known)) or 'none'})")
        feeds = random_inputs(side.inputs, dims=dims, seed=seed)
        source = {"source": "random", "seed": seed}
    if rpc is not None:
        from .. import runtime

        side.runner = runtime.load(path, rpc=rpc, timeout=rpc_timeout)
    outputs = side.run(feeds)
    info = {"model": path, "kind": side.kind, "inputs": {**source, "arrays": _describe(feeds)}}
    if rpc is not None:
        info["server"] = side.runner.server
    return outputs, info


def run(args) -> int:
    from ..fileio import write_npz

    if args.output:
        check_output_path(args.model, args.output, (".npz",))
        if args.inputs:
            check_output_path(args.inputs, args.output, (".npz",))
    with stdout_to_stderr(args.json):
        outputs, info = run_model(args.model, args.inputs, dims=parse_dims(args.dim), seed=args.seed, rpc=args.rpc,
                                  rpc_timeout=args.rpc_timeout)
        if args.output:
            write_npz(args.output, outputs)
    if args.json:
        print(json.dumps({**info, "outputs": _describe(outputs), "output_file": args.output}, indent=2))
        return 0
    for entry in _describe(outputs):
        print(f"{entry['name']}: {entry['dtype']}{entry['shape']}")
    if "server" in info:
        print(f"ran on RPC server {info['server']} (key {args.rpc.rsplit(':', 1)[1]})")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run an ONNX model or a compiled artifact on inputs from an .npz file",
                       description="Run an ONNX model (on onnxruntime, its graph optimizations off) or a library "
                       "made by `optc compile`. Inputs and outputs are .npz files keyed by input / output names; "
                       "the names (no more, no fewer), dtypes and fixed dims are checked against the model. "
                       "Without --inputs the inputs are random, as for `optc verify`.")
    p.add_argument("model", help="an ONNX file or the .so written by optc compile")
    p.add_argument("--inputs", metavar="X.npz", help="input arrays by input name (default: random)")
    p.add_argument("-o", "--output", metavar="Y.npz", help="where to write the outputs (an .npz file)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim for random "
                   "inputs (default 1; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--rpc", metavar="HOST:PORT:KEY", help="run the artifact on a server registered under KEY with "
                   "the TVM RPC tracker at HOST:PORT (its cpu, or its GPU for a cuda artifact; see `optc rpc`)")
    p.add_argument("--rpc-timeout", type=float, default=30.0, metavar="SEC", help="with --rpc: seconds to wait for "
                   "a free server and its answer (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: model, kind, inputs "
                   "(source, seed, arrays), outputs (name, dtype, shape), output_file, and server with --rpc")
    p.set_defaults(func=run)
