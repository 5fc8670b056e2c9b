"""Where TVM's ONNX frontend computed something else or failed with a Python error, optc's converters
(lowering/ops/basic.py, shape.py) and the lowering compute what ONNX says or refuse in one line."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper

from .conftest import run_reference
from .lowering_sweep import conformance_case, overall, run_case


def _graph_model(nodes, inputs, outputs, initializers=(), opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    return optc.compile(optc.from_onnx(model)).run(feeds)


def test_nms_keeps_a_box_whose_iou_equals_the_threshold():
    """ONNX suppresses when IoU > threshold, TVM's kernel when IoU >= threshold."""
    boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.5, 1.5]]], np.float32)
    scores = np.array([[[0.9, 0.8]]], np.float32)
    iou = np.float32(0.25) / np.float32(1.75)
    consts = [onnx.numpy_helper.from_array(np.array([5], np.int64), "max"),
              onnx.numpy_helper.from_array(np.array([iou], np.float32), "iou")]
    model = _graph_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou"], ["sel"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 2])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, None)], consts)
    feeds = {"boxes": boxes, "scores": scores}
    got = _run(model, feeds)["sel"]
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])
    assert got.shape == (2, 3)


def test_nms_refuses_run_time_parameters():
    """The frontend replaced a run-time max_output_boxes_per_class by 0 (no boxes at all)."""
    model = _graph_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max"], ["sel"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 2]),
         helper.make_tensor_value_info("max", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, None)])
    with pytest.raises(optc.UnsupportedError, match="max_output_boxes_per_class computed at run time"):
        optc.compile(optc.from_onnx(model))


def test_split_with_zero_sizes_and_eyelike_with_another_dtype():
    x = np.arange(5, dtype=np.float32)
    split = onnx.numpy_helper.from_array(np.array([2, 0, 3], np.int64), "split")
    model = _graph_model(
        [helper.make_node("Split", ["x", "split"], ["a", "b", "c"]),
         helper.make_node("Reshape", ["x6", "shape"], ["a2"]),
         helper.make_node("EyeLike", ["a2"], ["eye"], dtype=TensorProto.DOUBLE, k=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5]),
         helper.make_tensor_value_info("x6", TensorProto.INT32, [6])],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in ("a", "b", "c", "eye")],
        [split, onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "shape")])
    feeds = {"x": x, "x6": np.arange(6, dtype=np.int32)}
    got = _run(model, feeds)
    for name, want in zip(("a", "b", "c", "eye"), run_reference(model, feeds), strict=True):
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_upsample_refuses_scales_below_one():
    model = _graph_model(
        [helper.make_node("Upsample", ["x", "scales"], ["y"], mode="linear")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, 0.5, 1], np.float32), "scales")], opset=9)
    with pytest.raises(optc.UnsupportedError, match="Upsample with scales .* below 1"):
        optc.compile(optc.from_onnx(model))


def test_string_tensors_are_refused_in_one_line():
    model = _graph_model(
        [helper.make_node("Equal", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("b", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [2])])
    with pytest.raises(optc.UnsupportedError, match="string tensors are not supported") as info:
        optc.compile(optc.from_onnx(model))
    assert "\n" not in str(info.value)


def test_a_rank_computed_from_input_values_is_a_refusal_not_a_crash():
    """AffineGrid's function body with a run-time size: the Split/If give tensors of unknown rank."""
    status = run_case(conformance_case("test_affine_grid_3d_expanded"))["inputs"]
    assert status[0] == "unsupported", status
    assert "depends on input values" in status[1]


@pytest.mark.parametrize("case", [
    "test_affine_grid_2d_expanded",  # Unsqueeze with 0-d axes
    "test_nonmaxsuppression_iou_threshold_boundary", "test_nonmaxsuppression_two_batches",
    "test_maxunpool_export_with_output_shape", "test_upsample_nearest",
    "test_optional_has_element_empty_no_input_tensor_input", "test_split_zero_size_splits_opset18",
    "test_eyelike_with_dtype", "test_eyelike_populate_off_main_diagonal",
])
def test_conformance_case_passes(case):
    status, detail = overall(run_case(conformance_case(case)))
    assert status == "pass", detail


def test_an_output_declared_without_a_type_gets_the_inferred_one():
    model = _graph_model([helper.make_node("Relu", ["x"], ["y"])],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                         [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    got = _run(model, {"x": np.array([-1.0, 0.0, 2.0], np.float32)})["y"]
    np.testing.assert_array_equal(got, [0.0, 0.0, 2.0])
    with pytest.raises(optc.OptcError, match="element type of 'y' is unknown"):
        optc.compile(optc.from_onnx(model), level=0)


@pytest.mark.parametrize("case", ["test_tril_zero", "test_triu_one_row", "test_attention_4d_padded_kv_bf16_expanded"])
def test_case_passes_with_every_input_fed_at_run_time(case):
    """Trilu with a run-time k (the frontend's mask was never typed); a bfloat16 ReduceMax (its float32 copy was
    not typed either)."""
    status, detail = run_case(conformance_case(case))["inputs"]
    assert status == "pass", detail


def _batch_one_specialized_model() -> onnx.ModelProto:
    """x [b, s, 4] + Reshape(x, [1, -1, 4]): valid only at b = 1 (as a dynamo export traced at batch 1, whose
    reshapes fold the batch into the sequence). With symbolic dims the sum is [b, max(s, s * b), 4] with a run-time
    check (lowering/broadcast.py; tests/test_fixes_layout_shapes.py)."""
    return _graph_model(
        [helper.make_node("Reshape", ["x", "flat"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"], name="the_add"),
         helper.make_node("Reshape", ["y", "two_d"], ["z"], name="needs_shape")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, -1, 4], np.int64), "flat"),
         onnx.numpy_helper.from_array(np.array([-1, 4], np.int64), "two_d")])


def test_a_shape_lost_upstream_names_where_it_was_lost():
    """Squeeze without axes of [b, s, 4]: its rank depends on b and s at run time; the refusal of the Reshape that
    needs it names the Squeeze."""
    model = _graph_model(
        [helper.make_node("Squeeze", ["x"], ["y"], name="the_squeeze"),
         helper.make_node("Reshape", ["y", "two_d"], ["z"], name="needs_shape")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([-1, 4], np.int64), "two_d")])
    with pytest.raises(optc.UnsupportedError) as info:
        optc.compile(optc.from_onnx(model), level=0)
    message = str(info.value)
    assert "\n" not in message
    assert "Reshape node 'needs_shape'" in message
    assert "from Squeeze node 'the_squeeze', inputs [b, s, 4])" in message, message
    assert "--input-shape" in message


def test_fixing_the_input_shapes_compiles_the_batch_one_specialized_model():
    model = _batch_one_specialized_model()
    x = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
    got = optc.compile(optc.from_onnx(model), level=0, input_shapes={"x": (1, 5, 4)}).run({"x": x})["z"]
    np.testing.assert_array_equal(got, run_reference(model, {"x": x})[0])
