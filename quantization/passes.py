"""Quantization rule sets as registered passes, so pipelines, `--bisect-limit`, `--print-ir-after` and the
rewrite budget work for them as for every other pass:

    optc optimize m.onnx -o q.onnx -p "insert-qdq{calibration=calib.npz},cse,dce" --bisect-limit 12
    optc optimize m.onnx -o q.onnx -p "quantize-dynamic,cse,dce"

`insert-qdq` calibrates the graph it is given (the ranges belong to that graph's values: ranges measured on
another model, or on this model before other passes renamed its values, would quantize with wrong ranges or
not at all), then runs the QDQ rules. `optc quantize` is the same with -O2 first and a cache.
"""

from __future__ import annotations

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

__all__ = ["InsertQdq", "QuantizeDynamic"]


@register_pass
@dataclass
class InsertQdq(Pass):
    """Static QDQ insertion (the rules of quantization/qdq_rules.py) on ranges calibrated on this graph."""

    name: ClassVar[str] = "insert-qdq"
    description: ClassVar[str] = ("calibrate on calibration=DATA (.npz file or directory; method=minmax|percentile|"
                                  "entropy) and put QuantizeLinear/DequantizeLinear around quantizable ops; target, "
                                  "activations, per-channel options")
    option_help: ClassVar[dict[str, str]] = {
        "calibration": "the calibration data: an .npz file or a directory of them (required)",
        "method": "how ranges are chosen: minmax, percentile or entropy",
        "target": "the quantization scheme of a target: cpu, arm64 or cuda",
        "activations": "activation type: uint8 or int8 (default: the target's)",
        "per-channel": "per-channel weight scales (false: one scale per tensor)",
    }
    calibration: str = ""
    method: str = "minmax"
    target: str = "cpu"
    activations: str = ""
    per_channel: bool = True

    def __post_init__(self):
        from .calibrate import METHODS

        if not self.calibration:
            raise OptcError("pass 'insert-qdq' needs calibration=DATA (an .npz file or a directory of them)")
        if self.method not in METHODS:
            raise OptcError(f"pass 'insert-qdq': unknown method '{self.method}' (known: {', '.join(METHODS)})")
        self._scheme()

    def _scheme(self) -> QuantScheme:
        try:
            return QuantScheme.for_target(self.target, activations=self.activations or None,
                                          per_channel=self.per_channel)
        except OptcError as exc:
            raise OptcError(f"pass 'insert-qdq': {str(exc).replace('--activations', 'activations')}") from None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from .calibrate import calibrate
        from .data import model_input_specs, open_dataset

        data = open_dataset(self.calibration, model_input_specs(model), role="calibration data")
        cal = calibrate(model, data, method=self.method)
        qctx = QdqContext(self._scheme(), dict(cal.ranges), set(cal.nonfinite))
        return apply_rules(model, qdq_rules(qctx), ctx, self.name)


@register_pass
@dataclass
class QuantizeDynamic(Pass):
    """Dynamic quantization of MatMul/Gemm weights (the rules of quantization/dynamic.py)."""

    name: ClassVar[str] = "quantize-dynamic"
    description: ClassVar[str] = ("MatMul/Gemm with constant weights -> DynamicQuantizeLinear + MatMulInteger "
                                  "(int8 weights, per-channel)")
    option_help: ClassVar[dict[str, str]] = {
        "per-channel": "per-channel weight scales (false: one scale per tensor)",
    }
    per_channel: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        rr = QuantScheme.host_saturates()
        return apply_rules(model, dynamic_rules(DynamicContext(self.per_channel, rr)), ctx, self.name)
