"""Shrink a failing model to a small subgraph that still fails (`optc debug reduce`, as Polygraphy's
`debug reduce`).

A candidate is a set of the model's nodes (in topological order) cut out as a model of its own: values it
reads that no node of the set makes become graph inputs, fed with the values the full model computes for them
on the original inputs (onnxruntime); values it makes that no node of the set reads, and the model's own
outputs, become graph outputs. The search: bisect the end (the shortest failing prefix), then the start (the
shortest failing suffix of that prefix), then drop single nodes while the rest still fails.

An oracle says whether a candidate fails: `against_oracle` (onnxruntime vs optc's optimized model, optc's TVM
build or the onnx reference evaluator, beyond a tolerance), or `command_oracle` (a command; exit 0 = good).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..errors import OptcError
from ..ortsession import first_line, session
from ..tools.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare_outputs

AGAINST = ("optimized", "tvm", "reference")
Oracle = Callable[[onnx.ModelProto, dict[str, np.ndarray]], bool]  # True: the candidate fails

__all__ = ["AGAINST", "OracleError", "ReduceResult", "against_oracle", "command_oracle", "reduce_model"]


class OracleError(OptcError):
    """The oracle itself cannot work (a --check-cmd that cannot be started): the search stops."""


def _run_ort(model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`model` (an onnx.ModelProto or an optc Model) on onnxruntime as written; OptcError when it cannot run."""
    sess = session(model, optimize=False, label="the candidate")
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(None, dict(feeds)), strict=True))
    except Exception as exc:
        raise OptcError(f"onnxruntime cannot run the candidate: {first_line(exc)}") from None


def against_oracle(against: str = "optimized", *, passes: str | None = None, rtol: float = DEFAULT_RTOL,
                   atol: float = DEFAULT_ATOL) -> Oracle:
    """A candidate fails when its outputs on onnxruntime and on `against` differ beyond |a - b| <= atol + rtol *
    max(|a|, |b|), or when `against` cannot run it: "optimized" (optc's -O2, or the pipeline `passes`, then
    onnxruntime), "tvm" (compiled by optc for the CPU) or "reference" (onnx's reference evaluator)."""
    if against not in AGAINST:
        raise OptcError(f"unknown --against '{against}' (known: {', '.join(AGAINST)})")

    def other(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..ir import from_onnx

        if against == "reference":
            from onnx.reference import ReferenceEvaluator

            names = [o.name for o in proto.graph.output]
            return dict(zip(names, ReferenceEvaluator(proto).run(None, feeds), strict=True))
        model = from_onnx(proto)
        if against == "tvm":
            from ..codegen.compile import compile as compile_model

            return compile_model(model, "cpu").run(feeds)
        from ..rewrites import optimize

        return _run_ort(optimize(model, passes=passes), feeds)

    def fails(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
        expected = _run_ort(proto, feeds)
        try:
            got = other(proto, feeds)
        except Exception:  # (a crash of the side under test is a failure too)
            return True
        return not compare_outputs(expected, got, rtol, atol).equal

    return fails


def command_oracle(command: str, timeout: float | None = None) -> Oracle:
    """A candidate fails when `command` exits non-zero. `{model}` in it is replaced by the path of the candidate
    (`model.onnx`) and `{inputs}` by the path of an .npz file with its inputs (the values the full model computes
    there), `inputs.npz` in the same directory as `model.onnx`; the command must hold at least one of the two.
    The command is split as a shell would (shlex) and run without a shell. OptcError when it holds neither."""
    if "{model}" not in command and "{inputs}" not in command:
        raise OptcError("--check-cmd needs '{model}' (the candidate's .onnx path) or '{inputs}' (its inputs .npz, "
                        "beside it as model.onnx): without either the command cannot see the candidate")
    argv = shlex.split(command)

    def fails(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
        with tempfile.TemporaryDirectory(prefix="optc-reduce-") as tmp:
            path, inputs = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "inputs.npz")
            onnx.save(proto, path)
            np.savez(inputs, **feeds)
            args = [a.replace("{model}", path).replace("{inputs}", inputs) for a in argv]
            try:
                done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OracleError(f"--check-cmd cannot run: {first_line(exc)}") from None
            return done.returncode != 0

    return fails


@dataclass
class ReduceResult:
    """The reduced model (valid ONNX, fails the oracle), its inputs (`feeds`), node counts and the number of
    candidates checked; `nodes`: (name, op type) of the nodes kept."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray] = field(repr=False)
    nodes_before: int
    nodes_after: int
    checks: int
    nodes: list[tuple[str, str]]

    def to_json(self) -> dict:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "checks": self.checks,
                "nodes": [{"name": n, "op_type": t} for n, t in self.nodes],
                "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in self.feeds.items()}}


class _Cutter:
    """Builds candidate models from sets of node indices of `proto`, with the values of the full model."""

    def __init__(self, proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]):
        from .compare import run_with_all_outputs

        self.proto = proto
        self.nodes = list(proto.graph.node)
        self.initializers = {t.name: t for t in proto.graph.initializer}
        self.outputs = [o.name for o in proto.graph.output]
        try:
            computed = run_with_all_outputs(proto, feeds, "onnxruntime")
        except OptcError:
            raise
        except Exception as exc:
            raise OptcError(f"onnxruntime cannot run the model: {first_line(exc)}") from None
        self.values = {**dict(feeds), **computed}

    def build(self, subset: list[int]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
        """The candidate of the nodes `subset` (indices, ascending) and its feeds; None when it cannot be cut
        there (a value of unknown type at the border, no output, or onnx's checker refuses it)."""
        nodes = [self.nodes[i] for i in subset]
        produced = {o for n in nodes for o in n.output if o}
        read = [i for n in nodes for i in n.input if i]
        inputs, inits = [], []
        for name in dict.fromkeys(read):
            if name in produced:
                continue
            if name in self.initializers:
                inits.append(self.initializers[name])
            elif name in self.values:
                inputs.append(name)
            else:
                return None
        read_set = set(read)
        outs = [o for n in nodes for o in n.output if o and (o not in read_set or o in self.outputs)]
        outs = [o for o in outs if o in self.values]
        if not outs:
            return None
        vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(self.values[n].dtype),
                                            list(self.values[n].shape)) for n in [*inputs, *outs]]
        graph = helper.make_graph(nodes, f"{self.proto.graph.name}_reduced", vi[:len(inputs)], vi[len(inputs):],
                                  inits)
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import),
                                  ir_version=self.proto.ir_version)
        model.functions.extend(self.proto.functions)
        try:
            onnx.checker.check_model(model)
        except Exception:
            return None
        return model, {n: self.values[n] for n in inputs}


def reduce_model(proto: onnx.ModelProto, fails: Oracle, feeds: Mapping[str, np.ndarray]) -> ReduceResult:
    """The smallest subgraph of `proto` (an ONNX model whose main graph is in topological order) found by the
    search in the module docstring for which `fails(candidate, its feeds)` is true. `feeds`: the model's inputs.
    Raises OptcError when the model itself does not fail, or cannot run on onnxruntime."""
    cutter = _Cutter(proto, feeds)
    n = len(cutter.nodes)
    checks = 0
    cache: dict[tuple[int, ...], bool] = {}

    def check(subset: list[int]) -> bool:
        nonlocal checks
        key = tuple(subset)
        if key not in cache:
            built = cutter.build(subset) if subset else None
            if built is None:
                cache[key] = False
            else:
                checks += 1
                try:
                    cache[key] = fails(*built)
                except OracleError:
                    raise
                except OptcError:
                    cache[key] = False  # (a candidate onnxruntime cannot run is not a failing one)
        return cache[key]

    if not fails(proto, dict(feeds)):
        raise OptcError("the model passes the check: there is nothing to reduce")
    checks += 1
    lo, hi = -1, n - 1  # the shortest failing prefix ends at `hi`
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if check(list(range(mid + 1))) else (mid, hi)
    end = hi
    lo, hi = 0, end + 1  # the shortest failing suffix of that prefix starts at `lo`
    if check(list(range(0, end + 1))):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if check(list(range(mid, end + 1))) else (lo, mid)
        subset = list(range(lo, end + 1))
    else:  # (the whole model fails but no prefix does: keep it all)
        subset = list(range(n))
    changed = True
    while changed and len(subset) > 1:
        changed = False
        for i in list(reversed(subset)):
            cand = [j for j in subset if j != i]
            if cand and check(cand):
                subset, changed = cand, True
    built = cutter.build(subset) if len(subset) < n else (proto, dict(feeds))
    model, cut_feeds = built
    return ReduceResult(model, cut_feeds, n, len(subset), checks,
                        [(cutter.nodes[i].name, cutter.nodes[i].op_type) for i in subset])
