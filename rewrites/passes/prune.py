"""`prune`: structured channel pruning (or, with unstructured=true, magnitude pruning to zeros) as a pass.

Structured: the channel analysis (`prune_analysis`) groups the output channels of Conv/Gemm/MatMul weights that
must be dropped together; in every group that nothing blocks, the `ratio` fraction of channels (rounded down,
at least one kept; the kept count rounded up to a multiple of `multiple`, `CHANNEL_MULTIPLE` by default) with
the smallest summed weight norm (`criterion` l1: sum of |w|, l2: Euclidean, over each producer's filter; path:
the L1 norm times what lies on the channel's way, see `_path_factors`) is removed from the producers' weights
and biases and from every consumer on the way
(BatchNorm parameters, broadcast constants, depthwise filters, the input rows of the next Conv/Gemm/MatMul,
the flattened columns behind a Flatten). Graph outputs keep their shapes. No fine-tuning happens here: the
outputs change (unless the dropped channels were zero all along) and accuracy must be measured.

Unstructured: in every float constant weight of Conv/Gemm/MatMul, the `ratio` fraction of entries (rounded down)
with the smallest magnitude becomes 0. Shapes and compute do not change: no CPU speed-up by itself; it helps
only compression and sparse-aware back ends.

Every change goes through the Rewriter (inputs re-pointed, `group` set, weights replaced); a sliced or zeroed
initializer keeps its name when nothing else reads the old data (its payload is replaced in place: not for a
graph input or output), else the new one gets a fresh name (`w_1`) — a weight shared by two consumers that take
different slices keeps its name on one. The types of the values whose channel count changed are updated.
`last_report` holds what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...errors import OptcError
from ...ir.core import Model, Node, Value
from ...ir.rewriter import Rewriter
from ...ir.schema import Trait, has_trait
from ...ir.tensors import NumpyTensor
from ...ir.types import TensorType
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass
from .infer_shapes import infer_model_types
from .prune_analysis import _PER_CHANNEL_PARAMS, ChannelAnalysis, ChannelMap, analyze, producer_weight_axis

__all__ = ["GroupResult", "Prune", "drop_unused", "node_macs", "own_initializer"]

CRITERIA = ("l1", "l2", "path")


@dataclass
class GroupResult:
    """One group of channels: its producer nodes, channels before and after (equal when skipped), and for a
    pruned group the parameters and multiply-accumulates of Conv/Gemm/MatMul (per sample) it removes (an entry
    of a weight cut by two groups, e.g. rows by one and columns by the next, counts for the first: the sums
    over groups are the totals); for a skipped one, why."""

    producers: list[str]
    channels_before: int
    channels_after: int
    params_removed: int = 0
    macs_removed: int = 0
    reason: str | None = None


@dataclass
class PruneResult:
    """What one run of the pass did."""

    pruned: list[GroupResult] = field(default_factory=list)
    skipped: list[GroupResult] = field(default_factory=list)
    zeroed: int = 0  # unstructured: weights set to zero
    #: structured: the Conv/Gemm/MatMul nodes whose input channels were cut, in graph order, each with the mask of
    #: its original output channels it keeps (None: all), for `optc.workflow.reconstruct`
    consumers: list[tuple[Node, np.ndarray | None]] = field(default_factory=list)


def node_macs(node: Node) -> int:
    """Multiply-accumulates of a Conv/Gemm/MatMul with a constant weight, per sample (symbolic dims count 1):
    output elements x weight elements per output channel. 0 for other nodes or unknown shapes."""
    wa = producer_weight_axis(node)
    out = node.outputs[0] if node.outputs else None
    w = node.inputs[1] if wa and len(node.inputs) > 1 else None
    if w is None or out is None or out.shape is None or not _is_constant(w) or not w.shape or \
            (node.op_type != "Conv" and len(w.shape) != 2):
        return 0
    per_channel = int(np.prod(w.shape, dtype=np.int64)) // max(int(w.shape[wa[1]]), 1)
    return int(np.prod([d if isinstance(d, int) else 1 for d in out.shape], dtype=np.int64)) * per_channel


def _is_constant(v: Value) -> bool:
    """An initializer or a Constant node's output (its data is not read)."""
    return v.const is not None or (v.producer is not None and v.producer.op_type == "Constant" and not v.producer.domain)


def _label(node: Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0] is not None else node.op_type)


#: channels kept per group: a multiple of this many. Vector kernels run whole vectors of channels: onnxruntime's
#: NCHWc convolutions take multiples of 8 (AVX2) or 16 (AVX-512) output channels and fall back to a far slower
#: path otherwise (the digits CNN pruned 10% to 15 / 29 / 58 channels ran 9x slower on onnxruntime, 25% to
#: 12 / 24 / 48 2x slower: AMD EPYC Zen 4), and optc's own kernels pad or predicate a partial vector.
CHANNEL_MULTIPLE = 16


def kept_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """How many of a group's `channels` pruning keeps: `channels - floor(ratio * channels)`, at least one; with
    `multiple` > 1, that rounded up to a multiple (so no more than `ratio` is ever removed), or all `channels`
    when that is no fewer (a group of at most `multiple` channels is never pruned; one of 24 with a multiple of
    16 loses 8 once `ratio` >= 1/3)."""
    kept = max(1, channels - int(ratio * channels))
    rounded = -(-kept // multiple) * multiple
    return min(rounded, channels)


@register_pass
@dataclass
class Prune(Pass):
    """Structured channel pruning (or magnitude pruning to zeros with unstructured=true)."""

    name: ClassVar[str] = "prune"
    description: ClassVar[str] = ("remove the ratio (0..1) of output channels of Conv/Gemm/MatMul with the smallest "
                                  "criterion=l1|l2|path weight norm, and the matching inputs of their consumers "
                                  "(unstructured=true: set the smallest weights to zero, shapes unchanged)")
    option_help: ClassVar[dict[str, str]] = {
        "ratio": "the share of output channels (or, unstructured, of weights) to remove, in (0, 1)",
        "criterion": "what ranks channels: l1 or l2 (norm of the filter) or path (l1 times the readers' weights)",
        "unstructured": "zero the smallest weights instead (shapes unchanged: no CPU speed-up by itself)",
        "multiple": "keep a multiple of this many channels in each group (1: exactly the ratio)",
    }
    ratio: float = 0.3
    criterion: str = "l1"
    unstructured: bool = False
    multiple: int = CHANNEL_MULTIPLE

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0 < self.ratio < 1:
            raise OptcError(f"prune ratio must be a number in (0, 1), got {self.ratio!r}")
        if isinstance(self.multiple, bool) or not isinstance(self.multiple, int) or self.multiple < 1:
            raise OptcError(f"prune multiple must be a positive integer, got {self.multiple!r}")
        if self.criterion not in CRITERIA:
            raise OptcError(f"unknown prune criterion '{self.criterion}' (choose from {', '.join(CRITERIA)})")
        self.last_report = PruneResult()

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.last_report = PruneResult()
        rw = Rewriter(model)
        if self.unstructured:
            return self._unstructured(model, rw, ctx)
        infer_model_types(model)
        analysis = analyze(model)
        kept = self._choose(analysis, ctx)
        if not kept:
            return PassResult(False, converged=not ctx.budget.exhausted)
        _Apply(rw, analysis, kept, self.last_report).run()
        return PassResult(True, converged=not ctx.budget.exhausted, counts={"prune-group": len(kept)})

    # -- which channels ---------------------------------------------------------------------------------------
    def _score(self, node: Node) -> np.ndarray:
        axis = producer_weight_axis(node)[1]
        return _norms(node.inputs[1].const_value(), axis, "l2" if self.criterion == "l2" else "l1")

    def _choose(self, analysis: ChannelAnalysis, ctx: PassContext) -> dict[int, np.ndarray]:
        """Group root -> mask of kept channels, for the groups pruned; records every group in the report."""
        kept: dict[int, np.ndarray] = {}
        paths = _path_factors(analysis) if self.criterion == "path" else {}
        for root, producers in analysis.groups().items():
            names = [_label(p.node) for p in producers]
            channels = producers[0].channels
            reason = analysis.group_blocked(root)
            drop = channels - kept_channels(channels, self.ratio, self.multiple)
            if reason is None and drop == 0:
                reason = f"ratio {self.ratio:g} of {channels} channels drops none" + (
                    f" once the kept count is rounded up to a multiple of {self.multiple}" if self.multiple > 1
                    else "")
            if reason is None and not ctx.budget.take():
                reason = "the rewrite budget (--bisect-limit) is spent"
            if reason is not None:
                self.last_report.skipped.append(GroupResult(names, channels, channels, reason=reason))
                continue
            score = sum(self._score(p.node) for p in producers)
            if self.criterion == "path":
                score = score * paths.get(root, 1.0)
            mask = np.ones(channels, bool)
            mask[np.argsort(score, kind="stable")[:drop]] = False
            kept[root] = mask
            self.last_report.pruned.append(GroupResult(names, channels, channels - drop))
            ctx.record(self.name, "prune-group", f"{channels} -> {channels - drop} channels of {', '.join(names)}")
        return kept

    # -- unstructured -----------------------------------------------------------------------------------------
    def _unstructured(self, model: Model, rw: Rewriter, ctx: PassContext) -> PassResult:
        replaced: dict[Value, Value] = {}  # a weight read by several nodes is zeroed once, and shared still
        for node in list(model.graph):
            if not _zeroable(node):
                continue
            w_value = node.inputs[1]
            if w_value in replaced:
                if replaced[w_value] is not w_value:
                    rw.set_input(node, 1, replaced[w_value])
                continue
            w = rw.constants().data(w_value)  # None for a weight a graph input overrides
            k = int(self.ratio * w.size) if w is not None and w.dtype.kind == "f" else 0
            if k == 0 or not ctx.budget.take():
                continue
            flat = w.reshape(-1).copy()
            flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
            self.last_report.zeroed += k
            zeroed = np.ascontiguousarray(flat.reshape(w.shape))
            if all(use.index == 1 and _zeroable(use.node) for use in w_value.uses()) and own_initializer(rw, w_value):
                rw.set_constant(w_value, NumpyTensor(zeroed))  # every reader is zeroed alike: the name stays
                replaced[w_value] = w_value
            else:
                replaced[w_value] = rw.add_initializer(zeroed, hint=w_value.name or "weight")
                rw.set_input(node, 1, replaced[w_value])
            ctx.record(self.name, "zero-weights", f"{k} of {w.size} weights of {_label(node)}")
        drop_unused(rw, [old for old, new in replaced.items() if new is not old])
        return PassResult(bool(replaced), converged=not ctx.budget.exhausted, counts={"zero-weights": len(replaced)})


def _zeroable(node: Node) -> bool:
    """A standard Conv/Gemm/MatMul with a weight input (what unstructured pruning zeroes)."""
    return producer_weight_axis(node) is not None and not node.domain and len(node.inputs) >= 2


def own_initializer(rw: Rewriter, v: Value) -> bool:
    """`v` is an initializer of the main graph that is neither a graph input nor a graph output: its payload
    may be replaced in place, keeping the user's name (also used by `optc.workflow.reconstruct`)."""
    return (rw.graph.initializers.get(v.name) is v and not rw.is_graph_output(v)
            and not any(i is v for i in rw.graph.inputs))


def _norms(w: np.ndarray, axis: int, criterion: str) -> np.ndarray:
    """The L1 or L2 norm of each slice of `w` along `axis`."""
    w = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(w).sum(1) if criterion == "l1" else np.sqrt(np.square(w).sum(1))


def _consumer_axis(node: Node) -> int:
    """The axis of a Conv/Gemm/MatMul weight that its input's channels index."""
    return {"Conv": 1, "MatMul": 0}.get(node.op_type, 1 if node.attr("transB", 0) else 0)


def _path_factors(a: ChannelAnalysis) -> dict[int, np.ndarray]:
    """Group root -> per channel, what the `path` criterion multiplies the producers' L1 norms by: the L1 norms
    of the depthwise filters and the |scale| / sqrt(var + eps) of the BatchNorms on the channel's way, times the
    summed L1 norms of the input weights of the Conv/Gemm/MatMul layers that read it (a channel that the next
    layer barely reads matters little, however large its own filter)."""
    sizes = {a.find(p.space): p.channels for p in a.producers}
    scale = {root: np.ones(n) for root, n in sizes.items()}
    reads = {root: np.zeros(n) for root, n in sizes.items()}
    seen: set[int] = set()
    for v, m in a.maps.items():
        for use in v.uses():
            node = use.node
            if use.index != 0 or id(node) in seen or node.graph is None:
                continue
            seen.add(id(node))
            if node.op_type in ("Conv", "Gemm", "MatMul") and _const_input(node, 1) is not None:
                w = _const_input(node, 1)
                if node.op_type == "Conv" and node.attr("group", 1) != 1:
                    per_position, target = _norms(w, 0, "l1"), scale
                else:
                    per_position, target = _norms(w, _consumer_axis(node), "l1"), reads
            elif node.op_type == "BatchNormalization" and all(_const_input(node, i) is not None for i in (1, 4)):
                eps = node.attr("epsilon", 1e-5)
                per_position, target = np.abs(_const_input(node, 1)) / np.sqrt(_const_input(node, 4) + eps), scale
            else:
                continue
            if per_position.shape != (m.size,):
                continue
            for s in m.spaces():
                root, sel = a.find(s), m.space == s
                if root in target:
                    if target is scale:
                        target[root][m.index[sel]] *= per_position[sel]
                    else:
                        np.add.at(target[root], m.index[sel], per_position[sel])
    return {root: scale[root] * reads[root] for root in sizes}


def _const_input(node: Node, i: int) -> np.ndarray | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    return None if v is None else v.const_value()


def drop_unused(rw: Rewriter, values: list[Value]) -> None:
    """Remove the replaced constants nothing reads any more (initializers, Constant nodes)."""
    for v in dict.fromkeys(values):
        if v.num_uses or rw.is_graph_output(v):
            continue
        if v.producer is not None:
            rw.erase(v.producer)
        elif rw.graph.initializers.get(v.name) is v and not any(i is v for i in rw.graph.inputs):
            rw.remove_initializer(v)


class _Apply:
    """Slice every weight, bias and per-channel constant the kept channels touch; update value types."""

    def __init__(self, rw: Rewriter, analysis: ChannelAnalysis, kept: dict[int, np.ndarray], report: PruneResult):
        self.rw, self.a, self.kept, self.report = rw, analysis, kept, report
        self.by_root = {root: g for root, g in zip(kept, report.pruned, strict=True)}
        self.replaced: list[Value] = []
        self.producers = {p.node for p in analysis.producers}

    def positions(self, m: ChannelMap) -> np.ndarray:
        """The mask of the positions of `m` that stay."""
        keep = np.ones(m.size, bool)
        for s in m.spaces():
            mask = self.kept.get(self.a.find(s))
            if mask is not None:
                sel = m.space == s
                keep[sel] = mask[m.index[sel]]
        return keep

    def account(self, m: ChannelMap, keep: np.ndarray, params_per_position: int, macs_per_position: int) -> None:
        for s in m.spaces():
            group = self.by_root.get(self.a.find(s))
            if group is not None:
                dropped = int(((m.space == s) & ~keep).sum())
                group.params_removed += dropped * params_per_position
                group.macs_removed += dropped * macs_per_position

    def run(self) -> None:
        for node in list(self.rw.graph):
            self.node(node)
        for v, m in self.a.maps.items():
            keep = self.positions(m)
            if not keep.all() and isinstance(v.type, TensorType) and v.shape is not None:
                shape = list(v.shape)
                shape[m.axis] = int(keep.sum())
                v.type = TensorType(v.type.dtype, tuple(shape))
        drop_unused(self.rw, self.replaced)

    def node(self, node: Node) -> None:
        cuts: dict[int, list[tuple[int, ChannelMap, np.ndarray]]] = {}  # input -> (axis, map, kept positions)
        maps = self.a.maps
        src = node.inputs[0] if node.inputs else None
        m_in = maps.get(src) if src is not None else None
        op = node.op_type
        wa = producer_weight_axis(node)
        out = node.outputs[0] if node.outputs else None
        m_out = maps.get(out) if out is not None else None
        macs = node_macs(node)
        if wa is not None and m_in is not None and not (op == "Conv" and node.attr("group", 1) != 1):
            in_keep = self.positions(m_in)
            cuts.setdefault(1, []).append((_consumer_axis(node), m_in, in_keep))
            if not in_keep.all():
                out_keep = self.positions(m_out) if m_out is not None and node in self.producers else None
                self.report.consumers.append((node, None if out_keep is None or out_keep.all() else out_keep))
        if wa is not None and m_out is not None and node in self.producers:
            keep = self.positions(m_out)
            cuts.setdefault(1, []).append((wa[1], m_out, keep))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = node.inputs[2]
                if bias.shape and bias.shape[-1] == m_out.size and m_out.size > 1:
                    cuts.setdefault(2, []).append((len(bias.shape) - 1, m_out, keep))
        elif op == "Conv" and m_in is not None and node.attr("group", 1) != 1:  # depthwise: one filter per channel
            keep = self.positions(m_in)
            cuts.setdefault(1, []).append((0, m_in, keep))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                cuts.setdefault(2, []).append((0, m_in, keep))
            if not keep.all():
                self.rw.set_attr(node, "group", int(keep.sum()))
        elif op in _PER_CHANNEL_PARAMS and m_in is not None:
            keep = self.positions(m_in)
            for i in _PER_CHANNEL_PARAMS[op]:
                cuts.setdefault(i, []).append((0, m_in, keep))
        elif m_out is not None and has_trait(node.domain, op, Trait.ELEMENTWISE) and out.rank is not None:
            self.broadcast_constants(node, m_out, cuts)
        for i, items in cuts.items():
            self.slice_input(node, i, items, macs if i == 1 else 0)

    def broadcast_constants(self, node: Node, m_out: ChannelMap, cuts: dict) -> None:
        """Constant operands of an elementwise op with one value per channel: sliced like the channels."""
        keep = self.positions(m_out)
        rank = node.outputs[0].rank
        for i, v in enumerate(node.inputs):
            if v is None or v in self.a.maps or v.const_value() is None or v.shape is None:
                continue
            pos = m_out.axis - (rank - len(v.shape))
            if pos >= 0 and v.shape[pos] == m_out.size and m_out.size > 1:
                cuts.setdefault(i, []).append((pos, m_out, keep))

    def slice_input(self, node: Node, i: int, items: list[tuple[int, ChannelMap, np.ndarray]], macs: int) -> None:
        if all(keep.all() for _, _, keep in items):
            return
        old = node.inputs[i]
        arr = old.const_value()
        for axis, m, keep in items:
            n = max(arr.shape[axis], 1)
            self.account(m, keep, arr.size // n, macs // n)
            macs = macs * int(keep.sum()) // n
            arr = np.compress(keep, arr, axis=axis)
        arr = np.ascontiguousarray(arr)
        if old.num_uses == 1 and old not in self.a.maps and own_initializer(self.rw, old):
            self.rw.set_constant(old, NumpyTensor(arr))  # its last reader: the sliced weight keeps the name
            return
        self.rw.set_input(node, i, self.rw.add_initializer(arr, hint=old.name or "pruned"))
        self.replaced.append(old)
