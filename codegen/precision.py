"""Reduced-precision compute for `optc compile --precision bf16`: Conv / MatMul / Gemm (and the matmuls of an
attention that the CPU's fused float32 attention kernel does not take) on bfloat16 operands with float32
accumulation; everything else, and the model's inputs and outputs, stay float32.

The conversion works on the lowered Relax module (before `build.prepare`): every ``relax.nn.conv1d/2d/3d`` and
``relax.matmul`` whose two operands are float32 gets both operands rounded to bfloat16 and ``out_dtype="float32"``.
Weights are constants, so their rounding is folded at compile time (the library stores them as bfloat16: half
the bytes). TVM legalizes ``matmul(bf16, bf16, out_dtype="float32")`` and ``conv*d(..., out_dtype="float32")``
as ``sum(float32(a) * float32(b))`` (``relax/transform/legalize_ops/linear_algebra.py`` ``_matmul``,
``topi.nn.conv``): each product of two 8-bit-significand values is exact in float32 and the sum is a float32 sum.
Like OpenVINO's bf16 inference precision (all Conv / MatMul in bf16), no layer is kept float32 by position (first
conv, last gemm) or by reduction length: the bound below is relative to ``sum_k |a_k||b_k|`` whatever K is.
A call stays float32 when an operand is not float32 (float16 / float64 models, integer matmuls).

Error bound (per output element y = sum_k a_k b_k, u = 2^-8 the unit roundoff of bfloat16's 8 significant bits):
rounding a and b to bfloat16 gives a~ = a(1 + d1), b~ = b(1 + d2) with |d1|, |d2| <= u, so each product has
relative error |d1 + d2 + d1 d2| <= 2u + u^2; the float32 accumulation of K terms adds at most
gamma_K = K u32 / (1 - K u32) (u32 = 2^-24; Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5)::

    |y_bf16 - y_fp32| <= (2u + u^2) * sum_k |a_k||b_k| + gamma_K * (1 + (1 + u)^2) * sum_k |a_k||b_k|

(the last term: the float32 accumulation of both results, the bf16 one over products up to (1 + u)^2 larger;
`error_bound` computes it). Outside bfloat16's normal range the rounding error is not relative: a subnormal
operand (|x| < 2^-126) is rounded with an absolute error up to 2^-134, and |x| >= (2 - 2^-8) * 2^127 rounds to
infinity (as in ml_dtypes); the bound does not cover those.

The Relax-level conversion also reaches the matmuls that optc's lowering emits for other ops: the gates of
RNN / GRU / LSTM, DFT / STFT as a matrix product, LinearAttention. Each such matmul keeps the bound above, but a
recurrence compounds it over its time steps.

Rounding float32 -> bfloat16 is round-to-nearest-even on the bits, NaN kept NaN (quiet, sign kept) and infinities
kept, as ``ml_dtypes.bfloat16`` does. TVM's own ``astype(x, "bfloat16")`` is not used: on x86 it turns a NaN with
a small payload into infinity (0x7f800001 -> 0x7f80) and 0x7fffffff into -0.0 (measured on TVM 0.27).

Speed: plain TVM CPU code computes bfloat16 by widening to float32 (no vdpbf16ps; see shared/TVM-NOTES.md
"Reduced precision on x86"). On a CPU with AMX-BF16 the conv / matmul kernels that fit an AMX block
(``int8_kernels.Int8Reduction``, ``amx.py``) run on ``tdpbf16ps`` tiles instead; with AVX512-BF16 (AMD Zen 4,
Intel Cooper Lake and the AMX CPUs) the others that fit 16-lane vectors run on ``vdpbf16ps`` (``bf16_dot.py``).
Both accumulate in float32 (the order of the float32 sum differs, which the bound above allows for any order),
with denormal operands and results flushed to zero (Intel SDM, TDPBF16PS / VDPBF16PS: DAZ/FTZ): an absolute error
up to 2^-126 per term, outside the relative bound like the subnormal operands above. `native_bf16` says whether
the target has either.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import OptcError

PRECISIONS = ("fp32", "bf16")
BF16_UNIT_ROUNDOFF = 2.0**-8
FP32_UNIT_ROUNDOFF = 2.0**-24
_CONVERTED_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")
_NATIVE_FEATURES = ("amx-bf16", "avx512bf16")
EMULATED_NOTE = "bf16 emulated: this CPU has neither AMX-BF16 nor AVX512-BF16; expect no speed-up over fp32"
NATIVE_NOTE = ("bf16 emulated: the target has bfloat16 dot-product instructions, but no kernel of this model fits "
               "them (N a multiple of 16, K even, the activation a kernel input); they widen bfloat16 to float32")
AMX_NOTE = ("bf16 on AMX: {amx} kernels on tdpbf16ps tiles (float32 accumulation; denormal operands and results "
            "flushed to zero); any others widen bfloat16 to float32")
DOT_NOTE = ("bf16 on AVX512-BF16: {dot} kernels on vdpbf16ps (float32 accumulation; denormal operands and results "
            "flushed to zero); any others widen bfloat16 to float32")
BOTH_NOTE = ("bf16 on AMX: {amx} kernels on tdpbf16ps tiles, {dot} on AVX512-BF16 vdpbf16ps (float32 accumulation; "
             "denormal operands and results flushed to zero); any others widen bfloat16 to float32")


def check_precision(precision: str, target) -> None:
    """OptcError (one line) for an unknown precision, or bf16 for a non-CPU target (only the LLVM CPU path is
    built and tested with bf16)."""
    from .targets import target_kind  # noqa: PLC0415

    if precision not in PRECISIONS:
        raise OptcError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "bf16" and target_kind(target) not in ("cpu", "arm64"):
        raise OptcError(f"--precision bf16 is supported for CPU targets (cpu, arm64, llvm), not "
                        f"{target_kind(target)}")


def native_bf16(target) -> bool:
    """Whether the target CPU has the bfloat16 instructions optc's kernels use (x86 AMX-BF16 or AVX512-BF16)."""
    from .targets import llvm_features  # noqa: PLC0415

    return any(f in _NATIVE_FEATURES for f in llvm_features(target))


def error_bound(abs_products: np.ndarray, k: int) -> np.ndarray:
    """The bound on |y_bf16 - y_fp32| for outputs with ``sum_k |a_k||b_k| = abs_products`` (float64) over a
    reduction of length ``k`` (see the module docstring)."""
    u = BF16_UNIT_ROUNDOFF
    gamma = k * FP32_UNIT_ROUNDOFF / (1 - k * FP32_UNIT_ROUNDOFF)
    return (2 * u + u * u + gamma * (1 + (1 + u) ** 2)) * np.asarray(abs_products, np.float64)


def _round_to_bfloat16(x):
    """TE: float32 tensor -> bfloat16 tensor, round-to-nearest-even on the bits, NaN kept (quiet, sign kept)."""
    from tvm import te, tirx  # noqa: PLC0415

    def element(*i):
        v = x(*i)
        bits = tirx.reinterpret("uint32", v)
        lsb = (bits >> tirx.const(16, "uint32")) & tirx.const(1, "uint32")
        rounded = (bits + tirx.const(0x7FFF, "uint32") + lsb) >> tirx.const(16, "uint32")
        quiet_nan = (bits >> tirx.const(16, "uint32")) | tirx.const(0x40, "uint32")
        return tirx.reinterpret("bfloat16", tirx.if_then_else(tirx.isnan(v), quiet_nan, rounded).astype("uint16"))

    return te.compute(x.shape, element, name="round_to_bfloat16")


def _fits_dot_products(conv) -> bool:
    """Whether a Relax NCHW-family convolution can run on the bf16 dot-product kernels (``int8_kernels``): one
    group, output channels a multiple of 16, an even number of input channels, static shapes."""
    from tvm import relax  # noqa: PLC0415

    w = conv.args[1].ty.shape
    if not isinstance(w, relax.ShapeExpr) or not all(hasattr(d, "value") for d in w.values):
        return False
    out_channels, in_channels = int(w.values[0].value), int(w.values[1].value)
    return (int(conv.attrs.groups) == 1 and out_channels % 16 == 0 and in_channels % 2 == 0
            and str(conv.attrs.data_layout) in ("NCW", "NCHW", "NCDHW"))


def _ragged_rows(matmul) -> int:
    """Zero rows to append to a bf16 matmul's activation so that a register tile height divides its rows: 0 when
    one already does, or when the matmul does not fit the dot-product kernels (a constant 2-D weight of a
    multiple of 16 columns and an even K, an activation of rank >= 2 and static K); -1 for symbolic rows (padded
    to a multiple of MAX_TILE_ROWS at run time)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.ir.expr import Constant  # noqa: PLC0415

    from .schedules import MAX_TILE_ROWS, rows_divide_into_tiles  # noqa: PLC0415

    a, b = matmul.args[0].ty.shape, matmul.args[1].ty.shape
    if not isinstance(matmul.args[1], Constant) or not isinstance(a, relax.ShapeExpr) or len(a.values) < 2:
        return 0
    if not all(hasattr(d, "value") for d in [a.values[-1], *b.values]) or len(b.values) != 2:
        return 0
    k, n = (int(d.value) for d in b.values)
    if n % 16 or k % 2:
        return 0
    if not hasattr(a.values[-2], "value"):  # symbolic rows (a dynamic sequence length): padded at run time
        return -1
    m = int(a.values[-2].value)
    if m <= MAX_TILE_ROWS or rows_divide_into_tiles(m):
        return 0
    return -m % MAX_TILE_ROWS


def to_bfloat16(mod, target=None, *, fast_math: bool = True, separate_padding: bool = False) -> tuple[object, dict]:
    """Convert the Conv / MatMul compute of the Relax functions of ``mod`` to bfloat16 operands with float32
    accumulation. Attention (the Attention converter's carrier calls): where `target` is a CPU that the fused
    attention kernel (``attention.fused_attention_pass``, exp per `fast_math`) takes, it stays that float32 kernel
    (more exact, and faster than two bf16 matmuls around a softmax in memory: BERT-like 4.06 -> 3.92 ms on a Zen 4);
    elsewhere it becomes its decomposition, whose two matmuls are converted. ``separate_padding`` (for targets
    with bf16 dot-product instructions, ``native_bf16``): the zero padding of a convolution that fits those kernels becomes an ``nn.pad`` of the bf16 input, so that the
    kernel reads its input with bf16 storage (the same values: padding with 0 commutes with rounding 0 to bf16);
    a matmul whose rows no tile height divides gets zero rows appended (``_ragged_rows``) and its result cropped.

    Returns ``(module, summary)``: ``summary["converted"]`` counts the calls converted to bf16 by op
    (``{"conv2d": 3, "matmul": 2}``), ``summary["kept_float32"]`` the calls left as they were, by reason
    (``{"matmul: operands float64": 1}``, ``{"attention: fused float32 kernel": 4}``). The module's inputs and
    outputs keep their types."""
    from tvm import relax, tirx  # noqa: PLC0415
    from tvm.relax.expr_functor import PyExprMutator, mutator  # noqa: PLC0415

    from ..lowering.symbolic_pad import crop_to, pad_to  # noqa: PLC0415
    from .attention import fused_attention_pass  # noqa: PLC0415
    from .relax_rewrite import rewrite_functions  # noqa: PLC0415
    from .schedules import MAX_TILE_ROWS  # noqa: PLC0415

    attention: Counter[str] = Counter()
    mod = fused_attention_pass(target, fast_math, attention)(mod)
    converted: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    if attention["kernel"]:
        kept["attention: fused float32 kernel"] = attention["kernel"]

    @mutator
    class _ToBF16(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            op_name = getattr(call.op, "name", "")
            if op_name not in _CONVERTED_OPS:
                return call
            short = op_name.rsplit(".", 1)[-1]
            dtypes = sorted({str(a.ty.dtype) for a in call.args[:2]} | {str(call.ty.dtype)})
            if dtypes != ["float32"]:
                kept[f"{short}: operands {'/'.join(dtypes)}"] += 1
                return call
            a, b = (self.builder_.emit_te(_round_to_bfloat16, x, primfunc_name_hint="round_to_bfloat16")
                    for x in call.args[:2])
            converted[short] += 1
            if short == "matmul":
                rows = _ragged_rows(call) if separate_padding else 0
                if not rows:
                    return relax.op.matmul(a, b, out_dtype="float32")
                rank = len(call.args[0].ty.shape.values)
                if rows < 0:  # symbolic rows: the same, by kernels of their own (a dynamic-axes export: its bf16
                    m = call.args[0].ty.shape.values[-2]  # matmuls ran emulated, slower than float32)
                    padded = pad_to(self.builder_, a, rank - 2, tirx.floordiv(m + MAX_TILE_ROWS - 1, MAX_TILE_ROWS)
                                    * MAX_TILE_ROWS)
                    y = self.builder_.emit(relax.op.matmul(padded, b, out_dtype="float32"))
                    return crop_to(self.builder_, y, rank - 2, m)
                # rows that no register tile height divides (ViT's 197 tokens): padded with zero rows to whole
                # tiles on the bf16 input and cropped after (the padded rows' products are never read)
                width = [0] * (2 * rank)
                width[2 * (rank - 2) + 1] = rows
                padded = self.builder_.emit(relax.op.nn.pad(a, width))
                y = self.builder_.emit(relax.op.matmul(padded, b, out_dtype="float32"))
                m = int(call.args[0].ty.shape.values[-2].value)
                return relax.op.strided_slice(y, axes=[rank - 2], begin=[0], end=[m])
            attrs = call.attrs
            padding = [int(p) for p in attrs.padding]
            if separate_padding and any(padding) and _fits_dot_products(call):
                # the zero padding as a kernel of its own, on the bf16 input: the convolution then reads a kernel
                # input, which keeps its 2-byte bf16 storage (its own padded buffer would be stored as float32
                # and widen the whole kernel to float32 FMAs)
                n = len(padding) // 2
                width = [0, 0, 0, 0] + [p for i in range(n) for p in (padding[i], padding[n + i])]
                a = self.builder_.emit(relax.op.nn.pad(a, width))
                padding = [0] * len(padding)
            conv = getattr(relax.op.nn, short)
            return conv(a, b, strides=attrs.strides, padding=padding, dilation=attrs.dilation,
                        groups=attrs.groups, data_layout=attrs.data_layout, kernel_layout=attrs.kernel_layout,
                        out_layout=attrs.out_layout, out_dtype="float32")

    out = relax.transform.FoldConstant()(rewrite_functions(mod, _ToBF16(mod)))  # weights rounded once, at compile time
    return out, {"converted": dict(converted), "kept_float32": dict(kept)}


def bf16_kernels(model, kernels: dict) -> dict:
    """`kernels` (``rewrites.rules.qinteger.kernel_summary`` of the optimized `model`) for a bf16 build: the float
    Conv / MatMul / Gemm on float32 inputs are counted as bfloat16 (``to_bfloat16`` converts every one of them);
    the rest keep their entry."""
    from ..ir.types import DataType  # noqa: PLC0415
    from ..rewrites.rules.qinteger import _label  # noqa: PLC0415 - the label kernel_summary keys its reasons by

    out = {**kernels, "float_reasons": dict(kernels["float_reasons"])}
    for g in model.graphs():
        for n in g:
            label = _label(n) if n.outputs else None
            if label in out["float_reasons"] and n.inputs and n.inputs[0] is not None \
                    and n.inputs[0].dtype == DataType.FLOAT:
                del out["float_reasons"][label]
                out["float"] -= 1
                out["bfloat16"] += 1
    return out


def describe_precision(summary: dict) -> str:
    """The compile summary's two lines for a bf16 build: what computes in bf16 (what stayed as it was, and why),
    then how the kernels run: on AMX tiles (``amx``: how many kernels) and / or AVX512-BF16 ``vdpbf16ps``
    (``avx512bf16``: how many), or emulated (widened to float32) on a CPU without either or where no kernel fits
    them. `summary`: ``to_bfloat16``'s plus ``native``, ``amx`` and ``avx512bf16``."""

    def counts(d: dict) -> str:
        return ", ".join(f"{n} {op}" for op, n in sorted(d.items())) or "none"

    line = f"bf16: {counts(summary['converted'])} on bfloat16 operands with float32 accumulation"
    if summary["kept_float32"]:
        line += f"; not converted: {counts(summary['kept_float32'])}"
    amx, dot = summary.get("amx", 0), summary.get("avx512bf16", 0)
    if amx or dot:
        note = BOTH_NOTE if amx and dot else AMX_NOTE if amx else DOT_NOTE
        return f"{line}\n{note.format(amx=amx, dot=dot)}"
    return f"{line}\n{NATIVE_NOTE if summary['native'] else EMULATED_NOTE}"
