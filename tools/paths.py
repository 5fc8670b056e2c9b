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
        what = "the input model" if source.lower().endswith(".onnx") else f"the input '{source}'"
        raise OptcError(f"output '{output}' is {what}; choose another path (inputs are never modified)")
    if source is not None and output.lower().endswith(".onnx") and os.path.exists(output + ".data") and \
            _external_files(source) & {os.path.realpath(output + ".data")}:
        raise OptcError(f"output '{output}' would write '{output}.data', which the input model '{source}' keeps its "
                        "weights in; choose another path (inputs are never modified)")
    if os.path.isdir(output):
        raise OptcError(f"output '{output}' is a directory")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OptcError(f"cannot write '{output}': directory '{directory}' does not exist")


def _external_files(model_path: str) -> set[str]:
    """The external-data files an ONNX model's tensors point to (real paths; empty when it cannot be read)."""
    import onnx

    try:
        proto = onnx.load(model_path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (or unreadable): the command's own check will say so
        return set()
    base = os.path.dirname(os.path.abspath(model_path))
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            if "location" in info:
                files.add(os.path.realpath(os.path.join(base, info["location"])))
    return files
