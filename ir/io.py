"""Loading and saving models: validation with one-line errors, external data, atomic writes.

`load` never reads external-data weights (they are memory-mapped on demand). `save` writes to temporary files
beside the target and renames them into place, streams external weights from their source file, and switches
to external data on its own when the model would not fit protobuf's 2 GB limit.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import stat

import onnx
from google.protobuf.message import DecodeError, EncodeError

from ..errors import OptcError
from .core import Model
from .onnx_export import to_onnx_parts
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
        places = _ExternalPlaces(path)
        if external:
            _inline_external_attributes(proto, base_dir, path, places)
        model = from_onnx(proto, base_dir=base_dir)
        graphs = list(model.graphs())  # one walk for both checks
        _check_external_data(model, path, graphs, places)
        _check_ops(model, graphs)
        return model
    _check_ops(model)
    return model


# Every external-data tensor has an entry with key "location"; serialized, it holds these bytes (a fast test).
_EXTERNAL_MARK = b"\n\x08location"


def _inline_external_attributes(proto: onnx.ModelProto, base_dir: str | None, label: str,
                                places: _ExternalPlaces | None = None) -> None:
    """Read the external data of attribute tensors (Constant values saved with `convert_attribute=True`) into
    the proto: only initializers are streamed from their files, and a copy saved elsewhere must not point at
    a data file that is not there. Their locations are checked as initializers' are (`_ExternalPlaces.resolve`)."""
    from onnx.external_data_helper import _get_attribute_tensors, uses_external_data

    for t in _get_attribute_tensors(proto):
        if not uses_external_data(t):
            continue
        if base_dir is None or places is None:
            raise OptcError("a node attribute's tensor uses external data, but the model was not loaded from a "
                            "file (load it by its path, so that its data can be found)")
        what = f"node attribute tensor '{t.name}'" if t.name else "a node attribute's tensor"
        try:
            ext = ExternalTensor(t, base_dir)
        except ValueError as exc:
            raise OptcError(f"invalid model: {exc}") from None
        real = places.resolve(ext, what)
        try:
            with open(real, "rb") as f:
                f.seek(ext.offset)
                raw = f.read(ext.length)
        except OSError as exc:
            raise OptcError(f"external data file '{ext.location}' of {what} in '{label}' cannot be read: "
                            f"{exc.strerror or exc}") from None
        if len(raw) != ext.length:
            raise OptcError(f"external data file '{ext.location}' of {what} in '{label}' ended early")
        t.raw_data = raw
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def _read_model_file(path: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise OptcError(f"cannot read '{path}': no such file") from None
    except IsADirectoryError:
        raise OptcError(f"cannot read '{path}': it is a directory, not an ONNX file") from None
    except OSError as exc:
        if os.path.isdir(path):  # where opening a directory is not IsADirectoryError
            raise OptcError(f"cannot read '{path}': it is a directory, not an ONNX file") from None
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
    known = _known_opset()
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > known:
            raise OptcError(f"model imports opset {o.version} of the default ONNX domain, newer than this onnx "
                            f"knows ({known}); upgrade onnx")


@functools.cache
def _known_opset() -> int:
    """The newest opset of the default domain this onnx knows (fixed for the process: asked once)."""
    return onnx.defs.onnx_opset_version()


def _check_external_data(model: Model, path: str, graphs: list | None = None,
                         places: _ExternalPlaces | None = None) -> None:
    """Every external-data initializer: inside the model's directory, in bounds, of its tensor's size, and not
    partly overlapping another's bytes (`_ExternalPlaces`). Nothing is read."""
    places = places if places is not None else _ExternalPlaces(path)
    for g in graphs if graphs is not None else model.graphs():
        for v in g.initializers.values():
            t = v.const
            if isinstance(t, ExternalTensor):
                places.resolve(t, f"tensor '{v.name}'")
    places.check_overlaps()


class _ExternalPlaces:
    """Where a model's external data is, checked: the one place that resolves and validates an external-data
    location (of initializers and of node attribute tensors alike) and remembers the byte ranges taken.

    A location must resolve, symbolic links included (a linked file, a linked directory on the way), to a
    regular file inside the model's directory: `realpath(dirname(model))`, or the directory of the model's own
    real file (`dirname(realpath(model))`). The second is what onnxruntime allows too: a Hugging Face cache
    links `snapshots/<rev>/model.onnx` and its data to files side by side in `blobs/`. onnx refuses every
    symbolic link, even one that stays inside; onnxruntime accepts those, and so do we.
    """

    def __init__(self, model_path: str):
        self.label = model_path
        apath = os.path.abspath(model_path)
        self.roots = tuple(dict.fromkeys((os.path.realpath(os.path.dirname(apath)),
                                          os.path.dirname(os.path.realpath(apath)))))
        self._files: dict[str, tuple[str, int]] = {}  # location -> (real path, size), each resolved once
        self._ranges: dict[str, list[tuple[int, int, str]]] = {}  # real path -> (offset, length, tensor)

    def resolve(self, t: ExternalTensor, what: str) -> str:
        """The real path of `t`'s data file, after checking the location and `t`'s byte range; OptcError if
        they are bad. Records the range for `check_overlaps`."""
        real, size = self._file(t, what)
        if t.dtype == DataType.STRING:
            raise OptcError(f"{what} of '{self.label}' is a string tensor stored as external data; string "
                            f"tensors have no raw byte layout to store there")
        if t.length != t.nbytes:
            raise OptcError(f"external data of {what} of '{self.label}' has length {t.length}, but its type and "
                            f"shape ({t.dtype.short_name}{list(t.shape)}) take {t.nbytes} bytes")
        if t.offset + t.length > size:
            raise OptcError(f"external data of {what} of '{self.label}' needs bytes {t.offset}..{t.offset + t.length}"
                            f" of '{t.location}', which has {size}")
        self._ranges.setdefault(real, []).append((t.offset, t.length, what))
        return real

    def _file(self, t: ExternalTensor, what: str) -> tuple[str, int]:
        location = t.location
        known = self._files.get(location)
        if known is not None:
            return known
        if not location:
            raise OptcError(f"external data of {what} of '{self.label}' has no location")
        if os.path.isabs(location) or os.path.splitdrive(location)[0]:
            raise OptcError(f"external data of {what} of '{self.label}' is at the absolute path '{location}'; "
                            f"refusing to read it (locations are relative to the model's directory)")
        try:
            real = os.path.realpath(t.path)  # t.path: the location joined to the model's directory
        except (ValueError, OSError):  # a NUL byte, a link loop on some Pythons
            raise OptcError(f"external data location of {what} of '{self.label}' is not a usable path") from None
        if not any(os.path.commonpath([real, root]) == root for root in self.roots):
            raise OptcError(f"external data '{location}' of {what} of '{self.label}' resolves to '{real}', outside "
                            f"the model's directory; refusing to read it")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise OptcError(f"external data file '{location}' for {what} of '{self.label}' does not exist") from None
        except OSError as exc:
            raise OptcError(f"external data file '{location}' for {what} of '{self.label}' cannot be read: "
                            f"{exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raise OptcError(f"external data file '{location}' for {what} of '{self.label}' is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OptcError(f"external data file '{location}' for {what} of '{self.label}' is not a regular file")
        self._files[location] = known = (real, st.st_size)
        return known

    def check_overlaps(self) -> None:
        """OptcError if two tensors' byte ranges in one file overlap without being the same range.

        Exactly the same range for two tensors is allowed, following onnx and onnxruntime: onnx's checker and
        `onnx.load` (1.23) and onnxruntime (1.31) load such a model (they accept partial overlaps too), and it
        is how a writer stores a tied weight once for two tensors. A partial overlap is refused: the bytes of
        one tensor would be read as part of another, which only wrong offsets produce."""
        for real, ranges in self._ranges.items():
            distinct: dict[tuple[int, int], str] = {}
            for offset, length, what in ranges:
                if length:  # an empty range holds no bytes
                    distinct.setdefault((offset, length), what)
            end, owner = -1, None
            for (offset, length), what in sorted(distinct.items()):
                if offset < end:
                    raise OptcError(f"external data of {what} of '{self.label}' (bytes {offset}..{offset + length}"
                                    f" of '{os.path.basename(real)}') overlaps that of {owner[0]} (bytes "
                                    f"{owner[1]}..{owner[2]}); refusing to read them")
                if offset + length > end:
                    end, owner = offset + length, (what, offset, offset + length)


def _check_ops(model: Model, graphs: list | None = None) -> None:
    known = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    for g in graphs if graphs is not None else model.graphs():
        for domain, op_type in g.op_keys():
            if domain in ("", "ai.onnx") and known is not None and (op_type, domain) not in _ONNX_OPS:
                if onnx.defs.has(op_type, domain):
                    _ONNX_OPS.add((op_type, domain))
                elif (domain, op_type) not in _local_functions(model):
                    raise OptcError(f"unknown op '{op_type}' in the default ONNX domain")


_ONNX_OPS: set[tuple[str, str]] = set()  # ops onnx.defs was asked about and has (schemas are not taken back)


def _local_functions(model: Model) -> set[tuple[str, str]]:
    return {(d, n) for d, n, _ in model.functions}


# -- saving -------------------------------------------------------------------------------------------


def save(model: Model, path: str | os.PathLike, external_data: bool | None = None,
         size_threshold: int = 1024) -> None:
    """Save atomically. `external_data`: True writes tensors of at least `size_threshold` bytes to
    `<file>.data`; False inlines everything; None (default) keeps external data if the model has some
    and switches to it when the model would pass protobuf's 2 GB limit. The file (and `<file>.data`) get the
    user's umask. Raises OptcError (one line) when the directory does not exist or the write fails; nothing
    half-written is left."""
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
        fd, model_tmp = _new_temp(path, temps)
        with open(fd, "wb", buffering=_WRITE_BUFFER) as f:
            f.writelines(data)  # the pieces, without joining them first
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


def _serialize(model: Model, writer) -> list[bytes]:
    """The model's bytes, in pieces to write one after the other; OptcError past protobuf's 2 GB limit
    (checked on the result: no ByteSize pass)."""
    try:
        parts, size = to_onnx_parts(model, writer)
    except EncodeError:  # what protobuf raises past 2 GB
        size = PROTOBUF_LIMIT + 1
    if size > PROTOBUF_LIMIT:
        raise OptcError("the model is over protobuf's 2 GB limit; save it with external data")
    return parts


_WRITE_BUFFER = 1 << 20


def _temp_beside(path: str, temps: list[str]) -> str:
    """A new empty file beside `path` (see `_new_temp`)."""
    fd, tmp = _new_temp(path, temps)
    os.close(fd)
    return tmp


def _new_temp(path: str, temps: list[str]) -> tuple[int, str]:
    """Create `.<name>.<unique>.tmp` beside `path` as `tempfile.mkstemp` would (exclusively; mode 0666 less the umask), without
    its random-name machinery; return its open descriptor and path (added to `temps`)."""
    head = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.")
    for _ in range(100):
        tmp = f"{head}{os.getpid()}-{next(_temp_counter)}-{os.urandom(3).hex()}.tmp"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)  # the umask applies, as for open(path, "w")
        except FileExistsError:
            continue
        temps.append(tmp)
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no usable temporary file name found", head)


_temp_counter = itertools.count()
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _wants_external(model: Model) -> bool:
    """True if the model has external data, or its estimated size passes `_SAFE_INLINE_BYTES`."""
    total = 0
    protos: list[onnx.TensorProto] = []
    for g in model.graphs():
        total += 64 * len(g)
        for v in g.initializers.values():
            t = v.const
            if type(t) is ProtoTensor:
                protos.append(t.proto)
            elif isinstance(t, ExternalTensor):
                return True
            else:
                total += _payload_size(t)
    # A parsed proto knows its size: summed in one C loop, with no dtype math.
    return total + sum(map(_byte_size, protos)) > _SAFE_INLINE_BYTES


_byte_size = onnx.TensorProto.ByteSize


def _payload_size(t) -> int:
    """About the bytes a tensor takes in the model file."""
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
