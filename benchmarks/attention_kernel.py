#!/usr/bin/env python
"""What the fused attention kernel's key limits save (codegen/attention.py): the same kernel built with
`key_limits=True` (fast math: each block of query rows computes keys only up to the last one its mask leaves open)
and `key_limits=False` (every key), on one mask per row of the table, alternating in one process (a script, not a
test).

Per (shape, mask): Q [1, S, H, D], K and V [1, S, KV, D] (BSNH, grouped-query where KV < H), the mask [1, 1, S, S]
float32: `causal` (torch's `finfo.min` above the diagonal), `padding` (the last half of the keys closed for every
row) or `none` (zeros: every key open, what the limit costs when it saves nothing). The row limits come from
`row_limits_kernel` and the V check from `pack_keys_kernel`, each timed once beside (they run once per layer: a
constant mask's limits are folded at compile time). Latency: median us of `--rounds` rounds of `--repeat` calls a
turn, one thread (`TVM_NUM_THREADS=1`); outputs of the two kernels compared bit for bit.

    python benchmarks/attention_kernel.py                 # results into RESULTS.md ("Fused attention: key limits")
    python benchmarks/attention_kernel.py --no-write      # print only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from report import RESULTS, cpu_model, write_section  # noqa: E402

#: (sequence, query heads, K/V heads, head size): the Llama-style layer of benchmarks/models.py at 128 and 512
#: tokens, a GPT-2-like layer (4 heads of 64)
SHAPES = [(128, 8, 2, 32), (512, 8, 2, 32), (128, 4, 4, 64)]
MASKS = ("causal", "padding", "none")


def _mask(kind: str, s: int) -> np.ndarray:
    fmin = np.finfo(np.float32).min
    if kind == "causal":
        m = np.triu(np.full((s, s), fmin, np.float32), 1)
    elif kind == "padding":
        m = np.zeros((s, s), np.float32)
        m[:, s // 2:] = fmin
    else:
        m = np.zeros((s, s), np.float32)
    return m[None, None]


def measure(shape: tuple, kind: str, rounds: int, repeat: int) -> dict:
    import tvm
    from optc.codegen.attention import (
        AttentionShape,
        attention_kernel,
        choose_tiles,
        pack_keys_kernel,
        padded_keys,
        row_limits_kernel,
    )
    from optc.codegen.schedules import _vector_lanes, max_accumulators, vector_registers
    from optc.codegen.targets import resolve_target

    s, hq, hk, d = shape
    target = resolve_target("cpu")
    att = AttentionShape(1, hq, hk, s, s, d, d, (1, 1, s, s))
    lanes = _vector_lanes(target, 32)
    tiles = choose_tiles(att, lanes, max_accumulators(lanes * 4, registers=vector_registers(target)))

    def build(func):
        return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]

    rng = np.random.default_rng(0)

    def t(a):
        return tvm.runtime.tensor(np.ascontiguousarray(a))

    q, k, v = (t(rng.standard_normal((1, s, h, d)).astype(np.float32) * 0.5) for h in (hq, hk, hk))
    mask = t(_mask(kind, s))
    step = tiles.key_step
    kt = t(np.zeros((1, hk, padded_keys(att, tiles) // step, d, step), np.float32))
    kfin, rowlim = t(np.zeros((1, hk), np.int64)), t(np.zeros((1, 1, s), np.int64))
    pack, limits = build(pack_keys_kernel(att, tiles, finite_keys=True)), build(row_limits_kernel(att, lanes))
    pack(k, v, kt, kfin)
    limits(mask, rowlim)
    ys = {name: t(np.zeros((1, s, hq, d), np.float32)) for name in ("limits", "all")}
    calls = {"limits": (build(attention_kernel(att, tiles)), [q, kt, v, mask, rowlim, kfin, ys["limits"]]),
             "all": (build(attention_kernel(att, tiles, key_limits=False)), [q, kt, v, mask, ys["all"]]),
             "row_limits": (limits, [mask, rowlim]), "pack": (pack, [k, v, kt, kfin])}
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (f, args) in calls.items():
            f(*args)
            for _ in range(repeat):
                t0 = time.perf_counter()
                f(*args)
                times[name].append(time.perf_counter() - t0)
    row = {"shape": shape, "mask": kind, "tiles": (tiles.rows, tiles.s_vectors, tiles.o_vectors),
           "equal": bool(np.array_equal(ys["limits"].numpy(), ys["all"].numpy()))}
    row.update({name: statistics.median(ts) * 1e6 for name, ts in times.items()})
    return row


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    out = ["## Fused attention: key limits", "",
           f"`python benchmarks/attention_kernel.py --rounds {args.rounds} --repeat {args.repeat}` — "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU `{cpu_model()}`, {platform.machine()}, "
           "1 thread. The fused attention kernel with key limits (fast math) and without, alternating in one "
           "process, median us; ratio = with / without; row limits and the packing of K (with the V check) timed "
           "beside, once a layer. Masks [1, 1, S, S]: causal (`finfo.min` above the diagonal), padding (the last "
           "half of the keys closed), none (zeros).", "",
           "| S, heads / K/V heads x head size | mask | tile (rows, score vectors, output vectors) | without us | "
           "with us | ratio | row limits us | pack K us | outputs equal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, hq, hk, d = r["shape"]
        out.append(f"| {s}, {hq} / {hk} x {d} | {r['mask']} | {r['tiles']} | {r['all']:.0f} | {r['limits']:.0f} | "
                   f"{r['limits'] / r['all']:.2f}x | {r['row_limits']:.0f} | {r['pack']:.0f} | "
                   f"{'bit for bit' if r['equal'] else 'NO'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        for kind in MASKS:
            rows.append(measure(shape, kind, args.rounds, args.repeat))
            print(rows[-1], file=sys.stderr)
    text = markdown(rows, args)
    if args.no_write:
        print(text)
    else:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
