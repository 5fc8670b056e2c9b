"""optc: a model-optimizing compiler. Import ONNX into optc's IR, optimize it, emit ONNX or compile with TVM."""

from . import runtime
from .codegen.compile import compile  # noqa: A004 - optc.compile is the public name
from .errors import OptcError, UnsupportedError
from .ir import Model, from_onnx, load, save, to_onnx
from .quantization import quantize
from .rewrites import optimize
from .workflow import auto, evaluate, profile, prune
from .workflow.bench import bench
from .workflow.compare import compare_models as compare
from .workflow.verify import verify

__version__ = "0.1.0"

__all__ = ["Model", "OptcError", "UnsupportedError", "__version__", "auto", "bench", "compare", "compile", "evaluate", "from_onnx", "load", "optimize", "profile", "prune", "quantize",
           "runtime", "save", "to_onnx", "verify"]
