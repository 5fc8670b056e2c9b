"""`optc rpc`: TVM's RPC tracker and servers (the devices `optc run --rpc` and `optc compile --tune --rpc` use),
and the tracker's status."""

from __future__ import annotations

import json
import sys


def _announcer(as_json: bool):
    """Prints where a tracker or server listens: its line, or (--json) one JSON object on one line."""

    def _announce(line: str, info: dict) -> None:
        print(json.dumps(info) if as_json else line, flush=True)

    return _announce


def _tracker(args) -> int:
    from ..remote.servers import serve_tracker

    serve_tracker(args.host, args.port, announce=_announcer(args.json), verbose=args.verbose)
    return 0


def _server(args) -> int:
    from ..remote.servers import serve_emulated, serve_server
    from ..remote.tracker import parse_address

    tracker = parse_address(args.tracker, with_key=False)
    port_end = args.port_end if args.port_end is not None else (args.port + 100 if args.port else None)
    if args.emulate:
        return serve_emulated(tracker, args.key, args.host, args.port or 9090, port_end or 9199, arch=args.emulate,
                              announce=_announcer(args.json))
    serve_server(tracker, args.key, args.host, args.port, port_end, announce=_announcer(args.json),
                 verbose=args.verbose)
    return 0


def _status(args) -> int:
    from ..remote.tracker import parse_address, servers_by_key, summary

    tracker = parse_address(args.tracker, with_key=False)
    keys = servers_by_key(summary(tracker, timeout=args.timeout))
    if args.json:
        print(json.dumps({"tracker": tracker.tracker, "keys": keys}, indent=2))
        return 0
    print(f"tracker {tracker.tracker}: {sum(len(v['servers']) for v in keys.values())} servers")
    for key, entry in keys.items():
        print(f"  {key}: {len(entry['servers'])} servers ({entry['free']} free, {entry['pending']} requests waiting)"
              + (f": {', '.join(entry['servers'])}" if entry["servers"] else ""))
    return 0


def run(args) -> int:
    if not getattr(args, "rpc_func", None):
        args.rpc_parser.print_help(sys.stderr)
        return 2
    return args.rpc_func(args)


def register(sub) -> None:
    p = sub.add_parser("rpc", help="run a TVM RPC tracker or server, or show a tracker's servers",
                       description="TVM's RPC tracker and servers, in the foreground (Ctrl-C stops them): a "
                       "tracker keeps the free servers of each key; a server registers with it under a key and "
                       "runs what clients upload (it trusts them: listen on loopback or a private network). "
                       "`optc run --rpc HOST:PORT:KEY` runs an artifact on such a server; "
                       "`optc compile --tune --rpc HOST:PORT:KEY` measures tuning candidates on all of them.")
    rpc_sub = p.add_subparsers(dest="rpc_command", metavar="COMMAND")
    p.set_defaults(func=run, rpc_parser=p)

    t = rpc_sub.add_parser("tracker", help="run an RPC tracker",
                           description="Run TVM's RPC tracker; prints 'RPC tracker listening on HOST:PORT'.")
    t.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    t.add_argument("--port", type=int, default=9190, help="port to listen on (default 9190; 0: any free port)")
    t.add_argument("-v", "--verbose", action="store_true", help="log TVM's tracker messages on stderr")
    t.add_argument("--json", action="store_true", help='print where it listens as one JSON line: {"tracker": '
                   '"HOST:PORT"}')
    t.set_defaults(rpc_func=_tracker)

    s = rpc_sub.add_parser("server", help="run an RPC server registered with a tracker",
                           description="Run TVM's RPC server (this machine as a device), registered with the "
                           "tracker under KEY; prints where it listens. --emulate aarch64 runs an emulated aarch64 "
                           "device instead (qemu user-mode; its root is built on first use and cached).")
    s.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the tracker to register with")
    s.add_argument("--key", required=True, help="the device key clients ask for (e.g. arm64, x86)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=9090, help="first port tried (default 9090; the first free one "
                   "below --port-end is taken; 0: any free port)")
    s.add_argument("--port-end", type=int, metavar="PORT", help="end of the port range, exclusive (default "
                   "--port + 100)")
    s.add_argument("--emulate", choices=["aarch64"], help="run an emulated aarch64 server (qemu user-mode)")
    s.add_argument("-v", "--verbose", action="store_true", help="log TVM's server messages (sessions) on stderr")
    s.add_argument("--json", action="store_true", help='print where it listens as one JSON line: {"server": '
                   '"HOST:PORT", "key", "tracker"}')
    s.set_defaults(rpc_func=_server)

    st = rpc_sub.add_parser("status", help="list a tracker's servers per key",
                            description="List the servers registered with a tracker, per key: how many, how many "
                            "are free, how many requests wait, and their addresses.")
    st.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the tracker to ask")
    st.add_argument("--timeout", type=float, default=10.0, metavar="SEC", help="seconds to wait for the tracker "
                    "(default 10)")
    st.add_argument("--json", action="store_true", help="print one JSON object: tracker, keys ({key: {servers, "
                    "free, pending}})")
    st.set_defaults(rpc_func=_status)
