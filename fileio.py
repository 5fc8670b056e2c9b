"""Writing output files: atomically (a temporary file beside the target, renamed when complete) and with the
permissions the user's umask gives a new file (0666 & ~umask), as `open(path, "w")` would.

Every writer of an output file in optc goes through `atomic_path`, so an interrupted run leaves nothing
half-written and the previous file (if any) stays as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .errors import OptcError

__all__ = ["atomic_path", "new_file_mode", "write_json", "write_npz"]


def new_file_mode() -> int:
    """The mode a newly created file gets under the current umask (0666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside `path`; on normal exit it gets the umask's mode and replaces `path`, on an
    exception it is removed. OptcError (one line) when the directory does not exist or `path` is a directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OptcError(f"cannot write '{path}': directory '{directory}' does not exist")
    if os.path.isdir(path):
        raise OptcError(f"cannot write '{path}': it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    except OSError as exc:
        raise OptcError(f"cannot write '{path}': {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise OptcError(f"cannot write '{path}': {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON (non-finite floats as null are the caller's job), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to an uncompressed .npz file, atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
