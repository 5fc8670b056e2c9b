"""Layout transposes that need not copy, removed after ConvertLayout (a relax pass).

1. A transpose before a Flatten, folded into the next matmul's constant weight. After ConvertLayout a CNN's
   classifier reads its NHWC feature map through a transpose back to NCHW, because Flatten's order of the
   features is NCHW's: matmul(reshape(permute_dims(x, [0, 3, 1, 2]), [N, K]), W). Permuting the rows of the
   constant W once, at compile time, gives the same products from reshape(x, [N, K]), a view. onnxruntime's
   NCHWc transformer and OpenVINO do the same. Any permutation that keeps axis 0 (the batch) qualifies; each
   output element is the sum of the same products, added in x's order instead of the transpose's (float
   rounding may differ in the last places, as with any other reduction order). The 8x8 digits CNN at batch
   32: the transpose took 10-18 us of about 80.
2. A transpose that moves only axes of size 1 (the NCHW -> NHWC transpose of a one-channel image, of a
   [N, C, 1, 1] pooled map) keeps every element where it is: a reshape, a view.
"""

from __future__ import annotations

import numpy as np


def _weight_rows_permuted(w: np.ndarray, transposed_dims: list[int], perm: list[int]) -> np.ndarray:
    """W[K, M] of matmul(reshape(transpose(x, perm), [N, K]), W) as the W' of matmul(reshape(x, [N, K]), W'):
    `transposed_dims` are transpose(x)'s dims after the batch. W' = W viewed as [*transposed_dims, M], its axes
    put in x's order."""
    rank = len(perm)
    inverse = np.argsort(perm)  # x's axis a is axis inverse[a] of the transposed tensor
    view = w.reshape(*transposed_dims, w.shape[-1])
    return np.ascontiguousarray(view.transpose([int(inverse[a]) - 1 for a in range(1, rank)] + [rank - 1])
                                ).reshape(w.shape)


def layout_copies_pass():
    """The module pass (a function, so that importing optc does not import TVM)."""
    import tvm  # noqa: PLC0415
    from tvm import relax, sym  # noqa: PLC0415
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard  # noqa: PLC0415

    from ..lowering.converters import constant_value, dims_of  # noqa: PLC0415

    x_pat, shape_pat, w_pat = wildcard(), wildcard(), is_const()
    transposed = is_op("relax.permute_dims")(x_pat)
    flat = is_op("relax.reshape")(transposed, shape_pat)
    pattern = is_op("relax.matmul")(flat, w_pat)

    def rewriter(expr, matches):
        x, w = matches[x_pat], constant_value(matches[w_pat])
        t, f = matches[transposed], matches[flat]
        perm = [int(a) for a in t.attrs.axes] if t.attrs.axes is not None else None
        x_dims, f_dims = dims_of(x), dims_of(f)
        if (perm is None or perm[0] != 0 or w is None or w.ndim != 2 or x_dims is None or f_dims is None
                or len(f_dims) != 2 or not sym.Analyzer().can_prove_equal(f_dims[0], x_dims[0])
                or not all(isinstance(d, int) for d in x_dims[1:]) or int(np.prod(x_dims[1:])) != w.shape[0]):
            return expr
        new_w = _weight_rows_permuted(w, [x_dims[a] for a in perm[1:]], perm)
        return relax.op.matmul(relax.op.reshape(x, f.ty.shape), relax.const(new_w), out_dtype=expr.attrs.out_dtype)

    unit_pat = is_op("relax.permute_dims")(wildcard())

    def unit_axes_only(expr, matches):
        x = expr.args[0]
        x_dims, y_dims = dims_of(x), dims_of(expr)
        if x_dims is None or y_dims is None:
            return expr
        perm = [int(a) for a in expr.attrs.axes] if expr.attrs.axes is not None else list(range(len(x_dims)))[::-1]
        moved = [a for a in perm if not isinstance(x_dims[a], int) or x_dims[a] != 1]  # (symbolic: not size 1)
        if moved != sorted(moved):
            return expr
        return relax.op.reshape(x, expr.ty.shape)

    @tvm.transform.module_pass(opt_level=0, name="optc_layout_copies")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = rewrite_call(unit_pat, unit_axes_only, rewrite_call(pattern, rewriter, func))
        return mod

    return _pass
