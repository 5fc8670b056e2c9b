#!/usr/bin/env python
"""Benchmark optc's int8 CPU kernels (codegen/int8_kernels.py) against onnxruntime and optc's own float32 kernels.

For each shape, in one process, alternating (every round times each contestant `--repeat` times and keeps the
median; the result is the median over rounds of the per-round times and ratios):

* ``optc int8``: relax ``matmul(a_u8, w_s8, out_dtype="int32")`` (or NHWC-lowered ``conv2d``), the activation
  zero-point correction (``- a_zp * colsum(w)``, folded at compile time) and a per-channel float requantize to
  uint8 (multiply, add zero point, round, clip, cast), built by ``optc.codegen.build`` (the default schedule picks
  the dot-product rule on this CPU's instruction set);
* ``optc fp32``: the same matmul / conv in float32, same build;
* ``ort QDQ``: onnxruntime on the QDQ model (DequantizeLinear -> MatMul/Conv -> QuantizeLinear, uint8 activations,
  int8 per-channel weights), which onnxruntime turns into QLinearMatMul / QLinearConv;
* ``ort MatMulInteger``: onnxruntime's MatMulInteger (uint8 x int8 -> int32, no requantize), matmuls only.

GOPS = 2 * multiply-adds / median time. One thread everywhere by default (``TVM_NUM_THREADS``,
``intra_op_num_threads``): this machine is shared, and one thread is what the ratio targets are about.

    python benchmarks/int8_kernels.py                 # results into RESULTS.md ("int8 kernels")
    python benchmarks/int8_kernels.py --rounds 5 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import time

THREADS = int(os.environ.setdefault("TVM_NUM_THREADS", "1"))  # read once, when TVM's thread pool starts

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from report import RESULTS, cpu_model, write_section  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

A_ZP, Y_ZP, A_SCALE, Y_SCALE = 128, 120, 0.02, 0.5

#: (name, kind, shape): matmul (M, K, N); conv (C_in, H, W, C_out, kernel, stride), batch 1, no padding
SHAPES = [
    ("matmul 1x1024x1024", "matmul", (1, 1024, 1024)),
    ("matmul 128x768x768", "matmul", (128, 768, 768)),
    ("matmul 512x1024x1024", "matmul", (512, 1024, 1024)),
    ("matmul 4x128x768x768 (batch)", "matmul", (4, 128, 768, 768)),
    ("conv 1x1 256->256 @28x28", "conv", (256, 28, 28, 256, 1, 1)),
    ("conv 3x3 64->64 @56x56", "conv", (64, 58, 58, 64, 3, 1)),
    ("conv 3x3/2 128->128 @28x28", "conv", (128, 57, 57, 128, 3, 2)),
]


def _weights(kind: str, shape: tuple, rng, seven_bit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights (K x N for matmul, OIHW for conv; within [-64, 64] when ``seven_bit``: onnxruntime's
    ``reduce_range``, optc quantize's default on CPUs without VNNI) and per-output-channel float32 scales."""
    lo, hi = (-64, 65) if seven_bit else (-128, 128)
    if kind == "matmul":
        k, n = shape[-2], shape[-1]
        w = rng.integers(lo, hi, (k, n), dtype=np.int8)
    else:
        c, _, _, o, ks, _ = shape
        w = rng.integers(lo, hi, (o, c, ks, ks), dtype=np.int8)
        n = o
    return w, rng.uniform(0.0005, 0.002, n).astype(np.float32)


def _activation(kind: str, shape: tuple, rng) -> np.ndarray:
    dims = shape[:-1] if kind == "matmul" else (1, shape[0], shape[1], shape[2])
    return rng.integers(0, 256, dims, dtype=np.uint8)


def relax_module(kind: str, shape: tuple, w: np.ndarray, w_scale: np.ndarray, dtype: str):
    """The optc kernel under test as a relax module with one input ``x`` and one parameter ``w`` (bound later).
    dtype ``uint8``: the int8 pipeline (int32 accumulate, zero-point correction, requantize to uint8); ``float32``:
    the float matmul / conv alone."""
    from tvm import relax  # noqa: PLC0415

    x_shape = shape[:-1] if kind == "matmul" else (1, shape[0], shape[1], shape[2])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    wv = relax.Var("w", relax.TensorType(w.shape, "int8" if dtype == "uint8" else "float32"))
    out_dtype = "int32" if dtype == "uint8" else "float32"
    with bb.function("main", [x, wv]):
        with bb.dataflow():
            if kind == "matmul":
                acc = bb.emit(relax.op.matmul(x, wv, out_dtype=out_dtype))
                colsum = w.astype(np.int32).sum(axis=0)
                bshape = (w.shape[1],)
            else:
                acc = bb.emit(relax.op.nn.conv2d(x, wv, strides=shape[5], out_dtype=out_dtype))
                colsum = w.astype(np.int32).sum(axis=(1, 2, 3))
                bshape = (1, w.shape[0], 1, 1)
            if dtype == "uint8":
                acc = bb.emit(relax.op.subtract(acc, relax.const((A_ZP * colsum).reshape(bshape), "int32")))
                mult = (A_SCALE * w_scale / Y_SCALE).astype(np.float32).reshape(bshape)
                y = relax.op.add(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(mult)),
                                 relax.const(np.float32(Y_ZP)))
                acc = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(y), 0, 255), "uint8"))
            out = bb.emit_output(acc)
        bb.emit_func_output(out)
    return bb.get()


def qdq_model(kind: str, shape: tuple, w: np.ndarray, w_scale: np.ndarray) -> onnx.ModelProto:
    """DequantizeLinear(x) . DequantizeLinear(w) -> QuantizeLinear, per-channel int8 weights (the QDQ model)."""
    x_shape = list(shape[:-1]) if kind == "matmul" else [1, shape[0], shape[1], shape[2]]
    axis = 1 if kind == "matmul" else 0
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(w_scale, "w_s"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
             numpy_helper.from_array(np.float32(A_SCALE), "a_s"), numpy_helper.from_array(np.uint8(A_ZP), "a_zp"),
             numpy_helper.from_array(np.float32(Y_SCALE), "y_s"), numpy_helper.from_array(np.uint8(Y_ZP), "y_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "a_s", "a_zp"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wf"], axis=axis)]
    if kind == "matmul":
        nodes.append(helper.make_node("MatMul", ["xf", "wf"], ["yf"]))
    else:
        nodes.append(helper.make_node("Conv", ["xf", "wf"], ["yf"], strides=[shape[5]] * 2))
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "y_s", "y_zp"], ["y"]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def matmul_integer_model(shape: tuple, w: np.ndarray) -> onnx.ModelProto:
    x_shape = list(shape[:-1])
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.uint8(A_ZP), "a_zp")]
    node = helper.make_node("MatMulInteger", ["x", "w_q", "a_zp"], ["y"])
    graph = helper.make_graph([node], "mmi", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _ort(model: onnx.ModelProto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _optc(mod, params):
    import tvm  # noqa: PLC0415
    from optc.codegen.build import build  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    vm = relax.VirtualMachine(build(mod, params, "cpu"), tvm.cpu())
    return vm["main"]


def contestants(kind: str, shape: tuple, rng, seven_bit: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """name -> zero-argument callable; and the int8 outputs of optc and onnxruntime's QDQ model (to compare)."""
    import tvm  # noqa: PLC0415

    w, w_scale = _weights(kind, shape, rng, seven_bit)
    x = _activation(kind, shape, rng)
    w_relax = w if kind == "matmul" else w  # relax conv2d takes OIHW like ONNX
    int8 = _optc(relax_module(kind, shape, w, w_scale, "uint8"), {"w": w_relax})
    fp32 = _optc(relax_module(kind, shape, w, w_scale, "float32"), {"w": w_relax.astype(np.float32)})
    x_tvm, xf_tvm = tvm.runtime.tensor(x), tvm.runtime.tensor(x.astype(np.float32))
    qdq = _ort(qdq_model(kind, shape, w, w_scale))
    run = {"optc int8": lambda: int8(x_tvm), "optc fp32": lambda: fp32(xf_tvm),
           "ort QDQ": lambda: qdq.run(None, {"x": x})}
    if kind == "matmul":
        mmi = _ort(matmul_integer_model(shape, w))
        run["ort MatMulInteger"] = lambda: mmi.run(None, {"x": x})
    return run, int8(x_tvm).numpy(), qdq.run(None, {"x": x})[0], reference(kind, shape, x, w, w_scale)


def reference(kind: str, shape: tuple, x: np.ndarray, w: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """The uint8 output from the exact int64 sum, requantized with the float32 operations optc's module names."""
    if kind == "matmul":
        acc = x.astype(np.int64) @ w.astype(np.int64) - A_ZP * w.astype(np.int64).sum(axis=0)
        mult = (A_SCALE * w_scale / Y_SCALE).astype(np.float32)
    else:
        stride, (o, _, ks, _) = shape[5], w.shape
        oh, ow = (x.shape[2] - ks) // stride + 1, (x.shape[3] - ks) // stride + 1
        acc = np.zeros((1, o, oh, ow), np.int64)
        for i in range(ks):
            for j in range(ks):
                patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride].astype(np.int64)
                acc += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
        acc -= A_ZP * w.astype(np.int64).sum(axis=(1, 2, 3)).reshape(1, o, 1, 1)
        mult = (A_SCALE * w_scale / Y_SCALE).astype(np.float32).reshape(1, o, 1, 1)
    y = acc.astype(np.float32) * mult + np.float32(Y_ZP)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def macs(kind: str, shape: tuple) -> int:
    if kind == "matmul":
        return int(np.prod(shape))
    c, h, wd, o, ks, s = shape
    return ((h - ks) // s + 1) * ((wd - ks) // s + 1) * o * c * ks * ks


def measure(run: dict, rounds: int, repeat: int) -> dict[str, float]:
    """Median over rounds of each contestant's median time (s), alternating contestants within a round. The time
    is this thread's CPU time (``time.thread_time``): with one thread both runtimes compute in the calling thread,
    and on a shared machine wall-clock time also counts the time other processes held the core."""
    for fn in run.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(rounds):
        for name, fn in run.items():
            samples = []
            for _ in range(repeat):
                t0 = time.thread_time()
                fn()
                samples.append(time.thread_time() - t0)
            times[name].append(float(np.median(samples)))
    return {name: float(np.median(ts)) for name, ts in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shapes", default="", help="comma-separated substrings of the shape names to run")
    parser.add_argument("--weights", choices=("full", "7bit", "both"), default="both",
                        help="int8 weights over the full range, within [-64, 64] (7-bit: reduce_range), or both")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args()

    from optc.codegen.int8_kernels import int8_isas  # noqa: PLC0415
    from optc.codegen.targets import host_cpu_flags, resolve_target  # noqa: PLC0415

    isas = int8_isas(resolve_target("cpu"))
    flags = sorted(f for f in host_cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))
    rng = np.random.default_rng(0)
    rows = []
    kinds = {"full": (False,), "7bit": (True,), "both": (False, True)}[args.weights]
    for (name, kind, shape), seven_bit in [(case, b) for case in SHAPES for b in kinds]:
        if args.shapes and not any(s.strip() in name for s in args.shapes.split(",")):
            continue
        run, ours, theirs, exact = contestants(kind, shape, rng, seven_bit)
        name += ", 7-bit w" if seven_bit else ""
        d_ours = np.abs(ours.astype(np.int32) - exact.astype(np.int32))
        d_ort = np.abs(theirs.astype(np.int32) - exact.astype(np.int32))
        t = measure(run, args.rounds, args.repeat)
        ops = 2 * macs(kind, shape)
        row = {"name": name, **{k: v for k, v in t.items()}, "ops": ops, "maxdiff": int(d_ours.max()),
               "ndiff": float((d_ours > 0).mean()), "ort_maxdiff": int(d_ort.max()), "ort_ndiff": float((d_ort > 0).mean())}
        rows.append(row)
        print(name, {k: f"{v * 1e3:.3f} ms {ops / v / 1e9:.1f} GOPS" for k, v in t.items()},
              f"int8/QDQ {t['optc int8'] / t['ort QDQ']:.2f}x int8/fp32 {t['optc int8'] / t['optc fp32']:.2f}x",
              f"vs exact: optc max {row['maxdiff']} ({row['ndiff']:.2%}), ort max {row['ort_maxdiff']} "
              f"({row['ort_ndiff']:.2%})", flush=True)
    text = markdown(rows, args, isas, flags)
    print(text)
    if not args.no_write:
        write_section(RESULTS, text)
    return 0


def markdown(rows: list[dict], args, isas: list[str], flags: list[str]) -> str:
    def cell(row, key):
        return f"{row[key] * 1e3:.3f} ({row['ops'] / row[key] / 1e9:.0f})" if key in row else "-"

    lines = [
        "## int8 kernels",
        "",
        f"`python benchmarks/int8_kernels.py` — {cpu_model()} ({', '.join(flags)}; optc's int8 instruction set: "
        f"{isas[0] if isas else 'none'}), {THREADS} thread(s), {args.rounds} alternating rounds x {args.repeat} "
        "calls, medians of the calling thread's CPU time in ms (GOPS = 2 x multiply-adds / s). int8: uint8 "
        f"activations (zero point {A_ZP}) x int8 per-channel weights (rows marked `7-bit w`: weights within [-64, 64], "
        "onnxruntime's reduce_range, which optc's kernels multiply with vpmaddubsw where the CPU has no VNNI), "
        "requantized to uint8; onnxruntime runs the same "
        f"QDQ model (onnxruntime {ort.__version__}). Ratios < 1: optc faster. `vs exact`: largest difference of the "
        "uint8 outputs from the exact int64 sum requantized in float32 (share of outputs that differ), optc / "
        "onnxruntime's QDQ model.",
        "",
        "| kernel | optc int8 | optc fp32 | ort QDQ | ort MatMulInteger | int8 / ort QDQ | int8 / optc fp32 | vs exact: optc / ort |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {cell(r, 'optc int8')} | {cell(r, 'optc fp32')} | {cell(r, 'ort QDQ')} | "
                     f"{cell(r, 'ort MatMulInteger')} | {r['optc int8'] / r['ort QDQ']:.2f}x | "
                     f"{r['optc int8'] / r['optc fp32']:.2f}x | {r['maxdiff']} ({r['ndiff']:.1%}) / "
                     f"{r['ort_maxdiff']} ({r['ort_ndiff']:.1%}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
