"""optc.runtime's call path: inputs passed without a TVM allocation (DLPack: aligned large arrays as they are,
others through an aligned staging buffer), outputs copied with numpy. Every way in must give the bytes TVM's
own conversion gives (tvm.runtime.tensor in, Tensor.numpy() out), and no output may share memory with an
input or with the library."""

from __future__ import annotations

import numpy as np
import optc
import pytest
import tvm
from onnx import TensorProto, helper
from optc.errors import OptcError
from optc.runtime import ALIGNMENT, ZERO_COPY_BYTES


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def affine():
    """y = x * w + b over a symbolic batch ([N, 128] float32), and a constant output c."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(128).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    m = _model([helper.make_node("Mul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"]),
                helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [3],
                                                                                  [1.0, 2.0, 3.0]))],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 128])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128]),
                helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
               [helper.make_tensor("w", TensorProto.FLOAT, [128], w), helper.make_tensor("b", TensorProto.FLOAT,
                                                                                           [128], b)])
    return optc.compile(m.SerializeToString(), "cpu"), w, b


def _reference(module, x: np.ndarray) -> list[np.ndarray]:
    """TVM's own conversion, as optc.runtime did it before: a TVM tensor per input, numpy() per output."""
    result = module._main(tvm.runtime.tensor(np.ascontiguousarray(x), module._device))
    return [v.numpy() for v in result]


def _misaligned(shape, offset_bytes: int) -> np.ndarray:
    n = int(np.prod(shape))
    buf = np.empty(n * 4 + 2 * ALIGNMENT, np.uint8)
    start = (-buf.ctypes.data % ALIGNMENT) + offset_bytes
    return buf[start:start + n * 4].view(np.float32).reshape(shape)


@pytest.mark.parametrize("rows", [1, 7, 200])  # 200 x 128 x 4 bytes >= ZERO_COPY_BYTES: passed without a copy
@pytest.mark.parametrize("offset", [0, 4, 16])
def test_inputs_at_any_alignment_give_tvms_bytes(affine, rows, offset):
    module, w, b = affine
    x = _misaligned((rows, 128), offset)
    x[...] = np.random.default_rng(rows).standard_normal((rows, 128))
    x[0, :3] = [np.nan, -0.0, np.inf]
    before = x.copy()
    out = module.run({"x": x})
    ref = _reference(module, x)
    assert out["y"].tobytes() == ref[0].tobytes() and out["c"].tobytes() == ref[1].tobytes()
    np.testing.assert_allclose(out["y"], x * w + b, rtol=1e-6, atol=1e-6)  # (FMA may round once)
    assert x.tobytes() == before.tobytes()  # the input is not written
    passed = np.from_dlpack(module._to_device([x])[0])
    assert np.shares_memory(passed, x) == (x.nbytes >= ZERO_COPY_BYTES and offset == 0)
    assert (x.nbytes >= ZERO_COPY_BYTES and offset == 0) or not np.shares_memory(out["y"], x)


def test_staging_follows_the_shape_and_the_values(affine):
    module, w, b = affine
    rng = np.random.default_rng(1)
    for rows in (3, 5, 3, 1, 5):  # a symbolic batch: one staging buffer per shape, refilled on every call
        x = rng.standard_normal((rows, 128)).astype(np.float32)
        np.testing.assert_allclose(module.run({"x": x})["y"], x * w + b, rtol=1e-6, atol=1e-6)


def test_non_contiguous_and_read_only_inputs(affine):
    module, w, b = affine
    base = np.random.default_rng(2).standard_normal((128, 6)).astype(np.float32)
    x = base.T  # Fortran order
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(module.run({"x": x})["y"], x * w + b, rtol=1e-6, atol=1e-6)
    frozen = np.random.default_rng(3).standard_normal((300, 128)).astype(np.float32)
    frozen.flags.writeable = False
    np.testing.assert_allclose(module.run({"x": frozen})["y"], frozen * w + b, rtol=1e-6, atol=1e-6)


def test_outputs_are_the_callers_own_copies(affine):
    module, _, _ = affine
    x = np.ones((2, 128), np.float32)
    first = module.run({"x": x})
    first["c"][...] = 99.0  # a constant of the library: changing the returned array must not change it
    first["y"][...] = 99.0
    second = module.run({"x": x})
    assert second["c"].tolist() == [1.0, 2.0, 3.0]
    assert not np.shares_memory(first["y"], second["y"])


def test_identity_output_does_not_alias_the_input():
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [256, 128]) for n in ("x", "y")]
    module = optc.compile(_model([helper.make_node("Identity", ["x"], ["y"])], [vi[0]], [vi[1]]).SerializeToString(),
                          "cpu")
    x = _misaligned((256, 128), 0)  # aligned and large: passed to the VM without a copy
    x[...] = 1.5
    y = module.run({"x": x})["y"]
    assert np.array_equal(y, x) and not np.shares_memory(y, x)
    y[...] = 0.0
    assert np.all(x == 1.5)


def test_bad_inputs_are_still_refused(affine):
    module, _, _ = affine
    with pytest.raises(OptcError, match=r"input 'x': expected float32 \[N,128\], got float64 \[2,128\]"):
        module.run({"x": np.zeros((2, 128))})
    with pytest.raises(OptcError, match=r"expected float32 \[N,128\], got float32 \[2,127\]"):
        module.run({"x": np.zeros((2, 127), np.float32)})
    with pytest.raises(OptcError, match="missing input 'x'"):
        module.run({})
    with pytest.raises(OptcError, match="unknown input 'z'"):
        module.run({"x": np.zeros((2, 128), np.float32), "z": np.zeros(1)})


def test_zero_size_inputs_run_every_time():
    """An empty input (whose numpy strides need not be compact, which the kernels check) runs on every call."""
    import optc
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Ceil", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4, 3, 0])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [4, 3, 0])])
    module = optc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    for x in (np.zeros((4, 3, 0)), np.zeros((4, 3, 0)), np.zeros((4, 6, 0))[:, ::2]):
        assert module.run({"x": x})["y"].shape == (4, 3, 0)
