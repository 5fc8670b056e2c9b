"""Checks on the paths a command reads and writes."""

from __future__ import annotations

import os

from ..errors import OptcError


def check_output_path(source: str, output: str) -> None:
    """Refuse to write over the input model (the input is never modified), into a directory that does not exist,
    or onto a directory; checked before any work, so a bad second output leaves no first one behind."""
    if os.path.exists(output) and os.path.exists(source) and os.path.samefile(source, output):
        raise OptcError(f"output '{output}' is the input model; choose another path (the input is never modified)")
    if os.path.isdir(output):
        raise OptcError(f"output '{output}' is a directory")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OptcError(f"cannot write '{output}': directory '{directory}' does not exist")
