"""`--precision bf16` (codegen/precision.py): Conv / MatMul / Gemm on bfloat16 operands with float32 accumulation.

Per op, every output element is checked against the bound of `precision.error_bound` (sum |a||b| in float64 from
onnx's reference evaluator), against onnxruntime's float32 result, and against a numpy-style emulation (operands
rounded with ml_dtypes.bfloat16, float64 accumulation) to float32-accumulation error. Models (a transformer block,
the digits CNN) are compared with the same model where every Conv / MatMul / Gemm operand goes through
Cast(bfloat16) -> Cast(float) on onnxruntime. NaN / inf propagate; float32 builds are unchanged bit for bit.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from optc.codegen.precision import BF16_UNIT_ROUNDOFF, FP32_UNIT_ROUNDOFF, error_bound
from optc.errors import OptcError

from .conftest import run_ort

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RNG = np.random.default_rng(20261201)


def _bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (ml_dtypes: round to nearest even), as float64."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def _op_model(op: str, attrs: dict, x: np.ndarray, consts: list[np.ndarray], out_rank: int,
              dtype=TensorProto.FLOAT, consts_as_inputs: bool = False) -> onnx.ModelProto:
    """One `op` node on input x and operands `consts` (initializers, or graph inputs c0, c1...)."""
    names = [f"c{i}" for i in range(len(consts))]
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [] if consts_as_inputs else [numpy_helper.from_array(c.astype(np_type), n) for c, n in zip(consts, names, strict=True)]
    inputs = [helper.make_tensor_value_info("x", dtype, x.shape)]
    if consts_as_inputs:
        inputs += [helper.make_tensor_value_info(n, dtype, c.shape) for c, n in zip(consts, names, strict=True)]
    graph = helper.make_graph([helper.make_node(op, ["x", *names], ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", dtype, [None] * out_rank)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _reference64(op, attrs, x, consts, out_rank) -> np.ndarray:
    model = _op_model(op, attrs, x, consts, out_rank, TensorProto.DOUBLE, consts_as_inputs=True)
    feeds = {"x": x.astype(np.float64), **{f"c{i}": c.astype(np.float64) for i, c in enumerate(consts)}}
    return ReferenceEvaluator(model).run(None, feeds)[0]


def _compile_run(model: onnx.ModelProto, feeds: dict, **options) -> np.ndarray:
    module = optc.compile(model.SerializeToString(), **options)
    return next(iter(module.run(feeds).values()))


CONV = {  # name: (x shape, w shape, attrs)
    "1x1": ((1, 16, 6, 6), (8, 16, 1, 1), {}),
    "3x3": ((2, 8, 7, 7), (12, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    "grouped": ((1, 8, 6, 6), (6, 4, 3, 3), {"group": 2}),
    "depthwise": ((1, 8, 9, 9), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),
    "strided": ((1, 4, 11, 11), (6, 4, 3, 3), {"strides": [2, 2], "pads": [0, 1, 0, 1]}),
    "bias": ((1, 96, 4, 4), (5, 96, 3, 3), {"pads": [1, 1, 1, 1]}),
    # shapes that fit an AMX block (rows >= 4, N % 16, K even): tdpbf16ps where the CPU has AMX-BF16
    "amx-1x1": ((1, 64, 8, 8), (32, 64, 1, 1), {}),
    "amx-3x3": ((1, 32, 10, 10), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
}


def _cases():
    for name, (xs, ws, attrs) in CONV.items():
        consts = [RNG.standard_normal(ws).astype(np.float32)]
        if name == "bias":
            consts.append(RNG.standard_normal(ws[0]).astype(np.float32))
        yield pytest.param("Conv", attrs, RNG.standard_normal(xs).astype(np.float32), consts, 4,
                           ws[1] * ws[2] * ws[3], id=f"conv-{name}")
    yield pytest.param("MatMul", {}, RNG.standard_normal((2, 3, 5, 40)).astype(np.float32),
                       [RNG.standard_normal((2, 1, 40, 7)).astype(np.float32)], 4, 40, id="matmul-batched")
    yield pytest.param("MatMul", {}, RNG.standard_normal((3, 20, 96)).astype(np.float32),
                       [RNG.standard_normal((96, 48)).astype(np.float32)], 3, 96, id="matmul-amx")
    # 197 rows (prime): padded to whole register tiles in Relax and cropped (precision._ragged_rows)
    yield pytest.param("MatMul", {}, RNG.standard_normal((1, 197, 64)).astype(np.float32),
                       [RNG.standard_normal((64, 32)).astype(np.float32)], 3, 64, id="matmul-197-rows")
    # one row (matrix x vector) and N = 64 columns over K = 256: the vdpbf16ps tile of a GEMV
    yield pytest.param("MatMul", {}, RNG.standard_normal((1, 256)).astype(np.float32),
                       [RNG.standard_normal((256, 64)).astype(np.float32)], 2, 256, id="matmul-gemv")
    yield pytest.param("Gemm", {"transB": 1}, RNG.standard_normal((4, 300)).astype(np.float32),
                       [RNG.standard_normal((9, 300)).astype(np.float32),
                        RNG.standard_normal(9).astype(np.float32)], 2, 300, id="gemm-transB-bias")


@pytest.mark.parametrize("op, attrs, x, consts, rank, k", list(_cases()))
def test_op_within_bound(op, attrs, x, consts, rank, k):
    model = _op_model(op, attrs, x, consts, rank)
    y = _compile_run(model, {"x": x}, precision="bf16")
    y32 = run_ort(model, {"x": x})[0]
    # sum_k |a_k||b_k| (+ |bias|: one more float32 addition, so K + 1 terms) and the bf16 emulation, in float64
    abs_products = _reference64(op, attrs, np.abs(x), [np.abs(c) for c in consts], rank)
    emulated = _reference64(op, attrs, _bf16(x), [_bf16(consts[0]), *consts[1:]], rank)
    terms = k + (len(consts) > 1)
    bound = error_bound(abs_products, terms)
    assert y.dtype == np.float32 and y.shape == y32.shape
    assert np.all(np.abs(y - y32) <= bound), float(np.max(np.abs(y - y32) / bound))
    # against the emulation: only the float32 accumulation differs (gamma_K on the rounded operands)
    gamma = terms * FP32_UNIT_ROUNDOFF / (1 - terms * FP32_UNIT_ROUNDOFF)
    to_emulation = np.abs(y - emulated)
    assert np.all(to_emulation <= gamma * (1 + BF16_UNIT_ROUNDOFF) ** 2 * abs_products * 1.0001)
    # the operands really were rounded: the float32 result is much farther from the bf16 emulation
    assert np.max(np.abs(y32 - emulated)) > 20 * np.max(to_emulation)


def test_rounding_matches_ml_dtypes():
    """float32 -> bfloat16: round to nearest even on random bit patterns and the edge cases; NaN stays NaN with its
    sign (TVM's own astype turns 0x7f800001 into inf and 0x7fffffff into -0), infinities and signed zeros stay."""
    tvm = pytest.importorskip("tvm")
    from optc.codegen.precision import _round_to_bfloat16
    from tvm import relax

    special = np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800000, 0xFF800000,
                        0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x00000001, 0x80000000, 0x00008000,
                        0x00018000, 0x807FFFFF], np.uint32)
    bits = np.concatenate([special, RNG.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)])
    x = bits.view(np.float32)
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [var]):
        with bb.dataflow():
            out = bb.emit_output(bb.call_te(_round_to_bfloat16, var))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy().view(np.uint16)
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all(got[nan] & 0x7F)  # NaN, not inf
    assert np.array_equal(got[nan] >> 15, want[nan] >> 15)  # the sign kept


def test_nan_and_inf_propagate():
    w = np.abs(RNG.standard_normal((8, 5))).astype(np.float32) + 0.1  # positive: inf * w stays inf
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    x[0, 3] = np.uint32(0x7F800001).view(np.float32)  # a NaN that a truncating cast makes inf
    x[1, 2] = np.inf
    x[2, 6] = -np.inf
    x[3, 1] = np.uint32(0xFFFFFFFF).view(np.float32)
    model = _op_model("MatMul", {}, x, [w], 2)
    y = _compile_run(model, {"x": x}, precision="bf16")
    y32 = run_ort(model, {"x": x})[0]
    assert np.all(np.isnan(y[[0, 3]])) and np.array_equal(np.isnan(y), np.isnan(y32))
    assert np.all(y[1] == np.inf) and np.all(y[2] == -np.inf)


def _block_model() -> onnx.ModelProto:
    """A pre-norm transformer block: LayerNorm -> Q/K/V MatMul -> 2 heads of 4 (scale 0.5, a power of two) ->
    softmax attention -> output Gemm-like MatMul + residual -> LayerNorm -> MLP (MatMul, Gelu-free Relu, MatMul)."""
    d, heads, seq = 8, 2, 6
    w = {n: (RNG.standard_normal(s) * 0.5).astype(np.float32) for n, s in
         [("wq", (d, d)), ("wk", (d, d)), ("wv", (d, d)), ("wo", (d, d)), ("w1", (d, 32)), ("w2", (32, d))]}
    w["gamma"], w["beta"] = np.ones(d, np.float32), np.zeros(d, np.float32)
    w["shape"] = np.array([1, seq, heads, d // heads], np.int64)
    w["back"] = np.array([1, seq, d], np.int64)
    w["scale"] = np.array(0.5, np.float32)
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1)]
    for p in "qkv":
        nodes += [n("MatMul", ["h", f"w{p}"], [f"{p}0"]), n("Reshape", [f"{p}0", "shape"], [f"{p}1"]),
                  n("Transpose", [f"{p}1"], [p], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q", "k"], ["s0"]), n("Mul", ["s0", "scale"], ["s"]), n("Softmax", ["s"], ["p"], axis=-1),
              n("MatMul", ["p", "v"], ["o0"]), n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
              n("Reshape", ["o1", "back"], ["o2"]), n("MatMul", ["o2", "wo"], ["o"]), n("Add", ["x", "o"], ["r"]),
              n("LayerNormalization", ["r", "gamma", "beta"], ["h2"], axis=-1),
              n("MatMul", ["h2", "w1"], ["m0"]), n("Relu", ["m0"], ["m1"]), n("MatMul", ["m1", "w2"], ["m"]),
              n("Add", ["r", "m"], ["y"])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _emulated(model: onnx.ModelProto, keep: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """`model` with Cast(bfloat16) -> Cast(float) on the two operands of every Conv / MatMul / Gemm but those whose
    output is named in `keep`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and node.output[0] not in keep:
            for i in range(2):
                name = node.input[i]
                nodes += [helper.make_node("Cast", [name], [f"{name}_bf_{node.output[0]}"], to=TensorProto.BFLOAT16),
                          helper.make_node("Cast", [f"{name}_bf_{node.output[0]}"], [f"{name}_r_{node.output[0]}"],
                                           to=TensorProto.FLOAT)]
                node.input[i] = f"{name}_r_{node.output[0]}"
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _check_model(model: onnx.ModelProto, x: np.ndarray, keep: frozenset[str] = frozenset(),
                 **options) -> tuple[float, float]:
    """bf16 build vs the Cast-emulated model (`keep`: outputs of the matmuls emulated as float32) and vs float32
    (onnxruntime): (max error to emulation, to float32), relative to the largest output."""
    y = _compile_run(model, {"x": x}, precision="bf16", **options)
    emulated = run_ort(_emulated(model, keep), {"x": x})[0]
    y32 = run_ort(model, {"x": x})[0]
    scale = float(np.max(np.abs(y32)))
    return float(np.max(np.abs(y - emulated))) / scale, float(np.max(np.abs(y - y32))) / scale


@pytest.mark.parametrize("fast_math", [True, False])
def test_transformer_block(fast_math):
    """With fast math the attention fuses and its two matmuls (s0 = q k, o0 = p v) stay in the float32 kernel;
    without, they are bf16 like the others."""
    model = _block_model()
    x = RNG.standard_normal((1, 6, 8)).astype(np.float32)
    keep = frozenset({"s0", "o0"}) if fast_math else frozenset()
    to_emulation, to_fp32 = _check_model(model, x, keep, fast_math=fast_math)
    assert to_fp32 < 2**-5  # bf16-level
    assert to_emulation < to_fp32 / 10 and to_emulation < 2**-12


def _attention_model(shape, v_shape=None) -> onnx.ModelProto:
    v_shape = v_shape or shape
    graph = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"], scale=0.25)], "attn",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, v_shape if n == "v" else shape)
                               for n in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, v_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def test_attention_op_decomposed():
    """ONNX Attention (opset 23) with a V head size of 6 (which the fused CPU kernel, whole vectors of at least 4
    lanes, does not take), lowered by optc to two matmuls: both in bf16. Emulated in float64 with Q, K (times
    sqrt(scale) = 0.5, exact), V and the softmax probabilities rounded to bfloat16."""
    q, k = (RNG.standard_normal((1, 2, 5, 8)).astype(np.float32) for _ in range(2))
    v = RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)
    model = _attention_model(list(q.shape), list(v.shape))
    feeds = {"q": q, "k": k, "v": v}
    y = _compile_run(model, feeds, precision="bf16", fast_math=False)
    y32 = run_ort(model, feeds)[0]
    s = (_bf16(q) * 0.5) @ (_bf16(k) * 0.5).transpose(0, 1, 3, 2)
    p = np.exp(s - s.max(-1, keepdims=True))
    emulated = _bf16(p / p.sum(-1, keepdims=True)) @ _bf16(v)
    to_emulation, to_fp32 = np.max(np.abs(y - emulated)), np.max(np.abs(y - y32))
    assert to_fp32 < 2**-5 * np.max(np.abs(y32))
    assert to_emulation < to_fp32 / 10


@pytest.mark.parametrize("fast_math", [False, True])
def test_attention_op_kept_float32_in_the_fused_kernel(fast_math):
    """An Attention that the CPU's fused attention kernel takes stays float32 (the library's metadata says so):
    its result is float32's (within 1e-5 of onnxruntime's), not bf16's (~1e-2)."""
    shape = (1, 2, 5, 8)
    q, k, v = (RNG.standard_normal(shape).astype(np.float32) for _ in range(3))
    model = _attention_model(list(shape))
    module = optc.compile(model.SerializeToString(), precision="bf16", fast_math=fast_math)
    y = next(iter(module.run({"q": q, "k": k, "v": v}).values()))
    y32 = run_ort(model, {"q": q, "k": k, "v": v})[0]
    np.testing.assert_allclose(y, y32, rtol=1e-5, atol=1e-5)
    assert module.metadata["bf16"]["kept_float32"] == {"attention: fused float32 kernel": 1}, module.metadata["bf16"]


def test_digits_cnn():
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    x = np.load(EXAMPLES / "digits_test.npz")["x"][:16].astype(np.float32)
    to_emulation, to_fp32 = _check_model(model, x, input_shapes={"x": x.shape})  # a fixed batch: faster build
    assert to_fp32 < 2**-5
    assert to_emulation < to_fp32 / 10 and to_emulation < 2**-12


def _small_cnn() -> onnx.ModelProto:
    """Conv 3x3 -> Relu -> Flatten -> MatMul -> Gemm (transB, bias): one of each converted op."""
    rng = np.random.default_rng(7)
    c = {"w": rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal((64, 10)),
         "g": rng.standard_normal((5, 10)), "bias": rng.standard_normal(5)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), n("Relu", ["c"], ["r"]),
             n("Flatten", ["r"], ["f"]), n("MatMul", ["f", "b"], ["m"]), n("Gemm", ["m", "g", "bias"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in c.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_fp32_unchanged_bit_for_bit():
    """Negative: precision fp32 (the default) builds as before the option existed; a float64 model under bf16
    converts nothing and matches its fp32 build bit for bit."""
    from optc.codegen.compile import build_executable

    model = _small_cnn()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    default = _compile_run(model, {"x": x})
    assert np.array_equal(default, _compile_run(model, {"x": x}, precision="fp32"))
    import tvm  # the build path as it was before precision existed: optimize -> lower -> build
    from optc.codegen.build import build
    from optc.lowering import lower
    from tvm import relax

    vm = relax.VirtualMachine(build(lower(optc.optimize(optc.from_onnx(model), level=2))), tvm.cpu())
    assert np.array_equal(default, vm["main"](tvm.runtime.tensor(x)).numpy())
    report: dict = {}
    executable, meta = build_executable(model.SerializeToString(), report=report)
    assert "bf16" not in report and meta["precision"] == "fp32" and "bf16" not in meta
    x64 = RNG.standard_normal((4, 6))
    m64 = _op_model("MatMul", {}, x64, [RNG.standard_normal((6, 3))], 2, TensorProto.DOUBLE)
    build_executable(m64.SerializeToString(), precision="bf16", report=report)
    assert report["bf16"]["converted"] == {} and report["bf16"]["kept_float32"] == {"matmul: operands float64": 1}
    assert np.array_equal(_compile_run(m64, {"x": x64}, precision="bf16"), _compile_run(m64, {"x": x64}))


def test_bad_precision_refused():
    with pytest.raises(OptcError, match="--precision must be one of fp32, bf16"):
        optc.compile(str(EXAMPLES / "digits_cnn.onnx"), precision="fp16")
    with pytest.raises(OptcError, match="CPU targets"):
        optc.compile(str(EXAMPLES / "digits_cnn.onnx"), target="cuda", precision="bf16")


def test_summary_lines():
    from optc.codegen.precision import AMX_NOTE, EMULATED_NOTE, NATIVE_NOTE, describe_precision

    summary = {"converted": {"matmul": 2, "conv2d": 1}, "kept_float32": {"matmul: operands float64": 1}}
    lines = describe_precision({**summary, "native": False}).splitlines()
    assert lines == ["bf16: 1 conv2d, 2 matmul on bfloat16 operands with float32 accumulation; not converted: "
                     "1 matmul: operands float64", EMULATED_NOTE]
    assert describe_precision({**summary, "native": True, "amx": 0}).splitlines()[1] == NATIVE_NOTE
    assert describe_precision({**summary, "native": True, "amx": 2}).splitlines()[1] == AMX_NOTE.format(amx=2)
    assert AMX_NOTE.format(amx=2).startswith("bf16 on AMX: 2 kernels on tdpbf16ps tiles")
    from optc.codegen.precision import BOTH_NOTE, DOT_NOTE

    assert describe_precision({**summary, "native": True, "amx": 0, "avx512bf16": 3}).splitlines()[1] == \
        DOT_NOTE.format(dot=3)
    assert describe_precision({**summary, "native": True, "amx": 1, "avx512bf16": 3}).splitlines()[1] == \
        BOTH_NOTE.format(amx=1, dot=3)
    assert DOT_NOTE.format(dot=3).startswith("bf16 on AVX512-BF16: 3 kernels on vdpbf16ps")


AMX_BF16 = [  # (op, attrs, x shape, w shape, on AMX)
    ("MatMul", {}, (3, 20, 96), (96, 48), True),
    ("Conv", {}, (1, 64, 8, 8), (32, 64, 1, 1), True),
    # a padded conv: its zero padding is a kernel of its own (a kernel's own padded buffer would be stored as
    # float32 by TVM's bf16 legalization, and a tile read it as bf16 pairs: garbage, before the padding moved out)
    ("Conv", {"pads": [1, 1, 1, 1]}, (1, 32, 10, 10), (16, 32, 3, 3), True),
    # a grouped conv fits no tile: widened to float32
    ("Conv", {"group": 2}, (1, 32, 6, 6), (16, 16, 3, 3), False),
]


@pytest.mark.parametrize("op, attrs, xs, ws, amx", AMX_BF16)
def test_amx_bf16_kernels(op, attrs, xs, ws, amx):
    """Build only, on any CPU: for a Sapphire Rapids target the bf16 kernels that fit are AMX tdpbf16ps tiles.
    On an AMX-BF16 host the compile report counts them (the within-bound checks of test_op_within_bound run the
    same shapes: conv-amx-*, matmul-amx)."""
    from optc.codegen.compile import compile_to_file
    from optc.codegen.targets import llvm_features, resolve_target

    x = RNG.standard_normal(xs).astype(np.float32)
    w = RNG.standard_normal(ws).astype(np.float32)
    model = _op_model(op, attrs, x, [w], len(xs))
    with tempfile.TemporaryDirectory() as tmp:
        asm = Path(tmp) / "m.s"
        compile_to_file(model.SerializeToString(), asm, target="cpu", mcpu="sapphirerapids", emit="asm",
                        precision="bf16")
        assert bool(re.search(r"tdpbf16ps\s+%tmm", asm.read_text())) == amx
    if "amx-bf16" not in llvm_features(resolve_target("cpu")):
        pytest.skip("build only: this CPU has no AMX-BF16 (the asm check above ran)")
    from optc.codegen.compile import build_executable

    report: dict = {}
    build_executable(model.SerializeToString(), precision="bf16", report=report)
    assert report["bf16"]["amx"] == int(amx) and report["kernels"]["instructions"] == ({"AMX bf16": 1} if amx else {})


DOT_BF16 = [  # (op, attrs, x shape, w shape, on vdpbf16ps)
    ("MatMul", {}, (3, 20, 96), (96, 48), True),
    ("MatMul", {}, (1, 256), (256, 64), True),
    ("MatMul", {}, (1, 197, 64), (64, 32), True),  # ragged rows, padded in Relax
    ("Conv", {}, (1, 64, 8, 8), (32, 64, 1, 1), True),
    ("Conv", {"strides": [2, 2]}, (1, 32, 9, 9), (16, 32, 3, 3), True),
    # padded: the zero padding is a kernel of its own, so the conv reads a kernel input with bf16 storage
    ("Conv", {"pads": [1, 1, 1, 1]}, (1, 32, 10, 10), (16, 32, 3, 3), True),
    # negatives: N = 40 columns fill no 16-lane vector; a grouped conv: both widen to float32
    ("MatMul", {}, (8, 64), (64, 40), False),
    ("Conv", {"group": 2, "pads": [1, 1, 1, 1]}, (1, 32, 6, 6), (16, 16, 3, 3), False),
]


@pytest.mark.parametrize("op, attrs, xs, ws, dot", DOT_BF16)
def test_avx512bf16_kernels(op, attrs, xs, ws, dot):
    """Build only, on any CPU: for a Zen 4 target (AVX512-BF16, no AMX) the bf16 kernels that fit 16-lane vectors
    run on vdpbf16ps (`bf16_dot.py`). On a host with AVX512-BF16 the compile report counts them and the result is
    within the bf16 bound (test_op_within_bound runs the same kinds of shapes through them)."""
    from optc.codegen.compile import build_executable, compile_to_file
    from optc.codegen.targets import host_cpu_flags

    x = RNG.standard_normal(xs).astype(np.float32)
    w = RNG.standard_normal(ws).astype(np.float32)
    model = _op_model(op, attrs, x, [w], len(xs))
    with tempfile.TemporaryDirectory() as tmp:
        asm = Path(tmp) / "m.s"
        compile_to_file(model.SerializeToString(), asm, target="cpu", mcpu="znver4", emit="asm", precision="bf16")
        text = asm.read_text()
        assert bool(re.search(r"vdpbf16ps\s", text)) == dot
        assert "call" not in "".join(line for line in text.splitlines() if "optc_dpbf16ps" in line)  # inlined
    if "avx512_bf16" not in host_cpu_flags():
        pytest.skip("build only: this CPU has no AVX512-BF16 (the asm check above ran)")
    report: dict = {}
    module = build_executable(model.SerializeToString(), precision="bf16", report=report)
    assert report["bf16"]["avx512bf16"] + report["bf16"]["amx"] == int(dot)
    del module
    y = _compile_run(model, {"x": x}, precision="bf16")
    y32 = run_ort(model, {"x": x})[0]
    abs_products = _reference64(op, attrs, np.abs(x), [np.abs(w)], len(xs))
    assert np.all(np.abs(y - y32) <= error_bound(abs_products, int(np.prod(ws[1:])) if op == "Conv" else ws[0]))


@pytest.mark.parametrize(("n", "dot"), [(48, True), (40, False)])
def test_symbolic_rows_on_vdpbf16ps(n, dot):
    """A MatMul over symbolic rows ([B, S, 64] x [64, n]: a dynamic-axes export): the rows are padded to whole
    register tiles at run time and the result cropped (`precision._ragged_rows`), so the kernel runs on vdpbf16ps
    (before: widened to float32, a dynamic-axes GPT-2-like bf16 build 13.1 ms against 7.3 now, Zen 4). Within the
    bf16 bound at lengths that are and are not whole tiles. Negative: N = 40 fills no vector: widened, exact too."""
    from optc.codegen.compile import build_executable, compile_to_file
    from optc.codegen.targets import host_cpu_flags

    w = RNG.standard_normal((64, n)).astype(np.float32)
    model = _op_model("MatMul", {}, np.zeros((1, 8, 64), np.float32), [w], 3)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 64]))
    with tempfile.TemporaryDirectory() as tmp:
        asm = Path(tmp) / "m.s"
        compile_to_file(model.SerializeToString(), asm, target="cpu", mcpu="znver4", emit="asm", precision="bf16")
        assert bool(re.search(r"vdpbf16ps\s", asm.read_text())) == dot
    if "avx512_bf16" not in host_cpu_flags():
        pytest.skip("build only: this CPU has no AVX512-BF16 (the asm check above ran)")
    report: dict = {}
    module = build_executable(model.SerializeToString(), precision="bf16", report=report)
    assert report["bf16"]["avx512bf16"] == int(dot)
    del module
    module = optc.compile(model.SerializeToString(), precision="bf16")
    for b, s in ((1, 1), (2, 7), (1, 128), (3, 33)):
        x = RNG.standard_normal((b, s, 64)).astype(np.float32)
        y = module.run({"x": x})["y"]
        assert y.shape == (b, s, n)
        y32 = run_ort(model, {"x": x})[0]
        abs_products = _reference64("MatMul", {}, np.abs(x), [np.abs(w)], 3)
        assert np.all(np.abs(y - y32) <= error_bound(abs_products, 64)), (b, s)


def test_cli_summary_json_and_metadata(tmp_path, capsys):
    from optc.codegen.precision import native_bf16
    from optc.codegen.targets import resolve_target
    from optc.tools.cli import main

    src, out = tmp_path / "cnn.onnx", tmp_path / "m.so"
    onnx.save(_small_cnn(), str(src))
    cli = ["compile", str(src), "-o", str(out), "-q", "--precision"]
    assert main([*cli, "bf16", "--target", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "optc: error: --precision bf16 is supported for CPU targets (cpu, arm64, llvm), not cuda"]
    assert main([*cli, "bf16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "bf16: 1 conv2d, 2 matmul on bfloat16 operands with float32 accumulation" in lines
    from optc.codegen.precision import EMULATED_NOTE

    assert (EMULATED_NOTE in lines) == (not native_bf16(resolve_target("cpu")))
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["precision"] == "bf16" and meta["bf16"]["converted"] == {"conv2d": 1, "matmul": 2}
    assert meta["kernels"]["bfloat16"] == 3 and meta["kernels"]["float"] == 0
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = next(iter(optc.runtime.load(str(out)).run({"x": x}).values()))
    assert 0 < np.max(np.abs(y - run_ort(_small_cnn(), {"x": x})[0])) < 2**-5 * np.max(np.abs(y))


def test_softmax_rounded_to_bf16_is_scheduled_by_rows():
    """The bf16 rounding of softmax probabilities (the operand of the scores x V matmul) reads each element
    twice (its bits, its NaN test); it is inlined all the same, so RowReduction finds the rows and computes the
    row max and sum per row under one parallel loop (before: the rounding was the last block, no rows were found,
    and BERT-like's [4, 64, 64] softmax took 91 us instead of 25)."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from optc.codegen import schedules
    from optc.codegen.build import fuse, prepare
    from optc.codegen.precision import to_bfloat16
    from optc.codegen.targets import resolve_target
    from optc.ir import from_onnx
    from optc.lowering import lower
    from optc.rewrites import optimize

    nodes = [h.make_node("Softmax", ["q"], ["s"], axis=-1), h.make_node("MatMul", ["s", "v"], ["y"])]
    spec = [1, 4, 64, 64]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, TP.FLOAT, spec) for n in ("q", "v")],
                     [h.make_tensor_value_info("y", TP.FLOAT, spec)])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    target = resolve_target("cpu")
    mod, summary = to_bfloat16(lower(optimize(from_onnx(model), level=2)))
    assert summary["converted"] == {"matmul": 1}
    fused = fuse(prepare(mod, None, target), target)
    funcs = [f for gv, f in fused.functions_items() if "softmax" in gv.name_hint and "round" in gv.name_hint]
    assert len(funcs) == 1
    sch = schedules.RowReduction().apply(funcs[0], target, False)
    assert sch is not None
    script = sch.mod["main"].script()
    assert "T.parallel" in script and "T.vectorized" in script, script
    r = np.random.default_rng(1)
    q = (r.standard_normal(spec) * 5).astype(np.float32)
    v = r.standard_normal(spec).astype(np.float32)
    q[0, 0, 0, 3], q[0, 1, 2, :], q[0, 2, 5, 7], v[0, 3, 1, 1] = np.nan, -np.inf, np.inf, np.nan
    got = optc.compile(model, precision="bf16").run({"q": q, "v": v})["y"]
    s = run_ort(h.make_model(h.make_graph(nodes[:1], "s", g.input[:1], [h.make_tensor_value_info("s", TP.FLOAT,
                                                                                                   spec)]),
                             opset_imports=[h.make_opsetid("", 17)], ir_version=9), {"q": q})[0]
    bf = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float64)  # noqa: E731
    want = bf(s) @ bf(v)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    bound = np.abs(bf(s)) @ np.abs(bf(v)) * 2.0**-7 + 1e-6  # the softmax's own fast-math error moves a rounding
    assert (np.abs(got[ok] - want[ok]) <= bound[ok]).all()


def test_layer_norm_into_a_bf16_matmul_over_rows_no_tile_divides():
    """LayerNorm -> MatMul over 197 rows: with native bf16 the matmul's rows are padded to whole tiles, and the
    padding (bf16 zeros) is written by the layer norm's kernel. RowReduction does not split that padding into a
    fill of its own (TVM stores a bf16 fill vector in lanes its bf16 legalization rejects: the ViT-like's bf16 build
    failed); the values stay within bf16 error of float32."""
    d, seq = 64, 197
    inits = [numpy_helper.from_array(RNG.standard_normal(d).astype(np.float32), "g"),
             numpy_helper.from_array(RNG.standard_normal(d).astype(np.float32), "b"),
             numpy_helper.from_array((RNG.standard_normal((d, 32)) * 0.2).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "ln_mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((1, seq, d)).astype(np.float32)
    to_emulation, to_fp32 = _check_model(model, x)
    assert to_fp32 < 2**-5 and to_emulation < 2**-8
