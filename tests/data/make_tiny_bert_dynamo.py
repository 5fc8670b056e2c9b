"""Regenerate tiny_bert_dynamo.onnx: the benchmarks' BERT-like model (2 layers, hidden 32, vocab 100, last-token
pooling) exported by torch's dynamo exporter with symbolic batch and seq dims (needs the bench extra: torch,
onnxscript). Run from the repository root: `python tests/data/make_tiny_bert_dynamo.py`."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = {"layers": 2, "hidden": 32, "heads": 2, "vocab": 100, "ffn": 64}


def export(path: str):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmarks"))
    from models import dynamo_export

    return dynamo_export("bert", path, batch=2, seq=16, dynamic=True, **TINY)


if __name__ == "__main__":
    out = os.path.join(HERE, "tiny_bert_dynamo.onnx")
    export(out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
