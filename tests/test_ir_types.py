"""Element types, value types and constant payloads: numpy <-> TensorProto <-> optc round trips."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from optc.ir import (
    DataType,
    ExternalTensor,
    MapType,
    NumpyTensor,
    OptionalType,
    ProtoTensor,
    SequenceType,
    SparseTensor,
    SparseTensorType,
    TensorType,
    from_onnx,
    to_onnx,
)
from optc.ir.types import UnsupportedTypeFeature, type_from_proto, type_to_proto

ALL = [dt for dt in DataType if dt != DataType.UNDEFINED]
NUMERIC = [dt for dt in ALL if dt != DataType.STRING]

# Values every element type represents exactly.
_SAMPLES = {
    DataType.BOOL: [True, False, True, True, False],
    DataType.FLOAT8E8M0: [0.5, 1.0, 2.0, 4.0, 0.25],  # exponent only: no zero, no sign
    DataType.UINT2: [0, 1, 2, 3, 1],
    DataType.INT2: [-2, -1, 0, 1, -2],
    DataType.UINT4: [0, 1, 7, 15, 3],
    DataType.INT4: [-8, -1, 0, 7, 3],
    DataType.FLOAT4E2M1: [0.0, 0.5, -1.5, 6.0, 3.0],
}


def sample(dt: DataType, shape=(5,)) -> np.ndarray:
    values = _SAMPLES.get(dt)
    if values is None:
        values = [0, 1, 2, -1, 3] if not dt.name.startswith("U") else [0, 1, 2, 5, 3]
        if dt.is_floating:
            values = [0.0, 0.5, -1.5, 2.0, 3.0]
        if dt.name.startswith("COMPLEX"):
            values = [0, 1 + 2j, -1.5j, 2, 3]
    arr = np.array(values)
    return arr.astype(dt.numpy()).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ---------------------------------------------------------------------------------------------------------------
# DataType
# ---------------------------------------------------------------------------------------------------------------
def test_datatype_matches_onnx_enum():
    for name, number in onnx.TensorProto.DataType.items():
        assert DataType[name] == number, name
    assert len(DataType) == len(onnx.TensorProto.DataType.items())


@pytest.mark.parametrize("dt", ALL, ids=lambda d: d.name)
def test_datatype_numpy_round_trip(dt):
    np_dtype = dt.numpy()
    assert DataType.from_numpy(np_dtype) == dt
    bits = dt.itemsize_bits
    if dt == DataType.STRING:
        assert bits == 0
    elif dt in (DataType.UINT4, DataType.INT4, DataType.FLOAT4E2M1):
        assert bits == 4
    elif dt in (DataType.UINT2, DataType.INT2):
        assert bits == 2
    elif dt in (DataType.FLOAT6E2M3, DataType.FLOAT6E3M2):
        assert bits == 6
    else:
        assert bits == np_dtype.itemsize * 8
    assert not (dt.is_floating and dt.is_integer)


def test_datatype_classification():
    assert DataType.BFLOAT16.is_floating and DataType.FLOAT8E5M2FNUZ.is_floating and DataType.FLOAT4E2M1.is_floating
    assert DataType.INT4.is_integer and DataType.UINT2.is_integer and not DataType.BOOL.is_integer
    assert DataType.INT2.itemsize_bits == 2 and DataType.FLOAT6E2M3.itemsize_bits == 6
    assert DataType.FLOAT.short_name == "float32" and DataType.BFLOAT16.short_name == "bfloat16"
    assert DataType.FLOAT8E4M3FN.numpy() == np.dtype(ml_dtypes.float8_e4m3fn)
    assert DataType.from_numpy(np.dtype(ml_dtypes.float8_e4m3fnuz)) == DataType.FLOAT8E4M3FNUZ
    with pytest.raises(ValueError):
        DataType.UNDEFINED.numpy()


# ---------------------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", NUMERIC, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(5,), (1, 5), ()], ids=["odd", "2d", "scalar"])
def test_tensor_round_trip(dt, shape):
    arr = sample(dt) if shape != () else sample(dt)[:1].reshape(())
    if shape == (1, 5):
        arr = arr.reshape(shape)
    t = NumpyTensor(arr)
    assert t.dtype == dt and t.shape == arr.shape
    proto = t.to_proto("w")
    assert proto.name == "w" and proto.data_type == int(dt) and tuple(proto.dims) == arr.shape
    assert same(numpy_helper.to_array(proto), arr)
    pt = ProtoTensor(proto)
    assert pt.dtype == dt and pt.shape == arr.shape
    assert same(pt.numpy(), arr)
    assert pt.to_proto("w") is proto
    renamed = pt.to_proto("other")
    assert renamed.name == "other" and proto.name == "w"
    assert t.nbytes == (arr.size * dt.itemsize_bits + 7) // 8


BYTE_SIZED = [dt for dt in NUMERIC if dt.itemsize_bits % 8 == 0 and dt.itemsize_bits <= 64 and dt != DataType.BOOL]


@pytest.mark.parametrize("dt", BYTE_SIZED, ids=lambda d: d.name)
def test_tensor_explicit_dtype_over_raw_storage(dt):
    """A NumpyTensor whose array is plain storage (e.g. uint8) but whose dtype says otherwise."""
    arr = sample(dt)
    raw = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    t = NumpyTensor(raw, dtype=dt)
    assert same(ProtoTensor(t.to_proto("w")).numpy(), arr)


def test_string_tensor_round_trip():
    arr = np.array(["a", "bc", ""], dtype=object)
    t = NumpyTensor(arr)
    assert t.dtype == DataType.STRING
    back = ProtoTensor(t.to_proto("s")).numpy()
    assert [x.decode() if isinstance(x, bytes) else x for x in back.tolist()] == ["a", "bc", ""]


@pytest.mark.parametrize("dt", NUMERIC, ids=lambda d: d.name)
def test_external_tensor_round_trip(tmp_path, dt):
    arr = sample(dt)
    proto = NumpyTensor(arr).to_proto("w")
    raw = proto.raw_data or numpy_helper.from_array(arr).raw_data
    assert raw, dt
    pad = b"\x00" * 3
    (tmp_path / "data.bin").write_bytes(pad + raw)
    ext = onnx.TensorProto()
    ext.name, ext.data_type = "w", int(dt)
    ext.dims.extend(arr.shape)
    ext.data_location = onnx.TensorProto.EXTERNAL
    for k, v in {"location": "data.bin", "offset": "3", "length": str(len(raw))}.items():
        e = ext.external_data.add()
        e.key, e.value = k, v
    t = ExternalTensor(ext, str(tmp_path))
    assert t.nbytes == len(raw)
    t.check_exists()
    assert same(t.numpy(), arr)
    assert same(numpy_helper.to_array(t.inline_proto("w")), arr)


def test_sparse_tensor():
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp")
    indices = numpy_helper.from_array(np.array([1, 5], np.int64))
    sp = SparseTensor(onnx.helper.make_sparse_tensor(values, indices, [2, 3]))
    assert sp.dtype == DataType.FLOAT and sp.shape == (2, 3) and sp.name == "sp"
    np.testing.assert_array_equal(sp.numpy(), [[0, 1, 0], [0, 0, 2]])
    indices2 = numpy_helper.from_array(np.array([[0, 1], [1, 2]], np.int64))
    sp2 = SparseTensor(onnx.helper.make_sparse_tensor(values, indices2, [2, 3]))
    np.testing.assert_array_equal(sp2.numpy(), [[0, 1, 0], [0, 0, 2]])
    assert sp.to_proto("other").values.name == "other" and sp.name == "sp"


@pytest.mark.parametrize("dt", NUMERIC, ids=lambda d: d.name)
def test_initializers_of_every_type_survive_model_round_trip(dt):
    arr = sample(dt)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", int(dt), [5])], [numpy_helper.from_array(arr, "w")],
    )
    mp = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 25)])
    m = from_onnx(mp)
    w = m.graph.initializers["w"]
    assert w.dtype == dt and same(w.const_value(), arr)
    w.const = NumpyTensor(w.const_value())
    back = to_onnx(m)
    assert same(numpy_helper.to_array(back.graph.initializer[0]), arr)
    assert back.graph.output[0].type.tensor_type.elem_type == int(dt)


# ---------------------------------------------------------------------------------------------------------------
# value types
# ---------------------------------------------------------------------------------------------------------------
TYPES = [
    TensorType(DataType.FLOAT, ("N", 3, None)),
    TensorType(DataType.BFLOAT16, ()),
    TensorType(DataType.INT4, None),
    TensorType(DataType.FLOAT8E4M3FN, (1, "seq")),
    SparseTensorType(DataType.FLOAT, (10, 10)),
    SparseTensorType(DataType.INT64, None),
    SequenceType(TensorType(DataType.FLOAT, ("B",))),
    SequenceType(None),
    SequenceType(SequenceType(TensorType(DataType.INT64, None))),
    OptionalType(TensorType(DataType.UINT8, (2,))),
    OptionalType(SequenceType(TensorType(DataType.STRING, None))),
    MapType(DataType.INT64, TensorType(DataType.FLOAT, None)),
    MapType(DataType.STRING, SequenceType(MapType(DataType.INT64, TensorType(DataType.DOUBLE, ())))),
]


@pytest.mark.parametrize("t", TYPES, ids=str)
def test_type_proto_round_trip(t):
    tp = type_to_proto(t)
    assert type_from_proto(tp) == t
    tp2 = onnx.TypeProto()
    tp2.ParseFromString(tp.SerializeToString())
    assert type_from_proto(tp2) == t


def test_type_proto_matches_onnx_helper():
    ref = onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", 3, None])
    assert type_from_proto(ref) == TensorType(DataType.FLOAT, ("N", 3, None))
    assert type_to_proto(TensorType(DataType.FLOAT, ("N", 3, None))) == ref
    seq = onnx.helper.make_sequence_type_proto(onnx.helper.make_tensor_type_proto(onnx.TensorProto.INT8, [2]))
    assert type_from_proto(seq) == SequenceType(TensorType(DataType.INT8, (2,)))
    opt = onnx.helper.make_optional_type_proto(onnx.helper.make_tensor_type_proto(onnx.TensorProto.INT8, None))
    assert type_from_proto(opt) == OptionalType(TensorType(DataType.INT8, None))
    mp = onnx.helper.make_map_type_proto(onnx.TensorProto.STRING, onnx.helper.make_tensor_type_proto(1, []))
    assert type_from_proto(mp) == MapType(DataType.STRING, TensorType(DataType.FLOAT, ()))


def test_unknown_rank_scalar_and_symbolic_dims_differ():
    unknown, scalar = TensorType(DataType.FLOAT), TensorType(DataType.FLOAT, ())
    assert unknown != scalar
    assert unknown.rank is None and scalar.rank == 0 and scalar.is_static and not unknown.is_static
    sym = TensorType(DataType.FLOAT, ("batch", 3))
    assert not sym.is_static and sym.rank == 2
    assert str(sym) == "float32[batch,3]" and str(TensorType(DataType.FLOAT, (None, 2))) == "float32[?,2]"
    assert not type_to_proto(unknown).tensor_type.HasField("shape")
    assert type_to_proto(scalar).tensor_type.HasField("shape")
    assert type_from_proto(onnx.TypeProto()) is None


def test_type_strings():
    assert str(SequenceType(TensorType(DataType.FLOAT, (2,)))) == "seq<float32[2]>"
    assert str(OptionalType(None)) == "optional<?>"
    assert str(MapType(DataType.INT64, TensorType(DataType.FLOAT))) == "map<int64,float32>"
    assert str(SparseTensorType(DataType.FLOAT, (3,))) == "sparse<float32[3]>"


def test_denotations_are_refused():
    tp = type_to_proto(TensorType(DataType.FLOAT, (2,)))
    tp.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    with pytest.raises(UnsupportedTypeFeature):
        type_from_proto(tp)
    tp2 = type_to_proto(TensorType(DataType.FLOAT, (2,)))
    tp2.denotation = "IMAGE"
    with pytest.raises(UnsupportedTypeFeature):
        type_from_proto(tp2)


def test_symbolic_dims_survive_model_round_trip():
    mp = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[batch, seq, 4] x) => (float[batch, seq, 4] y) { y = Relu(x) }
    """)
    m = from_onnx(mp)
    assert m.graph.inputs[0].type == TensorType(DataType.FLOAT, ("batch", "seq", 4))
    back = to_onnx(m)
    assert back.graph.input[0] == mp.graph.input[0]
    assert back.graph.output[0] == mp.graph.output[0]


def test_big_endian_arrays_are_normalized():
    arr = np.array([1.5, -2.0, 3.25], ">f4")
    assert DataType.from_numpy(arr.dtype) == DataType.FLOAT
    t = NumpyTensor(arr)
    assert t.dtype == DataType.FLOAT and t.array.dtype.isnative
    np.testing.assert_array_equal(ProtoTensor(t.to_proto("w")).numpy(), arr)


def test_non_contiguous_array():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3).T
    np.testing.assert_array_equal(ProtoTensor(NumpyTensor(arr).to_proto("w")).numpy(), arr)
