"""TVM RPC on loopback: `optc rpc tracker/server/status`, `optc run --rpc` / `runtime.load(rpc=...)`, distributed
tuning (`optc compile --tune --rpc`) across two x86 servers, a server killed mid-tuning, and the one-line errors.

Every tracker and server is an `optc rpc` subprocess on a free port (port 0), so pytest-xdist workers never
collide."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc import runtime
from optc.errors import OptcError
from optc.remote.tracker import Address, parse_address, servers_by_key, summary

from .conftest import run_ort

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
CLI = [sys.executable, "-m", "optc.tools.cli"]


def optc_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """`optc ARGS` in this process (TVM is already imported here: seconds instead of a new interpreter)."""
    from optc.tools.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error:"), proc.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


class Proc:
    """An `optc rpc ...` subprocess in its own process group; `line` is the first line it printed."""

    def __init__(self, *args: str):
        self.popen = subprocess.Popen([*CLI, "rpc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
        self.line = self.popen.stdout.readline().strip()
        assert self.line, self.popen.stderr.read()

    @property
    def address(self) -> str:
        """HOST:PORT from 'RPC tracker listening on HOST:PORT' / 'RPC server ... listening on HOST:PORT, ...'."""
        return self.line.split(" listening on ")[1].split(",")[0]

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send `sig` to its process group: its exit status, or None when it had to be killed after 20 s."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
        try:
            return self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            return None


def _wait_for_servers(tracker: str, key: str, count: int, timeout: float = 60.0) -> None:
    addr = parse_address(tracker, with_key=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = servers_by_key(summary(addr)).get(key, {})
        if len(entry.get("servers", [])) == count and entry.get("free") == count:  # registered and queued
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} servers for '{key}' did not register with {tracker}")


class Cluster:
    """A tracker and `n` x86 servers under `key`."""

    def __init__(self, n: int = 2, key: str = "x86", verbose: bool = False):
        self.key = key
        self.tracker = Proc("tracker", "--port", "0")
        extra = ["-v"] if verbose else []
        self.servers = [Proc("server", "--tracker", self.tracker.address, "--key", key, "--port", "0", *extra)
                        for _ in range(n)]
        _wait_for_servers(self.tracker.address, key, n)

    @property
    def rpc(self) -> str:
        return f"{self.tracker.address}:{self.key}"

    def stop(self) -> None:
        for p in [*self.servers, self.tracker]:
            p.stop()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("rpc") / "tiny.so")
    proc = optc_cli("compile", str(EXAMPLE), "-o", path, "-q")
    assert proc.returncode == 0, proc.stderr
    return path


def _free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlp(path: Path, d: int = 64) -> Path:
    """A static-shape MLP (two tunable kernels): x[4,d] -> MatMul, Add, Relu, MatMul -> y[4,d]."""
    rng = np.random.default_rng(1)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["hr"]), helper.make_node("MatMul", ["hr", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, d])],
                              [w("w1", (d, 2 * d)), w("b1", (2 * d,)), w("w2", (2 * d, d))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


# ----------------------------------------------------------------------------- addresses (no network)
@pytest.mark.parametrize("text, want", [("127.0.0.1:9190:arm64", Address("127.0.0.1", 9190, "arm64")),
                                        ("farm.local:1:x86-avx512", Address("farm.local", 1, "x86-avx512"))])
def test_parse_address(text, want):
    assert parse_address(text) == want and str(want) == text


@pytest.mark.parametrize("text", ["", "127.0.0.1", "127.0.0.1:9190", "127.0.0.1:x:arm64", "127.0.0.1:9190:",
                                  ":9190:arm64", "127.0.0.1:0:arm64", "127.0.0.1:70000:arm64", "a:1:b:c",
                                  "127.0.0.1:9190:arm 64"])
def test_parse_address_refuses(text):
    with pytest.raises(OptcError, match=f"bad RPC address '{text}'") as info:
        parse_address(text)
    assert "\n" not in str(info.value)


def test_parse_tracker_address():
    assert parse_address("h:5", with_key=False) == Address("h", 5)
    with pytest.raises(OptcError, match="expected HOST:PORT,"):
        parse_address("h:5:k", with_key=False)


# ----------------------------------------------------------------------------- tracker, servers, status
def test_status_lists_servers_per_key(cluster, capsys):
    proc = cli(capsys, "rpc", "status", "--tracker", cluster.tracker.address, "--json")
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(proc.stdout)["keys"]
    assert sorted(keys["x86"]["servers"]) == sorted(s.address for s in cluster.servers)
    text = cli(capsys, "rpc", "status", "--tracker", cluster.tracker.address).stdout
    assert "x86: 2 servers" in text and cluster.servers[0].address in text


def test_listen_errors(cluster, capsys):
    port = cluster.tracker.address.rsplit(":", 1)[1]
    _one_line_error(cli(capsys, "rpc", "tracker", "--port", port), f"cannot listen on 127.0.0.1:{port}")
    free = _free_port()
    _one_line_error(cli(capsys, "rpc", "status", "--tracker", f"127.0.0.1:{free}"), "cannot reach the RPC tracker")
    _one_line_error(cli(capsys, "rpc", "server", "--tracker", "127.0.0.1", "--key", "x86"), "bad RPC address")
    _one_line_error(cli(capsys, "rpc", "server", "--tracker", cluster.tracker.address, "--key", "a b"), "bad RPC key")


def test_server_without_tracker_is_one_line():
    port = _free_port()
    _one_line_error(optc_cli("rpc", "server", "--tracker", f"127.0.0.1:{port}", "--key", "x86", "--port", "0"),
                    f"cannot reach the RPC tracker at 127.0.0.1:{port}")


def test_tracker_json_and_ctrl_c():
    tracker = Proc("tracker", "--port", "0", "--json")
    host, port = json.loads(tracker.line)["tracker"].split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert tracker.stop(signal.SIGINT) == 0
    assert "Traceback" not in tracker.popen.stderr.read()


# ----------------------------------------------------------------------------- running an artifact remotely
def test_run_remote_equals_local(cluster, artifact, tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    proc = optc_cli("run", artifact, "--inputs", str(tmp_path / "x.npz"), "--rpc", cluster.rpc,
                    "-o", str(tmp_path / "remote.npz"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["server"] in [s.address for s in cluster.servers]
    remote = np.load(tmp_path / "remote.npz")["probs"]
    local = runtime.load(artifact).run({"x": x})["probs"]
    np.testing.assert_array_equal(remote, local)  # same library, same CPU kind: bit-identical
    (want,) = run_ort(str(EXAMPLE), {"x": x})
    np.testing.assert_allclose(remote, want, rtol=1e-4, atol=1e-5)


def test_runtime_load_rpc(cluster, artifact):
    module = runtime.load(artifact, rpc=cluster.rpc)
    assert module.server in [s.address for s in cluster.servers] and module.server in repr(module)
    x = np.ones((1, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(module.run({"x": x})["probs"], runtime.load(artifact).run({"x": x})["probs"])
    with pytest.raises(OptcError, match="input 'x': expected float32"):
        module.run({"x": x.astype(np.float64)})


def test_remote_model_with_two_outputs(cluster, tmp_path):
    """Several outputs come back from a remote VM (a returned tuple is a remote handle: read through the VM's
    stateful calls)."""
    from optc.codegen.compile import compile_to_file

    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("Tanh", ["s"], ["t"])]
    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8]) for n in ("a", "b", "t", "p")]
    model = helper.make_model(helper.make_graph(nodes, "two", spec[:2], spec[2:]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    lib = compile_to_file(model, tmp_path / "two.so")
    rng = np.random.default_rng(5)
    feeds = {"a": rng.standard_normal((2, 8)).astype(np.float32), "b": rng.standard_normal((2, 8)).astype(np.float32)}
    got = runtime.load(lib, rpc=cluster.rpc).run(feeds)
    assert list(got) == ["t", "p"]
    for name, want in zip(("t", "p"), run_ort(model, feeds), strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_run_rpc_errors(cluster, artifact, capsys):
    port = _free_port()
    _one_line_error(optc_cli("run", artifact, "--rpc", f"127.0.0.1:{port}:x86"),  # the real command, once
                    f"cannot reach the RPC tracker at 127.0.0.1:{port}: Connection refused")
    msg = _one_line_error(cli(capsys, "run", artifact, "--rpc", f"{cluster.tracker.address}:arm64"),
                          "no RPC server with key 'arm64' is registered with the tracker")
    assert "(keys there: " in msg and "'x86'" in msg
    _one_line_error(cli(capsys, "run", artifact, "--rpc", cluster.tracker.address), "bad RPC address")
    _one_line_error(cli(capsys, "run", str(EXAMPLE), "--rpc", cluster.rpc), "is an ONNX model")


def test_busy_then_stuck_server_times_out(cluster, artifact, capsys):
    """One more server, under its own key: while a session holds it, a second request waits `timeout` and gives
    up; once it stops answering (SIGSTOP), a session request gives up after `timeout`; Ctrl-C then ends it
    cleanly."""
    extra = Proc("server", "--tracker", cluster.tracker.address, "--key", "extra", "--port", "0")
    rpc = f"{cluster.tracker.address}:extra"
    try:
        _wait_for_servers(cluster.tracker.address, "extra", 1)
        held = runtime.load(artifact, rpc=rpc)
        with pytest.raises(OptcError, match="no RPC server with key 'extra' became free within 2 s"):
            runtime.load(artifact, rpc=rpc, timeout=2)
        del held
        _wait_for_servers(cluster.tracker.address, "extra", 1)  # back in the tracker's queue
        os.killpg(extra.popen.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(OptcError, match=rf"the RPC server at {extra.address} \(key 'extra'\) did not answer "
                                            r"within 2 s"):
            runtime.load(artifact, rpc=rpc, timeout=2)
        assert time.monotonic() - start < 15
        _one_line_error(cli(capsys, "run", artifact, "--rpc", rpc, "--rpc-timeout", "2"), "within 2 s")
    finally:
        os.killpg(extra.popen.pid, signal.SIGCONT)
        time.sleep(1)
        code = extra.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in extra.popen.stderr.read()


# ----------------------------------------------------------------------------- distributed tuning
def test_compile_rpc_errors_before_work(cluster, tmp_path, capsys):
    model = str(mlp(tmp_path / "mlp.onnx"))
    out = str(tmp_path / "m.so")
    db = str(tmp_path / "db")
    port = _free_port()
    start = time.monotonic()
    _one_line_error(cli(capsys, "compile", model, "-o", out, "--tune", "--trials", "8", "--db", db,
                        "--rpc", f"127.0.0.1:{port}:x86"), "cannot reach the RPC tracker")
    _one_line_error(cli(capsys, "compile", model, "-o", out, "--tune", "--trials", "8", "--db", db,
                        "--rpc", f"{cluster.tracker.address}:nokey"), "no RPC server with key 'nokey'")
    _one_line_error(cli(capsys, "compile", model, "-o", out, "--tune", "--db", db, "--rpc", "x:y"),
                    "bad RPC address 'x:y'")
    _one_line_error(cli(capsys, "compile", model, "-o", out, "--rpc", cluster.rpc), "use it with --tune")
    assert time.monotonic() - start < 30  # no lowering, no tuning, no build: each is refused at the start
    assert not os.path.exists(out) and not os.path.exists(db)


def _tuned_output_matches(model: Path, lib: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    (want,) = run_ort(str(model), {"x": x})
    np.testing.assert_allclose(runtime.load(lib).run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_distributed_tuning_with_a_server_killed(tmp_path):
    """Tuning across two servers, one of them killed (its whole process group, as a machine dying) as it loads
    its second candidate: both measured, the candidate in flight on the dead one failed, tuning finished on the
    other, and the database (one directory) serves later compiles."""
    c = Cluster(2, key="dying", verbose=True)
    survivor, victim = c.servers
    killed = threading.Event()

    def _kill_on_second_measurement():
        loads = 0
        for line in victim.popen.stderr:  # TVM's server logs each session's load_module with -v
            loads += "load_module" in line
            if loads == 2:
                os.killpg(victim.popen.pid, signal.SIGKILL)
                killed.set()
                return

    watcher = threading.Thread(target=_kill_on_second_measurement, daemon=True)
    watcher.start()
    try:
        model = mlp(tmp_path / "mlp.onnx")
        db = tmp_path / "db"
        proc = optc_cli("compile", str(model), "-o", str(tmp_path / "m.so"), "--tune", "--trials", "8", "--db",
                        str(db), "--rpc", c.rpc, "--json", "-q")
        assert proc.returncode == 0, proc.stderr
        assert killed.is_set()
        tuning = json.loads(proc.stdout)["tuning"]
        rpc = tuning["rpc"]
        assert rpc["servers"] == 2
        # every measurement ran remotely, on both servers (the first batch went out two at a time). The kill
        # follows the victim's second load_module line by a thread's reaction time, so its second measurement
        # may finish first (seen under load): then it measured 2 and nothing was in flight on it.
        victim_measured = rpc["measured"].get(victim.address, 0)
        assert victim_measured in (1, 2)
        if victim_measured == 1:
            assert rpc["failed"].get(victim.address, 0) >= 1  # the candidate in flight on it
        assert rpc["measured"].get(survivor.address, 0) >= tuning["default_records"]
        assert set(rpc["measured"]) | set(rpc["failed"]) <= {survivor.address, victim.address, "-"}
        _tuned_output_matches(model, tmp_path / "m.so")
        # the database survived whole: --db alone applies it to a later compile (no server needed)
        later = optc_cli("compile", str(model), "-o", str(tmp_path / "later.so"), "--db", str(db), "--json", "-q")
        assert later.returncode == 0, later.stderr
        assert json.loads(later.stdout)["build"]["tuned"] >= 1
        _tuned_output_matches(model, tmp_path / "later.so")
    finally:
        c.stop()
