"""Quantization: calibration, QDQ insertion rules, dynamic, weight-only int4, fp16/bf16, accuracy-aware."""
