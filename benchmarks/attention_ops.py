#!/usr/bin/env python
"""Which grouped-query attention op `optc optimize --for onnxruntime` should emit: onnxruntime's com.microsoft
GroupQueryAttention (rotary embedding inside, `do_rotary=1`) against the standard ONNX ops the onnxruntime form
uses (RotaryEmbedding + Attention with `kv_num_heads`, opset 23), on onnxruntime's CPU provider (a script, not a
test).

Both compute causal grouped-query attention over a whole sequence (prefill: no past K/V), from q [B, S, H*D] and
k, v [B, S, KV*D] (the projections' outputs) to y [B, S, H*D], with the same cos / sin caches (non-interleaved
rotation); the script checks that their outputs agree. Each shape builds both sessions in this process
(ORT_ENABLE_ALL, the thread count given), then alternates them: `--rounds` rounds, in each a turn of `--repeat`
calls per form; latency is the median of all calls; ratio = GroupQueryAttention / standard.

    python benchmarks/attention_ops.py                  # results into RESULTS.md ("Grouped-query attention ops")
    python benchmarks/attention_ops.py --no-write       # print only
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper
from report import RESULTS, cpu_model, write_section

#: (batch, sequence, query heads, K/V heads, head size): the Llama-style model of benchmarks/models.py at 128
#: and 512 tokens, and a Llama-2-7B-shaped layer (32 heads of 128, here with 8 K/V heads) at 256 tokens
SHAPES = [(1, 128, 8, 2, 32), (1, 512, 8, 2, 32), (1, 256, 32, 8, 128)]
FORMS = ("standard", "GroupQueryAttention")


def _caches(max_seq: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / 10000 ** (np.arange(0, head, 2) / head)
    freqs = np.outer(np.arange(max_seq), inv)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _io(b: int, s: int, heads: int, kv: int, d: int) -> tuple[list, list]:
    inputs = [h.make_tensor_value_info("q", TP.FLOAT, [b, s, heads * d]),
              h.make_tensor_value_info("k", TP.FLOAT, [b, s, kv * d]),
              h.make_tensor_value_info("v", TP.FLOAT, [b, s, kv * d])]
    return inputs, [h.make_tensor_value_info("y", TP.FLOAT, [b, s, heads * d])]


def _model(nodes: list, shape: tuple, inits: list, opsets: list) -> onnx.ModelProto:
    inputs, outputs = _io(*shape)
    model = h.make_model(h.make_graph(nodes, "attention", inputs, outputs, inits), opset_imports=opsets)
    model.ir_version = 10  # (onnxruntime 1.31 reads IR 10 at most)
    return model


def group_query_attention(shape: tuple) -> onnx.ModelProto:
    """com.microsoft GroupQueryAttention(q, k, v, seqlens_k = S - 1, total_sequence_length = S, cos, sin)."""
    b, s, heads, kv, d = shape
    cos, sin = _caches(s, d)
    nodes = [h.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total", "cos", "sin"],
                         ["y", "present_key", "present_value"], domain="com.microsoft", num_heads=heads,
                         kv_num_heads=kv, do_rotary=1)]
    inits = [numpy_helper.from_array(np.full([b], s - 1, np.int32), "seqlens_k"),
             numpy_helper.from_array(np.array(s, np.int32), "total"),
             numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")]
    return _model(nodes, shape, inits, [h.make_opsetid("", 23), h.make_opsetid("com.microsoft", 1)])


def standard(shape: tuple) -> onnx.ModelProto:
    """RotaryEmbedding on the 4-D q and k, then Attention(is_causal=1) with kv_num_heads K/V heads (opset 23)."""
    b, s, heads, kv, d = shape
    cos, sin = _caches(s, d)
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [h.make_node("Reshape", [name, f"{name}_shape"], [f"{name}4"]),
                  h.make_node("Transpose", [f"{name}4"], [f"{name}t"], perm=[0, 2, 1, 3])]
    nodes += [h.make_node("RotaryEmbedding", ["qt", "cos", "sin", "positions"], ["qr"]),
              h.make_node("RotaryEmbedding", ["kt", "cos", "sin", "positions"], ["kr"]),
              h.make_node("Attention", ["qr", "kr", "vt"], ["yt"], is_causal=1, q_num_heads=heads, kv_num_heads=kv),
              h.make_node("Transpose", ["yt"], ["y4"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["y4", "y_shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array([b, s, n, d], np.int64), f"{name}_shape")
             for name, n in (("q", heads), ("k", kv), ("v", kv))]
    inits += [numpy_helper.from_array(np.array([b, s, heads * d], np.int64), "y_shape"),
              numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin"),
              numpy_helper.from_array(np.tile(np.arange(s, dtype=np.int64), (b, 1)), "positions")]
    return _model(nodes, shape, inits, [h.make_opsetid("", 23)])


def measure(shape: tuple, threads: int, rounds: int, repeat: int) -> dict:
    """Both forms of `shape` side by side: median ms each, the ratio, and their largest output difference."""
    from optc.ortsession import session

    b, s, heads, kv, d = shape
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((b, s, heads * d), dtype=np.float32),
             "k": rng.standard_normal((b, s, kv * d), dtype=np.float32),
             "v": rng.standard_normal((b, s, kv * d), dtype=np.float32)}
    sessions = {"standard": session(standard(shape), threads=threads, spin=threads == 1),
                "GroupQueryAttention": session(group_query_attention(shape), threads=threads, spin=threads == 1)}
    outs = {form: sess.run(["y"], feeds)[0] for form, sess in sessions.items()}
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    for r in range(rounds):
        for form in FORMS if r % 2 == 0 else FORMS[::-1]:
            sess = sessions[form]
            for _ in range(repeat):
                t0 = time.perf_counter()
                sess.run(["y"], feeds)
                times[form].append(time.perf_counter() - t0)
    ms = {form: float(np.median(t)) * 1e3 for form, t in times.items()}
    return {"shape": shape, "threads": threads, **ms, "ratio": ms["GroupQueryAttention"] / ms["standard"],
            "diff": float(np.abs(outs["standard"] - outs["GroupQueryAttention"]).max()),
            "magnitude": float(np.abs(outs["standard"]).max())}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    import onnxruntime

    out = ["## Grouped-query attention ops", "",
           f"`python benchmarks/attention_ops.py --rounds {args.rounds} --repeat {args.repeat}` — "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU `{cpu_model()}`, {platform.machine()}; "
           f"onnxruntime {onnxruntime.__version__} (CPU provider, ORT_ENABLE_ALL). Causal grouped-query attention "
           "with rotary embeddings over a whole sequence (no past K/V), fp32: the standard ops of optc's onnxruntime "
           "form (RotaryEmbedding + Attention with kv_num_heads, opset 23) against com.microsoft "
           "GroupQueryAttention (do_rotary=1), same inputs and caches, alternating turns in one process, median "
           "ms; ratio = GroupQueryAttention / standard.", "",
           "| batch x seq, heads / K/V heads x head size | threads | standard ms | GroupQueryAttention ms | ratio | "
           "max abs diff / max abs out |", "|---|---|---|---|---|---|"]
    for r in rows:
        b, s, heads, kv, d = r["shape"]
        out.append(f"| {b} x {s}, {heads} / {kv} x {d} | {r['threads']} | {r['standard']:.3f} | "
                   f"{r['GroupQueryAttention']:.3f} | {r['ratio']:.2f}x | {r['diff']:.1e} / {r['magnitude']:.2g} |")
    slower = sum(r["ratio"] > 1.0 for r in rows)
    out += ["", f"GroupQueryAttention slower than the standard ops in {slower} of {len(rows)} cases: optc's "
            "onnxruntime form emits the standard ops for grouped-query attention (README, \"Transformer fusions\")."]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(measure(shape, threads, args.rounds, args.repeat))
            print(rows[-1], file=sys.stderr)
    text = markdown(rows, args)
    if args.no_write:
        print(text)
    else:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
