"""Weight-only 4-bit models through the TVM back end (rewrites/rules/weight_int4.py, lowering/ops/nbits.py,
codegen/nbits_kernels.py).

Contract: the compiled model computes what the ONNX model says: DequantizeLinear's weight exactly, then the float32
matmul (only the order of the float32 sum differs: relative 1e-5 of the output's scale), and the gathered embedding
rows bit for bit. References: the onnx reference evaluator for the standard forms; onnxruntime for its contrib ops
(MatMulNBits with accuracy_level 0, whose CPU kernel dequantizes to float32; its default QDQ -> MatMulNBits fusion
uses accuracy level 4, int8 activations, and is 1-5% off the model: measured in
test_onnxruntime_fused_standard_form_is_approximate).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator
from optc.codegen.compile import describe_kernels
from optc.errors import OptcError
from optc.ir import from_onnx
from optc.quantization.weight_only import pack_matmul_nbits, quantize_blocks
from optc.rewrites.rules.weight_int4 import to_weight_int4_ops

RNG = np.random.default_rng(11)


def _int4_init(name: str, values: np.ndarray, signed: bool) -> onnx.TensorProto:
    return h.make_tensor(name, TP.INT4 if signed else TP.UINT4, list(values.shape), values.flatten().tolist())


def _dq(nodes, inits, p: str, k: int, n: int, *, block: int, signed: bool, zp: bool, trans: bool = False,
        per: str = "block") -> str:
    """A DequantizeLinear of a random 4-bit [K, N] weight (stored [N, K] when `trans`); returns its output."""
    shape = [n, k] if trans else [k, n]
    lo, hi = (-8, 8) if signed else (0, 16)
    inits.append(_int4_init(f"{p}_q", RNG.integers(lo, hi, shape), signed))
    attrs = {}
    if per == "block":
        nb = -(-k // block)
        sshape = [n, nb] if trans else [nb, n]
        attrs = {"axis": 1 if trans else 0, "block_size": block}
    elif per == "column":
        sshape, attrs = [n], {"axis": 0 if trans else 1}
    else:
        sshape = []
    inits.append(nh.from_array(RNG.uniform(0.01, 0.1, sshape).astype(np.float32), f"{p}_s"))
    ins = [f"{p}_q", f"{p}_s"]
    if zp:
        inits.append(_int4_init(f"{p}_z", RNG.integers(lo, hi, sshape), signed))
        ins.append(f"{p}_z")
    nodes.append(h.make_node("DequantizeLinear", ins, [f"{p}_w"], **attrs))
    return f"{p}_w"


def _model(nodes, inits, inputs, outputs, opset=21) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10)


def _check(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-5) -> optc.runtime.Module:
    ref = ReferenceEvaluator(model).run(None, feeds)
    lib = optc.compile(model)
    got = lib.run(feeds)
    for o, want in zip(model.graph.output, ref, strict=True):
        scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
        np.testing.assert_allclose(got[o.name], want, rtol=0, atol=rtol * scale, err_msg=o.name)
    return lib


def _rewritten(model: onnx.ModelProto) -> dict[str, int]:
    m = from_onnx(model)
    to_weight_int4_ops(m)
    counts: dict[str, int] = {}
    for n in m.graph:
        key = f"{n.domain}:{n.op_type}" if n.domain else n.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("rows", [1, 2, 8, 13, 128])
def test_matmul_dq_forms(rows):
    """Blocked uint4 with zero points, symmetric int4 without, per column, per tensor, a partial last block (K=70),
    batched activations: each one optc.MatMulNBits; GEMV (1-2 rows, decode inlined) and panel (>= 4 rows) paths."""
    nodes, inits, outs = [], [], []
    cases = [("a", 64, 48, dict(block=32, signed=False, zp=True)), ("b", 64, 32, dict(block=16, signed=True, zp=False)),
             ("c", 64, 32, dict(block=0, signed=False, zp=True, per="column")),
             ("d", 64, 32, dict(block=0, signed=True, zp=True, per="tensor")),
             ("e", 70, 32, dict(block=32, signed=False, zp=True))]
    inputs = []
    for p, k, n, kw in cases:
        w = _dq(nodes, inits, p, k, n, **kw)
        inputs.append(h.make_tensor_value_info(f"{p}_x", TP.FLOAT, [2, rows, k]))
        nodes.append(h.make_node("MatMul", [f"{p}_x", w], [f"{p}_y"]))
        outs.append(h.make_tensor_value_info(f"{p}_y", TP.FLOAT, None))
    model = _model(nodes, inits, inputs, outs)
    assert _rewritten(model) == {"optc:MatMulNBits": 5}
    feeds = {i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in inputs}
    _check(model, feeds)


def test_gemm_forms_and_bias():
    """Gemm with transB 0 / 1 and a constant bias (fused), a run-time C (an Add after), and a declined Gemm
    (alpha != 1: widened, still computed exactly as the model says)."""
    nodes, inits = [], []
    w0 = _dq(nodes, inits, "g0", 64, 32, block=32, signed=False, zp=True)
    w1 = _dq(nodes, inits, "g1", 64, 32, block=32, signed=False, zp=True, trans=True)
    w2 = _dq(nodes, inits, "g2", 64, 32, block=32, signed=True, zp=False)
    inits.append(nh.from_array(RNG.standard_normal(32).astype(np.float32), "bias"))
    nodes += [h.make_node("Gemm", ["x", w0, "bias"], ["y0"]),
              h.make_node("Gemm", ["x", w1, "bias"], ["y1"], transB=1),
              h.make_node("Gemm", ["x", w0, "c"], ["y2"]),
              h.make_node("Gemm", ["x", w2, "bias"], ["y3"], alpha=0.5)]
    model = _model(nodes, inits, [h.make_tensor_value_info("x", TP.FLOAT, [6, 64]),
                                  h.make_tensor_value_info("c", TP.FLOAT, [6, 32])],
                   [h.make_tensor_value_info(f"y{i}", TP.FLOAT, None) for i in range(4)])
    counts = _rewritten(model)
    assert counts["optc:MatMulNBits"] == 3 and counts["Gemm"] == 1 and counts["Add"] == 1
    _check(model, {"x": RNG.standard_normal((6, 64)).astype(np.float32),
                   "c": RNG.standard_normal((6, 32)).astype(np.float32)})


def _matmul_nbits_model(k: int, n: int, block: int, rows: int, *, zp: bool, bias: bool) -> onnx.ModelProto:
    bq = quantize_blocks(RNG.standard_normal((k, n)).astype(np.float32), block, symmetric=not zp)
    b, scales, zps = pack_matmul_nbits(bq)
    inits = [nh.from_array(b, "B"), nh.from_array(scales, "scales")]
    ins = ["a", "B", "scales", "zp" if zp else "", "", "bias" if bias else ""]
    if zp:
        inits.append(nh.from_array(zps, "zp"))
    if bias:
        inits.append(nh.from_array(RNG.standard_normal(n).astype(np.float32), "bias"))
    while ins[-1] == "":
        ins.pop()
    node = h.make_node("MatMulNBits", ins, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
                       accuracy_level=0)
    g = h.make_graph([node], "g", [h.make_tensor_value_info("a", TP.FLOAT, [rows, k])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [rows, n])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)], ir_version=9)


@pytest.mark.parametrize(("k", "n", "block", "rows", "zp", "bias"), [
    (128, 64, 32, 1, True, False), (128, 64, 32, 16, False, True), (100, 48, 16, 5, True, True),
    (256, 32, 128, 3, True, False)])
def test_contrib_matmul_nbits_matches_onnxruntime(k, n, block, rows, zp, bias):
    """onnxruntime's MatMulNBits (ContribOperators.md; its CPU kernel at accuracy_level 0 dequantizes to float32)."""
    model = _matmul_nbits_model(k, n, block, rows, zp=zp, bias=bias)
    assert _rewritten(model) == {"optc:MatMulNBits": 1}
    a = RNG.standard_normal((rows, k)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    got = optc.compile(model).run({"a": a})["y"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_gathers_are_exact():
    """Gather(DequantizeLinear(4-bit table, blocked along D)) and onnxruntime's GatherBlockQuantized: only the
    gathered rows are dequantized, bit-exactly (a partial last block: D = 40, block 16; 2-D ids)."""
    nodes, inits = [], []
    v, d = 50, 40
    inits.append(_int4_init("t_q", RNG.integers(0, 16, (v, d)), False))
    inits.append(nh.from_array(RNG.uniform(0.01, 0.1, (v, 3)).astype(np.float32), "t_s"))
    inits.append(_int4_init("t_z", RNG.integers(0, 16, (v, 3)), False))
    nodes += [h.make_node("DequantizeLinear", ["t_q", "t_s", "t_z"], ["t"], axis=1, block_size=16),
              h.make_node("Gather", ["t", "ids"], ["y"], axis=0)]
    model = _model(nodes, inits, [h.make_tensor_value_info("ids", TP.INT64, [2, 3])],
                   [h.make_tensor_value_info("y", TP.FLOAT, None)])
    assert "DequantizeLinear" not in _rewritten(model)
    ids = RNG.integers(0, v, (2, 3)).astype(np.int64)
    _check(model, {"ids": ids}, rtol=0)
    # the contrib op on the same table (int4, no zero point: 0)
    q = RNG.integers(-8, 8, (v, d))
    scales = RNG.uniform(0.01, 0.1, (v, 3)).astype(np.float32)
    node = h.make_node("GatherBlockQuantized", ["q", "ids", "s"], ["y"], domain="com.microsoft", gather_axis=0,
                       quantize_axis=1, block_size=16, bits=4)
    g = h.make_graph([node], "g", [h.make_tensor_value_info("ids", TP.INT64, [2, 3])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], [_int4_init("q", q, True), nh.from_array(scales, "s")])
    contrib = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)], ir_version=10)
    want = ort.InferenceSession(contrib.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(optc.compile(contrib).run({"ids": ids})["y"], want)
    np.testing.assert_array_equal(want, (q[ids] * np.repeat(scales, 16, axis=1)[:, :d][ids]).astype(np.float32))


def test_widened_fallbacks():
    """What the fused rules decline still compiles, exactly: a Conv weight, a float16 MatMul, a Gather on axis 1
    (DequantizeLinear of the 4-bit constant stored in bytes)."""
    nodes, inits = [], []
    inits.append(_int4_init("cw_q", RNG.integers(-8, 8, (4, 3, 3, 3)), True))
    inits.append(nh.from_array(np.float32(0.05), "cw_s"))
    inits.append(_int4_init("hw_q", RNG.integers(0, 16, (32, 16)), False))
    inits.append(nh.from_array(RNG.uniform(0.01, 0.1, (2, 16)).astype(np.float16), "hw_s"))
    nodes += [h.make_node("DequantizeLinear", ["cw_q", "cw_s"], ["cw"]),
              h.make_node("Conv", ["img", "cw"], ["y0"], pads=[1, 1, 1, 1]),
              h.make_node("DequantizeLinear", ["hw_q", "hw_s"], ["hw"], axis=0, block_size=16),
              h.make_node("MatMul", ["h", "hw"], ["y1"]),
              h.make_node("Gather", ["hw", "ids"], ["y2"], axis=1)]
    model = _model(nodes, inits, [h.make_tensor_value_info("img", TP.FLOAT, [1, 3, 8, 8]),
                                  h.make_tensor_value_info("h", TP.FLOAT16, [4, 32]),
                                  h.make_tensor_value_info("ids", TP.INT64, [3])],
                   [h.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate([TP.FLOAT, TP.FLOAT16,
                                                                                          TP.FLOAT16])])
    counts = _rewritten(model)
    assert counts.get("optc:MatMulNBits", 0) == 0 and counts["DequantizeLinear"] == 2
    feeds = {"img": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "h": RNG.standard_normal((4, 32)).astype(np.float16), "ids": np.array([0, 5, 15], np.int64)}
    ref = ReferenceEvaluator(model).run(None, feeds)
    got = optc.compile(model).run(feeds)
    np.testing.assert_allclose(got["y0"], ref[0], rtol=1e-5, atol=1e-5)
    # float16 MatMul: TVM accumulates in float16, the reference in float32 before rounding (ONNX leaves it open)
    scale = float(np.abs(ref[1].astype(np.float32)).max())
    np.testing.assert_allclose(got["y1"].astype(np.float32), ref[1].astype(np.float32), rtol=0, atol=5e-3 * scale)
    np.testing.assert_array_equal(got["y2"], ref[2])


def test_declined_contrib_forms_say_why():
    """MatMulNBits with g_idx (act-order) is not taken: the compile fails in one line naming the op."""
    model = _matmul_nbits_model(64, 32, 32, 2, zp=True, bias=False)
    node = model.graph.node[0]
    node.input.extend(["g_idx"])
    model.graph.initializer.append(nh.from_array((np.arange(64) // 32).astype(np.int32), "g_idx"))
    with pytest.raises(OptcError, match="MatMulNBits") as info:
        optc.compile(model)
    assert "\n" not in str(info.value)


def test_runtime_int4_input_is_refused():
    """A 4-bit tensor that is not a constant (a graph input) cannot be built by TVM: one clear line."""
    node = h.make_node("DequantizeLinear", ["q", "s"], ["y"])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("q", TP.UINT4, [4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], [nh.from_array(np.float32(0.5), "s")])
    with pytest.raises(OptcError, match="sub-byte") as info:
        optc.compile(h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10))
    assert "\n" not in str(info.value)


def test_compile_summary_of_a_model_whose_only_matmuls_are_int4(tmp_path, capsys):
    """`optc compile` printed no kernel line where every matmul is weight-only int4 (it counted only integer,
    bfloat16 and float conv/matmul; a breaker's find)."""
    from optc.ir import load, save
    from optc.quantization.weight_only import quantize_weight_only
    from optc.tools.cli import main

    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [2, 64])], [h.make_tensor_value_info("y", TP.FLOAT, None)],
                     [nh.from_array(RNG.standard_normal((64, 32)).astype(np.float32), "w")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), tmp_path / "f.onnx")
    m = load(tmp_path / "f.onnx")
    quantize_weight_only(m, format="contrib")
    save(m, tmp_path / "q.onnx")
    assert main(["compile", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "q.so"), "-q"]) == 0
    assert any(line.startswith("weight-only int4: 1 matmul ") for line in capsys.readouterr().out.splitlines())


def test_quantized_model_end_to_end_smaller_library(tmp_path):
    """`optc quantize --weight-only int4` (both formats) then compile: the summary says what ran 4-bit, the
    outputs match the weight-only model's reference, the library is at most a third of the float32 one."""
    from optc.codegen.compile import compile_to_file
    from optc.ir import load, save
    from optc.quantization.weight_only import quantize_weight_only

    k, n = 256, 512
    nodes = [h.make_node("MatMul", ["x", "w1"], ["h"]), h.make_node("Relu", ["h"], ["r"]),
             h.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [nh.from_array(RNG.standard_normal((k, n)).astype(np.float32), "w1"),
             nh.from_array(RNG.standard_normal((n, k)).astype(np.float32), "w2")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [8, k])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    fp32 = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    onnx.save(fp32, tmp_path / "fp32.onnx")
    report: dict = {}
    compile_to_file(tmp_path / "fp32.onnx", tmp_path / "fp32.so")
    x = RNG.standard_normal((8, k)).astype(np.float32)
    for fmt in ("standard", "contrib"):
        m = load(tmp_path / "fp32.onnx")
        quantize_weight_only(m, format=fmt)
        save(m, tmp_path / f"{fmt}.onnx")
        compile_to_file(tmp_path / f"{fmt}.onnx", tmp_path / f"{fmt}.so", report=report)
        assert describe_kernels(report["kernels"]).startswith("weight-only int4: 2 matmuls")
        want = ort.InferenceSession(str(tmp_path / "contrib.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0] if fmt == "contrib" else ReferenceEvaluator(str(tmp_path / "standard.onnx")).run(
            None, {"x": x})[0]
        got = optc.runtime.load(tmp_path / f"{fmt}.so").run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
        assert (tmp_path / f"{fmt}.so").stat().st_size < (tmp_path / "fp32.so").stat().st_size / 3


def test_onnxruntime_fused_standard_form_is_approximate():
    """Why the standard forms are checked against the reference evaluator: onnxruntime's QDQ -> MatMulNBits fusion
    (ORT_ENABLE_EXTENDED and up) computes at accuracy level 4 (int8 activations) unless the session sets
    `session.qdq_matmulnbits_accuracy_level`; at 0 it equals the model. optc's kernel is within 1e-5 either way."""
    nodes, inits = [], []
    w = _dq(nodes, inits, "a", 256, 64, block=32, signed=False, zp=True)
    nodes.append(h.make_node("MatMul", ["x", w], ["y"]))
    model = _model(nodes, inits, [h.make_tensor_value_info("x", TP.FLOAT, [8, 256])],
                   [h.make_tensor_value_info("y", TP.FLOAT, None)])
    x = RNG.standard_normal((8, 256)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    exact = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    scale = float(np.abs(ref).max())
    print(f"onnxruntime fused (default) vs reference: {np.abs(fused - ref).max() / scale:.2e} of the output's scale")
    assert np.abs(exact - ref).max() <= 1e-5 * scale
    got = _check(model, {"x": x}).run({"x": x})["y"]
    assert np.abs(got - ref).max() <= 1e-5 * scale


def test_describe_kernels_int4():
    base = {"integer": 0, "bfloat16": 0, "float": 2, "float_reasons": {"MatMul 'a'": "not quantized",
                                                                         "MatMul 'b'": "not quantized"}}
    assert describe_kernels({**base, "int4_weights": 3}) == \
        "weight-only int4: 3 matmuls with 4-bit weights unpacked in the kernel (float32 compute)"
    assert describe_kernels({**base, "int4_weights": 0}) == ""
    mixed = {"integer": 1, "bfloat16": 0, "float": 0, "float_reasons": {}, "int4_weights": 1}
    assert describe_kernels(mixed) == "integer kernels: 1 of 1 conv/matmul; weight-only int4: 1 matmul with 4-bit " \
                                      "weights unpacked in the kernel (float32 compute)"


def test_panel_schedule_applies_from_four_rows():
    """NBitsMatMul takes kernels of >= PANEL_MIN_ROWS rows (decode per column panel, inside the parallel loop) and
    leaves matrix x vector kernels to TiledReduction (decode inlined)."""
    import importlib

    from optc.codegen.nbits_kernels import PANEL_MIN_ROWS, NBitsMatMul
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    build = importlib.import_module("optc.codegen.build")
    target = resolve_target("cpu")
    taken = {}
    for rows in (1, PANEL_MIN_ROWS):
        model = _matmul_nbits_model(128, 64, 32, rows, zp=True, bias=True)
        m = from_onnx(model)
        to_weight_int4_ops(m)
        mod = build.fuse(build.prepare(lower(m), None, target), target)
        funcs = [f for gv, f in mod.functions_items() if "nbits" in gv.name_hint]
        assert len(funcs) == 1
        sch = NBitsMatMul().apply(funcs[0], target, False)
        taken[rows] = sch is not None
        if sch is not None:
            text = sch.mod["main"].script()
            assert text.index("T.parallel") < text.index('T.sblock("nbits_decode")') < text.index("matmul_nbits_update")
            assert "T_add" in text  # the bias is the fused epilogue, computed per tile
    assert taken == {1: False, PANEL_MIN_ROWS: True}


def test_ml_dtypes_int4_roundtrip_assumption():
    """The rules read 4-bit initializers as ml_dtypes arrays: the signed type keeps -8..7 (not 0..15)."""
    arr = np.arange(-8, 8).astype(ml_dtypes.int4)
    assert arr.astype(np.int16).tolist() == list(range(-8, 8))
