"""Broadcasting where a symbolic dim meets a dim it cannot be proven equal to.

ONNX broadcasting lets a symbolic dim N meet a fixed dim 4 (N must then be 1 or 4 when the model runs) or another
symbolic dim M. TVM handles neither: Relax's shape inference gives the result of `add([N, 4, 7], [4, 1, 1])` an
unknown shape, LegalizeOps leaves such a call alone, and the VM codegen fails on it ("InternalError"); and TOPI's
broadcast indexes a symbolic input dim as if it were never 1 (`broadcast_to(x[N, 3], [4, 3])` read past x at
N = 1). Here the result dim is worked out as ONNX defines it, and an operand whose symbolic dim may need
broadcasting is first broadcast to it by a kernel that reads index 0 along that dim where it is 1, after a run-time
check that the dim is 1 or the result's (the VM raises on a mismatch, as onnxruntime refuses the model).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from .converters import dims_of, dtype_of

#: default-domain ops whose tensor inputs broadcast against each other (PRelu's slope broadcasts to X)
BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "PRelu", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr",
    "BitwiseXor"})


def align_operands(bb: relax.BlockBuilder, inputs: list) -> list:
    """`inputs` (Relax expressions, None for omitted ones) with every tensor operand whose symbolic dim may need
    broadcasting broadcast to the result dims first (`broadcast_to`), so that TVM sees operands whose dims are
    1 or provably equal to the result's. Operands of unknown shape, and inputs where nothing is symbolic, are
    returned as they are; so are operands whose static dims conflict (the converter reports that)."""
    shapes = [dims_of(x) if _is_tensor(x) else None for x in inputs]
    known = [s for x, s in zip(inputs, shapes, strict=True) if _is_tensor(x)]
    if not known or any(s is None for s in known) or all(_static(d) for s in known for d in s):
        return inputs
    out = result_dims(known)
    if out is None:
        return inputs
    aligned = type(inputs)()
    for x, dims in zip(inputs, shapes, strict=True):
        if dims is not None and _risky(dims, out):
            x = broadcast_to(bb, x, out[len(out) - len(dims):])
        aligned.append(x)
    return aligned


def align_batch_dims(bb: relax.BlockBuilder, inputs: list, operands: tuple[int, int] = (0, 1),
                     label: str = "a MatMul") -> list:
    """A matmul's two operands (`inputs` at the positions `operands`: (0, 1) for MatMul and MatMulInteger, (0, 3)
    for QLinearMatMul and optc's QMatMul) with their batch dims (all but the last two) aligned as `align_operands`
    aligns elementwise operands: `[N, 4, 5] @ [3, 5, 6]`, or two graph inputs' unrelated symbolic batches, had an
    unknown result shape. Operands of rank < 3 on either side (no batch dims to broadcast against each other), of
    unknown shape or with static batch dims only are returned as they are. First, reduction dims that may differ
    when the library runs are checked (`_same_reduction`; `label` names the node in the check's message)."""
    if len(inputs) <= max(operands):
        return inputs
    dims = [dims_of(inputs[i]) if _is_tensor(inputs[i]) else None for i in operands]
    if dims[0] and dims[1]:  # K: the first operand's last axis, the second's next-to-last (a vector's only one)
        inputs = _same_reduction(bb, inputs, operands, (len(dims[0]) - 1, max(len(dims[1]) - 2, 0)), label)
    dims = [dims_of(inputs[i]) if _is_tensor(inputs[i]) else None for i in operands]
    if any(d is None or len(d) < 3 for d in dims):
        return inputs
    batches = [d[:-2] for d in dims]
    if all(_static(d) for b in batches for d in b):
        return inputs
    out = result_dims(batches)
    if out is None:
        return inputs
    aligned = list(inputs)
    for k, i in enumerate(operands):
        if _risky(batches[k], out):
            aligned[i] = broadcast_to(bb, inputs[i], out[len(out) - len(batches[k]):] + dims[k][-2:])
    return type(inputs)(aligned)


def _same_reduction(bb: relax.BlockBuilder, inputs: list, operands: tuple[int, int], axes: tuple[int, int],
                    label: str) -> list:
    """A matmul's or Gemm's inputs where the two operands' reduction dims (K: `axes` of the inputs at `operands`)
    are not provably equal (symbols of different names, or a symbol against a number), after a run-time check that
    they are equal (the call fails with one line naming `label`, `run_checks.CHECK_ERROR`, as onnxruntime refuses
    the model): the operand with a symbolic K is match-cast to the other's (a static K where one is; else the
    second to the first's). Without it the kernel took K from one operand and read the other as if it had that
    many rows: a wrong result, or a read past its end. Operands of unknown shape, or with K static on both sides or
    provably equal, are returned as they are."""
    from .run_checks import equal_dim_checked  # noqa: PLC0415

    pair = [inputs[i] for i in operands]
    dims = [dims_of(x) if _is_tensor(x) else None for x in pair]
    if not dims[0] or not dims[1]:
        return inputs
    ks = [d[axis] for d, axis in zip(dims, axes, strict=True)]
    if (_static(ks[0]) and _static(ks[1])) or dims_equal(ks[0], ks[1]):
        return inputs
    which = 0 if _static(ks[1]) else 1  # the operand whose K is checked against the other's
    checked = list(inputs)
    checked[operands[which]] = equal_dim_checked(bb, pair[which], axes[which], ks[1 - which],
                                                 f"{label}: its inputs' reduction lengths differ when it runs",
                                                 "optc_matmul_k_check")
    return type(inputs)(checked)


#: convolutions (domain, op) -> the input index of their weight [M, C / group, k...]
CONV_WEIGHTS = {("", "Conv"): 1, ("", "ConvInteger"): 1, ("", "QLinearConv"): 3, ("optc", "QConv"): 3}


def check_conv_channels(bb, inputs: list, w_index: int, group: int, label: str) -> list:
    """A convolution's inputs with x's channel dim checked against its weight's C / group x group when it runs,
    where the two are not provably equal (a symbolic C against a constant weight's): the call fails with one line,
    as onnxruntime refuses; without the check the kernel read C from the weight, ignoring channels or reading past
    x's end. Inputs of unknown shape are returned as they are."""
    from .run_checks import equal_dim_checked  # noqa: PLC0415

    x, w = inputs[0], inputs[w_index] if len(inputs) > w_index else None
    dx, dw = (dims_of(v) if _is_tensor(v) else None for v in (x, w))
    if not dx or not dw or len(dx) < 2 or len(dw) < 2 or isinstance(dx[1], int) and isinstance(dw[1], int):
        return inputs
    want = dw[1] * group
    if dims_equal(dx[1], want):
        return inputs
    checked = list(inputs)
    checked[0] = equal_dim_checked(bb, x, 1, want, f"{label}: its input's channels differ from its weight's when "
                                   "it runs", "optc_conv_channel_check")
    return type(inputs)(checked)


#: normalizations whose Scale (input 1) holds one value per channel (x's axis 1: the [C] of BatchNormalization and
#: InstanceNormalization; B, mean and var are [C] too) or per normalized element (LayerNormalization: the dims from
#: `axis` on, Scale broadcast against them)
NORM_SCALES = {("", "BatchNormalization"), ("", "InstanceNormalization"), ("", "LayerNormalization")}


def check_norm_channels(bb, inputs: list, op_type: str, axis: int, label: str) -> list:
    """A normalization's inputs with x's channel dim (BatchNormalization, InstanceNormalization: axis 1) or its
    normalized dims (LayerNormalization: from `axis` on, against Scale's trailing dims that are not 1) checked
    against Scale's when the library runs, where they are not provably equal (a symbolic C against a constant
    Scale's): the call fails with one line, as onnxruntime refuses, and x is match-cast to Scale's dims. Without
    it TVM could not type the broadcast of a symbolic C against a static one and the build failed ("emit_te now
    only supports Tensor that has ShapeExpr shape"). Inputs of unknown shape are returned as they are."""
    from .run_checks import equal_dim_checked  # noqa: PLC0415

    x, scale = inputs[0], inputs[1] if len(inputs) > 1 else None
    dx, ds = (dims_of(v) if _is_tensor(v) else None for v in (x, scale))
    if not dx or not ds:
        return inputs
    if op_type == "LayerNormalization":
        if not -len(dx) <= axis < len(dx):
            return inputs
        n = len(dx) - axis % len(dx)  # the normalized dims, against Scale's last n (right-aligned)
        if any(not (_static(d) and d == 1) for d in ds[:-n]):
            return inputs  # the converter refuses (or broadcasts) what does not line up
        tail = ds[-n:]
        pairs = [(len(dx) - len(tail) + i, d) for i, d in enumerate(tail) if not (_static(d) and d == 1)]
    else:
        pairs = [(1, ds[0])] if len(dx) >= 2 and len(ds) == 1 else []
    for a, want in pairs:
        if not dims_equal(dx[a], want) and not (_static(dx[a]) and _static(want)):
            x = equal_dim_checked(bb, x, a, want, f"{label}: its input's dim {a} differs from its scale's when it "
                                  "runs", "optc_norm_channel_check")
    if x is inputs[0]:
        return inputs
    checked = list(inputs)
    checked[0] = x
    return type(inputs)(checked)


def check_gemm_reduction(bb: relax.BlockBuilder, inputs: list, trans_a: bool, trans_b: bool, label: str) -> list:
    """Gemm's inputs with A's reduction dim (K: axis 1, or 0 with transA) and B's (axis 0, or 1 with transB)
    checked to be equal when the library runs where they are not provably equal (`_same_reduction`: a symbolic
    feature dim against a constant weight's). Inputs that are not two 2-D tensors are returned as they are."""
    if len(inputs) < 2 or any(not _is_tensor(x) or len(dims_of(x) or []) != 2 for x in inputs[:2]):
        return inputs
    return _same_reduction(bb, inputs, (0, 1), (0 if trans_a else 1, 1 if trans_b else 0), label)


def align_concat(bb: relax.BlockBuilder, inputs: list, axis: int) -> list:
    """Concat's tensor inputs with their dims off the concatenation axis made the same expressions: where one is
    static, or another symbol names it (`[B, 16, 16]` beside `[3, 16, 48]`, two graph inputs' unrelated batches),
    the input is match_cast to the first static dim (else the first input's), which the VM checks when it runs
    (onnxruntime refuses such a mismatch too). TVM could not infer the result's shape, and the build failed on
    the unlowered concat. Inputs returned as they are when their shapes are unknown, ranks differ, or two static
    dims conflict (the converter reports that). (The check: a reshape to the aligned dims after a match_cast of
    the flat input to their size, `ops.shape`'s checked reshape; a match_cast of the input itself is dropped by
    TVM's CanonicalizeBindings when the input is a function parameter.)"""
    from .ops.shape import checked_reshape
    dims = [dims_of(x) if _is_tensor(x) else None for x in inputs]
    known = [d for x, d in zip(inputs, dims, strict=True) if _is_tensor(x)]
    if len(known) < 2 or any(d is None for d in known) or len({len(d) for d in known}) != 1:
        return inputs
    rank = len(known[0])
    ax = axis % rank if rank else 0
    target = []
    for i in range(rank):
        column = [d[i] for d in known]
        static = {c for c in column if _static(c)}
        if i != ax and len(static) > 1:
            return inputs
        target.append(next(iter(static)) if static else column[0])
    if all(i == ax or dims_equal(d[i], target[i]) for d in known for i in range(rank)):
        return inputs
    aligned = type(inputs)()
    for x, d in zip(inputs, dims, strict=True):
        if d is not None and any(i != ax and not dims_equal(d[i], target[i]) for i in range(rank)):
            x = bb.emit(checked_reshape(bb, x, d, [d[i] if i == ax else target[i] for i in range(rank)]))
        aligned.append(x)
    return aligned


def result_dims(shapes: list[list]) -> list | None:
    """The ONNX broadcast of `shapes` (ints, or TIR expressions where symbolic), right-aligned; None when two static
    dims other than 1 differ. Per dim: a static dim other than 1 wins (a symbolic one must be 1 or equal to it);
    else the symbolic dims not provably equal combine as max(a, b) * min(a, b, 1) (a if b is 1, b if a is 1, 0
    when one is 0 and the other 1)."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        fixed = {d for d in dims if _static(d) and d != 1}
        if len(fixed) > 1:
            return None
        if fixed:
            out.append(fixed.pop())
            continue
        result = 1
        for d in dims:
            if _static(d) or dims_equal(d, result):
                continue
            result = d if _static(result) else tirx.max(result, d) * tirx.min(tirx.min(result, d), 1)
        out.append(_simplify(result))
    return out


def broadcast_to(bb: relax.BlockBuilder, x, shape: list):
    """x (a Relax tensor of known dims) broadcast to `shape` (ints or TIR expressions, rank >= x's), as ONNX
    Expand / broadcasting define it. `relax.op.broadcast_to` where every dim of x is 1 or provably equal to the
    target's; otherwise a kernel that reads index 0 along each dim that is 1 when it runs, after a run-time check
    that each such dim is 1 or the target's (the VM raises otherwise)."""
    dims = dims_of(x)
    target = list(shape)
    if not _risky(dims, target):
        return bb.emit(relax.op.broadcast_to(x, relax.ShapeExpr(target)))
    return bb.emit_te(_broadcast_kernel, x, _run_time_check(bb, dims, target, dtype_of(x)), target,
                      primfunc_name_hint="broadcast_symbolic")


def _risky(dims: list, target: list) -> bool:
    """Some dim of `dims` (right-aligned against `target`) is neither a static 1 nor provably the target's."""
    tail = target[len(target) - len(dims):]
    return any(not (_static(d) and d == 1) and not dims_equal(d, t) for d, t in zip(dims, tail, strict=True))


def _run_time_check(bb: relax.BlockBuilder, dims: list, target: list, dtype: str):
    """An empty tensor whose match_cast to [0] fails when it runs unless every risky dim d of `dims` is 1 or its
    target t: its size is the sum over them of min(|d - 1|, |d - t|)."""
    tail = target[len(target) - len(dims):]
    terms = [tirx.min(tirx.max(d - 1, 1 - d), tirx.max(d - t, t - d))
             for d, t in zip(dims, tail, strict=True) if not (_static(d) and d == 1) and not dims_equal(d, t)]
    size = terms[0]
    for term in terms[1:]:
        size = size + term
    empty = bb.normalize(relax.op.zeros(relax.ShapeExpr([_simplify(size)]), dtype))
    return bb.match_cast(empty, relax.TensorType([0], dtype))


def _broadcast_kernel(x: te.Tensor, _check: te.Tensor, shape: list) -> te.Tensor:
    """TE: out[i...] = x[j...], where j is 0 along a dim of x that is 1 (statically or when it runs) and i
    otherwise. `_check` (the run-time check, an empty tensor) is an argument only, so that it runs first."""
    rank, offset = len(shape), len(shape) - len(x.shape)

    def element(*idx):
        src = []
        for d, t, i in zip(x.shape, shape[offset:], idx[offset:], strict=True):
            zero = tirx.const(0, str(i.ty))
            if _static(_simplify(d)) and int(_simplify(d)) == 1:
                src.append(zero)
            elif dims_equal(d, t):
                src.append(i)
            else:
                src.append(tirx.Select(d == 1, zero, i))
        return x(*src)

    return te.compute([shape[i] for i in range(rank)], element, name="broadcast_symbolic")


def _is_tensor(x) -> bool:
    return x is not None and isinstance(getattr(x, "ty", None), relax.TensorType)


def _static(d) -> bool:
    return isinstance(d, int)


def _simplify(d):
    """A dim simplified, as an int when it is constant."""
    if _static(d):
        return d
    from tvm.sym.analyzer import Analyzer

    s = Analyzer().simplify(d)
    return int(s.value) if isinstance(s, tirx.IntImm) else s


def dims_equal(a, b) -> bool:
    """Whether two dims (ints or TIR expressions of the same symbols) are provably equal."""
    if _static(a) and _static(b):
        return a == b
    diff = _simplify(a - b)
    return _static(diff) and diff == 0
