"""Models the benchmarks generate: a ResNet-like CNN, a MobileNetV2-like CNN, a BERT-like encoder and a GPT-2-like
decoder (built with onnx.helper in the style of a PyTorch export), scaling graphs of any size, and torch-exported
versions of the ResNet-like and BERT-like models when torch is installed (the `bench` extra)."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def weight(self, *shape, scale: float = 0.05, hint: str = "w") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32),
                                                  name))
        return name

    def const_node(self, arr) -> str:
        """A Constant node (as exporters write small constants)."""
        out = self.name("const")
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(arr))))
        return out

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, inputs, outputs, name: str, opset: int = 17) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        onnx.checker.check_model(m)
        return m


def resnet_like(width: int = 32, blocks=(3, 4, 6, 3), image: int = 224) -> onnx.ModelProto:
    """A ResNet-50-shaped CNN: explicit Pad + Conv, Conv + BatchNorm + Relu, bottleneck blocks with residual
    Add, GlobalAveragePool, a Shape-computed Flatten and MatMul + Add classifier."""
    b = Builder(1)

    def conv_bn(x, cin, cout, k, stride=1, relu=True, explicit_pad=False):
        pad = k // 2
        if explicit_pad and pad:
            pads = b.const_node(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))
            x = b.op("Pad", [x, pads], mode="constant")
            conv = b.op("Conv", [x, b.weight(cout, cin, k, k, scale=np.sqrt(2 / (cin * k * k)))],
                        kernel_shape=[k, k], strides=[stride, stride])
        else:
            conv = b.op("Conv", [x, b.weight(cout, cin, k, k, scale=np.sqrt(2 / (cin * k * k)))],
                        kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        scale = b.name("bn_s")
        b.inits.append(numpy_helper.from_array(b.rng.uniform(0.5, 1.5, cout).astype(np.float32), scale))
        bias, mean = b.weight(cout, scale=0.1), b.weight(cout, scale=0.1)
        var = b.name("bn_v")
        b.inits.append(numpy_helper.from_array(b.rng.uniform(0.5, 1.5, cout).astype(np.float32), var))
        y = b.op("BatchNormalization", [conv, scale, bias, mean, var], epsilon=1e-5)
        return b.op("Relu", [y]) if relu else y

    x = conv_bn("image", 3, width * 2, 7, stride=2, explicit_pad=True)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width * 2
    for stage, n in enumerate(blocks):
        mid = width * 2 * 2 ** stage
        cout = mid * 4
        for i in range(n):
            stride = 2 if i == 0 and stage > 0 else 1
            h = conv_bn(x, cin, mid, 1)
            h = conv_bn(h, mid, mid, 3, stride=stride)
            h = conv_bn(h, mid, cout, 1, relu=False)
            short = conv_bn(x, cin, cout, 1, stride=stride, relu=False) if i == 0 else x
            x = b.op("Relu", [b.op("Add", [h, short])])
            cin = cout
    pooled = b.op("GlobalAveragePool", [x])
    shape = b.op("Shape", [pooled])
    batch = b.op("Gather", [shape, b.const_node(np.array(0, np.int64))], axis=0)
    flat_shape = b.op("Concat", [b.op("Unsqueeze", [batch, b.const_node(np.array([0], np.int64))]),
                                 b.const_node(np.array([-1], np.int64))], axis=0)
    flat = b.op("Reshape", [pooled, flat_shape])
    logits = b.op("Add", [b.op("MatMul", [flat, b.weight(cin, 1000, scale=0.02)]), b.weight(1000, scale=0.01)])
    out = b.op("Softmax", [logits], axis=1)
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, image, image])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 1000])], "resnet_like")


def mobilenetv2_like(image: int = 224, width: float = 1.0) -> onnx.ModelProto:
    """A MobileNetV2-shaped CNN: inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, each Conv +
    BatchNorm, Clip(0, 6) as ReLU6), residual Add on stride-1 blocks, GlobalAveragePool, Flatten, Gemm."""
    b = Builder(4)
    six = b.const_node(np.array(6.0, np.float32))
    zero = b.const_node(np.array(0.0, np.float32))

    def conv_bn(x, cin, cout, k, stride=1, group=1, relu6=True):
        w = b.weight(cout, cin // group, k, k, scale=np.sqrt(2 / (cin // group * k * k)))
        conv = b.op("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
        scale, var = b.name("bn_s"), b.name("bn_v")
        b.inits.append(numpy_helper.from_array(b.rng.uniform(0.5, 1.5, cout).astype(np.float32), scale))
        b.inits.append(numpy_helper.from_array(b.rng.uniform(0.5, 1.5, cout).astype(np.float32), var))
        y = b.op("BatchNormalization", [conv, scale, b.weight(cout, scale=0.1), b.weight(cout, scale=0.1), var],
                 epsilon=1e-5)
        return b.op("Clip", [y, zero, six]) if relu6 else y

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    cin = ch(32)
    x = conv_bn("image", 3, cin, 3, stride=2)
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = conv_bn(x, cin, hidden, 1) if t != 1 else x
            h = conv_bn(h, hidden, hidden, 3, stride=stride, group=hidden)
            h = conv_bn(h, hidden, cout, 1, relu6=False)
            x = b.op("Add", [x, h]) if stride == 1 and cin == cout else h
            cin = cout
    x = conv_bn(x, cin, 1280, 1)
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    logits = b.op("Gemm", [flat, b.weight(1000, 1280, scale=0.02), b.weight(1000, scale=0.01)], transB=1)
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, image, image])],
                   [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, 1000])], "mobilenetv2_like")


def bert_like(layers: int = 6, hidden: int = 256, heads: int = 4, seq: int = 128, vocab: int = 2000,
              ffn: int = 1024) -> onnx.ModelProto:
    """A BERT-shaped encoder written as an older PyTorch export would: embeddings with Gather, an additive
    attention mask computed from an int mask, Shape-based head reshapes, decomposed LayerNorm, Erf GELU,
    Dropout at inference, MatMul + Add projections."""
    b = Builder(2)
    dh = hidden // heads

    def layer_norm(x):
        mean = b.op("ReduceMean", [x], axes=[-1], keepdims=1)
        d = b.op("Sub", [x, mean])
        var = b.op("ReduceMean", [b.op("Pow", [d, b.const_node(np.array(2.0, np.float32))])], axes=[-1],
                   keepdims=1)
        std = b.op("Sqrt", [b.op("Add", [var, b.const_node(np.array(1e-12, np.float32))])])
        n = b.op("Div", [d, std])
        gamma = b.name("ln_g")
        b.inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), gamma))
        return b.op("Add", [b.op("Mul", [n, gamma]), b.weight(hidden, scale=0.01)])

    def linear(x, cin, cout):
        return b.op("Add", [b.op("MatMul", [x, b.weight(cin, cout, scale=0.05)]), b.weight(cout, scale=0.01)])

    def split_heads(x):
        shape = b.op("Shape", [x])
        bs = b.op("Unsqueeze", [b.op("Gather", [shape, b.const_node(np.array(0, np.int64))], axis=0),
                                b.const_node(np.array([0], np.int64))])
        sl = b.op("Unsqueeze", [b.op("Gather", [shape, b.const_node(np.array(1, np.int64))], axis=0),
                                b.const_node(np.array([0], np.int64))])
        new_shape = b.op("Concat", [bs, sl, b.const_node(np.array([heads], np.int64)),
                                    b.const_node(np.array([dh], np.int64))], axis=0)
        return b.op("Transpose", [b.op("Reshape", [x, new_shape])], perm=[0, 2, 1, 3])

    ids, mask = "input_ids", "attention_mask"
    word = b.op("Gather", [b.weight(vocab, hidden, scale=0.02), ids], axis=0)
    pos_ids = b.op("Unsqueeze", [b.op("Range", [b.const_node(np.array(0, np.int64)),
                                               b.op("Gather", [b.op("Shape", [ids]),
                                                               b.const_node(np.array(1, np.int64))], axis=0),
                                               b.const_node(np.array(1, np.int64))]),
                                 b.const_node(np.array([0], np.int64))])
    pos = b.op("Gather", [b.weight(512, hidden, scale=0.02), pos_ids], axis=0)
    x = layer_norm(b.op("Add", [word, pos]))
    x = b.op("Dropout", [x])
    m = b.op("Unsqueeze", [b.op("Unsqueeze", [mask, b.const_node(np.array([1], np.int64))]),
                           b.const_node(np.array([2], np.int64))])
    m = b.op("Cast", [m], to=TensorProto.FLOAT)
    add_mask = b.op("Mul", [b.op("Sub", [b.const_node(np.array(1.0, np.float32)), m]),
                            b.const_node(np.array(-10000.0, np.float32))])
    for _ in range(layers):
        q = split_heads(linear(x, hidden, hidden))
        k = b.op("Transpose", [split_heads(linear(x, hidden, hidden))], perm=[0, 1, 3, 2])
        v = split_heads(linear(x, hidden, hidden))
        scores = b.op("Div", [b.op("MatMul", [q, k]), b.const_node(np.array(np.sqrt(dh), np.float32))])
        probs = b.op("Dropout", [b.op("Softmax", [b.op("Add", [scores, add_mask])], axis=-1)])
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        shape = b.op("Shape", [ctx])
        bs = b.op("Unsqueeze", [b.op("Gather", [shape, b.const_node(np.array(0, np.int64))], axis=0),
                                b.const_node(np.array([0], np.int64))])
        sl = b.op("Unsqueeze", [b.op("Gather", [shape, b.const_node(np.array(1, np.int64))], axis=0),
                                b.const_node(np.array([0], np.int64))])
        merged = b.op("Reshape", [ctx, b.op("Concat", [bs, sl, b.const_node(np.array([hidden], np.int64))],
                                                  axis=0)])
        attn = b.op("Dropout", [linear(merged, hidden, hidden)])
        x = layer_norm(b.op("Add", [attn, x]))
        h = linear(x, hidden, ffn)
        gelu = b.op("Mul", [b.op("Mul", [h, b.op("Add", [b.op("Erf", [b.op("Div", [
            h, b.const_node(np.array(1.4142135, np.float32))])]), b.const_node(np.array(1.0, np.float32))])]),
            b.const_node(np.array(0.5, np.float32))])
        out = b.op("Dropout", [linear(gelu, ffn, hidden)])
        x = layer_norm(b.op("Add", [out, x]))
    pooled = b.op("Tanh", [linear(b.op("Gather", [x, b.const_node(np.array(0, np.int64))], axis=1), hidden,
                                  hidden)])
    return b.model([helper.make_tensor_value_info(ids, TensorProto.INT64, [1, seq]),
                    helper.make_tensor_value_info(mask, TensorProto.INT64, [1, seq])],
                   [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden]),
                    helper.make_tensor_value_info(pooled, TensorProto.FLOAT, [1, hidden])], "bert_like")


def gpt2_like(layers: int = 4, hidden: int = 256, heads: int = 4, seq: int = 128, vocab: int = 2000,
              ctx: int = 512) -> onnx.ModelProto:
    """A GPT-2-shaped decoder as its TorchScript export (opset 17) looks: token + position embedding Gather,
    LayerNormalization, HF-style Conv1D projections exported as Gemm on a [B*T, C] Reshape (c_attn, attn c_proj,
    c_fc, mlp c_proj; weights [in, out]), Split into q/k/v, Shape-based head reshapes, a causal mask Sliced from a
    bool [1, 1, ctx, ctx] buffer and applied with Where(mask, scores, finfo.min) before Softmax, tanh-form GELU
    (Pow/Mul/Add/Tanh), a final LayerNorm and the tied LM head: MatMul with Transpose of the token embedding.
    Input "input_ids" int64 [1, seq]; output logits float32 [1, seq, vocab]."""
    b = Builder(5)
    dh = hidden // heads

    def const(v, dtype=np.int64):
        return b.const_node(np.array(v, dtype))

    def layer_norm(x):
        gamma = b.name("ln_g")
        b.inits.append(numpy_helper.from_array(b.rng.uniform(0.8, 1.2, hidden).astype(np.float32), gamma))
        return b.op("LayerNormalization", [x, gamma, b.weight(hidden, scale=0.02)], axis=-1, epsilon=1e-5)

    def conv1d(x, cin, cout):
        flat = b.op("Reshape", [x, b.op("Concat", [const([-1]), const([cin])], axis=0)])
        y = b.op("Gemm", [flat, b.weight(cin, cout, scale=0.02), b.weight(cout, scale=0.01)], alpha=1.0, beta=1.0)
        return b.op("Reshape", [y, out_shape(cout)])

    ids = "input_ids"
    shape = b.op("Shape", [ids])
    bs = b.op("Unsqueeze", [b.op("Gather", [shape, const(0)], axis=0), const([0])])
    tl = b.op("Unsqueeze", [b.op("Gather", [shape, const(1)], axis=0), const([0])])

    def out_shape(c):
        return b.op("Concat", [bs, tl, const([c])], axis=0)

    wte = b.weight(vocab, hidden, scale=0.02, hint="wte")
    pos_ids = b.op("Unsqueeze", [b.op("Range", [const(0), b.op("Gather", [shape, const(1)], axis=0), const(1)]),
                                 const([0])])
    x = b.op("Add", [b.op("Gather", [wte, ids], axis=0),
                     b.op("Gather", [b.weight(ctx, hidden, scale=0.01, hint="wpe"), pos_ids], axis=0)])
    causal = b.name("causal")
    b.inits.append(numpy_helper.from_array(np.tril(np.ones((ctx, ctx), bool))[None, None], causal))
    mask = b.op("Slice", [causal, b.op("Concat", [const([0]), const([0])], axis=0),
                          b.op("Concat", [tl, tl], axis=0), const([2, 3])])
    min_value = const(np.finfo(np.float32).min, np.float32)
    head_shape = b.op("Concat", [bs, tl, const([heads]), const([dh])], axis=0)
    split = const([hidden, hidden, hidden])
    for _ in range(layers):
        qkv = conv1d(layer_norm(x), hidden, 3 * hidden)
        q, k, v = b.op("Split", [qkv, split], n_out=3, axis=2)
        q = b.op("Transpose", [b.op("Reshape", [q, head_shape])], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [k, head_shape])], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [b.op("Reshape", [v, head_shape])], perm=[0, 2, 1, 3])
        scores = b.op("Div", [b.op("MatMul", [q, k]), const(np.sqrt(dh), np.float32)])
        probs = b.op("Softmax", [b.op("Where", [mask, scores, min_value])], axis=-1)
        merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]),
                                  out_shape(hidden)])
        x = b.op("Add", [x, conv1d(merged, hidden, hidden)])
        h = conv1d(layer_norm(x), hidden, 4 * hidden)
        inner = b.op("Mul", [const(np.sqrt(2 / np.pi), np.float32),
                             b.op("Add", [h, b.op("Mul", [const(0.044715, np.float32),
                                                          b.op("Pow", [h, const(3.0, np.float32)])])])])
        gelu = b.op("Mul", [b.op("Mul", [const(0.5, np.float32), h]),
                            b.op("Add", [const(1.0, np.float32), b.op("Tanh", [inner])])])
        x = b.op("Add", [x, conv1d(gelu, 4 * hidden, hidden)])
    logits = b.op("MatMul", [layer_norm(x), b.op("Transpose", [wte], perm=[1, 0])])
    return b.model([helper.make_tensor_value_info(ids, TensorProto.INT64, [1, seq])],
                   [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, seq, vocab])], "gpt2_like")


def scaling_graph(n_nodes: int, width: int = 16) -> onnx.ModelProto:
    """Repeated 12-node blocks (n_nodes // 11 of them) with the redundancy real exports have: MatMul+Add,
    Identity, x*1, a duplicated subexpression, a constant-only subexpression and a dead branch."""
    b = Builder(3)
    one = "one"
    b.inits.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    x = "x"
    for _ in range(max(1, n_nodes // 11)):
        h = b.op("Add", [b.op("MatMul", [x, b.weight(width, width, scale=0.25)]), b.weight(width, scale=0.1)])
        r = b.op("Relu", [b.op("Identity", [h])])
        s1 = b.op("Sigmoid", [r])
        s2 = b.op("Sigmoid", [r])
        k = b.op("Mul", [b.weight(width, scale=0.1), b.const_node(np.array(0.5, np.float32))])
        b.op("Exp", [r])  # dead
        y = b.op("Add", [b.op("Mul", [s1, s2]), k])
        x = b.op("Mul", [y, one])
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                   [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])], "scaling")


def _torch_transformers():
    """The BERT-like and GPT-2-like torch modules (imports torch; None when it is not installed)."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None

    class Bert(nn.Module):
        """Embeddings + LayerNorm + nn.TransformerEncoder; `pool`: also the hidden state of each sequence's
        last unmasked token (`x[arange(batch), mask.sum(-1) - 1]`: GatherND in a dynamo export)."""

        def __init__(self, layers=6, hidden=256, heads=4, vocab=2000, ffn=1024, pool=False):
            super().__init__()
            self.emb = nn.Embedding(vocab, hidden)
            self.pos = nn.Embedding(512, hidden)
            self.ln = nn.LayerNorm(hidden)
            layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.1, activation="gelu", batch_first=True)
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.pool = pool

        def forward(self, ids, mask):
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            x = self.ln(self.emb(ids) + self.pos(pos))
            x = self.enc(x, src_key_padding_mask=mask == 0)
            if not self.pool:
                return x
            return x, x[torch.arange(ids.shape[0]), mask.sum(-1) - 1]

    class Gpt2(nn.Module):
        """A GPT-2-shaped decoder: token + position embeddings, pre-LayerNorm blocks with causal self-attention
        (a lower-triangular mask) and a tanh-GELU MLP, a final LayerNorm, logits of each sequence's last
        unmasked token (`x[arange(batch), mask.sum(-1) - 1]`) through the tied embedding."""

        def __init__(self, layers=4, hidden=256, heads=4, vocab=2000, ctx=512):
            super().__init__()
            self.heads = heads
            self.wte = nn.Embedding(vocab, hidden)
            self.wpe = nn.Embedding(ctx, hidden)
            self.blocks = nn.ModuleList(nn.ModuleDict({
                "ln1": nn.LayerNorm(hidden), "qkv": nn.Linear(hidden, 3 * hidden), "proj": nn.Linear(hidden, hidden),
                "ln2": nn.LayerNorm(hidden), "fc": nn.Linear(hidden, 4 * hidden), "out": nn.Linear(4 * hidden, hidden),
            }) for _ in range(layers))
            self.ln = nn.LayerNorm(hidden)
            self.register_buffer("causal", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)), persistent=False)

        def forward(self, ids, mask):
            b, t = ids.shape
            x = self.wte(ids) + self.wpe(torch.arange(t).unsqueeze(0))
            allowed = self.causal[:t, :t].unsqueeze(0) & (mask[:, None, :] != 0)  # [b, t, t]
            bias = torch.where(allowed, 0.0, torch.finfo(x.dtype).min).unsqueeze(1)
            for blk in self.blocks:
                q, k, v = blk["qkv"](blk["ln1"](x)).split(x.shape[-1], dim=-1)
                q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in (q, k, v))
                att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + bias, dim=-1)
                x = x + blk["proj"]((att @ v).transpose(1, 2).reshape(b, t, -1))
                x = x + blk["out"](nn.functional.gelu(blk["fc"](blk["ln2"](x)), approximate="tanh"))
            x = self.ln(x)
            last = x[torch.arange(b), mask.sum(-1) - 1]
            return last @ self.wte.weight.t()

    return torch, nn, Bert, Gpt2


def _torch_vit_llama():
    """The ViT-like and Llama-style torch modules (imports torch; None when it is not installed)."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None

    class Vit(nn.Module):
        """A ViT-shaped encoder: 16x16 stride-16 patch-embedding Conv, a class token, learned position embeddings
        (197 tokens at 224x224), pre-LayerNorm nn.TransformerEncoder blocks with erf GELU, the class token's
        final LayerNorm and a linear head."""

        def __init__(self, layers=4, hidden=192, heads=3, image=224, ffn=768, classes=1000):
            super().__init__()
            self.patch = nn.Conv2d(3, hidden, 16, 16)
            tokens = (image // 16) ** 2 + 1
            self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
            layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                               norm_first=True)
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.ln = nn.LayerNorm(hidden)
            self.head = nn.Linear(hidden, classes)

        def forward(self, image):
            x = self.patch(image).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.ln(self.enc(x)[:, 0]))

    class RMSNorm(nn.Module):
        def __init__(self, hidden, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))
            self.eps = eps

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class Llama(nn.Module):
        """A Llama-style decoder: RMSNorm, rotary embeddings (rotate_half), grouped-query attention (K/V heads
        repeated with repeat_interleave), a causal mask, SwiGLU MLP, tied-free LM head."""

        def __init__(self, layers=4, hidden=256, heads=8, kv_heads=2, vocab=2000, ffn=688, ctx=512):
            super().__init__()
            self.heads, self.kv_heads, self.dh = heads, kv_heads, hidden // heads
            self.emb = nn.Embedding(vocab, hidden)
            self.blocks = nn.ModuleList(nn.ModuleDict({
                "n1": RMSNorm(hidden), "q": nn.Linear(hidden, hidden, bias=False),
                "k": nn.Linear(hidden, kv_heads * self.dh, bias=False),
                "v": nn.Linear(hidden, kv_heads * self.dh, bias=False), "o": nn.Linear(hidden, hidden, bias=False),
                "n2": RMSNorm(hidden), "gate": nn.Linear(hidden, ffn, bias=False),
                "up": nn.Linear(hidden, ffn, bias=False), "down": nn.Linear(ffn, hidden, bias=False),
            }) for _ in range(layers))
            self.norm = RMSNorm(hidden)
            self.lm = nn.Linear(hidden, vocab, bias=False)
            inv = 1.0 / (10000 ** (torch.arange(0, self.dh, 2).float() / self.dh))
            freqs = torch.outer(torch.arange(ctx).float(), inv)
            emb = torch.cat([freqs, freqs], dim=-1)
            self.register_buffer("cos", emb.cos(), persistent=False)
            self.register_buffer("sin", emb.sin(), persistent=False)
            self.register_buffer("causal", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)), persistent=False)

        def forward(self, ids):
            b, t = ids.shape
            x = self.emb(ids)
            cos, sin = self.cos[:t], self.sin[:t]
            fill = torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype)
            bias = torch.where(self.causal[:t, :t], torch.zeros((), dtype=x.dtype), fill)
            for blk in self.blocks:
                h = blk["n1"](x)
                q = blk["q"](h).view(b, t, self.heads, self.dh).transpose(1, 2)
                k = blk["k"](h).view(b, t, self.kv_heads, self.dh).transpose(1, 2)
                v = blk["v"](h).view(b, t, self.kv_heads, self.dh).transpose(1, 2)
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
                rep = self.heads // self.kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                att = torch.softmax(q @ k.transpose(-1, -2) / self.dh ** 0.5 + bias, dim=-1)
                x = x + blk["o"]((att @ v).transpose(1, 2).reshape(b, t, -1))
                h = blk["n2"](x)
                x = x + blk["down"](nn.functional.silu(blk["gate"](h)) * blk["up"](h))
            return self.lm(self.norm(x))

    return torch, Vit, Llama


TRANSFORMER_KINDS = ("bert", "gpt2", "vit", "llama")


def export_transformer(kind: str, path: str, *, dynamo: bool, batch: int = 1, seq: int = 128, seed: int = 0,
                       dynamic: bool = False, **sizes) -> onnx.ModelProto:
    """Export one of TRANSFORMER_KINDS with torch's TorchScript exporter (`dynamo=False`, opset 17) or its
    dynamo exporter (opset 18) to `path` (weights inside) and load it. Inputs: bert / gpt2 `input_ids` and
    `attention_mask` (int64 [batch, seq]); vit `image` (float32 [batch, 3, image, image], `image` a size, 224 by
    default: 197 tokens); llama `input_ids`. `dynamic` (TorchScript only): the batch and sequence dims symbolic
    (`dynamic_axes`: "batch", "seq"; the ViT's batch). `sizes`: the module's constructor arguments. Raises
    ImportError without torch (or onnxscript, for dynamo)."""
    first, more = _torch_transformers(), _torch_vit_llama()
    if first is None or more is None:
        raise ImportError("torch is not installed")
    torch, _nn, Bert, Gpt2 = first
    _torch, Vit, Llama = more
    torch.manual_seed(seed)
    try:
        torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no ONNX export
    except AttributeError:
        pass
    module = {"bert": Bert, "gpt2": Gpt2, "vit": Vit, "llama": Llama}[kind](**sizes).eval()
    if kind == "vit":
        image = sizes.get("image", 224)
        args, names = (torch.randn(batch, 3, image, image),), ["image"]
    else:
        ids = torch.randint(0, sizes.get("vocab", 2000), (batch, seq))
        if kind == "llama":
            args, names = (ids,), ["input_ids"]
        else:
            args, names = (ids, torch.ones(batch, seq, dtype=torch.int64)), ["input_ids", "attention_mask"]
    if dynamic and dynamo:
        raise ValueError("dynamic=True is for the TorchScript exporter")
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(module, args, path, input_names=names, opset_version=18, dynamo=True,
                              external_data=False)
        else:
            axes = {n: ({0: "batch"} if n == "image" else {0: "batch", 1: "seq"}) for n in names} if dynamic else None
            torch.onnx.export(module, args, path, input_names=names, opset_version=17, dynamo=False,
                              dynamic_axes=axes)
    return onnx.load(path)


def dynamo_export(kind: str, path: str, batch: int = 1, seq: int = 128, dynamic: bool = False, seed: int = 0,
                  **sizes) -> onnx.ModelProto:
    """Export the BERT-like (`kind="bert"`, with last-token pooling) or GPT-2-like (`"gpt2"`) module with
    torch's dynamo exporter (opset 18) to `path` (weights inside the file) and load it. `sizes`: the module's
    constructor arguments (layers, hidden, heads, vocab, ...); `dynamic`: symbolic batch and seq dims, traced at a
    batch and seq of at least 2 (torch specializes a dim of size 1: traced at batch 1, the export's reshapes fold
    the batch into the sequence and it runs only at batch 1, on onnxruntime too). The inputs are `input_ids` and
    `attention_mask` (int64, [batch, seq]). Raises ImportError without torch."""
    mods = _torch_transformers()
    if mods is None:
        raise ImportError("torch is not installed")
    torch, _nn, Bert, Gpt2 = mods
    torch.manual_seed(seed)
    try:
        torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no ONNX export
    except AttributeError:
        pass
    module = (Bert(pool=True, **sizes) if kind == "bert" else Gpt2(**sizes)).eval()
    vocab = sizes.get("vocab", 2000)
    if dynamic:
        batch, seq = max(batch, 2), max(seq, 2)
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    dims = {0: "batch", 1: "seq"} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(module, (ids, mask), path, input_names=["input_ids", "attention_mask"], opset_version=18,
                          dynamo=True, external_data=False, dynamic_shapes=(dims, dims) if dynamic else None)
    return onnx.load(path)


def torch_models(work_dir: str) -> dict[str, onnx.ModelProto]:
    """The ResNet-like and BERT-like models exported by torch (when torch is installed), saved in `work_dir`:
    `torch_resnet` and `torch_bert` with the TorchScript exporter, `torch_bert_dynamo` (the BERT-like with
    last-token pooling) and `torch_gpt2_dynamo` (a GPT-2-like causal decoder) with the dynamo exporter
    (needs onnxscript)."""
    mods = _torch_transformers()
    if mods is None:
        return {}
    torch, nn, Bert, _Gpt2 = mods
    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    class ResNet(nn.Module):
        def __init__(self, width=32, blocks=(3, 4, 6, 3)):
            super().__init__()
            layers = [nn.Conv2d(3, width * 2, 7, 2, 3, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(),
                      nn.MaxPool2d(3, 2, 1)]
            cin = width * 2
            for s, n in enumerate(blocks):
                mid = width * 2 * 2 ** s
                for i in range(n):
                    layers.append(Bottleneck(cin, mid, 2 if i == 0 and s > 0 else 1))
                    cin = mid * 4
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x):
            return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)),
                                 dim=1)

    out = {}
    torch.manual_seed(0)
    try:
        torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no ONNX export
    except AttributeError:
        pass
    for name, module, args, names in (
        ("torch_resnet", ResNet().eval(), (torch.randn(1, 3, 224, 224),), ["image"]),
        ("torch_bert", Bert().eval(), (torch.randint(0, 2000, (1, 128)), torch.ones(1, 128, dtype=torch.int64)),
         ["input_ids", "attention_mask"]),
    ):
        path = os.path.join(work_dir, f"{name}.onnx")
        try:
            with torch.no_grad():
                torch.onnx.export(module, args, path, input_names=names, opset_version=17, dynamo=False)
            out[name] = onnx.load(path)
        except Exception as exc:  # exporter missing or failing: say so, keep going
            print(f"[torch] export of {name} failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
    for name, kind in (("torch_bert_dynamo", "bert"), ("torch_gpt2_dynamo", "gpt2")):
        try:
            out[name] = dynamo_export(kind, os.path.join(work_dir, f"{name}.onnx"))
        except Exception as exc:  # onnxscript missing or the export failing: say so, keep going
            print(f"[torch] export of {name} failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
    return out
