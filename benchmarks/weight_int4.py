#!/usr/bin/env python
"""Benchmark weight-only int4 through the TVM back end (optc.MatMulNBits: `lowering/ops/nbits.py`,
`codegen/nbits_kernels.py`) against optc's float32 build and onnxruntime, side by side in one process.

Each case is a float32 model, its `optc quantize --weight-only int4 --format contrib` version (block size 32,
asymmetric), and four contestants, alternating within each round (median of `--repeat` calls per round, median
over rounds; the calling thread's CPU time, one thread):

* ``optc int4``: the int4 model compiled by optc (4-bit weights unpacked in the kernel);
* ``optc fp32``: the float32 model compiled by optc;
* ``ort fp32``: onnxruntime on the float32 model (ORT_ENABLE_ALL);
* ``ort int4``: onnxruntime on the same int4 model (MatMulNBits, accuracy_level 0: float32 compute, the same
  computation as optc's).

Also the size of each compiled library (the int4 weights stay 4-bit in it), and the largest difference of optc
int4 from onnxruntime int4 relative to the output's largest magnitude.

    python benchmarks/weight_int4.py                  # results into RESULTS.md ("Weight-only int4")
    python benchmarks/weight_int4.py --rounds 3 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

THREADS = int(os.environ.setdefault("TVM_NUM_THREADS", "1"))  # read once, when TVM's thread pool starts

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from int8_kernels import measure  # noqa: E402
from models import bert_like, gpt2_like  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from report import RESULTS, cpu_model, write_section  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _matmul(m: int, k: int, n: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


#: (name, float32 model factory)
CASES = [
    ("matmul 1x768x3072 (one token)", lambda: _matmul(1, 768, 3072)),
    ("matmul 1x4096x4096 (one token)", lambda: _matmul(1, 4096, 4096)),
    ("matmul 128x768x3072", lambda: _matmul(128, 768, 3072)),
    ("bert_like (6 layers, seq 128)", bert_like),
    ("gpt2_like (4 layers, seq 128)", gpt2_like),
]


def _feeds(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[i.name] = (rng.integers(0, 1000, shape) if "mask" not in i.name else np.ones(shape)).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _ort(path: str, feeds: dict):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def _optc(path: str, feeds: dict):
    import optc.runtime  # noqa: PLC0415

    lib = optc.runtime.load(path)
    return lambda: lib.run(feeds)


def run_case(name: str, factory, work: str, args) -> dict:
    from optc.codegen.compile import compile_to_file  # noqa: PLC0415
    from optc.ir import load, save  # noqa: PLC0415
    from optc.quantization.weight_only import quantize_weight_only  # noqa: PLC0415

    fp32 = os.path.join(work, "fp32.onnx")
    int4 = os.path.join(work, "int4.onnx")
    onnx.save(factory(), fp32)
    model = load(fp32)
    quantize_weight_only(model, format="contrib", block_size=32)
    save(model, int4)
    libs = {}
    for tag, src in (("fp32", fp32), ("int4", int4)):
        libs[tag] = os.path.join(work, f"{tag}.so")
        compile_to_file(src, libs[tag])
    feeds = _feeds(onnx.load(fp32), np.random.default_rng(1))
    run = {"optc int4": _optc(libs["int4"], feeds), "optc fp32": _optc(libs["fp32"], feeds),
           "ort fp32": _ort(fp32, feeds), "ort int4": _ort(int4, feeds)}
    ours, theirs = run["optc int4"](), run["ort int4"]()
    ours = list(ours.values())[0]
    diff = float(np.abs(ours - theirs[0]).max() / max(float(np.abs(theirs[0]).max()), 1e-30))
    t = measure(run, args.rounds, args.repeat)
    row = {"name": name, **t, "diff": diff, "size_int4": os.path.getsize(libs["int4"]),
           "size_fp32": os.path.getsize(libs["fp32"])}
    print(name, {k: f"{v * 1e3:.3f} ms" for k, v in t.items()}, f"int4/fp32 {t['optc int4'] / t['optc fp32']:.2f}x "
          f"int4/ort int4 {t['optc int4'] / t['ort int4']:.2f}x diff {diff:.1e}", flush=True)
    return row


def markdown(rows: list[dict], args) -> str:
    lines = [
        "## Weight-only int4",
        "",
        f"`python benchmarks/weight_int4.py` — {cpu_model()}, {THREADS} thread(s), {args.rounds} alternating rounds x "
        f"{args.repeat} calls, medians of the calling thread's CPU time in ms. int4: `optc quantize --weight-only int4 "
        f"--format contrib` (block 32, asymmetric); onnxruntime {ort.__version__} runs the same MatMulNBits model "
        "(accuracy_level 0: float32 compute, the computation optc's kernel does). `diff`: largest |optc int4 - ort "
        "int4| / largest |ort int4|. Library sizes: the compiled .so files. Ratios < 1: optc int4 faster.",
        "",
        "| case | optc int4 | optc fp32 | ort int4 | ort fp32 | int4 / optc fp32 | int4 / ort int4 | int4 / ort fp32 "
        "| diff | .so int4 / fp32 (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['optc int4'] * 1e3:.3f} | {r['optc fp32'] * 1e3:.3f} | "
                     f"{r['ort int4'] * 1e3:.3f} | {r['ort fp32'] * 1e3:.3f} | {r['optc int4'] / r['optc fp32']:.2f}x | "
                     f"{r['optc int4'] / r['ort int4']:.2f}x | {r['optc int4'] / r['ort fp32']:.2f}x | {r['diff']:.1e} | "
                     f"{r['size_int4'] / 1e6:.1f} / {r['size_fp32'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", default="", help="comma-separated substrings of the case names to run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args()
    rows = []
    for name, factory in CASES:
        if args.cases and not any(s.strip() in name for s in args.cases.split(",")):
            continue
        with tempfile.TemporaryDirectory() as work:
            rows.append(run_case(name, factory, work, args))
    text = markdown(rows, args)
    print(text)
    if not args.no_write:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
