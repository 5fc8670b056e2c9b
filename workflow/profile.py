"""Profile a model: the time of every op (onnxruntime's profiler) or of every compiled kernel (an instrument on
TVM's Relax VM), grouped by op type and by node, with each one's share of the total and its calls.

One service for `optc profile` and `optc auto`. Warm-up runs are excluded. Inputs are the caller's, or random
ones with the model's shapes and dtypes (`optc.inputs.random_inputs`; symbolic dims are 1).

TVM 0.27 has no VM profiler of its own (`vm.profile` is gone); the VM's instrument hook is called before and
after each call instruction, so each kernel (and each VM builtin: allocation, shape checks) is timed with the
host clock. The hook itself costs about a microsecond a call, so tiny kernels read a little slow.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import OptcError
from ..inputs import InputSpec, random_inputs, session_input_specs
from ..ortsession import first_line, session

__all__ = ["Profile", "ProfileEntry", "check_artifact_source", "profile"]


@dataclass
class ProfileEntry:
    """One op type or one node (a kernel for a compiled artifact): `total_us` is its time in microseconds summed
    over its `calls` in all measured runs; `share` its fraction (0..1) of the profile's `total_us`."""

    name: str
    op_type: str
    total_us: float
    calls: int
    share: float

    @property
    def mean_us(self) -> float:
        """Microseconds per call."""
        return self.total_us / self.calls if self.calls else 0.0


@dataclass
class Profile:
    """Where the time of `runs` measured runs of a model went.

    `backend`: "onnxruntime" or "tvm-<target>". `total_us`: the sum of every timed op or kernel over all
    measured runs (microseconds); `wall_us`: the mean wall time of one run (onnxruntime's `model_run`, or the
    host clock around the VM call), which adds what is not an op (input copies, scheduling). `by_op_type` and
    `by_node`: entries sorted by time, largest first; their `total_us` add up to `total_us`.
    """

    model: str
    backend: str
    runs: int
    warmup: int
    threads: int | None
    total_us: float
    wall_us: float
    by_op_type: list[ProfileEntry] = field(default_factory=list)
    by_node: list[ProfileEntry] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-serializable dict: the fields above, entries with `mean_us` added."""
        out = {k: v for k, v in asdict(self).items() if k not in ("by_op_type", "by_node")}
        for key in ("by_op_type", "by_node"):
            out[key] = [dict(asdict(e), mean_us=e.mean_us) for e in getattr(self, key)]
        return out

    def table(self, top: int | None = None):
        """A `rich.table.Table` of the `top` nodes (all when None) and one of the op types, in a `rich` Group."""
        from rich.console import Group
        from rich.table import Table

        def make(title: str, entries: list[ProfileEntry], first: str, with_type: bool) -> Table:
            t = Table(title=title, title_justify="left")
            cols = (first, "op type") if with_type else (first,)
            for col in (*cols, "total ms", "share", "calls", "mean us"):
                t.add_column(col, justify="left" if col in cols else "right", overflow="fold")
            for e in entries[:top] if top else entries:
                t.add_row(*(e.name, e.op_type)[: len(cols)], f"{e.total_us / 1e3:.3f}", f"{100 * e.share:.1f}%",
                          str(e.calls), f"{e.mean_us:.1f}")
            return t

        def title(what: str, entries: list[ProfileEntry]) -> str:
            return what + (f" (top {top} of {len(entries)})" if top and top < len(entries) else "")

        per_run = self.total_us / self.runs / 1e3
        head = (f"{self.model} on {self.backend}: {self.runs} runs after {self.warmup} warm-up, "
                f"{per_run:.3f} ms of ops per run (wall {self.wall_us / 1e3:.3f} ms)")
        first = "node" if self.backend == "onnxruntime" else "kernel"
        return Group(head, make(title(f"by {first}", self.by_node), self.by_node, first, True),
                     make(title("by op type", self.by_op_type), self.by_op_type, "op type", False))


# -- grouping ---------------------------------------------------------------------------------------------------


def _group(samples: list[tuple[str, str, float]]) -> tuple[list[ProfileEntry], list[ProfileEntry], float]:
    """(name, op_type, microseconds) samples -> entries by op type, by node, and the total."""
    total = float(sum(us for _, _, us in samples))
    nodes: dict[str, list] = {}
    types: dict[str, list] = {}
    for name, op, us in samples:
        for key, table in ((name, nodes), (op, types)):
            entry = table.setdefault(key, [op, 0.0, 0])
            entry[1] += us
            entry[2] += 1

    def entries(table: dict[str, list], by_type: bool) -> list[ProfileEntry]:
        out = [ProfileEntry(k, k if by_type else op, us, calls, us / total if total else 0.0)
               for k, (op, us, calls) in table.items()]
        return sorted(out, key=lambda e: (-e.total_us, e.name))

    return entries(types, True), entries(nodes, False), total


# -- onnxruntime ------------------------------------------------------------------------------------------------


def _ort_samples(trace: list[dict], warmup: int) -> tuple[list[tuple[str, str, float]], list[float]]:
    """Node kernel events of the runs after the first `warmup` `model_run` events, and those runs' durations.

    onnxruntime writes one `Node` event `<node>_kernel_time` per op executed (args.op_name: the op type it ran,
    after its own fusions) and one `Session` event `model_run` per run; a node event belongs to the run whose
    time span holds its start."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = runs[warmup:]
    samples = []
    for e in trace:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if any(lo <= e["ts"] <= hi for lo, hi in kept):
            op = (e.get("args") or {}).get("op_name") or "?"
            samples.append((name[: -len("_kernel_time")], op, float(e["dur"])))
    return samples, [float(hi - lo) for lo, hi in kept]


def _profile_onnx(model, feeds, threads, runs, warmup, label, dims=None) -> Profile:
    with tempfile.TemporaryDirectory(prefix="optc-profile-") as tmp:
        sess = session(model, optimize=True, threads=threads, label=label,
                       profile_prefix=os.path.join(tmp, "ort"))
        feeds = _feeds(session_input_specs(sess), feeds, label, dims)
        try:
            for _ in range(warmup + runs):
                sess.run(None, feeds)
        except Exception as exc:
            raise OptcError(f"onnxruntime failed to run '{label}': {first_line(exc)}") from None
        path = sess.end_profiling()
        with open(path) as f:
            trace = json.load(f)
    samples, walls = _ort_samples(trace, warmup)
    by_type, by_node, total = _group(samples)
    return Profile(label, "onnxruntime", runs, warmup, threads, total, float(np.mean(walls)) if walls else 0.0,
                   by_type, by_node)


# -- TVM --------------------------------------------------------------------------------------------------------

_TRAILING_NUMBER = re.compile(r"(?<=[a-z])\d+$")


def kernel_op_type(symbol: str) -> str:
    """A kernel's op type from its symbol: TVM numbers the copies of a kernel (`conv2d1`, `add21`) and prefixes
    fused ones with `fused_`; both are dropped (`fused_conv2d1_add1_maximum11` -> `conv2d_add_maximum`). VM
    builtins (`vm.builtin.alloc_tensor`) keep their name."""
    if symbol.startswith("vm."):
        return symbol
    parts = symbol.removeprefix("fused_").split("_")
    return "_".join(_TRAILING_NUMBER.sub("", p) for p in parts)


def _profile_artifact(path: str, feeds, threads, runs, warmup, dims=None) -> Profile:
    from .verify import open_side

    side = open_side(path)  # checks the metadata, one-line errors for a bad artifact
    return _profile_loaded(side._module(), feeds, threads, runs, warmup, path, dims)


def _profile_loaded(module, feeds, threads, runs, warmup, label: str, dims=None) -> Profile:
    """Profile a loaded `optc.runtime.Module`."""
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts (first kernel run)
    specs = [InputSpec(s["name"], _np_dtype(s["dtype"]), tuple(s["shape"]), str(s["dtype"])) for s in module.inputs]
    feeds = _feeds(specs, feeds, label, dims)
    return _profile_module(module, feeds, runs, warmup, label, f"tvm-{module.target}", threads,
                           sync=module.target == "cuda")  # wait for each GPU kernel before reading the clock


def _np_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _profile_module(module, feeds, runs, warmup, label, backend, threads, sync) -> Profile:
    """Time every VM call instruction of `module` (an `optc.runtime.Module`) over `warmup + runs` runs."""
    device = module._device
    args, entry = module._prepare(feeds)
    function = module._functions[entry]
    samples: list[tuple[str, str, float]] = []
    started: list[tuple[str, float]] = []
    recording = [False]

    def instrument(func, symbol, before, ret, *rest):
        if not recording[0]:
            return 0
        if sync:
            device.sync()
        if before:
            started.append((symbol, time.perf_counter()))
        else:
            name, t0 = started.pop()
            samples.append((name, kernel_op_type(name), (time.perf_counter() - t0) * 1e6))
        return 0

    vm = module._vm
    vm.set_instrument(instrument)
    walls = []
    try:
        for i in range(warmup + runs):
            recording[0] = i >= warmup
            t0 = time.perf_counter()
            module._sync(function(*args))
            if i >= warmup:
                walls.append((time.perf_counter() - t0) * 1e6)
    except OptcError:
        raise
    except Exception as exc:
        raise OptcError(f"the artifact '{label}' failed to run: {first_line(exc, last=True)}") from None
    finally:
        vm.set_instrument(None)
    by_type, by_node, total = _group(samples)
    return Profile(label, backend, runs, warmup, threads, total, float(np.mean(walls)), by_type, by_node)


# -- the service ------------------------------------------------------------------------------------------------


def _feeds(specs: list[InputSpec], feeds, label: str, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The caller's feeds (a mapping or an .npz path) checked by name, or random ones for `specs` (symbolic dims
    from `dims`, else 1). Raises OptcError when both feeds and dims are given."""
    from ..inputs import check_input_names
    from ..quantization.data import read_npz

    if feeds is None:
        return random_inputs(specs, dims=dims)
    if dims:
        raise OptcError("give input arrays or symbolic dim values (--dim), not both")
    if isinstance(feeds, str | os.PathLike):
        feeds = read_npz(feeds, role="inputs")
    if not isinstance(feeds, Mapping):
        raise OptcError(f"inputs: expected a mapping {{name: array}} or an .npz path, got {type(feeds).__name__}")
    check_input_names(feeds, [s.name for s in specs], where=label)
    return {s.name: np.asarray(feeds[s.name]) for s in specs}


def check_artifact_source(model, artifact: str | os.PathLike) -> None:
    """Check that the artifact `artifact` (from `optc compile`) was built from `model` (an .onnx path or an optc
    `Model`) as far as the artifact's metadata tells: its inputs (the model's initializers excluded) and outputs
    must have the model's names, in order, and dtypes, and shapes of the same rank whose fixed dims agree (a
    symbolic dim may have been fixed by the compile). Raises OptcError (one line) for a missing or invalid model
    or artifact, and, naming what differs (the first four differences), when they do not agree."""
    from ..codegen.artifact import read_metadata
    from ..ir import DataType, TensorType, load

    model_label = os.fspath(model) if isinstance(model, str | os.PathLike) else "the model"
    if isinstance(model, str | os.PathLike):
        if not os.path.exists(model):
            raise OptcError(f"'{model_label}' does not exist")
        model = load(model)  # optc's one-line errors for a file that is not a valid model
    meta = read_metadata(artifact)

    def sig(v) -> tuple[str | None, list | None]:
        t = v.type
        if not isinstance(t, TensorType):
            return None, None
        dtype = None if t.dtype == DataType.UNDEFINED else t.dtype.name.lower()
        try:
            dtype = t.dtype.numpy().name if dtype else None
        except ValueError:  # (no numpy type: the artifact cannot have compiled it either)
            pass
        return dtype, None if t.shape is None else list(t.shape)

    g = model.graph
    ours = {"input": [(v.name, *sig(v)) for v in g.inputs if v.const is None and v.name not in g.initializers],
            "output": [(v.name, *sig(v)) for v in g.outputs]}
    differ: list[str] = []
    for what in ("input", "output"):
        mine = {name: (dtype, shape) for name, dtype, shape in ours[what]}
        lib = {str(e.get("name")): (e.get("dtype"), e.get("shape")) for e in meta.get(f"{what}s") or []}
        differ += [f"{what} '{n}' only in the model" for n in mine if n not in lib]
        differ += [f"{what} '{n}' only in the artifact" for n in lib if n not in mine]
        for name in (n for n in mine if n in lib):
            (dt_m, sh_m), (dt_l, sh_l) = mine[name], lib[name]
            if dt_m is not None and dt_m != dt_l:
                differ.append(f"{what} '{name}' is {dt_m} in the model, {dt_l} in the artifact")
            if sh_m is not None and isinstance(sh_l, list) and (len(sh_m) != len(sh_l) or any(
                    isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(sh_m, sh_l, strict=True))):
                differ.append(f"{what} '{name}' has shape {sh_m} in the model, {sh_l} in the artifact")
        if not differ and list(mine) != list(lib):
            differ.append(f"the {what}s are in another order")
    if differ:
        more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise OptcError(f"the artifact '{os.fspath(artifact)}' was not built from '{model_label}': "
                        + "; ".join(differ[:4]) + more)


def profile(model_or_artifact, inputs=None, *, threads: int | None = 1, runs: int = 10, top: int | None = None,
            warmup: int = 2, dims: Mapping[str, int] | None = None) -> Profile:
    """Profile one model: an .onnx path, an optc `Model` or `onnx.ModelProto` (onnxruntime's profiler, its graph
    optimizations on: the ops are the ones onnxruntime runs, e.g. `FusedConv`), or an artifact path from
    `optc compile` or an `optc.runtime.Module` (from `optc.compile` or `optc.runtime.load`: every kernel and VM
    builtin of the compiled library, timed through the VM's instrument).

    `inputs`: `{name: array}` or an .npz path; None: random inputs (floats in [-1, 1), symbolic dims from `dims`
    (``{"seq": 128}``), else 1; `dims` with `inputs` is an error).
    `threads`: intra-op threads (onnxruntime) or TVM's thread-pool size (TVM_NUM_THREADS, honoured when TVM's
    pool has not started yet in this process); None: the runtime's default. `runs` measured runs after `warmup`
    runs that are not counted. `top`: keep only the `top` largest nodes (the op types are always complete).
    Returns a `Profile` (times in microseconds). Raises OptcError (one line) for a bad model, artifact or
    inputs, or a non-positive `runs`/`threads`/`top`.
    """
    import onnx

    from .. import runtime
    from ..ir import Model
    from .verify import is_artifact

    for what, value, low in (("runs", runs, 1), ("threads", threads, 1), ("top", top, 1), ("warmup", warmup, 0)):
        if value is None and what in ("threads", "top"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OptcError(f"{what} must be an integer >= {low}, got {value!r}")
    if isinstance(model_or_artifact, str | os.PathLike):
        path = os.fspath(model_or_artifact)
        if not os.path.exists(path):
            raise OptcError(f"'{path}' does not exist")
        if is_artifact(path):
            result = _profile_artifact(path, inputs, threads, runs, warmup, dims)
        else:
            from ..ir import load

            load(path)  # optc's one-line errors for a file that is not a valid model
            result = _profile_onnx(path, inputs, threads, runs, warmup, path, dims)
    elif isinstance(model_or_artifact, Model | onnx.ModelProto):
        result = _profile_onnx(model_or_artifact, inputs, threads, runs, warmup, "in-memory model", dims)
    elif isinstance(model_or_artifact, runtime.Module):
        result = _profile_loaded(model_or_artifact, inputs, threads, runs, warmup,
                                 str(model_or_artifact.path or "in-memory module"), dims)
    else:
        raise OptcError(f"profile: expected a path, an optc Model or an onnx.ModelProto, got "
                        f"{type(model_or_artifact).__name__}")
    if top is not None:
        result.by_node = result.by_node[:top]
    return result
