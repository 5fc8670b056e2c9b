"""Inlining does not grow expressions without bound (`schedules.MAX_INLINED_NODES`): a producer read more than
once is copied at every read, so a chain of such elementwise ops grew as a product. Two Mish activations in a
row (x * tanh(softplus(x)), its fast_exp and fast_tanh reading their argument many times) took TVM over 5 minutes
and 18 GB to schedule; Elu -> Tanh -> Sigmoid 24 s. A producer over the limit stays a block of its own. Values
against onnxruntime; a chain of single reads is still one block."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from optc.codegen import schedules
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx
from tvm import tirx

from .conftest import run_ort


def _chain(ops: list[str], shape=(1, 8, 16, 16)) -> onnx.ModelProto:
    """x -> ops in a row -> y; "Mish" is Softplus, Tanh, Mul (x * tanh(softplus(x))), "Swish" Sigmoid, Mul."""
    nodes, cur = [], "x"
    for i, op in enumerate(ops):
        out = f"y{i}" if i < len(ops) - 1 else "y"
        if op == "Mish":
            nodes += [h.make_node("Softplus", [cur], [f"sp{i}"]), h.make_node("Tanh", [f"sp{i}"], [f"t{i}"]),
                      h.make_node("Mul", [cur, f"t{i}"], [out])]
        elif op == "Swish":
            nodes += [h.make_node("Sigmoid", [cur], [f"s{i}"]), h.make_node("Mul", [cur, f"s{i}"], [out])]
        else:
            nodes.append(h.make_node(op, [cur], [out]))
        cur = out
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                     [h.make_tensor_value_info("y", TP.FLOAT, list(shape))])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _scheduled_blocks(model: onnx.ModelProto) -> list:
    """The blocks under the root of the model's one fused kernel as `Injective` schedules it."""
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if gv.name_hint != "main"]
    sch = schedules.Injective().apply(func, resolve_target("cpu"), False)
    assert sch is not None
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _nodes(block) -> int:
    assert isinstance(block.body, tirx.BufferStore)
    return schedules._expr_nodes(block.body.value)


@pytest.mark.parametrize("ops", [["Mish", "Mish"], ["Elu", "Tanh", "Sigmoid"], ["Swish"] * 4])
def test_repeated_reads_keep_intermediates(ops):
    """Each block's expression stays within the limit plus its own nodes: some intermediates are kept (before the
    limit, one block of 10^5 nodes and more)."""
    blocks = _scheduled_blocks(_chain(ops))
    assert len(blocks) > 1
    assert max(_nodes(b) for b in blocks) <= 2 * schedules.MAX_INLINED_NODES, [_nodes(b) for b in blocks]


def test_single_reads_inline_into_one_block():
    """Negative: ops that read their input once (Relu, Neg, Abs, Floor) still become one block."""
    [block] = _scheduled_blocks(_chain(["Relu", "Neg", "Abs", "Floor", "Relu"]))
    assert _nodes(block) < 200


@pytest.mark.parametrize("ops", [["Mish", "Mish", "Mish"], ["Elu", "Tanh", "Sigmoid"], ["Swish"] * 4])
def test_chains_match_onnxruntime(ops):
    model = _chain(ops)
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32) * 4
    x.reshape(-1)[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    [want] = run_ort(model, {"x": x})
    got = optc.compile(model).run({"x": x})["y"]
    # fast math (the default): exp / tanh within a few float32 ulp of libm's, compounded over the chain
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))
