"""Deployable artifacts: one shared library (``export_library``) plus a JSON metadata file beside it.

``model.so`` is described by ``model.so.json``::

    {"format": "optc-artifact", "format_version": 1,
     "inputs":  [{"name": "x", "shape": [1, 3, "H", "W"], "dtype": "float32"}],
     "outputs": [{"name": "y", "shape": [1, 10], "dtype": "float32"}],
     "target": "cpu", "target_spec": {...}, "optc_version": "...", "tvm_version": "0.27.0.post1",
     "target_info": {"kind": "llvm", "mtriple": "x86_64-...", "mcpu": "znver3", "mattr": [],
                     "features": ["avx", "avx2", "fma", ...]},
     "library": "model.so", "library_size": 43184, "library_sha256": "9f86d0..."}

``target_spec`` is the TVM target as JSON; ``target_info`` what ``optc.runtime.load`` checks against this CPU
(``targets.target_metadata`` / ``targets.check_runs_here``). ``library_size`` (bytes) and ``library_sha256``
are checked by ``read_metadata`` before anything loads the library: a truncated library died in dlopen with
SIGBUS, and one of another model beside this metadata failed at its first call. Metadata written before optc
recorded them has neither and is not checked.

Symbolic dimensions are strings. Both files are written to a temporary name and renamed, so an
interrupted export leaves no half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from ..errors import OptcError, first_line
from ..fileio import atomic_path
from .targets import linker, resolve_target, target_kind, target_metadata

FORMAT = "optc-artifact"
FORMAT_VERSION = 1


def metadata_path(path) -> Path:
    """``model.so`` -> ``model.so.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def optc_version() -> str:
    try:
        from .. import __version__  # noqa: PLC0415

        return str(__version__)
    except Exception:
        pass
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("optc")
    except Exception:
        return "0+unknown"


def _normalize_sig(entries, what: str) -> list[dict]:
    out = []
    for e in entries or []:
        try:
            name, shape, dtype = e["name"], e["shape"], e["dtype"]
        except (KeyError, TypeError) as exc:
            raise OptcError(f"artifact metadata: each {what} needs name, shape and dtype") from exc
        dims = []
        for d in shape:
            if isinstance(d, (int,)) or (hasattr(d, "__index__") and not isinstance(d, str)):
                dims.append(int(d))
            else:
                dims.append(str(d))
        out.append({"name": str(name), "shape": dims, "dtype": str(dtype)})
    return out


def signature_from_relax(mod, func_name: str = "main"):
    """Input signature (names, shapes with symbolic dims as strings, dtypes) of a Relax function's
    parameters, and the output signature of its return type when it is a tensor or a tuple."""

    func = mod[func_name]

    def tensor_sig(name, ty):
        shape = getattr(ty, "shape", None)
        dims = []
        if shape is not None and hasattr(shape, "values"):
            for d in shape.values:
                dims.append(int(d) if hasattr(d, "value") and not hasattr(d, "name") else str(d))
        return {"name": name, "shape": dims, "dtype": str(ty.dtype)}

    n_inputs = None
    if func.attrs is not None and "num_input" in func.attrs:
        n_inputs = int(func.attrs["num_input"])
    params = list(func.params)[: n_inputs if n_inputs is not None else len(func.params)]
    inputs = []
    for p in params:
        name = getattr(p, "name_hint", None) or p.name
        inputs.append(tensor_sig(name, p.ty if hasattr(p, "ty") else p.struct_info))
    ret = func.ret_type if hasattr(func, "ret_type") else func.ret_struct_info
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    outputs = [tensor_sig(f"output_{i}", f) for i, f in enumerate(fields)]
    return inputs, outputs


def export(executable, path, metadata: Mapping, *, target=None, cc: str | None = None) -> Path:
    """Write ``executable`` (from ``codegen.build``) to ``path`` and its metadata to ``path + '.json'``.

    ``metadata`` must hold ``inputs`` and ``outputs`` (lists of ``{"name", "shape", "dtype"}``); any
    other keys are kept. ``target`` (preset name, dict or Target; default: the metadata's ``target_spec``, which
    also replaces a ``target`` equal to the metadata's preset name) selects the linker: arm64 links with the
    aarch64 cross compiler, ``cc`` (a compiler on PATH or a path) overrides it. Returns the library path.
    """
    path = Path(path)
    if path.is_dir():
        raise OptcError(f"cannot write artifact '{path}': it is a directory")
    if not path.parent.exists():
        raise OptcError(f"cannot write artifact '{path}': directory '{path.parent}' does not exist")
    meta = dict(metadata)
    if target is None or (isinstance(target, str) and target == meta.get("target") and "target_spec" in meta):
        target = meta.get("target_spec") or meta.get("target", "cpu")  # the exact target built for (a re-export)
    tgt = resolve_target(target)
    meta["inputs"] = _normalize_sig(meta.get("inputs"), "input")
    meta["outputs"] = _normalize_sig(meta.get("outputs"), "output")
    meta.setdefault("target", target_kind(tgt))
    meta["target_spec"] = json.loads(str(tgt))
    meta["target_info"] = target_metadata(tgt)
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    meta["optc_version"] = optc_version()
    import tvm  # noqa: PLC0415

    meta["tvm_version"] = tvm.__version__
    meta["library"] = path.name

    kwargs = {}
    cc = linker(tgt, cc)
    if cc:
        kwargs["cc"] = cc
    meta_file = metadata_path(path)
    # Both files through the one atomic writer: the metadata is renamed into place first, the library last.
    with atomic_path(path, suffix=path.suffix or ".so") as lib_tmp, atomic_path(meta_file) as meta_tmp:
        try:
            executable.export_library(lib_tmp, **kwargs)
        except Exception as exc:
            raise OptcError(f"export_library failed for '{path}': {first_line(exc, last=True)}") from exc
        meta["library_size"], meta["library_sha256"] = library_digest(lib_tmp)
        Path(meta_tmp).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return path


def library_digest(path) -> tuple[int, str]:
    """Size in bytes and sha256 (hex) of the file at `path`."""
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()


def _elf_end(head: bytes) -> int | None:
    """How many bytes an ELF shared object needs, from its header and program headers in `head` (the file's
    first bytes): the end of its section header table and of every loadable segment's file image. None when
    `head` is not a whole ELF header (not ELF: the loader refuses it with a message of its own)."""
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
    phoff, shoff = struct.unpack_from(order + ("QQ" if wide else "II"), head, 32 if wide else 28)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54 if wide else 42)
    end = shoff + shentsize * shnum
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + phentsize > len(head):
            return max(end, at + phentsize)
        if struct.unpack_from(order + "I", head, at)[0] == 1:  # PT_LOAD
            offset, filesz = struct.unpack_from(order + ("Q16xQ" if wide else "I8xI"), head, at + (8 if wide else 4))
            end = max(end, offset + filesz)
    return end


def _check_library(path: Path, meta_file: Path, meta: dict) -> None:
    """OptcError (one line) unless the library at `path` is whole (an ELF file as long as its headers say) and,
    where its metadata records them, has that size and sha256."""
    with open(path, "rb") as f:
        head, size_now = f.read(1 << 16), os.fstat(f.fileno()).st_size
    end = _elf_end(head)
    if end is not None and end > size_now:
        raise OptcError(f"artifact '{path}' is truncated: {size_now} bytes, its ELF headers need {end} "
                        "(compile it again)")
    size, digest = meta.get("library_size"), meta.get("library_sha256")
    if size is None and digest is None:  # written before optc recorded them
        return
    try:
        actual_size, actual_digest = library_digest(path)
    except OSError as exc:
        raise OptcError(f"cannot read artifact '{path}': {exc.strerror or exc}") from None
    if actual_size != size:
        raise OptcError(f"artifact '{path}' is {actual_size} bytes, its metadata '{meta_file.name}' says {size}: "
                        "the library is truncated or not the one compiled with it (compile it again)")
    if actual_digest != digest:
        raise OptcError(f"artifact '{path}' does not match its metadata '{meta_file.name}' (sha256 differs): the "
                        "library was changed or replaced (compile it again)")


#: what ``emit`` writes, by kind, and the file suffix it wants
EMIT_SUFFIXES = {"llvm": ".ll", "asm": ".s", "tar": ".tar"}


def check_emit(kind: str, path) -> Path:
    """OptcError unless ``kind`` is one of ``EMIT_SUFFIXES`` and ``path`` ends with its suffix; returns the Path."""
    if kind not in EMIT_SUFFIXES:
        raise OptcError(f"--emit must be one of {', '.join(EMIT_SUFFIXES)}, not '{kind}'")
    path = Path(path)
    if path.suffix.lower() != EMIT_SUFFIXES[kind]:
        raise OptcError(f"output '{path}' must end with {EMIT_SUFFIXES[kind]} for --emit {kind}")
    return path


def emit(executable, path, kind: str, *, target=None) -> Path:
    """Write what ``optc compile --emit`` asks for instead of a linked library: ``llvm`` the LLVM IR and ``asm`` the
    assembly of the kernels (llvm targets), ``tar`` the object files as a tar archive (link them on the device).
    OptcError for an unknown kind, a suffix other than ``EMIT_SUFFIXES[kind]``, or llvm/asm of a non-llvm target."""
    path = check_emit(kind, path)
    tgt = resolve_target(target if target is not None else "cpu")
    if kind in ("llvm", "asm"):
        if tgt.kind.name != "llvm":
            raise OptcError(f"--emit {kind} writes the code of llvm targets (cpu, arm64); for {target_kind(tgt)} "
                            "use --emit tar or a library")
        kernels = [m for m in executable.mod.imports if m.kind == "llvm"]
        if not kernels:
            raise OptcError(f"the build has no LLVM module to write as {kind}")
        text = str(kernels[0].inspect_source("ll" if kind == "llvm" else "asm"))
        with atomic_path(path, suffix=path.suffix) as tmp:
            Path(tmp).write_text(text)
        return path
    with atomic_path(path, suffix=".tar") as tmp:  # the suffix makes export_library write a tar of objects
        try:
            executable.export_library(tmp)
        except Exception as exc:
            raise OptcError(f"export_library failed for '{path}': {first_line(exc, last=True)}") from exc
    return path


def read_metadata(path) -> dict:
    """Metadata of an exported artifact (``path`` is the library; its ``.json`` sibling is read). OptcError (one
    line) for a missing or unreadable file, metadata of another format, and a library whose size or sha256 is
    not what the metadata records."""
    meta_file = metadata_path(path)
    if not Path(path).exists():
        raise OptcError(f"no such artifact: '{path}'")
    if not meta_file.exists():
        raise OptcError(f"artifact '{path}' has no metadata file '{meta_file.name}' beside it")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise OptcError(f"cannot read artifact metadata '{meta_file}': {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OptcError(f"'{meta_file}' is not optc artifact metadata")
    _check_library(Path(path), meta_file, meta)
    return meta
