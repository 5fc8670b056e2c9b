"""Run an optc artifact on a remote device: a session from the RPC tracker, the library uploaded and loaded
there, the Relax VM run on the server's cpu (or cuda, for a cuda artifact), outputs brought back.

    mod = optc.runtime.load("m.so", rpc="127.0.0.1:9190:arm64")
    outputs = mod.run({"x": x})          # or: run_remote("m.so", {"x": x}, "127.0.0.1:9190:arm64")
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import OptcError, first_line
from .tracker import Address, connect, parse_address

__all__ = ["load_remote", "run_remote"]

#: seconds to wait for a free server and its handshake
CONNECT_TIMEOUT = 30.0


def _device(session, target: str, where: str):
    dev = session.cuda(0) if target == "cuda" else session.cpu(0)
    try:
        present = dev.exist
    except Exception as exc:  # noqa: BLE001 - a server that died right after the handshake
        raise OptcError(f"RPC server {where}: {first_line(exc, last=True)}") from None
    if not present:
        raise OptcError(f"this artifact was built for {target}, but the RPC server {where} has no such device")
    return dev


def load_remote(path: str | os.PathLike, meta: Mapping, rpc: str | Address, *,
                timeout: float = CONNECT_TIMEOUT, session_timeout: float = 0):
    """Load the artifact at `path` (metadata `meta`, see ``codegen.artifact.read_metadata``) on a server of the
    tracker at `rpc` (``HOST:PORT:KEY``). Returns an ``optc.runtime.Module`` whose ``run`` executes there (its
    ``server`` attribute says which, ``host:port``); the session lives as long as the module.

    `timeout`: seconds to wait for a free server and its handshake; `session_timeout`: seconds after which the
    server ends the session (0: never). OptcError (one line) for a bad address, an unreachable tracker, no
    server with the key, a server that does not answer in time, a missing device, and a library the server
    cannot load (built for another architecture)."""
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    from ..runtime import Module  # noqa: PLC0415

    addr = rpc if isinstance(rpc, Address) else parse_address(rpc)
    session, where = connect(addr, timeout=timeout, session_timeout=session_timeout)
    target = str(meta.get("target", "cpu"))
    device = _device(session, target, where)
    path = Path(path)
    try:
        session.upload(str(path), path.name)
        lib = session.load_module(path.name)
    except Exception as exc:  # noqa: BLE001 - the server's loader error, e.g. another architecture
        raise OptcError(f"RPC server {where} cannot load artifact '{path}' (built for {target}): "
                        f"{first_line(exc, last=True)}") from None
    try:
        vm = VirtualMachine(lib, device)
    except Exception as exc:  # noqa: BLE001
        raise OptcError(f"RPC server {where} cannot start the Relax VM of '{path}': "
                        f"{first_line(exc, last=True)}") from None
    module = Module(path, dict(meta), vm, device, remote=session)
    module.server = where
    return module


def run_remote(path: str | os.PathLike, inputs: Mapping[str, np.ndarray], rpc: str | Address, *,
               timeout: float = CONNECT_TIMEOUT, session_timeout: float = 0) -> dict[str, np.ndarray]:
    """Run the artifact at `path` once on a server of `rpc` (``HOST:PORT:KEY``): ``{input name: array}`` ->
    ``{output name: array}`` (numpy, on this host). Inputs are checked against the metadata before connecting.
    Errors as `load_remote`, plus the artifact's own one-line input errors."""
    from ..codegen.artifact import read_metadata  # noqa: PLC0415

    module = load_remote(path, read_metadata(path), rpc, timeout=timeout, session_timeout=session_timeout)
    try:
        return module.run(inputs)
    finally:
        # The session ends when its last reference goes; the VM and module hold it in reference cycles, so collect
        # them now: a one-slot server stays busy otherwise, and the next request for it waits forever.
        del module
        gc.collect()
