"""optc's gather and scatter converters (lowering/ops/indexing.py) and the symbolic shape computations of
dynamo-exported transformers (lowering/shape_values.py), against onnxruntime.

ONNX allows int32 indices for Gather, GatherElements and ScatterElements but only int64 for GatherND and
ScatterND (onnxruntime rejects int32 there; exporters and optc's own shape computations can still produce
them): the reference for an int32 case is onnxruntime on the same model with int64 indices.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper

from .conftest import outputs_mismatch, run_ort

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TINY_BERT = os.path.join(DATA, "tiny_bert_dynamo.onnx")
_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
          np.dtype(np.int64): TensorProto.INT64}


def _model(op: str, feeds: dict, consts: dict, attrs: dict, opset: int = 18) -> onnx.ModelProto:
    node = helper.make_node(op, list(feeds) + list(consts), ["y"], **attrs)
    graph = helper.make_graph(
        [node], op.lower(),
        [helper.make_tensor_value_info(k, _TYPES[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _as_int64(arrays: dict) -> dict:
    return {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in arrays.items()}


def _run_optc(model: onnx.ModelProto, feeds: dict) -> list:
    import tvm
    from optc.codegen import build
    from optc.lowering.relax_lowering import lower
    from tvm import relax

    vm = relax.VirtualMachine(build(lower(optc.from_onnx(model)), target="cpu"), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in feeds.values()])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _check(op: str, inputs: dict, attrs: dict, constant_indices: bool = False, opset: int = 18) -> None:
    """Compile `op` (indices fed at run time, or a constant) and compare with onnxruntime."""
    names = list(inputs)
    consts = {names[1]: inputs[names[1]]} if constant_indices else {}
    feeds = {k: v for k, v in inputs.items() if k not in consts}
    model = _model(op, feeds, consts, attrs, opset)
    want = run_ort(_model(op, _as_int64(feeds), _as_int64(consts), attrs, opset), _as_int64(feeds))
    got = _run_optc(model, feeds)
    assert outputs_mismatch(got, want) is None, outputs_mismatch(got, want)


_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((2, 3, 4)).astype(np.float32)
_X4 = _RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("batch_dims,data,indices", [
    (0, _X, [[1, -1], [0, 2], [-2, -3]]),                    # pairs into [2, 3]: slices of 4
    (0, _X, [[[1, -1, 3]], [[0, 2, -4]]]),                    # full coordinates: scalars
    (1, _X, [[[2], [-1]], [[0], [-3]]]),                      # per batch row
    (2, _X4, np.array([[[1], [-2]], [[-4], [0]], [[3], [2]]] * 2).reshape(2, 3, 2, 1)),
])
def test_gather_nd_matches_onnxruntime(dtype, batch_dims, data, indices):
    _check("GatherND", {"x": data, "i": np.array(indices, dtype)}, {"batch_dims": batch_dims})


def test_gather_nd_constant_int32_indices():
    _check("GatherND", {"x": _X, "i": np.array([[1, -1], [0, 2]], np.int32)}, {"batch_dims": 0},
           constant_indices=True)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op,attrs,indices", [
    ("Gather", {"axis": 1}, [[0, -1], [2, -3]]),
    ("Gather", {"axis": -1}, [3, -4, 0]),
    ("GatherElements", {"axis": 2}, [[[0, -1], [3, -4], [1, 2]]] * 2),
])
def test_gather_and_gather_elements_match_onnxruntime(dtype, op, attrs, indices):
    _check(op, {"x": _X, "i": np.array(indices, dtype)}, attrs)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("reduction", ["none", "add", "max"])
def test_scatter_nd_matches_onnxruntime(dtype, reduction):
    indices = [[1, -1], [0, 2]] if reduction == "none" else [[1, -1], [1, 2], [-1, 2]]  # repeats accumulate
    updates = _RNG.standard_normal((len(indices), 4)).astype(np.float32)
    _check("ScatterND", {"x": _X, "i": np.array(indices, dtype), "u": updates}, {"reduction": reduction})


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("axis,reduction", [(2, "none"), (0, "add"), (-2, "mul"), (1, "min")])
def test_scatter_elements_matches_onnxruntime(dtype, axis, reduction):
    shape = {2: (2, 3, 2), 0: (3, 3, 4), -2: (2, 2, 4), 1: (2, 2, 4)}[axis]
    extent = _X.shape[axis]
    if reduction == "none":  # distinct positions along the axis (repeats leave the order unspecified)
        indices = np.broadcast_to(np.array([1, -1]).reshape([1] * 2 + [2]), shape)
    else:
        indices = _RNG.integers(-extent, extent, shape)
    updates = _RNG.standard_normal(shape).astype(np.float32)
    _check("ScatterElements", {"x": _X, "i": np.array(indices, dtype), "u": updates},
           {"axis": axis, "reduction": reduction})


def test_scatter_opset_10_matches_onnxruntime():
    updates = np.array([[1.5, 2.5]] * 2, np.float32)
    _check("Scatter", {"x": _X[:, :, 0], "i": np.array([[2, -3]] * 2, np.int32), "u": updates}, {"axis": 1},
           opset=10)


@pytest.mark.parametrize("op,inputs,attrs,opset,reason", [
    ("GatherND", {"x": _X, "i": np.array([[0, 1]], np.int64)}, {"batch_dims": 2}, 18, "batch_dims=2"),
    ("GatherND", {"x": _X, "i": np.zeros((2, 4), np.int64)}, {}, 18, "tuples of length 4"),
    ("GatherND", {"x": _X4[:, :2], "i": np.zeros((3, 1), np.int64)}, {"batch_dims": 1}, 18, "batch dim 0"),
    ("ScatterND", {"x": _X, "i": np.zeros((1, 2), np.int64), "u": np.zeros((1, 4), np.float32)},
     {"reduction": "max"}, 16, "reduction 'max'"),
    ("ScatterElements", {"x": _X, "i": np.zeros((2, 3), np.int64), "u": np.zeros((2, 3), np.float32)}, {}, 18,
     "rank"),
])
def test_invalid_indexing_nodes_are_refused(op, inputs, attrs, opset, reason):
    from optc.lowering.relax_lowering import lower

    model = _model(op, inputs, {}, attrs, opset)
    with pytest.raises(optc.UnsupportedError, match=reason):
        lower(optc.from_onnx(model))


def test_gather_nd_on_indices_computed_from_a_static_shape():
    """GatherND(x, Shape(x)[:2] - 1): the shape computation is evaluated at compile time; its value used to be
    materialized as int32, which gather_nd rejected."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], end=2),
             helper.make_node("Sub", ["s", "one"], ["last"]),
             helper.make_node("Unsqueeze", ["last", "zero"], ["idx"]),
             helper.make_node("GatherND", ["x", "idx"], ["y"]),
             helper.make_node("Shape", ["x"], ["shape"])]
    graph = helper.make_graph(nodes, "last", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("shape", TensorProto.INT64, None)],
                              [numpy_helper.from_array(np.array(1, np.int64), "one"),
                               numpy_helper.from_array(np.array([0], np.int64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    got = _run_optc(model, {"x": _X})
    assert got[1].dtype == np.int64  # a graph output computed from shapes keeps ONNX's int64
    assert outputs_mismatch(got, run_ort(model, {"x": _X})) is None


def _symbolic_slice_model() -> onnx.ModelProto:
    """table[:, :seq] * 1.0 with seq = x.shape[1] (symbolic), as exporters slice position-id buffers."""
    nodes = [helper.make_node("Shape", ["x"], ["seq"], start=1, end=2),
             helper.make_node("Slice", ["table", "zero", "seq", "one"], ["part"]),
             helper.make_node("Cast", ["part"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "slice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.arange(8, dtype=np.int64).reshape(1, 8), "table"),
                               numpy_helper.from_array(np.array([0], np.int64), "zero"),
                               numpy_helper.from_array(np.array([1], np.int64), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_slice_with_a_symbolic_bound_keeps_its_shape_and_checks_the_bound():
    import tvm
    from optc.codegen import build
    from optc.lowering.relax_lowering import lower
    from tvm import relax

    mod = lower(optc.from_onnx(_symbolic_slice_model()))
    assert "ndim=" not in mod.script()  # every shape known (symbolic), none reduced to a rank
    vm = relax.VirtualMachine(build(mod, target="cpu"), tvm.cpu())
    for seq in (1, 5, 8):
        got = vm["main"](tvm.runtime.tensor(np.zeros((2, seq), np.float32))).numpy()
        np.testing.assert_array_equal(got, np.arange(seq, dtype=np.float32).reshape(1, seq))
    with pytest.raises(Exception, match="match_cast"):  # ONNX would clamp to 8: an error, not other values
        vm["main"](tvm.runtime.tensor(np.zeros((2, 9), np.float32)))


def _bert_feeds(batch: int, seq: int) -> dict:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq * 3 // 4:] = 0  # right padding in the last row: its pooled token is not the last one
    return {"input_ids": rng.integers(0, 100, (batch, seq)).astype(np.int64), "attention_mask": mask}


def _compile_and_match(model: onnx.ModelProto, shapes) -> None:
    module = optc.compile(optc.from_onnx(model), target="cpu")
    for batch, seq in shapes:
        feeds = _bert_feeds(batch, seq)
        want = run_ort(model, feeds)
        out = module.run(feeds)
        got = [out[o.name] for o in model.graph.output]
        assert [g.shape for g in got] == [w.shape for w in want]
        assert outputs_mismatch(got, want, rtol=1e-4, atol=1e-5) is None, (batch, seq)


def test_tiny_dynamo_bert_compiles_and_matches_onnxruntime():
    """A dynamo-exported BERT (tests/data/make_tiny_bert_dynamo.py) with symbolic batch and seq: Range over a
    symbolic dim, shape values reshaped, Expand over symbolic dims, GatherND pooling; two input shapes."""
    model = onnx.load(TINY_BERT)
    assert {n.op_type for n in model.graph.node} >= {"GatherND", "Range", "Expand"}
    _compile_and_match(model, [(2, 16), (3, 40)])


@pytest.mark.slow
def test_dynamo_bert_exported_now_compiles_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from .data.make_tiny_bert_dynamo import export

    _compile_and_match(export(str(tmp_path / "bert.onnx")), [(2, 16), (1, 7)])
