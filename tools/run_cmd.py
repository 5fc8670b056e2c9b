"""`optc run`: run a compiled artifact on inputs from an .npz file."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ..errors import OptcError
from ..fileio import write_npz


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file by name; OptcError on a missing or unreadable file."""
    if not os.path.isfile(path):
        raise OptcError(f"cannot read inputs '{path}': no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OptcError(f"cannot read inputs '{path}': not a valid .npz file ({exc})") from None


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
