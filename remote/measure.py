"""MetaSchedule measurements on the servers of a TVM RPC tracker (distributed tuning).

Candidates are built here (MetaSchedule's LocalBuilder) and linked here into a shared library, with the target's
cross compiler for arm64, so a server needs no compiler; ``rpc_runner`` then sends each one to a free server of
the key: one worker per registered server, so they measure in parallel. A candidate whose server dies or does
not answer fails (MetaSchedule records the failure and tunes on); nothing else is lost. Which server measured
what is appended to a log, summed by ``servers_used``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import Counter
from pathlib import Path

from .tracker import Address, connect, parse_address, require_key

__all__ = ["check_servers", "export_function", "rpc_runner", "servers_used"]

#: seconds a measurement session may last on a server (an emulated device loads and times slowly)
SESSION_TIMEOUT = 60.0
#: seconds to wait for a free server and its handshake, per candidate
CONNECT_TIMEOUT = 60.0


def check_servers(rpc: str | Address, timeout: float = 30.0) -> int:
    """Before any long work: the tracker at `rpc` (``HOST:PORT:KEY``) answers, servers are registered under the
    key, and one of them opens a session within `timeout` seconds. Returns the number of servers registered.
    OptcError (one line) otherwise."""
    addr = rpc if isinstance(rpc, Address) else parse_address(rpc)
    count = require_key(addr, min(timeout, 10.0))
    session, _ = connect(addr, timeout=timeout)
    del session  # closes the probe session
    return count


def _export_shared(mod, cc: str | None) -> str:
    """Link a built candidate into ``tvm_tmp_mod.so`` in a new temporary directory, with `cc` (None: the host's
    compiler); the builder's default, a ``.tar`` of objects, would need a compiler on the server."""
    path = os.path.join(tempfile.mkdtemp(prefix="optc-candidate-"), "tvm_tmp_mod.so")
    if cc:
        mod.export_library(path, cc=cc)
    else:
        mod.export_library(path)
    return path


def export_function(target):
    """The LocalBuilder export function for candidates measured over RPC: a shared library linked by
    ``codegen.targets.cross_compiler(target)`` (OptcError, one line, when arm64's is missing)."""
    from ..codegen.targets import cross_compiler  # noqa: PLC0415

    return functools.partial(_export_shared, cc=cross_compiler(target))


def _create_session(rpc_config, *, timeout: float):
    """RPCRunner's f_create_session: a session with deadlines (TVM's waits for ever), tagged with its server."""
    addr = Address(rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key)
    session, where = connect(addr, timeout=timeout, session_timeout=rpc_config.session_timeout_sec)
    session.optc_server = where
    session.optc_measured = False
    return session


def _host_fill(tensor) -> None:
    """Fill a (remote) tensor with random values made here: for servers with TVM's runtime only, which lack
    ``tvm.contrib.random.random_fill_for_measure`` (the emulated aarch64 one)."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng()
    dtype = np.dtype(str(tensor.dtype))
    shape = tuple(int(d) for d in tensor.shape)
    if dtype.kind == "f":
        values = rng.standard_normal(shape).astype(dtype)
    elif dtype.kind in "iu":
        values = rng.integers(0, 8, shape).astype(dtype)
    else:
        values = np.zeros(shape, dtype)
    tensor.copyfrom(values)


def _alloc_argument(session, device, args_info, alloc_repeat):
    """RPCRunner's f_alloc_argument: the server's random fill when it has one, else values uploaded from here."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common  # noqa: PLC0415

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except AttributeError:
        fill = _host_fill
    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _log(log: str, line: str) -> None:
    with open(log, "a") as f:  # one short line per write: appends from the workers do not interleave
        f.write(line + "\n")


def _run_evaluator(session, rt_mod, device, evaluator_config, repeated_args, *, log: str):
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_run_evaluator  # noqa: PLC0415

    costs = default_run_evaluator(session, rt_mod, device, evaluator_config, repeated_args)
    session.optc_measured = True
    _log(log, f"ok {session.optc_server}")
    return costs


def _cleanup(session, remote_path, *, log: str) -> None:
    """Remove the candidate from the server; a server that died meanwhile is logged, not an error here."""
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_cleanup  # noqa: PLC0415

    if session is None or not getattr(session, "optc_measured", False):
        _log(log, f"failed {getattr(session, 'optc_server', '-')}")
    try:
        default_cleanup(session, remote_path)
    except Exception:  # noqa: BLE001, S110 - the server is gone: nothing left to clean
        pass


def rpc_runner(rpc: str | Address, evaluator_config, log: str | os.PathLike, *,
               session_timeout: float = SESSION_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT):
    """A MetaSchedule ``RPCRunner`` measuring on the tracker's servers of the key in `rpc` (``HOST:PORT:KEY``),
    one worker per server registered now. `log`: a file that receives ``ok HOST:PORT`` per measurement and
    ``failed HOST:PORT`` (``-`` when no server was reached) per failed one. Returns ``(runner, servers)``."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    addr = rpc if isinstance(rpc, Address) else parse_address(rpc)
    servers = require_key(addr)
    config = ms.runner.RPCConfig(tracker_host=addr.host, tracker_port=addr.port, tracker_key=addr.key,
                                 session_timeout_sec=int(session_timeout))
    runner = ms.runner.RPCRunner(
        config, evaluator_config, max_workers=servers,
        f_create_session=functools.partial(_create_session, timeout=connect_timeout),
        f_alloc_argument=_alloc_argument,
        f_run_evaluator=functools.partial(_run_evaluator, log=str(log)),
        f_cleanup=functools.partial(_cleanup, log=str(log)))
    return runner, servers


def servers_used(log: str | os.PathLike) -> dict:
    """Sum of a runner `log`: ``{"measured": {"host:port": n, ...}, "failed": {"host:port" or "-": n}}``."""
    measured: Counter = Counter()
    failed: Counter = Counter()
    path = Path(log)
    if path.exists():
        for line in path.read_text().splitlines():
            status, _, where = line.partition(" ")
            (measured if status == "ok" else failed)[where] += 1
    return {"measured": dict(sorted(measured.items())), "failed": dict(sorted(failed.items()))}

