"""Gather and scatter ops with ONNX's index semantics: int32 or int64 indices, negative indices counting from
the end of their axis.

TVM's `gather_nd` and `scatter_nd` accept only int64 indices (exporters write int32 ones: torch's dynamo
exporter turns `x[idx]` into GatherND with the index tensor's own dtype), and its `scatter_elements` kernel is
an opaque extern that the build's layout-rewrite pass rejects. Every converter here casts the indices to
int64 and maps negative ones to `index + extent`; ScatterElements (and the older Scatter) become a
`scatter_nd` on explicit coordinates.

Out-of-range indices are an error in ONNX (onnxruntime refuses them); TVM's kernels do not check and read or
write out of bounds (a segfault, or garbage). So every index is checked: constant indices when the model is
lowered (OptcError naming the node), run-time ones by a small kernel (`_index_check`) that also wraps the
negative ones and fails the call with `INDEX_ERROR` (one line naming the node; `runtime.Module.run` turns it
into an OptcError). Its cost is one pass over the indices, next to a gather or scatter that reads them anyway.
A GPU kernel cannot fail the call: for GPU targets the checks only wrap (`without_index_asserts`).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx
from tvm.script import tirx as T

from ...errors import OptcError
from ...runtime import INDEX_ERROR
from ..converters import const, constant_value, converter, dims_of, dtype_of, lookup_frontend, node_label, refuse

INDEX_CHECK_ATTR = "optc.index_check"  # marks the PrimFuncs of `_index_check` (its value: k)


def _index_tensor(bb, idx, op: str):
    """`idx` as an int64 tensor (ONNX allows int32 and int64 indices)."""
    if isinstance(idx, relax.ShapeExpr):
        return bb.normalize(relax.op.shape_to_tensor(idx))
    if not isinstance(idx.ty, relax.TensorType):
        raise refuse(f"{op} with indices that are not a tensor ({idx.ty})")
    dtype = dtype_of(idx)
    if dtype not in ("int32", "int64"):
        raise refuse(f"{op} with {dtype} indices (ONNX allows int32 and int64)")
    if dtype == "int64":
        return idx
    value = constant_value(idx)
    if value is not None:
        return const(value.astype(np.int64))
    return bb.normalize(relax.op.astype(idx, "int64"))


def _rank(x, what: str, op: str) -> int:
    ndim = getattr(x.ty, "ndim", -1)
    if ndim is None or ndim < 0:
        raise refuse(f"{op} with {what} of unknown rank is not supported by the TVM back end")
    return int(ndim)


def _extents(bb, data, start: int, count: int):
    """data.shape[start:start + count] as an int64 tensor of shape [count]."""
    dims = dims_of(data)
    if dims is not None:
        part = dims[start:start + count]
        if all(isinstance(d, int) for d in part):
            return const(np.array(part, np.int64))
        return bb.normalize(relax.op.shape_to_tensor(relax.ShapeExpr(part)))
    shape = bb.normalize(relax.op.shape_to_tensor(relax.op.shape_of(data)))
    return bb.normalize(relax.op.strided_slice(shape, [0], [start], [start + count]))


def _index_check(k: int, message: str):
    """A PrimFunc `(idx int64[m, k], extents int64[k]) -> int64[m, k]`: each index with a negative one wrapped
    (`+ extents[j]`); the call fails with `message` when `idx[i, j]` is outside `[-extents[j], extents[j])`.
    A serial loop over one block (one compare and select per index, beside a gather or scatter that reads them
    anyway), marked scheduled so that no schedule rule moves the assert (the block: TVM's layout passes want one
    where `extents` is a constant), and tuning leaves it out (`INDEX_CHECK_ATTR`); GPU targets: `without_index_asserts`."""

    @T.prim_func(private=True, s_tir=True)
    def index_check(var_idx: T.handle, var_extents: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "op_pattern": 8, INDEX_CHECK_ATTR: k, "tirx.is_scheduled": True})
        m = T.int64()
        idx = T.match_buffer(var_idx, (m, k), "int64")
        extents = T.match_buffer(var_extents, (k,), "int64")
        out = T.match_buffer(var_out, (m, k), "int64")
        for i, j in T.grid(m, k):
            with T.sblock("check"):
                vi, vj = T.axis.remap("SS", [i, j])
                T.reads(idx[vi, vj], extents[vj])
                T.writes(out[vi, vj])
                assert -extents[vj] <= idx[vi, vj] and idx[vi, vj] < extents[vj], message
                out[vi, vj] = T.if_then_else(idx[vi, vj] < T.int64(0), idx[vi, vj] + extents[vj], idx[vi, vj])

    return index_check


def _index_wrap(k: int):
    """`_index_check` without the check, as a block that GPU schedules (dlight) bind to threads."""

    @T.prim_func(private=True, s_tir=True)
    def index_wrap(var_idx: T.handle, var_extents: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "op_pattern": 8})
        m = T.int64()
        idx = T.match_buffer(var_idx, (m, k), "int64")
        extents = T.match_buffer(var_extents, (k,), "int64")
        out = T.match_buffer(var_out, (m, k), "int64")
        for i, j in T.grid(m, k):
            with T.sblock("wrap"):
                vi, vj = T.axis.remap("SS", [i, j])
                out[vi, vj] = T.if_then_else(idx[vi, vj] < T.int64(0), idx[vi, vj] + extents[vj], idx[vi, vj])

    return index_wrap


def without_index_asserts(mod):
    """`mod` with its index checks replaced by `_index_wrap`: a GPU kernel cannot fail the call (CUDA code has
    no way to raise TVM's error), so on a GPU target an out-of-range index is wrapped, not refused."""
    from tvm import tirx as tir

    checks = {gv: int(f.attrs[INDEX_CHECK_ATTR]) for gv, f in mod.functions_items()
              if isinstance(f, tir.PrimFunc) and f.attrs is not None and INDEX_CHECK_ATTR in f.attrs}
    if not checks:
        return mod
    mod = mod.__class__(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, k in checks.items():
        mod[gv] = _index_wrap(k)
    return mod


def _checked_constant(idx: np.ndarray, extents: list, label: str, what: str) -> np.ndarray | None:
    """Constant int64 indices of shape [m, k] (k coordinates into data axes of the given extents) with negative
    ones wrapped; OptcError when one is out of range. None when an extent is symbolic (checked at run time)."""
    if not all(isinstance(e, int) for e in extents):
        return None
    ext = np.array(extents, np.int64)
    bad = (idx < -ext) | (idx >= ext)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise OptcError(f"{label}: index {int(idx[row, col])} is out of range for {what} of size {int(ext[col])} "
                        "(ONNX allows -size to size - 1)")
    return np.where(idx < 0, idx + ext, idx)


def checked_indices(bb, ctx, idx, data, start: int, k: int, op: str):
    """int64 indices of any shape whose elements, taken k at a time (k > 1: the last axis holds them), index data
    axes start..start+k-1; returned with negative ones wrapped. An out-of-range index is an OptcError now when the
    indices and those data dims are constants, else the library's call fails with `INDEX_ERROR`."""
    label = node_label(ctx.node, op)
    what = f"data axis {start}" if k == 1 else f"data axes {start}..{start + k - 1}"
    value, data_dims = constant_value(idx), dims_of(data)
    if value is not None and data_dims is not None:
        checked = _checked_constant(value.reshape(-1, k), data_dims[start:start + k], label, what)
        if checked is not None:
            return const(checked.reshape(value.shape))
    shape = dims_of(idx)
    if shape is None:  # computed from values: name the row count when the library runs
        rows = tirx.Var("m", "int64")
        flat = bb.match_cast(relax.op.reshape(idx, [-1, k]), relax.TensorType([rows, k], "int64"))
    else:
        rows = 1
        for d in shape[:-1] if k > 1 else shape:
            rows = rows * d
        flat = bb.normalize(relax.op.reshape(idx, [rows, k]))
    message = f"{INDEX_ERROR}{label}: an index is out of range for {what} (ONNX allows -size to size - 1)"
    check = bb.add_func(_index_check(k, message), "optc_index_check")
    checked = bb.emit(relax.call_tir(check, [flat, _extents(bb, data, start, k)],
                                     relax.TensorType([rows, k], "int64")))
    return bb.normalize(relax.op.reshape(checked, relax.op.shape_of(idx) if shape is None else shape))


def _coordinate_count(idx, op: str) -> int:
    """The static size of the indices' last axis (how many leading data axes one index tuple addresses)."""
    dims = dims_of(idx)
    if dims is None or not isinstance(dims[-1], int):
        raise refuse(f"{op} with an index-tuple length (the indices' last dim) unknown at compile time is not "
                     "supported by the TVM back end")
    return dims[-1]


def _reduction(attrs, op: str, allowed: tuple[str, ...]) -> str:
    reduction = attrs.get("reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction not in allowed:
        raise refuse(f"{op} with reduction '{reduction}' (this opset allows {', '.join(allowed)})")
    return "update" if reduction == "none" else reduction


def _allowed_reductions(opset: int) -> tuple[str, ...]:
    if opset >= 18:
        return ("none", "add", "mul", "min", "max")
    if opset >= 16:
        return ("none", "add", "mul")
    return ("none",)


@converter("", "Gather")
def gather(bb, inputs, attrs, ctx):
    """Gather of a tensor: `take` of checked indices (mode "clip" never clips them; TVM's default "fast" warns
    that it segfaults on bad ones). The frontend handles shape-valued data and indices (values known when the
    model is lowered)."""
    data, idx = inputs[0], inputs[1]
    if isinstance(data, relax.ShapeExpr) or isinstance(idx, relax.ShapeExpr):
        return lookup_frontend("Gather", ctx.opset)(bb, [data, idx], attrs, ctx)
    idx = _index_tensor(bb, idx, "Gather")
    rank = _rank(data, "data", "Gather")
    axis = attrs.get("axis", 0)
    if not -rank <= axis < rank:
        raise refuse(f"Gather axis {axis} is out of range for rank-{rank} data")
    axis %= rank
    return relax.op.take(data, checked_indices(bb, ctx, idx, data, axis, 1, "Gather"), axis, mode="clip")


@converter("", "GatherElements")
def gather_elements(bb, inputs, attrs, ctx):
    data, idx = inputs[0], _index_tensor(bb, inputs[1], "GatherElements")
    rank = _rank(data, "data", "GatherElements")
    if _rank(idx, "indices", "GatherElements") != rank:
        raise refuse("GatherElements with indices of a rank other than the data's")
    axis = attrs.get("axis", 0)
    if not -rank <= axis < rank:
        raise refuse(f"GatherElements axis {axis} is out of range for rank-{rank} data")
    axis %= rank
    idx = checked_indices(bb, ctx, idx, data, axis, 1, "GatherElements")
    return relax.op.gather_elements(data, idx, axis)


@converter("", "GatherND")
def gather_nd(bb, inputs, attrs, ctx):
    data, idx = inputs[0], _index_tensor(bb, inputs[1], "GatherND")
    r, q = _rank(data, "data", "GatherND"), _rank(idx, "indices", "GatherND")
    b = attrs.get("batch_dims", 0)
    if not 0 <= b < min(q, r):
        raise refuse(f"GatherND with batch_dims={b} for rank-{r} data and rank-{q} indices")
    k = _coordinate_count(idx, "GatherND")
    if not 1 <= k <= r - b:
        raise refuse(f"GatherND with index tuples of length {k} into {r - b} non-batch data axes")
    data_dims, idx_dims = dims_of(data), dims_of(idx)
    if data_dims is not None:
        for i in range(b):
            d, n = data_dims[i], idx_dims[i]
            if isinstance(d, int) and isinstance(n, int) and d != n:
                raise refuse(f"GatherND with batch dim {i} of size {d} in the data and {n} in the indices")
    idx = checked_indices(bb, ctx, idx, data, b, k, "GatherND")
    return relax.op.gather_nd(data, idx, b)


@converter("", "ScatterND")
def scatter_nd(bb, inputs, attrs, ctx):
    data, idx, updates = inputs[0], _index_tensor(bb, inputs[1], "ScatterND"), inputs[2]
    reduction = _reduction(attrs, "ScatterND", _allowed_reductions(ctx.opset))
    r, q = _rank(data, "data", "ScatterND"), _rank(idx, "indices", "ScatterND")
    k = _coordinate_count(idx, "ScatterND")
    if not 1 <= k <= r:
        raise refuse(f"ScatterND with index tuples of length {k} into rank-{r} data")
    if _rank(updates, "updates", "ScatterND") != q - 1 + r - k:
        raise refuse("ScatterND with updates of a rank other than indices' rank - 1 + data's rank - tuple length")
    idx = checked_indices(bb, ctx, idx, data, 0, k, "ScatterND")
    return relax.op.scatter_nd(data, idx, updates, reduction)


def _scatter_elements(bb, inputs, attrs, ctx, op: str, reductions: tuple[str, ...]):
    # output[i_0, .., idx[i_0, .., i_r-1], .., i_r-1] (op)= updates[i_0, .., i_r-1] for every position of idx:
    # a scatter_nd whose index tuples are the positions of idx with its values put in along `axis`.
    data, idx, updates = inputs[0], _index_tensor(bb, inputs[1], op), inputs[2]
    reduction = _reduction(attrs, op, reductions)
    rank = _rank(data, "data", op)
    if _rank(idx, "indices", op) != rank or _rank(updates, "updates", op) != rank:
        raise refuse(f"{op} with indices or updates of a rank other than the data's")
    axis = attrs.get("axis", 0)
    if not -rank <= axis < rank:
        raise refuse(f"{op} axis {axis} is out of range for rank-{rank} data")
    axis %= rank
    shape = dims_of(idx)
    if shape is None:
        raise refuse(f"{op} with indices of unknown shape is not supported by the TVM back end")
    idx = checked_indices(bb, ctx, idx, data, axis, 1, op)
    columns = []
    for i in range(rank):
        if i == axis:
            column = idx
        else:
            line = relax.op.arange(0, shape[i], 1, "int64")
            column = relax.op.broadcast_to(relax.op.reshape(line, [shape[i] if j == i else 1 for j in range(rank)]),
                                           relax.ShapeExpr(shape))
        columns.append(bb.normalize(relax.op.expand_dims(column, [rank])))
    coordinates = bb.normalize(relax.op.concat(columns, axis=rank))
    return relax.op.scatter_nd(data, coordinates, updates, reduction)


@converter("", "ScatterElements")
def scatter_elements(bb, inputs, attrs, ctx):
    return _scatter_elements(bb, inputs, attrs, ctx, "ScatterElements", _allowed_reductions(ctx.opset))


@converter("", "Scatter")
def scatter(bb, inputs, attrs, ctx):
    if ctx.opset >= 11:
        raise refuse("Scatter was removed in opset 11 (use ScatterElements)")
    return _scatter_elements(bb, inputs, attrs, ctx, "Scatter", ("none",))


@converter("", "ReverseSequence")
def reverse_sequence(bb, inputs, attrs, ctx):
    """Reverse the first `sequence_lens[b]` steps along `time_axis` of each batch entry b (ONNX
    ReverseSequence-10): x of rank >= 2 with (batch, time) axes {0, 1}, sequence_lens int64 [batch] (a run-time
    tensor is fine). A GatherElements along the time axis from index `t < len ? len - 1 - t : t`."""
    x, lens = inputs[0], _index_tensor(bb, inputs[1], "ReverseSequence")
    rank = _rank(x, "data", "ReverseSequence")
    batch_axis, time_axis = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))
    if rank < 2 or {batch_axis, time_axis} != {0, 1}:
        raise refuse(f"ReverseSequence with batch_axis {batch_axis} and time_axis {time_axis} (ONNX: 0 and 1)")
    dims = dims_of(x)
    if dims is None:
        raise refuse("ReverseSequence of data with an unknown shape is not supported by the TVM back end")
    steps = bb.normalize(relax.op.arange(0, dims[time_axis], dtype="int64"))
    lens_shape, steps_shape = ([-1, 1], [1, -1]) if batch_axis == 0 else ([1, -1], [-1, 1])
    # lengths beyond the time axis (invalid ONNX) are clamped to it, as onnx's reference does: no read past x
    extent = dims[time_axis]
    extent = const(extent, "int64") if isinstance(extent, int) else bb.normalize(
        relax.op.reshape(relax.op.shape_to_tensor(relax.ShapeExpr([extent])), ()))
    lens = bb.normalize(relax.op.minimum(lens, extent))
    lens = bb.normalize(relax.op.reshape(lens, lens_shape))
    steps = bb.normalize(relax.op.reshape(steps, steps_shape))
    reversed_step = relax.op.subtract(relax.op.subtract(lens, const(1, "int64")), steps)
    src = bb.normalize(relax.op.where(relax.op.less(steps, lens), reversed_step, steps))
    src = bb.normalize(relax.op.reshape(src, [0, 0] + [1] * (rank - 2)))
    src = bb.normalize(relax.op.broadcast_to(src, relax.ShapeExpr(dims)))
    return relax.op.gather_elements(x, src, time_axis)
