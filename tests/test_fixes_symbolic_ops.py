"""Ops the TVM back end refused or failed to build on symbolic dims, and the forms of them it computed wrong at
fixed shapes, each compiled once and checked against onnxruntime at several input sizes:

1. Resize with scales on a symbolic dim (an exact size: scale 1 or a whole scale), Resize-10, Resize with an
   empty scales input beside sizes, sizes from a shape computation; Upsample in linear mode.
2. CumSum along a symbolic axis (the position ids of RoBERTa / GPT-2 exports): the TVM build failed.
3. MaxPool / AveragePool / LpPool with ceil_mode=1 and pads, or auto_pad SAME_UPPER / SAME_LOWER, on symbolic
   H / W: the TVM build failed, or a Python error in the lowering; at fixed shapes LpPool with ceil_mode computed
   wrong values and MaxPool SAME_LOWER gave a wrong output shape.
4. Conv with auto_pad SAME_UPPER / SAME_LOWER on symbolic H / W: a Python error in the lowering.
5. Cast to string: the refusal says what is not supported.
6. Concat of inputs whose dims off the axis are written differently (a symbolic batch beside a static one, two
   graph inputs' unrelated batches): the TVM build failed on the unlowered concat.
"""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from .conftest import run_ort

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def _model(nodes: list, dims: list, inits: dict | None = None, opset: int = 18, dtype: int = F) -> onnx.ModelProto:
    """One input x of `dims` (ints and dim names), one output y."""
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dtype, dims)],
                     [h.make_tensor_value_info("y", dtype, None)],
                     [nh.from_array(v, k) for k, v in (inits or {}).items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


def _f32(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _equals_onnxruntime(model: onnx.ModelProto, shapes: list[tuple], dtype=np.float32, rtol: float = 1e-4,
                        atol: float = 1e-5) -> None:
    """The model compiled once equals onnxruntime at every input shape (shapes and values)."""
    lib = optc.compile(optc.from_onnx(model))
    for shape in shapes:
        x = RNG.standard_normal(shape).astype(dtype) if dtype == np.float32 else \
            RNG.integers(-3, 4, shape).astype(dtype)
        want = run_ort(model, {"x": x})[0]
        got = lib.run({"x": x})["y"]
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=str(shape))


def _refused(model: onnx.ModelProto, match: str) -> None:
    with pytest.raises(optc.UnsupportedError, match=match) as info:
        optc.compile(optc.from_onnx(model))
    assert "\n" not in str(info.value)


def _scales(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def _ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


# -- 1. Resize / Upsample -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_scales_on_a_symbolic_batch(mode):
    node = h.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode)
    _equals_onnxruntime(_model([node], ["N", 3, 5, 7], {"sc": _scales(1, 1, 2, 3)}), [(1, 3, 5, 7), (3, 3, 5, 7)])


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_whole_scales_on_symbolic_spatial_dims(mode):
    node = h.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode, coordinate_transformation_mode="asymmetric",
                       nearest_mode="floor")
    _equals_onnxruntime(_model([node], ["N", 3, "H", "W"], {"sc": _scales(1, 1, 2, 3)}),
                        [(2, 3, 5, 7), (1, 3, 1, 2), (1, 3, 8, 8)])


@pytest.mark.parametrize("rank", [3, 5])
def test_resize_1d_and_3d_on_symbolic_dims(rank):
    node = h.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear" if rank == 3 else "nearest")
    dims = ["N", 2] + [f"d{i}" for i in range(rank - 2)]
    scales = _scales(1, 1, *([2, 1, 3][: rank - 2]))
    _equals_onnxruntime(_model([node], dims, {"sc": scales}), [(2, 2, *range(3, rank + 1)), (1, 2, *[1] * (rank - 2))])


@pytest.mark.parametrize(("mode", "scales", "dims"), [
    ("linear", (1, 1, 2, 2), ["N", 3, 4, 4]),
    ("nearest", (1, 1, 2, 2), [2, 3, 4, 4]),
    ("nearest", (1, 1, 1.5, 1.5), [1, 2, 4, 6]),  # upsampling: the coordinate floored
    ("nearest", (1, 1, 0.75, 0.5), [1, 2, 8, 8]),  # downsampling: ceiled
    ("linear", (1, 1, 1.5, 1.5), [1, 2, 4, 6]),
])
def test_resize_opset_10(mode, scales, dims):
    model = _model([h.make_node("Resize", ["x", "sc"], ["y"], mode=mode)], dims, {"sc": _scales(*scales)}, opset=10)
    _equals_onnxruntime(model, [tuple(2 if d == "N" else d for d in dims), tuple(1 if d == "N" else d for d in dims)])


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_resize_empty_scales_beside_sizes(opset):
    node = h.make_node("Resize", ["x", "e", "e", "sz"], ["y"], mode="linear")
    model = _model([node], [2, 3, 5, 7], {"e": np.zeros(0, np.float32), "sz": _ints(2, 3, 9, 4)}, opset=opset)
    _equals_onnxruntime(model, [(2, 3, 5, 7)])


def test_resize_sizes_from_a_shape_computation():
    """sizes = Concat(Shape(x)[:2], Shape(x)[2:] * [2, 3]) on a symbolic N, H, W."""
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Slice", ["s", "zero", "two"], ["batch_channels"]),
             h.make_node("Slice", ["s", "two", "four"], ["spatial"]),
             h.make_node("Mul", ["spatial", "k"], ["scaled"]),
             h.make_node("Concat", ["batch_channels", "scaled"], ["sizes"], axis=0),
             h.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")]
    inits = {"zero": _ints(0), "two": _ints(2), "four": _ints(4), "k": _ints(2, 3)}
    _equals_onnxruntime(_model(nodes, ["N", 3, "H", "W"], inits), [(2, 3, 5, 7), (1, 3, 2, 3)])


@pytest.mark.parametrize(("mode", "scales"), [("linear", (1, 1, 2, 2)), ("nearest", (1, 1, 1.5, 2))])
def test_upsample_through_resize(mode, scales):
    model = _model([h.make_node("Upsample", ["x", "sc"], ["y"], mode=mode)], [2, 3, 4, 6],
                   {"sc": _scales(*scales)}, opset=9)
    _equals_onnxruntime(model, [(2, 3, 4, 6)])


@pytest.mark.parametrize(("scales", "dims", "match"), [
    ((1, 1, 1.5, 2), ["N", 3, "H", "W"], "fractional scale 1.5 on the symbolic dim H .*--input-shape"),
    ((1, 1, 1.5, 2), ["N", 3, 5, 5], "output size is rounded"),
    ((2, 1, 1, 2), [2, 3, 4, 4], "of axis 0"),
])
def test_resize_refusals_name_the_reason(scales, dims, match):
    node = h.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")
    _refused(_model([node], dims, {"sc": _scales(*scales)}), match)


def test_resize_sizes_fixing_a_symbolic_batch_is_refused():
    node = h.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")
    _refused(_model([node], ["N", 3, 4, 4], {"sz": _ints(1, 3, 8, 8)}), "of axis 0 .*--input-shape")


# -- 2. CumSum ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize(("dtype", "onnx_type"), [(np.int64, TensorProto.INT64), (np.float32, F)])
def test_cumsum_along_a_symbolic_axis(dtype, onnx_type, exclusive, reverse):
    """CumSum(mask[B, S], axis 1) * mask, the position ids of RoBERTa / GPT-2 exports."""
    nodes = [h.make_node("CumSum", ["x", "axis"], ["c"], exclusive=exclusive, reverse=reverse),
             h.make_node("Mul", ["c", "x"], ["y"])]
    model = _model(nodes, ["B", "S"], {"axis": _ints(1)}, opset=17, dtype=onnx_type)
    _equals_onnxruntime(model, [(2, 5), (1, 1), (3, 17), (2, 0)], dtype=dtype)


@pytest.mark.parametrize(("dims", "axis", "shapes"), [
    ([2, "S"], 1, [(2, 5), (2, 9)]),
    (["B", "S", "C"], 0, [(3, 4, 5), (1, 2, 3)]),
    (["B", "S", "C"], -2, [(3, 4, 5), (2, 1, 7)]),
])
def test_cumsum_axes_of_symbolic_shapes(dims, axis, shapes):
    model = _model([h.make_node("CumSum", ["x", "axis"], ["y"], reverse=1)], dims, {"axis": _ints(axis)}, opset=17)
    _equals_onnxruntime(model, shapes)


# -- 3. pools with ceil_mode or auto_pad SAME -----------------------------------------------------------------------

CEIL_POOLS = {
    "max_pads": ("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    "max_stride_above_kernel": ("MaxPool", dict(kernel_shape=[2, 2], strides=[3, 3])),
    "max_dilated": ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 0, 2], dilations=[2, 1])),
    "average_pads": ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    "average_counting_pads": ("AveragePool", dict(kernel_shape=[3, 3], strides=[3, 2], pads=[2, 1, 1, 0],
                                                  count_include_pad=1)),
    "lp_pads": ("LpPool", dict(kernel_shape=[3, 3], strides=[3, 2], pads=[1, 1, 1, 0], p=1)),
}
SPATIAL_SHAPES = [(2, 3, 7, 9), (1, 3, 8, 8), (3, 3, 5, 6), (1, 3, 1, 1)]


def _pool_then_relu(op: str, attrs: dict, dims: list) -> onnx.ModelProto:
    """x -> op -> Relu (an elementwise consumer: relax's FuseOps is where the ceil-mode shape failed)."""
    return _model([h.make_node(op, ["x"], ["p"], **attrs), h.make_node("Relu", ["p"], ["y"])], dims)


@pytest.mark.parametrize("case", sorted(CEIL_POOLS))
def test_ceil_mode_pools_on_symbolic_spatial_dims(case):
    op, attrs = CEIL_POOLS[case]
    _equals_onnxruntime(_pool_then_relu(op, {**attrs, "ceil_mode": 1}, ["N", 3, "H", "W"]), SPATIAL_SHAPES)


def test_ceil_mode_max_pool_after_a_conv_on_symbolic_spatial_dims():
    """The pool runs NHWC after the Conv; the crop of its windows stays NCHW between layout transposes."""
    op, attrs = CEIL_POOLS["max_pads"]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node(op, ["c"], ["y"], ceil_mode=1, **attrs)]
    _equals_onnxruntime(_model(nodes, ["N", 3, "H", "W"], {"w": _f32(4, 3, 3, 3)}), SPATIAL_SHAPES)


def test_ceil_mode_lp_pool_at_a_fixed_shape():
    """The frontend's LpPool is AveragePool * kernel size, and TOPI's ceil-mode divisor is the clipped window."""
    op, attrs = CEIL_POOLS["lp_pads"]
    _equals_onnxruntime(_pool_then_relu(op, {**attrs, "ceil_mode": 1}, [2, 3, 7, 9]), [(2, 3, 7, 9)])


SAME_POOLS = {
    "max": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2])),
    "max_stride_1": ("MaxPool", dict(kernel_shape=[3, 2], strides=[1, 1])),
    "average": ("AveragePool", dict(kernel_shape=[3, 3], strides=[3, 2])),
    "average_counting_pads": ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], count_include_pad=1)),
    "lp": ("LpPool", dict(kernel_shape=[3, 3], strides=[2, 2])),
}


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("case", sorted(SAME_POOLS))
def test_same_pools_on_symbolic_spatial_dims(case, auto_pad):
    op, attrs = SAME_POOLS[case]
    _equals_onnxruntime(_pool_then_relu(op, {**attrs, "auto_pad": auto_pad}, ["N", 3, "H", "W"]), SPATIAL_SHAPES)


def test_max_pool_same_lower_at_a_fixed_shape():
    """The frontend gave SAME_LOWER floor(in / stride) windows: [2, 3, 3, 4] for [2, 3, 7, 8], not [2, 3, 4, 4]."""
    op, attrs = SAME_POOLS["max"]
    _equals_onnxruntime(_pool_then_relu(op, {**attrs, "auto_pad": "SAME_LOWER"}, [2, 3, 7, 8]), [(2, 3, 7, 8)])


#: AveragePool without count_include_pad over windows that can hold padding only (a pad at least the window's
#: extent, which onnxruntime refuses, or a dilation that skips over the input): the mean of no elements is 0 / 0
EMPTY_WINDOW_POOLS = {
    "pads_above_kernel": dict(kernel_shape=[2, 2], pads=[2, 0, 0, 3]),
    "unit_kernel_end_pads": dict(kernel_shape=[1, 1], pads=[0, 0, 2, 2]),
    "strided_pads_above_kernel": dict(kernel_shape=[2, 3], strides=[2, 2], pads=[3, 1, 2, 4]),
    "dilated": dict(kernel_shape=[2, 2], dilations=[4, 3], pads=[1, 1, 1, 1]),
    "ceil_mode_pads_above_kernel": dict(kernel_shape=[2, 2], strides=[2, 2], pads=[2, 2, 0, 0], ceil_mode=1),
    "same_dilated": dict(kernel_shape=[2, 2], dilations=[5, 3], auto_pad="SAME_UPPER"),
}


def _average_pool_excluding_pads(x: np.ndarray, attrs: dict, out_spatial: tuple) -> np.ndarray:
    """AveragePool (count_include_pad=0) by its definition: the mean of the input elements in each window, NaN for
    a window of none. Pads explicit or SAME_UPPER (the spec's formula: total (out - 1) * s + e - in, the smaller half
    before); `out_spatial` from the result checked (ceil mode keeps a window only where it starts before the end
    padding, which the shape says)."""
    kernel = attrs["kernel_shape"]
    n = len(kernel)
    strides, dilations = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    if attrs.get("auto_pad") == "SAME_UPPER":
        totals = [max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
                  for i, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True)]
        before = [t // 2 for t in totals]
    else:
        before = attrs.get("pads", [0] * 2 * n)[:n]
    y = np.empty((*x.shape[:2], *out_spatial), np.float32)
    for o in np.ndindex(*out_spatial):
        axes = [[p for j in range(k) if 0 <= (p := o_ * s - b + j * d) < i] for o_, k, s, d, b, i in
                zip(o, kernel, strides, dilations, before, x.shape[2:], strict=True)]
        window = x[(..., *np.ix_(*axes))] if all(axes) else np.empty((*x.shape[:2], 0))
        y[(..., *o)] = window.reshape(*x.shape[:2], -1).mean(-1) if window.size else np.nan
    return y


@pytest.mark.parametrize("dims", [[2, 3, 3, 2], ["N", 3, "H", "W"]], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", sorted(EMPTY_WINDOW_POOLS))
def test_average_pool_of_padding_only_is_nan(case, dims):
    """A window of padding only averages no element: NaN, 0 / 0, as the definition (and onnx's reference evaluator,
    where it takes the case: it computes SAME pads for a dilated window wrong) says; TOPI divides by max(count, 1)
    and gave 0. Windows holding an input element keep their means; with count_include_pad the same windows average
    the zeros (no NaN)."""
    from .conftest import run_reference

    attrs = EMPTY_WINDOW_POOLS[case]

    def pool(attrs: dict) -> onnx.ModelProto:  # opset 19: AveragePool's dilations
        return _model([h.make_node("AveragePool", ["x"], ["p"], **attrs), h.make_node("Relu", ["p"], ["y"])], dims,
                      opset=19)

    model, counting = pool(attrs), pool({**attrs, "count_include_pad": 1})
    lib, counting_lib = optc.compile(optc.from_onnx(model)), optc.compile(optc.from_onnx(counting))
    shapes = [tuple(dims)] if isinstance(dims[2], int) else [(2, 3, 3, 2), (1, 3, 6, 5), (1, 3, 5, 7)]
    for shape in shapes:
        x = np.abs(RNG.standard_normal(shape)).astype(np.float32) + 0.5
        got = lib.run({"x": x})["y"]
        want = _average_pool_excluding_pads(x, attrs, got.shape[2:])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(shape))  # NaNs where want has them
        if "auto_pad" not in attrs:
            np.testing.assert_allclose(got, run_reference(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
        if shape == (2, 3, 3, 2):
            assert np.isnan(want).any(), "the case must hold a window of padding only"
        counted = counting_lib.run({"x": x})["y"]
        assert counted.shape == got.shape and not np.isnan(counted).any()
        if "auto_pad" not in attrs:
            np.testing.assert_allclose(counted, run_reference(counting, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_average_pool_windows_that_read_the_input_are_unchanged():
    """Negative: pads below the window's extent, undilated, without count_include_pad: every window reads an input
    element, and the pool is TOPI's alone (no NaN mask in the lowered module)."""
    from optc.lowering import lower

    model = _model([h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2, 2, 2, 2])], [1, 2, 4, 4])
    assert "nan" not in lower(optc.from_onnx(model)).script().lower()
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    got = optc.compile(optc.from_onnx(model)).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    masked = _model([h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[2, 2, 0, 0])], [1, 2, 4, 4])
    assert "nan" in lower(optc.from_onnx(masked)).script().lower()


# -- 4. Conv with auto_pad SAME_UPPER / SAME_LOWER ------------------------------------------------------------------

@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("kernel", "strides"), [([3, 3], [2, 2]), ([3, 2], [1, 1]), ([2, 2], [3, 2])])
def test_conv_same_on_symbolic_spatial_dims(kernel, strides, auto_pad):
    node = h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=kernel, strides=strides, auto_pad=auto_pad)
    model = _model([node], ["N", 3, "H", "W"], {"w": _f32(4, 3, *kernel), "b": _f32(4)}, opset=17)
    _equals_onnxruntime(model, SPATIAL_SHAPES)


def test_conv_same_after_a_conv_on_symbolic_spatial_dims():
    """The second Conv's input is NHWC after the first (the explicit pad sits between layout transposes)."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["c", "w2"], ["y"], strides=[2, 2], auto_pad="SAME_LOWER")]
    model = _model(nodes, ["N", 3, "H", "W"], {"w1": _f32(4, 3, 3, 3), "w2": _f32(5, 4, 3, 3)}, opset=17)
    _equals_onnxruntime(model, SPATIAL_SHAPES)


# -- 5. Cast to string ----------------------------------------------------------------------------------------------

def test_cast_to_string_is_refused_in_one_line():
    g = h.make_graph([h.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)], "g",
                     [h.make_tensor_value_info("x", F, [2])], [h.make_tensor_value_info("y", TensorProto.STRING, [2])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    _refused(model, "Cast to string: string tensors are not supported by the TVM back end")


@pytest.mark.parametrize(("a_dims", "b_dims", "axis"), [(["B", 16, 16], [3, 16, 48], -1),
                                                       (["B1", 16, 16], ["B2", 16, 48], -1),
                                                       ([3, "S", 4], [3, "T", 4], 0),
                                                       (["B", 4, 5], ["B", 4, 5], 1)])
def test_concat_of_dims_written_differently(a_dims, b_dims, axis):
    """Compiled, equal to onnxruntime; inputs whose dims really differ off the axis fail the library's shape check
    with a one-line OptcError (onnxruntime refuses them too)."""
    g = h.make_graph([h.make_node("Concat", ["a", "b"], ["y"], axis=axis)], "g",
                     [h.make_tensor_value_info("a", F, a_dims), h.make_tensor_value_info("b", F, b_dims)],
                     [h.make_tensor_value_info("y", F, None)])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    compiled = optc.compile(model)
    fixed = {"B": 3, "B1": 3, "B2": 3, "S": 6, "T": 6}
    a = _f32(*[fixed.get(d, d) for d in a_dims])
    b = _f32(*[fixed.get(d, d) for d in b_dims])
    np.testing.assert_array_equal(compiled.run({"a": a, "b": b})["y"], run_ort(model, {"a": a, "b": b})[0])
    if a_dims != b_dims:
        short = _f32(*[(2 if isinstance(d, str) else d) for d in a_dims])
        with pytest.raises(optc.OptcError, match="shape check"):
            compiled.run({"a": short, "b": b})


# -- a matmul's reduction dims of different names (found by a breaker) ------------------------------------------

def _matmul_of_named_dims(a_shape: list, b_shape: list, qdq: bool = False) -> onnx.ModelProto:
    """y = x @ z, the inputs' shapes as given (symbols by name); `qdq`: each input quantized first (uint8 x with
    zero point 0, int8 z with 3: the integer path's rule refuses K of two names, the float MatMul stays)."""
    nodes, inits, a, b = [], [], "x", "z"
    if qdq:
        inits = [nh.from_array(np.float32(0.031), "as"), nh.from_array(np.array(0, np.uint8), "az"),
                 nh.from_array(np.float32(0.027), "bs"), nh.from_array(np.array(3, np.int8), "bz")]
        nodes = [h.make_node("QuantizeLinear", ["x", "as", "az"], ["aq"]),
                 h.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
                 h.make_node("QuantizeLinear", ["z", "bs", "bz"], ["bq"]),
                 h.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"])]
        a, b = "ad", "bd"
    nodes.append(h.make_node("MatMul", [a, b], ["y"]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, a_shape),
                                      h.make_tensor_value_info("z", TensorProto.FLOAT, b_shape)],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("a_shape, b_shape, sizes", [
    (["B", 4, "S", "T"], ["B", 4, "U", 16], {"B": 1, "S": 3}),  # attention-like, two names for K
    (["S", "T"], ["U", 6], {"S": 2}),  # 2-D
    (["S", 8], ["U", 6], {"S": 2}),  # a number against a symbol
    (["S", "T"], ["U"], {"S": 2}),  # a matrix times a vector
])
@pytest.mark.parametrize("qdq", [False, True], ids=["float", "qdq"])
def test_matmul_reduction_lengths_of_different_names_are_checked(a_shape, b_shape, sizes, qdq):
    """x [.., T] @ z [.., U, N] with T and U different symbols: where they are equal when it runs, the result is
    onnxruntime's; where they differ, the call fails with one line, as onnxruntime refuses. Before, the kernel took
    K from x and read z as if it had that many rows: a wrong result (U > T) or a read past z's end (U < T)."""
    model = _matmul_of_named_dims(a_shape, b_shape, qdq)
    lib = optc.compile(model)
    rng = np.random.default_rng(5)
    for t, u in ((5, 5), (5, 6), (5, 4)):
        dims = {**sizes, "T": t, "U": u}
        feeds = {"x": rng.uniform(0, 4, [dims.get(d, d) if isinstance(d, str) else d for d in a_shape]),
                 "z": rng.standard_normal([dims.get(d, d) if isinstance(d, str) else d for d in b_shape])}
        if "T" not in a_shape:  # x's K is the number 8
            feeds["x"] = rng.uniform(0, 4, [dims["S"], 8])
            if u == 5:
                feeds["z"] = rng.standard_normal([8, 6])
        feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
        k_x, k_z = feeds["x"].shape[-1], feeds["z"].shape[-2 if feeds["z"].ndim >= 2 else 0]
        if k_x == k_z:
            np.testing.assert_allclose(lib.run(feeds)["y"], run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)
        else:
            with pytest.raises(optc.OptcError, match=r"^the library cannot run these inputs: MatMul node \(output "
                               r"'y'\): its inputs' reduction lengths differ when it runs$"):
                lib.run(feeds)


def test_matmul_reduction_lengths_of_one_name_get_no_check():
    """Negative: K of the same name on both sides (P V over S) is provably equal: no check kernel."""
    from optc import from_onnx
    from optc.lowering import lower

    mod = lower(from_onnx(_matmul_of_named_dims(["B", 4, "S", "S"], ["B", 4, "S", 16])))
    assert "optc_matmul_k_check" not in mod.script()
    mod = lower(from_onnx(_matmul_of_named_dims(["B", 4, "S", "T"], ["B", 4, "U", 16])))
    assert "optc_matmul_k_check" in mod.script()


def _conv_of_symbolic_channels(group: int) -> onnx.ModelProto:
    """Conv of x [N, C, 8, 8] (C a symbol) with a constant weight [8, 6 / group, 3, 3]."""
    w = nh.from_array(np.random.default_rng(1).standard_normal([8, 6 // group, 3, 3]).astype(np.float32), "w")
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], group=group)], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_channels_of_a_symbolic_input_are_checked(group):
    """A symbolic channel dim against a constant weight's: at 6 channels (the weight's C / group x group) the result
    is onnxruntime's; at 4 or 8 the call fails with one line, as onnxruntime refuses. Before, the kernel took C from
    the weight: channels ignored (8) or read past x's end (4), with no error."""
    model = _conv_of_symbolic_channels(group)
    lib = optc.compile(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal([2, 6, 8, 8]).astype(np.float32)
    np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    for c in (4, 8):
        with pytest.raises(optc.OptcError, match=r"^the library cannot run these inputs: Conv node \(output 'y'\): "
                           r"its input's channels differ from its weight's when it runs$"):
            lib.run({"x": rng.standard_normal([1, c, 8, 8]).astype(np.float32)})


def test_conv_of_static_channels_gets_no_check():
    """Negative: channels static on both sides (the usual model): no check kernel."""
    from optc import from_onnx
    from optc.lowering import lower

    model = _conv_of_symbolic_channels(1)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 6
    assert "optc_conv_channel_check" not in lower(from_onnx(model)).script()
    assert "optc_conv_channel_check" in lower(from_onnx(_conv_of_symbolic_channels(1))).script()


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (0, 1), (1, 0)])
def test_gemm_reduction_of_a_symbolic_input_is_checked(trans_a, trans_b):
    """Gemm of x with a symbolic feature dim and a constant [6, 4] weight (transposed as transB says): at 6
    features the result is onnxruntime's; at 3 or 8 the call fails with one line, as onnxruntime refuses. Before,
    the kernel took K from the weight and returned a (2, 4) result for any width."""
    w = np.random.default_rng(3).standard_normal([4, 6] if trans_b else [6, 4]).astype(np.float32)
    x_shape = ["F", "N"] if trans_a else ["N", "F"]
    graph = h.make_graph([h.make_node("Gemm", ["x", "w"], ["y"], transA=trans_a, transB=trans_b)], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [nh.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    lib = optc.compile(model)
    rng = np.random.default_rng(4)
    feeds = lambda f: {"x": rng.standard_normal([f, 2] if trans_a else [2, f]).astype(np.float32)}  # noqa: E731
    x = feeds(6)
    np.testing.assert_allclose(lib.run(x)["y"], run_ort(model, x)[0], rtol=1e-5, atol=1e-5)
    for f in (3, 8):
        with pytest.raises(optc.OptcError, match=r"^the library cannot run these inputs: Gemm node \(output 'y'\): "
                           r"its inputs' reduction lengths differ when it runs$"):
            lib.run(feeds(f))


def _norm_of_symbolic_channels(op: str, static: bool = False) -> onnx.ModelProto:
    """BatchNormalization / InstanceNormalization of x [N, C, 4, 4] or LayerNormalization of x [N, S, C] (axis -1),
    C symbolic (or 3 with `static`), their per-channel parameters constants of 3 values."""
    rng = np.random.default_rng(5)
    params = {n: (rng.random(3) + 0.5).astype(np.float32) for n in "sbmv"}
    c = 3 if static else "C"
    if op == "LayerNormalization":
        dims, names, attrs = ["N", "S", c], ["x", "s", "b"], {"axis": -1}
    else:
        dims, names, attrs = ["N", c, 4, 4], ["x", "s", "b", "m", "v"][:5 if op == "BatchNormalization" else 3], {}
    graph = h.make_graph([h.make_node(op, names, ["y"], **attrs)], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [nh.from_array(params[n], n) for n in names[1:]])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("op", ["BatchNormalization", "InstanceNormalization", "LayerNormalization"])
def test_norm_channels_of_a_symbolic_input_are_checked(op):
    """A symbolic channel (LayerNormalization: normalized) dim against constant parameters of 3 values: the build
    failed ("emit_te now only supports Tensor that has ShapeExpr shape": TVM cannot type the broadcast of C against
    3). Now at 3 the result is onnxruntime's; at 2 or 1 the call fails with one line, as onnxruntime refuses."""
    model = _norm_of_symbolic_channels(op)
    lib = optc.compile(model)
    rng = np.random.default_rng(6)
    shape = (lambda c: [2, 5, c]) if op == "LayerNormalization" else (lambda c: [2, c, 4, 4])
    x = rng.standard_normal(shape(3)).astype(np.float32)
    np.testing.assert_allclose(lib.run({"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    for c in (2, 1):
        with pytest.raises(optc.OptcError, match=rf"^the library cannot run these inputs: {op} node \(output 'y'\): "
                           rf"its input's dim {2 if op == 'LayerNormalization' else 1} differs from its scale's when "
                           r"it runs$"):
            lib.run({"x": rng.standard_normal(shape(c)).astype(np.float32)})


@pytest.mark.parametrize("op", ["BatchNormalization", "LayerNormalization"])
def test_norm_of_static_channels_gets_no_check(op):
    """Negative: channels static on both sides (the usual model): no check kernel."""
    from optc import from_onnx
    from optc.lowering import lower

    assert "optc_norm_channel_check" not in lower(from_onnx(_norm_of_symbolic_channels(op, static=True))).script()
    assert "optc_norm_channel_check" in lower(from_onnx(_norm_of_symbolic_channels(op))).script()
