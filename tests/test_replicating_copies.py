"""codegen/build.py `_replicating_copies_apart`: a Tile / Expand that replicates a large input (GQA's K / V heads
repeated for the query heads) is a kernel of its own, so the chain that computes its input runs once per input
element instead of once per output element; a small replicated input (a mask) keeps fusing. Results against
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh


def _repeat_heads(kv_heads: int, seq: int, dim: int, op: str) -> onnx.ModelProto:
    """y = reshape(Tile / Expand(unsqueeze(sigmoid(x) * x + 1, 2)), [1, 4 * kv_heads, seq, dim])."""
    inits = [nh.from_array(np.array([2], np.int64), "axes"), nh.from_array(np.float32(1.0), "one"),
             nh.from_array(np.array([1, 1, 4, 1, 1], np.int64), "reps"),
             nh.from_array(np.array([1, kv_heads, 4, seq, dim], np.int64), "shape"),
             nh.from_array(np.array([1, 4 * kv_heads, seq, dim], np.int64), "out_shape")]
    nodes = [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["s", "x"], ["m"]),
             h.make_node("Add", ["m", "one"], ["a"]), h.make_node("Unsqueeze", ["a", "axes"], ["u"]),
             h.make_node("Tile", ["u", "reps"], ["t"]) if op == "Tile" else h.make_node("Expand", ["u", "shape"], ["t"]),
             h.make_node("Reshape", ["t", "out_shape"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, kv_heads, seq, dim])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 * kv_heads, seq, dim])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _kernels(model: onnx.ModelProto) -> list[str]:
    from optc.codegen.build import fuse, prepare
    from optc.codegen.compile import _as_model
    from optc.codegen.targets import resolve_target
    from optc.lowering import lower
    from optc.rewrites import optimize

    target = resolve_target("cpu")
    fused = fuse(prepare(lower(optimize(_as_model(model), level=2)), None, target), target)
    return [gv.name_hint for gv, f in fused.functions_items() if hasattr(f, "body")]


@pytest.mark.parametrize(("op", "kv_heads", "seq", "apart"), [
    ("Tile", 2, 128, True),  # Llama-style GQA: 2 K/V heads of 128 x 32 repeated 4 times
    ("Expand", 2, 128, True),
    ("Tile", 1, 8, False),  # 256 elements: below REPLICATE_MIN_ELEMENTS, fused as before
], ids=["tile-gqa", "expand-gqa", "tile-small"])
def test_large_replications_are_kernels_of_their_own(op, kv_heads, seq, apart):
    model = _repeat_heads(kv_heads, seq, 32, op)
    names = _kernels(model)
    fused_chain = [n for n in names if "multiply" in n and ("tile" in n or "broadcast_to" in n)]
    assert (not fused_chain) is apart, names
    x = (np.random.default_rng(3).standard_normal([1, kv_heads, seq, 32]) * 3).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = optc.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
