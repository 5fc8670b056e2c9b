"""Run an artifact exported by optc: ``optc.runtime.load("model.so").run({"x": array})``.

Only needs TVM's runtime (``tvm.runtime``), numpy and the JSON metadata written beside the library.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import OptcError, first_line
from .inputs import check_input_names

__all__ = ["LIBRARY_SUFFIX", "Module", "load"]

LIBRARY_SUFFIX = ".so"  # what an artifact's library is called (export_library links a shared object)


def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class Module:
    """A loaded artifact. ``run({name: array}) -> {name: array}`` checks inputs against the metadata (names,
    dtypes, fixed dims; OptcError, one line, on a mismatch) before calling the kernels; ``benchmark`` times
    it (milliseconds); ``export(path)`` writes the library and its metadata."""

    def __init__(self, path, metadata: dict, vm, device, executable=None, remote=None):
        self.path = Path(path) if path is not None else None
        self._executable = executable  # the compiled code, for `export` (None when loaded from a file)
        self._remote = remote  # the RPC session the VM runs in (kept open as long as the module), or None
        self.server: str | None = None  # "host:port" of the RPC server it runs on
        self.metadata = metadata
        self.inputs: list[dict] = list(metadata["inputs"])
        self.outputs: list[dict] = list(metadata["outputs"])
        self.target: str = metadata.get("target", "cpu")
        self._vm = vm
        self._device = device
        self._main = vm["main"]

    def __repr__(self) -> str:
        ins = ", ".join(f"{i['name']}: {_fmt_shape(i['shape'])} {i['dtype']}" for i in self.inputs)
        where = self.path.name if self.path is not None else "in memory"
        remote = f" at {self.server}" if self.server else ""
        return f"<optc.runtime.Module {where} ({ins}) on {self.target}{remote}>"

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Arrays in signature order; raises OptcError (one line) on a wrong name, shape or dtype."""
        if not isinstance(inputs, Mapping):
            raise OptcError("inputs must be a mapping {name: array}")
        check_input_names(inputs, self.input_names)
        bound: dict[str, int] = {}
        arrays = []
        for spec in self.inputs:
            name = spec["name"]
            value = inputs[name]
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
            want_shape, want_dtype = spec["shape"], spec["dtype"]
            msg = f"input '{name}': expected {want_dtype} {_fmt_shape(want_shape)}, got {arr.dtype} {_fmt_shape(arr.shape)}"
            if arr.dtype != np.dtype(want_dtype) or arr.ndim != len(want_shape):
                raise OptcError(msg)
            for want, have in zip(want_shape, arr.shape, strict=False):
                if isinstance(want, str):
                    if bound.setdefault(want, have) != have:
                        raise OptcError(f"{msg}; dimension '{want}' is {bound[want]} elsewhere")
                elif want != have:
                    raise OptcError(msg)
            arrays.append(np.array(arr, order="C", copy=None))  # (ascontiguousarray makes a 0-d array 1-d)
        return arrays

    def _to_device(self, arrays):
        import tvm  # noqa: PLC0415

        return [tvm.runtime.tensor(a, self._device) for a in arrays]

    def _outputs(self, result) -> dict[str, np.ndarray]:
        values = list(result) if not hasattr(result, "numpy") else [result]
        names = self.output_names
        if len(values) != len(names):
            names = names + [f"output_{i}" for i in range(len(names), len(values))]
        return {n: v.numpy() for n, v in zip(names, values, strict=False)}

    def _call(self, args):
        if self._remote is None:
            return self._main(*args)
        # over RPC a returned tuple is a remote handle that cannot be read: the VM's stateful calling convention
        # hands the outputs back as tensors (a Python tuple for several)
        self._vm.set_input("main", *args)
        self._vm.invoke_stateful("main")
        return self._vm.get_outputs("main")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``."""
        args = self._to_device(self.check_inputs(inputs))
        return self._outputs(self._call(args))

    __call__ = run

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 50, warmup: int = 5) -> float:
        """Median latency in milliseconds of ``repeat`` runs after ``warmup`` runs (inputs already
        on the device; includes copying the outputs back to the host)."""
        args = self._to_device(self.check_inputs(inputs))
        for _ in range(max(0, warmup)):
            self._sync(self._call(args))
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            self._sync(self._call(args))
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)

    def export(self, path: str | os.PathLike) -> Path:
        """Write this module as an artifact, as `optc compile` does: the library at `path` (a `.so`) and its
        metadata at `path + '.json'`, both atomically. A module from `optc.compile` is exported from its compiled
        code; one loaded from a file is copied. Returns the library's path. OptcError (one line) for a name
        without `.so`, a directory that does not exist, or `path` being the loaded library itself."""
        path = Path(path)
        if path.suffix.lower() != LIBRARY_SUFFIX:
            raise OptcError(f"output '{path}' must end with {LIBRARY_SUFFIX}")
        if self._executable is not None:
            from .codegen.artifact import export  # noqa: PLC0415

            return export(self._executable, path, self.metadata, target=self.metadata.get("target"))
        if path.exists() and self.path.exists() and path.samefile(self.path):
            raise OptcError(f"output '{path}' is the loaded library itself")
        from .codegen.artifact import metadata_path  # noqa: PLC0415
        from .fileio import atomic_path, write_json  # noqa: PLC0415

        with atomic_path(path, suffix=LIBRARY_SUFFIX) as tmp:
            shutil.copyfile(self.path, tmp)
        write_json(metadata_path(path), {**self.metadata, "library": path.name})
        return path

    def _sync(self, result):
        if int(self._device.dlpack_device_type()) != 1:  # not kDLCPU: wait for the kernels
            self._device.sync()
        return result


def _device_for(target: str):
    import tvm  # noqa: PLC0415

    if target == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            raise OptcError("this artifact was built for cuda, but no CUDA GPU is available here")
        return dev
    return tvm.cpu(0)


def load(path, rpc: str | None = None, *, timeout: float = 30.0) -> Module:
    """Load an artifact exported by ``optc.codegen.export`` (the ``.so``; its ``.json`` sits beside it).

    With `rpc` (``HOST:PORT:KEY`` of a TVM RPC tracker and a server key) the library is uploaded to a free
    server of that key and runs there (``optc.remote.session.load_remote``; `timeout`: seconds to wait for the
    server). Raises OptcError (one line) for a missing file or metadata, an artifact of another format version,
    and a library that does not load (built for another target); with `rpc`, also for a bad address, an
    unreachable tracker, no server with the key and a server that does not answer."""
    from .codegen.artifact import read_metadata  # noqa: PLC0415

    path = Path(path)
    meta = read_metadata(path)
    if rpc is not None:
        from .remote.session import load_remote  # noqa: PLC0415

        return load_remote(path, meta, rpc, timeout=timeout)
    from .codegen.targets import check_runs_here  # noqa: PLC0415

    check_runs_here(meta, path)  # built for another architecture or instructions this CPU lacks: one line, no SIGILL
    import tvm  # noqa: PLC0415
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    device = _device_for(meta.get("target", "cpu"))
    try:
        lib = tvm.runtime.load_module(str(path.resolve()))
    except Exception as exc:
        raise OptcError(f"cannot load artifact '{path}': {first_line(exc, last=True)}") from exc
    vm = VirtualMachine(lib, device)
    return Module(path, meta, vm, device)
