"""Kernels over a symbolic axis (a dynamic batch or sequence length: the default of most exports) get the same
register-tiled / vectorized schedules as static ones. Before, TiledReduction and the vectorizing Injective rule
declined any symbolic extent, and such kernels ran as naive loops: the digits CNN with its `N x 1 x 8 x 8`
input ran its dense layer at 1 ms instead of 25 us at N = 32. Now symbolic rows are padded to whole tiles
(pad_einsum: a predicated tile's intermediate cannot be compacted to the tile), symbolic loops stay outermost,
and elementwise kernels vectorize their static inner loops. Outputs are checked against onnxruntime at row counts
that are and are not multiples of the tile height."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optc
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.codegen import schedules
from optc.codegen.int8_kernels import int8_isas
from optc.codegen.kernel_check import fused_kernels
from optc.codegen.targets import resolve_target
from optc.ir import from_onnx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def _w(rng, shape, name):
    return nh.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def dense() -> onnx.ModelProto:
    """relu(x @ W + b), x: [N, 512] float32, W: [512, 64]."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["a"]),
             h.make_node("Relu", ["a"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                  [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                  [_w(rng, (512, 64), "w"), _w(rng, (64,), "b")])


def attention() -> onnx.ModelProto:
    """softmax(q k^T / 8) v over [B, S, 32] with B and S symbolic (S is a row axis and a reduction axis), then a
    projection to 40 channels (a vector axis that is not a multiple of the SIMD width)."""
    rng = np.random.default_rng(1)
    nodes = [h.make_node("MatMul", ["x", "wq"], ["q"]), h.make_node("MatMul", ["x", "wk"], ["k"]),
             h.make_node("MatMul", ["x", "wv"], ["v"]), h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node("Mul", ["s", "scale"], ["ss"]),
             h.make_node("Softmax", ["ss"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v"], ["o"]),
             h.make_node("MatMul", ["o", "wo"], ["y"])]
    inits = [_w(rng, (32, 32), n) for n in ("wq", "wk", "wv")] + [
        _w(rng, (32, 40), "wo"), nh.from_array(np.array(0.125, np.float32), "scale")]
    return _model(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32])],
                  [h.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 40])], inits)


def nan_pool() -> onnx.ModelProto:
    """MaxPool (NaN-propagating: optc's IEEE max-pool kernel) and a Transpose over a symbolic batch."""
    nodes = [h.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Transpose", ["p"], ["y"], perm=[0, 2, 3, 1])]
    return _model(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24, 8, 8])],
                  [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 24])])


def _nan_pool_reference(x: np.ndarray) -> np.ndarray:
    """nan_pool's output by numpy: a window holding a NaN gives NaN (optc's MaxPool, as ReduceMax; onnxruntime's
    answer depends on where in the window the NaN is)."""
    n, c, hh, ww = x.shape
    return x.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5)).transpose(0, 2, 3, 1)


def _feed(model: onnx.ModelProto, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for i in model.graph.input:
        shape = [d.dim_value or sizes[d.dim_param] for d in i.type.tensor_type.shape.dim]
        feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _ort(model: onnx.ModelProto, feed):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    # onnxruntime fuses a blocked 4-bit DequantizeLinear + MatMul into MatMulNBits computing with int8 activations
    # (accuracy level 4) unless told otherwise; level 0 keeps the float computation the model specifies
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


CASES = {
    "dense": (dense, [{"N": n} for n in (1, 5, 8, 13, 32)]),
    "attention": (attention, [{"B": b, "S": s} for b, s in ((1, 1), (2, 7), (1, 16), (3, 13))]),
    "nan_pool": (nan_pool, [{"N": n} for n in (1, 3, 16)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_symbolic_kernels_match_onnxruntime(name):
    make, sizes = CASES[name]
    model = make()
    module = optc.compile(model.SerializeToString(), "cpu")
    for i, size in enumerate(sizes):
        feed = _feed(model, size, i)
        if name == "nan_pool":
            feed["x"][0, 0, 0, :3] = [np.nan, -np.inf, np.inf]
        got = module.run(feed)
        refs = [_nan_pool_reference(feed["x"])] if name == "nan_pool" else _ort(model, feed)
        for out, ref in zip(model.graph.output, refs, strict=True):
            assert got[out.name].shape == ref.shape, size
            np.testing.assert_allclose(got[out.name], ref, rtol=1e-4, atol=1e-5, err_msg=str(size))


def test_digits_cnn_with_a_symbolic_batch_matches_onnxruntime():
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the example ships a symbolic batch
    module = optc.compile(model.SerializeToString(), "cpu")
    for n in (1, 13, 32):
        x = np.random.default_rng(n).random((n, 1, 8, 8), dtype=np.float32)
        [ref] = _ort(model, {model.graph.input[0].name: x})
        [got] = module.run({model.graph.input[0].name: x}).values()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def _kernel(model: onnx.ModelProto, fragment: str):
    fused = fused_kernels(from_onnx(model), "cpu")
    [func] = [f for gv, f in fused.functions_items() if fragment in gv.name_hint]
    return func


def test_symbolic_rows_are_padded_to_whole_register_tiles():
    sch = schedules.TiledReduction().apply(_kernel(dense(), "matmul"), resolve_target("cpu"), False)
    assert sch is not None  # (declined before: the kernel ran as a naive loop nest)
    text = sch.mod["main"].script()
    assert "_pad" in text and "T.vectorized" in text and "T.parallel" in text
    update = text[text.index('T.sblock("matmul_update")'):]
    update = update[:update.index("T.writes")]
    assert "T.where" not in update  # every tile's accumulation is unpredicated
    # the symbolic loop is outermost in the parallel loop: no index modulo an expression of N
    assert not re.search(r"% \(\(N", text)


def test_symbolic_batch_elementwise_kernels_vectorize():
    """(Sigmoid becomes fast math's fast_exp form: the kernel is found by that name.)"""
    model = _model([h.make_node("Sigmoid", ["x"], ["y"])],
                   [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24, 8, 8])],
                   [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24, 8, 8])])
    sch = schedules.Injective().apply(_kernel(model, "fast_exp"), resolve_target("cpu"), False)
    assert sch is not None and "T.vectorized" in sch.mod["main"].script()


def _scores_model() -> onnx.ModelProto:
    """Attention-score-like elementwise chain over [B, H, S, S], every axis symbolic but the heads."""
    nodes = [h.make_node("Mul", ["x", "c"], ["m"]), h.make_node("Add", ["m", "x"], ["a"]),
             h.make_node("Relu", ["a"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "S", "S"])],
                  [h.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, "S", "S"])],
                  [nh.from_array(np.array(0.37, np.float32), "c")])


def test_a_symbolic_innermost_axis_stays_a_loop_of_its_own():
    """[B, 4, S, S]: the innermost loop (over S) is not fused with the others, so its index is the loop variable
    itself, and the outer loops' indices are computed once a row (fused with them, two 64-bit divisions by the
    symbolic extents an element: a dynamic-axes int8 GPT-2-like's score kernel 237 -> 57 us)."""
    func = next(f for gv, f in fused_kernels(from_onnx(_scores_model()), "cpu").functions_items()
                if gv.name_hint != "main")
    text = schedules.Injective().apply(func, resolve_target("cpu"), False).mod["main"].script()
    assert "for ax0_ax1_ax2_fused, ax3 in T.grid(" in text, text
    assert "v3 = T.axis.spatial(S, ax3)" in text, text


@pytest.mark.parametrize(("b", "s"), [(1, 1), (2, 7), (1, 33), (3, 0)])
def test_a_symbolic_innermost_axis_matches_onnxruntime(b, s):
    model = _scores_model()
    x = np.random.default_rng(s).standard_normal((b, 4, s, s)).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, -np.inf, -0.0][:x.size]
    got = optc.compile(model).run({"x": x})["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # x * c + x: one rounding (a fused multiply-add)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.signbit(got), np.signbit(want))


def test_a_symbolic_vector_axis_is_padded_to_whole_tiles():
    """W [8, 16] @ x [16, N]: the contiguous output axis (the vector axis) is symbolic: zero-padded to whole tiles of
    SYMBOLIC_COLUMN_VECTORS vectors (pad_einsum), the accumulation unpredicated (declined before: naive loops, a
    dynamic sequence's Q K^T 24x onnxruntime); the values match at N on and off the tile width, 0 included."""
    rng = np.random.default_rng(2)
    model = _model([h.make_node("MatMul", ["w", "x"], ["y"])],
                   [h.make_tensor_value_info("x", TensorProto.FLOAT, [16, "N"])],
                   [h.make_tensor_value_info("y", TensorProto.FLOAT, [8, "N"])], [_w(rng, (8, 16), "w")])
    sch = schedules.TiledReduction().apply(_kernel(model, "matmul"), resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    update = text[text.index('T.sblock("matmul_update")'):]
    assert "T.vectorized" in text and "T.where" not in update[:update.index("T.writes")]
    module = optc.compile(model.SerializeToString(), "cpu")
    for n in (0, 1, 11, 16, 32, 33, 100):
        x = rng.standard_normal((16, n)).astype(np.float32)
        got = module.run({"x": x})["y"]
        assert got.shape == (8, n)
        np.testing.assert_allclose(got, _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5, err_msg=str(n))


def test_symbolic_rows_and_reduction_copy_and_accumulate_per_tile():
    """P [1, 4, S, S] @ V [1, 4, S, 64] (a dynamic sequence's attention output): P's rows padded to whole tiles are
    read in place at clamped rows (no copy of P: `_read_padded_rows_clamped`), and the tile accumulates in a buffer
    of its own (946 -> 88 us at S = 128, AMD Zen 4); the values match onnxruntime at S on and off the tile height."""
    model = _model([h.make_node("MatMul", ["p", "v"], ["y"])],
                   [h.make_tensor_value_info("p", TensorProto.FLOAT, [1, 4, "S", "S"]),
                    h.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4, "S", 64])],
                   [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "S", 64])])
    sch = schedules.TiledReduction().apply(_kernel(model, "matmul"), resolve_target("cpu"), False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert 'T.sblock("p_pad")' not in text and "if_then_else" not in text
    assert re.search(r"p\[T\.int64\(0\), v\d, T\.min\(v\d, S - T\.int64\(1\)\), v\d\]", text), text
    assert "matmul_pad_global" in text  # the tile's own accumulator
    module = optc.compile(model.SerializeToString(), "cpu")
    rng = np.random.default_rng(4)
    for n in (1, 7, 16, 33):
        feed = {"p": rng.standard_normal((1, 4, n, n)).astype(np.float32),
                "v": rng.standard_normal((1, 4, n, 64)).astype(np.float32)}
        np.testing.assert_allclose(module.run(feed)["y"], _ort(model, feed)[0], rtol=1e-5, atol=1e-5, err_msg=str(n))


@pytest.mark.parametrize("columns", [1, 16])
def test_a_symbolic_reduction_of_length_zero_gives_zeros(columns):
    """[2, 1, 3, t] @ [2, 1, t, columns] at t = 0 is zeros: every rule's kernel runs its init before the reduction
    loops when one of them is symbolic (dlight's matrix-vector rule, which takes the one-column case, ran the init
    on the first reduction iteration: at t = 0 never, the output uninitialized); at t = 3 the products."""
    model = _model([h.make_node("MatMul", ["a", "b"], ["y"])],
                   [h.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 1, "s", "t"]),
                    h.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 1, "t", columns])],
                   [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "s", columns])])
    module = optc.compile(model.SerializeToString(), "cpu")
    rng = np.random.default_rng(5)
    module.run({"a": rng.standard_normal((2, 1, 64, 64)).astype(np.float32),  # leave values in freed memory
                "b": rng.standard_normal((2, 1, 64, columns)).astype(np.float32)})
    for t in (0, 3):
        feed = {"a": np.ones((2, 1, 3, t), np.float32), "b": np.ones((2, 1, t, columns), np.float32)}
        np.testing.assert_array_equal(module.run(feed)["y"], np.full((2, 1, 3, columns), t, np.float32))


@pytest.mark.parametrize("symbolic", ["M", "N", "K", "MN", "MK", "NK", "MNK"])
def test_batched_matmul_with_symbolic_axes_and_an_epilogue_matches_onnxruntime(symbolic):
    """relu([2, 3, M, K] @ [2, 3, K, N] + bias[N]) with each combination of symbolic M, N, K: one library run at
    sizes 0, 1, on and off the tile widths, and after a larger call (stale memory), a NaN kept in its row."""
    m, n, k = (("M" if "M" in symbolic else 12), ("N" if "N" in symbolic else 20), ("K" if "K" in symbolic else 24))
    nodes = [h.make_node("MatMul", ["a", "b"], ["m"]), h.make_node("Add", ["m", "c"], ["s"]),
             h.make_node("Relu", ["s"], ["y"])]
    model = _model(nodes, [h.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, m, k]),
                           h.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3, k, n]),
                           h.make_tensor_value_info("c", TensorProto.FLOAT, [n])],
                   [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    module = optc.compile(model.SerializeToString(), "cpu")
    rng = np.random.default_rng(6)
    for size in (40, 0, 1, 7, 16, 17, 33):
        mm, nn, kk = (size if "M" in symbolic else 12), (size + 5 if "N" in symbolic else 20), \
            (size + 3 if "K" in symbolic else 24)
        feed = {"a": rng.standard_normal((2, 3, mm, kk)).astype(np.float32),
                "b": rng.standard_normal((2, 3, kk, nn)).astype(np.float32), "c": rng.standard_normal(nn).astype(np.float32)}
        if mm and kk:
            feed["a"][1, 2, 0, 0] = np.nan
        got = module.run(feed)["y"]
        want = _ort(model, feed)[0]
        assert got.shape == want.shape, (size, got.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=str(size))


@pytest.mark.parametrize("mode", ["static_int8", "weight_only_int4"])
def test_quantized_kernels_with_symbolic_rows_match_the_static_build(mode, tmp_path):
    """The integer and 4-bit kernels' rules take static rows only; with a symbolic batch the matmul goes to
    TiledReduction (now padded and tiled): the same model compiled for a fixed batch must give the same values
    (int8: integer sums, bit-identical; int4: float32 sums in another order)."""
    x_cal = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x_cal)
    options = {"calibration": str(tmp_path / "cal.npz")} if mode == "static_int8" else {"weight_only": "int4"}
    quantized = optc.quantize(dense(), **options)
    symbolic = optc.compile(quantized, "cpu")
    static = optc.compile(quantized, "cpu", input_shapes={"x": (13, 512)})
    if mode == "static_int8" and int8_isas(resolve_target("cpu")):
        # the symbolic build's integer kernel is tensorized as the static one's (it fell back to TiledReduction)
        assert symbolic.metadata["kernels"]["instructions"] == static.metadata["kernels"]["instructions"] != {}
    x = np.random.default_rng(6).standard_normal((13, 512)).astype(np.float32)
    got, ref = symbolic.run({"x": x})["y"], static.run({"x": x})["y"]
    if mode == "static_int8":
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    for n in (1, 32):  # other row counts against onnxruntime on the same quantized model
        xn = np.random.default_rng(n).standard_normal((n, 512)).astype(np.float32)
        [want] = _ort(optc.to_onnx(quantized), {"x": xn})
        scale = np.abs(want).max() / 127 if mode == "static_int8" else 1e-5  # one quantized unit at most
        np.testing.assert_allclose(symbolic.run({"x": xn})["y"], want, rtol=1e-4, atol=scale)


def test_int8_cnn_with_a_symbolic_batch_matches_the_static_build():
    """Integer convs over a symbolic batch (the batch loop outside the tile, no padding) and the dense layer
    (symbolic rows, padded): bit-identical to the same QDQ model compiled for a fixed batch."""
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    quantized = optc.quantize(model, calibration=str(EXAMPLES / "digits_calib.npz"))
    symbolic = optc.compile(quantized, "cpu")
    static = optc.compile(quantized, "cpu", input_shapes={"x": (13, 1, 8, 8)})
    kernels = symbolic.metadata["kernels"]
    assert kernels["integer"] >= 4 and kernels["instructions"] == static.metadata["kernels"]["instructions"]
    x = np.random.default_rng(7).random((13, 1, 8, 8), dtype=np.float32)
    [got], [want] = symbolic.run({"x": x}).values(), static.run({"x": x}).values()
    np.testing.assert_array_equal(got, want)
