"""optc's graph IR: values, nodes, graphs, models; ONNX import/export; verification and printing."""

from .core import Attr, AttrType, Function, Graph, Model, Node, Use, Value, outer_scope_values
from .io import load, save
from .onnx_export import to_onnx
from .onnx_import import from_onnx
from .tensors import ExternalTensor, NumpyTensor, ProtoTensor, SparseTensor, Tensor
from .types import DataType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType

__all__ = [
    "Attr", "AttrType", "DataType", "ExternalTensor", "Function", "Graph", "MapType", "Model", "Node",
    "NumpyTensor", "OptionalType", "ProtoTensor", "SequenceType", "SparseTensor", "SparseTensorType", "Tensor",
    "TensorType", "Use", "Value", "from_onnx", "load", "outer_scope_values", "save", "to_onnx",
]
