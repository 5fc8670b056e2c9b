"""Writing a benchmark's section of benchmarks/RESULTS.md (other sections are left as they are)."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def write_section(path: str, section: str) -> None:
    """Replace the section whose `## Title` line opens `section` (append it when missing), atomically."""
    title = section.lstrip("\n").splitlines()[0].strip()
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + section.strip("\n").splitlines() + ([""] if end < len(lines) else [])
                        + lines[end:]) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 9B45"), else what `platform` knows: the CPU that
    every figure of RESULTS.md names."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def layer_benchmark(description: str, layers: Sequence[tuple], measure: Callable[..., dict],
                    markdown: Callable[[list[dict], argparse.Namespace], str]) -> int:
    """The command line of a per-layer benchmark (``--rounds``, ``--seconds``, ``--no-write``): ``measure(*layer,
    args)`` for each layer (a row with "layer", "ms" per contestant and "speedup"), a progress line each, then
    ``markdown(rows, args)`` printed and written as the benchmark's section of RESULTS.md. Returns the exit code."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=20, help="at least this many alternating rounds (default 20)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per layer, all contestants (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    rows = []
    for layer in layers:
        row = measure(*layer, args)
        rows.append(row)
        times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in row["ms"].items())
        print(f"{row['layer']}: {times} ({row['speedup']:.2f}x)", flush=True)
    section = markdown(rows, args)
    if not args.no_write:
        write_section(RESULTS, section)
    print(section)
    return 0
