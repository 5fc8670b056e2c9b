"""State shared by the pass manager, passes and the rewrite driver for one optimization run."""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def record(self, pass_name: str, rule: str, node: str) -> None:
        """Log an applied rewrite (its index is its position in the bisect order)."""
        self.records.append(RewriteRecord(self.budget.used, pass_name, rule, node))


@dataclass
class PassResult:
    """What a pass did: whether it changed the model, whether it reached a fixed point, counts per rule."""

    changed: bool
    converged: bool = True
    counts: dict[str, int] = field(default_factory=dict)
