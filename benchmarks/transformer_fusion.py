#!/usr/bin/env python
"""Transformer fusion on onnxruntime (a script, not a test): for TorchScript (static shapes, and with dynamic batch
and sequence axes) and dynamo exports of the BERT-like, GPT-2-like, ViT-like (197 tokens) and Llama-style modules
of benchmarks/models.py, which fusions
`optc optimize --for onnxruntime` and `--for standard` make, and onnxruntime's latency (ORT_ENABLE_ALL, one
thread; medians of rounds that alternate the variants) of the export as it is, of both optc outputs and of
onnxruntime's own transformers optimizer's output (`optimize_model`, model_type bert / gpt2 / vit; none for the
Llama) where it loads. Each optimized model's largest output difference from the export's is shown (relative to
the output's largest magnitude).

    python benchmarks/transformer_fusion.py            # results into benchmarks/RESULTS.md ("Transformer fusion")
    python benchmarks/transformer_fusion.py --quick    # smaller models, fewer rounds, printed only
    python benchmarks/transformer_fusion.py --batch 2 --no-write   # static exports at batch 2 (nn.MultiheadAttention's
                                                                   # sequence-first layout), printed only
Needs torch and onnxscript (the bench extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections import Counter

import numpy as np
import onnx
from models import TRANSFORMER_KINDS, export_transformer
from report import RESULTS, cpu_model, write_section

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work", "transformer_fusion")
ORT_TYPES = {"bert": "bert", "gpt2": "gpt2", "vit": "vit"}
QUICK = {"bert": dict(layers=2, hidden=128, heads=4, ffn=512), "gpt2": dict(layers=2, hidden=128, heads=4),
         "vit": dict(layers=2, hidden=96, heads=3, image=112, ffn=384), "llama": dict(layers=2, hidden=128, heads=4,
                                                                                         kv_heads=2, ffn=344)}
FUSED = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding", "SkipLayerNormalization",
         "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "Gelu", "FastGelu", "BiasGelu")


def feeds(proto: onnx.ModelProto, seq: int, batch: int = 1) -> dict:
    rng = np.random.default_rng(0)
    names = [i.name for i in proto.graph.input]
    if names == ["image"]:
        dims = [d.dim_value or batch for d in proto.graph.input[0].type.tensor_type.shape.dim]  # a dynamic batch
        return {"image": rng.normal(0, 1, dims).astype(np.float32)}
    out = {"input_ids": rng.integers(0, 2000, (batch, seq))}
    if "attention_mask" in names:
        mask = np.ones((batch, seq), np.int64)
        mask[0, :5] = 0  # left padding
        out["attention_mask"] = mask
    return out


def fusions(proto: onnx.ModelProto) -> str:
    ops = Counter(n.op_type for n in proto.graph.node)
    parts = [f"{op} {ops[op]}" for op in FUSED if ops[op]]
    if ops["Softmax"]:
        parts.append(f"(Softmax {ops['Softmax']} left)")
    return ", ".join(parts) or "-"


def ort_optimizer(path: str, kind: str, out_path: str) -> onnx.ModelProto | str:
    """onnxruntime's transformers optimizer's output with its defaults, or why there is none."""
    if kind not in ORT_TYPES:
        return "no model_type"
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            opt = optimize_model(path, model_type=ORT_TYPES[kind])
            opt.save_model_to_file(out_path)
        return onnx.load(out_path)
    except Exception as exc:  # noqa: BLE001 - report whatever it raised
        return f"fails: {str(exc).splitlines()[0][:80]}"


def measure(sessions: dict, feed: dict, rounds: int, iters: int) -> dict[str, float]:
    """Median ms per run of each session, rounds alternating the sessions."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)  # warm up
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                s.run(None, feed)
            times[name].append((time.perf_counter() - t0) / iters * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def max_rel(a: list, b: list) -> float:
    return max(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-30)) for x, y in zip(a, b, strict=True))


def main() -> int:
    import optc
    from optc.ortsession import first_line, session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller models, fewer rounds; print, do not write")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per model (default 9, quick 3)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--batch", type=int, default=1, help="the static exports' batch, and the dynamic ones' run "
                                                         "(default 1; another batch is printed, not written)")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 9)
    seq = 64 if args.quick else 128
    os.makedirs(WORK, exist_ok=True)
    rows, lat_rows = [], []
    for kind in TRANSFORMER_KINDS:
        for dynamo, dynamic in ((False, False), (True, False), (False, True)):
            exporter = "dynamo" if dynamo else "torchscript dynamic-axes" if dynamic else "torchscript"
            name = f"{kind} {exporter}"
            tag = f"{'dynamo' if dynamo else 'ts_dyn' if dynamic else 'ts'}{'' if args.batch == 1 else args.batch}"
            path = os.path.join(WORK, f"{kind}_{tag}.onnx")
            with contextlib.redirect_stdout(io.StringIO()):
                proto = export_transformer(kind, path, dynamo=dynamo, dynamic=dynamic, seq=seq, batch=args.batch,
                                           **(QUICK[kind] if args.quick else {}))
            variants: dict[str, onnx.ModelProto | str] = {"export": proto}
            for rt in ("onnxruntime", "standard"):
                variants[f"optc --for {rt}"] = optc.to_onnx(optc.optimize(proto, runtime=rt))
            variants["ORT optimizer"] = ort_optimizer(path, kind, path.replace(".onnx", "_ort.onnx"))
            feed = feeds(proto, seq, args.batch)
            sessions, notes = {}, {}
            for vname, v in variants.items():
                if isinstance(v, str):
                    notes[vname] = v
                    continue
                try:
                    sessions[vname] = session(v, threads=1, label=vname)
                except optc.OptcError as exc:
                    notes[vname] = f"does not load: {first_line(exc)[:80]}"
            want = sessions["export"].run(None, feed)
            for vname, s in sessions.items():
                if vname != "export":
                    notes[vname] = f"max rel diff {max_rel(want, s.run(None, feed)):.1e}"
            ms = measure(sessions, feed, rounds, 3 if args.quick else 10)
            for vname, v in variants.items():
                rows.append(f"| {name} | {vname} | {fusions(v) if not isinstance(v, str) else '-'} | "
                            f"{notes.get(vname, '')} |")
            base = ms["export"]
            cells = [f"{ms['export']:.2f}"] + [
                f"{ms[v]:.2f} ({ms[v] / base:.2f}x)" if v in ms else "-"
                for v in ("optc --for onnxruntime", "optc --for standard", "ORT optimizer")]
            lat_rows.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lat_rows[-1], flush=True)
    section = "\n".join([
        "## Transformer fusion",
        "",
        f"`python benchmarks/transformer_fusion.py{' --quick' if args.quick else ''}` on {cpu_model()}, "
        f"onnxruntime {__import__('onnxruntime').__version__}, ORT_ENABLE_ALL, 1 thread, batch {args.batch}, sequence {seq} "
        f"(ViT: 197 tokens{' at 224x224' if not args.quick else ''}), left-padded mask; median ms of {rounds} "
        "rounds alternating the variants. The machine is shared: compare ratios within a row.",
        "",
        "### Fusions (ops in the model; Softmax left = attention not fused)",
        "",
        "| export | variant | fused ops | note |",
        "|---|---|---|---|",
        *rows,
        "",
        "### Latency (ms, ratio to the export as it is)",
        "",
        "| export | as exported | optc --for onnxruntime | optc --for standard | ORT transformers optimizer |",
        "|---|---|---|---|---|",
        *lat_rows,
    ])
    if args.quick or args.no_write or args.batch != 1:  # the section holds the batch-1 run
        print(section)
    else:
        write_section(RESULTS, section)
        print(f"wrote the 'Transformer fusion' section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
