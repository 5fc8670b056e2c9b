"""Relax-level rewrites of expensive elementwise math into vectorizable forms (before legalization).

LLVM lowers ``exp``, ``erf`` and ``tanh`` to one scalar libm call per element: in a BERT-like model the
softmax and the Erf of GELU take longer than the matmuls. With fast math (the default of ``optc compile``;
``--no-fast-math`` / ``fast_math=False`` turns it off) this pass uses TOPI's polynomial versions, which
vectorize, float32 only:

* ``exp`` and ``softmax`` -> ``topi.fast_exp`` / ``topi.nn.fast_softmax`` (a row whose length is not a multiple
  of 16, or symbolic as attention scores' are: ``softmax.lane_partial_softmax``, the same values summed in
  vectorizable partials);
* ``sigmoid`` -> ``1 / (1 + t)`` for x >= 0 and ``t / (1 + t)`` below, t = ``topi.fast_exp(-|x|)`` (libm's form
  calls expf once per element: the Llama-style SwiGLU gate kernel took 3x its matmul);
* ``tanh`` -> ``topi.fast_tanh`` (Eigen's rational approximation) with Eigen's small-|x| branch put back
  (tanh x = x below 2^-12), clamped to [-1, 1], NaN passed through;
* ``erf`` -> TOPI's fast_erf polynomial in one elementwise expression, with NaN passed through
  (``topi.fast_erf`` maps NaN to 1), erf x = 2x/sqrt(pi) below 2^-12, clamped to [-1, 1];
* ``nn.gelu`` / ``nn.gelu_tanh`` (ONNX Gelu, its two approximations) -> TVM's own legalization of them with the
  fast erf / tanh above in place of libm's (a fused Gelu's matmul kernel took 2.5x the decomposed erf's);
* ``power(x, 2)`` with a constant exponent -> ``x * x`` (exact: x * x is pow(x, 2) correctly rounded; also
  without fast math); ``power(x, 3)`` (tanh-form GELU's x^3) -> ``(x * x) * x`` with fast math (two roundings:
  within 2 ulp of pow's correctly rounded result for normal results; NaN, +-inf and signed zeros as pow; libm's
  powf is a scalar call per element: GPT-2-like's GELU kernel took 28% of its run time).

Max error in float32 ulp against a float64 reference, measured by ``benchmarks/fast_math_ulp.py`` over one
float32 bit pattern in every 16 (2^28 inputs, all low-bit residues, plus the special values) on an AMD EPYC
(LLVM -mcpu=znver3, AVX2 + FMA); the table is in benchmarks/RESULTS.md, "Fast math", and the bounds in
``MAX_ULP`` (tests/test_fast_math.py checks them on a sample):

=======  ==============  ===============================================================================
op       max ulp (fast)  special values and what is not counted in the ulp figure
=======  ==============  ===============================================================================
exp      4.55            NaN -> NaN, +-inf -> inf / 0; overflows to inf from x = 88.38 (libm: 88.72, so
                         exp(88.38..88.72) = 2.4e38..3.4e38 comes out inf); results below the normal
                         range flush to 0 from x = -87.68 (libm returns subnormals down to -103.97)
softmax  4.48            as exp (the error is fast_exp's; rows [x, 0]); subnormal results flush to 0
tanh     4.67            NaN -> NaN, +-inf -> +-1, +-0 and subnormals exact, |result| <= 1
erf      5.57            NaN -> NaN, +-inf -> +-1, +-0 kept, |result| <= 1
sigmoid  4.48            NaN -> NaN, +-inf -> 1 / 0, +-0 -> 0.5; results below the normal range flush to 0
                         from x = -87.68 (measured on znver5; libm's form: 2.32 ulp, flushing from -88.72)
=======  ==============  ===============================================================================

Without fast math: exp 0.50 and erf 0.92 ulp (glibc's expf / erff), tanh correctly rounded (libm's double
tanh, see ``fast_math_pass``), softmax 2.36 ulp on rows [x, 0]; subnormal results are kept.
"""

from __future__ import annotations

import numpy as np

# TOPI's fast_erf coefficients (Eigen): erf(x) ~ x * P(x^2) / Q(x^2) for x clamped to [-4, 4]
_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
              -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
             -1.42647390514189e-02)
_TINY = 2.0**-12
_TWO_OVER_SQRT_PI = 1.1283791670955126


def fast_math_pass(enabled: bool = True):
    """The module pass (a function, so that importing optc does not import TVM).

    ``enabled=False`` (``--no-fast-math``): exp, softmax and erf stay as they are (LLVM calls libm's expf / erff),
    and tanh becomes a call to libm's double tanh, rounded once to float32 (TVM's own llvm lowering of tanh,
    (1 - e^-2x) / (1 + e^-2x), loses every bit near 0: tanh(1e-8) = 0; glibc's tanhf is off by up to 2 ulp).
    ``power(x, 2) -> x * x`` is exact and applies either way.
    """
    import tvm  # noqa: PLC0415
    from tvm import relax, te, topi  # noqa: PLC0415
    from tvm.relax import expr_functor  # noqa: PLC0415

    from ..lowering.converters import dims_of  # noqa: PLC0415
    from .softmax import is_ragged_row, lane_partial_softmax  # noqa: PLC0415

    def libm_tanh(x):
        """tanh as a call of the C library's double tanh per element (float32: on the promoted value, rounded
        back once, which is correctly rounded but for near-ties; glibc's tanhf alone is off by up to 2 ulp)."""
        tirx = tvm.tirx

        def f(*i):
            v = x(*i)
            if x.dtype == "float64":
                return tirx.call_pure_extern("float64", "tanh", v)
            return tirx.Cast(x.dtype, tirx.call_pure_extern("float64", "tanh", tirx.Cast("float64", v)))

        return te.compute(x.shape, f, name="tanh_libm", tag="elemwise")

    def f32(value):
        return relax.const(np.float32(value))

    def tiny(x):
        """|x| < 2^-12: where tanh(x) rounds to x and erf(x) to x * 2/sqrt(pi) (relative error x^2/3 < 2^-25);
        the polynomials would lose precision there to subnormal intermediates (x * p(x^2) underflows)."""
        return relax.op.less(relax.op.abs(x), f32(_TINY))

    def nan_safe_fast_erf(x):
        """TOPI's fast_erf polynomial (Eigen's rational approximation on [-4, 4]) as elementwise Relax ops,
        which fuse and inline into the producing kernel like erf did, with NaN passed through, the small-|x|
        branch and the result clamped to [-1, 1] (the polynomial reaches 1.0000004 near |x| = 4)."""
        op = relax.op
        c = op.clip(x, -4.0, 4.0)
        c2 = op.multiply(c, c)
        p, q = f32(_ERF_ALPHA[0]), f32(_ERF_BETA[0])
        for a in _ERF_ALPHA[1:]:
            p = op.add(op.multiply(p, c2), f32(a))
        for b in _ERF_BETA[1:]:
            q = op.add(op.multiply(q, c2), f32(b))
        poly = op.where(op.isnan(x), x, op.clip(op.divide(op.multiply(c, p), q), -1.0, 1.0))
        return op.where(tiny(x), op.multiply(x, f32(_TWO_OVER_SQRT_PI)), poly)

    def fast_sigmoid(builder, x):
        """sigmoid through fast_exp: with t = exp(-|x|) in (0, 1], 1 / (1 + t) for x >= 0 and t / (1 + t) below
        (no overflow, no cancellation); NaN -> NaN (fast_exp passes it), +-inf -> 1 / 0, +-0 -> 0.5, results
        below the normal range flush to 0 (fast_exp's)."""
        op = relax.op
        t = builder.call_te(topi.fast_exp, builder.emit(op.negative(op.abs(x))))
        d = op.add(f32(1.0), t)
        return op.where(op.greater_equal(x, f32(0.0)), op.divide(f32(1.0), d), op.divide(t, d))

    def fast_tanh(builder, x):
        """TOPI's fast_tanh (Eigen's rational approximation, without Eigen's small-|x| branch: added back),
        clamped to [-1, 1] (the polynomial reaches 1.0000002 near |x| = 8.5), NaN passed through."""
        op = relax.op
        poly = op.clip(builder.call_te(topi.fast_tanh, x), -1.0, 1.0)
        return op.where(op.logical_or(tiny(x), op.isnan(x)), x, poly)

    def _dtype(expr) -> str | None:
        ty = getattr(expr, "ty", None)
        return ty.dtype if isinstance(ty, relax.TensorType) else None

    def _exponent(expr) -> float | None:
        """The value of a one-element floating-point constant (a broadcast exponent), else None."""
        if not isinstance(expr, tvm.ir.expr.Constant):
            return None
        value = getattr(expr, "value", None)
        if not hasattr(value, "numpy"):
            return None
        value = value.numpy()
        return float(value.reshape(())) if value.size == 1 and np.issubdtype(value.dtype, np.floating) else None

    def _one_element(expr) -> bool:
        dims = dims_of(expr)
        return _dtype(expr) == "float32" and dims is not None and all(
            isinstance(d, int | tvm.tirx.IntImm) and int(d) == 1 for d in dims)

    @expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _bound(self, expr, op: str):
            """The call `op` that the dataflow var `expr` is bound to, else None."""
            value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
            return value if isinstance(value, relax.Call) and getattr(value.op, "name", None) == op else None

        def _ragged_softmax(self, x):
            """`lane_partial_softmax` of x; of a crop of a padded matmul output (qinteger's `crop_last_axis`: the
            integer Q K^T of 197 columns padded to 208), optionally dequantized (`(v - zero_point) * scale`,
            one-element constants), it reads the padded rows' first n elements in place and applies the
            dequantization as its prologue: two kernels fewer (ViT-like int8 -4%). The same float32 operations on
            the same values: exact."""
            rows_n = dims_of(x)
            source, steps = x, []
            mul = self._bound(source, "relax.multiply")
            if mul is not None and _one_element(mul.args[1]):
                steps.insert(0, ("multiply", mul.args[1]))
                source = mul.args[0]
                sub = self._bound(source, "relax.subtract")
                if sub is not None and _one_element(sub.args[1]):
                    steps.insert(0, ("subtract", sub.args[1]))
                    source = sub.args[0]
            padded = self._uncropped(source, rows_n)
            if padded is None:  # (the DQ alone fuses into its producer's kernel: nothing to save)
                return self.builder_.call_te(lane_partial_softmax, x)
            n = int(rows_n[-1])

            def softmax(v, *constants):
                def prologue(value):
                    for (kind, _), c in zip(steps, constants, strict=True):
                        operand = c(*[0] * len(c.shape))
                        value = value - operand if kind == "subtract" else value * operand
                    return value

                return lane_partial_softmax(v, n=n, prologue=prologue if steps else None)

            return self.builder_.call_te(softmax, padded, *[c for _, c in steps],
                                         primfunc_name_hint="lane_partial_softmax")

        def _uncropped(self, expr, dims):
            """The padded tensor P when `expr` is reshape(crop_last_axis(reshape(P, [rows, W])), dims) with P's
            leading dims those of `dims` (its rows, each longer than dims[-1]); else None."""
            outer = self._bound(expr, "relax.reshape")
            crop = self._bound(outer.args[0], "relax.call_tir") if outer is not None else None
            if crop is None or not crop.args[0].name_hint.startswith("crop_last_axis") or \
                    not isinstance(crop.args[1], relax.Tuple) or len(crop.args[1].fields) != 1:
                return None
            inner = self._bound(crop.args[1].fields[0], "relax.reshape")
            padded = inner.args[0] if inner is not None else None
            padded_dims = dims_of(padded) if padded is not None else None
            if padded_dims is None or _dtype(padded) != "float32" or len(padded_dims) != len(dims) or \
                    not all(isinstance(d, int | tvm.tirx.IntImm) for d in padded_dims) or \
                    [int(d) for d in padded_dims[:-1]] != [int(d) for d in dims[:-1]] or \
                    int(padded_dims[-1]) <= int(dims[-1]):
                return None
            return padded

        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", None)
            if op is None or not call.args:
                return call
            dtype = _dtype(call.args[0])
            x = call.args[0]
            exponent = _exponent(call.args[1]) if op == "relax.power" and dtype == "float32" else None
            if exponent == 2.0:
                return relax.op.multiply(x, x)  # exact: x * x is pow(x, 2) correctly rounded
            if exponent == 3.0 and enabled:
                return relax.op.multiply(relax.op.multiply(x, x), x)
            if not enabled:
                if op == "relax.tanh" and dtype in ("float32", "float64"):
                    return self.builder_.call_te(libm_tanh, x)
                return call
            if dtype != "float32":
                return call
            if op == "relax.nn.softmax":
                if is_ragged_row(tuple(dims_of(x) or ()), int(call.attrs.axis)):
                    return self._ragged_softmax(x)
                return self.builder_.call_te(topi.nn.fast_softmax, x, int(call.attrs.axis))
            if op == "relax.exp":
                return self.builder_.call_te(topi.fast_exp, x)
            if op == "relax.tanh":
                return fast_tanh(self.builder_, x)
            if op == "relax.sigmoid":
                return fast_sigmoid(self.builder_, x)
            if op == "relax.erf":
                return nan_safe_fast_erf(x)
            if op == "relax.nn.gelu":  # TVM's legalization of Gelu, its erf the fast one
                erf = nan_safe_fast_erf(self.builder_.emit(relax.op.multiply(x, f32(0.5**0.5))))
                return relax.op.multiply(x, relax.op.add(f32(0.5), relax.op.multiply(erf, f32(0.5))))
            if op == "relax.nn.gelu_tanh":  # likewise, its tanh the fast one
                inner = relax.op.multiply(relax.op.multiply(f32(np.sqrt(2.0 / np.pi)), x), relax.op.add(
                    f32(1.0), relax.op.multiply(relax.op.multiply(f32(0.044715), x), x)))
                tanh = fast_tanh(self.builder_, self.builder_.emit(inner))
                return relax.op.multiply(relax.op.multiply(f32(0.5), x), relax.op.add(f32(1.0), tanh))
            return call

    from .relax_rewrite import function_pass  # noqa: PLC0415

    return function_pass("optc_fast_math", _Rewriter)


OPS = ("exp", "tanh", "erf", "softmax", "sigmoid")

#: max error in float32 ulp of the fast kernels over every float32 input (benchmarks/fast_math_ulp.py;
#: subnormal results flushed to zero are not counted, see the module docstring)
MAX_ULP = {"exp": 4.55, "tanh": 4.67, "erf": 5.57, "softmax": 4.48, "sigmoid": 4.48}


def compiled_op(op: str, shape: tuple[int, ...], *, fast_math: bool = True, target: str = "cpu"):
    """`op` (one of `OPS`; softmax over the last axis) on a float32 tensor of `shape`, compiled by
    `codegen.build.build` as in a model (this pass, legalization, optc's schedules). Returns a function
    numpy array -> numpy array (for the error measurements in benchmarks/fast_math_ulp.py and the tests)."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    from .build import build  # noqa: PLC0415

    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (one of {', '.join(OPS)})")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(tuple(shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            call = relax.op.nn.softmax(x, axis=-1) if op == "softmax" else getattr(relax.op, op)(x)
            out = bb.emit_output(bb.emit(call))
        bb.emit_func_output(out)
    executable = build(bb.get(), None, target, fast_math=fast_math)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    fn = vm["main"]

    def run(a: np.ndarray) -> np.ndarray:
        return fn(tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32))).numpy()

    return run
