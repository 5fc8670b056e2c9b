#!/usr/bin/env python
"""Benchmark Winograd F(2x2, 3x3) convolutions (codegen/winograd.py) against optc's direct kernels and onnxruntime.

For each layer (a float32 3x3 stride-1 Conv + bias + ReLU, padding 1, batch 1, the ResNet / VGG shapes), in one
process, alternating (`optc.workflow.latency.time_alternating`: every round gives each contestant a turn in a new
order; medians over rounds, the speed-up over direct a median of per-round ratios):

* ``optc winograd``: ``optc.compile(model)`` (fast math: the convolution becomes data pack, 16 matmuls, inverse);
* ``optc direct``: ``optc.compile(model, fast_math=False)`` (this model has no transcendental op, so the two
  builds differ only in the convolution);
* ``onnxruntime``: ORT_ENABLE_ALL.

Each is timed as `Module.run` / `InferenceSession.run` on the NCHW model (the layout transposes at the edges are
in every contestant's time). Errors: the largest absolute difference from a float64 reference, relative to the
largest output magnitude. One thread by default (``TVM_NUM_THREADS``, ``intra_op_num_threads``).

    python benchmarks/winograd.py                 # results into RESULTS.md ("Winograd")
    python benchmarks/winograd.py --seconds 1 --no-write
"""

from __future__ import annotations

import os
import sys
import time

THREADS = int(os.environ.setdefault("TVM_NUM_THREADS", "1"))  # read once, when TVM's thread pool starts

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from report import cpu_model, layer_benchmark  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

#: (channels in, channels out, height = width): ResNet-50's 3x3 layers, a ResNet-18 stem-stage width and a small one
LAYERS = [(64, 64, 56), (128, 128, 28), (256, 256, 14), (512, 512, 7), (32, 32, 56), (16, 16, 112)]


def conv_model(c: int, k: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """x [1, c, size, size] -> Conv 3x3 (pad 1, bias) -> Relu -> y [1, k, size, size], He-initialized weights."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    b = (rng.standard_normal(k) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv3x3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k, size, size])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def exact(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """float64 Conv + bias + ReLU of the model's weights (NCHW)."""
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    b = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)])
    h, wd = x.shape[2], x.shape[3]
    y = sum(np.einsum("nchw,kc->nkhw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j]) for i in range(3) for j in range(3))
    return np.maximum(y + b[None, :, None, None], 0.0)


def measure(c: int, k: int, size: int, args) -> dict:
    import optc  # noqa: PLC0415
    from optc.workflow.latency import time_alternating  # noqa: PLC0415

    model = conv_model(c, k, size)
    x = np.random.default_rng(1).standard_normal((1, c, size, size)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wino, direct = optc.compile(model), optc.compile(model, fast_math=False)
    runs = {"winograd": lambda: wino.run({"x": x}), "direct": lambda: direct.run({"x": x}),
            "onnxruntime": lambda: session.run(None, {"x": x})}
    want = exact(model, x)
    scale = float(np.abs(want).max())
    errors = {"winograd": float(np.abs(wino.run({"x": x})["y"] - want).max()) / scale,
              "direct": float(np.abs(direct.run({"x": x})["y"] - want).max()) / scale,
              "onnxruntime": float(np.abs(session.run(None, {"x": x})[0] - want).max()) / scale}
    timed = time_alternating(runs, reference="direct", min_runs=args.rounds, target_s=args.seconds, progress=False)
    ms = {name: timed[name]["median_ms"] for name in runs}
    ratio = {name: ms[name] / ms["onnxruntime"] for name in ("winograd", "direct")}
    speedup = timed["winograd"]["speedup"]
    return {"layer": f"{c} -> {k} @ {size}x{size}", "gflop": 2 * 9 * c * k * size * size / 1e9, "ms": ms,
            "ratio": ratio, "speedup": speedup, "errors": errors}


def markdown(rows: list[dict], args) -> str:
    lines = ["## Winograd", "",
             f"`python benchmarks/winograd.py --rounds {args.rounds} --seconds {args.seconds:g}` — "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU `{cpu_model()}`, {THREADS} thread(s); "
             f"onnxruntime {ort.__version__} (ORT_ENABLE_ALL). One float32 Conv 3x3 (pad 1, bias) + ReLU, batch 1, "
             "NCHW model; optc with Winograd F(2x2, 3x3) (fast math, the default) and with direct kernels "
             "(`fast_math=False`), alternating in one process (`optc.workflow.latency.time_alternating`: a new order "
             "each round, medians over rounds; speed-up: median of the per-round ratios). GFLOP/s counts "
             "the direct convolution's 2 x 9 x C x K x H x W. Error: largest absolute difference from a float64 "
             "reference over the largest output magnitude.", "",
             "| layer (C -> K @ HxW) | onnxruntime ms | optc direct ms | optc winograd ms | winograd / direct speed-up "
             "| winograd / onnxruntime | direct / onnxruntime | winograd GFLOP/s (direct-equivalent) "
             "| rel. error winograd / direct / onnxruntime |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["errors"]
        lines.append(f"| {r['layer']} | {r['ms']['onnxruntime']:.3f} | {r['ms']['direct']:.3f} | "
                     f"{r['ms']['winograd']:.3f} | {r['speedup']:.2f}x | {r['ratio']['winograd']:.2f}x | "
                     f"{r['ratio']['direct']:.2f}x | {r['gflop'] / r['ms']['winograd'] * 1e3:.0f} | "
                     f"{e['winograd']:.1e} / {e['direct']:.1e} / {e['onnxruntime']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    return layer_benchmark(__doc__.splitlines()[0], LAYERS, measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
