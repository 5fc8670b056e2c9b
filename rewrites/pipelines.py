"""The `-O0..-O3` pipelines, written as pipeline strings so `optc passes` can print them.

-O0  nothing
-O1  cleanup: fold-constants, eliminate-noops, dce
-O2  (default) adds shape inference (before and after the first folding), cse, canonicalize and the fusions (and
     makes the weights of IR < 4 models, which had to be listed as graph inputs, plain constants)
-O3  runs the groups to a fixed point, twice, with shape inference again between them
Rule-set passes appear only when `optc.rewrites.rules` provides their set.

`runtime` ("standard" or "onnxruntime", `optc optimize --for`) adds `fuse-transformer{runtime=...}` to -O2 and
-O3 (after the other fusions): attention, layer norms and Gelu fused into standard ONNX ops or onnxruntime's
contrib ops. Without it (the default) the output keeps the input's operator set, so it runs where it ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import onnx

from ..errors import OptcError
from ..ir.core import Model
from .context import DEFAULT_FOLD_SIZE_LIMIT, PassContext, RewriteBudget, RuleFilter
from .pass_manager import Instrument, Pass, PassManager, Pipeline, PipelineReport, parse_pipeline
from .passes.rule_pass import available_rule_sets
from .rules.transformer import check_runtime

DEFAULT_LEVEL = 2


def _has(*sets: str) -> bool:
    avail = available_rule_sets()
    return all(s in avail for s in sets)


def _fuse() -> list[str]:
    return ["fuse{fold=true}"] if any(s.startswith("fuse-") for s in available_rule_sets()) else []


def _plugin_sets(level: int) -> list[str]:
    """Registered rule sets that ask to run from `level` on (fuse-* sets run inside `fuse`)."""
    from .rules import rule_sets

    return [f"rules{{rule-set={name},fold=true}}" for name, info in rule_sets().items()
            if info.level is not None and info.level <= level and not name.startswith("fuse-")]


def level_spec(level: int, runtime: str | None = None) -> str:
    """The pipeline string of an optimization level (rule sets registered with a level join it); `runtime`
    ("standard" / "onnxruntime"): with the transformer fusions for it (-O2 and -O3). Raises OptcError for an
    unknown level or runtime."""
    tf = [f"fuse-transformer{{runtime={check_runtime(runtime)}}}"] if runtime is not None else []
    # for optc's own lowering, which checks a Reshape's computed zeros at run time, their ONNX types hold
    infer = "infer-shapes{checked-zeros=true}" if runtime == "optc" else "infer-shapes"
    noops = ["eliminate-noops"] if _has("eliminate-noops") else []
    canon = ["canonicalize{fold=true}"] if _has("canonicalize") else []
    if level == 0:
        return ""
    if level == 1:
        return ",".join(["fold-constants", *noops, *_plugin_sets(1), "dce"])
    if level == 2:
        noops_f = ["eliminate-noops{fold=true}"] if noops else []
        # Fusions before cse: merging two Convs that feed different BatchNorms would block both fusions.
        # inferred again once shape computations are folded: ONNX's data propagation does not compute through
        # Div or Cast (`q.shape[-1] // heads` of a dynamic-axes export), constant folding does
        return ",".join(["remove-initializer-inputs", infer, "fold-constants", infer, *noops_f, *canon, *_fuse(), *tf,
                         *_plugin_sets(2), "cse", "fold-constants", "dce"])
    if level == 3:
        noops_f = ["eliminate-noops{fold=true}"] if noops else []
        group = ",".join(["fold-constants", *noops_f, *canon, *_fuse(), *tf, *_plugin_sets(3), "cse", "dce"])
        return f"remove-initializer-inputs,{infer},fixed-point{{max-iterations=8}}({group}),{infer},fixed-point{{max-iterations=8}}({group})"
    raise OptcError(f"unknown optimization level {level} (use 0, 1, 2 or 3)")


def level_pipeline(level: int, runtime: str | None = None) -> Pipeline:
    """The pipeline of an optimization level (0..3), with the transformer fusions for `runtime` if given."""
    return parse_pipeline(level_spec(level, runtime))


# -- running pipelines ------------------------------------------------------------------------------------


def build_pipeline(level: int | None = DEFAULT_LEVEL, passes: str | Pass | list[Pass] | None = None,
                   runtime: str | None = None) -> Pass:
    """`passes` (a pipeline string, a pass, or a list of passes) wins over `level`. `runtime`: see `level_spec`;
    with `passes` it is an OptcError (name `fuse-transformer{runtime=...}` in the pipeline instead)."""
    if passes is not None and runtime is not None:
        raise OptcError("--for applies to the -O levels; with -p, add fuse-transformer{runtime=...} to the pipeline")
    if passes is None:
        return level_pipeline(DEFAULT_LEVEL if level is None else level, runtime)
    if isinstance(passes, str):
        return parse_pipeline(passes)
    if isinstance(passes, Pass):
        return passes
    return Pipeline(list(passes))


def copy_model(model: Model) -> Model:
    """An independent copy (through ONNX; tensor payloads are shared read-only, external data stays mapped).
    Node `meta` (which rule made a node, which user nodes it stands for) is not ONNX: it is copied node by node."""
    from ..ir.onnx_export import to_onnx
    from ..ir.onnx_import import from_onnx

    new = from_onnx(to_onnx(model), base_dir=model.base_dir)
    for old_graph, new_graph in zip(model.graphs(), new.graphs(), strict=False):
        old_nodes, new_nodes = list(old_graph), list(new_graph)
        if len(old_nodes) == len(new_nodes):
            for a, b in zip(old_nodes, new_nodes, strict=True):
                if a.meta and a.op_type == b.op_type:
                    b.meta = dict(a.meta)
    return new


def run_pipeline(model: Model, pipeline: Pass, *, instruments: Iterable[Instrument] = (),
                 disable: Iterable[str] = (), bisect_limit: int | None = None, verify_each: bool = False,
                 fast_math: bool = False, ctx: PassContext | None = None, disable_rules: Iterable[str] = (),
                 enable_rules: Iterable[str] | None = None, trace_rules: Iterable[str] = (),
                 trace_sink: Callable[[str], None] | None = None,
                 size_limit: int | None = DEFAULT_FOLD_SIZE_LIMIT) -> PipelineReport:
    """Run `pipeline` on `model` in place and return the report.

    `fast_math`: see `optimize`. `disable_rules` / `enable_rules`: rule names that may not fire / the only ones
    that may (MLIR's disable-patterns / enable-patterns); `trace_rules` ("all" for every rule): each attempted
    match of these rules is reported to `trace_sink` (one line: the rewrite made or why it was rejected).
    `size_limit`: bytes, the largest tensor a fold that grows the model may produce (None: no limit).
    Unknown rule names raise OptcError."""
    if ctx is None:
        from .rules import check_rule_names

        def names(x) -> frozenset[str]:  # one rule name or several
            return frozenset([x] if isinstance(x, str) else x)

        disable_rules, trace_rules = names(disable_rules), names(trace_rules)
        enable_rules = None if enable_rules is None else names(enable_rules)
        check_rule_names(disable_rules, "rule")
        check_rule_names(enable_rules or (), "rule")
        check_rule_names(trace_rules, "rule")
        ctx = PassContext(opsets=dict(model.opset_imports), budget=RewriteBudget(limit=bisect_limit),
                          verify_each=verify_each, fast_math=fast_math,
                          rule_filter=RuleFilter(disable_rules, enable_rules), trace_rules=trace_rules,
                          trace_sink=trace_sink, fold_size_limit=size_limit)
    instruments = list(instruments)
    if ctx.verify_each and not any(type(i).__name__ == "VerifyEach" for i in instruments):
        from .pass_manager import VerifyEach

        instruments.append(VerifyEach())
    return PassManager(pipeline, instruments=instruments, disable=disable).run(model, ctx)


def optimize(model: Model | onnx.ModelProto | str | os.PathLike, level: int = DEFAULT_LEVEL,
             passes: str | Pass | list[Pass] | None = None, *, inplace: bool = False,
             disable: Iterable[str] = (), fast_math: bool = False, disable_rules: Iterable[str] = (),
             enable_rules: Iterable[str] | None = None,
             size_limit: int | str | None = DEFAULT_FOLD_SIZE_LIMIT, runtime: str | None = None) -> Model:
    """Optimize a model with the `-O<level>` pipeline, or with `passes` (a pipeline string such as
    `"fold-constants,cse,dce"` or pass objects). Returns the optimized Model; the argument is not modified
    unless `inplace=True`.

    Every rewrite preserves IEEE 754 semantics (NaN, infinities, signed zeros) by default. `fast_math=True`
    also applies the rewrites that are exact only in real arithmetic (e.g. `x + 0.0 -> x`, which turns
    -0.0 + 0.0 = +0.0 into -0.0); `optc passes` lists them. `disable_rules` / `enable_rules`: rule names
    that may not fire / the only ones that may. `size_limit`: the largest tensor (bytes, or a size such as
    "64MB"; None: unlimited) that constant folding may create when the fold grows the model (1 MiB by
    default). `runtime`: "standard" or "onnxruntime" also fuses transformer blocks (attention, layer norms, Gelu)
    into standard ONNX ops the model's opset has, or into onnxruntime's com.microsoft contrib ops (None: not);
    "optc": the forms optc's own lowering takes (`optc.compile`), which also trusts the types of Reshapes whose
    computed zeros that lowering checks when it runs (`infer-shapes{checked-zeros=true}`): not for other runtimes.
    Raises OptcError for an unknown rule name, runtime or a bad size."""
    from ..ir.io import load

    if isinstance(model, Model):
        if not inplace:
            model = copy_model(model)
    elif isinstance(model, onnx.ModelProto | str | os.PathLike | bytes):
        model = load(model)
    else:
        raise OptcError(f"optimize() takes a Model, a ModelProto or a path, not {type(model).__name__}")
    if not isinstance(level, int) or isinstance(level, bool):
        raise OptcError(f"level must be an int 0..3, not {level!r}")
    from ..units import parse_bytes

    limit = parse_bytes(size_limit, what="size_limit") if size_limit is not None else None
    run_pipeline(model, build_pipeline(level, passes, runtime), disable=disable, fast_math=bool(fast_math),
                 disable_rules=disable_rules, enable_rules=enable_rules, size_limit=limit)
    return model
