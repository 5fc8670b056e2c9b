"""Shared test helpers: run a model on onnxruntime or the onnx reference evaluator, compare outputs, and
report lines in pytest's terminal summary. Keep this file small and generic."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

# -- running models ----------------------------------------------------------------------------------


@functools.cache
def ort_session_options():
    """One SessionOptions for every session the tests create (quiet, single-threaded: the CI box is small)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return so


#: an AVX-512 CPU (16 float32 lanes, 32 registers) for structural schedule tests written for its geometry; only
#: scheduled, never run, so they hold on any host (an AVX2 host's 8 lanes divide 24 / 40 channels whole)
AVX512 = {"kind": "llvm", "mcpu": "znver4"}
#: an AVX2 CPU (16 vector registers, 8 float32 lanes), which every x86 host that runs this suite can execute
AVX2 = {"kind": "llvm", "mcpu": "haswell"}


def scheduled_script(model: onnx.ModelProto, rule, names: tuple[str, ...] = (), target="cpu") -> str:
    """The TVMScript of `model`'s one fused kernel (-O2, `target`; with `names`, the one whose name holds one of
    them: a conv among its layout transposes) as schedule rule `rule` (an instance from optc.codegen.schedules)
    schedules it; asserts that the rule applies."""
    from optc.codegen.kernel_check import fused_kernels
    from optc.codegen.targets import resolve_target
    from optc.ir import from_onnx

    fused = fused_kernels(from_onnx(model), target)
    [func] = [f for gv, f in fused.functions_items() if gv.name_hint != "main"
              and (not names or any(n in gv.name_hint for n in names))]
    sch = rule.apply(func, resolve_target(target), False)
    assert sch is not None
    return sch.mod["main"].script()


def special_float_feeds(model: onnx.ModelProto, batch: int, special: bool) -> dict:
    """Random normal values for a one-input float32 / float64 model `x` (symbolic dims set to `batch`); `special`:
    the first four values NaN, +inf, -inf and -0.0."""
    t = model.graph.input[0].type.tensor_type
    shape = [d.dim_value or batch for d in t.shape.dim]
    dtype = np.float64 if t.elem_type == onnx.TensorProto.DOUBLE else np.float32
    x = np.random.default_rng(batch).standard_normal(shape).astype(dtype)
    if special:
        x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return {"x": x}


def assert_ieee_close(got: np.ndarray, want: np.ndarray, rtol: float, atol_scale: float) -> None:
    """Same shape, values within rtol and atol_scale x the largest finite |want|, NaN in the same places and the
    same signs of zeros."""
    assert got.shape == want.shape
    scale = np.abs(np.nan_to_num(want, posinf=0, neginf=0)).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_scale * scale, equal_nan=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.signbit(got[got == 0]), np.signbit(want[want == 0]))


def _model_bytes(model: onnx.ModelProto | bytes | str) -> bytes | str:
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else model


def feed_names(model: onnx.ModelProto) -> list[str]:
    """The graph inputs that are not initializers, in order (what a runtime is fed)."""
    inits = {t.name for t in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def run_ort(model: onnx.ModelProto | bytes | str, feeds: dict | Sequence, session_options=None) -> list:
    """Run on onnxruntime's CPU provider; `feeds` is a dict or a list matched to the session's inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(_model_bytes(model), session_options or ort_session_options(),
                                providers=["CPUExecutionProvider"])
    if not isinstance(feeds, dict):
        feeds = {i.name: x for i, x in zip(sess.get_inputs(), feeds, strict=False)}
    return sess.run(None, feeds)


def run_reference(model: onnx.ModelProto | str, feeds: dict | Sequence) -> list:
    """Run on onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    if isinstance(model, str):
        model = onnx.load(model)
    ref = ReferenceEvaluator(model)
    if not isinstance(feeds, dict):
        feeds = dict(zip(feed_names(model), feeds, strict=False))
    return list(ref.run(None, feeds))


def run_qdq_exact(model: onnx.ModelProto, feeds: dict | Sequence) -> list:
    """A QDQ model's result from onnxruntime where its uint8 x int8 kernels are exact, else (x86 without VNNI,
    whose VPMADDUBSW saturates int16 pairs of full-range products: up to 80 units off) from onnx's reference
    evaluator (float ops on the dequantized values)."""
    from optc.quantization.scheme import QuantScheme

    return run_reference(model, feeds) if QuantScheme.host_saturates() else run_ort(model, feeds)


def bind_inputs(model: onnx.ModelProto, inputs: list, keep_first: bool) -> tuple[onnx.ModelProto, list] | None:
    """`model` with its tensor inputs (all, or all but the first) made initializers holding `inputs`' values,
    and the inputs that are still fed; None if nothing could be bound. (IR < 4 models keep the bound names
    listed as graph inputs, as those IR versions require.)"""
    bound: dict[str, onnx.TensorProto] = {}
    rest = []
    for i, (name, x) in enumerate(zip(feed_names(model), inputs, strict=False)):
        if not (keep_first and i == 0):
            if isinstance(x, onnx.TensorProto):
                t = onnx.TensorProto()
                t.CopyFrom(x)
                t.name = name
                bound[name] = t
                continue
            if isinstance(x, np.ndarray | np.generic):
                bound[name] = numpy_helper.from_array(np.asarray(x), name)
                continue
        rest.append(x)
    if not bound:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if m.ir_version >= 4:
        keep = [vi for vi in m.graph.input if vi.name not in bound]
        del m.graph.input[:]
        m.graph.input.extend(keep)
    m.graph.initializer.extend(bound.values())
    return m, rest


# -- comparing outputs -------------------------------------------------------------------------------


def mismatch(actual, expected, rtol: float = 1e-7, atol: float = 0.0, path: str = "output") -> str | None:
    """Why `actual` differs from `expected` (None if they match). NaN equals NaN; sequences and optionals
    (lists, None) are compared structurally; exotic dtypes (bfloat16, float8, int4) compare as float32."""
    if expected is None or actual is None:
        return None if actual is None and expected is None else f"{path}: {actual!r} vs {expected!r}"
    if isinstance(expected, list | tuple):
        if not isinstance(actual, list | tuple) or len(actual) != len(expected):
            return f"{path}: sequence {type(actual).__name__} of {_len(actual)} vs {len(expected)} elements"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            why = mismatch(a, e, rtol, atol, f"{path}[{i}]")
            if why:
                return why
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return f"{path}: map keys differ"
        for k in expected:
            why = mismatch(actual[k], expected[k], rtol, atol, f"{path}[{k!r}]")
            if why:
                return why
        return None
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return f"{path}: shape {a.shape} vs {e.shape}"
    if e.dtype == object or e.dtype.kind in "SU" or a.dtype == object:
        if a.tolist() != e.tolist():
            return f"{path}: values differ"
        return None
    if e.dtype.kind == "b" or (e.dtype.kind in "iu" and a.dtype.kind in "iub"):
        if not np.array_equal(a, e):
            return f"{path}: {int(np.sum(a != e))} of {e.size} values differ"
        return None
    try:
        a64, e64 = a.astype(np.complex128 if e.dtype.kind == "c" else np.float64), \
            e.astype(np.complex128 if e.dtype.kind == "c" else np.float64)
    except (TypeError, ValueError):
        a64, e64 = a.astype(np.float32).astype(np.float64), e.astype(np.float32).astype(np.float64)
    if not np.allclose(a64, e64, rtol=rtol, atol=atol, equal_nan=True):
        bad = ~np.isclose(a64, e64, rtol=rtol, atol=atol, equal_nan=True)
        return f"{path}: {int(bad.sum())} of {e.size} values differ (max abs diff {_maxdiff(a64, e64)})"
    return None


def _len(x) -> str:
    try:
        return str(len(x))
    except TypeError:
        return "?"


def _maxdiff(a, b) -> float:
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    d = d[~np.isnan(d)] if d.size else d
    return float(d.max()) if d.size else math.nan


def outputs_mismatch(actual: Sequence, expected: Sequence, rtol: float = 1e-7, atol: float = 0.0) -> str | None:
    """Compare a list of outputs; None when every output matches."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs vs {len(expected)} expected"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        why = mismatch(a, e, rtol, atol, f"output {i}")
        if why:
            return why
    return None


# -- comparing protos --------------------------------------------------------------------------------


def canonical_bytes(message) -> bytes:
    """Deterministic serialization after clearing scalar fields explicitly set to their default value.

    ONNX's .proto is proto2, so `domain: ""` written on a node is "present" and serialized; optc does not keep
    the presence bit of default-valued scalars (no consumer gives it meaning). Oneof members (`dim_value: 0`)
    and sub-messages (an empty `shape {}`) are never cleared: their presence is meaning."""
    m = type(message)()
    m.CopyFrom(message)
    _clear_present_defaults(m)
    return m.SerializeToString(deterministic=True)


def _clear_present_defaults(m) -> None:
    for field, value in m.ListFields():
        if field.message_type is not None:
            if field.is_repeated:
                for item in value:
                    _clear_present_defaults(item)
            else:
                _clear_present_defaults(value)
        elif (not field.is_repeated and field.containing_oneof is None and value == field.default_value
              and not (isinstance(value, float) and math.copysign(1.0, value) < 0)):  # -0.0 is not the default
            m.ClearField(field.name)


def force_decode(model) -> None:
    """Decode every node's attributes (recursively), so export goes through optc's attribute encoder."""
    for g in model.graphs():
        for n in g:
            n.attributes  # noqa: B018 - decoding is the side effect


def force_rebuild(model) -> None:
    """Mark every node as changed (without decoding its attributes), so export writes each NodeProto (and
    ValueInfoProto) anew instead of copying the imported one."""
    for g in model.graphs():
        for n in g:
            n.outputs = n.outputs
            for v in (*n.outputs, *g.inputs, *g.initializers.values()):
                if getattr(v, "_vi", None) is not None:  # the imported ValueInfoProto export may copy
                    v._vi = None


def proto_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    """A short description of where two ModelProtos differ (for failure messages)."""
    for field in ("ir_version", "opset_import", "producer_name", "producer_version", "domain", "model_version",
                  "doc_string", "metadata_props", "functions"):
        if getattr(a, field) != getattr(b, field):
            return f"model.{field} differs"
    ga, gb = a.graph, b.graph
    for field in ("name", "doc_string", "input", "output", "initializer", "sparse_initializer", "value_info",
                  "metadata_props", "quantization_annotation"):
        if getattr(ga, field) != getattr(gb, field):
            return f"graph.{field} differs"
    for i, (na, nb) in enumerate(zip(ga.node, gb.node, strict=False)):
        if na != nb:
            return f"graph.node[{i}] ({na.op_type}) differs:\n{na}\nvs\n{nb}"
    if len(ga.node) != len(gb.node):
        return f"graph has {len(gb.node)} nodes instead of {len(ga.node)}"
    return "serialized bytes differ"


def round_trip_problem(original: onnx.ModelProto) -> str | None:
    """None if `optc.to_onnx(optc.from_onnx(original))` equals `original` (see `canonical_bytes`) in three
    ways: as imported (export may copy unchanged NodeProtos), with every node written anew (attributes still
    lazy protos), and with every attribute decoded into optc `Attr`s (optc's attribute encoder is used)."""
    import optc

    want = canonical_bytes(original)
    for label, prepare in (("", None), ("nodes rebuilt: ", force_rebuild), ("attributes decoded: ", force_decode)):
        model = optc.from_onnx(original)
        if prepare:
            prepare(model)
        got = optc.to_onnx(model)
        if canonical_bytes(got) != want:
            return label + proto_diff(original, got)
    return None


# -- reporting ---------------------------------------------------------------------------------------

_REPORT_KEY = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def report(request):
    """`report(title, lines)`: print lines in pytest's terminal summary (shown without `-s`)."""
    store = request.config.stash.setdefault(_REPORT_KEY, [])

    def add(title: str, lines: Sequence[str]) -> None:
        store.append((title, list(lines)))

    return add


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for title, lines in config.stash.get(_REPORT_KEY, []):
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
