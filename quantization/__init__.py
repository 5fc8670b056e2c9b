"""Quantization: calibration, QDQ insertion rules, dynamic, weight-only int4, fp16/bf16, accuracy-aware."""

from .api import quantize, quantize_with_report

__all__ = ["quantize", "quantize_with_report"]
