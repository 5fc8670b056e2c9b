"""Prune a model and say what it cost: `prune(model, ratio)` runs the `prune` pass (structured channel pruning,
or magnitude pruning to zeros) on a copy and reports parameters, non-zero parameters and multiply-accumulates
before and after, and each group of channels pruned or left alone (with the reason).

Pruning here is without fine-tuning: the outputs change and accuracy usually drops; measure it with
`optc.evaluate(pruned, data, baseline=original)` (what `optc prune --eval` does). Given calibration data,
structured pruning then refits the layers that read the pruned channels by least squares
(`optc.workflow.reconstruct`), which wins back much of the loss without training.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import OptcError
from ..ir.core import Model
from ..rewrites.passes.prune import CHANNEL_MULTIPLE, GroupResult, Prune, node_macs
from .reconstruct import LayerFit

__all__ = ["PruneReport", "count_macs", "count_params", "prune"]

STRUCTURED_NOTE = ("pruned without fine-tuning: the outputs change and accuracy usually drops; measure it (optc prune "
                   "--eval, optc evaluate), refit with calibration data (--calibration) and fine-tune the pruned "
                   "model if the drop is still too large")
UNSTRUCTURED_NOTE = ("unstructured: weights set to zero, shapes and compute unchanged: no CPU speed-up by itself "
                     "(dense kernels do the same work); it helps only compression and sparse-aware back ends")


@dataclass
class PruneReport:
    """What `prune` did. `params_*`: elements of all initializers and Constant nodes; `nonzero_*`: of those, the
    non-zero ones;
    `flops_*`: multiply-accumulates (MACs) of Conv/Gemm/MatMul per sample (symbolic dims count 1);
    `groups_pruned` / `groups_skipped`: see `GroupResult` (structured only); `zeroed`: weights set to zero
    (unstructured only); `accuracy`: an `optc.evaluate` result against the original, when measured;
    `multiple`: channels were kept in multiples of this (structured); `reconstruction`: one `LayerFit` per
    layer that read pruned channels, when calibration data was given (else None)."""

    mode: str
    ratio: float
    criterion: str
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    flops_before: int
    flops_after: int
    groups_pruned: list[GroupResult] = field(default_factory=list)
    groups_skipped: list[GroupResult] = field(default_factory=list)
    zeroed: int = 0
    note: str = ""
    accuracy: dict | None = None
    multiple: int = 1
    reconstruction: list[LayerFit] | None = None

    def to_json(self) -> dict:
        """A JSON-serializable dict of the fields above."""
        return asdict(self)


def count_params(model: Model) -> tuple[int, int]:
    """(elements, non-zero elements) of the main graph's initializers and standard Constant nodes (weights held
    in Constant nodes counted 0 before; pruning turns the ones it slices into initializers)."""
    arrays = [v.const.numpy() for v in model.graph.initializers.values() if v.const is not None]
    arrays += [n.outputs[0].const_value() for n in model.graph
               if n.op_type == "Constant" and not n.domain and n.outputs and n.outputs[0] is not None]
    arrays = [a for a in arrays if a is not None]
    return sum(int(a.size) for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def count_macs(model: Model) -> int:
    """Multiply-accumulates of the main graph's Conv/Gemm/MatMul nodes with constant weights, per sample (value
    shapes must be inferred; see `optc.rewrites.passes.prune.node_macs`)."""
    return sum(node_macs(n) for n in model.graph)


def _load(model) -> Model:
    import onnx

    from ..ir import load
    from ..rewrites import copy_model

    if isinstance(model, Model):
        return copy_model(model)
    if isinstance(model, str | os.PathLike | onnx.ModelProto):
        return load(model)
    raise OptcError(f"prune: expected a path, an optc Model or an onnx.ModelProto, got {type(model).__name__}")


def prune(model, ratio: float, *, criterion: str = "l1", unstructured: bool = False,
          multiple: int = CHANNEL_MULTIPLE, calibration: str | os.PathLike | None = None) -> tuple[Model, PruneReport]:
    """Prune a copy of `model` (a path, an `onnx.ModelProto` or an optc `Model`; never modified).

    Structured (default): in every group of Conv/Gemm/MatMul output channels that must be dropped together and
    that nothing blocks (a graph output, an op the analysis does not understand: see
    `optc.rewrites.passes.prune_analysis`), `ratio` of the channels (rounded down, one kept at least; with
    `multiple` > 1 the kept count rounded up to a multiple of it, see `kept_channels`) with the
    smallest `criterion` score are removed, with the matching inputs of their consumers: "l1" / "l2", the norm of
    the producers' filters; "path", that L1 norm times the depthwise filters' and BatchNorm scales' on the way
    and the summed L1 norm of the next layers' weights that read the channel (better on the digits CNN: see
    the README).
    `calibration` (structured only): a .npz file or directory of the model's inputs (as for `optc quantize`);
    the layers that read pruned channels are then refitted to reproduce the original model's outputs on it
    (least squares; see `optc.workflow.reconstruct`; at least `MIN_SAMPLES` (20) samples, every 5th held out).
    `unstructured=True`: the `ratio` smallest-magnitude entries of each Conv/Gemm/MatMul weight become zero.
    Returns `(pruned model, PruneReport)`. Raises OptcError (one line) for `ratio` outside (0, 1), an unknown
    criterion, a model that cannot be read, calibration data that does not match the model's inputs or is
    given with `unstructured`.
    """
    from ..rewrites import Pipeline, run_pipeline
    from ..rewrites.passes.infer_shapes import infer_model_types
    from ..rewrites.passes.interface import RemoveInitializerInputs

    prune_pass = Prune(ratio=ratio, criterion=criterion, unstructured=bool(unstructured),
                       multiple=multiple)  # checks the options
    if calibration is not None and unstructured:
        raise OptcError("calibration data refits the layers after structured pruning; unstructured pruning takes "
                        "none")
    pruned = _load(model)
    infer_model_types(pruned)
    data = reference = None
    if calibration is not None:
        from ..quantization.data import model_input_specs, open_dataset
        from ..rewrites import copy_model

        data = open_dataset(calibration, model_input_specs(pruned), role="calibration data")
        reference = copy_model(pruned)
    params_before, nonzero_before = count_params(pruned)
    macs_before = count_macs(pruned)
    # IR < 4 listed every weight as a graph input (an overridable default, which pruning leaves alone): as -O2,
    # make those plain constants first (a no-op for later IR versions)
    run_pipeline(pruned, Pipeline([RemoveInitializerInputs(), prune_pass]))
    result = prune_pass.last_report
    fits = None
    if data is not None:
        from .reconstruct import reconstruct

        fits = reconstruct(pruned, reference, result.consumers, data)
    params_after, nonzero_after = count_params(pruned)
    return pruned, PruneReport(
        "unstructured" if unstructured else "structured", float(ratio), criterion, params_before, params_after,
        nonzero_before, nonzero_after, macs_before, count_macs(pruned), result.pruned, result.skipped, result.zeroed,
        UNSTRUCTURED_NOTE if unstructured else STRUCTURED_NOTE, multiple=multiple, reconstruction=fits)
