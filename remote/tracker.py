"""The client side of TVM's RPC tracker: `HOST:PORT:KEY` addresses, the tracker's summary, and sessions on its
servers that give up after a timeout instead of waiting forever.

A tracker (``optc rpc tracker``) keeps a queue of free servers per key; a server (``optc rpc server``) registers
under a key (``arm64``, ``x86``, ...); a client asks the tracker for a free server of a key and connects to it.
TVM's own client blocks for ever when no server has the key, when all are busy, or when the one it is handed
does not answer; every wait here has a deadline and ends in a one-line OptcError.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

from ..errors import OptcError, first_line

__all__ = ["Address", "connect", "parse_address", "require_key", "servers_by_key", "summary"]

EXAMPLE = "127.0.0.1:9190:arm64"


@dataclass(frozen=True)
class Address:
    """A tracker (`host`, `port`) and, for a session, the `key` of the servers wanted."""

    host: str
    port: int
    key: str | None = None

    @property
    def tracker(self) -> str:
        """``HOST:PORT`` of the tracker."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.tracker if self.key is None else f"{self.tracker}:{self.key}"


def parse_address(text: str, *, with_key: bool = True) -> Address:
    """``HOST:PORT:KEY`` (``with_key``) or ``HOST:PORT`` -> Address. OptcError (one line) for anything else: an
    empty host or key, a port that is not an integer in 1..65535, a key with spaces or colons."""
    want = "HOST:PORT:KEY" if with_key else "HOST:PORT"
    example = EXAMPLE if with_key else EXAMPLE.rsplit(":", 1)[0]
    parts = str(text).split(":")
    bad = OptcError(f"bad RPC address '{text}': expected {want}, e.g. {example}")
    if len(parts) != (3 if with_key else 2):
        raise bad
    host, port_text = parts[0].strip(), parts[1].strip()
    key = parts[2].strip() if with_key else None
    if not host or (with_key and (not key or any(c.isspace() for c in key))):
        raise bad
    try:
        port = int(port_text)
    except ValueError:
        raise bad from None
    if not 0 < port < 65536:
        raise OptcError(f"bad RPC address '{text}': port {port} is not in 1..65535")
    return Address(host, port, key)


# -- the tracker's wire protocol (tvm/rpc/tracker.py): magic, then [int32 size][json] messages ---------------


def _open(addr: Address, timeout: float) -> socket.socket:
    from tvm.rpc import base  # noqa: PLC0415

    try:
        sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    except TimeoutError:
        raise OptcError(f"cannot reach the RPC tracker at {addr.tracker}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise OptcError(f"cannot reach the RPC tracker at {addr.tracker}: {exc.strerror or exc}") from None
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, RuntimeError) as exc:
        sock.close()
        raise OptcError(f"cannot reach the RPC tracker at {addr.tracker}: {first_line(exc)}") from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise OptcError(f"{addr.tracker} is not a TVM RPC tracker")
    return sock


def _call(addr: Address, message: list, timeout: float):
    from tvm.rpc import base  # noqa: PLC0415

    sock = _open(addr, timeout)
    try:
        base.sendjson(sock, message)
        return base.recvjson(sock)
    except TimeoutError:
        raise OptcError(f"the RPC tracker at {addr.tracker} did not answer within {timeout:g} s") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise OptcError(f"the RPC tracker at {addr.tracker} failed: {first_line(exc)}") from None
    finally:
        sock.close()


def summary(addr: Address, timeout: float = 10.0) -> dict:
    """The tracker's summary: ``{"queue_info": {key: {"free": n, "pending": n}}, "server_info": [{"key":
    "server:KEY", "addr": [host, port]}, ...]}``. OptcError (one line) when the tracker cannot be reached."""
    from tvm.rpc import base  # noqa: PLC0415

    value = _call(addr, [base.TrackerCode.SUMMARY], timeout)
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise OptcError(f"the RPC tracker at {addr.tracker} refused the summary request: {value!r}")
    return value[1]


def servers_by_key(info: dict) -> dict[str, dict]:
    """Per key of a tracker `summary`: ``{"servers": ["host:port", ...], "free": n, "pending": n}``, keys
    sorted."""
    out: dict[str, dict] = {}
    for item in info.get("server_info", []):
        key = str(item.get("key", "")).partition(":")[2]
        host, port = item.get("addr", [None, None])[:2]
        out.setdefault(key, {"servers": [], "free": 0, "pending": 0})["servers"].append(f"{host}:{port}")
    for key, queue in info.get("queue_info", {}).items():
        entry = out.setdefault(key, {"servers": [], "free": 0, "pending": 0})
        entry["free"], entry["pending"] = int(queue.get("free", 0)), int(queue.get("pending", 0))
    return {k: {**v, "servers": sorted(v["servers"])} for k, v in sorted(out.items()) if v["servers"] or v["pending"]}


def require_key(addr: Address, timeout: float = 10.0) -> int:
    """How many servers are registered with the tracker under ``addr.key``; OptcError (one line) when the tracker
    cannot be reached or has none (TVM's request would wait for ever)."""
    keys = servers_by_key(summary(addr, timeout))
    count = len(keys.get(addr.key, {}).get("servers", []))
    if count == 0:
        known = ", ".join(f"'{k}'" for k, v in keys.items() if v["servers"]) or "none"
        raise OptcError(f"no RPC server with key '{addr.key}' is registered with the tracker at {addr.tracker} "
                        f"(keys there: {known})")
    return count


def _request(addr: Address, timeout: float) -> tuple[str, int, str]:
    """Ask the tracker for a free server of ``addr.key``: (host, port, match key)."""
    from tvm.rpc import base  # noqa: PLC0415

    value = _call(addr, [base.TrackerCode.REQUEST, addr.key, "", 1], timeout)
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise OptcError(f"the RPC tracker at {addr.tracker} refused a request for key '{addr.key}': {value!r}")
    host, port, match = value[1]
    return str(host), int(port), str(match)


def _connect_server(host: str, port: int, match: str, timeout: float, session_timeout: float):
    """tvm.rpc.connect with a deadline (TVM's handshake has none): the session; TimeoutError when the server does
    not answer in time, ConnectionError when it refuses."""
    from tvm import rpc  # noqa: PLC0415

    box: dict = {}

    def _go() -> None:
        try:
            box["session"] = rpc.connect(host, port, match, session_timeout=session_timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=_go, daemon=True, name="optc-rpc-connect")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{host}:{port}")
    if "error" in box:
        raise ConnectionError(first_line(box["error"], last=True))
    return box["session"]


def connect(addr: Address, *, timeout: float = 30.0, session_timeout: float = 0, retries: int = 3):
    """A session on a free server of ``addr.key``: ``(tvm.rpc.RPCSession, "host:port" of the server)``.

    Checks first that the tracker answers and that a server has the key; then waits at most `timeout` seconds in
    all for a free server and its handshake, trying another server up to `retries` times when the one handed out
    refuses the connection (it died after registering). `session_timeout` (seconds, 0 = none): the server ends
    the session after that long. OptcError (one line) for each failure."""
    if addr.key is None:
        raise OptcError(f"an RPC session needs HOST:PORT:KEY, got '{addr}'")
    deadline = time.monotonic() + timeout
    require_key(addr, min(timeout, 10.0))
    last = ""
    for _ in range(max(1, retries)):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            host, port, match = _request(addr, left)
        except OptcError as exc:
            if "did not answer" in str(exc):
                raise OptcError(f"no RPC server with key '{addr.key}' became free within {timeout:g} s "
                                f"(tracker {addr.tracker})") from None
            raise
        try:
            return _connect_server(host, port, match, max(0.1, deadline - time.monotonic()), session_timeout), \
                f"{host}:{port}"
        except TimeoutError:
            raise OptcError(f"the RPC server at {host}:{port} (key '{addr.key}') did not answer within "
                            f"{timeout:g} s") from None
        except ConnectionError as exc:
            last = f"{host}:{port}: {exc}"
    raise OptcError(f"could not open a session on an RPC server with key '{addr.key}' within {timeout:g} s"
                    + (f" (last: {last})" if last else ""))
