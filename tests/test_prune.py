"""optc prune: structured channel pruning through the use-def chains, and unstructured magnitude pruning.

The correctness oracle: in a model whose pruned channels are exactly zero all the way to their consumers (zero
filters, zero biases, BatchNorm that maps 0 to 0), pruning those channels must not change the outputs; with
random weights pruning changes the outputs but never the shapes of the graph outputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnx.shape_inference
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc import to_onnx
from optc.errors import OptcError
from optc.rewrites import optimize
from optc.rewrites.passes.prune import CHANNEL_MULTIPLE, kept_channels
from optc.tools import cli
from optc.workflow.prune import prune as default_prune

from .conftest import run_ort


def prune(model, ratio, **kw):
    """optc.prune with exactly the ratio (multiple=1): the small models here test the channel analysis."""
    return default_prune(model, ratio, **{"multiple": 1, **kw})


HERE = os.path.dirname(__file__)
DIGITS = os.path.join(HERE, "..", "examples", "digits_cnn.onnx")
DIGITS_TEST = os.path.join(HERE, "..", "examples", "digits_test.npz")


class Builder:
    """A small ONNX model under construction; `zero` channels of each producer get all-zero weights and biases."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, array: np.ndarray) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def ints(self, values: list[int]) -> str:
        self.n += 1
        name = f"i{self.n}"
        self.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def weights(self, shape: tuple, zero: list[int], axis: int = 0) -> np.ndarray:
        w = self.rng.uniform(0.5, 1.5, shape) * self.rng.choice([-1, 1], shape)  # no channel is near zero by chance
        np.moveaxis(w, axis, 0)[zero] = 0
        return w

    def conv(self, x: str, cin: int, cout: int, zero=(), k: int = 3, group: int = 1) -> str:
        w = self.weights((cout, cin // group, k, k), list(zero)) * 0.3
        b = self.weights((cout,), list(zero))
        return self.op("Conv", [x, self.const(w), self.const(b)], pads=[k // 2] * 4, group=group)

    def model(self, inputs: dict[str, list], outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "m", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)


IMG = {"x": ["N", 3, 8, 8]}


def chain_cnn(zero=(), seed=0):
    """Conv(3->8) Relu Conv(8->16) Relu GlobalAveragePool Flatten Gemm(16->10)."""
    b = Builder(seed)
    h = b.op("Relu", [b.conv("x", 3, 8, zero)])
    h = b.op("Relu", [b.conv(h, 8, 16, [z * 2 for z in zero] + [z * 2 + 1 for z in zero])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    y = b.op("Gemm", [h, b.const(b.weights((10, 16), [])), b.const(np.zeros(10))], transB=1)
    return b.model(IMG, [y])


def residual_cnn(zero=(), seed=0):
    """a = Relu(Conv(x)); r = Relu(Add(a, Conv(a)) * 0.5); Conv(r) -> 4: Conv(x) and Conv(a) form one group."""
    b = Builder(seed)
    a = b.op("Relu", [b.conv("x", 3, 8, zero)])
    s = b.op("Add", [a, b.conv(a, 8, 8, zero)])
    r = b.op("Relu", [b.op("Mul", [s, b.const(np.full((8, 1, 1), 0.5))])])
    return b.model(IMG, [b.conv(r, 8, 4)])


def concat_cnn(zero=(), seed=0):
    """Concat(Conv(x)->4, Conv(x)->8) on channels, Relu, Add a per-channel constant, Conv -> 5."""
    b = Builder(seed)
    c = b.op("Concat", [b.conv("x", 3, 4, [z for z in zero if z < 4]), b.conv("x", 3, 8, zero)], axis=1)
    bias = b.weights((12, 1, 1), [])
    bias[[z for z in zero if z < 4]] = 0
    bias[[4 + z for z in zero]] = 0
    h = b.op("Add", [b.op("Relu", [c]), b.const(bias)])
    return b.model(IMG, [b.conv(h, 12, 5)])


def depthwise_cnn(zero=(), seed=0):
    """MobileNet-like: Conv(3->8) Relu, depthwise Conv(8, group 8) Clip(0, 6), pointwise Conv(8->6)."""
    b = Builder(seed)
    h = b.op("Relu", [b.conv("x", 3, 8, zero)])
    h = b.op("Clip", [b.conv(h, 8, 8, zero, group=8), b.const(np.float32(0)), b.const(np.float32(6))])
    return b.model(IMG, [b.conv(h, 8, 6, k=1)])


def bn_cnn(zero=(), seed=0):
    """Conv(3->8) BatchNormalization Relu Conv(8->4); the zero channels' BN maps 0 to 0 (B = mean = 0)."""
    b = Builder(seed)
    scale, bias, mean = b.weights((8,), []), b.weights((8,), list(zero)), b.weights((8,), list(zero))
    var = b.rng.uniform(0.5, 2, 8)
    h = b.op("BatchNormalization", [b.conv("x", 3, 8, zero), b.const(scale), b.const(bias), b.const(mean),
                                    b.const(var)])
    return b.model(IMG, [b.conv(b.op("Relu", [h]), 8, 4)])


def flatten_gemm(zero=(), seed=0):
    """Conv(3->6) Relu MaxPool(2) [N,6,4,4] Flatten Gemm(96->7, transB=0)."""
    b = Builder(seed)
    h = b.op("MaxPool", [b.op("Relu", [b.conv("x", 3, 6, zero)])], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Gemm", [b.op("Flatten", [h]), b.const(b.weights((96, 7), [])), b.const(np.ones(7))])
    return b.model(IMG, [y])


def mlp(zero=(), seed=0):
    """x [N, 5, 12]: MatMul(12->16) Add Relu MatMul(16->8) Add Relu MatMul(8->3)."""
    b = Builder(seed)
    wide = [*zero, *(z + 8 for z in zero)]  # 16 channels drop twice as many as 8
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.const(b.weights((12, 16), wide, 1))]),
                                   b.const(b.weights((16,), wide))])])
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.const(b.weights((16, 8), list(zero), 1))]),
                                   b.const(b.weights((8,), list(zero)))])])
    return b.model({"x": ["N", 5, 12]}, [b.op("MatMul", [h, b.const(b.weights((8, 3), []))])])


def reshape_head(zero=(), seed=0):
    """Conv(3->8) Relu Dropout MaxPool(2) [N,8,4,4] Reshape [0, -1] Gemm(128->5)."""
    b = Builder(seed)
    h = b.op("Dropout", [b.op("Relu", [b.conv("x", 3, 8, zero)])])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Gemm", [b.op("Reshape", [h, b.ints([0, -1])]), b.const(b.weights((128, 5), [])), b.const(np.ones(5))])
    return b.model(IMG, [y])


def squeeze_head(zero=(), seed=0):
    """Conv(3->8) Relu GlobalAveragePool Squeeze(axes 2, 3) Unsqueeze(axis 1) [N,1,8] MatMul(8->5)."""
    b = Builder(seed)
    h = b.op("GlobalAveragePool", [b.op("Relu", [b.conv("x", 3, 8, zero)])])
    h = b.op("Unsqueeze", [b.op("Squeeze", [h, b.ints([2, 3])]), b.ints([1])])
    return b.model(IMG, [b.op("MatMul", [h, b.const(b.weights((8, 5), []))])])


def reduce_pad(zero=(), seed=0):
    """Conv(3->8) Relu Pad(1 on H, W) ReduceMean(axes 2, 3, keepdims 0) [N,8] Gemm(8->5)."""
    b = Builder(seed)
    h = b.op("Pad", [b.op("Relu", [b.conv("x", 3, 8, zero)]), b.ints([0, 0, 1, 1, 0, 0, 1, 1])])
    h = b.op("ReduceMean", [h], axes=[2, 3], keepdims=0)
    return b.model(IMG, [b.op("Gemm", [h, b.const(b.weights((8, 5), []))])])


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    inp = model.graph.input[0]
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    return {inp.name: rng.standard_normal(shape).astype(np.float32)}


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _valid(model) -> onnx.ModelProto:
    proto = model if isinstance(model, onnx.ModelProto) else to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


# model, ratio, zero channels (ratio * channels of each group, rounded down, are exactly these), expected params
CASES = {
    # conv1 8 -> 6 (2 dropped), conv2 16 -> 12: (3*9+1)*6 + (6*9+1)*12 + 12*10 + 10
    "chain": (chain_cnn, 0.25, [1, 5], (3 * 9 + 1) * 6 + (6 * 9 + 1) * 12 + 12 * 10 + 10),
    # one group of 8 -> 6 (both convs before the Add), the Mul constant [8,1,1] -> 6, the last conv's inputs
    "residual": (residual_cnn, 0.25, [0, 3], (3 * 9 + 1) * 6 + (6 * 9 + 1) * 6 + 6 + (6 * 9 * 4 + 4)),
    # groups of 4 -> 3 and 8 -> 6; the Add constant and the consumer follow the concatenation (9 channels)
    "concat": (concat_cnn, 0.25, [1, 6], (3 * 9 + 1) * 3 + (3 * 9 + 1) * 6 + 9 + (9 * 9 * 5 + 5)),
    # 8 -> 6 through the depthwise conv: (3*9+1)*6 + (9+1)*6 + 2 (Clip bounds) + (6+1)*6
    "depthwise": (depthwise_cnn, 0.25, [2, 7], (3 * 9 + 1) * 6 + (9 + 1) * 6 + 2 + (6 + 1) * 6),
    "bn": (bn_cnn, 0.25, [1, 4], (3 * 9 + 1) * 6 + 4 * 6 + (6 * 9 * 4 + 4)),
    # 6 -> 4 channels: the Gemm keeps 4 * 16 of its 96 rows
    "flatten_gemm": (flatten_gemm, 0.34, [0, 5], (3 * 9 + 1) * 4 + 64 * 7 + 7),
    # 8 -> 6 channels through Dropout, MaxPool and a Reshape to [N, -1]: 6 * 16 of the 128 Gemm rows stay
    "reshape_head": (reshape_head, 0.25, [0, 4], (3 * 9 + 1) * 6 + 96 * 5 + 5 + 2),
    # 8 -> 6 channels through Squeeze and Unsqueeze (the channel axis moves from 1 to 2)
    "squeeze_head": (squeeze_head, 0.25, [6, 7], (3 * 9 + 1) * 6 + 6 * 5 + 2 + 1),
    # 8 -> 6 channels through Pad (spatial) and ReduceMean over H, W (the channel axis stays 1)
    "reduce_pad": (reduce_pad, 0.25, [2, 5], (3 * 9 + 1) * 6 + 8 + 6 * 5),
    # 16 -> 12 ([3, 7, 11, 15]) and 8 -> 6
    "mlp": (mlp, 0.25, [3, 7], (12 * 12 + 12) + (12 * 6 + 6) + 6 * 3),
}


@pytest.mark.parametrize("criterion", ["l1", "l2", "path"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pruning_zero_channels_keeps_outputs(case, criterion):
    make, ratio, zero, expected_params = CASES[case]
    model = make(zero)
    pruned, report = prune(model, ratio, criterion=criterion)
    proto = _valid(pruned)
    assert _params(proto) == expected_params == report.params_after
    assert report.params_before == _params(model)
    assert report.groups_pruned and report.flops_after < report.flops_before
    assert sum(g.params_removed for g in report.groups_pruned) == report.params_before - report.params_after
    assert sum(g.macs_removed for g in report.groups_pruned) == report.flops_before - report.flops_after
    feeds = _feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(proto, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruning_random_weights_changes_outputs_not_shapes(case):
    make, ratio, _, expected_params = CASES[case]
    model = make(seed=3)
    pruned, report = prune(model, ratio, criterion="l2")
    proto = _valid(pruned)
    assert _params(proto) == expected_params
    feeds = _feeds(model)
    before, after = run_ort(model, feeds), run_ort(proto, feeds)
    assert [a.shape for a in after] == [b.shape for b in before]
    assert any(not np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(after, before, strict=True))


def test_residual_producers_are_one_group():
    _, report = prune(residual_cnn(), 0.25)
    assert [len(g.producers) for g in report.groups_pruned] == [2]


def test_channels_reaching_a_graph_output_are_kept():
    b = Builder()
    h = b.conv("x", 3, 8)
    model = b.model(IMG, [h, b.conv(b.op("Relu", [h]), 8, 4)])  # the first conv's output is also an output
    pruned, report = prune(model, 0.5)
    assert report.groups_pruned == [] and report.params_after == report.params_before
    assert any("graph output" in g.reason for g in report.groups_skipped)
    feeds = _feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(_valid(pruned), feeds), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("what", ["reshape", "transpose", "grouped", "reduce", "pad"])
def test_unknown_layout_ops_and_grouped_convs_block_their_group(what):
    b = Builder()
    h = b.op("Relu", [b.conv("x", 3, 8)])
    if what == "reshape":
        h = b.op("Reshape", [h, b.inits.append(numpy_helper.from_array(np.array([0, 8, 64]), "shape")) or "shape"])
        y = b.op("ReduceMean", [h], axes=[2])
    elif what == "transpose":
        y = b.op("Transpose", [h], perm=[0, 2, 3, 1])
    elif what == "reduce":
        y = b.op("ReduceMax", [h], axes=[1])  # over the channels
    elif what == "pad":
        y = b.op("Pad", [h, b.ints([0, 1, 0, 0, 0, 1, 0, 0])])  # pads the channel axis
    else:
        y = b.conv(h, 8, 8, group=2)
    model = b.model(IMG, [y])
    pruned, report = prune(model, 0.5)
    word = {"reshape": "Reshape", "transpose": "Transpose", "grouped": "grouped Conv", "reduce": "ReduceMax",
            "pad": "Pad"}[what]
    blocked = [g for g in report.groups_skipped if word in (g.reason or "")]
    assert blocked and all("Conv_" in p for p in blocked[0].producers)
    feeds = _feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(_valid(pruned), feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_add_of_a_concatenation_and_a_layer_is_left_alone():
    """Channels of Concat(a, b) added to c would need c split in two: not one whole layer each, so blocked."""
    b = Builder()
    c = b.op("Concat", [b.conv("x", 3, 4), b.conv("x", 3, 4)], axis=1)
    model = b.model(IMG, [b.conv(b.op("Add", [c, b.conv("x", 3, 8)]), 8, 2)])
    _, report = prune(model, 0.5)
    assert report.groups_pruned == []
    assert any("whole layer" in (g.reason or "") for g in report.groups_skipped)


def test_unstructured_zeroes_the_smallest_weights():
    model = chain_cnn(seed=1)
    pruned, report = prune(model, 0.3, unstructured=True)
    proto = _valid(pruned)
    assert report.params_after == report.params_before == _params(proto)
    weights = {"Conv": 1, "Gemm": 1}
    expected = sum(int(0.3 * np.prod(t.dims)) for n in model.graph.node if n.op_type in weights
                   for t in model.graph.initializer if t.name == n.input[1])
    assert report.zeroed == expected == report.nonzero_before - report.nonzero_after
    assert report.flops_after == report.flops_before and "no CPU speed-up" in report.note
    assert [o.shape for o in run_ort(proto, _feeds(model))] == [o.shape for o in run_ort(model, _feeds(model))]


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_ratio_outside_0_1_is_an_error(ratio):
    with pytest.raises(OptcError, match="ratio"):
        prune(chain_cnn(), ratio)


def test_unknown_criterion_is_an_error():
    with pytest.raises(OptcError, match="criterion"):
        prune(chain_cnn(), 0.3, criterion="l3")


def test_pass_in_a_pipeline():
    model = optimize(chain_cnn([1, 5]), passes="prune{ratio=0.25,multiple=1},dce")
    assert _params(_valid(model)) == CASES["chain"][3]


@pytest.mark.parametrize("argv", [["--ratio", "1"], ["--ratio", "0"], ["--ratio", "x"]])
def test_cli_bad_ratio_exits_2(tmp_path, capsys, argv):
    out = tmp_path / "p.onnx"
    assert cli.main(["prune", DIGITS, "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert "--ratio" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_cli_digits_with_eval_json(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert cli.main(["prune", DIGITS, "-o", str(out), "--ratio", "0.25", "--eval", DIGITS_TEST, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "structured" and doc["params_after"] < doc["params_before"]
    assert doc["flops_after"] < doc["flops_before"] and "fine-tuning" in doc["note"]
    assert doc["accuracy"]["metric"] == "top1" and doc["accuracy"]["baseline"]["value"] is not None
    assert any("graph output" in g["reason"] for g in doc["groups_skipped"])
    assert _params(_valid(onnx.load(out))) == doc["params_after"]


def test_cli_text_report_unstructured(tmp_path, capsys):
    assert cli.main(["prune", DIGITS, "-o", str(tmp_path / "u.onnx"), "--ratio", "0.5", "--unstructured"]) == 0
    out = capsys.readouterr().out
    assert "unstructured" in out and "no CPU speed-up" in out and "non-zero parameters" in out


def test_unstructured_keeps_a_shared_weight_shared():
    b = Builder()
    w = b.const(b.weights((8, 8), []))
    model = b.model({"x": ["N", 8]}, [b.op("MatMul", [b.op("MatMul", ["x", w]), w])])
    pruned, report = prune(model, 0.5, unstructured=True)
    proto = _valid(pruned)
    assert report.params_after == report.params_before == _params(proto) == 64
    assert report.zeroed == 32 == report.nonzero_before - report.nonzero_after


def test_path_criterion_drops_the_channel_the_next_layer_does_not_read():
    """Two channels with the same filter norm: path drops the one whose reader's weights are small; l1 cannot
    tell them apart and drops the first."""
    b = Builder()
    w1 = b.weights((2, 3, 3, 3), [])
    w1[1] = w1[0]
    h = b.op("Relu", [b.op("Conv", ["x", b.const(w1)], pads=[1] * 4)])
    w2 = b.weights((4, 2, 1, 1), []).astype(np.float32)
    w2[:, 1] *= 1e-3
    model = b.model(IMG, [b.op("Conv", [h, b.const(w2)])])
    for criterion, kept in (("l1", 1), ("path", 0)):  # l1: a tie, the first channel goes
        pruned, _ = prune(model, 0.5, criterion=criterion)
        reader = next(v.const_value() for v in pruned.graph.initializers.values() if v.shape == (4, 1, 1, 1))
        np.testing.assert_array_equal(reader, w2[:, [kept]])


def test_weights_listed_as_graph_inputs():
    """IR 3: every weight is also a graph input; prune makes them constants first (as -O2). At IR >= 4 such a
    weight is an overridable default and its layer is left alone."""
    model = chain_cnn([1, 5])
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    pruned, report = prune(model, 0.25)
    assert report.params_after == report.params_before and report.groups_pruned == []
    model.ir_version = 3
    pruned, report = prune(model, 0.25)
    assert report.params_after == CASES["chain"][3]
    feeds = _feeds(model)
    np.testing.assert_allclose(run_ort(_valid(pruned), feeds)[0], run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_unstructured_leaves_a_weight_listed_as_a_graph_input_alone():
    """At IR >= 4 an initializer that is also a graph input is a default the caller may replace: zeroing it
    would change what a caller who feeds no weight gets and drop what one who does feeds."""
    model = chain_cnn([1, 5])
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    _, report = prune(model, 0.5, unstructured=True)
    assert report.zeroed == 0 and report.nonzero_after == report.nonzero_before
    out = optimize(model, passes="prune{ratio=0.5,unstructured=true}")
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {v.name: v.const_value() for v in out.graph.initializers.values()}
    assert set(before) == set(after)
    for name, arr in before.items():
        np.testing.assert_array_equal(after[name], arr)


def _names(model) -> set[str]:
    proto = model if isinstance(model, onnx.ModelProto) else to_onnx(model)
    return {t.name for t in proto.graph.initializer}


@pytest.mark.parametrize("case", ["chain", "residual", "bn", "mlp"])
def test_structured_pruning_keeps_the_weights_names(case):
    """A sliced weight replaces the old one under the old name (no `w_1`); the outputs are still right."""
    make, ratio, zero, _ = CASES[case]
    model = make(zero)
    pruned, report = prune(model, ratio)
    proto = _valid(pruned)
    assert report.groups_pruned and _names(proto) == _names(model)
    before = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert any(tuple(t.dims) != before[t.name] for t in proto.graph.initializer)  # sliced, same names
    feeds = _feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(proto, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_weight_shared_by_two_readers_sliced_differently_keeps_its_name_once():
    """x -> MatMul(w_a) -> Relu -> MatMul(s) and x -> MatMul(w_b) -> Relu -> MatMul(s): the two groups keep
    different rows of s, so one reader gets s under its name, the other a fresh copy (s_1); each computes what
    the model computes with its rows."""
    b = Builder(2)
    s = b.const(b.weights((16, 4), []))
    ws = [b.const(b.weights((8, 16), [])) for _ in range(2)]
    ys = [b.op("MatMul", [b.op("Relu", [b.op("MatMul", ["x", w])]), s]) for w in ws]
    model = b.model({"x": ["N", 8]}, ys)
    pruned, report = prune(model, 0.25)
    proto = _valid(pruned)
    assert len(report.groups_pruned) == 2
    readers = [n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[0].startswith("relu")]
    assert sorted(readers) == [s, f"{s}_1"] and _names(proto) == _names(model) | {f"{s}_1"}
    data = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert not np.array_equal(data[s], data[f"{s}_1"])
    feeds = _feeds(model)
    got = run_ort(proto, feeds)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for y, w in zip(got, ws, strict=True):  # the kept channels of each branch, with the original weights
        keep = np.sort(np.argsort(np.abs(original[w]).sum(0), kind="stable")[4:])
        h = np.maximum(feeds["x"] @ original[w][:, keep], 0)
        np.testing.assert_allclose(y, h @ original[s][keep], rtol=1e-5, atol=1e-5)


def test_unstructured_pruning_keeps_the_weights_names():
    """Zeroed in place under the user's names; a weight that another op reads as well is not changed for it
    (the readers that are pruned get a zeroed copy under a fresh name)."""
    model = chain_cnn(seed=1)
    pruned, report = prune(model, 0.3, unstructured=True)
    proto = _valid(pruned)
    assert report.zeroed and _names(proto) == _names(model)
    b = Builder()
    w = b.const(b.weights((8, 8), []))
    model = b.model({"x": [8, 8]}, [b.op("MatMul", ["x", w]), b.op("Add", ["x", w])])
    pruned, report = prune(model, 0.5, unstructured=True)
    proto = _valid(pruned)
    mm = next(n for n in proto.graph.node if n.op_type == "MatMul")
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert report.zeroed == 32 and add.input[1] == w and mm.input[1] == f"{w}_1"
    feeds = _feeds(model)
    np.testing.assert_array_equal(run_ort(proto, feeds)[1], run_ort(model, feeds)[1])  # the Add is unchanged


@pytest.mark.parametrize("channels, ratio, multiple, kept", [
    (16, 0.25, 1, 12), (10, 0.5, 1, 5), (3, 0.9, 1, 1),          # exactly the ratio, at least one
    (64, 0.25, 16, 48), (32, 0.5, 16, 16), (64, 0.1, 16, 64),    # rounded up to whole vectors
    (16, 0.25, 16, 16), (24, 0.25, 16, 24), (40, 0.5, 16, 32),   # never more removed than the ratio
    (48, 0.3, 8, 40), (8, 0.9, 8, 8)])
def test_kept_channels(channels, ratio, multiple, kept):
    assert kept_channels(channels, ratio, multiple) == kept


def test_default_keeps_whole_vectors_of_channels():
    """By default every pruned group keeps a multiple of CHANNEL_MULTIPLE channels and loses at most the ratio;
    a group too small to lose a whole multiple is left alone and the report says why."""
    pruned, report = default_prune(DIGITS, 0.5)
    assert report.groups_pruned
    for g in report.groups_pruned:
        assert g.channels_after % CHANNEL_MULTIPLE == 0 and g.channels_before - g.channels_after <= 0.5 * g.channels_before
    _, report = default_prune(DIGITS, 0.25)
    assert any("multiple of 16" in g.reason for g in report.groups_skipped)
    _valid(pruned)


@pytest.mark.parametrize("value", ["0", "x", "-16"])
def test_cli_bad_multiple_exits_2(tmp_path, capsys, value):
    out = tmp_path / "p.onnx"
    assert cli.main(["prune", DIGITS, "-o", str(out), "--ratio", "0.5", "--multiple", value]) == 2
    err = capsys.readouterr().err
    assert "--multiple" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_weights_in_constant_nodes_count_as_parameters():
    """Parameters held in Constant nodes count before pruning as after (the report said '0 -> 44'), in a model
    whose output is declared without a shape."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(
                 rng.standard_normal((6, 8)).astype(np.float32), "w1v")),
             helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(
                 rng.standard_normal((8, 5)).astype(np.float32), "w2v")),
             helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    # the output is declared without a shape, and no ONNX shape inference ran first: the hidden MatMul's rank
    # is inferred anyway (a declared shapeless FLOAT output had blocked the inference, and the group)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _, report = prune(model, 0.5)
    assert [g.channels_after for g in report.groups_pruned] == [4], report.groups_skipped
    assert (report.params_before, report.params_after) == (6 * 8 + 8 * 5, 6 * 4 + 4 * 5)


@pytest.mark.parametrize("bias", ["graph_input", "computed"])
def test_conv_reading_pruned_channels_with_a_run_time_bias(bias):
    """A (group 1) Conv that reads pruned channels but whose own bias is not a constant (a graph input, or computed)
    is not pruned itself: only its input channels are cut. It was taken for a depthwise conv: its filters cut by
    the input's channels and `group` set to their count (an invalid model, or an internal error; a breaker's
    find)."""
    b = Builder(0)
    h = b.op("Relu", [b.conv("x", 3, 8, [1, 3, 5, 7])])
    w2 = b.const(b.weights((8, 8, 1, 1), [1, 3, 5, 7], axis=1))
    if bias == "graph_input":
        inputs, b2 = {**IMG, "b2": [8]}, "b2"
    else:
        inputs, b2 = IMG, b.op("Add", [b.const(np.ones(8)), b.const(np.arange(8))])
    y = b.op("Conv", [h, w2, b2])
    model = b.model(inputs, [y])
    pruned, report = prune(model, 0.5)
    proto = _valid(pruned)
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    assert all(a.name != "group" or a.i == 1 for a in conv.attribute)
    feeds = {**_feeds(model), "b2": np.linspace(-1, 1, 8).astype(np.float32)} if bias == "graph_input" else _feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(proto, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert report.params_after < report.params_before
