"""Channel analysis for structured pruning: which output channels of which Conv/Gemm/MatMul weights can be removed
together, found along the use-def chains. Reads the graph, changes nothing (the `prune` pass applies the result).

Every Conv (group 1), Gemm and MatMul with a constant weight (and a constant bias, if any) is a *producer*: its
output channels form a *space*. Channels flow forward; each value carries a *channel map* along one axis: for
every position on that axis, the (space, channel) it holds, or -1 for a channel no producer owns (it is kept).
  - elementwise ops (the op table's ELEMENTWISE trait: Relu, Clip, Add, Mul, ...) keep the map; another operand
    must broadcast along the channel axis (size 1 or absent) or be a constant of exactly that size (sliced);
    two operands with maps (a residual Add) must drop the same channels: their spaces are merged into one
    *group* (union-find), allowed only when each operand holds one whole space in order;
  - per-channel ops (BatchNormalization, InstanceNormalization, pools) keep the map on axis 1 (their per-channel
    constants are sliced); a depthwise Conv (group == channels, one filter each) too (weights sliced, group set);
  - Concat along the channel axis concatenates the maps (so indices are offset); along another axis it is an
    elementwise join;
  - Flatten (or a Reshape to [batch, -1] with a constant shape) repeats each channel over the flattened trailing
    dims (feature index = channel * H * W + ...); Squeeze/Unsqueeze and Reduce* over other axes move the channel
    axis; an inference Dropout, and a Pad that leaves the channel axis alone, pass them through;
  - the contracting input of Conv (group 1), Gemm (A, transA = 0) and MatMul (A's last axis) with a constant
    weight *absorbs* the map: the weight's matching input rows are removed.
Anything else — a graph output, Reshape, Transpose, a grouped Conv, an op in a subgraph, a non-constant weight,
an ambiguous broadcast — *blocks* every space in the map, with the reason; a group with a blocked space is left
alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...ir.constants import Constants
from ...ir.core import Model, Node, Value
from ...ir.schema import Trait, has_trait

__all__ = ["ChannelAnalysis", "ChannelMap", "analyze", "producer_weight_axis"]

# Ops that act on each channel (axis 1) separately; what ONNX's schemas do not say. Inputs after the first are
# per-channel constants of shape [C] (sliced) for the normalizations.
_PER_CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
_POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare", "ReduceProd", "ReduceL1",
               "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"}


@dataclass
class ChannelMap:
    """Which channel each position of `axis` holds: `space[i]` (-1: owned by no producer, always kept) and
    `index[i]` (the channel within that space)."""

    axis: int
    space: np.ndarray
    index: np.ndarray

    @property
    def size(self) -> int:
        return len(self.space)

    def spaces(self) -> set[int]:
        return {int(s) for s in np.unique(self.space) if s >= 0}

    def whole_space(self) -> int | None:
        """The space when this map is exactly one space's channels 0..C-1 in order, else None."""
        if self.size and self.space[0] >= 0 and (self.space == self.space[0]).all() and \
                (self.index == np.arange(self.size)).all():
            return int(self.space[0])
        return None


@dataclass
class Producer:
    """A node whose constant weight owns a space of `channels` output channels."""

    node: Node
    space: int
    channels: int


@dataclass
class ChannelAnalysis:
    """The result: values' maps, producers, the union-find of spaces and why spaces are blocked."""

    maps: dict[Value, ChannelMap] = field(default_factory=dict)
    producers: list[Producer] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def block(self, m: ChannelMap, reason: str) -> None:
        for s in m.spaces():
            self.blocked.setdefault(s, reason)

    def groups(self) -> dict[int, list[Producer]]:
        """Group root -> its producers, in graph order."""
        out: dict[int, list[Producer]] = {}
        for p in self.producers:
            out.setdefault(self.find(p.space), []).append(p)
        return out

    def group_blocked(self, root: int) -> str | None:
        """Why the group cannot be pruned (the first reason found), or None."""
        for s, reason in self.blocked.items():
            if self.find(s) == root:
                return reason
        return None


def _label(node: Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def producer_weight_axis(node: Node) -> tuple[int, int] | None:
    """(input index of the weight, axis of the weight that indexes output channels) for a producer node."""
    if node.op_type == "Conv":
        return 1, 0
    if node.op_type == "Gemm":
        return 1, 0 if node.attr("transB", 0) else 1
    if node.op_type == "MatMul":
        return 1, 1
    return None


def _producer_channels(consts: Constants, node: Node) -> int | None:
    """The number of output channels if `node` is a producer (constant weight and bias), else None."""
    if node.domain != "" or len(node.outputs) != 1:
        return None
    w = consts.data(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.dtype.kind != "f":
        return None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and consts.data(bias) is None:
        return None
    if node.op_type == "Conv" and node.attr("group", 1) == 1 and w.ndim >= 3:
        return int(w.shape[0])
    if node.op_type == "Gemm" and w.ndim == 2:
        return int(w.shape[0] if node.attr("transB", 0) else w.shape[1])
    if node.op_type == "MatMul" and w.ndim == 2 and node.inputs[0].rank is not None and node.inputs[0].rank >= 1:
        return int(w.shape[1])
    return None


def _flatten_axis(consts: Constants, node: Node) -> int | None:
    """The axis a Flatten flattens from, or 1 for a Reshape to [batch, -1] with a constant shape; else None."""
    shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    if node.op_type == "Flatten":
        axis = node.attr("axis", 1)
        return axis + len(shape) if axis < 0 else axis
    target = consts.data(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or target.shape != (2,) or target[1] != -1 or len(shape) < 2:
        return None
    if (target[0] == 0 and not node.attr("allowzero", 0)) or (target[0] > 0 and target[0] == shape[0]):
        return 1
    return None


def _moved_axis(consts: Constants, node: Node, axis: int) -> int | None:
    """Where `axis` of a Squeeze/Unsqueeze input lands in its output (None: squeezed, or axes not constant)."""
    axes = consts.data(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else node.attr("axes")
    rank_in, rank_out = node.inputs[0].rank, node.outputs[0].rank
    if axes is None or rank_in is None or rank_out is None:
        return None
    if node.op_type == "Squeeze":
        axes = {int(a) % rank_in for a in np.atleast_1d(axes)}
        return None if axis in axes else axis - sum(a < axis for a in axes)
    axes = {int(a) % rank_out for a in np.atleast_1d(axes)}
    kept = [i for i in range(rank_out) if i not in axes]
    return kept[axis] if axis < len(kept) else None


def _reduced_axis(consts: Constants, node: Node, axis: int) -> int | None:
    """Where `axis` lands in the output of a Reduce* over other axes (None: it is reduced, or the axes are not
    constant)."""
    axes = consts.data(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else node.attr("axes")
    rank = node.inputs[0].rank
    if axes is None or rank is None or np.size(axes) == 0:
        return None
    axes = {int(a) % rank for a in np.atleast_1d(axes)}
    if axis in axes:
        return None
    return axis if node.attr("keepdims", 1) else axis - sum(a < axis for a in axes)


def _pad_keeps_channels(consts: Constants, node: Node, axis: int) -> bool:
    """A Pad whose constant pads leave `axis` alone (and whose optional axes input is absent)."""
    pads = consts.data(node.inputs[1]) if len(node.inputs) > 1 else None
    rank = node.inputs[0].rank
    if pads is None or rank is None or pads.shape != (2 * rank,) or (len(node.inputs) > 3 and node.inputs[3]):
        return False
    return pads[axis] == 0 and pads[rank + axis] == 0


def _aligned_dim(shape: tuple, out_rank: int, axis: int) -> int | None:
    """The dim of a broadcast operand of `shape` that lines up with `axis` of a rank-`out_rank` result (None:
    the operand has no such dim)."""
    pos = axis - (out_rank - len(shape))
    return None if pos < 0 else shape[pos]


class _Walker:
    def __init__(self, model: Model):
        self.consts = Constants(model)  # weights that are also graph inputs are defaults, not constants
        self.model = model
        self.a = ChannelAnalysis()

    def new_space(self, node: Node, channels: int) -> ChannelMap:
        s = len(self.a.parent)
        self.a.parent.append(s)
        self.a.producers.append(Producer(node, s, channels))
        axis = node.outputs[0].rank - 1 if node.op_type == "MatMul" else 1
        return ChannelMap(axis, np.full(channels, s), np.arange(channels))

    def run(self) -> ChannelAnalysis:
        g = self.model.graph
        for node in g:
            ins = [(i, self.a.maps[v]) for i, v in enumerate(node.inputs) if v is not None and v in self.a.maps]
            out = self.visit(node, ins) if ins else None
            channels = _producer_channels(self.consts, node)
            if channels is not None and node.outputs[0].rank is not None:
                out = self.new_space(node, channels)
            if out is not None:
                self.a.maps[node.outputs[0]] = out
        for v, m in self.a.maps.items():
            if g.is_output(v):
                self.a.block(m, f"its channels reach the graph output '{v.name}'")
            for use in v.uses():
                if use.node.graph is not g:
                    self.a.block(m, f"'{v.name}' is read inside a subgraph ({_label(use.node)})")
        return self.a

    # -- one node ---------------------------------------------------------------------------------------------
    def visit(self, node: Node, ins: list[tuple[int, ChannelMap]]) -> ChannelMap | None:
        """The map of `node`'s first output (None: it holds no tracked channels, i.e. the node absorbs them), or
        blocks the inputs' spaces."""
        why = self.why_unsupported(node, ins)
        if why is None:
            return self.output_map(node, ins)
        for _, m in ins:
            self.a.block(m, f"flows into {_label(node)}: {why}")
        return None

    def why_unsupported(self, node: Node, ins: list[tuple[int, ChannelMap]]) -> str | None:
        op = node.op_type
        if node.domain != "":
            return "an op of another domain"
        used_outputs = [o for o in node.outputs[1:] if o is not None and (o.num_uses or self.model.graph.is_output(o))]
        if used_outputs:
            return "its extra outputs are used"
        out = node.outputs[0]
        if out is None or out.rank is None:
            return "its output's rank is unknown"
        first = [i for i, _ in ins] == [0]
        m = ins[0][1]
        if op in ("Conv", "Gemm", "MatMul"):
            if not first:
                return "the channels reach its weight or bias"
            w = self.consts.data(node.inputs[1])
            if w is None:
                return "its weight is not a constant"
            if op == "Conv":
                group = node.attr("group", 1)
                if group == 1:
                    return None if m.axis == 1 and w.shape[1] == m.size else "its weight does not match the channels"
                if group == m.size and w.shape[0] == group and w.shape[1] == 1:
                    return None if len(node.inputs) < 3 or self.consts.data(node.inputs[2]) is not None else \
                        "its bias is not a constant"
                return f"a grouped Conv (group={group}) is left alone"
            if op == "Gemm":
                return None if m.axis == 1 and not node.attr("transA", 0) else "the channels are not A's columns"
            return None if m.axis == node.inputs[0].rank - 1 and w.ndim == 2 else \
                "the channels are not the contracted axis of a 2-D weight"
        if op in _PER_CHANNEL_PARAMS or op in _POOLS:
            if not first or m.axis != 1:
                return "the channels are not its axis 1"
            for i in _PER_CHANNEL_PARAMS.get(op, ()):
                c = self.consts.data(node.inputs[i]) if i < len(node.inputs) else None
                if c is None or c.shape != (m.size,):
                    return "a per-channel parameter is not a constant of one value per channel"
            return None
        if op in ("Flatten", "Reshape"):
            if not first:
                return "the channels reach its shape input"
            axis = _flatten_axis(self.consts, node)
            if axis is None:
                return "only a Reshape to [batch, -1] (a flatten) with a constant shape is understood"
            return None if axis <= m.axis and _static(node.inputs[0].shape[axis:]) else \
                "it folds the channels into the batch or a dim is not static"
        if op in ("Squeeze", "Unsqueeze"):
            return None if first and _moved_axis(self.consts, node, m.axis) is not None else \
                "it removes the channel axis, or its axes are not constant"
        if op in _REDUCTIONS:
            return None if first and _reduced_axis(self.consts, node, m.axis) is not None else \
                "it reduces over the channels, or its axes are not constant"
        if op == "Pad":
            return None if first and _pad_keeps_channels(self.consts, node, m.axis) else \
                "it pads the channel axis, or its pads are not constant"
        if op == "Dropout":
            training = self.consts.data(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else False
            return None if first and training is not None and not bool(training) else \
                "it may run in training mode"
        if op == "Concat":
            return self.why_not_concat(node, ins)
        if has_trait(node.domain, op, Trait.ELEMENTWISE):
            return self.why_not_elementwise(node, ins)
        return "pruning does not know how channels pass through it"

    def why_not_elementwise(self, node: Node, ins: list[tuple[int, ChannelMap]]) -> str | None:
        out_rank = node.outputs[0].rank
        tracked = dict(ins)
        axes = {m.axis + out_rank - node.inputs[i].rank for i, m in ins}
        if len(axes) != 1:
            return "its operands carry channels on different axes"
        axis = axes.pop()
        size = ins[0][1].size
        for i, v in enumerate(node.inputs):
            if v is None or i in tracked:
                continue
            if v.shape is None:
                return f"operand '{v.name}' has an unknown shape"
            dim = _aligned_dim(v.shape, out_rank, axis)
            if dim is None or dim == 1:
                continue
            if dim != size or self.consts.data(v) is None:
                return f"operand '{v.name}' has {dim} values along the channels and is not a constant to slice"
        if len(ins) > 1:
            maps = [m for _, m in ins]
            if any(m.size != size for m in maps):
                return "its operands have different channel counts"
            same = all((m.space == maps[0].space).all() and (m.index == maps[0].index).all() for m in maps)
            if not same and any(m.whole_space() is None for m in maps):
                return "operands that must drop the same channels are not each one whole layer's channels"
        return None

    def why_not_concat(self, node: Node, ins: list[tuple[int, ChannelMap]]) -> str | None:
        out_rank = node.outputs[0].rank
        axis = node.attr("axis", 0)
        axis = axis + out_rank if axis < 0 else axis
        tracked = dict(ins)
        if any(m.axis != axis for m in tracked.values()):
            if len(tracked) != len(node.inputs) or len({m.axis for m in tracked.values()}) != 1:
                return "it joins along another axis values of which not all carry the channels"
            return self.why_not_elementwise(node, ins)
        for i, v in enumerate(node.inputs):
            if i not in tracked and (v.shape is None or not isinstance(v.shape[axis], int)):
                return f"operand '{v.name}' has an unknown size along the concatenation axis"
        return None

    # -- maps of outputs --------------------------------------------------------------------------------------
    def output_map(self, node: Node, ins: list[tuple[int, ChannelMap]]) -> ChannelMap | None:
        op = node.op_type
        m = ins[0][1]
        if op in ("Gemm", "MatMul") or (op == "Conv" and node.attr("group", 1) == 1):
            return None  # absorbed; a producer's own space replaces it
        if op == "Conv" or op in _PER_CHANNEL_PARAMS or op in _POOLS:
            return m
        if op in ("Squeeze", "Unsqueeze"):
            return ChannelMap(_moved_axis(self.consts, node, m.axis), m.space, m.index)
        if op in _REDUCTIONS:
            return ChannelMap(_reduced_axis(self.consts, node, m.axis), m.space, m.index)
        if op in ("Dropout", "Pad"):
            return m
        if op in ("Flatten", "Reshape"):
            shape = node.inputs[0].shape
            axis = _flatten_axis(self.consts, node)
            inner = int(np.prod(shape[m.axis + 1:], dtype=np.int64))
            outer = int(np.prod(shape[axis:m.axis], dtype=np.int64))
            return ChannelMap(1, np.tile(np.repeat(m.space, inner), outer), np.tile(np.repeat(m.index, inner), outer))
        if op == "Concat":
            axis = node.attr("axis", 0)
            axis = axis + node.outputs[0].rank if axis < 0 else axis
            if m.axis == axis:
                tracked = dict(ins)
                spaces, indices = [], []
                for i, v in enumerate(node.inputs):
                    part = tracked.get(i)
                    if part is None:
                        n = v.shape[axis]
                        part = ChannelMap(axis, np.full(n, -1), np.zeros(n, np.int64))
                    spaces.append(part.space)
                    indices.append(part.index)
                return ChannelMap(axis, np.concatenate(spaces), np.concatenate(indices))
        out_rank = node.outputs[0].rank
        first_i, m = ins[0]
        for _, other in ins[1:]:
            a, b = m.whole_space(), other.whole_space()
            if a is not None and b is not None:
                self.a.union(a, b)
        return ChannelMap(m.axis + out_rank - node.inputs[first_i].rank, m.space, m.index)


def analyze(model: Model) -> ChannelAnalysis:
    """Producers, groups and blocked spaces of the main graph of `model` (value shapes must be inferred)."""
    return _Walker(model).run()
