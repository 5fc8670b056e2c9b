"""Raising a model's ONNX opset so the standard transformer ops (Attention and RMSNormalization 23, Gelu 20) can
be used: only when every op the model has means the same at the new opset.

Between opsets 14 and 23 most version bumps of an op only add element types (int4, float8, bfloat16, ...) or
an attribute / optional input whose default keeps the old behaviour (Pad's axes, Resize's antialias, Split's
num_outputs, ...): a node valid at the old opset computes the same at the new one. The bumps below are not of
that kind (the onnx/defs change logs): the Reduce ops take `axes` as an input from 18 (an attribute before),
RoiAlign-16 changed its default coordinate transformation, DFT-20 moved `axis` to an input, GridSample-20
renamed its modes, GroupNormalization-21 changed the shape of scale and bias. A model with one of them, with
model-local functions, or below opset 14 (not vetted) is not upgraded -- except the Reduce ops, which
`ReduceAxesToInput` rewrites into their opset-18 form (the same axes, as a constant input) when the upgrade is
made.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import numpy as np
import onnx

from ...ir.core import Model
from ..pattern import Or, require
from ..rule import Rule

#: the opset each standard fused op needs
NEEDS = {"Attention": 23, "RMSNormalization": 23, "RotaryEmbedding": 23, "Gelu": 20, "LayerNormalization": 17}
TARGET = 23
MIN_UPGRADABLE = 14
REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
             "ReduceProd", "ReduceSumSquare")
UNSAFE_BUMPS = frozenset({("RoiAlign", 16), ("DFT", 20), ("GridSample", 20), ("GroupNormalization", 21),
                          *((op, 18) for op in REDUCE_18)})


@cache
def _since_versions() -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain in ("", "ai.onnx"):
            out.setdefault(s.name, []).append(s.since_version)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def opset_key(model: Model) -> str:
    """The key of the default domain in the model's opset imports ("" or "ai.onnx")."""
    return "" if "" in model.opset_imports or "ai.onnx" not in model.opset_imports else "ai.onnx"


def upgrade_problem(model: Model, new: int = TARGET, *, convert_reduce: bool = False) -> str | None:
    """Why the model's default-domain opset cannot be raised to `new` without changing what it computes (None:
    it can). `convert_reduce`: the Reduce ops' opset-18 change does not count (ReduceAxesToInput handles it)."""
    old = model.opset_imports.get(opset_key(model))
    if old is None or old < MIN_UPGRADABLE:
        return f"opset {old} is below {MIN_UPGRADABLE}"
    if model.functions:
        return "the model has local functions"
    versions = _since_versions()
    for g in model.graphs():
        for n in g:
            if n.domain not in ("", "ai.onnx"):
                continue
            if n.op_type == "Split" and old < 18 <= new and (len(n.inputs) < 2 or n.inputs[1] is None):
                return "a Split into equal parts needs num_outputs from opset 18"  # (an invalid model there)
            for v in versions.get(n.op_type, ()):
                if old < v <= new and (n.op_type, v) in UNSAFE_BUMPS and not (convert_reduce and v == 18
                                                                               and n.op_type in REDUCE_18):
                    return f"{n.op_type} changed meaning at opset {v}"
    return None


def settle_opset(model: Model, old: int) -> int:
    """After fusing at the raised opset: keep the lowest opset the model's ops need (at least `old`), and an IR
    version that can hold it. Returns that opset."""
    need = max([old] + [_needs(n) for g in model.graphs() for n in g if n.domain in ("", "ai.onnx")])
    model.opset_imports[opset_key(model)] = need
    if need > old:
        ir_needed = min(ir for _release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE if ai_onnx == need)
        model.ir_version = max(model.ir_version or 0, ir_needed)
    return need


def _needs(node) -> int:
    """The opset a node needs (0: any): the fused ops', and 18 for a Reduce op that takes its axes as an input."""
    if node.op_type in REDUCE_18 and len(node.inputs) > 1 and node.inputs[1] is not None:
        return 18
    return NEEDS.get(node.op_type, 0)


class ReduceAxesToInput(Rule):
    """Reduce*(x) {axes=A} -> Reduce*(x, A) (opset 18+): the same reduction in the form opset 18 wants; exact.
    Used only while the transformer fusions raise a model's opset."""

    min_opset: ClassVar[int | None] = 18

    def pattern(self, op, x):
        return Or(*(getattr(op, r)(x, _name="reduce") for r in REDUCE_18))

    def check(self, m, x):
        return require("axes" in m["reduce"].attributes, "no axes attribute")

    def rewrite(self, op, m, x):
        node = m["reduce"]
        attrs = {k: a for k, a in node.attributes.items() if k != "axes"}
        axes = np.asarray(node.attributes["axes"].value, np.int64).reshape(-1)
        return getattr(op, node.op_type)(x, axes, **attrs)
