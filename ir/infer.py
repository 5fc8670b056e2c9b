"""Per-node type and shape inference, delegated to ONNX's own inference functions."""

from __future__ import annotations

import onnx
from onnx import shape_inference

from .core import Node
from .onnx_export import node_to_proto
from .schema import get_schema
from .types import TensorType, ValueType, type_from_proto, type_to_proto


class InferenceError(ValueError):
    """ONNX's inference rejected the node (bad input types or attributes)."""


def infer_node(node: Node, opsets: dict[str, int], *, use_constants: bool = True) -> list[ValueType | None]:
    """Infer the output types of `node` from its input types (and constant inputs, for shape computations).

    Returns one entry per output (None where inference knows nothing). Raises InferenceError when ONNX's
    inference finds the node invalid. Unknown ops yield all None.
    """
    schema = get_schema(node.domain, node.op_type, opsets.get(node.domain))
    if schema is None or not schema.has_type_and_shape_inference_function:
        return [None] * len(node.outputs)
    proto = node_to_proto(node)
    input_types: dict[str, onnx.TypeProto] = {}
    input_data: dict[str, onnx.TensorProto] = {}
    for v, name in zip(node.inputs, proto.input, strict=False):
        if v is None:
            continue
        t = v.type
        if t is None and v.const is not None:
            t = TensorType(v.const.dtype, v.const.shape)
        if t is not None:
            input_types[name] = type_to_proto(t)
        if use_constants and v.const is not None and getattr(v.const, "size", 1 << 30) <= 1024:
            input_data[name] = v.const.to_proto(name)
    opset_protos = [onnx.helper.make_opsetid(d, ver) for d, ver in opsets.items()]
    try:
        out = shape_inference.infer_node_outputs(schema, proto, input_types, input_data, opset_imports=opset_protos)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError,
            TypeError) as exc:
        raise InferenceError(f"{node!r}: {exc}") from None
    return [type_from_proto(out[o]) if o and o in out else None for o in proto.output]


def infer_types(node: Node, opsets: dict[str, int]) -> None:
    """Set the types of `node`'s outputs that are still unknown."""
    for value, t in zip(node.outputs, infer_node(node, opsets), strict=False):
        if value is not None and value.type is None and t is not None:
            value.type = t
