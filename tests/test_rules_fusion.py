"""fuse-conv-bn, fuse-conv-add-mul, fuse-pad, fuse-matmul-add: positive and negative tests per rule. Those that
read better as text IR are in tests/filecheck/fusion/*.ir; these need chosen inputs, weights or Python-side checks."""

from __future__ import annotations

import numpy as np
import pytest
from optc.rewrites.rules import RULE_SETS
from optc.rewrites.rules import fusion as F
from optc.rewrites.rules._testing import check_rewrite, count_ops

H17 = '<ir_version: 8, opset_import: ["" : 17]>\n'
H18 = '<ir_version: 8, opset_import: ["" : 18]>\n'
RNG = np.random.default_rng(0)


def init(name: str, arr: np.ndarray) -> str:
    """An initializer declaration in ONNX's text syntax."""
    arr = np.asarray(arr)
    kind = {np.dtype("float32"): "float", np.dtype("int64"): "int64"}[arr.dtype]
    dims = "[" + ",".join(str(d) for d in arr.shape) + "]" if arr.ndim else ""
    vals = ", ".join(repr(float(v)) if kind == "float" else str(int(v)) for v in arr.reshape(-1))
    return f"{kind}{dims} {name} = {{{vals}}}"


def inits(**arrays) -> str:
    return "<" + ", ".join(init(k, v) for k, v in arrays.items()) + ">"


def r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(c):
    return dict(scale=r(c), bias=r(c), mean=r(c), var=(np.abs(r(c)) + 0.5).astype(np.float32))


def test_every_fusion_states_its_ieee_status():
    # each rule says why it is exact, or how it rounds differently (accepted reassociation), or needs fast-math
    for rules in (F.CONV_BN, F.CONV_ADD_MUL, F.PAD, F.MATMUL_ADD):
        for rule in rules:
            doc = rule.__doc__ or ""
            assert "Exact" in doc or rule.rounding or rule.fast_math, rule.__name__
            assert not (rule.rounding and rule.fast_math), rule.__name__


def test_registry():
    assert RULE_SETS["fuse-conv-bn"] == F.CONV_BN
    assert RULE_SETS["fuse-conv-add-mul"] == F.CONV_ADD_MUL
    assert RULE_SETS["fuse-pad"] == F.PAD
    assert RULE_SETS["fuse-matmul-add"] == F.MATMUL_ADD


# -- BatchNormalization ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias,group", [(True, 1), (False, 1), (True, 2)])
def test_conv_bn_positive(with_bias, group):
    ws = dict(w=r(4, 4 // group, 3, 3), **bn_params(4))
    if with_bias:
        ws["b"] = r(4)
    conv = f"c = Conv<pads = [1, 1, 1, 1], group = {group}>(x, w{', b' if with_bias else ''})"
    model, _ = check_rewrite(F.FuseConvBatchNorm, H17 + f"""
    g (float[2,4,5,5] x) => (float[2,4,5,5] y) {inits(**ws)} {{
      {conv}
      y = BatchNormalization<epsilon = 0.001>(c, scale, bias, mean, var)
    }}""", expect="FuseConvBatchNorm", gone=["BatchNormalization"], rtol=1e-4, atol=1e-5)
    # the original weight is not overwritten: the fused one has a fresh name
    conv_node = next(n for n in model.graph if n.op_type == "Conv")
    assert conv_node.inputs[1].name != "w" and "w" in model.graph.initializers


def test_conv_bn_within_rounding_bound():
    # not bit-exact (a documented reassociation); the difference is a few units of rounding of the sum of the
    # magnitudes of the products, sum |w * s * x| + |s| (|b| + |mean|) + |beta| (see fusion's docstring)
    from optc.ir import from_onnx, to_onnx
    from optc.rewrites.rules._testing import apply, parse, run_ort

    c_in, k = 16, 3
    ws = dict(w=r(8, c_in, k, k), b=r(8), **bn_params(8))
    proto = parse(H17 + f"""
    g (float[2,{c_in},9,9] x) => (float[2,8,7,7] y) {inits(**ws)} {{
      c = Conv(x, w, b)
      y = BatchNormalization<epsilon = 0.001>(c, scale, bias, mean, var)
    }}""")
    model = from_onnx(proto)
    assert apply([F.FuseConvBatchNorm], model).counts.get("FuseConvBatchNorm") == 1
    x = RNG.standard_normal((2, c_in, 9, 9)).astype(np.float32)
    (before,), (after,) = run_ort(proto, {"x": x}), run_ort(to_onnx(model), {"x": x})
    s = ws["scale"].astype(np.float64) / np.sqrt(ws["var"].astype(np.float64) + 1e-3)
    mag_proto = parse(H17 + f"""
    g (float[2,{c_in},9,9] x) => (float[2,8,7,7] y) {inits(w=np.abs(ws["w"] * s.reshape(-1, 1, 1, 1)).astype(np.float32))} {{
      y = Conv(x, w)
    }}""")
    (mag,) = run_ort(mag_proto, {"x": np.abs(x)})
    mag = mag + (np.abs(s) * (np.abs(ws["b"]) + np.abs(ws["mean"])) + np.abs(ws["bias"])).reshape(1, -1, 1, 1)
    terms = c_in * k * k + 4
    err = np.abs(after.astype(np.float64) - before)
    assert (err <= terms * 2.0**-23 * mag).all(), float((err / mag).max())


def test_conv_bn_negative_fold_overflows():
    # a tiny variance makes w * s overflow float32: the fold would put +-inf into the weights
    ws = dict(w=np.full((4, 3, 3, 3), 1e30, np.float32), scale=np.full(4, 1e10, np.float32),
              bias=np.zeros(4, np.float32), mean=np.zeros(4, np.float32), var=np.ones(4, np.float32))
    check_rewrite(F.FuseConvBatchNorm, H17 + f"""
    g (float[2,3,5,5] x) => (float[2,4,3,3] y) {inits(**ws)} {{
      c = Conv(x, w)
      y = BatchNormalization(c, scale, bias, mean, var)
    }}""", expect=None)


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_bn_positive(group):
    ws = dict(w=r(4, 6 // group, 3, 3), b=r(6), **bn_params(6))
    check_rewrite(F.FuseConvTransposeBatchNorm, H17 + f"""
    g (float[2,4,5,5] x) => (float[2,6,7,7] y) {inits(**ws)} {{
      c = ConvTranspose<group = {group}>(x, w, b)
      y = BatchNormalization(c, scale, bias, mean, var)
    }}""", expect="FuseConvTransposeBatchNorm", gone=["BatchNormalization"], rtol=1e-4, atol=1e-5)


def test_convtranspose_bn_negative_channels():
    ws = dict(w=r(4, 6, 3, 3), **bn_params(6))
    check_rewrite(F.FuseConvTransposeBatchNorm, H17 + f"""
    g (float[2,4,5,5] x) => (float[2,6,7,7] y, float[2,6,7,7] c) {inits(**ws)} {{
      c = ConvTranspose(x, w)
      y = BatchNormalization(c, scale, bias, mean, var)
    }}""", expect=None)


@pytest.mark.parametrize("trans_b,cshape", [(0, (5,)), (1, (5,)), (0, (3, 5)), (1, None)])
def test_gemm_bn_positive(trans_b, cshape):
    ws = dict(w=r(5, 4) if trans_b else r(4, 5), **bn_params(5))
    if cshape is not None:
        ws["c"] = r(*cshape)
    args = "a, w, c" if cshape is not None else "a, w"
    check_rewrite(F.FuseGemmBatchNorm, H17 + f"""
    g (float[3,4] a) => (float[3,5] y) {inits(**ws)} {{
      t = Gemm<transB = {trans_b}, alpha = 0.5, beta = 2.0>({args})
      y = BatchNormalization(t, scale, bias, mean, var)
    }}""", expect="FuseGemmBatchNorm", gone=["BatchNormalization"], rtol=1e-4, atol=1e-5)


# -- Add / Mul into Conv --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cshape", [(1, 4, 1, 1), (4, 1, 1), (1,), ()])
def test_conv_add_positive(cshape):
    ws = dict(w=r(4, 3, 3, 3), b=r(4), k=r(*cshape))
    check_rewrite(F.FuseConvAdd, H17 + f"""
    g (float[2,3,5,5] x) => (float[2,4,3,3] y) {inits(**ws)} {{
      c = Conv(x, w, b)
      y = Add(k, c)
    }}""", expect="FuseConvAdd", gone=["Add"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_mul_positive(with_bias):
    ws = dict(w=r(4, 3, 3, 3), k=r(4, 1, 1))
    if with_bias:
        ws["b"] = r(4)
    check_rewrite(F.FuseConvMul, H17 + f"""
    g (float[2,3,5,5] x) => (float[2,4,3,3] y) {inits(**ws)} {{
      c = Conv(x, w{', b' if with_bias else ''})
      y = Mul(c, k)
    }}""", expect="FuseConvMul", gone=["Mul"], rtol=1e-5, atol=1e-5)


# -- Pad into Conv / pools ------------------------------------------------------------------------------------


def test_pad_conv_negative_minus_zero_value():
    # a -0.0 pad: a window of -0.0 products sums to -0.0 with it, to +0.0 with the Conv's implicit padding
    ws = dict(w=np.ones((1, 1, 3, 3), np.float32), p=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
              v=np.array(-0.0, np.float32))
    check_rewrite(F.FusePadConv, H17 + f"""
    g (float[1,1,4,4] x) => (float[1,1,4,4] y) {inits(**ws)} {{
      t = Pad(x, p, v)
      y = Conv(t, w)
    }}""", expect=None, exact=True, feeds={"x": np.full((1, 1, 4, 4), -0.0, np.float32)})


def test_pad_conv_exact_on_special_values():
    # the implicit padding is the Pad's +0.0: bit for bit the same, NaN and +-inf and -0.0 inputs included
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    x[1] = -0.0
    ws = dict(w=r(4, 3, 3, 3), p=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    check_rewrite(F.FusePadConv, H17 + f"""
    g (float[2,3,5,5] x) => (float[2,4,5,5] y) {inits(**ws)} {{
      t = Pad(x, p)
      y = Conv(t, w)
    }}""", expect="FusePadConv", gone=["Pad"], exact=True, feeds={"x": x})


def test_pad_avgpool_negative_without_fast_math():
    # -0.0 inputs: the padded window sums -0.0 + +0.0 = +0.0; implicit padding averages the -0.0s to -0.0
    ws = dict(p=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    check_rewrite(F.FusePadAveragePool, H17 + f"""
    g (float[2,3,5,5] x) => (float[2,3,5,5] y) {inits(**ws)} {{
      t = Pad(x, p)
      y = AveragePool<kernel_shape = [3, 3]>(t)
    }}""", expect=None, exact=True, feeds={"x": np.full((2, 3, 5, 5), -0.0, np.float32)})


def _pad_maxpool_proto():
    import onnx.numpy_helper

    ws = dict(p=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), v=np.array(-1.0, np.float32))
    proto = onnx.parser.parse_model(H17 + f"""
    g (float[2,3,5,5] x) => (float[2,3,5,5] y) {inits(**ws)} {{
      t = Pad(x, p, v)
      y = MaxPool<kernel_shape = [3, 3]>(t)
    }}""")
    proto.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "v"))
    return proto


def test_pad_maxpool_negative_without_fast_math():
    # onnxruntime's implicit MaxPool padding starts from -FLT_MAX: an all -inf input pools to -3.4e38 at the
    # corners without the Pad, to -inf with it
    check_rewrite(F.FusePadMaxPool, _pad_maxpool_proto(), expect=None, exact=True,
                  feeds={"x": np.full((2, 3, 5, 5), -np.inf, np.float32)})


# -- MatMul + Add -> Gemm -------------------------------------------------------------------------------------


def test_matmul_add_negative_symbolic_broadcast():
    # C's leading dim K may differ from A's M (and broadcast a 1-row product): Gemm cannot express that
    check_rewrite(F.MatMulAddToGemm, H17 + """
    g (float[M,4] a, float[4,5] b, float[K,5] c) => (float[K,5] y) {
      t = MatMul(a, b)
      y = Add(t, c)
    }""", expect=None, feeds={"a": np.ones((1, 4), np.float32), "b": np.ones((4, 5), np.float32),
                              "c": np.ones((3, 5), np.float32)}, infer=False)


def _ops(model):
    return {k: v for k, v in count_ops(model).items() if k != "Constant"}


@pytest.mark.parametrize("a_dims,target,y_dims", [("2,3", "{3, 2, 2, 3}", "3,2,2,3"),
                                                  ("N,3", "{-1, 3, 2, 3}", "M,3,2,3")])
def test_matmul_add_reshape_positive(a_dims, target, y_dims):
    ws = dict(b=r(4, 6), c=r(6))
    model, _ = check_rewrite(F.MatMulAddReshapeToGemm, H17 + f"""
    g (float[{a_dims},4] a) => (float[{y_dims}] y) {inits(**ws)} {{
      s = Constant<value = int64[4] {target}>()
      t = MatMul(a, b)
      u = Add(c, t)
      y = Reshape(u, s)
    }}""", expect="MatMulAddReshapeToGemm", gone=["MatMul", "Add"], present=["Gemm"])
    assert _ops(model) == {"Reshape": 2, "Gemm": 1}


def test_matmul_add_reshape_folds_producing_reshape_positive():
    ws = dict(b=r(4, 4), c=r(4))
    model, _ = check_rewrite(F.MatMulAddReshapeToGemm, H17 + f"""
    g (float[6,4] x) => (float[2,3,2,2] y) {inits(**ws)} {{
      s0 = Constant<value = int64[3] {{2, 3, 4}}>()
      s = Constant<value = int64[4] {{2, 3, 2, 2}}>()
      a = Reshape(x, s0)
      t = MatMul(a, b)
      u = Add(t, c)
      y = Reshape(u, s)
    }}""", expect="MatMulAddReshapeToGemm", gone=["MatMul", "Add"])
    assert _ops(model) == {"Reshape": 2, "Gemm": 1}


def test_matmul_add_reshape_shared_input_positive():
    # q and k of one input (cse then merges the two identical flattenings of a)
    ws = dict(bq=r(4, 4), cq=r(4), bk=r(4, 4), ck=r(4))
    model, res = check_rewrite(F.MatMulAddReshapeToGemm, H17 + f"""
    g (float[2,3,4] a) => (float[2,3,2,2] q, float[2,3,2,2] k) {inits(**ws)} {{
      s = Constant<value = int64[4] {{2, 3, 2, 2}}>()
      tq = MatMul(a, bq)
      uq = Add(tq, cq)
      q = Reshape(uq, s)
      tk = MatMul(a, bk)
      uk = Add(tk, ck)
      k = Reshape(uk, s)
    }}""", expect="MatMulAddReshapeToGemm", gone=["MatMul", "Add"])
    assert res.counts["MatMulAddReshapeToGemm"] == 2 and _ops(model) == {"Reshape": 4, "Gemm": 2}


def test_matmul_add_reshape_negative_row_addend():
    # C varies along the rows of A: Gemm's C would have to be the broadcast (6, 6) matrix
    ws = dict(b=r(4, 6), c=r(3, 6))
    check_rewrite(F.MatMulAddReshapeToGemm, H17 + f"""
    g (float[2,3,4] a) => (float[6,6] y) {inits(**ws)} {{
      s = Constant<value = int64[2] {{6, 6}}>()
      t = MatMul(a, b)
      u = Add(t, c)
      y = Reshape(u, s)
    }}""", expect=None)


def test_matmul_add_reshape_negative_copied_dim():
    # the target copies dim 0 (0) of the 3-D product; with a dynamic batch it cannot be rewritten for the 2-D one
    ws = dict(b=r(4, 6), c=r(6))
    check_rewrite(F.MatMulAddReshapeToGemm, H17 + f"""
    g (float[N,3,4] a) => (float[N,18] y) {inits(**ws)} {{
      s = Constant<value = int64[2] {{0, 18}}>()
      t = MatMul(a, b)
      u = Add(t, c)
      y = Reshape(u, s)
    }}""", expect=None)


def test_pad_avgpool_negative_ceil_mode():
    ws = dict(p=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    check_rewrite(F.FusePadAveragePool, H17 + f"""
    g (float[2,3,6,6] x) => (float[2,3,4,4] y) {inits(**ws)} {{
      t = Pad(x, p)
      y = AveragePool<kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1>(t)
    }}""", expect=None, fast_math=True)


def _permuted_rows(a_dims, p, proj, q, *, c=None, trans_a=0) -> str:
    """a -> Transpose(p) -> Reshape([rows, K]) -> `proj` -> Reshape(leading dims in p's order + [N]) ->
    Transpose(q)."""
    lead = [a_dims[i] for i in p[:-1]]
    rows, k = int(np.prod(a_dims[:-1])), a_dims[-1]
    out = [lead[i] for i in q[:-1]] + [6]
    ws = dict(b=r(k, 6)) if c is None else dict(b=r(k, 6), c=c)
    call = "MatMul(f, b)" if proj == "MatMul" else f"Gemm<transA = {trans_a}>({'f, b, c' if c is not None else 'f, b'})"
    if trans_a:
        call = f"Gemm<transA = 1>(ft, b{', c' if c is not None else ''})"
    return H17 + f"""
    g (float[{",".join(map(str, a_dims))}] a) => (float[{",".join(map(str, out))}] y) {inits(**ws)} {{
      s1 = Constant<value = int64[2] {{{rows}, {k}}}>()
      s2 = Constant<value = int64[{len(lead) + 1}] {{{", ".join(map(str, lead + [6]))}}}>()
      t = Transpose<perm = {list(p)}>(a)
      f = Reshape(t, s1)
      ft = Transpose<perm = [1, 0]>(f)
      u = {call}
      v = Reshape(u, s2)
      y = Transpose<perm = {list(q)}>(v)
    }}"""


@pytest.mark.parametrize("a_dims,p,q,proj,c", [
    ((2, 5, 4), [1, 0, 2], [1, 0, 2], "Gemm", r(6)),        # torch's sequence-first attention output projection
    ((2, 5, 4), [1, 0, 2], [1, 0, 2], "Gemm", None),
    ((2, 5, 4), [1, 0, 2], [1, 0, 2], "MatMul", None),
    ((2, 3, 5, 4), [2, 0, 1, 3], [1, 2, 0, 3], "Gemm", r(1, 6)),
])
def test_gemm_of_permuted_rows_positive(a_dims, p, q, proj, c):
    model, _ = check_rewrite(F.GemmOfPermutedRows, _permuted_rows(a_dims, p, proj, q, c=c),
                             expect="GemmOfPermutedRows", gone=["Transpose"])
    assert _ops(model) == {"Reshape": 2, proj: 1}


@pytest.mark.parametrize("a_dims,p,q,kw", [
    ((2, 5, 4), [1, 0, 2], [0, 1, 2], {}),                   # the second Transpose does not undo the first
    ((2, 3, 5, 4), [2, 0, 1, 3], [2, 0, 1, 3], {}),          # nor here (p applied twice)
    ((2, 5, 4), [1, 0, 2], [1, 0, 2], {"c": r(10, 6)}),      # C varies along the rows: it would need permuting
    ((2, 5, 4), [1, 0, 2], [1, 0, 2], {"trans_a": 1}),       # transA: the Gemm's rows are a's columns
])
def test_gemm_of_permuted_rows_negative(a_dims, p, q, kw):
    check_rewrite(F.GemmOfPermutedRows, _permuted_rows(a_dims, p, "Gemm", q, **kw), expect=None)


def test_gemm_of_permuted_rows_not_below_opset_7():
    # Gemm-6 broadcasts C only with broadcast=1, which the rewrite would not carry over (onnxruntime has no Gemm-6
    # kernel to compare on: the rule must not fire)
    from optc.ir import from_onnx
    from optc.rewrites.rules._testing import apply, parse

    text = _permuted_rows((2, 5, 4), [1, 0, 2], "Gemm", [1, 0, 2], c=r(6)).replace('"" : 17', '"" : 6')
    text = text.replace("Gemm<transA = 0>", "Gemm<transA = 0, broadcast = 1>")
    res = apply([F.GemmOfPermutedRows], from_onnx(parse(text)))
    assert "GemmOfPermutedRows" not in res.counts


def _permuted_rows_symbolic(a_dims: str, out: str, lead: str) -> str:
    """a [`a_dims`] (symbolic dims) -> Transpose([1, 0, 2]) -> Reshape([-1, 4]) -> Gemm(b [4, 6], c) ->
    Reshape(Concat(`lead` (names of a's dims as [1] tensors d0, d1), [6])) -> Transpose([1, 0, 2]): the dynamic-axes
    export of torch's sequence-first output projection."""
    ws = dict(b=r(4, 6), c=r(6))
    return H17 + f"""
    g (float[{a_dims}] a) => (float[{out}] y) {inits(**ws)} {{
      sh = Shape(a)
      i0 = Constant<value = int64[1] {{0}}>()
      i1 = Constant<value = int64[1] {{1}}>()
      d0 = Gather<axis = 0>(sh, i0)
      d1 = Gather<axis = 0>(sh, i1)
      s1 = Constant<value = int64[2] {{-1, 4}}>()
      n6 = Constant<value = int64[1] {{6}}>()
      s2 = Concat<axis = 0>({lead}, n6)
      t = Transpose<perm = [1, 0, 2]>(a)
      f = Reshape(t, s1)
      u = Gemm(f, b, c)
      v = Reshape(u, s2)
      y = Transpose<perm = [1, 0, 2]>(v)
    }}"""


@pytest.mark.parametrize("batch", [3, 1])
def test_gemm_of_permuted_rows_symbolic_batch_positive(batch):
    # a [b, 5, 4], b symbolic: the rows' Reshapes become [-1, 4] and [-1, 5, 6] (at b = 0 the original fails: its
    # computed 0 copies the Gemm's 6 columns)
    model, _ = check_rewrite(F.GemmOfPermutedRows, _permuted_rows_symbolic("b,5,4", "b,5,6", "d1, d0"),
                             expect="GemmOfPermutedRows", gone=["Transpose"],
                             feeds={"a": np.random.default_rng(0).normal(size=(batch, 5, 4)).astype(np.float32)})
    assert _ops(model) == {"Reshape": 2, "Gemm": 1}
    shapes = sorted(n.inputs[1].const_value().tolist() for n in model.graph if n.op_type == "Reshape")
    assert shapes == [[-1, 4], [-1, 5, 6]]


def test_gemm_of_permuted_rows_two_symbolic_dims_negative():
    # a [b, s, 4]: two symbolic leading dims, no constant target gives them back
    check_rewrite(F.GemmOfPermutedRows, _permuted_rows_symbolic("b,s,4", "b,s,6", "d1, d0"), expect=None,
                  feeds={"a": np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)})
