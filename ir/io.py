"""Loading and saving models: validation with one-line errors, external data, atomic writes.

`load` never reads external-data weights (they are memory-mapped on demand). `save` writes to temporary files
beside the target and renames them into place, streams external weights from their source file, and switches
to external data on its own when the model would not fit protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from ..errors import OptcError
from .core import Model
from .onnx_export import to_onnx_bytes
from .onnx_import import from_onnx
from .tensors import ExternalTensor, ProtoTensor, Tensor, external_proto
from .types import DataType

PROTOBUF_LIMIT = 2**31 - 1
_SAFE_INLINE_BYTES = 1_800_000_000
_ALIGN = 4096

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def load(source: ModelSource) -> Model:
    """Load a model from a path, serialized bytes, or a ModelProto. Raises OptcError on bad input."""
    if isinstance(source, onnx.ModelProto):
        _check_versions(source)
        model = from_onnx(source)
    elif isinstance(source, bytes | bytearray):
        proto = _parse(bytes(source), "<bytes>")
        if _EXTERNAL_MARK in source:
            _inline_external_attributes(proto, None, "<bytes>")
        model = from_onnx(proto)
    else:
        path = os.fspath(source)
        data = _read_model_file(path)
        proto = _parse(data, path)
        external = _EXTERNAL_MARK in data
        del data
        base_dir = os.path.dirname(os.path.abspath(path))
        if external:
            _inline_external_attributes(proto, base_dir, path)
        model = from_onnx(proto, base_dir=base_dir)
        graphs = list(model.graphs())  # one walk for both checks
        _check_external_data(model, path, graphs)
        _check_ops(model, graphs)
        return model
    _check_ops(model)
    return model


# Every external-data tensor has an entry with key "location"; serialized, it holds these bytes (a fast test).
_EXTERNAL_MARK = b"\n\x08location"


def _inline_external_attributes(proto: onnx.ModelProto, base_dir: str | None, label: str) -> None:
    """Read the external data of attribute tensors (Constant values saved with `convert_attribute=True`) into
    the proto: only initializers are streamed from their files, and a copy saved elsewhere must not point at
    a data file that is not there."""
    from onnx.external_data_helper import _get_attribute_tensors, load_external_data_for_tensor, uses_external_data

    for t in _get_attribute_tensors(proto):
        if not uses_external_data(t):
            continue
        if base_dir is None:
            raise OptcError("a node attribute's tensor uses external data, but the model was not loaded from a "
                            "file (load it by its path, so that its data can be found)")
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if not os.path.isfile(os.path.join(base_dir, location)):
            raise OptcError(f"external data file '{os.path.join(base_dir, location)}' for a node attribute's tensor "
                            f"of '{label}' does not exist")
        try:
            load_external_data_for_tensor(t, base_dir)
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise OptcError(f"external data file '{location}' of a node attribute's tensor in '{label}' cannot be "
                            f"read: {getattr(exc, 'strerror', None) or exc}") from None


def _read_model_file(path: str) -> bytes:
    if not os.path.exists(path):
        raise OptcError(f"cannot read '{path}': no such file")
    if os.path.isdir(path):
        raise OptcError(f"cannot read '{path}': it is a directory, not an ONNX file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise OptcError(f"cannot read '{path}': {exc.strerror}") from None
    if not data:
        raise OptcError(f"cannot read '{path}': the file is empty")
    return data


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise OptcError(f"'{label}' is not a valid ONNX model: the protobuf is truncated or corrupt") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise OptcError(f"'{label}' is not a valid ONNX model: no graph or IR version (is it an ONNX file?)")
    _check_versions(proto)
    return proto


def _check_versions(proto: onnx.ModelProto) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise OptcError(f"model IR version {proto.ir_version} is newer than this onnx supports "
                        f"({onnx.IR_VERSION}); upgrade onnx")
    known = onnx.defs.onnx_opset_version()
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > known:
            raise OptcError(f"model imports opset {o.version} of the default ONNX domain, newer than this onnx "
                            f"knows ({known}); upgrade onnx")


def _check_external_data(model: Model, path: str, graphs: list | None = None) -> None:
    base = os.path.dirname(os.path.abspath(path))
    for g in graphs if graphs is not None else model.graphs():
        for v in g.initializers.values():
            t = v.const
            if isinstance(t, ExternalTensor):
                data_path = os.path.normpath(t.path)
                if os.path.commonpath([data_path, base]) != base:  # "../x" or "/etc/x": never read (nor copy) it
                    raise OptcError(f"external data of tensor '{v.name}' of '{path}' is at '{data_path}', outside "
                                    f"the model's directory; refusing to read it")
                if os.path.isdir(data_path):
                    raise OptcError(f"external data file '{data_path}' for tensor '{v.name}' of '{path}' is a "
                                    f"directory")
                try:
                    t.check_exists()
                except FileNotFoundError:
                    raise OptcError(f"external data file '{t.path}' for tensor '{v.name}' of '{path}' "
                                    f"does not exist") from None
                except ValueError as exc:
                    raise OptcError(str(exc)) from None


def _check_ops(model: Model, graphs: list | None = None) -> None:
    known = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    for g in graphs if graphs is not None else model.graphs():
        for domain, op_type in g.op_keys():
            if domain in ("", "ai.onnx") and known is not None:
                if not onnx.defs.has(op_type, domain) and (domain, op_type) not in _local_functions(model):
                    raise OptcError(f"unknown op '{op_type}' in the default ONNX domain")


def _local_functions(model: Model) -> set[tuple[str, str]]:
    return {(d, n) for d, n, _ in model.functions}


# -- saving -------------------------------------------------------------------------------------------


def save(model: Model, path: str | os.PathLike, external_data: bool | None = None,
         size_threshold: int = 1024) -> None:
    """Save atomically. `external_data`: True writes tensors of at least `size_threshold` bytes to
    `<file>.data`; False inlines everything; None (default) keeps external data if the model has some
    and switches to it when the model would pass protobuf's 2 GB limit."""
    path = os.fspath(path)
    target_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(target_dir):
        raise OptcError(f"cannot write '{path}': directory '{target_dir}' does not exist")
    if external_data is None:
        external_data = _wants_external(model)
    temps: list[str] = []
    try:
        if external_data:
            location = os.path.basename(path) + ".data"
            data_tmp = _temp_beside(path, temps)
            with open(data_tmp, "wb") as f:
                writer = _ExternalWriter(f, location, size_threshold)
                data = _serialize(model, writer)
            moves = [(data_tmp, os.path.join(target_dir, location))]
            if not writer.offset:  # every tensor stayed inline: no empty data file
                moves = []
                temps.remove(data_tmp)
                os.unlink(data_tmp)
        else:
            data = _serialize(model, _inline_writer)
            moves = []
        model_tmp = _temp_beside(path, temps)
        with open(model_tmp, "wb") as f:
            f.write(data)
        # The data file goes first; should the model's rename fail, the previous data file is put back (the
        # previous model, still in place, points into it) or, if there was none, the new one is removed.
        restore: list[tuple[str | None, str]] = []
        try:
            for src, dst in moves:
                backup = None
                if os.path.exists(dst):
                    backup = _temp_beside(path, temps)
                    os.replace(dst, backup)
                restore.append((backup, dst))
                os.replace(src, dst)
            os.replace(model_tmp, path)
        except BaseException:
            for backup, dst in reversed(restore):
                try:
                    if backup:
                        os.replace(backup, dst)
                    else:
                        os.unlink(dst)
                except OSError:
                    pass
            raise
        temps.clear()
        if moves:  # tensors read from the data file just replaced (saving over the model's own path) now
            new_data = os.path.abspath(moves[0][1])  # find their bytes at their offsets in the new file
            for t, offset in writer.placed:
                if os.path.abspath(t.path) == new_data:
                    t.offset = offset
        for backup, _ in restore:
            if backup:
                try:
                    os.unlink(backup)
                except OSError:
                    pass
    except OSError as exc:
        raise OptcError(f"cannot write '{path}': {exc.strerror or exc}") from None
    finally:
        for t in temps:
            try:
                os.unlink(t)
            except OSError:
                pass


def _serialize(model: Model, writer) -> bytes:
    """The model's bytes; OptcError past protobuf's 2 GB limit (checked on the result: no ByteSize pass)."""
    try:
        data = to_onnx_bytes(model, writer)
    except EncodeError:  # what protobuf raises past 2 GB
        data = None
    if data is None or len(data) > PROTOBUF_LIMIT:
        raise OptcError("the model is over protobuf's 2 GB limit; save it with external data")
    return data


def _temp_beside(path: str, temps: list[str]) -> str:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{Path(path).name}.",
                               suffix=".tmp")
    os.close(fd)
    temps.append(tmp)
    return tmp


def _wants_external(model: Model) -> bool:
    """True if the model has external data, or its estimated size passes `_SAFE_INLINE_BYTES`."""
    total = 0
    for g in model.graphs():
        total += 64 * len(g)
        for v in g.initializers.values():
            t = v.const
            if isinstance(t, ExternalTensor):
                return True
            total += _payload_size(t)
    return total > _SAFE_INLINE_BYTES


def _payload_size(t) -> int:
    """About the bytes a tensor takes in the model file (a parsed proto knows its size: no dtype math)."""
    if isinstance(t, ProtoTensor):
        return t.proto.ByteSize()
    return getattr(t, "nbytes", 0)


def _inline_writer(name: str, tensor: Tensor) -> onnx.TensorProto:
    if isinstance(tensor, ExternalTensor):
        return tensor.inline_proto(name)
    return tensor.to_proto(name)


class _ExternalWriter:
    """Writes tensors of at least `threshold` bytes into one data file, 4 KiB-aligned."""

    def __init__(self, f, location: str, threshold: int):
        self.f = f
        self.location = location
        self.threshold = threshold
        self.offset = 0
        self.placed: list[tuple[ExternalTensor, int]] = []  # streamed tensors and their offsets in the new file

    def _align(self) -> None:
        pad = -self.offset % _ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad

    def __call__(self, name: str, tensor: Tensor) -> onnx.TensorProto:
        if isinstance(tensor, ExternalTensor):
            self._align()
            start = self.offset
            tensor.copy_to(self.f)
            self.offset += tensor.length
            self.placed.append((tensor, start))
            return tensor.external_proto(name, self.location, start)
        if tensor.dtype == DataType.STRING or tensor.nbytes < self.threshold:
            return tensor.to_proto(name)
        proto = tensor.proto if isinstance(tensor, ProtoTensor) else tensor.to_proto(name)
        raw = proto.raw_data if proto.HasField("raw_data") else _packed_bytes(proto)
        self._align()
        start = self.offset
        self.f.write(raw)
        self.offset += len(raw)
        doc = tensor.doc_string or ""
        out = external_proto(name, tensor.dtype, tensor.shape, doc, self.location, start, len(raw))
        out.metadata_props.extend(proto.metadata_props)
        return out


def _packed_bytes(proto: onnx.TensorProto) -> bytes:
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(proto)).raw_data
