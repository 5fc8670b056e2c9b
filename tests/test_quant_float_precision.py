"""fp16 / bf16 conversion (`optc.quantization.float_precision`): the converted models pass onnx's checker, run on
onnxruntime and match the float32 model within the type's tolerance; islands, casts, I/O types, the report."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from optc.errors import OptcError
from optc.quantization import float_precision as fp
from optc.quantization.float_precision import convert_float

from .conftest import run_ort

TOL = {"float16": 1e-2, "bfloat16": 5e-2}
ELEM = {"float16": TP.FLOAT16, "bfloat16": TP.BFLOAT16}
RNG = np.random.default_rng(0)


def _init(name: str, *shape: int, scale: float = 0.3, data: np.ndarray | None = None) -> onnx.TensorProto:
    arr = data if data is not None else (RNG.standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(arr, name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_net() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("w", 16, 3, 3, 3), _init("b", 16), _init("s", 16, data=RNG.uniform(0.5, 1.5, 16).astype(np.float32)),
             _init("bb", 16), _init("mu", 16, scale=0.1), _init("var", 16, data=RNG.uniform(0.5, 2, 16).astype(np.float32)),
             _init("w2", 10, 16), _init("b2", 10)]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, [2, 10])], inits)


def transformer() -> onnx.ModelProto:
    d = 32
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["ln", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
        helper.make_node("Mul", ["qk", "scale"], ["qks"], name="scale"),
        helper.make_node("Softmax", ["qks"], ["att"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["att", "v"], ["ctx"], name="ctx"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    inits = [_init("g", d, data=np.ones(d, np.float32)), _init("beta", d, scale=0.1), _init("wq", d, d, scale=0.2),
             _init("wk", d, d, scale=0.2), _init("wv", d, d, scale=0.2), _init("wo", d, d, scale=0.2),
             _init("scale", data=np.array(1 / np.sqrt(d), np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [2, 8, d])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, [2, 8, d])], inits)


def overflowing() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "big"], ["a"], name="add_big"),
        helper.make_node("Mul", ["a", "tiny"], ["s"], name="shrink"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    big = np.full((8,), 1e5, np.float32) * RNG.uniform(0.5, 1.5, 8).astype(np.float32)
    inits = [_init("w", 8, 8), _init("big", data=big), _init("tiny", data=np.array(1e-4, np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [4, 8])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, [4, 8])], inits)


def shape_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["new_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="mm"),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"), _init("w", 12, 64)]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, ["batch", 3, 4])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, ["batch", 64])], inits)


def constants() -> onnx.ModelProto:
    """Float32 made by a Constant node, ConstantOfShape's value and a Cast(to=float) of an int64 shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("ConstantOfShape", ["shp"], ["co"], name="fill",
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("Constant", [], ["c"], name="half", value_float=0.5),
        helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "co"], ["a"], name="add"),
        helper.make_node("Cast", ["shp"], ["fs"], name="cast", to=TP.FLOAT),
        helper.make_node("ReduceMax", ["fs"], ["smax"], name="rmax", keepdims=0),
        helper.make_node("Div", ["a", "smax"], ["d"], name="div"),
        helper.make_node("MatMul", ["d", "w"], ["y"], name="mm"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [4, 8])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, [4, 16])], [_init("w", 8, 16)])


def with_if() -> onnx.ModelProto:
    """An If whose branches read the outer float32 value 'h'."""
    then = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TP.FLOAT, [4, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TP.FLOAT, [4, 8])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["i"], name="if", then_branch=then, else_branch=other),
        helper.make_node("MatMul", ["i", "w2"], ["y"], name="mm2"),
    ]
    inits = [_init("w", 8, 8), _init("w2", 8, 8), _init("zero", data=np.array(0, np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [4, 8])],
                  [helper.make_tensor_value_info("y", TP.FLOAT, [4, 8])], inits)


MODELS = {"conv": conv_net, "transformer": transformer, "overflow": overflowing, "shapes": shape_model,
          "constants": constants, "if": with_if}
FEEDS = {"conv": (2, 3, 16, 16), "transformer": (2, 8, 32), "overflow": (4, 8), "shapes": (5, 3, 4),
         "constants": (4, 8), "if": (4, 8)}


def _feed(name: str) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal(FEEDS[name]).astype(np.float32)}


def _convert(name: str, **kw) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    original = MODELS[name]()
    model = optc.from_onnx(original)
    report = convert_float(model, **kw)
    return original, optc.to_onnx(model), report


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual.astype(np.float32) - expected)) / max(np.max(np.abs(expected)), 1e-6))


def _types(m: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {t.name: t.data_type for t in m.graph.initializer}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _float32_boundary(m: onnx.ModelProto) -> onnx.ModelProto:
    """`m` with Casts from/to float32 around its (single) input and output: onnxruntime's Python API takes and
    returns no bfloat16 numpy arrays."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    (inp,), (out,) = m.graph.input, m.graph.output
    m.graph.node.insert(0, helper.make_node("Cast", ["x_f32"], [inp.name], to=inp.type.tensor_type.elem_type))
    m.graph.node.append(helper.make_node("Cast", [out.name], ["y_f32"], to=TP.FLOAT))
    m.graph.ClearField("input")
    m.graph.input.append(helper.make_tensor_value_info("x_f32", TP.FLOAT, None))
    m.graph.ClearField("output")
    m.graph.output.append(helper.make_tensor_value_info("y_f32", TP.FLOAT, None))
    return m


def _weight_bytes(m: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer)


def _casts_ok(m: onnx.ModelProto) -> None:
    """One Cast per value and direction; no Cast right after a Cast that undoes it."""
    producer = {o: n for n in m.graph.node for o in n.output}
    seen = set()
    for n in m.graph.node:
        if n.op_type != "Cast":
            continue
        to = helper.get_attribute_value(n.attribute[0])
        assert (n.input[0], to) not in seen, f"two Casts of '{n.input[0]}' to {to}"
        seen.add((n.input[0], to))
        p = producer.get(n.input[0])
        if p is not None and p.op_type == "Cast":
            assert _types(m).get(p.input[0]) != to, f"Cast pair {p.name} -> {n.name} cancels"


# -- the converted models -------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_io", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_checks_runs_and_matches(name, dtype, keep_io):
    original, converted, report = _convert(name, dtype=dtype, keep_io_types=keep_io)
    onnx.checker.check_model(converted, full_check=True)
    feeds = _feed(name)
    (expected,) = run_ort(original, feeds)
    io_type = TP.FLOAT if keep_io else ELEM[dtype]
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [io_type]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [io_type]
    assert [o.name for o in converted.graph.output] == [o.name for o in original.graph.output]
    (actual,) = run_ort(converted if keep_io else _float32_boundary(converted), list(feeds.values()))
    assert _rel_err(actual, expected) < TOL[dtype], (report, _rel_err(actual, expected))
    assert _weight_bytes(converted) < 0.6 * _weight_bytes(original)
    _casts_ok(converted)
    assert report["dtype"] == dtype and report["casts_inserted"] >= (1 if keep_io else 0)
    assert report == __import__("json").loads(__import__("json").dumps(report))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_are_stored_in_the_new_type(dtype):
    _, converted, report = _convert("conv", dtype=dtype)
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["w"] == types["w2"] == ELEM[dtype]
    assert report["converted_nodes"] + len(report["kept_float32"]) == 7


def test_float16_converts_compute_ops():
    _, converted, report = _convert("transformer", dtype="float16")
    types = _types(converted)
    assert types["q"] == types["att"] == types["ln"] == TP.FLOAT16
    assert report["kept_float32"] == []
    assert report["casts_inserted"] == 2  # input x once, output y once


def test_bfloat16_stores_weights_in_bfloat16_and_computes_in_float32():
    """bfloat16 on onnxruntime's CPU provider: weights halved, activations float32 (its bfloat16 data-movement
    chains crashed onnxruntime 1.31's optimizer; see float_precision's docstring)."""
    _, converted, report = _convert("transformer", dtype="bfloat16")
    kept = {k["node"]: k["reason"] for k in report["kept_float32"]}
    assert "weights are stored in bfloat16" in kept["q"] and "weights are stored in bfloat16" in kept["ln"]
    types = _types(converted)
    assert types["ln"] == TP.FLOAT and types["q"] == TP.FLOAT and types["kt"] == TP.FLOAT
    assert types["wq"] == TP.BFLOAT16  # the weight is stored as bfloat16, cast in front
    cast = next(n for n in converted.graph.node if n.op_type == "Cast" and n.input[0] == "wq")
    assert helper.get_attribute_value(cast.attribute[0]) == TP.FLOAT
    outputs = {o for n in converted.graph.node for o in n.output}
    assert not any(v.type.tensor_type.elem_type == TP.BFLOAT16 for v in converted.graph.value_info
                   if v.name in outputs and not any(n.op_type == "Constant" and v.name in n.output
                                                    for n in converted.graph.node))


def test_float16_keeps_islands_where_onnxruntime_has_no_kernel():
    """A one-node probe decides; float16 ops load (onnxruntime inserts its own Casts), so a float16 model keeps
    few islands; excluded nodes are islands whose weights are still float16."""
    _, converted, report = _convert("transformer", dtype="float16", exclude=("q",))
    kept = {k["node"]: k["reason"] for k in report["kept_float32"]}
    assert kept["q"] == "excluded"
    assert _types(converted)["q"] == TP.FLOAT and _types(converted)["ln"] == TP.FLOAT16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_shape_computation_stays_int64(dtype):
    _, converted, report = _convert("shapes", dtype=dtype)
    types = _types(converted)
    for name in ("shp", "n", "n1", "new_shape"):
        assert types[name] == TP.INT64
    if dtype == "float16":
        assert not any(k["node"] in ("shape", "gather", "unsq", "concat") for k in report["kept_float32"])


def test_constant_nodes_fill_values_and_casts_take_the_new_type():
    _, converted, report = _convert("constants", dtype="float16")
    types = _types(converted)
    assert types["c"] == types["co"] == types["fs"] == types["d"] == TP.FLOAT16
    cast = next(n for n in converted.graph.node if n.name == "cast")
    assert helper.get_attribute_value(cast.attribute[0]) == TP.FLOAT16
    fill = next(n for n in converted.graph.node if n.name == "fill")
    assert helper.get_attribute_value(fill.attribute[0]).data_type == TP.FLOAT16
    assert report["kept_float32"] == []


@pytest.mark.parametrize("dtype", ["float16"])
def test_subgraph_and_the_values_it_reads_stay_float32(dtype):
    _, converted, report = _convert("if", dtype=dtype)
    kept = {k["node"]: k["reason"] for k in report["kept_float32"]}
    assert "subgraph" in kept["if"] and "read inside a subgraph" in kept["mm"]
    assert _types(converted)["h"] == TP.FLOAT


# -- overflow, ranges, exclude --------------------------------------------------------------------------


def test_overflowing_initializer_keeps_its_consumer_float32():
    _, converted, report = _convert("overflow", dtype="float16")
    kept = {k["node"]: k for k in report["kept_float32"]}
    assert kept["add_big"]["op"] == "Add" and "'big'" in kept["add_big"]["reason"]
    assert "65504" in kept["add_big"]["reason"]
    types = _types(converted)
    assert types["big"] == TP.FLOAT and types["a"] == TP.FLOAT
    assert types["w"] == TP.FLOAT16 and types["m"] == TP.FLOAT16
    assert not np.isinf(numpy_helper.to_array(next(t for t in converted.graph.initializer if t.name == "big"))).any()


def test_bfloat16_range_holds_the_large_initializer():
    _, _, report = _convert("overflow", dtype="bfloat16")
    assert not any("overflows" in k["reason"] for k in report["kept_float32"])


def test_ranges_keep_an_overflowing_activation_float32():
    original, converted, report = _convert("conv", dtype="float16", ranges={"r": (0.0, 1e6)})
    kept = {k["node"]: k["reason"] for k in report["kept_float32"]}
    assert "'r'" in kept["relu"] and "'r'" in kept["pool"]
    types = _types(converted)
    assert types["r"] == TP.FLOAT and types["p"] == TP.FLOAT
    _, _, plain = _convert("conv", dtype="float16", ranges={"r": (0.0, 100.0)})
    assert not any("'r'" in k["reason"] for k in plain["kept_float32"])


@pytest.mark.parametrize("exclude", [["fc"], ["Gemm"]])
def test_exclude_keeps_nodes_and_their_weights_float32(exclude):
    original, converted, report = _convert("conv", dtype="float16", exclude=exclude)
    assert {"node": "fc", "op": "Gemm", "reason": "excluded"} in report["kept_float32"]
    types = _types(converted)
    assert types["w2"] == TP.FLOAT and types["f"] == TP.FLOAT and types["w"] == TP.FLOAT16
    (expected,) = run_ort(original, _feed("conv"))
    (actual,) = run_ort(converted, _feed("conv"))
    assert _rel_err(actual, expected) < TOL["float16"]


def test_bad_dtype_is_an_optc_error():
    model = optc.from_onnx(conv_net())
    with pytest.raises(OptcError, match="float16 or bfloat16"):
        convert_float(model, dtype="float8")
    with pytest.raises(OptcError, match="float16 or bfloat16"):
        optc.optimize(conv_net(), passes="convert-float{dtype=int8}")


# -- round trip, pass, probe cache ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["conv", "transformer"])
def test_round_trip_through_optimize_O2(name, dtype):
    _, converted, _ = _convert(name, dtype=dtype)
    optimized = optc.to_onnx(optc.optimize(optc.from_onnx(converted), level=2))
    onnx.checker.check_model(optimized, full_check=True)
    (a,) = run_ort(converted, _feed(name))
    (b,) = run_ort(optimized, _feed(name))
    assert _rel_err(b, a) < 1e-3


def test_pass_runs_from_a_pipeline_string():
    model = optc.optimize(transformer(), passes="convert-float{dtype=bfloat16}")
    out = optc.to_onnx(model)
    assert {t.name: t.data_type for t in out.graph.initializer}["wq"] == TP.BFLOAT16
    assert out.graph.input[0].type.tensor_type.elem_type == TP.FLOAT
    model = optc.optimize(transformer(), passes="convert-float{keep-io-types=false}")
    assert optc.to_onnx(model).graph.input[0].type.tensor_type.elem_type == TP.FLOAT16


def test_probes_are_cached(monkeypatch):
    _convert("conv", dtype="float16")
    calls = []
    real = fp.session
    monkeypatch.setattr(fp, "session", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, _, report = _convert("conv", dtype="float16")
    assert calls == []
    fp._PROBES.clear()
    _, _, again = _convert("conv", dtype="float16")
    assert calls and again == report
