#!/usr/bin/env python
"""Distributed tuning on loopback (a script, not a test): `optc compile --tune --rpc` with one x86 server, with
two, and with two of which one is killed (its process group, SIGKILL) during its first measurement.

Each run starts from an empty database; the model is a static-shape MLP (x[4,64] -> MatMul, Add, Relu, MatMul:
two tunable kernels). Prints a markdown table: servers, wall time of the compile, candidates measured per server,
candidates failed, and the ratio of wall times against one server.

    python benchmarks/distributed_tuning.py --trials 16
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers: the same MLP and processes
from report import cpu_model  # noqa: E402

from tests.test_rpc import CLI, Cluster, mlp  # noqa: E402


def tune(cluster: Cluster, model: Path, work: Path, trials: int, kill: bool) -> dict:
    killed = threading.Event()
    if kill:
        victim = cluster.servers[-1]

        def _kill():
            for line in victim.popen.stderr:
                if "load_module" in line:
                    os.killpg(victim.popen.pid, signal.SIGKILL)
                    killed.set()
                    return

        threading.Thread(target=_kill, daemon=True).start()
    start = time.perf_counter()
    proc = subprocess.run([*CLI, "compile", str(model), "-o", str(work / "m.so"), "--tune", "--trials", str(trials),
                           "--db", str(work / "db"), "--rpc", cluster.rpc, "--json", "-q"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    tuning = json.loads(proc.stdout)["tuning"]
    return {"wall": wall, "rpc": tuning["rpc"], "trials": tuning["trials"], "killed": killed.is_set()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = mlp(Path(tmp) / "mlp.onnx")
        for label, n, kill in (("1 server", 1, False), ("2 servers", 2, False), ("2 servers, 1 killed", 2, True)):
            cluster = Cluster(n, key=f"bench{n}{int(kill)}", verbose=kill)
            work = Path(tempfile.mkdtemp(dir=tmp))
            try:
                rows.append((label, tune(cluster, model, work, args.trials, kill)))
            finally:
                cluster.stop()
    base = rows[0][1]["wall"]
    print(f"trials {args.trials}; CPU: {cpu_model()} ({os.cpu_count()} cores)\n")
    print("| run | wall (s) | vs 1 server | trials | measured per server | failed |")
    print("|---|---:|---:|---:|---|---|")
    for label, r in rows:
        per = ", ".join(str(v) for v in r["rpc"]["measured"].values())
        failed = sum(r["rpc"]["failed"].values())
        print(f"| {label} | {r['wall']:.1f} | {base / r['wall']:.2f}x | {r['trials']} | {per} | {failed}"
              + (" (killed during its first measurement)" if r["killed"] else "") + " |")


if __name__ == "__main__":
    main()
