"""Regression tests for faults in constant folding and in compiled code / the runtime, each compared with
onnxruntime or the ONNX spec formula."""

from __future__ import annotations

import numpy as np
import pytest
from optc.rewrites.passes.fold_constants import _REFERENCE_WRONG

from .test_passes_support import check, op_types


def _lit(a: np.ndarray) -> str:
    """An ONNX text literal `{v0, v1, ...}` of a float or int array."""
    return "{" + ", ".join(repr(float(v)) if a.dtype.kind == "f" else str(int(v)) for v in a.reshape(-1)) + "}"


_RNG = np.random.default_rng(0)
_IMG = _RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
_X3 = _RNG.standard_normal((2, 3, 4)).astype(np.float32)


def _case(opset: int, shape: str, body: str, out: str = "y", extra_out: str = "") -> str:
    """A model `y = Add(x, <op of constants>)` at `opset`; `body` defines `r` from Constant nodes."""
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
    outs = f"float{shape} {out}" + (f", {extra_out}" if extra_out else "")
    return f"{header}g (float{shape} x) => ({outs}) {{\n{body}\n y = Add(x, r) }}"


# Cases onnx's reference evaluator (onnx 1.23) computes wrong; onnxruntime follows the spec. One per entry of
# fold_constants._REFERENCE_WRONG: folding them changed the model's outputs.
WRONG_CASES = {
    "LRN": _case(17, "[1,3,2,2]", """
      c = Constant<value=float[1,3,2,2] {0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0,9.0,10.0,11.0}>()
      r = LRN<size=3>(c)"""),
    "Softmax": _case(11, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Softmax<axis=1>(c)"),
    "LogSoftmax": _case(11, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = LogSoftmax(c)"),
    "Hardmax": _case(12, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Hardmax<axis=1>(c)"),
    "LpNormalization": _case(17, "[2,3,4]", f"""
      c = Constant<value=float[2,3,4] {_lit(_X3)}>()
      r = LpNormalization<axis=1, p=1>(c)"""),
    "MaxPool": _case(12, "[1,2,3,3]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      r, i = MaxPool<kernel_shape=[2,2]>(c)""", extra_out="int64[1,2,3,3] i"),
    "MaxUnpool": _case(11, "[1,1,5,5]", """
      v = Constant<value=float[1,1,2,2] {1.0, 2.0, 3.0, 4.0}>()
      k = Constant<value=int64[1,1,2,2] {1, 3, 8, 15}>()
      s = Constant<value=int64[4] {1, 1, 5, 5}>()
      r = MaxUnpool<kernel_shape=[2,2], strides=[2,2]>(v, k, s)"""),
    "RoiAlign": _case(10, "[1,2,2,2]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      b = Constant<value=float[1,4] {{0.5, 1.0, 3.0, 3.5}}>()
      n = Constant<value=int64[1] {{0}}>()
      r = RoiAlign<output_height=2, output_width=2, sampling_ratio=2>(c, b, n)"""),
    "Resize": _case(13, "[1,1,3,9]", f"""
      c = Constant<value=float[1,1,6,6] {_lit(np.arange(36, dtype=np.float32))}>()
      roi = Constant<value=float[0] {{}}>()
      sc = Constant<value=float[4] {{1.0, 1.0, 0.6, 1.5}}>()
      r = Resize<mode="nearest", nearest_mode="floor">(c, roi, sc)"""),
}


def test_every_reference_fault_has_a_case():
    assert set(WRONG_CASES) == set(_REFERENCE_WRONG)


@pytest.mark.parametrize("op", sorted(WRONG_CASES))
def test_reference_evaluator_faults_are_not_folded(op):
    """Before: folded with the reference evaluator's wrong values (LRN: max abs err 0.047 vs onnxruntime)."""
    _, after, _ = check(WRONG_CASES[op], "fold-constants")
    assert op in op_types(after)


# The same ops where the reference evaluator is right still fold.
RIGHT_CASES = {
    "Softmax": _case(13, "[2,3,4]", f"c = Constant<value=float[2,3,4] {_lit(_X3)}>()\n r = Softmax<axis=1>(c)"),
    "LpNormalization": _case(17, "[2,3,4]", f"""
      c = Constant<value=float[2,3,4] {_lit(_X3)}>()
      r = LpNormalization<axis=1, p=2>(c)"""),
    "MaxPool": _case(12, "[1,2,3,3]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      r = MaxPool<kernel_shape=[2,2]>(c)"""),
    "RoiAlign": _case(16, "[1,2,2,2]", f"""
      c = Constant<value=float[1,2,4,4] {_lit(_IMG)}>()
      b = Constant<value=float[1,4] {{0.5, 1.0, 3.0, 3.5}}>()
      n = Constant<value=int64[1] {{0}}>()
      r = RoiAlign<output_height=2, output_width=2, sampling_ratio=2>(c, b, n)"""),
}


@pytest.mark.parametrize("op", sorted(RIGHT_CASES))
def test_reference_evaluator_ops_still_fold_where_right(op):
    _, after, _ = check(RIGHT_CASES[op], "fold-constants")
    assert op_types(after) == ["Add"]
