"""Per-node type and shape inference, delegated to ONNX's own inference functions."""

from __future__ import annotations

import onnx
from onnx import shape_inference

from .core import Node
from .onnx_export import node_to_proto
from .schema import get_schema
from .types import DataType, TensorType, ValueType, type_from_proto, type_to_proto


class InferenceError(ValueError):
    """ONNX's inference rejected the node (bad input types or attributes)."""


def infer_node(node: Node, opsets: dict[str, int], *, use_constants: bool = True) -> list[ValueType | None]:
    """Infer the output types of `node` from its input types (and constant inputs, for shape computations).

    Returns one entry per output (None where inference knows nothing). Raises InferenceError when ONNX's
    inference finds the node invalid. Unknown ops yield all None; onnxruntime's contrib ops, which have no schema
    in onnx, are inferred where `_CONTRIB` has them.
    """
    schema = get_schema(node.domain, node.op_type, opsets.get(node.domain))
    if schema is None and (node.domain, node.op_type) in _CONTRIB:
        return _CONTRIB[(node.domain, node.op_type)](node)
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


def _qgemm(node: Node) -> list[ValueType | None]:
    """com.microsoft QGemm (onnxruntime's contrib_ops/cpu/quantization/quant_gemm.cc: inputs A, a_scale,
    a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point): Y is [M, N] of y_zero_point's type (uint8
    with y_scale alone), float32 without y_scale. A quantized model in QOperator format feeds it to other QLinear
    ops, whose rewrites need its type."""
    inputs = [*node.inputs, *[None] * (9 - len(node.inputs))]
    a, b, y_scale, y_zp = inputs[0], inputs[3], inputs[7], inputs[8]
    if a is None or b is None:
        return [None] * len(node.outputs)
    if y_scale is None:
        dtype = DataType.FLOAT
    elif y_zp is not None and y_zp.dtype is not None:
        dtype = y_zp.dtype
    else:
        dtype = DataType.UINT8
    a_shape, b_shape = a.shape, b.shape
    m = a_shape[1 if node.attr("transA", 0) else 0] if a_shape is not None and len(a_shape) == 2 else None
    n = b_shape[0 if node.attr("transB", 0) else 1] if b_shape is not None and len(b_shape) == 2 else None
    return [TensorType(DataType(dtype), (m, n)), *[None] * (len(node.outputs) - 1)]


#: (domain, op type) -> output types, for onnxruntime contrib ops that onnx has no schema for
_CONTRIB = {("com.microsoft", "QGemm"): _qgemm}
#: the ops `_CONTRIB` infers
CONTRIB_OPS = frozenset(_CONTRIB)


def infer_types(node: Node, opsets: dict[str, int]) -> None:
    """Set the types of `node`'s outputs that are still unknown."""
    for value, t in zip(node.outputs, infer_node(node, opsets), strict=False):
        if value is not None and value.type is None and t is not None:
            value.type = t
