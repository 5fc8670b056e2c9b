"""The lowering cases of `../shared/cases/lowering/` (models rebuilt from public bug reports against other ONNX
optimizers and compilers): each must compute what onnxruntime computes on the original model, exactly (NaN at
the same places, infinities and zeros with their sign, int64 values above 2^53, 0-d shapes), through
`optc optimize -O3` and through `optc compile` + run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import optc
import pytest

from .conftest import run_ort

CASES = Path(os.environ.get("OPTC_SHARED_CASES", Path(__file__).resolve().parents[2] / "shared" / "cases")) / "lowering"
NAMES = ["slice_int64_max_end", "int64_div_fold", "clip_nan_bound", "scalar_add_rank", "reduce_noop_empty_axes",
         "add_zero_negzero"]

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason=f"the shared cases are not at {CASES}")


def identical(got: np.ndarray, want: np.ndarray) -> str | None:
    """None when `got` equals `want` bit for bit in meaning: same shape and dtype, same values, NaN at the same
    places, the same sign on every zero and infinity."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}"
    if want.dtype.kind == "f":
        same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
    else:
        same = got == want
    if not np.all(same):
        i = np.unravel_index(int(np.argmin(same)), same.shape) if same.ndim else ()
        return f"at {list(i)}: {got[i]!r} vs {want[i]!r}"
    return None


def _case(name: str):
    model = onnx.load(CASES / f"{name}.onnx")
    with np.load(CASES / f"{name}_inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    outputs = [o.name for o in model.graph.output]
    return model, feeds, dict(zip(outputs, run_ort(model, feeds), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_optimized_case_computes_what_onnxruntime_computes(name):
    model, feeds, want = _case(name)
    optimized = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=3))
    got = dict(zip([o.name for o in optimized.graph.output], run_ort(optimized, feeds), strict=True))
    for out, value in want.items():
        assert identical(got[out], value) is None, f"{name} -O3, output {out}: {identical(got[out], value)}"


@pytest.mark.parametrize("name", NAMES)
def test_compiled_case_computes_what_onnxruntime_computes(name):
    model, feeds, want = _case(name)
    got = optc.compile(model).run(feeds)
    for out, value in want.items():
        assert identical(got[out], value) is None, f"{name} compiled, output {out}: {identical(got[out], value)}"


def test_identical_tells_signed_zeros_and_nan_apart():
    assert identical(np.array([0.0, np.nan]), np.array([0.0, np.nan])) is None
    assert identical(np.array([-0.0]), np.array([0.0])) is not None
    assert identical(np.array([np.inf]), np.array([-np.inf])) is not None
    assert identical(np.array([np.nan]), np.array([1.0])) is not None
    assert identical(np.zeros(()), np.zeros((1,))) is not None
