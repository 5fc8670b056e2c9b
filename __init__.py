"""optc: a model-optimizing compiler. Import ONNX into optc's IR, optimize it, emit ONNX or compile with TVM."""

from .errors import OptcError
from .ir import Model, from_onnx, load, save, to_onnx

__version__ = "0.1.0"

__all__ = ["Model", "OptcError", "__version__", "from_onnx", "load", "save", "to_onnx"]
