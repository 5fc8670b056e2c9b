#!/usr/bin/env python
"""Benchmark ShuffleNet's grouped 1x1 convolutions and channel shuffles against TVM's kernels and onnxruntime.

The rewrites: codegen/grouped_conv.py and codegen/layout_copies.py; each layer is timed against the kernels TVM
would run without the rewrite and against onnxruntime.

For each layer, in one process, alternating (`optc.workflow.latency.time_alternating`: every round gives each
contestant a turn in a new order; medians over rounds, the speed-up a median of per-round ratios):

* ``optc``: ``optc.compile(model)``;
* ``optc, no rewrite``: the same with the rewrite turned off (``grouped_conv.eligible`` / ``layout_copies
  .shuffle_groups`` answering None for this build): TVM's grouped conv kernel, the shuffle as a fused injective
  kernel;
* ``onnxruntime``: ORT_ENABLE_ALL.

Layers (batch 1, float32, NCHW models as ShuffleNet v1 has them, g = 4): a grouped 1x1 Conv + bias + ReLU, and
a grouped 1x1 Conv + ReLU, channel shuffle, depthwise 3x3 Conv (the shuffle between NHWC kernels, as in the
model; only the shuffle's rewrite is turned off for its "no rewrite" contestant). optc's times include the
transposes from NCHW and back at the model's edges, which onnxruntime (NCHW kernels) does not run: a layer's optc
/ onnxruntime ratio is not the model's (light_shufflenet in "Compile"). Error: the largest absolute difference from the onnx reference evaluator, relative to
the largest output magnitude. One thread by default (``TVM_NUM_THREADS``, ``intra_op_num_threads``).

    python benchmarks/grouped_conv.py                 # results into RESULTS.md ("Grouped convolutions")
    python benchmarks/grouped_conv.py --seconds 1 --no-write
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
from onnx.reference import ReferenceEvaluator  # noqa: E402
from report import cpu_model, layer_benchmark  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GROUPS = 4
#: (kind, channels in, channels out, height = width): ShuffleNet v1 (g = 4) layers
LAYERS = [("grouped", 24, 112, 56), ("grouped", 136, 136, 28), ("grouped", 272, 272, 14), ("grouped", 544, 544, 7),
          ("shuffle", 136, 136, 28), ("shuffle", 272, 272, 14), ("shuffle", 544, 544, 7)]


def layer_model(kind: str, c: int, k: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """'grouped': x [1, c, size, size] -> Conv 1x1 (group 4, bias) -> Relu; 'shuffle': x [1, c, size, size] ->
    Conv 1x1 (group 4) -> Relu -> Reshape [1, 4, c / 4, size, size] -> Transpose -> Reshape -> Conv 3x3 depthwise
    (pad 1): the shuffle between two NHWC kernels, as in ShuffleNet."""
    rng = np.random.default_rng(seed)
    inits, shape = [], [1, c, size, size]
    if kind == "grouped":
        w = (rng.standard_normal((k, c // GROUPS, 1, 1)) * np.sqrt(2 * GROUPS / c)).astype(np.float32)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array((rng.standard_normal(k) * 0.1)
                                                                           .astype(np.float32), "b")]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=GROUPS), helper.make_node("Relu", ["c"], ["y"])]
    else:
        w = (rng.standard_normal((c, c // GROUPS, 1, 1)) * np.sqrt(2 * GROUPS / c)).astype(np.float32)
        inits += [numpy_helper.from_array(w, "w"),
                  numpy_helper.from_array(np.array([1, GROUPS, c // GROUPS, size, size], np.int64), "split"),
                  numpy_helper.from_array(np.array(shape, np.int64), "merge"),
                  numpy_helper.from_array((rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32), "dw")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["g"], group=GROUPS), helper.make_node("Relu", ["g"], ["r"]),
                 helper.make_node("Reshape", ["r", "split"], ["s"]),
                 helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
                 helper.make_node("Reshape", ["t", "merge"], ["m"]),
                 helper.make_node("Conv", ["m", "dw"], ["y"], group=c, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def without_rewrite(kind: str, model: onnx.ModelProto):
    """The library optc builds with this layer's rewrite answering None (TVM's own kernels)."""
    import optc  # noqa: PLC0415
    from optc.codegen import grouped_conv, layout_copies  # noqa: PLC0415

    module, name = (grouped_conv, "eligible") if kind == "grouped" else (layout_copies, "shuffle_groups")
    original = getattr(module, name)
    setattr(module, name, lambda *args: None)
    try:
        return optc.compile(model)
    finally:
        setattr(module, name, original)


def measure(kind: str, c: int, k: int, size: int, args) -> dict:
    import optc  # noqa: PLC0415
    from optc.workflow.latency import time_alternating  # noqa: PLC0415

    model = layer_model(kind, c, k, size)
    x = np.random.default_rng(1).standard_normal((1, c, size, size)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    new, old = optc.compile(model), without_rewrite(kind, model)
    runs = {"optc": lambda: new.run({"x": x}), "optc, no rewrite": lambda: old.run({"x": x}),
            "onnxruntime": lambda: session.run(None, {"x": x})}
    want = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float64)
    scale = float(np.abs(want).max())
    outputs = {"optc": new.run({"x": x})["y"], "optc, no rewrite": old.run({"x": x})["y"],
               "onnxruntime": session.run(None, {"x": x})[0]}
    errors = {name: float(np.abs(out - want).max()) / scale for name, out in outputs.items()}
    timed = time_alternating(runs, reference="optc, no rewrite", min_runs=args.rounds, target_s=args.seconds,
                             progress=False)
    ms = {name: timed[name]["median_ms"] for name in runs}
    label = (f"grouped 1x1 {c} -> {k} @ {size}x{size} ({k // GROUPS} a group)" if kind == "grouped"
             else f"grouped 1x1 + shuffle {c} @ {size}x{size} + depthwise 3x3")
    return {"layer": label, "ms": ms, "speedup": timed["optc"]["speedup"], "errors": errors,
            "same": bool(np.array_equal(outputs["optc"], outputs["optc, no rewrite"]))}


def markdown(rows: list[dict], args) -> str:
    lines = ["## Grouped convolutions and channel shuffles", "",
             f"`python benchmarks/grouped_conv.py --rounds {args.rounds} --seconds {args.seconds:g}` — "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU `{cpu_model()}`, {THREADS} thread(s); "
             f"onnxruntime {ort.__version__} (ORT_ENABLE_ALL). ShuffleNet v1's layers (g = 4), batch 1, float32 NCHW "
             "models; optc with the rewrites (`codegen/grouped_conv.py`, `codegen/layout_copies.py`) and without "
             "(TVM's grouped kernel; the shuffle as a fused injective kernel), alternating in one process "
             "(`optc.workflow.latency.time_alternating`: a new order each round, medians over rounds; speed-up: "
             "median of the per-round ratios). Error: largest absolute difference from the onnx reference "
             "evaluator over the largest output magnitude; 'same bits': optc's output with and without the "
             "rewrite is identical. optc's times include the NCHW <-> NHWC transposes at the model's edges, which "
             "onnxruntime does not run: a layer's optc / onnxruntime ratio is not the model's (light_shufflenet in "
             "\"Compile\").", "",
             "| layer | onnxruntime ms | optc, no rewrite ms | optc ms | speed-up | optc / onnxruntime "
             "| rel. error optc / onnxruntime | same bits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["errors"]
        lines.append(f"| {r['layer']} | {r['ms']['onnxruntime']:.3f} | {r['ms']['optc, no rewrite']:.3f} | "
                     f"{r['ms']['optc']:.3f} | {r['speedup']:.2f}x | {r['ms']['optc'] / r['ms']['onnxruntime']:.2f}x "
                     f"| {e['optc']:.1e} / {e['onnxruntime']:.1e} | {'yes' if r['same'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    return layer_benchmark(__doc__.splitlines()[0], LAYERS, measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
