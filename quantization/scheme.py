"""Quantization schemes: what a target's integer kernels want, read by the QDQ insertion rules.

Defaults per target (the command-line options only override them):

- `cpu` (x86): uint8 activations (asymmetric) x int8 weights (symmetric, per-channel). onnxruntime's MLAS
  kernels use VPMADDUBSW / VPDPBUSD, which take one unsigned and one signed operand; signed activations add a
  conversion (measured: onnxruntime's int8-activation QDQ resnet18 is 1.24x *slower* than float32, uint8 0.53x).
  On x86 CPUs without VNNI (AVX2 only), the u8 x s8 products are summed in pairs into int16 by VPMADDUBSW,
  which saturates (255 x 127 x 2 > 32767): there the weights default to 7 bits (`reduce_range`, onnxruntime's
  advice for such machines), measured here to cut a Gemm's error from 6% to the quantization step.
- `arm64`: int8 activations x int8 weights (SDOT takes two signed operands).
- `cuda`: int8 symmetric activations x int8 symmetric weights (TensorRT's explicit-quantization convention).
"""

from __future__ import annotations

import platform
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

    @staticmethod
    def host_saturates() -> bool:
        """True on an x86 host whose int8 dot products go through VPMADDUBSW (no AVX512-VNNI / AVX-VNNI)."""
        from ..codegen.targets import host_cpu_flags

        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return False
        flags = host_cpu_flags()
        return bool(flags) and not ({"avx512_vnni", "avx_vnni"} & flags)

    @classmethod
    def for_target(cls, target: str = "cpu", **overrides) -> QuantScheme:
        """The target's default scheme with `overrides` (None values are ignored; `reduce_range` None: on for
        `cpu` when this x86 host lacks VNNI, see the module docstring). OptcError on an unknown target or type."""
        if target not in TARGETS:
            raise OptcError(f"unknown quantization target '{target}' (known: {', '.join(TARGETS)})")
        if overrides.get("reduce_range") is None:
            overrides["reduce_range"] = target == "cpu" and cls.host_saturates()
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
