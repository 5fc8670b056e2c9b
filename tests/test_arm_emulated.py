"""arm64 artifacts run on an emulated aarch64 device and match onnxruntime on this x86 host.

The device is TVM's RPC server in the aarch64 Python of `optc.remote.emulate`'s sysroot, run by qemu user-mode,
registered with a TVM RPC tracker on loopback; artifacts are compiled with `--target arm64` (cross-linked with
aarch64-linux-gnu-g++) and run there with `optc.remote.session.run_remote`. Outside CI these tests skip when
qemu-user-static or the cross compiler is missing; in CI (env CI or OPTC_CI) they fail instead (.ci/run installs
both and builds the sysroot first). Latency under emulation means nothing: only correctness is asserted.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from optc.errors import OptcError
from optc.remote import emulate

from .conftest import run_ort

ROOT = Path(__file__).resolve().parents[1]
KEY = "arm64-test"
IN_CI = bool(os.environ.get("CI") or os.environ.get("OPTC_CI"))


def _models() -> dict[str, onnx.ModelProto]:
    """Small versions of the corpus-style models of benchmarks/models.py."""
    spec = importlib.util.spec_from_file_location("optc_benchmark_models", ROOT / "benchmarks" / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    from .test_grouped_conv import _model as grouped_conv_model
    from .test_layout_copies import _shuffled

    return {"resnet_like": models.resnet_like(width=8, blocks=(1, 1), image=32),
            "bert_like": models.bert_like(layers=1, hidden=64, heads=2, seq=16, vocab=100, ffn=128),
            # ShuffleNet's grouped 1x1 conv (34 channels a group: NEON's 4 lanes do not divide it) and shuffle
            "grouped_conv": grouped_conv_model(c=136, k=136, size=(6, 7), tail="residual"),
            "channel_shuffle": _shuffled(4, 136, batch=1)}


def _unavailable(why: str):
    if IN_CI:
        pytest.fail(f"CI must run the emulated aarch64 tests: {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str]) -> subprocess.Popen:
    """A child in its own process group (the server forks one process per session), output to a pipe."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


def _wait_for_key(tracker_port: int, server: subprocess.Popen, deadline_s: float) -> None:
    from tvm import rpc

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the emulated server exited ({server.returncode}):\n{_stop(server)[-2000:]}")
        try:
            info = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
            if any(s.get("key", "").split(":")[-1] == KEY for s in info.get("server_info", [])):
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the emulated server did not register with the tracker in {deadline_s:.0f} s:\n"
                         f"{_stop(server)[-2000:]}")


@pytest.fixture(scope="module")
def arm_rpc(report):
    """`HOST:PORT:KEY` of a tracker with one emulated aarch64 server (sysroot built on first use)."""
    try:
        emulate.qemu_binary()
    except OptcError as exc:
        _unavailable(str(exc))
    if not shutil.which("aarch64-linux-gnu-g++"):
        _unavailable("no aarch64 cross compiler (install g++-aarch64-linux-gnu)")
    start = time.perf_counter()
    try:
        root = emulate.ensure_sysroot()
    except OptcError as exc:
        _unavailable(str(exc))
    sysroot_s = time.perf_counter() - start
    tracker_port = _free_port()
    tracker = _start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                      str(tracker_port), "--port-end", str(tracker_port + 1), "--silent"])
    server = None
    try:
        server_port = _free_port()
        start = time.perf_counter()
        server = _start(emulate.server_argv("127.0.0.1", tracker_port, KEY, port=server_port,
                                            port_end=server_port + 1, sysroot=root))
        _wait_for_key(tracker_port, server, 180)
        report("ARM (emulated aarch64)", [f"sysroot ready in {sysroot_s:.1f} s ({root}); server registered "
                                          f"{time.perf_counter() - start:.1f} s after its start"])
        yield f"127.0.0.1:{tracker_port}:{KEY}"
    finally:
        if server is not None:
            _stop(server)
        _stop(tracker)


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Random inputs: normal floats; token ids in [0, 100) and a 0/1 attention mask for int inputs."""
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        shape = [d.dim_value or 1 for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.INT64:
            high = 2 if "mask" in inp.name else 100
            feeds[inp.name] = rng.integers(0, high, shape).astype(np.int64)
            if high == 2:
                feeds[inp.name][..., 0] = 1
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run_on_device(rpc_address: str, lib: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the artifact with TVM's RPC API directly (a session from the tracker, upload, load, the Relax VM on
    the server's cpu, every output fetched with get_outputs), independent of optc.remote.session. The session
    is closed (every reference dropped) before returning, so the server is free for the next one."""

    def run() -> list[np.ndarray]:
        import tvm
        from tvm import rpc

        host, port, key = rpc_address.split(":")
        session = rpc.connect_tracker(host, int(port)).request(key, session_timeout=300)
        session.upload(str(lib))
        dev = session.cpu()
        vm = tvm.runtime.vm.VirtualMachine(session.load_module(lib.name), dev)
        vm.set_input("main", *[tvm.runtime.tensor(x, device=dev) for x in feeds.values()])
        vm.invoke_stateful("main")
        outputs = vm.get_outputs("main")
        return [o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]

    try:
        return run()
    finally:
        gc.collect()


def _max_rel_error(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    errors = []
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
        assert np.isfinite(a).all()
        errors.append(float(np.max(np.abs(a - e)) / np.max(np.abs(e))))
    return max(errors)


@pytest.mark.slow
def test_arm64_artifacts_match_onnxruntime_on_emulated_aarch64(arm_rpc, tmp_path, report):
    """The corpus-style ResNet-like and BERT-like, compiled for arm64, run on the emulated device (one test, so
    that pytest-xdist does not start a second emulated server): outputs within 1e-4 relative of onnxruntime on
    this host. optc's own path (`optc run --rpc`, `optc.remote.session.run_remote`) runs both too; a
    library built for this host's CPU is refused there with one line (the negative twin)."""
    from optc.codegen.compile import compile_to_file
    from optc.remote.session import run_remote

    lines = []
    for name, model in _models().items():
        lib = compile_to_file(model, tmp_path / f"{name}.so", "arm64")
        feeds = _feeds(model)
        expected = run_ort(model, feeds)
        start = time.perf_counter()
        error = _max_rel_error(_run_on_device(arm_rpc, lib, feeds), expected)
        lines.append(f"{name}: max relative error vs onnxruntime {error:.2e}, "
                     f"session + upload + load + run {time.perf_counter() - start:.2f} s")
        assert error < 1e-4, lines[-1]
        got = run_remote(lib, feeds, arm_rpc, timeout=120)  # optc's own path, several outputs (BERT-like) too
        assert list(got) == [o.name for o in model.graph.output]
        assert _max_rel_error(list(got.values()), expected) < 1e-4
    report("ARM (emulated aarch64)", lines)
    x86 = onnx.load(ROOT / "examples" / "tiny_cnn.onnx")
    lib = compile_to_file(x86, tmp_path / "x86.so", "cpu")
    with pytest.raises(OptcError, match="cannot load artifact") as err:
        run_remote(lib, _feeds(x86), arm_rpc, timeout=120)
    assert "\n" not in str(err.value)


# -- fast checks: no qemu, no network --------------------------------------------------------------------------


def test_unknown_arch_is_one_line():
    with pytest.raises(OptcError, match="cannot emulate 'riscv64': supported architectures are aarch64"):
        emulate.ensure_sysroot("riscv64")


def test_missing_qemu_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OptcError) as err:
        emulate.ensure_sysroot(cache_dir=tmp_path / "cache")
    assert str(err.value) == ("cannot emulate aarch64: qemu user-mode not found (tried qemu-aarch64-static, "
                              "qemu-aarch64); install qemu-user-static")
    assert not (tmp_path / "cache").exists()


def test_server_argv_needs_a_built_sysroot(tmp_path, monkeypatch):
    _fake_qemu(monkeypatch, tmp_path)
    with pytest.raises(OptcError, match="no emulated aarch64 sysroot at .*ensure_sysroot"):
        emulate.server_argv("127.0.0.1", 9190, KEY, sysroot=tmp_path / "none")


def test_server_argv_runs_tvms_server_through_the_launcher(tmp_path, monkeypatch):
    _fake_qemu(monkeypatch, tmp_path)
    root = tmp_path / "sysroot-aarch64"
    root.mkdir()
    (root / emulate.STAMP).write_text(json.dumps({"spec": emulate.SPEC}))
    argv = emulate.server_argv("10.0.0.2", 9190, "arm64", port=9100, port_end=9110, sysroot=root)
    assert argv == [str(root / emulate.LAUNCHER), "-m", "tvm.exec.rpc_server", "--tracker", "10.0.0.2:9190",
                    "--key", "arm64", "--host", "127.0.0.1", "--port", "9100", "--port-end", "9110"]
    plain = emulate.standalone_server_argv(port=9100, port_end=9110, sysroot=root)
    assert "--tracker" not in plain and plain[-4:] == ["--port", "9100", "--port-end", "9110"]
    with pytest.raises(OptcError, match="needs a key"):
        emulate.server_argv("10.0.0.2", 9190, "", sysroot=root)


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A package apt cannot find stops the build with apt's own line; no partial root stays in the cache."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get/dpkg-deb not installed (the sysroot is built on Debian-based hosts)")
    _fake_qemu(monkeypatch, tmp_path)
    monkeypatch.setattr(emulate, "DEBIAN_PACKAGES", ("optc-no-such-package",))
    cache = tmp_path / "cache"
    with pytest.raises(OptcError) as err:
        emulate.ensure_sysroot(cache_dir=cache)
    message = str(err.value)
    assert message.startswith("cannot build the emulated sysroot: ") and "\n" not in message
    assert "optc-no-such-package" in message or "apt-get update" in message, message
    assert [p.name for p in cache.iterdir()] == ["sysroot-aarch64.lock"]


def _fake_qemu(monkeypatch, tmp_path: Path) -> None:
    """A `qemu-aarch64-static` on PATH that is never run (the checks that only look for it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "qemu-aarch64-static"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
