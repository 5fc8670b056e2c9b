"""`optc run`: run a compiled artifact on inputs from an .npz file."""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from ..errors import OptcError


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file by name; OptcError on a missing or unreadable file."""
    if not os.path.isfile(path):
        raise OptcError(f"cannot read inputs '{path}': no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OptcError(f"cannot read inputs '{path}': not a valid .npz file ({exc})") from None


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz file atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(args) -> int:
    from ..runtime import load

    module = load(args.artifact)
    outputs = module.run(read_npz(args.inputs))
    write_npz(args.output, outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run a compiled artifact on inputs from an .npz file",
                       description="Run a library made by `optc compile`. Inputs and outputs are .npz files keyed "
                       "by input / output names; names, shapes and dtypes are checked against the artifact.")
    p.add_argument("artifact", help="the .so written by optc compile")
    p.add_argument("--inputs", required=True, metavar="X.npz", help="input arrays by input name")
    p.add_argument("-o", "--output", required=True, metavar="Y.npz", help="where to write the outputs")
    p.set_defaults(func=run)
