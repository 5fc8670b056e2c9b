"""optc's graph IR: values, nodes, graphs, models; ONNX import/export; verification and printing."""

from .core import Attr, AttrType, Function, Graph, Model, Node, Use, Value, outer_scope_values
from .io import load, save
from .onnx_export import to_onnx
from .onnx_import import from_onnx
from .parser import ParseError, parse
from .tensors import ExternalTensor, NumpyTensor, ProtoTensor, SparseTensor, Tensor
from .types import DataType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType

__all__ = [
    "Attr", "AttrType", "DataType", "ExternalTensor", "Function", "Graph", "MapType", "Model", "Node",
    "NumpyTensor", "OptionalType", "ParseError", "ProtoTensor", "SequenceType", "SparseTensor", "SparseTensorType", "Tensor",
    "TensorType", "Use", "Value", "from_graphsurgeon", "from_onnx", "load", "outer_scope_values", "parse", "save",
    "to_graphsurgeon", "to_networkx", "to_onnx",
]

# Imported on first use: onnx_graphsurgeon and networkx add ~80 ms to every `import optc`.
_LAZY = {"from_graphsurgeon": ".graphsurgeon", "to_graphsurgeon": ".graphsurgeon", "to_networkx": ".nx_view"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
