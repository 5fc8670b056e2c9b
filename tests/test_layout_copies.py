"""codegen/layout_copies.py: the transposes ConvertLayout leaves that need not copy. A transpose before a
Flatten folds into the next matmul's constant weight; a transpose that only moves axes of size 1 is a reshape.
Each case compiles with `optc.compile`, compares with onnxruntime, and checks the prepared Relax module for
the transpose that should (or should not) be left."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper

from .conftest import run_ort


def _model(nodes, shape, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _w(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def _conv_then(tail, channels_in=3, channels=8, batch="N", size=6, extra=()):
    """x -> Conv(3x3, pad 1) -> Relu -> `tail` nodes reading 'r', writing 'y'."""
    rng = np.random.default_rng(0)
    inits = [_w(rng, "cw", [channels, channels_in, 3, 3]), _w(rng, "cb", [channels])]
    inits += [init(rng) for init in extra]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), *tail]
    return _model(nodes, [batch, channels_in, size, size], inits)


def _permutes(model: onnx.ModelProto) -> list[str]:
    """The permute_dims calls left in the prepared (layout-converted) Relax main function, as text."""
    from optc.codegen.build import prepare
    from optc.lowering import lower

    text = prepare(lower(optc.from_onnx(model)), None, "cpu")["main"].script()
    return [line.strip() for line in text.splitlines() if "permute_dims" in line]


def _check(model: onnx.ModelProto, batch: int = 3, tol: float = 1e-5) -> None:
    shape = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = list(optc.compile(model).run({"x": x}).values())[0]
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


FLATTENS = {  # the classifier's head after an NHWC conv: the transpose back to NCHW folds into the weight
    "Flatten + Gemm transB": ([helper.make_node("Flatten", ["r"], ["f"]),
                               helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)],
                              [lambda r: _w(r, "gw", [5, 8 * 36]), lambda r: _w(r, "gb", [5])]),
    "Flatten + Gemm": ([helper.make_node("Flatten", ["r"], ["f"]),
                        helper.make_node("Gemm", ["f", "gw"], ["y"])], [lambda r: _w(r, "gw", [8 * 36, 7])]),
    "MaxPool, Reshape + MatMul": ([helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                                   helper.make_node("Reshape", ["p", "shape"], ["f"]),
                                   helper.make_node("MatMul", ["f", "gw"], ["y"])],
                                  [lambda r: numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
                                   lambda r: _w(r, "gw", [8 * 9, 4])]),
}


@pytest.mark.parametrize("name", list(FLATTENS))
@pytest.mark.parametrize("batch", ["N", 2])
def test_flatten_transpose_folds_into_the_weight(name, batch):
    tail, extra = FLATTENS[name]
    model = _conv_then(tail, batch=batch, extra=extra)
    assert not [p for p in _permutes(model) if "(0, 3, 1, 2)" in p]  # NHWC -> NCHW before the matmul: gone
    _check(model)


def test_flatten_into_two_readers_keeps_the_other_reader_right():
    """The flattened map also feeds an output of its own: the matmul reads x directly, the other reader still
    sees NCHW order."""
    rng = np.random.default_rng(0)
    model = _conv_then([helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "gw"], ["m"]),
                        helper.make_node("ReduceSum", ["m"], ["s"], keepdims=1),
                        helper.make_node("Mul", ["f", "s"], ["y"])], batch=2, extra=[lambda r: _w(rng, "gw",
                                                                                                   [8 * 36, 4])])
    _check(model, tol=1e-4)


def test_transposes_that_must_stay():
    """Negative cases: the flattened rows are not [batch, K] (a Reshape to 3-D), and a transpose moving the
    batch axis: both keep their permute_dims and compute what onnxruntime does."""
    rng = np.random.default_rng(0)
    three_d = _conv_then([helper.make_node("Reshape", ["r", "shape"], ["f"]),
                          helper.make_node("MatMul", ["f", "gw"], ["y"])], batch=2,
                         extra=[lambda r: numpy_helper.from_array(np.array([2, 4, 72], np.int64), "shape"),
                                lambda r: _w(rng, "gw", [72, 5])])
    assert _permutes(three_d)
    _check(three_d)
    batch_moved = _conv_then([helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2, 3]),
                              helper.make_node("Reshape", ["t", "shape"], ["f"]),
                              helper.make_node("MatMul", ["f", "gw"], ["y"])], batch=2,
                             extra=[lambda r: numpy_helper.from_array(np.array([8, -1], np.int64), "shape"),
                                    lambda r: _w(rng, "gw", [72, 5])])
    assert _permutes(batch_moved)
    _check(batch_moved)


def test_unit_axis_transposes_become_reshapes():
    """A one-channel image's NCHW -> NHWC transpose and a pooled [N, C, 1, 1] map's way back move only axes of
    size 1: no permute_dims is left at all."""
    rng = np.random.default_rng(0)
    model = _conv_then([helper.make_node("GlobalAveragePool", ["r"], ["g"]),
                        helper.make_node("Flatten", ["g"], ["f"]),
                        helper.make_node("Gemm", ["f", "gw"], ["y"], transB=1)], channels_in=1,
                       extra=[lambda r: _w(rng, "gw", [5, 8])])
    assert _permutes(model) == []
    _check(model)


def test_symbolic_axis_is_not_a_unit_axis():
    """An axis of symbolic size may be more than 1: a transpose moving it past another stays a transpose."""
    model = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], [1, "S", 4], [])
    assert _permutes(model)
    _check(model)


def _prepared_main(model: onnx.ModelProto) -> str:
    """The prepared Relax main function of the compile path (QDQ patterns as integer ops), as text."""
    from optc.codegen.build import prepare
    from optc.codegen.compile import integer_kernels
    from optc.lowering import lower
    from optc.rewrites import optimize

    ir = optimize(optc.from_onnx(model), level=2)
    integer_kernels(ir, 2)
    return prepare(lower(ir), None, "cpu")["main"].script()


@pytest.mark.parametrize(("channels", "pad", "stride", "x_dtype", "batch"), [
    (3, 1, 2, np.uint8, 1),  # MobileNetV2's stem: a padded image
    (3, 0, 1, np.int8, 2),  # ViT's patch embedding (no spatial padding), int8 activations
    (2, 2, 1, np.uint8, 1),
    (1, 1, 1, np.int8, 1),
    (4, 1, 1, np.uint8, 2),  # no channel padding
])
def test_quantized_image_is_packed_into_nhwc4_words(channels, pad, stride, x_dtype, batch):
    """Rewrite 3: a quantized image of at most 4 channels, padded to 4 and moved to NHWC for the integer conv,
    is written 4 bytes (one pixel) to a word by `pack_nhwc4` instead of a byte-strided transpose. Within 1 unit
    of onnxruntime's QDQ result (the integer conv's contract; the packing itself is exact), the transpose gone."""
    from .test_qinteger import Builder, assert_within_one_unit

    b = Builder([batch, channels, 13, 19], x_dtype=x_dtype, x_zp=0 if x_dtype == np.int8 else 128)
    b.conv("y", 16, 3, stride=stride, pad=pad, act="relu")
    model = b.model()
    text = _prepared_main(model)
    assert "pack_nhwc4" in text
    assert not any("permute_dims" in line and f"({batch}, {channels}," in line for line in text.splitlines())
    x = np.random.default_rng(2).standard_normal((batch, channels, 13, 19)).astype(np.float32) * 2
    assert_within_one_unit(model, x)


@pytest.mark.parametrize("case", ["5 channels", "float conv"])
def test_other_nhwc_transposes_are_not_packed(case):
    """Negative cases: 5 channels (padded to 8, two words a pixel) and a float image keep the transpose."""
    from .test_qinteger import Builder

    if case == "5 channels":
        b = Builder([1, 5, 9, 9])
        b.conv("y", 16, 3, pad=1)
        model = b.model()
    else:
        model = _conv_then([helper.make_node("Identity", ["r"], ["y"])], batch=1)
    text = _prepared_main(model)
    assert "pack_nhwc4" not in text
    assert any("permute_dims" in line for line in text.splitlines())
    if case == "5 channels":
        from .test_qinteger import assert_within_one_unit

        assert_within_one_unit(model, np.random.default_rng(3).standard_normal((1, 5, 9, 9)).astype(np.float32))
    else:
        _check(model, batch=1)


def _shuffled(groups, channels, perm=(0, 2, 1, 3, 4), batch=2, size=5, split=None):
    """Conv -> Relu -> ShuffleNet's channel shuffle: Reshape [N, G, C / G, H, W] (or `split`), Transpose `perm`,
    Reshape back to [N, C, H, W] -> depthwise 3x3 Conv (in NHWC after ConvertLayout, as in ShuffleNet)."""
    split = split or [0, groups, channels // groups, size, size]
    extra = (lambda r: numpy_helper.from_array(np.array(split, np.int64), "split"),
             lambda r: numpy_helper.from_array(np.array([0, channels, size, size], np.int64), "merge"),
             lambda r: _w(r, "dw", [channels, 1, 3, 3]))
    tail = [helper.make_node("Reshape", ["r", "split"], ["s"]), helper.make_node("Transpose", ["s"], ["t"], perm=perm),
            helper.make_node("Reshape", ["t", "merge"], ["m"]),
            helper.make_node("Conv", ["m", "dw"], ["y"], group=channels, pads=[1, 1, 1, 1])]
    return _conv_then(tail, channels=channels, batch=batch, size=size, extra=extra)


def _shuffle_calls(model: onnx.ModelProto) -> int:
    from optc.codegen.build import prepare
    from optc.lowering import lower

    return prepare(lower(optc.from_onnx(model)), None, "cpu")["main"].script().count("channel_shuffle")


@pytest.mark.parametrize(("groups", "channels", "batch"), [(4, 136, 2), (2, 116, 1), (3, 24, 3), (8, 16, 1)])
def test_channel_shuffle_is_one_interleaving_copy(groups, channels, batch):
    from optc.codegen.layout_copies import shuffle_groups

    model = _shuffled(groups, channels, batch=batch)
    assert _shuffle_calls(model) == 1
    _check(model, batch=batch)
    dims = [batch, 5, 5, channels]
    assert shuffle_groups(dims, [("reshape", [batch, 5, 5, groups, channels // groups]),
                                 ("permute", [0, 1, 2, 4, 3]), ("reshape", dims)]) == groups


@pytest.mark.parametrize("case", ["identity transpose", "spatial transpose", "channels and rows mixed"])
def test_other_layout_chains_are_not_shuffles(case):
    """(negative) Chains of the same ops that do not interleave the channels only: left to the layout ops."""
    model = {"identity transpose": lambda: _shuffled(4, 16, perm=(0, 1, 2, 3, 4)),
             "spatial transpose": lambda: _shuffled(4, 16, perm=(0, 1, 2, 4, 3)),
             "channels and rows mixed": lambda: _shuffled(4, 20, perm=(0, 3, 2, 1, 4))}[case]()
    assert _shuffle_calls(model) == 0
    _check(model, batch=2)
