"""Helpers for the pass tests (this module holds no tests): parse ONNX text, run a pipeline, compare outputs
before and after on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from optc.ir import from_onnx, to_onnx
from optc.rewrites import PassContext, RewriteBudget, parse_pipeline, run_pipeline
from optc.rewrites.rules._testing import random_feeds as _random_feeds

from .conftest import feed_names, mismatch, run_ort

HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'

def parse(text: str, header: str = HEADER) -> onnx.ModelProto:
    """An ONNX model from ONNX's text syntax (header added unless the text has one)."""
    src = text if text.lstrip().startswith("<") else header + text
    m = onnx.parser.parse_model(src)
    onnx.checker.check_model(m)
    return m


def random_feeds(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for pass tests: floats in [-2, 2), integers in [0, 3)."""
    return _random_feeds(proto, seed, float_range=(-2, 2), int_range=(0, 3))


def run_passes(proto: onnx.ModelProto, pipeline: str, *, limit: int | None = None, ctx: PassContext | None = None,
               **kwargs):
    """Import, run `pipeline`, export. Returns (optimized proto, report, model)."""
    model = from_onnx(proto)
    if ctx is None:
        ctx = PassContext(opsets=dict(model.opset_imports), budget=RewriteBudget(limit=limit))
    report = run_pipeline(model, parse_pipeline(pipeline), ctx=ctx, **kwargs)
    out = to_onnx(model)
    onnx.checker.check_model(out)
    return out, report, model


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict | None = None,
                        rtol: float = 1e-5, atol: float = 1e-6) -> None:
    feeds = random_feeds(before) if feeds is None else feeds
    names = feed_names(after)
    expected = run_ort(before, feeds)
    actual = run_ort(after, {k: v for k, v in feeds.items() if k in names})
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        why = mismatch(a, e, rtol=rtol, atol=atol, path=before.graph.output[i].name)
        assert why is None, why


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def check(text: str, pipeline: str, **kwargs):
    """Parse, optimize, check outputs are unchanged; returns (before, after, report)."""
    before = parse(text)
    after, report, _ = run_passes(before, pipeline, **kwargs)
    assert_same_outputs(before, after)
    return before, after, report
