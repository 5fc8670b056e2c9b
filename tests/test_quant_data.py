"""`optc.quantization.data`: model input specs, .npz data sets (a file or a directory, stored or compressed,
C or Fortran order) read in batches that reassemble to the original arrays, memory-mapped stored members, and a
one-line OptcError starting with "<role> '<path>'" for every kind of bad data."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.errors import OptcError
from optc.ir import from_onnx
from optc.quantization.data import Dataset, InputSpec, model_input_specs, open_dataset

F32 = np.dtype(np.float32)
SPEC_X = InputSpec("x", F32, ("N", 3))
SPEC_M = InputSpec("m", np.dtype(np.int64), (None, 2, 2))


def _model() -> onnx.ModelProto:
    """Inputs x float32 [N,3], m int64 [?,2,2], and w: an initializer that is also listed as a graph input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    m = helper.make_tensor_value_info("m", TensorProto.INT64, [None, 2, 2])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"]), helper.make_node("Identity", ["m"], ["z"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [None, 2, 2])]
    g = helper.make_graph(nodes, "g", [x, m, w_in], outs, initializer=[w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _arrays(n: int, offset: int = 0) -> dict[str, np.ndarray]:
    x = (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + offset)
    m = np.arange(n * 4, dtype=np.int64).reshape(n, 2, 2) + offset
    return {"x": x, "m": m, "y": np.arange(n, dtype=np.int64) + offset}


def _write_dir(path, layouts=("stored", "compressed", "fortran-stored", "fortran-compressed")):
    """One file per layout (sizes 5, 7, 3, 4), named so that sorting keeps this order."""
    os.makedirs(path, exist_ok=True)
    parts = []
    for i, (layout, n) in enumerate(zip(layouts, (5, 7, 3, 4), strict=False)):
        arrays = _arrays(n, offset=1000 * i)
        parts.append(arrays)
        if layout.startswith("fortran"):
            arrays = {k: np.asfortranarray(v) for k, v in arrays.items()}
        save = np.savez_compressed if layout.endswith("compressed") else np.savez
        save(os.path.join(path, f"part{i}.npz"), **arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- model_input_specs ------------------------------------------------------------------------------------------


def test_model_input_specs_from_proto_model_and_path(tmp_path):
    proto = _model()
    path = str(tmp_path / "m.onnx")
    onnx.save(proto, path)
    expected = [SPEC_X, SPEC_M]  # w is an initializer: not fed
    assert model_input_specs(proto) == expected
    assert model_input_specs(from_onnx(proto)) == expected
    assert model_input_specs(path) == expected
    assert SPEC_X.describe() == "float32 [N,3]"


def test_model_input_specs_missing_model_is_optc_error(tmp_path):
    with pytest.raises(OptcError):
        model_input_specs(str(tmp_path / "none.onnx"))


# -- reading ----------------------------------------------------------------------------------------------------


def test_num_samples_and_names_from_headers(tmp_path):
    _write_dir(tmp_path / "d")
    ds = open_dataset(str(tmp_path / "d"), [SPEC_X, SPEC_M], labels="y")
    assert ds.num_samples == 5 + 7 + 3 + 4
    assert ds.names == ("x", "m", "y")
    assert ds.array_names == ("m", "x", "y")


@pytest.mark.parametrize("batch_size", [None, 1, 4, 6, 19, 100])
def test_batches_reassemble_the_data(tmp_path, batch_size):
    whole = _write_dir(tmp_path / "d")
    ds = open_dataset(str(tmp_path / "d"), [SPEC_X, SPEC_M], labels="y")
    batches = list(ds.batches(batch_size))
    sizes = [len(b["x"]) for b in batches]
    if batch_size is None:
        assert sizes == [5, 7, 3, 4]  # one batch per file
    else:  # full batches (spanning files) except the last
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    for name, expected in whole.items():
        got = np.concatenate([b[name] for b in batches])
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert all(b[name].flags["C_CONTIGUOUS"] for b in batches)


def test_batches_names_subset_and_unknown_name(tmp_path):
    whole = _write_dir(tmp_path / "d")
    ds = open_dataset(str(tmp_path / "d"), [SPEC_X])
    (batch,) = list(ds.batches(100, names=["y"]))
    assert list(batch) == ["y"]
    np.testing.assert_array_equal(batch["y"], whole["y"])
    with pytest.raises(OptcError, match=r"part0.npz' has no array for 'q' \(it has: m, x, y\)"):
        ds.batches(names=["q"])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size(tmp_path, bad):
    np.savez(tmp_path / "a.npz", **_arrays(3))
    ds = open_dataset(str(tmp_path / "a.npz"), [SPEC_X])
    with pytest.raises(OptcError, match="batch size must be a positive integer"):
        ds.batches(bad)


def _has_memmap_base(arr: np.ndarray) -> bool:
    while isinstance(arr, np.ndarray):
        if isinstance(arr, np.memmap):
            return True
        arr = arr.base
    return False


def test_stored_members_are_memory_mapped_and_compressed_ones_are_not(tmp_path):
    arrays = _arrays(10)
    np.savez(tmp_path / "stored.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "stored.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    for name, mapped in (("stored.npz", True), ("packed.npz", False)):
        ds = open_dataset(str(tmp_path / name), [SPEC_X, SPEC_M], labels="y")
        batches = list(ds.batches(3))
        for key in ("x", "m", "y"):
            assert all(_has_memmap_base(b[key]) == mapped for b in batches), (name, key)
            np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), arrays[key])


def test_memory_mapped_member_after_another(tmp_path):
    """The second member of a stored zip starts at a non-zero offset: its data offset must still be right."""
    arrays = {"a": np.arange(40, dtype=np.float64).reshape(4, 10), "x": np.arange(12, dtype=np.float32).reshape(4, 3)}
    np.savez(tmp_path / "s.npz", **arrays)
    ds = open_dataset(str(tmp_path / "s.npz"), [SPEC_X, InputSpec("a", np.dtype(np.float64), ("N", 10))])
    got = list(ds.batches(3))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), arrays["x"])
    np.testing.assert_array_equal(np.concatenate([b["a"] for b in got]), arrays["a"])


def test_symbolic_and_unknown_dims_accept_any_size(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 7), np.float32))
    ds = open_dataset(str(tmp_path / "a.npz"), [InputSpec("x", F32, (1, None))])  # axis 0: the batch, any size
    assert ds.num_samples == 2


def test_a_second_check_adds_names(tmp_path):
    np.savez(tmp_path / "a.npz", **_arrays(4))
    ds = Dataset(str(tmp_path / "a.npz"), role="test data")
    ds.check([SPEC_X])
    ds.check([SPEC_M], labels="y")
    assert ds.names == ("x", "m", "y") and ds.num_samples == 4


# -- errors -----------------------------------------------------------------------------------------------------


def _error(path, specs=(SPEC_X,), labels=None, role="calibration data") -> str:
    with pytest.raises(OptcError) as info:
        open_dataset(str(path), list(specs), labels=labels, role=role)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{role} '{path}'"), message
    return message


def test_error_missing_input(tmp_path):
    np.savez(tmp_path / "c.npz", a=np.zeros((2, 3), np.float32), b=np.zeros(2))
    assert _error(tmp_path / "c.npz").endswith("has no array for input 'x' (it has: a, b)")


def test_error_missing_input_in_one_file_of_a_directory(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3), np.float32))
    np.savez(tmp_path / "b.npz", z=np.zeros((2, 3), np.float32))
    assert _error(tmp_path).endswith(": file 'b.npz' has no array for input 'x' (it has: z)")


def test_error_wrong_dtype(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3), np.float64))
    assert _error(tmp_path / "c.npz").endswith("array 'x' is float64; the model's input 'x' is float32")


@pytest.mark.parametrize("shape", [(2, 4), (2, 3, 1), (3,)])
def test_error_wrong_shape(tmp_path, shape):
    np.savez(tmp_path / "c.npz", x=np.zeros(shape, np.float32))
    message = _error(tmp_path / "c.npz")
    assert f"array 'x' is float32 [{','.join(map(str, shape))}]; the model's input takes float32 [N,3]" in message


def test_error_scalar_array(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.float32(1))
    assert "array 'x' is a scalar" in _error(tmp_path / "c.npz", [InputSpec("x", F32, ())])


def test_error_batch_disagrees_within_a_file(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3), np.float32), y=np.zeros(3, np.int64))
    assert _error(tmp_path / "c.npz", labels="y").endswith(
        "array 'y' has 3 samples on axis 0, the file's other arrays 2")


def test_error_empty(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((0, 3), np.float32))
    assert _error(tmp_path / "c.npz", role="test data").endswith("holds no samples")


def test_empty_file_beside_others_is_fine(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((0, 3), np.float32))
    np.savez(tmp_path / "b.npz", x=np.ones((2, 3), np.float32))
    ds = open_dataset(str(tmp_path), [SPEC_X])
    assert ds.num_samples == 2
    assert [len(b["x"]) for b in ds.batches()] == [2]


def test_error_missing_labels(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3), np.float32))
    assert _error(tmp_path / "c.npz", labels="y").endswith("has no array for labels 'y' (it has: x)")


def test_error_corrupt_file(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"not a zip at all")
    assert "is not a valid .npz file" in _error(tmp_path / "c.npz")


def test_error_corrupt_member_header(tmp_path):
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY garbage")
    assert "is not a valid .npz file: array 'x'" in _error(tmp_path / "c.npz")


def test_error_damaged_data_is_reported_when_read(tmp_path):
    """Headers fine, compressed data damaged in the middle: reading a batch fails, as a one-line OptcError."""
    x = np.random.default_rng(0).standard_normal((20000, 3)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    data = bytearray((tmp_path / "c.npz").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    (tmp_path / "c.npz").write_bytes(bytes(data))
    ds = open_dataset(str(tmp_path / "c.npz"), [SPEC_X])
    with pytest.raises(OptcError, match=r"^calibration data '.*c.npz' cannot be read: [^\n]*$"):
        list(ds.batches(1000))


def test_error_pickled_objects(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.array([{"a": 1}, None], dtype=object))
    assert "holds Python objects" in _error(tmp_path / "c.npz")


def test_error_missing_path_and_empty_directory(tmp_path):
    assert _error(tmp_path / "nothing.npz").endswith("does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data here")
    assert _error(tmp_path / "empty").endswith("is a directory with no .npz files")
