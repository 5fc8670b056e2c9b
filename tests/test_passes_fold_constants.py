"""fold-constants: positive and negative cases, outputs compared on onnxruntime before and after."""

from __future__ import annotations

import numpy as np
import pytest
from optc.ir import from_onnx
from optc.rewrites import PassContext, RewriteBudget
from optc.rewrites.passes import make_folder

from .test_passes_support import assert_same_outputs, check, op_types, parse, run_passes


def test_folds_constant_arithmetic_chain():
    _, after, report = check("""
    g (float[2,3] x) => (float[2,3] y) <float[3] c = {1.0, 2.0, 3.0}> {
      two = Constant<value = float {2.0}>()
      c2 = Mul(c, two)
      c3 = Sqrt(c2)
      c4 = Neg(c3)
      y = Add(x, c4)
    }""", "fold-constants")
    assert op_types(after) == ["Add"]
    counts = report.passes[0].counts
    assert counts["fold:Mul"] == 1 and counts["fold:Sqrt"] == 1 and counts["fold:Constant"] == 1


def test_folded_graph_output_keeps_its_name():
    _, after, _ = check("""
    g (float[3] x) => (float[3] y, float[3] k) <float[3] a = {1.0, 2.0, 3.0}, float[3] b = {4.0, 5.0, 6.0}> {
      k = Add(a, b)
      y = Mul(x, k)
    }""", "fold-constants,dce")
    assert [o.name for o in after.graph.output] == ["y", "k"]
    assert op_types(after) == ["Mul"]


def test_reference_evaluator_ops_fold():
    _, after, report = check("""
    g (float[4] x) => (float[4] y) <int64 s = {0}, int64 l = {4}, int64 d = {1}> {
      r = Range(s, l, d)
      f = Cast<to = 1>(r)
      e = Exp(f)
      t = TopK<axis = 0>(e, l)
      y = Add(x, t)
    }""".replace("t = TopK<axis = 0>(e, l)", "t, idx = TopK<axis = 0>(e, l1)").replace(
        "int64 d = {1}>", "int64 d = {1}, int64[1] l1 = {4}>"), "fold-constants")
    assert op_types(after) == ["Add"]
    assert report.passes[0].counts["fold:TopK"] == 1


def test_shape_of_static_input_folds_and_feeds_constant_of_shape():
    _, after, _ = check("""
    g (float[2,3] x) => (float[2,3] y) {
      s = Shape(x)
      z = ConstantOfShape<value = float[1] {0.5}>(s)
      n = Size(x)
      nf = Cast<to = 1>(n)
      z2 = Mul(z, nf)
      y = Add(x, z2)
    }""", "fold-constants,dce")
    assert op_types(after) == ["Add"]


def test_shape_with_start_end_folds_static_part_of_dynamic_shape():
    _, after, _ = check("""
    g (float[N,3,4] x) => (int64[2] y) {
      y = Shape<start = 1>(x)
    }""", "fold-constants")
    assert op_types(after) == []


def test_shape_of_dynamic_input_is_not_folded():
    _, after, _ = check("""
    g (float[N,3] x) => (int64[2] y) {
      y = Shape(x)
    }""", "fold-constants")
    assert op_types(after) == ["Shape"]


def test_size_limit_refuses_growing_folds():
    text = """
    g (float[1000,100] x) => (float[1000,100] y) <int64[2] s = {1000, 100}> {
      z = ConstantOfShape<value = float[1] {1.0}>(s)
      y = Add(x, z)
    }"""
    _, after, _ = check(text, "fold-constants{size-limit=1000}")
    assert op_types(after) == ["ConstantOfShape", "Add"]
    _, after, _ = check(text, "fold-constants{size-limit=1000000}")
    assert op_types(after) == ["Add"]


def test_shrinking_fold_of_large_inputs_is_allowed():
    _, after, _ = check("""
    g (float[1] x) => (float[1] y) <int64[2] s = {1000, 1000}> {
      z = ConstantOfShape<value = float[1] {1.0}>(s)
      r = ReduceSum<keepdims = 0>(z)
      r1 = Reshape(r, one)
      y = Add(x, r1)
    }""".replace("s = {1000, 1000}>", "s = {1000, 1000}, int64[1] one = {1}>"),
        "fold-constants{size-limit=1000000},fold-constants{size-limit=1000}")
    assert op_types(after) == ["ConstantOfShape", "ReduceSum", "Reshape", "Add"] or op_types(after) == ["Add"]


def test_nondeterministic_ops_are_never_folded():
    after, _, _ = run_passes(parse("""
    g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
      r = RandomUniformLike<seed = 1.0>(c)
      y = Add(x, r)
    }"""), "fold-constants")
    assert op_types(after) == ["RandomUniformLike", "Add"]


def test_training_mode_dropout_is_never_folded():
    """Dropout with a true training_mode draws a random mask (even with a seed, each runtime draws its own):
    folding it would bake the reference evaluator's sample into the model (test_training_dropout, -O2)."""
    after, _, _ = run_passes(parse("""
    g () => (float[4] y, bool[4] m) <float[4] c = {1.0, 2.0, 3.0, 4.0}, float r = {0.5}, bool t = {1}> {
      y, m = Dropout<seed = 0>(c, r, t)
    }"""), "fold-constants")
    assert op_types(after) == ["Dropout"]


def test_initializer_that_is_also_an_input_is_not_a_constant():
    before = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] c) => (float[2] y) <float[2] c = {1.0, 2.0}, float[2] d = {1.0, 1.0}> {
      e = Add(c, d)
      y = Mul(x, e)
    }""")
    after, _, _ = run_passes(before, "fold-constants")
    assert op_types(after) == ["Add", "Mul"]


def test_sequence_results_are_not_folded():
    after, _, _ = run_passes(parse("""
    g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
      s = SequenceConstruct(c, c)
      i = Constant<value = int64 {0}>()
      e = SequenceAt(s, i)
      y = Add(x, e)
    }"""), "fold-constants")
    assert "SequenceConstruct" in op_types(after)


def test_folds_inside_if_branches():
    before = parse("""
    g (bool b, float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
      y = If(b) <
        then_branch = t () => (float[2] ty) { k = Add(c, c)  ty = Mul(x, k) },
        else_branch = e () => (float[2] ey) { one = Constant<value = float {1.0}>()  ey = Add(x, one) }
      >
    }""")
    after, report, model = run_passes(before, "fold-constants")
    then_ops = [n.op_type for n in after.graph.node[0].attribute[0].g.node]
    else_ops = [n.op_type for n in after.graph.node[0].attribute[1].g.node]
    assert then_ops == ["Mul"] and else_ops == ["Add"]
    for b in (True, False):
        assert_same_outputs(before, after, {"b": np.array(b), "x": np.array([3.0, 4.0], np.float32)})


def test_folds_inside_functions_as_constant_nodes():
    before = parse("""
    <ir_version: 10, opset_import: ["" : 21, "local" : 1]>
    g (float[2] x) => (float[2] y) { y = local.F(x) }
    <domain: "local", opset_import: ["" : 21]>
    F (a) => (b) {
      c = Constant<value = float[2] {1.0, 2.0}>()
      k = Add(c, c)
      b = Mul(a, k)
    }""", header="")
    after, report, _ = run_passes(before, "fold-constants,dce")
    fn_ops = [n.op_type for n in after.functions[0].node]
    assert fn_ops == ["Constant", "Mul"]
    assert_same_outputs(before, after)


def test_make_folder_folds_one_node_and_respects_the_budget():
    model = from_onnx(parse("""
    g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}> {
      k = Add(a, b)
      j = Mul(k, x)
      y = Sub(j, k)
    }"""))
    nodes = model.graph.nodes
    ctx = PassContext(budget=RewriteBudget(limit=0))
    fold = make_folder(ctx, model=model)
    assert fold(nodes[0]) is False and len(model.graph) == 3  # budget: no rewrite allowed
    ctx = PassContext(budget=RewriteBudget(limit=1))
    fold = make_folder(ctx, model=model)
    assert fold(nodes[1]) is False  # x is not a constant
    assert fold(nodes[0]) is True
    assert len(model.graph) == 2 and ctx.budget.used == 1
    k = nodes[2].inputs[1]
    assert k.const is not None and list(k.const.numpy()) == [4.0, 6.0]
    assert [r.rule for r in ctx.records] == ["fold:Add"]


def test_nothing_to_fold_reports_no_change():
    _, after, report = check("""
    g (float[2] x) => (float[2] y) { y = Relu(x) }""", "fold-constants")
    assert report.result.changed is False and op_types(after) == ["Relu"]


@pytest.mark.parametrize("dtype", ["float16", "double", "int32", "int64"])
def test_folding_keeps_element_types(dtype):
    _, after, _ = check(f"""
    g ({dtype}[2] x) => ({dtype}[2] y) <{dtype}[2] a = {{1, 2}}, {dtype}[2] b = {{3, 4}}> {{
      k = Mul(a, b)
      y = Add(x, k)
    }}""", "fold-constants")
    assert op_types(after) == ["Add"]


def test_identity_of_a_weight_forwards_the_weight_without_copying_it():
    before = parse("""
    g (float[2] x) => (float[2] y, float[2] w2) <float[2] w = {1.0, 2.0}> {
      w1 = Identity(w)
      w2 = Identity(w)
      y = Mul(x, w1)
    }""")
    after, report, model = run_passes(before, "fold-constants")
    # w1 is read through w itself; w2 is a graph output, so it becomes its own initializer
    assert op_types(after) == ["Mul"]
    assert list(after.graph.node[0].input) == ["x", "w"]
    assert sorted(t.name for t in after.graph.initializer) == ["w", "w2"]
    assert_same_outputs(before, after)


def test_int64_division_folds_exactly_above_2_53():
    # /work/shared/cases/lowering/int64_div_fold: no float64 round trip, truncation toward zero
    before = parse("""
    g (int64[4] x) => (int64[4] y) <int64[4] A = {9007199254740993, 4611686018427387911, -9007199254740995, 7},
                                    int64[4] B = {1, 3, 1, -2}> {
      q = Div(A, B)
      y = Add(q, x)
    }""")
    after, _, _ = run_passes(before, "fold-constants")
    assert op_types(after) == ["Add"]
    (y,) = run_ort_feeds(after, {"x": np.zeros(4, np.int64)})
    assert y.tolist() == [9007199254740993, 1537228672809129303, -9007199254740995, -3]


def test_integer_division_by_zero_is_left_to_the_runtime():
    after, _, _ = run_passes(parse("""
    g (int32[2] x) => (int32[2] y) <int32[2] a = {6, 7}, int32[2] b = {2, 0}> {
      q = Div(a, b)
      y = Add(q, x)
    }"""), "fold-constants")
    assert op_types(after) == ["Div", "Add"]


def test_float_folds_keep_signed_zeros_and_infinities():
    from optc.rewrites.rules._testing import assert_same_bits

    before = parse("""
    g (float[4] x) => (float[4] y) <float[4] a = {1.0, -1.0, 0.0, -0.0}, float[4] z = {-0.0, 0.0, 0.0, 0.0},
                                    float[4] big = {3.0e38, 1.0, 1.0, 1.0}> {
      s = Add(z, z)
      q = Div(a, s)
      m = Mul(big, big)
      t = Add(q, m)
      y = Add(t, x)
    }""")
    after, _, _ = run_passes(before, "fold-constants")
    assert op_types(after) == ["Add"]
    feeds = {"x": np.zeros(4, np.float32)}
    assert_same_bits(run_ort_feeds(after, feeds)[0], run_ort_feeds(before, feeds)[0])


def run_ort_feeds(proto, feeds):
    from .conftest import run_ort

    return run_ort(proto, feeds)


def test_quantized_weights_keep_their_dequantize_linear():
    """A QDQ model (as onnxruntime's quantizer writes it): -O2 must not fold the int8 weight's
    DequantizeLinear into a float32 constant (4x the size, and the integer kernels lose their input);
    a QuantizeLinear of a float constant still folds to the int8 weight."""
    import onnx
    import optc
    from onnx import TensorProto, helper, numpy_helper

    from .conftest import run_ort

    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, size=(8, 4)).astype(np.int8)
    w_f = rng.standard_normal((4, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(np.full(4, 0.02, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"), numpy_helper.from_array(w_f, "w_f"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("QuantizeLinear", ["w_f", "s", "z"], ["w2_q"]),
             helper.make_node("DequantizeLinear", ["w2_q", "s", "z"], ["w2"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=2))
    assert [n.op_type for n in out.graph.node].count("DequantizeLinear") == 2
    assert "QuantizeLinear" not in [n.op_type for n in out.graph.node]
    dtypes = {t.name: t.data_type for t in out.graph.initializer}
    assert dtypes["w_q"] == TensorProto.INT8 and dtypes["w2_q"] == TensorProto.INT8
    assert not any(t.data_type == TensorProto.FLOAT and tuple(t.dims) in ((8, 4), (4, 3)) for t in out.graph.initializer)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])
    onnx.checker.check_model(out)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_a_half_precision_weight_is_widened_at_run_time_not_folded_to_float32(half):
    """Weights stored as float16/bfloat16 behind a Cast to float32 (optc quantize --bfloat16 keeps float32
    islands that way) stay half the size through -O2; a small half constant (< 64 elements) still folds."""
    import ml_dtypes
    import optc
    from onnx import TensorProto, helper, numpy_helper

    from .conftest import run_ort

    elem = TensorProto.FLOAT16 if half == "float16" else TensorProto.BFLOAT16
    np_half = np.float16 if half == "float16" else ml_dtypes.bfloat16
    rng = np.random.default_rng(1)
    big = rng.standard_normal((16, 8)).astype(np_half)
    small = rng.standard_normal((8,)).astype(np_half)
    inits = [helper.make_tensor("w", elem, big.shape, big.view(np.uint16).ravel().tolist(), raw=False)
             if half == "bfloat16" else numpy_helper.from_array(big, "w"),
             helper.make_tensor("b", elem, small.shape, small.view(np.uint16).ravel().tolist(), raw=False)
             if half == "bfloat16" else numpy_helper.from_array(small, "b")]
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "wf"], ["h"]), helper.make_node("Add", ["h", "bf"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=2))
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert len(casts) == 1 and casts[0].input[0] == "w"
    assert {t.name: t.data_type for t in out.graph.initializer}["w"] == elem
    x = rng.standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])


@pytest.mark.parametrize(("zp_dtype", "zp", "axis_scales"), [
    (np.uint8, 0, False), (np.uint8, 128, False), (np.int8, -128, False), (np.int8, 127, False),
    (np.uint16, 7, False), (np.int8, 3, True)])
def test_quantize_linear_of_huge_and_infinite_constants_saturates(zp_dtype, zp, axis_scales):
    """QuantizeLinear folds to onnxruntime's values where x / y_scale leaves the int32 range (1e7 / 0.01, +-inf):
    onnx's reference evaluator converted to int32 first and wrapped to the wrong end. Folded and unfolded models
    agree on every element but NaN's (ONNX leaves it undefined)."""
    import optc
    from onnx import helper, numpy_helper

    from .conftest import run_ort

    c = np.array([[1e7, 3e7, -3e7, np.inf], [-np.inf, 2.5, -0.0, 1e-30]], np.float32)
    scale = np.array([0.01, 0.5], np.float32) if axis_scales else np.array(0.01, np.float32)
    z = np.full(scale.shape, zp, zp_dtype)
    ttype = helper.np_dtype_to_tensor_dtype(np.dtype(zp_dtype))
    inits = [numpy_helper.from_array(c, "c"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(z, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], axis=0), helper.make_node("Add", ["q", "x"], ["y"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", ttype, [2, 4])],
                              [helper.make_tensor_value_info("y", ttype, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    out = optc.to_onnx(optc.optimize(optc.from_onnx(model), level=2))
    assert "QuantizeLinear" not in [n.op_type for n in out.graph.node]
    x = np.zeros((2, 4), zp_dtype)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])
