"""Lowering of optc's integer ops `optc.QConv` / `optc.QMatMul` (made by `rewrites/rules/qinteger.py`, whose
docstring defines their inputs and attributes) to integer compute.

The kernel is an integer convolution or matmul on the RAW quantized operands: `relax.op.nn.conv2d` (1-D and
3-D alike) / `relax.op.matmul` of uint8 or int8 x and int8 w with `out_dtype="int32"` (the interface the
int8 schedules in `codegen/` pick up). Everything else is a cheap epilogue on the int32 accumulator:

* zero points: w has none (the rule subtracted it from the constant weight). With x = xq - x_zp,
  sum (xq - x_zp) * w = sum xq * w - x_zp * sum w, and sum w over the reduction (the columns of w, or a
  conv filter's C/group x k... window) is a per-output-channel constant: folded here with the int32 bias into
  one constant vector `bias - x_zp * colsum(w)`, added once. Exact in int32 for reductions of up to
  `MAX_TERMS` (32896) terms of 255 x 128, the raw sum and the correction each; the rules leave longer ones float.
* padded convolutions: ONNX pads the float input with 0.0 = DQ(x_zp), so padded xq equals x_zp. With a
  nonzero x_zp the input is padded explicitly with x_zp (`nn.pad`) and the convolution runs unpadded, which
  keeps the per-channel correction exact at the borders; x_zp = 0 keeps the convolution's own zero padding.
* requantize: `saturate(rint(float32(acc) * M) + y_zp)`, M = float32(float32(x_scale * w_scale) / y_scale),
  round half to even: onnxruntime's MlasRequantizeOutput (float32 multiplier, nearbyint, zero point added
  after rounding, saturate). Then the fused activation's clamp to [qmin, qmax]. Computed as
  `cast(clamp(rint(float32(acc) * M) + y_zp, qmin, qmax))` in float32 (`quant.record_float_grid`: exact, the
  8-bit range and the zero point are exact in float32 and a sum rounded above 2^24 still saturates).
* float output (no y_scale): `float32(acc) * float32(x_scale * w_scale)` (onnxruntime's QGemm float output).
* run-time w (QMatMul of two activations, `_run_time_w`): a as uint8 and w as int8 (the other type shifted by 128,
  its zero point with it), K padded to a multiple of 4 and N to one of 16 with zeros (a symbolic K or N,
  attention's key length in a dynamic-axes export, by a kernel at run time), `matmul(a', w')` on the dot-product
  instructions (the kernel packs w' itself), then `- za' colsum(w') - zw' rowsum(a') + K za' zw'` from run-time
  sums, the usual requantize, and the padded columns cropped by a kernel of their own. A symbolic K needs za' or
  zw' to be 0 (the rule checks it: the last term vanishes) and is checked against MAX_TERMS when the library runs
  (`run_checks.fail_if_zero`: one line, not a wrapped-around int32 sum).
* int32 output (QMatMul without x_scale: MatMulInteger with constant weights, whose x_zp may be a run-time
  scalar, as DynamicQuantizeLinear makes it): the corrected accumulator `acc - x_zp * colsum(w)`.

REDUCTION OF ONE (see `quant.py`): a one-term reduction gets a zero term more (x padded with 0, w with 0).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from ...rewrites.rules.qinteger import MAX_RUNTIME_TERMS, MAX_TERMS
from ..converters import const, constant_value, converter, dims_of, dtype_of, refuse
from ..symbolic_pad import pad_to, row_copy_kernel
from .quant import _INT_RANGES, _conv_pads, _rank, _saturate, _scalar, _shape, _without_nan, record_float_grid

#: input channels a dot-product instruction multiply-adds per lane (x86 VNNI vpdpbusd, Arm sdot / udot: 4)
DOT_GROUP = 4


def _constant(expr, what: str) -> np.ndarray:
    value = constant_value(expr) if expr is not None else None
    if value is None:
        raise refuse(f"{what} is not a constant (optc's integer ops need constant weights and quantization "
                     "parameters)")
    return value


def _operands(inputs, op: str):
    """(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias): numpy arrays but x, and x_zp when it is known only
    at run time (an int32 scalar expression then; only without x_scale: the int32-output form). x_scale None:
    no scales at all, the output is the int32 accumulator."""
    get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
    x = inputs[0]
    if dtype_of(x) not in ("uint8", "int8"):
        raise refuse(f"{op} of {dtype_of(x)} (uint8 / int8 inputs)")
    w = _constant(inputs[3], "w")
    if w.dtype != np.int8:
        raise refuse(f"{op} with {w.dtype} weights (int8, zero point subtracted)")
    if get(1) is None:  # int32 output: MatMulInteger with a zero point of a at run time (dynamic quantization)
        if any(get(i) is not None for i in (4, 5, 6, 7)):
            raise refuse(f"{op} without x_scale takes no other scale, zero point or bias")
        zp = get(2)
        if zp is not None and constant_value(zp) is None:
            if dtype_of(zp) != dtype_of(x) or _shape(zp) is None or int(np.prod(_shape(zp) or [1])) != 1:
                raise refuse(f"{op}: a run-time x_zero_point must be one {dtype_of(x)} value")
            zp = relax.op.astype(relax.op.reshape(zp, []), "int32")
        else:
            zp = 0 if zp is None else int(constant_value(zp).reshape(()))
        return x, None, zp, w, None, None, None, None
    x_scale = _constant(inputs[1], "x_scale").astype(np.float32).reshape(())
    x_zp = int(_constant(inputs[2], "x_zero_point").reshape(()))
    w_scale = _constant(inputs[4], "w_scale").astype(np.float32)
    y_scale = None if get(5) is None else _constant(inputs[5], "y_scale").astype(np.float32).reshape(())
    y_zp = None if get(6) is None else _constant(inputs[6], "y_zero_point")
    bias = None if get(7) is None else _constant(inputs[7], "bias").astype(np.int32)
    if (y_scale is None) != (y_zp is None):
        raise refuse(f"{op} needs both y_scale and y_zero_point, or neither (float output)")
    return x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias


def _epilogue(bb, ctx, acc, x_scale, w_scale, y_scale, y_zp, attrs, axis: int):
    """Requantize (or scale to float) the int32 accumulator `acc`; per-channel scales lie along `axis`. The
    requantized output is also noted as float32 for the DequantizeLinear nodes that read it
    (`quant.record_float_grid`)."""
    rank = _rank(acc)
    shape = [1] * rank
    if w_scale.size > 1:
        shape[axis] = w_scale.size
    xw = (x_scale * w_scale.reshape(-1)).astype(np.float32)  # float32 product, as onnxruntime
    f = bb.emit(relax.op.astype(acc, "float32"))
    if y_scale is None:
        return relax.op.multiply(f, const(xw.reshape(shape)))
    with np.errstate(over="ignore"):  # absurd scales: an infinite multiplier (its NaNs then go to the zero point)
        m = (xw / y_scale).astype(np.float32)
        subnormal = np.abs(xw) < np.finfo(np.float32).tiny
        if subnormal.any():  # a float32 product of a few significant bits (1e-22 * 1e-22): 2% off, 3 units
            exact = (np.float64(x_scale) * w_scale.reshape(-1).astype(np.float64) / np.float64(y_scale))
            m = np.where(subnormal, exact.astype(np.float32), m)
    r = bb.emit(relax.op.round(relax.op.multiply(f, const(m.reshape(shape)))))
    out_dtype = str(y_zp.dtype)
    zp = int(y_zp.reshape(()))
    r = _without_nan(bb, r, bool(np.isfinite(m).all()))
    lo, hi = _INT_RANGES[out_dtype]
    qmin, qmax = max(lo, int(attrs.get("qmin", lo))), min(hi, int(attrs.get("qmax", hi)))
    grid = record_float_grid(bb, ctx, r, _scalar(zp, "float32", rank), qmin, qmax)
    if grid is not None:  # clamp(r + zp, qmin, qmax) in float32 is the quantized value: one exact cast (half the
        return relax.op.astype(grid, out_dtype)  # epilogue of the int32 round trip; small-K 1x1 convs are bound by it)
    y = bb.emit(_saturate(bb, r, _scalar(zp, "int32", rank), out_dtype))
    if (qmin, qmax) == (lo, hi):
        return y
    if qmin > lo:
        y = bb.emit(relax.op.maximum(y, _scalar(qmin, out_dtype, rank)))
    if qmax < hi:
        y = relax.op.minimum(y, _scalar(qmax, out_dtype, rank))
    return y


def _correction(w_sum: np.ndarray, x_zp: int, bias: np.ndarray | None, channels: int) -> np.ndarray | None:
    """bias - x_zp * sum(w) per output channel (int64 checked to fit int32), or None when it is all zero."""
    c = -np.int64(x_zp) * w_sum.astype(np.int64)
    if bias is not None:
        c = c + np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.int64)
    if not c.any():
        return None
    if np.abs(c).max() >= 2**31:
        raise refuse("the bias and zero point correction overflow int32")
    return c.astype(np.int32)


def _run_time_w(bb, ctx, inputs, attrs):
    """QMatMul of two activations (a run-time w, uint8 or int8, per-tensor w_zero_point at input 8): an exact
    u8 x s8 integer matmul on the dot-product instructions. With a' = a (as uint8: int8 a + 128, zero point
    + 128) and w' = w (as int8: uint8 w - 128, zero point - 128), sum (a - za)(w - zw) =
    sum a'w' - za' colsum(w') - zw' rowsum(a') + K za' zw' (the sums over the reduction, at run time). K is padded
    to a multiple of 4 and N to one of 16 with zeros (they add nothing to any sum), the result cropped back."""
    x, w = inputs[0], inputs[3]
    get = lambda i: inputs[i] if len(inputs) > i else None  # noqa: E731
    if dtype_of(w) not in ("uint8", "int8") or get(7) is not None:
        raise refuse("QMatMul with a run-time w takes a uint8 / int8 w and no bias")
    x_scale = _constant(inputs[1], "x_scale").astype(np.float32).reshape(())
    x_zp = int(_constant(inputs[2], "x_zero_point").reshape(()))
    w_scale = _constant(inputs[4], "w_scale").astype(np.float32)
    w_zp = 0 if get(8) is None else int(_constant(inputs[8], "w_zero_point").reshape(()))
    y_scale = None if get(5) is None else _constant(inputs[5], "y_scale").astype(np.float32).reshape(())
    y_zp = None if get(6) is None else _constant(inputs[6], "y_zero_point")
    xs, ws = _shape(x), _shape(w)
    xd, wd = dims_of(x), dims_of(w)
    if w_scale.size != 1 or xs is None or ws is None or len(xs) < 2 or len(ws) < 2 or xd is None or wd is None:
        raise refuse("QMatMul with a run-time w needs per-tensor scales and ranks >= 2")
    k, n = wd[-2], wd[-1]
    if isinstance(k, int) and k > MAX_RUNTIME_TERMS:
        raise refuse(f"QMatMul of two activations with a reduction of {k} terms could overflow int32")
    # K or N symbolic (attention's key length): padded to whole groups / vectors at run time (a kernel of its own)
    pad = lambda d, m: -(-d // m) * m if isinstance(d, int) else tirx.floordiv(d + (m - 1), m) * m  # noqa: E731
    k4, n16 = pad(k, DOT_GROUP), pad(n, 16)
    # the operands as the kernel reads them: a, and w or the input t of the Transpose that made w (read through
    # perm: no transposed copy); shifted to uint8 (a) / int8 (w) and zero-padded to k4 (and w to n16)
    w_src = _transposed_source(ctx, w)
    ta = x
    tw, w_perm = w_src or (w, list(range(len(ws))))
    if dtype_of(x) == "int8":
        ta, x_zp = _shifted(ta, len(xs), 128, "uint8"), x_zp + 128
    if dtype_of(w) == "uint8":
        tw, w_zp = _shifted(tw, len(w_perm), -128, "int8"), w_zp - 128
    if not isinstance(k, int) and x_zp and w_zp:
        raise refuse("QMatMul of two activations over a symbolic K needs a zero point 0 (as uint8 x int8)")
    if isinstance(k, int):
        ta = bb.emit(_padded(ta, len(xs), {len(xs) - 1: k4 - k}))
        tw = bb.emit(_padded(tw, len(w_perm), {w_perm[-2]: k4 - k}))
    else:  # a symbolic K: a sum of up to MAX_TERMS terms fits int32 with one zero point term (checked at run time)
        from ..run_checks import fail_if_zero  # noqa: PLC0415

        node = getattr(ctx, "node", None)  # (named by its output: the node's own name is the rewrite's)
        label = f"the integer MatMul computing '{node.outputs[0].name}'" if node is not None else "an integer MatMul"
        ta = fail_if_zero(bb, bb.emit(ta), tirx.Cast("int64", k <= MAX_TERMS), 1, "check_reduction_length",
                          f"{label}: its reduction over {k} is longer than {MAX_TERMS} terms when it runs, the "
                          "most whose integer sum this library's kernel keeps exact in int32")
        ta = pad_to(bb, ta, len(xs) - 1, k4)
        tw = pad_to(bb, bb.emit(tw), w_perm[-2], k4)
    if isinstance(n, int):
        tw = bb.emit(_padded(tw, len(w_perm), {w_perm[-1]: n16 - n}))
    else:
        tw = pad_to(bb, tw, w_perm[-1], n16)
    if w_src is None:
        acc = bb.emit(relax.op.matmul(ta, tw, out_dtype="int32"))
    else:
        acc = bb.emit(_permuted_matmul(bb, ta, tw, w_perm))
    if x_zp:  # colsum(w'): the sum over w's K axis, laid out as w's [..., 1, N]
        colsum = relax.op.sum(relax.op.astype(tw, "int32"), axis=[w_perm[-2]], keepdims=True)
        colsum = relax.op.permute_dims(colsum, w_perm) if w_src is not None else colsum
        acc = bb.emit(relax.op.subtract(acc, relax.op.multiply(colsum, const(x_zp, "int32"))))
    if w_zp:
        rowsum = relax.op.sum(relax.op.astype(ta, "int32"), axis=[-1], keepdims=True)
        acc = bb.emit(relax.op.subtract(acc, relax.op.multiply(rowsum, const(w_zp, "int32"))))
    if x_zp and w_zp:  # (a static K: a symbolic one has a zero point 0)
        acc = bb.emit(relax.op.add(acc, const(k * x_zp * w_zp, "int32")))
    y = _epilogue(bb, ctx, acc, x_scale, w_scale, y_scale, y_zp, attrs, _rank(acc) - 1)
    if isinstance(n, int) and n16 == n:
        return y
    crop = lambda t: _crop_last_axis(bb, t, n)  # noqa: E731
    node = getattr(ctx, "node", None)
    grid = getattr(ctx, "float_grid", {})
    if node is not None and node.outputs and node.outputs[0] in grid:  # the float form noted for DequantizeLinear
        grid[node.outputs[0]] = crop(grid[node.outputs[0]])
    return crop(bb.emit(y))


def _shifted(t, rank: int, delta: int, dtype: str):
    """8-bit t (of rank `rank`) + delta (128 or -128) as `dtype`: uint8 <-> int8, its zero point moved with it."""
    return relax.op.astype(relax.op.add(relax.op.astype(t, "int16"), _scalar(delta, "int16", rank)), dtype)


def _padded(t, rank: int, widths: dict[int, int]):
    """t (of rank `rank`) zero-padded at the end of the axes in `widths` (axis -> elements); t itself when there
    is nothing to pad."""
    if not any(widths.values()):
        return t
    return relax.op.nn.pad(t, [w for axis in range(rank) for w in (0, widths.get(axis, 0))])


def _transposed_source(ctx, w) -> tuple | None:
    """(t, perm) when QMatMul's run-time w (the Relax expression `w`) is the IR's Transpose(t, perm) of a
    t of known shape (`rewrites/rules/qtranspose.py` moves attention's K transpose there): the kernel then
    reads t through perm and packs its dot-product groups from t's own rows. None otherwise (w used as it is)."""
    node = getattr(ctx, "node", None)
    exprs = getattr(ctx, "exprs", None)
    if node is None or exprs is None or len(node.inputs) < 4 or node.inputs[3] is None:
        return None
    producer = node.inputs[3].producer
    if producer is None or producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx"):
        return None
    t = exprs.get(producer.inputs[0])
    if t is None or exprs.get(node.inputs[3]) is not w:  # (w re-broadcast for symbolic batch dims: keep it)
        return None
    dims = dims_of(t)
    if dims is None:
        return None
    perm = producer.attr("perm")
    return t, [int(p) for p in perm] if perm is not None else list(range(len(dims)))[::-1]


def _permuted_matmul(bb, a, t, perm: list[int]):
    """int32 `matmul(a, permute_dims(t, perm))` as one kernel that reads t through perm (no transposed copy of t):
    a [..., M, K] uint8, w = t permuted [..., K, N] int8; batch dims broadcast as MatMul's. The int8 schedule
    (`codegen/int8_kernels.py`) packs t's 4-byte groups from its own layout."""
    from tvm import te  # noqa: PLC0415

    shape = bb.normalize(relax.op.matmul(a, relax.op.permute_dims(t, perm), out_dtype="int32")).ty.shape.values

    def compute(a_t, t_t):
        a_batch = list(a_t.shape[:-2])
        w_batch = [t_t.shape[p] for p in perm][:-2]
        k = te.reduce_axis((0, a_t.shape[-1]), name="k")

        def batch(dims, idx):
            lead = len(idx) - len(dims)
            return [0 if isinstance(d, tirx.IntImm) and int(d) == 1 else idx[lead + i] for i, d in enumerate(dims)]

        def body(*idx):
            b, m, n = idx[:-2], idx[-2], idx[-1]
            w_idx = [*batch(w_batch, b), k, n]
            t_idx = [None] * len(perm)
            for j, p in enumerate(perm):
                t_idx[p] = w_idx[j]
            return te.sum(a_t(*batch(a_batch, b), m, k).astype("int32") * t_t(*t_idx).astype("int32"), axis=k)

        return te.compute(shape, body, name="matmul")

    return bb.call_te(compute, a, t, primfunc_name_hint="matmul_permuted")


def _crop_last_axis(bb, t, n):
    """t[..., :n] (t static, its last axis longer than n, which is no multiple of 16; or n symbolic) as a kernel of its own,
    written out: rows in parallel, each copied in vectors (up to 64 bytes) and a scalar tail. Fused after the matmul
    instead (FuseOps takes a strided_slice into the epilogue), the epilogue's stores were predicated lane by lane
    and TVM scalarized them; a strided_slice kernel of 197-wide rows got no vectors either (no schedule rule
    vectorizes a row whose width no vector divides). A symbolic n (attention's keys) takes the same kernel: a
    strided_slice's type had a T.if_then_else that FuseOps could not type."""
    dims = list(t.ty.shape.values)
    if isinstance(n, int) and (n <= 16 or not all(isinstance(d, tirx.IntImm) for d in dims)
                               or any(int(d) == 0 for d in dims)):
        return bb.emit(relax.op.strided_slice(t, [len(dims) - 1], [0], [n]))  # short, symbolic or empty rows: a slice
    dtype = dtype_of(t)
    lanes = 64 // np.dtype(dtype).itemsize
    while isinstance(n, int) and (lanes > n or n % lanes == 0):  # ends at 16 at the latest: n > 16, no multiple of 16
        lanes //= 2
    rows = 1
    for d in dims[:-1]:
        rows = rows * d
    flat = bb.emit(relax.op.reshape(t, [rows, dims[-1]]))
    gv = bb.add_func(row_copy_kernel(lanes, dtype), "crop_last_axis")
    out = bb.emit(relax.call_tir(gv, [flat], relax.TensorType([rows, n], dtype)))
    return bb.emit(relax.op.reshape(out, [*dims[:-1], n]))


@converter("optc", "QMatMul")
def qmatmul(bb, inputs, attrs, ctx):
    if constant_value(inputs[3]) is None:
        return _run_time_w(bb, ctx, inputs, attrs)
    x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias = _operands(inputs, "QMatMul")
    if w.ndim != 2 or _rank(x) < 2:
        raise refuse(f"QMatMul of a rank-{_rank(x)} input and a {w.ndim}-D weight (needs >= 2 and 2)")
    k, n = w.shape
    if k > MAX_TERMS:
        raise refuse(f"QMatMul with a reduction of {k} terms could overflow int32")
    wx = const(w)
    if k == 1:  # REDUCTION OF ONE: a zero term more
        x = bb.emit(relax.op.nn.pad(x, [0, 0] * (_rank(x) - 1) + [0, 1]))
        wx = const(np.concatenate([w, np.zeros_like(w)]))
    acc = bb.emit(relax.op.matmul(x, wx, out_dtype="int32"))
    colsum = w.astype(np.int64).sum(axis=0)
    if not isinstance(x_zp, int):  # run time: acc - x_zp * colsum(w)
        if np.abs(colsum).max(initial=0) * 255 >= 2**31:
            raise refuse("QMatMul: the zero point correction could overflow int32")
        return relax.op.subtract(acc, relax.op.multiply(bb.emit(x_zp), const(colsum.astype(np.int32))))
    c = _correction(colsum, x_zp, bias, n)
    if c is not None:
        acc = bb.emit(relax.op.add(acc, const(c)))
    if x_scale is None:
        return acc
    return _epilogue(bb, ctx, acc, x_scale, w_scale, y_scale, y_zp, attrs, _rank(acc) - 1)


@converter("optc", "QConv")
def qconv(bb, inputs, attrs, ctx):
    x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias = _operands(inputs, "QConv")
    if x_scale is None:
        raise refuse("QConv needs x_scale (the int32-output form is QMatMul's)")
    rank = _rank(x)
    spatial = rank - 2
    if spatial not in (1, 2, 3) or w.ndim != rank:
        raise refuse(f"QConv with a rank-{rank} input and a {w.ndim}-D weight (1-D, 2-D and 3-D convolutions)")
    terms = int(np.prod(w.shape[1:]))
    if terms > MAX_TERMS:
        raise refuse(f"QConv with a reduction of {terms} terms could overflow int32")
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = _conv_pads(attrs, x, const(w), spatial)
    group = int(attrs.get("group", 1))
    # input channels to a multiple of DOT_GROUP when there is one group (an RGB image's 3): the dot-product
    # instructions multiply-add DOT_GROUP consecutive channels, and a K of 3 left the kernel on generic int32
    # loops (ResNet-like's 7x7 stem: 2.5 ms, a tenth of the model). The added channels have zero weights, and
    # read x_zp (x - x_zp = 0): nothing changes in the sums, nor in the zero point correction below (sum(w)).
    extra = -w.shape[1] % DOT_GROUP if group == 1 else 0
    explicit = x_zp != 0 and any(pads)  # padded x must read x_zp (= DQ 0.0): pad explicitly, convolve unpadded
    if explicit or extra:
        width = [0, 0, 0, extra] + [p if explicit else 0 for i in range(spatial) for p in (pads[i], pads[spatial + i])]
        x = bb.emit(relax.op.nn.pad(x, width, pad_value=float(x_zp)))
        pads = [0] * (2 * spatial) if explicit else pads
    if extra:
        w = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
    wk = w
    if int(np.prod(w.shape[1:])) == 1:  # REDUCTION OF ONE: a zero tap more, read from one more column of (zero) padding
        wk = np.concatenate([w, np.zeros_like(w)], axis=-1)
        pads[-1] += dilations[-1]
    conv = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}[spatial]
    layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[spatial]
    acc = bb.emit(conv(x, const(wk), strides=strides, padding=pads, dilation=dilations,
                       groups=group, data_layout=layout[0], kernel_layout=layout[1],
                       out_dtype="int32"))
    channels = w.shape[0]
    c = _correction(w.reshape(channels, -1).astype(np.int64).sum(axis=1), x_zp, bias, channels)
    if c is not None:
        acc = bb.emit(relax.op.add(acc, const(c.reshape([1, channels] + [1] * spatial))))  # full rank: ConvertLayout
        # moves a same-rank operand to NHWC with the conv; a [C, 1, 1] one kept the epilogue in NCHW (two transposes)
    return _epilogue(bb, ctx, acc, x_scale, w_scale, y_scale, y_zp, attrs, 1)
