"""Image ops whose output shape is given by input values: CenterCropPad and Col2Im, lowered when those inputs
are compile-time constants (slice + pad; a constant gather map + sum) and refused when they are run-time values;
and Det of small static matrices (an unrolled LU factorization with partial pivoting).

Semantics: the ONNX operator specs and `onnx/reference/ops/op_center_crop_pad.py`, `op_col2im.py`, `op_det.py`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, topi

from ..converters import const, constant_value, converter, dtype_of, refuse, static_dim


def _constant_ints(x, what: str, op: str) -> list[int]:
    value = None if x is None else constant_value(x)
    if value is None:
        raise refuse(f"{op} with {what} computed at run time is not supported by the TVM back end (the output "
                     "shape is given by its values)")
    return [int(v) for v in value.reshape(-1)]


@converter("", "CenterCropPad")
def center_crop_pad(bb, inputs, attrs, ctx):
    """CenterCropPad-18 of x to the constant `shape` (input 1) along `axes` (default all): each of those dims is
    cropped to its centre, or padded with zeros around it (an odd difference puts the extra element at the end),
    in x's type (spec; onnx/reference/ops/op_center_crop_pad.py). Refused for a run-time shape."""
    x = inputs[0]
    sizes = _constant_ints(inputs[1], "a shape", "CenterCropPad")
    rank = x.ty.ndim
    axes = list(attrs.get("axes", range(rank)))
    if len(axes) != len(sizes) or any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise refuse(f"CenterCropPad with shape {sizes} and axes {axes} for a rank-{rank} input")
    before, after = [0] * rank, [0] * rank
    for axis, size in zip((a % rank for a in axes), sizes, strict=True):
        dim = static_dim(x, axis, "CenterCropPad")
        if size < 0:
            raise refuse(f"CenterCropPad to the negative size {size}")
        if size < dim:
            start = (dim - size) // 2
            x = bb.normalize(relax.op.strided_slice(x, [axis], [start], [start + size], [1], assume_inbound=True))
        elif size > dim:
            before[axis] = (size - dim) // 2
            after[axis] = size - dim - before[axis]
    if any(before) or any(after):
        x = bb.emit_te(topi.nn.pad, x, before, after, 0.0)
    return x


def col2im_map(image: list[int], block: list[int], dilations: list[int], pads: list[int],
               strides: list[int]) -> np.ndarray:
    """For each image pixel (row-major over `image`), the columns of the [prod(block) * L] column matrix (block
    element k, sliding position l at k * L + l) that add up into it, padded with the index prod(block) * L (a
    zero) to the largest count: int64 [prod(image), max count]. As torch's col2im / onnx's reference:
    pixel = position * stride - pad_begin + offset * dilation, outside pixels dropped."""
    n = len(image)
    blocks = [(image[i] + pads[i] + pads[i + n] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
              for i in range(n)]
    if any(b < 1 for b in blocks):
        raise refuse(f"Col2Im with no sliding block (image {image}, block {block})")
    offsets = np.stack(np.unravel_index(np.arange(int(np.prod(block))), block), axis=-1)  # [K, n]
    positions = np.stack(np.unravel_index(np.arange(int(np.prod(blocks))), blocks), axis=-1)  # [L, n]
    pixel = (positions[None, :, :] * np.array(strides) - np.array(pads[:n])
             + offsets[:, None, :] * np.array(dilations))  # [K, L, n]
    inside = np.all((pixel >= 0) & (pixel < np.array(image)), axis=-1).reshape(-1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(np.where(pixel < 0, 0, pixel), -1, 0)), image,
                                mode="clip").reshape(-1)
    columns = np.arange(flat.size)
    contributors = [columns[inside & (flat == p)] for p in range(int(np.prod(image)))]
    width = max(1, max(len(c) for c in contributors))
    table = np.full((len(contributors), width), flat.size, dtype=np.int64)
    for p, c in enumerate(contributors):
        table[p, :len(c)] = c
    return table


_MAX_COL2IM_TABLE = 1 << 24


@converter("", "Col2Im")
def col2im(bb, inputs, attrs, ctx):
    """Col2Im-18 of x [N, C * prod(block_shape), L] with constant image_shape and block_shape (inputs 1, 2),
    `dilations`, `pads` and `strides`: [N, C, *image_shape] in x's type, each pixel the sum of the columns that
    land on it (spec; onnx/reference/ops/op_col2im.py). Lowered as a gather with a constant map (`col2im_map`)
    and a sum (only additions: IEEE infinities and NaNs come through as in the reference); refused when the
    shapes are run-time values."""
    x = inputs[0]
    image = _constant_ints(inputs[1], "an image_shape", "Col2Im")
    block = _constant_ints(inputs[2], "a block_shape", "Col2Im")
    n = len(image)
    dilations = list(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * 2 * n))
    strides = list(attrs.get("strides", [1] * n))
    if (x.ty.ndim != 3 or len(block) != n or len(dilations) != n or len(pads) != 2 * n or len(strides) != n
            or min(image + block + dilations + strides, default=1) < 1 or min(pads, default=0) < 0):
        raise refuse(f"Col2Im with image_shape {image}, block_shape {block}, dilations {dilations}, pads {pads} and "
                     f"strides {strides} for a rank-{x.ty.ndim} input")
    kernel = int(np.prod(block))
    rows, length = static_dim(x, 1, "Col2Im"), static_dim(x, 2, "Col2Im")
    table = col2im_map(image, block, dilations, pads, strides)
    if rows % kernel or table.max(initial=0) > kernel * length or table.size > _MAX_COL2IM_TABLE:
        raise refuse(f"Col2Im of a [N, {rows}, {length}] input with image_shape {image} and block_shape {block}")
    if int(np.prod([(image[i] + pads[i] + pads[i + n] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
                    for i in range(n)])) != length:
        raise refuse(f"Col2Im of {length} sliding positions, not the number the shapes give")
    batch = x.ty.shape.values[0]
    channels = rows // kernel
    cols = bb.normalize(relax.op.reshape(x, [batch, channels, kernel * length]))
    zero = bb.normalize(relax.op.zeros(relax.ShapeExpr([batch, channels, 1]), dtype_of(x)))
    cols = bb.normalize(relax.op.concat([cols, zero], axis=2))
    picked = bb.normalize(relax.op.take(cols, const(table.reshape(-1)), axis=2))
    picked = bb.normalize(relax.op.reshape(picked, [batch, channels, table.shape[0], table.shape[1]]))
    summed = bb.normalize(relax.op.sum(picked, axis=3))  # (from +0.0, as the reference's zeros: -0.0 -> +0.0)
    return relax.op.reshape(summed, [batch, channels, *image])


_MAX_DET = 16


@converter("", "Det")
def det(bb, inputs, attrs, ctx):
    """Det-11/22 of x [..., M, M] (M static, at most 16): [...] in x's type, by LU factorization with partial
    pivoting unrolled over the M steps on the whole matrix (the pivot is the first entry of largest magnitude,
    as in LAPACK's getrf that numpy.linalg.det and onnx/reference/ops/op_det.py use; a zero pivot skips the
    elimination, so a singular matrix gives 0), the determinant being the pivots' product times the
    permutation's sign. Computed in float32 (float64 for float64)."""
    x = inputs[0]
    dtype = dtype_of(x)
    if dtype not in ("float16", "bfloat16", "float32", "float64") or x.ty.ndim < 2:
        raise refuse(f"Det of a rank-{x.ty.ndim} {dtype} input")
    rank = x.ty.ndim
    size = static_dim(x, rank - 1, "Det")
    if size != static_dim(x, rank - 2, "Det") or not 1 <= size <= _MAX_DET:
        raise refuse(f"Det of {x.ty.shape} matrices (square, at most {_MAX_DET}x{_MAX_DET})")
    compute = "float64" if dtype == "float64" else "float32"
    a = x if dtype == compute else bb.normalize(relax.op.astype(x, compute))
    row = const(np.arange(size, dtype=np.int64))  # [M]
    zero = const(np.zeros(1), compute)
    result = sign = None
    for j in range(size):
        pivot = bb.normalize(relax.op.strided_slice(a, [rank - 2, rank - 1], [j, j], [j + 1, j + 1]))
        if j + 1 < size:
            column = bb.normalize(relax.op.squeeze(relax.op.strided_slice(a, [rank - 1], [j], [j + 1]), [rank - 1]))
            magnitude = relax.op.where(relax.op.less(row, const(np.array(j))), const(-np.ones(1), compute),
                                       relax.op.abs(column))
            chosen = bb.normalize(relax.op.argmax(magnitude, rank - 2, keepdims=True))  # [..., 1]
            chosen = bb.normalize(relax.op.maximum(relax.op.astype(chosen, "int64"), const(np.array([j]))))
            # rows j and chosen swapped: a gather of a's rows by [0, .., chosen, .., j, ..]
            order = relax.op.where(relax.op.equal(row, const(np.array(j))), chosen,
                                   relax.op.where(relax.op.equal(row, chosen), const(np.array(j)), row))
            order = relax.op.broadcast_to(relax.op.expand_dims(order, [rank - 1]), a.ty.shape)
            a = bb.normalize(relax.op.gather_elements(a, order, rank - 2))
            flip = relax.op.where(relax.op.equal(chosen, const(np.array([j]))), const(np.ones(1), compute),
                                  const(-np.ones(1), compute))
            sign = bb.normalize(flip if sign is None else relax.op.multiply(sign, flip))
            pivot = bb.normalize(relax.op.strided_slice(a, [rank - 2, rank - 1], [j, j], [j + 1, j + 1]))
            pivot_row = relax.op.strided_slice(a, [rank - 2], [j], [j + 1])  # [..., 1, M]
            below = relax.op.greater(relax.op.expand_dims(row, [1]), const(np.array(j)))  # [M, 1]
            usable = relax.op.logical_and(below, relax.op.not_equal(pivot, zero))
            factor = relax.op.divide(relax.op.strided_slice(a, [rank - 1], [j], [j + 1]), pivot)  # [..., M, 1]
            a = bb.normalize(relax.op.where(usable, relax.op.subtract(a, relax.op.multiply(factor, pivot_row)), a))
        result = pivot if result is None else bb.normalize(relax.op.multiply(result, pivot))
    if sign is not None:
        result = relax.op.multiply(result, relax.op.expand_dims(sign, [rank - 1]))
    result = bb.normalize(relax.op.squeeze(result, [rank - 2, rank - 1]))
    return result if dtype == compute else relax.op.astype(result, dtype)
