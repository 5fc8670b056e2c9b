"""Elementwise functions of one 8-bit tensor -> optc.TableLookup (rewrites/rules/qlookup.py, lowering/ops/lookup.py).

Every positive case feeds all 256 values of x: the compiled table must equal onnx's reference evaluator on the QDQ
model exactly (the table is built by the constant folder's evaluator, in the graph's own types) and stay within
one quantized unit of onnxruntime running the model as written (its erf / tanh may differ by an ulp; the
histogram of differences is in the assertion message)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator
from optc.ir import load
from optc.rewrites import optimize
from optc.rewrites.rules.qinteger import to_integer_ops

_TYPES = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


class Chain:
    """A graph from one 8-bit input `x` (shape `shape`) to one output `y`, built op by op."""

    def __init__(self, x_dtype=np.uint8, shape=(4, 64)):
        self.x_dtype, self.shape = x_dtype, list(shape)
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(nh.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, *inputs, **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(h.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dq(self, q, scale, zp, dtype=np.uint8) -> str:
        return self.op("DequantizeLinear", q, self.const(scale), self.const(zp, dtype))

    def q(self, v, scale, zp, dtype=np.uint8) -> str:
        return self.op("QuantizeLinear", v, self.const(scale), self.const(zp, dtype))

    def qdq(self, v, scale, zp, dtype=np.uint8) -> str:
        return self.dq(self.q(v, scale, zp, dtype), scale, zp, dtype)

    def model(self, y: str, opset: int = 19) -> onnx.ModelProto:
        self.nodes.append(h.make_node("Identity", [y], ["y"]))
        x = h.make_tensor_value_info("x", _TYPES[self.x_dtype], self.shape)
        out = h.make_tensor_value_info("y", TensorProto.UNDEFINED, None)
        graph = h.make_graph(self.nodes, "g", [x], [out], self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=8)
        return onnx.shape_inference.infer_shapes(model)


def _x_zp(c: Chain) -> int:
    return 128 if c.x_dtype == np.uint8 else 0


def gelu_erf(c: Chain) -> str:
    """The erf GELU of a QDQ transformer (onnxruntime's quantizer's output on a ViT / BERT export): each step
    quantized, x on two paths, the constant 1 dequantized from int8."""
    x = c.dq("x", 0.031, _x_zp(c), c.x_dtype)
    e = c.qdq(c.op("Erf", c.op("Div", x, c.const(1.4142135))), 0.0079, 128)
    a = c.qdq(c.op("Add", e, c.dq(c.const(127, np.uint8), 0.0078, 0)), 0.0079, 0)
    x2 = c.dq("x", 0.031, _x_zp(c), c.x_dtype)  # its own DequantizeLinear, as the quantizer writes it
    m = c.qdq(c.op("Mul", x2, a), 0.025, 60)
    return c.q(c.op("Mul", m, c.dq(c.const(64, np.uint8), 0.0078125, 0)), 0.0133, 40)


def gelu_tanh(c: Chain) -> str:
    """GPT-2's tanh GELU, unquantized inside: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    x = c.dq("x", 0.05, _x_zp(c), c.x_dtype)
    inner = c.op("Mul", c.op("Add", x, c.op("Mul", c.op("Pow", x, c.const(3.0)), c.const(0.044715))),
                 c.const(0.7978846))
    y = c.op("Mul", c.op("Mul", x, c.const(0.5)), c.op("Add", c.op("Tanh", inner), c.const(1.0)))
    return c.q(y, 0.03, 30)


def sigmoid_int8(c: Chain) -> str:
    return c.q(c.op("Sigmoid", c.dq("x", 0.06, 3, np.int8)), 1 / 256, -128, np.int8)


def image_normalisation(c: Chain) -> str:
    """A uint8 image scaled, centred and quantized to int8 (no DequantizeLinear: x is the model input)."""
    v = c.op("Cast", "x", to=TensorProto.FLOAT)
    v = c.op("Div", c.op("Sub", c.op("Div", v, c.const(255.0)), c.const(0.485)), c.const(0.229))
    return c.q(v, 0.0175, -8, np.int8)


def hardswish_clip(c: Chain) -> str:
    """HardSwish written out (x * clip(x + 3, 0, 6) / 6) with a requantize inside and a Where of a constant."""
    x = c.dq("x", 0.04, _x_zp(c), c.x_dtype)
    gate = c.qdq(c.op("Clip", c.op("Add", x, c.const(3.0)), c.const(0.0), c.const(6.0)), 6 / 255, 0)
    y = c.op("Div", c.op("Mul", x, gate), c.const(6.0))
    return c.q(c.op("Where", c.const(True, np.bool_), y, c.const(0.0)), 0.02, 100)


POSITIVE = [(gelu_erf, np.uint8, ["Erf"]), (gelu_erf, np.int8, ["Erf"]), (gelu_tanh, np.uint8, ["Tanh", "Pow"]),
            (sigmoid_int8, np.int8, ["Sigmoid"]), (image_normalisation, np.uint8, ["Cast", "Div"]),
            (hardswish_clip, np.uint8, ["Clip", "Where"])]


def _rewritten(model: onnx.ModelProto):
    m = optimize(load(model.SerializeToString()), level=2)
    to_integer_ops(m)
    return m, [n.op_type for g in m.graphs() for n in g]


def _all_values(dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).astype(dtype)
    return np.resize(values, shape)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _histogram(diff: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(diff, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


@pytest.mark.parametrize(("build", "x_dtype", "gone"), POSITIVE,
                         ids=[f"{b.__name__}-{np.dtype(d).name}" for b, d, _ in POSITIVE])
def test_function_of_one_8bit_tensor_becomes_one_table(build, x_dtype, gone):
    c = Chain(x_dtype)
    model = c.model(build(c))
    m, ops = _rewritten(model)
    assert ops.count("TableLookup") == 1, ops
    assert not set(gone) & set(ops), ops
    assert "QuantizeLinear" not in ops, ops  # the quantize steps inside are in the table too

    x = _all_values(x_dtype, c.shape)
    got = optc.compile(model).run({"x": x})["y"]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # the table is the graph, evaluated exactly
    hist = _histogram(got.astype(np.int64) - _ort(model, x))
    assert max(map(abs, hist)) <= 1, f"vs onnxruntime, differences in quantized units: {hist}"


def test_models_before_opset_19():
    """onnx's reference evaluator has QuantizeLinear / DequantizeLinear from opset 19 only: the table is still made
    for an opset-13 model (their per-tensor 8-bit meaning is the same)."""
    c = Chain()
    model = c.model(gelu_erf(c), opset=13)
    _, ops = _rewritten(model)
    assert ops.count("TableLookup") == 1, ops
    x = _all_values(np.uint8, c.shape)
    hist = _histogram(optc.compile(model).run({"x": x})["y"].astype(np.int64) - _ort(model, x))
    assert max(map(abs, hist)) <= 1, hist


def test_earlier_tables_merge_into_the_last():
    """Two tables in a row (sigmoid, then a requantize and tanh) end as one."""
    c = Chain()
    s = c.q(c.op("Sigmoid", c.dq("x", 0.05, 128)), 1 / 256, 0)
    y = c.q(c.op("Tanh", c.op("Mul", c.dq(s, 1 / 256, 0), c.const(3.0))), 1 / 128, 128)
    model = c.model(y)
    _, ops = _rewritten(model)
    assert ops.count("TableLookup") == 1, ops
    x = _all_values(np.uint8, c.shape)
    np.testing.assert_array_equal(optc.compile(model).run({"x": x})["y"], ReferenceEvaluator(model).run(None, {"x": x})[0])


# -- not rewritten ------------------------------------------------------------------------------------------------

def _two_inputs(c: Chain) -> str:
    c.shape = [4, 64]
    c.inits.append(nh.from_array(np.zeros((4, 64), np.uint8), "other"))  # a constant of many elements
    other = c.op("Identity", "z")
    return c.q(c.op("Sigmoid", c.op("Add", c.dq("x", 0.05, 128), c.dq(other, 0.05, 128))), 1 / 256, 0)


def _per_channel_bias(c: Chain) -> str:
    bias = c.const(np.linspace(-1, 1, 64).astype(np.float32))
    return c.q(c.op("Sigmoid", c.op("Add", c.dq("x", 0.05, 128), bias)), 1 / 256, 0)


def _cheap(c: Chain) -> str:
    return c.q(c.op("Relu", c.dq("x", 0.05, 128)), 0.05, 0)


def _softmax_between(c: Chain) -> str:
    return c.q(c.op("Sigmoid", c.op("Softmax", c.dq("x", 0.05, 128), axis=-1)), 1 / 256, 0)


def _broadcast_rank(c: Chain) -> str:
    return c.q(c.op("Sigmoid", c.op("Add", c.dq("x", 0.05, 128), c.const(np.zeros((1, 1, 1), np.float32)))),
               1 / 256, 0)


NEGATIVE = [_per_channel_bias, _cheap, _softmax_between, _broadcast_rank]


@pytest.mark.parametrize("build", NEGATIVE, ids=[b.__name__.strip("_") for b in NEGATIVE])
def test_not_rewritten(build):
    c = Chain()
    model = c.model(build(c))
    _, ops = _rewritten(model)
    assert "TableLookup" not in ops, ops
    x = _all_values(np.uint8, c.shape)
    hist = _histogram(optc.compile(model).run({"x": x})["y"].astype(np.int64) - _ort(model, x))
    assert max(map(abs, hist)) <= 1, hist


def test_two_8bit_inputs_not_rewritten():
    c = Chain()
    y = c.q(c.op("Sigmoid", c.op("Add", c.dq("x", 0.05, 128), c.dq("z", 0.05, 128))), 1 / 256, 0)
    model = c.model(y)
    model.graph.input.append(h.make_tensor_value_info("z", TensorProto.UINT8, c.shape))
    _, ops = _rewritten(model)
    assert "TableLookup" not in ops, ops


def test_float_input_not_rewritten():
    c = Chain()
    model = c.model(c.q(c.op("Sigmoid", "x"), 1 / 256, 0))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    _, ops = _rewritten(onnx.shape_inference.infer_shapes(model))
    assert "TableLookup" not in ops, ops


def test_optimize_for_onnx_out_keeps_standard_ops():
    """The tables are for the TVM path only: `optc optimize` leaves the QDQ chain as it is."""
    c = Chain()
    model = c.model(gelu_erf(c))
    ops = [n.op_type for n in optc.to_onnx(optimize(load(model.SerializeToString()), level=3)).graph.node]
    assert "Erf" in ops and "TableLookup" not in ops, ops


# -- in the kernels --------------------------------------------------------------------------------------------

def _qdq_matmul_gelu(rows: int, weight_input: bool) -> onnx.ModelProto:
    """x [1, rows, 64] uint8 -> DQ -> MatMul (a constant int8 weight, or x's own transpose: activation x activation)
    -> Q -> the erf GELU chain -> y."""
    rng = np.random.default_rng(3)
    c = Chain(np.uint8, (1, rows, 64))
    x = c.dq("x", 0.02, 128)
    if weight_input:
        w = c.dq(c.const(rng.integers(-127, 128, (64, 96)), np.int8), rng.random(96) * 0.01 + 0.002,
                 np.zeros(96), np.int8)
        c.nodes[-1].attribute.append(h.make_attribute("axis", 1))
    else:
        w = c.op("Transpose", x, perm=[0, 2, 1])
    mm = c.q(c.op("MatMul", x, w), 0.031, 128)
    c.nodes.append(h.make_node("Identity", [mm], ["x_mm"]))
    gelu = Chain(np.uint8)  # the chain reads "x": build it on the matmul's output instead
    gelu.n = c.n + 100
    y = gelu_erf(gelu)
    for n in gelu.nodes:
        n.input[:] = ["x_mm" if i == "x" else i for i in n.input]
    c.nodes += gelu.nodes
    c.inits += gelu.inits
    return c.model(y)


@pytest.mark.parametrize("weight_input", [True, False], ids=["int8-matmul", "float-matmul"])
def test_table_fuses_into_the_matmul_epilogue(weight_input):
    """The lookup is one more elementwise op of the matmul's epilogue (int8 kernel on a constant weight, float
    TiledReduction kernel for an activation x activation matmul), not a kernel of its own; 197 rows: the padded
    register tiles of a ViT's token count."""
    from optc.codegen.build import fuse, prepare
    from optc.codegen.schedules import TiledReduction
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    model = _qdq_matmul_gelu(197, weight_input)
    m, ops = _rewritten(model)
    assert ops.count("TableLookup") == 1, ops
    target = resolve_target("cpu")
    fused = fuse(prepare(lower(m), None, target), target)
    names = [gv.name_hint for gv, f in fused.functions_items() if hasattr(f, "body") and "table_lookup" in
             gv.name_hint]
    assert len(names) == 1 and "matmul" in names[0], names
    if not weight_input:
        func = next(f for gv, f in fused.functions_items() if gv.name_hint == names[0])
        assert TiledReduction().apply(func, target, False) is not None  # not the naive fallback

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (1, 197, 64)).astype(np.uint8)
    got = optc.compile(model).run({"x": x})["y"]
    hist = _histogram(got.astype(np.int64) - _ort(model, x))
    assert max(map(abs, hist)) <= 1, f"differences in quantized units: {hist}"


def test_data_dependent_reads_of_a_parameter_table_do_not_block_tiling():
    """schedules._data_dependent: a gather from a buffer the kernel computes blocks compute_at, a read of a
    parameter (a lookup table) does not."""
    from optc.codegen.schedules import _data_dependent
    from tvm import s_tir, te
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    x = te.placeholder((64,), "uint8", name="x")
    table = te.placeholder((256,), "uint8", name="table")
    looked = te.compute((64,), lambda i: table[x[i].astype("int32")], name="lookup")
    double = te.compute((256,), lambda i: table[i] * 2, name="double")
    gathered = te.compute((64,), lambda i: double[x[i].astype("int32")], name="gather")
    for outputs, expected in (([x, table, looked], False), ([x, table, gathered], True)):
        sch = s_tir.Schedule(te.create_prim_func(outputs))
        assert _data_dependent(sch, normalize_prim_func(sch)) is expected


@pytest.mark.parametrize(("x_dtype", "y_dtype", "y_zp", "f"), [
    (np.uint8, np.uint8, 0, "Exp"),  # exp(25.5) / 0.01 is far beyond the int32 range
    (np.uint8, np.uint8, 128, "Reciprocal"),  # 1 / 0 = +inf
    (np.int8, np.int8, -128, "Log"),  # log(0) = -inf, log(< 0) = NaN
    (np.int8, np.int8, 127, "Reciprocal"),
])
def test_table_saturates_huge_and_infinite_values_as_onnxruntime(x_dtype, y_dtype, y_zp, f):
    """A quotient beyond the int32 range or an infinity saturates to the right end (onnx's reference QuantizeLinear
    converts to int32 first and wrapped; the folder's evaluator quantizes in numpy). NaN is left out: ONNX leaves
    its quantization undefined."""
    c = Chain(x_dtype)
    x = c.dq("x", 0.1, 0, x_dtype)
    model = c.model(c.q(c.op(f, x), 0.01, y_zp, y_dtype))
    _, ops = _rewritten(model)
    assert ops == ["TableLookup"], ops
    values = _all_values(x_dtype, c.shape)
    got = optc.compile(model).run({"x": values})["y"]
    want = _ort(model, values)
    with np.errstate(all="ignore"):
        real = ~np.isnan(getattr(np, {"Exp": "exp", "Log": "log", "Reciprocal": "reciprocal"}[f])(
            values.astype(np.float32) * np.float32(0.1)))
    np.testing.assert_array_equal(got[real], want[real])
