"""Quantization schemes: what a target's integer kernels want, read by the QDQ insertion rules.

Defaults per target (the command-line options only override them):

- `cpu` (x86): uint8 activations (asymmetric) x int8 weights (symmetric, per-channel). onnxruntime's MLAS
  kernels use VPMADDUBSW / VPDPBUSD, which take one unsigned and one signed operand; signed activations add a
  conversion (measured: onnxruntime's int8-activation QDQ resnet18 is 1.24x *slower* than float32, uint8 0.53x).
- `arm64`: int8 activations x int8 weights (SDOT takes two signed operands).
- `cuda`: int8 symmetric activations x int8 symmetric weights (TensorRT's explicit-quantization convention).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import OptcError

__all__ = ["QuantScheme", "TARGETS"]

TARGETS = ("cpu", "arm64", "cuda")


@dataclass(frozen=True)
class QuantScheme:
    """activations / weights: "uint8" or "int8"; per_channel: one weight scale per output channel (the right axis
    per op: Conv 0, ConvTranspose 1, MatMul 1 (columns), Gemm 0 or 1 by transB); symmetric_*: zero point 0
    (128 for uint8); reduce_range: 7-bit weights."""

    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    reduce_range: bool = False

    @classmethod
    def for_target(cls, target: str = "cpu", **overrides) -> QuantScheme:
        """The target's default scheme with `overrides` (None values are ignored). OptcError on an unknown
        target or type."""
        if target not in TARGETS:
            raise OptcError(f"unknown quantization target '{target}' (known: {', '.join(TARGETS)})")
        base = {"cpu": cls(), "arm64": cls(activations="int8"),
                "cuda": cls(activations="int8", symmetric_activations=True)}[target]
        scheme = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        if scheme.activations not in ("uint8", "int8"):
            raise OptcError(f"--activations must be uint8 or int8, not '{scheme.activations}'")
        if scheme.weights not in ("int8", "uint8"):
            raise OptcError(f"static quantization stores int8 weights; '{scheme.weights}' weights are for "
                            f"--weight-only (e.g. --weight-only int4)")
        return scheme

    def to_json(self) -> dict:
        return asdict(self)
