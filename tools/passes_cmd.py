"""`optc passes`: every pass (with its options) and every rewrite rule; `optc passes NAME` shows one in full."""

from __future__ import annotations

import inspect
import json

from ..errors import OptcError, did_you_mean


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__) if getattr(obj, "__doc__", None) else ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _option_text(v) -> str:
    from ..rewrites.pass_manager import _format_option

    return f"<{v.__name__}>" if isinstance(v, type) else _format_option(v)


def _rule_json(cls, sets: list[str]) -> dict:
    from ..rewrites.rule import Rule

    assert issubclass(cls, Rule)
    keys = cls().compiled().root_keys
    return {"name": cls.name, "kind": "rule", "rule_sets": sets, "summary": _first_line(_doc(cls)),
            "description": _doc(cls), "pattern": cls().compiled().describe(),
            "root_ops": sorted(f"{d}::{op}" if d else op for d, op in keys),
            "domain": cls.domain or "ai.onnx", "min_opset": cls.min_opset, "max_opset": cls.max_opset,
            "benefit": cls.benefit, "fast_math_only": cls.fast_math or None, "rounding": cls.rounding or None}


def _pass_json(info) -> dict:
    return {"name": info.name, "kind": "pass", "origin": info.origin, "summary": info.description,
            "description": info.doc or info.description,
            "options": [{"name": k, "default": None if isinstance(v, type) else v,
                         "required": isinstance(v, type), "help": info.option_help.get(k, "")}
                        for k, v in info.options.items()]}


def catalog() -> dict:
    """Everything `optc passes --json` prints: passes, rule sets with their rules, and the -O pipelines."""
    from ..rewrites.pass_manager import registered_passes
    from ..rewrites.pipelines import level_spec
    from ..rewrites.rules import rule_sets

    sets = rule_sets()
    member: dict[type, list[str]] = {}
    for name, info in sets.items():
        for r in info.rules:
            member.setdefault(r if isinstance(r, type) else type(r), []).append(name)
    return {"passes": [_pass_json(i) for i in registered_passes().values()],
            "rule_sets": [{"name": n, "origin": i.origin, "level": i.level,
                           "rules": [(r if isinstance(r, type) else type(r)).name for r in i.rules]}
                          for n, i in sets.items()],
            "rules": [_rule_json(cls, s) for cls, s in member.items()],
            "levels": {f"-O{lv}": level_spec(lv) for lv in range(4)}}


def _show_one(name: str, data: dict, as_json: bool) -> int:
    entry = next((p for p in data["passes"] if p["name"] == name), None) or \
        next((r for r in data["rules"] if r["name"] == name), None)
    if entry is None:
        known = [p["name"] for p in data["passes"]] + [r["name"] for r in data["rules"]]
        hint = did_you_mean(name, known)
        raise OptcError(f"no pass or rule named '{name}'{hint}; `optc passes` lists them")
    if as_json:
        print(json.dumps(entry, indent=2))
        return 0
    if entry["kind"] == "pass":
        origin = f" [{entry['origin']}]" if entry["origin"] != "optc" else ""
        print(f"pass {entry['name']}{origin}: {entry['summary']}")
        if entry["description"] and entry["description"] != entry["summary"]:
            print()
            print(entry["description"])
        print()
        if not entry["options"]:
            print("options: none")
        else:
            print(f"options (in a pipeline: {entry['name']}{{option=value,...}}):")
            width = max(len(o["name"]) for o in entry["options"]) + 2
            for o in entry["options"]:
                default = "required" if o["required"] else "default: unset" if o["default"] is None else \
                    f"default {_option_text(o['default'])}"
                print(f"  {o['name']:<{width}}{o['help'] or '(undocumented)'} ({default})")
        return 0
    print(f"rule {entry['name']} (rule set {', '.join(entry['rule_sets'])}): {entry['summary']}")
    print(f"  pattern: {entry['pattern']}")
    print(f"  root ops: {', '.join(entry['root_ops'])}; {entry['domain']} opsets "
          f"{entry['min_opset'] or 'any'}..{entry['max_opset'] or 'any'}; benefit {entry['benefit']}")
    if entry["fast_math_only"]:
        print(f"  --fast-math only: {entry['fast_math_only']}")
    if entry["rounding"]:
        print(f"  rounding: {entry['rounding']}")
    if entry["description"] and entry["description"] != entry["summary"]:
        print()
        print(entry["description"])
    print()
    print(f"trace it: optc optimize MODEL -o OUT --trace {entry['name']}; turn it off: --disable-rule "
          f"{entry['name']}")
    return 0


def run(args) -> int:
    data = catalog()
    if args.name:
        return _show_one(args.name, data, args.json)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    passes = data["passes"]
    width = max(len(p["name"]) for p in passes) + 2
    print("Passes (use in -p \"a,b{option=value},fixed-point(c,d)\"; `optc passes NAME` for options):")
    for p in passes:
        origin = f" [{p['origin']}]" if p["origin"] != "optc" else ""
        print(f"  {p['name']:<{width}}{p['summary']}{origin}")
        if p["options"] and args.verbose:
            for o in p["options"]:
                print(f"  {'':<{width}}  {o['name']}={_option_text(o['default']) if not o['required'] else '<required>'}"
                      f"  {o['help']}")
    print(f"  {'fixed-point':<{width}}repeat a group until nothing changes: fixed-point{{max-iterations=8}}(a,b)")
    rules = {r["name"]: r for r in data["rules"]}
    print()
    print("Rules (by rule set; `optc passes RULE` for its pattern):")
    if not data["rule_sets"]:
        print("  (no rule sets registered)")
    rwidth = max([width, 28, *(len(n) + 2 for n in rules)])
    for s in data["rule_sets"]:
        extra = f" [{s['origin']}]" if s["origin"] != "optc" else ""
        level = f" (in -O{s['level']} and up)" if s["level"] else ""
        print(f"  {s['name']}:{level}{extra}")
        for rname in s["rules"]:
            r = rules[rname]
            print(f"    {rname:<{rwidth}}{r['summary']}")
            if r["fast_math_only"]:
                print(f"    {'':<{rwidth}}  [--fast-math only: {r['fast_math_only']}]")
            if r["rounding"] and args.verbose:
                print(f"    {'':<{rwidth}}  [rounding: {r['rounding']}]")
            elif r["rounding"]:
                print(f"    {'':<{rwidth}}  [not bit-exact (-v: how)]")
    print()
    print("Every rule keeps IEEE 754 results (NaN, infinities, signed zeros) unless marked: [--fast-math only] parts")
    print("run only with `optc optimize --fast-math`; [not bit-exact] rules keep the real-number result but round")
    print("differently (folded weights, fused kernels), as onnxruntime's default fusions do.")
    print()
    print("Levels:")
    for level, spec in data["levels"].items():
        print(f"  {level}  {spec or '(no passes)'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("passes", help="list every pass and rule; `optc passes NAME` describes one in full",
                       description="List every optimization pass (built-in and plugins from the optc.passes "
                       "entry-point group), every rewrite rule by rule set (plugins from the optc.rules group), "
                       "and the -O pipelines. With NAME: the pass's full description and every option with its "
                       "default and help, or the rule's pattern, root ops, opsets and IEEE notes.")
    p.add_argument("name", nargs="?", metavar="NAME", help="a pass or rule to describe in full")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each pass's options and how "
                   "non-bit-exact rules round")
    p.add_argument("--json", action="store_true", help="print the catalog (or the one entry) as JSON")
    p.set_defaults(func=run)
