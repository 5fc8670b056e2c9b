"""Differential testing: random small ONNX graphs computed three ways must agree.

Hypothesis builds a graph of 1-5 ops (elementwise unary, broadcasting binary, comparisons + Where, reductions,
shape ops, Cast, Clip, MatMul) over float32/float64/int32/int64 tensors of rank 0-3 (zero-size dims included),
with values that include NaN, +-inf, +-0.0, subnormals and int64 beyond 2^53; operands are graph inputs or
initializers (so the constant folder sees whole and partial constant graphs). Each graph is checked with
onnx.checker (full check: strict shape inference) and run

  (a) on onnxruntime with every graph optimization off: the reference;
  (b) after `optc.optimize(level=3)`, exported to ONNX, on onnxruntime (optimizations off again);
  (c) through `optc.compile(model).run(...)` (a clean `UnsupportedError` refusal is not a failure).

Comparison (`_compare`): integers and bools exactly; floats with NaN at the same places, infinities with the same
sign, and finite values equal with the sign of zero unless the generator marked the value "loose" (the sign of a
zero from Max/Min/Relu/Clip/Sign/Tanh/Erf/sums/MatMul is not specified by ONNX). Transcendental ops (Exp, Log,
Sigmoid, Tanh, Erf, Pow) get a relative tolerance of 1e-5; float sums (reductions, MatMul) an absolute tolerance
from the summation order's error bound. To keep every difference a real fault, the generator tracks for each
value a bound on its finite magnitudes and whether it may hold NaN/inf, and only builds graphs whose result is
defined and order-independent: no integer overflow, integer division only by nonzero constants, float->int Cast
only of finite in-range values, no sum that can overflow in one order and not another, and an approximate
(tolerance-carrying) value only flows into ops that cannot amplify its error (Neg, Abs, Relu, Max, Min, Clip,
Sigmoid/Tanh/Erf, shape ops, Where branches). Examples that onnxruntime itself rejects are dropped, and so are
those where its output shape contradicts ONNX's shape inference (some reductions and Slices of zero-size tensors);
the generator also steers around onnxruntime's own wrong answers (MatMul with K = 0 leaves its output
uninitialized; Clip with a missing bound clamps +-inf to the largest finite value).

A failure prints the model (onnx.printer text), its inputs, and expected vs got for each output.

Budgets: CI (the default) runs a fixed, derandomized set of examples, `CI_OPTIMIZE_EXAMPLES` on the optimize path
and `CI_COMPILE_EXAMPLES` on the compile path (~1 s each through TVM). A local hunt, with fresh random examples:
    OPTC_DIFF_EXAMPLES=2000 python -m pytest -q tests/test_differential.py -p no:cacheprovider
(`OPTC_DIFF_COMPILE_EXAMPLES` sets the compile path's count separately; `OPTC_DIFF_SEED=N` fixes the seed.)

Faults found and not fixed yet are listed in `KNOWN_FAULTS` (fixed ones move to `FIXED_FAULTS`, regression tests): examples tagged with an open fault are dropped from
that path's property test, and `test_known_fault_still_reproduces` checks each fault's minimal reproducer with
xfail(strict=True), so a fix shows up as an XPASS failure and the entry must then be removed.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import HealthCheck, assume, event, given, seed, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, numpy_helper
from optc.ir.schema import get_schema

# -- budgets -----------------------------------------------------------------------------------------

CI_OPTIMIZE_EXAMPLES = 150
CI_COMPILE_EXAMPLES = 40

_HUNT = os.environ.get("OPTC_DIFF_EXAMPLES")
_HUNT_COMPILE = os.environ.get("OPTC_DIFF_COMPILE_EXAMPLES", _HUNT)
_SEED = os.environ.get("OPTC_DIFF_SEED")

settings.register_profile(
    "optc-differential-ci",
    deadline=None,
    derandomize=True,  # the same examples on every CI run
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile(
    "optc-differential-hunt",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _budget(ci_examples: int, hunt: str | None):
    """The settings of one path: the CI profile with `ci_examples`, or the hunt profile with `hunt` examples."""
    if hunt:
        s = settings(settings.get_profile("optc-differential-hunt"), max_examples=int(hunt))
        return (lambda f: seed(int(_SEED))(s(f))) if _SEED else s
    return settings(settings.get_profile("optc-differential-ci"), max_examples=ci_examples)


# -- known faults ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault this test found that is not fixed yet. Generated graphs carry tags (`Builder.tag`: an op meeting a
    NaN, a run-time axes input, ...); a path's test drops the examples whose tags name one of its open faults, so
    CI stays green without hiding the fault: `test_known_fault_still_reproduces` runs `repro` (ONNX text, inputs)
    on that path and expects it to fail (xfail, strict), so the fix shows up as an XPASS: delete the entry then."""

    tags: tuple[str, ...]  # an example carrying any of these tags is dropped
    path: str  # "optimize" or "compile"
    reason: str
    repro: str
    feeds: dict = field(default_factory=dict)


_H = '<ir_version: 8, opset_import: ["" : 18]>\n'

KNOWN_FAULTS: list[Fault] = []

# Faults this test found that are fixed: their reproducers are regression tests (test_fixed_fault_stays_fixed).
FIXED_FAULTS: list[Fault] = [
    Fault(("zero-size-shared",), "compile",
          "a zero-size tensor read by a shape op and by another op failed to build: Unsqueeze + Neg gave TVM "
          "IndexError 'Index 1 out of bounds 1', Transpose + Relu a Reshape ValueError (fixed: a kernel with a "
          "zero-size result is not built, codegen/zero_size.py)",
          _H + "g (float[0] x) => (float[1,0] y, float[0] z) <int64[1] a = {0}> { y = Unsqueeze(x, a)  z = Neg(x) }",
          {"x": np.zeros(0, np.float32)}),
    Fault(("zero-size-shared",), "compile",
          "the Transpose + Relu form of the fault above",
          _H + "g (float[2,0] x) => (float[0,2] y, float[2,0] z) { y = Transpose(x)  z = Relu(x) }",
          {"x": np.zeros((2, 0), np.float32)}),
    Fault(("empty-constant-output",), "compile",
          "a graph output that is a zero-size constant (an initializer, or a subgraph that folds to one) failed to "
          "compile: TVM InternalError 'Invalid DLTensor file format' (fixed: codegen/zero_size.py)",
          _H + "g () => (float[1,0] y) <float[1,0] c = {}> { y = Tanh(c) }"),
    Fault(("matmul-of-expand",), "compile",
          "MatMul of an Expand (of a scalar or [1] tensor) by a 1-D operand: dlight's CPU GEMV rule fails "
          "(normalize: assert s_loops) and the TVM build raises",
          _H + "g (float x) => (float[3] y) <int64[2] s = {3, 2}, float[2] b = {5, -3}> "
               "{ e = Expand(x, s)  y = MatMul(e, b) }",
          {"x": np.array(2.0, np.float32)}),
    Fault(("runtime-params:Slice",), "compile",
          "Slice with starts/ends/axes/steps fed at run time is not refused: TVM build InternalError 'There is no "
          "definition of I.GlobalVar(\"shape_func\")' (or 'emit_te now only supports Tensor that has ShapeExpr shape')",
          _H + "g (float[3] x, int64[1] s) => (float[2] y) <int64[1] e = {3}> { y = Slice(x, s, e) }",
          {"x": np.array([1.0, 2.0, 3.0], np.float32), "s": np.array([1], np.int64)}),
    Fault(("runtime-params:Unsqueeze",), "compile",
          "Unsqueeze with axes fed at run time: its result breaks the ops that use it (Unsqueeze + Mul: TVM build "
          "InternalError 'R.multiply(alloc6, z)'; + batched MatMul: TypeError 'NoneType' object is not iterable)",
          _H + "g (float[2] x, int64[1] q, float[1,2] z) => (float[1,2] y) { u = Unsqueeze(x, q)  y = Mul(u, z) }",
          {"x": np.array([1.0, 2.0], np.float32), "q": np.array([0], np.int64),
           "z": np.array([[3.0, 4.0]], np.float32)}),
    Fault(("flatten-zero-size",), "compile",
          "Flatten of a tensor with a zero-size dim returns the wrong shape ((0,3) axis=1 gives (0,0), "
          "(2,0,3) axis=2 gives (2,0))",
          _H + "g (float[0,3] x) => (float[0,3] y) { y = Flatten <axis = 1> (x) }",
          {"x": np.zeros((0, 3), np.float32)}),
    Fault(("runtime-params:Squeeze",), "compile",
          "Squeeze with axes fed at run time on constant data fails with OptcError ('NotImplementedError: Squeeze "
          "with symbolic axes not supported') instead of UnsupportedError",
          _H + "g (int64[1] q) => (float[4] y) <float[4,1] c = {1, 2, 3, 4}> { y = Squeeze(c, q) }",
          {"q": np.array([-1], np.int64)}),
    Fault(("ReduceMean:int32",), "compile",
          "ReduceMean of int32 returns int64 (the element type changes)",
          _H + "g (int32[2,3] x) => (int32 y) { y = ReduceMean <keepdims = 0> (x) }",
          {"x": np.array([[1, -2, 7], [4, 5, -3]], np.int32)}),
    Fault(("ReduceL2:int32", "ReduceL2:int64"), "compile",
          "ReduceL2 of an integer tensor crashes the lowering (TypeError: relax.sqrt of an integer tensor)",
          _H + "g (int64[2,3] x) => (int64 y) { y = ReduceL2 <keepdims = 0> (x) }",
          {"x": np.array([[1, -2, 7], [4, 5, -3]], np.int64)}),
    Fault(("nan:Sign",), "compile",
          "Sign(NaN) returns 0 in compiled code (onnxruntime and onnx.reference return NaN)",
          _H + "g (float[3] x) => (float[3] y) { y = Sign(x) }",
          {"x": np.array([np.nan, -1.0, 2.0], np.float32)}),
    Fault(("zero-scalar-const:Mul",), "compile",
          "Mul by a 0-d constant +-0.0 folds to a zero constant: inf * 0 and NaN * 0 give 0 instead of NaN, and "
          "the sign of zero is lost (-1 * 0.0 gives +0.0); a [1]-shaped constant zero is fine",
          _H + "g (float[4] x) => (float[4] y) <float c = {0}> { y = Mul(x, c) }",
          {"x": np.array([np.inf, np.nan, -1.0, 2.0], np.float32)}),
    Fault(("self-operand:Sub",), "compile",
          "Sub of a tensor by itself inside a fused kernel became 0 (TVM's simplifier: a - a -> 0, also without "
          "fast math): inf - inf gave 0 instead of NaN",
          _H + "g (float[4] x) => (float[4] y) { z = Sub(x, x)  y = Mul(z, x) }",
          {"x": np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)}),
    Fault(("self-operand:Div",), "compile",
          "Div by Sub(x, x) failed to compile (TVM: 'Check failed: fb->value != 0: Divide by zero'), and x / x "
          "became 1 in a fused kernel (0 / 0 and inf / inf are NaN)",
          _H + "g (float[5] x) => (float[5] y, float[5] w) { z = Sub(x, x)  y = Div(x, z)  q = Div(x, x)  "
               "w = Add(q, x) }",
          {"x": np.array([np.inf, 0.0, np.nan, -2.0, 3.0], np.float32)}),
    Fault(("zero-scalar-const:Div",), "compile",
          "Div by a 0-d constant 0.0 fails to compile: TVM InternalError 'Check failed: fb->value != 0: Divide by "
          "zero' (constant folding of a float division) instead of computing +-inf/NaN",
          _H + "g (float x) => (float y) <float c = {0}> { y = Div(x, c) }",
          {"x": np.array(1.5, np.float32)}),
]


def _open_faults(path: str) -> set[str]:
    return {t for f in KNOWN_FAULTS if f.path == path for t in f.tags}


# -- dtypes ------------------------------------------------------------------------------------------

F32, F64, I32, I64, BOOL = (np.dtype(t) for t in ("float32", "float64", "int32", "int64", "bool"))
NUMERIC = (F32, F64, I32, I64)
ONNX_TYPE = {F32: TensorProto.FLOAT, F64: TensorProto.DOUBLE, I32: TensorProto.INT32, I64: TensorProto.INT64,
             BOOL: TensorProto.BOOL}
SCHEMA_TYPE = {F32: "tensor(float)", F64: "tensor(double)", I32: "tensor(int32)", I64: "tensor(int64)",
               BOOL: "tensor(bool)"}
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def _isf(dt: np.dtype) -> bool:
    return dt.kind == "f"


def _isi(dt: np.dtype) -> bool:
    return dt.kind == "i"


def _imax(dt: np.dtype) -> int:
    return int(np.iinfo(dt).max)


def _fmax(dt: np.dtype) -> float:
    return float(np.finfo(dt).max)


def _eps(dt: np.dtype) -> float:
    return float(np.finfo(dt).eps)


def _tiny(dt: np.dtype) -> float:
    return float(np.finfo(dt).tiny)


TRANSCENDENTAL_RTOL = 1e-5  # exp/log/tanh/sigmoid/erf/pow may use fast approximations in codegen
SIGMOID_ATOL = 1e-7  # onnxruntime's sigmoid flushes results below ~1e-9 to 0


# -- the values of a graph being built ---------------------------------------------------------------


@dataclass
class Val:
    """A tensor of the graph and what the generator knows about it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    bound: float = 0.0  # every finite |value| <= bound (exact for integers)
    nan: bool = False  # may hold NaN
    inf: bool = False  # may hold +-inf
    loose0: bool = False  # the sign of a zero is implementation-defined
    rtol: float = 0.0  # tolerance when comparing (0, 0: exact)
    atol: float = 0.0
    node: bool = True  # a node output (not a graph input or initializer)

    @property
    def inexact(self) -> bool:
        return self.rtol > 0 or self.atol > 0

    @property
    def finite(self) -> bool:
        return not (self.nan or self.inf)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _stats(a: np.ndarray) -> dict:
    if _isf(a.dtype):
        fin = np.abs(a[np.isfinite(a)].astype(np.float64))
        return {"bound": float(fin.max()) if fin.size else 0.0, "nan": bool(np.isnan(a).any()),
                "inf": bool(np.isinf(a).any())}
    if _isi(a.dtype):
        return {"bound": max((abs(int(v)) for v in a.ravel()), default=0)}
    return {"bound": 1}


def _cap(b: float, dt: np.dtype) -> float:
    return min(float(b), _fmax(dt)) if _isf(dt) else b


# -- value strategies --------------------------------------------------------------------------------


def _float_specials(dt: np.dtype) -> list[float]:
    fi = np.finfo(dt)
    sub = float(np.nextafter(dt.type(0), dt.type(1)))
    return [0.0, -0.0, math.nan, math.inf, -math.inf, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, sub, -sub,
            float(fi.max), -float(fi.max), float(fi.tiny), 1e30, -1e30, 88.5, -104.0, 2.0**24 + 2, 1e-7]


def _int_specials(dt: np.dtype) -> list[int]:
    info = np.iinfo(dt)
    big = [2**53 + 1, -(2**53) - 1, 2**62 + 1, 2**31, -(2**31) - 1] if dt == I64 else [2**24 + 1, -(2**24) - 1]
    return [0, 1, -1, 2, -2, int(info.max), int(info.min), int(info.max) - 1, *big]


def _elements(dt: np.dtype, special: bool):
    if dt == BOOL:
        return st.booleans()
    if _isf(dt):
        if not special:
            return st.integers(-8, 8).map(lambda i: i / 2)
        width = 32 if dt == F32 else 64
        return st.one_of(st.sampled_from(_float_specials(dt)), st.floats(width=width))
    if not special:
        return st.integers(-9, 9)
    info = np.iinfo(dt)
    return st.one_of(st.sampled_from(_int_specials(dt)), st.integers(int(info.min), int(info.max)))


_DIMS = (1, 2, 3, 1, 2, 3, 4, 2, 1, 0)  # a draw shrinks to 1; 0 (a zero-size dim) one time in ten


def _dim():
    return st.sampled_from(range(len(_DIMS))).map(lambda i: _DIMS[i])


def _shape(max_rank: int = 3):
    return st.lists(_dim(), min_size=0, max_size=max_rank).map(tuple)


# -- onnxruntime -------------------------------------------------------------------------------------


@functools.cache
def _ort_options(disable_all: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if disable_all:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), _ort_options(), providers=["CPUExecutionProvider"])


def _ort_run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = _ort_session(model)
    names = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs, strict=True)}


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "differential", inputs, outputs, inits)
    opsets = [oh.make_opsetid("", opset)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=oh.find_min_ir_version_for(opsets),
                         producer_name="optc-differential")


@functools.cache
def _has_kernel(op: str, opset: int, dtypes: tuple[np.dtype, ...], out: np.dtype | None = None,
                attrs: tuple = ()) -> bool:
    """The op exists at `opset` with these input types in ONNX's op table (optc.ir.schema) and onnxruntime has a
    CPU kernel for it."""
    schema = get_schema("", op, opset)
    if schema is None:
        return False
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for formal, dt in zip(schema.inputs, dtypes, strict=False):
        allowed = constraints.get(formal.type_str, {formal.type_str})
        if SCHEMA_TYPE[dt] not in allowed:
            return False
    names = [f"i{k}" for k in range(len(dtypes))]
    ins = [oh.make_tensor_value_info(n, ONNX_TYPE[dt], [1]) for n, dt in zip(names, dtypes, strict=True)]
    outs = [oh.make_tensor_value_info("y", ONNX_TYPE[out or dtypes[0]], None)]
    try:
        _ort_session(_model([oh.make_node(op, names, ["y"], **dict(attrs))], ins, outs, [], opset))
    except Exception:  # noqa: BLE001 - no kernel (NOT_IMPLEMENTED) or an invalid combination
        return False
    return True


# -- the graph builder -------------------------------------------------------------------------------


@dataclass
class Case:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    outputs: list[Val]
    ops: list[str] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)  # what known faults could trip over (see `Fault`)


PARAM_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Slice", "Expand", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
             "ReduceProd", "ReduceL2", "ReduceSumSquare"}


class Builder:
    """Grows a random graph one op at a time; each `op_*` method returns the new value or None when the op does
    not apply to the chosen operand (the caller then draws another)."""

    def __init__(self, draw, opset: int):
        self.draw, self.opset = draw, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.vals: list[Val] = []
        self.ops: list[str] = []
        self.tags: set[str] = set()
        self.consts: set[str] = set()  # initializers and the node outputs computed from them alone
        self.by_name: dict[str, Val] = {}
        self.producer: dict[str, str] = {}  # node output -> its op
        self._n = 0

    # -- naming, operands ----------------------------------------------------------------------------

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def _tensor(self, data: np.ndarray, const: bool | None = None, prefix: str = "") -> str:
        """A graph input (fed `data`) or an initializer holding `data`; its name."""
        d = self.draw
        const = d(st.booleans()) if const is None else const
        name = self._name(prefix or ("c" if const else "x"))
        if const:
            self.inits.append(numpy_helper.from_array(data, name))
            self.consts.add(name)
        else:
            self.inputs.append(oh.make_tensor_value_info(name, ONNX_TYPE[data.dtype], data.shape))
            self.feeds[name] = data
        return name

    def fresh(self, dt: np.dtype, shape: tuple[int, ...], elements=None, const: bool | None = None) -> Val:
        """A new operand (graph input or initializer) with drawn values, usable by later ops too."""
        d = self.draw
        mode = d(st.integers(0, 3)) if elements is None else 0
        if mode == 3:  # one value everywhere (an all-ones or all -0.0 operand: what algebraic rules look for)
            data = np.full(shape, d(_elements(dt, d(st.booleans()))), dt)
        else:
            data = d(hnp.arrays(dt, shape, elements=_elements(dt, mode == 2) if elements is None else elements))
        v = Val(self._tensor(data, const), dt, tuple(shape), node=False, **_stats(data))
        self.vals.append(v)
        self.by_name[v.name] = v
        return v

    def param(self, values, dt: np.dtype = I64, rare_input: bool = True) -> str:
        """A parameter tensor (shape, axes, bounds): an initializer, or now and then a graph input."""
        data = np.array(values, dtype=dt)
        const = True if not rare_input else self.draw(st.integers(0, 7)) > 0
        return self._tensor(data, const, prefix="p" if const else "q")

    def pick(self, pred) -> Val | None:
        """An existing value satisfying `pred` (shrinks towards the newest)."""
        cands = [v for v in reversed(self.vals) if pred(v)]
        if not cands:
            return None
        return cands[self.draw(st.integers(0, len(cands) - 1))]

    def emit(self, op: str, inputs: list[str], like: Val, attrs: dict | None = None, **changes) -> Val:
        out = replace(like, name=self._name("v"), node=True, **changes)
        self.nodes.append(oh.make_node(op, inputs, [out.name], **(attrs or {})))
        self.ops.append(op)
        self.vals.append(out)
        self.by_name[out.name] = out
        self.producer[out.name] = op
        if all(i in self.consts for i in inputs if i):
            self.consts.add(out.name)
        srcs = [self.by_name[i] for i in inputs if i in self.by_name]
        if srcs:
            self.tag(f"{op}:{srcs[0].dtype}")  # the op on its (first) input's element type
        if any(v.nan for v in srcs):
            self.tag(f"nan:{op}")
        if op in PARAM_OPS and any(i not in self.consts for i in inputs[1:] if i):
            self.tag(f"runtime-params:{op}")  # a shape, axes or Slice bounds fed at run time
        return out

    def tag(self, what: str) -> None:
        self.tags.add(what)

    def kernel(self, op: str, dtypes, out: np.dtype | None = None, attrs: tuple = ()) -> bool:
        return _has_kernel(op, self.opset, tuple(dtypes), out, attrs)

    def axis(self, a: int, rank: int) -> int:
        """`a` or its negative form."""
        return a - rank if self.draw(st.booleans()) else a

    def partner_shape(self, s: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts with `s`."""
        d = self.draw
        mode = d(st.integers(0, 3))
        if mode == 0:
            return s
        if mode == 1:
            return s[d(st.integers(0, len(s))):]
        if mode == 2:
            return tuple(1 if d(st.booleans()) else n for n in s)
        lead = d(st.lists(st.integers(1, 3), max_size=max(0, 3 - len(s))))
        return tuple(lead) + tuple(d(st.integers(1, 3)) if n == 1 and d(st.booleans()) else n for n in s)

    def partner(self, x: Val, dt: np.dtype | None = None, pred=lambda v: True, shape=None) -> Val:
        """A second operand for a broadcasting op with `x` (or with `shape`): an existing value or a fresh one."""
        dt, shape = dt or x.dtype, x.shape if shape is None else shape
        if self.draw(st.integers(0, 2)) == 0:
            v = self.pick(lambda v: v.dtype == dt and v is not x and pred(v) and _broadcasts(v.shape, shape))
            if v is not None:
                return v
        return self.fresh(dt, self.partner_shape(shape))

    # -- ops -----------------------------------------------------------------------------------------

    UNARY = ("Relu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Sigmoid", "Tanh", "Floor", "Ceil", "Round", "Sign",
             "Reciprocal", "Erf")

    def choose(self, ops) -> str | None:
        """One of `ops`, now and then the op just emitted (chains are what rewrite rules match)."""
        ops = list(ops)
        if not ops:
            return None
        if self.ops and self.ops[-1] in ops and self.draw(st.integers(0, 2)) == 0:
            return self.ops[-1]
        return self.draw(st.sampled_from(ops))

    def op_unary(self, x: Val) -> Val | None:
        if x.dtype == BOOL:
            return None
        op = self.choose(op for op in self.UNARY if self.kernel(op, [x.dtype])
                         and not (x.inexact and op not in ("Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf"))
                         and not (op in ("Neg", "Abs") and _isi(x.dtype) and x.bound > _imax(x.dtype))  # -INT_MIN
                         and not (op == "Reciprocal" and x.loose0))  # 1/+-0 is +-inf
        if op is None:
            return None
        if _isi(x.dtype):
            return self.emit(op, [x.name], x, bound=1 if op == "Sign" else x.bound)
        dt, b = x.dtype, x.bound
        if op in ("Neg", "Abs"):
            return self.emit(op, [x.name], x)
        if op == "Relu":
            return self.emit(op, [x.name], x, loose0=True)
        if op in ("Floor", "Ceil", "Round"):
            return self.emit(op, [x.name], x, bound=_cap(b + 1, dt))
        if op == "Sign":
            return self.emit(op, [x.name], x, bound=1.0, inf=False, loose0=True)
        if op == "Reciprocal":
            return self.emit(op, [x.name], x, bound=_fmax(dt), inf=True)
        if op == "Sqrt":
            return self.emit(op, [x.name], x, bound=math.sqrt(b), nan=True)
        tiny = _tiny(dt)
        if op == "Exp":
            e = math.exp(min(b, 709.0))
            return self.emit(op, [x.name], x, bound=_cap(e, dt), inf=x.inf or e >= _fmax(dt),
                             rtol=TRANSCENDENTAL_RTOL, atol=tiny)
        if op == "Log":
            return self.emit(op, [x.name], x, bound=104.0 if dt == F32 else 746.0, nan=True, inf=True,
                             rtol=TRANSCENDENTAL_RTOL, atol=tiny)
        # Sigmoid, Tanh, Erf: bounded, Lipschitz; an input error shrinks (|f'(x) x| < 0.5)
        atol = 1.2 * x.atol + x.rtol + (SIGMOID_ATOL if op == "Sigmoid" else tiny)
        return self.emit(op, [x.name], x, bound=1.0, inf=False, loose0=True, rtol=TRANSCENDENTAL_RTOL, atol=atol)

    BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")

    def op_binary(self, x: Val) -> Val | None:
        d = self.draw
        if x.dtype == BOOL:
            return None
        op = self.choose(("Max", "Min") if x.inexact else self.BINARY)
        dt = x.dtype
        exact = (lambda v: not v.inexact) if op not in ("Max", "Min") else (lambda v: True)
        if op == "Div" and _isi(dt):  # an integer divisor: a nonzero constant (x / 0 traps)
            if x.bound > _imax(dt):
                return None  # INT_MIN / -1 traps too
            y = self.fresh(dt, self.partner_shape(x.shape), elements=_elements(dt, d(st.booleans())).filter(bool))
            a, b = x, y
        elif op == "Pow":
            if _isi(dt):  # small non-negative integer exponents, no overflow
                if x.bound**3 > _imax(dt):
                    return None
                edt = d(st.sampled_from([dt, I64 if dt == I32 else I32]))
                a, b = x, self.fresh(edt, self.partner_shape(x.shape), elements=st.integers(0, 3))
            else:
                if x.loose0:
                    return None  # pow(+-0, -1) is +-inf: the base must not be a zero of unknown sign
                edt = d(st.sampled_from([dt, dt, F32 if dt == F64 else F64, I64, I32]))
                a, b = x, self.partner(x, edt, pred=exact)
        else:
            y = self.partner(x, pred=exact)
            a, b = (x, y) if d(st.booleans()) else (y, x)
        if not self.kernel(op, [a.dtype, b.dtype]):
            return None
        if a.dtype != b.dtype:
            self.tag("pow-mixed-types")
        if any(v.name in self.consts and v.shape == () and v.bound == 0 and v.finite for v in (a, b)):
            self.tag(f"zero-scalar-const:{op}")  # x * 0.0, x / 0.0 with a 0-d constant zero
        shape = np.broadcast_shapes(a.shape, b.shape)
        if _isi(dt):
            ib = {"Add": a.bound + b.bound, "Sub": a.bound + b.bound, "Mul": a.bound * b.bound, "Div": a.bound,
                  "Max": max(a.bound, b.bound), "Min": max(a.bound, b.bound), "Pow": a.bound**3}[op]
            if ib > _imax(dt) and op not in ("Max", "Min"):
                return None
            return self.emit(op, [a.name, b.name], a, shape=shape, bound=ib)
        nan, inf, loose0 = a.nan or b.nan, a.inf or b.inf, a.loose0 or b.loose0
        fmax = _fmax(dt)
        if op in ("Add", "Sub"):
            s = a.bound + b.bound
            return self.emit(op, [a.name, b.name], a, shape=shape, bound=_cap(s, dt), nan=nan or (a.inf and b.inf),
                             inf=inf or s > fmax / 2, loose0=loose0)
        if op == "Mul":
            p = a.bound * b.bound
            return self.emit(op, [a.name, b.name], a, shape=shape, bound=_cap(p, dt), nan=nan or inf,
                             inf=inf or p > fmax / 2, loose0=loose0)
        if op == "Div":
            if b.loose0:
                return None  # x/+-0 is +-inf
            return self.emit(op, [a.name, b.name], a, shape=shape, bound=fmax, nan=True, inf=True, loose0=loose0)
        if op in ("Max", "Min"):
            return self.emit(op, [a.name, b.name], a, shape=shape, bound=max(a.bound, b.bound), nan=nan, inf=inf,
                             loose0=True, rtol=max(a.rtol, b.rtol), atol=max(a.atol, b.atol))
        # Pow (float base)
        return self.emit(op, [a.name, b.name], a, shape=shape, bound=fmax, nan=True, inf=True, loose0=loose0,
                         rtol=TRANSCENDENTAL_RTOL, atol=_tiny(dt))

    def op_where(self, x: Val) -> Val | None:
        """Equal/Less/Greater, usually feeding a Where (or a Where on a fresh bool condition)."""
        d = self.draw
        if d(st.integers(0, 3)) == 0:
            cond = self.fresh(BOOL, self.partner_shape(x.shape))
        else:
            if x.dtype == BOOL or x.inexact:
                return None
            op = d(st.sampled_from(["Equal", "Less", "Greater"]))
            y = self.partner(x, pred=lambda v: not v.inexact)
            a, b = (x, y) if d(st.booleans()) else (y, x)
            if not self.kernel(op, [a.dtype, b.dtype], out=BOOL):
                return None
            cond = self.emit(op, [a.name, b.name], a, dtype=BOOL, shape=np.broadcast_shapes(a.shape, b.shape),
                             bound=1, nan=False, inf=False, loose0=False, rtol=0.0, atol=0.0)
            if d(st.integers(0, 3)) == 0:
                return cond
        if not self.kernel("Where", [BOOL, x.dtype, x.dtype], out=x.dtype):
            return None
        y = self.partner(x, shape=np.broadcast_shapes(cond.shape, x.shape))
        a, b = (x, y) if d(st.booleans()) else (y, x)
        shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
        return self.emit("Where", [cond.name, a.name, b.name], a, shape=shape, bound=max(a.bound, b.bound),
                         nan=a.nan or b.nan, inf=a.inf or b.inf, loose0=a.loose0 or b.loose0,
                         rtol=max(a.rtol, b.rtol), atol=max(a.atol, b.atol))

    REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare")

    def op_reduce(self, x: Val) -> Val | None:
        d = self.draw
        if x.dtype == BOOL:
            return None
        op = self.choose(op for op in self.REDUCE if self.kernel(op, [x.dtype], attrs=(("keepdims", 1),))
                         and (not x.inexact or op in ("ReduceMax", "ReduceMin")))
        if op is None:
            return None
        r = len(x.shape)
        axes_input = self.opset >= (13 if op == "ReduceSum" else 18)
        keepdims = d(st.sampled_from([1, 0]))
        attrs: dict = {"keepdims": keepdims}
        inputs = [x.name]
        mode = d(st.sampled_from(["axes", "omitted", "empty"] if axes_input else ["axes", "omitted"]))
        axes = sorted(d(st.sets(st.integers(0, r - 1), min_size=1))) if mode == "axes" and r else []
        if mode == "axes" and not axes:
            mode = "omitted"
        noop = axes_input and mode != "axes" and d(st.booleans())
        if noop or (axes_input and d(st.booleans())):
            attrs["noop_with_empty_axes"] = int(noop)
        if noop:
            self.tag("reduce-noop-empty-axes")
        encoded = [self.axis(a, r) for a in d(st.permutations(axes))]
        if mode == "axes" and axes_input:
            inputs.append(self.param(encoded))
        elif mode == "axes":
            attrs["axes"] = encoded
        elif mode == "empty":
            inputs.append(self.param(np.zeros(0, np.int64), rare_input=False))
        if noop:  # the identity
            return self.emit(op, inputs, x, attrs)
        reduced = axes if mode == "axes" else list(range(r))
        n = math.prod(x.shape[a] for a in reduced)
        shape = tuple(1 if a in reduced else s for a, s in enumerate(x.shape) if keepdims or a not in reduced)
        if op in ("ReduceMax", "ReduceMin"):  # (of nothing: -+inf, or an integer type's min/max)
            bound = x.bound if n or not _isi(x.dtype) else _imax(x.dtype) + 1
            return self.emit(op, inputs, x, attrs, shape=shape, bound=bound, inf=x.inf or n == 0, loose0=True)
        if x.inexact:
            return None
        b = x.bound
        if _isi(x.dtype):
            limit = _imax(x.dtype)
            ib = {"ReduceSum": n * b, "ReduceMean": n * b, "ReduceProd": b ** n, "ReduceSumSquare": n * b * b,
                  "ReduceL2": n * b * b}[op]
            if ib > limit or (op == "ReduceMean" and (n == 0 or ib > 2**53)):
                return None  # (an integer mean of nothing divides by 0; onnxruntime's mean of a sum > 2^53 rounds)
            bound = b if op == "ReduceMean" else math.isqrt(ib) + 1 if op == "ReduceL2" else ib
            return self.emit(op, inputs, x, attrs, shape=shape, bound=bound)
        dt, eps, fmax = x.dtype, _eps(x.dtype), _fmax(x.dtype)
        order = n >= 2  # the result depends on the summation order
        nan = x.nan or (x.inf and order)
        if op in ("ReduceSum", "ReduceMean"):
            if order and n * b > fmax / 4:
                return None
            atol = n * n * eps * b if order else 0.0
            if op == "ReduceMean":
                return self.emit(op, inputs, x, attrs, shape=shape, nan=nan or n == 0, loose0=True,
                                 rtol=4 * eps if order else 0.0, atol=atol / max(n, 1))
            return self.emit(op, inputs, x, attrs, shape=shape, bound=n * b, nan=nan, loose0=True,
                             rtol=4 * eps if order else 0.0, atol=atol)
        if op == "ReduceProd":
            if order and (b > 1e3 or b**n > fmax / 4):
                return None
            return self.emit(op, inputs, x, attrs, shape=shape, bound=b**n, nan=nan,
                             rtol=2 * n * eps if order else 0.0,
                             atol=_tiny(dt) * max(1.0, b) ** n if order else 0.0)
        # ReduceSumSquare, ReduceL2
        if max(n, 1) * b * b > fmax / 4:
            return None
        atol = n * n * eps * b * b if order else 0.0
        if op == "ReduceL2":
            return self.emit(op, inputs, x, attrs, shape=shape, bound=math.sqrt(max(n, 1)) * b, nan=x.nan,
                             loose0=False, rtol=4 * eps, atol=math.sqrt(atol) + _tiny(dt))
        return self.emit(op, inputs, x, attrs, shape=shape, bound=n * b * b, nan=x.nan, loose0=False,
                         rtol=4 * eps if order else 0.0, atol=atol + (_tiny(dt) if order else 0.0))

    def op_clip(self, x: Val) -> Val | None:
        d = self.draw
        if x.dtype == BOOL or not self.kernel("Clip", [x.dtype]):
            return None
        dt = x.dtype
        if _isf(dt):
            el = st.one_of(st.integers(-8, 8).map(lambda i: i / 2),
                           st.sampled_from([0.0, -0.0, math.inf, -math.inf, 1e30, -1e30]))
        else:
            info = np.iinfo(dt)
            el = st.one_of(st.integers(-9, 9), st.sampled_from([int(info.min), int(info.max), 2**40 if dt == I64 else 0]))
        lo = d(st.none() | el)
        hi = d(st.none() | el)
        if x.inf and _isf(dt) and (lo is None or hi is None):
            return None  # onnxruntime clamps +-inf to the largest finite value when a bound is missing
        inputs = [x.name, "" if lo is None else self._tensor(np.array(lo, dt)),
                  "" if hi is None else self._tensor(np.array(hi, dt))]
        while inputs[-1] == "":
            inputs.pop()
        b = max([x.bound] + [abs(v) for v in (lo, hi) if v is not None and math.isfinite(v)])
        return self.emit("Clip", inputs, x, bound=b, loose0=x.loose0 or _isf(dt))

    def op_matmul(self, x: Val) -> Val | None:
        d = self.draw
        if x.dtype == BOOL or x.inexact or not x.shape or not self.kernel("MatMul", [x.dtype, x.dtype]):
            return None
        dt, r = x.dtype, len(x.shape)
        x_first = d(st.booleans())
        k = x.shape[-1] if x_first or r == 1 else x.shape[-2]
        if k == 0:
            return None  # onnxruntime's MatMul leaves its output uninitialized when K is 0
        if r == 1 or d(st.integers(0, 2)) == 0:
            other = (k,)
        else:
            batch = x.shape[:-2]
            ob = self.partner_shape(batch) if d(st.booleans()) else ()
            other = (*ob, k, d(_dim())) if x_first else (*ob, d(_dim()), k)
        y = self.fresh(dt, other)
        a, b = (x, y) if x_first else (y, x)
        if self.producer.get(x.name) == "Expand":
            self.tag("matmul-of-expand")
        shape = np.matmul(np.zeros(a.shape), np.zeros(b.shape)).shape
        bound = k * a.bound * b.bound
        if _isi(dt):
            if bound > _imax(dt):
                return None
            return self.emit("MatMul", [a.name, b.name], a, shape=shape, bound=bound)
        eps = _eps(dt)
        if k >= 2 and bound > _fmax(dt) / 4:
            return None
        return self.emit("MatMul", [a.name, b.name], a, shape=shape, bound=_cap(bound, dt),
                         nan=a.nan or b.nan or a.inf or b.inf, inf=a.inf or b.inf or bound > _fmax(dt) / 2,
                         loose0=True, rtol=4 * eps if k >= 2 else 0.0,
                         atol=(k * k * eps * a.bound * b.bound + k * _tiny(dt)) if k >= 2 else 0.0)

    def op_cast(self, x: Val) -> Val | None:
        d = self.draw
        to = d(st.sampled_from([F32, F64, I32, I64, BOOL]))
        if not self.kernel("Cast", [x.dtype], out=to, attrs=(("to", ONNX_TYPE[to]),)):
            return None
        attrs = {"to": ONNX_TYPE[to]}
        if _isf(x.dtype) and not _isf(to):
            if x.inexact:
                return None  # a discontinuous function of an approximate value
            if _isi(to) and (not x.finite or x.bound >= (2.0**31 - 256 if to == I32 else 2.0**62)):
                return None  # undefined: NaN, inf or out of range
            bound = 1 if to == BOOL else math.floor(x.bound)
            return self.emit("Cast", [x.name], x, attrs, dtype=to, bound=bound, nan=False, inf=False, loose0=False)
        if _isf(to):
            if _isf(x.dtype):
                big = x.bound > _fmax(to)
                return self.emit("Cast", [x.name], x, attrs, dtype=to, bound=_cap(x.bound, to), inf=x.inf or big,
                                 rtol=x.rtol + (_eps(to) if x.inexact else 0.0))
            return self.emit("Cast", [x.name], x, attrs, dtype=to, bound=float(x.bound))
        bound = 1 if to == BOOL else x.bound if to == I64 or x.bound <= _imax(to) else _imax(to) + 1
        return self.emit("Cast", [x.name], x, attrs, dtype=to, bound=bound)

    # shape ops

    def op_reshape(self, x: Val) -> Val | None:
        d = self.draw
        numel, s = x.numel, x.shape
        allowzero = d(st.sampled_from([0, 1])) if self.opset >= 14 and d(st.booleans()) else None
        if allowzero == 1:
            self.tag("reshape-allowzero")
        if numel:
            factors = _prime_factors(numel)
            rank = d(st.integers(0 if numel == 1 else 1, 4))
            if rank == 0:
                out = []
            else:
                out = [1] * rank
                for f in factors:
                    out[d(st.integers(0, rank - 1))] *= f
        elif allowzero == 1:
            out = d(st.lists(st.integers(1, 3), min_size=1, max_size=3))
            out.insert(d(st.integers(0, len(out))), 0)
        else:  # 0 in the shape copies the input's dim: keep a zero-size dim where it is
            z = s.index(0)
            out = [d(st.integers(1, 3)) for _ in range(d(st.integers(z + 1, 4)))]
            out[z] = 0
        spec = list(out)
        for i, n in enumerate(out):
            if not allowzero and i < len(s) and s[i] == n and (n == 0 or d(st.booleans())):
                spec[i] = 0  # copy the input's dim
        if numel and out and d(st.booleans()):
            i = d(st.integers(0, len(out) - 1))
            if spec[i] != 0:
                spec[i] = -1
        attrs = {} if allowzero is None else {"allowzero": allowzero}
        return self.emit("Reshape", [x.name, self.param(spec)], x, attrs, shape=tuple(out))

    def op_transpose(self, x: Val) -> Val | None:
        r = len(x.shape)
        if r < 1 or self.draw(st.booleans()):
            return self.emit("Transpose", [x.name], x, shape=x.shape[::-1])
        perm = self.draw(st.permutations(range(r)))
        return self.emit("Transpose", [x.name], x, {"perm": list(perm)}, shape=tuple(x.shape[p] for p in perm))

    def op_squeeze(self, x: Val) -> Val | None:
        d = self.draw
        r = len(x.shape)
        ones = [i for i, n in enumerate(x.shape) if n == 1]
        axes = sorted(d(st.sets(st.sampled_from(ones), min_size=1))) if ones and d(st.integers(0, 3)) else []
        shape = tuple(n for i, n in enumerate(x.shape) if not (i in axes or (not axes and n == 1)))
        encoded = [self.axis(a, r) for a in d(st.permutations(axes))]
        if not axes:
            return self.emit("Squeeze", [x.name], x, shape=shape)
        if self.opset >= 13:
            return self.emit("Squeeze", [x.name, self.param(encoded)], x, shape=shape)
        return self.emit("Squeeze", [x.name], x, {"axes": encoded}, shape=shape)

    def op_unsqueeze(self, x: Val) -> Val | None:
        d = self.draw
        r = len(x.shape)
        k = d(st.integers(1, 2))
        axes = sorted(d(st.sets(st.integers(0, r + k - 1), min_size=k, max_size=k)))
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        encoded = [self.axis(a, r + k) for a in d(st.permutations(axes))]
        if self.opset >= 13:
            return self.emit("Unsqueeze", [x.name, self.param(encoded)], x, shape=tuple(shape))
        return self.emit("Unsqueeze", [x.name], x, {"axes": encoded}, shape=tuple(shape))

    def op_concat(self, x: Val) -> Val | None:
        d = self.draw
        r = len(x.shape)
        if not r:
            return None
        a = d(st.integers(0, r - 1))
        parts = [x]
        for _ in range(d(st.integers(1, 2))):
            v = self.pick(lambda v: v.dtype == x.dtype and _same_but(v.shape, x.shape, a)) if d(st.booleans()) else None
            parts.append(v or self.fresh(x.dtype, x.shape[:a] + (d(_dim()),) + x.shape[a + 1:]))
        parts = d(st.permutations(parts))
        shape = x.shape[:a] + (sum(p.shape[a] for p in parts),) + x.shape[a + 1:]
        return self.emit("Concat", [p.name for p in parts], x, {"axis": self.axis(a, r)}, shape=shape,
                         bound=max(p.bound for p in parts), nan=any(p.nan for p in parts),
                         inf=any(p.inf for p in parts), loose0=any(p.loose0 for p in parts),
                         rtol=max(p.rtol for p in parts), atol=max(p.atol for p in parts))

    def op_slice(self, x: Val) -> Val | None:
        d = self.draw
        r = len(x.shape)
        if not r:
            return None
        idt = d(st.sampled_from([I64, I32]))
        lo, hi = (INT64_MIN, INT64_MAX) if idt == I64 else (-(2**31), 2**31 - 1)
        axes = d(st.permutations(sorted(d(st.sets(st.integers(0, r - 1), min_size=1)))))
        starts, ends, steps = [], [], []
        shape = list(x.shape)
        for a in axes:
            n = x.shape[a]
            bound = st.one_of(st.integers(-n - 2, n + 2), st.sampled_from([hi, lo, -hi]))
            start, end = d(bound), d(bound)
            step = d(st.sampled_from([1, -1, 2, -2, 3, -3]))
            if step < 0:
                self.tag("slice-negative-step")
            starts.append(start)
            ends.append(end)
            steps.append(step)
            shape[a] = _slice_len(n, start, end, step)
        inputs = [x.name, self.param(starts, idt), self.param(ends, idt)]
        keep_axes = list(axes) != list(range(len(axes))) or d(st.booleans())
        if keep_axes or any(s != 1 for s in steps) or d(st.booleans()):
            inputs.append(self.param([self.axis(a, r) for a in axes], idt) if keep_axes else "")
        if any(s != 1 for s in steps) or (len(inputs) == 4 and d(st.booleans())):
            inputs.append(self.param(steps, idt))
        if inputs[-1] == "":
            inputs.pop()
        return self.emit("Slice", inputs, x, shape=tuple(shape))

    def op_gather(self, x: Val) -> Val | None:
        d = self.draw
        r = len(x.shape)
        if not r:
            return None
        a = d(st.integers(0, r - 1))
        n = x.shape[a]
        ishape = d(_shape(2))
        if n == 0 and math.prod(ishape) != 0:
            ishape = (*ishape, 0)  # nothing to gather from: no indices
        idt = d(st.sampled_from([I64, I32]))
        ind = d(hnp.arrays(idt, ishape, elements=st.integers(-n, n - 1) if n else st.just(0)))
        name = self._tensor(ind, d(st.integers(0, 3)) > 0, prefix="g")
        shape = x.shape[:a] + tuple(ishape) + x.shape[a + 1:]
        return self.emit("Gather", [x.name, name], x, {"axis": self.axis(a, r)}, shape=shape)

    def op_expand(self, x: Val) -> Val | None:
        d = self.draw
        s = x.shape
        target = [d(st.integers(1, 3)) if n == 1 and d(st.booleans()) else (1 if d(st.integers(0, 3)) == 0 else n)
                  for n in s]
        target = d(st.lists(st.integers(1, 3), max_size=max(0, 4 - len(s)))) + target
        target = target[d(st.integers(0, len(target))):] if d(st.integers(0, 3)) == 0 else target
        shape = np.broadcast_shapes(s, tuple(target))
        return self.emit("Expand", [x.name, self.param(target)], x, shape=tuple(shape))

    def op_flatten(self, x: Val) -> Val | None:
        r = len(x.shape)
        a = self.draw(st.integers(0, r))
        shape = (math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        if x.numel == 0:
            self.tag("flatten-zero-size")
        return self.emit("Flatten", [x.name], x, {"axis": self.axis(a, r) if a < r else a}, shape=shape)

    FAMILIES = ("unary", "binary", "where", "reduce", "reshape", "transpose", "squeeze", "unsqueeze", "concat",
                "slice", "gather", "expand", "flatten", "cast", "clip", "matmul")


def _same_but(s: tuple[int, ...], t: tuple[int, ...], axis: int) -> bool:
    """`s` and `t` have the same rank and dims, except perhaps along `axis`."""
    return len(s) == len(t) and all(n == m for i, (n, m) in enumerate(zip(s, t, strict=True)) if i != axis)


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def _slice_len(n: int, start: int, end: int, step: int) -> int:
    """The length of one axis after ONNX Slice (its clamping rules differ from Python's for negative steps)."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return max(0, -(-(end - start) // step))


@st.composite
def cases(draw) -> Case:
    opset = draw(st.sampled_from([18, 13, 17, 21, 11]))
    g = Builder(draw, opset)
    g.fresh(draw(st.sampled_from(NUMERIC)), draw(_shape()), const=draw(st.integers(0, 5)) == 0)
    steps = draw(st.integers(1, 5))
    for _ in range(steps):
        for _attempt in range(12):
            x = g.pick(lambda v: True) if draw(st.integers(0, 2)) == 0 else g.vals[-1]
            family = draw(st.sampled_from(Builder.FAMILIES))
            if len(x.shape) > 4:
                continue
            out = getattr(g, f"op_{family}")(x)
            if out is not None:
                break
    used = {i for n in g.nodes for i in n.input}
    uses = Counter(i for n in g.nodes for i in set(n.input))
    if any(v.numel == 0 and uses[v.name] >= 2 for v in g.vals):
        g.tag("zero-size-shared")  # a zero-size tensor read by two nodes
    outputs = [v for v in g.vals if v.node and v.name not in used][-3:]  # the leaves: no dead nodes (mostly)
    assume(outputs)
    for v in outputs:
        if v.name in g.consts and v.numel == 0:
            g.tag("empty-constant-output")
    outs = [oh.make_tensor_value_info(v.name, ONNX_TYPE[v.dtype], v.shape) for v in outputs]
    model = _model(g.nodes, g.inputs, outs, g.inits, opset)
    return Case(model, g.feeds, outputs, g.ops, g.tags)


# -- comparing ---------------------------------------------------------------------------------------


def _compare(got: np.ndarray, want: np.ndarray, v: Val) -> str | None:
    """Why `got` differs from the reference `want` for output `v` (None when they agree)."""
    got = np.asarray(got)
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if want.dtype.kind != "f":
        bad = got != want
        return f"{int(bad.sum())} of {want.size} values differ" if bad.any() else None
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    bad = np.isnan(g64) != np.isnan(w64)
    both = ~np.isnan(g64) & ~np.isnan(w64)
    fmax = _fmax(want.dtype)
    near_inf = lambda a, b: np.isinf(b) & (np.abs(a) >= fmax / (1 + 2 * v.rtol)) & (np.sign(a) == np.sign(b))  # noqa: E731
    with np.errstate(invalid="ignore", over="ignore"):
        inf = both & (np.isinf(g64) | np.isinf(w64))
        inf_ok = (g64 == w64) | (v.rtol > 0 and (near_inf(g64, w64) | near_inf(w64, g64)))
        bad |= inf & ~inf_ok
        fin = both & ~inf
        if v.inexact:
            bad |= fin & ~(np.abs(g64 - w64) <= v.atol + v.rtol * np.abs(w64))
        else:
            bad |= fin & (g64 != w64)
            if not v.loose0:
                bad |= fin & (g64 == 0) & (w64 == 0) & (np.signbit(g64) != np.signbit(w64))
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        return (f"{int(bad.sum())} of {want.size} values differ, first at {i}: got {got[i]!r}, expected {want[i]!r}"
                + (f" (rtol {v.rtol:.3g}, atol {v.atol:.3g})" if v.inexact else ""))
    return None


def _text(model: onnx.ModelProto) -> str:
    try:
        return onnx.printer.to_text(model)
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return f"<onnx.printer failed: {exc}>\n{model.graph}"


def _arr(a: np.ndarray) -> str:
    with np.printoptions(precision=17, threshold=10_000, floatmode="unique", linewidth=110):
        return f"np.array({np.asarray(a).tolist()!r}, dtype=np.{a.dtype})" if a.ndim else \
            f"np.array({a.item()!r}, dtype=np.{a.dtype})"


def _report(case: Case, path: str, problems: list[str], got: dict, want: dict, extra: str = "") -> str:
    lines = [f"{path} path differs from onnxruntime (ORT_DISABLE_ALL):", *("  " + p for p in problems), "",
             "model:", _text(case.model), "", "inputs:"]
    lines += [f"  {k} = {_arr(v)}" for k, v in case.feeds.items()] or ["  (none)"]
    lines += ["", "expected (onnxruntime):"] + [f"  {k} = {_arr(v)}" for k, v in want.items()]
    lines += [f"got ({path}):"] + [f"  {k} = {_arr(v)}" for k, v in got.items()]
    try:
        from onnx.reference import ReferenceEvaluator

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ReferenceEvaluator(case.model).run(None, case.feeds)
        lines += ["onnx.reference says:"] + [f"  {v.name} = {_arr(np.asarray(r))}"
                                             for v, r in zip(case.outputs, ref, strict=False)]
    except Exception as exc:  # noqa: BLE001 - a third opinion, when it can give one
        lines.append(f"(onnx.reference failed: {type(exc).__name__}: {exc})")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def _check(case: Case, path: str, got: dict, want: dict, extra: str = "") -> None:
    problems = []
    for v in case.outputs:
        if v.name not in got:
            problems.append(f"{v.name}: missing (outputs: {sorted(got)})")
            continue
        why = _compare(got[v.name], want[v.name], v)
        if why:
            problems.append(f"{v.name}: {why}")
    if problems:
        raise AssertionError(_report(case, path, problems, got, want, extra))


# -- running -----------------------------------------------------------------------------------------


def _event(what: str) -> None:
    if currently_in_test_context():  # (not in the known-fault tests)
        event(what)


def _reference(case: Case) -> dict[str, np.ndarray]:
    """The graph is valid ONNX and onnxruntime runs it; its outputs (the example is dropped if ORT refuses)."""
    onnx.checker.check_model(case.model, full_check=True)
    try:
        want = _ort_run(case.model, case.feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime itself rejects the graph
        _event(f"onnxruntime rejects: {str(exc).splitlines()[0][:80]}")
        assume(False)
    for v in case.outputs:  # the generator's idea of each output (checked by strict shape inference) is ORT's
        w = want[v.name]
        assert w.dtype == v.dtype, f"{v.name}: generator predicted {v.dtype}, onnxruntime gives {w.dtype}"
        if w.shape != v.shape:  # e.g. ReduceSum over a zero-size axis with keepdims: ORT keeps the 0
            _event(f"onnxruntime's output shape differs from ONNX's: {case.ops}")
            assume(False)
    for op in sorted(set(case.ops)):
        _event(op)
    return want


def run_optimize_path(case: Case):
    """(onnxruntime's outputs for the optimized model, the optimized optc model)."""
    import optc

    model = optc.optimize(optc.from_onnx(case.model), level=3)
    return _ort_run(optc.to_onnx(model), case.feeds), model


def run_compile_path(case: Case) -> dict[str, np.ndarray] | None:
    """The compiled module's outputs; None when optc refuses the model cleanly (UnsupportedError)."""
    import optc

    try:
        module = optc.compile(optc.from_onnx(case.model))
    except optc.UnsupportedError as exc:
        _event(f"compile refused: {str(exc)[:60]}")
        return None
    names = {spec["name"] for spec in module.inputs}
    return module.run({k: v for k, v in case.feeds.items() if k in names})


def _crash(case: Case, path: str, exc: Exception) -> AssertionError:
    lines = [f"{path} path failed: {type(exc).__name__}: {exc}", "", "model:", _text(case.model), "", "inputs:"]
    lines += [f"  {k} = {_arr(v)}" for k, v in case.feeds.items()] or ["  (none)"]
    return AssertionError("\n".join(lines))


def check_optimize(case: Case) -> None:
    import optc

    want = _reference(case)
    try:
        got, model = run_optimize_path(case)
    except Exception as exc:  # noqa: BLE001 - optimizing or running the optimized model failed
        raise _crash(case, "optimize (level=3)", exc) from exc
    _check(case, "optimize (level=3)", got, want, "optimized model:\n" + _text(optc.to_onnx(model)))


def check_compile(case: Case) -> None:
    want = _reference(case)
    try:
        got = run_compile_path(case)
    except Exception as exc:  # noqa: BLE001 - anything but a clean refusal is a fault
        raise _crash(case, "compile", exc) from exc
    if got is not None:
        _check(case, "compile", got, want)


# -- the tests ---------------------------------------------------------------------------------------


def _skip_open_faults(case: Case, path: str) -> None:
    """Drop an example that could trip over an open fault of this path (each has an xfail test below)."""
    hit = case.tags & _open_faults(path)
    if hit:
        _event(f"dropped for a known fault: {sorted(hit)}")
    assume(not hit)


@_budget(CI_OPTIMIZE_EXAMPLES, _HUNT)
@given(cases())
def test_optimize_matches_onnxruntime(case):
    _skip_open_faults(case, "optimize")
    check_optimize(case)


@_budget(CI_COMPILE_EXAMPLES, _HUNT_COMPILE)
@given(cases())
def test_compile_matches_onnxruntime(case):
    _skip_open_faults(case, "compile")
    check_compile(case)


def _case_from_text(text: str, feeds: dict) -> Case:
    """A Case from ONNX text (outputs compared exactly, the sign of zero included)."""
    model = onnx.shape_inference.infer_shapes(onnx.parser.parse_model(text), strict_mode=True)
    outputs = []
    for o in model.graph.output:
        dt = np.dtype(oh.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type))
        outputs.append(Val(o.name, dt, tuple(dim.dim_value for dim in o.type.tensor_type.shape.dim)))
    return Case(model, {k: np.asarray(v) for k, v in feeds.items()}, outputs)


@pytest.mark.parametrize("fault", [pytest.param(f, id=f"{f.path}-{f.tags[0]}",
                                                marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                                        reason=f.reason))
                                   for f in KNOWN_FAULTS] or
                         [pytest.param(None, id="none", marks=pytest.mark.skip(reason="no open faults"))])
def test_known_fault_still_reproduces(fault: Fault):
    """Each open fault's reproducer still fails. An XPASS means the fault is fixed: delete its KNOWN_FAULTS entry,
    and the property tests cover its tag again."""
    case = _case_from_text(fault.repro, fault.feeds)
    (check_optimize if fault.path == "optimize" else check_compile)(case)


@pytest.mark.parametrize("fault", [pytest.param(f, id=f"{f.path}-{f.tags[0]}") for f in FIXED_FAULTS])
def test_fixed_fault_stays_fixed(fault: Fault):
    """The reproducer of each fault this test found and that was fixed computes what onnxruntime computes."""
    case = _case_from_text(fault.repro, fault.feeds)
    (check_optimize if fault.path == "optimize" else check_compile)(case)


def test_generator_builds_valid_varied_graphs():
    """A fixed sample of generated graphs passes onnx.checker (full check) and covers most of the op table."""
    seen: set[str] = set()

    @settings(settings.get_profile("optc-differential-ci"), max_examples=100)
    @given(cases())
    def collect(case):
        onnx.checker.check_model(case.model, full_check=True)
        seen.update(case.ops)

    collect()
    assert len(seen) >= 25, sorted(seen)
