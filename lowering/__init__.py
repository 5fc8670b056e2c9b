"""optc IR -> TVM Relax lowering."""

from .relax_from_onnx import graph_io, lower_onnx

__all__ = ["graph_io", "lower_onnx"]
