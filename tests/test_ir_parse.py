"""The text IR parses back: `format_model(parse(format_model(m))) == format_model(m)`, bit-exact payloads, the
parsed model computes what the original computes (onnxruntime), and malformed text fails with line:column."""

from __future__ import annotations

import glob
import os

import ml_dtypes
import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper
from optc.errors import OptcError
from optc.ir import DataType, ParseError, from_onnx, load, parse, to_onnx
from optc.ir.printer import format_float, format_model
from optc.ortsession import session
from optc.rewrites.rules._testing import assert_same_bits, random_feeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# If, Loop and Scan bodies (with outer-scope references), a model-local function with an attribute reference
# and a default, multiple and omitted outputs, an omitted optional input
RUNNABLE = """
<ir_version: 10, opset_import: ["" : 18, "local" : 1]>
main (float[N, 4] X, bool C, int64 trip, float Opt) => (float[N, 4] Y, float[N, 2] S0, float[N, 2] S1,
                                                         float[N, 4] F, float[N, 4] K, float[N, 4] L, float[4] SC)
<float[4] W = {1.0, -0.0, 3.5, 4.0}, int64[2] shp = {-1, 4}>
{
  A = Add(X, W)
  R = Reshape(A, shp)
  Y = If(C) <then_branch = g1 () => (float[N, 4] o1) { o1 = Mul(R, W) },
             else_branch = g2 () => (float[N, 4] o2) { k = Constant <value = float[1] {3.0}> ()  o2 = Sub(R, k) }>
  S0, S1 = Split <axis = 1, num_outputs = 2> (Y)
  F = Clip(Y, , Opt)
  K = local.Scale <s = 2.0> (F)
  L = Loop(trip, , X) <body = lb (int64 i, bool cond, float[N, 4] acc) => (bool cond_out, float[N, 4] acc_out) {
      cond_out = Identity(cond)
      acc_out = Add(acc, W)
  }>
  SC = Scan <num_scan_inputs = 1, body = sb (float[4] s, float[4] x) => (float[4] s_out) {
      s_out = Add(s, x)
  }> (W, X)
}
<domain: "local", opset_import: ["" : 18]>
Scale <s, t: float = 1.5> (x) => (y) {
  c = Constant <value_float: float = @s> ()
  d = Constant <value_float: float = @t> ()
  m = Mul(x, c)
  y = Add(m, d)
}
"""


def _round_trip(m, values=True):
    text = format_model(m, values=values)
    again = parse(text)
    assert format_model(again, values=values) == text
    return text, again


def _same_outputs(original: onnx.ModelProto, parsed, feeds: dict) -> None:
    exported = to_onnx(parsed)
    onnx.checker.check_model(exported, full_check=True)
    expected = session(original, optimize=False).run(None, feeds)
    got = session(exported, optimize=False).run(None, feeds)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert_same_bits(g, e, f"output {i}")


# -- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "examples", "*.onnx"))),
                         ids=os.path.basename)
def test_examples_round_trip_and_compute_the_same(path):
    model = load(path)
    text, parsed = _round_trip(model)
    assert "init float32[" in text
    typed = format_model(model, values=True, types=True)  # node output types (`?` where the model has none)
    assert format_model(parse(typed), values=True, types=True) == typed and " = Conv(" in typed
    proto = onnx.load(path)
    _same_outputs(proto, parsed, random_feeds(proto))
    # the default (elided) form also round-trips as text once stand-ins are allowed, but refuses without them
    short = format_model(model)
    with pytest.raises(ParseError, match=r"line \d+, column \d+: the payload of %\S+ \(float32\[.*\]\) is elided"):
        parse(short)
    assert format_model(parse(short, elided="zeros")) == short


def test_subgraphs_functions_optional_io_round_trip_and_compute_the_same():
    proto = onnx.parser.parse_model(RUNNABLE)
    onnx.checker.check_model(proto, full_check=True)
    model = from_onnx(proto)
    text, parsed = _round_trip(model)
    for piece in ("then_branch: g1 () -> (%o1: float32[N,4])", "body: lb (%i: int64[], %cond: bool[]",
                  "%F = Clip(%Y, None, %Opt)", "%L = Loop(%trip, None, %X)",
                  "function local::Scale<s, t=1.5>(%x) -> (%y) opsets {ai.onnx: 18}",
                  "{value_float=@s:float}", "%S0, %S1 = Split(%Y) {axis=1, num_outputs=2}"):
        assert piece in text, piece
    feeds = {"X": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "C": np.array(False),
             "trip": np.array(3, np.int64), "Opt": np.array(0.5, np.float32)}
    _same_outputs(proto, parsed, feeds)
    _same_outputs(proto, parsed, {**feeds, "C": np.array(True)})


def _every_attribute_type() -> onnx.ModelProto:
    """A node of a custom domain holding one attribute of every type (not runnable: export and text only)."""
    sub = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "sub",
                            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    sub2 = helper.make_graph([helper.make_node("Neg", ["c"], ["d"])], "sub 2",
                             [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["s 1", None])])
    big = helper.make_tensor("t", TensorProto.INT32, [3, 4], list(range(12)))
    small = helper.make_tensor("u", TensorProto.FLOAT16, [2], [1.5, -0.0])
    node = helper.make_node(
        "Everything", ["x", "", "x"], ["y", "", "z"], domain="com.microsoft",
        f=0.1, i=-(2**63), s="it's \"quoted\"\n", fs=[1e-45, float("inf"), -0.0], is_=[1, -2, 3],
        ss=["a", "b,c"], t=big, ts=[big, helper.make_tensor("v", TensorProto.BOOL, [2], [True, False])],
        g=sub, gs=[sub, sub2], tp=helper.make_tensor_type_proto(TensorProto.INT64, ["N", 3]),
        tps=[helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None)),
             helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.UINT8, []))],
        half=small, nan=float("nan"))
    node.attribute.append(helper.make_attribute("empty_ints", [], attr_type=onnx.AttributeProto.INTS))
    node.attribute.append(helper.make_attribute("empty_floats", [], attr_type=onnx.AttributeProto.FLOATS))
    node.attribute.append(helper.make_attribute("empty_graphs", [], attr_type=onnx.AttributeProto.GRAPHS))
    node2 = helper.make_node("Tail", ["y"], [], domain="optc")
    graph = helper.make_graph(
        [node, node2], "odd graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch size", 0, None]),
         helper.make_value_info("seq", helper.make_sequence_type_proto(
             helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))),
         helper.make_value_info("opt", helper.make_optional_type_proto(
             helper.make_tensor_type_proto(TensorProto.INT8, None))),
         helper.make_value_info("mp", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(
             TensorProto.FLOAT, []))),
         helper.make_value_info("untyped", onnx.TypeProto()),
         helper.make_tensor_value_info("in:0 with space", TensorProto.DOUBLE, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.BFLOAT16, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("optc", 1)], producer_name="it's me",
                             producer_version="1.0", ir_version=10)


def test_every_attribute_and_value_type_round_trips():
    proto = _every_attribute_type()
    model = from_onnx(proto)
    text, parsed = _round_trip(model)
    assert format_model(parsed) == format_model(model)
    for piece in ("%x: float32['batch size',0,?]", "%seq: seq<float32[2]>", "%opt: optional<int8>",
                  "%mp: map<int64,float32[]>", "%untyped: ?", "%'in:0 with space': float64[]",
                  "empty_ints=[]:ints", "empty_floats=[]:floats", "empty_graphs=[]:graphs", "tp=type int64[N,3]",
                  "tps=[type seq<float32>, type optional<uint8[]>]", "t=int32[3, 4] [0, 1, 2",
                  "ts=[int32[3, 4] [0,", "bool[2] [true, false]]", "half=float16[2] [1.5, -0.0]",
                  "fs=[1e-45, inf, -0.0]", "f=0.1", "nan=nan", "gs[0]: sub (%a: float32[2])",
                  "gs[1]: 'sub 2' (%c: float32) -> (%d: float32['s 1',?])", "g: sub",
                  "%y, None, %z = com.microsoft::Everything(%x, None, %x)", "optc::Tail(%y)",
                  "graph 'odd graph'", "producer: \"it's me\" '1.0'"):
        assert piece in text, piece
    # the export holds the same attributes, bit for bit
    exported = to_onnx(parsed)
    a = {x.name: x for x in proto.graph.node[0].attribute}
    b = {x.name: x for x in exported.graph.node[0].attribute}
    assert a.keys() == b.keys()
    for k in a:
        if a[k].type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue  # graphs are compared through the text above
        if a[k].type == onnx.AttributeProto.FLOAT and k == "nan":
            assert np.isnan(b[k].f)
            continue
        if a[k].type in (onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS):
            ta = [a[k].t] if a[k].type == onnx.AttributeProto.TENSOR else a[k].tensors
            tb = [b[k].t] if b[k].type == onnx.AttributeProto.TENSOR else b[k].tensors
            for x, y in zip(ta, tb, strict=True):
                assert_same_bits(onnx.numpy_helper.to_array(y), onnx.numpy_helper.to_array(x), k)
            continue
        assert a[k] == b[k], k


def _init_model(arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Identity of each initializer, so that onnxruntime reads the payloads back."""
    inits, nodes, outs = [], [], []
    for name, arr in arrays.items():
        dt = DataType.from_numpy(arr.dtype)
        inits.append(onnx.numpy_helper.from_array(arr, name) if arr.dtype != ml_dtypes.bfloat16 else
                     helper.make_tensor(name, int(dt), arr.shape, arr.view(np.uint16).tobytes(), raw=True))
        nodes.append(helper.make_node("Identity", [name], [name + "_out"]))
        outs.append(helper.make_tensor_value_info(name + "_out", int(dt), arr.shape))
    return helper.make_model(helper.make_graph(nodes, "g", [], outs, inits), opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_float_payloads_are_bit_exact():
    rng = np.random.default_rng(1)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1.4e-45, 3.4028235e38, 1.1754942e-38, 0.1, 1 / 3]
    f32 = np.concatenate([np.array(special, np.float32), rng.integers(0, 2**32, 4000, dtype=np.uint32)
                          .view(np.float32)])
    f32 = f32[~np.isnan(f32) | (f32.view(np.uint32) == np.float32(np.nan).view(np.uint32))]  # payloads: below
    f64 = np.concatenate([np.array(special + [5e-324, 2.0**-1074 * 3], np.float64),
                          rng.integers(0, 2**63, 2000, dtype=np.int64).view(np.float64)])
    f64 = f64[~np.isnan(f64)]
    f16 = np.arange(0, 2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f16 = f16[~np.isnan(f16)]
    arrays = {"f32": f32, "f64": f64, "f16": f16,
              "bf16": np.array(special + [1.0078125, -2.5e-38], np.float32).astype(ml_dtypes.bfloat16)}
    proto = _init_model(arrays)
    text, parsed = _round_trip(from_onnx(proto))
    assert "-0.0" in text and "inf" in text and "nan" in text
    for name, arr in arrays.items():
        got = np.asarray(parsed.graph.initializers[name].const.numpy())
        assert got.dtype == arr.dtype and (got.view(f"u{arr.itemsize}") == arr.view(f"u{arr.itemsize}")).all(), name
    del arrays["bf16"]  # onnxruntime returns no bfloat16 arrays
    _same_outputs(_init_model(arrays), parse(format_model(from_onnx(_init_model(arrays)), values=True)), {})


def test_nan_payload_kept():
    bits = np.array([0x7FC00001, 0xFFC00000, 0x7FA00000], np.uint32)
    arr = bits.view(np.float32)
    text = format_model(from_onnx(_init_model({"n": arr})), values=True)
    assert "nan:0x7fc00001" in text and "nan:0xffc00000" in text
    got = parse(text).graph.initializers["n"].const.numpy()
    assert (got.view(np.uint32) == bits).all()
    assert format_float(np.float32(np.nan)) == "nan" and format_float(np.float64(-0.0)) == "-0.0"


def test_every_element_type_round_trips():
    rng = np.random.default_rng(2)
    arrays = {
        "b": np.array([True, False, True]), "u8": np.array([0, 255], np.uint8), "i8": np.array([-128, 127], np.int8),
        "u16": np.array([65535], np.uint16), "i16": np.array([-32768], np.int16), "i32": np.array([-2**31], np.int32),
        "i64": np.array([-2**63, 2**63 - 1], np.int64), "u32": np.array([2**32 - 1], np.uint32),
        "u64": np.array([2**64 - 1], np.uint64), "s": np.array([b"a", b"it's", "é".encode()], dtype=object),
        "rank0": np.array(1.25, np.float32), "empty": np.zeros((0, 3), np.float32),
        "big": rng.standard_normal((5, 7)).astype(np.float32),
    }
    proto = _init_model(arrays)
    for name, dt in (("i4", TensorProto.INT4), ("u4", TensorProto.UINT4), ("f8", TensorProto.FLOAT8E4M3FN),
                     ("f8b", TensorProto.FLOAT8E5M2)):
        vals = [-3, 0, 5, 7] if dt != TensorProto.UINT4 else [0, 15, 3, 1]
        if dt in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
            vals = [0.5, -448.0 if dt == TensorProto.FLOAT8E4M3FN else -57344.0, 0.001953125, -0.0]
        proto.graph.initializer.append(helper.make_tensor(name, dt, [4], vals))
    model = from_onnx(proto)
    text, parsed = _round_trip(model)
    assert "%s = init string[3] ['a', \"it's\", 'é']" in text
    assert "%rank0 = init float32[] [1.25]" in text and "%empty = init float32[0, 3] []" in text
    for name, v in model.graph.initializers.items():
        got, want = parsed.graph.initializers[name].const, v.const
        assert got.dtype == want.dtype and got.shape == want.shape, name
        a, b = np.asarray(got.numpy()), np.asarray(want.numpy())
        if a.dtype == object:
            assert a.tolist() == b.tolist()
        else:
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    _same_outputs(_init_model(arrays), parse(format_model(from_onnx(_init_model(arrays)), values=True)), {})


@pytest.mark.slow
def test_onnx_backend_node_models_round_trip():
    """Every model of onnx's backend node tests prints, parses back to the same text and exports; one in
    eight also runs on onnxruntime (when it can load the original) with bit-identical outputs."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    assert len(cases) > 1000
    ran = 0
    for i, case in enumerate(cases):
        model = from_onnx(case.model)
        text, parsed = _round_trip(model)
        exported = to_onnx(parsed)
        if i % 8 or not case.data_sets:
            continue
        try:
            sess = session(case.model, optimize=False)
        except OptcError:
            continue  # onnxruntime lacks the op or opset
        inputs = [x for x in case.model.graph.input if x.name not in {t.name for t in case.model.graph.initializer}]
        feeds = {vi.name: arr for vi, arr in zip(inputs, case.data_sets[0][0], strict=False)}
        try:
            expected = sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - onnxruntime cannot run the original: nothing to compare with
            continue
        got = session(exported, optimize=False).run(None, feeds)
        for j, (g, e) in enumerate(zip(got, expected, strict=True)):
            if isinstance(e, np.ndarray):
                assert_same_bits(np.asarray(g), e, f"{case.name} output {j}")
        ran += 1
    assert ran > 100, ran


# -- the CLI ---------------------------------------------------------------------------------------------------


def test_show_values_parses_back(tmp_path, capsys):
    from optc.tools.cli import main

    path = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
    assert main(["show", "--values", path]) == 0
    text = capsys.readouterr().out
    assert format_model(parse(text), values=True) == text.rstrip("\n")
    assert main(["show", "--types", "--max-nodes", "1", path]) == 0
    assert "... " in capsys.readouterr().out
    assert main(["show", "--help"]) == 0
    assert "optc.ir.parse" in capsys.readouterr().out


# -- malformed text --------------------------------------------------------------------------------------------

GOOD = """<ir_version: 8, opsets: {ai.onnx: 17}>
graph g (%x: float32[2]) -> (%y: float32[2]) {
  %y = Relu(%x)
  return %y
}"""


def test_good_text_parses():
    assert format_model(parse(GOOD)) == GOOD


@pytest.mark.parametrize("old,new,message,line,column", [
    ("<ir_version", "ir_version", "expected '<' at the start of the model header", 1, 1),
    ("float32[2]) ->", "floot32[2]) ->", "unknown element type 'floot32'", 2, 14),
    ("Relu(%x)", "Relu(%w)", "value %w is used before it is defined", 3, 13),
    ("  return %y", "  %y = Relu(%x)\n  return %y", "value %y is defined twice", 4, 3),
    ("return %y", "return %x", r"'return' names \['x'\], but the graph header declares \['y'\]", 4, 3),
    ("  return %y\n}", "  return %y", "expected '}'", 4, 12),
    ("Relu(%x)", "Relu(%x) {alpha=[1, 'a']}", "the list of attribute 'alpha' mixes element types", 3, 24),
    ("Relu(%x)", "Relu(%x) {axes=[]}", r"expected ':' and the type of the empty list", 3, 25),
    ("Relu(%x)", "Relu(%x) {t=float32[3] [1.0, 2.0]}", r"float32\[3\] has 3 elements, the text gives 2", 3, 20),
    ("Relu(%x)", "Relu(%x) {t=int8[1] [1.5]}", "expected an integer element, found '1.5'", 3, 29),
    ("Relu(%x)", "Relu(%x) {t=int8[1] [300]}", "does not fit int8", 3, 29),
    ("Relu(%x)", "Relu(%x) {a=1, a=2}", "attribute 'a' is given twice", 3, 23),
    ("Relu(%x)", "Relu(%x, $)", r"unexpected character '\$'", 3, 17),
    ("  %y = Relu(%x)", "  %y = Relu(%x)\n  ... 3 more nodes", "the text was truncated", 4, 3),
    ("Relu(%x)", "Relu(%x) {t=float32[16]}", r"the payload of %t \(float32\[16\]\) is elided", 3, 20),
    ("Relu(%x)", "Relu(%x) {k=@s:float}", r"an attribute reference \(@name:type\) is allowed only in a", 3, 20),
    ("Relu(%x)", "Relu(%x) @", "expected a node name after '@', found 'return'", 4, 3),
    ("Relu(%x)", "Relu(%x) {t=int4[1] [9]}", r"9 does not fit int4 \(-8 to 7\)", 3, 29),
    ("Relu(%x)", "Relu(%x) {t=uint4[1] [16]}", "16 does not fit uint4", 3, 30),
    ("Relu(%x)", "Relu(%x) {t=float4e2m1[1] [nan]}", "float4e2m1 has no NaN", 3, 35),
    ("Relu(%x)", "Relu(%x) {t=float4e2m1[1] [-inf]}", "float4e2m1 has no infinity", 3, 35),
    ("Relu(%x)", "Relu(%x) {t=float8e4m3fn[1] [1000.0]}", r"1000.0 is beyond the largest float8e4m3fn \(448", 3, 37),
    ("Relu(%x)", "Relu(%x) {t=float32[1] [nan:0x1]}", "0x1 is not the bits of a float32 NaN", 3, 32),
    ("Relu(%x)", "Relu(%x) {t=float32[1] [nan:0x7f800000]}", "0x7f800000 is not the bits of a float32 NaN", 3, 32),
    ("Relu(%x)", "Relu(%x) {t=float32[1] [-nan:0x7fc00001]}", "takes no sign", 3, 32),
    ("Relu(%x)", "Relu(%x) {t=bfloat16[1] [nan:0x7fc00001]}", "0x7fc00001 is not the bits of a bfloat16 NaN", 3, 33),
    ("Relu(%x)", "Relu(%x) {t=sparse float32[4] values float32[1] [1.0] indices int64[1]}",
     r"the payload of %t \(int64\[1\]\) is elided", 3, 70),
    ("Relu(%x)", "Relu(%x) {t=sparse float32[4] values int64[1] [1] indices int64[1] [0]}",
     "the values of a sparse float32 tensor must be a dense float32 tensor", 3, 20),
    ("ir_version: 8", "ir_version: -5", "the IR version must be a positive 64-bit integer, not -5", 1, 14),
    ("ir_version: 8", "ir_version: 99999999999999999999999", "must be a positive 64-bit integer", 1, 14),
    ("ai.onnx: 17", "ai.onnx: 0", "an opset version must be a positive 64-bit integer, not 0", 1, 35),
    ("graph g (", "graph b'g' (", "expected a quoted name, found a bytes literal", 2, 7),
    ("(%x: float32[2])", "(%x: float32[2.5])", r"expected a dimension \(a size, a name or \?\), found '2.5'", 2, 22),
    ("%y = Relu", "%y = Relu(%x)\n  %z = If(%x)\n    branch[1]: b () -> () {\n      return\n    }\n  %q = Relu",
     r"graph branch\[1\] is out of order", 5, 5),
])
def test_malformed_text_names_line_and_column(old, new, message, line, column):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(ParseError, match=message) as info:
        parse(text)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert str(info.value).startswith(f"line {line}, column {column}: ")
    assert isinstance(info.value, OptcError)


def test_unnamed_and_unclosed():
    with pytest.raises(ParseError, match="the graph is not closed"):
        parse(GOOD.rsplit("  return", 1)[0])
    with pytest.raises(ParseError, match="an unnamed value"):
        parse(GOOD.replace("Relu(%x)", "Relu(%<unnamed 7f00>)"))
    with pytest.raises(ParseError, match="bad string literal"):
        parse(GOOD.replace("Relu(%x)", "Relu(%x) {s='\\N{nope}'}"))
    with pytest.raises(ValueError, match="elided must be"):
        parse(GOOD, elided="ones")  # type: ignore[arg-type]


def test_elided_stand_ins_are_opt_in_and_deterministic():
    text = GOOD.replace("  %y = Relu(%x)", "  %w = init float32[3, 4]\n  %b = init int64[16] @external\n"
                                          "  %y = Relu(%x)")
    with pytest.raises(ParseError, match=r"line 3, column 13: the payload of %w \(float32\[3, 4\]\) is elided"):
        parse(text)
    with pytest.raises(ParseError, match=r"line 4, column 13: the payload of %b \(int64\[16\]\) is external data"):
        parse(text.replace("%w = init float32[3, 4]", "%w = init float32[1] [0.0]"))
    zeros = parse(text, elided="zeros").graph.initializers
    assert not zeros["w"].const.numpy().any() and zeros["b"].const.numpy().dtype == np.int64
    r1 = parse(text, elided="random").graph.initializers["w"].const.numpy()
    r2 = parse(text, elided="random").graph.initializers["w"].const.numpy()
    assert r1.dtype == np.float32 and r1.shape == (3, 4) and np.array_equal(r1, r2) and r1.std() > 0.1
    # a stand-in is a plain tensor: only `@external` is gone from the text
    assert format_model(parse(text, elided="random")) == text.replace(" @external", "")


def test_initializer_inputs_empty_branches_and_external_data(tmp_path):
    # an old-style initializer that is also a graph input; a branch without nodes that returns an outer value
    w = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    then = helper.make_graph([], "t", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])])
    els = helper.make_graph([helper.make_node("Neg", ["x"], ["nx"])], "e", [],
                            [helper.make_tensor_value_info("nx", TensorProto.FLOAT, [2, 3])])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["a"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)
    text, parsed = _round_trip(from_onnx(proto))
    assert "then_branch: t () -> (%x: float32[2,3]) {\n      return %x\n    }" in text
    assert parsed.graph.inputs[1] is parsed.graph.initializers["w"]
    exported = to_onnx(parsed)  # (onnx's checker refuses the branch that returns an outer value, as given)
    assert [t.name for t in exported.graph.initializer] == ["w"] and exported.graph.input[1].name == "w"
    # external data: elided as `@external`, read in full with values=True
    big = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    g2 = helper.make_graph([helper.make_node("Add", ["x", "big"], ["y"])], "g2",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 16])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])],
                           [onnx.numpy_helper.from_array(big, "big")])
    path = str(tmp_path / "m.onnx")
    onnx.save(helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path,
              save_as_external_data=True, size_threshold=0)
    model = load(path)
    assert "%big = init float32[16, 16] @external" in format_model(model)
    _, parsed = _round_trip(model)
    assert np.array_equal(parsed.graph.initializers["big"].const.numpy(), big)


@pytest.mark.parametrize("text,bits", [
    ("1.000000059604644775390625", 0x3F800000),  # exactly halfway between 1 and the next float32: to even
    ("1.000000059604644775390625000000001", 0x3F800001),  # a hair above: float64 rounds it to the midpoint
    ("1.000000059604644775390624999999999", 0x3F800000),
    ("1.0000001788139343261718750000001", 0x3F800002),  # halfway between ...01 and ...02, a hair above
    ("3.40282356779733e38", 0x7F7FFFFF),  # just below the midpoint to infinity
    ("3.4028235677973366e38", 0x7F800000),  # the midpoint itself: to even, which is infinity
    ("1e39", 0x7F800000),
])
def test_decimals_round_once_to_float32(text, bits):
    """Text to float32 is correctly rounded, also where going through float64 would round twice."""
    model = parse(GOOD.replace("Relu(%x)", f"Relu(%x) {{t=float32[1] [{text}]}}"))
    got = model.graph.first().attributes["t"].value.numpy()
    assert int(got.view(np.uint32)[0]) == bits, hex(int(got.view(np.uint32)[0]))


def test_mutated_text_parses_or_fails_with_a_parse_error():
    """Random edits of printed models: each parses (and then prints to text that parses back to itself), or
    raises ParseError; nothing else escapes."""
    import random

    texts = [format_model(from_onnx(onnx.parser.parse_model(RUNNABLE)), values=True),
             format_model(from_onnx(_every_attribute_type()), values=True)]
    rng = random.Random(0)
    pieces = list("%(){}[]<>,=:@?-\"'0123456789abN. \n") + [
        "None", "init", "return", "graph", "float32", "::", "//", "b'x'", "nan:0x1", "type ", "[]:ints", "-inf",
        "'a b'", "1e5", "-0.0", "seq<", "optional<?>", "->"]
    parsed = 0
    for _ in range(600):
        t = rng.choice(texts)
        k = rng.randrange(len(t))
        t = t[:k] + rng.choice(pieces) + t[k + rng.randrange(0, 4):]
        try:
            m = parse(t)
        except ParseError:
            continue
        parsed += 1
        once = format_model(m, values=True)
        assert format_model(parse(once), values=True) == once, t[max(0, k - 40):k + 40]
    assert 20 < parsed < 600


# -- node names, narrow NaN payloads, non-UTF-8 strings, sparse values, non-text input ---------------------------

def test_node_names_and_doc_strings_round_trip():
    proto = onnx.load(os.path.join(ROOT, "examples", "tiny_cnn.onnx"))
    _, parsed = _round_trip(from_onnx(proto))
    assert [n.name for n in to_onnx(parsed).graph.node] == [n.name for n in proto.graph.node]
    assert any(n.name for n in proto.graph.node)
    odd = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="/conv/Conv 1", doc_string="it's\nhere"),
         helper.make_node("Neg", ["a"], ["b"], name="return"),
         helper.make_node("Abs", ["b"], ["c"], doc_string="no name"),
         helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(odd, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    text, parsed = _round_trip(from_onnx(model))
    assert "%a = Relu(%x) @'/conv/Conv 1' doc \"it's\\nhere\"" in text
    assert "%b = Neg(%a) @'return'\n" in text and "%c = Abs(%b) @'' doc 'no name'" in text
    assert "%y = Relu(%c)\n" in text  # no name: nothing printed
    got = to_onnx(parsed).graph.node
    assert [(n.name, n.doc_string) for n in got] == [(n.name, n.doc_string) for n in model.graph.node]


@pytest.mark.parametrize("dtype,onnx_type", [(ml_dtypes.bfloat16, TensorProto.BFLOAT16),
                                             (ml_dtypes.float8_e5m2, TensorProto.FLOAT8E5M2),
                                             (ml_dtypes.float8_e4m3fn, TensorProto.FLOAT8E4M3FN),
                                             (ml_dtypes.float8_e5m2fnuz, TensorProto.FLOAT8E5M2FNUZ)])
def test_every_bit_pattern_of_narrow_floats_round_trips(dtype, onnx_type):
    import warnings

    u = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint8
    codes = np.arange(1 << (8 * np.dtype(u).itemsize), dtype=np.uint32).astype(u)
    t = helper.make_tensor("w", onnx_type, [codes.size], codes.tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx_type, [codes.size])], [t])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN casts
        text, parsed = _round_trip(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                               ir_version=10)))
    got = onnx.numpy_helper.to_array(to_onnx(parsed).graph.initializer[0])
    assert (got.view(u) == codes).all()
    if dtype == ml_dtypes.bfloat16:
        assert "nan:0x7f81," in text and "nan:0xffc0," in text  # the bits of the type itself
    if dtype == ml_dtypes.float8_e5m2:
        assert "nan:0x7d," in text and "nan:0xff]" in text


def test_non_utf8_strings_print_as_bytes_and_parse_back(tmp_path, capsys):
    from optc.tools.cli import main

    t = helper.make_tensor("s", TensorProto.STRING, [3], [b"ok", b"\xff\xfe", "é".encode()])
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [3])], [t])
    path = str(tmp_path / "s.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    assert main(["show", path]) == 0
    text = capsys.readouterr().out
    assert "['ok', b'\\xff\\xfe', 'é']" in text
    assert list(to_onnx(parse(text)).graph.initializer[0].string_data) == [b"ok", b"\xff\xfe", "é".encode()]


def test_sparse_tensor_values_round_trip():
    values = helper.make_tensor("sp", TensorProto.FLOAT, [2], [5.0, -0.0])
    indices = helper.make_tensor("", TensorProto.INT64, [2], [1, 3])
    sparse = helper.make_sparse_tensor(values, indices, [2, 2])  # (onnxruntime takes 2-d sparse tensors only)
    node = helper.make_node("Constant", [], ["y"], sparse_value=sparse)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    text, parsed = _round_trip(from_onnx(proto))
    assert "sparse_value=sparse float32[2, 2] values float32[2] [5.0, -0.0] indices int64[2] [1, 3]" in text
    got = to_onnx(parsed).graph.node[0].attribute[0].sparse_tensor  # (onnxruntime returns sparse objects)
    assert list(got.dims) == [2, 2]
    assert onnx.numpy_helper.to_array(got.values).tobytes() == np.array([5.0, -0.0], np.float32).tobytes()
    assert onnx.numpy_helper.to_array(got.indices).tolist() == [1, 3]
    onnx.checker.check_model(to_onnx(parsed), full_check=True)
    with pytest.raises(ParseError, match="the indices of a sparse tensor must be a dense int64 tensor"):
        parse(text.replace("indices int64[2] [1, 3]", "indices int32[2] [1, 3]"))


@pytest.mark.parametrize("text", [GOOD.encode(), None, 3])
def test_parse_wants_a_str(text):
    with pytest.raises(ParseError, match=r"line 1, column 1: the text IR must be a str, not \w+") as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_attribute_references_are_kept_inside_functions():
    text = GOOD + "\nfunction local::F<a>(%p) -> (%q) {\n  %q = LeakyRelu(%p) {alpha=@a:float}\n  return %q\n}"
    text = text.replace("ai.onnx: 17}", "ai.onnx: 17, local: 1}")
    assert "alpha=@a:float" in format_model(parse(text))
    with pytest.raises(ParseError, match="expected ':' and the attribute's type"):
        parse(text.replace("@a:float", "@a"))
    with pytest.raises(ParseError, match="unknown attribute type"):
        parse(text.replace("@a:float", "@a:flot"))


def test_show_rejects_max_nodes_below_one_and_artifacts(tmp_path, capsys):
    from optc.tools.cli import main

    path = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
    n = len(load(path).graph)
    for bad in ("0", "-1"):
        assert main(["show", "--max-nodes", bad, path]) == 2
        err = capsys.readouterr().err
        assert "--max-nodes: must be at least 1" in err and len(err.strip().splitlines()) == 1
    assert main(["show", "--max-nodes", "1", path]) == 0
    assert f"... {n - 1} more nodes" in capsys.readouterr().out
    assert main(["show", "--max-nodes", str(n), path]) == 0
    assert "more nodes" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="max_nodes must be at least 1, not 0"):
        format_model(load(path), max_nodes=0)
    lib = tmp_path / "model.so"
    lib.write_bytes(b"\x7fELF not really")
    assert main(["show", str(lib)]) == 2
    err = capsys.readouterr().err
    assert "is an optc artifact" in err and f"optc inspect {lib}" in err
