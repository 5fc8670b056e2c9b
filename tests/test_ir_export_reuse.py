"""Export reuses imported NodeProtos / ValueInfoProtos only while nothing changed them.

Every test changes an imported model one way and checks that export writes exactly what it would write for a
model built without any imported protos (the reference: the same edit on a model whose protos were dropped).
"""

from __future__ import annotations

import onnx
import pytest
from optc.ir import AttrType, Node, Value, load, to_onnx
from optc.ir.onnx_export import to_onnx_bytes

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x, float[4, 4] w) => (float[N, 4] y) {
    h = MatMul (x, w)
    r = Relu (h)
    s = Softmax <axis = 1> (r)
    y = Add (s, h)
}
"""


def _model():
    """The model, from a file in export's own canonical form (the parser sets empty fields, such as
    `domain: ""`, that export leaves unset: a reused proto keeps them, so it would differ from a fresh one)."""
    proto = onnx.shape_inference.infer_shapes(onnx.parser.parse_model(TEXT))
    first = load(proto.SerializeToString())
    _forget_all(first)
    return load(to_onnx(first).SerializeToString())


def _forget_all(model) -> None:
    for n in model.graph:
        n._proto = None
        for v in n.outputs:
            v._vi = None
    for v in model.graph.inputs + model.graph.outputs:
        v._vi = None


def _by_type(model, op_type: str) -> Node:
    return model.graph.nodes_by_op(op_type)[0]


def _rename_output(m):
    _by_type(m, "Relu").output.name = "renamed"


def _rename_input(m):
    m.graph.inputs[0].name = "x2"


def _set_input(m):
    _by_type(m, "Relu").set_input(0, m.graph.inputs[0])


def _set_attr(m):
    _by_type(m, "Softmax").set_attr("axis", -1)


def _attr_in_place(m):
    _by_type(m, "Softmax").attributes["axis"].value = 0


def _op_type(m):
    n = _by_type(m, "Relu")
    n.op_type = "Sigmoid"


def _node_name(m):
    _by_type(m, "MatMul").name = "mm"


def _doc(m):
    _by_type(m, "Add").doc_string = "a doc"


def _metadata(m):
    _by_type(m, "Add").metadata_props = {"k": "v"}


def _outputs(m):
    n = _by_type(m, "Relu")
    n.outputs = [Value("fresh")]
    _by_type(m, "Softmax").set_input(0, n.outputs[0])


def _value_type(m):
    from optc.ir import DataType, TensorType

    _by_type(m, "Relu").output.type = TensorType(DataType.FLOAT, ("N", 4))


def _value_doc(m):
    _by_type(m, "Relu").output.doc_string = "value doc"


def _duplicate_name(m):
    # an edit that leaves two values named "h": export must rename one, and then not reuse the stale proto
    _by_type(m, "Relu").output.name = "h"


def _new_node(m):
    relu = _by_type(m, "Relu")
    neg = Node("Neg", [relu.output])
    m.graph.insert_after(relu, neg)
    _by_type(m, "Softmax").set_input(0, neg.output)


EDITS = [_rename_output, _rename_input, _set_input, _set_attr, _attr_in_place, _op_type, _node_name, _doc,
         _metadata, _outputs, _value_type, _value_doc, _duplicate_name, _new_node]


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__.strip("_"))
def test_edit_is_exported_as_without_reuse(edit):
    fast, reference = _model(), _model()
    _forget_all(reference)
    edit(fast)
    edit(reference)
    assert to_onnx(fast) == to_onnx(reference)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(to_onnx_bytes(fast))
    assert parsed == to_onnx(reference)


def test_unchanged_model_reuses_protos_and_round_trips():
    proto = onnx.shape_inference.infer_shapes(onnx.parser.parse_model(TEXT))
    m = load(proto.SerializeToString())
    assert all(n._proto is not None for n in m.graph)
    assert all(n.output._vi is not None for n in m.graph if not m.graph.is_output(n.output))
    out = to_onnx(m)
    assert list(out.graph.node) == list(proto.graph.node)
    assert list(out.graph.value_info) == list(proto.graph.value_info)


def test_reading_attributes_drops_the_proto():
    m = _model()
    n = _by_type(m, "Softmax")
    assert n._proto is not None
    assert n.attributes["axis"].type == AttrType.INT
    assert n._proto is None


def test_to_onnx_bytes_equals_to_onnx():
    m = _model()
    parsed = onnx.ModelProto()
    parsed.ParseFromString(to_onnx_bytes(m))
    assert parsed == to_onnx(m)
    assert parsed.SerializeToString() == to_onnx(m).SerializeToString()
