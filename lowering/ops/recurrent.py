"""optc's converters for recurrent ops: LSTM, GRU and RNN unrolled over a static sequence length.

The ONNX spec is followed where it is explicit; where it is silent, onnxruntime's CPU kernels decide:
- `activation_alpha`/`activation_beta` are consumed in the order of the activations, one value for each
  activation that takes it (Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu); a missing value
  takes the default of the ONNX operator of that name (LeakyRelu 0.01, ThresholdedRelu 1.0, HardSigmoid 0.2 /
  0.5, Elu 1.0); Affine and ScaledTanh have no ONNX operator, so without their values the node is refused.
  onnxruntime's RNN kernel (not its LSTM/GRU) reads the values by direction instead: where the two readings
  differ, the RNN node is refused.
- `clip` bounds every gate's pre-activation (after the biases and peepholes are added); the LSTM cell state
  itself and its value fed to `h` are not clipped.
- `sequence_lens` (a constant or a run-time input): steps past a sequence's length give zeros in Y, the final
  states are taken at its length (zeros for a length of 0), and the reverse direction runs each sequence from
  its own last step. Lengths outside [0, seq_length] are invalid ONNX input (onnxruntime rejects them); here
  they are clamped by the masks and TVM's reverse_sequence, so they never read out of bounds.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, dims_of, dtype_of, refuse

MAX_UNROLLED_STEPS = 1024  # time steps per direction; each step emits a dozen Relax bindings

# lower-case name -> (takes alpha, takes beta, default alpha, default beta); None: no default
_ACTIVATIONS = {
    "relu": (False, False, None, None),
    "tanh": (False, False, None, None),
    "sigmoid": (False, False, None, None),
    "affine": (True, True, None, None),
    "leakyrelu": (True, False, 0.01, None),
    "thresholdedrelu": (True, False, 1.0, None),
    "scaledtanh": (True, True, None, None),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, None),
    "softsign": (False, False, None, None),
    "softplus": (False, False, None, None),
}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _floats(values: list[float]) -> str:
    """Attribute floats as written (float32 values without their float64 digits)."""
    return "[" + ", ".join(str(np.float32(v)) for v in values) + "]"


def _stack(items: list, axis: int):
    """relax.op.stack as a concat of expand_dims: TVM's ConvertLayout fails on stack (an IndexError, which makes
    optc's build keep the whole model out of NHWC; a floating-point exception, killing the process, on 0-d
    items)."""
    return relax.op.concat([relax.op.expand_dims(x, [axis]) for x in items], axis=axis)


class _Activation:
    """One activation function with its alpha/beta, applied after clipping its input."""

    def __init__(self, name: str, alpha: float | None, beta: float | None, clip: float | None, dtype: str):
        self.name, self.alpha, self.beta, self.clip, self.dtype = name, alpha, beta, clip, dtype

    def _c(self, value: float):
        return relax.const(value, self.dtype)

    def unclipped(self, bb, x):
        """The activation without the clip (LSTM's h on the cell state)."""
        return self(bb, x, clip=False)

    def __call__(self, bb, x, clip: bool = True):
        op, c = relax.op, self._c
        if clip and self.clip is not None:
            x = bb.emit(op.minimum(op.maximum(x, c(-self.clip)), c(self.clip)))
        name, alpha, beta = self.name, self.alpha, self.beta
        if name == "sigmoid":
            y = op.sigmoid(x)
        elif name == "tanh":
            y = op.tanh(x)
        elif name == "relu":
            y = op.maximum(x, c(0.0))
        elif name == "affine":
            y = op.add(op.multiply(x, c(alpha)), c(beta))
        elif name == "leakyrelu":
            y = op.where(op.greater_equal(x, c(0.0)), x, op.multiply(x, c(alpha)))
        elif name == "thresholdedrelu":
            y = op.where(op.greater(x, c(alpha)), x, c(0.0))
        elif name == "scaledtanh":
            y = op.multiply(op.tanh(op.multiply(x, c(beta))), c(alpha))
        elif name == "hardsigmoid":
            y = op.minimum(op.maximum(op.add(op.multiply(x, c(alpha)), c(beta)), c(0.0)), c(1.0))
        elif name == "elu":
            y = op.where(op.greater_equal(x, c(0.0)), x, op.multiply(op.subtract(op.exp(x), c(1.0)), c(alpha)))
        elif name == "softsign":
            y = op.divide(x, op.add(op.abs(x), c(1.0)))
        elif name == "softplus":
            y = op.log(op.add(op.exp(x), c(1.0)))
        else:  # _activations() admits only the names above
            raise AssertionError(name)
        return bb.emit(y)


def _activations(op_type: str, attrs: dict, per_direction: int, defaults: list[str], num_directions: int,
                 clip: float | None, dtype: str) -> list[list[_Activation]]:
    """The activations of each direction, with their alpha/beta values (see the module docstring)."""
    given = attrs.get("activations")
    names = [_text(a) for a in given] if given else defaults * num_directions
    if len(names) != per_direction * num_directions:
        raise refuse(f"{op_type} needs {per_direction * num_directions} activations for {num_directions} "
                     f"direction(s), the node has {len(names)}")
    alphas = [float(a) for a in attrs.get("activation_alpha", ()) or ()]
    betas = [float(b) for b in attrs.get("activation_beta", ()) or ()]
    acts = []
    next_alpha = next_beta = 0
    for i, raw in enumerate(names):
        name = raw.lower()
        if name not in _ACTIVATIONS:
            raise refuse(f"{op_type} activation '{raw}' is not an ONNX recurrent activation function")
        takes_alpha, takes_beta, default_alpha, default_beta = _ACTIVATIONS[name]
        alpha = beta = None
        if takes_alpha:
            alpha = alphas[next_alpha] if next_alpha < len(alphas) else default_alpha
            next_alpha += 1
            # onnxruntime's RNN kernel reads the i-th value for the i-th activation
            positional = alphas[i] if i < len(alphas) else default_alpha
            if op_type == "RNN" and positional != alpha:
                raise refuse(f"RNN activation_alpha {_floats(alphas)} is ambiguous for activations {names} (consumed in "
                             "order or one per direction)")
        if takes_beta:
            beta = betas[next_beta] if next_beta < len(betas) else default_beta
            next_beta += 1
            positional = betas[i] if i < len(betas) else default_beta
            if op_type == "RNN" and positional != beta:
                raise refuse(f"RNN activation_beta {_floats(betas)} is ambiguous for activations {names} (consumed in "
                             "order or one per direction)")
        if (takes_alpha and alpha is None) or (takes_beta and beta is None):
            raise refuse(f"{op_type} activation '{raw}' needs its alpha and beta in activation_alpha/"
                         "activation_beta (it has no default values)")
        acts.append(_Activation(name, alpha, beta, clip, dtype))
    return [acts[d * per_direction:(d + 1) * per_direction] for d in range(num_directions)]


class _Recurrence:
    """What LSTM, GRU and RNN share: inputs in time-major layout, per-direction weights, the unrolled time loop
    with its sequence-length masks, and the outputs in the node's layout."""

    def __init__(self, bb, inputs, attrs, ctx, op_type: str, gates: int, per_direction: int, defaults: list[str]):
        self.bb, self.op_type, self.gates = bb, op_type, gates
        self.node = ctx.node
        x, w, r = inputs[0], inputs[1], inputs[2]
        direction = _text(attrs.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise refuse(f"{op_type} direction '{direction}' is not one of forward, reverse, bidirectional")
        self.directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        num_dirs = len(self.directions)
        self.layout = int(attrs.get("layout", 0))
        if self.layout not in (0, 1):
            raise refuse(f"{op_type} layout {self.layout} is not 0 or 1")
        self.dtype = dtype_of(x)
        if self.dtype not in ("float16", "float32", "float64"):
            raise refuse(f"{op_type} on {self.dtype} tensors is not supported")
        x_dims = dims_of(x)
        if x_dims is None or len(x_dims) != 3:
            raise refuse(f"{op_type} with an input X of unknown shape is not supported")
        seq_axis = 1 if self.layout else 0
        seq_len = x_dims[seq_axis]
        if not isinstance(seq_len, int):
            ir_shape = getattr(getattr(self.node.inputs[0], "type", None), "shape", None) if self.node else None
            if ir_shape is not None and len(ir_shape) == 3 and isinstance(ir_shape[seq_axis], str):
                seq_len = ir_shape[seq_axis]  # the model's name for the dim, not its TIR variable's
            raise refuse(f"{op_type} with a symbolic sequence length ('{seq_len}') is not supported by the TVM back "
                         "end: the time loop is unrolled")
        if seq_len < 1:
            raise refuse(f"{op_type} with an empty sequence (seq_length 0) is not supported by the TVM back end")
        if seq_len > MAX_UNROLLED_STEPS:
            raise refuse(f"{op_type} with a sequence length of {seq_len} is not supported by the TVM back end "
                         f"(the time loop is unrolled, up to {MAX_UNROLLED_STEPS} steps)")
        self.seq_len = seq_len
        self.batch = x_dims[1 - seq_axis]
        hidden = attrs.get("hidden_size")
        r_dims = dims_of(r)
        if hidden is None and r_dims is not None and isinstance(r_dims[-1], int):
            hidden = r_dims[-1]
        if hidden is None:
            raise refuse(f"{op_type} without hidden_size and with a recurrence weight R of unknown shape is not "
                         "supported")
        self.hidden = hidden = int(hidden)
        self._check_shape("W", w, [num_dirs, gates * hidden, x_dims[2]])
        self._check_shape("R", r, [num_dirs, gates * hidden, hidden])
        self._check_shape("B", inputs[3], [num_dirs, 2 * gates * hidden])
        clip = attrs.get("clip")
        if clip is not None and not float(clip) >= 0:
            raise refuse(f"{op_type} clip {clip} is not a threshold >= 0")
        self.acts = _activations(op_type, attrs, per_direction, defaults, num_dirs,
                                 None if clip is None else float(clip), self.dtype)

        self.x = bb.emit(relax.op.permute_dims(x, [1, 0, 2])) if self.layout else x
        self.w, self.r, self.b = w, r, inputs[3]
        self.lens = inputs[4]
        if self.lens is not None:
            lens_dims = dims_of(self.lens)
            if lens_dims is not None and len(lens_dims) != 1:
                raise refuse(f"{op_type} sequence_lens of rank {len(lens_dims)} is not a 1-D tensor")
            value = constant_value(self.lens)
            if value is not None and value.size and np.all(value == seq_len):
                self.lens = None  # every sequence is full length: no masks
        self.masks = None
        if self.lens is not None:
            value = constant_value(self.lens)
            if value is not None:  # masks of constant lengths made here (FoldConstant builds a kernel per op)
                self.masks = [const((s < value)[:, None]) for s in range(seq_len)]
                self.nonempty = const((value > 0)[:, None])
            else:
                lens_dtype = dtype_of(self.lens)
                self.masks = [bb.emit(relax.op.expand_dims(relax.op.less(relax.const(s, lens_dtype), self.lens), [1]))
                              for s in range(seq_len)]
                self.nonempty = bb.emit(relax.op.expand_dims(
                    relax.op.greater(self.lens, relax.const(0, lens_dtype)), [1]))
        outs = self.node.outputs if self.node is not None else ()
        self.wanted = [i < len(outs) and outs[i] is not None for i in range(3)]

    # -- helpers ------------------------------------------------------------------------------------
    def _check_shape(self, name: str, expr, want: list) -> None:
        if expr is None:
            return
        dims = dims_of(expr)
        if dims is None:
            return
        if len(dims) != len(want) or any(isinstance(d, int) and isinstance(e, int) and d != e
                                         for d, e in zip(dims, want, strict=False)):
            raise refuse(f"{self.op_type} input {name} has shape {dims}, expected {want}")

    def emit(self, expr):
        return self.bb.emit(expr)

    def c(self, value: float):
        return relax.const(value, self.dtype)

    def direction_slice(self, t, d: int):
        """t[d] of a [num_directions, ...] tensor."""
        value = constant_value(t)
        if value is not None:
            return const(value[d])
        return self.emit(relax.op.squeeze(relax.op.strided_slice(t, [0], [d], [d + 1]), [0]))

    def cols(self, t, begin: int, end: int):
        """t[..., begin:end]."""
        value = constant_value(t)
        if value is not None:
            return const(value[..., begin:end])
        return self.emit(relax.op.strided_slice(t, [len(dims_of(t)) - 1], [begin], [end]))

    def initial_state(self, state, d: int):
        """A direction's initial state [batch, hidden] from an optional [num_directions, batch, hidden] input
        ([batch, num_directions, hidden] in layout 1); zeros when omitted."""
        if state is None:
            if isinstance(self.batch, int):
                return const(np.zeros([self.batch, self.hidden], self.dtype))
            return self.emit(relax.op.zeros(relax.ShapeExpr([self.batch, self.hidden]), self.dtype))
        if self.layout:
            return self.emit(relax.op.squeeze(relax.op.strided_slice(state, [1], [d], [d + 1]), [1]))
        return self.direction_slice(state, d)

    def gate_weights(self, t, d: int) -> list:
        """W or R of direction d as one transposed [in, hidden] matrix per gate. One matmul per gate, not one
        for all gates sliced afterwards: a kernel that slices a matmul's output by columns trips optc's
        TiledReduction schedule (reverse_compute_at fails on the offset region)."""
        td = self.direction_slice(t, d)
        hs = self.hidden
        value = constant_value(td)
        if value is not None:  # constant weights are sliced here: TVM's FoldConstant builds a kernel per op
            return [const(np.ascontiguousarray(value[k * hs:(k + 1) * hs].T)) for k in range(self.gates)]
        return [self.emit(relax.op.permute_dims(relax.op.strided_slice(td, [0], [k * hs], [(k + 1) * hs]), [1, 0]))
                for k in range(self.gates)]

    def biases(self, d: int) -> tuple[list, list]:
        """(Wb, Rb) of direction d, one [hidden] vector per gate, or Nones without B."""
        if self.b is None:
            return [None] * self.gates, [None] * self.gates
        bd = self.direction_slice(self.b, d)
        hs, n = self.hidden, self.gates
        return ([self.cols(bd, k * hs, (k + 1) * hs) for k in range(n)],
                [self.cols(bd, (n + k) * hs, (n + k + 1) * hs) for k in range(n)])

    def input_projections(self, d: int, biases: list) -> list:
        """X @ W[d]_k^T + bias_k for every step at once: one [seq, batch, hidden] tensor per gate k."""
        out = []
        for wt, bias in zip(self.gate_weights(self.w, d), biases, strict=True):
            xw = self.emit(relax.op.matmul(self.x, wt))
            out.append(xw if bias is None else self.emit(relax.op.add(xw, bias)))
        return out

    def add(self, a, b):
        """a + b, where either may be None (an omitted bias)."""
        if a is None or b is None:
            return b if a is None else a
        va, vb = constant_value(a), constant_value(b)
        if va is not None and vb is not None:
            return const(va + vb)
        return self.emit(relax.op.add(a, b))

    def run(self, d: int, xws: list, states: list, cell):
        """Run one direction over the sequence. `xws` are the input projections (one [seq, batch, hidden]
        tensor per gate), `states` the initial states (hidden first), `cell(xw_t, states) -> new states` one
        step (`xw_t`: one [batch, hidden] tensor per gate). Returns (the direction's Y [seq, batch, hidden], or
        None when the node does not use Y; the final states)."""
        seq_len = self.seq_len
        reverse = self.directions[d] == "reverse"
        masked = self.masks is not None
        if reverse and masked:  # run each sequence from its own last step
            xws = [self.emit(relax.op.reverse_sequence(xw, self.lens, 0, 1)) for xw in xws]
        order = range(seq_len - 1, -1, -1) if reverse and not masked else range(seq_len)
        ys: list = [None] * seq_len
        for t in order:
            xw_t = [self.emit(relax.op.squeeze(relax.op.strided_slice(xw, [0], [t], [t + 1]), [0])) for xw in xws]
            new = cell(xw_t, states)
            if masked:  # past its length a sequence keeps its state and outputs zeros
                mask = self.masks[t]
                states = [self.emit(relax.op.where(mask, n, s)) for n, s in zip(new, states, strict=True)]
                if self.wanted[0]:
                    ys[t] = self.emit(relax.op.where(mask, new[0], self.c(0.0)))
            else:
                states = new
                ys[t] = new[0]
        y = None
        if self.wanted[0]:
            y = self.emit(_stack(ys, axis=0))
            if reverse and masked:
                y = self.emit(relax.op.reverse_sequence(y, self.lens, 0, 1))
        if masked:  # an empty sequence has zero final states
            states = [self.emit(relax.op.where(self.nonempty, s, self.c(0.0))) for s in states]
        return y, states

    def outputs(self, ys: list, finals: list[list]):
        """The node's outputs (Y, then one final state per entry of each direction's `finals`) in its layout;
        outputs the node does not use are left out (a cheap placeholder keeps the tuple's positions)."""
        fields = []
        if self.wanted[0]:
            y = self.emit(_stack(ys, axis=1))  # [seq, num_directions, batch, hidden]
            fields.append(self.emit(relax.op.permute_dims(y, [2, 0, 1, 3])) if self.layout else y)
        for k in range(len(finals[0])):
            state = self.emit(_stack([f[k] for f in finals], axis=0))  # [num_directions, batch, hidden]
            fields.append(self.emit(relax.op.permute_dims(state, [1, 0, 2])) if self.layout else state)
        if not self.wanted[0]:
            fields.insert(0, fields[0])  # Y unused: its position holds Y_h, never bound
        return relax.Tuple(fields)


@converter("", "RNN")
def rnn(bb, inputs, attrs, ctx):
    rec = _Recurrence(bb, inputs, attrs, ctx, "RNN", 1, 1, ["Tanh"])
    ys, finals = [], []
    for d in range(len(rec.directions)):
        wb, rb = rec.biases(d)
        xws = rec.input_projections(d, [rec.add(w, r) for w, r in zip(wb, rb, strict=True)])
        (rt,) = rec.gate_weights(rec.r, d)
        (f,) = rec.acts[d]

        def cell(xw_t, states, rt=rt, f=f):
            return [f(bb, rec.emit(relax.op.add(xw_t[0], relax.op.matmul(states[0], rt))))]

        y, states = rec.run(d, xws, [rec.initial_state(inputs[5], d)], cell)
        ys.append(y)
        finals.append(states)
    return rec.outputs(ys, finals)


@converter("", "GRU")
def gru(bb, inputs, attrs, ctx):
    rec = _Recurrence(bb, inputs, attrs, ctx, "GRU", 3, 2, ["Sigmoid", "Tanh"])
    linear_before_reset = bool(attrs.get("linear_before_reset", 0))
    ys, finals = [], []
    for d in range(len(rec.directions)):
        (wbz, wbr, wbh), (rbz, rbr, rbh) = rec.biases(d)
        # Rb[h] joins the input projection, except with linear_before_reset: there it is added to Ht-1*Rh^T,
        # inside the reset gate's product
        xws = rec.input_projections(d, [rec.add(wbz, rbz), rec.add(wbr, rbr),
                                        wbh if linear_before_reset else rec.add(wbh, rbh)])
        rz, rr, rh = rec.gate_weights(rec.r, d)
        f, g = rec.acts[d]

        def cell(xw_t, states, rz=rz, rr=rr, rh=rh, rbh=rbh, f=f, g=g):
            (h,) = states
            z = f(bb, rec.emit(relax.op.add(xw_t[0], relax.op.matmul(h, rz))))
            r = f(bb, rec.emit(relax.op.add(xw_t[1], relax.op.matmul(h, rr))))
            if linear_before_reset:
                hr = rec.add(rec.emit(relax.op.matmul(h, rh)), rbh)
                pre = relax.op.multiply(r, hr)
            else:
                pre = relax.op.matmul(rec.emit(relax.op.multiply(r, h)), rh)
            hh = g(bb, rec.emit(relax.op.add(xw_t[2], pre)))
            one_minus_z = relax.op.subtract(rec.c(1.0), z)
            return [rec.emit(relax.op.add(relax.op.multiply(one_minus_z, hh), relax.op.multiply(z, h)))]

        y, states = rec.run(d, xws, [rec.initial_state(inputs[5], d)], cell)
        ys.append(y)
        finals.append(states)
    return rec.outputs(ys, finals)


@converter("", "LSTM")
def lstm(bb, inputs, attrs, ctx):
    rec = _Recurrence(bb, inputs, attrs, ctx, "LSTM", 4, 3, ["Sigmoid", "Tanh", "Tanh"])
    rec._check_shape("P", inputs[7], [len(rec.directions), 3 * rec.hidden])
    input_forget = bool(attrs.get("input_forget", 0))
    hs = rec.hidden
    ys, finals = [], []
    for d in range(len(rec.directions)):
        wb, rb = rec.biases(d)
        xws = rec.input_projections(d, [rec.add(w, r) for w, r in zip(wb, rb, strict=True)])  # gates i, o, f, c
        rts = rec.gate_weights(rec.r, d)
        peep = [None] * 3
        if inputs[7] is not None:
            pd = rec.direction_slice(inputs[7], d)
            peep = [rec.cols(pd, k * hs, (k + 1) * hs) for k in range(3)]  # P[iof]
        f, g, h_act = rec.acts[d]

        def cell(xw_t, states, rts=rts, peep=peep, f=f, g=g, h_act=h_act):
            h, c = states
            pre_i, pre_o, pre_f, pre_c = (rec.emit(relax.op.add(x, relax.op.matmul(h, rt)))
                                          for x, rt in zip(xw_t, rts, strict=True))
            p_i, p_o, p_f = peep
            if p_i is not None:
                pre_i = rec.emit(relax.op.add(pre_i, relax.op.multiply(p_i, c)))
            i = f(bb, pre_i)
            if input_forget:  # coupled input and forget gates
                forget = rec.emit(relax.op.subtract(rec.c(1.0), i))
            else:
                if p_f is not None:
                    pre_f = rec.emit(relax.op.add(pre_f, relax.op.multiply(p_f, c)))
                forget = f(bb, pre_f)
            cell_in = g(bb, pre_c)
            c_new = rec.emit(relax.op.add(relax.op.multiply(forget, c), relax.op.multiply(i, cell_in)))
            if p_o is not None:
                pre_o = rec.emit(relax.op.add(pre_o, relax.op.multiply(p_o, c_new)))
            o = f(bb, pre_o)
            h_new = rec.emit(relax.op.multiply(o, h_act.unclipped(bb, c_new)))
            return [h_new, c_new]

        states = [rec.initial_state(inputs[5], d), rec.initial_state(inputs[6], d)]
        y, states = rec.run(d, xws, states, cell)
        ys.append(y)
        finals.append(states)
    return rec.outputs(ys, finals)


# -- Scan and Loop: unrolled, each step lowers the body graph once ---------------------------------------------
#
# TVM's ONNX frontend has neither. With a static number of steps the body is lowered once per step, its inputs
# bound to that step's values: Scan when its sequence length is static, Loop when its trip count and condition
# are known at compile time (constants, or small computations on constants and the iteration number).
# A run-time trip count or condition is refused.

MAX_UNROLLED_BODY_NODES = 20000  # steps x body nodes


def _check_body(op_type: str, ctx, body, steps: int) -> None:
    nodes = sum(1 for _ in body.all_nodes())
    if steps * nodes > MAX_UNROLLED_BODY_NODES:
        raise refuse(f"{op_type} is not supported by the TVM back end with {steps} steps of a {nodes}-node body "
                     f"(it is unrolled, up to {MAX_UNROLLED_BODY_NODES} nodes)")
    if ctx.bb.current_block_is_dataflow() and any(n.op_type == "If" for n in body.all_nodes()):
        raise refuse(f"{op_type} with an If node in its body is not supported by the TVM back end")


_NUMPY_OPS = {
    "relax.less": np.less, "relax.less_equal": np.less_equal, "relax.greater": np.greater,
    "relax.greater_equal": np.greater_equal, "relax.equal": np.equal, "relax.not_equal": np.not_equal,
    "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or, "relax.logical_not": np.logical_not,
    "relax.logical_xor": np.logical_xor, "relax.add": np.add, "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
}


def _static_value(bb, expr, depth: int = 0) -> np.ndarray | None:
    """The value of a small expression known at compile time (a constant, or comparisons, logic and integer
    arithmetic on constants, as a Loop's condition is computed); None if it depends on run-time data."""
    value = constant_value(expr)
    if value is not None or depth > 16:
        return value
    if isinstance(expr, relax.Var):
        bound = bb.lookup_binding(expr)
        return None if bound is None else _static_value(bb, bound, depth + 1)
    if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in _NUMPY_OPS:
        args = [_static_value(bb, a, depth + 1) for a in expr.args]
        if any(a is None for a in args):
            return None
        with np.errstate(all="ignore"):
            return np.asarray(_NUMPY_OPS[expr.op.name](*args)).astype(dtype_of(expr))
    return None


def _stack_outputs(op_type: str, per_step: list, axis: int):
    """Stack one scan output's per-step values along a new `axis` (the steps' shapes must agree)."""
    shapes = [dims_of(x) for x in per_step]
    if shapes[0] is None or any(s != shapes[0] for s in shapes[1:]):
        raise refuse(f"{op_type} scan output whose shape changes between iterations (or is unknown) is not "
                     "supported by the TVM back end")
    rank = len(shapes[0]) + 1
    if not -rank <= axis < rank:
        raise refuse(f"{op_type} scan output axis {axis} is out of range for rank {rank}")
    return _stack(per_step, axis=axis % rank)


def _scan_steps(ctx, body, states: list, xs: list, in_axes: list, in_dirs: list, out_axes: list,
                out_dirs: list) -> list:
    """Scan-9 semantics on one set of inputs: final states followed by the stacked scan outputs."""
    bb = ctx.bb
    lengths, axes = set(), []
    for x, axis in zip(xs, in_axes, strict=True):
        dims = dims_of(x)
        if dims is None:
            raise refuse("Scan with a scan input of unknown shape is not supported by the TVM back end")
        if not -len(dims) <= axis < len(dims):
            raise refuse(f"Scan scan_input_axes value {axis} is out of range for rank {len(dims)}")
        axes.append(axis % len(dims))
        lengths.add(dims[axis % len(dims)])
    if len(lengths) != 1:
        raise refuse(f"Scan inputs disagree on the sequence length ({sorted(map(str, lengths))})")
    (steps,) = lengths
    if not isinstance(steps, int):
        raise refuse(f"Scan with a symbolic sequence length ('{steps}') is not supported by the TVM back end: "
                     "the loop is unrolled")
    _check_body("Scan", ctx, body, steps)
    n_state = len(states)
    per_step: list[list] = [[] for _ in range(len(body.outputs) - n_state)]
    for t in range(steps):
        elems = []
        for x, axis, reverse in zip(xs, axes, in_dirs, strict=True):
            i = steps - 1 - t if reverse else t
            elems.append(bb.emit(relax.op.squeeze(relax.op.strided_slice(x, [axis], [i], [i + 1]), [axis])))
        results = ctx.lower_subgraph(body, states + elems)
        states = results[:n_state]
        for j, out in enumerate(results[n_state:]):
            per_step[j].append(out)
    outs = []
    for j, values in enumerate(per_step):
        if not values:
            raise refuse("Scan with an empty sequence is not supported by the TVM back end")
        if out_dirs[j]:
            values = values[::-1]
        outs.append(bb.emit(_stack_outputs("Scan", values, out_axes[j])))
    return states + outs


@converter("", "Scan")
def scan(bb, inputs, attrs, ctx):
    node = ctx.node
    body = node.attr("body")
    m = int(attrs["num_scan_inputs"])
    if ctx.opset < 9:  # Scan-8: sequence_lens first, a batch axis 0 on every input, the scan axis 1
        return _scan8(bb, inputs, attrs, ctx, body, m)
    n_state = len(inputs) - m
    if m < 1 or n_state < 0:
        raise refuse(f"Scan with {m} scan inputs of {len(inputs)} inputs is not valid")
    k = len(body.outputs) - n_state
    result = _scan_steps(ctx, body, list(inputs[:n_state]), list(inputs[n_state:]),
                         list(attrs.get("scan_input_axes", [0] * m)), list(attrs.get("scan_input_directions", [0] * m)),
                         list(attrs.get("scan_output_axes", [0] * k)),
                         list(attrs.get("scan_output_directions", [0] * k)))
    ctx.node = node
    return relax.Tuple(result)


def _scan8(bb, inputs, attrs, ctx, body, m: int):
    lens, rest = inputs[0], list(inputs[1:])
    n_state = len(rest) - m
    if m < 1 or n_state < 0:
        raise refuse(f"Scan with {m} scan inputs of {len(rest)} inputs is not valid")
    dims = [dims_of(x) for x in rest]
    if any(d is None or len(d) < 1 for d in dims) or not isinstance(dims[0][0], int):
        raise refuse("Scan-8 with inputs of unknown shape or a symbolic batch size is not supported by the TVM "
                     "back end")
    batch = dims[0][0]
    if lens is not None:
        value = constant_value(lens)
        full = dims[n_state][1] if len(dims[n_state]) > 1 else None
        if value is None or not isinstance(full, int) or not np.all(value == full):
            raise refuse("Scan-8 with sequence_lens shorter than the sequence (or computed at run time) is not "
                         "supported by the TVM back end")
    k = len(body.outputs) - n_state
    per_batch = []
    node = ctx.node
    for b in range(batch):
        parts = [bb.emit(relax.op.squeeze(relax.op.strided_slice(x, [0], [b], [b + 1]), [0])) for x in rest]
        per_batch.append(_scan_steps(ctx, body, parts[:n_state], parts[n_state:], [0] * m,
                                     list(attrs.get("directions", [0] * m)), [0] * k, [0] * k))
    ctx.node = node
    return relax.Tuple([bb.emit(_stack([r[j] for r in per_batch], axis=0))
                        for j in range(len(per_batch[0]))])


@converter("", "Loop")
def loop(bb, inputs, attrs, ctx):
    from ..shape_values import ShapeValue

    node = ctx.node
    body = node.attr("body")
    trip_expr, cond_expr = inputs[0], inputs[1]
    carried = list(inputs[2:])
    trip = None
    if trip_expr is not None:
        value = _static_value(bb, trip_expr)
        if value is None:
            raise refuse("Loop is not supported by the TVM back end: a data-dependent trip count (M is known only "
                         "at run time)")
        trip = int(value.reshape(-1)[0])
    keep_going = True
    if cond_expr is not None:
        value = _static_value(bb, cond_expr)
        if value is None:
            raise refuse("Loop is not supported by the TVM back end: a data-dependent condition (cond is known "
                         "only at run time)")
        keep_going = bool(value.reshape(-1)[0])
    elif trip is None:
        raise refuse("Loop without a trip count or a condition runs forever")
    nodes = max(1, sum(1 for _ in body.all_nodes()))
    limit = min(MAX_UNROLLED_STEPS, MAX_UNROLLED_BODY_NODES // nodes)
    n_carried = len(carried)
    per_step: list[list] = [[] for _ in range(len(body.outputs) - 1 - n_carried)]
    i = 0
    while keep_going and (trip is None or i < trip):
        if i >= limit:
            raise refuse(f"Loop is not supported by the TVM back end with more than {limit} iterations of a "
                         f"{nodes}-node body (it is unrolled)")
        if i == 0:
            _check_body("Loop", ctx, body, 1)
        iteration = const(np.array(i, np.int64))
        results = ctx.lower_subgraph(body, [iteration, const(np.array(True))] + carried,
                                     {body.inputs[0]: ShapeValue([i], scalar=True)})
        carried = results[1:1 + n_carried]
        for j, out in enumerate(results[1 + n_carried:]):
            per_step[j].append(out)
        i += 1
        if trip is not None and i >= trip:
            break  # the last iteration's condition does not matter
        value = _static_value(bb, results[0])
        if value is None:
            raise refuse("Loop is not supported by the TVM back end: a data-dependent condition (the body's "
                         "cond output is computed from run-time values)")
        keep_going = bool(value.reshape(-1)[0])
    ctx.node = node
    outs = []
    for values in per_step:
        if not values:
            raise refuse("Loop that runs no iteration and has scan outputs is not supported by the TVM back end "
                         "(their shape is unknown)")
        outs.append(bb.emit(_stack_outputs("Loop", values, 0)))
    return relax.Tuple(carried + outs)
