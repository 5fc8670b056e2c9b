"""rewrites/rules/value_bounds.py: bounds of a value computed from constants and integer / bool inputs, and their
use by the standard Attention fusion (a run-time mask that may hold its dtype's minimum in a whole query row is
not fused: onnxruntime's Attention writes zeros there, the graph the mean of V)."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.rewrites.passes.infer_shapes import infer_model_types
from optc.rewrites.rule import explain
from optc.rewrites.rules.transformer_attention import FuseAttention4D
from optc.rewrites.rules.value_bounds import value_bounds

from .conftest import run_ort
from .test_transformer_fusion import assert_close, ops

F, F16, I64, B = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL


class _Match:
    """What value_bounds needs of a rule match: constants by value."""

    def __init__(self, model):
        self.model = model

    def const(self, v):
        return v.const_value() if v is not None else None


def _bounds(nodes, inputs, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    model = optc.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))
    infer_model_types(model)
    y = next(o for n in model.graph for o in n.outputs if o.name == "y")
    return value_bounds(_Match(model), y)


def test_bert_padding_mask_is_bounded():
    """(1 - Cast(mask)) * -10000 from an int64 mask: bounded (far above float32's minimum)."""
    nodes = [helper.make_node("Cast", ["m"], ["mf"], to=F), helper.make_node("Sub", ["one", "mf"], ["d"]),
             helper.make_node("Mul", ["d", "big"], ["y"])]
    lo, hi = _bounds(nodes, [("m", I64, [1, 8])], [("one", np.float32(1)), ("big", np.float32(-10000))])
    assert -1e24 < lo < -9e22 and hi > 9e22  # int64's range times 1e4, widened for rounding


@pytest.mark.parametrize("fill,expect_lo", [(np.finfo(np.float32).min, float(np.finfo(np.float32).min)),
                                            (-np.inf, -np.inf), (-1e4, -1e4)])
def test_where_takes_the_union_of_its_branches(fill, expect_lo):
    nodes = [helper.make_node("Where", ["c", "zero", "fill"], ["y"])]
    lo, hi = _bounds(nodes, [("c", B, [4, 4])], [("zero", np.float32(0)), ("fill", np.float32(fill))])
    assert lo == expect_lo and hi == 0.0


def test_a_cast_past_float16s_range_is_an_infinity():
    """-1e5 fits float32 but not float16: Cast makes it -inf, and the bound says so."""
    nodes = [helper.make_node("Where", ["c", "zero", "fill"], ["w"]), helper.make_node("Cast", ["w"], ["y"], to=F16)]
    lo, hi = _bounds(nodes, [("c", B, [4])], [("zero", np.float32(0)), ("fill", np.float32(-1e5))])
    assert lo == -np.inf and hi == 0.0


@pytest.mark.parametrize(("to", "low", "want"), [(B, 2.0, (1.0, 1.0)), (B, -0.25, (0.0, 1.0)),
                                                 (TensorProto.INT64, 0.5, (0.0, 1.0))])
def test_a_cast_to_bool_or_from_float_to_int_bounds_what_it_makes(to, low, want):
    """Cast to BOOL makes 0 or 1 (Cast(b + 2) is always True: it had kept [2, 3]); float to int truncates toward
    zero ({0.5, 1} becomes {0, 1}: it had kept [0.5, 1]). Both found by a breaker, who turned them into a mask
    claimed above 0 that was exactly float32's minimum."""
    nodes = [helper.make_node("Where", ["c", "lo", "hi"], ["w"]), helper.make_node("Cast", ["w"], ["y"], to=to)]
    lo, hi = _bounds(nodes, [("c", B, [4])], [("lo", np.float32(low)), ("hi", np.float32(low + 0.5))])
    assert (lo, hi) == want


def test_an_int64_sum_reaching_two_to_the_63_wraps():
    """Cast(bool) * 2^62 added to itself reaches 2^63, one past int64's maximum (float(iinfo.max) rounds up to
    2^63, which had let the sum "fit"): it wraps, so no bound."""
    nodes = [helper.make_node("Cast", ["c"], ["i"], to=I64), helper.make_node("Mul", ["i", "big"], ["p"]),
             helper.make_node("Add", ["p", "p"], ["y"])]
    assert _bounds(nodes, [("c", B, [4])], [("big", np.int64(2 ** 62))]) is None


def test_a_float_result_past_the_dtype_overflows():
    """(c * 0 + 2^127) * 4 is +inf in float32 (not the finite 2^129), and inf * 0 a NaN: no bound for the product
    (a breaker turned the NaN into int64's minimum and that into float32's minimum)."""
    nodes = [helper.make_node("Cast", ["c"], ["f"], to=F), helper.make_node("Mul", ["f", "zero"], ["z"]),
             helper.make_node("Add", ["z", "big"], ["b1"]), helper.make_node("Mul", ["b1", "four"], ["inf"]),
             helper.make_node("Mul", ["inf", "z"], ["y"])]
    inits = [("zero", np.float32(0)), ("big", np.float32(2.0 ** 127)), ("four", np.float32(4))]
    assert _bounds(nodes, [("c", B, [4])], inits) is None


@pytest.mark.parametrize("case", ["add", "cast"])
def test_integer_results_that_can_wrap_have_no_bound(case):
    """uint8 m + 200 wraps (56 + 200 = 0), as does a Cast of [0, 300] to uint8: no bound (it was [200, 455]
    and the standard Attention was made under a mask that held -inf); within range the bound stands."""
    if case == "add":
        nodes = [helper.make_node("Add", ["m", "c"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=F)]
        assert _bounds(nodes, [("m", TensorProto.UINT8, [4])], [("c", np.uint8(200))]) is None
        assert _bounds(nodes, [("m", TensorProto.UINT8, [4])], [("c", np.uint8(0))]) is not None
    else:
        nodes = [helper.make_node("Cast", ["w"], ["s"], to=TensorProto.UINT8),
                 helper.make_node("Cast", ["s"], ["y"], to=F)]
        assert _bounds(nodes, [], [("w", np.array([0, 300], np.int64))]) is None
        lo, hi = _bounds(nodes, [], [("w", np.array([0, 200], np.int64))])
        assert lo <= 0.0 and 200.0 <= hi < 201.0


@pytest.mark.parametrize("case", ["float_input", "unknown_op", "nan_constant"])
def test_no_bound_where_none_is_known(case):
    if case == "float_input":
        assert _bounds([helper.make_node("Neg", ["x"], ["y"])], [("x", F, [4])]) is None
    elif case == "unknown_op":
        assert _bounds([helper.make_node("Exp", ["m"], ["y"])], [("m", I64, [4])]) is None
    else:
        nodes = [helper.make_node("Add", ["m", "c"], ["y"])]
        assert _bounds(nodes, [("m", B, [4])], [("c", np.float32(np.nan))]) is None


# -- the attention fusion -------------------------------------------------------------------------------------

N, S, H = 4, 6, 8


def _core(mask_input: str, dtype=F):
    """Attention core on [1, N, S, H] heads with an additive mask: "float" (a float graph input [1, 1, S, S]),
    "int_padding" ((1 - Cast(int64 mask)) * -10000, [1, 1, 1, S]), "key_padding_min" (Where(bool mask, 0,
    finfo.min) as [1, 1, 1, S]), "causal_padding_min" (Where(bool [1, 1, S, S], 0, finfo.min))."""
    np_dt = np.float16 if dtype == F16 else np.float32
    inits = [numpy_helper.from_array(np.array(H ** -0.5, np_dt), "scale")]
    nodes, inputs = [], [helper.make_tensor_value_info(n, dtype, [1, N, S, H]) for n in "qkv"]
    if mask_input == "float":
        inputs.append(helper.make_tensor_value_info("mask", dtype, [1, 1, S, S]))
    elif mask_input == "int_padding":
        inputs.append(helper.make_tensor_value_info("am", I64, [1, 1, 1, S]))
        inits += [numpy_helper.from_array(np.array(1, np_dt), "one"),
                  numpy_helper.from_array(np.array(-10000, np_dt), "big")]
        nodes += [helper.make_node("Cast", ["am"], ["amf"], to=dtype), helper.make_node("Sub", ["one", "amf"], ["d"]),
                  helper.make_node("Mul", ["d", "big"], ["mask"])]
    else:
        shape = [1, 1, 1, S] if mask_input == "key_padding_min" else [1, 1, S, S]
        inputs.append(helper.make_tensor_value_info("keep", B, shape))
        inits += [numpy_helper.from_array(np.array(0, np_dt), "zero"),
                  numpy_helper.from_array(np.array(np.finfo(np_dt).min, np_dt), "fmin")]
        nodes.append(helper.make_node("Where", ["keep", "zero", "fmin"], ["mask"]))
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["s2"]),
              helper.make_node("Add", ["s2", "mask"], ["s3"]), helper.make_node("Softmax", ["s3"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", dtype, [1, N, S, H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _fuse(proto):
    """The standard form at -O2 (types inferred first: the mask's dtype is checked)."""
    return optc.to_onnx(optc.optimize(proto, runtime="standard"))


def _feeds(proto, masked_row: bool):
    rng = np.random.default_rng(2)
    out = {}
    for i in proto.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        t = i.type.tensor_type.elem_type
        if t in (F, F16):
            arr = rng.normal(0, 1, shape).astype(np.float16 if t == F16 else np.float32)
            if i.name == "mask":
                arr[:] = 0
                if masked_row:
                    arr[..., 0, :] = np.finfo(arr.dtype).min
            out[i.name] = arr
        elif t == I64:
            out[i.name] = np.ones(shape, np.int64)
        else:
            keep = np.ones(shape, bool)
            if masked_row and shape[-2] == 1:
                keep[...] = False  # key padding of every key (a sequence of padding only): every row masked
            elif masked_row:
                keep[..., 0, :] = False  # query row 0 sees no key
            out[i.name] = keep
    return [out]


@pytest.mark.parametrize("mask_input,fused", [("float", False), ("causal_padding_min", False),
                                              ("int_padding", True), ("key_padding_min", False)])
def test_standard_attention_takes_a_run_time_mask_only_when_no_row_can_be_all_masked(mask_input, fused):
    proto = _core(mask_input)
    out = _fuse(proto)
    assert ops(out)["Attention"] == int(fused), dict(ops(out))
    assert_close(proto, out, _feeds(proto, masked_row=True) + _feeds(proto, masked_row=False))
    if not fused:
        model = optc.from_onnx(proto)
        infer_model_types(model)
        root = [n for n in model.graph if n.op_type == "MatMul"][-1]
        assert "a mask computed at run time may mask every score of a row" in explain(FuseAttention4D, root, model)


def test_float16_constant_mask_row_at_float16s_minimum_is_not_fused():
    """-65504 (float16's minimum) in every key of a row: onnxruntime's Attention writes zeros there. The check
    compares in float64 (-1e30 in float16 is -inf, which let the row through)."""
    proto = _core("float", F16)
    mask = np.zeros((1, 1, S, S), np.float16)
    mask[..., 0, :] = np.finfo(np.float16).min
    proto.graph.input.pop()  # the mask becomes a constant
    proto.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    onnx.checker.check_model(proto)
    out = _fuse(proto)
    assert ops(out)["Attention"] == 0
    rng = np.random.default_rng(3)
    feeds = [{n: rng.normal(0, 1, (1, N, S, H)).astype(np.float16) for n in "qkv"}]
    assert_close(proto, out, feeds)


def test_float16_padding_mask_that_can_pad_every_key_is_not_fused():
    """BERT's (1 - mask) * -10000 in float16: a sequence of padding only adds -10000 to every score of its rows.
    onnxruntime computes the unfused float16 Add and Softmax in float32 (softmax of the scores), the fused kernel
    in float16, where -10000 + score rounds to a multiple of 8 (the mean of V): not fused (a breaker's find)."""
    proto = _core("int_padding", F16)
    out = _fuse(proto)
    assert ops(out)["Attention"] == 0, dict(ops(out))
    rng = np.random.default_rng(4)
    feeds = {n: rng.normal(0, 1, (1, N, S, H)).astype(np.float16) for n in "qkv"}
    assert_close(proto, out, [{**feeds, "am": np.zeros((1, 1, 1, S), np.int64)}])


def test_float16_constant_mask_keeping_a_score_in_every_row_is_fused():
    """Negative: a causal float16 mask of -10000 keeps the diagonal (bias 0) in every row: fused, the same outputs
    to float16's rounding (2 units in the last place of the largest output: the fused kernel rounds the scores to
    float16, onnxruntime's unfused graph computes them in float32)."""
    proto = _core("float", F16)
    mask = np.triu(np.full((S, S), -10000, np.float16), 1)[None, None]
    proto.graph.input.pop()
    proto.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    out = _fuse(proto)
    assert ops(out)["Attention"] == 1, dict(ops(out))
    rng = np.random.default_rng(5)
    feeds = {n: rng.normal(0, 1, (1, N, S, H)).astype(np.float16) for n in "qkv"}
    want, got = run_ort(proto, feeds)[0], run_ort(out, feeds)[0]
    assert got.dtype == want.dtype == np.float16
    assert float(np.max(np.abs(got.astype(np.float32) - want))) <= 2 * float(np.spacing(np.max(np.abs(want))))
