"""The one place optc builds an onnxruntime InferenceSession (verify, bench, calibration, evaluate).

onnxruntime's own log is silenced: a failure reaches the user as optc's one-line error instead.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import OptcError, first_line  # first_line: re-exported for its callers

__all__ = ["first_line", "session"]


def session(source: Any, *, optimize: bool = True, threads: int | None = None, label: str | None = None,
            profile_prefix: str | None = None, spin: bool = True):
    """An onnxruntime CPU session for `source`: a path, serialized bytes, an `onnx.ModelProto` or an optc `Model`.

    `optimize`: onnxruntime's graph optimizations (all levels) on, or all off (to run a model exactly as
    written, as `optc verify` does). `threads`: intra-op threads (None: onnxruntime's default); inter-op is 1.
    `profile_prefix`: turn on onnxruntime's profiler, writing its JSON trace to `<prefix>_<date>.json` (the
    path `end_profiling()` returns; `optc.workflow.profile` reads it).
    Raises OptcError (one line, naming `label` or the path) when onnxruntime cannot load the model.
    """
    import onnx
    import onnxruntime as ort

    from .ir.core import Model

    if isinstance(source, Model):
        from .ir import to_onnx

        source = to_onnx(source)
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    name = label or (os.fspath(source) if isinstance(source, str | os.PathLike) else "the model")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptcError(f"onnxruntime cannot load '{name}': {first_line(exc)}") from None
