"""State shared by the pass manager, passes and the rewrite driver for one optimization run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Bytes: the largest tensor a fold that grows the model may produce by default (`--size-limit` changes it). A
# graph that builds its weights at run time (ConstantOfShape, Expand, Tile of a shape) stays small on disk;
# folding those would write every generated tensor into the file (the light VGG19 grows from 9 KB to 513 MB).
DEFAULT_FOLD_SIZE_LIMIT = 1 << 20


@dataclass
class RewriteBudget:
    """How many rewrites may still be applied (`--bisect-limit N`); None means unlimited.

    Every rewrite (a rule application, a folded constant, an erased node counted as a rewrite by its pass) asks
    `take()` first and is skipped when it returns False.
    """

    limit: int | None = None
    used: int = 0

    def take(self) -> bool:
        if self.limit is not None and self.used >= self.limit:
            return False
        self.used += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit


@dataclass
class RewriteRecord:
    """One applied rewrite, for reports and bisection: which pass and rule changed which node."""

    index: int
    pass_name: str
    rule: str
    node: str


@dataclass
class RuleStats:
    """How one rule fared in a run: `attempts` (its pattern was tried at a node whose op is its root),
    `rejected` (tried but not applied: the pattern, a check, the safety checks or the rewrite refused),
    `applied`, and `skipped` (accepted but not applied because the `--bisect-limit` budget was spent)."""

    attempts: int = 0
    rejected: int = 0
    applied: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, int]:
        return {"attempts": self.attempts, "rejected": self.rejected, "applied": self.applied,
                "skipped": self.skipped}


@dataclass
class RuleFilter:
    """Which rules may fire (`optc optimize --disable-rule / --enable-rule`), by rule name.

    As MLIR's `disable-patterns` / `enable-patterns` options of its greedy driver: `disabled` rules never fire;
    when `enabled` is given, only those rules fire (every other rule is filtered out). Passes that are not rule
    sets (fold-constants, cse, dce) are not affected: `--disable` drops a pass.
    """

    disabled: frozenset[str] = frozenset()
    enabled: frozenset[str] | None = None

    def allows(self, rule_name: str) -> bool:
        if rule_name in self.disabled:
            return False
        return self.enabled is None or rule_name in self.enabled


@dataclass
class FoldRefusal:
    """A constant fold that was not done because its result would exceed the size limit and grow the model."""

    node: str
    op_type: str
    nbytes: int
    ref: Any = field(default=None, repr=False, compare=False)  # the Node, to tell whether it is still there
    limit: int | None = None  # the limit in force (bytes): the run's, or a fold-constants pass option

    @property
    def still_in_graph(self) -> bool:
        return self.ref is None or self.ref.graph is not None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "nbytes": self.nbytes, "limit": self.limit}


@dataclass
class PassContext:
    """Options and shared state of one pipeline run.

    `fast_math`: also apply the rewrites that are exact only in real arithmetic, not under IEEE 754 (e.g.
    `x + 0.0 -> x`, wrong for x = -0.0); off by default. Rules say which of their cases need it
    (`Rule.fast_math`).
    """

    opsets: dict[str, int] = field(default_factory=lambda: {"": 21})
    fast_math: bool = False
    budget: RewriteBudget = field(default_factory=RewriteBudget)
    trace: bool = False
    verify_each: bool = False
    records: list[RewriteRecord] = field(default_factory=list)
    rule_filter: RuleFilter = field(default_factory=RuleFilter)
    # `--trace RULE`: rule names whose every attempted match is reported to `trace_sink` (one message each)
    trace_rules: frozenset[str] = frozenset()
    trace_sink: Callable[[str], None] | None = None
    rule_stats: dict[str, RuleStats] = field(default_factory=dict)
    # Largest tensor (bytes) a fold may produce when the fold grows the model (ConstantOfShape, Expand, Tile,
    # Range...); None: no limit. Folds that do not grow the model are not limited.
    fold_size_limit: int | None = DEFAULT_FOLD_SIZE_LIMIT
    fold_refusals: list[FoldRefusal] = field(default_factory=list)

    def stats(self, rule: str) -> RuleStats:
        s = self.rule_stats.get(rule)
        if s is None:
            s = self.rule_stats[rule] = RuleStats()
        return s

    def traced(self, rule: str) -> bool:
        return self.trace_sink is not None and (rule in self.trace_rules or "all" in self.trace_rules)

    def record(self, pass_name: str, rule: str, node: str) -> None:
        """Log an applied rewrite (its index is its position in the bisect order)."""
        self.records.append(RewriteRecord(self.budget.used, pass_name, rule, node))


@dataclass
class PassResult:
    """What a pass did: whether it changed the model, whether it reached a fixed point, counts per rule."""

    changed: bool
    converged: bool = True
    counts: dict[str, int] = field(default_factory=dict)
