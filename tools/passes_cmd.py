"""`optc passes`: list every pass (with its options) and every rewrite rule, one line each."""

from __future__ import annotations


def _first_line(obj) -> str:
    doc = (getattr(obj, "description", None) if not isinstance(obj, type) else None) or obj.__doc__ or ""
    doc = doc.strip()
    return doc.splitlines()[0].strip() if doc else ""


def run(args) -> int:
    from ..rewrites.pass_manager import _format_option, registered_passes
    from ..rewrites.passes.rule_pass import available_rule_sets
    from ..rewrites.pipelines import level_spec

    infos = registered_passes()
    width = max(len(n) for n in infos) + 2
    print("Passes (use in -p \"a,b{option=value},fixed-point(c,d)\"):")
    for name, info in infos.items():
        origin = f" [{info.origin}]" if info.origin != "optc" else ""
        print(f"  {name:<{width}}{info.description}{origin}")
        if info.options and args.verbose:
            opts = ", ".join(f"{k}={_format_option(v) if not isinstance(v, type) else '<' + v.__name__ + '>'}"
                             for k, v in info.options.items())
            print(f"  {'':<{width}}  options: {opts}")
    print(f"  {'fixed-point':<{width}}repeat a group until nothing changes: fixed-point{{max-iterations=8}}(a,b)")
    sets = available_rule_sets()
    print()
    print("Rules (by rule set):")
    if not sets:
        print("  (no rule sets: optc.rewrites.rules is not available)")
    for set_name, rules in sets.items():
        print(f"  {set_name}:")
        for r in rules:
            cls = r if isinstance(r, type) else type(r)
            rname = getattr(cls, "name", None) or cls.__name__
            print(f"    {rname:<{max(width, 28)}}{_first_line(cls)}")
            fast, rounding = getattr(cls, "fast_math", ""), getattr(cls, "rounding", "")
            if fast:
                print(f"    {'':<{max(width, 28)}}  [--fast-math only: {fast}]")
            if rounding and args.verbose:
                print(f"    {'':<{max(width, 28)}}  [rounding: {rounding}]")
            elif rounding:
                print(f"    {'':<{max(width, 28)}}  [not bit-exact (-v: how)]")
    print()
    print("Every rule keeps IEEE 754 results (NaN, infinities, signed zeros) unless marked: [--fast-math only] parts")
    print("run only with `optc optimize --fast-math`; [not bit-exact] rules keep the real-number result but round")
    print("differently (folded weights, fused kernels), as onnxruntime's default fusions do.")
    print()
    print("Levels:")
    for level in range(4):
        print(f"  -O{level}  {level_spec(level) or '(no passes)'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("passes", help="list every pass and rule with a one-line description",
                       description="List every optimization pass (built-in and plugins from the optc.passes "
                       "entry-point group), every rewrite rule, and the -O pipelines.")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each pass's options")
    p.set_defaults(func=run)
