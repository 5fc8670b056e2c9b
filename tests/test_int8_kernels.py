"""The int8 CPU kernels (codegen/int8_kernels.py): instruction-set choice, exactness, and build-only checks of the
VNNI / AVX-512 paths this machine cannot run.

Exactness: every kernel's int32 output equals numpy's int64 sum (edge values 0/255, -128/127, K not a multiple of
the group size, N not a multiple of the lanes, odd shapes); the requantize epilogue equals the same module built
with TVM's unscheduled loops. Tests that say `build_only` compile for a CPU other than this one and only read the
assembly (running it could kill the process with SIGILL)."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from optc.codegen import int8_kernels  # noqa: E402
from optc.codegen.build import DOT_PRODUCT_INTRINSICS, build, fuse, prepare  # noqa: E402
from optc.codegen.targets import host_cpu_flags, resolve_target  # noqa: E402
from tvm import relax  # noqa: E402

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def _values(rng, shape, dtype, edge: str = "random") -> np.ndarray:
    lo, hi = RANGES[dtype]
    if edge == "max":
        return np.full(shape, hi if dtype == "uint8" else lo, dtype)
    if edge == "extremes":  # only the two ends of the range
        return np.where(rng.random(shape) < 0.5, lo, hi).astype(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _module(x_shape, w_shape, x_dtype, op: str, requantize: bool = False, **conv):
    """main(x, w) = matmul / conv2d (NCHW, OIHW) of x and w with out_dtype int32; optionally requantized to uint8
    (per-output-channel multiplier, zero point 3: multiply, add, round, clip, cast)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, x_dtype))
    w = relax.Var("w", relax.TensorType(w_shape, "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            if op == "matmul":
                y = bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
                channels, bshape = w_shape[-1], (w_shape[-1],)
            else:
                y = bb.emit(relax.op.nn.conv2d(x, w, out_dtype="int32", **conv))
                channels, bshape = w_shape[0], (1, w_shape[0], 1, 1)
            if requantize:
                mult = np.linspace(1e-4, 3e-3, channels, dtype=np.float32).reshape(bshape)
                f = relax.op.add(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(mult)),
                                 relax.const(np.float32(3)))
                y = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(f), 0, 255), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, w, x, schedule="default"):
    vm = relax.VirtualMachine(build(mod, {"w": w}, "cpu", schedule=schedule), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _reduction_kernel(mod, w):
    """The fused PrimFunc holding the int32 reduction, as the default rules see it (after NHWC conversion)."""
    target = resolve_target("cpu")
    fused = fuse(prepare(mod, {"w": w}, target), target)
    funcs = [f for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
             and any(k in gv.name_hint for k in ("matmul", "conv2d"))]
    assert len(funcs) == 1
    return funcs[0], target


def _takes(mod, w) -> bool:
    func, target = _reduction_kernel(mod, w)
    return int8_kernels.Int8Reduction().apply(func, target, False) is not None


def _conv_reference(x, w, stride=1, pad=0, groups=1):
    """int64 NCHW convolution by explicit loops over the kernel window (numpy only)."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og].astype(np.int64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


# --- the instruction-set decision -------------------------------------------------------------------------------

def test_host_decision_follows_cpuinfo():
    """On this host the choice is what /proc/cpuinfo allows (an AVX2-only EPYC: the widened vpmaddwd path; a
    Sapphire Rapids-class Xeon: AMX first)."""
    isas = int8_kernels.int8_isas(resolve_target("cpu"))
    flags = host_cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    assert ("avx512vnni" in isas) == ({"avx512_vnni", "avx512bw"} <= flags)
    assert ("avxvnni" in isas) == ("avx_vnni" in flags)
    assert ("avx2" in isas) == ("avx2" in flags)
    assert ("amx" in isas) == ({"amx_tile", "amx_int8"} <= flags)
    if "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "avx512bw"}:
        assert isas == ["avx2_7bit", "avx2"]


@pytest.mark.parametrize(("target", "expected"), [
    ({"kind": "llvm", "mcpu": "sapphirerapids"}, ["amx", "avx512vnni", "avxvnni", "avx512bw_7bit", "avx512bw",
                                                   "avx2_7bit", "avx2", "avx512bf16"]),
    ({"kind": "llvm", "mcpu": "znver4"},  # bf16 kernels only
     ["avx512vnni", "avx512bw_7bit", "avx512bw", "avx2_7bit", "avx2", "avx512bf16"]),
    ({"kind": "llvm", "mcpu": "icelake-server"}, ["avx512vnni", "avx512bw_7bit", "avx512bw", "avx2_7bit", "avx2"]),
    ({"kind": "llvm", "mcpu": "alderlake"}, ["avxvnni", "avx2_7bit", "avx2"]),
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, ["avx512bw_7bit", "avx512bw", "avx2_7bit", "avx2"]),
    ({"kind": "llvm", "mcpu": "haswell"}, ["avx2_7bit", "avx2"]),
    ({"kind": "llvm", "mcpu": "x86-64"}, []),  # SSE2 only: the rule declines, TiledReduction schedules
    ("arm64", []),
])
def test_decision_from_target_features(target, expected):
    assert int8_kernels.int8_isas(resolve_target(target)) == expected


def test_no_dot_product_isa_declines():
    """Without AVX2 the rule declines (no intrinsic is built that the target lacks) and the build still works."""
    rng = np.random.default_rng(0)
    w = _values(rng, (64, 64), "int8")
    func, _ = _reduction_kernel(_module((4, 64), (64, 64), "uint8", "matmul"), w)
    assert int8_kernels.Int8Reduction().apply(func, resolve_target({"kind": "llvm", "mcpu": "x86-64"}), False) is None


# --- exactness on this machine ----------------------------------------------------------------------------------

MATMULS = [  # (x shape, K, N, takes): takes = the dot-product rule schedules it (else TiledReduction does)
    ((1, 64), 64, 64, True),
    ((7, 130), 130, 72, True),
    ((3, 5, 96), 96, 136, True),      # batch of 3
    ((64, 1024), 1024, 256, True),
    ((512, 64), 64, 1024, True),
    ((5, 65), 65, 64, False),         # K odd: not a whole number of pairs
    ((4, 64), 64, 100, True),         # N not whole vectors: the weight zero-padded to whole ones
    ((1, 1280), 1280, 1000, True),    # a classifier's 1000 columns (padded to 1008 on 16 lanes)
    ((4, 64), 64, 6, False),          # N below one vector: not padded, not a multiple of any vector
]


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize(("x_shape", "k", "n", "takes"), MATMULS)
def test_matmul_exact(x_dtype, x_shape, k, n, takes):
    rng = np.random.default_rng(k * n)
    w = _values(rng, (k, n), "int8")
    x = _values(rng, x_shape, x_dtype)
    mod = _module(x_shape, (k, n), x_dtype, "matmul")
    if int8_kernels.int8_isas(resolve_target("cpu")):
        assert _takes(mod, w) == takes
    np.testing.assert_array_equal(_run(mod, w, x), x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("edge", ["max", "extremes"])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_matmul_edge_values_exact(edge, x_dtype):
    """255 x -128 (u8) / -128 x -128 (s8) in every product: each pair sums to +-65280 / 32768, beyond int16, and
    the whole row to K times that; a saturating int16 pair sum (vpmaddubsw) would differ."""
    rng = np.random.default_rng(1)
    k, n = 1024, 64
    w = _values(rng, (k, n), "int8", edge)
    x = _values(rng, (6, k), x_dtype, edge)
    mod = _module((6, k), (k, n), x_dtype, "matmul")
    out = _run(mod, w, x)
    ref = x.astype(np.int64) @ w.astype(np.int64)
    if edge == "max":
        assert abs(int(ref[0, 0])) == k * 128 * (255 if x_dtype == "uint8" else 128)
    np.testing.assert_array_equal(out, ref)


CONVS = [  # (x shape NCHW, w shape OIHW, conv attributes, takes)
    ((1, 32, 9, 9), (64, 32, 1, 1), {}, True),                                  # 1x1
    ((1, 16, 10, 10), (32, 16, 3, 3), {"padding": 1}, True),                     # 3x3, zero padded
    ((2, 8, 11, 11), (16, 8, 3, 3), {"strides": 2}, True),                       # strided, batch 2
    ((1, 3, 12, 12), (16, 3, 3, 3), {"padding": 1}, False),                      # 3 input channels: odd K
    ((1, 96, 6, 6), (24, 96, 1, 1), {}, True),                                  # 24 channels: padded
    ((1, 16, 10, 10), (40, 16, 3, 3), {"padding": 1}, True),                     # 40 channels: padded
    ((1, 16, 8, 8), (16, 1, 3, 3), {"padding": 1, "groups": 16}, False),         # depthwise
    ((1, 16, 8, 8), (32, 4, 3, 3), {"padding": 1, "groups": 4}, False),          # grouped
]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs", "takes"), CONVS)
def test_conv_exact(x_shape, w_shape, attrs, takes):
    rng = np.random.default_rng(w_shape[0] * w_shape[1])
    w = _values(rng, w_shape, "int8", "extremes")
    x = _values(rng, x_shape, "uint8", "extremes")
    mod = _module(x_shape, w_shape, "uint8", "conv", **attrs)
    if int8_kernels.int8_isas(resolve_target("cpu")):
        assert _takes(mod, w) == takes
    ref = _conv_reference(x, w, attrs.get("strides", 1), attrs.get("padding", 0), attrs.get("groups", 1))
    np.testing.assert_array_equal(_run(mod, w, x), ref)


@pytest.mark.parametrize(("op", "x_shape", "w_shape", "attrs"), [
    ("matmul", (8, 128), (128, 64), {}),
    ("matmul", (1, 512), (512, 128), {}),
    ("conv", (1, 16, 7, 7), (32, 16, 3, 3), {"padding": 1}),
    ("conv", (1, 144, 8, 8), (24, 144, 1, 1), {}),   # padded columns: the epilogue crops them
    ("matmul", (3, 64), (64, 40), {}),
])
def test_requantize_epilogue_matches_unscheduled(op, x_shape, w_shape, attrs):
    """The fused requantize computed per tile gives the same uint8 as TVM's naive loops (and is not constant)."""
    rng = np.random.default_rng(2)
    w = _values(rng, w_shape, "int8")
    x = _values(rng, x_shape, "uint8")
    mod = _module(x_shape, w_shape, "uint8", op, requantize=True, **attrs)
    if int8_kernels.int8_isas(resolve_target("cpu")):
        assert _takes(mod, w)
    ours = _run(mod, w, x)
    np.testing.assert_array_equal(ours, _run(mod, w, x, schedule="none"))
    assert len(np.unique(ours)) > 10


@pytest.mark.parametrize(("k", "n"), [(96, 24), (64, 100), (96, 20)])
def test_ragged_columns_are_padded_in_the_packed_weight(k, n):
    """A constant weight whose N is not whole vectors: one compile-time copy (marked as packing is) pads it with
    zero columns to whole vectors of the widest instruction set and packs it; the tile then runs whole vectors."""
    target = resolve_target("cpu")
    isas = [i for i in int8_kernels.int8_isas(target) if i != "amx"]
    if not isas:
        pytest.skip("this CPU has no integer dot-product instruction set")
    lanes = max(int8_kernels.ISAS[i][1] for i in isas)
    if n % lanes == 0 or n < lanes:
        pytest.skip(f"{n} columns are whole vectors of {lanes} lanes (or below one) on this CPU")
    w = _values(np.random.default_rng(4), (k, n), "int8")
    func, _ = _reduction_kernel(_module((16, k), (k, n), "uint8", "matmul"), w)
    script = int8_kernels.Int8Reduction().apply(func, target, False).mod["main"].script()
    padded_n = -(-n // lanes) * lanes
    group = next(int8_kernels.ISAS[i][2] for i in isas if i not in int8_kernels.SEVEN_BIT
                 and int8_kernels.ISAS[i][1] == lanes)  # (full-range weights: no 7-bit instruction set)
    copies = [b for b in script.split('T.sblock("')[1:] if "meta_schedule.layout_rewrite_preproc" in b]
    assert len(copies) == 1 and "T.if_then_else" in copies[0], script  # padding inlined into the packing
    packed = re.search(r"_pad_global = T\.sblock_alloc_buffer\(\((.*?)\), \"int8\"\)", script)
    dims = [int(d) for d in re.findall(r"T\.int64\((\d+)\)", packed.group(1))]  # [n // panel, k // G, panel, G]
    assert dims[0] * dims[2] == padded_n and dims[-1] == group, dims  # the packed weight holds whole vectors
    assert f"T.int64({padded_n})), \"int32\")" in script            # so does the accumulator


def test_symbolic_rows_and_ragged_columns_are_both_padded():
    """A dense layer over a symbolic batch whose columns are not whole vectors (20 classes): rows padded to whole
    tiles and the weight's columns to whole vectors in one kernel (it fell back to TiledReduction before), exact
    at batches that are and are not multiples of the tile."""
    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, 64), "uint8"))
    w = _values(np.random.default_rng(9), (64, 20), "int8", "extremes")
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    target = resolve_target("cpu")
    if [i for i in int8_kernels.int8_isas(target) if i != "amx"]:
        func = next(f for _, f in fuse(prepare(mod, None, target), target).functions_items()
                    if isinstance(f, tvm.tirx.PrimFunc))
        assert int8_kernels.Int8Reduction().apply(func, target, False) is not None
    vm = relax.VirtualMachine(build(mod, None, "cpu"), tvm.cpu())
    for rows in (1, 5, 13, 16):
        xv = _values(np.random.default_rng(rows), (rows, 64), "uint8", "extremes")
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(xv)).numpy(), xv.astype(np.int64) @ w)


def test_symbolic_reduction_of_a_run_time_weight():
    """Attention's P V over a symbolic key length: K symbolic, a whole number of dot-product groups (padded so by
    `lowering/ops/qinteger.py`), both operands computed at run time: one kernel on the dot-product instruction,
    B packed by the kernel, exact at several K. Negative: a constant weight over a symbolic K is declined (its
    packing is made at compile time)."""
    from optc.lowering.symbolic_pad import pad_to

    k = tvm.tirx.Var("k", "int64")
    k4 = tvm.tirx.floordiv(k + 3, 4) * 4
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((8, k), "uint8"))
    b = relax.Var("b", relax.TensorType((k, 32), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(pad_to(bb, a, 1, k4), pad_to(bb, b, 0, k4), out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    target = resolve_target("cpu")
    func = next(f for gv, f in fuse(prepare(mod, None, target), target).functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint)
    if [i for i in int8_kernels.int8_isas(target) if i != "amx"]:
        assert int8_kernels.Int8Reduction().apply(func, target, False) is not None
        constant_b = func.with_attr("layout_free_buffers", [1])
        assert int8_kernels.Int8Reduction().apply(constant_b, target, False) is None
    vm = relax.VirtualMachine(build(mod, None, "cpu"), tvm.cpu())
    for length in (1, 4, 13, 132):  # (padded to whole groups of 4 with zeros: exact)
        rng = np.random.default_rng(length)
        x = _values(rng, (8, length), "uint8", "extremes")
        y = _values(rng, (length, 32), "int8", "extremes")
        got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
        np.testing.assert_array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


def test_packs_a_run_time_weight_in_the_kernel():
    """Both operands computed at run time (an activation x activation matmul): B is packed by the kernel itself
    (`_prepack_weight(..., at_run_time=True)`), the product exact."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((8, 64), "uint8"))
    b = relax.Var("b", relax.TensorType((64, 32), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    target = resolve_target("cpu")
    fused = fuse(prepare(mod, None, target), target)
    func = next(f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    sch = int8_kernels.Int8Reduction().apply(func, target, False)
    if [i for i in int8_kernels.int8_isas(target) if i != "amx"]:
        assert sch is not None and "b_global" in sch.mod["main"].script()  # the packed copy of b
    rng = np.random.default_rng(3)
    x, y = _values(rng, (8, 64), "uint8"), _values(rng, (64, 32), "int8")
    vm = relax.VirtualMachine(build(mod, None, "cpu"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
    np.testing.assert_array_equal(out, x.astype(np.int64) @ y.astype(np.int64))


def test_tile_fits_register_file():
    for isa in int8_kernels.ISAS:
        for m, n_vecs in [(1, 128), (128, 96), (49, 8), (3136, 8), (7, 9), (1, 1)]:
            u_m, u_n = int8_kernels._tile(isa, m, n_vecs)
            assert m % u_m == 0 and n_vecs % u_n == 0
            assert u_m * u_n + u_n + 2 <= int8_kernels._REGISTERS[isa]


# --- 7-bit weights: vpmaddubsw where no pair can saturate ------------------------------------------------------

def _seven_bit(rng, shape, limit: int = int8_kernels.WEIGHT_LIMIT) -> np.ndarray:
    """int8 weights of only +-limit (every vpmaddubsw pair at its largest: 255 x 64 x 2 = 32640 for 64)."""
    return np.where(rng.random(shape) < 0.5, -limit, limit).astype(np.int8)


def _host_7bit() -> str | None:
    """The 7-bit instruction set this host's kernels take (None on a VNNI or non-x86 host)."""
    isas = [i for i in int8_kernels.int8_isas(resolve_target("cpu")) if i != "amx"]
    return isas[0] if isas and isas[0] in int8_kernels.SEVEN_BIT else None


@pytest.mark.parametrize(("op", "x_shape", "w_shape", "attrs"), [
    ("matmul", (16, 256), (256, 128), {}),
    ("matmul", (1, 64), (64, 64), {}),
    ("matmul", (7, 132), (132, 72), {}),
    ("matmul", (5, 64), (64, 100), {}),                          # padded columns
    ("matmul", (3, 5, 96), (96, 136), {}),                       # batch
    ("conv", (1, 16, 10, 10), (32, 16, 3, 3), {"padding": 1}),
    ("conv", (2, 8, 11, 11), (16, 8, 3, 3), {"strides": 2}),
    ("conv", (1, 96, 6, 6), (24, 96, 1, 1), {}),
])
@pytest.mark.parametrize("limit", [64, 65])
def test_seven_bit_weights_exact(op, x_shape, w_shape, attrs, limit):
    """Weights within [-64, 64] take vpmaddubsw on a CPU without VNNI and stay exact with every pair at its
    largest (activations 0 / 255, weights +-64); one weight of 65 could saturate a pair, and the kernel keeps the
    widened vpmaddwd path (exact too)."""
    rng = np.random.default_rng(limit)
    w = _seven_bit(rng, w_shape)
    if limit > int8_kernels.WEIGHT_LIMIT:
        w.flat[5] = -limit
    x = _values(rng, x_shape, "uint8", "extremes")
    mod = _module(x_shape, w_shape, "uint8", op, **attrs)
    report: dict = {}
    vm = relax.VirtualMachine(build(mod, {"w": w}, "cpu", report=report), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = x.astype(np.int64) @ w.astype(np.int64) if op == "matmul" else \
        _conv_reference(x, w, attrs.get("strides", 1), attrs.get("padding", 0))
    np.testing.assert_array_equal(out, ref)
    isa = _host_7bit()
    if isa is not None:
        label = DOT_PRODUCT_INTRINSICS[
            "llvm.x86.avx2.pmadd.ub.sw" if isa == "avx2_7bit" else "llvm.x86.avx512.pmaddubs.w.512"]
        assert (label in report["dot_products"]) == (limit == int8_kernels.WEIGHT_LIMIT), report


@pytest.mark.parametrize("second_within", [True, False])
def test_seven_bit_needs_every_call_within_the_limit(second_within):
    """One kernel called with two weights: marked for 7 bits only when both are within the limit (one weight of
    100 keeps both calls on the widened path); both products exact either way."""
    rng = np.random.default_rng(6)
    w1, w2 = _seven_bit(rng, (64, 32)), _seven_bit(rng, (64, 32))
    if not second_within:
        w2[3, 4] = 100
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 64), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(x, relax.const(w1), out_dtype="int32"))
            b = bb.emit(relax.op.matmul(x, relax.const(w2), out_dtype="int32"))
            out = bb.emit_output(relax.Tuple([a, b]))
        bb.emit_func_output(out)
    mod = bb.get()
    target = resolve_target("cpu")
    kernels = [f for _, f in fuse(prepare(mod, None, target), target).functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1  # one kernel, two calls
    marked = kernels[0].attrs.get(int8_kernels.SEVEN_BIT_ATTR)
    assert (marked is not None and [int(i) for i in marked] == [1]) == second_within
    xv = _values(rng, (8, 64), "uint8", "extremes")
    outs = relax.VirtualMachine(build(mod, None, "cpu"), tvm.cpu())["main"](tvm.runtime.tensor(xv))
    for got, w in zip(outs, (w1, w2), strict=True):
        np.testing.assert_array_equal(got.numpy(), xv.astype(np.int64) @ w.astype(np.int64))


def test_seven_bit_marks_each_weight_by_its_own_values():
    """Found by a breaker: the marking cached each constant's answer by id() of a short-lived wrapper, so a weight
    of 127 could inherit an earlier in-range weight's answer and run on vpmaddubsw (every output 130052 instead
    of 258064). Three MatMulInteger nodes, the first within the limit: only its kernel takes the 7-bit path."""
    import onnx  # noqa: PLC0415
    import optc  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    specs = [(24, 8, 64, None), (24, 16, 127, 1), (8, 16, 127, 1)]  # (K, N, weight value, activation zero point)
    nodes, inputs, outputs, inits = [], [], [], []
    for j, (k, n, value, zp) in enumerate(specs):
        extra = [] if zp is None else [f"az{j}"]
        if zp is not None:
            inits.append(numpy_helper.from_array(np.array(zp, np.uint8), f"az{j}"))
        inits.append(numpy_helper.from_array(np.full((k, n), value, np.int8), f"B{j}"))
        nodes.append(helper.make_node("MatMulInteger", [f"A{j}", f"B{j}", *extra], [f"Y{j}"]))
        inputs.append(helper.make_tensor_value_info(f"A{j}", TensorProto.UINT8, [4, k]))
        outputs.append(helper.make_tensor_value_info(f"Y{j}", TensorProto.INT32, [4, n]))
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model)
    lib = optc.compile(model)
    feeds = {f"A{j}": np.full((4, k), 255, np.uint8) for j, (k, _, _, _) in enumerate(specs)}
    got = lib.run(feeds)
    for j, (k, n, value, zp) in enumerate(specs):
        np.testing.assert_array_equal(got[f"Y{j}"], np.full((4, n), (255 - (zp or 0)) * value * k, np.int64))
    if _host_7bit() is not None:
        assert sum(v for key, v in lib.metadata["kernels"]["instructions"].items() if "7-bit" in key) == 1


def test_seven_bit_int8_activations_keep_the_widened_path():
    """vpmaddubsw takes unsigned activations only: int8 x int8 with 7-bit weights stays on vpmaddwd, exact."""
    rng = np.random.default_rng(7)
    w = _seven_bit(rng, (128, 64))
    x = _values(rng, (8, 128), "int8", "extremes")
    mod = _module((8, 128), (128, 64), "int8", "matmul")
    report: dict = {}
    vm = relax.VirtualMachine(build(mod, {"w": w}, "cpu", report=report), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x.astype(np.int64) @ w)
    assert not any("7-bit" in k for k in report.get("dot_products", {})), report


@pytest.mark.parametrize(("mcpu", "pattern", "isa"), [
    ("haswell", r"vpmaddubsw\s+%ymm", "AVX2 (7-bit weights)"),
    ("skylake-avx512", r"vpmaddubsw\s+%zmm", "AVX-512BW (7-bit weights)"),
    ("icelake-server", r"vpdpbusd\s+%zmm", "AVX512-VNNI"),   # VNNI first: exact for any weight
])
def test_build_only_seven_bit_instructions(mcpu, pattern, isa):
    """build only: 7-bit weights on a CPU without VNNI compile to vpmaddubsw (ymm / zmm), counted as such; a VNNI
    CPU keeps vpdpbusd."""
    w = _seven_bit(np.random.default_rng(8), (256, 128))
    report: dict = {}
    executable = build(_module((16, 256), (256, 128), "uint8", "matmul", requantize=True), {"w": w},
                       resolve_target({"kind": "llvm", "mcpu": mcpu}), report=report)
    asm = next(m for m in executable.mod.imports if m.kind == "llvm").inspect_source("asm")
    assert re.search(pattern, asm), f"{mcpu}: no {pattern}"
    assert report["dot_products"] == {isa: 1}


# --- AMX tiles (Sapphire Rapids and later) ---------------------------------------------------------------------

AMX_CASES = [  # (op, x shape, w shape, conv attrs, (rows, m tiles, n tiles, k step, k steps) expected)
    ("matmul", (64, 256), (256, 64), {}, (16, 2, 2, 64, 4)),
    ("matmul", (48, 96), (96, 16), {}, (16, 1, 1, 48, 2)),            # 3 row blocks, one n tile, k step 48
    ("matmul", (28, 3072), (3072, 48), {}, (14, 2, 1, 64, 16)),       # 14 rows; K in 3 calls of 16 steps
    ("matmul", (2, 20, 128), (128, 32), {}, (10, 2, 2, 64, 2)),       # batch, 10 rows
    ("matmul", (7, 12), (12, 32), {}, (7, 1, 2, 12, 1)),               # 7 rows, k step 12
    ("conv", (1, 64, 14, 14), (32, 64, 3, 3), {"padding": 1}, (14, 1, 2, 64, 1)),
    ("conv", (2, 32, 16, 16), (64, 32, 1, 1), {}, (16, 1, 2, 32, 1)),
]


def _amx_host() -> bool:
    from optc.codegen.amx import request_permission  # noqa: PLC0415

    return "amx" in int8_kernels.int8_isas(resolve_target("cpu")) and request_permission()


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize(("op", "x_shape", "w_shape", "attrs", "tiles"), AMX_CASES)
def test_amx_tiles_exact(op, x_shape, w_shape, attrs, tiles, x_dtype):
    """Each tile geometry: the block the rule picks, its assembly (tdpbusd / tdpbssd), and (on an AMX host)
    exact results with edge values (every product 255 x -128 or -128 x -128 somewhere)."""
    if op == "matmul":
        m, k, n = x_shape[-2], w_shape[0], w_shape[1]
    else:
        m, k, n = x_shape[3] + 2 * attrs.get("padding", 0) - w_shape[3] + 1, w_shape[1], w_shape[0]
    assert int8_kernels._amx_tiles(m, n, k) == tiles
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    w = _values(rng, w_shape, "int8", "extremes")
    x = _values(rng, x_shape, x_dtype, "extremes")
    mod = _module(x_shape, w_shape, x_dtype, op, **attrs)
    asm = _asm(mod, w, {"kind": "llvm", "mcpu": "sapphirerapids"})
    assert re.search(r"tdpbusd\s+%tmm" if x_dtype == "uint8" else r"tdpbssd\s+%tmm", asm)
    # a stride-1 conv with a window takes the window block (C tiles loaded once for all kh x kw positions); a
    # matmul or a 1x1 conv (no window loops: all of K in one call already) does not
    func, target = _reduction_kernel(mod, w)
    windowed = int8_kernels.Int8Reduction()._schedule(func, target, ["amx"], amx=True, window=True)
    assert (windowed is not None) == (op == "conv" and w_shape[2] * w_shape[3] > 1)
    if not _amx_host():
        pytest.skip("build only: this CPU has no AMX (the asm check above ran)")
    ref = (x.astype(np.int64) @ w.astype(np.int64) if op == "matmul"
           else _conv_reference(x, w, 1, attrs.get("padding", 0)))
    np.testing.assert_array_equal(_run(mod, w, x), ref)


@pytest.mark.parametrize("requantize", [False, True])
@pytest.mark.parametrize("x_shape", [(197, 96), (2, 37, 64)])
def test_amx_ragged_rows_padded(x_shape, requantize):
    """197 tokens (prime) and 37 rows: no tile height from 4 to 16 divides M, so the rows are zero-padded to whole
    tiles (pad_einsum) and cropped; exact, with the requantize epilogue over the cropped rows only."""
    rng = np.random.default_rng(x_shape[-2])
    k = x_shape[-1]
    w = _values(rng, (k, 32), "int8", "extremes")
    x = _values(rng, x_shape, "uint8", "extremes")
    mod = _module(x_shape, (k, 32), "uint8", "matmul", requantize=requantize)
    asm = _asm(mod, w, {"kind": "llvm", "mcpu": "sapphirerapids"})
    assert re.search(r"tdpbusd\s+%tmm", asm)
    if not _amx_host():
        pytest.skip("build only: this CPU has no AMX (the asm check above ran)")
    got = _run(mod, w, x)
    want = _run(mod, w, x, schedule="none")  # TVM's unscheduled loops: the same epilogue, no padding
    np.testing.assert_array_equal(got, want)
    if not requantize:
        np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("requantize", [False, True])
@pytest.mark.parametrize(("x_shape", "padded"), [((197, 96), True), ((2, 37, 64), True), ((2, 35, 64), False)])
def test_register_tile_ragged_rows_padded(x_shape, padded, requantize):
    """The VNNI / widened register tiles (3 to 8 rows, no predicated tail): 197 and 37 rows, which no height from 3
    to 8 divides, are zero-padded to whole tiles of 8 and cropped (35 = 5 x 7 is tiled as it is); exact."""
    rng = np.random.default_rng(x_shape[-2])
    k = x_shape[-1]
    w = _values(rng, (k, 32), "int8", "extremes")
    x = _values(rng, x_shape, "uint8", "extremes")
    mod = _module(x_shape, (k, 32), "uint8", "matmul", requantize=requantize)
    func, target = _reduction_kernel(mod, w)
    isas = [i for i in int8_kernels.int8_isas(target) if i != "amx"]
    if not isas:
        pytest.skip("this CPU has no integer dot-product instructions")
    sch = int8_kernels.Int8Reduction()._schedule(func, target, isas, amx=False, pad_rows=8)
    assert (sch is not None) == padded
    got = _run(mod, w, x)
    want = _run(mod, w, x, schedule="none")  # TVM's unscheduled loops: the same epilogue, no padding
    np.testing.assert_array_equal(got, want)
    if not requantize:
        np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize(("m", "n", "k"), [(3, 64, 64), (64, 24, 64), (64, 64, 30), (1, 1024, 1024)])
def test_amx_declines(m, n, k):
    """Fewer than 4 rows per tile (vpdpbusd does more per cycle), N not a multiple of 16 int32 columns, K not
    a multiple of 4 bytes: no AMX block (the VNNI / widened paths take what they can)."""
    assert int8_kernels._amx_tiles(m, n, k) is None


def test_amx_intrinsic_names_in_a_database_register():
    """A tuning record names the AMX intrinsics its schedule tensorizes with (block and window shapes in the
    name): open_database registers each one found, so the record loads in a new process."""
    from optc.codegen import amx  # noqa: PLC0415

    text = '["optc_amx_uint8_r14_m1_n2_k64x1_w3x3", "x", "optc_amx_int8_r16_m2_n2_k64x12"]'
    assert amx.register_named(text) == ["optc_amx_int8_r16_m2_n2_k64x12", "optc_amx_uint8_r14_m1_n2_k64x1_w3x3"]
    with pytest.raises(ValueError, match="no AMX tile intrinsic"):
        amx.register_intrin("uint8", 17, 1, 1, 64, 1)


def test_amx_strided_conv_takes_vnni():
    """A stride-2 convolution's activation rows are 2 pixels apart: not an AMX tile, the VNNI kernel instead (no
    failed tensorize, nothing printed)."""
    rng = np.random.default_rng(9)
    w = _values(rng, (32, 32, 3, 3), "int8")
    asm = _asm(_module((1, 32, 33, 33), (32, 32, 3, 3), "uint8", "conv", strides=2),
               w, {"kind": "llvm", "mcpu": "sapphirerapids"})
    assert "tdpbusd" not in asm and re.search(r"vpdpbusd\s+%zmm", asm)


def test_amx_permission_in_a_fresh_process(tmp_path):
    """A library with AMX kernels runs in a new process once it asks Linux for the tile state
    (``amx.request_permission``, which optc.runtime.load and build call); without that the first tile
    instruction is SIGILL: the permission is what makes it work."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not _amx_host():
        pytest.skip("this CPU has no AMX")
    rng = np.random.default_rng(10)
    w, x = _values(rng, (128, 64), "int8"), _values(rng, (32, 128), "uint8")
    lib = tmp_path / "m.so"
    build(_module((32, 128), (128, 64), "uint8", "matmul"), {"w": w}, "cpu").export_library(str(lib))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    code = (
        "import numpy as np, tvm\n"
        "from tvm import relax\n"
        "from optc.codegen.amx import request_permission\n"
        "assert request_permission()\n"
        f"vm = relax.VirtualMachine(tvm.runtime.load_module({str(lib)!r}), tvm.cpu())\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); w = np.load({str(tmp_path / 'w.npy')!r})\n"
        "y = vm['main'](tvm.runtime.tensor(x)).numpy()\n"
        "assert np.array_equal(y, x.astype(np.int64) @ w.astype(np.int64))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    bare = code.replace("assert request_permission()\n", "")
    assert subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True).returncode == -4  # SIGILL


# --- build only: instruction sets this machine lacks ------------------------------------------------------------

def _asm(mod, w, target) -> str:
    executable = build(mod, {"w": w}, resolve_target(target))
    return next(m for m in executable.mod.imports if m.kind == "llvm").inspect_source("asm")


@pytest.mark.parametrize(("mcpu", "pattern", "isa"), [
    ("sapphirerapids", r"tdpbusd\s+%tmm", "AMX int8"),
    ("icelake-server", r"vpdpbusd\s+%zmm", "AVX512-VNNI"),
    ("alderlake", r"vpdpbusd\s+%ymm", "AVX-VNNI"),
    ("skylake-avx512", r"vpmaddwd\s+%zmm", "AVX-512BW"),    # no VNNI
    ("haswell", r"vpmaddwd\s+%ymm", "AVX2"),
])
def test_build_only_dot_product_instructions(mcpu, pattern, isa):
    """build only (never run here): the u8 x s8 matmul and 3x3 conv compile for each instruction set and their
    assembly holds its dot-product instruction, and no saturating vpmaddubsw; the build report counts the
    kernel under that instruction set (what the compile summary prints)."""
    rng = np.random.default_rng(4)
    w_mm = _values(rng, (256, 128), "int8")
    w_conv = _values(rng, (64, 32, 3, 3), "int8")
    for mod, w in [(_module((16, 256), (256, 128), "uint8", "matmul", requantize=True), w_mm),
                   (_module((1, 32, 14, 14), (64, 32, 3, 3), "uint8", "conv", padding=1), w_conv)]:
        report: dict = {}
        executable = build(mod, {"w": w}, resolve_target({"kind": "llvm", "mcpu": mcpu}), report=report)
        asm = next(m for m in executable.mod.imports if m.kind == "llvm").inspect_source("asm")
        assert re.search(pattern, asm), f"{mcpu}: no {pattern}"
        assert "vpmaddubsw" not in asm
        assert report["dot_products"] == {isa: 1}


def test_build_only_int8_activations_on_vnni_use_widened_path():
    """build only: vpdpbusd multiplies unsigned x signed bytes, so int8 x int8 on a VNNI CPU takes the widened
    int16 path; AMX has a signed x signed instruction."""
    rng = np.random.default_rng(5)
    w = _values(rng, (128, 64), "int8")
    asm = _asm(_module((8, 128), (128, 64), "int8", "matmul"), w, {"kind": "llvm", "mcpu": "icelake-server"})
    # LLVM may fuse vpmaddwd and the add into AVX512-VNNI's vpdpwssd (exact too; vpdpwssds would saturate)
    assert re.search(r"(vpmaddwd|vpdpwssd)\s+%zmm", asm) and "vpdpbusd" not in asm and "vpdpwssds" not in asm
    # AMX multiplies signed x signed bytes itself (tdpbssd)
    asm = _asm(_module((8, 128), (128, 64), "int8", "matmul"), w, {"kind": "llvm", "mcpu": "sapphirerapids"})
    assert re.search(r"tdpbssd\s+%tmm", asm) and "tdpbusd" not in asm


# --- tuning records -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tuning_record_of_int8_kernel_loads_in_fresh_process(tmp_path):
    """The seeded default record of an int8 kernel names optc's tensor intrinsic: a new process opens that
    database (open_database registers the intrinsics first; JSONDatabase refused it before) and builds an exact
    kernel from it."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from optc.codegen.tuning import tune  # noqa: PLC0415

    rng = np.random.default_rng(6)
    w, x = _values(rng, (256, 128), "int8"), _values(rng, (16, 256), "uint8")
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    tune(_module((16, 256), (256, 128), "uint8", "matmul"), {"w": w}, "cpu", tmp_path / "db", trials=1,
         progress=False)
    script = f"""
import numpy as np, tvm
from tvm import relax
from optc.codegen import build
from optc.codegen.tuning import open_database
from optc.tests.test_int8_kernels import _module
w, x = np.load(r"{tmp_path / 'w.npy'}"), np.load(r"{tmp_path / 'x.npy'}")
report = {{}}
ex = build(_module((16, 256), (256, 128), "uint8", "matmul"), {{"w": w}}, "cpu",
           database=open_database(r"{tmp_path / 'db'}", create=False), report=report)
out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
print(report["tuned"], bool(np.array_equal(out, x.astype(np.int64) @ w.astype(np.int64))))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["1", "True"]
