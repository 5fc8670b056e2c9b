#!/usr/bin/env python
"""Benchmark `--precision bf16` against fp32 (both optc, -O2, untuned) and onnxruntime fp32 (a script, not a test).

Per model: build both optc precisions once, then time the three runtimes in alternating rounds (fp32, bf16,
onnxruntime; one run each per round, so drift in the machine's load hits all three alike) and report medians,
plus the largest bf16 - fp32 difference relative to the largest output. One thread (TVM_NUM_THREADS=1 is set
before TVM starts). On a CPU with AMX-BF16 the matmuls and unpadded convolutions run on AMX tiles; elsewhere bf16
is emulated (TVM widens bfloat16 to float32 inside the kernels), so this measures the cost of the operand
rounding and the bfloat16 weight reads.

    python benchmarks/bf16.py                    # results into RESULTS.md ("bf16")
    python benchmarks/bf16.py --rounds 20 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from models import bert_like, resnet_like  # noqa: E402
from report import RESULTS, write_section  # noqa: E402

MODELS = {  # small enough for a short run on 2 cores
    "resnet_like (w16, 64x64)": lambda: resnet_like(width=16, blocks=(1, 1, 1, 1), image=64),
    "bert_like (2 layers, seq 64)": lambda: bert_like(layers=2, hidden=256, heads=4, seq=64, ffn=1024),
}


def measure(name: str, model, rounds: int) -> dict:
    import optc  # noqa: PLC0415
    from optc.inputs import random_inputs, session_input_specs  # noqa: PLC0415
    from optc.ortsession import session  # noqa: PLC0415

    data = model.SerializeToString()
    ort = session(data, optimize=True, threads=1)
    feeds = random_inputs(session_input_specs(ort), seed=0)
    modules = {p: optc.compile(data, precision=p) for p in ("fp32", "bf16")}
    runs = {"fp32": lambda: modules["fp32"].run(feeds), "bf16": lambda: modules["bf16"].run(feeds),
            "onnxruntime": lambda: ort.run(None, feeds)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):  # warm-up
        for fn in runs.values():
            fn()
    for _ in range(rounds):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    y32 = next(iter(modules["fp32"].run(feeds).values()))
    y16 = next(iter(modules["bf16"].run(feeds).values()))
    ms = {k: float(np.median(v) * 1e3) for k, v in times.items()}
    return {"model": name, **ms, "rel_diff": float(np.max(np.abs(y16 - y32)) / np.max(np.abs(y32)))}


def markdown(rows: list[dict], rounds: int) -> str:
    from optc.codegen.targets import host_cpu_name, llvm_features, resolve_target  # noqa: PLC0415

    feats = set(llvm_features(resolve_target("cpu")))
    lines = ["## bf16", "",
             f"`python benchmarks/bf16.py` on {platform.processor() or platform.machine()} ({host_cpu_name()}), "
             f"1 thread, median of {rounds} alternating rounds, optc -O2 untuned. This CPU "
             + ("has AMX-BF16: optc's matmuls and unpadded convolutions run on AMX tdpbf16ps tiles, the others that "
                "fit on AVX512-BF16 vdpbf16ps, the rest widen bfloat16 to float32" if "amx-bf16" in feats else
                "has AVX512-BF16 (no AMX): the matmuls and unpadded convolutions run on vdpbf16ps, the rest widen "
                "bfloat16 to float32" if "avx512bf16" in feats else
                "has **no** AMX-BF16 or AVX512-BF16: bf16 is emulated here (TVM's kernels widen bfloat16 to float32)")
             + "; see codegen/precision.py.", "",
             "| model | optc fp32 ms | optc bf16 ms | bf16 / fp32 | onnxruntime fp32 ms | max abs(bf16 - fp32) / "
             "max abs(fp32) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fp32']:.2f} | {r['bf16']:.2f} | {r['bf16'] / r['fp32']:.2f} | "
                     f"{r['onnxruntime']:.2f} | {r['rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    rows = []
    for name, build in MODELS.items():
        rows.append(measure(name, build(), args.rounds))
        print(rows[-1], flush=True)
    table = markdown(rows, args.rounds)
    print(table)
    if not args.no_write:
        write_section(RESULTS, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
