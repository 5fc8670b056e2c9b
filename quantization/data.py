"""Streamed data sets: `.npz` files (or a directory of them) whose arrays are keyed by graph input name, with the
batch on axis 0, as calibration (`optc quantize --calib`) and evaluation (`optc evaluate --data`) read them.

Everything is validated up front from the `.npy` headers inside the zip (shape, dtype, byte offset), without
reading array data; batches are then read one at a time. A member stored uncompressed (`np.savez`, ZIP_STORED)
is memory-mapped at its offset inside the zip, so a batch costs only its own pages; a compressed C-order member
(`np.savez_compressed`) is decompressed sequentially, one batch of rows at a time; a compressed Fortran-order
member has no contiguous rows and is read whole when its file is reached. The `.npy` layout is numpy's
(`numpy.lib.format`); the zip local-header layout is PKWARE's APPNOTE 4.3.7.

`read_npz` reads one whole `.npz` file (inputs for one run: `optc run`, `optc verify --inputs`), with the same
checks. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

from ..errors import OptcError
from ..inputs import InputSpec

__all__ = ["Dataset", "InputSpec", "complete_batch", "drop_repeats", "model_input_specs", "open_dataset", "read_npz"]

# What reading a broken zip or .npy member can raise.
_READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length (30 bytes)


def _fmt_dims(shape: Sequence[int | str | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def complete_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """`batch` ({name: array}, the batch on axis 0) grown to `size` samples by repeating its last sample: what a
    model whose inputs fix the batch size needs for the last, shorter batch of a dataset. The repeats compute
    what the last sample computes (inference ops act per sample); callers drop their rows (`drop_repeats`). A
    batch of `size` or more samples is returned as it is."""
    n = len(next(iter(batch.values()))) if batch else size
    if n >= size or n == 0:
        return batch
    return {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in batch.items()}


def drop_repeats(value: np.ndarray, n: int, size: int | None) -> np.ndarray:
    """`value` computed on a batch that `complete_batch` grew from `n` samples to `size`: its first `n` rows when
    its axis 0 is that batch (an activation of the model), else `value` as it is."""
    if size is None or n >= size or np.ndim(value) == 0 or value.shape[0] != size:
        return value
    return value[:n]


def model_input_specs(model) -> list[InputSpec]:
    """The graph inputs of `model` that are not initializers, in order. `model`: an optc `Model`, an
    `onnx.ModelProto` or a path to an .onnx file (loaded with `optc.ir.load`). OptcError (one line) when the model
    cannot be loaded or an input is not a tensor of known rank and numpy-representable element type."""
    from ..ir import Model, TensorType, load

    if not isinstance(model, Model):
        model = load(model)
    graph = model.graph
    specs = []
    for value in graph.inputs:
        if value.name in graph.initializers:
            continue
        ty = value.type
        if not isinstance(ty, TensorType) or ty.shape is None:
            raise OptcError(f"input '{value.name}' has type {ty}; data files can only feed tensors of known rank")
        try:
            dtype = ty.dtype.numpy()
        except ValueError:
            raise OptcError(f"input '{value.name}' has element type {ty.dtype.name}, which numpy cannot hold") from None
        specs.append(InputSpec(value.name, dtype, tuple(ty.shape)))
    return specs


@dataclass(frozen=True)
class _Member:
    """One array of an .npz file, as its .npy header describes it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # of the array data in the .npz file; meaningful for stored (uncompressed) members only

    @property
    def stored(self) -> bool:
        return self.info.compress_type == zipfile.ZIP_STORED

    def describe(self) -> str:
        return f"{self.dtype} {_fmt_dims(self.shape)}"


@dataclass
class _File:
    path: str
    where: str  # the message prefix: "role 'path'" or "role 'dir': file 'name.npz'"
    members: dict[str, _Member]
    batch: int | None = None  # samples in this file, set by the first checked array

    def fail(self, message: str) -> OptcError:
        return OptcError(f"{self.where} {message}")


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream `f`, left at the start of the array data."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(f)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _read_member_header(zf: zipfile.ZipFile, raw, info: zipfile.ZipInfo) -> _Member:
    with zf.open(info) as f:
        shape, fortran, dtype = _read_npy_header(f)
        header_len = f.tell()
    raw.seek(info.header_offset)
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + header_len
    return _Member(info, tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran), offset)


def _read_file(path: str, where: str) -> _File:
    file = _File(path, where, {})
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                try:
                    member = _read_member_header(zf, raw, info)
                except _READ_ERRORS as exc:
                    raise file.fail(f"is not a valid .npz file: array '{name}': {exc}") from None
                if member.dtype.hasobject:
                    raise file.fail(f"array '{name}' holds Python objects (a pickle); only numeric arrays are read")
                file.members[name] = member
    except OptcError:
        raise
    except _READ_ERRORS as exc:
        raise file.fail(f"is not a valid .npz file ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    return file


def _reader(file: _File, name: str, stack: ExitStack) -> Callable[[int, int], np.ndarray]:
    """`read(start, stop)`: rows start..stop of array `name`, called with increasing, adjacent ranges."""
    member = file.members[name]
    if np.prod(member.shape, dtype=np.int64) * member.dtype.itemsize == 0:
        empty = np.empty(member.shape, member.dtype)
        return lambda start, stop: empty[start:stop]
    if member.stored:
        mapped = np.memmap(file.path, member.dtype, "r", member.offset, member.shape,
                           order="F" if member.fortran else "C")
        return lambda start, stop: np.ascontiguousarray(mapped[start:stop])
    zf = stack.enter_context(zipfile.ZipFile(file.path))
    f = stack.enter_context(zf.open(member.info))
    if member.fortran:  # no contiguous rows: the whole array, once
        whole = npy_format.read_array(f, allow_pickle=False)
        return lambda start, stop: np.ascontiguousarray(whole[start:stop])
    _read_npy_header(f)
    row_shape = member.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * member.dtype.itemsize

    def read(start: int, stop: int) -> np.ndarray:  # the next rows of the decompressed stream
        data = f.read((stop - start) * row_bytes)
        if len(data) != (stop - start) * row_bytes:
            raise EOFError(f"array '{name}' ends early")
        return np.frombuffer(data, member.dtype).reshape((stop - start, *row_shape))

    return read


def _concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


class Dataset:
    """A .npz file or a directory of .npz files (sorted by name; other files are ignored), read lazily, one
    file (or one batch) at a time. Made by `open_dataset`, which validates it against a model's inputs.

    `path`: as given. `role`: what the data is for, the start of every error message (e.g. "test data").
    `names`: the arrays checked so far (inputs, then labels), what `batches()` yields by default.
    `num_samples`: total over all files, from the array headers (no data read).
    """

    def __init__(self, path: str | os.PathLike, *, role: str = "calibration data"):
        self.path = os.fspath(path)
        self.role = role
        self.names: tuple[str, ...] = ()
        where = f"{role} '{self.path}'"
        if os.path.isdir(self.path):
            entries = sorted(e for e in os.listdir(self.path) if e.endswith(".npz")
                             and os.path.isfile(os.path.join(self.path, e)))
            if not entries:
                raise OptcError(f"{where} is a directory with no .npz files")
            self._files = [_read_file(os.path.join(self.path, e), f"{where}: file '{e}'") for e in entries]
        elif os.path.isfile(self.path):
            self._files = [_read_file(self.path, where)]
        else:
            raise OptcError(f"{where} does not exist")

    @property
    def num_samples(self) -> int:
        return sum(f.batch or 0 for f in self._files)

    @property
    def array_names(self) -> tuple[str, ...]:
        """Names of the arrays that every file holds, sorted."""
        common = set(self._files[0].members)
        for f in self._files[1:]:
            common &= set(f.members)
        return tuple(sorted(common))

    def check(self, inputs: Sequence[InputSpec], labels: str | None = None) -> None:
        """Validate every file against `inputs` (and the labels array `labels`), from headers only: each input
        present with the input's dtype, equal rank, fixed dims equal except axis 0 (the batch), which must agree
        across the arrays of one file; at least one sample overall. May be called again (e.g. for a second
        model); the checked names add up. OptcError (one line, starting with "<role> '<path>'") otherwise."""
        for f in self._files:
            for spec in inputs:
                member = self._member(f, spec.name, f"input '{spec.name}'")
                if member.dtype != spec.dtype:
                    raise f.fail(f"array '{spec.name}' is {member.dtype}; the model's input '{spec.name}' is "
                                 f"{spec.dtype}")
                fixed_ok = all(not isinstance(want, int) or want == have
                               for want, have in zip(spec.shape[1:], member.shape[1:], strict=False))
                if len(member.shape) != len(spec.shape) or not fixed_ok:
                    raise f.fail(f"array '{spec.name}' is {member.describe()}; the model's input takes "
                                 f"{spec.describe()} (axis 0 is the batch)")
                self._set_batch(f, spec.name, member)
            if labels is not None:
                self._set_batch(f, labels, self._member(f, labels, f"labels '{labels}'"))
        if self.num_samples == 0:
            raise OptcError(f"{self.role} '{self.path}' holds no samples")
        new = [s.name for s in inputs] + ([labels] if labels is not None else [])
        self.names = tuple(dict.fromkeys([*self.names, *new]))

    @staticmethod
    def _member(f: _File, name: str, what: str) -> _Member:
        if name not in f.members:
            have = ", ".join(sorted(f.members)) or "none"
            raise f.fail(f"has no array for {what} (it has: {have})")
        return f.members[name]

    @staticmethod
    def _set_batch(f: _File, name: str, member: _Member) -> None:
        if not member.shape:
            raise f.fail(f"array '{name}' is a scalar; it needs the batch on axis 0")
        if f.batch is None:
            f.batch = member.shape[0]
        elif member.shape[0] != f.batch:
            raise f.fail(f"array '{name}' has {member.shape[0]} samples on axis 0, the file's other arrays "
                         f"{f.batch}")

    def batches(self, batch_size: int | None = None,
                names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield `{name: array}` with the batch on axis 0, for `names` (default: `self.names`), in file order.

        `batch_size` None: the whole of each file per batch. Otherwise every batch has `batch_size` samples
        (a batch may span two files) except the last. Arrays keep the file's dtype; they are C-contiguous and
        may be read-only (views of the memory map or of the decompressed bytes). Memory: one batch per array, except compressed Fortran-order members
        (read whole). OptcError (one line) for a bad batch size, a name some file lacks or whose axis 0 does
        not match that file's samples, or a file that fails to read.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise OptcError(f"batch size must be a positive integer, got {batch_size!r}")
        names = tuple(self.names if names is None else names)
        for f in self._files:
            for name in names:
                self._set_batch(f, name, self._member(f, name, f"'{name}'"))
        return self._iterate(names, batch_size)

    def _iterate(self, names: tuple[str, ...], batch_size: int | None) -> Iterator[dict[str, np.ndarray]]:
        pending: list[dict[str, np.ndarray]] = []
        have = 0
        for f in self._files:
            if not f.batch:
                continue
            try:
                with ExitStack() as stack:
                    readers = {name: _reader(f, name, stack) for name in names}
                    start = 0
                    while start < f.batch:
                        take = f.batch - start if batch_size is None else min(batch_size - have, f.batch - start)
                        piece = {name: read(start, start + take) for name, read in readers.items()}
                        start += take
                        if batch_size is None:
                            yield piece
                            continue
                        pending.append(piece)
                        have += take
                        if have == batch_size:
                            yield _concat(pending)
                            pending, have = [], 0
            except _READ_ERRORS as exc:
                raise f.fail(f"cannot be read: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        if pending:
            yield _concat(pending)


def open_dataset(path: str | os.PathLike, inputs: Sequence[InputSpec], *, labels: str | None = None,
                 role: str = "calibration data") -> Dataset:
    """Open and validate a data set for a model with `inputs` (see `model_input_specs`), from array headers
    only; see `Dataset.check` for the rules. `labels`: the name of a labels array every file must hold (batch on
    axis 0). OptcError with one line starting with f"{role} '{path}'" for a missing path, an empty directory, an
    unreadable or corrupt file, a missing input or labels array, a wrong dtype or shape, or no samples at all."""
    dataset = Dataset(path, role=role)
    dataset.check(inputs, labels)
    return dataset


def read_npz(path: str | os.PathLike, *, role: str = "inputs") -> dict[str, np.ndarray]:
    """Every array of one `.npz` file by name, read whole (for one run of a model, not a data set to stream).

    The one reader of whole `.npz` files in optc: nothing is unpickled (`allow_pickle=False`). OptcError, one line
    starting with f"{role} '{path}'", for a missing path, a file that is not a valid `.npz`, or an array of
    Python objects.
    """
    path = os.fspath(path)
    where = f"{role} '{path}'"
    if not os.path.isfile(path):
        raise OptcError(f"{where} {'is not a file' if os.path.exists(path) else 'does not exist'}")
    file = _read_file(path, where)
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name, member in file.members.items():
                with zf.open(member.info) as f:
                    arrays[name] = npy_format.read_array(f, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise file.fail(f"cannot be read: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    return arrays
