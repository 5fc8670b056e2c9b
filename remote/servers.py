"""TVM's RPC tracker and RPC server run in this process, in the foreground, as ``optc rpc tracker`` and
``optc rpc server`` do; and an emulated aarch64 server run as a supervised child process.

Both bind their socket here (port 0 picks a free port, which TVM's own launchers cannot), report where they
listen through `announce`, and return when interrupted (Ctrl-C or SIGTERM). The servers fork one process per
session, as TVM's do; they trust whoever connects (any code can be uploaded and run), so listen on loopback or
a private network only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

from ..errors import OptcError, first_line
from .tracker import Address, summary

__all__ = ["listen", "serve_emulated", "serve_server", "serve_tracker"]

#: receives where a tracker or server listens: a line for people and the same as a dict
Announce = Callable[[str, dict], None]


def listen(host: str, port: int, port_end: int | None = None) -> socket.socket:
    """A listening TCP socket on `host`:`port`, or on the first free port of [`port`, `port_end`) when
    `port_end` is given; port 0: any free port. OptcError (one line) when none can be bound."""
    ports = range(port, port_end) if port_end is not None and port_end > port and port else [port]
    last: OSError | None = None
    for p in ports:
        try:
            family = socket.getaddrinfo(host, p, type=socket.SOCK_STREAM)[0][0]
        except OSError as exc:
            raise OptcError(f"cannot listen on {host}:{p}: {exc.strerror or exc}") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno == errno.EADDRINUSE:
                continue
            break
        sock.listen(16)
        return sock
    where = f"{host}:{ports[0]}" if len(ports) == 1 else f"{host}:[{ports[0]}, {ports[-1] + 1})"
    raise OptcError(f"cannot listen on {where}: {last.strerror if last and last.strerror else last}")


def _default_signals_in_child() -> None:
    """A forked session process dies quietly on Ctrl-C / SIGTERM (Python's handlers would print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the foreground loop as Ctrl-C does (a KeyboardInterrupt), so both exit cleanly; the session
    processes forked meanwhile get the default handlers back."""
    owner = os.getpid()

    def _raise(_signum, _frame):
        if os.getpid() != owner:  # a forked session process
            _default_signals_in_child()
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    os.register_at_fork(after_in_child=_default_signals_in_child)
    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _quiet_tvm_logs(verbose: bool) -> None:
    for name in ("RPCTracker", "RPCServer"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def serve_tracker(host: str = "127.0.0.1", port: int = 9190, *, announce: Announce = lambda line, _info: print(line),
                  verbose: bool = False) -> None:
    """Run TVM's RPC tracker on `host`:`port` (0: a free port) until interrupted. `announce` receives one line,
    ``RPC tracker listening on HOST:PORT``, and the same as ``{"tracker": "HOST:PORT"}``. OptcError (one line) when the port cannot be bound."""
    import asyncio  # noqa: PLC0415

    from tvm.rpc import base  # noqa: PLC0415
    from tvm.rpc.tracker import TrackerServerHandler  # noqa: PLC0415

    _quiet_tvm_logs(verbose)
    sock = listen(host, port)
    where = sock.getsockname()
    with _sigterm_interrupts(), contextlib.suppress(KeyboardInterrupt):  # before the line: a Ctrl-C right after it exits 0
        asyncio.set_event_loop(asyncio.new_event_loop())
        handler = TrackerServerHandler(sock, base.random_key("tracker"))
        announce(f"RPC tracker listening on {host}:{where[1]}", {"tracker": f"{host}:{where[1]}"})
        handler.run()
    sock.close()


def serve_server(tracker: Address, key: str, host: str = "127.0.0.1", port: int = 9090,
                 port_end: int | None = 9199, *, announce: Announce = lambda line, _info: print(line),
                 verbose: bool = False) -> None:
    """Run TVM's RPC server on `host` (first free port of [`port`, `port_end`); port 0: any free port),
    registered with the tracker at `tracker` under `key`, until interrupted. The tracker must answer first
    (OptcError, one line, otherwise). `announce` receives ``RPC server for key KEY listening on HOST:PORT,
    registered with tracker HOST:PORT`` and the same as ``{"server", "key", "tracker"}``. OptcError when the tracker goes away for more than a minute."""
    from tvm.rpc.server import _listen_loop  # noqa: PLC0415

    if not key or ":" in key or any(c.isspace() for c in key):
        raise OptcError(f"bad RPC key '{key}': give a non-empty name without spaces or colons (e.g. arm64)")
    summary(tracker, timeout=10.0)  # an unreachable tracker is one line now, not a minute of retries
    from ..codegen.amx import request_permission  # noqa: PLC0415

    request_permission()  # the sessions it forks run AMX kernels (the permission is inherited by fork)
    _quiet_tvm_logs(verbose)
    sock = listen(host, port, port_end)
    bound = sock.getsockname()[1]
    with _sigterm_interrupts():
        try:
            announce(f"RPC server for key {key} listening on {host}:{bound}, registered with tracker "
                     f"{tracker.tracker}", {"server": f"{host}:{bound}", "key": key, "tracker": tracker.tracker})
            _listen_loop(sock, bound, key, (tracker.host, tracker.port), None, None)
        except KeyboardInterrupt:
            pass
        except RuntimeError as exc:  # connect_with_retry gave up on the tracker
            raise OptcError(f"RPC server for key {key}: lost the tracker at {tracker.tracker}: "
                            f"{first_line(exc)}") from None
        finally:
            sock.close()


def serve_emulated(tracker: Address, key: str, host: str = "127.0.0.1", port: int = 9090,
                   port_end: int = 9199, *, arch: str = "aarch64", announce: Announce = lambda line, _info: print(line),
                   progress: bool = True) -> int:
    """Run an emulated `arch` RPC server (``optc.remote.emulate``: qemu user-mode, the sysroot built on first
    use) as a child process registered with `tracker` under `key`, until interrupted or until it exits.
    Returns the child's exit status (0 when interrupted here). OptcError (one line) for an unreachable tracker
    or a sysroot that cannot be built."""
    from .emulate import ensure_sysroot, server_argv  # noqa: PLC0415

    if not key or ":" in key or any(c.isspace() for c in key):
        raise OptcError(f"bad RPC key '{key}': give a non-empty name without spaces or colons (e.g. arm64)")
    summary(tracker, timeout=10.0)
    ensure_sysroot(arch=arch, progress=progress)
    argv = server_argv(tracker.host, tracker.port, key, host=host, port=port, port_end=port_end)
    with _sigterm_interrupts():
        child = subprocess.Popen(argv, start_new_session=True)  # its own group: one signal ends it and its sessions
        try:
            announce(f"emulated {arch} RPC server for key {key} starting on {host}:[{port}, {port_end}) "
                     f"(pid {child.pid}), registering with tracker {tracker.tracker}",
                     {"server": f"{host}:[{port}, {port_end})", "key": key, "tracker": tracker.tracker,
                      "emulate": arch, "pid": child.pid})
            return child.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
