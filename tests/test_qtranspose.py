"""Attention's K transpose moved next to the integer Q K^T (`rewrites/rules/qtranspose.py`) and read through its
permutation by the kernel (`lowering/ops/qinteger.py` `_permuted_matmul`, `codegen/int8_kernels.py`): the rule's
positive and negative cases on the IR, and every case compiled against onnxruntime on the same QDQ model (within
1 quantized unit, the integer ops' contract; tests/test_qinteger.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.ir import load
from optc.rewrites import optimize
from optc.rewrites.rules.qinteger import to_integer_ops

RNG = np.random.default_rng(7)


def _qk_model(x_shape, z_shape, perm, *, k_dtype=np.uint8, k_zp=131, scale_step="mul", dq_axis=None,
              step_is_output=False, per_channel_mul=False, sigmoid=False) -> onnx.ModelProto:
    """y = Q(MatMul(DQ(Q(x)), DQ(Q(step(DQ(Transpose(Q(z), perm))))))): the QDQ form of attention's Q K^T as the
    torch exporters write it (K transposed while quantized, then rescaled and requantized). `scale_step`: "mul"
    (by 0.125), "none" (no step: the Transpose feeds the DequantizeLinear of the MatMul directly)."""
    inits = [nh.from_array(np.float32(0.031), "as"), nh.from_array(np.array(128, np.uint8), "az"),
             nh.from_array(np.float32(0.027), "ks"), nh.from_array(np.array(k_zp, k_dtype), "kz"),
             nh.from_array(np.float32(0.009), "bs"), nh.from_array(np.array(k_zp, k_dtype), "bz"),
             nh.from_array(np.float32(0.4), "ys"), nh.from_array(np.array(7, np.uint8), "yz")]
    t_shape = [z_shape[p] for p in perm]
    nodes = [h.make_node("QuantizeLinear", ["x", "as", "az"], ["aq"]),
             h.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
             h.make_node("QuantizeLinear", ["z", "ks", "kz"], ["kq"]),
             h.make_node("Transpose", ["kq"], ["kt"], perm=list(perm))]
    outputs = []
    if scale_step == "none":
        nodes.append(h.make_node("DequantizeLinear", ["kt", "ks", "kz"], ["bd"]))
    else:
        if dq_axis is not None:  # a per-axis DequantizeLinear after the transpose: its axis would move
            inits[2:4] = [nh.from_array(np.linspace(0.02, 0.03, t_shape[dq_axis]).astype(np.float32), "ks"),
                          nh.from_array(np.full(t_shape[dq_axis], k_zp, k_dtype), "kz")]
            nodes.append(h.make_node("DequantizeLinear", ["kt", "ks", "kz"], ["kd"], axis=dq_axis))
        else:
            nodes.append(h.make_node("DequantizeLinear", ["kt", "ks", "kz"], ["kd"]))
        c = np.linspace(0.1, 0.2, t_shape[-2]).astype(np.float32).reshape(-1, 1) if per_channel_mul \
            else np.float32(0.125)
        inits.append(nh.from_array(c, "c"))
        nodes.append(h.make_node("Sigmoid", ["kd"], ["km"]) if sigmoid else h.make_node("Mul", ["kd", "c"], ["km"]))
        nodes += [h.make_node("QuantizeLinear", ["km", "bs", "bz"], ["bq"]),
                  h.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"])]
        if step_is_output:
            outputs.append(h.make_tensor_value_info("km", TensorProto.FLOAT, None))
    nodes += [h.make_node("MatMul", ["ad", "bd"], ["mm"]), h.make_node("QuantizeLinear", ["mm", "ys", "yz"], ["y"])]
    outputs.insert(0, h.make_tensor_value_info("y", TensorProto.UINT8, None))
    inputs = [h.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
              h.make_tensor_value_info("z", TensorProto.FLOAT, list(z_shape))]
    graph = h.make_graph(nodes, "g", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _integer_ir(model: onnx.ModelProto):
    m = optimize(load(model.SerializeToString()), level=2)
    to_integer_ops(m)
    qmm = [n for n in m.graph if n.op_type == "QMatMul"]
    assert len(qmm) == 1, [n.op_type for n in m.graph]
    return m, qmm[0]


def _feeds(model: onnx.ModelProto, shapes: dict) -> dict[str, np.ndarray]:
    return {name: (RNG.standard_normal([4 if isinstance(d, str) else d for d in s]) * 2).astype(np.float32)
            for name, s in shapes.items()}


def _assert_within_one_unit(model: onnx.ModelProto, feeds: dict) -> None:
    got = optc.compile(model).run(feeds)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for out, want in zip(model.graph.output, sess.run(None, feeds), strict=True):
        g = got[out.name]
        assert g.shape == want.shape and g.dtype == want.dtype, (out.name, g.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(g, want)
            continue
        diff = g.astype(np.int64) - want
        values, counts = np.unique(diff, return_counts=True)
        print(out.name, "differences (quantized units):", dict(zip(values.tolist(), counts.tolist(), strict=True)))
        assert np.abs(diff).max(initial=0) <= 1


def _kernel_names(model: onnx.ModelProto) -> list[str]:
    from optc.codegen.build import fuse, prepare
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    m, _ = _integer_ir(model)
    target = resolve_target("cpu")
    fused = fuse(prepare(lower(m), None, target), target)
    return [gv.name_hint for gv, f in fused.functions_items() if hasattr(f, "body")]


POSITIVE = {
    # ViT-like: K [197 tokens, 3 heads, 64] transposed with the head split into [3, 64, 197]; N padded to 208
    "vit-k": dict(x_shape=(1, 3, 197, 64), z_shape=(197, 1, 3, 64), perm=(1, 2, 3, 0)),
    # int8 K of 6 channels (K padded to 8) and 10 tokens (N padded to 16, sliced back); batch [2, 3] x [3]
    "int8-k-padded-broadcast": dict(x_shape=(2, 3, 5, 6), z_shape=(10, 3, 6), perm=(1, 2, 0), k_dtype=np.int8,
                                    k_zp=-4),
    # the plain swap of the last two axes
    "swap-last-two": dict(x_shape=(2, 7, 32), z_shape=(2, 48, 32), perm=(0, 2, 1)),
    # V split into heads [tokens, heads, 32] -> [heads, tokens, 32]: K (the tokens) is not t's last axis
    "v-head-split": dict(x_shape=(1, 3, 7, 20), z_shape=(20, 3, 32), perm=(1, 0, 2)),
}


@pytest.mark.parametrize("case", list(POSITIVE), ids=list(POSITIVE))
def test_transpose_moves_next_to_the_integer_matmul(case):
    model = _qk_model(**POSITIVE[case])
    m, qmm = _integer_ir(model)
    moved = qmm.inputs[3].producer
    assert moved.op_type == "Transpose", moved.op_type
    assert moved.inputs[0].producer.op_type == "QuantizeLinear"  # the rescale and requantize now come before it
    assert not any(n.op_type == "Transpose" and n is not moved for n in m.graph)
    names = _kernel_names(model)
    assert any("matmul_permuted" in n for n in names), names
    assert not any(n.startswith("fused_transpose") or "_transpose" in n for n in names), names
    _assert_within_one_unit(model, _feeds(model, {"x": POSITIVE[case]["x_shape"], "z": POSITIVE[case]["z_shape"]}))


def test_the_packing_reads_k_in_its_own_layout_on_the_dot_product_instruction():
    """The ViT-like Q K^T kernel reads K [tokens, heads, 64] through the permutation and is scheduled by
    Int8Reduction (its run-time B packed in 4-byte words), where the target has a dot-product instruction."""
    from optc.codegen.build import fuse, prepare
    from optc.codegen.int8_kernels import ISAS, SEVEN_BIT, Int8Reduction, int8_isas
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower

    target = resolve_target("cpu")
    isas = [i for i in int8_isas(target) if i != "amx" and i not in SEVEN_BIT]  # (a run-time B: never 7-bit)
    if not isas:
        pytest.skip("this CPU has no int8 dot-product instruction")
    m, _ = _integer_ir(_qk_model(**POSITIVE["vit-k"]))
    fused = fuse(prepare(lower(m), None, target), target)
    kernel = next(f for gv, f in fused.functions_items() if "matmul_permuted" in gv.name_hint)
    sch = Int8Reduction().apply(kernel, target, False)
    assert sch is not None
    text = sch.mod["main"].script()
    instruction = {"avx512vnni": "vpdpbusd", "avxvnni": "vpdpbusd", "avx512bw": "pmaddw.d", "avx2": "pmadd.wd"}
    group = ISAS[isas[0]][2]  # the reduction group: 4 bytes (vpdpbusd) or 2 (vpmaddwd)
    assert instruction[isas[0]] in text and f"T.vectorized(T.int64({group}))" in text  # the word copy of the packing


def test_transpose_straight_into_the_matmul_is_read_through_its_permutation():
    """No step between the Transpose and the MatMul's DequantizeLinear: nothing to move (the rule does not
    fire), and the lowering reads the Transpose's input directly."""
    model = _qk_model((1, 3, 20, 64), (20, 3, 64), (1, 2, 0), scale_step="none")
    _, qmm = _integer_ir(model)
    assert qmm.inputs[3].producer.op_type == "Transpose"
    assert any("matmul_permuted" in n for n in _kernel_names(model))
    _assert_within_one_unit(model, _feeds(model, {"x": (1, 3, 20, 64), "z": (20, 3, 64)}))


NEGATIVE = {
    "per-axis-dequantize": dict(dq_axis=0),  # DQ per head after the transpose: its axis would move
    "per-channel-mul": dict(per_channel_mul=True),  # a multiplier per channel of K^T: not one element
    "step-is-a-graph-output": dict(step_is_output=True),  # another use sees the transposed layout
    "table-lookup": dict(sigmoid=True),  # DQ -> Sigmoid -> Q is an optc.TableLookup: not moved (module doc)
}


@pytest.mark.parametrize("case", list(NEGATIVE), ids=list(NEGATIVE))
def test_transpose_stays_where_the_steps_do_not_commute(case):
    model = _qk_model((1, 3, 20, 64), (20, 3, 64), (1, 2, 0), **NEGATIVE[case])
    m, qmm = _integer_ir(model)
    assert qmm.inputs[3].producer.op_type != "Transpose"
    transposes = [n for n in m.graph if n.op_type == "Transpose"]
    assert len(transposes) == 1 and transposes[0].inputs[0].producer.op_type == "QuantizeLinear"
    assert transposes[0].outputs[0].users()[0].op_type in ("DequantizeLinear", "TableLookup")
    _assert_within_one_unit(model, _feeds(model, {"x": (1, 3, 20, 64), "z": (20, 3, 64)}))


def test_symbolic_batch_reads_k_through_the_permutation():
    """K with a symbolic batch: the transpose moves in the IR and the lowering reads K through the permutation
    (since symbolic key lengths run integer too: shapes of symbolic dims are known expressions); within 1 unit."""
    model = _qk_model(("B", 3, 12, 32), ("B", 12, 3, 32), (0, 2, 3, 1))
    _, qmm = _integer_ir(model)
    assert qmm.inputs[3].producer.op_type == "Transpose"
    assert any("matmul_permuted" in n for n in _kernel_names(model))
    _assert_within_one_unit(model, _feeds(model, {"x": (4, 3, 12, 32), "z": (4, 12, 3, 32)}))


@pytest.mark.parametrize(("x_shape", "z_shape", "perm"), [
    ((1, 3, 0, 8), (19, 3, 8), (1, 2, 0)),  # no rows, K^T read through the transpose
    ((1, 0, 7, 8), (1, 0, 19, 8), (0, 1, 3, 2)),  # no heads
], ids=["m0", "h0"])
def test_zero_size_rows_with_padded_columns(x_shape, z_shape, perm):
    """Found by a breaker (before this change too): with no rows or batch and N not a multiple of 16, the crop of
    the padded columns reshaped an empty tensor to one row and the lowering failed. An empty result now, as
    onnxruntime's."""
    model = _qk_model(x_shape, z_shape, perm, scale_step="none")
    feeds = {"x": np.zeros(x_shape, np.float32), "z": np.ones(z_shape, np.float32)}
    got = optc.compile(model).run(feeds)["y"]
    assert got.shape == (*x_shape[:-1], 19) and got.dtype == np.uint8
    _assert_within_one_unit(model, feeds)
