"""LSTM, GRU and RNN lowered to TVM Relax (lowering/ops/recurrent.py) against onnxruntime; Scan and Loop; the
refusals. Weights are initializers (as in a real model; it also keeps the builds small), X, initial states and
sequence_lens are fed at run time unless a test says otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.lowering.relax_lowering import lower

from .conftest import outputs_mismatch, run_ort

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT, HIDDEN = 3, 3, 4, 5


def _recurrent_model(op: str, direction: str = "forward", *, bias: bool = True, initial: bool = False,
                     peepholes: bool = False, lens: list[int] | None = None, lens_const: bool = False,
                     outputs=("Y", "Y_h", "Y_c"), layout: int = 0, seq=SEQ, batch=BATCH, seed: int = 0,
                     **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One recurrent node; returns the model and its run-time feeds (X first)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    outputs = [o for o in outputs if op == "LSTM" or o != "Y_c"]
    x_shape = [seq, batch, INPUT] if layout == 0 else [batch, seq, INPUT]
    state_shape = [dirs, batch, HIDDEN] if layout == 0 else [batch, dirs, HIDDEN]
    sizes = {seq: seq if isinstance(seq, int) else SEQ, batch: batch if isinstance(batch, int) else BATCH}
    feeds = {"X": rng.standard_normal([sizes[d] if d in sizes else d for d in x_shape]).astype(np.float32)}
    inits = [numpy_helper.from_array((rng.standard_normal([dirs, g * HIDDEN, INPUT]) * 0.6).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal([dirs, g * HIDDEN, HIDDEN]) * 0.6).astype(np.float32), "R")]
    names = ["X", "W", "R", "B" if bias else "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal([dirs, 2 * g * HIDDEN]).astype(np.float32), "B"))
    if lens is not None:
        names[4] = "L"
        if lens_const:
            inits.append(numpy_helper.from_array(np.array(lens, np.int32), "L"))
        else:
            feeds["L"] = np.array(lens, np.int32)
    if initial:
        names[5] = "h0"
        feeds["h0"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            names[6] = "c0"
            feeds["c0"] = (rng.standard_normal(state_shape) * 2).astype(np.float32)
    if peepholes:
        names.append("P")
        inits.append(numpy_helper.from_array(rng.standard_normal([dirs, 3 * HIDDEN]).astype(np.float32), "P"))
    names = names[:6] + names[6:] if op == "LSTM" else names[:6]
    while names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, list(outputs), hidden_size=HIDDEN, direction=direction, **attrs)
    if layout:
        node.attribute.append(helper.make_attribute("layout", layout))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    for name in feeds:
        if name != "X":
            dtype = TensorProto.INT32 if name == "L" else TensorProto.FLOAT
            shape = [batch] if name == "L" else state_shape
            inputs.append(helper.make_tensor_value_info(name, dtype, shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o]
    graph = helper.make_graph([node], op.lower(), inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), feeds


def _optc_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tvm
    from optc.codegen.compile import build_executable
    from tvm import relax

    executable, _ = build_executable(optc.from_onnx(model), "cpu")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in feeds.values()])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    got = _optc_run(model, feeds)
    want = run_ort(model, feeds)
    why = outputs_mismatch(got, want, rtol=1e-4, atol=1e-5)
    assert why is None, why


# -- against onnxruntime ----------------------------------------------------------------------------------

@pytest.mark.parametrize("direction, options", [
    ("forward", dict(bias=False)),
    ("reverse", dict(initial=True, peepholes=True)),
    ("bidirectional", dict(initial=True, peepholes=True, lens=[3, 1, 0])),
    ("reverse", dict(initial=True, lens=[2, 3, 1], input_forget=1, clip=0.4)),
    ("forward", dict(initial=True, outputs=("", "", "Y_c"))),
], ids=["forward-no-bias", "reverse-states-peepholes", "bidirectional-lens", "reverse-input-forget-clip",
        "only-Y_c"])
def test_lstm_matches_onnxruntime(direction, options):
    _check(*_recurrent_model("LSTM", direction, **options))


@pytest.mark.parametrize("direction, options", [
    ("forward", dict(bias=False, linear_before_reset=0)),
    ("forward", dict(initial=True, linear_before_reset=1)),
    ("reverse", dict(initial=True, linear_before_reset=0)),
    ("reverse", dict(lens=[1, 3, 2], linear_before_reset=1, clip=0.5)),
    ("bidirectional", dict(initial=True, lens=[3, 0, 2], linear_before_reset=1)),
    ("bidirectional", dict(bias=False, linear_before_reset=0, outputs=("", "Y_h"))),
], ids=["forward-no-bias", "forward-lbr", "reverse", "reverse-lens-lbr-clip", "bidirectional-lens-lbr",
        "bidirectional-only-Y_h"])
def test_gru_matches_onnxruntime(direction, options):
    _check(*_recurrent_model("GRU", direction, **options))


@pytest.mark.parametrize("direction, options", [
    ("forward", dict(bias=False)),
    ("reverse", dict(initial=True)),
    ("bidirectional", dict(initial=True, lens=[3, 2, 1], activations=["Relu", "Tanh"])),
    ("forward", dict(lens=[2, 2, 3], lens_const=True, clip=0.8)),
], ids=["forward-no-bias", "reverse-states", "bidirectional-lens-relu", "constant-lens-clip"])
def test_rnn_matches_onnxruntime(direction, options):
    _check(*_recurrent_model("RNN", direction, **options))


def test_rnn_every_activation_function_matches_onnxruntime():
    """One model, one forward RNN per activation (its alpha/beta given: onnxruntime's RNN kernel reads 0 for a
    missing one, where ONNX says the operator's default)."""
    acts = [("Relu", None, None), ("Tanh", None, None), ("Sigmoid", None, None), ("Affine", 0.7, -0.2),
            ("LeakyRelu", 0.3, None), ("ThresholdedRelu", 0.4, None), ("ScaledTanh", 1.5, 0.6),
            ("HardSigmoid", 0.3, 0.4), ("Elu", 0.8, None), ("Softsign", None, None), ("Softplus", None, None)]
    base, feeds = _recurrent_model("RNN", initial=True)
    nodes, outs = [], []
    for k, (name, alpha, beta) in enumerate(acts):
        attrs = {"activations": [name]}
        if alpha is not None:
            attrs["activation_alpha"] = [alpha]
        if beta is not None:
            attrs["activation_beta"] = [beta]
        nodes.append(helper.make_node("RNN", ["X", "W", "R", "B", "", "h0"], [f"y{k}", f"yh{k}"],
                                      hidden_size=HIDDEN, **attrs))
        outs += [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None),
                 helper.make_tensor_value_info(f"yh{k}", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "acts", list(base.graph.input), outs, list(base.graph.initializer))
    _check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), feeds)


def test_lstm_consumes_alpha_beta_in_activation_order():
    """activation_alpha/beta go to the activations that take them, in order: (HardSigmoid, Elu, Softsign,
    Sigmoid, Tanh, Affine) takes alphas for HardSigmoid, Elu, Affine and betas for HardSigmoid, Affine."""
    _check(*_recurrent_model("LSTM", "bidirectional", initial=True,
                             activations=["HardSigmoid", "Elu", "Softsign", "Sigmoid", "Tanh", "Affine"],
                             activation_alpha=[0.3, 0.9, 0.5], activation_beta=[0.4, 0.1]))


def test_gru_consumes_alpha_beta_in_activation_order():
    _check(*_recurrent_model("GRU", initial=True, activations=["LeakyRelu", "ScaledTanh"],
                             activation_alpha=[0.2, 1.3], activation_beta=[0.7]))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_1_matches_the_time_major_op(op):
    """layout=1 (batch-major X, states, Y): onnxruntime has no kernel for it, so the reference is the layout-0
    op on transposed tensors."""
    batchwise, feeds = _recurrent_model(op, "bidirectional", initial=True, lens=[3, 1, 2], layout=1)
    timewise, _ = _recurrent_model(op, "bidirectional", initial=True, lens=[3, 1, 2])
    got = _optc_run(batchwise, feeds)
    tw_feeds = {k: (np.swapaxes(v, 0, 1) if k != "L" else v) for k, v in feeds.items()}
    want = run_ort(timewise, tw_feeds)
    want = [np.transpose(want[0], [2, 0, 1, 3])] + [np.swapaxes(s, 0, 1) for s in want[1:]]
    why = outputs_mismatch(got, want, rtol=1e-4, atol=1e-5)
    assert why is None, why


def test_symbolic_batch_compiles_once_and_runs_at_two_batch_sizes():
    import tvm
    from optc.codegen.compile import build_executable
    from tvm import relax

    model, _ = _recurrent_model("LSTM", "bidirectional", batch="N", peepholes=True)
    # fast_math off: with a symbolic batch, a matmul + fast tanh kernel goes to the RowReduction rule, whose
    # vectorized bool blocks LLVM rejects (any MatMul -> Add -> Tanh on [N, 5] fails the same way)
    executable, _ = build_executable(optc.from_onnx(model), "cpu", fast_math=False)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(1)
    for batch in (1, 4):
        x = rng.standard_normal([SEQ, batch, INPUT]).astype(np.float32)
        got = [o.numpy() for o in vm["main"](tvm.runtime.tensor(x))]
        why = outputs_mismatch(got, run_ort(model, {"X": x}), rtol=1e-4, atol=1e-5)
        assert why is None, f"batch {batch}: {why}"


# -- refusals ----------------------------------------------------------------------------------------------

def _refusal(model: onnx.ModelProto) -> str:
    with pytest.raises(optc.UnsupportedError) as info:
        lower(optc.from_onnx(model))
    return str(info.value)


def test_symbolic_sequence_length_is_refused():
    model, _ = _recurrent_model("GRU", seq="T")
    assert "symbolic sequence length ('T') is not supported by the TVM back end" in _refusal(model)


def test_affine_without_alpha_is_refused():
    model, _ = _recurrent_model("RNN", activations=["Affine"])
    assert "activation 'Affine' needs its alpha and beta" in _refusal(model)


def test_ambiguous_rnn_alpha_is_refused():
    # consumed in order, LeakyRelu takes 0.5; one value per direction, it takes 0.1
    model, _ = _recurrent_model("RNN", "bidirectional", activations=["Tanh", "LeakyRelu"],
                                activation_alpha=[0.5, 0.1])
    assert "RNN activation_alpha [0.5, 0.1] is ambiguous" in _refusal(model)


def test_wrong_number_of_activations_is_refused():
    model, _ = _recurrent_model("LSTM", "bidirectional", activations=["Sigmoid", "Tanh", "Tanh"])
    assert "LSTM needs 6 activations for 2 direction(s), the node has 3" in _refusal(model)


# -- Scan and Loop -----------------------------------------------------------------------------------------

def _scan_model(seq="T0") -> onnx.ModelProto:
    """Scan-16 with a state, a scan input read backwards along axis 1, a scan output written backwards along
    axis 1, and an outer-scope value (w) used in the body."""
    s_in = helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2])
    x_t = helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2])
    s_out = helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2])
    y_t = helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [2])
    body = helper.make_graph([
        helper.make_node("Mul", ["s_in", "w"], ["sw"]),
        helper.make_node("Add", ["sw", "x_t"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["s_out"]),
        helper.make_node("Mul", ["s_out", "x_t"], ["y_t"]),
    ], "body", [s_in, x_t], [s_out, y_t])
    node = helper.make_node("Scan", ["s0", "x"], ["s_final", "y"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1],
                            scan_output_directions=[1])
    graph = helper.make_graph(
        [node], "scan",
        [helper.make_tensor_value_info("s0", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, seq]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s_final", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)


def test_scan_with_axes_and_directions_matches_onnxruntime():
    rng = np.random.default_rng(2)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32), "x": rng.standard_normal([2, 4]).astype(np.float32),
             "w": rng.standard_normal(2).astype(np.float32)}
    _check(_scan_model(4), feeds)


def test_scan_with_a_symbolic_sequence_length_is_refused():
    assert "Scan with a symbolic sequence length" in _refusal(_scan_model("T0"))


def _loop_model(*, trip: int | None, cond_out: str = "identity") -> onnx.ModelProto:
    """Loop over y: y = y * w + iteration; scan output y * 2. The body's condition: `identity` (of cond_in),
    `counter` (iteration + 1 < 4, a while loop) or `data` (sum(y) < 100, computed from run-time values)."""
    it = helper.make_tensor_value_info("it", TensorProto.INT64, [])
    c_in = helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])
    y_in = helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [3])
    nodes = [
        helper.make_node("Cast", ["it"], ["itf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y_in", "w"], ["yw"]),
        helper.make_node("Add", ["yw", "itf"], ["y_out"]),
        helper.make_node("Add", ["y_out", "y_out"], ["scan"]),
    ]
    if cond_out == "identity":
        nodes.append(helper.make_node("Identity", ["c_in"], ["c_out"]))
    elif cond_out == "counter":
        nodes += [helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [], [1])),
                  helper.make_node("Constant", [], ["four"],
                                   value=helper.make_tensor("four", TensorProto.INT64, [], [4])),
                  helper.make_node("Add", ["it", "one"], ["next"]),
                  helper.make_node("Less", ["next", "four"], ["c_out"])]
    else:
        nodes += [helper.make_node("ReduceSum", ["y_out"], ["total"], keepdims=0),
                  helper.make_node("Constant", [], ["limit"],
                                   value=helper.make_tensor("limit", TensorProto.FLOAT, [], [100.0])),
                  helper.make_node("Less", ["total", "limit"], ["c_out"])]
    body = helper.make_graph(nodes, "body", [it, c_in, y_in], [
        helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [3]),
        helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3])])
    inits = [numpy_helper.from_array(np.array(True), "cond")]
    if trip is not None:
        inits.append(numpy_helper.from_array(np.array(trip, np.int64), "M"))
    node = helper.make_node("Loop", ["M" if trip is not None else "", "cond", "y0"], ["y_final", "ys"], body=body)
    graph = helper.make_graph(
        [node], "loop",
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y_final", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)


@pytest.mark.parametrize("trip, cond_out", [(5, "identity"), (None, "counter"), (9, "counter")],
                         ids=["for-5", "while-counter", "for-9-stopped-by-counter"])
def test_loop_with_a_compile_time_trip_count_matches_onnxruntime(trip, cond_out):
    rng = np.random.default_rng(3)
    feeds = {"y0": rng.standard_normal(3).astype(np.float32), "w": rng.standard_normal(3).astype(np.float32)}
    _check(_loop_model(trip=trip, cond_out=cond_out), feeds)


def test_loop_with_a_run_time_trip_count_is_refused():
    model = _loop_model(trip=5)
    m_value = model.graph.initializer[1]
    assert m_value.name == "M"
    del model.graph.initializer[1]
    model.graph.input.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    assert "Loop is not supported by the TVM back end: a data-dependent trip count" in _refusal(model)


def test_loop_with_a_data_dependent_condition_is_refused():
    assert "Loop is not supported by the TVM back end: a data-dependent condition" in \
        _refusal(_loop_model(trip=5, cond_out="data"))
