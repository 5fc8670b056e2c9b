"""Signal-processing ops: Range, DFT, STFT, the Blackman / Hamming / Hann windows and MelWeightMatrix.

DFT and STFT are matrix products with constant cos / sin tables (computed in float64 with numpy, then cast to
the input's type), so the lengths they transform must be known when compiling. The windows and
MelWeightMatrix have outputs whose shape is given by input values: they are lowered as constants (computed
with numpy the way onnx's reference evaluator computes them) when those inputs are constants, and refused
otherwise. Semantics: the ONNX operator specs and `onnx/reference/ops/op_*.py`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..converters import const, constant_value, converter, dtype_of, refuse, static_dim

_LOW_PRECISION = ("float16", "bfloat16")
_STASH_TYPES = {1: "float32", 11: "float64"}  # Range's stash_type (TensorProto FLOAT, DOUBLE)


@converter("", "Range")
def range_(bb, inputs, attrs, ctx):
    """Range(start, limit, delta) -> [max(ceil((limit - start) / delta), 0)] of start's type, element i being
    `start + i * delta`, computed in float64 for floats (as onnx's reference, numpy's arange) and in `stash_type`
    for float16/bfloat16 where it is given (ONNX Range-11/-27).

    Constant operands give a constant. Run-time operands give a tensor whose length is a symbolic dim bound
    from the count at run time (a delta of 0, or a non-finite count, gives an empty tensor: the spec leaves it
    undefined; see `run_time_positions`)."""
    start, limit, delta = inputs[0], inputs[1], inputs[2]
    dtype = dtype_of(start)
    is_float = dtype.startswith(("float", "bfloat"))
    compute = (_STASH_TYPES.get(attrs.get("stash_type"), "float64") if dtype in _LOW_PRECISION else "float64") \
        if is_float else dtype
    values = [constant_value(x) for x in (start, limit, delta)]
    if all(v is not None for v in values):
        s, lim, d = (v.reshape(()) for v in values)
        if d == 0:
            raise refuse("Range with a delta of 0")
        out = np.arange(s.astype(compute).item(), lim.item(), d.item(), dtype=compute)
        return const(out, dtype)
    return _run_time_range(bb, start, limit, delta, dtype, compute)


def run_time_positions(bb, count):
    """[0, 1, ..., n - 1] (int64) for a run-time count n >= 0 (a 0-d int64 tensor): a tensor whose length is a
    symbolic dim bound from the count's value. The kernel that makes it reads a value that depends on that binding
    (the count in a tuple with the bound shape): TVM's FuseOps orders fused groups by data dependencies alone, and
    a group that only used the dim was hoisted above the binding ("range_len has not been computed")."""
    from tvm import te, tirx

    count = bb.match_cast(bb.normalize(relax.op.reshape(count, (1,))), relax.TensorType([1], "int64"))
    n = tirx.Var("range_len", "int64")
    shape = bb.match_cast(bb.emit(relax.call_pure_packed("vm.builtin.tensor_to_shape", count,
                                                         ty_args=relax.ShapeType(ndim=1))), relax.ShapeType([n]))
    both = bb.emit(relax.call_pure_packed("vm.builtin.make_tuple", count, shape,
                                          ty_args=relax.TupleType([count.ty, shape.ty])))
    count = bb.emit(relax.call_pure_packed("vm.builtin.tuple_getitem", both, relax.prim_value(0),
                                           ty_args=count.ty))
    return bb.emit_te(lambda c: te.compute((n,), lambda i: tirx.min(i, c[0] - 1), name="range_positions"),
                      count, primfunc_name_hint="range_positions")


def _run_time_range(bb, start, limit, delta, dtype: str, compute: str):
    """Range of run-time scalars (see `range_`)."""
    count_dtype = "float64" if compute.startswith("float") else "int64"
    s, lim, d = (bb.normalize(relax.op.reshape(relax.op.astype(x, count_dtype), ())) for x in (start, limit, delta))
    zero = relax.const(0, count_dtype)
    is_zero = bb.normalize(relax.op.equal(d, zero))
    safe_d = bb.normalize(relax.op.where(is_zero, relax.const(1, count_dtype), d))
    if count_dtype == "float64":
        count = bb.normalize(relax.op.ceil(relax.op.divide(relax.op.subtract(lim, s), safe_d)))
        invalid = relax.op.logical_or(is_zero, relax.op.logical_not(relax.op.isfinite(count)))
    else:  # ceil((limit - start) / delta) in integers
        count = relax.op.negative(relax.op.floor_divide(relax.op.subtract(s, lim), safe_d))
        invalid = is_zero
    count = relax.op.where(relax.op.logical_or(invalid, relax.op.less(count, zero)), zero, count)
    positions = run_time_positions(bb, relax.op.astype(count, "int64"))
    positions = relax.op.astype(positions, compute)
    step, first = (x if dtype_of(x) == compute else relax.op.astype(x, compute) for x in (delta, start))
    out = relax.op.add(relax.op.multiply(positions, relax.op.reshape(step, ())), relax.op.reshape(first, ()))
    return out if compute == dtype else relax.op.astype(out, dtype)


# -- DFT and STFT -------------------------------------------------------------------------------------------------

_MAX_TABLE = 1 << 25  # elements of one cos/sin table (128 MiB in float32): larger transforms are refused


def _scalar_input(inputs, i: int, what: str, op: str) -> int | None:
    """The value of optional scalar input `i` as an int (None when omitted); refused when computed at run time."""
    x = inputs[i] if len(inputs) > i else None
    if x is None:
        return None
    value = constant_value(x)
    if value is None or value.size != 1:
        raise refuse(f"{op} with {what} computed at run time is not supported by the TVM back end")
    return int(value.reshape(()).item())


def _twiddles(rows: int, cols: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2*pi*r*c/n for r < rows, c < cols (float64; exact at multiples of a quarter turn)."""
    turns = np.outer(np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64)) % n
    cos, sin = np.cos(2 * np.pi * turns / n), np.sin(2 * np.pi * turns / n)
    quarter = (4 * turns) % n == 0
    exact = (4 * turns[quarter]) // n
    cos[quarter] = np.array([1.0, 0.0, -1.0, 0.0])[exact]
    sin[quarter] = np.array([0.0, 1.0, 0.0, -1.0])[exact]
    return cos, sin


def dft_matrix(m: int, channels: int, n: int, inverse: bool, onesided: bool) -> np.ndarray:
    """The float64 matrix W with `y = x @ W` for one signal of `m` samples interleaved as [m, channels] (1: real,
    2: real, imaginary) and the result interleaved as [k, 2] (or [n, 1] for a one-sided inverse): the DFT of
    length `n` of the signal zero-padded to n (m <= n), as numpy's fft / ifft / irfft compute it (onnx's
    reference DFT): forward `X_k = sum x_j e^(-2 pi i jk/n)` (k < n, or n//2 + 1 one-sided); inverse
    `x_j = 1/n sum X_k e^(2 pi i jk/n)`; one-sided inverse (irfft): the real signal of length n whose spectrum's
    first n//2 + 1 bins are the input (m <= n//2 + 1; imaginary parts of bin 0 and bin n/2 ignored)."""
    if inverse and onesided:
        cos, sin = _twiddles(m, n, n)
        weight = np.where((np.arange(m) == 0) | (2 * np.arange(m) == n), 1.0, 2.0)[:, None] / n
        rows = [weight * cos, -weight * sin]
        return np.stack(rows[:channels], axis=1).reshape(m * channels, n)
    k = n // 2 + 1 if onesided else n
    cos, sin = _twiddles(m, k, n)
    sign = 1.0 if inverse else -1.0
    scale = 1.0 / n if inverse else 1.0
    # rows: the real part's coefficients for (Re y_k, Im y_k), then the imaginary part's
    real_row = np.stack([cos, sign * sin], axis=-1) * scale
    imag_row = np.stack([-sign * sin, cos], axis=-1) * scale
    return np.stack([real_row, imag_row][:channels], axis=1).reshape(m * channels, k * 2)


def _compute_type(dtype: str, op: str) -> str:
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise refuse(f"{op} of {dtype} is not supported (the spec's types are float16, bfloat16, float, double)")
    return "float64" if dtype == "float64" else "float32"


def _transform(bb, x, axis: int, n: int, inverse: bool, onesided: bool, op: str):
    """x (rank r + 1, channels last: 1 or 2) transformed along `axis` < r by `dft_matrix`, as one matmul with the
    signal axis moved next to the channels; the result has x's type (computed in float32, float64 for float64)."""
    dtype = dtype_of(x)
    compute = _compute_type(dtype, op)
    rank = x.ty.ndim
    channels = static_dim(x, rank - 1, op)
    if channels not in (1, 2):
        raise refuse(f"{op} of an input whose last dimension is {channels} (1: real, 2: complex)")
    length = static_dim(x, axis, op)
    used = min(length, n // 2 + 1 if inverse and onesided else n)  # the samples (bins) that count
    matrix = dft_matrix(used, channels, n, inverse, onesided)
    if matrix.size > _MAX_TABLE:
        raise refuse(f"{op} of length {n} needs a {matrix.shape[0]}x{matrix.shape[1]} table, more than the TVM "
                     "back end builds")
    if used < length:
        x = bb.normalize(relax.op.strided_slice(x, [axis], [0], [used], [1]))
    if dtype != compute:
        x = bb.normalize(relax.op.astype(x, compute))
    perm = [i for i in range(rank - 1) if i != axis] + [axis, rank - 1]
    moved = bb.normalize(relax.op.permute_dims(x, perm)) if perm != list(range(rank)) else x
    batch = [d for i, d in enumerate(moved.ty.shape.values) if i < rank - 2]
    flat = bb.normalize(relax.op.reshape(moved, [*batch, used * channels]))
    y = bb.normalize(relax.op.matmul(flat, const(matrix, compute)))
    out_channels = 1 if inverse and onesided else 2
    y = bb.normalize(relax.op.reshape(y, [*batch, matrix.shape[1] // out_channels, out_channels]))
    back = [perm.index(i) for i in range(rank)]
    if back != list(range(rank)):
        y = bb.normalize(relax.op.permute_dims(y, back))
    return y if dtype == compute else relax.op.astype(y, dtype)


@converter("", "DFT")
def dft(bb, inputs, attrs, ctx):
    """DFT-17/19/20 of x [..., L, ..., 1 or 2] (real, or real and imaginary parts) along `axis` (an attribute
    before opset 20, default 1; the optional 0-d input 2 from opset 20, default -2), with `dft_length` n (input 1;
    default L, or 2 (L - 1) for a one-sided inverse), `inverse` and `onesided`: the result is [..., K, ..., 2]
    (K = n, or n//2 + 1 one-sided) or, for a one-sided inverse, the real signal [..., n, ..., 1], in x's type (spec
    and onnx/reference/ops/op_dft.py). Lowered as a matmul with a constant table (`dft_matrix`); refused when n,
    the axis or L is a run-time value. (An infinite input meets the table's zeros: NaN where numpy's FFT may keep
    an infinity.)"""
    x = inputs[0]
    rank = x.ty.ndim
    if ctx.opset >= 20:
        axis = _scalar_input(inputs, 2, "an axis", "DFT")
        axis = -2 if axis is None else axis
    else:
        axis = attrs.get("axis", 1)
    if not -rank <= axis < rank or axis % rank == rank - 1:
        raise refuse(f"DFT axis {axis} is out of range for a rank-{rank} input (its last dimension holds the parts)")
    axis %= rank
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    n = _scalar_input(inputs, 1, "a dft_length", "DFT")
    if n is None:
        length = static_dim(x, axis, "DFT")
        n = 2 * (length - 1) if inverse and onesided else length
    if n < 1:
        raise refuse(f"DFT with dft_length {n}")
    return _transform(bb, x, axis, n, inverse, onesided, "DFT")


@converter("", "STFT")
def stft(bb, inputs, attrs, ctx):
    """STFT-17 of signal [batch, L, 1 or 2] with frame_step s (input 1), an optional window [l] (input 2) and
    frame_length l (input 3; default the window's length): frames f*s .. f*s + l - 1 for f < 1 + (L - l) // s,
    weighted by the window, then their DFT of length l: [batch, frames, l//2 + 1 (onesided, the default) or l, 2]
    in the signal's type (spec and onnx/reference/ops/op_stft.py). Refused when s, l or L is a run-time value."""
    x = inputs[0]
    window = inputs[2] if len(inputs) > 2 else None
    step = _scalar_input(inputs, 1, "a frame_step", "STFT")
    length = _scalar_input(inputs, 3, "a frame_length", "STFT")
    if x.ty.ndim != 3:
        raise refuse(f"STFT of a rank-{x.ty.ndim} signal (the spec's is [batch, length, 1 or 2])")
    if window is not None:
        if window.ty.ndim != 1:
            raise refuse("STFT with a window that is not 1-D")
        size = static_dim(window, 0, "STFT")
        if length is not None and length != size:
            raise refuse(f"STFT with frame_length {length} and a window of {size} samples")
        length = size
    if length is None:
        raise refuse("STFT without a window or frame_length")
    signal = static_dim(x, 1, "STFT")
    if step is None or step < 1 or not 1 <= length <= signal:
        raise refuse(f"STFT with frame_step {step} and frame_length {length} for a signal of {signal} samples")
    frames = 1 + (signal - length) // step
    index = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    framed = bb.normalize(relax.op.take(x, const(index.reshape(-1).astype(np.int64)), axis=1))
    framed = bb.normalize(relax.op.reshape(framed, [x.ty.shape.values[0], frames, length, x.ty.shape.values[2]]))
    if window is not None:
        weights = window if dtype_of(window) == dtype_of(x) else relax.op.astype(window, dtype_of(x))
        framed = bb.normalize(relax.op.multiply(framed, relax.op.reshape(weights, [length, 1])))
    return _transform(bb, framed, 2, length, False, bool(attrs.get("onesided", 1)), "STFT")


# -- windows and MelWeightMatrix ----------------------------------------------------------------------------------


def _constant_inputs(inputs, op: str) -> list[np.ndarray]:
    values = [constant_value(x) for x in inputs]
    if any(v is None for v in values):
        raise refuse(f"{op} of inputs computed at run time is not supported by the TVM back end (its output "
                     "shape is given by their values)")
    return values


def _output_type(attrs, op: str) -> np.dtype:
    from onnx.helper import tensor_dtype_to_np_dtype

    dtype = tensor_dtype_to_np_dtype(attrs.get("output_datatype", 1))
    if dtype.kind not in "fiu" and dtype.name != "bfloat16":
        raise refuse(f"{op} with the output type {dtype}")
    return dtype


def _window(op: str, formula, run_time_formula):
    @converter("", op)
    def window(bb, inputs, attrs, ctx):
        dtype = _output_type(attrs, op)
        periodic = attrs.get("periodic", 1)
        size = constant_value(inputs[0])
        if size is None:  # ni = [0, ..., N - 1] and N - 1 + periodic, in float64
            count = bb.normalize(relax.op.astype(relax.op.reshape(inputs[0], ()), "int64"))
            count = bb.normalize(relax.op.maximum(count, relax.const(0, "int64")))
            ni = bb.normalize(relax.op.astype(run_time_positions(bb, count), "float64"))
            denominator = relax.op.astype(count if periodic == 1 else relax.op.subtract(count, relax.const(1, "int64")),
                                          "float64")
            return relax.op.astype(run_time_formula(bb, ni, bb.normalize(denominator)), str(dtype))
        if int(size) < 1:
            raise refuse(f"{op} of size {int(size)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return const(formula(size, dtype, periodic).astype(dtype))

    window.__doc__ = (f"{op}-17 of size N (a 0-d int input): [N] of `output_datatype` (spec; onnx/reference/ops/"
                      f"op_{op[:-6].lower()}_window.py). A constant N gives a constant computed as that reference "
                      "does; a run-time N is computed in float64 on a tensor of symbolic length (`run_time_positions`).")
    return window


def _periodic_n(size: np.ndarray, periodic: int) -> np.ndarray:
    return size if periodic == 1 else size - 1


def _f64(value: float):
    return relax.const(value, "float64")


def _cos_turns(ni, n, turns: float):
    """cos(ni * 2 pi turns / n) (float64 tensors)."""
    return relax.op.cos(relax.op.divide(relax.op.multiply(ni, _f64(2 * np.pi * turns)), n))


def _hann(size: np.ndarray, dtype: np.dtype, periodic: int) -> np.ndarray:
    return np.sin(np.arange(size, dtype=dtype) * np.pi / _periodic_n(size, periodic)) ** 2


def _hann_run_time(bb, ni, n):
    s = bb.normalize(relax.op.sin(relax.op.divide(relax.op.multiply(ni, _f64(np.pi)), n)))
    return relax.op.multiply(s, s)


_HAMMING_ALPHA = 25.0 / 46.0


def _hamming(size: np.ndarray, dtype: np.dtype, periodic: int) -> np.ndarray:
    angle = np.arange(size, dtype=dtype) * np.pi * 2 / _periodic_n(size, periodic)
    return _HAMMING_ALPHA - np.cos(angle) * (1 - _HAMMING_ALPHA)


def _hamming_run_time(bb, ni, n):
    return relax.op.subtract(_f64(_HAMMING_ALPHA), relax.op.multiply(_cos_turns(ni, n, 1), _f64(1 - _HAMMING_ALPHA)))


def _blackman(size: np.ndarray, dtype: np.dtype, periodic: int) -> np.ndarray:
    ni, n = np.arange(size), _periodic_n(size, 1 if periodic != 0 else 0)
    y = np.cos((ni * (np.pi * 2)) / n) * (-0.5)
    y += np.cos((ni * (np.pi * 4)) / n) * 0.08
    return y + 0.42


def _blackman_run_time(bb, ni, n):
    y = relax.op.add(relax.op.multiply(_cos_turns(ni, n, 1), _f64(-0.5)),
                     relax.op.multiply(_cos_turns(ni, n, 2), _f64(0.08)))
    return relax.op.add(y, _f64(0.42))


hann_window = _window("HannWindow", _hann, _hann_run_time)
hamming_window = _window("HammingWindow", _hamming, _hamming_run_time)
blackman_window = _window("BlackmanWindow", _blackman, _blackman_run_time)


@converter("", "MelWeightMatrix")
def mel_weight_matrix(bb, inputs, attrs, ctx):
    """MelWeightMatrix-17 of constant num_mel_bins B, dft_length n, sample_rate, lower_edge_hertz and
    upper_edge_hertz: [n//2 + 1, B] of `output_datatype` (default float), computed as onnx's reference evaluator
    does (onnx/reference/ops/op_mel_weight_matrix.py); refused when an input is a run-time value."""
    bins, dft_length, rate, lower, upper = _constant_inputs(inputs[:5], "MelWeightMatrix")
    bins, dft_length = int(bins), int(dft_length)
    if bins < 1 or dft_length < 1 or rate == 0:
        raise refuse(f"MelWeightMatrix with num_mel_bins {bins}, dft_length {dft_length} and sample_rate {rate}")
    edges = np.arange(0, bins + 2)
    low_mel = 2595 * np.log1p(lower / 700) / np.log(10)
    high_mel = 2595 * np.log1p(upper / 700) / np.log(10)
    edges = edges * ((high_mel - low_mel) / edges.shape[0]) + low_mel
    edges = 700 * np.expm1(edges / 2595 * np.log(10))
    edges = (((dft_length + 1) * edges) // rate).astype(int)
    out = np.zeros((dft_length // 2 + 1, bins))
    if edges.min() < 0 or edges.max() > out.shape[0]:
        raise refuse("MelWeightMatrix with edges outside the spectrum")
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            for j in range(left, center + 1):
                out[j, i] = float(j - left) / float(center - left)
        for j in range(center, right):
            out[j, i] = float(right - j) / float(right - center)
    return const(out.astype(_output_type(attrs, "MelWeightMatrix")))
