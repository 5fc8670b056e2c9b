"""Constant payloads: lazy views of ONNX tensors, numpy arrays and memory-mapped external data.

Nothing here reads a weight's bytes until `numpy()` is called. External-data tensors are memory-mapped
and, on save, streamed to the output file in chunks (`ExternalTensor.copy_to`), so weights that nothing
changed are never materialized.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OptcError
from .types import DataType, UnsupportedTypeFeature

_CHUNK = 16 << 20


class Tensor:
    """Base class of constant payloads: element type, static shape, and the data on demand."""

    __slots__ = ("name", "doc_string")

    dtype: DataType
    shape: tuple

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (ml_dtypes arrays for bfloat16, float8, int4, ...)."""
        raise NotImplementedError

    def to_proto(self, name: str) -> onnx.TensorProto:
        """An ONNX TensorProto holding this tensor under `name`."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the data in ONNX's packed layout."""
        bits = DataType(self.dtype).itemsize_bits
        return (self.size * bits + 7) // 8 if bits else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({DataType(self.dtype).short_name}{list(self.shape)})"


class ProtoTensor(Tensor):
    """A TensorProto held as parsed; decoded to numpy only when asked."""

    __slots__ = ("proto",)

    def __init__(self, proto: onnx.TensorProto):
        self.proto = proto
        self.name = proto.name
        self.doc_string = proto.doc_string

    @property
    def dtype(self) -> DataType:  # type: ignore[override]
        return DataType(self.proto.data_type)

    @property
    def shape(self) -> tuple:  # type: ignore[override]
        return tuple(self.proto.dims)

    def numpy(self) -> np.ndarray:
        return numpy_helper.to_array(self.proto)

    def to_proto(self, name: str) -> onnx.TensorProto:
        if self.proto.name == name:
            return self.proto
        p = onnx.TensorProto()
        p.CopyFrom(self.proto)
        p.name = name
        return p


class NumpyTensor(Tensor):
    """A tensor backed by a numpy array (results of folding, new weights)."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray, dtype: DataType | None = None, name: str = ""):
        array = np.asarray(array)
        if not array.dtype.isnative:  # ONNX is little-endian; onnx's helpers reject big-endian dtypes
            array = array.astype(array.dtype.newbyteorder("="))
        self.array = array
        self.dtype = DataType.from_numpy(self.array.dtype) if dtype is None else DataType(dtype)
        self.name = name
        self.doc_string = ""

    @property
    def shape(self) -> tuple:  # type: ignore[override]
        return tuple(int(d) for d in self.array.shape)

    def numpy(self) -> np.ndarray:
        return self.array

    def to_proto(self, name: str) -> onnx.TensorProto:
        p = numpy_helper.from_array(self.array, name)
        if p.data_type != self.dtype:
            p = onnx.helper.make_tensor(name, int(self.dtype), self.shape, self.array.tobytes(), raw=True)
        if self.doc_string:
            p.doc_string = self.doc_string
        return p


class ExternalTensor(Tensor):
    """A tensor whose bytes live in an external-data file: memory-mapped on read, streamed on save."""

    __slots__ = ("dtype", "shape", "location", "path", "offset", "length", "extra", "_proto")

    def __init__(self, proto: onnx.TensorProto, base_dir: str):
        info = {e.key: e.value for e in proto.external_data}
        self.location = info.get("location", "")
        self.path = os.path.join(base_dir, self.location)
        self.offset = _external_int(info, "offset", proto.name)
        self.dtype = DataType(proto.data_type)
        self.shape = tuple(proto.dims)
        length = _external_int(info, "length", proto.name)
        self.length = self.nbytes if length is None else length
        self.extra = {k: v for k, v in info.items() if k not in ("location", "offset", "length")}
        self.name = proto.name
        self.doc_string = proto.doc_string
        self._proto = proto

    def check_exists(self) -> None:
        """Raise FileNotFoundError (or ValueError) if the data file is missing or too short."""
        size = os.path.getsize(self.path)
        if self.offset + self.length > size:
            raise ValueError(
                f"external data for '{self.name}' needs bytes {self.offset}..{self.offset + self.length} "
                f"of {self.path}, which has {size}"
            )

    def raw_view(self) -> np.ndarray:
        """The bytes, memory-mapped read-only."""
        if self.length == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.length,))

    def numpy(self) -> np.ndarray:
        dtype = self.dtype
        if dtype.itemsize_bits % 8 == 0 and dtype != DataType.STRING:
            np_dtype = dtype.numpy().newbyteorder("<")
            return self.raw_view().view(np_dtype).reshape(self.shape)
        p = onnx.TensorProto()
        p.data_type = int(dtype)
        p.dims.extend(self.shape)
        p.raw_data = bytes(self.raw_view())
        return numpy_helper.to_array(p)

    def copy_to(self, out: BinaryIO) -> None:
        """Stream the bytes into an open file in chunks, without materializing them."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            remaining = self.length
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ValueError(f"external data file {self.path} ended early")
                out.write(chunk)
                remaining -= len(chunk)

    def to_proto(self, name: str) -> onnx.TensorProto:
        """A proto that still points at the original external-data file (relative to its model)."""
        if self._proto.name == name:
            return self._proto
        p = onnx.TensorProto()
        p.CopyFrom(self._proto)
        p.name = name
        return p

    def inline_proto(self, name: str) -> onnx.TensorProto:
        """A proto with the data inlined (reads the bytes)."""
        p = onnx.TensorProto()
        p.name = name
        p.data_type = int(self.dtype)
        p.dims.extend(self.shape)
        p.raw_data = bytes(self.raw_view())
        if self.doc_string:
            p.doc_string = self.doc_string
        p.metadata_props.extend(self._proto.metadata_props)
        return p

    def external_proto(self, name: str, location: str, offset: int) -> onnx.TensorProto:
        """A proto that points at `location` + `offset` (the caller writes the bytes there)."""
        extra = {k: v for k, v in self.extra.items() if k != "checksum"}
        p = external_proto(name, self.dtype, self.shape, self.doc_string, location, offset, self.length, extra)
        p.metadata_props.extend(self._proto.metadata_props)
        return p


def _external_int(info: dict[str, str], key: str, name: str) -> int | None:
    """The `offset` or `length` entry of an external-data tensor: None if absent (or empty), else a non-negative
    decimal integer; ValueError for anything else ("-4", "1.5", "0x10", " 8")."""
    value = info.get(key)
    if not value:
        return None if key == "length" else 0
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"external data {key} '{value}' of tensor '{name}' is not a non-negative integer")
    return int(value)


def external_proto(name: str, dtype: DataType, shape: tuple, doc_string: str, location: str, offset: int,
                   length: int, extra: dict[str, str] | None = None) -> onnx.TensorProto:
    """A TensorProto whose data lives at `offset` in the external file `location`."""
    p = onnx.TensorProto()
    p.name = name
    p.data_type = int(dtype)
    p.dims.extend(shape)
    if doc_string:
        p.doc_string = doc_string
    p.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(length), **(extra or {})}
    for k, v in entries.items():
        e = p.external_data.add()
        e.key, e.value = k, v
    return p


class SparseTensor:
    """An ONNX sparse tensor, kept as its proto (values and indices are dense tensors inside it)."""

    __slots__ = ("proto",)

    def __init__(self, proto: onnx.SparseTensorProto):
        self.proto = proto

    @property
    def name(self) -> str:
        return self.proto.values.name

    @property
    def dtype(self) -> DataType:
        return DataType(self.proto.values.data_type)

    @property
    def shape(self) -> tuple:
        return tuple(self.proto.dims)

    @property
    def nbytes(self) -> int:
        return self.proto.values.ByteSize() + self.proto.indices.ByteSize()

    def numpy(self) -> np.ndarray:
        """The dense equivalent."""
        values = numpy_helper.to_array(self.proto.values)
        indices = numpy_helper.to_array(self.proto.indices)
        dense = np.zeros(self.shape, dtype=values.dtype)
        if indices.ndim == 1:
            dense.reshape(-1)[indices] = values
        else:
            dense[tuple(indices.T)] = values
        return dense

    def to_proto(self, name: str) -> onnx.SparseTensorProto:
        if self.proto.values.name == name:
            return self.proto
        p = onnx.SparseTensorProto()
        p.CopyFrom(self.proto)
        p.values.name = name
        return p

    def __repr__(self) -> str:
        return f"SparseTensor({self.dtype.short_name}{list(self.shape)})"


_ELEMENT_TYPES = frozenset(int(d) for d in DataType if d != DataType.UNDEFINED)


def tensor_from_proto(proto: onnx.TensorProto, base_dir: str | None) -> Tensor:
    """A lazy tensor for a proto: external data becomes an `ExternalTensor`."""
    if proto.data_type not in _ELEMENT_TYPES:
        raise ValueError(f"tensor '{proto.name}' has element type {proto.data_type}, which is not an ONNX type")
    if proto.HasField("segment"):
        raise UnsupportedTypeFeature(f"tensor '{proto.name}' is a segment of a larger tensor; segments are not "
                                     f"supported")
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        if base_dir is None:
            raise OptcError(f"tensor '{proto.name}' uses external data, but the model was not loaded from a file "
                            f"(load it by its path, so that its data can be found)")
        return ExternalTensor(proto, base_dir)
    return ProtoTensor(proto)
