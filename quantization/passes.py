"""Quantization rule sets as registered passes, so pipelines, `--bisect-limit`, `--print-ir-after` and the
rewrite budget work for them as for every other pass:

    optc optimize m.onnx -o q.onnx -p "insert-qdq{ranges=report.json},cse,dce" --bisect-limit 12
    optc optimize m.onnx -o q.onnx -p "quantize-dynamic,cse,dce"

`insert-qdq` reads calibrated ranges from a JSON file: the report of `optc quantize --report` (its
`calibration` section) or any `{"ranges": {name: [min, max]}, "nonfinite": [...]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from ..errors import OptcError
from ..ir.core import Model
from ..rewrites.context import PassContext, PassResult
from ..rewrites.driver import apply_rules
from ..rewrites.pass_manager import Pass, register_pass
from .dynamic import DynamicContext, dynamic_rules
from .qdq_rules import QdqContext, qdq_rules
from .scheme import QuantScheme

__all__ = ["InsertQdq", "QuantizeDynamic", "read_ranges"]


def read_ranges(path: str) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """(ranges, nonfinite names) from a quantize report or a ranges file; OptcError when unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise OptcError(f"cannot read ranges '{path}': {exc}") from None
    section = data.get("calibration", data) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("ranges"), dict):
        raise OptcError(f"ranges '{path}' has no 'ranges' object (give the report of optc quantize --report)")
    try:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in section["ranges"].items()}
    except (TypeError, ValueError, IndexError):
        raise OptcError(f"ranges '{path}': every range must be [min, max]") from None
    return ranges, set(section.get("nonfinite", ()))


@register_pass
@dataclass
class InsertQdq(Pass):
    """Static QDQ insertion from calibrated ranges (the rules of quantization/qdq_rules.py)."""

    name: ClassVar[str] = "insert-qdq"
    description: ClassVar[str] = ("put QuantizeLinear/DequantizeLinear around quantizable ops from calibrated ranges "
                                  "(ranges=FILE: an optc quantize report); target, activations, per-channel options")
    ranges: str = ""
    target: str = "cpu"
    activations: str = ""
    per_channel: bool = True

    def __post_init__(self):
        if not self.ranges:
            raise OptcError("pass 'insert-qdq' needs ranges=FILE (the report of optc quantize --report)")
        QuantScheme.for_target(self.target, activations=self.activations or None)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        ranges, nonfinite = read_ranges(self.ranges)
        scheme = QuantScheme.for_target(self.target, activations=self.activations or None,
                                        per_channel=self.per_channel)
        return apply_rules(model, qdq_rules(QdqContext(scheme, ranges, nonfinite)), ctx, self.name)


@register_pass
@dataclass
class QuantizeDynamic(Pass):
    """Dynamic quantization of MatMul/Gemm weights (the rules of quantization/dynamic.py)."""

    name: ClassVar[str] = "quantize-dynamic"
    description: ClassVar[str] = ("MatMul/Gemm with constant weights -> DynamicQuantizeLinear + MatMulInteger "
                                  "(int8 weights, per-channel)")
    per_channel: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        rr = QuantScheme.host_saturates()
        return apply_rules(model, dynamic_rules(DynamicContext(self.per_channel, rr)), ctx, self.name)
