"""Rule sets, by the names the CLI and the passes use (`RewritePass(rule_set)`, `fuse{set=conv-bn}`).

One module per family: `noops` (eliminate-noops), `canonicalize`, `fusion` (the fuse-* sets).
"""

from __future__ import annotations

from ..rule import Rule
from . import canonicalize, fusion, noops

RULE_SETS: dict[str, list[type[Rule]]] = {
    "eliminate-noops": list(noops.RULES),
    "canonicalize": list(canonicalize.RULES),
    "fuse-conv-bn": list(fusion.CONV_BN),
    "fuse-conv-add-mul": list(fusion.CONV_ADD_MUL),
    "fuse-pad": list(fusion.PAD),
    "fuse-matmul-add": list(fusion.MATMUL_ADD),
}


def all_rules() -> list[type[Rule]]:
    """Every registered rule class, once, in registry order."""
    seen: dict[type[Rule], None] = {}
    for rules in RULE_SETS.values():
        for r in rules:
            seen.setdefault(r, None)
    return list(seen)


__all__ = ["RULE_SETS", "all_rules"]
