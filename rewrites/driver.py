"""The greedy worklist driver: apply a set of rules (and an optional constant folder) until nothing changes.

After MLIR's greedy pattern rewrite driver and tinygrad's PatternMatcher:

* rules are indexed by their root op key, so a node only meets the rules that could match at it (early reject);
* the worklist is seeded in topological order (main graph, then function bodies and nested bodies) and fed by
  the Rewriter's listener: new nodes, nodes whose inputs changed and their users, producers of erased nodes'
  inputs, and the user of a value that is down to one use are (re)queued;
* dead nodes are erased as they are popped (never ops with SIDE_EFFECTS, never ops of unknown schema; dead
  random ops are erased: nothing observes them);
* every applied rewrite asks `ctx.budget.take()` first (`--bisect-limit`) and is then logged with `ctx.record`;
* caps on rewrites and on full sweeps; a sweep that changes nothing proves a fixed point (`converged`).

Cost: each node is visited O(1) times per sweep plus once per change next to it, and each visit tries only the
rules indexed under its op, so the work grows linearly with the graph.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..ir.core import Graph, Model, Node, Value
from ..ir.rewriter import Rewriter
from ..ir.schema import OPTC_DOMAIN, Trait, get_schema, has_trait
from .context import PassContext, PassResult
from .rule import Rule, RuleApplier, discard

log = logging.getLogger("optc.rewrites")

DEAD_NODES = "dead-nodes"
FOLDED = "folded"

Folder = Callable[..., bool]


@dataclass
class DriverResult(PassResult):
    """PassResult plus the driver's own statistics (counts also hold `dead-nodes` and `folded`)."""

    rewrites: int = 0
    iterations: int = 0
    attempts: int = 0
    visits: int = 0
    trace: list[str] = field(default_factory=list)


class _Worklist:
    __slots__ = ("queue", "queued")

    def __init__(self):
        self.queue: deque[Node] = deque()
        self.queued: set[Node] = set()

    def push(self, node: Node | None) -> None:
        if node is not None and node not in self.queued and node.graph is not None:
            self.queued.add(node)
            self.queue.append(node)

    def pop(self) -> Node:
        n = self.queue.popleft()
        self.queued.discard(n)
        return n

    def __bool__(self) -> bool:
        return bool(self.queue)


class _Listener:
    """Feeds the worklist from the Rewriter's notifications."""

    def __init__(self, wl: _Worklist):
        self.wl = wl

    def on_insert(self, node: Node) -> None:
        self.wl.push(node)

    def on_erase(self, node: Node) -> None:
        push = self.wl.push
        for v in node.inputs:
            if v is None:
                continue
            push(v.producer)
            if len(v._uses) == 1:
                push(next(iter(v._uses)).node)

    def on_modify(self, node: Node) -> None:
        push = self.wl.push
        push(node)
        for o in node.outputs:
            if o is not None and len(o._uses) <= 8:
                for u in o._uses:
                    push(u.node)

    def on_replace(self, old: Value, new: Value | None) -> None:
        if new is not None:
            self.wl.push(new.producer)


def _instantiate(rules: Iterable[Rule | type[Rule]]) -> list[Rule]:
    out = [r() if isinstance(r, type) else r for r in rules]
    # higher benefit first; stable otherwise (registration order)
    return sorted(out, key=lambda r: -r.benefit)


def index_rules(rules: Sequence[Rule], opsets: dict[str, int]) -> dict[tuple[str, str], list[Rule]]:
    """Rules that apply under `opsets`, by root op key."""
    index: dict[tuple[str, str], list[Rule]] = {}
    for r in rules:
        if not r.applies_to(opsets):
            continue
        for key in r.compiled().root_keys:
            index.setdefault(key, []).append(r)
    return index


def is_erasable(node: Node) -> bool:
    """May a node with no used outputs be dropped? Not side-effect ops, not ops of unknown schema (but optc's own)."""
    if not node.outputs or has_trait(node.domain, node.op_type, Trait.SIDE_EFFECTS):
        return False
    return node.domain == OPTC_DOMAIN or get_schema(node.domain, node.op_type) is not None


def apply_rules(model: Model | Graph, rules: Iterable[Rule | type[Rule]], ctx: PassContext, pass_name: str, *,
                folder: Folder | None = None, max_rewrites: int = 100_000, max_iterations: int = 10,
                rewriter: Rewriter | None = None, erase_dead: bool = True) -> DriverResult:
    """Apply `rules` greedily to every graph of `model` (bodies and functions included) until a fixed point.

    `folder(node)` (or `folder(node, rewriter)`) is called on each popped node before the rules; it returns True
    when it changed the graph (it then asks the budget and records its rewrites itself; prefer mutating through
    the given Rewriter so the worklist hears of it). Returns changed / converged / counts per rule.
    """
    rule_list = _instantiate(rules)
    if isinstance(model, Model):
        base_opsets = dict(model.opset_imports)
    else:
        base_opsets = dict(ctx.opsets)
    wl = _Worklist()
    listener = _Listener(wl)
    rw = rewriter or Rewriter(model)
    rw.add_listener(listener)
    try:
        return _Driver(model, rule_list, ctx, pass_name, folder, max_rewrites, max_iterations, rw, wl, base_opsets,
                       erase_dead).run()
    finally:
        rw.remove_listener(listener)


class _Driver:
    def __init__(self, model, rules, ctx, pass_name, folder, max_rewrites, max_iterations, rw, wl, base_opsets,
                 erase_dead):
        self.model = model
        self.rules = [r for r in rules if ctx.rule_filter.allows(r.name)]
        self.ctx = ctx
        self.pass_name = pass_name
        self.folder = folder
        self.folder_takes_rewriter = _arity(folder) >= 2 if folder is not None else False
        self.max_rewrites = max_rewrites
        self.max_iterations = max_iterations
        self.rw = rw
        self.wl = wl
        self.base_opsets = base_opsets
        self.erase_dead = erase_dead
        self.applier = RuleApplier(rw, base_opsets, trace=ctx.trace, fast_math=ctx.fast_math,
                                   trace_rules={r.name for r in self.rules if ctx.traced(r.name)})
        self.result = DriverResult(changed=False, converged=False)
        self._traced: set[str] = set()
        self._graph_env: dict[Graph, tuple[dict[str, int], dict]] = {}
        self._indexes: dict[tuple, dict] = {}
        self._roots: list[tuple[Graph, dict[str, int]]] = []
        if isinstance(model, Model):
            self._roots.append((model.graph, base_opsets))
            for fn in model.functions.values():
                self._roots.append((fn.graph, {**base_opsets, **fn.opset_imports}))
        else:
            self._roots.append((model, base_opsets))

    # -- per-graph opsets and rule index ----------------------------------------------------------
    def _env(self, g: Graph) -> tuple[dict[str, int], dict]:
        env = self._graph_env.get(g)
        if env is None:
            opsets = None
            for root, ops in self._roots:
                if root is g:
                    opsets = ops
            if opsets is None:
                parent = g.parent.graph if g.parent is not None else None
                opsets = self._env(parent)[0] if parent is not None else self.base_opsets
            key = tuple(sorted(opsets.items()))
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = index_rules(self.rules, opsets)
            env = self._graph_env[g] = (opsets, index)
        return env

    def _seed(self) -> None:
        push = self.wl.push
        for root, _ in self._roots:
            for g in (root, *root.subgraphs()):
                for n in g:
                    push(n)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> DriverResult:
        res = self.result
        capped = False
        skipped = False
        for _ in range(self.max_iterations):
            res.iterations += 1
            self._seed()
            changed, capped, skip = self._drain()
            skipped |= skip
            if not changed:
                res.converged = not skipped
                break
            res.changed = True
            if capped:
                break
        res.attempts = self.applier.attempts
        return res

    def _is_dead(self, n: Node) -> bool:
        is_out = self.rw.is_graph_output
        for o in n.outputs:
            if o is not None and (o._uses or is_out(o)):
                return False
        return is_erasable(n)

    def _drain(self) -> tuple[bool, bool, bool]:
        wl = self.wl
        res = self.result
        ctx = self.ctx
        changed = False
        skipped = False
        applier = self.applier
        while wl:
            n = wl.pop()
            g = n.graph
            if g is None:
                continue
            res.visits += 1
            if self.erase_dead and self._is_dead(n):
                self.rw.erase(n, safe=False)
                res.counts[DEAD_NODES] = res.counts.get(DEAD_NODES, 0) + 1
                changed = True
                continue
            if self.folder is not None:
                if self._fold(n):
                    changed = True
                    continue
            opsets, index = self._env(g)
            rules = index.get((n.domain, n.op_type))
            if not rules:
                continue
            for rule in rules:
                if res.rewrites >= self.max_rewrites:
                    return changed, True, skipped
                stats = ctx.stats(rule.name)
                stats.attempts += 1
                traced = ctx.traced(rule.name)
                where = f"{rule.name} at {n.op_type} '{n.name or _first_output(n)}' (pass {self.pass_name})"
                m = applier.match(rule, n, opsets)
                if m is None:
                    stats.rejected += 1
                    if traced:
                        self._trace(f"{where}: no match: {applier.last_reason}")
                    if ctx.trace and applier.last_failure:
                        res.trace.append(applier.last_failure)
                        log.debug("%s", applier.last_failure)
                    continue
                built = applier.build(m)
                if isinstance(built, str):
                    stats.rejected += 1
                    if traced:
                        self._trace(f"{where}: matched {_nodes(m.nodes)}, rewrite rejected: {built}")
                    if ctx.trace:
                        msg = f"{rule.name} matched at {n.op_type} '{n.name}' but was rejected: {built}"
                        res.trace.append(msg)
                        log.debug("%s", msg)
                    continue
                builder, results = built
                if not ctx.budget.take():
                    stats.skipped += 1
                    if traced:
                        self._trace(f"{where}: matched {_nodes(m.nodes)}, not applied: the --bisect-limit "
                                       "budget is spent")
                    discard(builder)
                    skipped = True
                    continue
                ctx.record(self.pass_name, rule.name, n.name or f"{n.op_type}")
                matched = _nodes(m.nodes) if traced else ""
                applier.commit(m, builder, results)
                if traced:  # after commit: the new nodes carry the names they keep
                    made = _nodes(builder.nodes) if builder.nodes else "no new node"
                    self._trace(f"{where}: rewrote {matched} -> {made}")
                stats.applied += 1
                res.rewrites += 1
                res.counts[rule.name] = res.counts.get(rule.name, 0) + 1
                changed = True
                if n.graph is not None:
                    wl.push(n)
                break
        return changed, False, skipped

    def _trace(self, line: str) -> None:
        """Report a traced attempt once: the sweep that proves a fixed point retries every rejected match."""
        if line not in self._traced:
            self._traced.add(line)
            self.ctx.trace_sink(line)

    def _fold(self, n: Node) -> bool:
        around: list[Node] = []
        for o in n.outputs:
            if o is not None:
                around.extend(u.node for u in o._uses)
        for v in n.inputs:
            if v is not None and v.producer is not None:
                around.append(v.producer)
        done = self.folder(n, self.rw) if self.folder_takes_rewriter else self.folder(n)
        if not done:
            return False
        res = self.result
        res.counts[FOLDED] = res.counts.get(FOLDED, 0) + 1
        res.rewrites += 1
        for m in around:
            self.wl.push(m)
        self.wl.push(n)
        return True


def _first_output(n: Node) -> str:
    return next((o.name for o in n.outputs if o is not None and o.name), "")


def _nodes(nodes: Sequence[Node]) -> str:
    return "[" + ", ".join(f"{x.op_type} '{x.name or _first_output(x)}'" for x in nodes) + "]"


def _arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
