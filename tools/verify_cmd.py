"""`optc verify`: check that two models compute the same outputs on onnxruntime.

Inputs come from an .npz file (`--inputs`) or are random with the right shapes and dtypes (symbolic dims are 1
unless `--dim NAME=VALUE` says otherwise). Prints the max absolute and relative error per output; exits 0 when
every output matches within `--rtol`/`--atol`, 1 on a mismatch, 2 on bad input.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import OptcError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _session(path: str):
    import onnxruntime as ort

    from ..ir import load

    load(path)  # the same one-line errors as every other subcommand for a bad file, before onnxruntime sees it
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Compare the models as written: onnxruntime's own graph optimizations would blur the comparison.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptcError(f"onnxruntime cannot load '{path}': {msg}") from None


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


def random_inputs(session, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for a session's inputs: floats in [-1, 1), integers in [0, 4), random booleans."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for inp in session.get_inputs():
        dtype = _ORT_TYPES.get(inp.type)
        if dtype is None:
            raise OptcError(f"input '{inp.name}' has type {inp.type}; give its values with --inputs")
        shape = []
        for d in inp.shape:
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                shape.append(1)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.uniform(-1, 1, size=shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[inp.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def compare(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> tuple[bool, float, float, str]:
    """(equal, max abs error, max rel error, note) of two outputs."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False, float("inf"), float("inf"), f"shape {a.shape} vs {b.shape}"
    if a.dtype != b.dtype:
        return False, float("inf"), float("inf"), f"dtype {a.dtype} vs {b.dtype}"
    if a.size == 0:
        return True, 0.0, 0.0, ""
    if a.dtype == object or a.dtype.kind in "USb":
        eq = bool(np.array_equal(a, b))
        return eq, 0.0 if eq else 1.0, 0.0 if eq else 1.0, ""
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    both_nan = np.isnan(af) & np.isnan(bf)
    same_inf = np.isinf(af) & (af == bf)
    ok = both_nan | same_inf
    diff = np.where(ok, 0.0, np.abs(af - bf))
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(np.abs(bf), np.finfo(np.float64).tiny)
    rel = np.where(diff == 0, 0.0, rel)
    equal = bool(np.all(ok | (diff <= atol + rtol * np.abs(bf))))
    return equal, float(diff.max()), float(rel.max()), ""


def run(args) -> int:
    if args.rtol < 0 or args.atol < 0:
        raise OptcError("--rtol and --atol must not be negative")
    dims = parse_dims(args.dim)
    sa = _session(args.model_a)
    sb = _session(args.model_b)
    names_a = [i.name for i in sa.get_inputs()]
    names_b = [i.name for i in sb.get_inputs()]
    if sorted(names_a) != sorted(names_b):
        raise OptcError(f"the models have different inputs: {names_a} vs {names_b}")
    if args.inputs:
        if not os.path.exists(args.inputs):
            raise OptcError(f"cannot read '{args.inputs}': no such file")
        try:
            with np.load(args.inputs, allow_pickle=False) as data:
                feeds = {k: data[k] for k in data.files}
        except Exception as exc:
            raise OptcError(f"cannot read '{args.inputs}' as an .npz file: {exc}") from None
        missing = [n for n in names_a if n not in feeds]
        if missing:
            raise OptcError(f"'{args.inputs}' has no value for input '{missing[0]}'")
        feeds = {n: feeds[n] for n in names_a}
    else:
        feeds = random_inputs(sa, dims, args.seed)
    try:
        outs_a = sa.run(None, feeds)
        outs_b = sb.run(None, feeds)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptcError(f"onnxruntime failed to run the models: {msg}") from None
    oa = [o.name for o in sa.get_outputs()]
    ob = [o.name for o in sb.get_outputs()]
    if len(oa) != len(ob):
        print(f"mismatch: {len(oa)} outputs vs {len(ob)} outputs")
        return 1
    by_name = sorted(oa) == sorted(ob)
    all_ok = True
    width = max(len(n) for n in oa) if oa else 6
    print(f"{'output':<{width}}  {'max abs err':>12}  {'max rel err':>12}  result")
    for i, name in enumerate(oa):
        j = ob.index(name) if by_name else i
        ok, abs_err, rel_err, note = compare(outs_a[i], outs_b[j], args.rtol, args.atol)
        all_ok &= ok
        label = name if by_name else f"{name} / {ob[j]}"
        print(f"{label:<{width}}  {abs_err:12.4g}  {rel_err:12.4g}  {'ok' if ok else 'MISMATCH'}"
              + (f" ({note})" if note else ""))
    print("equal" if all_ok else f"mismatch (rtol={args.rtol}, atol={args.atol})",
          file=sys.stdout)
    return 0 if all_ok else 1


def register(sub) -> None:
    p = sub.add_parser("verify", help="check two models compute the same outputs (onnxruntime)",
                       description="Run two models on onnxruntime with the same inputs and compare every output. "
                       "Exit 0 when equal within tolerances, 1 on a mismatch, 2 on bad input.")
    p.add_argument("model_a", metavar="a.onnx")
    p.add_argument("model_b", metavar="b.onnx")
    p.add_argument("--inputs", metavar="X.npz", help="input values by input name (default: random)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--dim", action="append", metavar="NAME=VALUE", help="value of a symbolic dim for random "
                   "inputs (default 1; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=run)
