"""Size figures of a model: node and op counts, parameters, bytes on disk (for `optc inspect` and the
before/after summaries of `optc optimize`)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from .core import Model
from .tensors import ExternalTensor, SparseTensor


@dataclass
class ModelStats:
    """`nodes` and `ops` (op type -> count, "domain::Op" outside the default domain) over every graph,
    subgraphs and model-local functions included; `parameters` (elements of all initializers; a sparse one
    counts its stored values) and `parameter_bytes`."""

    nodes: int = 0
    ops: Counter = field(default_factory=Counter)
    parameters: int = 0
    parameter_bytes: int = 0


def model_stats(model: Model) -> ModelStats:
    """Count nodes, ops and parameters of `model` (O(nodes + initializers); tensors are not loaded)."""
    st = ModelStats()
    for g in model.graphs():
        for n in g:
            st.nodes += 1
            st.ops[f"{n.domain}::{n.op_type}" if n.domain else n.op_type] += 1
        for v in g.initializers.values():
            t = v.const
            st.parameters += int(t.proto.values.dims[0]) if isinstance(t, SparseTensor) and t.proto.values.dims \
                else t.size
            st.parameter_bytes += t.nbytes
    return st


def file_bytes(path: str | os.PathLike, model: Model | None = None) -> int:
    """Bytes a saved model takes on disk: the .onnx file plus its external data files (those `model`'s tensors
    point to when given, else `<path>.data` as `optc.save` writes it)."""
    path = os.fspath(path)
    total = os.path.getsize(path)
    if model is None:
        data = path + ".data"
        return total + (os.path.getsize(data) if os.path.exists(data) else 0)
    files = {os.path.realpath(v.const.path) for g in model.graphs() for v in g.initializers.values()
             if isinstance(v.const, ExternalTensor)}
    return total + sum(os.path.getsize(f) for f in files if os.path.exists(f))
