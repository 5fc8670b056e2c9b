"""Passes that run a rule set of `rewrites.rules` through the worklist driver: `eliminate-noops`,
`canonicalize`, `fuse{set=conv-bn}` (or every `fuse-*` set), and the generic `rules{set=NAME}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import OptcError
from ...ir.core import Model
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass


def available_rule_sets() -> dict[str, list]:
    """The rule sets of `optc.rewrites.rules` by name (plugins included)."""
    from ..rules import rule_sets

    return {name: list(info.rules) for name, info in rule_sets().items()}


def _run_sets(model: Model, ctx: PassContext, sets: list[str], pass_name: str, fold: bool) -> PassResult:
    from ...ir.rewriter import Rewriter
    from ..driver import apply_rules

    all_sets = available_rule_sets()
    rules = []
    for s in sets:
        rules.extend(all_sets[s])
    rw = Rewriter(model)
    folder = None
    if fold:
        from .fold_constants import make_folder

        folder = make_folder(ctx, pass_name=pass_name, model=model, rewriter=rw)
    # The cap stops a runaway rule, not a big model: every node may be rewritten a few times.
    cap = max(100_000, 4 * sum(len(g) for g in model.graphs()))
    return apply_rules(model, rules, ctx, pass_name, folder=folder, rewriter=rw, max_rewrites=cap)


@dataclass
class RewritePass(Pass):
    """Run one registered rule set (`optc.rewrites.rules.rule_sets()[rule_set]`) through the worklist driver."""

    name: ClassVar[str] = "rules"
    description: ClassVar[str] = "run a named rule set through the worklist driver"
    option_help: ClassVar[dict[str, str]] = {
        "rule-set": "the registered rule set to run (optc passes lists them)",
        "fold": "fold constants in the same worklist loop",
    }
    rule_set: str = ""
    fold: bool = False

    def __post_init__(self):
        sets = available_rule_sets()
        if self.rule_set not in sets:
            known = ", ".join(sets)
            raise OptcError(f"unknown rule set '{self.rule_set}' (known: {known})")

    def spec(self) -> str:
        fold = ",fold=true" if self.fold else ""
        return f"rules{{rule-set={self.rule_set}{fold}}}"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return _run_sets(model, ctx, [self.rule_set], self.name, self.fold)


@dataclass
class _NamedRuleSetPass(Pass):
    """A rule set exposed as a pass of the same name (`eliminate-noops`, `canonicalize`)."""

    rule_set: ClassVar[str] = ""
    option_help: ClassVar[dict[str, str]] = {"fold": "fold constants in the same worklist loop"}
    fold: bool = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return _run_sets(model, ctx, [self.rule_set], self.name, self.fold)


@register_pass
@dataclass
class EliminateNoops(_NamedRuleSetPass):
    name: ClassVar[str] = "eliminate-noops"
    description: ClassVar[str] = ("remove ops that do nothing (Identity, Dropout, same-type Cast, no-op "
                                  "Reshape/Transpose/Slice/Pad/Expand, x*1, x+(-0.0), constant Where/If, ...)")
    rule_set: ClassVar[str] = "eliminate-noops"


@register_pass
@dataclass
class Canonicalize(_NamedRuleSetPass):
    name: ClassVar[str] = "canonicalize"
    description: ClassVar[str] = ("merge Reshape/Transpose/Cast chains where exact, Min/Max pairs to Clip, "
                                  "and other canonical forms")
    rule_set: ClassVar[str] = "canonicalize"


@register_pass
@dataclass
class Fuse(Pass):
    """Operator fusions: `set=all` (every fuse-* rule set) or one set such as `conv-bn`."""

    name: ClassVar[str] = "fuse"
    description: ClassVar[str] = ("operator fusions: set=all or one of conv-bn, conv-add-mul, pad, matmul-add "
                                  "(BatchNorm/Add/Mul/Pad into Conv, MatMul+Add into Gemm)")
    option_help: ClassVar[dict[str, str]] = {
        "set": "all (every fuse-* rule set) or one set: conv-bn, conv-add-mul, pad, matmul-add",
        "fold": "fold constants in the same worklist loop (folded weights feed further fusions)",
    }
    set: str = "all"
    fold: bool = False

    def __post_init__(self):
        self._sets()  # unknown set names fail when the pipeline is built

    def _sets(self) -> list[str]:
        sets = available_rule_sets()
        fuse_sets = [s for s in sets if s.startswith("fuse-")]
        if self.set == "all":
            return fuse_sets
        name = self.set if self.set.startswith("fuse-") else f"fuse-{self.set}"
        if name not in sets:
            known = ", ".join(["all", *(s[len("fuse-"):] for s in fuse_sets)])
            raise OptcError(f"pass 'fuse' has no rule set '{self.set}' (known: {known})")
        return [name]

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        sets = self._sets()
        if not sets:
            return PassResult(False)
        return _run_sets(model, ctx, sets, self.name, self.fold)


register_pass(RewritePass, options={"rule-set": "", "fold": False})
