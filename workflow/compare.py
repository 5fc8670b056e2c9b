"""Compare two ways of running a model, output by output or tensor by tensor (`optc compare`, `optc.compare`).

An *endpoint* is one way to run a model:

- ``model.onnx`` — the model on onnxruntime (graph optimizations off: the model as written);
- ``model.onnx@RUNTIME`` — the model on another runtime: ``onnxruntime``, ``reference`` (onnx's reference
  evaluator), ``optimized`` (optimized by optc at -O2, then run on onnxruntime) or ``tvm`` (compiled by optc for
  the CPU);
- ``RUNTIME`` alone — the *other* endpoint's model on that runtime (``compare m.onnx reference``);
- ``lib.so`` — an artifact of ``optc compile`` (run with ``optc.runtime``).

Both endpoints get the same inputs (an .npz file, the samples of a data set, or random arrays, as
``optc verify``); elements are compared by ``optc.tools.compare.compare`` (symmetric |a - b| <= atol +
rtol * max(|a|, |b|), NaN only equals NaN, ...).

``mark_all``: every intermediate tensor of both models is made a graph output; tensors are paired by name, by
the provenance optc's rewrites leave (``node.meta["from"]``: the user's nodes a fused node stands for, when the
optimized model is in memory) and by the rewriter's renaming (``NAME_k`` stands for ``NAME`` when only ``NAME``
is gone), and compared in the first model's topological order. The first node whose output differs beyond the
tolerance is reported with its op type, the state of its inputs (all matching: this node is where the models
part) and its worst element. Compiled code (artifacts, ``tvm``) has no intermediate tensors to mark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..errors import OptcError
from ..inputs import InputSpec
from ..ortsession import first_line, session
from ..tools.compare import DEFAULT_ATOL, DEFAULT_RTOL, Comparison, OutputComparison, compare, compare_outputs
from .verify import check_tolerances, is_artifact, merge_specs, open_side, prepare_feeds, read_inputs

RUNTIMES = ("onnxruntime", "reference", "optimized", "tvm")

__all__ = ["RUNTIMES", "ComparisonReport", "Divergence", "Endpoint", "compare_models", "open_endpoint",
           "run_with_all_outputs"]


# -- endpoints -------------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One way to run a model. `path` is how messages name it (what the user wrote); `runtime` one of RUNTIMES
    or "artifact"; `proto` the ONNX model that runs (None for compiled code); `ir` optc's IR of it (the nodes
    of a model rewritten in this process keep `meta["from"]`); `inputs`/`outputs` the signature."""

    path: str
    runtime: str
    inputs: list[InputSpec]
    outputs: list[str]
    proto: onnx.ModelProto | None = field(default=None, repr=False)
    ir: Any = field(default=None, repr=False)
    _run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return f"{self.path} ({self.runtime})"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs by name for `feeds` (OptcError, one line, when the runtime fails)."""
        feeds = {s.name: feeds[s.name] for s in self.inputs}
        try:
            return self._run(feeds)
        except OptcError as exc:
            raise OptcError(f"'{self.path}': {exc}") from None
        except Exception as exc:
            raise OptcError(f"{self.runtime} failed to run '{self.path}': {first_line(exc)}") from None

    def run_all(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor the model computes (node outputs) by name, graph outputs included."""
        if self.proto is None:
            raise OptcError(f"--mark-all cannot look inside '{self.path}': compiled code ({self.runtime}) has no "
                            "intermediate tensors to mark; compare its model instead")
        feeds = {s.name: feeds[s.name] for s in self.inputs}
        try:
            return run_with_all_outputs(self.proto, feeds, self.runtime, self.ir)
        except OptcError as exc:
            raise OptcError(f"'{self.path}': {exc}") from None
        except Exception as exc:
            raise OptcError(f"{self.runtime} failed to run '{self.path}' with every tensor marked: "
                            f"{first_line(exc)}") from None


def _ort_runner(proto: onnx.ModelProto, label: str) -> Callable:
    sess = session(proto, optimize=False, label=label)
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def _reference_runner(proto: onnx.ModelProto, label: str) -> Callable:
    from onnx.reference import ReferenceEvaluator

    try:
        ev = ReferenceEvaluator(proto)
    except Exception as exc:
        raise OptcError(f"the onnx reference evaluator cannot load '{label}': {first_line(exc)}") from None
    names = [o.name for o in proto.graph.output]
    return lambda feeds: dict(zip(names, ev.run(None, feeds), strict=True))


def _model_endpoint(label: str, model, runtime: str) -> Endpoint:
    """`model` (an optc Model) run by `runtime`."""
    from ..ir import to_onnx
    from ..quantization.data import model_input_specs

    specs = model_input_specs(model)
    outputs = [v.name for v in model.graph.outputs]
    if runtime == "tvm":
        from ..codegen.compile import compile as compile_model

        module = compile_model(model, "cpu")
        return Endpoint(label, runtime, specs, outputs, None, None, module.run)
    if runtime == "optimized":
        from ..rewrites import optimize

        model = optimize(model)
        outputs = [v.name for v in model.graph.outputs]
    proto = to_onnx(model)
    runner = _reference_runner(proto, label) if runtime == "reference" else _ort_runner(proto, label)
    return Endpoint(label, runtime, specs, outputs, proto, model, runner)


def _artifact_endpoint(path: str) -> Endpoint:
    side = open_side(path)
    return Endpoint(path, "artifact", list(side.inputs), list(side.outputs), None, None, side.run)


def _split(spec: str) -> tuple[str | None, str | None]:
    """(path, runtime) of an endpoint spec: "m.onnx" -> (m.onnx, None), "m.onnx@tvm" -> (m.onnx, tvm),
    "tvm" -> (None, tvm)."""
    if spec in RUNTIMES and not os.path.exists(spec):
        return None, spec
    path, at, runtime = spec.rpartition("@")
    if at and path and not os.path.exists(spec):
        if runtime not in RUNTIMES:
            raise OptcError(f"unknown runtime '{runtime}' in '{spec}' (known: {', '.join(RUNTIMES)})")
        return path, runtime
    return spec, None


def open_endpoint(spec: Any, other: Any = None) -> Endpoint:
    """An endpoint from what the user gave: a spec string (see the module docstring), an optc `Model` or an
    `onnx.ModelProto` (run on onnxruntime). A bare runtime name takes the model of `other`. OptcError for an
    unknown runtime name, a missing or invalid file, or a runtime name with no model beside it."""
    from ..ir import Model, from_onnx, load

    if isinstance(spec, Model):
        return _model_endpoint("the model", spec, "onnxruntime")
    if isinstance(spec, onnx.ModelProto):
        return _model_endpoint("the model", from_onnx(spec), "onnxruntime")
    if not isinstance(spec, str | os.PathLike):
        raise OptcError(f"compare takes a path, a runtime name, a Model or a ModelProto, not {type(spec).__name__}")
    path, runtime = _split(os.fspath(spec))
    if path is None:
        base = other
        if isinstance(base, str | os.PathLike):
            base, _ = _split(os.fspath(base))
            if base is None:
                raise OptcError(f"'{spec}' and '{other}' are both runtime names; one side must name a model")
            if is_artifact(base):
                raise OptcError(f"the runtime '{runtime}' needs an ONNX model on the other side, not the artifact "
                                f"'{base}'")
        if base is None:
            raise OptcError(f"the runtime '{runtime}' needs a model on the other side")
        model = base if isinstance(base, Model) else from_onnx(base) if isinstance(base, onnx.ModelProto) \
            else load(base)
        label = f"{base}@{runtime}" if isinstance(base, str) else f"the model@{runtime}"
        return _model_endpoint(label, model, runtime)
    if runtime is None and is_artifact(path):
        return _artifact_endpoint(path)
    if runtime is not None and is_artifact(path):
        raise OptcError(f"'{path}' is a compiled artifact; '@{runtime}' applies to ONNX models only")
    return _model_endpoint(os.fspath(spec), load(path), runtime or "onnxruntime")


# -- every tensor as an output ------------------------------------------------------------------------------------


def _tensor_types(proto: onnx.ModelProto, ir) -> dict[str, int]:
    """Element type (onnx.TensorProto enum) of every tensor the model names: from onnx's shape inference, then
    from optc's IR (which knows the types of optc's own ops)."""
    types: dict[str, int] = {}
    if ir is not None:
        for node in ir.graph:
            for v in node.outputs:
                if v is not None and v.name and v.dtype is not None:
                    types[v.name] = int(v.dtype)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # (a model onnx cannot infer still runs; its tensors of unknown type are not marked)
        inferred = proto
    g = inferred.graph
    for vi in [*g.value_info, *g.output, *g.input]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def run_with_all_outputs(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], runtime: str,
                         ir=None) -> dict[str, np.ndarray]:
    """Run `proto` on `runtime` ("reference" or onnxruntime) and return every node output of its main graph whose
    element type is known, by name (graph outputs included). OptcError when the runtime cannot load it."""
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(proto)
        produced = {o for n in proto.graph.node for o in n.output if o}
        results = ev.run(None, dict(feeds), intermediate=True)
        return {k: np.asarray(v) for k, v in results.items() if k in produced}
    types = _tensor_types(proto, ir)
    marked = onnx.ModelProto()
    marked.CopyFrom(proto)
    have = {o.name for o in marked.graph.output}
    for node in marked.graph.node:
        for name in node.output:
            if name and name not in have and name in types:
                marked.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                have.add(name)
    sess = session(marked, optimize=False, label="the model with every tensor marked")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, dict(feeds)), strict=True))


# -- pairing and walking ----------------------------------------------------------------------------------------


def _provenance(ir) -> dict[str, list[str]]:
    """Value name in an optimized model -> the names of the user's nodes its producer stands for."""
    if ir is None:
        return {}
    out: dict[str, list[str]] = {}
    for node in ir.graph:
        origin = (node.meta or {}).get("from")
        if origin:
            for v in node.outputs:
                if v is not None and v.name:
                    out[v.name] = list(origin)
    return out


def _pair_values(proto_a: onnx.ModelProto, values_a: Mapping, values_b: Mapping, ir_b) -> dict[str, tuple[str, str]]:
    """Tensor of a -> (tensor of b, how it was paired: "name", "provenance" or "renamed")."""
    pairs: dict[str, tuple[str, str]] = {n: (n, "name") for n in values_a if n in values_b}
    # provenance: a node of b made from user nodes [..., last] stands for the outputs of `last`
    position = {n.name: i for i, n in enumerate(proto_a.graph.node) if n.name}
    outputs_of = {n.name: [o for o in n.output if o] for n in proto_a.graph.node if n.name}
    taken = {b for b, _ in pairs.values()}
    for b_name, origin in _provenance(ir_b).items():
        known = [o for o in origin if o in position]
        if b_name in taken or b_name not in values_b or not known:
            continue
        last = max(known, key=position.__getitem__)
        outs = outputs_of[last]
        if len(outs) == 1 and outs[0] in values_a and outs[0] not in pairs:
            pairs[outs[0]] = (b_name, "provenance")
            taken.add(b_name)
    # the rewriter names a replacement NAME_k while NAME still exists; NAME then disappears
    for a_name in values_a:
        if a_name in pairs:
            continue
        for k in range(1, 10):
            cand = f"{a_name}_{k}"
            if cand in values_b and cand not in values_a and cand not in taken:
                pairs[a_name] = (cand, "renamed")
                taken.add(cand)
                break
    return pairs


@dataclass
class TensorResult:
    """One tensor of a compared with its counterpart in b."""

    name: str
    name_b: str
    paired_by: str
    node: str
    op_type: str
    op_type_b: str  # the op that makes `name_b` in b
    comparison: OutputComparison

    def to_json(self) -> dict:
        return {"name": self.name, "name_b": self.name_b, "paired_by": self.paired_by, "node": self.node,
                "op_type": self.op_type, "op_type_b": self.op_type_b, **{k: v for k, v in self.comparison.to_json().items() if k != "name"}}


@dataclass
class Divergence:
    """The first node of a (topological order) with an output that differs beyond the tolerance.

    `inputs`: per input of the node, (name, state) with state "match", "mismatch", "graph input", "constant" or
    "not compared" (no counterpart in b). `culprit`: every computed input matched, so the difference is made by
    this node. `producers`: for inputs not compared, the node that made them (where to look next)."""

    node: str
    op_type: str
    output: TensorResult
    inputs: list[tuple[str, str]]
    culprit: bool
    producers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "culprit": self.culprit,
                "inputs": [{"name": n, "state": s} for n, s in self.inputs], "producers": dict(self.producers),
                "output": self.output.to_json()}

    def describe(self) -> str:
        """Two or three lines: the node, its inputs, the worst element."""
        c = self.output.comparison
        # (a shape mismatch leaves the counts and errors None; strings leave the errors None: say what is known)
        facts = [f"{c.mismatched}/{c.size} elements differ"] if c.mismatched is not None else []
        if c.max_abs is not None:
            facts.append(f"max abs err {c.max_abs:.4g}")
        if c.worst_index is not None and c.worst_text:
            facts.append(f"worst at [{', '.join(map(str, c.worst_index))}]: {c.worst_text[0]} vs {c.worst_text[1]}")
        facts.extend(c.notes)
        ins = ", ".join(f"{n} {s}" for n, s in self.inputs) or "none"
        verdict = ("its inputs match: this node is where the models part" if self.culprit else
                   "not every input could be compared: the difference may start at "
                   + ", ".join(f"{p} (making {i})" for i, p in self.producers.items()))
        in_b = f"; made by {self.output.op_type_b} in b" if self.output.op_type_b != self.op_type else ""
        return (f"first diverging node: {self.node} ({self.op_type}{in_b}), output {self.output.name}"
                + (f" (b: {self.output.name_b})" if self.output.name_b != self.output.name else "")
                + f": {'; '.join(facts) or 'values differ'}\n"
                f"  inputs: {ins}\n  {verdict}")


@dataclass
class MarkAll:
    """Every intermediate tensor compared: `tensors` in a's topological order, `not_compared` the names of
    a's tensors without a counterpart in b, `first` the first divergence (None when every pair matches)."""

    tensors: list[TensorResult]
    not_compared: list[str]
    first: Divergence | None

    def to_json(self) -> dict:
        return {"compared": len(self.tensors), "mismatched": sum(not t.comparison.equal for t in self.tensors),
                "not_compared": list(self.not_compared),
                "first_divergence": self.first.to_json() if self.first else None,
                "tensors": [t.to_json() for t in self.tensors]}


def _same_as_input(node: onnx.NodeProto, out: str, values: Mapping[str, np.ndarray],
                   state: Mapping[str, str]) -> str | None:
    """The input of `node` whose values `out` repeats exactly (an Identity, a same-type Cast, a no-op Reshape:
    what optimizers remove, taking the name with them), when that input has a state to inherit; else None."""
    if out not in values:
        return None
    for name in node.input:
        if name in state and name in values and values[name].shape == values[out].shape \
                and values[name].dtype == values[out].dtype and np.array_equal(values[name], values[out], equal_nan=
                                                                            values[out].dtype.kind in "fc"):
            return name
    return None


def _walk(a: Endpoint, b: Endpoint, feeds: Mapping[str, np.ndarray], rtol: float, atol: float,
          strict_zeros: bool) -> tuple[MarkAll, dict[str, np.ndarray], dict[str, np.ndarray]]:
    values_a = a.run_all(feeds)
    values_b = b.run_all(feeds)
    pairs = _pair_values(a.proto, values_a, values_b, b.ir)
    g = a.proto.graph
    graph_inputs = {i.name for i in g.input} - {t.name for t in g.initializer}
    producer: dict[str, tuple[str, str]] = {}
    state: dict[str, str] = dict.fromkeys(graph_inputs, "graph input")
    op_b = {o: n.op_type for n in b.proto.graph.node for o in n.output}
    alias: dict[str, str] = {}  # a tensor not compared -> the not-compared input it repeats
    tensors: list[TensorResult] = []
    not_compared: list[str] = []
    first: Divergence | None = None
    for index, node in enumerate(g.node):
        label = node.name or f"#{index} {node.op_type}"
        for out in node.output:
            if not out:
                continue
            producer[out] = (label, node.op_type)
            if out not in pairs or out not in values_a:
                same = _same_as_input(node, out, values_a, state)
                if same and state[same] != "not compared":
                    state[out] = f"{state[same].split(' (')[0]} (the values of {same})"
                else:
                    state[out] = "not compared"
                    if same:
                        alias[out] = same
                not_compared.append(out)
                continue
            name_b, how = pairs[out]
            c = compare(values_a[out], values_b[name_b], rtol, atol, strict_zeros=strict_zeros, name=out)
            result = TensorResult(out, name_b, how, label, node.op_type, op_b.get(name_b, ""), c)
            tensors.append(result)
            state[out] = "match" if c.equal else "mismatch"
            if not c.equal and first is None:
                inputs = []
                for i in node.input:
                    if not i:
                        continue
                    inputs.append((i, state.get(i, "constant")))
                unknown = {}
                for i, s in inputs:
                    if s == "not compared":
                        root = i
                        while root in alias:  # (through the no-ops that only repeat it)
                            root = alias[root]
                        unknown[root] = producer[root][0] + f" ({producer[root][1]})"
                culprit = all(s.split(" (")[0] in ("match", "graph input", "constant") for _, s in inputs)
                first = Divergence(label, node.op_type, result, inputs, culprit, unknown)
    return MarkAll(tensors, not_compared, first), values_a, values_b


# -- the comparison ---------------------------------------------------------------------------------------------


@dataclass
class ComparisonReport:
    """What `compare` found. `comparison`: the graph outputs of the sample shown (the first that mismatches,
    else the first); `sample`/`samples`: its index and how many were compared; `inputs`: where the inputs came
    from; `mark_all`: every tensor of that sample (None without mark_all)."""

    a: Endpoint
    b: Endpoint
    comparison: Comparison
    inputs: dict
    samples: int = 1
    sample: int = 0
    mismatched_samples: int = 0
    mark_all: MarkAll | None = None
    feeds: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    outputs_a: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    outputs_b: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def equal(self) -> bool:
        return self.mismatched_samples == 0 and (self.mark_all is None or self.mark_all.first is None)

    def to_json(self) -> dict:
        return {"a": {"path": self.a.path, "runtime": self.a.runtime},
                "b": {"path": self.b.path, "runtime": self.b.runtime},
                "inputs": self.inputs, "samples": self.samples, "sample": self.sample,
                "mismatched_samples": self.mismatched_samples, **self.comparison.to_json(), "equal": self.equal,
                **({"mark_all": self.mark_all.to_json()} if self.mark_all is not None else {})}


def _samples(a: Endpoint, b: Endpoint, inputs, data: str | None, dims, seed: int
             ) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """(feeds, where they came from) per sample: one for `inputs` (or random ones), one per batch of `data`
    (read one at a time)."""
    from ..quantization.data import Dataset

    if inputs is not None and data is not None:
        raise OptcError("give --inputs or --data, not both")
    if data is None:
        arrays, source = read_inputs(inputs)
        yield prepare_feeds(a, b, arrays, source, dims, seed)
        return
    specs = merge_specs(a, b, dims)
    dataset = Dataset(data, role="data")
    dataset.check(specs)
    fixed = specs[0].shape[0] if specs and specs[0].shape and isinstance(specs[0].shape[0], int) else None
    for batch in dataset.batches(fixed):
        yield prepare_feeds(a, b, batch, data, dims, seed)


def compare_models(a: Any, b: Any, inputs: Any = None, *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                   mark_all: bool = False, data: str | None = None, dims: Mapping[str, int] | None = None,
                   seed: int = 0, strict_zeros: bool = False) -> ComparisonReport:
    """Run `a` and `b` on the same inputs and compare (see the module docstring for what `a` and `b` may be).

    `inputs`: None (random, `seed`; symbolic dims from `dims`, else 1), an .npz path, or `{name: array}`;
    `data`: an .npz file or a directory of them, every file one batch. Tolerances: |a - b| <= atol + rtol *
    max(|a|, |b|). `mark_all`: also compare every intermediate tensor (see `MarkAll`, `Divergence`).
    Raises OptcError (one line) for unreadable inputs, inputs that do not fit the models, an unknown runtime
    name, a model that fails to run, and mark_all on compiled code."""
    check_tolerances(rtol, atol)
    if isinstance(a, str) and a in RUNTIMES and isinstance(b, str) and b in RUNTIMES:
        raise OptcError(f"'{a}' and '{b}' are both runtime names; one side must name a model")
    if mark_all:
        for spec in (a, b):
            if isinstance(spec, str | os.PathLike):
                path, runtime = _split(os.fspath(spec))
                if runtime == "tvm" or (runtime is None and is_artifact(path)):
                    raise OptcError(f"--mark-all cannot look inside '{spec}': compiled code has no intermediate "
                                    "tensors to mark; compare its ONNX model instead")
    ea = open_endpoint(a, b)
    eb = open_endpoint(b, a)
    shown = None
    mismatched = count = 0
    for feeds, info in _samples(ea, eb, inputs, data, dims, seed):
        outs_a, outs_b = ea.run(feeds), eb.run(feeds)
        comp = compare_outputs(outs_a, outs_b, rtol, atol, strict_zeros=strict_zeros)
        mismatched += not comp.equal
        if shown is None or (not comp.equal and mismatched == 1):
            shown = (count, feeds, comp, outs_a, outs_b, info)
        count += 1
    i, feeds, comp, outs_a, outs_b, info = shown
    if data is not None:
        info = {**info, "batches": count}
    report = ComparisonReport(ea, eb, comp, info, count, i, mismatched, None, feeds, outs_a, outs_b)
    if mark_all:
        report.mark_all, all_a, all_b = _walk(ea, eb, feeds, rtol, atol, strict_zeros)
        report.outputs_a, report.outputs_b = {**all_a, **outs_a}, {**all_b, **outs_b}
    return report
