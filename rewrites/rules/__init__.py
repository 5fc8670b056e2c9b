"""Rule sets, by the names the CLI and the passes use (`rules{rule-set=NAME}`, `fuse{set=conv-bn}`).

One module per family: `noops` (eliminate-noops), `canonicalize`, `fusion` (the fuse-* sets), `transformer`
(transformer-standard / transformer-onnxruntime, run by the fuse-transformer pass and `optc optimize --for`),
`qinteger` (QDQ patterns to optc's integer ops, with `qlookup`'s 256-entry tables for elementwise functions of one
8-bit tensor), `weight-int4` (4-bit weights to optc.MatMulNBits and byte-sized codes) and `qoperator-to-qdq`
(onnxruntime's QLinear* contrib ops to standard QDQ), all for the TVM compile path only.

Rule sets are a registry, open to plugins: `register_rule_set(name, rules, level=2)` from Python, or a package
that declares an entry point in the `optc.rules` group (its object: a callable that calls `register_rule_set`,
or a dict {set name: list of Rule classes}). A set named `fuse-*` joins the `fuse` pass (so -O2 and -O3 run
it); another set given a `level` runs, as `rules{rule-set=NAME,fold=true}`, in the -O pipelines from that level
on; a set without a level runs only when named in a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptcError, did_you_mean
from ..rule import Rule
from . import canonicalize, fusion, noops, qinteger, qlookup, qoperator, row_gather, transformer, weight_int4


@dataclass(frozen=True)
class RuleSetInfo:
    """A registered rule set: its rules, the first -O level whose pipeline runs it (None: only when named in a
    pipeline, or through `fuse` for a fuse-* set), and where it came from ("optc" or "plugin <dist>")."""

    name: str
    rules: tuple[type[Rule], ...]
    level: int | None = None
    origin: str = "optc"


_SETS: dict[str, RuleSetInfo] = {}
_plugins_loaded = False


def register_rule_set(name: str, rules, *, level: int | None = None, replace: bool = False,
                      origin: str = "optc") -> None:
    """Register a rule set under `name` (kebab-case). `rules`: Rule subclasses (or instances). `level`: run it
    in the -O pipelines from this level (1..3) on. Raises ValueError for a taken name (unless `replace`), an
    empty name, a level outside 1..3, or an item that is not a Rule."""
    if not name or name != name.lower() or " " in name:
        raise ValueError(f"rule set name {name!r} must be kebab-case, e.g. 'fuse-my-op'")
    if name in _SETS and not replace:
        raise ValueError(f"rule set '{name}' is already registered ({_SETS[name].origin})")
    if level is not None and level not in (1, 2, 3):
        raise ValueError(f"rule set '{name}': level must be 1, 2 or 3, not {level!r}")
    items = []
    for r in rules:
        cls = r if isinstance(r, type) else type(r)
        if not issubclass(cls, Rule):
            raise ValueError(f"rule set '{name}': {r!r} is not a Rule")
        items.append(r)
    _SETS[name] = RuleSetInfo(name, tuple(items), level, origin)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="optc.rules"):
        dist = getattr(ep, "dist", None)
        origin = f"plugin {dist.name if dist else ep.value}"
        try:
            obj = ep.load()
            if isinstance(obj, dict):
                for set_name, rules in obj.items():
                    register_rule_set(set_name, rules, origin=origin)
            elif callable(obj):
                obj()
            else:
                raise TypeError(f"{obj!r} is neither a callable nor a dict of rule sets")
        except Exception as exc:  # a broken plugin is the user's to fix: name it, in one line
            raise OptcError(f"rule plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


def rule_sets() -> dict[str, RuleSetInfo]:
    """Every registered rule set (built-ins, then plugins), by name."""
    _load_plugins()
    return dict(_SETS)


def all_rules() -> list[type[Rule]]:
    """Every registered rule class, once, in registry order."""
    seen: dict[type[Rule], None] = {}
    for info in rule_sets().values():
        for r in info.rules:
            seen.setdefault(r if isinstance(r, type) else type(r), None)
    return list(seen)


def check_rule_names(names, what: str = "rule") -> None:
    """Raise OptcError (one line, with a suggestion) for a name that is no registered rule's."""
    known = {getattr(r, "name", None) or r.__name__ for r in all_rules()}
    for name in names:
        if name != "all" and name not in known:
            hint = did_you_mean(name, known)
            raise OptcError(f"unknown {what} '{name}'{hint}; `optc passes` lists the rules")


def __getattr__(name: str):
    if name == "RULE_SETS":  # {set name: [rules]}: a snapshot of the registry, plugins included
        return {k: list(v.rules) for k, v in rule_sets().items()}
    raise AttributeError(name)


register_rule_set("eliminate-noops", noops.RULES)
register_rule_set("canonicalize", canonicalize.RULES)
register_rule_set("fuse-conv-bn", fusion.CONV_BN)
register_rule_set("fuse-conv-add-mul", fusion.CONV_ADD_MUL)
register_rule_set("fuse-pad", fusion.PAD)
register_rule_set("fuse-matmul-add", fusion.MATMUL_ADD)
register_rule_set("transformer-standard", transformer.STANDARD)
register_rule_set("transformer-onnxruntime", transformer.ONNXRUNTIME)
register_rule_set("transformer-optc", transformer.OPTC)
# after the fusions (a set with a level runs after them in -O2 / -O3): a Gather moves into the fused attention too
register_rule_set("sink-row-gathers", row_gather.RULES, level=2)
# optc-domain integer ops for the TVM back end: in no -O pipeline (`optc optimize` writes standard ONNX); the compile
# path applies them (`qinteger.to_integer_ops`, which also declares the `optc` opset); named in a pipeline only to
# inspect them (FileCheck tests): such an ONNX output does not declare the domain and runs nowhere else.
register_rule_set("qinteger", qinteger.RULES + qlookup.RULES)
# the same for weight-only 4-bit models (optc.MatMulNBits; `weight_int4.to_weight_int4_ops` on the compile path)
register_rule_set("weight-int4", weight_int4.RULES)
# onnxruntime's QOperator contrib ops as standard QDQ (`qoperator.to_qdq_ops` on the compile path; ONNX out keeps
# them: onnxruntime runs them natively)
register_rule_set("qoperator-to-qdq", qoperator.RULES)

__all__ = ["RULE_SETS", "RuleSetInfo", "all_rules", "check_rule_names", "register_rule_set", "rule_sets"]
