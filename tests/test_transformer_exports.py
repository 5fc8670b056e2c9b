"""Transformer fusions on real exports: small BERT-like, GPT-2-like, ViT-like and Llama-style torch modules
(benchmarks/models.py) through the TorchScript and the dynamo exporter, optimized `--for onnxruntime` and
`--for standard`: which fusions fire, and the outputs on onnxruntime against the export's (1e-4 of the largest
magnitude; BERT/GPT-2 also on a mask with left padding and a hole). Skipped without torch (CI has none: the
hand-written graphs of test_transformer_fusion cover every rule there)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import optc
import pytest

from .conftest import run_ort

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"bert": dict(layers=2, hidden=64, heads=4, vocab=100, ffn=128),
         "gpt2": dict(layers=2, hidden=64, heads=4, vocab=100),
         "vit": dict(layers=2, hidden=64, heads=4, image=64, ffn=128, classes=10),
         "llama": dict(layers=2, hidden=64, heads=4, kv_heads=2, vocab=100, ffn=128)}
SEQ = 16


def _models():
    spec = importlib.util.spec_from_file_location("optc_benchmark_models", ROOT / "benchmarks" / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    return models


def _export(kind: str, dynamo: bool, tmp_path) -> onnx.ModelProto:
    if dynamo:
        pytest.importorskip("onnxscript")
    with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter's progress lines
        return _models().export_transformer(kind, str(tmp_path / f"{kind}.onnx"), dynamo=dynamo, seq=SEQ,
                                            **SMALL[kind])


def _feeds(proto: onnx.ModelProto) -> list[dict]:
    rng = np.random.default_rng(0)
    names = [i.name for i in proto.graph.input]
    if names == ["image"]:
        return [{"image": rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)}]
    ids = rng.integers(0, 100, (1, SEQ))
    if "attention_mask" not in names:
        return [{"input_ids": ids}]
    holes = np.ones((1, SEQ), np.int64)
    holes[0, :3] = 0
    holes[0, 7] = 0
    return [{"input_ids": ids, "attention_mask": np.ones((1, SEQ), np.int64)},
            {"input_ids": ids, "attention_mask": holes}]


def _ops(proto: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)


WANT = {  # per runtime: the fused ops every BERT / GPT-2 / ViT export must have
    "onnxruntime": ["com.microsoft::Attention"],  # MultiHeadAttention with its q, k, v projections packed in
    "standard": ["Attention", "Gelu", "LayerNormalization"],
}


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit", "llama"])
def test_export_fuses_and_computes_the_same(kind, dynamo, tmp_path):
    proto = _export(kind, dynamo, tmp_path)
    feeds = _feeds(proto)
    for runtime in ("onnxruntime", "standard"):
        out = optc.to_onnx(optc.optimize(proto, runtime=runtime))
        onnx.checker.check_model(out)
        have = _ops(out)
        if kind in ("gpt2", "bert") and runtime == "standard":
            # a run-time mask that can mask whole query rows (GPT-2's causal + padding mask under left padding,
            # BERT's key padding of a sequence of padding only: finfo.min / -inf): the standard Attention is not
            # made, onnxruntime's kernel writes zeros there (check_no_masked_row)
            assert have["Attention"] == 0 and have["Softmax"] >= 1 and have["Gelu"] >= 1, dict(have)
        elif kind != "llama":
            assert have["Softmax"] == 0, f"{kind} {runtime}: attention not fused: {dict(have)}"
            for op in WANT[runtime]:
                assert have[op] >= 1, f"{kind} {runtime}: no {op}: {dict(have)}"
        else:  # raised to opset 23 (the TorchScript export's ReduceMean to its opset-18 form): RMSNormalization,
            # and grouped-query Attention on the rotary-embedded heads (the K/V repeat gone: Tile or Expand)
            assert have["RMSNormalization"] >= 1 and have["Attention"] >= 1 and have["Softmax"] == 0, dict(have)
            assert have["RotaryEmbedding"] >= 1 and have["Tile"] == have["Expand"] == 0, dict(have)
        for f in feeds:
            for want, got in zip(run_ort(proto, f), run_ort(out, f), strict=True):
                err, bound = float(np.max(np.abs(got - want))), 1e-4 * float(np.max(np.abs(want))) + 1e-6
                assert err <= bound, f"{kind} {runtime}: max |diff| {err:.3g} > {bound:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_batch_above_one_export_fuses_sequence_first_attention(kind, tmp_path):
    # nn.MultiheadAttention's sequence-first head split and merge at batch 2 (tests/test_attention_sequence_first.py)
    with contextlib.redirect_stdout(io.StringIO()):
        proto = _models().export_transformer(kind, str(tmp_path / f"{kind}.onnx"), dynamo=False, seq=SEQ, batch=2,
                                             **SMALL[kind])
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::Attention"] == SMALL[kind]["layers"] and have["Softmax"] == 0, dict(have)
    rng = np.random.default_rng(0)
    if kind == "vit":
        feeds = {"image": rng.normal(0, 1, (2, 3, 64, 64)).astype(np.float32)}
    else:
        mask = np.ones((2, SEQ), np.int64)
        mask[1, :5] = 0
        feeds = {"input_ids": rng.integers(0, 100, (2, SEQ)), "attention_mask": mask}
    for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
        assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want))) + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 2])
def test_multihead_attention_with_weights_fuses(batch, tmp_path):
    # nn.MultiheadAttention called directly (need_weights=True: 3-D bmm heads; transformer_bmm.py), batch-first
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.a(x, x, x)[0]

    path = str(tmp_path / "mha.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(M().eval(), (torch.randn(batch, 6, 32),), path, dynamo=False, opset_version=17)
    proto = onnx.load(path)
    feeds = {proto.graph.input[0].name: np.random.default_rng(0).normal(0, 1, (batch, 6, 32)).astype(np.float32)}
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    assert _ops(out)["com.microsoft::Attention"] == 1 and _ops(out)["Softmax"] == 0, dict(_ops(out))
    for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
        assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want))) + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "gpt2"])
def test_dynamic_axes_export_fuses_packed_attention(kind, tmp_path):
    # TorchScript with dynamic_axes (the ViT-like's batch; the GPT-2-like's batch and sequence): com.microsoft
    # Attention with the q, k, v projection packed in (tests/test_attention_sequence_first.py and
    # tests/test_transformer_dynamic.py build such graphs by hand), same outputs at other batches and lengths
    with contextlib.redirect_stdout(io.StringIO()):
        proto = _models().export_transformer(kind, str(tmp_path / f"{kind}.onnx"), dynamo=False, dynamic=True,
                                             seq=SEQ, **SMALL[kind])
    out = optc.to_onnx(optc.optimize(proto, runtime="onnxruntime"))
    have = _ops(out)
    assert have["com.microsoft::Attention"] == SMALL[kind]["layers"] and have["Softmax"] == 0, dict(have)
    rng = np.random.default_rng(0)
    for batch, seq in ((1, SEQ), (3, 5)):
        if kind == "vit":
            feeds = {"image": rng.normal(0, 1, (batch, 3, 64, 64)).astype(np.float32)}
        else:
            mask = np.ones((batch, seq), np.int64)
            mask[-1, :2] = 0
            feeds = {"input_ids": rng.integers(0, 100, (batch, seq)), "attention_mask": mask}
        for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
            assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want))) + 1e-6


@pytest.mark.slow
def test_dynamic_axes_llama_export_fuses_grouped_query_attention(tmp_path):
    # TorchScript with dynamic_axes (batch and sequence): repeat_interleave's Reshape to [b, -1, t, h] is computed
    # from the Tile's shape and left untyped by ONNX; grouped-query Attention all the same, in both forms
    # (transformer_gqa.computed_repeat; tests/test_transformer_gqa.py builds such graphs by hand), K/V unrepeated,
    # same outputs at other batches and lengths
    with contextlib.redirect_stdout(io.StringIO()):
        proto = _models().export_transformer("llama", str(tmp_path / "llama.onnx"), dynamo=False, dynamic=True,
                                             seq=SEQ, **SMALL["llama"])
    rng = np.random.default_rng(0)
    for runtime in ("onnxruntime", "standard"):
        out = optc.to_onnx(optc.optimize(proto, runtime=runtime))
        have = _ops(out)
        assert have["Attention"] == SMALL["llama"]["layers"] and have["Softmax"] == 0, dict(have)
        assert have["Tile"] == 0, dict(have)  # (the Expands left size the mask to [1, 1, S, T] at run time)
        for batch, seq in ((1, SEQ), (3, 5), (2, 1)):
            feeds = {"input_ids": rng.integers(0, 100, (batch, seq))}
            for want, got in zip(run_ort(proto, feeds), run_ort(out, feeds), strict=True):
                assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want))) + 1e-6
