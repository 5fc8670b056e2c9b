"""Pass manager: pipeline strings and their errors, registry, fixed points, --bisect-limit, reports,
verify-each, disable, print-ir-after, plugins from the optc.passes entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
from optc.errors import OptcError
from optc.ir import from_onnx
from optc.rewrites import (
    FixedPoint,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    Pipeline,
    PrintIRAfter,
    RewriteBudget,
    VerifyEach,
    level_spec,
    parse_pipeline,
    register_pass,
    registered_passes,
    run_pipeline,
)
from optc.rewrites.passes import CommonSubexpressionElimination, DeadCodeElimination, FoldConstants

from .test_passes_support import assert_same_outputs, parse, run_passes

# -- passes used by these tests -------------------------------------------------------------------------


@register_pass(replace=True)
@dataclass
class Countdown(Pass):
    """Reports a change on its first `times` runs (a stand-in for a pass that converges)."""

    name: ClassVar[str] = "test-countdown"
    times: int = 3
    runs: int = 0

    def run(self, model, ctx):
        self.runs += 1
        return PassResult(changed=self.runs <= self.times)


@register_pass(replace=True)
@dataclass
class Breaker(Pass):
    """Removes the first node even though its outputs are used: breaks the IR."""

    name: ClassVar[str] = "test-breaker"

    def run(self, model, ctx):
        model.graph.remove(model.graph.first(), safe=False)
        return PassResult(changed=True)


MANY_REWRITES = """
g (float[2,3] x) => (float[2,3] y) <float[3] c = {1.0, 2.0, 3.0}, float[3] c2 = {1.0, 2.0, 3.0}> {
  two = Constant<value = float {2.0}>()
  c3 = Mul(c, two)
  c4 = Add(c3, c2)
  a = Add(x, c4)
  b = Add(x, c4)
  d = Add(c2, x)
  s = Shape(x)
  dead = Relu(x)
  dead2 = Exp(dead)
  m = Mul(a, b)
  e = Relu(d)
  y = Add(m, e)
}"""


# -- pipeline strings ---------------------------------------------------------------------------------------


def test_parse_pipeline_with_options_and_groups():
    p = parse_pipeline("fold-constants{size-limit=100,fold-shapes=false}, fixed-point{max-iterations=3}(cse,dce)")
    assert isinstance(p, Pipeline) and len(p.passes) == 2
    fold, group = p.passes
    assert isinstance(fold, FoldConstants) and fold.size_limit == 100 and fold.fold_shapes is False
    assert isinstance(group, FixedPoint) and group.max_iterations == 3
    assert [type(c) for c in group.passes] == [CommonSubexpressionElimination, DeadCodeElimination]
    assert p.spec() == "fold-constants{size-limit=100,fold-shapes=false},fixed-point{max-iterations=3}(cse,dce)"
    assert parse_pipeline(p.spec()).spec() == p.spec()
    assert parse_pipeline("").passes == []


@pytest.mark.parametrize("text, message", [
    ("fold-constant", "unknown pass 'fold-constant' (did you mean 'fold-constants'?)"),
    ("cse{bogus=1}", "pass 'cse' has no option 'bogus' (its options: initializers)"),
    ("fold-constants{size-limit=big}", "option 'size-limit' must be a size such as 1000, 64KB"),
    ("dce{functions=maybe}", "option 'functions' expects bool, got 'maybe'"),
    ("cse,", "expected a pass name at column 5"),
    ("cse,,dce", "expected a pass name"),
    ("cse{initializers}", "expected '='"),
    ("cse{initializers=true", "expected ',' or '}'"),
    ("cse(dce)", "pass 'cse' does not take a group of passes"),
    ("fixed-point", "'fixed-point' needs a group of passes in parentheses"),
    ("fixed-point{max-iterations=0}(cse)", "max-iterations must be at least 1"),
    ("fixed-point(cse", "expected ')'"),
    ("cse dce", "unexpected 'd'"),
    ("cse{initializers=true,initializers=false}", "given twice"),
])
def test_pipeline_string_errors(text, message):
    with pytest.raises(OptcError) as err:
        parse_pipeline(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_registry_lists_builtins_with_descriptions():
    infos = registered_passes()
    for name in ("fold-constants", "dce", "cse", "infer-shapes", "eliminate-noops", "canonicalize", "fuse"):
        assert name in infos and infos[name].description
    assert infos["fold-constants"].options["size-limit"] is None  # the run's --size-limit


def test_register_pass_rejects_bad_and_duplicate_names():
    @dataclass
    class Bad(Pass):
        name: ClassVar[str] = "Not_Kebab"

    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(Bad)

    @dataclass
    class Dup(Pass):
        name: ClassVar[str] = "cse"

    with pytest.raises(ValueError, match="already registered"):
        register_pass(Dup)


def test_levels():
    assert level_spec(0) == ""
    assert level_spec(1).startswith("fold-constants") and level_spec(1).endswith("dce")
    assert "cse" in level_spec(2) and "cse" not in level_spec(1)
    assert "fixed-point" in level_spec(3) and "infer-shapes" in level_spec(3)
    with pytest.raises(OptcError, match="unknown optimization level 7"):
        level_spec(7)
    for level in range(4):
        parse_pipeline(level_spec(level))


# -- running ------------------------------------------------------------------------------------------------


def test_fixed_point_repeats_until_no_change():
    model = from_onnx(parse("g (float[2] x) => (float[2] y) { y = Relu(x) }"))
    c = Countdown(times=3)
    report = PassManager([FixedPoint([c], max_iterations=10)]).run(model)
    assert c.runs == 4  # three changing rounds, one quiet round proves the fixed point
    assert report.result.changed and report.result.converged
    c = Countdown(times=30)
    report = PassManager([FixedPoint([c], max_iterations=5)]).run(model)
    assert c.runs == 5 and not report.result.converged


def test_fixed_point_of_real_passes_reaches_the_same_model_as_repeating_by_hand():
    before = parse(MANY_REWRITES)
    once, _, _ = run_passes(before, "fixed-point(fold-constants,cse,dce)")
    by_hand, _, _ = run_passes(before, "fold-constants,cse,dce,fold-constants,cse,dce,fold-constants,cse,dce")
    assert [n.op_type for n in once.graph.node] == [n.op_type for n in by_hand.graph.node]
    assert_same_outputs(before, once)


def _total_rewrites(before) -> int:
    _, report, _ = run_passes(before, "fold-constants,cse,dce")
    return report.rewrites


def test_bisect_limit_applies_exactly_n_rewrites():
    before = parse(MANY_REWRITES)
    total = _total_rewrites(before)
    assert total >= 10
    seen = []
    for n in range(total + 2):
        ctx = PassContext(budget=RewriteBudget(limit=n))
        after, report, _ = run_passes(before, "fold-constants,cse,dce", ctx=ctx)
        assert ctx.budget.used == min(n, total)
        assert len(ctx.records) == min(n, total)
        assert [r.index for r in ctx.records] == list(range(1, min(n, total) + 1))
        if 1 <= n <= total:
            assert report.last_rewrite is ctx.records[-1] and report.last_rewrite.index == n
            seen.append((report.last_rewrite.pass_name, report.last_rewrite.rule))
        elif n > total:
            assert report.last_rewrite is None
        assert_same_outputs(before, after)  # every prefix of the rewrites preserves numerics
    # the same prefix order every time: rewrite k of a run limited to N>=k is rewrite k of the full run
    full = PassContext()
    run_passes(before, "fold-constants,cse,dce", ctx=full)
    assert seen == [(r.pass_name, r.rule) for r in full.records]


def test_report_json_has_time_nodes_and_rule_counts_per_pass():
    _, report, _ = run_passes(parse(MANY_REWRITES), "fold-constants,cse,dce")
    data = json.loads(json.dumps(report.to_json()))
    assert [p["name"] for p in data["passes"]] == ["fold-constants", "cse", "dce"]
    for p in data["passes"]:
        assert {"seconds", "nodes_before", "nodes_after", "counts", "rewrites", "changed"} <= set(p)
        assert p["seconds"] >= 0
    assert data["passes"][0]["nodes_before"] == data["nodes_before"] == 12
    assert data["passes"][-1]["nodes_after"] == data["nodes_after"]
    assert data["passes"][0]["counts"]["fold:Mul"] == 1
    assert data["rewrites"] == sum(p["rewrites"] for p in data["passes"])
    assert sum(data["rule_counts"].values()) == data["rewrites"]


def test_verify_each_names_the_pass_that_broke_the_ir():
    model = from_onnx(parse("g (float[2] x) => (float[2] y) { a = Relu(x)  y = Neg(a) }"))
    with pytest.raises(OptcError, match="verification failed after pass 'test-breaker'"):
        run_pipeline(model, parse_pipeline("cse,test-breaker,dce"), instruments=[VerifyEach()])
    model = from_onnx(parse("g (float[2] x) => (float[2] y) { a = Relu(x)  y = Neg(a) }"))
    run_pipeline(model, parse_pipeline("cse,test-breaker,dce"))  # without the instrument, nothing notices


def test_disable_skips_passes_and_rejects_unknown_names():
    before = parse(MANY_REWRITES)
    _, report, _ = run_passes(before, "fold-constants,cse,dce", disable=["cse"])
    assert [p.name for p in report.passes] == ["fold-constants", "dce"]
    with pytest.raises(OptcError, match="unknown pass 'nope'"):
        run_passes(before, "dce", disable=["nope"])


def test_print_ir_after(capsys):
    import io

    buf = io.StringIO()
    model = from_onnx(parse(MANY_REWRITES))
    run_pipeline(model, parse_pipeline("fold-constants,cse,dce"), instruments=[PrintIRAfter(["cse"], buf)])
    text = buf.getvalue()
    assert text.count("IR after") == 1 and "IR after cse" in text and "Relu" in text
    buf = io.StringIO()
    run_pipeline(from_onnx(parse(MANY_REWRITES)), parse_pipeline("fold-constants,cse,dce"),
                 instruments=[PrintIRAfter(["all"], buf)])
    assert buf.getvalue().count("IR after") == 3


# -- plugins ------------------------------------------------------------------------------------------------


def _plugin_env(tmp_path, module_source: str, entry: str) -> dict:
    (tmp_path / "optc_test_plugin.py").write_text(textwrap.dedent(module_source))
    dist = tmp_path / "optc_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: optc-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[optc.passes]\n{entry}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_plugin_passes_from_entry_points(tmp_path):
    env = _plugin_env(tmp_path, """
        from dataclasses import dataclass
        from typing import ClassVar
        from optc.rewrites import Pass, PassResult

        @dataclass
        class HelloPass(Pass):
            name: ClassVar[str] = "hello-plugin"
            description: ClassVar[str] = "says hello from a plugin"
            greeting: str = "hi"

            def run(self, model, ctx):
                print("HELLO", self.greeting, len(model.graph))
                return PassResult(False)
        """, "hello = optc_test_plugin:HelloPass")
    cli = [sys.executable, "-m", "optc.tools.cli"]
    out = subprocess.run([*cli, "passes"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hello-plugin" in out.stdout and "says hello from a plugin" in out.stdout
    model = tmp_path / "m.onnx"
    model.write_bytes(parse("g (float[2] x) => (float[2] y) { y = Relu(x) }").SerializeToString())
    out = subprocess.run([*cli, "optimize", str(model), "-o", str(tmp_path / "o.onnx"), "-p",
                          "hello-plugin{greeting=hey},dce"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HELLO hey 1" in out.stdout


def test_broken_plugin_warns_and_optc_still_works(tmp_path):
    env = _plugin_env(tmp_path, "raise RuntimeError('plugin exploded')\n", "broken = optc_test_plugin:Nothing")
    out = subprocess.run([sys.executable, "-m", "optc.tools.cli", "passes"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    assert "pass plugin 'broken'" in out.stderr and "plugin exploded" in out.stderr
    assert "fold-constants" in out.stdout
