"""Run an artifact exported by optc: ``optc.runtime.load("model.so").run({"x": array})``.

Only needs TVM's runtime (``tvm.runtime``), numpy and the JSON metadata written beside the library.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import OptcError, first_line
from .inputs import check_input_names

__all__ = ["LIBRARY_SUFFIX", "Module", "load"]

LIBRARY_SUFFIX = ".so"  # what an artifact's library is called (export_library links a shared object)
#: how the message starts when a library's call fails on an out-of-range index (`lowering.ops.indexing`)
INDEX_ERROR = "optc index out of range: "
#: ... when one of its run-time checks of what it cannot compute fails (`lowering.run_checks`)
CHECK_ERROR = "optc run-time check failed: "


def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class Module:
    """A loaded artifact. ``run({name: array}) -> {name: array}`` checks inputs against the metadata (names,
    dtypes, fixed dims; OptcError, one line, on a mismatch) before calling the kernels; ``benchmark`` times
    it (milliseconds); ``export(path)`` writes the library and its metadata. On the host a call costs a few
    microseconds besides the kernels (``_to_device``: no TVM allocation per input; outputs copied with numpy;
    measured in benchmarks/RESULTS.md "Per-call overhead"). One module runs one call at a time (TVM's VM keeps
    its frames in the VM, and the inputs' staging buffers are the module's): give each thread its own."""

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
        # entry functions, looked up once (a lookup per call costs a few microseconds): "main", and for a symbolic
        # batch the static batch entries (codegen/static_batch.py) with the dims they bind
        self._functions = {"main": vm["main"]}
        self._entries: list[tuple[str, dict[str, int]]] = []
        for name, dims in metadata.get("entries", {}).items():
            try:
                self._functions[name] = vm[name]
            except (AttributeError, KeyError, ValueError):  # metadata of another library: main serves
                continue
            self._entries.append((name, dict(dims)))
        self._main = self._functions["main"]
        # host memory the kernels read directly: inputs pass by DLPack (no TVM-side allocation and copy)
        self._host = remote is None and int(device.dlpack_device_type()) == 1  # kDLCPU
        self._specs = [(i["name"], np.dtype(i["dtype"]), tuple(i["shape"]),
                        all(isinstance(d, int) for d in i["shape"])) for i in self.inputs]
        self._names = frozenset(self.input_names)
        self._staging: dict[tuple, tuple] = {}  # (input index, shape, dtype) -> (aligned array, TVM tensor over it)
        import tvm  # noqa: PLC0415

        self._tensor_type = tvm.runtime.Tensor

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
        """Arrays in signature order, C-contiguous (the given array itself when it already is); raises OptcError
        (one line) on a wrong name, shape or dtype."""
        return self._checked(inputs)[0]

    def _prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[list, str]:
        """The VM arguments for `inputs` (checked, see `check_inputs`) and the name of the entry function to
        call: the batch-1 entry when the library has one and every dim it binds is that size here, else main."""
        arrays, bound = self._checked(inputs)
        for name, dims in self._entries:
            if bound == dims:  # (every symbolic dim is a batch dim the entry binds)
                return self._to_device(arrays), name
        return self._to_device(arrays), "main"

    def _checked(self, inputs: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, int]]:
        """`check_inputs`, and the sizes the symbolic dims take."""
        if not isinstance(inputs, Mapping):
            raise OptcError("inputs must be a mapping {name: array}")
        if len(inputs) != len(self._names) or not self._names.issuperset(inputs):
            check_input_names(inputs, self.input_names)
        bound: dict[str, int] = {}
        arrays = []
        for name, want_dtype, want_shape, static in self._specs:
            value = inputs[name]
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
            if arr.dtype != want_dtype or (arr.shape != want_shape if static else
                                           not self._dims_match(arr.shape, want_shape, bound)):
                raise OptcError(self._mismatch(name, arr, want_dtype, want_shape, bound))
            arrays.append(arr if arr.flags.c_contiguous else np.array(arr, order="C"))
        return arrays, bound

    @staticmethod
    def _dims_match(shape: tuple, want: tuple, bound: dict[str, int]) -> bool:
        """Whether `shape` fits `want` (ints fixed, strings symbolic, bound in `bound` on first sight)."""
        if len(shape) != len(want):
            return False
        for w, have in zip(want, shape, strict=True):
            if isinstance(w, str):
                if bound.setdefault(w, have) != have:
                    return False
            elif w != have:
                return False
        return True

    @staticmethod
    def _mismatch(name: str, arr: np.ndarray, dtype: np.dtype, shape: tuple, bound: dict[str, int]) -> str:
        msg = f"input '{name}': expected {dtype} {_fmt_shape(shape)}, got {arr.dtype} {_fmt_shape(arr.shape)}"
        clash = next((w for w, have in zip(shape, arr.shape, strict=False)
                      if isinstance(w, str) and bound.get(w, have) != have), None)
        if arr.dtype == dtype and len(shape) == arr.ndim and clash is not None:
            msg += f"; dimension '{clash}' is {bound[clash]} elsewhere"
        return msg

    def _to_device(self, arrays):
        """TVM tensors for the VM. On the host: an array of at least `ZERO_COPY_BYTES` that is
        `ALIGNMENT`-aligned and writable is passed as it is (DLPack, no copy); any other is copied into an
        aligned staging buffer kept per input and shape (numpy aligns to 16 bytes only), cheaper than a new
        TVM tensor per call. The kernels never write their inputs."""
        import tvm  # noqa: PLC0415

        if not self._host:
            return [tvm.runtime.tensor(a, self._device) for a in arrays]
        out = []
        for index, arr in enumerate(arrays):
            if arr.size == 0:  # numpy's strides of an empty array need not be compact, which the kernels check
                out.append(tvm.runtime.tensor(np.empty(arr.shape, arr.dtype), self._device))
                continue
            tensor = None
            if arr.nbytes >= ZERO_COPY_BYTES and arr.flags.writeable and arr.ctypes.data % ALIGNMENT == 0:
                tensor = _dlpack_tensor(arr)
            if tensor is None:
                key = (index, arr.shape, arr.dtype)
                slot = self._staging.get(key)
                if slot is None:
                    if len(self._staging) >= 4 * len(self._specs):  # symbolic shapes: keep the recent ones
                        self._staging.clear()
                    view = _aligned_empty(arr.shape, arr.dtype)
                    slot = self._staging[key] = (view, _dlpack_tensor(view))
                if slot[1] is None:  # a dtype DLPack cannot describe (bfloat16): TVM's own copy
                    tensor = tvm.runtime.tensor(arr, self._device)
                else:
                    np.copyto(slot[0], arr)
                    tensor = slot[1]
            out.append(tensor)
        return out

    def _outputs(self, result) -> dict[str, np.ndarray]:
        values = (result,) if isinstance(result, self._tensor_type) else tuple(result)
        names = self.output_names
        if len(values) != len(names):
            names = names + [f"output_{i}" for i in range(len(names), len(values))]
        to_host = _host_copy if self._host else _device_copy
        return {n: to_host(v) for n, v in zip(names, values, strict=False)}

    def _call(self, args, name: str = "main"):
        if self._remote is None:
            return self._functions[name](*args)
        # over RPC a returned tuple is a remote handle that cannot be read: the VM's stateful calling convention
        # hands the outputs back as tensors (a Python tuple for several)
        self._vm.set_input(name, *args)
        self._vm.invoke_stateful(name)
        return self._vm.get_outputs(name)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``. OptcError (one line) for inputs
        that do not fit: names, dtypes, ranks and static dims (checked here), and what the library checks when
        it runs: sizes (a Reshape to a fixed shape of an input with a symbolic dim) and indices (Gather,
        GatherElements, GatherND, ScatterElements, ScatterND: out of range)."""
        args, name = self._prepare(inputs)
        try:
            result = self._call(args, name)
        except Exception as exc:  # noqa: BLE001 - only the library's own checks are turned into OptcError
            raise _check_failure(exc) from None
        return self._outputs(result)

    __call__ = run

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 50, warmup: int = 5) -> float:
        """Median latency in milliseconds of ``repeat`` calls of ``run(inputs)`` after ``warmup`` calls: what a
        caller pays, input checks and conversion and the copies of the outputs to numpy included (as
        onnxruntime's ``InferenceSession.run`` is timed)."""
        for _ in range(max(0, warmup)):
            self.run(inputs)
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            self.run(inputs)
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


def _check_failure(exc: Exception) -> Exception:
    """The OptcError for a failed check of the library (a shape's size, an index), else `exc` itself."""
    text = str(exc)
    if INDEX_ERROR in text:
        message = text[text.index(INDEX_ERROR) + len(INDEX_ERROR):].splitlines()[0]
        return OptcError(f"the inputs do not fit the model: {message}")
    if CHECK_ERROR in text:
        message = text[text.index(CHECK_ERROR) + len(CHECK_ERROR):].splitlines()[0]
        return OptcError(f"the library cannot run these inputs: {message}")
    if "match_cast" not in text:
        return exc
    sizes = re.search(r"\((\d+) vs\. (\d+)\)", text)
    dim = re.search(r"shape\[(\d+)\] mismatch", text)  # a 1-d match is a Reshape's size check
    ty = re.search(r"ty=R\.Tensor\(\(([^)]*)\)", text)
    dim = dim if ty is None or len([d for d in ty[1].split(",") if d.strip()]) > 1 else None
    what = first_line(exc) if not sizes else f"{sizes[1]} elements where the model needs {sizes[2]}" if not dim \
        else f"a result's dim {dim[1]} is {sizes[1]} where the model needs {sizes[2]}"
    return OptcError(f"the inputs do not fit the model's shapes: a shape check in the library failed ({what})")


ALIGNMENT = 64  # bytes: TVM allocates with this alignment and its kernels may assume it of every buffer


ZERO_COPY_BYTES = 1 << 16  # smaller inputs are copied: checking a pointer's alignment costs about as much


def _aligned_empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts at an `ALIGNMENT`-byte boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buf.ctypes.data % ALIGNMENT
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def _dlpack_tensor(arr: np.ndarray):
    """A TVM tensor over `arr`'s own memory (DLPack, no copy), or None for a dtype DLPack cannot describe."""
    import tvm_ffi  # noqa: PLC0415

    try:
        return tvm_ffi.from_dlpack(arr, require_alignment=ALIGNMENT)
    except (BufferError, RuntimeError, TypeError, ValueError):
        return None


def _host_copy(value) -> np.ndarray:
    """A numpy copy of a host tensor the VM returned (a copy: an output may share memory with an input or a
    constant of the library, which the caller must not be able to change)."""
    try:
        return np.from_dlpack(value).copy()
    except (BufferError, RuntimeError, TypeError, ValueError):  # e.g. bfloat16, which numpy cannot import
        return value.numpy()


def _device_copy(value) -> np.ndarray:
    return value.numpy()


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
    a library that is truncated, is not the one its metadata records (size, sha256), does not load (built for
    another target) or takes other inputs than its metadata lists; with `rpc`, also for a bad address, an
    unreachable tracker, no server with the key and a server that does not answer."""
    from .codegen.artifact import read_metadata  # noqa: PLC0415

    path = Path(path)
    meta = read_metadata(path)
    if rpc is not None:
        from .remote.session import load_remote  # noqa: PLC0415

        return load_remote(path, meta, rpc, timeout=timeout)
    from .codegen.targets import check_runs_here  # noqa: PLC0415

    check_runs_here(meta, path)  # built for another architecture or instructions this CPU lacks: one line, no SIGILL
    from .codegen.amx import request_permission  # noqa: PLC0415

    request_permission()  # AMX kernels' tile registers (a no-op without AMX)
    import tvm  # noqa: PLC0415
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    device = _device_for(meta.get("target", "cpu"))
    try:
        lib = tvm.runtime.load_module(_library_to_open(path, meta))
        vm = VirtualMachine(lib, device)
        params = [vm._get_function_param_name("main", i) for i in range(vm._get_function_arity("main"))]
    except Exception as exc:
        raise OptcError(f"cannot load artifact '{path}': {first_line(exc, last=True)}") from exc
    _check_signature(path, params, meta)
    return Module(path, meta, vm, device)


#: resolved library path -> the content (sha256, or size and mtime) first loaded from it in this process
_OPENED: dict[str, str] = {}
_COPIES: list[str] = []  # the private directory of renamed copies, created on first need


def _library_to_open(path: Path, meta: dict) -> str:
    """The file to dlopen for the library at `path`. dlopen hands back the library it already loaded from a path,
    even after the file was replaced: a library rebuilt at the same path in this process ran the old one. So the
    first content seen at a path opens from there, any other from a private copy named by its content (removed
    when the process exits)."""
    real = str(path.resolve())
    stat = os.stat(real)
    content = meta.get("library_sha256") or f"{stat.st_size}-{stat.st_mtime_ns}"
    if _OPENED.setdefault(real, content) == content:
        return real
    if not _COPIES:
        import atexit  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        _COPIES.append(tempfile.mkdtemp(prefix="optc-libs-"))
        atexit.register(shutil.rmtree, _COPIES[0], True)
    copy = os.path.join(_COPIES[0], f"{content[:32]}-{path.name}")
    if not os.path.exists(copy):
        shutil.copyfile(real, copy + ".tmp")
        os.replace(copy + ".tmp", copy)
    return copy


def _check_signature(path: Path, params: list[str], meta: dict) -> None:
    """OptcError (one line) unless the library's `main` takes the inputs its metadata lists, by name and in order
    (a library of another model beside this metadata failed at its first call)."""
    names = [i.get("name") if isinstance(i, dict) else None for i in meta.get("inputs") or []]
    if params != names:
        raise OptcError(f"artifact '{path}' does not match its metadata: the library takes inputs ({', '.join(params)}), "
                        f"the metadata lists ({', '.join(map(str, names))}) (compile it again)")
