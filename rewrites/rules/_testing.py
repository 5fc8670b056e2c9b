"""Helpers for rule tests: build a model from ONNX's text syntax, apply rules, compare on onnxruntime."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx.parser
import onnx.shape_inference

from ...inputs import InputSpec, random_inputs
from ...ir import from_onnx, to_onnx
from ...ir.core import Model
from ...ir.types import DataType, TensorType
from ...ir.verify import verify
from ..context import PassContext
from ..driver import DriverResult, apply_rules
from ..rule import Rule


def parse(text: str | onnx.ModelProto, infer: bool = True) -> onnx.ModelProto:
    """A model from ONNX's text syntax, with ONNX shape inference applied (so rules see ranks and shapes)."""
    proto = onnx.parser.parse_model(text) if isinstance(text, str) else text
    onnx.checker.check_model(proto)
    if infer:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    return proto


def random_feeds(proto: onnx.ModelProto, seed: int = 0, *, symbolic_dim: int = 2,
                 float_range: tuple[float, float] | None = None,
                 int_range: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs (`optc.inputs.random_inputs`) for every graph input that is not an initializer (symbolic
    dims become `symbolic_dim`). Floats: standard normal, or uniform in `float_range`; integers: in `int_range`
    (default [-5, 6) when signed, [0, 10) when unsigned); booleans: fair coin flips."""
    inits = {t.name for t in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(DataType(tt.elem_type).numpy()), shape))
    return random_inputs(specs, seed=seed, default_dim=symbolic_dim, float_range=float_range, int_range=int_range)


def run_ort(proto: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def apply(rules: Iterable[Rule | type[Rule]], model: Model, ctx: PassContext | None = None, *,
          fast_math: bool = False, **kwargs) -> DriverResult:
    kwargs.setdefault("max_rewrites", 1000)  # a rule that rewrites into itself fails fast in tests
    ctx = ctx or PassContext(opsets=dict(model.opset_imports), fast_math=fast_math)
    return apply_rules(model, rules, ctx, "test", **kwargs)


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: equal bit patterns (so -0.0 differs from +0.0), or both NaN (whatever the payload)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return np.zeros(np.broadcast_shapes(a.shape, b.shape), bool)
    if a.dtype.kind in "fc":
        u = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else None
        if u is None:
            return same_bits(a.real, b.real) & same_bits(a.imag, b.imag)
        return (np.isnan(a) & np.isnan(b)) | (np.ascontiguousarray(a).view(u) == np.ascontiguousarray(b).view(u))
    return a == b


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, msg: str = "") -> None:
    """Fail unless `actual` equals `expected` bit for bit (NaN matches NaN; -0.0 does not match +0.0)."""
    ok = same_bits(actual, expected)
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        detail = ", ".join(f"{tuple(int(i) for i in idx)}: {np.asarray(actual)[tuple(idx)]!r} vs "
                           f"{np.asarray(expected)[tuple(idx)]!r}" for idx in bad)
        raise AssertionError(f"{msg}: {int((~ok).sum())} elements differ in their bits ({detail})")


def check_rewrite(rules, text: str | onnx.ModelProto, *, expect: str | None = None, rtol: float = 1e-5, atol: float = 1e-6,
                  gone: Iterable[str] = (), present: Iterable[str] = (), feeds: dict | None = None,
                  infer: bool = True, exact: bool = False, fast_math: bool = False) -> tuple[Model, DriverResult]:
    """Apply `rules` to the model in `text`; assert `expect` (a rule name) fired (or, with expect=None, that
    nothing did), the IR verifies, the result passes onnx's checker with the same output names and types, and
    onnxruntime gives the same outputs before and after (within rtol/atol, or bit for bit with `exact`: NaN
    matches NaN, -0.0 does not match +0.0). `gone` / `present`: op types that must have disappeared / must
    exist afterwards. `fast_math`: apply the rules as under `optimize(..., fast_math=True)`."""
    rules = list(rules) if isinstance(rules, list | tuple) else [rules]
    proto = parse(text, infer)
    model = from_onnx(proto)
    res = apply(rules, model, fast_math=fast_math)
    verify(model)
    rule_counts = {k: v for k, v in res.counts.items() if k not in ("dead-nodes", "folded")}
    if expect is None:
        assert not rule_counts, f"expected no rewrite, got {res.counts}"
    else:
        assert rule_counts.get(expect, 0) > 0, f"expected {expect} to fire, got {res.counts}\n{res.trace}"
    assert res.converged, f"no fixed point: {res.counts}"
    out = to_onnx(model)
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
    for a, b in zip(out.graph.output, proto.graph.output, strict=False):
        assert a.type == b.type, f"output {a.name}: type {a.type} vs {b.type}"
    ops = {n.op_type for n in out.graph.node}
    for op in gone:
        assert op not in ops, f"{op} is still there: {onnx.printer.to_text(out.graph)}"
    for op in present:
        assert op in ops, f"{op} is missing: {onnx.printer.to_text(out.graph)}"
    feeds = feeds if feeds is not None else random_feeds(proto)
    before = run_ort(proto, feeds)
    after = run_ort(out, feeds)
    assert len(before) == len(after)
    for i, (x, y) in enumerate(zip(before, after, strict=False)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"output {i}: {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        if exact:
            assert_same_bits(y, x, f"output {i}")
        else:
            np.testing.assert_allclose(y, x, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return model, res


def count_ops(model: Model) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in model.graphs():
        for n in g:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


__all__ = ["TensorType", "apply", "assert_same_bits", "check_rewrite", "count_ops", "parse", "random_feeds", "run_ort",
           "same_bits"]
