"""Check scheduled kernels against their unscheduled definitions, one PrimFunc at a time.

For authors of schedule rules: a schedule must never change what a kernel computes, and the models
at hand often cannot show it (the light models' weights are constants, so a bias applied to the wrong
channel is invisible end to end). ``check_kernels`` builds every kernel twice, as TVM's naive loops and
with the default schedule, runs both on the same random inputs and reports those that disagree::

    from optc.codegen.kernel_check import check_kernels, fused_kernels
    bad = check_kernels(fused_kernels(optc.load("model.onnx"), "cpu"), "cpu")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tvm_ops
from .targets import resolve_target


@dataclass(frozen=True)
class KernelMismatch:
    """A kernel whose scheduled output differs from its unscheduled output."""

    name: str
    max_abs_diff: float
    max_abs_expected: float


def fused_kernels(model, target="cpu", level: int = 2):
    """The fused Relax module that ``build`` schedules: optimize (-O level), lower, prepare, legalize, fuse."""
    from ..lowering import lower  # noqa: PLC0415
    from ..rewrites import optimize  # noqa: PLC0415
    from .build import fuse, prepare  # noqa: PLC0415

    tvm_target = resolve_target(target)
    return fuse(prepare(lower(optimize(model, level=level)), None, tvm_target), tvm_target)


def _static_float_shapes(func) -> list[tuple[list[int], str]] | None:
    """(shape, dtype) of every parameter, or None when a shape is symbolic or a dtype is not floating point."""
    import tvm  # noqa: PLC0415

    out = []
    for param in func.params:
        ty = param.ty
        dims = list(ty.shape)
        dtype = str(ty.dtype)
        if not all(isinstance(d, tvm.tirx.IntImm) for d in dims) or not dtype.startswith("float"):
            return None
        out.append(([int(d) for d in dims], dtype))
    return out


def _run(func, arrays, target):
    import tvm  # noqa: PLC0415
    from tvm.driver import build as tvm_build  # noqa: PLC0415

    tvm_ops.register()
    lib = tvm_build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    device = tvm.cpu()
    args = [tvm.runtime.tensor(a, device) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def check_kernels(fused, target="cpu", *, rules=None, rtol: float = 1e-4, seed: int = 0) -> list[KernelMismatch]:
    """Build each PrimFunc of ``fused`` unscheduled and with ``build``'s default schedule (or with the dlight
    ``rules`` given, first match wins), run both on the same random inputs (uniform in [-1, 1); the output
    starts as NaN so unwritten elements show) and return the kernels whose outputs differ by more than
    ``rtol`` times the largest expected magnitude. Kernels with symbolic shapes or non-float parameters
    are skipped."""
    import tvm  # noqa: PLC0415
    import tvm_ffi  # noqa: PLC0415
    from tvm.s_tir import dlight  # noqa: PLC0415

    from .build import schedule_passes  # noqa: PLC0415

    tvm_target = resolve_target(target)
    copy = tvm.IRModule(dict(fused.functions_items()), attrs=fused.attrs)  # dlight schedules in place
    passes = schedule_passes(tvm_target) if rules is None else [dlight.ApplyDefaultSchedule(*rules)]
    with tvm_target:
        scheduled = tvm.transform.Sequential(passes)(copy)
    rng = np.random.default_rng(seed)
    mismatches, seen = [], set()
    for gvar, func in scheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        key = tvm_ffi.structural_hash(fused[gvar.name_hint].with_attr("global_symbol", "k"), map_free_vars=True)
        if key in seen:  # the same kernel called at several places (a model's repeated blocks): checked once
            continue
        seen.add(key)
        shapes = _static_float_shapes(func)
        if shapes is None:
            continue
        arrays = [rng.uniform(-1, 1, shape).astype(dtype) for shape, dtype in shapes[:-1]]
        out_shape, out_dtype = shapes[-1]
        arrays.append(np.full(out_shape, np.nan, out_dtype))
        got = _run(func, arrays, tvm_target)
        want = _run(fused[gvar.name_hint], arrays, tvm_target)
        scale = float(np.nanmax(np.abs(want))) if np.isfinite(want).any() else 0.0
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        same_nan = np.isnan(got) == np.isnan(want)
        worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        if not same_nan.all() or worst > rtol * max(scale, 1e-6):
            mismatches.append(KernelMismatch(gvar.name_hint, worst if same_nan.all() else float("nan"), scale))
    return mismatches
