"""Element types and value types of optc's IR.

`DataType` mirrors ONNX's `TensorProto.DataType` (every element type, including bfloat16, the float8, float6,
float4, int4 and int2 families). Value types are `TensorType`, `SparseTensorType`, `SequenceType`,
`OptionalType` and `MapType`; a shape is a tuple of dims, each an `int`, a symbolic name (`str`) or `None`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

Dim = int | str | None
Shape = tuple  # tuple[Dim, ...]


class DataType(enum.IntEnum):
    """ONNX element types, numbered as in `onnx.TensorProto.DataType`."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26
    FLOAT6E2M3 = 27
    FLOAT6E3M2 = 28

    @property
    def short_name(self) -> str:
        """Lower-case name used by the text form, e.g. `float32`, `bfloat16`, `int4`."""
        return _SHORT_NAMES.get(self, self.name.lower())

    def numpy(self) -> np.dtype:
        """The numpy dtype that holds this element type (ml_dtypes for the narrow floats and ints)."""
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(int(self)))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"no numpy dtype for {self.name}") from exc

    @property
    def itemsize_bits(self) -> int:
        """Bits per element (4 for int4, 2 for int2, ...)."""
        if self in (DataType.UINT4, DataType.INT4, DataType.FLOAT4E2M1):
            return 4
        if self in (DataType.UINT2, DataType.INT2):
            return 2
        if self in (DataType.FLOAT6E2M3, DataType.FLOAT6E3M2):
            return 6
        if self == DataType.STRING:
            return 0
        return self.numpy().itemsize * 8

    @property
    def is_floating(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTEGERS

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DataType:
        """The element type for a numpy dtype."""
        dtype = np.dtype(dtype)
        if not dtype.isnative:
            dtype = dtype.newbyteorder("=")
        return cls(helper.np_dtype_to_tensor_dtype(dtype))


_SHORT_NAMES = {
    DataType.FLOAT: "float32",
    DataType.DOUBLE: "float64",
    DataType.FLOAT16: "float16",
}
_FLOATS = {
    DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16, DataType.BFLOAT16, DataType.FLOAT8E4M3FN,
    DataType.FLOAT8E4M3FNUZ, DataType.FLOAT8E5M2, DataType.FLOAT8E5M2FNUZ, DataType.FLOAT4E2M1,
    DataType.FLOAT8E8M0, DataType.FLOAT6E2M3, DataType.FLOAT6E3M2,
}
_INTEGERS = {
    DataType.UINT8, DataType.INT8, DataType.UINT16, DataType.INT16, DataType.INT32, DataType.INT64,
    DataType.UINT32, DataType.UINT64, DataType.UINT4, DataType.INT4, DataType.UINT2, DataType.INT2,
}


def _fmt_shape(shape: Shape | None) -> str:
    if shape is None:
        return ""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class TensorType:
    """A dense tensor: element type and shape (None: rank unknown)."""

    dtype: DataType
    shape: Shape | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        return f"{DataType(self.dtype).short_name}{_fmt_shape(self.shape)}"


@dataclass(frozen=True, slots=True)
class SparseTensorType:
    """A sparse tensor."""

    dtype: DataType
    shape: Shape | None = None

    def __str__(self) -> str:
        return f"sparse<{DataType(self.dtype).short_name}{_fmt_shape(self.shape)}>"


@dataclass(frozen=True, slots=True)
class SequenceType:
    """A sequence whose elements have type `elem` (None: unknown)."""

    elem: object = None

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class OptionalType:
    """An optional value of type `elem`."""

    elem: object = None

    def __str__(self) -> str:
        return f"optional<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class MapType:
    """A map from `key` element type to `value` type."""

    key: DataType
    value: object

    def __str__(self) -> str:
        return f"map<{DataType(self.key).short_name},{self.value}>"


ValueType = TensorType | SparseTensorType | SequenceType | OptionalType | MapType


def _shape_from_proto(shape_proto: onnx.TensorShapeProto) -> Shape:
    dims = []
    for d in shape_proto.dim:
        if d.denotation:
            raise UnsupportedTypeFeature("dimension denotations are not supported")
        which = d.WhichOneof("value")
        if which == "dim_value":
            dims.append(d.dim_value)
        elif which == "dim_param":
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class UnsupportedTypeFeature(ValueError):
    """A part of an ONNX type optc does not represent (refused rather than dropped)."""


def _element_type(t: int) -> DataType:
    dt = _DATA_TYPES.get(t)
    if dt is None:
        raise ValueError(f"element type {t} is not an ONNX type")
    return dt


_DATA_TYPES = {int(d): d for d in DataType}


def type_from_proto(tp: onnx.TypeProto) -> ValueType | None:
    """Convert an ONNX TypeProto; None for an empty (unset) type."""
    if tp.denotation:
        raise UnsupportedTypeFeature("type denotations are not supported")
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        t = tp.tensor_type
        shape = _shape_from_proto(t.shape) if t.HasField("shape") else None
        return TensorType(_element_type(t.elem_type), shape)
    if which == "sparse_tensor_type":
        t = tp.sparse_tensor_type
        shape = _shape_from_proto(t.shape) if t.HasField("shape") else None
        return SparseTensorType(_element_type(t.elem_type), shape)
    if which == "sequence_type":
        st = tp.sequence_type
        return SequenceType(type_from_proto(st.elem_type) if st.HasField("elem_type") else None)
    if which == "optional_type":
        ot = tp.optional_type
        return OptionalType(type_from_proto(ot.elem_type) if ot.HasField("elem_type") else None)
    if which == "map_type":
        return MapType(_element_type(tp.map_type.key_type), type_from_proto(tp.map_type.value_type))
    if which is None:
        return None
    raise UnsupportedTypeFeature(f"value type '{which}' is not supported")


def _fill_shape(shape_proto: onnx.TensorShapeProto, shape: Shape) -> None:
    for d in shape:
        dim = shape_proto.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def fill_type_proto(tp: onnx.TypeProto, t: ValueType) -> None:
    """Write `t` into an (empty) ONNX TypeProto."""
    if isinstance(t, TensorType):
        tp.tensor_type.elem_type = int(t.dtype)
        if t.shape is not None:
            tp.tensor_type.shape.SetInParent()
            _fill_shape(tp.tensor_type.shape, t.shape)
    elif isinstance(t, SparseTensorType):
        tp.sparse_tensor_type.elem_type = int(t.dtype)
        if t.shape is not None:
            tp.sparse_tensor_type.shape.SetInParent()
            _fill_shape(tp.sparse_tensor_type.shape, t.shape)
    elif isinstance(t, SequenceType):
        tp.sequence_type.SetInParent()
        if t.elem is not None:
            fill_type_proto(tp.sequence_type.elem_type, t.elem)
    elif isinstance(t, OptionalType):
        tp.optional_type.SetInParent()
        if t.elem is not None:
            fill_type_proto(tp.optional_type.elem_type, t.elem)
    elif isinstance(t, MapType):
        tp.map_type.key_type = int(t.key)
        fill_type_proto(tp.map_type.value_type, t.value)
    else:
        raise TypeError(f"not a value type: {t!r}")


def type_to_proto(t: ValueType) -> onnx.TypeProto:
    """Convert a value type to an ONNX TypeProto."""
    tp = onnx.TypeProto()
    fill_type_proto(tp, t)
    return tp
