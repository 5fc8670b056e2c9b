"""Checks on the paths a command reads and writes."""

from __future__ import annotations

import os

from ..errors import OptcError


def check_output_path(source: str | None, output: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse to write over the input model `source` (the input is never modified), into a directory that does
    not exist, onto a directory, or (when `suffixes` is given, e.g. `(".onnx",)`) to a name without one of those
    extensions; checked before any work, so a bad second output leaves no first one behind. OptcError (one line)."""
    if suffixes and not output.lower().endswith(suffixes):
        want = " or ".join(suffixes)
        raise OptcError(f"output '{output}' must end with {want}")
    if source is not None and os.path.exists(output) and os.path.exists(source) and os.path.samefile(source, output):
        raise OptcError(f"output '{output}' is the input model; choose another path (the input is never modified)")
    if os.path.isdir(output):
        raise OptcError(f"output '{output}' is a directory")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OptcError(f"cannot write '{output}': directory '{directory}' does not exist")
